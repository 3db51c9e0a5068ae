/* A directory listing taken at opendir: names and attributes, served to
 * readdir and readdirplus by offset until releasedir.  Used by the IMAP
 * and the POP3 operations alike.  A snapshot is used by one request at a
 * time (the kernel serialises the requests of one open directory); the
 * functions here may run on any thread, also a network thread sending a
 * deferred opendir's reply. */
#ifndef MAILFS_FS_DIRSNAP_H
#define MAILFS_FS_DIRSNAP_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <sys/stat.h>

struct fs_dirsnap;

struct fs_dirsnap *fs_dirsnap_new(void);
void fs_dirsnap_free(struct fs_dirsnap *s);

/* Add an entry (name copied); timeout is what readdirplus tells the
 * kernel to keep its entry and attributes.  0 or -ENOMEM.  About 80
 * bytes an entry when its attributes have the usual form (fs/attr.h:
 * the owner and block size of the first entry, 512-byte blocks, all
 * three times equal, no nanoseconds), 144 more when not. */
int fs_dirsnap_add(struct fs_dirsnap *s, const char *name,
                   const struct stat *st, double timeout);

/* Fill buf (size bytes) with the entries from offset off on, as readdir
 * (plus false) or readdirplus answers them, as many as fit whole; each
 * entry's offset is its index + 1.  Returns the bytes used (0: none
 * fits, or off is past the end).  Only formats: req is handed to
 * fuse_add_direntry*(), which do not use it. */
size_t fs_dirsnap_fill(const struct fs_dirsnap *s, fuse_req_t req, char *buf,
                       size_t size, off_t off, bool plus);

/* Reply to readdir (plus false) or readdirplus from offset off. */
void fs_dirsnap_reply(fuse_req_t req, const struct fs_dirsnap *s, size_t size,
                      off_t off, bool plus);

/* readdir, readdirplus and releasedir of a directory whose opendir put a
 * snapshot in fi->fh (shared by the IMAP and POP3 operation tables). */
void fs_dirsnap_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
                           off_t off, struct fuse_file_info *fi);
void fs_dirsnap_op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
                               off_t off, struct fuse_file_info *fi);
void fs_dirsnap_op_releasedir(fuse_req_t req, fuse_ino_t ino,
                              struct fuse_file_info *fi);

#endif
