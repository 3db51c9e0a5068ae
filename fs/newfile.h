/* New messages written into an IMAP mount: cp, shell redirection, rsync.
 *
 * A file created in a mailbox directory lives in memory while it is being
 * written, and each write is committed to the cache (as a pending upload)
 * before write() returns: the kernel asks mailfs nothing when a file is
 * closed, so this is how its bytes are safe before close() returns.  The
 * close itself is seen through inotify (fs/closes.h); the upload (APPEND)
 * starts a second after it (at once on a rename into place).  A file whose
 * close cannot be seen is taken as written once nothing happened to it for
 * a second.  Once the server confirms the upload (APPENDUID), the message
 * appears as UID.eml and the name it was written under disappears.  Renaming it
 * before that (rsync writes a temporary name and renames it into place) just
 * changes the name; a rename after the upload succeeds and changes nothing.
 *
 * Pending uploads survive a crash or a dead server: at mount time and
 * whenever the server comes back, the cache's pending uploads are sent,
 * and an upload that may already have reached the server (sent, no answer
 * seen) is first looked for by Message-ID and size, so that each message
 * arrives exactly once.
 *
 * Inode numbers of new files use the generation FS_INO_MAX_GEN, which no
 * mailbox reaches. */
#ifndef MAILFS_FS_NEWFILE_H
#define MAILFS_FS_NEWFILE_H

#include <stdbool.h>
#include <sys/stat.h>

#include "fs/mailfs.h"

struct fs_newfiles;

int fs_newfiles_new(struct fs_newfiles **nf_r);
void fs_newfiles_free(struct fs_newfiles **nf);

/* Start and stop the uploader thread: a closed file's upload starts once
 * nothing happened to it for a second (or at once on its last release or
 * on a rename into place). */
int fs_newfiles_start(struct mailfs *fs);
void fs_newfiles_stop(struct mailfs *fs);

static inline bool fs_ino_is_new(fuse_ino_t ino)
{
	return ino != FUSE_ROOT_ID &&
	       ((ino >> 32) & FS_INO_MAX_GEN) == FS_INO_MAX_GEN;
}

/* Queue the upload of every pending upload in the cache that is not
 * already under way (mount time, and when the server is back). */
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
                        int to_set);
void fs_newfile_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_newfile_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
void fs_newfile_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                      size_t size, off_t off);
void fs_newfile_release(fuse_req_t req, fuse_ino_t ino);

/* unlink and rename of a name that is a new file; false if it is not
 * one (the caller goes on with messages). */
bool fs_newfile_unlink(fuse_req_t req, uint32_t id, const char *name);
bool fs_newfile_rename(fuse_req_t req, uint32_t id, const char *name,
                       uint32_t newid, const char *newname);

#endif
