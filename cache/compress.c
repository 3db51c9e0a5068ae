/* Schema: zdict, and the encoding of the values that may be compressed
 * (the bodies of "zbody", the pieces of "chunk"): writing them compressed
 * when that saves space, reading them back, the dictionary trained from
 * the cache's own bodies, and what reading needs on each thread (zstd
 * contexts, the last value decoded). */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define ZDICT_STATIC_LINKING_ONLY /* ZDICT_trainFromBuffer_fastCover */
#include <zdict.h>
#include <zstd.h>

/* ------------------------------------------------------------------ */
/* The encoding (see cache_int.h and the schema in cache.h)
 *
 *   ZV_RAW        codec byte, the bytes
 *   ZV_ZSTD       codec byte, length u32, one zstd frame
 *   ZV_ZSTD_DICT  codec byte, length u32, dictionary id u32, one zstd
 *                 frame made with that dictionary of "zdict"
 *
 * The frames carry neither their content size nor a dictionary id nor a
 * checksum (the header says the first two; a raw value has no checksum
 * either).  A value decodes to exactly its stated length or it is
 * damaged. */

#define ZV_HEAD      5 /* codec byte, length */
#define ZV_HEAD_DICT 9 /* codec byte, length, dictionary id */
/* No value is written longer than a piece; this bounds what a damaged
 * length can make a reader allocate. */
#define ZV_LEN_MAX   (64u << 20)

/* Levels chosen by measurement (contrib/bench/README.md): small bodies
 * with the dictionary at 3; pieces, mostly attachments, at 1 (level 3
 * saves nothing on base64 and costs a third more time). */
#define LEVEL_BODY  3
#define LEVEL_PIECE 1

/* zdict: id u32 -> version byte, the first 8 bytes of the SHA-256 of the
 * dictionary, the dictionary (zstd's format). */
#define ZDICT_REC_V1     1
#define ZDICT_REC_HEAD   9
#define ZDICT_FP_LEN     8
/* The dictionary is trained once the cache holds ZDICT_TRAIN_AT small
 * bodies, from at most ZDICT_SAMPLES of them (the first in key order),
 * each of at most ZDICT_SAMPLE_MAX bytes. */
#define ZDICT_SIZE       (110u * 1024)
#define ZDICT_TRAIN_AT   256
#define ZDICT_SAMPLES    2000
#define ZDICT_SAMPLE_MAX (64u * 1024)

/* ------------------------------------------------------------------ */
/* Per-thread state */

struct zthread {
	ZSTD_CCtx *cctx; /* owned */
	ZSTD_DCtx *dctx; /* owned */
	uint8_t *enc;    /* owned: the value being written */
	size_t enc_cap;
	/* The last value decoded on this thread: its encoded bytes (a
	 * copy), the fingerprint of its dictionary (zero for none), what it
	 * decoded to.  A read of the same bytes with the same dictionary is
	 * answered from out: a 256 KiB piece read in two 128 KiB reads is
	 * decompressed once. */
	uint8_t *in;
	size_t in_n, in_cap;
	uint8_t fp[ZDICT_FP_LEN];
	uint8_t *out;
	size_t out_n, out_cap;
	bool valid;
};

static pthread_once_t zkey_once = PTHREAD_ONCE_INIT;
static pthread_key_t zkey;
static bool zkey_ok;

static void zthread_free(void *p)
{
	struct zthread *z = p;

	if (z == NULL)
		return;
	ZSTD_freeCCtx(z->cctx);
	ZSTD_freeDCtx(z->dctx);
	free(z->enc);
	free(z->in);
	free(z->out);
	free(z);
}

static void zkey_make(void)
{
	zkey_ok = pthread_key_create(&zkey, zthread_free) == 0;
}

/* This thread's state, made on first use; NULL when out of memory. */
static struct zthread *zthread_get(void)
{
	struct zthread *z;

	pthread_once(&zkey_once, zkey_make);
	if (!zkey_ok)
		return NULL;
	z = pthread_getspecific(zkey);
	if (z != NULL)
		return z;
	z = calloc(1, sizeof(*z));
	if (z == NULL)
		return NULL;
	if (pthread_setspecific(zkey, z) != 0) {
		free(z);
		return NULL;
	}
	return z;
}

/* Make *buf hold at least n bytes (its contents are not kept). */
static bool buf_fit(uint8_t **buf, size_t *cap, size_t n)
{
	uint8_t *p;

	if (*cap >= n)
		return true;
	p = malloc(n ? n : 1);
	if (p == NULL)
		return false;
	free(*buf);
	*buf = p;
	*cap = n;
	return true;
}

/* ------------------------------------------------------------------ */
/* Dictionaries */

struct zdict_mem {
	uint32_t id;
	uint8_t fp[ZDICT_FP_LEN];
	uint8_t *dict; /* owned */
	size_t len;
	ZSTD_CDict *cd; /* owned; made on first compression */
	ZSTD_DDict *dd; /* owned */
	struct zdict_mem *next;
};

int zdicts_init(struct cache *c)
{
	int rc = pthread_mutex_init(&c->zlock, NULL);

	c->zdicts = NULL;
	c->ztrain_at = ZDICT_TRAIN_AT;
	return -rc;
}

void zdicts_free(struct cache *c)
{
	struct zdict_mem *m = c->zdicts, *next;

	for (; m != NULL; m = next) {
		next = m->next;
		ZSTD_freeCDict(m->cd);
		ZSTD_freeDDict(m->dd);
		free(m->dict);
		free(m);
	}
	c->zdicts = NULL;
	pthread_mutex_destroy(&c->zlock);
}

static bool fingerprint(const void *p, size_t n, uint8_t fp[ZDICT_FP_LEN])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) != 1 ||
	    mdlen < ZDICT_FP_LEN)
		return false;
	memcpy(fp, md, ZDICT_FP_LEN);
	return true;
}

/* Dictionary id as it is in the cache now.  The memory copies are matched
 * by id and fingerprint: a dictionary of a transaction that was aborted
 * may have left a copy under an id that a later one reuses.  Copies are
 * kept until cache_close (another thread may be using one). */
static int zdict_find(struct cache_txn *t, uint32_t id, struct zdict_mem **m_r)
{
	struct cache *c = t->cache;
	struct zdict_mem *m;
	const uint8_t *rec;
	uint8_t k[4], fp[ZDICT_FP_LEN];
	MDB_val v;
	int rc;

	be32_put(k, id);
	rc = db_get(t, DB_ZDICT, k, 4, &v);
	if (rc == -ENOENT)
		return corrupt(t, "compression dictionary (missing)", id, 0, 0);
	if (rc)
		return rc;
	rec = v.mv_data;
	if (v.mv_size <= ZDICT_REC_HEAD || rec[0] != ZDICT_REC_V1)
		return corrupt(t, "compression dictionary", id, v.mv_size, 0);
	pthread_mutex_lock(&c->zlock);
	for (m = c->zdicts; m != NULL; m = m->next)
		if (m->id == id && m->len == v.mv_size - ZDICT_REC_HEAD &&
		    memcmp(m->fp, rec + 1, ZDICT_FP_LEN) == 0)
			break;
	pthread_mutex_unlock(&c->zlock);
	if (m != NULL) {
		*m_r = m;
		return 0;
	}
	/* Not loaded yet: check it whole, once. */
	if (!fingerprint(rec + ZDICT_REC_HEAD, v.mv_size - ZDICT_REC_HEAD, fp))
		return txn_fail(t, -ENOMEM);
	if (memcmp(fp, rec + 1, ZDICT_FP_LEN) != 0)
		return corrupt(t, "compression dictionary (checksum)", id,
		               v.mv_size, 0);
	m = calloc(1, sizeof(*m));
	if (m != NULL)
		m->dict = malloc(v.mv_size - ZDICT_REC_HEAD);
	if (m == NULL || m->dict == NULL) {
		free(m);
		return txn_fail(t, -ENOMEM);
	}
	m->id = id;
	memcpy(m->fp, fp, ZDICT_FP_LEN);
	m->len = v.mv_size - ZDICT_REC_HEAD;
	memcpy(m->dict, rec + ZDICT_REC_HEAD, m->len);
	m->dd = ZSTD_createDDict(m->dict, m->len);
	if (m->dd == NULL) {
		free(m->dict);
		free(m);
		return corrupt(t, "compression dictionary", id, v.mv_size, 1);
	}
	pthread_mutex_lock(&c->zlock);
	m->next = c->zdicts;
	c->zdicts = m;
	pthread_mutex_unlock(&c->zlock);
	*m_r = m;
	return 0;
}

/* m's compression side, made on first use. */
static const ZSTD_CDict *zdict_cdict(struct cache *c, struct zdict_mem *m)
{
	ZSTD_CDict *cd;

	pthread_mutex_lock(&c->zlock);
	if (m->cd == NULL)
		m->cd = ZSTD_createCDict(m->dict, m->len, LEVEL_BODY);
	cd = m->cd;
	pthread_mutex_unlock(&c->zlock);
	return cd;
}

struct samples {
	uint8_t *buf; /* owned */
	size_t len, cap;
	size_t *sizes; /* owned */
	size_t n;
	bool raw; /* the old "body" database: values are the bytes */
};

static int zdecode(struct cache_txn *t, const MDB_val *v,
                   const struct zdict_mem *m, const uint8_t **p_r,
                   size_t *len_r, const char **why_r);

/* One more sample.  A value that does not decode is left out here (the
 * read of it says so); training must not fail the write. */
static int sample_add(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                      void *ctx)
{
	struct samples *s = ctx;
	const uint8_t *p = v->mv_data;
	const char *why;
	size_t n = v->mv_size;

	if (s->n == ZDICT_SAMPLES)
		return 1;
	if (k->mv_size != KEY_LEN)
		return 0;
	if (!s->raw) {
		if (n == 0 || p[0] == ZV_ZSTD_DICT)
			return 0;
		if (zdecode(t, v, NULL, &p, &n, &why) != 0)
			return 0;
	}
	if (n == 0 || n > ZDICT_SAMPLE_MAX)
		return 0;
	if (s->len + n > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 1u << 20;
		uint8_t *nb;

		while (cap < s->len + n)
			cap *= 2;
		nb = realloc(s->buf, cap);
		if (nb == NULL)
			return txn_fail(t, -ENOMEM);
		s->buf = nb;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	s->sizes[s->n++] = n;
	return 0;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Train the cache's dictionary from the small bodies it holds, store it
 * and make it the one new bodies use.  0 with *id_r 0 when there are not
 * enough bodies yet, or training failed (tried again when the cache holds
 * twice as many). */
static int zdict_train(struct cache_txn *t, uint32_t *id_r)
{
	struct cache *c = t->cache;
	struct samples s = {NULL, 0, 0, NULL, 0, false};
	ZDICT_fastCover_params_t fc;
	struct timespec t0;
	size_t nz = 0, nb = 0, dlen;
	uint8_t *rec = NULL, k[4];
	uint64_t id = 0;
	int rc;

	*id_r = 0;
	rc = db_count(t, DB_ZBODY, &nz);
	if (rc == 0)
		rc = db_count(t, DB_BODY, &nb);
	if (rc || nz + nb < atomic_load(&c->ztrain_at))
		return rc;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	memset(&fc, 0, sizeof(fc));
	s.sizes = malloc(ZDICT_SAMPLES * sizeof(*s.sizes));
	rec = malloc(ZDICT_REC_HEAD + ZDICT_SIZE);
	if (s.sizes == NULL || rec == NULL) {
		rc = txn_fail(t, -ENOMEM);
		goto out;
	}
	rc = db_scan(t, DB_ZBODY, NULL, 0, 0, sample_add, &s);
	s.raw = true;
	if (rc == 0)
		rc = db_scan(t, DB_BODY, NULL, 0, 0, sample_add, &s);
	if (rc)
		goto out;
	/* Fixed parameters, no search: as good on mail as zstd's default
	 * search (which tries several), in a quarter of its memory (about
	 * 3 MB more at the peak instead of 12). */
	fc.k = 1000;
	fc.d = 8;
	fc.f = 18;
	fc.steps = 0;
	fc.splitPoint = 1.0;
	fc.accel = 1;
	fc.zParams.compressionLevel = LEVEL_BODY;
	dlen = s.n ? ZDICT_trainFromBuffer_fastCover(rec + ZDICT_REC_HEAD,
	                                             ZDICT_SIZE, s.buf, s.sizes,
	                                             (unsigned)s.n, fc)
	           : 0;
	if (s.n == 0 || ZDICT_isError(dlen)) {
		atomic_store(&c->ztrain_at, (nz + nb) * 2);
		log_info("cache %s: no compression dictionary from %zu "
		         "bodies (%s); trying again at %zu",
		         c->dir, s.n,
		         s.n ? ZDICT_getErrorName(dlen) : "none to sample",
		         (nz + nb) * 2);
		goto out;
	}
	rec[0] = ZDICT_REC_V1;
	if (!fingerprint(rec + ZDICT_REC_HEAD, dlen, rec + 1)) {
		rc = txn_fail(t, -ENOMEM);
		goto out;
	}
	rc = counter_next(t, META_NEXT_ZDICT, UINT32_MAX, &id);
	be32_put(k, (uint32_t)id);
	if (rc == 0)
		rc = db_put(t, DB_ZDICT, k, 4, rec, ZDICT_REC_HEAD + dlen,
		            MDB_NOOVERWRITE);
	if (rc == 0)
		rc = meta_write(t, META_ZDICT, id);
	if (rc == 0) {
		*id_r = (uint32_t)id;
		log_notice("cache %s: trained compression dictionary %u "
		           "(%zu bytes) from %zu bodies (%zu bytes) in %.0f ms",
		           c->dir, (unsigned)id, dlen, s.n, s.len,
		           ms_since(&t0));
	}
out:
	free(s.buf);
	free(s.sizes);
	free(rec);
	return rc;
}

/* The dictionary new bodies are compressed with: *m_r NULL if none. */
static int zdict_current(struct cache_txn *t, struct zdict_mem **m_r)
{
	uint64_t id = 0;
	uint32_t fresh = 0;
	int rc = meta_read(t, META_ZDICT, &id);

	*m_r = NULL;
	if (rc == -ENOENT) {
		rc = zdict_train(t, &fresh);
		id = fresh;
	}
	if (rc || id == 0)
		return rc;
	if (id > UINT32_MAX)
		return corrupt(t, "compression dictionary id", id, 0, 0);
	return zdict_find(t, (uint32_t)id, m_r);
}

/* ------------------------------------------------------------------ */
/* Reading */

int zval_len(const MDB_val *v, uint64_t *len_r)
{
	const uint8_t *p = v->mv_data;

	if (v->mv_size < 1)
		return -EIO;
	switch (p[0]) {
	case ZV_RAW: *len_r = v->mv_size - 1; return 0;
	case ZV_ZSTD:
	case ZV_ZSTD_DICT:
		if (v->mv_size < (p[0] == ZV_ZSTD ? ZV_HEAD : ZV_HEAD_DICT) + 1)
			return -EIO;
		*len_r = be32_get(p + 1);
		return *len_r <= ZV_LEN_MAX ? 0 : -EIO;
	default: return -EIO;
	}
}

/* Decode v (with m, its dictionary, for ZV_ZSTD_DICT) without recording
 * anything in t: -EIO with *why_r for a damaged value, -ENOMEM. */
static int zdecode(struct cache_txn *t, const MDB_val *v,
                   const struct zdict_mem *m, const uint8_t **p_r,
                   size_t *len_r, const char **why_r)
{
	static const uint8_t nofp[ZDICT_FP_LEN];
	const uint8_t *p = v->mv_data, *frame, *fp = m ? m->fp : nofp;
	struct zthread *z;
	uint64_t len;
	size_t flen, n;

	(void)t;
	*why_r = "bad header";
	if (zval_len(v, &len) != 0)
		return -EIO;
	if (p[0] == ZV_RAW) {
		*p_r = p + 1;
		*len_r = (size_t)len;
		return 0;
	}
	if ((p[0] == ZV_ZSTD_DICT) != (m != NULL))
		return -EIO;
	frame = p + (p[0] == ZV_ZSTD ? ZV_HEAD : ZV_HEAD_DICT);
	flen = v->mv_size - (size_t)(frame - p);
	z = zthread_get();
	if (z == NULL)
		return -ENOMEM;
	if (z->valid && z->in_n == v->mv_size &&
	    memcmp(z->fp, fp, ZDICT_FP_LEN) == 0 &&
	    memcmp(z->in, p, v->mv_size) == 0) {
		*p_r = z->out;
		*len_r = z->out_n;
		return 0;
	}
	z->valid = false;
	if (z->dctx == NULL)
		z->dctx = ZSTD_createDCtx();
	if (z->dctx == NULL || !buf_fit(&z->out, &z->out_cap, (size_t)len) ||
	    !buf_fit(&z->in, &z->in_cap, v->mv_size))
		return -ENOMEM;
	n = m ? ZSTD_decompress_usingDDict(z->dctx, z->out, (size_t)len, frame,
	                                   flen, m->dd)
	      : ZSTD_decompressDCtx(z->dctx, z->out, (size_t)len, frame, flen);
	if (ZSTD_isError(n) || n != len) {
		*why_r = ZSTD_isError(n) ? ZSTD_getErrorName(n)
		                         : "shorter than its length";
		return -EIO;
	}
	memcpy(z->in, p, v->mv_size);
	z->in_n = v->mv_size;
	memcpy(z->fp, fp, ZDICT_FP_LEN);
	z->out_n = (size_t)len;
	z->valid = true;
	*p_r = z->out;
	*len_r = (size_t)len;
	return 0;
}

int zval_decode(struct cache_txn *t, const MDB_val *v, const char *what,
                uint64_t a, uint64_t b, uint64_t c, const uint8_t **p_r,
                size_t *len_r)
{
	const uint8_t *p = v->mv_data;
	struct zdict_mem *m = NULL;
	const char *why = NULL;
	int rc;

	if (v->mv_size >= ZV_HEAD_DICT + 1 && p[0] == ZV_ZSTD_DICT) {
		rc = zdict_find(t, be32_get(p + 5), &m);
		if (rc)
			return rc;
	}
	rc = zdecode(t, v, m, p_r, len_r, &why);
	if (rc == -EIO) {
		log_err("cache %s: damaged %s (%llu %llu %llu): %s",
		        t->cache->dir, what, (unsigned long long)a,
		        (unsigned long long)b, (unsigned long long)c, why);
		return txn_fail(t, -EIO);
	}
	return rc ? txn_fail(t, rc) : 0;
}

int zval_decode_to(struct cache_txn *t, const MDB_val *v, const char *what,
                   uint64_t a, uint64_t b, uint64_t c, uint8_t *dst, size_t len)
{
	const uint8_t *p = v->mv_data, *frame;
	struct zdict_mem *m = NULL;
	const char *why = "bad header";
	struct zthread *z;
	uint64_t vlen;
	size_t n;
	int rc;

	if (zval_len(v, &vlen) != 0 || vlen != len)
		goto bad;
	if (p[0] == ZV_RAW) {
		memcpy(dst, p + 1, len);
		return 0;
	}
	if (p[0] == ZV_ZSTD_DICT) {
		rc = zdict_find(t, be32_get(p + 5), &m);
		if (rc)
			return rc;
	}
	frame = p + (p[0] == ZV_ZSTD ? ZV_HEAD : ZV_HEAD_DICT);
	z = zthread_get();
	if (z != NULL && z->dctx == NULL)
		z->dctx = ZSTD_createDCtx();
	if (z == NULL || z->dctx == NULL)
		return txn_fail(t, -ENOMEM);
	n = m ? ZSTD_decompress_usingDDict(z->dctx, dst, len, frame,
	                                   v->mv_size - (size_t)(frame - p),
	                                   m->dd)
	      : ZSTD_decompressDCtx(z->dctx, dst, len, frame,
	                            v->mv_size - (size_t)(frame - p));
	if (!ZSTD_isError(n) && n == len)
		return 0;
	why = ZSTD_isError(n) ? ZSTD_getErrorName(n)
	                      : "shorter than its length";
bad:
	log_err("cache %s: damaged %s (%llu %llu %llu): %s", t->cache->dir,
	        what, (unsigned long long)a, (unsigned long long)b,
	        (unsigned long long)c, why);
	return txn_fail(t, -EIO);
}

/* ------------------------------------------------------------------ */
/* Writing */

/* Compress data into z->enc after a head of hlen bytes; the frame's
 * length, or 0 if it would not be shorter than the raw value. */
static size_t compress_into(struct zthread *z, size_t hlen, const void *data,
                            size_t len, int level, const ZSTD_CDict *cd)
{
	size_t bound = ZSTD_compressBound(len), n;

	if (z->cctx == NULL)
		z->cctx = ZSTD_createCCtx();
	if (z->cctx == NULL || !buf_fit(&z->enc, &z->enc_cap, hlen + bound))
		return 0;
	ZSTD_CCtx_reset(z->cctx, ZSTD_reset_session_and_parameters);
	if (cd != NULL)
		ZSTD_CCtx_refCDict(z->cctx, cd);
	else
		ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 0);
	ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 0);
	ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_dictIDFlag, 0);
	n = ZSTD_compress2(z->cctx, z->enc + hlen, bound, data, len);
	if (ZSTD_isError(n) || hlen + n >= 1 + len)
		return 0;
	return n;
}

int zval_put(struct cache_txn *t, int db, const void *k, size_t klen,
             const void *data, size_t len, enum zval_kind kind)
{
	struct zdict_mem *m = NULL;
	const ZSTD_CDict *cd = NULL;
	struct zthread *z;
	size_t hlen = ZV_HEAD, n = 0;
	uint8_t *p;
	int rc;

	if (len > ZV_LEN_MAX)
		return txn_fail(t, -EFBIG);
	if (kind == ZV_BODY && len > 0) {
		rc = zdict_current(t, &m);
		if (rc)
			return rc;
		if (m != NULL) {
			cd = zdict_cdict(t->cache, m);
			hlen = ZV_HEAD_DICT;
		}
	}
	z = len > 0 ? zthread_get() : NULL;
	if (z != NULL && (m == NULL || cd != NULL))
		n = compress_into(z, hlen, data, len,
		                  kind == ZV_BODY ? LEVEL_BODY : LEVEL_PIECE,
		                  cd);
	if (n == 0) {
		rc = db_reserve(t, db, k, klen, 1 + len, 0, &p);
		if (rc == 0) {
			p[0] = ZV_RAW;
			if (len)
				memcpy(p + 1, data, len);
		}
		return rc;
	}
	z->enc[0] = cd ? ZV_ZSTD_DICT : ZV_ZSTD;
	be32_put(z->enc + 1, (uint32_t)len);
	if (cd)
		be32_put(z->enc + 5, m->id);
	return db_put(t, db, k, klen, z->enc, hlen + n, 0);
}
