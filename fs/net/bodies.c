/* Body fetches: a batch of the messages asked for plus read-ahead, each
 * body streamed into the cache as it arrives, its waiters answered once
 * it is committed, and a body shorter or longer than the server announced
 * corrected in the order fs/inval.h sets. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/inval.h"
#include "proto/log.h"

/* Read-ahead bounds for one body fetch. */
#define BATCH_MAX_MSGS  512
#define BATCH_MAX_BYTES (8u * 1024 * 1024)
/* Fetched bodies are committed to the cache in groups of about this many
 * bytes (one fsync per group), or at once when someone waits for one. */
#define COMMIT_BYTES    (1u * 1024 * 1024)
/* A directory being read file after file keeps the next batch coming
 * for this long after the last message someone waited for. */
#define WALK_MS         10000

struct pending_body {
	uint32_t uid;
	struct cache_body_stream *body; /* owned: stored by store_bodies */
	size_t len;
	bool resized;      /* the server's RFC822.SIZE was wrong */
	uint64_t old_size; /* then: what it said (and the kernel may hold) */
};

struct body_batch {
	struct worker *w;
	struct job *job;
	uint32_t id, uidvalidity, gen;
	struct pending_body *v;
	size_t n, cap, bytes;
	int rc;
	size_t stored;
	/* The body arriving now: a long one goes to the cache in pieces as
	 * it comes (cache_body_stream), never whole in memory. */
	struct cache_body_stream *cur; /* owned */
};

static int store_bodies(struct cache_txn *txn, void *ctx)
{
	struct body_batch *b = ctx;
	int rc = 0;

	for (size_t i = 0; i < b->n && rc == 0; i++) {
		struct cache_key key = {b->id, b->uidvalidity, b->v[i].uid};
		struct cache_msg *old = NULL;

		rc = cache_msg_get(txn, key, &old);
		if (rc == -ENOENT) {
			/* Expunged while we fetched it; nothing to keep it
			 * under. */
			rc = 0;
			continue;
		}
		b->v[i].resized = rc == 0 && old->size != b->v[i].len;
		b->v[i].old_size = rc == 0 ? old->size : 0;
		/* Before the body can be read: see fs/inval.h. */
		if (b->v[i].resized)
			fs_inval_resized(b->w->s->fs->inval,
			                 fs_ino_msg(b->id, b->gen, b->v[i].uid),
			                 old->size, b->v[i].len);
		if (b->v[i].resized)
			log_notice("message UID %u: server said %llu bytes, "
			           "the body has %zu; size corrected",
			           b->v[i].uid, (unsigned long long)old->size,
			           b->v[i].len);
		cache_msg_free(&old);
		if (rc == 0)
			rc = cache_body_stream_finish(txn, b->v[i].body, key);
	}
	return rc;
}

/* The kernel may hold the size the server announced (RFC822.SIZE), and
 * READs of the message may be waiting for this body, their pages locked.
 * The order of replies and invalidation is fs/inval.h's rule: a shorter
 * body's READs that reach its end are answered first, then the kernel's
 * attributes are invalidated (settled; at once for a longer body), then
 * the other waiters answered (an open, a READ that stops earlier). */
static void answer_resized(struct body_batch *b, const struct pending_body *p)
{
	struct fs_sync *s = b->w->s;

	if (p->len < p->old_size)
		fs_net_run_waiters(fs_net_take_waiters(s, b->job, p->uid,
		                                       p->len > 0 ? p->len : 1),
		                   0);
	fs_inval_settle(s->fs->inval, fs_ino_msg(b->id, b->gen, p->uid));
}

static void flush_bodies(struct body_batch *b)
{
	struct mailfs *fs = b->w->s->fs;
	int rc;

	if (b->n == 0)
		return;
	rc = cache_run_write(fs->cache, store_bodies, b);
	if (rc < 0) {
		log_err("cannot store fetched messages in the cache: %s",
		        strerror(-rc));
		b->rc = rc;
	}
	for (size_t i = 0; i < b->n; i++) {
		if (b->v[i].resized)
			answer_resized(b, &b->v[i]);
		fs_net_run_waiters(
		        fs_net_take_waiters(b->w->s, b->job, b->v[i].uid, 0),
		        rc < 0 ? -EIO : 0);
		cache_body_stream_close(&b->v[i].body);
	}
	b->stored += rc < 0 ? 0 : b->n;
	b->n = 0;
	b->bytes = 0;
}

/* The bodies come through a struct imap_body_sink. */
static int body_begin(void *ctx, uint32_t uid, uint64_t size)
{
	struct body_batch *b = ctx;
	int rc;

	(void)uid;
	(void)size;
	cache_body_stream_close(&b->cur);
	rc = cache_body_stream_new(b->w->s->fs->cache, &b->cur);
	if (rc < 0)
		b->rc = rc;
	return rc;
}

static int body_data(void *ctx, const char *data, size_t len)
{
	struct body_batch *b = ctx;
	int rc = cache_body_stream_write(b->cur, data, len);

	if (rc < 0 && b->rc == 0) {
		log_err("cannot store a fetched message in the cache: %s",
		        strerror(-rc));
		b->rc = rc;
	}
	return rc;
}

static void body_abort(void *ctx)
{
	struct body_batch *b = ctx;

	cache_body_stream_close(&b->cur);
}

static void body_done(void *ctx, uint32_t uid)
{
	struct body_batch *b = ctx;
	struct pending_body *p;

	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 32;
		struct pending_body *nv = realloc(b->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			b->rc = -ENOMEM;
			cache_body_stream_close(&b->cur);
			return;
		}
		b->v = nv;
		b->cap = ncap;
	}
	p = &b->v[b->n];
	p->uid = uid;
	p->len = (size_t)cache_body_stream_size(b->cur);
	p->body = b->cur;
	b->cur = NULL;
	b->n++;
	b->bytes += p->len;
	if (b->bytes >= COMMIT_BYTES || fs_net_has_waiter(b->w->s, b->job, uid))
		flush_bodies(b);
}

static const struct imap_body_sink body_sink = {
        .begin = body_begin,
        .data = body_data,
        .done = body_done,
        .abort = body_abort,
};

struct readahead {
	uint32_t from;
	uint32_t *uids;
	size_t n, max;
	uint64_t bytes;
	int rc;
};

static int readahead_cb(const struct cache_msg *msg, void *ctx)
{
	struct readahead *r = ctx;

	if (msg->size_verified)
		return 0;
	if (r->n >= r->max || r->bytes + msg->size > BATCH_MAX_BYTES)
		return 1;
	r->uids[r->n++] = msg->key.uid;
	r->bytes += msg->size;
	return 0;
}

struct readahead_txn {
	uint32_t id, uidvalidity;
	struct readahead *r;
};

static int readahead_read(struct cache_txn *txn, void *ctx)
{
	struct readahead_txn *t = ctx;

	return cache_msg_foreach(txn, t->id, t->uidvalidity, t->r->from,
	                         readahead_cb, t->r);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Extend the running body job with read-ahead: the uncached messages that
 * follow the first one asked for, not already being fetched elsewhere. */
static void plan_batch(struct worker *w, struct job *job)
{
	struct fs_sync *s = w->s;
	uint32_t cand[BATCH_MAX_MSGS];
	struct readahead r = {.uids = cand, .max = BATCH_MAX_MSGS};
	struct readahead_txn t = {job->id, job->uidvalidity, &r};

	pthread_mutex_lock(&s->lock);
	qsort(job->uids, job->nuids, sizeof(*job->uids), cmp_u32);
	r.from = job->uids[0];
	if (job->prefetch)
		job->nuids = 0; /* only what is still uncached */
	pthread_mutex_unlock(&s->lock);

	if (cache_run_read(s->fs->cache, readahead_read, &t) < 0)
		return;

	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < r.n; i++) {
		bool busy = fs_net_job_has_uid(job, cand[i]);

		for (struct job *j = s->jobs; j != NULL && !busy; j = j->next)
			busy = j != job && j->kind == JOB_BODY &&
			       j->id == job->id && j->running &&
			       fs_net_job_has_uid(j, cand[i]);
		if (busy)
			continue;
		if (job->nuids == job->capuids) {
			size_t ncap = job->capuids * 2;
			uint32_t *nv =
			        realloc(job->uids, ncap * sizeof(*job->uids));

			if (nv == NULL)
				break;
			job->uids = nv;
			job->capuids = ncap;
		}
		job->uids[job->nuids++] = cand[i];
	}
	qsort(job->uids, job->nuids, sizeof(*job->uids), cmp_u32);
	pthread_mutex_unlock(&s->lock);
}

static int ensure_selected(struct worker *w, uint32_t id, uint32_t uidvalidity)
{
	return fs_sync_open_mailbox(w->s->fs, w->c, id, uidvalidity, false);
}

/* Queue read-ahead from UID `from` on, unless read-ahead for that
 * mailbox is already waiting for a worker. */
static void queue_prefetch(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                           uint32_t from)
{
	struct job *job, **tail;

	pthread_mutex_lock(&s->lock);
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next) {
		job = *tail;
		if (job->kind == JOB_BODY && job->id == id && !job->running &&
		    job->prefetch) {
			pthread_mutex_unlock(&s->lock);
			return;
		}
	}
	job = calloc(1, sizeof(*job));
	if (job != NULL)
		job->uids = malloc(8 * sizeof(*job->uids));
	if (job == NULL || job->uids == NULL || s->stop) {
		if (job != NULL)
			free(job->uids);
		free(job);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	job->kind = JOB_BODY;
	job->prefetch = true;
	job->id = id;
	job->uidvalidity = uidvalidity;
	job->uids[0] = from;
	job->nuids = 1;
	job->capuids = 8;
	*tail = job;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* Someone waits for a message the server did not return.  A session
 * learns of new mail only when the server says so (EXISTS, at a command's
 * end): a connection that selected the mailbox before the message came
 * does not see it yet, although a listing on another one did.  NOOP
 * brings its view up to date; then those messages once more. */
static int fetch_missed(struct worker *w, struct job *job, struct body_batch *b)
{
	struct proto_err err = {0};
	uint32_t *missed = NULL;
	size_t n = 0;
	char *set;
	int rc;

	missed = malloc(job->nuids * sizeof(*missed));
	if (missed == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < job->nuids; i++)
		if (fs_net_has_waiter(w->s, job, job->uids[i]))
			missed[n++] = job->uids[i];
	if (n == 0) {
		free(missed);
		return 0;
	}
	set = imap_uidset_format(missed, n);
	free(missed);
	if (set == NULL)
		return -ENOMEM;
	rc = imap_noop(w->c, &err);
	if (rc == 0)
		rc = imap_fetch_bodies_stream(w->c, set, &body_sink, b, &err);
	if (rc < 0)
		log_warn("fetching messages %s failed: %s", set, err.text);
	flush_bodies(b);
	log_debug("fetched again after NOOP: %s", set);
	free(set);
	return rc;
}

int fs_net_run_body(struct worker *w, struct job *job)
{
	struct body_batch b = {.w = w,
	                       .job = job,
	                       .id = job->id,
	                       .uidvalidity = job->uidvalidity};
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	bool walking;
	uint32_t next;
	char *set;
	int rc;

	if (fs_tree_get(w->s->fs->tree, job->id, &mb) == 0) {
		b.gen = mb->gen;
		fs_mailbox_free(&mb);
	}
	plan_batch(w, job);
	if (job->nuids == 0)
		return 0;
	/* Someone waits: the directory is being read.  Fetch the next batch
	 * on another connection while this one arrives. */
	pthread_mutex_lock(&w->s->lock);
	if (!job->prefetch) {
		w->s->walk_id = job->id;
		w->s->walk_until = now_ms() + WALK_MS;
	}
	walking = w->s->walk_id == job->id && w->s->walk_until > now_ms();
	next = job->uids[job->nuids - 1] + 1;
	pthread_mutex_unlock(&w->s->lock);
	if (walking && next != 0)
		queue_prefetch(w->s, job->id, job->uidvalidity, next);

	rc = ensure_selected(w, job->id, job->uidvalidity);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&w->s->lock);
	set = imap_uidset_format(job->uids, job->nuids);
	pthread_mutex_unlock(&w->s->lock);
	if (set == NULL)
		return -ENOMEM;
	rc = imap_fetch_bodies_stream(w->c, set, &body_sink, &b, &err);
	if (rc < 0)
		log_warn("fetching messages %s failed: %s", set, err.text);
	flush_bodies(&b);
	log_debug("fetched %zu of %zu messages (%s)", b.stored, job->nuids,
	          set);
	free(set);
	if (rc == 0 && b.rc == 0 && b.stored < job->nuids)
		rc = fetch_missed(w, job, &b);
	cache_body_stream_close(&b.cur);
	free(b.v);
	if (rc == 0 && b.rc < 0)
		rc = b.rc;
	return rc;
}
