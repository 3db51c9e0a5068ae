/* Telling the messages of a maildrop apart: their identities (UIDL,
 * reused UIDLs, the SHA-256 of size and header), the marks kept for them
 * in the cache (popdup., popcmp., popsize.), which listed message is which
 * cached one, the names messages are filed under, and when two versions of
 * a message are the same (fs_pop_same_but_volatile).  See pop_int.h. */
#include "fs/pop/pop_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "proto/log.h"

void fs_pop_drop_free(struct drop *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->v[i].uidl);
		free(d->v[i].id);
	}
	free(d->v);
	free(d->by);
	free(d->g);
	free(d->c);
	memset(d, 0, sizeof(*d));
}

/* Room for element n of *v (*cap elements of size bytes). */
static bool grow(void **v, size_t n, size_t *cap, size_t size)
{
	size_t ncap = *cap ? *cap * 2 : 64;
	void *nv;

	if (n < *cap)
		return true;
	nv = realloc(*v, ncap * size);
	if (nv == NULL)
		return false;
	*v = nv;
	*cap = ncap;
	return true;
}

/* Cache names are at most CACHE_POP_UIDL_MAX bytes, and some are made of
 * a UIDL and a suffix: a UIDL as long as a name (POP3 allows 512) cannot
 * be used as it stands.  name_base(s, extra) is s when s and extra more
 * bytes fit in a name, else "uidl-sha256 HEX" (HEX: the SHA-256 of s) in
 * buf.  No UIDL has a space, and no other name is 64 hex digits after
 * its first space, so it cannot be taken for another name.  Names that
 * fitted before stay as they were. */
#define HASHED_LEN    (sizeof("uidl-sha256 ") - 1 + 64)
/* "UIDL sha256:HEX" (head_id): the bound an older mailfs filed it under,
 * so that those names stay the same. */
#define KEYED_EXTRA   (sizeof(" sha256:") - 1 + 64)
#define CHANGED_TAG   " changed"
#define CHANGED_EXTRA (sizeof(CHANGED_TAG) - 1 + sizeof("#4294967295") - 1)

static const char *name_base(const char *s, size_t extra,
                             char buf[HASHED_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	int k;

	if (strlen(s) + extra <= CACHE_POP_UIDL_MAX)
		return s;
	EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL);
	k = snprintf(buf, HASHED_LEN + 1, "uidl-sha256 ");
	for (unsigned i = 0; i < mdlen && i < 32; i++)
		k += snprintf(buf + k, HASHED_LEN + 1 - (size_t)k, "%02x",
		              md[i]);
	return buf;
}

/* The name of the changed versions of the message filed as id (a UIDL
 * name): "ID changed", then "ID changed#1"...  *name_r owned. */
int fs_pop_changed_base(const char *id, char **name_r)
{
	char buf[HASHED_LEN + 1];

	if (asprintf(name_r, "%s" CHANGED_TAG,
	             name_base(id, CHANGED_EXTRA, buf)) < 0) {
		*name_r = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* A message of the listing; uidl NULL on a server without UIDL. */
static void drop_push(struct drop *d, unsigned num, const char *uidl)
{
	struct drop_msg *m;

	if (d->oom || !grow((void **)&d->v, d->n, &d->cap, sizeof(*d->v))) {
		d->oom = true;
		return;
	}
	m = &d->v[d->n];
	memset(m, 0, sizeof(*m));
	m->num = num;
	if (uidl != NULL) {
		char buf[HASHED_LEN + 1];

		m->uidl = strdup(uidl);
		m->id = strdup(name_base(uidl, 0, buf));
		if (m->uidl == NULL || m->id == NULL) {
			free(m->uidl);
			free(m->id);
			d->oom = true;
			return;
		}
	}
	d->n++;
}

void fs_pop_uidl_cb(void *ctx, unsigned num, const char *uid)
{
	drop_push(ctx, num, uid);
}

void fs_pop_list_cb(void *ctx, unsigned num, uint64_t size)
{
	struct drop *d = ctx;

	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].num == num)
			d->v[i].size = size;
}

/* The identity of a message by its size and header (what TOP n 0 sends):
 * "sha256:HEX", after "UIDL " when it has a UIDL.  *id_r owned. */
static int head_id(const char *uidl, uint64_t size, const char *head,
                   size_t hlen, char **id_r)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	char hex[2 * EVP_MAX_MD_SIZE + 1] = "", buf[HASHED_LEN + 1];
	unsigned mdlen = 0;
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	bool ok = h != NULL && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 &&
	          EVP_DigestUpdate(h, &size, sizeof(size)) == 1 &&
	          EVP_DigestUpdate(h, head, hlen) == 1 &&
	          EVP_DigestFinal_ex(h, md, &mdlen) == 1;

	EVP_MD_CTX_free(h);
	*id_r = NULL;
	if (!ok)
		return -ENOMEM;
	for (unsigned k = 0; k < mdlen; k++)
		sprintf(hex + 2 * k, "%02x", md[k]);
	if (uidl != NULL)
		uidl = name_base(uidl, KEYED_EXTRA, buf);
	if (asprintf(id_r, "%s%ssha256:%s", uidl ? uidl : "", uidl ? " " : "",
	             hex) < 0) {
		*id_r = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* The length of a message's header and the blank line after it, which
 * is what TOP n 0 sends: up to the first empty line, else all of it. */
static size_t head_len(const char *p, size_t n)
{
	size_t i = 0; /* the start of a line */

	for (;;) {
		const char *nl;

		if (i < n && p[i] == '\n')
			return i + 1;
		if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n')
			return i + 2;
		nl = memchr(p + i, '\n', n - i);
		if (nl == NULL)
			return n;
		i = (size_t)(nl - p) + 1;
	}
}

/* Identify m by its size and header (TOP n 0).  A message the server
 * will not show now (-ERR) is left alone for this session (m->skip);
 * -ENOTSUP: the server has no TOP. */
static int top_id(struct fs_pop *p, struct drop_msg *m, struct proto_err *err)
{
	char *head = NULL, *id = NULL;
	size_t hlen = 0;
	int rc = pop3_top_buf(p->c, m->num, 0, &head, &hlen, err);

	if (rc == 0) {
		rc = head_id(m->uidl, m->size, head, hlen, &id);
		free(head);
		if (rc < 0)
			return rc;
		free(m->id);
		m->id = id;
		m->keyed = true;
		return 0;
	}
	if (rc == -ENOTSUP || err->cls != PERR_NO || pop3_error(p->c) != NULL)
		return rc;
	log_warn("POP3 message %u cannot be identified now (TOP: %s); left "
	         "for a later check",
	         m->num, err->text);
	proto_err_clear(err);
	m->skip = true;
	return 0;
}

/* Without UIDL every message is known by its size and header. */
int fs_pop_hash_ids(struct fs_pop *p, struct drop *d, struct proto_err *err)
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
		drop_push(d, i, NULL);
	rc = pop3_list_all(p->c, fs_pop_list_cb, d, err);
	for (size_t i = 0; i < d->n && !d->oom && rc == 0; i++)
		rc = top_id(p, &d->v[i], err);
	return d->oom ? -ENOMEM : rc;
}

static int cmp_id(const void *a, const void *b)
{
	const struct drop_msg *x = *(struct drop_msg *const *)a;
	const struct drop_msg *y = *(struct drop_msg *const *)b;
	int c = strcmp(x->id, y->id);

	if (c != 0)
		return c;
	return x->num < y->num ? -1 : x->num > y->num;
}

/* d->by: the messages with an id, not skipped, sorted by id and number,
 * so that the messages of one id are next to each other. */
static int sort_by_id(struct drop *d)
{
	free(d->by);
	d->nby = 0;
	d->by = calloc(d->n ? d->n : 1, sizeof(*d->by));
	if (d->by == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].id != NULL && !d->v[i].skip)
			d->by[d->nby++] = &d->v[i];
	qsort(d->by, d->nby, sizeof(*d->by), cmp_id);
	return 0;
}

/* The end of the run of messages of d->by[i]'s id. */
static size_t run_end(const struct drop *d, size_t i)
{
	size_t j = i + 1;

	while (j < d->nby && strcmp(d->by[i]->id, d->by[j]->id) == 0)
		j++;
	return j;
}

static int reused_read(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;
	uint64_t flag;

	for (size_t i = 0; i < d->n; i++) {
		if (cache_pop_mark_get(txn, CACHE_POP_DUP, d->v[i].uidl,
		                       &flag) == 0)
			d->v[i].reused = true;
	}
	return cache_txn_error(txn);
}

struct reused_new {
	struct drop_msg **v; /* borrowed */
	size_t n;
};

static int reused_write(struct cache_txn *txn, void *ctx)
{
	struct reused_new *w = ctx;
	int rc = 0;

	for (size_t i = 0; i < w->n && rc == 0; i++)
		rc = cache_pop_mark_set(txn, CACHE_POP_DUP, w->v[i]->uidl, 1);
	return rc;
}

/* With UIDL: a UIDL listed for more than one message is remembered (in
 * the cache, before anything relies on it), and the messages of every
 * reused UIDL are identified by their size and header too. */
int fs_pop_reused_ids(struct fs_pop *p, struct drop *d, struct proto_err *err)
{
	struct reused_new w = {0};
	int rc = sort_by_id(d);

	if (rc == 0)
		rc = cache_run_read(p->fs->cache, reused_read, d);
	w.v = calloc(d->nby ? d->nby : 1, sizeof(*w.v));
	if (rc == 0 && w.v == NULL)
		rc = -ENOMEM;
	for (size_t i = 0, j; rc == 0 && i < d->nby; i = j) {
		j = run_end(d, i);
		if (j - i == 1)
			continue;
		if (!d->by[i]->reused)
			w.v[w.n++] = d->by[i];
		for (size_t k = i; k < j; k++)
			d->by[k]->reused = true;
	}
	if (rc == 0 && w.n > 0)
		rc = cache_run_write(p->fs->cache, reused_write, &w);
	for (size_t i = 0; rc == 0 && i < w.n; i++)
		log_warn("the POP3 server lists UIDL %s for more than one "
		         "message: its messages are told apart by a hash of "
		         "their size and headers from now on",
		         w.v[i]->uidl);
	free(w.v);
	for (size_t i = 0; rc == 0 && i < d->n; i++) {
		struct drop_msg *m = &d->v[i];

		if (!m->reused)
			continue;
		rc = top_id(p, m, err);
		if (rc == -ENOTSUP) {
			log_warn("POP3 message %u cannot be told apart from "
			         "the others of UIDL %s: the server has no "
			         "TOP; left alone",
			         m->num, m->uidl);
			proto_err_clear(err);
			m->skip = true;
			rc = 0;
		}
	}
	return rc;
}

/* d->g: the groups of the keyed messages. */
static int make_groups(struct drop *d)
{
	int rc = sort_by_id(d);

	if (rc < 0)
		return rc;
	d->g = calloc(d->nby ? d->nby : 1, sizeof(*d->g));
	if (d->g == NULL)
		return -ENOMEM;
	for (size_t i = 0, j; i < d->nby; i = j) {
		struct group *g = &d->g[d->ng];

		j = run_end(d, i);
		if (!d->by[i]->keyed)
			continue;
		g->id = d->by[i]->id;
		g->uidl = d->by[i]->uidl;
		g->first = i;
		g->listed = j - i;
		g->newest = INT64_MIN;
		for (size_t k = i; k < j; k++)
			d->by[k]->group = d->ng;
		d->ng++;
	}
	return 0;
}

/* Cached message dl as a candidate of group (NO_GROUP: legacy, of uidl). */
int fs_pop_add_cand(struct cache_txn *txn, struct drop *d, uint32_t dl,
                    size_t group, const char *uidl)
{
	struct cache_pop *rec = NULL;
	struct cand *c;
	int rc;

	/* A legacy message already filed under an identity is a copy. */
	for (size_t i = 0; group == NO_GROUP && i < d->nc; i++)
		if (d->c[i].dl == dl)
			return 0;
	rc = cache_pop_get(txn, dl, &rec);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	if (!grow((void **)&d->c, d->nc, &d->ccap, sizeof(*d->c))) {
		cache_pop_free(&rec);
		return -ENOMEM;
	}
	c = &d->c[d->nc++];
	*c = (struct cand){
	        .dl = dl,
	        .size = rec->size,
	        .downloaded = rec->downloaded,
	        .group = group,
	        .uidl = uidl,
	        .legacy = group == NO_GROUP,
	};
	if (group != NO_GROUP)
		d->g[group].cached++;
	cache_pop_free(&rec);
	return 0;
}

struct copies {
	struct cache_txn *txn;
	struct drop *d;
	size_t group;
	const char *uidl;
	size_t plen; /* of "BASE#" */
};

static int copy_cb(const char *name, uint32_t num, void *ctx)
{
	struct copies *x = ctx;
	const char *n = name + x->plen;

	if (*n == '\0' || n[strspn(n, "0123456789")] != '\0')
		return 0;
	return fs_pop_add_cand(x->txn, x->d, num, x->group, x->uidl);
}

/* The messages filed as base, base#1, base#2...: candidates of group. */
int fs_pop_find_copies(struct cache_txn *txn, struct drop *d, const char *base,
                       size_t group, const char *uidl)
{
	struct copies x = {txn, d, group, uidl, strlen(base) + 1};
	char *prefix;
	uint32_t num;
	int rc = cache_pop_lookup(txn, base, &num);

	if (rc == 0)
		rc = fs_pop_add_cand(txn, d, num, group, uidl);
	else if (rc == -ENOENT)
		rc = 0;
	if (rc < 0)
		return rc;
	if (asprintf(&prefix, "%s#", base) < 0)
		return -ENOMEM;
	rc = cache_pop_uidl_foreach(txn, prefix, copy_cb, &x);
	free(prefix);
	return rc;
}

struct head_ctx {
	const struct cand *c;
	char *id; /* owned */
};

static int head_view(void *ctx, const void *data, size_t n)
{
	struct head_ctx *h = ctx;

	return head_id(h->c->uidl, h->c->size, data, head_len(data, n), &h->id);
}

/* A legacy candidate whose cached header and size give the identity of a
 * group that has fewer copies than messages is one of them. */
static int match_head(struct cache_txn *txn, struct drop *d, struct cand *c)
{
	struct cache_key key = {CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY,
	                        c->dl};
	struct head_ctx h = {c, NULL};
	int rc = cache_body_view(txn, key, 0, c->size, head_view, &h);

	if (rc == -ENOENT)
		return 0;
	for (size_t i = 0; rc == 0 && i < d->ng; i++) {
		struct group *g = &d->g[i];

		if (g->uidl != NULL && strcmp(g->uidl, c->uidl) == 0 &&
		    strcmp(g->id, h.id) == 0 && g->cached < g->listed) {
			c->group = i;
			g->cached++;
			break;
		}
	}
	free(h.id);
	return rc;
}

static int known_read(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;
	int rc = 0;

	d->nc = 0;
	for (size_t i = 0; i < d->ng; i++) {
		uint64_t flag = 0;

		d->g[i].cached = 0;
		d->g[i].unsure = cache_pop_mark_get(txn, CACHE_POP_CMP,
		                                    d->g[i].id, &flag) == 0 &&
		                 flag;
	}
	for (size_t i = 0; i < d->nby && rc == 0; i++) {
		struct drop_msg *m = d->by[i];
		struct cache_pop *rec = NULL;
		uint64_t known;

		if (m->keyed)
			continue;
		rc = cache_pop_lookup(txn, m->id, &m->dl);
		if (rc == -ENOENT) {
			rc = 0;
			continue;
		}
		if (rc == 0)
			rc = cache_pop_get(txn, m->dl, &rec);
		m->cached = rc == 0 || rc == -ENOENT;
		/* Without its record it is never old enough to go. */
		m->downloaded = rec != NULL ? rec->downloaded : INT64_MAX;
		if (rc == -ENOENT)
			rc = 0;
		known = rec != NULL ? rec->size : m->size;
		cache_pop_free(&rec);
		if (rc == 0)
			rc = cache_pop_mark_get(txn, CACHE_POP_SIZE, m->id,
			                        &known);
		if (rc == -ENOENT)
			rc = 0;
		if (rc == 0 && m->cached && known != m->size) {
			m->cached = false;
			m->changed = true;
			m->known = known;
		}
	}
	for (size_t i = 0; i < d->ng && rc == 0; i++)
		rc = fs_pop_find_copies(txn, d, d->g[i].id, i, d->g[i].uidl);
	/* The legacy messages of each reused UIDL, once per UIDL: filed
	 * under the UIDL, and its changed versions. */
	for (size_t i = 0; i < d->ng && rc == 0; i++) {
		const char *uidl = d->g[i].uidl;
		char buf[HASHED_LEN + 1], *changed = NULL;
		bool seen = false;

		for (size_t k = 0; k < i && uidl != NULL && !seen; k++)
			seen = d->g[k].uidl && strcmp(d->g[k].uidl, uidl) == 0;
		if (uidl == NULL || seen)
			continue;
		rc = fs_pop_find_copies(txn, d, name_base(uidl, 0, buf),
		                        NO_GROUP, uidl);
		if (rc == 0)
			rc = fs_pop_changed_base(name_base(uidl, 0, buf),
			                         &changed);
		if (rc == 0)
			rc = fs_pop_find_copies(txn, d, changed, NO_GROUP,
			                        uidl);
		free(changed);
	}
	for (size_t i = 0; i < d->nc && rc == 0; i++)
		if (d->c[i].legacy)
			rc = match_head(txn, d, &d->c[i]);
	return rc;
}

/* The first free name for a copy of id: id, id#1, id#2... *name_r owned. */
int fs_pop_free_name(struct cache_txn *txn, const char *id, char **name_r)
{
	for (unsigned k = 0;; k++) {
		uint32_t num;
		char *name;
		int rc;

		if (k == 0)
			name = strdup(id);
		else if (asprintf(&name, "%s#%u", id, k) < 0)
			name = NULL;
		if (name == NULL)
			return -ENOMEM;
		rc = cache_pop_lookup(txn, name, &num);
		if (rc == -ENOENT) {
			*name_r = name;
			return 0;
		}
		free(name);
		if (rc < 0)
			return rc;
	}
}

/* Remember the size the server lists for the message filed as id. */
int fs_pop_remember_size(struct cache_txn *txn, const char *id, uint64_t size)
{
	return cache_pop_mark_set(txn, CACHE_POP_SIZE, id, size);
}

static int file_one(struct cache_txn *txn, struct filing *f)
{
	char *name = NULL;
	int rc;

	if (!f->copy) {
		rc = f->stream != NULL
		             ? cache_pop_add_stream(txn, f->id, f->stream,
		                                    f->when, &f->dl)
		             : cache_pop_add(txn, f->id, f->body, f->len,
		                             f->when, &f->dl);
		/* A server whose sizes are not exact: what it lists is
		 * what a later session compares with. */
		if (rc == 0 && f->listed != f->len)
			rc = fs_pop_remember_size(txn, f->id, f->listed);
		return rc;
	}
	rc = fs_pop_free_name(txn, f->id, &name);
	if (rc == 0 && f->alias != 0) {
		rc = cache_pop_alias(txn, name, f->alias);
		f->dl = f->alias;
	} else if (rc == 0 && f->stream != NULL) {
		rc = cache_pop_add_stream(txn, name, f->stream, f->when,
		                          &f->dl);
	} else if (rc == 0) {
		rc = cache_pop_add(txn, name, f->body, f->len, f->when, &f->dl);
	}
	free(name);
	return rc;
}

int fs_pop_file_fn(struct cache_txn *txn, void *ctx)
{
	return file_one(txn, ctx);
}

/* Before retrieving: the legacy messages matched by their header get
 * their identity, and the groups with copies not cached are remembered
 * as unsure. */
static int prepare_fn(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;
	int rc = 0;

	for (size_t i = 0; i < d->nc && rc == 0; i++) {
		struct cand *c = &d->c[i];
		struct filing f = {.copy = true, .alias = c->dl};

		if (!c->legacy || c->group == NO_GROUP)
			continue;
		f.id = d->g[c->group].id;
		rc = file_one(txn, &f);
	}
	for (size_t i = 0; i < d->ng && rc == 0; i++) {
		if (!d->g[i].note)
			continue;
		rc = cache_pop_mark_set(txn, CACHE_POP_CMP, d->g[i].id, 1);
	}
	return rc;
}

/* Is every message of an unsure group cached now? */
bool fs_pop_settled(const struct drop *d, const struct group *g)
{
	for (size_t k = 0; k < g->listed; k++)
		if (!d->by[g->first + k]->cached)
			return false;
	return g->unsure;
}

/* After retrieving: the unsure groups whose messages are all cached now
 * (found by their bytes or stored) are sure again. */
int fs_pop_settle_fn(struct cache_txn *txn, void *ctx)
{
	struct drop *d = ctx;
	int rc = 0;

	for (size_t i = 0; i < d->ng && rc == 0; i++) {
		if (!fs_pop_settled(d, &d->g[i]))
			continue;
		rc = cache_pop_mark_set(txn, CACHE_POP_CMP, d->g[i].id, 0);
	}
	return rc;
}

/* What is cached, what must be retrieved, and how.
 *
 * A group with as many copies cached as messages listed is cached, unless
 * it is unsure: when copies of one identity were listed and not all of
 * them could be cached (a RETR failed), a listing with fewer of them
 * cannot say whether the one left is a cached copy or the other one, so
 * such a group is compared by its bytes until all its messages are
 * cached.  This is remembered in the cache ("popcmp."), before any
 * retrieval, so that a crash cannot lose it. */
int fs_pop_match_cache(struct fs_pop *p, struct drop *d)
{
	bool write = false;
	int rc = make_groups(d);

	if (rc == 0)
		rc = cache_run_read(p->fs->cache, known_read, d);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < d->nc; i++) {
		struct cand *c = &d->c[i];
		struct group *g;
		struct drop_msg *m;

		if (c->group == NO_GROUP)
			continue;
		write |= c->legacy;
		g = &d->g[c->group];
		if (c->downloaded > g->newest)
			g->newest = c->downloaded;
		/* As many copies as messages or more: each message is one
		 * of them, which one does not matter. */
		if (g->cached >= g->listed && !g->unsure &&
		    g->given < g->listed) {
			m = d->by[g->first + g->given++];
			m->cached = true;
			m->dl = c->dl;
		}
	}
	for (size_t i = 0; i < d->ng; i++) {
		struct group *g = &d->g[i];

		if (g->cached >= g->listed && !g->unsure) {
			for (size_t k = 0; k < g->listed; k++)
				d->by[g->first + k]->downloaded = g->newest;
			continue;
		}
		g->compare = g->unsure || g->cached > 0;
		for (size_t k = 0; k < d->nc && g->uidl && !g->compare; k++)
			g->compare = d->c[k].group == NO_GROUP &&
			             strcmp(d->c[k].uidl, g->uidl) == 0;
		if (g->listed > 1 && !g->unsure)
			write = g->note = g->unsure = true;
		if (g->listed > 1 && g->cached < g->listed)
			log_warn("the POP3 server lists %zu messages of the "
			         "same %ssize and headers (%s): keeping each",
			         g->listed, g->uidl ? "UIDL, " : "", g->id);
	}
	if (!write)
		return 0;
	rc = cache_run_write(p->fs->cache, prepare_fn, d);
	for (size_t i = 0; rc == 0 && i < d->nc; i++) {
		struct cand *c = &d->c[i];

		if (!c->legacy || c->group == NO_GROUP)
			continue;
		c->legacy = false;
		log_debug("POP3: %u.eml (UIDL %s) is filed as %s too", c->dl,
		          c->uidl, d->g[c->group].id);
	}
	return rc;
}

/* The header fields that mbox-based servers (UW ipop3d, qpopper, Dovecot
 * and others on an mbox) add or rewrite in a message once it was read or
 * its flags changed, or to keep their own state: Status and X-Status
 * (read, answered...), X-Keywords, X-UID, X-IMAP and X-IMAPbase (IMAP
 * state kept in the mbox), Content-Length (rewritten with them) and
 * X-UIDL (qpopper writes the UIDL it makes up into the message).  A
 * message that differs from a cached one only there is that message.
 * Nothing else is ignored: any other change is a change. */
static bool volatile_field(const char *l, size_t n)
{
	static const char *const names[] = {
	        "Status", "X-Status",   "X-Keywords", "X-UID",
	        "X-IMAP", "X-IMAPbase", "X-UIDL",     "Content-Length",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		size_t k = strlen(names[i]);

		if (n > k && l[k] == ':' && strncasecmp(l, names[i], k) == 0)
			return true;
	}
	return false;
}

/* The parts of a message that count when versions are compared: its
 * header lines without the volatile fields (and their continuation
 * lines), then all the rest, from the empty line on, as one piece. */
struct kept {
	const char *p;
	size_t n, i;
	bool body;
};

static bool kept_next(struct kept *k, const char **l_r, size_t *len_r)
{
	bool skip = false;

	while (k->i < k->n) {
		const char *l = k->p + k->i;
		const char *nl = memchr(l, '\n', k->n - k->i);
		size_t len = nl != NULL ? (size_t)(nl - l) + 1 : k->n - k->i;

		if (k->body || l[0] == '\n' || (len == 2 && l[0] == '\r')) {
			k->body = true;
			len = k->n - k->i;
		} else if (l[0] == ' ' || l[0] == '\t') {
			if (skip) {
				k->i += len;
				continue;
			}
		} else if ((skip = volatile_field(l, len))) {
			k->i += len;
			continue;
		}
		k->i += len;
		*l_r = l;
		*len_r = len;
		return true;
	}
	return false;
}

/* Are a and b the same message but for the volatile header fields? */
bool fs_pop_same_but_volatile(const char *a, size_t an, const char *b,
                              size_t bn)
{
	struct kept x = {a, an, 0, false}, y = {b, bn, 0, false};

	for (;;) {
		const char *la = NULL, *lb = NULL;
		size_t na = 0, nb = 0;
		bool more = kept_next(&x, &la, &na);

		if (more != kept_next(&y, &lb, &nb))
			return false;
		if (!more)
			return true;
		if (na != nb || memcmp(la, lb, na) != 0)
			return false;
	}
}
