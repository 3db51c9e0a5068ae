/* Schema: msg, one message record: its encoding, its key check, and
 * loading and storing it.  Below msg.c and body.c, which both call it;
 * deletes nothing (deleting a message and its body is msg.c's). */
#include "cache_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MSG_REC_V1 1

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

size_t msg_build_size(const struct msg_view *mv)
{
	return sizeof(struct cache_msg) + mv->flags.n + mv->subject.n +
	       mv->from.n + mv->date.n + mv->message_id.n + mv->header.n + 6;
}

struct cache_msg *msg_build(const struct msg_view *mv, struct cache_key key,
                            void *buf)
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
