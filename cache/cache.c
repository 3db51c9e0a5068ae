/* The account cache on LMDB.  See cache.h for the contract and the layout.
 *
 * Values never leave this file as pointers into the map: LMDB's pointers are
 * only valid until the next write in the transaction (a dirty page can be
 * spilled and freed), so every record is decoded into heap memory and every
 * value copied from one key to another goes through a heap copy. */
#include "cache.h"

#include "proto/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum {
	DB_META,
	DB_MBOX,
	DB_MBOX_NAME,
	DB_MSG,
	DB_BODY,
	DB_POP,
	DB_POP_UIDL,
	DB_PENDING,
	DB_BIGBODY,
	DB_CHUNK,
	DB_CHUNK_OPEN,
	DB_COUNT,
};

static const char *const db_names[DB_COUNT] = {
        [DB_META] = "meta",
        [DB_MBOX] = "mbox",
        [DB_MBOX_NAME] = "mbox_name",
        [DB_MSG] = "msg",
        [DB_BODY] = "body",
        [DB_POP] = "pop",
        [DB_POP_UIDL] = "pop_uidl",
        [DB_PENDING] = "pending",
        [DB_BIGBODY] = "body_big",
        [DB_CHUNK] = "chunk",
        [DB_CHUNK_OPEN] = "chunk_open",
};

/* Record format versions (the leading byte of every record). */
#define MBOX_REC_V1    1
#define MSG_REC_V1     1
#define POP_REC_V1     1
#define PENDING_REC_V1 1 /* without the name */
#define PENDING_REC_V2 2

#define META_SCHEMA       "schema"
#define META_NEXT_MAILBOX "cache.next_mailbox"
#define META_NEXT_POP     "cache.next_pop"
#define META_NEXT_PENDING "cache.next_pending"
#define META_NAME_MAX     64
/* Names this module builds for other modules (see cache.h). */
#define META_MTIME        "mtime."
#define META_POP_DUP      "popdup."
#define META_POP_CMP      "popcmp."
#define META_POP_SIZE     "popsize."
#define META_KEY_SIZE     32

#define KEY_LEN       12 /* (mailbox id, UIDVALIDITY, UID) */
/* A mailbox name longer than a key is filed under at most NAME_KEY_MAX
 * bytes: its first bytes, a NUL and the SHA-256 of the whole name. */
#define NAME_KEY_MAX  511
#define NAME_HASH_LEN 32
#define GENS_MAX      65536
#define GROW_WAIT_S   10

struct cache {
	MDB_env *env; /* owned */
	MDB_dbi dbi[DB_COUNT];
	char *dir;   /* owned; for log lines */
	pid_t pid;   /* the process that opened it */
	int lock_fd; /* owned: dir, flock()ed while open; -1 if not */
	dev_t dev;   /* identity of dir, for the open-once check */
	ino_t ino;
	size_t map_max;
	/* Live transactions of this process.  LMDB lets the map size change
	 * only when there are none; a read transaction may end on another
	 * thread than it began (MDB_NOTLS), so this is a counter, not a
	 * lock held by the transaction. */
	pthread_mutex_t active_lock;
	pthread_cond_t active_zero;
	unsigned active;
	struct cache *next_open; /* registry of open caches */
	/* Map pages touched since the last trim (see trim_map), counted in
	 * body reads and in bytes committed. */
	atomic_uint reads_since_trim;
	atomic_size_t bytes_since_trim;
	_Atomic uintptr_t seen_lo, seen_hi; /* see note_span() */
};

struct cache_txn {
	struct cache *cache; /* borrowed */
	MDB_txn *txn;        /* owned */
	bool write;
	bool map_full; /* some step hit MDB_MAP_FULL */
	int err;       /* sticky: the first failure */
	size_t bytes;  /* bytes put, a hint for growing the map */
};

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache *open_list; /* protected by open_lock */

/* ------------------------------------------------------------------ */
/* Errors */

/* The one place LMDB codes become errnos. */
static int mdb_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS: return 0;
	case MDB_NOTFOUND: return -ENOENT;
	case MDB_KEYEXIST: return -EEXIST;
	case MDB_MAP_FULL: return -ENOSPC;
	case MDB_READERS_FULL: return -EAGAIN;
	case MDB_TLS_FULL: return -EAGAIN;
	case MDB_MAP_RESIZED: return -EAGAIN;
	case MDB_TXN_FULL: return -E2BIG;
	case MDB_CURSOR_FULL: return -E2BIG;
	case MDB_PAGE_FULL: return -E2BIG;
	case MDB_BAD_VALSIZE: return -EINVAL;
	case MDB_BAD_RSLOT: return -EINVAL;
	case MDB_BAD_TXN: return -EINVAL;
	case MDB_BAD_DBI: return -EINVAL;
	case MDB_INCOMPATIBLE: return -EIO;
	case MDB_DBS_FULL: return -EIO;
	case MDB_PAGE_NOTFOUND: return -EIO;
	case MDB_CORRUPTED: return -EIO;
	case MDB_PANIC: return -EIO;
	case MDB_VERSION_MISMATCH: return -EIO;
	case MDB_INVALID: return -EIO;
	default:
		/* LMDB passes system errors through as positive errnos. */
		if (rc > 0)
			return -rc;
		return -EIO;
	}
}

/* Where cache_open's failure goes: into msg (one line for the user, the
 * first failure only) when the caller asked for it, else the log. */
struct report {
	char *msg;
	size_t size;
};

#define RECOVER                                                                \
	"; move it away to start a fresh cache, or restore it from a backup"

__attribute__((format(printf, 3, 4))) static int
report(struct report *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (r->msg == NULL || r->size == 0)
		log_vmsg(LOG_ERR, fmt, ap);
	else if (r->msg[0] == '\0')
		vsnprintf(r->msg, r->size, fmt, ap);
	va_end(ap);
	return err;
}

/* An LMDB failure at open: a file LMDB does not recognise is damaged. */
static int report_mdb(struct report *r, const char *dir, int rc)
{
	switch (rc) {
	case MDB_INVALID:
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
		return report(r, mdb_errno(rc),
		              "cache %s/data.mdb is damaged (%s)%s", dir,
		              mdb_strerror(rc), RECOVER);
	default:
		return report(r, mdb_errno(rc),
		              "cannot open the cache in %s: %s", dir,
		              mdb_strerror(rc));
	}
}

static int txn_fail(struct cache_txn *t, int err)
{
	if (t->err == 0)
		t->err = err;
	return err;
}

static int txn_mdb_fail(struct cache_txn *t, int rc)
{
	if (rc == MDB_MAP_FULL)
		t->map_full = true;
	if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_PANIC)
		log_err("cache %s: %s", t->cache->dir, mdb_strerror(rc));
	return txn_fail(t, mdb_errno(rc));
}

static int txn_check(struct cache_txn *t, bool write)
{
	if (t == NULL)
		return -EINVAL;
	if (t->err)
		return t->err;
	if (write && !t->write)
		return txn_fail(t, -EROFS);
	return 0;
}

static int corrupt(struct cache_txn *t, const char *what, uint64_t a,
                   uint64_t b, uint64_t c)
{
	log_err("cache %s: undecodable %s record (%llu %llu %llu)",
	        t->cache->dir, what, (unsigned long long)a,
	        (unsigned long long)b, (unsigned long long)c);
	return txn_fail(t, -EIO);
}

/* ------------------------------------------------------------------ */
/* Big-endian integers, record writer and reader */

static void be32_put(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static uint32_t be32_get(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static void be64_put(uint8_t *p, uint64_t v)
{
	be32_put(p, v >> 32);
	be32_put(p + 4, (uint32_t)v);
}

static uint64_t be64_get(const uint8_t *p)
{
	return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

static void msgkey_make(uint8_t out[KEY_LEN], struct cache_key k)
{
	be32_put(out, k.mailbox_id);
	be32_put(out + 4, k.uidvalidity);
	be32_put(out + 8, k.uid);
}

static struct cache_key msgkey_parse(const uint8_t *p)
{
	struct cache_key k = {be32_get(p), be32_get(p + 4), be32_get(p + 8)};

	return k;
}

/* With p == NULL the writer only counts, so one function both sizes and
 * fills a record. */
struct wr {
	uint8_t *p;
	size_t n;
};

static void wr_bytes(struct wr *w, const void *d, size_t n)
{
	if (w->p && n)
		memcpy(w->p + w->n, d, n);
	w->n += n;
}

static void wr_u8(struct wr *w, uint8_t v)
{
	wr_bytes(w, &v, 1);
}

static void wr_u16(struct wr *w, uint16_t v)
{
	uint8_t b[2] = {v >> 8, (uint8_t)v};

	wr_bytes(w, b, 2);
}

static void wr_u32(struct wr *w, uint32_t v)
{
	uint8_t b[4];

	be32_put(b, v);
	wr_bytes(w, b, 4);
}

static void wr_u64(struct wr *w, uint64_t v)
{
	uint8_t b[8];

	be64_put(b, v);
	wr_bytes(w, b, 8);
}

/* Callers check lengths with len_ok() first. */
static void wr_blob(struct wr *w, const void *d, size_t n)
{
	wr_u32(w, (uint32_t)n);
	wr_bytes(w, d, n);
}

static void wr_str(struct wr *w, const char *s)
{
	wr_blob(w, s, s ? strlen(s) : 0);
}

static bool len_ok(size_t n)
{
	return n <= UINT32_MAX;
}

static bool str_ok(const char *s)
{
	return s == NULL || len_ok(strlen(s));
}

struct span {
	const uint8_t *p;
	size_t n;
};

struct rd {
	const uint8_t *p;
	size_t len;
	size_t off;
	bool bad;
};

static void rd_init(struct rd *r, const MDB_val *v)
{
	r->p = v->mv_data;
	r->len = v->mv_size;
	r->off = 0;
	r->bad = false;
}

static const uint8_t *rd_take(struct rd *r, size_t n)
{
	const uint8_t *p;

	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	p = r->p + r->off;
	r->off += n;
	return p;
}

static uint8_t rd_u8(struct rd *r)
{
	const uint8_t *p = rd_take(r, 1);

	return p ? p[0] : 0;
}

static uint16_t rd_u16(struct rd *r)
{
	const uint8_t *p = rd_take(r, 2);

	return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}

static uint32_t rd_u32(struct rd *r)
{
	const uint8_t *p = rd_take(r, 4);

	return p ? be32_get(p) : 0;
}

static uint64_t rd_u64(struct rd *r)
{
	const uint8_t *p = rd_take(r, 8);

	return p ? be64_get(p) : 0;
}

static struct span rd_blob(struct rd *r)
{
	struct span s = {NULL, 0};
	uint32_t n = rd_u32(r);

	s.p = rd_take(r, n);
	if (s.p)
		s.n = n;
	return s;
}

/* The whole value was consumed, nothing more, nothing less. */
static bool rd_ok(const struct rd *r)
{
	return !r->bad && r->off == r->len;
}

/* Copy s into *cur as a C string and advance. */
static char *out_str(uint8_t **cur, struct span s)
{
	char *p = (char *)*cur;

	if (s.n)
		memcpy(p, s.p, s.n);
	p[s.n] = '\0';
	*cur += s.n + 1;
	return p;
}

/* A reusable decode buffer for the foreach loops. */
struct scratch {
	void *p;
	size_t cap;
};

static void *scratch_get(struct scratch *s, size_t n)
{
	void *p;

	if (n <= s->cap)
		return s->p;
	p = realloc(s->p, n);
	if (p == NULL)
		return NULL;
	s->p = p;
	s->cap = n;
	return p;
}

/* ------------------------------------------------------------------ */
/* Database primitives.  -ENOENT from db_get is not recorded: the callers
 * decide whether a miss is a failure. */

static int db_get(struct cache_txn *t, int db, const void *k, size_t klen,
                  MDB_val *v)
{
	MDB_val key = {klen, (void *)k};
	int rc = mdb_get(t->txn, t->cache->dbi[db], &key, v);

	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc)
		return txn_mdb_fail(t, rc);
	return 0;
}

/* Reserve vlen bytes for key and return where to write them. */
static int db_reserve(struct cache_txn *t, int db, const void *k, size_t klen,
                      size_t vlen, unsigned flags, uint8_t **p_r)
{
	MDB_val key = {klen, (void *)k};
	MDB_val val = {vlen, NULL};
	int rc;

	*p_r = NULL;
	/* Counted before the put: after MDB_MAP_FULL it says how much room
	 * the retry needs. */
	t->bytes += klen + vlen;
	rc = mdb_put(t->txn, t->cache->dbi[db], &key, &val,
	             flags | MDB_RESERVE);
	if (rc == MDB_KEYEXIST)
		return txn_fail(t, -EEXIST);
	if (rc)
		return txn_mdb_fail(t, rc);
	*p_r = val.mv_data;
	return 0;
}

static int db_put(struct cache_txn *t, int db, const void *k, size_t klen,
                  const void *v, size_t vlen, unsigned flags)
{
	uint8_t *p = NULL;
	int rc = db_reserve(t, db, k, klen, vlen, flags, &p);

	if (rc == 0 && vlen)
		memcpy(p, v, vlen);
	return rc;
}

/* Deleting what is not there succeeds. */
static int db_del(struct cache_txn *t, int db, const void *k, size_t klen)
{
	MDB_val key = {klen, (void *)k};
	int rc = mdb_del(t->txn, t->cache->dbi[db], &key, NULL);

	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return txn_mdb_fail(t, rc);
	return 0;
}

/* Call fn for every entry whose key starts with prefix[0..plen), from the
 * first key >= start[0..slen) on (start begins with the prefix).  fn
 * returns 0 to go on, > 0 to stop, < 0 to fail; its failures are returned,
 * not recorded.  fn must not write to db. */
typedef int (*scan_fn)(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                       void *ctx);

static int db_scan(struct cache_txn *t, int db, const void *start, size_t slen,
                   size_t plen, scan_fn fn, void *ctx)
{
	MDB_cursor *cur;
	MDB_val k = {slen, (void *)start}, v;
	int rc, ret = 0;
	MDB_cursor_op op = slen ? MDB_SET_RANGE : MDB_FIRST;

	rc = mdb_cursor_open(t->txn, t->cache->dbi[db], &cur);
	if (rc)
		return txn_mdb_fail(t, rc);
	for (;;) {
		rc = mdb_cursor_get(cur, &k, &v, op);
		op = MDB_NEXT;
		if (rc == MDB_NOTFOUND)
			break;
		if (rc) {
			ret = txn_mdb_fail(t, rc);
			break;
		}
		if (plen &&
		    (k.mv_size < plen || memcmp(k.mv_data, start, plen) != 0))
			break;
		ret = fn(t, &k, &v, ctx);
		if (ret) {
			if (ret > 0)
				ret = 0;
			break;
		}
	}
	mdb_cursor_close(cur);
	return ret;
}

/* Delete every entry whose key starts with prefix; count them. */
static int db_del_prefix(struct cache_txn *t, int db, const void *prefix,
                         size_t plen, size_t *count_r)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	int rc;

	rc = mdb_cursor_open(t->txn, t->cache->dbi[db], &cur);
	if (rc)
		return txn_mdb_fail(t, rc);
	for (;;) {
		/* Seek afresh after each delete instead of trusting the
		 * cursor's position after mdb_cursor_del. */
		k.mv_size = plen;
		k.mv_data = (void *)prefix;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc == MDB_NOTFOUND)
			break;
		if (rc)
			goto fail;
		if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
			break;
		rc = mdb_cursor_del(cur, 0);
		if (rc)
			goto fail;
		n++;
	}
	mdb_cursor_close(cur);
	if (count_r)
		*count_r = n;
	return 0;
fail:
	mdb_cursor_close(cur);
	return txn_mdb_fail(t, rc);
}

/* Bodies are deleted with their messages and mailboxes (see Bodies). */
static int body_del(struct cache_txn *t, const uint8_t k[KEY_LEN]);
static int body_del_prefix(struct cache_txn *t, const uint8_t *prefix,
                           size_t plen);

static void stale_clean(struct cache *c);

/* ------------------------------------------------------------------ */
/* Meta and counters */

static int meta_read(struct cache_txn *t, const char *name, uint64_t *v_r)
{
	MDB_val v;
	int rc = db_get(t, DB_META, name, strlen(name), &v);

	if (rc)
		return rc;
	if (v.mv_size != 8)
		return corrupt(t, "meta", 0, 0, 0);
	*v_r = be64_get(v.mv_data);
	return 0;
}

static int meta_write(struct cache_txn *t, const char *name, uint64_t val)
{
	uint8_t b[8];

	be64_put(b, val);
	return db_put(t, DB_META, name, strlen(name), b, 8, 0);
}

/* The next value of a persistent counter that starts at 1 and never goes
 * past max. */
static int counter_next(struct cache_txn *t, const char *name, uint64_t max,
                        uint64_t *v_r)
{
	uint64_t v;
	int rc = meta_read(t, name, &v);

	if (rc == -ENOENT)
		v = 1;
	else if (rc)
		return rc;
	if (v == 0 || v > max)
		return txn_fail(t, -EOVERFLOW);
	rc = meta_write(t, name, v + 1);
	if (rc)
		return rc;
	*v_r = v;
	return 0;
}

static bool meta_name_ok(const char *name)
{
	size_t i, n;

	if (name == NULL)
		return false;
	n = strlen(name);
	if (n == 0 || n > META_NAME_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (name[i] < 0x21 || name[i] > 0x7e)
			return false;
	return strncmp(name, "cache.", 6) != 0 && strcmp(name, META_SCHEMA) &&
	       strncmp(name, META_MTIME, strlen(META_MTIME)) != 0 &&
	       strncmp(name, META_POP_DUP, strlen(META_POP_DUP)) != 0 &&
	       strncmp(name, META_POP_CMP, strlen(META_POP_CMP)) != 0 &&
	       strncmp(name, META_POP_SIZE, strlen(META_POP_SIZE)) != 0;
}

int cache_meta_get(struct cache_txn *txn, const char *name, uint64_t *val_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (!meta_name_ok(name) || val_r == NULL)
		return txn_fail(txn, -EINVAL);
	return meta_read(txn, name, val_r);
}

int cache_meta_set(struct cache_txn *txn, const char *name, uint64_t val)
{
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!meta_name_ok(name))
		return txn_fail(txn, -EINVAL);
	return meta_write(txn, name, val);
}

/* The meta name of mailbox id's directory mtime: "mtime." and the id in
 * decimal. */
static void mtime_key(char name[META_KEY_SIZE], uint32_t id)
{
	snprintf(name, META_KEY_SIZE, META_MTIME "%u", id);
}

int cache_mailbox_mtime_get(struct cache_txn *txn, uint32_t id,
                            int64_t *mtime_r)
{
	char name[META_KEY_SIZE];
	uint64_t v;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (mtime_r == NULL)
		return txn_fail(txn, -EINVAL);
	mtime_key(name, id);
	rc = meta_read(txn, name, &v);
	if (rc == 0)
		*mtime_r = (int64_t)v;
	return rc;
}

int cache_mailbox_mtime_set(struct cache_txn *txn, uint32_t id, int64_t mtime)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	mtime_key(name, id);
	return meta_write(txn, name, (uint64_t)mtime);
}

/* The meta name of a POP3 mark of s: the mark's prefix and the first 8
 * bytes of the SHA-256 of s in lower-case hex. */
static int pop_mark_key(char name[META_KEY_SIZE], enum cache_pop_mark mark,
                        const char *s)
{
	static const char *const prefix[] = {
	        [CACHE_POP_DUP] = META_POP_DUP,
	        [CACHE_POP_CMP] = META_POP_CMP,
	        [CACHE_POP_SIZE] = META_POP_SIZE,
	};
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	if ((unsigned)mark >= sizeof(prefix) / sizeof(*prefix) || s == NULL)
		return -EINVAL;
	if (EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) != 1)
		return -ENOMEM;
	snprintf(name, META_KEY_SIZE, "%s%02x%02x%02x%02x%02x%02x%02x%02x",
	         prefix[mark], md[0], md[1], md[2], md[3], md[4], md[5], md[6],
	         md[7]);
	return 0;
}

int cache_pop_mark_get(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t *val_r)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (val_r == NULL)
		return txn_fail(txn, -EINVAL);
	rc = pop_mark_key(name, mark, s);
	if (rc)
		return txn_fail(txn, rc);
	return meta_read(txn, name, val_r);
}

int cache_pop_mark_set(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t val)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	rc = pop_mark_key(name, mark, s);
	if (rc)
		return txn_fail(txn, rc);
	return meta_write(txn, name, val);
}

/* ------------------------------------------------------------------ */
/* Environment */

#if SIZE_MAX > UINT32_MAX
#define MAP_DEFAULT ((size_t)64 << 30)
#define MAP_MAX     ((size_t)16 << 40)
#else
#define MAP_DEFAULT ((size_t)1 << 30)
#define MAP_MAX     ((size_t)3 << 29)
#endif

static int active_init(struct cache *c)
{
	pthread_condattr_t ca;
	int rc;

	rc = pthread_mutex_init(&c->active_lock, NULL);
	if (rc)
		return -rc;
	rc = pthread_condattr_init(&ca);
	if (rc == 0) {
		rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		if (rc == 0)
			rc = pthread_cond_init(&c->active_zero, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (rc) {
		pthread_mutex_destroy(&c->active_lock);
		return -rc;
	}
	return 0;
}

/* Create dir and missing parents, 0700 each (exactly, whatever the
 * umask).  Existing directories are left as they are. */
static int mkdir_p(const char *dir)
{
	char *p, *s = strdup(dir);
	struct stat st;
	int rc = 0;

	if (s == NULL)
		return -ENOMEM;
	for (p = s + 1;; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(s, 0700) == 0) {
			if (chmod(s, 0700) != 0) {
				rc = -errno;
				break;
			}
		} else if (errno != EEXIST) {
			rc = -errno;
			break;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	if (rc == 0 && stat(s, &st) != 0)
		rc = -errno;
	else if (rc == 0 && !S_ISDIR(st.st_mode))
		rc = -ENOTDIR;
	free(s);
	return rc;
}

static int chmod_file(const char *dir, const char *file)
{
	char path[PATH_MAX];

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >=
	    sizeof(path))
		return -ENAMETOOLONG;
	if (chmod(path, 0600) != 0)
		return -errno;
	return 0;
}

/* Open the databases and check the schema, in one write transaction. */
static int cache_init_dbs(struct cache *c, struct report *r)
{
	struct cache_txn t = {.cache = c, .write = true};
	uint64_t schema, from;
	int i, rc;

	rc = mdb_txn_begin(c->env, NULL, 0, &t.txn);
	if (rc)
		return report_mdb(r, c->dir, rc);
	for (i = 0; i < DB_COUNT; i++) {
		rc = mdb_dbi_open(t.txn, db_names[i], MDB_CREATE, &c->dbi[i]);
		if (rc) {
			mdb_txn_abort(t.txn);
			return report_mdb(r, c->dir, rc);
		}
	}
	rc = meta_read(&t, META_SCHEMA, &schema);
	if (rc == -ENOENT) {
		schema = CACHE_SCHEMA_VERSION;
		rc = meta_write(&t, META_SCHEMA, schema);
	}
	if (rc == 0 && schema > CACHE_SCHEMA_VERSION) {
		rc = report(
		        r, -EPROTONOSUPPORT,
		        "cache %s was written by a newer mailfs (cache schema %llu, this mailfs knows up to %d); refusing to use it",
		        c->dir, (unsigned long long)schema,
		        CACHE_SCHEMA_VERSION);
	} else if (rc == 0 && schema == 0) {
		rc = report(r, -EIO,
		            "cache %s/data.mdb is damaged (schema version 0)%s",
		            c->dir, RECOVER);
	} else if (rc) {
		rc = report(r, rc, "cache %s: %s", c->dir, strerror(-rc));
	}
	/* Upgrades from older schemas, in this transaction.  1 -> 2: bodies
	 * longer than CACHE_BODY_CHUNK are stored in pieces from now on, in
	 * databases that did not exist (created above, empty); every body
	 * of schema 1 stays where it is and is read as it was. */
	from = schema;
	if (rc == 0 && schema < CACHE_SCHEMA_VERSION) {
		schema = CACHE_SCHEMA_VERSION;
		rc = meta_write(&t, META_SCHEMA, schema);
	}
	if (rc) {
		mdb_txn_abort(t.txn);
		return rc;
	}
	rc = mdb_txn_commit(t.txn);
	if (rc)
		return report_mdb(r, c->dir, rc);
	if (from != schema)
		log_notice(
		        "cache %s: upgraded in place from schema %llu to %llu "
		        "(bodies longer than %u KiB are now stored in "
		        "pieces; every cached message is kept as it is)",
		        c->dir, (unsigned long long)from,
		        (unsigned long long)schema, CACHE_BODY_CHUNK / 1024);
	return 0;
}

/* ------------------------------------------------------------------ */
/* A data file shorter than its pages (see check_size) */

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local sigjmp_buf *probe_jmp;

static void probe_sigbus(int sig)
{
	if (probe_jmp != NULL)
		siglongjmp(*probe_jmp, 1);
	/* Not a probe: the access faults again, with the default action. */
	signal(sig, SIG_DFL);
}

/* Mark in bits the pages of [first, first + n) that one free-list record
 * (an LMDB ID list: count, then page numbers) names; returns how many. */
static size_t mark_free(const MDB_val *v, size_t first, size_t n, uint8_t *bits)
{
	const char *p = v->mv_data;
	size_t count, i, pg, marked = 0;

	if (v->mv_size < sizeof(size_t))
		return 0;
	memcpy(&count, p, sizeof(count));
	if (count > v->mv_size / sizeof(size_t) - 1)
		count = v->mv_size / sizeof(size_t) - 1;
	for (i = 1; i <= count; i++) {
		memcpy(&pg, p + i * sizeof(size_t), sizeof(pg));
		if (pg < first || pg - first >= n)
			continue;
		pg -= first;
		if (!(bits[pg / 8] & (1u << (pg % 8)))) {
			bits[pg / 8] |= (uint8_t)(1u << (pg % 8));
			marked++;
		}
	}
	return marked;
}

/* 1 if every page from first to last is on LMDB's free list (so nothing
 * ever reads it before writing it), 0 if not, or a negative errno.  The
 * free list itself may lie in the missing part: reading it there raises
 * SIGBUS, which is caught (only on this thread, only here) and means 0.
 * Leaving LMDB by siglongjmp is safe here: a read transaction holds no
 * lock, only its reader slot, which the abort releases. */
static int pages_free(MDB_env *env, size_t first, size_t last)
{
	size_t n = last - first + 1;
	uint8_t *bits = calloc(n / 8 + 1, 1);
	MDB_txn *volatile txn = NULL;
	MDB_cursor *volatile cur = NULL;
	volatile size_t marked = 0;
	volatile int rc = 0;
	struct sigaction sa, old;
	sigjmp_buf jb;

	if (bits == NULL)
		return -ENOMEM;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = probe_sigbus;
	sigemptyset(&sa.sa_mask);
	pthread_mutex_lock(&probe_lock);
	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(jb, 1) == 0) {
		MDB_txn *t = NULL;
		MDB_cursor *c = NULL;
		MDB_val k, v;

		probe_jmp = &jb;
		rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
		txn = t;
		if (rc == 0)
			rc = mdb_cursor_open(t, 0, &c); /* 0: the free list */
		cur = c;
		while (rc == 0 &&
		       (rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0)
			marked += mark_free(&v, first, n, bits);
		rc = rc == MDB_NOTFOUND ? 0 : mdb_errno(rc);
	} else {
		rc = 0;
		marked = 0;
	}
	probe_jmp = NULL;
	sigaction(SIGBUS, &old, NULL);
	pthread_mutex_unlock(&probe_lock);
	if (cur != NULL)
		mdb_cursor_close(cur);
	if (txn != NULL)
		mdb_txn_abort(txn);
	free(bits);
	return rc < 0 ? rc : marked == n;
}

/* LMDB maps the data file and reads any page the database points to: a
 * page past the end of a truncated file kills the process with SIGBUS.
 * Every page below the last page number is either in use or on the free
 * list, and pages in use have been written.  So the file is whole if it
 * reaches the last page, or if the pages it lacks are all free (LMDB does
 * not write pages it allocated and freed in one transaction). */
static int check_size(struct cache *c, struct report *r)
{
	MDB_envinfo info;
	MDB_stat ms;
	struct stat st;
	size_t need, have;
	int fd, rc;

	if (mdb_env_get_fd(c->env, &fd) != 0 || fstat(fd, &st) != 0 ||
	    mdb_env_info(c->env, &info) != 0 || mdb_env_stat(c->env, &ms) != 0)
		return report(r, -EIO, "cache %s: cannot read its size",
		              c->dir);
	need = ((size_t)info.me_last_pgno + 1) * ms.ms_psize;
	if ((uint64_t)st.st_size >= need)
		return 0;
	have = (size_t)st.st_size / ms.ms_psize;
	rc = pages_free(c->env, have, info.me_last_pgno);
	if (rc == 1)
		return 0;
	if (rc < 0)
		return report(r, rc,
		              "cache %s: cannot check its free pages: %s",
		              c->dir, strerror(-rc));
	return report(
	        r, -EUCLEAN,
	        "cache %s/data.mdb is damaged (truncated: %lld of %zu bytes)%s",
	        c->dir, (long long)st.st_size, need, RECOVER);
}

/* An empty data file would be made a fresh cache by LMDB: refuse it. */
static int check_empty(const char *dir, struct report *r)
{
	char path[PATH_MAX];
	struct stat st;

	if ((size_t)snprintf(path, sizeof(path), "%s/data.mdb", dir) >=
	    sizeof(path))
		return report(r, -ENAMETOOLONG, "cache %s: %s", dir,
		              strerror(ENAMETOOLONG));
	if (stat(path, &st) != 0)
		return 0; /* a new cache, or LMDB says why */
	if (S_ISREG(st.st_mode) && st.st_size == 0)
		return report(r, -EUCLEAN,
		              "cache %s is damaged (truncated: 0 bytes)%s",
		              path, RECOVER);
	return 0;
}

/* One mailfs per cache: two would both resume the same uploads and both
 * number POP3 downloads.  The lock lives as long as the descriptor, so a
 * killed mailfs never leaves it behind. */
static int lock_dir(struct cache *c, struct report *r)
{
	c->lock_fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->lock_fd < 0)
		return report(r, -errno, "cache directory %s: %s", c->dir,
		              strerror(errno));
	if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno == EWOULDBLOCK)
		return report(
		        r, -EBUSY,
		        "cache %s is in use by another mailfs (one mount per cache: unmount it, or give this mount its own cache_dir)",
		        c->dir);
	return report(r, -errno, "cache directory %s: cannot lock it: %s",
	              c->dir, strerror(errno));
}

static int open_cache(const char *dir, const struct cache_options *opt,
                      struct cache **cache_r, struct report *r)
{
	struct cache *c, *o;
	struct stat st;
	size_t map;
	int fd, rc, dead;
	bool listed = false;

	if (dir == NULL || *dir == '\0' || cache_r == NULL)
		return report(r, -EINVAL, "cache: no directory given");
	*cache_r = NULL;
	rc = mkdir_p(dir);
	if (rc)
		return report(r, rc, "cannot create the cache directory %s: %s",
		              dir, strerror(-rc));
	if (stat(dir, &st) != 0)
		return report(r, -errno, "cache directory %s: %s", dir,
		              strerror(errno));
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return report(r, -ENOMEM, "cache %s: %s", dir,
		              strerror(ENOMEM));
	c->lock_fd = -1;
	c->dir = strdup(dir);
	if (c->dir == NULL) {
		free(c);
		return report(r, -ENOMEM, "cache %s: %s", dir,
		              strerror(ENOMEM));
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->pid = getpid();
	c->map_max = MAP_MAX;
	rc = active_init(c);
	if (rc) {
		free(c->dir);
		free(c);
		return report(r, rc, "cache %s: %s", dir, strerror(-rc));
	}

	/* LMDB must not open the same environment twice in one process:
	 * closing the second would drop the first one's fcntl locks. */
	pthread_mutex_lock(&open_lock);
	for (o = open_list; o; o = o->next_open)
		if (o->dev == c->dev && o->ino == c->ino)
			break;
	if (o == NULL) {
		c->next_open = open_list;
		open_list = c;
		listed = true;
	}
	pthread_mutex_unlock(&open_lock);
	if (!listed) {
		rc = report(r, -EBUSY,
		            "cache %s is already open in this process", dir);
		goto fail;
	}
	rc = lock_dir(c, r);
	if (rc == 0)
		rc = check_empty(dir, r);
	if (rc)
		goto fail;

	rc = mdb_env_create(&c->env);
	if (rc) {
		c->env = NULL;
		rc = report_mdb(r, dir, rc);
		goto fail;
	}
	map = opt && opt->map_size ? opt->map_size : MAP_DEFAULT;
	rc = mdb_env_set_mapsize(c->env, map);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(c->env, DB_COUNT + 4);
	if (rc == 0)
		rc = mdb_env_open(c->env, dir, MDB_NOTLS, 0600);
	if (rc) {
		rc = report_mdb(r, dir, rc);
		goto fail;
	}
	/* Before anything reads a page through the map. */
	rc = check_size(c, r);
	if (rc)
		goto fail;
	/* Exact modes whatever the umask, and whatever an older run left. */
	rc = chmod_file(dir, "data.mdb");
	if (rc == 0)
		rc = chmod_file(dir, "lock.mdb");
	if (rc) {
		rc = report(r, rc, "cache %s: cannot set file modes: %s", dir,
		            strerror(-rc));
		goto fail;
	}
	/* LMDB's other descriptors are close-on-exec, the data file's is
	 * not; passcmd children must not inherit it. */
	if (mdb_env_get_fd(c->env, &fd) == 0 && fd >= 0) {
		int fl = fcntl(fd, F_GETFD);

		if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
			rc = report(r, -errno, "cache %s: %s", dir,
			            strerror(errno));
			goto fail;
		}
	}
	/* Reader slots left behind by a crashed process. */
	mdb_reader_check(c->env, &dead);
	if (dead > 0)
		log_info("cache %s: cleared %d stale reader slot(s)", dir,
		         dead);
	rc = cache_init_dbs(c, r);
	if (rc)
		goto fail;
	stale_clean(c);
	*cache_r = c;
	return 0;

fail:
	cache_close(&c);
	return rc;
}

int cache_open_ex(const char *dir, const struct cache_options *opt,
                  struct cache **cache_r)
{
	struct report r = {NULL, 0};

	return open_cache(dir, opt, cache_r, &r);
}

int cache_open(const char *dir, struct cache **cache_r)
{
	return cache_open_ex(dir, NULL, cache_r);
}

int cache_open_msg(const char *dir, struct cache **cache_r, char *msg,
                   size_t msg_size)
{
	struct report r = {msg, msg_size};

	if (msg != NULL && msg_size > 0)
		msg[0] = '\0';
	return open_cache(dir, NULL, cache_r, &r);
}

void cache_close(struct cache **cache)
{
	struct cache *c, **pp;

	if (cache == NULL || *cache == NULL)
		return;
	c = *cache;
	*cache = NULL;
	if (c->env)
		mdb_env_close(c->env);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	pthread_mutex_lock(&open_lock);
	for (pp = &open_list; *pp; pp = &(*pp)->next_open) {
		if (*pp == c) {
			*pp = c->next_open;
			break;
		}
	}
	pthread_mutex_unlock(&open_lock);
	pthread_cond_destroy(&c->active_zero);
	pthread_mutex_destroy(&c->active_lock);
	free(c->dir);
	free(c);
}

size_t cache_map_size(struct cache *cache)
{
	MDB_envinfo info;

	if (cache == NULL || mdb_env_info(cache->env, &info) != 0)
		return 0;
	return info.me_mapsize;
}

static void active_enter(struct cache *c)
{
	pthread_mutex_lock(&c->active_lock);
	c->active++;
	pthread_mutex_unlock(&c->active_lock);
}

static void active_leave(struct cache *c)
{
	pthread_mutex_lock(&c->active_lock);
	if (--c->active == 0)
		pthread_cond_broadcast(&c->active_zero);
	pthread_mutex_unlock(&c->active_lock);
}

/* Set the map size (0: adopt the size another process set) once no
 * transaction of this process is live.  New transactions are not held
 * back meanwhile, so a thread that holds one while calling this cannot
 * deadlock: the wait is bounded and then fails with -EBUSY. */
static int map_resize(struct cache *c, size_t size)
{
	struct timespec ts;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += GROW_WAIT_S;
	pthread_mutex_lock(&c->active_lock);
	while (c->active > 0 && rc == 0)
		rc = pthread_cond_timedwait(&c->active_zero, &c->active_lock,
		                            &ts);
	if (c->active > 0)
		rc = -EBUSY;
	else if (size && size <= cache_map_size(c))
		rc = 0; /* a concurrent grower got there first */
	else
		atomic_store(&c->seen_lo, 0);
	atomic_store(&c->seen_hi, 0);
	rc = mdb_errno(mdb_env_set_mapsize(c->env, size));
	pthread_mutex_unlock(&c->active_lock);
	return rc;
}

/* Grow the map so that at least need more bytes fit: double it, or more
 * if need asks for it, up to map_max. */
static int cache_grow(struct cache *c, size_t need)
{
	size_t cur = cache_map_size(c);
	size_t room = cur < c->map_max ? c->map_max - cur : 0;
	size_t add = cur;
	int rc;

	if (need <= room / 2 && add < 2 * need)
		add = 2 * need;
	if (add > room)
		add = room;
	if (add == 0) {
		log_err("cache %s: map full at its maximum size (%zu MiB)",
		        c->dir, cur >> 20);
		return -ENOSPC;
	}
	rc = map_resize(c, cur + add);
	if (rc) {
		log_warn("cache %s: map full, cannot grow it now: %s", c->dir,
		         strerror(-rc));
		return -ENOSPC;
	}
	log_info("cache %s: map grown from %zu to %zu MiB", c->dir, cur >> 20,
	         (cur + add) >> 20);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Transactions */

int cache_txn_begin(struct cache *cache, bool write, struct cache_txn **txn_r)
{
	struct cache_txn *t;
	int rc;

	if (cache == NULL || txn_r == NULL)
		return -EINVAL;
	*txn_r = NULL;
	if (getpid() != cache->pid) {
		log_err("cache %s: used across fork(); open it in the process that uses it",
		        cache->dir);
		return -ECHILD;
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	t->cache = cache;
	t->write = write;
	active_enter(cache);
	rc = mdb_txn_begin(cache->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
	if (rc == MDB_MAP_RESIZED) {
		/* Another process grew the map: adopt its size. */
		active_leave(cache);
		map_resize(cache, 0);
		active_enter(cache);
		rc = mdb_txn_begin(cache->env, NULL, write ? 0 : MDB_RDONLY,
		                   &t->txn);
	}
	if (rc) {
		active_leave(cache);
		free(t);
		return mdb_errno(rc);
	}
	*txn_r = t;
	return 0;
}

/* LMDB reports a short write as EIO, and a full disk mostly shows up as a
 * short write.  Call it ENOSPC when the file system has less room left
 * than the transaction wrote. */
static bool fs_full(struct cache *c, size_t bytes)
{
	struct statvfs sv;
	int fd;

	if (mdb_env_get_fd(c->env, &fd) != 0 || fstatvfs(fd, &sv) != 0)
		return false;
	if (bytes < (1u << 20))
		bytes = 1u << 20;
	return sv.f_bavail < bytes / (sv.f_frsize ? sv.f_frsize : 1) + 1;
}

/* Drop every page of the map from the process's page tables.  Lookups
 * and writes touch pages all over the map, and the kernel maps the pages
 * around each fault too, so without this the resident set slowly grows
 * to the size of the cache.  The map is a read-only shared file mapping:
 * the pages stay in the page cache and a later access (even one under
 * way in another thread) simply faults them in again. */
static void trim_map(struct cache *c)
{
	uintptr_t lo = atomic_load(&c->seen_lo), hi = atomic_load(&c->seen_hi);
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);

	if (lo == 0 || hi <= lo)
		return;
	lo &= ~(page - 1);
	madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* LMDB does not tell where its map is; the span of the pointers it has
 * handed to read transactions is inside it (write transactions can return
 * pointers to private dirty pages, which must never be trimmed).  The span
 * is forgotten whenever the map is resized, which only happens while no
 * transaction is alive. */
static void note_span(struct cache_txn *t, const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p, b = a + n, cur;

	if (t->write || p == NULL || n == 0)
		return;
	cur = atomic_load(&t->cache->seen_lo);
	while ((cur == 0 || a < cur) &&
	       !atomic_compare_exchange_weak(&t->cache->seen_lo, &cur, a))
		;
	cur = atomic_load(&t->cache->seen_hi);
	while (b > cur &&
	       !atomic_compare_exchange_weak(&t->cache->seen_hi, &cur, b))
		;
}

#define TRIM_READS 32
#define TRIM_BYTES (4u * 1024 * 1024)

static void note_read(struct cache *c)
{
	if (atomic_fetch_add(&c->reads_since_trim, 1) + 1 >= TRIM_READS) {
		atomic_store(&c->reads_since_trim, 0);
		trim_map(c);
	}
}

static void note_written(struct cache *c, size_t bytes)
{
	if (atomic_fetch_add(&c->bytes_since_trim, bytes) + bytes >=
	    TRIM_BYTES) {
		atomic_store(&c->bytes_since_trim, 0);
		trim_map(c);
	}
}

/* End t, committing if asked and no step failed.  *map_full_r tells
 * whether the failure was a full map (worth growing and retrying). */
static int txn_end(struct cache_txn *t, bool commit, bool *map_full_r)
{
	bool map_full = t->map_full;
	int rc = t->err;

	if (commit && t->write && rc == 0) {
		int mrc = mdb_txn_commit(t->txn);

		if (mrc == MDB_MAP_FULL)
			map_full = true;
		rc = mdb_errno(mrc);
		if (rc == -EIO && fs_full(t->cache, t->bytes))
			rc = -ENOSPC;
		if (rc)
			log_warn("cache %s: commit failed: %s", t->cache->dir,
			         strerror(-rc));
		else
			note_written(t->cache, t->bytes);
	} else {
		mdb_txn_abort(t->txn);
	}
	active_leave(t->cache);
	free(t);
	if (map_full_r)
		*map_full_r = map_full;
	return rc;
}

int cache_txn_commit(struct cache_txn **txn)
{
	struct cache_txn *t;

	if (txn == NULL || *txn == NULL)
		return -EINVAL;
	t = *txn;
	*txn = NULL;
	return txn_end(t, true, NULL);
}

void cache_txn_abort(struct cache_txn **txn)
{
	if (txn == NULL || *txn == NULL)
		return;
	txn_end(*txn, false, NULL);
	*txn = NULL;
}

int cache_txn_error(const struct cache_txn *txn)
{
	return txn ? txn->err : -EINVAL;
}

int cache_run_write(struct cache *cache,
                    int (*fn)(struct cache_txn *txn, void *ctx), void *ctx)
{
	struct cache_txn *t;
	bool map_full;
	size_t bytes;
	int attempt, rc;

	if (fn == NULL)
		return -EINVAL;
	for (attempt = 0;; attempt++) {
		rc = cache_txn_begin(cache, true, &t);
		if (rc)
			return rc;
		rc = fn(t, ctx);
		bytes = t->bytes;
		if (rc) {
			map_full = t->map_full;
			txn_end(t, false, NULL);
		} else {
			rc = txn_end(t, true, &map_full);
		}
		if (rc != -ENOSPC || !map_full || attempt > 0)
			return rc;
		if (cache_grow(cache, bytes) != 0)
			return -ENOSPC;
	}
}

int cache_run_read(struct cache *cache,
                   int (*fn)(struct cache_txn *txn, void *ctx), void *ctx)
{
	struct cache_txn *t;
	int rc, end;

	if (fn == NULL)
		return -EINVAL;
	rc = cache_txn_begin(cache, false, &t);
	if (rc)
		return rc;
	rc = fn(t, ctx);
	end = txn_end(t, false, NULL);
	return rc ? rc : end;
}

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

static bool mbox_id_ok(uint32_t id)
{
	return id != CACHE_ROOT_MAILBOX_ID && id != CACHE_POP_MAILBOX_ID;
}

/* Length check of a name used as a key. */
static int key_name_check(struct cache_txn *t, const char *name, size_t max)
{
	size_t n;

	if (name == NULL)
		return -EINVAL;
	n = strlen(name);
	if (n == 0)
		return -EINVAL;
	if (n > max || n > (size_t)mdb_env_get_maxkeysize(t->cache->env))
		return -ENAMETOOLONG;
	return 0;
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

/* The mbox_name key of a mailbox name (see the schema in cache.h): the
 * name itself when it fits in a key, else, in buf, its first bytes, a NUL
 * (never part of a name) and the SHA-256 of the whole name. */
struct name_key {
	uint8_t buf[NAME_KEY_MAX];
	const void *p;
	size_t n;
	bool hashed;
};

static int name_key(struct cache_txn *t, const char *name, struct name_key *k)
{
	size_t n = strlen(name), max = mdb_env_get_maxkeysize(t->cache->env);
	size_t head;

	if (n == 0)
		return -EINVAL;
	k->hashed = n > max;
	if (!k->hashed) {
		k->p = name;
		k->n = n;
		return 0;
	}
	if (max > NAME_KEY_MAX)
		max = NAME_KEY_MAX;
	head = max - 1 - NAME_HASH_LEN;
	memcpy(k->buf, name, head);
	k->buf[head] = '\0';
	if (EVP_Digest(name, n, k->buf + head + 1, NULL, EVP_sha256(), NULL) !=
	    1)
		return -ENOMEM;
	k->p = k->buf;
	k->n = head + 1 + NAME_HASH_LEN;
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
	uint32_t other;
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

/* ------------------------------------------------------------------ */
/* Messages */

struct msg_view {
	bool size_verified;
	uint64_t size, modseq;
	int64_t internaldate;
	int16_t tz_minutes;
	struct span flags, subject, from, date, message_id, header;
};

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

static bool msg_parse(const MDB_val *v, struct msg_view *mv)
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

static bool msg_key_ok(struct cache_key k)
{
	return mbox_id_ok(k.mailbox_id) && k.uidvalidity != 0 && k.uid != 0;
}

static int msg_load(struct cache_txn *t, struct cache_key key,
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

static int msg_store(struct cache_txn *t, const struct cache_msg *m)
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

/* ------------------------------------------------------------------ */
/* Bodies
 *
 * How a body is stored depends only on its length:
 *
 * - up to CACHE_BODY_CHUNK bytes: one value in "body" under the message
 *   key, the raw bytes (the format of schema 1, which may also hold
 *   longer bodies written before schema 2: they are read the same way);
 * - longer: in pieces.  "body_big" maps the message key to a record
 *   (version byte, length u64, chunk size u32, blob id u64); the pieces
 *   live in "chunk" under (blob id u64, index u32), each a codec byte
 *   (CHUNK_RAW: the bytes as they are) and chunk-size bytes (fewer in the
 *   last one), so a read at offset X looks up piece X / chunk size
 *   directly.  A body is in one of the two databases, never both.
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
#define CHUNK_RAW       0 /* codec byte: the bytes as they are */
#define BIGBODY_REC_LEN 21
#define CHUNK_KEY_LEN   12 /* (blob id u64, index u32) */
#define META_NEXT_BLOB  "cache.next_blob"
/* A stream commits what it has whenever it holds this much (a multiple
 * of CACHE_BODY_CHUNK): its memory and that of the write transaction. */
#define STREAM_FLUSH    (16u * CACHE_BODY_CHUNK)

/* Where a body is.  For !big, v is the value itself (a map pointer, valid
 * until the next write). */
struct body_loc {
	bool big;
	MDB_val v;
	uint64_t size;
	uint32_t chunk;
	uint64_t blob;
};

static void chunk_key(uint8_t k[CHUNK_KEY_LEN], uint64_t blob, uint64_t idx)
{
	be64_put(k, blob);
	be32_put(k + 8, (uint32_t)idx);
}

static int body_find(struct cache_txn *t, const uint8_t k[KEY_LEN],
                     struct body_loc *b)
{
	const uint8_t *p;
	MDB_val v;
	int rc = db_get(t, DB_BODY, k, KEY_LEN, &b->v);

	if (rc == 0) {
		b->big = false;
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

/* The bytes of piece idx of b (a map pointer, valid until the next
 * write).  A piece missing or of the wrong length is a damaged cache. */
static int chunk_get(struct cache_txn *t, const struct body_loc *b,
                     uint64_t idx, const uint8_t **p_r)
{
	uint8_t k[CHUNK_KEY_LEN];
	const uint8_t *p;
	MDB_val v;
	int rc;

	chunk_key(k, b->blob, idx);
	rc = db_get(t, DB_CHUNK, k, CHUNK_KEY_LEN, &v);
	if (rc == -ENOENT)
		return corrupt(t, "body piece (missing)", b->blob, idx, 0);
	if (rc)
		return rc;
	p = v.mv_data;
	if (v.mv_size != 1 + chunk_len(b, idx) || p[0] != CHUNK_RAW)
		return corrupt(t, "body piece", b->blob, idx, v.mv_size);
	*p_r = p + 1;
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

/* Copy [off, off + len) of the chunked body b (inside it) into buf. */
static int big_copy(struct cache_txn *t, const struct body_loc *b, uint64_t off,
                    uint8_t *buf, size_t len)
{
	while (len > 0) {
		uint64_t idx = off / b->chunk;
		size_t in = (size_t)(off % b->chunk),
		       n = chunk_len(b, idx) - in;
		const uint8_t *p;
		int rc = chunk_get(t, b, idx, &p);

		if (rc)
			return rc;
		if (n > len)
			n = len;
		memcpy(buf, p + in, n);
		note_span(t, p + in, n);
		release_pages(p + in, n);
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
	uint8_t k[CHUNK_KEY_LEN], *p;

	/* The whole length up front: if the map fills up at some piece, the
	 * retry must find room for all of them (see db_reserve). */
	t->bytes += len;
	for (uint64_t idx = first; len > 0; idx++) {
		size_t n = len < CACHE_BODY_CHUNK ? len : CACHE_BODY_CHUNK;
		int rc;

		if (idx > UINT32_MAX)
			return txn_fail(t, -EFBIG);
		chunk_key(k, blob, idx);
		rc = db_reserve(t, DB_CHUNK, k, CHUNK_KEY_LEN, 1 + n, 0, &p);
		if (rc)
			return rc;
		p[0] = CHUNK_RAW;
		memcpy(p + 1, data, n);
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
static int body_del(struct cache_txn *t, const uint8_t k[KEY_LEN])
{
	struct body_loc b;
	int rc = db_del(t, DB_BODY, k, KEY_LEN);

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
static int body_del_prefix(struct cache_txn *t, const uint8_t *prefix,
                           size_t plen)
{
	struct blob_list l = {NULL, 0, 0};
	int rc = db_del_prefix(t, DB_BODY, prefix, plen, NULL);

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
static int body_write(struct cache_txn *t, const uint8_t k[KEY_LEN],
                      const void *data, size_t len)
{
	uint64_t blob;
	int rc = body_del(t, k);

	if (rc)
		return rc;
	if (len <= CACHE_BODY_CHUNK)
		return db_put(t, DB_BODY, k, KEY_LEN, data, len, 0);
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
		if (b.big) {
			rc = big_copy(txn, &b, offset, buf, n);
		} else {
			const uint8_t *p =
			        (const uint8_t *)b.v.mv_data + offset;

			memcpy(buf, p, n);
			note_span(txn, p, n);
			release_pages(p, n);
		}
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
	if (n > 0 && !b.big) {
		data = (const uint8_t *)b.v.mv_data + offset;
	} else if (n > 0 && offset % b.chunk + n <= b.chunk) {
		/* Inside one piece: straight from the map too. */
		rc = chunk_get(txn, &b, offset / b.chunk, &data);
		if (rc)
			return rc;
		data += offset % b.chunk;
	} else if (n > 0) {
		copy = malloc(n);
		if (copy == NULL)
			return txn_fail(txn, -ENOMEM);
		rc = big_copy(txn, &b, offset, copy, n);
		if (rc) {
			free(copy);
			return rc;
		}
	}
	rc = fn(ctx, copy ? copy : data ? (const void *)data : "", n);
	free(copy);
	note_span(txn, data, n);
	release_pages(data, n);
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
	if (b.big) {
		rc = big_copy(txn, &b, 0, p, (size_t)b.size);
		if (rc) {
			free(p);
			return rc;
		}
	} else {
		memcpy(p, b.v.mv_data, b.v.mv_size);
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

/* Give the body under from to the message to (whose record must exist),
 * as cache_body_put would; keep from's copy if copy.  A body in pieces
 * moves by its body_big record alone; a copy of it is made piece by
 * piece. */
static int body_transfer(struct cache_txn *t, struct cache_key from,
                         struct cache_key to, bool copy)
{
	uint8_t fk[KEY_LEN], tk[KEY_LEN];
	struct body_loc b;
	uint64_t blob;
	void *buf;
	int rc;

	msgkey_make(fk, from);
	msgkey_make(tk, to);
	rc = body_find(t, fk, &b);
	if (rc)
		return rc;
	if (!b.big) {
		/* Through the heap: a map pointer does not survive a put. */
		buf = malloc(b.v.mv_size ? b.v.mv_size : 1);
		if (buf == NULL)
			return txn_fail(t, -ENOMEM);
		memcpy(buf, b.v.mv_data, b.v.mv_size);
		rc = body_store(t, to, buf, b.v.mv_size);
		free(buf);
		if (rc == 0 && !copy)
			rc = db_del(t, DB_BODY, fk, KEY_LEN);
		return rc;
	}
	rc = msg_set_verified(t, to, b.size);
	if (rc == 0)
		rc = body_del(t, tk);
	if (rc || !copy) {
		if (rc == 0)
			rc = bigbody_put(t, tk, b.size, b.chunk, b.blob);
		if (rc == 0)
			rc = db_del(t, DB_BIGBODY, fk, KEY_LEN);
		return rc;
	}
	rc = blob_new(t, &blob);
	buf = rc == 0 ? malloc(b.chunk) : NULL;
	if (rc == 0 && buf == NULL)
		rc = txn_fail(t, -ENOMEM);
	for (uint64_t i = 0; rc == 0 && i * b.chunk < b.size; i++) {
		uint8_t k[CHUNK_KEY_LEN], *p;
		const uint8_t *src;
		size_t n = chunk_len(&b, i);

		rc = chunk_get(t, &b, i, &src);
		if (rc)
			break;
		memcpy(buf, src, n);
		chunk_key(k, blob, i);
		rc = db_reserve(t, DB_CHUNK, k, CHUNK_KEY_LEN, 1 + n, 0, &p);
		if (rc == 0) {
			p[0] = CHUNK_RAW;
			memcpy(p + 1, buf, n);
		}
	}
	free(buf);
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

struct cache_body_stream {
	struct cache *cache; /* borrowed */
	uint64_t blob;       /* 0 until pieces were committed */
	uint64_t written;    /* bytes in committed pieces */
	uint8_t *buf;        /* owned: the bytes not committed yet */
	size_t len, cap;
	int err; /* sticky */
};

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
static int stream_store(struct cache_txn *t, struct cache_body_stream *s,
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

static void stale_clean(struct cache *c)
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

/* Parts: the writes added to an upload after its record (see cache.h).
 * Their keys sort right after the record's, before the next record's. */
#define PART_KEY_LEN 12

static void part_key(uint8_t k[PART_KEY_LEN], uint64_t seq, uint32_t n)
{
	be64_put(k, seq);
	be32_put(k + 8, n);
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

int cache_pending_set_target(struct cache_txn *txn, uint64_t seq,
                             uint32_t mailbox_id, const char *name)
{
	struct cache_pending p = {0};
	struct pending_view pv;
	struct wr w = {NULL, 0};
	uint8_t k[8], *buf;
	char *flags = NULL;
	MDB_val v;
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!mbox_id_ok(mailbox_id) || !str_ok(name))
		return txn_fail(txn, -EINVAL);
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
	flags = malloc(pv.flags.n + 1);
	if (buf == NULL || flags == NULL) {
		free(buf);
		free(flags);
		return txn_fail(txn, -ENOMEM);
	}
	memcpy(buf, v.mv_data, v.mv_size);
	if (pv.flags.n)
		memcpy(flags, pv.flags.p, pv.flags.n);
	flags[pv.flags.n] = '\0';
	p.mailbox_id = mailbox_id;
	p.state = pv.state;
	p.flags = flags;
	p.name = (char *)name;
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
	free(flags);
	return rc;
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

/* ------------------------------------------------------------------ */
/* One-shot helpers */

struct once {
	struct cache_key key;
	uint64_t u64;
	const void *data;
	size_t len;
	const char *str;
	int64_t when;
	void *buf;
	size_t *n_r;
	uint64_t *u64_r;
	uint32_t *u32_r;
	struct cache_msg **msg_r;
	const struct cache_pending *pending;
};

static int once_body_read(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_read(t, o->key, o->u64, o->buf, o->len, o->n_r);
}

int cache_body_read_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, void *buf, size_t len, size_t *n_r)
{
	struct once o = {
	        .key = key, .u64 = offset, .buf = buf, .len = len, .n_r = n_r};

	return cache_run_read(cache, once_body_read, &o);
}

struct once_view {
	struct cache_key key;
	uint64_t offset;
	size_t len;
	int (*fn)(void *ctx, const void *data, size_t n);
	void *ctx;
};

static int once_body_view(struct cache_txn *t, void *ctx)
{
	struct once_view *o = ctx;

	return cache_body_view(t, o->key, o->offset, o->len, o->fn, o->ctx);
}

int cache_body_view_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, size_t len,
                         int (*fn)(void *ctx, const void *data, size_t n),
                         void *ctx)
{
	struct once_view o = {key, offset, len, fn, ctx};

	return cache_run_read(cache, once_body_view, &o);
}

static int once_body_size(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_size(t, o->key, o->u64_r);
}

int cache_body_size_once(struct cache *cache, struct cache_key key,
                         uint64_t *size_r)
{
	struct once o = {.key = key, .u64_r = size_r};

	return cache_run_read(cache, once_body_size, &o);
}

static int once_body_put(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_put(t, o->key, o->data, o->len);
}

int cache_body_put_once(struct cache *cache, struct cache_key key,
                        const void *data, size_t len)
{
	struct once o = {.key = key, .data = data, .len = len};

	return cache_run_write(cache, once_body_put, &o);
}

static int once_msg_get(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_msg_get(t, o->key, o->msg_r);
}

int cache_msg_get_once(struct cache *cache, struct cache_key key,
                       struct cache_msg **msg_r)
{
	struct once o = {.key = key, .msg_r = msg_r};

	return cache_run_read(cache, once_msg_get, &o);
}

static int once_msg_set_flags(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_msg_set_flags(t, o->key, o->str, o->u64);
}

int cache_msg_set_flags_once(struct cache *cache, struct cache_key key,
                             const char *flags, uint64_t modseq)
{
	struct once o = {.key = key, .str = flags, .u64 = modseq};

	return cache_run_write(cache, once_msg_set_flags, &o);
}

static int once_pop_add(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pop_add(t, o->str, o->data, o->len, o->when, o->u32_r);
}

int cache_pop_add_once(struct cache *cache, const char *uidl, const void *body,
                       size_t len, int64_t downloaded, uint32_t *num_r)
{
	struct once o = {.str = uidl,
	                 .data = body,
	                 .len = len,
	                 .when = downloaded,
	                 .u32_r = num_r};

	return cache_run_write(cache, once_pop_add, &o);
}

static int once_pending_add(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pending_add(t, o->pending, o->u64_r);
}

int cache_pending_add_once(struct cache *cache, const struct cache_pending *p,
                           uint64_t *seq_r)
{
	struct once o = {.pending = p, .u64_r = seq_r};

	return cache_run_write(cache, once_pending_add, &o);
}

static int once_pending_delete(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pending_delete(t, o->u64);
}

int cache_pending_delete_once(struct cache *cache, uint64_t seq)
{
	struct once o = {.u64 = seq};

	return cache_run_write(cache, once_pending_delete, &o);
}
