/* After a UIDVALIDITY change: the cached bodies of old generations given
 * to the messages of the new one (cache_rematch).  Owns no database: it
 * reads msg and moves bodies with body.c. */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* UIDVALIDITY change */

struct rm_entry {
	struct cache_key key;
	char *msgid; /* owned */
	uint64_t size;
	bool taken;
};

struct rm_list {
	struct rm_entry *v;
	size_t n, cap;
};

struct rm_ctx {
	uint32_t uidvalidity;
	struct rm_list fresh; /* the new generation's messages */
	struct rm_list old;   /* older generations' cached bodies */
	size_t unmatched;
};

static int rm_append(struct rm_list *l, struct cache_key key, struct span id,
                     uint64_t size)
{
	struct rm_entry *e;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;

		e = realloc(l->v, cap * sizeof(*e));
		if (e == NULL)
			return -ENOMEM;
		l->v = e;
		l->cap = cap;
	}
	e = &l->v[l->n];
	e->msgid = malloc(id.n + 1);
	if (e->msgid == NULL)
		return -ENOMEM;
	memcpy(e->msgid, id.p, id.n);
	e->msgid[id.n] = '\0';
	e->key = key;
	e->size = size;
	e->taken = false;
	l->n++;
	return 0;
}

static void rm_list_free(struct rm_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->v[i].msgid);
	free(l->v);
}

static int rm_collect(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                      void *ctx)
{
	struct rm_ctx *rc = ctx;
	struct cache_key key;
	struct msg_view mv;
	struct body_loc body;
	int err;

	if (k->mv_size != KEY_LEN)
		return corrupt(t, "message key", k->mv_size, 0, 0);
	key = msgkey_parse(k->mv_data);
	if (!msg_parse(v, &mv))
		return corrupt(t, "message", key.mailbox_id, key.uidvalidity,
		               key.uid);
	if (key.uidvalidity == rc->uidvalidity) {
		if (mv.message_id.n == 0)
			return 0;
		err = rm_append(&rc->fresh, key, mv.message_id, mv.size);
		return err ? txn_fail(t, err) : 0;
	}
	err = body_find(t, k->mv_data, &body);
	if (err == -ENOENT)
		return 0;
	if (err)
		return err;
	if (mv.message_id.n == 0) {
		rc->unmatched++;
		return 0;
	}
	/* The body's length is the truth; the record may hold RFC822.SIZE. */
	err = rm_append(&rc->old, key, mv.message_id, body.size);
	return err ? txn_fail(t, err) : 0;
}

static int rm_cmp(const struct rm_entry *a, const char *msgid, uint64_t size)
{
	int c = strcmp(a->msgid, msgid);

	if (c)
		return c;
	return a->size < size ? -1 : a->size > size;
}

static int rm_sort_cmp(const void *pa, const void *pb)
{
	const struct rm_entry *a = pa, *b = pb;
	int c = rm_cmp(a, b->msgid, b->size);

	if (c)
		return c;
	return a->key.uid < b->key.uid ? -1 : a->key.uid > b->key.uid;
}

/* The first new entry with (msgid, size), or NULL. */
static struct rm_entry *rm_find(struct rm_list *l, const char *msgid,
                                uint64_t size)
{
	size_t lo = 0, hi = l->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (rm_cmp(&l->v[mid], msgid, size) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < l->n && rm_cmp(&l->v[lo], msgid, size) == 0)
		return &l->v[lo];
	return NULL;
}

/* Give the body of old to a free message of the new generation, if any.
 * Returns 1 if matched, 0 if not, or a negative errno. */
static int rm_match_one(struct cache_txn *t, struct rm_ctx *rc,
                        const struct rm_entry *old, bool copy)
{
	struct rm_entry *e, *end = rc->fresh.v + rc->fresh.n;
	uint8_t k[KEY_LEN];
	struct body_loc b;
	int err;

	for (e = rm_find(&rc->fresh, old->msgid, old->size);
	     e && e < end && rm_cmp(e, old->msgid, old->size) == 0; e++) {
		if (e->taken)
			continue;
		e->taken = true;
		msgkey_make(k, e->key);
		err = body_find(t, k, &b);
		if (err == 0)
			continue; /* already has its own body */
		if (err != -ENOENT)
			return err;
		err = body_transfer(t, old->key, e->key, copy);
		if (err == -ENOENT)
			return txn_fail(t, -EIO);
		return err ? err : 1;
	}
	return 0;
}

int cache_rematch(struct cache_txn *txn, uint32_t mailbox_id,
                  uint32_t uidvalidity, unsigned flags,
                  struct cache_rematch_stats *stats_r)
{
	struct rm_ctx ctx = {.uidvalidity = uidvalidity};
	struct cache_rematch_stats st = {0, 0};
	uint8_t k[4];
	size_t i;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(mailbox_id) || uidvalidity == 0 ||
	    (flags & ~(unsigned)CACHE_REMATCH_COPY))
		return txn_fail(txn, -EINVAL);
	/* Collect first, write after: no cursor is open while writing. */
	be32_put(k, mailbox_id);
	rc = db_scan(txn, DB_MSG, k, 4, 4, rm_collect, &ctx);
	if (rc)
		goto out;
	if (ctx.fresh.n)
		qsort(ctx.fresh.v, ctx.fresh.n, sizeof(*ctx.fresh.v),
		      rm_sort_cmp);
	st.unmatched = ctx.unmatched;
	for (i = 0; i < ctx.old.n; i++) {
		rc = rm_match_one(txn, &ctx, &ctx.old.v[i],
		                  flags & CACHE_REMATCH_COPY);
		if (rc < 0)
			goto out;
		if (rc)
			st.matched++;
		else
			st.unmatched++;
	}
	rc = 0;
	log_debug(
	        "cache %s: mailbox %u uidvalidity %u: %zu bodies rematched, %zu kept",
	        txn->cache->dir, mailbox_id, uidvalidity, st.matched,
	        st.unmatched);
	if (stats_r)
		*stats_r = st;
out:
	rm_list_free(&ctx.fresh);
	rm_list_free(&ctx.old);
	return rc;
}
