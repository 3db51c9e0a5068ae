/* Replies to the kernel, and the errno it gets: the one place the internal
 * errors of the cache, the network side and the server become what a
 * user's system call returns.
 *
 * Threads.  Every request gets exactly one reply (fuse_reply_*(), or
 * fuse_reply_none() for FORGET), sent from any thread: libfuse's replies
 * are thread-safe.  After its reply a request is gone: nothing may touch
 * req again.  A handler that cannot answer from the cache hands req to
 * another thread and returns (a deferred reply); whoever holds it then
 * owns it and must reply exactly once.  These functions send deferred
 * replies from threads that are not FUSE workers:
 *
 * - fs/imap/ops.c: deferred_cb() and the do_lookup(), do_opendir(),
 *   do_open() and do_read() it calls (may_wait false): on an IMAP worker,
 *   or on the reaper thread with -ETIMEDOUT (fs/net/sync.h).
 * - fs/imap/change.c: the *_done() callbacks of fs_sync_call(): on an
 *   IMAP worker.
 * - fs/imap/newfile.c: answer_creates() and reply_create(), for a CREATE
 *   that waited for its mailbox to be watched: on the uploader thread.
 * - fs/pop/ops.c: deferred_cb() and do_opendir() (may_wait false): on the
 *   POP3 poller thread.
 *
 * Such a function never blocks (it may read and write the cache and take
 * the short locks of fs/imap/newfile.c, never wait for the network) and
 * never sends a kernel invalidation itself (fs/inval.h queues them, after
 * the reply).  Everything declared here may run on any thread.
 *
 * Errors.  Functions below fs/ return 0 or a negative errno:
 *
 *   cache/     -ENOENT no such record, -ENOSPC the disk or the map is full,
 *              -EIO a damaged cache or a failed transaction, -ENOMEM,
 *              -ESTALE a message of a UIDVALIDITY no longer current
 *   network    -ENOTCONN the server cannot be reached (the pool backs
 *              off), -ETIMEDOUT no answer within the timeout option,
 *              -EAGAIN throttled by the server, or failed a moment ago,
 *              -ESHUTDOWN the mount is going away
 *   server     -EPERM NO, -EINVAL BAD (proto/error.h's PERR_NO and
 *              PERR_BAD), -EOPNOTSUPP it cannot do this safely,
 *              -ENOTEMPTY, -EEXIST, -ENOENT from its answers
 *
 * What the kernel gets depends on what the request was doing: fs_errno()
 * maps rc for each kind below, and every handler goes through it. */
#ifndef MAILFS_FS_REPLY_H
#define MAILFS_FS_REPLY_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum fs_err {
	/* Finding a file from its inode number (getattr, open): -ESTALE
	 * stays (an old UIDVALIDITY's message is gone), anything else is
	 * ENOENT. */
	FS_ERR_FIND,
	/* Looking a name up in the cache: -ENOENT stays, anything else is
	 * EIO. */
	FS_ERR_LOOKUP,
	/* Reading a message's bytes from the cache: -ESTALE stays,
	 * anything else is EIO. */
	FS_ERR_READ,
	/* A deferred fetch of a message failed (network, cache, server):
	 * always EIO; the reason was logged. */
	FS_ERR_FETCH,
	/* Keeping the bytes written to a new file in the cache: -ENOSPC
	 * stays (the user can free space), anything else is EIO. */
	FS_ERR_KEEP,
	/* Handing a change to the network side (fs_sync_call): -ENOTCONN is
	 * EIO, anything else stays. */
	FS_ERR_QUEUE,
	/* A change the server made or refused: NO (-EPERM) and -EOPNOTSUPP
	 * are EPERM; -EINVAL, -ENOTEMPTY, -ESTALE, -ENOENT, -EEXIST stay;
	 * -EAGAIN stays (the server throttles longer than the timeout:
	 * nothing happened, try again later); anything else is EIO. */
	FS_ERR_CHANGE,
	/* An attribute of a file that cannot be read: always ENODATA. */
	FS_ERR_XATTR,
	/* Local work (building a listing: out of memory, the cache):
	 * rc as it is. */
	FS_ERR_LOCAL,
};

/* The positive errno for the kernel of rc (negative) failing in a
 * request doing kind. */
int fs_errno(enum fs_err kind, int rc);

/* fuse_reply_err(req, fs_errno(kind, rc)). */
void fs_reply_fail(fuse_req_t req, enum fs_err kind, int rc);

/* Reply to getxattr or listxattr with value (len bytes): its size when
 * size is 0, ERANGE when it does not fit, else the bytes. */
void fs_reply_xattr(fuse_req_t req, size_t size, const char *value, size_t len);

/* A READ answered from the cache: cache_body_view_once(..., fs_reply_view,
 * &v) sends the bytes to the kernel straight from the cache's map and sets
 * v.sent.  Returns 0, or -EIO if the reply failed.  Whatever the cache
 * returns, the caller replies (fs_reply_fail) only if !v.sent: a damaged
 * cache returns an error without calling back, and that request still
 * needs its answer. */
struct fs_view_reply {
	fuse_req_t req;
	bool sent;
};

int fs_reply_view(void *ctx, const void *data, size_t n);

/* Operations whose answer is the same on every mount, for both tables:
 * inode numbers are computed, so nothing is held per inode and forget
 * has nothing to free; statfs reports no space. */
void fs_op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void fs_op_forget_multi(fuse_req_t req, size_t count,
                        struct fuse_forget_data *forgets);
void fs_op_statfs(fuse_req_t req, fuse_ino_t ino);

#endif
