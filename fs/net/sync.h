/* The network side of a mount: a pool of worker threads, each owning one
 * IMAP connection, that run jobs the FUSE handlers hand over.
 *
 * FUSE handlers never wait for the network.  When they need something the
 * cache does not have, they queue a job with a callback and return; the
 * callback runs on a worker thread when the job is done (or failed) and
 * sends the deferred reply.  Jobs for the same thing are merged: a second
 * open of a message being fetched waits for the same fetch.
 *
 * Body fetches are batched: the messages asked for, plus the following
 * uncached messages of the same mailbox (read-ahead, bounded in count and
 * bytes), in one UID FETCH, so that a directory walked file after file
 * (grep -r, rsync, cp -r) costs a few round trips, not one per message.
 * Each body goes to the cache as it arrives (imap_fetch_bodies_stream into
 * a cache_body_stream), so memory stays bounded whatever the size of a
 * message; a body is served, and its waiters answered, only once it is
 * complete and committed.
 *
 * When the server cannot be reached, or refuses the login, the pool backs
 * off (1 s doubling to 60 s); while it is backing off, new jobs are
 * refused at once with -ENOTCONN and the handlers answer from the cache.
 *
 * No request waits longer than the timeout option for the server: a
 * waiter whose job has not started within it, or whose connection has
 * sent nothing for that long (connecting, logging in or answering), gets
 * -ETIMEDOUT from a reaper thread while the job goes on (a body then still
 * reaches the cache).  A change (fs_sync_call) is left to its
 * connection's timeouts (once started it may happen on the server).  So
 * the callbacks of listings and bodies run on a worker thread, or on the
 * reaper thread with -ETIMEDOUT; none may block.  Kernel invalidations go
 * through fs/inval.h.
 *
 * When the server refuses a worker's connection because the account has
 * too many (Gmail's "Too many simultaneous connections", a BYE instead
 * of a greeting) while other workers are connected, that worker leaves
 * the pool for the rest of the mount and its job goes back to the queue
 * (logged once).  A command the server throttles is waited for and sent
 * again by the IMAP client (struct imap_pace), on every connection of the
 * mount alike.
 *
 * Threads.  Four kinds of thread meet here:
 *  - FUSE threads (the handlers in fs/imap/) queue jobs: fs_sync_mailboxes,
 *    fs_sync_listing, fs_sync_body, fs_sync_call.  These never wait for
 *    the network; they return 0 (the callback will run, exactly once) or
 *    a negative errno (it will not run: the handler answers itself).  The
 *    INBOX watch (fs/net/watch.h) and main queue jobs the same way.
 *  - Worker threads (one per connection) run the jobs, fs_sync_fn
 *    functions included, and then the callbacks with the result.
 *  - The reaper thread runs, with -ETIMEDOUT, the callbacks past their
 *    deadline of every job but fs_sync_call's.
 *  - The thread that calls fs_sync_stop (main, at unmount) runs the
 *    callbacks of the jobs never started, with -ESHUTDOWN.
 * So a callback (fs_sync_cb) runs on one of these threads, not on the
 * caller's, and possibly before the call that queued its job has returned
 * (the caller touches nothing it handed over once the job is queued); it
 * never runs with a lock of this module held.  It sends the deferred FUSE
 * reply itself (fuse_reply_*: libfuse allows it from any thread), may
 * queue further jobs, and must not wait for the network or for another
 * job (a short cache transaction is fine).  Kernel invalidations are not
 * sent from a callback: they are queued through fs/inval.h, to be sent
 * after the replies they relate to.
 *
 * The reconnect callback (fs_sync_start) runs on the worker that found the
 * server reachable again after a back-off, before that worker runs its
 * job, with no lock held: it may queue jobs (the uploads that waited) and
 * must not wait for the network. */
#ifndef MAILFS_FS_NET_SYNC_H
#define MAILFS_FS_NET_SYNC_H

#include <stdint.h>

#include "fs/mailfs.h"
#include "proto/error.h"

/* rc is 0 on success or a negative errno.  Runs on a worker, the reaper
 * or fs_sync_stop's thread (see above). */
typedef void (*fs_sync_cb)(void *ctx, int rc);

/* The server is reachable again after a back-off.  Runs on a worker
 * thread (see above). */
typedef void (*fs_sync_reconnect_fn)(void *ctx);

/* Connect and log in as the mount does (login_imap() with fs->login: the
 * secret is taken, or the credential command run, for this login), then
 * prepare the connection for resyncs (ENABLE QRESYNC when offered).  Runs
 * on network threads only: it may wait for oauth2_cmd or passcmd (at most
 * the timeout option).  A refused login is logged by fs->login, once
 * (login_reported()). */
int fs_sync_connect(struct mailfs *fs, struct imap_client **c_r,
                    struct proto_err *err);

/* The preparation alone, for a client connected elsewhere. */
void fs_sync_prepare(struct imap_client *c);

/* Start conns worker threads and the reaper.  first (may be NULL) is a
 * connected client the first worker takes over (owned from now on).
 * on_reconnect(reconnect_ctx) (on_reconnect may be NULL) is called each
 * time the server is reachable again after a back-off; reconnect_ctx is
 * borrowed until fs_sync_stop.  Main thread, at mount. */
int fs_sync_start(struct mailfs *fs, struct imap_client *first,
                  fs_sync_reconnect_fn on_reconnect, void *reconnect_ctx,
                  struct fs_sync **sync_r);

/* Stop the workers: jobs not started fail with -ESHUTDOWN (their callbacks
 * run on the calling thread), running ones are woken by shutting their
 * connections down.  Main thread, at unmount, once nothing else can queue
 * a job (the FUSE loop, the watch and the uploader have stopped): the
 * pool is freed. */
void fs_sync_stop(struct fs_sync **sync);

/* LIST the mailboxes with client c and store them in the cache (new ones
 * added, vanished ones marked deleted, missing parents created as
 * \Noselect), then reload fs->tree.  A mailbox the cache cannot store
 * (for whatever reason) is left out with a log line and keeps what the
 * cache had of it; the rest is stored all the same.  Fails only when the
 * cache as a whole cannot be written (full disk, out of memory).  Used at
 * mount time (main, before fs_sync_start) and on workers (jobs, and
 * fs_sync_fn functions with their client). */
int fs_sync_list(struct mailfs *fs, struct imap_client *c,
                 struct proto_err *err);

/* Queue a refresh of the mailbox list; cb may be NULL. */
int fs_sync_mailboxes(struct fs_sync *s, fs_sync_cb cb, void *ctx);

/* Queue a refresh of the message listing of mailbox id; cb may be NULL. */
int fs_sync_listing(struct fs_sync *s, uint32_t id, fs_sync_cb cb, void *ctx);

/* A change to run on a worker with its connected client (logged in, a
 * mailbox may or may not be selected).  Returns 0 or a negative errno.
 * Runs on that worker's thread; it may block on its client (the
 * connection's timeouts bound it), not on anything else. */
typedef int (*fs_sync_fn)(struct imap_client *c, void *fn_ctx);

/* Queue fn(c, fn_ctx) on a worker; cb(ctx, rc) runs afterwards with fn's
 * result (or the connection's error: then fn may not have run). */
int fs_sync_call(struct fs_sync *s, fs_sync_fn fn, void *fn_ctx, fs_sync_cb cb,
                 void *ctx);

/* Select mailbox id on c (read-write if writable) unless it already is,
 * checking that its UIDVALIDITY is still uidvalidity (-ESTALE if not; 0
 * skips the check).  For fs_sync_fn functions, on their worker. */
int fs_sync_open_mailbox(struct mailfs *fs, struct imap_client *c, uint32_t id,
                         uint32_t uidvalidity, bool writable);

/* Another connection of the mount (the INBOX watch) was refused because
 * the account has too many: an idle worker gives its connection up, if
 * the pool has more than one.  True if one will. */
bool fs_sync_shrink(struct fs_sync *s);

/* Queue a listing of every mailbox never listed (no callbacks), INBOX
 * first. */
void fs_sync_listings_unlisted(struct fs_sync *s);

/* Queue a fetch of a message body into the cache; cb runs once it is
 * committed (rc 0) or could not be fetched.  until: the waiter is a READ
 * of the bytes before offset until (0: it is not a READ); when the body is
 * shorter than the server announced, READs that reach its end are
 * answered before the kernel's attributes are invalidated (fs/net/bodies.c).
 * -EAGAIN at once: this body's fetch failed less than half a second ago
 * (the kernel follows a failed read-ahead with a read of its first page;
 * one stalled server must cost the reader one timeout, not two). */
int fs_sync_body(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                 uint32_t uid, uint64_t until, fs_sync_cb cb, void *ctx);

/* --- status: what `mailfs status`, statfs and the directory attributes
 * report (fs/imap/usage.h).  Any thread; they never wait for the
 * network. */

struct fs_sync_state {
	unsigned connected; /* workers with a live connection now */
	unsigned workers;   /* workers in the pool (not retired) */
	unsigned jobs;      /* jobs queued or running */
	int64_t retry_in;   /* ms until the next attempt while backing off
	                     * (the server could not be reached), else 0 */
};

void fs_sync_get_state(struct fs_sync *s, struct fs_sync_state *st);

/* The quota of the account (QUOTA, RFC 9208): GETQUOTAROOT INBOX, asked
 * at start and refreshed by fs_sync_quota_refresh (the watch calls it
 * every poll).  Bytes and counts; has_* false for what the server did
 * not say (or all of it, without the QUOTA capability). */
struct fs_quota {
	bool known; /* the server answered at least once */
	bool has_storage;
	uint64_t storage_used, storage_limit; /* bytes */
	bool has_messages;
	uint64_t messages_used, messages_limit;
};

void fs_sync_quota(struct fs_sync *s, struct fs_quota *q_r);

/* Queue a GETQUOTAROOT unless one is on its way or the server has no
 * QUOTA. */
void fs_sync_quota_refresh(struct fs_sync *s);

/* -o prefetch=all: fetch, one read-ahead batch after the other, every
 * body of every selectable mailbox that is not cached (listing first the
 * mailboxes never listed).  Starts the walk unless it runs; it stops by
 * itself when nothing is left, at the first failure (the server cannot be
 * reached: the next call starts it again), and at unmount.  One batch at
 * a time, so a user's request waits at most for one batch. */
void fs_sync_prefetch(struct fs_sync *s);

#endif
