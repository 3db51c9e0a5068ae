/* Kernel invalidations: the one module that calls fuse_lowlevel_notify_*.
 *
 * A notification is written to /dev/fuse and the kernel acts on it before
 * the write returns, taking the locks that action needs.  If one of those
 * locks is held by a request that waits for the thread sending the
 * notification, both wait for ever (libfuse's notes on notifications say
 * the same).  So each kind of invalidation has a rule:
 *
 * - fs_inval_attr() (FUSE_NOTIFY_INVAL_INODE with a negative offset: the
 *   inode's attributes only).  The kernel marks the cached attributes
 *   stale and takes no page or directory lock, so ANY thread may send it
 *   at ANY time, also while a request on that inode is pending, also
 *   before the reply it relates to.  It is sent at once, from the calling
 *   thread.
 *
 * - A message whose true size differs from the RFC822.SIZE the kernel was
 *   given (fs_inval_resized(), then fs_inval_read_begin/end() around every
 *   READ reply, fs_inval_settle()).  The kernel reads no further than the
 *   size it holds, and learns a smaller size from a READ answered short,
 *   but only if the attributes did not change while that READ was pending.
 *   So: a body LONGER than said: its attributes are invalidated before any
 *   READ of it is answered (the reader's next read then asks for the size
 *   and goes on).  SHORTER: a READ that reaches the body's end is answered
 *   first (the kernel takes the size from it), then the attributes are
 *   invalidated; a READ that stops before the end, after.  The worker
 *   records the correction before the body becomes readable in the cache,
 *   so that no READ, whichever thread answers it, slips past the rule;
 *   the worker settles it (invalidates, if no READ did) once the READs
 *   waiting for the body are answered.
 *
 * - The page cache of an inode is never invalidated (FUSE_NOTIFY_INVAL_INODE
 *   with an offset >= 0).  The kernel locks every cached page for it, and a
 *   READ that waits for a body being fetched holds its pages locked: a
 *   worker invalidating the pages of a message whose READ waits for that
 *   worker hangs the mount for good.  Nothing needs it either: a message's
 *   pages only ever hold bytes read from its real body.
 *
 * - fs_inval_entry() (FUSE_NOTIFY_INVAL_ENTRY) locks the parent directory,
 *   which a LOOKUP, CREATE or RENAME in it holds while it waits, possibly
 *   for a network job.  It is only queued: one thread of this module sends
 *   it, after the replies it relates to (callers queue it after replying).
 *   That thread never runs jobs nor waits for one, so it may wait for the
 *   directory's lock, and does so only as long as the request holding it
 *   takes (each bounded by its own timeout).
 *
 * - fs_inval_dir() (a directory's attributes, after names came or went)
 *   is queued like an entry, so that it follows the entries queued before
 *   it.
 *
 * Workers, callbacks and FUSE handlers may call every function here; none
 * of them blocks, except that fs_inval_attr() writes one message to
 * /dev/fuse.  No other file calls fuse_lowlevel_notify_*. */
#ifndef MAILFS_FS_INVAL_H
#define MAILFS_FS_INVAL_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

struct fs_inval;

/* Start the sending thread for session se (borrowed; it must outlive
 * fs_inval_stop). */
int fs_inval_start(struct fuse_session *se, struct fs_inval **inv_r);

/* Stop the thread; what is still queued is dropped (the mount is going
 * away).  Callers of the queueing functions must have stopped first. */
void fs_inval_stop(struct fs_inval **inv);

/* The kernel forgets the attributes of ino (size, times) and asks again;
 * sent now.  inv may be NULL (no mount): then nothing happens. */
void fs_inval_attr(struct fs_inval *inv, fuse_ino_t ino);

/* The body of message ino has size bytes where the kernel may hold
 * old_size: until settled, READ replies follow the rule above.  Call
 * before the body can be read from the cache. */
void fs_inval_resized(struct fs_inval *inv, fuse_ino_t ino, uint64_t old_size,
                      uint64_t size);

/* Around the reply to a READ of ino up to offset end: begin sends the
 * invalidation the rule wants before the reply and returns true if end()
 * must follow the reply (a READ reaching the end of a shorter body). */
bool fs_inval_read_begin(struct fs_inval *inv, fuse_ino_t ino, uint64_t end);
void fs_inval_read_end(struct fs_inval *inv, fuse_ino_t ino);

/* Invalidate the attributes of ino if a correction is still pending, and
 * forget it. */
void fs_inval_settle(struct fs_inval *inv, fuse_ino_t ino);

/* Queue: the kernel forgets the name in directory parent. */
void fs_inval_entry(struct fs_inval *inv, fuse_ino_t parent, const char *name);

/* Queue: the kernel forgets the attributes of directory dir. */
void fs_inval_dir(struct fs_inval *inv, fuse_ino_t dir);

#endif
