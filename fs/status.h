/* `mailfs status [--json] [MOUNTPOINT]`: what a mount reports about
 * itself, read through its mount point (the status attributes of
 * fs/imap/status.h), as a table or as JSON.  Without MOUNTPOINT, every
 * mailfs mount of the system (/proc/self/mountinfo).  A path inside a
 * mount stands for that mount.
 *
 * Exit status: 0, or 1 when a mount could not be read (not a mailfs
 * mount, its mailfs is gone, or it reports no status).  The whole command
 * is bounded: after STATUS_TIMEOUT seconds it is ended by SIGALRM (a
 * mount whose mailfs hangs cannot hang it). */
#ifndef MAILFS_FS_STATUS_H
#define MAILFS_FS_STATUS_H

#include <stdbool.h>

#include "fs/json.h"

#define STATUS_TIMEOUT 120

/* argv[0] is "status". */
int fs_status_main(int argc, char **argv);

/* The mount point of the mailfs mount that path is in (the longest
 * mailfs mount point that is path or a parent of it); a new string, or
 * NULL (with a message on stderr) if path is in none. */
char *fs_status_mount_of(const char *path);

/* Read attribute name of path; a new NUL-terminated string in *val_r.
 * 0 or a negative errno. */
int fs_status_getxattr(const char *path, const char *name, char **val_r);

/* The root's user.mailfs.status of mount mnt, all its pages joined (one
 * "mailboxes" list, no "next").  NULL and *err_r set on failure. */
struct json *fs_status_read(const char *mnt, int *err_r);

/* "1.5 MiB", "812 B", into buf. */
void fs_status_bytes(double n, char *buf, size_t size);

#endif
