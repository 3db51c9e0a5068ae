/* Schema: body, zbody, body_big, chunk and chunk_open: the cached bodies
 * of IMAP messages and POP3 downloads, whole or in pieces, their moves,
 * and the bodies that arrive in pieces (struct cache_body_stream).  How a
 * value is compressed is compress.c's. */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Bodies
 *
 * How a body is stored depends only on its length:
 *
 * - up to CACHE_BODY_CHUNK bytes: one value in "zbody" under the message
 *   key, encoded (compress.c: a codec byte, then the bytes, or their
 *   length and a zstd frame, made with the cache's dictionary once it has
 *   one);
 * - longer: in pieces.  "body_big" maps the message key to a record
 *   (version byte, length u64, chunk size u32, blob id u64); the pieces
 *   live in "chunk" under (blob id u64, index u32), each encoded the same
 *   way (no dictionary) and decoding to chunk-size bytes (fewer in the
 *   last one), so a read at offset X looks up piece X / chunk size
 *   directly.
 *
 * Caches of schema 1 and 2 kept small bodies (and in schema 1 every body)
 * in "body", the raw bytes; those stay and are read as they are, and
 * their raw pieces are pieces of codec ZV_RAW.  A body is in one of the
 * three databases, never more.
 *
 * A body that arrives in pieces (struct cache_body_stream) is written
 * under a new blob id in short write transactions; "chunk_open" lists the
 * blob ids being written (blob id u64 -> version byte, start time u64).
 * The body_big record, written last, in the transaction that also makes
 * the message's size exact, is what makes the body exist: until then no
 * reader finds it.  Pieces of a blob still listed in chunk_open when the
 * cache is opened are the leftovers of an interrupted fetch, deleted. */

#define BIGBODY_REC_V1  1
#define CHUNK_OPEN_V1   1
#define BIGBODY_REC_LEN 21
/* A stream commits what it has whenever it holds this much (a multiple
 * of CACHE_BODY_CHUNK): its memory and that of the write transaction. */
#define STREAM_FLUSH    (16u * CACHE_BODY_CHUNK)

int body_find(struct cache_txn *t, const uint8_t k[KEY_LEN], struct body_loc *b)
{
	const uint8_t *p;
	MDB_val v;
	int rc = db_get(t, DB_ZBODY, k, KEY_LEN, &b->v);

	memcpy(b->k, k, KEY_LEN);
	b->big = false;
	b->old = false;
	if (rc == 0) {
		if (zval_len(&b->v, &b->size) != 0)
			return corrupt(t, "body", be32_get(k), be32_get(k + 4),
			               be32_get(k + 8));
		return 0;
	}
	if (rc != -ENOENT)
		return rc;
	rc = db_get(t, DB_BODY, k, KEY_LEN, &b->v);
	if (rc == 0) {
		b->old = true;
		b->size = b->v.mv_size;
		return 0;
	}
	if (rc != -ENOENT)
		return rc;
	rc = db_get(t, DB_BIGBODY, k, KEY_LEN, &v);
	if (rc)
		return rc;
	p = v.mv_data;
	if (v.mv_size != BIGBODY_REC_LEN || p[0] != BIGBODY_REC_V1)
		return corrupt(t, "big body", be32_get(k), be32_get(k + 4),
		               be32_get(k + 8));
	b->big = true;
	b->size = be64_get(p + 1);
	b->chunk = be32_get(p + 9);
	b->blob = be64_get(p + 13);
	if (b->chunk == 0 || b->blob == 0 || b->size / b->chunk >= UINT32_MAX)
		return corrupt(t, "big body", be32_get(k), be32_get(k + 4),
		               be32_get(k + 8));
	return 0;
}

/* Bytes in piece idx of b. */
static size_t chunk_len(const struct body_loc *b, uint64_t idx)
{
	uint64_t left = b->size - idx * b->chunk;

	return left < b->chunk ? (size_t)left : b->chunk;
}

/* ------------------------------------------------------------------ */
/* Pieces decoded by read transactions, shared by the threads of the
 * cache: the kernel asks for a 256 KiB piece in two 128 KiB reads, often
 * on two threads, and each would decompress it.  Only read transactions
 * fill and use it, so it holds committed pieces only; those never change
 * (a blob id is never given again once committed, and the pieces of a
 * body are all written before its body_big record), so (blob, index) is
 * their identity.  A slot is freed by the last of its users. */

struct piece_buf {
	atomic_uint refs;
	uint64_t blob, idx;
	size_t n;
	uint8_t data[];
};

static void piece_unref(struct piece_buf *pb)
{
	if (pb != NULL && atomic_fetch_sub(&pb->refs, 1) == 1)
		free(pb);
}

int piece_cache_init(struct cache *c)
{
	memset(c->pieces, 0, sizeof(c->pieces));
	c->piece_next = 0;
	return -pthread_mutex_init(&c->piece_lock, NULL);
}

void piece_cache_free(struct cache *c)
{
	for (size_t i = 0; i < PIECE_SLOTS; i++)
		piece_unref(c->pieces[i]);
	pthread_mutex_destroy(&c->piece_lock);
}

/* The piece (blob, idx) if decoded, with a reference for the caller. */
static struct piece_buf *piece_find(struct cache *c, uint64_t blob,
                                    uint64_t idx)
{
	struct piece_buf *pb = NULL;

	pthread_mutex_lock(&c->piece_lock);
	for (size_t i = 0; i < PIECE_SLOTS; i++) {
		if (c->pieces[i] != NULL && c->pieces[i]->blob == blob &&
		    c->pieces[i]->idx == idx) {
			pb = c->pieces[i];
			atomic_fetch_add(&pb->refs, 1);
			break;
		}
	}
	pthread_mutex_unlock(&c->piece_lock);
	return pb;
}

/* Keep pb (its caller's reference stays the caller's). */
static void piece_keep(struct cache *c, struct piece_buf *pb)
{
	struct piece_buf *old;

	atomic_fetch_add(&pb->refs, 1);
	pthread_mutex_lock(&c->piece_lock);
	old = c->pieces[c->piece_next];
	c->pieces[c->piece_next] = pb;
	c->piece_next = (c->piece_next + 1) % PIECE_SLOTS;
	pthread_mutex_unlock(&c->piece_lock);
	piece_unref(old);
}

/* A reference to what a read used: the map span read (noted and released
 * by ref_done) and the shared piece, if any. */
struct body_ref {
	struct span used;
	struct piece_buf *pb;
};

/* The bytes of piece idx of b, and in ref what they came from: the map
 * (a pointer valid until the next write), this thread's decode buffer
 * (until the next decode on this thread), or a shared piece (until
 * ref_done).  A piece missing, damaged or of the wrong length is a
 * damaged cache. */
static int chunk_get(struct cache_txn *t, const struct body_loc *b,
                     uint64_t idx, const uint8_t **p_r, struct body_ref *ref)
{
	uint8_t k[CHUNK_KEY_LEN];
	struct piece_buf *pb;
	size_t want = chunk_len(b, idx), n;
	uint64_t len;
	MDB_val v;
	int rc;

	chunk_key(k, b->blob, idx);
	rc = db_get(t, DB_CHUNK, k, CHUNK_KEY_LEN, &v);
	if (rc == -ENOENT)
		return corrupt(t, "body piece (missing)", b->blob, idx, 0);
	if (rc)
		return rc;
	ref->used.p = v.mv_data;
	ref->used.n = v.mv_size;
	if (t->write || v.mv_size == 0 ||
	    ((const uint8_t *)v.mv_data)[0] == ZV_RAW) {
		rc = zval_decode(t, &v, "body piece", b->blob, idx, 0, p_r, &n);
		if (rc == 0 && n != want)
			rc = corrupt(t, "body piece", b->blob, idx, n);
		if (rc == 0 && *p_r == (const uint8_t *)v.mv_data + 1)
			ref->used.n = 0; /* raw: the caller says what it read */
		return rc;
	}
	pb = piece_find(t->cache, b->blob, idx);
	if (pb != NULL) {
		ref->used.n = 0;
	} else {
		if (zval_len(&v, &len) != 0 || len != want)
			return corrupt(t, "body piece", b->blob, idx,
			               v.mv_size);
		pb = malloc(sizeof(*pb) + want);
		if (pb == NULL)
			return txn_fail(t, -ENOMEM);
		atomic_init(&pb->refs, 1);
		pb->blob = b->blob;
		pb->idx = idx;
		pb->n = want;
		rc = zval_decode_to(t, &v, "body piece", b->blob, idx, 0,
		                    pb->data, want);
		if (rc) {
			free(pb);
			return rc;
		}
		piece_keep(t->cache, pb);
	}
	ref->pb = pb;
	*p_r = pb->data;
	return 0;
}

/* Drop the pages of [p, p + n) from this process's view of the map: they
 * stay in the page cache (a later read finds them there), but they no
 * longer count in the resident set, which otherwise grows by every body
 * ever read.  The map is read-only and shared, so this loses nothing. */
static void release_pages(const void *p, size_t n)
{
	static long pagesize;
	uintptr_t start, end;

	if (n == 0)
		return;
	if (pagesize == 0)
		pagesize = sysconf(_SC_PAGESIZE);
	start = (uintptr_t)p & ~((uintptr_t)pagesize - 1);
	end = ((uintptr_t)p + n + (uintptr_t)pagesize - 1) &
	      ~((uintptr_t)pagesize - 1);
	madvise((void *)start, end - start, MADV_DONTNEED);
}

/* Where the bytes [off, off + n) of body b are, n > 0, the range inside
 * one piece of a body in pieces: *p_r points into the map, this thread's
 * decode buffer or a shared piece (see chunk_get), valid until ref_done
 * and the next decode on this thread. */
static int body_span(struct cache_txn *t, const struct body_loc *b,
                     uint64_t off, size_t n, const uint8_t **p_r,
                     struct body_ref *ref)
{
	const uint8_t *p;
	size_t len;
	int rc = 0;

	ref->pb = NULL;
	ref->used.p = b->v.mv_data;
	ref->used.n = b->v.mv_size;
	if (b->big) {
		uint64_t idx = off / b->chunk;

		rc = chunk_get(t, b, idx, &p, ref);
		off -= idx * b->chunk;
	} else if (b->old) {
		p = b->v.mv_data;
		ref->used.n = 0;
	} else {
		rc = zval_decode(t, &b->v, "body", be32_get(b->k),
		                 be32_get(b->k + 4), be32_get(b->k + 8), &p,
		                 &len);
		if (rc == 0 && p == (const uint8_t *)b->v.mv_data + 1)
			ref->used.n = 0;
	}
	if (rc)
		return rc;
	*p_r = p + off;
	if (ref->used.n == 0 && ref->pb == NULL) {
		/* Raw in the map: only the bytes used were read. */
		ref->used.p = p + off;
		ref->used.n = n;
	}
	return 0;
}

static void ref_done(struct cache_txn *t, struct body_ref *ref)
{
	note_span(t, ref->used.p, ref->used.n);
	release_pages(ref->used.p, ref->used.n);
	piece_unref(ref->pb);
	ref->pb = NULL;
	ref->used.n = 0;
}

/* Copy [off, off + len) of body b (inside it) into buf. */
static int body_copy(struct cache_txn *t, const struct body_loc *b,
                     uint64_t off, uint8_t *buf, size_t len)
{
	while (len > 0) {
		uint64_t end =
		        b->big ? (off / b->chunk + 1) * b->chunk : b->size;
		size_t n = end - off < len ? (size_t)(end - off) : len;
		const uint8_t *p;
		struct body_ref ref;
		int rc = body_span(t, b, off, n, &p, &ref);

		if (rc)
			return rc;
		memcpy(buf, p, n);
		ref_done(t, &ref);
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Write len bytes as the pieces of blob from piece first on. */
static int chunks_put(struct cache_txn *t, uint64_t blob, uint64_t first,
                      const uint8_t *data, size_t len)
{
	uint8_t k[CHUNK_KEY_LEN];

	/* The whole length up front: if the map fills up at some piece, the
	 * retry must find room for all of them (see db_reserve). */
	t->bytes += len;
	for (uint64_t idx = first; len > 0; idx++) {
		size_t n = len < CACHE_BODY_CHUNK ? len : CACHE_BODY_CHUNK;
		int rc;

		if (idx > UINT32_MAX)
			return txn_fail(t, -EFBIG);
		chunk_key(k, blob, idx);
		rc = zval_put(t, DB_CHUNK, k, CHUNK_KEY_LEN, data, n, ZV_PIECE);
		if (rc)
			return rc;
		data += n;
		len -= n;
	}
	return 0;
}

static int bigbody_put(struct cache_txn *t, const uint8_t k[KEY_LEN],
                       uint64_t size, uint32_t chunk, uint64_t blob)
{
	uint8_t rec[BIGBODY_REC_LEN];

	rec[0] = BIGBODY_REC_V1;
	be64_put(rec + 1, size);
	be32_put(rec + 9, chunk);
	be64_put(rec + 13, blob);
	return db_put(t, DB_BIGBODY, k, KEY_LEN, rec, sizeof(rec), 0);
}

/* Delete the pieces of blob and its chunk_open entry. */
static int blob_del(struct cache_txn *t, uint64_t blob)
{
	uint8_t k[8];
	int rc;

	be64_put(k, blob);
	rc = db_del_prefix(t, DB_CHUNK, k, 8, NULL);
	if (rc == 0)
		rc = db_del(t, DB_CHUNK_OPEN, k, 8);
	return rc;
}

static int blob_new(struct cache_txn *t, uint64_t *blob_r)
{
	return counter_next(t, META_NEXT_BLOB, UINT64_MAX - 1, blob_r);
}

/* Delete the body under k, whichever way it is stored. */
int body_del(struct cache_txn *t, const uint8_t k[KEY_LEN])
{
	struct body_loc b;
	int rc = db_del(t, DB_ZBODY, k, KEY_LEN);

	if (rc == 0)
		rc = db_del(t, DB_BODY, k, KEY_LEN);
	if (rc)
		return rc;
	rc = db_get(t, DB_BIGBODY, k, KEY_LEN, &b.v);
	if (rc == -ENOENT)
		return 0;
	if (rc == 0)
		rc = body_find(t, k, &b);
	if (rc == 0)
		rc = blob_del(t, b.blob);
	if (rc == 0)
		rc = db_del(t, DB_BIGBODY, k, KEY_LEN);
	return rc;
}

struct blob_list {
	uint64_t *v;
	size_t n, cap;
};

static int blob_collect(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                        void *ctx)
{
	struct blob_list *l = ctx;
	const uint8_t *p = v->mv_data;

	if (v->mv_size != BIGBODY_REC_LEN || p[0] != BIGBODY_REC_V1)
		return corrupt(t, "big body", k->mv_size, 0, 0);
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		uint64_t *nv = realloc(l->v, cap * sizeof(*nv));

		if (nv == NULL)
			return txn_fail(t, -ENOMEM);
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = be64_get(p + 13);
	return 0;
}

/* Delete every body whose key starts with prefix[0..plen). */
int body_del_prefix(struct cache_txn *t, const uint8_t *prefix, size_t plen)
{
	struct blob_list l = {NULL, 0, 0};
	int rc = db_del_prefix(t, DB_ZBODY, prefix, plen, NULL);

	if (rc == 0)
		rc = db_del_prefix(t, DB_BODY, prefix, plen, NULL);
	if (rc == 0)
		rc = db_scan(t, DB_BIGBODY, prefix, plen, plen, blob_collect,
		             &l);
	for (size_t i = 0; rc == 0 && i < l.n; i++)
		rc = blob_del(t, l.v[i]);
	if (rc == 0)
		rc = db_del_prefix(t, DB_BIGBODY, prefix, plen, NULL);
	free(l.v);
	return rc;
}

/* Store len bytes as the body under k, replacing any. */
int body_write(struct cache_txn *t, const uint8_t k[KEY_LEN], const void *data,
               size_t len)
{
	uint64_t blob;
	int rc = body_del(t, k);

	if (rc)
		return rc;
	if (len <= CACHE_BODY_CHUNK)
		return zval_put(t, DB_ZBODY, k, KEY_LEN, data, len, ZV_BODY);
	rc = blob_new(t, &blob);
	if (rc == 0)
		rc = chunks_put(t, blob, 0, data, len);
	if (rc == 0)
		rc = bigbody_put(t, k, len, CACHE_BODY_CHUNK, blob);
	return rc;
}

/* The body is now len bytes long: make its record's size exact.  The
 * record must exist. */
static int msg_set_verified(struct cache_txn *t, struct cache_key key,
                            uint64_t len)
{
	struct cache_msg *m = NULL;
	int rc = msg_load(t, key, &m);

	if (rc == -ENOENT)
		return txn_fail(t, rc);
	if (rc == 0 && (m->size != len || !m->size_verified)) {
		m->size = len;
		m->size_verified = true;
		rc = msg_store(t, m);
	}
	free(m);
	return rc;
}

/* Store a body and make its record's size exact; the record must exist. */
static int body_store(struct cache_txn *t, struct cache_key key,
                      const void *data, size_t len)
{
	uint8_t k[KEY_LEN];
	int rc;

	msgkey_make(k, key);
	rc = msg_set_verified(t, key, len);
	if (rc == 0)
		rc = body_write(t, k, data, len);
	return rc;
}

int cache_body_put(struct cache_txn *txn, struct cache_key key,
                   const void *data, size_t len)
{
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!msg_key_ok(key) || (data == NULL && len))
		return txn_fail(txn, -EINVAL);
	return body_store(txn, key, data, len);
}

/* Body keys that may be read: IMAP messages and POP3 downloads. */
static bool body_key_readable(struct cache_key k)
{
	if (k.mailbox_id == CACHE_POP_MAILBOX_ID)
		return k.uidvalidity == CACHE_POP_UIDVALIDITY && k.uid != 0;
	return msg_key_ok(k);
}

static int body_lookup(struct cache_txn *t, struct cache_key key,
                       struct body_loc *b)
{
	uint8_t k[KEY_LEN];

	if (!body_key_readable(key))
		return -ENOENT;
	msgkey_make(k, key);
	return body_find(t, k, b);
}

int cache_body_has(struct cache_txn *txn, struct cache_key key)
{
	struct body_loc b;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	rc = body_lookup(txn, key, &b);
	if (rc == -ENOENT)
		return 0;
	return rc ? rc : 1;
}

int cache_body_size(struct cache_txn *txn, struct cache_key key,
                    uint64_t *size_r)
{
	struct body_loc b;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (size_r == NULL)
		return txn_fail(txn, -EINVAL);
	rc = body_lookup(txn, key, &b);
	if (rc == 0)
		*size_r = b.size;
	return rc;
}

int cache_body_read(struct cache_txn *txn, struct cache_key key,
                    uint64_t offset, void *buf, size_t len, size_t *n_r)
{
	struct body_loc b;
	size_t n = 0;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (n_r == NULL || (buf == NULL && len))
		return txn_fail(txn, -EINVAL);
	*n_r = 0;
	rc = body_lookup(txn, key, &b);
	if (rc)
		return rc;
	if (offset < b.size) {
		n = b.size - offset < len ? (size_t)(b.size - offset) : len;
		rc = body_copy(txn, &b, offset, buf, n);
	}
	note_read(txn->cache);
	if (rc == 0)
		*n_r = n;
	return rc;
}

int cache_body_view(struct cache_txn *txn, struct cache_key key,
                    uint64_t offset, size_t len,
                    int (*fn)(void *ctx, const void *data, size_t n), void *ctx)
{
	const uint8_t *data = NULL;
	uint8_t *copy = NULL;
	struct body_ref ref = {{NULL, 0}, NULL};
	struct body_loc b;
	size_t n = 0;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (fn == NULL)
		return txn_fail(txn, -EINVAL);
	rc = body_lookup(txn, key, &b);
	if (rc)
		return rc;
	if (offset < b.size)
		n = b.size - offset < len ? (size_t)(b.size - offset) : len;
	if (n > 0 && (!b.big || offset % b.chunk + n <= b.chunk)) {
		/* Inside one value: from the map, or decoded once. */
		rc = body_span(txn, &b, offset, n, &data, &ref);
		if (rc)
			return rc;
	} else if (n > 0) {
		copy = malloc(n);
		if (copy == NULL)
			return txn_fail(txn, -ENOMEM);
		rc = body_copy(txn, &b, offset, copy, n);
		if (rc) {
			free(copy);
			return rc;
		}
	}
	rc = fn(ctx, copy ? copy : data ? (const void *)data : "", n);
	free(copy);
	ref_done(txn, &ref);
	note_read(txn->cache);
	return rc;
}

int cache_body_get(struct cache_txn *txn, struct cache_key key, void **data_r,
                   size_t *len_r)
{
	struct body_loc b;
	void *p;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (data_r == NULL || len_r == NULL)
		return txn_fail(txn, -EINVAL);
	*data_r = NULL;
	*len_r = 0;
	rc = body_lookup(txn, key, &b);
	if (rc)
		return rc;
	if (b.size > SIZE_MAX - 1)
		return txn_fail(txn, -EFBIG);
	p = malloc(b.size ? (size_t)b.size : 1);
	if (p == NULL)
		return txn_fail(txn, -ENOMEM);
	rc = body_copy(txn, &b, 0, p, (size_t)b.size);
	if (rc) {
		free(p);
		return rc;
	}
	*data_r = p;
	*len_r = (size_t)b.size;
	return 0;
}

int cache_body_delete(struct cache_txn *txn, struct cache_key key)
{
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!msg_key_ok(key))
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	return body_del(txn, k);
}

/* A heap copy of a value (a map pointer does not survive a put). */
static int val_dup(struct cache_txn *t, const MDB_val *v, MDB_val *copy)
{
	copy->mv_data = malloc(v->mv_size ? v->mv_size : 1);
	if (copy->mv_data == NULL)
		return txn_fail(t, -ENOMEM);
	memcpy(copy->mv_data, v->mv_data, v->mv_size);
	copy->mv_size = v->mv_size;
	return 0;
}

/* Give the body under from to the message to (whose record must exist),
 * as cache_body_put would; keep from's copy if copy.  Values move as they
 * are encoded (an old raw body of "body" is encoded on the way); a body
 * in pieces moves by its body_big record alone, and a copy of it is made
 * piece by piece. */
int body_transfer(struct cache_txn *t, struct cache_key from,
                  struct cache_key to, bool copy)
{
	uint8_t fk[KEY_LEN], tk[KEY_LEN];
	struct body_loc b;
	MDB_val dup = {0, NULL};
	uint64_t blob;
	int rc;

	msgkey_make(fk, from);
	msgkey_make(tk, to);
	rc = body_find(t, fk, &b);
	if (rc)
		return rc;
	if (b.old) {
		rc = val_dup(t, &b.v, &dup);
		if (rc)
			return rc;
		rc = body_store(t, to, dup.mv_data, dup.mv_size);
		free(dup.mv_data);
		if (rc == 0 && !copy)
			rc = db_del(t, DB_BODY, fk, KEY_LEN);
		return rc;
	}
	rc = msg_set_verified(t, to, b.size);
	if (rc == 0)
		rc = body_del(t, tk);
	if (rc == 0 && !b.big) {
		/* The map pointer did not survive the writes above. */
		rc = db_get(t, DB_ZBODY, fk, KEY_LEN, &b.v);
		if (rc == -ENOENT)
			rc = txn_fail(t, -EIO);
		if (rc == 0)
			rc = val_dup(t, &b.v, &dup);
		if (rc)
			return rc;
		rc = db_put(t, DB_ZBODY, tk, KEY_LEN, dup.mv_data, dup.mv_size,
		            0);
		free(dup.mv_data);
		if (rc == 0 && !copy)
			rc = db_del(t, DB_ZBODY, fk, KEY_LEN);
		return rc;
	}
	if (rc || !copy) {
		if (rc == 0)
			rc = bigbody_put(t, tk, b.size, b.chunk, b.blob);
		if (rc == 0)
			rc = db_del(t, DB_BIGBODY, fk, KEY_LEN);
		return rc;
	}
	rc = blob_new(t, &blob);
	for (uint64_t i = 0; rc == 0 && i * b.chunk < b.size; i++) {
		uint8_t k[CHUNK_KEY_LEN];
		MDB_val v;

		chunk_key(k, b.blob, i);
		rc = db_get(t, DB_CHUNK, k, CHUNK_KEY_LEN, &v);
		if (rc == -ENOENT)
			rc = corrupt(t, "body piece (missing)", b.blob, i, 0);
		if (rc == 0)
			rc = val_dup(t, &v, &dup);
		if (rc)
			break;
		chunk_key(k, blob, i);
		rc = db_put(t, DB_CHUNK, k, CHUNK_KEY_LEN, dup.mv_data,
		            dup.mv_size, 0);
		free(dup.mv_data);
	}
	if (rc == 0)
		rc = bigbody_put(t, tk, b.size, b.chunk, blob);
	return rc;
}

int cache_body_move(struct cache_txn *txn, struct cache_key from,
                    struct cache_key to)
{
	uint8_t k[KEY_LEN];
	struct body_loc b;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!msg_key_ok(from) || !msg_key_ok(to))
		return txn_fail(txn, -EINVAL);
	if (memcmp(&from, &to, sizeof(from)) == 0)
		return 0;
	msgkey_make(k, from);
	rc = body_find(txn, k, &b);
	if (rc)
		return rc;
	return body_transfer(txn, from, to, false);
}

/* --- bodies that arrive in pieces --- */

int cache_body_stream_new(struct cache *cache, struct cache_body_stream **s_r)
{
	struct cache_body_stream *s;

	if (cache == NULL || s_r == NULL)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->cache = cache;
	*s_r = s;
	return 0;
}

uint64_t cache_body_stream_size(const struct cache_body_stream *s)
{
	return s ? s->written + s->len : 0;
}

/* Is blob still being written (not discarded by a cache_open meanwhile)? */
static int blob_open_check(struct cache_txn *t, uint64_t blob)
{
	uint8_t k[8];
	MDB_val v;
	int rc;

	be64_put(k, blob);
	rc = db_get(t, DB_CHUNK_OPEN, k, 8, &v);
	if (rc == -ENOENT) {
		log_warn("cache %s: the pieces of a body being stored were "
		         "discarded meanwhile",
		         t->cache->dir);
		return txn_fail(t, -ESTALE);
	}
	return rc;
}

struct stream_flush {
	struct cache_body_stream *s;
	uint64_t blob;
};

static int stream_flush_fn(struct cache_txn *t, void *ctx)
{
	struct stream_flush *f = ctx;
	struct cache_body_stream *s = f->s;
	uint8_t k[8], rec[9];
	int rc;

	f->blob = s->blob;
	if (f->blob != 0) {
		rc = blob_open_check(t, f->blob);
	} else {
		rc = blob_new(t, &f->blob);
		rec[0] = CHUNK_OPEN_V1;
		be64_put(rec + 1, (uint64_t)time(NULL));
		be64_put(k, f->blob);
		if (rc == 0)
			rc = db_put(t, DB_CHUNK_OPEN, k, 8, rec, sizeof(rec),
			            MDB_NOOVERWRITE);
	}
	if (rc == 0)
		rc = chunks_put(t, f->blob, s->written / CACHE_BODY_CHUNK,
		                s->buf, s->len);
	return rc;
}

int cache_body_stream_write(struct cache_body_stream *s, const void *data,
                            size_t len)
{
	const uint8_t *d = data;

	if (s == NULL || (data == NULL && len))
		return -EINVAL;
	if (s->err)
		return s->err;
	while (len > 0) {
		size_t n;

		if (s->len == s->cap) {
			size_t cap = s->cap ? s->cap * 2 : 64 * 1024;
			uint8_t *nb;

			if (cap > STREAM_FLUSH)
				cap = STREAM_FLUSH;
			nb = realloc(s->buf, cap);
			if (nb == NULL)
				return s->err = -ENOMEM;
			s->buf = nb;
			s->cap = cap;
		}
		n = s->cap - s->len < len ? s->cap - s->len : len;
		memcpy(s->buf + s->len, d, n);
		s->len += n;
		d += n;
		len -= n;
		if (s->len == STREAM_FLUSH) {
			struct stream_flush f = {s, 0};
			int rc = cache_run_write(s->cache, stream_flush_fn, &f);

			if (rc)
				return s->err = rc;
			s->blob = f.blob;
			s->written += s->len;
			s->len = 0;
		}
	}
	return 0;
}

/* Make what s holds the body under k, replacing any (in t, which the
 * caller commits). */
int stream_store(struct cache_txn *t, struct cache_body_stream *s,
                 const uint8_t k[KEY_LEN])
{
	int rc;

	if (s->err)
		return txn_fail(t, s->err);
	if (s->blob == 0)
		return body_write(t, k, s->buf ? s->buf : (uint8_t *)"",
		                  s->len);
	rc = blob_open_check(t, s->blob);
	if (rc == 0)
		rc = body_del(t, k);
	if (rc == 0)
		rc = chunks_put(t, s->blob, s->written / CACHE_BODY_CHUNK,
		                s->buf, s->len);
	if (rc == 0)
		rc = bigbody_put(t, k, cache_body_stream_size(s),
		                 CACHE_BODY_CHUNK, s->blob);
	if (rc == 0) {
		uint8_t bk[8];

		be64_put(bk, s->blob);
		rc = db_del(t, DB_CHUNK_OPEN, bk, 8);
	}
	return rc;
}

int cache_body_stream_finish(struct cache_txn *txn, struct cache_body_stream *s,
                             struct cache_key key)
{
	uint8_t k[KEY_LEN];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (s == NULL || !msg_key_ok(key) || s->cache != txn->cache)
		return txn_fail(txn, -EINVAL);
	msgkey_make(k, key);
	rc = msg_set_verified(txn, key, cache_body_stream_size(s));
	if (rc == 0)
		rc = stream_store(txn, s, k);
	return rc;
}

static int stream_discard_fn(struct cache_txn *t, void *ctx)
{
	uint64_t blob = *(uint64_t *)ctx;
	uint8_t k[8];
	MDB_val v;
	int rc;

	/* Gone from chunk_open: its body was stored (or discarded). */
	be64_put(k, blob);
	rc = db_get(t, DB_CHUNK_OPEN, k, 8, &v);
	if (rc == -ENOENT)
		return 0;
	return rc ? rc : blob_del(t, blob);
}

void cache_body_stream_close(struct cache_body_stream **s)
{
	struct cache_body_stream *st;

	if (s == NULL || *s == NULL)
		return;
	st = *s;
	*s = NULL;
	if (st->blob != 0) {
		int rc = cache_run_write(st->cache, stream_discard_fn,
		                         &st->blob);

		if (rc)
			log_warn("cache %s: cannot delete the pieces of an "
			         "unfinished body: %s (deleted at the next "
			         "start)",
			         st->cache->dir, strerror(-rc));
	}
	free(st->buf);
	free(st);
}

/* At open: the pieces of bodies whose writing never finished. */
static int stale_collect(struct cache_txn *t, const MDB_val *k,
                         const MDB_val *v, void *ctx)
{
	struct blob_list *l = ctx;

	(void)v;
	if (k->mv_size != 8)
		return corrupt(t, "chunk_open key", k->mv_size, 0, 0);
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		uint64_t *nv = realloc(l->v, cap * sizeof(*nv));

		if (nv == NULL)
			return txn_fail(t, -ENOMEM);
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = be64_get(k->mv_data);
	return 0;
}

static int stale_clean_fn(struct cache_txn *t, void *ctx)
{
	struct blob_list l = {NULL, 0, 0};
	int rc = db_scan(t, DB_CHUNK_OPEN, NULL, 0, 0, stale_collect, &l);

	for (size_t i = 0; rc == 0 && i < l.n; i++)
		rc = blob_del(t, l.v[i]);
	*(size_t *)ctx = l.n;
	free(l.v);
	return rc;
}

void stale_clean(struct cache *c)
{
	size_t n = 0;
	int rc = cache_run_write(c, stale_clean_fn, &n);

	if (rc)
		log_warn("cache %s: cannot delete the pieces of unfinished "
		         "bodies: %s",
		         c->dir, strerror(-rc));
	else if (n > 0)
		log_notice("cache %s: deleted the pieces of %zu body(ies) "
		           "whose download was interrupted",
		           c->dir, n);
}
