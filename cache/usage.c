/* No database of its own: what a mailbox holds and how much of it is
 * cached (cache_mailbox_usage), and the next message whose body is not
 * (cache_msg_next_uncached), for statfs, the status attributes and the
 * background prefetch of the fs layer.  Read-only walks of msg, with a
 * lookup of body/body_big per message. */
#include "cache_int.h"

#include <errno.h>
#include <string.h>

struct usage_walk {
	struct cache_usage *u;
	int rc;
};

static int usage_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                     void *ctx)
{
	struct usage_walk *w = ctx;
	struct msg_view mv;
	struct body_loc b;
	int rc;

	if (k->mv_size != KEY_LEN)
		return 0;
	if (!msg_parse(v, &mv)) {
		struct cache_key key = msgkey_parse(k->mv_data);

		return corrupt(t, "message", key.mailbox_id, key.uidvalidity,
		               key.uid);
	}
	w->u->messages++;
	w->u->bytes += mv.size;
	rc = body_find(t, k->mv_data, &b);
	if (rc == 0) {
		w->u->cached++;
		w->u->cached_bytes += b.size;
	} else if (rc != -ENOENT) {
		return rc;
	}
	return 0;
}

int cache_mailbox_usage(struct cache_txn *txn, uint32_t id,
                        uint32_t uidvalidity, struct cache_usage *u_r)
{
	struct usage_walk w = {u_r, 0};
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (u_r == NULL || uidvalidity == 0)
		return txn_fail(txn, -EINVAL);
	memset(u_r, 0, sizeof(*u_r));
	msgkey_make(k, (struct cache_key){id, uidvalidity, 0});
	return db_scan(txn, DB_MSG, k, KEY_LEN, 8, usage_one, &w);
}

struct next_walk {
	uint32_t uid;
	uint64_t size;
};

static int next_one(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                    void *ctx)
{
	struct next_walk *w = ctx;
	struct msg_view mv;
	struct body_loc b;
	int rc;

	if (k->mv_size != KEY_LEN)
		return 0;
	rc = body_find(t, k->mv_data, &b);
	if (rc == 0)
		return 0;
	if (rc != -ENOENT)
		return rc;
	w->uid = msgkey_parse(k->mv_data).uid;
	w->size = msg_parse(v, &mv) ? mv.size : 0;
	return 1;
}

int cache_msg_next_uncached(struct cache_txn *txn, uint32_t id,
                            uint32_t uidvalidity, uint32_t uid_from,
                            uint32_t *uid_r, uint64_t *size_r)
{
	struct next_walk w = {0, 0};
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (uid_r == NULL || uidvalidity == 0)
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, (struct cache_key){id, uidvalidity, uid_from});
	rc = db_scan(txn, DB_MSG, k, KEY_LEN, 8, next_one, &w);
	if (rc < 0)
		return rc;
	if (w.uid == 0)
		return -ENOENT;
	*uid_r = w.uid;
	if (size_r != NULL)
		*size_r = w.size;
	return 0;
}
