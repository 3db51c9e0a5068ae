/* Closes of files written into the mount, seen from inside it.
 *
 * The kernel sends mailfs nothing when a file is closed: no FLUSH (mailfs
 * does not implement it, so that closing a message costs no round trip:
 * fs/imap/ops.c) and, once it skips opens of files, no RELEASE, not even of
 * the files it creates.  But inotify reports IN_CLOSE_WRITE on every
 * filesystem, FUSE included, when the last descriptor of a file opened
 * for writing is closed.  So mailfs watches its own mailbox directories
 * through the mount point, as any program could, and learns when a file
 * written there is closed.
 *
 * Watching a directory resolves its path through the mount: the kernel
 * asks mailfs (LOOKUP, GETATTR) and waits for the answers, and the mount
 * is busy meanwhile (an unmount fails with EBUSY).  So a mailbox is
 * watched only when a file is written into it (fs/imap/newfile.c), never at
 * mount time and never on an idle mount; once watched it stays watched
 * (a watch does not keep the mount busy).  Only a thread that is not a
 * FUSE worker may call fs_closes_watch(), and it may block there until
 * the session serves requests, or for good if the session loop ended (a
 * signal) while the mount stays: fs_closes_stop() says so, and that
 * thread is then left to finish on its own. */
#ifndef MAILFS_FS_IMAP_CLOSES_H
#define MAILFS_FS_IMAP_CLOSES_H

#include <stdbool.h>
#include <stdint.h>

#include "fs/imap/tree.h"

struct fs_closes;

/* mountpoint: absolute, borrowed for the life of *c_r.  0 or -ENOMEM;
 * without inotify (logged) nothing is ever watched. */
int fs_closes_new(const char *mountpoint, struct fs_closes **c_r);

/* Watch the directory of mailbox id, unless that was tried before.  May
 * block: see above.  1 when it is watched, 0 when it cannot be (logged
 * once; not tried again), -ECANCELED once fs_closes_stop() was called:
 * the caller must then return at once without touching anything that the
 * stopping thread may free. */
int fs_closes_watch(struct fs_closes *c, struct fs_tree *tree, uint32_t id);

/* Without blocking: 1 when mailbox id is watched (closes of files written
 * in it will be seen), 0 when it was never tried (or is no longer
 * watched), -1 when it cannot be watched. */
int fs_closes_state(struct fs_closes *c, uint32_t id);

/* The inotify descriptor, to wait for closes with poll() (POLLIN); -1
 * when there is none. */
int fs_closes_fd(const struct fs_closes *c);

/* Pass on what happened since the last call, without waiting:
 * cb(ctx, id, name) when a file called name in mailbox id was closed after
 * writing; cb(ctx, id, NULL) when mailbox id is no longer watched;
 * cb(ctx, 0, NULL) when closes may have been missed anywhere. */
void fs_closes_read(struct fs_closes *c,
                    void (*cb)(void *ctx, uint32_t id, const char *name),
                    void *ctx);

/* From another thread than the watcher's, at shutdown: true when the
 * watching thread can be joined; false when it is inside
 * fs_closes_watch() waiting for the mount, perhaps for good: detach it. */
bool fs_closes_stop(struct fs_closes *c);

/* After fs_closes_stop() (or if no thread ever watched).  Safe with
 * *c == NULL; sets *c to NULL.  A watcher still waiting for the mount
 * frees c itself when it returns. */
void fs_closes_free(struct fs_closes **c);

#endif
