/* New messages written into an IMAP mount: cp, shell redirection, rsync.
 *
 * A file created in a mailbox directory lives in memory while it is being
 * written, and each write is committed to the cache (as a pending upload)
 * before write() returns: the kernel may tell mailfs nothing when a file
 * is closed, so this is how its bytes are safe before close() returns.
 *
 * A file is uploaded (APPEND) only once its close was seen, a second
 * after it (rsync sets the time and renames right after closing), or at
 * once when it is renamed into place after that.  A close is seen as the
 * RELEASE of the last descriptor the kernel told mailfs of (CREATE, OPEN),
 * or through inotify (fs/imap/closes.h): the kernel sends no RELEASE once it
 * skips opens of files (after mailfs answered an open with ENOSYS: a
 * message read), not even for the files it creates, and never tells
 * mailfs of the descriptors it opens then.  To see those closes, the
 * CREATE of a file in a mailbox not watched yet is answered only once the
 * mailbox is watched.  A file left alone, however long, is never taken as
 * closed (its writer may be slow).  Where no close can be seen (inotify
 * unavailable, a file renamed while open into a mailbox watched only
 * afterwards), the file is uploaded when renamed, or after a clean
 * unmount (which means every file of the mount was closed), at the next
 * mount.
 *
 * The cache records whether a file's close was seen.  At the next mount a
 * file whose close was never seen (a crash of mailfs cut its writer off,
 * or came before the close was seen) is not uploaded: it is shown as
 * NAME.incomplete (NAME.incomplete.2 ... if taken), and logged.  Renaming
 * it uploads it as it is; rm discards it; it can be read, and written.
 *
 * Once the server confirms the upload (APPENDUID), the message appears as
 * UID.eml and the name it was written under disappears.  Renaming it
 * before that (rsync writes a temporary name and renames it into place)
 * just changes the name; a rename after the upload succeeds and changes
 * nothing.
 *
 * Pending uploads survive a crash or a dead server: at mount time and
 * whenever the server comes back, the cache's closed pending uploads are
 * sent, and an upload that may already have reached the server (sent, no
 * answer seen) is first looked for by Message-ID and size, so that each
 * message arrives exactly once.
 *
 * A new file's inode number is fs_ino_new() of its mailbox and a number
 * of the mount (fs/ino.h). */
#ifndef MAILFS_FS_IMAP_NEWFILE_H
#define MAILFS_FS_IMAP_NEWFILE_H

#include <stdbool.h>
#include <sys/stat.h>

#include "fs/mailfs.h"

struct fs_newfiles;

int fs_newfiles_new(struct fs_newfiles **nf_r);
void fs_newfiles_free(struct fs_newfiles **nf);

/* Start and stop the uploader thread: it starts a closed file's upload a
 * second after the close, reads the closes inotify saw, and watches the
 * mailboxes files are created in (answering their CREATEs). */
int fs_newfiles_start(struct mailfs *fs);
void fs_newfiles_stop(struct mailfs *fs);

/* After fs_newfiles_stop(), when the kernel ended the session because the
 * mount was unmounted: no descriptor of the mount is open any more, so
 * every file being written is closed; recorded as such, it is uploaded at
 * the next mount. */
void fs_newfiles_unmounted(struct mailfs *fs);

/* Queue the upload of every pending upload in the cache that is closed
 * and not already under way (mount time, and when the server is back);
 * show the ones never closed as NAME.incomplete (see above). */
void fs_newfile_resume(struct mailfs *fs);

/* For lookup and readdir: a new file called name in mailbox id. */
bool fs_newfile_lookup(struct mailfs *fs, uint32_t id, const char *name,
                       struct stat *st_r);

/* For readdir: cb(ctx, name, st) for each visible new file in id. */
int fs_newfile_list(struct mailfs *fs, uint32_t id,
                    int (*cb)(void *ctx, const char *name,
                              const struct stat *st),
                    void *ctx);

/* FUSE operations on new files (ino with fs_ino_is_new()). */
void fs_newfile_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                       mode_t mode, struct fuse_file_info *fi);
void fs_newfile_getattr(fuse_req_t req, fuse_ino_t ino);
void fs_newfile_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                        int to_set, struct fuse_file_info *fi);
void fs_newfile_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_newfile_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
void fs_newfile_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                      size_t size, off_t off, struct fuse_file_info *fi);
void fs_newfile_release(fuse_req_t req, fuse_ino_t ino,
                        struct fuse_file_info *fi);

/* MKNOD of a regular file (tar makes the file, sets its attributes, then
 * opens it to write): a new file like a CREATE's, not open.  Other kinds
 * of file: EPERM. */
void fs_newfile_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode);

/* Extended attributes of a new file, so that restores (rsync -X, cp -a,
 * tar --xattrs) keep them:
 *
 * - user.mail.flags replaces the flags it is uploaded with (kept in the
 *   cache with its bytes): before its upload starts they go with the
 *   APPEND; while it is under way, they are stored on the new message
 *   right after it (fs/imap/upload.c).  Same syntax as on a message
 *   (EINVAL otherwise).
 * - the header attributes (user.mail.subject, from, date, message_id)
 *   are what its bytes say: setting or removing one succeeds and changes
 *   nothing.
 *
 * Once the server has the file (its name still resolves for a while),
 * setxattr and removexattr answer nothing and return false with the
 * message it became in *key_r: the caller acts on that message
 * (fs_change_setxattr_msg).  Otherwise they answer and return true. */
bool fs_newfile_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                         const char *value, size_t size,
                         struct cache_key *key_r);
bool fs_newfile_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                            struct cache_key *key_r);

/* The value of attribute name of new file ino: 0 with *val_r (a new
 * string; NULL when it has none: ENODATA), 1 with *key_r when the server
 * has it (read the message's), or a negative errno. */
int fs_newfile_getxattr(struct mailfs *fs, fuse_ino_t ino, const char *name,
                        char **val_r, struct cache_key *key_r);

/* unlink and rename of a name that is a new file; false if it is not
 * one (the caller goes on with messages). */
bool fs_newfile_unlink(fuse_req_t req, uint32_t id, const char *name);
bool fs_newfile_rename(fuse_req_t req, uint32_t id, const char *name,
                       uint32_t newid, const char *newname);

#endif
