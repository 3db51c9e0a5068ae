/* Schema: pop (the POP3 download list) and pop_uidl (the names its
 * messages are filed under, aliases included).  POP3 bodies are stored by
 * body.c under (CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY, number). */
#include "cache_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define POP_REC_V1 1

/* ------------------------------------------------------------------ */
/* POP3 */

struct pop_view {
	bool deleted;
	uint64_t size;
	int64_t downloaded;
	struct span uidl;
};

static void pop_encode(struct wr *w, const struct cache_pop *p)
{
	wr_u8(w, POP_REC_V1);
	wr_u8(w, p->deleted_on_server ? 1 : 0);
	wr_u64(w, p->size);
	wr_u64(w, (uint64_t)p->downloaded);
	wr_str(w, p->uidl);
}

static bool pop_parse(const MDB_val *v, struct pop_view *pv)
{
	struct rd r;

	rd_init(&r, v);
	if (rd_u8(&r) != POP_REC_V1)
		return false;
	pv->deleted = rd_u8(&r) & 1;
	pv->size = rd_u64(&r);
	pv->downloaded = (int64_t)rd_u64(&r);
	pv->uidl = rd_blob(&r);
	return rd_ok(&r);
}

static size_t pop_build_size(const struct pop_view *pv)
{
	return sizeof(struct cache_pop) + pv->uidl.n + 1;
}

static struct cache_pop *pop_build(const struct pop_view *pv, uint32_t num,
                                   void *buf)
{
	struct cache_pop *p = buf;
	uint8_t *cur = (uint8_t *)(p + 1);

	memset(p, 0, sizeof(*p));
	p->num = num;
	p->size = pv->size;
	p->downloaded = pv->downloaded;
	p->deleted_on_server = pv->deleted;
	p->uidl = out_str(&cur, pv->uidl);
	return p;
}

void cache_pop_free(struct cache_pop **pop)
{
	if (pop == NULL)
		return;
	free(*pop);
	*pop = NULL;
}

static int pop_store(struct cache_txn *t, const struct cache_pop *p,
                     unsigned flags)
{
	uint8_t k[4], *buf = NULL;
	struct wr w = {NULL, 0};
	int rc;

	be32_put(k, p->num);
	pop_encode(&w, p);
	rc = db_reserve(t, DB_POP, k, 4, w.n, flags, &buf);
	if (rc)
		return rc;
	w.p = buf;
	w.n = 0;
	pop_encode(&w, p);
	return 0;
}

static int pop_load(struct cache_txn *t, uint32_t num, struct cache_pop **pop_r)
{
	struct pop_view pv;
	uint8_t k[4];
	MDB_val v;
	void *buf;
	int rc;

	be32_put(k, num);
	rc = db_get(t, DB_POP, k, 4, &v);
	if (rc)
		return rc;
	if (!pop_parse(&v, &pv))
		return corrupt(t, "pop", num, 0, 0);
	buf = malloc(pop_build_size(&pv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	*pop_r = pop_build(&pv, num, buf);
	return 0;
}

/* cache_pop_add with the body in body/len, or in s if not NULL. */
static int pop_add(struct cache_txn *txn, const char *uidl, const void *body,
                   size_t len, struct cache_body_stream *s, int64_t downloaded,
                   uint32_t *num_r)
{
	struct cache_pop rec;
	struct cache_key key = {CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY, 0};
	uint8_t k[KEY_LEN], nb[4];
	uint64_t num;
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if ((body == NULL && len) || (s != NULL && s->cache != txn->cache) ||
	    key_name_check(txn, uidl, CACHE_POP_UIDL_MAX) != 0)
		return txn_fail(txn, -EINVAL);
	rc = db_get(txn, DB_POP_UIDL, uidl, strlen(uidl), &v);
	if (rc == 0)
		return txn_fail(txn, -EEXIST);
	if (rc != -ENOENT)
		return rc;
	rc = counter_next(txn, META_NEXT_POP, UINT32_MAX, &num);
	if (rc)
		return rc;
	rec.num = (uint32_t)num;
	rec.uidl = (char *)uidl;
	rec.size = s != NULL ? cache_body_stream_size(s) : len;
	rec.downloaded = downloaded;
	rec.deleted_on_server = false;
	rc = pop_store(txn, &rec, MDB_NOOVERWRITE);
	if (rc)
		return rc;
	be32_put(nb, rec.num);
	rc = db_put(txn, DB_POP_UIDL, uidl, strlen(uidl), nb, 4,
	            MDB_NOOVERWRITE);
	if (rc)
		return rc;
	key.uid = rec.num;
	msgkey_make(k, key);
	rc = s != NULL ? stream_store(txn, s, k)
	               : body_write(txn, k, body, len);
	if (rc == 0 && num_r)
		*num_r = rec.num;
	return rc;
}

int cache_pop_add(struct cache_txn *txn, const char *uidl, const void *body,
                  size_t len, int64_t downloaded, uint32_t *num_r)
{
	return pop_add(txn, uidl, body, len, NULL, downloaded, num_r);
}

int cache_pop_add_stream(struct cache_txn *txn, const char *uidl,
                         struct cache_body_stream *s, int64_t downloaded,
                         uint32_t *num_r)
{
	if (s == NULL) {
		int rc = txn_check(txn, true);

		return rc ? rc : txn_fail(txn, -EINVAL);
	}
	return pop_add(txn, uidl, NULL, 0, s, downloaded, num_r);
}

int cache_pop_get(struct cache_txn *txn, uint32_t num, struct cache_pop **pop_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (pop_r == NULL)
		return txn_fail(txn, -EINVAL);
	*pop_r = NULL;
	return pop_load(txn, num, pop_r);
}

int cache_pop_lookup(struct cache_txn *txn, const char *uidl, uint32_t *num_r)
{
	MDB_val v;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (uidl == NULL || num_r == NULL)
		return txn_fail(txn, -EINVAL);
	if (key_name_check(txn, uidl, CACHE_POP_UIDL_MAX) != 0)
		return -ENOENT;
	rc = db_get(txn, DB_POP_UIDL, uidl, strlen(uidl), &v);
	if (rc)
		return rc;
	if (v.mv_size != 4)
		return corrupt(txn, "pop uidl", 0, 0, 0);
	*num_r = be32_get(v.mv_data);
	return 0;
}

int cache_pop_alias(struct cache_txn *txn, const char *uidl, uint32_t num)
{
	uint8_t k[4], nb[4];
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (key_name_check(txn, uidl, CACHE_POP_UIDL_MAX) != 0)
		return txn_fail(txn, -EINVAL);
	be32_put(k, num);
	rc = db_get(txn, DB_POP, k, 4, &v);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rc = db_get(txn, DB_POP_UIDL, uidl, strlen(uidl), &v);
	if (rc == 0) {
		if (v.mv_size != 4)
			return corrupt(txn, "pop uidl", 0, 0, 0);
		return be32_get(v.mv_data) == num ? 0 : txn_fail(txn, -EEXIST);
	}
	if (rc != -ENOENT)
		return rc;
	be32_put(nb, num);
	return db_put(txn, DB_POP_UIDL, uidl, strlen(uidl), nb, 4,
	              MDB_NOOVERWRITE);
}

struct uidl_iter {
	int (*cb)(const char *uidl, uint32_t num, void *ctx);
	void *ctx;
	struct scratch sc;
};

static int uidl_iter_one(struct cache_txn *t, const MDB_val *k,
                         const MDB_val *v, void *ctx)
{
	struct uidl_iter *it = ctx;
	char *uidl;

	if (v->mv_size != 4)
		return corrupt(t, "pop uidl", k->mv_size, 0, 0);
	uidl = scratch_get(&it->sc, k->mv_size + 1);
	if (uidl == NULL)
		return txn_fail(t, -ENOMEM);
	memcpy(uidl, k->mv_data, k->mv_size);
	uidl[k->mv_size] = '\0';
	return it->cb(uidl, be32_get(v->mv_data), it->ctx);
}

int cache_pop_uidl_foreach(struct cache_txn *txn, const char *prefix,
                           int (*cb)(const char *uidl, uint32_t num, void *ctx),
                           void *ctx)
{
	struct uidl_iter it = {cb, ctx, {NULL, 0}};
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL || prefix == NULL || *prefix == '\0')
		return txn_fail(txn, -EINVAL);
	if (key_name_check(txn, prefix, CACHE_POP_UIDL_MAX) != 0)
		return 0; /* longer than any UIDL: nothing starts with it */
	rc = db_scan(txn, DB_POP_UIDL, prefix, strlen(prefix), strlen(prefix),
	             uidl_iter_one, &it);
	free(it.sc.p);
	return rc;
}

int cache_pop_set_deleted(struct cache_txn *txn, uint32_t num, bool deleted)
{
	struct cache_pop *p = NULL;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	rc = pop_load(txn, num, &p);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	p->deleted_on_server = deleted;
	rc = pop_store(txn, p, 0);
	free(p);
	return rc;
}

struct pop_iter {
	int (*cb)(const struct cache_pop *pop, void *ctx);
	void *ctx;
	struct scratch sc;
};

static int pop_iter_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                        void *ctx)
{
	struct pop_iter *it = ctx;
	struct pop_view pv;
	uint32_t num;
	void *buf;

	if (k->mv_size != 4)
		return corrupt(t, "pop key", k->mv_size, 0, 0);
	num = be32_get(k->mv_data);
	if (!pop_parse(v, &pv))
		return corrupt(t, "pop", num, 0, 0);
	buf = scratch_get(&it->sc, pop_build_size(&pv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	return it->cb(pop_build(&pv, num, buf), it->ctx);
}

int cache_pop_foreach(struct cache_txn *txn, uint32_t num_from,
                      int (*cb)(const struct cache_pop *pop, void *ctx),
                      void *ctx)
{
	struct pop_iter it = {cb, ctx, {NULL, 0}};
	uint8_t k[4];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL)
		return txn_fail(txn, -EINVAL);
	be32_put(k, num_from);
	rc = db_scan(txn, DB_POP, k, 4, 0, pop_iter_one, &it);
	free(it.sc.p);
	return rc;
}
