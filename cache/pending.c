/* Schema: pending, the uploads the server has not confirmed: a record
 * per upload and the parts (writes) added to it. */
#include "cache_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PENDING_REC_V1 1 /* without the name */
#define PENDING_REC_V2 2

/* ------------------------------------------------------------------ */
/* Pending writes */

struct pending_view {
	uint8_t state;
	uint32_t mailbox_id;
	int64_t internaldate, created;
	int16_t tz_minutes;
	struct span flags, name;
	uint64_t size;
	const uint8_t *data;
};

/* The message bytes come last so that a listing never reads past the
 * fixed part. */
static void pending_encode(struct wr *w, const struct cache_pending *p)
{
	wr_u8(w, PENDING_REC_V2);
	wr_u8(w, (uint8_t)p->state);
	wr_u32(w, p->mailbox_id);
	wr_u64(w, (uint64_t)p->internaldate);
	wr_u16(w, (uint16_t)p->tz_minutes);
	wr_u64(w, (uint64_t)p->created);
	wr_str(w, p->flags);
	wr_str(w, p->name);
	wr_u64(w, p->size);
	wr_bytes(w, p->data, (size_t)p->size);
}

/* Version 1 records (no name) are read as having the name "". */
static bool pending_parse(const MDB_val *v, struct pending_view *pv)
{
	struct rd r;
	uint8_t version;

	rd_init(&r, v);
	version = rd_u8(&r);
	if (version != PENDING_REC_V1 && version != PENDING_REC_V2)
		return false;
	pv->state = rd_u8(&r);
	pv->mailbox_id = rd_u32(&r);
	pv->internaldate = (int64_t)rd_u64(&r);
	pv->tz_minutes = (int16_t)rd_u16(&r);
	pv->created = (int64_t)rd_u64(&r);
	pv->flags = rd_blob(&r);
	pv->name = (struct span){NULL, 0};
	if (version == PENDING_REC_V2)
		pv->name = rd_blob(&r);
	pv->size = rd_u64(&r);
	if (r.bad || pv->size != r.len - r.off)
		return false;
	pv->data = rd_take(&r, (size_t)pv->size);
	return rd_ok(&r);
}

/* size: the record's bytes with its parts applied (pending_parts). */
static size_t pending_build_size(const struct pending_view *pv, uint64_t size,
                                 bool with_data)
{
	return sizeof(struct cache_pending) + pv->flags.n + 1 + pv->name.n + 1 +
	       (with_data ? (size_t)size + 1 : 0);
}

/* With data, the record's own bytes followed by zeros up to size: the
 * parts are applied afterwards. */
static struct cache_pending *pending_build(const struct pending_view *pv,
                                           uint64_t seq, uint64_t size,
                                           bool with_data, void *buf)
{
	struct cache_pending *p = buf;
	uint8_t *cur = (uint8_t *)(p + 1);

	memset(p, 0, sizeof(*p));
	p->seq = seq;
	p->mailbox_id = pv->mailbox_id;
	p->state = pv->state;
	p->internaldate = pv->internaldate;
	p->tz_minutes = pv->tz_minutes;
	p->created = pv->created;
	p->size = size;
	p->flags = out_str(&cur, pv->flags);
	p->name = out_str(&cur, pv->name);
	if (with_data) {
		p->data = cur;
		if (pv->size)
			memcpy(cur, pv->data, (size_t)pv->size);
		memset(cur + pv->size, 0, (size_t)(size - pv->size) + 1);
	}
	return p;
}

struct parts {
	uint64_t seq;
	uint64_t size; /* grows to the end of the furthest part */
	uint32_t next; /* the number the next part gets */
	uint8_t *data; /* NULL: only measure; else apply, size bytes */
};

/* A part's offset and length; false if it is not one of seq's. */
static bool part_parse(const MDB_val *k, const MDB_val *v, uint64_t seq,
                       uint64_t *off_r, size_t *len_r)
{
	if (k->mv_size != PART_KEY_LEN || be64_get(k->mv_data) != seq ||
	    v->mv_size < 8)
		return false;
	*off_r = be64_get(v->mv_data);
	*len_r = v->mv_size - 8;
	return *off_r <= SIZE_MAX / 2 - *len_r;
}

static int parts_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                     void *ctx)
{
	struct parts *ps = ctx;
	uint64_t off;
	size_t len;

	if (!part_parse(k, v, ps->seq, &off, &len))
		return corrupt(t, "pending part", ps->seq, k->mv_size,
		               v->mv_size);
	if (ps->data != NULL && len)
		memcpy(ps->data + off, (const uint8_t *)v->mv_data + 8, len);
	if (off + len > ps->size)
		ps->size = off + len;
	ps->next = be32_get((const uint8_t *)k->mv_data + 8) + 1;
	return 0;
}

/* The number the next part of seq gets: one more than its last part's,
 * found from the key that sorts after all of seq's. */
static int pending_next_part(struct cache_txn *t, uint64_t seq,
                             uint32_t *next_r)
{
	MDB_cursor *cur;
	uint8_t after[8];
	MDB_val k = {sizeof(after), after}, v;
	int rc;

	*next_r = 0;
	be64_put(after, seq + 1);
	rc = mdb_cursor_open(t->txn, t->cache->dbi[DB_PENDING], &cur);
	if (rc)
		return txn_mdb_fail(t, rc);
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	rc = mdb_cursor_get(cur, &k, &v, rc == 0 ? MDB_PREV : MDB_LAST);
	if (rc == 0 && k.mv_size == PART_KEY_LEN && be64_get(k.mv_data) == seq)
		*next_r = be32_get((const uint8_t *)k.mv_data + 8) + 1;
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		return txn_mdb_fail(t, rc);
	return 0;
}

/* Walk the parts of seq, whose record holds ps->size bytes: measure (and
 * with ps->data, apply) them. */
static int pending_parts(struct cache_txn *t, struct parts *ps)
{
	uint8_t k[PART_KEY_LEN];

	part_key(k, ps->seq, 0);
	return db_scan(t, DB_PENDING, k, sizeof(k), 8, parts_one, ps);
}

void cache_pending_free(struct cache_pending **p)
{
	if (p == NULL)
		return;
	free(*p);
	*p = NULL;
}

int cache_pending_add(struct cache_txn *txn, const struct cache_pending *p,
                      uint64_t *seq_r)
{
	uint8_t k[8], *buf = NULL;
	struct wr w = {NULL, 0};
	uint64_t seq;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (p == NULL || !mbox_id_ok(p->mailbox_id) ||
	    p->state > CACHE_PENDING_CLOSED || !str_ok(p->flags) ||
	    !str_ok(p->name) || (p->data == NULL && p->size) ||
	    p->size > SIZE_MAX / 2)
		return txn_fail(txn, -EINVAL);
	rc = counter_next(txn, META_NEXT_PENDING, UINT64_MAX - 1, &seq);
	if (rc)
		return rc;
	be64_put(k, seq);
	pending_encode(&w, p);
	rc = db_reserve(txn, DB_PENDING, k, 8, w.n, MDB_NOOVERWRITE, &buf);
	if (rc)
		return rc;
	w.p = buf;
	w.n = 0;
	pending_encode(&w, p);
	if (seq_r)
		*seq_r = seq;
	return 0;
}

int cache_pending_write(struct cache_txn *txn, uint64_t seq, uint64_t off,
                        const void *data, size_t len)
{
	uint8_t k[PART_KEY_LEN], *buf = NULL;
	uint32_t next = 0;
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if ((data == NULL && len) || len > SIZE_MAX / 2 - 8 ||
	    off > SIZE_MAX / 2 - len)
		return txn_fail(txn, -EINVAL);
	be64_put(k, seq);
	rc = db_get(txn, DB_PENDING, k, 8, &v);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc == 0)
		rc = pending_next_part(txn, seq, &next);
	if (rc)
		return rc;
	if (next == UINT32_MAX)
		return txn_fail(txn, -E2BIG);
	part_key(k, seq, next);
	rc = db_reserve(txn, DB_PENDING, k, sizeof(k), 8 + len, MDB_NOOVERWRITE,
	                &buf);
	if (rc)
		return rc;
	be64_put(buf, off);
	if (len)
		memcpy(buf + 8, data, len);
	return 0;
}

int cache_pending_get(struct cache_txn *txn, uint64_t seq, bool with_data,
                      struct cache_pending **p_r)
{
	struct pending_view pv;
	struct parts ps = {.seq = seq};
	uint8_t k[8];
	MDB_val v;
	void *buf;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (p_r == NULL)
		return txn_fail(txn, -EINVAL);
	*p_r = NULL;
	be64_put(k, seq);
	rc = db_get(txn, DB_PENDING, k, 8, &v);
	if (rc)
		return rc;
	if (!pending_parse(&v, &pv))
		return corrupt(txn, "pending", seq, 0, 0);
	ps.size = pv.size;
	rc = pending_parts(txn, &ps);
	if (rc)
		return rc;
	buf = malloc(pending_build_size(&pv, ps.size, with_data));
	if (buf == NULL)
		return txn_fail(txn, -ENOMEM);
	*p_r = pending_build(&pv, seq, ps.size, with_data, buf);
	if (with_data && ps.next > 0) {
		/* Reads only: pv's pointers into the map stay valid. */
		ps.data = (*p_r)->data;
		rc = pending_parts(txn, &ps);
		if (rc)
			cache_pending_free(p_r);
	}
	return rc;
}

int cache_pending_set_state(struct cache_txn *txn, uint64_t seq, uint32_t state)
{
	struct pending_view pv;
	uint8_t k[8], *copy;
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (state > CACHE_PENDING_CLOSED)
		return txn_fail(txn, -EINVAL);
	be64_put(k, seq);
	rc = db_get(txn, DB_PENDING, k, 8, &v);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	if (!pending_parse(&v, &pv))
		return corrupt(txn, "pending", seq, 0, 0);
	/* The state is byte 1 of the record.  Rewrite it through a heap
	 * copy: the old value's pages may be reused by the put. */
	copy = malloc(v.mv_size);
	if (copy == NULL)
		return txn_fail(txn, -ENOMEM);
	memcpy(copy, v.mv_data, v.mv_size);
	copy[1] = (uint8_t)state;
	rc = db_put(txn, DB_PENDING, k, 8, copy, v.mv_size, 0);
	free(copy);
	return rc;
}

/* Rewrite upload seq's record with a new target (mailbox_id 0: the same)
 * and name (NULL: the same), or new flags (NULL: the same), keeping its
 * bytes and state. */
static int pending_rewrite(struct cache_txn *txn, uint64_t seq,
                           uint32_t mailbox_id, const char *name,
                           const char *flags)
{
	struct cache_pending p = {0};
	struct pending_view pv;
	struct wr w = {NULL, 0};
	uint8_t k[8], *buf;
	char *oflags = NULL, *oname = NULL;
	MDB_val v;
	int rc;

	be64_put(k, seq);
	rc = db_get(txn, DB_PENDING, k, 8, &v);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	if (!pending_parse(&v, &pv))
		return corrupt(txn, "pending", seq, 0, 0);
	/* Encoded from a heap copy: the old value's pages may be reused by
	 * the put. */
	buf = malloc(v.mv_size);
	oflags =
	        strndup(pv.flags.n ? (const char *)pv.flags.p : "", pv.flags.n);
	oname = strndup(pv.name.n ? (const char *)pv.name.p : "", pv.name.n);
	if (buf == NULL || oflags == NULL || oname == NULL) {
		free(buf);
		free(oflags);
		free(oname);
		return txn_fail(txn, -ENOMEM);
	}
	memcpy(buf, v.mv_data, v.mv_size);
	p.mailbox_id = mailbox_id != 0 ? mailbox_id : pv.mailbox_id;
	p.state = pv.state;
	p.flags = flags != NULL ? (char *)flags : oflags;
	p.name = name != NULL ? (char *)name : oname;
	p.internaldate = pv.internaldate;
	p.tz_minutes = pv.tz_minutes;
	p.created = pv.created;
	p.size = pv.size;
	p.data = buf + (pv.data - (const uint8_t *)v.mv_data);
	pending_encode(&w, &p);
	{
		uint8_t *out = NULL;

		rc = db_reserve(txn, DB_PENDING, k, 8, w.n, 0, &out);
		if (rc == 0) {
			w.p = out;
			w.n = 0;
			pending_encode(&w, &p);
		}
	}
	free(buf);
	free(oflags);
	free(oname);
	return rc;
}

int cache_pending_set_target(struct cache_txn *txn, uint64_t seq,
                             uint32_t mailbox_id, const char *name)
{
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(mailbox_id) || !str_ok(name))
		return txn_fail(txn, -EINVAL);
	return pending_rewrite(txn, seq, mailbox_id, name, NULL);
}

int cache_pending_set_flags(struct cache_txn *txn, uint64_t seq,
                            const char *flags)
{
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (flags == NULL || !str_ok(flags))
		return txn_fail(txn, -EINVAL);
	return pending_rewrite(txn, seq, 0, NULL, flags);
}

int cache_pending_delete(struct cache_txn *txn, uint64_t seq)
{
	uint8_t k[8];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	be64_put(k, seq);
	/* The record and its parts share the prefix. */
	return db_del_prefix(txn, DB_PENDING, k, 8, NULL);
}

struct pending_iter {
	int (*cb)(const struct cache_pending *p, void *ctx);
	void *ctx;
	struct scratch sc;
	struct cache_pending *cur; /* in sc: built, its parts not all seen */
};

/* A record is passed on once its parts (which follow it) are counted. */
static int pending_iter_emit(struct pending_iter *it)
{
	struct cache_pending *p = it->cur;

	it->cur = NULL;
	return p != NULL ? it->cb(p, it->ctx) : 0;
}

static int pending_iter_one(struct cache_txn *t, const MDB_val *k,
                            const MDB_val *v, void *ctx)
{
	struct pending_iter *it = ctx;
	struct pending_view pv;
	uint64_t seq, off;
	size_t len;
	void *buf;
	int rc;

	if (k->mv_size == PART_KEY_LEN) {
		seq = be64_get(k->mv_data);
		if (it->cur == NULL ||
		    !part_parse(k, v, it->cur->seq, &off, &len))
			return corrupt(t, "pending part", seq, k->mv_size,
			               v->mv_size);
		if (off + len > it->cur->size)
			it->cur->size = off + len;
		return 0;
	}
	if (k->mv_size != 8)
		return corrupt(t, "pending key", k->mv_size, 0, 0);
	rc = pending_iter_emit(it);
	if (rc)
		return rc;
	seq = be64_get(k->mv_data);
	if (!pending_parse(v, &pv))
		return corrupt(t, "pending", seq, 0, 0);
	buf = scratch_get(&it->sc, pending_build_size(&pv, pv.size, false));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	it->cur = pending_build(&pv, seq, pv.size, false, buf);
	return 0;
}

int cache_pending_foreach(struct cache_txn *txn,
                          int (*cb)(const struct cache_pending *p, void *ctx),
                          void *ctx)
{
	struct pending_iter it = {cb, ctx, {NULL, 0}, NULL};
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL)
		return txn_fail(txn, -EINVAL);
	rc = db_scan(txn, DB_PENDING, NULL, 0, 0, pending_iter_one, &it);
	/* A callback that stopped the walk leaves nothing to pass on. */
	if (rc == 0)
		rc = pending_iter_emit(&it);
	if (rc > 0)
		rc = 0;
	free(it.sc.p);
	return rc;
}
