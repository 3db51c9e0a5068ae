/* Schema: msg, the public calls on message records (the record itself,
 * its encoding, loading and storing: msgrec.c).  Deleting a message
 * deletes its body. */
#include "cache_int.h"

#include <errno.h>
#include <stdlib.h>

/* ------------------------------------------------------------------ */
/* Messages */

void cache_msg_free(struct cache_msg **msg)
{
	if (msg == NULL)
		return;
	free(*msg);
	*msg = NULL;
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
