/* Schema: mbox (mailbox records, with every UIDVALIDITY seen) and
 * mbox_name (the index of their names, long ones under a hash).  Removing
 * a mailbox removes its messages and bodies. */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MBOX_REC_V1 1
#define GENS_MAX    65536

/* ------------------------------------------------------------------ */
/* Mailboxes */

static const struct {
	const char *name;
	uint32_t bit;
} mbox_attr_names[] = {
        {"\\Noselect", CACHE_MBOX_NOSELECT},
        {"\\NoInferiors", CACHE_MBOX_NOINFERIORS},
        {"\\NonExistent", CACHE_MBOX_NONEXISTENT},
        {"\\HasChildren", CACHE_MBOX_HASCHILDREN},
        {"\\HasNoChildren", CACHE_MBOX_HASNOCHILDREN},
        {"\\Marked", CACHE_MBOX_MARKED},
        {"\\Unmarked", CACHE_MBOX_UNMARKED},
        {"\\Subscribed", CACHE_MBOX_SUBSCRIBED},
        {"\\Remote", CACHE_MBOX_REMOTE},
        {"\\All", CACHE_MBOX_ALL},
        {"\\Archive", CACHE_MBOX_ARCHIVE},
        {"\\Drafts", CACHE_MBOX_DRAFTS},
        {"\\Flagged", CACHE_MBOX_FLAGGED},
        {"\\Junk", CACHE_MBOX_JUNK},
        {"\\Sent", CACHE_MBOX_SENT},
        {"\\Trash", CACHE_MBOX_TRASH},
        {"\\Important", CACHE_MBOX_IMPORTANT},
};

uint32_t cache_mailbox_attrs_parse(const char *text)
{
	uint32_t bits = 0;
	const char *p = text;
	size_t i, n;

	if (text == NULL)
		return 0;
	for (;;) {
		while (*p == ' ' || *p == '(' || *p == ')' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		n = strcspn(p, " ()\t");
		for (i = 0;
		     i < sizeof(mbox_attr_names) / sizeof(*mbox_attr_names);
		     i++) {
			const char *name = mbox_attr_names[i].name;

			if (strlen(name) == n && strncasecmp(p, name, n) == 0)
				bits |= mbox_attr_names[i].bit;
		}
		p += n;
	}
	return bits;
}

struct mbox_view {
	uint8_t delim;
	bool deleted;
	uint32_t attrs, uidvalidity, uidnext;
	uint64_t highestmodseq;
	int64_t last_sync;
	struct span name, attrs_raw;
	uint32_t ngens;
	const uint8_t *gens; /* ngens big-endian u32 */
};

static void mbox_encode(struct wr *w, const struct cache_mailbox *mb)
{
	uint32_t i;

	wr_u8(w, MBOX_REC_V1);
	wr_u8(w, (uint8_t)mb->delim);
	wr_u8(w, mb->deleted ? 1 : 0);
	wr_u32(w, mb->attrs);
	wr_u32(w, mb->uidvalidity);
	wr_u32(w, mb->uidnext);
	wr_u64(w, mb->highestmodseq);
	wr_u64(w, (uint64_t)mb->last_sync);
	wr_str(w, mb->name);
	wr_str(w, mb->attrs_raw);
	wr_u32(w, mb->ngenerations);
	for (i = 0; i < mb->ngenerations; i++)
		wr_u32(w, mb->uidvalidities[i]);
}

static bool mbox_parse(const MDB_val *v, struct mbox_view *mv)
{
	struct rd r;
	uint8_t bits;

	rd_init(&r, v);
	if (rd_u8(&r) != MBOX_REC_V1)
		return false;
	mv->delim = rd_u8(&r);
	bits = rd_u8(&r);
	mv->deleted = bits & 1;
	mv->attrs = rd_u32(&r);
	mv->uidvalidity = rd_u32(&r);
	mv->uidnext = rd_u32(&r);
	mv->highestmodseq = rd_u64(&r);
	mv->last_sync = (int64_t)rd_u64(&r);
	mv->name = rd_blob(&r);
	mv->attrs_raw = rd_blob(&r);
	mv->ngens = rd_u32(&r);
	if (mv->ngens > GENS_MAX)
		return false;
	mv->gens = rd_take(&r, (size_t)mv->ngens * 4);
	return rd_ok(&r) && mv->name.n > 0;
}

static size_t mbox_build_size(const struct mbox_view *mv)
{
	return sizeof(struct cache_mailbox) + (size_t)mv->ngens * 4 +
	       mv->name.n + 1 + mv->attrs_raw.n + 1;
}

static struct cache_mailbox *mbox_build(const struct mbox_view *mv, uint32_t id,
                                        void *buf)
{
	struct cache_mailbox *mb = buf;
	uint8_t *cur = (uint8_t *)(mb + 1);
	uint32_t i;

	memset(mb, 0, sizeof(*mb));
	mb->id = id;
	mb->delim = (char)mv->delim;
	mb->deleted = mv->deleted;
	mb->attrs = mv->attrs;
	mb->uidvalidity = mv->uidvalidity;
	mb->uidnext = mv->uidnext;
	mb->highestmodseq = mv->highestmodseq;
	mb->last_sync = mv->last_sync;
	mb->ngenerations = mv->ngens;
	/* The u32 array right after the struct is suitably aligned. */
	mb->uidvalidities = (uint32_t *)cur;
	for (i = 0; i < mv->ngens; i++)
		mb->uidvalidities[i] = be32_get(mv->gens + 4 * i);
	cur += (size_t)mv->ngens * 4;
	mb->name = out_str(&cur, mv->name);
	mb->attrs_raw = out_str(&cur, mv->attrs_raw);
	return mb;
}

void cache_mailbox_free(struct cache_mailbox **mb)
{
	if (mb == NULL)
		return;
	free(*mb);
	*mb = NULL;
}

/* Load the record of id into a fresh allocation. */
static int mbox_load(struct cache_txn *t, uint32_t id,
                     struct cache_mailbox **mb_r)
{
	uint8_t k[4];
	struct mbox_view mv;
	MDB_val v;
	void *buf;
	int rc;

	be32_put(k, id);
	rc = db_get(t, DB_MBOX, k, 4, &v);
	if (rc)
		return rc;
	if (!mbox_parse(&v, &mv))
		return corrupt(t, "mailbox", id, 0, 0);
	buf = malloc(mbox_build_size(&mv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	*mb_r = mbox_build(&mv, id, buf);
	return 0;
}

/* The id the index gives name.  -ENOENT if none; -EEXIST if name is filed
 * under a hash that another name's record holds (never seen in practice,
 * but then name is not that mailbox). */
static int name_lookup(struct cache_txn *t, const char *name, uint32_t *id_r)
{
	struct cache_mailbox *mb = NULL;
	struct name_key k;
	MDB_val v;
	int rc = name_key(t, name, &k);

	if (rc)
		return rc == -EINVAL ? -ENOENT : txn_fail(t, rc);
	rc = db_get(t, DB_MBOX_NAME, k.p, k.n, &v);
	if (rc)
		return rc;
	if (v.mv_size != 4)
		return corrupt(t, "mailbox name", 0, 0, 0);
	*id_r = be32_get(v.mv_data);
	if (!k.hashed)
		return 0;
	rc = mbox_load(t, *id_r, &mb);
	if (rc == 0 && strcmp(mb->name, name) != 0) {
		log_warn("cache %s: mailbox names %s and %s share a hash",
		         t->cache->dir, name, mb->name);
		rc = -EEXIST;
	}
	free(mb);
	/* An entry without a record: as for a short name, the caller
	 * decides. */
	return rc == -ENOENT ? 0 : rc;
}

static int name_put(struct cache_txn *t, const char *name, uint32_t id)
{
	struct name_key k;
	uint8_t idb[4];
	int rc = name_key(t, name, &k);

	if (rc)
		return txn_fail(t, rc);
	be32_put(idb, id);
	return db_put(t, DB_MBOX_NAME, k.p, k.n, idb, 4, 0);
}

/* Drop name from the index if it names id. */
static int name_del(struct cache_txn *t, const char *name, uint32_t id)
{
	struct name_key k;
	uint32_t other = 0;
	int rc = name_lookup(t, name, &other);

	if (rc == -ENOENT || rc == -EEXIST || (rc == 0 && other != id))
		return 0;
	if (rc == 0)
		rc = name_key(t, name, &k);
	if (rc == 0)
		rc = db_del(t, DB_MBOX_NAME, k.p, k.n);
	return rc;
}

/* Store rec under rec->id.  Its generation list is old's (NULL for a new
 * mailbox) plus rec->uidvalidity if that is new; the name index follows a
 * changed name.  *gen_r (may be NULL) gets the generation of
 * rec->uidvalidity, UINT32_MAX if that is 0. */
static int mbox_store(struct cache_txn *t, const struct cache_mailbox *rec,
                      const struct cache_mailbox *old, uint32_t *gen_r)
{
	struct cache_mailbox tmp = *rec;
	uint32_t *gens = NULL;
	uint32_t i, n = old ? old->ngenerations : 0, gen = UINT32_MAX;
	uint8_t k[4], *p = NULL;
	struct wr w = {NULL, 0};
	int rc;

	if (!str_ok(rec->attrs_raw) || rec->name == NULL ||
	    rec->name[0] == '\0' || !str_ok(rec->name))
		return txn_fail(t, -EINVAL);
	tmp.uidvalidities = old ? old->uidvalidities : NULL;
	for (i = 0; i < n; i++)
		if (tmp.uidvalidities[i] == rec->uidvalidity)
			gen = i;
	if (rec->uidvalidity != 0 && gen == UINT32_MAX) {
		if (n >= GENS_MAX)
			return txn_fail(t, -EOVERFLOW);
		gens = malloc(((size_t)n + 1) * sizeof(*gens));
		if (gens == NULL)
			return txn_fail(t, -ENOMEM);
		if (n)
			memcpy(gens, old->uidvalidities, n * sizeof(*gens));
		gens[n] = rec->uidvalidity;
		gen = n++;
		tmp.uidvalidities = gens;
	}
	tmp.ngenerations = n;

	be32_put(k, rec->id);
	if (old == NULL || strcmp(old->name, rec->name) != 0) {
		uint32_t other;

		rc = name_lookup(t, rec->name, &other);
		if ((rc == 0 && other != rec->id) || rc == -EEXIST) {
			rc = txn_fail(t, -EEXIST);
			goto out;
		}
		if (rc != 0 && rc != -ENOENT)
			goto out;
		if (old) {
			rc = name_del(t, old->name, rec->id);
			if (rc)
				goto out;
		}
		rc = name_put(t, rec->name, rec->id);
		if (rc)
			goto out;
	}
	mbox_encode(&w, &tmp);
	rc = db_reserve(t, DB_MBOX, k, 4, w.n, 0, &p);
	if (rc)
		goto out;
	w.p = p;
	w.n = 0;
	mbox_encode(&w, &tmp);
	if (gen_r)
		*gen_r = gen;
out:
	free(gens);
	return rc;
}

int cache_mailbox_add(struct cache_txn *txn, const struct cache_mailbox *mb,
                      uint32_t *id_r)
{
	struct cache_mailbox rec;
	uint64_t id;
	uint32_t other;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (mb == NULL)
		return txn_fail(txn, -EINVAL);
	if (mb->name == NULL || mb->name[0] == '\0')
		return txn_fail(txn, -EINVAL);
	rc = name_lookup(txn, mb->name, &other);
	if (rc == 0 || rc == -EEXIST)
		return txn_fail(txn, -EEXIST);
	if (rc != -ENOENT)
		return rc;
	rc = counter_next(txn, META_NEXT_MAILBOX, CACHE_POP_MAILBOX_ID - 1,
	                  &id);
	if (rc)
		return rc;
	rec = *mb;
	rec.id = (uint32_t)id;
	rc = mbox_store(txn, &rec, NULL, NULL);
	if (rc == 0 && id_r)
		*id_r = rec.id;
	return rc;
}

int cache_mailbox_put(struct cache_txn *txn, const struct cache_mailbox *mb)
{
	struct cache_mailbox *old = NULL;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (mb == NULL || !mbox_id_ok(mb->id))
		return txn_fail(txn, -EINVAL);
	rc = mbox_load(txn, mb->id, &old);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rc = mbox_store(txn, mb, old, NULL);
	free(old);
	return rc;
}

int cache_mailbox_set_state(struct cache_txn *txn, uint32_t id,
                            uint32_t uidvalidity, uint32_t uidnext,
                            uint64_t highestmodseq, int64_t last_sync,
                            uint32_t *gen_r)
{
	struct cache_mailbox *old = NULL, rec;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(id) || uidvalidity == 0)
		return txn_fail(txn, -EINVAL);
	rc = mbox_load(txn, id, &old);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rec = *old;
	rec.uidvalidity = uidvalidity;
	rec.uidnext = uidnext;
	rec.highestmodseq = highestmodseq;
	rec.last_sync = last_sync;
	rc = mbox_store(txn, &rec, old, gen_r);
	free(old);
	return rc;
}

int cache_mailbox_get(struct cache_txn *txn, uint32_t id,
                      struct cache_mailbox **mb_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (mb_r == NULL)
		return txn_fail(txn, -EINVAL);
	*mb_r = NULL;
	if (!mbox_id_ok(id))
		return -ENOENT;
	return mbox_load(txn, id, mb_r);
}

int cache_mailbox_lookup(struct cache_txn *txn, const char *name,
                         uint32_t *id_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (name == NULL || id_r == NULL)
		return txn_fail(txn, -EINVAL);
	rc = name_lookup(txn, name, id_r);
	return rc == -EEXIST ? -ENOENT : rc;
}

int cache_mailbox_get_by_name(struct cache_txn *txn, const char *name,
                              struct cache_mailbox **mb_r)
{
	uint32_t id;
	int rc;

	if (mb_r)
		*mb_r = NULL;
	rc = cache_mailbox_lookup(txn, name, &id);
	if (rc)
		return rc;
	rc = cache_mailbox_get(txn, id, mb_r);
	if (rc == -ENOENT) /* an index entry without a record */
		return corrupt(txn, "mailbox name", id, 0, 0);
	return rc;
}

int cache_mailbox_generation(struct cache_txn *txn, uint32_t id,
                             uint32_t uidvalidity, uint32_t *gen_r)
{
	struct mbox_view mv;
	uint8_t k[4];
	MDB_val v;
	uint32_t i;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (gen_r == NULL)
		return txn_fail(txn, -EINVAL);
	if (!mbox_id_ok(id) || uidvalidity == 0)
		return -ENOENT;
	be32_put(k, id);
	rc = db_get(txn, DB_MBOX, k, 4, &v);
	if (rc)
		return rc;
	if (!mbox_parse(&v, &mv))
		return corrupt(txn, "mailbox", id, 0, 0);
	for (i = 0; i < mv.ngens; i++) {
		if (be32_get(mv.gens + 4 * i) == uidvalidity) {
			*gen_r = i;
			return 0;
		}
	}
	return -ENOENT;
}

int cache_mailbox_rename(struct cache_txn *txn, uint32_t id,
                         const char *new_name)
{
	struct cache_mailbox *old = NULL, rec;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(id) || new_name == NULL)
		return txn_fail(txn, -EINVAL);
	rc = mbox_load(txn, id, &old);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rec = *old;
	rec.name = (char *)new_name;
	rc = mbox_store(txn, &rec, old, NULL);
	free(old);
	return rc;
}

int cache_mailbox_set_deleted(struct cache_txn *txn, uint32_t id, bool deleted)
{
	struct cache_mailbox *old = NULL, rec;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(id))
		return txn_fail(txn, -EINVAL);
	rc = mbox_load(txn, id, &old);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rec = *old;
	rec.deleted = deleted;
	rc = mbox_store(txn, &rec, old, NULL);
	free(old);
	return rc;
}

int cache_mailbox_remove(struct cache_txn *txn, uint32_t id)
{
	struct cache_mailbox *old = NULL;
	uint8_t k[4];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(id))
		return txn_fail(txn, -EINVAL);
	rc = mbox_load(txn, id, &old);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	be32_put(k, id);
	rc = name_del(txn, old->name, id);
	if (rc == 0)
		rc = db_del(txn, DB_MBOX, k, 4);
	if (rc == 0)
		rc = db_del_prefix(txn, DB_MSG, k, 4, NULL);
	if (rc == 0)
		rc = body_del_prefix(txn, k, 4);
	free(old);
	return rc;
}

struct mbox_iter {
	int (*cb)(const struct cache_mailbox *mb, void *ctx);
	void *ctx;
	struct scratch sc;
};

static int mbox_iter_one(struct cache_txn *t, const MDB_val *k,
                         const MDB_val *v, void *ctx)
{
	struct mbox_iter *it = ctx;
	struct mbox_view mv;
	uint32_t id;
	void *buf;

	/* One damaged record must not hide every mailbox: it is left out of
	 * the walk, with a log line, and the transaction goes on. */
	if (k->mv_size != 4) {
		log_err("cache %s: undecodable mailbox key of %zu bytes; "
		        "left out",
		        t->cache->dir, k->mv_size);
		return 0;
	}
	id = be32_get(k->mv_data);
	if (!mbox_parse(v, &mv)) {
		log_err("cache %s: undecodable mailbox record %u; that "
		        "mailbox is left out",
		        t->cache->dir, id);
		return 0;
	}
	buf = scratch_get(&it->sc, mbox_build_size(&mv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	return it->cb(mbox_build(&mv, id, buf), it->ctx);
}

int cache_mailbox_foreach(struct cache_txn *txn,
                          int (*cb)(const struct cache_mailbox *mb, void *ctx),
                          void *ctx)
{
	struct mbox_iter it = {cb, ctx, {NULL, 0}};
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL)
		return txn_fail(txn, -EINVAL);
	rc = db_scan(txn, DB_MBOX, NULL, 0, 0, mbox_iter_one, &it);
	free(it.sc.p);
	return rc;
}
