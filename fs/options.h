/* Command line of mailfs: "mailfs [options] ACCOUNT [MOUNTPOINT]".
 *
 * ACCOUNT is a URL or the name of an account of the configuration file
 * (fs/config.h; fs/main.c puts that account's options before the command
 * line's, so the command line wins).  Besides the mount, "--list" (the
 * accounts of the configuration file) and "--unmount" (unmount ACCOUNT,
 * a name or a mount point, with fusermount3 -u) are actions of their own.
 *
 * Options are parsed with a fuse_opt table (so fstab lines work); what is
 * not ours (ro, allow_other, -f, -d, -s ...) stays in the argument list
 * for libfuse. */
#ifndef MAILFS_FS_OPTIONS_H
#define MAILFS_FS_OPTIONS_H

#include <fuse_lowlevel.h>
#include <stdbool.h>

enum fs_delete_mode {
	FS_DELETE_TRASH,
	FS_DELETE_EXPUNGE,
	FS_DELETE_REFUSE,
};

struct fs_options {
	char *account; /* owned: the ACCOUNT argument */
	char *passcmd; /* owned, or NULL */
	int password_stdin;
	char *oauth2_cmd; /* owned, or NULL */
	char *cafile;     /* owned, or NULL */
	int notls;
	char *cache_dir; /* owned, or NULL for the default */
	int offline;
	char *delete_str; /* owned: "trash", "expunge", "refuse" */
	char *pop_keep;   /* owned: "forever" or DAYS */
	unsigned poll;    /* seconds, 1..86400 */
	int mark_seen;
	unsigned connections; /* parallel IMAP connections, 1..16 */
	unsigned timeout;     /* seconds, every network wait, 1..3600 */
	char *compress_str;   /* owned: "yes" or "no", or NULL */
	int ro;               /* -o ro was given */
	char *log;            /* owned: "syslog", "stderr", a file, or NULL
	                         for the default (fs/main.c) */
	char *fsname;         /* owned: -o fsname=, the mount's source, or
	                         NULL for the account */
	int list;             /* --list */
	int unmount;          /* --unmount */
	char *mountpoint;     /* owned: the second plain argument, or NULL;
	                         it is also left in args for libfuse */

	/* The numbers as given (owned, or NULL), checked by
	 * fs_options_parse(). */
	char *poll_str;
	char *connections_str;
	char *timeout_str;
	char *prefetch;       /* owned: "none" or "all" */

	/* Derived by fs_options_parse(). */
	enum fs_delete_mode delete_mode;
	long pop_keep_days; /* -1 for forever */
	bool compress;      /* COMPRESS=DEFLATE when offered (default) */
	bool prefetch_all;  /* keep every body cached (prefetch=all) */
};

/* Parse our options out of args (the rest stays for libfuse).  Prints a
 * one-line error and returns -EINVAL on a bad value: a number that is not
 * a decimal number in its range (poll 1..86400, connections 1..16, timeout
 * 1..3600), an unknown delete or pop_keep, an empty log. */
int fs_options_parse(struct fuse_args *args, struct fs_options *o);

void fs_options_free(struct fs_options *o);

/* Make every option that names a file absolute, relative to start_dir (the
 * directory mailfs was started in; DESIGN.md), so that it means the same
 * after mailfs has gone to the background (its working directory is then
 * "/"): cafile, cache_dir, and log when it names a file.  passcmd and
 * oauth2_cmd are shell command lines, not paths, and are left as they are: they
 * run in start_dir (cred_set_dir), also when they run again from the
 * background, so a relative program or file in them is relative to start_dir
 * too.  start_dir may be NULL when it is unknown (getcwd failed): a relative
 * path is then an error.  Prints a one-line error and returns a negative errno
 * on failure. */
int fs_options_absolute(struct fs_options *o, const char *start_dir);

/* The default cache directory of the account whose cache name is name
 * (url_cache_name()): $XDG_CACHE_HOME/mailfs/NAME if XDG_CACHE_HOME is an
 * absolute path, else HOME/.cache/mailfs/NAME where HOME is the home
 * directory of the calling user (the real user id) in the password
 * database, not $HOME: a user mount from fstab, sudo or a setuid helper may
 * leave $HOME pointing at another user's home.  $HOME only if the user has
 * no entry there.  Returns 0 and a new string in *dir_r, -ENOENT when no
 * home directory is known, or -ENOMEM. */
int fs_options_default_cache_dir(const char *name, char **dir_r);

/* mailfs's own part of --help. */
void fs_options_help(void);

#endif
