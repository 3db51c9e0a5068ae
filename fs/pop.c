#include "fs/pop.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

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

struct fs_pop {
	struct mailfs *fs;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	bool kick;
	bool ready;
	struct pop_waiter *waiters; /* run after the next session */
	struct pop3_client *c;      /* owned; the session's connection */
	struct pop3_client *first;  /* owned until the first session */
	bool warned_no_uidl;
};

/* One message of the server's maildrop in this session. */
struct drop_msg {
	unsigned num;
	char *uid; /* owned: UIDL, or a hash when the server has none */
	uint64_t size;
	bool cached;
	/* The server has listed this UIDL for more than one message, now
	 * or in an earlier session: which copy is which cannot be told for
	 * sure, so such messages are never deleted (pop_keep). */
	bool reused;
};

struct drop {
	struct drop_msg *v;
	size_t n, cap;
	bool oom;
};

static void drop_free(struct drop *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].uid);
	free(d->v);
	memset(d, 0, sizeof(*d));
}

static void uidl_cb(void *ctx, unsigned num, const char *uid)
{
	struct drop *d = ctx;
	struct drop_msg *m;

	if (d->n == d->cap) {
		size_t ncap = d->cap ? d->cap * 2 : 64;
		struct drop_msg *nv = realloc(d->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			d->oom = true;
			return;
		}
		d->v = nv;
		d->cap = ncap;
	}
	m = &d->v[d->n];
	memset(m, 0, sizeof(*m));
	m->num = num;
	m->uid = strdup(uid);
	if (m->uid == NULL) {
		d->oom = true;
		return;
	}
	d->n++;
}

static void list_cb(void *ctx, unsigned num, uint64_t size)
{
	struct drop *d = ctx;

	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].num == num)
			d->v[i].size = size;
}

/* Without UIDL a message is known by a hash of its size and headers
 * (TOP n 0), prefixed so that it can never equal a real UIDL. */
static int hash_ids(struct fs_pop *p, struct drop *d, struct proto_err *err)
{
	unsigned count = 0;
	uint64_t total;
	int rc;

	if (!p->warned_no_uidl) {
		log_warn("the POP3 server has no UIDL: messages are told apart "
		         "by a hash of their size and headers");
		p->warned_no_uidl = true;
	}
	rc = pop3_stat(p->c, &count, &total, err);
	if (rc < 0)
		return rc;
	for (unsigned i = 1; i <= count; i++)
		uidl_cb(d, i, "");
	rc = pop3_list_all(p->c, list_cb, d, err);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < d->n && !d->oom; i++) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned mdlen = 0;
		char *head = NULL, *id;
		size_t hlen = 0;
		EVP_MD_CTX *h;

		rc = pop3_top_buf(p->c, d->v[i].num, 0, &head, &hlen, err);
		if (rc < 0)
			return rc;
		h = EVP_MD_CTX_new();
		if (h == NULL ||
		    EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1 ||
		    EVP_DigestUpdate(h, &d->v[i].size, sizeof(d->v[i].size)) !=
		            1 ||
		    EVP_DigestUpdate(h, head, hlen) != 1 ||
		    EVP_DigestFinal_ex(h, md, &mdlen) != 1) {
			EVP_MD_CTX_free(h);
			free(head);
			return -ENOMEM;
		}
		EVP_MD_CTX_free(h);
		free(head);
		id = malloc(2 * mdlen + 8);
		if (id == NULL)
			return -ENOMEM;
		strcpy(id, "sha256:");
		for (unsigned k = 0; k < mdlen; k++)
			sprintf(id + 7 + 2 * k, "%02x", md[k]);
		free(d->v[i].uid);
		d->v[i].uid = id;
	}
	return d->oom ? -ENOMEM : 0;
}

/* Two messages under one UIDL (a server bug): the later ones get a
 * suffix so that none of them is lost or taken for the other. */
/* The meta name that remembers a reused UIDL: "popdup." and a hash. */
static void reused_name(const char *uid, char name[32])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	EVP_Digest(uid, strlen(uid), md, &mdlen, EVP_sha256(), NULL);
	snprintf(name, 32, "popdup.%02x%02x%02x%02x%02x%02x%02x%02x", md[0],
	         md[1], md[2], md[3], md[4], md[5], md[6], md[7]);
}

static void dedup_ids(struct drop *d)
{
	for (size_t i = 0; i < d->n; i++)
		for (size_t j = 0; j < d->n; j++)
			if (i != j && strcmp(d->v[i].uid, d->v[j].uid) == 0)
				d->v[i].reused = true;
	for (size_t i = 1; i < d->n; i++) {
		unsigned dup = 0;
		char *id;

		for (size_t j = 0; j < i; j++)
			if (strcmp(d->v[i].uid, d->v[j].uid) == 0)
				dup++;
		if (dup == 0)
			continue;
		if (asprintf(&id, "%s#%u", d->v[i].uid, dup) < 0)
			continue;
		log_warn("the POP3 server lists UIDL %s for more than one "
		         "message; keeping each (the copy is %s)",
		         d->v[i].uid, id);
		free(d->v[i].uid);
		d->v[i].uid = id;
	}
}

struct known_ctx {
	struct drop *d;
};

static int mark_reused(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;
	int rc = 0;

	for (size_t i = 0; i < d->n && rc == 0; i++) {
		char name[32];
		char *hash = strchr(d->v[i].uid, '#');

		if (!d->v[i].reused)
			continue;
		/* Remember the UIDL as the server spells it (no suffix). */
		if (hash != NULL)
			*hash = '\0';
		reused_name(d->v[i].uid, name);
		if (hash != NULL)
			*hash = '#';
		rc = cache_meta_set(txn, name, 1);
	}
	return rc;
}

static int known_read(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;

	for (size_t i = 0; i < d->n; i++) {
		uint32_t num;
		uint64_t flag;
		char name[32];
		int rc;

		char *hash = strchr(d->v[i].uid, '#');

		if (hash != NULL)
			*hash = '\0';
		reused_name(d->v[i].uid, name);
		if (hash != NULL)
			*hash = '#';
		if (cache_meta_get(txn, name, &flag) == 0)
			d->v[i].reused = true;
		rc = cache_pop_lookup(txn, d->v[i].uid, &num);

		if (rc == 0)
			d->v[i].cached = true;
		else if (rc != -ENOENT)
			return rc;
	}
	return 0;
}

/* RETR sink: collect one message, commit it to the cache when whole. */
struct retr_ctx {
	struct fs_pop *p;
	struct drop *d;
	char *buf;
	size_t len, cap;
	size_t stored;
	int rc;
};

static struct drop_msg *find_num(struct drop *d, unsigned num)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].num == num)
			return &d->v[i];
	return NULL;
}

static int retr_begin(void *ctx, unsigned num)
{
	struct retr_ctx *r = ctx;

	(void)num;
	r->len = 0;
	return 0;
}

static int retr_data(void *ctx, unsigned num, const char *buf, size_t len)
{
	struct retr_ctx *r = ctx;

	(void)num;
	if (r->cap - r->len < len) {
		size_t ncap = r->cap ? r->cap : 64 * 1024;
		char *n;

		while (ncap - r->len < len)
			ncap *= 2;
		n = realloc(r->buf, ncap);
		if (n == NULL)
			return -ENOMEM;
		r->buf = n;
		r->cap = ncap;
	}
	memcpy(r->buf + r->len, buf, len);
	r->len += len;
	return 0;
}

static void retr_end(void *ctx, unsigned num, int rc, const struct proto_err *e)
{
	struct retr_ctx *r = ctx;
	struct drop_msg *m = find_num(r->d, num);
	uint32_t dl = 0;

	if (m == NULL)
		return;
	if (rc < 0) {
		log_warn("cannot download POP3 message %u (%s): %s", num,
		         m->uid, e && e->text[0] ? e->text : strerror(-rc));
		r->rc = rc;
		return;
	}
	/* The bytes are committed, with the UIDL, before anything else
	 * happens to this message. */
	rc = cache_pop_add_once(r->p->fs->cache, m->uid, r->buf ? r->buf : "",
	                        r->len, (int64_t)time(NULL), &dl);
	if (rc < 0) {
		log_err("cannot store POP3 message %s in the cache: %s", m->uid,
		        strerror(-rc));
		r->rc = rc;
		return;
	}
	m->cached = true;
	r->stored++;
	log_debug("POP3 message %u (%s) stored as %u.eml, %zu bytes", num,
	          m->uid, dl, r->len);
}

struct expire_ctx {
	struct drop *d;
	int64_t limit; /* downloaded at or before this: may go */
	unsigned *nums;
	uint32_t *dls;
	size_t n;
};

static int expire_read(struct cache_txn *txn, void *ctx)
{
	struct expire_ctx *x = ctx;

	for (size_t i = 0; i < x->d->n; i++) {
		struct cache_pop *rec = NULL;
		uint32_t dl;
		int rc;

		if (!x->d->v[i].cached)
			continue;
		if (x->d->v[i].reused) {
			log_warn("POP3: not deleting message %u: the server "
			         "has used its UIDL %s for more than one "
			         "message, so it cannot be told apart safely",
			         x->d->v[i].num, x->d->v[i].uid);
			continue;
		}
		rc = cache_pop_lookup(txn, x->d->v[i].uid, &dl);
		if (rc == 0)
			rc = cache_pop_get(txn, dl, &rec);
		if (rc == -ENOENT)
			continue;
		if (rc < 0)
			return rc;
		if (rec->downloaded <= x->limit) {
			x->nums[x->n] = x->d->v[i].num;
			x->dls[x->n] = dl;
			x->n++;
		}
		cache_pop_free(&rec);
	}
	return 0;
}

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

static int session(struct fs_pop *p)
{
	struct mailfs *fs = p->fs;
	struct retr_ctx r = {.p = p};
	struct expire_ctx x = {0};
	struct proto_err err = {0};
	struct pop3_sink sink = {
	        .begin = retr_begin,
	        .data = retr_data,
	        .end = retr_end,
	        .ctx = &r,
	};
	struct drop d = {0};
	unsigned *want = NULL;
	size_t nwant = 0;
	int rc;

	r.d = &d;
	if (p->first != NULL) {
		p->c = p->first;
		p->first = NULL;
	} else {
		rc = pop3_connect(&p->c, &fs->pop3, &err);
		if (rc < 0) {
			log_warn("POP3 check failed: %s", err.text);
			return rc;
		}
	}
	rc = pop3_uidl_all(p->c, uidl_cb, &d, &err);
	if (rc == -ENOTSUP) {
		drop_free(&d);
		proto_err_clear(&err);
		rc = hash_ids(p, &d, &err);
	} else if (rc == 0) {
		rc = pop3_list_all(p->c, list_cb, &d, &err);
	}
	if (rc == 0 && d.oom)
		rc = -ENOMEM;
	if (rc < 0)
		goto fail;
	dedup_ids(&d);
	for (size_t i = 0; i < d.n; i++) {
		if (d.v[i].reused) {
			rc = cache_run_write(fs->cache, mark_reused, &d);
			if (rc < 0)
				goto fail;
			break;
		}
	}
	rc = cache_run_read(fs->cache, known_read, &d);
	if (rc < 0)
		goto fail;

	want = calloc(d.n ? d.n : 1, sizeof(*want));
	if (want == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < d.n && nwant < SESSION_MAX_MSGS; i++)
		if (!d.v[i].cached)
			want[nwant++] = d.v[i].num;
	if (nwant > 0) {
		rc = pop3_retr_many(p->c, want, nwant, &sink, &err);
		if (rc < 0)
			goto fail;
		log_info("POP3: %zu new messages downloaded", r.stored);
	}

	/* pop_keep: DELE what is safely cached and old enough; QUIT
	 * commits it. */
	if (fs->opts.pop_keep_days >= 0) {
		x.d = &d;
		x.limit = (int64_t)time(NULL) - fs->opts.pop_keep_days * 86400;
		x.nums = calloc(d.n ? d.n : 1, sizeof(*x.nums));
		x.dls = calloc(d.n ? d.n : 1, sizeof(*x.dls));
		if (x.nums == NULL || x.dls == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
		rc = cache_run_read(fs->cache, expire_read, &x);
		if (rc < 0)
			goto fail;
		if (x.n > 0) {
			test_pause("pop_before_dele");
			rc = pop3_dele_many(p->c, x.nums, x.n, &err);
			if (rc < 0)
				log_warn("POP3 DELE failed: %s", err.text);
		}
	}
	rc = pop3_quit(&p->c, &err);
	if (rc < 0) {
		log_warn("POP3 QUIT failed: %s", err.text);
	} else if (x.n > 0) {
		struct mark_ctx m = {x.dls, x.n};

		if (cache_run_write(fs->cache, mark_deleted, &m) == 0)
			log_info("POP3: %zu messages deleted on the server "
			         "(pop_keep=%ld)",
			         x.n, fs->opts.pop_keep_days);
	}
	goto out;
fail:
	log_warn("POP3 check failed: %s",
	         err.text[0] ? err.text : strerror(-rc));
	/* No QUIT: the server must commit nothing of a failed session. */
	pop3_free(&p->c);
out:
	free(x.nums);
	free(x.dls);
	free(want);
	free(r.buf);
	drop_free(&d);
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
