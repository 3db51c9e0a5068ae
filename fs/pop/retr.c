/* Retrieving messages (the RETR sink) and storing them in the cache: a
 * new message streamed to the cache and filed, one whose copies or
 * versions are cached compared with them by its bytes first.  See
 * pop_int.h. */
#include "fs/pop/pop_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/log.h"

static struct drop_msg *find_num(struct drop *d, unsigned num)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].num == num)
			return &d->v[i];
	return NULL;
}

int fs_pop_retr_begin(void *ctx, unsigned num)
{
	struct retr_ctx *r = ctx;
	struct drop_msg *m = find_num(r->d, num);

	r->len = 0;
	cache_body_stream_close(&r->st);
	if (m == NULL || m->changed || (m->keyed && r->d->g[m->group].compare))
		return 0;
	return cache_body_stream_new(r->p->fs->cache, &r->st);
}

int fs_pop_retr_data(void *ctx, unsigned num, const char *buf, size_t len)
{
	struct retr_ctx *r = ctx;

	(void)num;
	if (r->st != NULL) {
		int rc = cache_body_stream_write(r->st, buf, len);

		if (rc == 0)
			r->len += len;
		return rc;
	}
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

static int same_view(void *ctx, const void *data, size_t n)
{
	const struct retr_ctx *r = ctx;

	return n == r->len && memcmp(data, r->buf, n) == 0;
}

/* The cached versions of a message whose size changed on the server:
 * the one filed under its UIDL name and its changed versions, as the
 * candidates of no group in d. */
struct versions {
	const char *id;   /* borrowed: the message's UIDL name */
	const char *uidl; /* borrowed */
	char *changed;    /* owned: fs_pop_changed_base(id) */
	struct drop d;    /* only d.c */
};

static int versions_read(struct cache_txn *txn, void *ctx)
{
	struct versions *x = ctx;
	uint32_t dl;
	int rc = cache_pop_lookup(txn, x->id, &dl);

	x->d.nc = 0;
	if (rc == 0)
		rc = fs_pop_add_cand(txn, &x->d, dl, NO_GROUP, x->uidl);
	else if (rc == -ENOENT)
		rc = 0;
	if (rc == 0)
		rc = fs_pop_find_copies(txn, &x->d, x->changed, NO_GROUP,
		                        x->uidl);
	return rc;
}

/* What a changed message comes to: its new size remembered, and, when
 * body is not NULL, its new version stored (filed as the first free name
 * of changed), in one transaction. */
struct change {
	const char *id;
	const char *changed;
	uint64_t listed;
	const void *body;
	size_t len;
	int64_t when;
	uint32_t dl; /* out: the new version's download number */
};

static int change_fn(struct cache_txn *txn, void *ctx)
{
	struct change *ch = ctx;
	char *name = NULL;
	int rc = 0;

	if (ch->body != NULL) {
		rc = fs_pop_free_name(txn, ch->changed, &name);
		if (rc == 0)
			rc = cache_pop_add(txn, name, ch->body, ch->len,
			                   ch->when, &ch->dl);
		free(name);
	}
	if (rc == 0)
		rc = fs_pop_remember_size(txn, ch->id, ch->listed);
	return rc;
}

static int same_version(void *ctx, const void *data, size_t n)
{
	const struct retr_ctx *r = ctx;

	return fs_pop_same_but_volatile(data, n, r->buf ? r->buf : "", r->len);
}

/* A changed message is retrieved: compared with its cached versions, and
 * kept as a new one unless it is one of them. */
static void retr_changed(struct retr_ctx *r, struct drop_msg *m)
{
	struct cache *cache = r->p->fs->cache;
	struct versions x = {.id = m->id, .uidl = m->uidl};
	struct change ch = {
	        .id = m->id,
	        .listed = m->size,
	        .len = r->len,
	        .when = (int64_t)time(NULL),
	};
	const struct cand *same = NULL;
	uint32_t newest = m->dl;
	int rc = fs_pop_changed_base(m->id, &x.changed);

	if (rc == 0)
		rc = cache_run_read(cache, versions_read, &x);
	for (size_t i = 0; i < x.d.nc && rc == 0 && same == NULL; i++) {
		struct cache_key key = {CACHE_POP_MAILBOX_ID,
		                        CACHE_POP_UIDVALIDITY, x.d.c[i].dl};
		int s = cache_body_view_once(cache, key, 0, x.d.c[i].size,
		                             same_version, r);

		if (s == 1)
			same = &x.d.c[i];
		else if (s < 0 && s != -ENOENT)
			rc = s;
	}
	for (size_t i = 0; i < x.d.nc; i++)
		if (x.d.c[i].dl > newest)
			newest = x.d.c[i].dl;
	ch.changed = x.changed;
	if (same == NULL)
		ch.body = r->buf ? r->buf : "";
	/* The new version is committed, with the size that says it is
	 * cached, before anything else happens to this message. */
	if (rc == 0)
		rc = cache_run_write(cache, change_fn, &ch);
	if (rc < 0) {
		log_err("cannot store POP3 message %s in the cache: %s", m->id,
		        strerror(-rc));
		r->rc = rc;
		goto out;
	}
	m->cached = true;
	if (same != NULL) {
		m->dl = same->dl;
		m->downloaded = same->downloaded;
		log_info("POP3 message %u (%s) is %u.eml: only header fields "
		         "that the server rewrites (Status: and the like) "
		         "changed",
		         m->num, m->id, same->dl);
		goto out;
	}
	m->dl = ch.dl;
	m->downloaded = ch.when;
	r->stored++;
	log_warn("POP3 message UIDL %s changed on the server; both versions "
	         "kept as %u.eml and %u.eml",
	         m->uidl, newest, ch.dl);
out:
	free(x.changed);
	fs_pop_drop_free(&x.d);
}

/* The candidate of m's group (or a legacy one of its UIDL) that holds
 * exactly the bytes just retrieved, or NULL. */
static struct cand *same_bytes(struct retr_ctx *r, struct drop_msg *m)
{
	struct drop *d = r->d;
	const struct group *g = &d->g[m->group];

	for (size_t i = 0; i < d->nc; i++) {
		struct cand *c = &d->c[i];
		struct cache_key key = {CACHE_POP_MAILBOX_ID,
		                        CACHE_POP_UIDVALIDITY, c->dl};

		if (c->claimed || c->size != r->len)
			continue;
		if (c->group != m->group &&
		    (c->group != NO_GROUP || g->uidl == NULL ||
		     strcmp(c->uidl, g->uidl) != 0))
			continue;
		if (cache_body_view_once(r->p->fs->cache, key, 0, r->len,
		                         same_view, r) == 1)
			return c;
	}
	return NULL;
}

void fs_pop_retr_end(void *ctx, unsigned num, int rc, const struct proto_err *e)
{
	struct retr_ctx *r = ctx;
	struct drop_msg *m = find_num(r->d, num);
	struct filing f = {0};
	struct cand *c = NULL;

	if (m == NULL) {
		cache_body_stream_close(&r->st);
		return;
	}
	if (rc < 0) {
		log_warn("cannot download POP3 message %u (%s): %s", num, m->id,
		         e && e->text[0] ? e->text : strerror(-rc));
		r->rc = rc;
		cache_body_stream_close(&r->st);
		return;
	}
	if (m->changed) {
		retr_changed(r, m);
		return;
	}
	if (m->keyed && r->d->g[m->group].compare)
		c = same_bytes(r, m);
	f.id = m->id;
	f.copy = m->keyed;
	f.alias = c != NULL && c->legacy ? c->dl : 0;
	f.body = r->buf ? r->buf : "";
	f.len = r->len;
	f.stream = r->st;
	f.listed = m->size;
	f.when = (int64_t)time(NULL);
	/* The bytes are committed, with the identity, before anything else
	 * happens to this message. */
	if (c == NULL || c->legacy)
		rc = cache_run_write(r->p->fs->cache, fs_pop_file_fn, &f);
	cache_body_stream_close(&r->st);
	if (rc < 0) {
		log_err("cannot store POP3 message %s in the cache: %s", m->id,
		        strerror(-rc));
		r->rc = rc;
		return;
	}
	m->cached = true;
	if (c != NULL) {
		c->claimed = true;
		c->legacy = false;
		c->group = m->group;
		m->dl = c->dl;
		m->downloaded = c->downloaded;
		log_info("POP3 message %u (%s) is %u.eml, already cached", num,
		         m->id, c->dl);
		return;
	}
	m->dl = f.dl;
	m->downloaded = f.when;
	r->stored++;
	log_debug("POP3 message %u (%s) stored as %u.eml, %zu bytes", num,
	          m->id, f.dl, r->len);
}
