/* What the files of cache/ share, and only they: the environment and
 * transaction structs, the databases, the key layouts and the record
 * codec.  cache.h is the contract for callers (and holds the schema); this
 * header is included only by the .c files of cache/.
 *
 * Who owns what (each file calls only files listed below it, and
 * codec.c and env.c call nothing else in cache/; no cycle between files):
 *   once.c     the one-shot helpers of cache.h
 *   usage.c    no database of its own: counts and sizes of what a
 *              mailbox holds and caches
 *   open.c     opening the environment (directory, lock, damage checks,
 *              schema check and upgrade, stale_clean) and closing it; the
 *              list of databases
 *   pending.c  pending (records and their parts)
 *   pop.c      pop and pop_uidl (POP3 bodies are body.c's)
 *   rematch.c  no database of its own: bodies across a UIDVALIDITY change
 *   mbox.c     mbox and mbox_name
 *   msg.c      msg: the public calls (deleting a message deletes its body)
 *   body.c     body, zbody, body_big, chunk, chunk_open; body streams
 *   compress.c zdict, and the encoding of the values of zbody and chunk
 *              (compressed when that saves space; per-thread zstd
 *              contexts and the last value decoded)
 *   msgrec.c   one msg record: its encoding, key check, load and store
 *   meta.c     meta: counters, callers' values, mailbox mtimes, POP3 marks
 *   env.c      the LMDB wrapper: transactions and their sticky errors, the
 *              LMDB errno map, the map and its growth, the database
 *              primitives (db_*)
 *   codec.c    big-endian integers, the record writer and reader, every
 *              key this module builds (the key builders below) and the
 *              ids a key may hold
 *
 * Rules inside the module:
 * - Values never leave cache/ as pointers into the map: LMDB's pointers
 *   are only valid until the next write in the transaction (a dirty page
 *   can be spilled and freed), so every record is decoded into heap memory
 *   and every value copied from one key to another goes through a heap
 *   copy.
 * - Every function taking a struct cache_txn records its failures in it
 *   (txn_fail), except a miss (-ENOENT from db_get and the *_load/_find
 *   helpers), which the caller decides about; public calls begin with
 *   txn_check().
 * - A key is built only by the builders declared here (codec.c); its
 *   layout is the one in cache.h's schema block. */
#ifndef MAILFS_CACHE_INT_H
#define MAILFS_CACHE_INT_H

#include "cache.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The named databases (their names: open.c, db_names). */
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
	DB_ZBODY,
	DB_ZDICT,
	DB_COUNT,
};

/* Meta names of this module (see cache.h). */
#define META_SCHEMA       "schema"
#define META_NEXT_MAILBOX "cache.next_mailbox"
#define META_NEXT_POP     "cache.next_pop"
#define META_NEXT_PENDING "cache.next_pending"
#define META_NEXT_BLOB    "cache.next_blob"
#define META_NEXT_ZDICT   "cache.next_zdict"
#define META_ZDICT        "cache.zdict"
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
#define CHUNK_KEY_LEN 12 /* (blob id u64, index u32) */
/* Parts: the writes added to an upload after its record (see cache.h).
 * Their keys sort right after the record's, before the next record's. */
#define PART_KEY_LEN  12 /* (sequence number u64, part number u32) */

/* Decoded pieces kept for other reads (body.c): 2 MiB at most. */
#define PIECE_SLOTS 8

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
	/* Compression dictionaries loaded (compress.c), and the number of
	 * small bodies at which one is trained if the cache has none. */
	pthread_mutex_t zlock;
	struct zdict_mem *zdicts; /* owned; protected by zlock */
	atomic_size_t ztrain_at;
	/* Pieces decoded by read transactions (body.c, chunk_get). */
	pthread_mutex_t piece_lock;
	struct piece_buf *pieces[PIECE_SLOTS]; /* one reference each */
	unsigned piece_next;
};

struct cache_txn {
	struct cache *cache; /* borrowed */
	MDB_txn *txn;        /* owned */
	bool write;
	bool map_full; /* some step hit MDB_MAP_FULL */
	int err;       /* sticky: the first failure */
	size_t bytes;  /* bytes put, a hint for growing the map */
};

/* ------------------------------------------------------------------ */
/* Errors and database primitives (env.c) */

/* The one place LMDB codes become errnos. */
int mdb_errno(int rc);
/* Record err as txn's failure (if it is the first) and return it. */
int txn_fail(struct cache_txn *t, int err);
/* The same for an LMDB code (mapped, a full map noted). */
int txn_mdb_fail(struct cache_txn *t, int rc);
/* At the start of each public call: txn's sticky error, -EINVAL for no
 * transaction, -EROFS (recorded) for a write in a read transaction. */
int txn_check(struct cache_txn *t, bool write);
/* An undecodable record: logged with what and three numbers of its key,
 * recorded as -EIO. */
int corrupt(struct cache_txn *t, const char *what, uint64_t a, uint64_t b,
            uint64_t c);

/* -ENOENT from db_get is not recorded: the callers decide whether a miss
 * is a failure.  v points into the map. */
int db_get(struct cache_txn *t, int db, const void *k, size_t klen, MDB_val *v);
int db_reserve(struct cache_txn *t, int db, const void *k, size_t klen,
               size_t vlen, unsigned flags, uint8_t **p_r);
int db_put(struct cache_txn *t, int db, const void *k, size_t klen,
           const void *v, size_t vlen, unsigned flags);
int db_del(struct cache_txn *t, int db, const void *k, size_t klen);
typedef int (*scan_fn)(struct cache_txn *t, const MDB_val *k, const MDB_val *v,
                       void *ctx);
int db_scan(struct cache_txn *t, int db, const void *start, size_t slen,
            size_t plen, scan_fn fn, void *ctx);
int db_del_prefix(struct cache_txn *t, int db, const void *prefix, size_t plen,
                  size_t *count_r);
/* The number of entries of db. */
int db_count(struct cache_txn *t, int db, size_t *count_r);

/* Body reads tell the environment which map pages they touched, so that
 * it can drop them from the resident set now and then. */
void note_span(struct cache_txn *t, const void *p, size_t n);
void note_read(struct cache *c);

/* ------------------------------------------------------------------ */
/* Codec (codec.c) */

void be32_put(uint8_t *p, uint32_t v);
uint32_t be32_get(const uint8_t *p);
void be64_put(uint8_t *p, uint64_t v);
uint64_t be64_get(const uint8_t *p);

/* With p == NULL the writer only counts, so one function both sizes and
 * fills a record. */
struct wr {
	uint8_t *p;
	size_t n;
};

void wr_bytes(struct wr *w, const void *d, size_t n);
void wr_u8(struct wr *w, uint8_t v);
void wr_u16(struct wr *w, uint16_t v);
void wr_u32(struct wr *w, uint32_t v);
void wr_u64(struct wr *w, uint64_t v);
/* u32 length and the bytes; callers check lengths with len_ok() first. */
void wr_blob(struct wr *w, const void *d, size_t n);
void wr_str(struct wr *w, const char *s);
bool len_ok(size_t n);
bool str_ok(const char *s);

struct span {
	const uint8_t *p;
	size_t n;
};

/* A reader over one value; a read past its end sets bad and reads 0. */
struct rd {
	const uint8_t *p;
	size_t len;
	size_t off;
	bool bad;
};

void rd_init(struct rd *r, const MDB_val *v);
const uint8_t *rd_take(struct rd *r, size_t n);
uint8_t rd_u8(struct rd *r);
uint16_t rd_u16(struct rd *r);
uint32_t rd_u32(struct rd *r);
uint64_t rd_u64(struct rd *r);
struct span rd_blob(struct rd *r);
bool rd_ok(const struct rd *r);
char *out_str(uint8_t **cur, struct span s);

/* A reusable decode buffer for the foreach loops. */
struct scratch {
	void *p;
	size_t cap;
};

void *scratch_get(struct scratch *s, size_t n);

/* Keys.  Each builder writes the exact bytes of cache.h's schema. */

/* msg, body, body_big: (mailbox id, UIDVALIDITY, UID), 3 x u32 BE. */
void msgkey_make(uint8_t out[KEY_LEN], struct cache_key k);
struct cache_key msgkey_parse(const uint8_t *p);

/* 0, or -EINVAL (NULL or empty) or -ENAMETOOLONG (over max or LMDB's key
 * limit) for a name used as a key as it is (pop_uidl). */
int key_name_check(struct cache_txn *t, const char *name, size_t max);

/* The mbox_name key of a mailbox name (see the schema in cache.h): the
 * name itself when it fits in a key, else, in buf, its first bytes, a NUL
 * (never part of a name) and the SHA-256 of the whole name. */
struct name_key {
	uint8_t buf[NAME_KEY_MAX];
	const void *p;
	size_t n;
	bool hashed;
};

int name_key(struct cache_txn *t, const char *name, struct name_key *k);

/* chunk: (blob id u64 BE, piece index u32 BE). */
void chunk_key(uint8_t k[CHUNK_KEY_LEN], uint64_t blob, uint64_t idx);
/* pending parts: (sequence number u64 BE, part number u32 BE). */
void part_key(uint8_t k[PART_KEY_LEN], uint64_t seq, uint32_t n);
/* meta: "mtime." and the id in decimal. */
void mtime_key(char name[META_KEY_SIZE], uint32_t id);
/* meta: the mark's prefix and the first 8 bytes of the SHA-256 of s in
 * lower-case hex; -EINVAL for an unknown mark or a NULL s. */
int pop_mark_key(char name[META_KEY_SIZE], enum cache_pop_mark mark,
                 const char *s);

/* ------------------------------------------------------------------ */
/* Values that may be compressed (compress.c): the bodies of zbody and the
 * pieces of chunk.  A value is a codec byte, then
 *   ZV_RAW        the bytes
 *   ZV_ZSTD       length u32 BE, one zstd frame
 *   ZV_ZSTD_DICT  length u32 BE, dictionary id u32 BE, one zstd frame
 *                 made with that dictionary (zdict)
 * The length is the decoded length: known without decompressing. */

enum { ZV_RAW = 0, ZV_ZSTD = 1, ZV_ZSTD_DICT = 2 };

enum zval_kind {
	ZV_BODY,  /* a small body: with the cache's dictionary, once trained */
	ZV_PIECE, /* a piece of a longer body: no dictionary, faster level */
};

int zdicts_init(struct cache *c);
void zdicts_free(struct cache *c);
/* The decoded length of v; -EIO (not recorded) for a damaged header. */
int zval_len(const MDB_val *v, uint64_t *len_r);
/* The decoded bytes of v: a pointer into v (raw) or into this thread's
 * buffer, valid until the next zval_* call on this thread.  A value that
 * does not decode to exactly its length is damaged: logged (what and a,
 * b, c name it), -EIO recorded. */
int zval_decode(struct cache_txn *t, const MDB_val *v, const char *what,
                uint64_t a, uint64_t b, uint64_t c, const uint8_t **p_r,
                size_t *len_r);
/* zval_decode into dst, which holds exactly the value's length len (the
 * caller checked it with zval_len). */
int zval_decode_to(struct cache_txn *t, const MDB_val *v, const char *what,
                   uint64_t a, uint64_t b, uint64_t c, uint8_t *dst,
                   size_t len);
/* Put len bytes under k in db as a value of kind, compressed when that
 * makes it shorter.  For ZV_BODY, the first write that finds no
 * dictionary and enough small bodies in the cache trains one (logged). */
int zval_put(struct cache_txn *t, int db, const void *k, size_t klen,
             const void *data, size_t len, enum zval_kind kind);

/* ------------------------------------------------------------------ */
/* What the schema files use of each other */

/* meta.c: a meta value (-ENOENT not recorded), and the next value of a
 * persistent counter that starts at 1 and never goes past max. */
int meta_read(struct cache_txn *t, const char *name, uint64_t *v_r);
int meta_write(struct cache_txn *t, const char *name, uint64_t val);
int counter_next(struct cache_txn *t, const char *name, uint64_t max,
                 uint64_t *v_r);

/* codec.c: an id a real mailbox may have (neither the root nor POP3). */
bool mbox_id_ok(uint32_t id);

/* msgrec.c: a message record, decoded in place (spans point into the
 * map). */
struct msg_view {
	bool size_verified;
	uint64_t size, modseq;
	int64_t internaldate;
	int16_t tz_minutes;
	struct span flags, subject, from, date, message_id, header;
};

bool msg_parse(const MDB_val *v, struct msg_view *mv);
/* The bytes a decoded record takes as a struct cache_msg, and the record
 * built in buf (that many bytes): the strings and header follow it. */
size_t msg_build_size(const struct msg_view *mv);
struct cache_msg *msg_build(const struct msg_view *mv, struct cache_key key,
                            void *buf);
/* A key an IMAP message may have. */
bool msg_key_ok(struct cache_key k);
int msg_load(struct cache_txn *t, struct cache_key key,
             struct cache_msg **msg_r);
int msg_store(struct cache_txn *t, const struct cache_msg *m);

/* body.c.  Bodies are deleted with their messages and mailboxes. */

/* Where a body is.  For !big, v is the value itself (a map pointer, valid
 * until the next write): in zbody (encoded), or, if old, in body (the
 * bytes as they are). */
struct body_loc {
	uint8_t k[KEY_LEN];
	bool big;
	bool old;
	MDB_val v;
	uint64_t size;
	uint32_t chunk;
	uint64_t blob;
};

struct cache_body_stream {
	struct cache *cache; /* borrowed */
	uint64_t blob;       /* 0 until pieces were committed */
	uint64_t written;    /* bytes in committed pieces */
	uint8_t *buf;        /* owned: the bytes not committed yet */
	size_t len, cap;
	int err; /* sticky */
};

int body_find(struct cache_txn *t, const uint8_t k[KEY_LEN],
              struct body_loc *b);
int body_del(struct cache_txn *t, const uint8_t k[KEY_LEN]);
int body_del_prefix(struct cache_txn *t, const uint8_t *prefix, size_t plen);
int body_write(struct cache_txn *t, const uint8_t k[KEY_LEN], const void *data,
               size_t len);
int body_transfer(struct cache_txn *t, struct cache_key from,
                  struct cache_key to, bool copy);
int stream_store(struct cache_txn *t, struct cache_body_stream *s,
                 const uint8_t k[KEY_LEN]);
/* The shared decoded pieces of c, at open and close (open.c). */
int piece_cache_init(struct cache *c);
void piece_cache_free(struct cache *c);
/* At open (open.c): delete the pieces of bodies whose writing never
 * finished; failures are logged. */
void stale_clean(struct cache *c);

#endif
