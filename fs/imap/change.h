/* Changes through an IMAP mount that act on the server at once (see
 * fs/imap/change.c): rm, mv, mkdir, rmdir, and the flags attribute.  New
 * messages (cp, rsync) are fs/imap/newfile.h's. */
#ifndef MAILFS_FS_IMAP_CHANGE_H
#define MAILFS_FS_IMAP_CHANGE_H

#include "fs/mailfs.h"

void fs_change_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_change_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname,
                      unsigned int flags);
void fs_change_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_change_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_change_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        const char *value, size_t size, int flags);
void fs_change_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

/* setxattr of message key (also a file written into the mount that the
 * server now has: fs/imap/newfile.h).  user.mail.flags: UID STORE FLAGS;
 * a header attribute (user.mail.subject, from, date, message_id) set to
 * the value it has: nothing to do, 0; to another value: EPERM. */
void fs_change_setxattr_msg(fuse_req_t req, struct cache_key key,
                            const char *name, const char *value, size_t size);

/* -o mark_seen: set \Seen on a message that is being read (queued; the
 * read does not wait). */
void fs_change_mark_seen(struct mailfs *fs, struct cache_key key);

#endif
