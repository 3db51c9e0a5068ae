/* What the files of a mount look like to the kernel: the names of
 * messages (UID.eml, or N.eml on a POP3 mount), the attributes of
 * directories and files, and how long the kernel may keep them.  Shared
 * by the IMAP handlers (fs/imap/), the POP3 ones (fs/pop/) and files being
 * written (fs/imap/newfile.c).  Pure: any thread may call these. */
#ifndef MAILFS_FS_ATTR_H
#define MAILFS_FS_ATTR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fs/mailfs.h"

/* How long the kernel keeps an entry and its attributes.  Directories
 * change when mail arrives: their view is kept short.  A message never
 * changes (its content is immutable). */
#define FS_ATTR_DIR_TIMEOUT 1.0
#define FS_ATTR_MSG_TIMEOUT 3600.0

/* "4294967295.eml" and its NUL fit. */
#define FS_ATTR_NAME_SIZE 24

/* The file name of message uid: "UID.eml". */
void fs_attr_msg_name(uint32_t uid, char name[FS_ATTR_NAME_SIZE]);

/* Is name a message's file name ("UID.eml", UID 1 to UINT32_MAX in
 * decimal without a leading zero)?  Then its UID in *uid_r. */
bool fs_attr_parse_name(const char *name, uint32_t *uid_r);

/* A directory: owned by the mount's user, mode S_IFDIR | perm, nlink
 * links, 4096 bytes, all three times mtime (seconds since the epoch). */
void fs_attr_dir(const struct mailfs *fs, fuse_ino_t ino, mode_t perm,
                 nlink_t nlink, int64_t mtime, struct stat *st);

/* A file: owned by the mount's user, mode S_IFREG | perm, one link, size
 * bytes in 512-byte blocks, all three times mtime. */
void fs_attr_file(const struct mailfs *fs, fuse_ino_t ino, mode_t perm,
                  uint64_t size, int64_t mtime, struct stat *st);

/* Check and normalise an IMAP flag list (user.mail.flags): system flags
 * (\Seen \Answered \Flagged \Deleted \Draft, any case) and keywords
 * (atoms), separated by spaces, tabs or newlines; returned separated by
 * one space.  New string; NULL if it is not valid (or out of memory). */
char *fs_attr_flags_normalise(const char *value, size_t size);

/* Is name an extended attribute outside the "user." namespace, the only
 * one a mount has?  getxattr of such a name answers EOPNOTSUPP, not
 * ENODATA: ls -l asks every file for "security.selinux" (and
 * "system.posix_acl_access"), and on EOPNOTSUPP it stops asking for the
 * rest of the file system instead of sending one request per file. */
bool fs_attr_xattr_foreign(const char *name);

#endif
