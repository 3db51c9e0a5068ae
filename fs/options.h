/* Command line of mailfs: "mailfs [options] ACCOUNT MOUNTPOINT".
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
	unsigned poll;    /* seconds */
	int mark_seen;
	unsigned connections; /* parallel IMAP connections */
	unsigned timeout;     /* seconds, every network wait */
	char *compress_str;   /* owned: "yes" or "no", or NULL */
	int ro;               /* -o ro was given */

	/* Derived by fs_options_parse(). */
	enum fs_delete_mode delete_mode;
	long pop_keep_days; /* -1 for forever */
	bool compress;      /* COMPRESS=DEFLATE when offered (default) */
};

/* Parse our options out of args (the rest stays for libfuse).  Prints a
 * one-line error and returns -EINVAL on a bad value. */
int fs_options_parse(struct fuse_args *args, struct fs_options *o);

void fs_options_free(struct fs_options *o);

/* mailfs's own part of --help. */
void fs_options_help(void);

#endif
