/* Schema: msg, the message records.  Deleting a message deletes its
 * body. */
#include "cache_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MSG_REC_V1 1

/* ------------------------------------------------------------------ */
/* Messages */

static void msg_encode(struct wr *w, const struct cache_msg *m)
{
	wr_u8(w, MSG_REC_V1);
	wr_u8(w, m->size_verified ? 1 : 0);
	wr_u64(w, m->size);
	wr_u64(w, (uint64_t)m->internaldate);
	wr_u16(w, (uint16_t)m->tz_minutes);
	wr_u64(w, m->modseq);
	wr_str(w, m->flags);
	wr_str(w, m->subject);
	wr_str(w, m->from);
	wr_str(w, m->date);
	wr_str(w, m->message_id);
	wr_blob(w, m->header, m->header ? m->header_len : 0);
}

bool msg_parse(const MDB_val *v, struct msg_view *mv)
{
	struct rd r;

	rd_init(&r, v);
	if (rd_u8(&r) != MSG_REC_V1)
		return false;
	mv->size_verified = rd_u8(&r) & 1;
	mv->size = rd_u64(&r);
	mv->internaldate = (int64_t)rd_u64(&r);
	mv->tz_minutes = (int16_t)rd_u16(&r);
	mv->modseq = rd_u64(&r);
	mv->flags = rd_blob(&r);
	mv->subject = rd_blob(&r);
	mv->from = rd_blob(&r);
	mv->date = rd_blob(&r);
	mv->message_id = rd_blob(&r);
	mv->header = rd_blob(&r);
	return rd_ok(&r);
}

static size_t msg_build_size(const struct msg_view *mv)
{
	return sizeof(struct cache_msg) + mv->flags.n + mv->subject.n +
	       mv->from.n + mv->date.n + mv->message_id.n + mv->header.n + 6;
}

static struct cache_msg *msg_build(const struct msg_view *mv,
                                   struct cache_key key, void *buf)
{
	struct cache_msg *m = buf;
	uint8_t *cur = (uint8_t *)(m + 1);

	memset(m, 0, sizeof(*m));
	m->key = key;
	m->size = mv->size;
	m->size_verified = mv->size_verified;
	m->internaldate = mv->internaldate;
	m->tz_minutes = mv->tz_minutes;
	m->modseq = mv->modseq;
	m->flags = out_str(&cur, mv->flags);
	m->subject = out_str(&cur, mv->subject);
	m->from = out_str(&cur, mv->from);
	m->date = out_str(&cur, mv->date);
	m->message_id = out_str(&cur, mv->message_id);
	if (mv->header.n) {
		m->header = cur;
		m->header_len = mv->header.n;
		memcpy(cur, mv->header.p, mv->header.n);
	}
	return m;
}

void cache_msg_free(struct cache_msg **msg)
{
	if (msg == NULL)
		return;
	free(*msg);
	*msg = NULL;
}

bool msg_key_ok(struct cache_key k)
{
	return mbox_id_ok(k.mailbox_id) && k.uidvalidity != 0 && k.uid != 0;
}

int msg_load(struct cache_txn *t, struct cache_key key,
             struct cache_msg **msg_r)
{
	uint8_t k[KEY_LEN];
	struct msg_view mv;
	MDB_val v;
	void *buf;
	int rc;

	msgkey_make(k, key);
	rc = db_get(t, DB_MSG, k, KEY_LEN, &v);
	if (rc)
		return rc;
	if (!msg_parse(&v, &mv))
		return corrupt(t, "message", key.mailbox_id, key.uidvalidity,
		               key.uid);
	buf = malloc(msg_build_size(&mv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	*msg_r = msg_build(&mv, key, buf);
	return 0;
}

int msg_store(struct cache_txn *t, const struct cache_msg *m)
{
	uint8_t k[KEY_LEN], *p = NULL;
	struct wr w = {NULL, 0};
	int rc;

	msgkey_make(k, m->key);
	msg_encode(&w, m);
	rc = db_reserve(t, DB_MSG, k, KEY_LEN, w.n, 0, &p);
	if (rc)
		return rc;
	w.p = p;
	w.n = 0;
	msg_encode(&w, m);
	return 0;
}

int cache_msg_put(struct cache_txn *txn, const struct cache_msg *msg)
{
	struct cache_msg rec;
	struct msg_view old;
	uint8_t k[KEY_LEN], mk[4];
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (msg == NULL || !msg_key_ok(msg->key) || !str_ok(msg->flags) ||
	    !str_ok(msg->subject) || !str_ok(msg->from) || !str_ok(msg->date) ||
	    !str_ok(msg->message_id) ||
	    (msg->header && !len_ok(msg->header_len)) ||
	    (msg->header == NULL && msg->header_len))
		return txn_fail(txn, -EINVAL);
	/* Every message belongs to a mailbox record, so that removing the
	 * mailbox removes it. */
	be32_put(mk, msg->key.mailbox_id);
	rc = db_get(txn, DB_MBOX, mk, 4, &v);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	rec = *msg;
	msgkey_make(k, msg->key);
	rc = db_get(txn, DB_MSG, k, KEY_LEN, &v);
	if (rc == 0 && msg_parse(&v, &old) && old.size_verified &&
	    !msg->size_verified) {
		rec.size = old.size;
		rec.size_verified = true;
	} else if (rc != 0 && rc != -ENOENT) {
		return rc;
	}
	return msg_store(txn, &rec);
}

int cache_msg_get(struct cache_txn *txn, struct cache_key key,
                  struct cache_msg **msg_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (msg_r == NULL)
		return txn_fail(txn, -EINVAL);
	*msg_r = NULL;
	if (!msg_key_ok(key))
		return -ENOENT;
	return msg_load(txn, key, msg_r);
}

int cache_msg_set_flags(struct cache_txn *txn, struct cache_key key,
                        const char *flags, uint64_t modseq)
{
	struct cache_msg *m = NULL;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!msg_key_ok(key) || !str_ok(flags))
		return txn_fail(txn, -EINVAL);
	rc = msg_load(txn, key, &m);
	if (rc == -ENOENT)
		return txn_fail(txn, rc);
	if (rc)
		return rc;
	m->flags = (char *)(flags ? flags : "");
	m->modseq = modseq;
	rc = msg_store(txn, m);
	free(m);
	return rc;
}

int cache_msg_delete(struct cache_txn *txn, struct cache_key key)
{
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!msg_key_ok(key))
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	rc = db_del(txn, DB_MSG, k, KEY_LEN);
	if (rc == 0)
		rc = body_del(txn, k);
	return rc;
}

struct msg_iter {
	int (*cb)(const struct cache_msg *msg, void *ctx);
	void *ctx;
	struct scratch sc;
	size_t count;
};

static int msg_iter_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                        void *ctx)
{
	struct msg_iter *it = ctx;
	struct cache_key key;
	struct msg_view mv;
	void *buf;

	if (k->mv_size != KEY_LEN)
		return corrupt(t, "message key", k->mv_size, 0, 0);
	key = msgkey_parse(k->mv_data);
	if (!msg_parse(v, &mv))
		return corrupt(t, "message", key.mailbox_id, key.uidvalidity,
		               key.uid);
	buf = scratch_get(&it->sc, msg_build_size(&mv));
	if (buf == NULL)
		return txn_fail(t, -ENOMEM);
	return it->cb(msg_build(&mv, key, buf), it->ctx);
}

int cache_msg_foreach(struct cache_txn *txn, uint32_t mailbox_id,
                      uint32_t uidvalidity, uint32_t uid_from,
                      int (*cb)(const struct cache_msg *msg, void *ctx),
                      void *ctx)
{
	struct msg_iter it = {cb, ctx, {NULL, 0}, 0};
	struct cache_key key = {mailbox_id, uidvalidity, uid_from};
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL)
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	rc = db_scan(txn, DB_MSG, k, KEY_LEN, 8, msg_iter_one, &it);
	free(it.sc.p);
	return rc;
}

struct uid_iter {
	int (*cb)(uint32_t uid, void *ctx);
	void *ctx;
};

static int uid_iter_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                        void *ctx)
{
	struct uid_iter *it = ctx;

	(void)v;
	if (k->mv_size != KEY_LEN)
		return corrupt(t, "message key", k->mv_size, 0, 0);
	return it->cb(msgkey_parse(k->mv_data).uid, it->ctx);
}

int cache_msg_foreach_uid(struct cache_txn *txn, uint32_t mailbox_id,
                          uint32_t uidvalidity, uint32_t uid_from,
                          int (*cb)(uint32_t uid, void *ctx), void *ctx)
{
	struct uid_iter it = {cb, ctx};
	struct cache_key key = {mailbox_id, uidvalidity, uid_from};
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (cb == NULL)
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	return db_scan(txn, DB_MSG, k, KEY_LEN, 8, uid_iter_one, &it);
}

static int count_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                     void *ctx)
{
	(void)t;
	(void)k;
	(void)v;
	++*(size_t *)ctx;
	return 0;
}

int cache_msg_count(struct cache_txn *txn, uint32_t mailbox_id,
                    uint32_t uidvalidity, size_t *count_r)
{
	struct cache_key key = {mailbox_id, uidvalidity, 0};
	uint8_t k[KEY_LEN];
	size_t n = 0;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (count_r == NULL)
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	rc = db_scan(txn, DB_MSG, k, KEY_LEN, 8, count_one, &n);
	if (rc == 0)
		*count_r = n;
	return rc;
}

int cache_msg_delete_generation(struct cache_txn *txn, uint32_t mailbox_id,
                                uint32_t uidvalidity, size_t *count_r)
{
	uint8_t k[8];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(mailbox_id) || uidvalidity == 0)
		return txn_fail(txn, -EINVAL);
	be32_put(k, mailbox_id);
	be32_put(k + 4, uidvalidity);
	rc = db_del_prefix(txn, DB_MSG, k, 8, count_r);
	if (rc == 0)
		rc = body_del_prefix(txn, k, 8);
	return rc;
}
