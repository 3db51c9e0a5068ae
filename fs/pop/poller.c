/* The poller thread and its sessions: log in, list, identify (ident.c),
 * retrieve (retr.c), DELE what pop_keep allows, QUIT; and the public calls
 * of poller.h.  See pop_int.h. */
#include "fs/pop/pop_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/log.h"

#define BACKOFF_MIN_S    5
/* At most this many RETR per session, so that a huge maildrop is taken in
 * steps and the lock is released between them. */
#define SESSION_MAX_MSGS 500

/* Crash tests stop mailfs at a chosen step: with MAILFS_TEST_PAUSE=STEP,
 * mailfs logs "pausing at STEP" and sleeps there, so that a test can kill
 * it with SIGKILL at exactly that point and check that nothing is lost. */
static void test_pause(const char *step)
{
	const char *want = getenv("MAILFS_TEST_PAUSE");

	if (want == NULL || strcmp(want, step) != 0)
		return;
	log_warn("pausing at %s (MAILFS_TEST_PAUSE)", step);
	sleep(3600);
}

struct pop_waiter {
	fs_sync_cb cb;
	void *ctx;
	struct pop_waiter *next;
};

struct mark_ctx {
	uint32_t *dls;
	size_t n;
};

static int mark_deleted(struct cache_txn *txn, void *ctx)
{
	struct mark_ctx *m = ctx;
	int rc = 0;

	for (size_t i = 0; i < m->n && rc == 0; i++)
		rc = cache_pop_set_deleted(txn, m->dls[i], true);
	return rc;
}

/* The session's client is p->c: read by this thread without the lock,
 * but set and taken away under it, because fs_pop_stop() wakes it with
 * pop3_shutdown() from another thread and must never see it freed. */
static void set_client(struct fs_pop *p, struct pop3_client *c)
{
	pthread_mutex_lock(&p->lock);
	p->c = c;
	pthread_mutex_unlock(&p->lock);
}

static struct pop3_client *take_client(struct fs_pop *p)
{
	struct pop3_client *c;

	pthread_mutex_lock(&p->lock);
	c = p->c;
	p->c = NULL;
	pthread_mutex_unlock(&p->lock);
	return c;
}

static int session(struct fs_pop *p)
{
	struct pop3_client *c = NULL;
	struct mailfs *fs = p->fs;
	struct retr_ctx r = {.p = p};
	struct proto_err err = {0};
	struct pop3_sink sink = {
	        .begin = fs_pop_retr_begin,
	        .data = fs_pop_retr_data,
	        .end = fs_pop_retr_end,
	        .ctx = &r,
	};
	struct drop d = {0};
	unsigned *want = NULL, *dele = NULL;
	uint32_t *dls = NULL;
	size_t nwant = 0, ndele = 0;
	int rc;

	r.d = &d;
	if (p->first != NULL) {
		c = p->first;
		p->first = NULL;
	} else {
		rc = login_pop3(fs->login, &fs->pop3, &c, &err);
		if (rc < 0) {
			if (!login_reported(fs->login, &err))
				log_warn("POP3 check failed: %s", err.text);
			return rc;
		}
	}
	set_client(p, c);
	c = NULL;
	rc = pop3_uidl_all(p->c, fs_pop_uidl_cb, &d, &err);
	if (rc == -ENOTSUP) {
		fs_pop_drop_free(&d);
		proto_err_clear(&err);
		rc = fs_pop_hash_ids(p, &d, &err);
	} else if (rc == 0) {
		rc = pop3_list_all(p->c, fs_pop_list_cb, &d, &err);
		if (rc == 0 && !d.oom)
			rc = fs_pop_reused_ids(p, &d, &err);
	}
	if (rc == 0 && d.oom)
		rc = -ENOMEM;
	if (rc == 0)
		rc = fs_pop_match_cache(p, &d);
	if (rc < 0)
		goto fail;
	for (size_t i = 0; i < d.n; i++)
		if (d.v[i].changed)
			log_info("POP3 message %u (%s, %u.eml) is listed with "
			         "%llu bytes, %llu before: retrieving it to "
			         "compare",
			         d.v[i].num, d.v[i].id, d.v[i].dl,
			         (unsigned long long)d.v[i].size,
			         (unsigned long long)d.v[i].known);

	want = calloc(d.n ? d.n : 1, sizeof(*want));
	if (want == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < d.n && nwant < SESSION_MAX_MSGS; i++)
		if (!d.v[i].cached && !d.v[i].skip)
			want[nwant++] = d.v[i].num;
	if (nwant > 0) {
		rc = pop3_retr_many(p->c, want, nwant, &sink, &err);
		if (rc < 0)
			goto fail;
		log_info("POP3: %zu new messages downloaded", r.stored);
	}
	for (size_t i = 0; i < d.ng; i++) {
		if (fs_pop_settled(&d, &d.g[i])) {
			rc = cache_run_write(fs->cache, fs_pop_settle_fn, &d);
			if (rc < 0)
				goto fail;
			break;
		}
	}

	/* pop_keep: DELE what is safely cached and old enough; QUIT
	 * commits it. */
	if (fs->opts.pop_keep_days >= 0) {
		int64_t limit =
		        (int64_t)time(NULL) - fs->opts.pop_keep_days * 86400;

		dele = calloc(d.n ? d.n : 1, sizeof(*dele));
		dls = calloc(d.n ? d.n : 1, sizeof(*dls));
		if (dele == NULL || dls == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
		for (size_t i = 0; i < d.n; i++) {
			struct drop_msg *m = &d.v[i];

			if (!m->cached || m->skip || m->downloaded > limit)
				continue;
			dele[ndele] = m->num;
			dls[ndele++] = m->dl;
		}
		if (ndele > 0) {
			test_pause("pop_before_dele");
			rc = pop3_dele_many(p->c, dele, ndele, &err);
			if (rc < 0) {
				/* Which ones the server took is unknown:
				 * mark none; the next session sees what is
				 * left and deletes it then. */
				log_warn("POP3 DELE failed: %s", err.text);
				ndele = 0;
			}
		}
	}
	c = take_client(p);
	rc = pop3_quit(&c, &err);
	if (rc < 0) {
		log_warn("POP3 QUIT failed: %s", err.text);
	} else if (ndele > 0) {
		struct mark_ctx m = {dls, ndele};

		if (cache_run_write(fs->cache, mark_deleted, &m) == 0)
			log_info("POP3: %zu messages deleted on the server "
			         "(pop_keep=%ld)",
			         ndele, fs->opts.pop_keep_days);
	}
	goto out;
fail:
	log_warn("POP3 check failed: %s",
	         err.text[0] ? err.text : strerror(-rc));
	/* No QUIT: the server must commit nothing of a failed session. */
	c = take_client(p);
	pop3_free(&c);
out:
	free(dele);
	free(dls);
	free(want);
	cache_body_stream_close(&r.st);
	free(r.buf);
	fs_pop_drop_free(&d);
	if (rc == 0 && r.rc < 0)
		rc = r.rc;
	return rc;
}

static void *poller_main(void *arg)
{
	struct fs_pop *p = arg;
	unsigned backoff = 0;

	pthread_mutex_lock(&p->lock);
	p->kick = true;
	for (;;) {
		struct pop_waiter *w;
		struct timespec ts;
		int rc;

		while (!p->stop && !p->kick) {
			unsigned wait = backoff ? backoff : p->fs->opts.poll;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += wait;
			if (pthread_cond_timedwait(&p->cond, &p->lock, &ts) ==
			    ETIMEDOUT)
				break;
		}
		if (p->stop)
			break;
		p->kick = false;
		w = p->waiters;
		p->waiters = NULL;
		pthread_mutex_unlock(&p->lock);

		rc = session(p);
		backoff = rc < 0 ? (backoff ? backoff * 2 : BACKOFF_MIN_S) : 0;
		if (backoff > p->fs->opts.poll)
			backoff = p->fs->opts.poll;
		while (w != NULL) {
			struct pop_waiter *next = w->next;

			w->cb(w->ctx, rc);
			free(w);
			w = next;
		}
		pthread_mutex_lock(&p->lock);
		p->ready = true;
	}
	/* Nobody will run these sessions. */
	while (p->waiters != NULL) {
		struct pop_waiter *w = p->waiters;

		p->waiters = w->next;
		pthread_mutex_unlock(&p->lock);
		w->cb(w->ctx, -ESHUTDOWN);
		free(w);
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int fs_pop_start(struct mailfs *fs, struct pop3_client *first,
                 struct fs_pop **pop_r)
{
	struct fs_pop *p = calloc(1, sizeof(*p));
	pthread_condattr_t ca;

	if (p == NULL)
		return -ENOMEM;
	p->fs = fs;
	p->first = first;
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&p->thread, NULL, poller_main, p) != 0) {
		pthread_mutex_destroy(&p->lock);
		pthread_cond_destroy(&p->cond);
		free(p);
		return -EAGAIN;
	}
	p->started = true;
	*pop_r = p;
	return 0;
}

void fs_pop_stop(struct fs_pop **pp)
{
	struct fs_pop *p = *pp;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	if (p->c != NULL)
		pop3_shutdown(p->c);
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->started)
		pthread_join(p->thread, NULL);
	pop3_free(&p->c);
	pop3_free(&p->first);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
	*pp = NULL;
}

int fs_pop_check(struct fs_pop *p, fs_sync_cb cb, void *ctx)
{
	struct pop_waiter *w = NULL;

	if (cb != NULL) {
		w = calloc(1, sizeof(*w));
		if (w == NULL)
			return -ENOMEM;
		w->cb = cb;
		w->ctx = ctx;
	}
	pthread_mutex_lock(&p->lock);
	if (p->stop) {
		pthread_mutex_unlock(&p->lock);
		free(w);
		return -ENOTCONN;
	}
	if (w != NULL) {
		w->next = p->waiters;
		p->waiters = w;
	}
	p->kick = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

bool fs_pop_ready(struct fs_pop *p)
{
	bool r;

	pthread_mutex_lock(&p->lock);
	r = p->ready;
	pthread_mutex_unlock(&p->lock);
	return r;
}
