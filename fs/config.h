/* Named accounts: the configuration file of mailfs.
 *
 * $XDG_CONFIG_HOME/mailfs/config (XDG_CONFIG_HOME only if it is an
 * absolute path), else ~/.config/mailfs/config in the home directory of
 * the user running mailfs (from the password database, as for the cache).
 * The format (also in README.md, mailfs(1) and contrib/config.example):
 *
 *   # a comment (a line whose first non-blank character is # or ;)
 *   [work]
 *   url        = imaps://alice%40example.com@imap.example.com
 *   passcmd    = pass show mail/work
 *   mountpoint = ~/mail/work
 *   poll       = 120
 *   mark_seen  = yes
 *   options    = allow_other,delete=expunge
 *
 * A section "[NAME]" starts an account: NAME is 1 to 64 characters out of
 * letters, digits and "._@+-", beginning with a letter or digit, and
 * neither "status" nor "fetch" (subcommands of mailfs).  A line
 * "key = value" belongs to the section above it; blanks around the key
 * and the value are dropped, the value is the rest of the line as it is
 * (no quotes, no escapes, no comment after it: "#" in a passcmd is the
 * shell's).  Keys: url (required), mountpoint, options (a list as
 * "-o" takes it, appended as it is), and every option of mailfs by its
 * name: passcmd, oauth2_cmd, password_stdin, cafile, notls, cache_dir,
 * offline, delete, pop_keep, poll, mark_seen, connections, timeout, log,
 * fsname, ro, allow_other.  The on/off ones take yes/no, true/false,
 * on/off or 1/0.  "~" and "~/..." at the start of mountpoint, cafile,
 * cache_dir and log (a file) are the home directory; any other relative
 * path in them is relative to the home directory too, so the file means
 * the same wherever mailfs is started.  Anything else is an error that
 * names the line: an unknown key, a key twice in a section, an account
 * twice, a key outside a section, a section without url, an empty value,
 * a control character, a line over 4096 bytes, a file over 1 MiB.
 *
 * The file names commands that print secrets: it must be a regular file
 * owned by the user running mailfs and readable by nobody else (no group
 * or other permission bits, e.g. 0600), or it is refused. */
#ifndef MAILFS_FS_CONFIG_H
#define MAILFS_FS_CONFIG_H

#include <stddef.h>

#define FS_CONFIG_MAX_SIZE (1024 * 1024)
#define FS_CONFIG_MAX_LINE 4096

/* One account of the file. */
struct fs_account {
	char *name;       /* owned: the section's NAME */
	char *url;        /* owned: the account URL, as written */
	char *mountpoint; /* owned: absolute, or NULL when not given */
	char *options;    /* owned: every other key as one "-o" list,
	                     values escaped for it ("\," and "\\"), keys in
	                     file order, then "options" as written; or NULL */
	unsigned line;    /* line of its "[NAME]" */
};

struct fs_config {
	char *path;                  /* owned: the file read, or NULL */
	struct fs_account *accounts; /* owned: n accounts, in file order */
	size_t n;
};

/* Parse len bytes of text (NUL bytes in it are an error).  home (absolute)
 * is the home directory for "~" and relative paths.  Returns 0 and a new
 * configuration in *cfg_r, or -EINVAL with why set to one line that names
 * the line ("line 7: unknown key \"pasword\""), or -ENOMEM.  Pure: reads
 * no file and no environment. */
int fs_config_parse(const char *text, size_t len, const char *home,
                    struct fs_config **cfg_r, char *why, size_t why_len);

/* The path of the configuration file (see above).  Returns 0 and a new
 * string in *path_r, -ENOENT when no home directory is known, -ENOMEM. */
int fs_config_default_path(char **path_r);

/* Read and parse the file at path (the home directory is the calling
 * user's, see fs_config_default_path()).  Errors, with why set to one line
 * that names the file: -ENOENT (no such file), -EPERM (not a regular file,
 * owned by someone else, or readable or writable by group or others: why
 * says "chmod 600"), -EINVAL (malformed, see fs_config_parse(); too big),
 * what open or read said. */
int fs_config_load(const char *path, struct fs_config **cfg_r, char *why,
                   size_t why_len);

/* The account called name, or NULL (borrowed from cfg). */
const struct fs_account *fs_config_get(const struct fs_config *cfg,
                                       const char *name);

/* The account of the default configuration file called name_or_mountpoint,
 * or, if none is, the one whose mount point is that directory (compared
 * after resolving both: symbolic links, "..", a relative path taken from
 * the current directory).  Returns 0 and a copy in *acct_r (release it with
 * fs_account_free()); -ENOENT when there is no configuration file or no
 * account matches (nothing is printed); any other negative errno when the
 * file cannot be used (refused for its mode, malformed, unreadable): then
 * a one-line reason, "mailfs: ...", has been printed on standard error. */
int fs_config_find(const char *name_or_mountpoint, struct fs_account **acct_r);

/* A copy of a, or NULL when out of memory. */
struct fs_account *fs_account_dup(const struct fs_account *a);

void fs_account_free(struct fs_account **a);
void fs_config_free(struct fs_config **cfg);

#endif
