/* Inside the network side of an IMAP mount (fs/net/): the pool, its jobs
 * and the calls between its files.  Nothing outside fs/net/ includes this;
 * the FUSE handlers use fs/net/sync.h.
 *
 * Files, each one concept, and who calls whom (no call goes back up):
 *
 *   queue.c    the pool: workers, the job queue and its merging, the
 *              reaper, back-off, the connection cap, the public fs_sync_*
 *              queue API.  Runs the jobs below.
 *   list.c     LIST and its store (renames, vanished mailboxes):
 *              fs_sync_list.
 *   listing.c  a mailbox's listing: in full, or through resync.c.
 *   resync.c   the incremental listing (QRESYNC, CONDSTORE, all flags).
 *   meta.c     message metadata as a FETCH gives it, collected and stored
 *              (listing.c and resync.c).
 *   bodies.c   body batches, read-ahead, streaming into the cache, size
 *              corrections.
 *   job.c      a job's waiters: detached, answered.
 *   conn.c     a worker's connection: log in, prepare, select a mailbox.
 *   quota.c    GETQUOTAROOT, as a change job (fs_sync_call), and its answer.
 *   prefetch.c the walk of -o prefetch=all: body jobs one after the other.
 *
 *   queue.c -> list.c, listing.c, bodies.c, job.c, conn.c
 *   listing.c -> list.c, resync.c, meta.c;  resync.c -> meta.c
 *   bodies.c -> job.c, conn.c
 *   quota.c, prefetch.c -> the public queue API of queue.c only
 *
 * Threads.  Each worker thread (queue.c: worker_main) owns one IMAP
 * connection and runs one job at a time on it: fs_net_run_listing,
 * fs_net_resync, fs_net_run_body and fs_sync_fn functions run only there
 * (fs_sync_list too, and in main at mount), with that worker's client,
 * without s->lock.  A full listing hands its batches to a store thread of
 * its own (listing.c), which only writes them to the cache; the worker
 * joins it before handing it the next batch and when the fetch ends.
 * The reaper
 * thread (queue.c: reaper_main) only detaches waiters past their deadline
 * and answers them -ETIMEDOUT.  FUSE threads (and the INBOX watch, and
 * main) only queue jobs (the fs_sync_* queue API) and never wait for one.
 *
 * Locking.  s->lock guards the queue (s->jobs), every job's waiters,
 * running and prefetch fields, the uids of a job not running (enqueue adds
 * to them) and, of a running job, the writes to its uids (only its worker
 * writes them; others read them under the lock: fs_net_job_has_uid), each
 * worker's job and live fields, and every counter of struct fs_sync.  A
 * running job's gone, ngone and dir_changed are its worker's alone.
 * Callbacks (waiters' and the reconnect callback) never run with s->lock
 * held: they may queue jobs. */
#ifndef MAILFS_FS_NET_NET_INT_H
#define MAILFS_FS_NET_NET_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "fs/net/sync.h"

/* A body whose fetch just failed fails again at once for this long: the
 * kernel follows a failed read-ahead with a read of its first page, and
 * one stalled server must cost the reader one timeout, not two. */
#define FAILED_MS  500
#define FAILED_MAX 64

enum job_kind {
	JOB_LIST,
	JOB_LISTING,
	JOB_BODY,
	JOB_CALL,
};

struct waiter {
	fs_sync_cb cb;
	void *ctx;
	uint32_t uid;   /* JOB_BODY: the message waited for */
	uint64_t until; /* JOB_BODY: a READ of the bytes before this, or 0 */
	int64_t since;  /* ms, monotonic: when it began to wait */
	struct waiter *next;
};

struct job {
	enum job_kind kind;
	uint32_t id;
	uint32_t uidvalidity;
	uint32_t *uids; /* owned; JOB_BODY: asked for, then the batch */
	size_t nuids, capuids;
	bool running;
	bool prefetch;  /* read-ahead nobody waits for yet */
	uint32_t *gone; /* JOB_LISTING: UIDs whose names are gone */
	size_t ngone;
	bool dir_changed; /* JOB_LISTING: names came or went */
	fs_sync_fn fn;    /* JOB_CALL */
	void *fn_ctx;
	struct waiter *waiters; /* owned list */
	struct job *next;
};

struct worker {
	struct fs_sync *s;
	pthread_t thread;
	bool started;
	struct imap_client *c; /* owned */
	struct job *job;       /* running, or NULL */
	/* ms, monotonic: when the server last sent this worker anything. */
	_Atomic int64_t input_ms;
	bool live; /* counted in s->live (under s->lock) */
};

struct failed_body {
	uint32_t id, uidvalidity, uid;
	int64_t until; /* ms, monotonic */
};

struct fs_sync {
	struct mailfs *fs;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *jobs; /* queued and running, oldest first */
	bool stop;
	struct worker *workers;
	unsigned nworkers;
	/* The server caps the account's connections: workers it refused
	 * leave the pool for the rest of the mount. */
	unsigned active;        /* workers not retired */
	unsigned live;          /* workers with a connection now */
	unsigned retire_wanted; /* idle workers asked to leave */
	int64_t down_until;     /* ms, monotonic; 0: not backing off */
	uint32_t walk_id;       /* the mailbox being read file after file */
	int64_t walk_until;     /* ms, monotonic */
	unsigned backoff;       /* ms */
	/* The server advertises CONDSTORE but its MODSEQs cannot be trusted:
	 * every resync fetches all flags from now on. */
	bool condstore_broken;
	/* The thread that gives up on waiters past their deadline. */
	pthread_t reaper;
	bool reaper_started;
	pthread_cond_t reaper_cond;
	int64_t timeout_ms;
	struct failed_body failed[FAILED_MAX]; /* a ring */
	unsigned nfailed;
	/* quota.c: what GETQUOTAROOT said last; a GETQUOTAROOT queued;
	 * the server has no QUOTA. */
	struct fs_quota quota;
	bool quota_busy, quota_none;
	/* prefetch.c: the walk of -o prefetch=all, at message prefetch_uid
	 * of mailbox prefetch_id; prefetch_listed: that mailbox's listing
	 * was queued once by the walk. */
	bool prefetch_running, prefetch_listed;
	uint32_t prefetch_id, prefetch_uid;
	/* Called when the server is reachable again (may be NULL); set
	 * once at start. */
	fs_sync_reconnect_fn on_reconnect;
	void *reconnect_ctx; /* borrowed */
};

static inline int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- job.c: a job's waiters ------------------------------------------- */

/* Detach the waiters of job for uid (all of them if uid is 0) that read
 * up to at least until (0: every waiter, READ or not).  Takes s->lock. */
struct waiter *fs_net_take_waiters(struct fs_sync *s, struct job *job,
                                   uint32_t uid, uint64_t until);

/* Answer a detached list of waiters with rc (their callbacks run on the
 * calling thread) and free it.  Without s->lock. */
void fs_net_run_waiters(struct waiter *wt, int rc);

/* Does anyone wait for uid in job?  Takes s->lock. */
bool fs_net_has_waiter(struct fs_sync *s, struct job *job, uint32_t uid);

/* Is uid among job's uids?  With s->lock held (or on a job no other
 * thread can see). */
bool fs_net_job_has_uid(const struct job *j, uint32_t uid);

/* Free an unlinked job whose waiters were answered. */
void fs_net_job_free(struct job *job);

/* Take job out of s->jobs.  With s->lock held. */
void fs_net_job_unlink(struct fs_sync *s, struct job *job);

/* --- listing.c, resync.c, bodies.c: jobs, on worker w ------------------ */

/* A JOB_LISTING: list mailbox job->id (in full, or what changed since
 * the last listing) into the cache, and fs->tree's state.  Names that are
 * gone go to job->gone, for the worker to tell the kernel once the
 * waiters have their answers. */
int fs_net_run_listing(struct worker *w, struct job *job);

/* The incremental listing of a mailbox listed before (cached: what the
 * cache holds of it).  -EAGAIN: it must be listed in full instead. */
int fs_net_resync(struct worker *w, struct job *job,
                  const struct fs_mailbox *mb,
                  const struct cache_mailbox *cached);

/* A JOB_BODY: fetch the bodies asked for, and the read-ahead, into the
 * cache; answers each body's waiters as it is committed (bodies.c). */
int fs_net_run_body(struct worker *w, struct job *job);

/* --- meta.c: message metadata ----------------------------------------- */

struct meta {
	uint32_t uid;
	uint64_t size;
	int64_t internaldate;
	int16_t tz;
	uint64_t modseq;
	char *flags, *subject, *from, *date, *message_id;
};

struct listing {
	struct meta *v;
	size_t n, cap;
	bool oom;
	/* A full listing (listing.c) is stored batch by batch as it
	 * arrives: v holds the batch being filled, sv the one a thread of
	 * its own stores meanwhile, uids every UID listed so far. */
	struct cache *cache; /* borrowed; NULL: v holds everything */
	size_t bytes;        /* about what the batch holds */
	uint32_t *uids;
	size_t nuids, capuids;
	struct meta *sv; /* owned by the store thread while storing */
	size_t sn, scap;
	pthread_t store_thread;
	bool storing;
	int store_rc;     /* the store thread's result */
	int store_err;    /* the first batch that could not be stored */
	int64_t store_ms; /* the fetch waited for batches (for the log) */
	/* store step */
	uint32_t id;
	struct imap_select_info info;
	uint32_t old_uidvalidity;
	uint32_t gen;
	size_t deleted;
	struct cache_rematch_stats rematch;
	int64_t now;
	int64_t newest;      /* the directory's new mtime, 0: unchanged */
	int64_t newest_date; /* the newest INTERNALDATE listed */
	size_t before;       /* messages cached before a full listing of a
	                        known UIDVALIDITY */
	uint32_t *gone;      /* UIDs removed from the listing */
	size_t ngone;
	uint32_t *old; /* UIDs of the previous UIDVALIDITY */
	size_t nold;
};

/* The flags without \Recent (malloc'd; NULL when out of memory). */
char *fs_net_flags_without_recent(const char *flags);

/* An imap_fetch_meta callback: append m to the struct listing ctx (oom
 * set when memory runs out). */
void fs_net_meta_cb(void *ctx, const struct imap_msg_meta *m);

/* Free the strings of the n entries of v (the array stays). */
void fs_net_meta_clear(struct meta *v, size_t n);

/* Free the entries of l->v (l->n becomes 0, the array stays). */
void fs_net_listing_clear(struct listing *l);

void fs_net_listing_free(struct listing *l);

/* qsort order of struct meta: by UID. */
int fs_net_cmp_meta(const void *a, const void *b);

/* Store what a metadata fetch said of one message. */
int fs_net_put_meta(struct cache_txn *txn, uint32_t id, uint32_t uidvalidity,
                    const struct meta *e);

#endif
