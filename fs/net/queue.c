/* The pool: worker threads each owning one connection, the job queue
 * (jobs for the same thing merged), the reaper that holds every waiter to
 * the timeout option, the back-off while the server cannot be reached, and
 * the account's connection cap. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fs/inval.h"
#include "proto/log.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000

static const char *job_name(enum job_kind k)
{
	return k == JOB_LIST      ? "mailbox list"
	       : k == JOB_LISTING ? "listing"
	       : k == JOB_BODY    ? "fetch"
	                          : "change";
}

static void worker_input(void *ctx)
{
	struct worker *w = ctx;

	atomic_store(&w->input_ms, now_ms());
}

static void set_live(struct worker *w, bool live)
{
	pthread_mutex_lock(&w->s->lock);
	if (w->live != live)
		w->s->live += live ? 1 : (unsigned)-1;
	w->live = live;
	pthread_mutex_unlock(&w->s->lock);
}

/* Did the server refuse a new connection because the account has too
 * many?  Gmail and Dovecot say so at login; a BYE instead of a greeting
 * (Exchange) says nothing, but it is the same refusal. */
static bool refused_for_cap(const struct proto_err *err)
{
	return (err->cls == PERR_BUSY && err->code == -EUSERS) ||
	       (err->cls == PERR_BYE && err->code == -ECONNREFUSED);
}

/* A worker leaves the pool (under s->lock). */
static void retire(struct worker *w, const char *why)
{
	struct fs_sync *s = w->s;

	s->active--;
	if (imap_pace_refused(&s->fs->pace))
		log_warn("the server refused another connection (%s): using "
		         "%u connection%s for the rest of the mount (logged "
		         "once)",
		         why, s->active, s->active == 1 ? "" : "s");
	else
		log_debug("the server refused another connection (%s): %u "
		          "left",
		          why, s->active);
}

/* Connect w if it has no connection.  -EUSERS: the server refused it
 * for having too many while other workers have one, and w has left the
 * pool; -EAGAIN: the login was throttled while others work (the job
 * goes to them); -ENOTCONN: the server cannot be reached (back-off). */
static int worker_connect(struct worker *w)
{
	struct fs_sync *s = w->s;
	bool back = false;
	struct proto_err err = {0};
	int64_t now = now_ms();
	int rc;

	/* A BYE that came while the connection sat idle (an idle timeout)
	 * is read now: a change must not be sent into a closed
	 * connection, where it could not be told whether it happened. */
	if (w->c != NULL)
		imap_poll(w->c);
	if (w->c != NULL && imap_error(w->c) != NULL) {
		log_info("connection lost: %s; reconnecting",
		         imap_error(w->c)->text);
		imap_free(&w->c);
		set_live(w, false);
	}
	if (w->c != NULL)
		return 0;
	pthread_mutex_lock(&s->lock);
	if (s->down_until > now) {
		pthread_mutex_unlock(&s->lock);
		return -ENOTCONN;
	}
	pthread_mutex_unlock(&s->lock);

	rc = fs_sync_connect(s->fs, &w->c, &err);
	pthread_mutex_lock(&s->lock);
	if (rc < 0 && refused_for_cap(&err) && s->live > 0 && s->active > 1) {
		retire(w, err.text);
		pthread_mutex_unlock(&s->lock);
		return -EUSERS;
	}
	if (rc < 0 && err.cls == PERR_BUSY && s->live > 0) {
		pthread_mutex_unlock(&s->lock);
		return -EAGAIN;
	}
	if (rc < 0) {
		s->backoff = s->backoff ? s->backoff * 2 : BACKOFF_MIN_MS;
		if (s->backoff > BACKOFF_MAX_MS)
			s->backoff = BACKOFF_MAX_MS;
		s->down_until = now_ms() + s->backoff;
		if (!login_reported(s->fs->login, &err))
			log_warn("cannot reach the server: %s (retrying in %u "
			         "s)",
			         err.text, s->backoff / 1000);
		rc = -ENOTCONN;
	} else {
		back = s->backoff != 0;
		s->backoff = 0;
		s->down_until = 0;
		imap_set_input_hook(w->c, worker_input, w);
		w->live = true;
		s->live++;
	}
	pthread_mutex_unlock(&s->lock);
	/* The server is back: whatever waited for it (uploads) goes now. */
	if (back) {
		log_info("the server is reachable again");
		if (s->on_reconnect != NULL)
			s->on_reconnect(s->reconnect_ctx);
	}
	return rc;
}

/* Remember that the bodies job's waiters wanted could not be had (for
 * FAILED_MS; see there).  Called with s->lock held. */
static void note_failed(struct fs_sync *s, const struct job *job,
                        const struct waiter *wt)
{
	int64_t until = now_ms() + FAILED_MS;

	for (; wt != NULL; wt = wt->next) {
		struct failed_body *f = &s->failed[s->nfailed++ % FAILED_MAX];

		*f = (struct failed_body){job->id, job->uidvalidity, wt->uid,
		                          until};
	}
}

static bool failed_recently(struct fs_sync *s, uint32_t id,
                            uint32_t uidvalidity, uint32_t uid)
{
	int64_t now = now_ms();

	for (unsigned i = 0; i < FAILED_MAX; i++) {
		const struct failed_body *f = &s->failed[i];

		if (f->until > now && f->uid == uid && f->id == id &&
		    f->uidvalidity == uidvalidity)
			return true;
	}
	return false;
}

/* The reaper: a waiter whose job has not begun within the timeout, or
 * whose connection has sent nothing for that long, gets -ETIMEDOUT; the
 * job itself goes on (a body then still reaches the cache).  Changes
 * (JOB_CALL) are left to their connection's own timeouts: one that has
 * begun may happen on the server and its context is in use, and an
 * upload's callback does not expect to be told "not run". */
static int64_t waiter_deadline(struct fs_sync *s, const struct worker *w,
                               const struct waiter *wt)
{
	int64_t from = wt->since;

	if (w != NULL) {
		int64_t input = atomic_load(&w->input_ms);

		if (input > from)
			from = input;
	}
	return from + s->timeout_ms;
}

static const struct worker *worker_of(struct fs_sync *s, const struct job *job)
{
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].job == job)
			return &s->workers[i];
	return NULL;
}

/* Detach the waiters past their deadline (all jobs); *next_r gets the
 * earliest deadline still ahead.  Called with s->lock held. */
static struct waiter *take_expired(struct fs_sync *s, int64_t *next_r)
{
	struct waiter *got = NULL;
	int64_t now = now_ms();

	*next_r = INT64_MAX;
	for (struct job **jp = &s->jobs; *jp != NULL;) {
		struct job *job = *jp;
		const struct worker *w =
		        job->running ? worker_of(s, job) : NULL;
		struct waiter **pp = &job->waiters, *expired = NULL;

		if (job->kind == JOB_CALL) {
			jp = &job->next;
			continue;
		}
		while (*pp != NULL) {
			struct waiter *wt = *pp;
			int64_t dl = waiter_deadline(s, w, wt);

			if (dl > now) {
				if (dl < *next_r)
					*next_r = dl;
				pp = &wt->next;
				continue;
			}
			*pp = wt->next;
			wt->next = expired;
			expired = wt;
		}
		if (job->kind == JOB_BODY)
			note_failed(s, job, expired);
		while (expired != NULL) {
			struct waiter *next = expired->next;

			expired->next = got;
			got = expired;
			expired = next;
		}
		jp = &job->next;
	}
	return got;
}

static void *reaper_main(void *arg)
{
	struct fs_sync *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stop) {
		int64_t next;
		struct waiter *expired = take_expired(s, &next);

		if (expired != NULL) {
			pthread_mutex_unlock(&s->lock);
			log_debug("requests waited %lld s for the server; "
			          "giving up on them",
			          (long long)(s->timeout_ms / 1000));
			fs_net_run_waiters(expired, -ETIMEDOUT);
			pthread_mutex_lock(&s->lock);
			continue;
		}
		if (next == INT64_MAX) {
			pthread_cond_wait(&s->reaper_cond, &s->lock);
		} else {
			/* Input pushes deadlines on without a signal: look
			 * again at the earliest one. */
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			next -= now_ms();
			ts.tv_sec += next / 1000;
			ts.tv_nsec += (next % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->reaper_cond, &s->lock, &ts);
		}
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Waiters that joined job after their body was stored (between a READ's
 * look at the cache and its enqueue) get it now.  job is unlinked. */
static void answer_cached(struct fs_sync *s, struct job *job)
{
	struct waiter *cached = NULL, **pp = &job->waiters;

	while (*pp != NULL) {
		struct waiter *wt = *pp;
		struct cache_key key = {job->id, job->uidvalidity, wt->uid};
		uint64_t size;

		if (cache_body_size_once(s->fs->cache, key, &size) == 0) {
			*pp = wt->next;
			wt->next = cached;
			cached = wt;
		} else {
			pp = &wt->next;
		}
	}
	fs_net_run_waiters(cached, 0);
}

/* The next job to start: the oldest someone waits for, else the oldest
 * (read-ahead).  Called with s->lock held. */
static struct job *next_job(struct fs_sync *s)
{
	struct job *first = NULL;

	for (struct job *job = s->jobs; job != NULL; job = job->next) {
		if (job->running)
			continue;
		if (job->waiters != NULL)
			return job;
		if (first == NULL)
			first = job;
	}
	return first;
}

static int run_job(struct worker *w, struct job *job)
{
	struct proto_err err = {0};
	int rc = 0;

	switch (job->kind) {
	case JOB_LIST:
		rc = fs_sync_list(w->s->fs, w->c, &err);
		if (rc < 0)
			log_warn("cannot list mailboxes: %s", err.text);
		break;
	case JOB_LISTING: rc = fs_net_run_listing(w, job); break;
	case JOB_BODY: rc = fs_net_run_body(w, job); break;
	case JOB_CALL: rc = job->fn(w->c, job->fn_ctx); break;
	}
	return rc;
}

/* Wait ms on s->cond (s->lock held), or less when woken. */
static void nap(struct fs_sync *s, int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct fs_sync *s = w->s;

	/* Log in now, in parallel, not when the first job needs it. */
	if (w->c != NULL) {
		fs_sync_prepare(w->c); /* the mount's first connection */
		imap_set_input_hook(w->c, worker_input, w);
		set_live(w, true);
	}
	if (worker_connect(w) == -EUSERS)
		goto out;

	for (;;) {
		struct job *job = NULL;
		bool leave = false;
		int rc;

		pthread_mutex_lock(&s->lock);
		for (;;) {
			if (s->stop)
				break;
			/* Another connection of the mount was refused for
			 * too many: an idle worker makes room. */
			if (s->retire_wanted > 0 && s->active > 1 && w->live) {
				s->retire_wanted--;
				s->active--;
				log_info("giving up a fetching connection to "
				         "make room: %u left",
				         s->active);
				leave = true;
				break;
			}
			job = next_job(s);
			if (job != NULL)
				break;
			pthread_cond_wait(&s->cond, &s->lock);
		}
		if (s->stop || leave) {
			pthread_mutex_unlock(&s->lock);
			break;
		}
		job->running = true;
		w->job = job;
		pthread_mutex_unlock(&s->lock);

		for (int attempt = 0;; attempt++) {
			const struct proto_err *dead;

			rc = worker_connect(w);
			if (rc < 0)
				break;
			rc = run_job(w, job);
			dead = w->c != NULL ? imap_error(w->c) : NULL;
			if (rc < 0 && dead != NULL)
				rc = -EIO;
			/* A connection the server closed while it sat idle
			 * (an idle timeout, a restart) fails at once: run
			 * the job again on a fresh one.  Not after a timeout
			 * (the bound would double), and not a change (it
			 * may have happened). */
			if (rc == 0 || dead == NULL || attempt > 0 ||
			    dead->cls == PERR_TIMEOUT || job->kind == JOB_CALL)
				break;
			log_info("connection lost: %s; trying again",
			         dead->text);
		}
		if (rc == -EUSERS || rc == -EAGAIN) {
			/* Not run: the job goes back to the queue, for the
			 * workers that have a connection. */
			pthread_mutex_lock(&s->lock);
			job->running = false;
			w->job = NULL;
			pthread_cond_broadcast(&s->cond);
			if (rc == -EAGAIN && !s->stop)
				nap(s, BACKOFF_MIN_MS);
			pthread_mutex_unlock(&s->lock);
			if (rc == -EUSERS)
				break;
			continue;
		}
		if (rc < 0)
			log_debug("%s job for mailbox %u failed: %s",
			          job_name(job->kind), job->id, strerror(-rc));

		pthread_mutex_lock(&s->lock);
		fs_net_job_unlink(s, job);
		w->job = NULL;
		pthread_mutex_unlock(&s->lock);
		if (job->kind == JOB_BODY)
			answer_cached(s, job);
		pthread_mutex_lock(&s->lock);
		if (job->kind == JOB_BODY)
			note_failed(s, job, job->waiters);
		pthread_mutex_unlock(&s->lock);
		/* Whoever still waits (a body that did not come) gets the
		 * error, or -EIO if the batch as a whole worked. */
		fs_net_run_waiters(job->waiters, rc < 0                  ? rc
		                                 : job->kind == JOB_BODY ? -EIO
		                                                         : 0);
		/* Names that went away (expunged elsewhere, or renumbered by
		 * a UIDVALIDITY change) leave the kernel's caches, and the
		 * directory's attributes when names came or went. */
		for (size_t i = 0; i < job->ngone; i++) {
			char name[24];

			snprintf(name, sizeof(name), "%u.eml", job->gone[i]);
			fs_inval_entry(s->fs->inval, fs_ino_dir(job->id), name);
		}
		if (job->dir_changed)
			fs_inval_dir(s->fs->inval, fs_ino_dir(job->id));
		fs_net_job_free(job);
	}
out:
	imap_logout(&w->c);
	set_live(w, false);
	return NULL;
}

static int enqueue(struct fs_sync *s, enum job_kind kind, uint32_t id,
                   uint32_t uidvalidity, uint32_t uid, uint64_t until,
                   fs_sync_cb cb, void *ctx)
{
	struct waiter *wt = calloc(1, sizeof(*wt));
	struct job *job = NULL, **tail;

	if (wt == NULL)
		return -ENOMEM;
	wt->cb = cb;
	wt->ctx = ctx;
	wt->uid = uid;
	wt->until = until;
	wt->since = now_ms();

	pthread_mutex_lock(&s->lock);
	if (s->stop || s->down_until > now_ms()) {
		pthread_mutex_unlock(&s->lock);
		free(wt);
		return s->stop ? -ESHUTDOWN : -ENOTCONN;
	}
	if (kind == JOB_BODY && failed_recently(s, id, uidvalidity, uid)) {
		pthread_mutex_unlock(&s->lock);
		free(wt);
		return -EAGAIN;
	}
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next) {
		struct job *j = *tail;

		if (j->kind != kind || j->id != id ||
		    j->uidvalidity != uidvalidity)
			continue;
		if (kind != JOB_BODY || fs_net_job_has_uid(j, uid) ||
		    !j->running)
			job = j;
		if (job != NULL && !job->running)
			job->prefetch = false;
		if (job != NULL)
			break;
	}
	if (job == NULL) {
		job = calloc(1, sizeof(*job));
		if (job == NULL) {
			pthread_mutex_unlock(&s->lock);
			free(wt);
			return -ENOMEM;
		}
		job->kind = kind;
		job->id = id;
		job->uidvalidity = uidvalidity;
		while (*tail != NULL)
			tail = &(*tail)->next;
		*tail = job;
	}
	if (kind == JOB_BODY && !fs_net_job_has_uid(job, uid)) {
		if (job->nuids == job->capuids) {
			size_t ncap = job->capuids ? job->capuids * 2 : 8;
			uint32_t *nv =
			        realloc(job->uids, ncap * sizeof(*job->uids));

			if (nv == NULL) {
				pthread_mutex_unlock(&s->lock);
				free(wt);
				return -ENOMEM;
			}
			job->uids = nv;
			job->capuids = ncap;
		}
		job->uids[job->nuids++] = uid;
	}
	wt->next = job->waiters;
	job->waiters = wt;
	pthread_cond_signal(&s->cond);
	pthread_cond_signal(&s->reaper_cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int fs_sync_mailboxes(struct fs_sync *s, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_LIST, 0, 0, 0, 0, cb, ctx);
}

int fs_sync_listing(struct fs_sync *s, uint32_t id, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_LISTING, id, 0, 0, 0, cb, ctx);
}

int fs_sync_call(struct fs_sync *s, fs_sync_fn fn, void *fn_ctx, fs_sync_cb cb,
                 void *ctx)
{
	struct waiter *wt = calloc(1, sizeof(*wt));
	struct job *job = calloc(1, sizeof(*job)), **tail;

	if (wt == NULL || job == NULL) {
		free(wt);
		free(job);
		return -ENOMEM;
	}
	wt->cb = cb;
	wt->ctx = ctx;
	job->kind = JOB_CALL;
	job->fn = fn;
	job->fn_ctx = fn_ctx;
	job->waiters = wt;
	pthread_mutex_lock(&s->lock);
	if (s->stop || s->down_until > now_ms()) {
		int rc = s->stop ? -ESHUTDOWN : -ENOTCONN;

		pthread_mutex_unlock(&s->lock);
		free(wt);
		free(job);
		return rc;
	}
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = job;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

bool fs_sync_shrink(struct fs_sync *s)
{
	bool ok = false;

	pthread_mutex_lock(&s->lock);
	if (s->active > s->retire_wanted + 1 && s->live > 1) {
		s->retire_wanted++;
		ok = true;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return ok;
}

void fs_sync_listings_unlisted(struct fs_sync *s)
{
	uint32_t *ids = NULL;
	size_t n = 0;

	if (fs_tree_synced_before(s->fs->tree, 1, &ids, &n) < 0)
		return;
	/* INBOX first: it is what is looked at first after a mount, and an
	 * ls of it must not wait behind the listings of the other
	 * mailboxes on the first connection. */
	for (size_t i = 1; i < n; i++) {
		struct fs_mailbox *mb = NULL;

		if (fs_tree_get(s->fs->tree, ids[i], &mb) == 0 &&
		    strcasecmp(mb->name, "INBOX") == 0) {
			uint32_t inbox = ids[i];

			memmove(ids + 1, ids, i * sizeof(*ids));
			ids[0] = inbox;
		}
		fs_mailbox_free(&mb);
	}
	for (size_t i = 0; i < n; i++)
		fs_sync_listing(s, ids[i], NULL, NULL);
	free(ids);
}

int fs_sync_body(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                 uint32_t uid, uint64_t until, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_BODY, id, uidvalidity, uid, until, cb, ctx);
}

int fs_sync_start(struct mailfs *fs, struct imap_client *first,
                  fs_sync_reconnect_fn on_reconnect, void *reconnect_ctx,
                  struct fs_sync **sync_r)
{
	struct fs_sync *s = calloc(1, sizeof(*s));
	unsigned n = fs->opts.connections;

	if (s == NULL)
		return -ENOMEM;
	s->fs = fs;
	s->on_reconnect = on_reconnect;
	s->reconnect_ctx = reconnect_ctx;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->workers = calloc(n, sizeof(*s->workers));
	if (s->workers == NULL) {
		free(s);
		return -ENOMEM;
	}
	s->nworkers = n;
	s->active = n;
	s->timeout_ms = (int64_t)fs->opts.timeout * 1000;
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->reaper_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->reaper_started =
	        pthread_create(&s->reaper, NULL, reaper_main, s) == 0;
	if (!s->reaper_started)
		log_warn("cannot start the reaper thread: requests wait for "
		         "the network's own timeouts");
	for (unsigned i = 0; i < n; i++) {
		s->workers[i].s = s;
		if (i == 0)
			s->workers[i].c = first;
		if (pthread_create(&s->workers[i].thread, NULL, worker_main,
		                   &s->workers[i]) != 0) {
			log_err("cannot start a network thread");
			break;
		}
		s->workers[i].started = true;
	}
	*sync_r = s;
	fs_sync_quota_refresh(s);
	if (fs->opts.prefetch_all)
		fs_sync_prefetch(s);
	return 0;
}

void fs_sync_get_state(struct fs_sync *s, struct fs_sync_state *st)
{
	int64_t now = now_ms();

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->lock);
	st->connected = s->live;
	st->workers = s->active;
	for (const struct job *j = s->jobs; j != NULL; j = j->next)
		st->jobs++;
	st->retry_in = s->down_until > now ? s->down_until - now : 0;
	pthread_mutex_unlock(&s->lock);
}

void fs_sync_stop(struct fs_sync **sp)
{
	struct fs_sync *s = *sp;
	struct job *queued;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	/* Wake workers blocked on the network. */
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].job != NULL && s->workers[i].c != NULL)
			imap_shutdown(s->workers[i].c);
	pthread_cond_broadcast(&s->cond);
	pthread_cond_broadcast(&s->reaper_cond);
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].started)
			pthread_join(s->workers[i].thread, NULL);
	if (s->reaper_started)
		pthread_join(s->reaper, NULL);
	queued = s->jobs;
	s->jobs = NULL;
	while (queued != NULL) {
		struct job *next = queued->next;

		fs_net_run_waiters(queued->waiters, -ESHUTDOWN);
		fs_net_job_free(queued);
		queued = next;
	}
	for (unsigned i = 0; i < s->nworkers; i++)
		if (!s->workers[i].started)
			imap_free(&s->workers[i].c);
	free(s->workers);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	pthread_cond_destroy(&s->reaper_cond);
	free(s);
	*sp = NULL;
}
