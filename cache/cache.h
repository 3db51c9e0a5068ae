/* The account cache: the one module that owns LMDB.
 *
 * One LMDB environment per account, in a directory of its own (created
 * 0700, files 0600).  It holds the mailbox list, per-message metadata, the
 * bodies that were read, the POP3 download list and the uploads the server
 * has not confirmed yet.  Everything a mount shows can be served from here
 * with the server unreachable.
 *
 * Databases inside the environment (named LMDB databases; the layout is
 * part of the on-disk format, guarded by CACHE_SCHEMA_VERSION).  Every key
 * and record below is built inside cache/ only, each database by one file
 * (cache_int.h says which), and callers never format a key: they use the
 * calls of this header.  tests/test_cache.c holds the exact bytes of each
 * kind of key and record, so that a change of layout cannot go unseen.
 *
 *   meta       ASCII name -> u64 BE.  The names this module builds:
 *                "schema"              the schema version
 *                "cache.next_mailbox", "cache.next_pop",
 *                "cache.next_pending", "cache.next_blob",
 *                "cache.next_zdict"    persistent counters: the next id
 *                "cache.zdict"         the id of the dictionary new
 *                                      bodies are compressed with
 *                "mtime." + mailbox id in decimal ("mtime.12")
 *                                      a mailbox directory's mtime,
 *                                      "mtime.0" the root's
 *                                      (cache_mailbox_mtime_*)
 *                "popdup.", "popcmp.", "popsize." + 16 lower-case hex
 *                digits, the first 8 bytes of the SHA-256 of a POP3
 *                UIDL or identity ("popdup.12b26475137f0033")
 *                                      POP3 marks (cache_pop_mark_*)
 *              Any other name is a caller's own (cache_meta_*).
 *   mbox       mailbox id (u32 BE) -> mailbox record
 *   mbox_name  server name (raw modified UTF-7 bytes) -> mailbox id (u32 BE).
 *              A name longer than LMDB's key limit (511 bytes in the usual
 *              build: mdb_env_get_maxkeysize) is filed under its first 478
 *              bytes, a NUL byte and the 32-byte SHA-256 of the whole name
 *              (511 bytes in all); the mailbox record keeps the full name
 *              and lookups compare it.  A name never holds a NUL, so the
 *              two forms never meet; names that fit are their own key, as
 *              in every cache before.
 *   msg        (mailbox id, UIDVALIDITY, UID), 3 x u32 BE -> message record
 *   zbody      same 12-byte key -> a body of up to CACHE_BODY_CHUNK
 *              bytes, encoded: a codec byte, then
 *                0  the message bytes, exactly
 *                1  length u32 BE, one zstd frame (no content size, no
 *                   dictionary id, no checksum in it)
 *                2  length u32 BE, dictionary id u32 BE, one zstd frame
 *                   made with that dictionary of zdict
 *              The length is the body's exact length.  A body is written
 *              compressed (2 once the cache has a dictionary, else 1)
 *              when that makes it shorter, else as codec 0.
 *   zdict      dictionary id (u32 BE) -> version byte (1), the first 8
 *              bytes of the SHA-256 of the dictionary, a zstd dictionary
 *              trained from the first small bodies of this cache
 *   body       same 12-byte key -> the raw message bytes, exactly: small
 *              bodies of schema 1 and 2 (schema 1 kept every body here);
 *              those stay and read the same, nothing new is written here
 *   body_big   same 12-byte key -> where a longer body's pieces are:
 *              version byte, length u64, chunk size u32, blob id u64
 *   chunk      (blob id u64 BE, piece index u32 BE) -> the bytes of that
 *              piece, encoded as in zbody (codec 0 or 1; schema 2 wrote
 *              codec 0 only): chunk-size bytes, fewer in the last piece.
 *              Piece i starts at byte i * chunk size.
 *   chunk_open blob id (u64 BE) -> version byte, start time (u64 BE): the
 *              bodies being written in pieces (cache_body_stream); what
 *              is left here at cache_open is deleted
 *   pop        download number (u32 BE) -> POP3 record
 *   pop_uidl   UIDL bytes -> download number (u32 BE); more than one
 *              UIDL may name a number (cache_pop_alias)
 *   pending    sequence number (u64 BE) -> pending upload record, followed
 *              by its parts: (sequence number u64 BE, part number u32 BE)
 *              -> offset (u64 BE) and the bytes written there
 *
 * All integer keys are big-endian so that byte order is numeric order: a
 * cursor over the prefix (mailbox id, UIDVALIDITY) walks one mailbox
 * generation in UID order.  Every record starts with a version byte
 * (body values and pieces start with a codec byte instead; old body
 * values are the message's bytes).
 *
 * Rules for callers:
 *
 * - Open the cache after daemonizing and never use it across fork(): the
 *   child must not touch a struct cache of its parent (LMDB's locks and
 *   mappings do not survive fork).  Every transaction begin checks the
 *   process id and fails with -ECHILD in a forked child.  The descriptors
 *   are close-on-exec.  Open a given directory in one process at a time
 *   (a second cache_open of it, in this process or another, fails with
 *   -EBUSY).
 *
 * - Transactions are short.  Begin, read or write, end.  Never hold a
 *   transaction (read or write) across a network wait or any other
 *   unbounded wait: a read transaction pins old pages and makes the file
 *   grow, a write transaction blocks every other writer.
 *
 * - The environment is opened with MDB_NOTLS: a read transaction may be
 *   begun on one thread and ended on another, but a transaction is used by
 *   one thread at a time.  A write transaction must be begun, used and
 *   ended on the same thread.  Only one write transaction exists at a time;
 *   cache_txn_begin(write) waits for the current writer.  A thread that
 *   holds a write transaction must not begin another one.  A thread must not
 *   call the one-shot functions (cache_run_*, *_once) while it holds a
 *   transaction itself, nor cache_body_stream_write/_close (they run
 *   write transactions of their own).
 *
 * - Every function returns 0 or a negative errno (a few return a count or a
 *   truth value, as documented).  LMDB codes are mapped in one place:
 *   not found -ENOENT, key exists -EEXIST, map full -ENOSPC, too many
 *   readers -EAGAIN, a transaction too big -E2BIG, corruption -EIO, an
 *   undecodable record -EIO (logged with its key).
 *
 * - Sticky errors: the first failure of a call on a transaction is recorded
 *   in it.  Every later call on that transaction returns the recorded error
 *   without touching the database, and cache_txn_commit() aborts and
 *   returns it.  A lookup that simply finds nothing (-ENOENT from a *_get,
 *   *_lookup, *_size, *_generation call) is an answer, not a failure: it is
 *   not recorded.  A write whose precondition fails (cache_body_put on a
 *   message that has no record, cache_mailbox_add of a name that exists) is
 *   a failure and is recorded.  Deleting something that is not there is
 *   not an error (returns 0).
 *
 * - Nothing returned points into the database map.  Records come back as
 *   one heap allocation (the struct and its strings together) freed with
 *   the matching *_free(); string fields of returned records are never
 *   NULL ("" when empty).  On input, NULL strings are stored as "".
 *   Structs given to the put and add calls are borrowed for the duration of the
 * call.
 */
#ifndef MAILFS_CACHE_H
#define MAILFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* On-disk schema understood by this build.  cache_open() upgrades an older
 * cache in place (logged; nothing in it is dropped) and refuses
 * (-EPROTONOSUPPORT, with a log line saying so) a newer one, so an old
 * mailfs never misreads a cache written by a newer one.  Schema 2 added
 * body_big, chunk and chunk_open; schema 3 zbody and zdict (compressed
 * bodies). */
#define CACHE_SCHEMA_VERSION 3

/* How long cache_open() waits for another process that holds the cache
 * (a mailfs still shutting down after its unmount) before it gives up
 * with -EBUSY. */
#define CACHE_LOCK_WAIT_MS 5000

/* Bodies longer than this are stored in pieces of this many bytes, each
 * found directly by its offset; a body that arrives in pieces is written
 * in bounded transactions (struct cache_body_stream).  The chunk size is
 * kept with each body, so it can change without a schema change. */
#define CACHE_BODY_CHUNK (256u * 1024)

/* Mailbox id 0 is never assigned: the fs layer may use it for the root.
 * Ids are assigned from 1 upwards from a persistent counter and are never
 * reused, not even after cache_mailbox_remove(). */
#define CACHE_ROOT_MAILBOX_ID 0u

/* POP3 bodies live in the body database under the key
 * (CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY, download number), so the fs
 * layer reads them with the same cache_body_* calls as IMAP bodies.  This
 * id is never assigned to a real mailbox.  cache_msg_* and cache_body_put /
 * cache_body_delete refuse it (-EINVAL): POP3 bodies are written only by
 * cache_pop_add() and never removed. */
#define CACHE_POP_MAILBOX_ID  UINT32_MAX
#define CACHE_POP_UIDVALIDITY 0u

struct cache;     /* an open environment; thread-safe */
struct cache_txn; /* one transaction; one thread at a time */

/* ------------------------------------------------------------------ */
/* Environment */

struct cache_options {
	/* Initial map size in bytes, 0 for the default (64 GiB on 64-bit
	 * systems, 1 GiB on 32-bit ones).  The map is sparse: its size is
	 * address space, not disk.  It grows when full (see cache_run_write).
	 * Mainly for tests. */
	size_t map_size;
};

/* Open (creating it if needed) the cache in directory dir.  Missing
 * directories are created with mode 0700, the database files get 0600.
 * opt may be NULL.  On success *cache_r is an owned handle for
 * cache_close().
 *
 * One process at a time: the directory is locked (flock) while it is open,
 * and a cache open in another process (after waiting CACHE_LOCK_WAIT_MS
 * for that process to let go), or already open in this one, is refused
 * (-EBUSY).  The lock goes with the process, even a killed one.
 *
 * A damaged cache is refused and never modified, deleted or repaired: it
 * may hold the only copy of POP3 mail or of unsent uploads.  Damaged means
 * a data file shorter than the pages in use (-EUCLEAN: "truncated", e.g. a
 * copy cut short; LMDB maps the file, and reading a page past its end would
 * kill the process with SIGBUS), an empty data file (-EUCLEAN; LMDB would
 * make it a fresh cache) or one LMDB does not recognise (-EIO).  Each of
 * these failures is checked before anything reads the file through the
 * map.
 *
 * Errors: -EPROTONOSUPPORT the cache was written by a newer mailfs, -EBUSY
 * as above, -EUCLEAN or -EIO damaged as above, or the errno of a failed
 * mkdir/open/lock.  Every failure is logged (LOG_ERR), one line that names
 * the directory or the file. */
int cache_open(const char *dir, struct cache **cache_r);
int cache_open_ex(const char *dir, const struct cache_options *opt,
                  struct cache **cache_r);

/* cache_open(), but the line that says why it failed is written into msg
 * (msg_size bytes, NUL-terminated, no newline, "" on success) instead of
 * the log: for a caller that shows it to the user itself.  A damaged cache
 * reads "cache DIR/data.mdb is damaged (CAUSE); move it away to start a
 * fresh cache, or restore it from a backup". */
int cache_open_msg(const char *dir, struct cache **cache_r, char *msg,
                   size_t msg_size);

/* Close and free; *cache is set to NULL.  No transaction may be open.
 * Safe with *cache == NULL. */
void cache_close(struct cache **cache);

/* Current map size in bytes (for logs and tests). */
size_t cache_map_size(struct cache *cache);

/* ------------------------------------------------------------------ */
/* Transactions */

/* Begin a transaction.  write=false gives a read transaction: a consistent
 * snapshot, cheap, never blocks.  write=true waits for the current writer.
 * *txn_r is owned until cache_txn_commit() or cache_txn_abort(). */
int cache_txn_begin(struct cache *cache, bool write, struct cache_txn **txn_r);

/* End a transaction, setting *txn to NULL.  For a write transaction:
 * commit if no step failed, else abort and return the first error; a
 * failed commit (full disk: -ENOSPC) leaves the database unchanged.  For a
 * read transaction: end it and return its sticky error (0 if none). */
int cache_txn_commit(struct cache_txn **txn);

/* End a transaction discarding its writes; *txn set to NULL.  Safe with
 * *txn == NULL. */
void cache_txn_abort(struct cache_txn **txn);

/* The sticky error of txn, 0 if every step so far succeeded. */
int cache_txn_error(const struct cache_txn *txn);

/* Run fn(txn, ctx) in a fresh write transaction and commit it.  fn returns
 * 0 or a negative errno; a negative return aborts the transaction and is
 * returned.  If the map is full, the map is grown and fn runs once more in
 * a new transaction, so fn must have no effects outside the transaction.
 * The map grows only while no other transaction of this process is live:
 * if some stay live for 10 seconds, the write fails with -ENOSPC.  This is
 * the path to use for writes, big batches included. */
int cache_run_write(struct cache *cache,
                    int (*fn)(struct cache_txn *txn, void *ctx), void *ctx);

/* Run fn(txn, ctx) in a read transaction and end it. */
int cache_run_read(struct cache *cache,
                   int (*fn)(struct cache_txn *txn, void *ctx), void *ctx);

/* ------------------------------------------------------------------ */
/* Meta: persistent named counters and values for other modules.  Names
 * are 1..64 printable ASCII characters; names starting with "cache.",
 * "mtime.", "popdup.", "popcmp." or "popsize." and the name "schema" are
 * reserved for this module (-EINVAL): the values of those names are read
 * and written with the typed calls below (cache_mailbox_mtime_*,
 * cache_pop_mark_*). */

int cache_meta_get(struct cache_txn *txn, const char *name, uint64_t *val_r);
int cache_meta_set(struct cache_txn *txn, const char *name, uint64_t val);

/* ------------------------------------------------------------------ */
/* Mailboxes */

/* LIST attributes (RFC 3501, 5258, 6154), as bits. */
enum cache_mbox_attr {
	CACHE_MBOX_NOSELECT = 1u << 0,
	CACHE_MBOX_NOINFERIORS = 1u << 1,
	CACHE_MBOX_NONEXISTENT = 1u << 2,
	CACHE_MBOX_HASCHILDREN = 1u << 3,
	CACHE_MBOX_HASNOCHILDREN = 1u << 4,
	CACHE_MBOX_MARKED = 1u << 5,
	CACHE_MBOX_UNMARKED = 1u << 6,
	CACHE_MBOX_SUBSCRIBED = 1u << 7,
	CACHE_MBOX_REMOTE = 1u << 8,
	CACHE_MBOX_ALL = 1u << 9, /* special use */
	CACHE_MBOX_ARCHIVE = 1u << 10,
	CACHE_MBOX_DRAFTS = 1u << 11,
	CACHE_MBOX_FLAGGED = 1u << 12,
	CACHE_MBOX_JUNK = 1u << 13,
	CACHE_MBOX_SENT = 1u << 14,
	CACHE_MBOX_TRASH = 1u << 15,
	CACHE_MBOX_IMPORTANT = 1u << 16,
};

/* The CACHE_MBOX_* bits named in a LIST attribute list such as
 * "\\HasNoChildren \\Trash" (case-insensitive, with or without the
 * parentheses).  Unknown attributes are ignored; keep the text in
 * attrs_raw if they matter. */
uint32_t cache_mailbox_attrs_parse(const char *text);

/* Pointer fields (strings, arrays, bytes): in a record returned by the
 * cache they are owned by the record, inside its single allocation, and
 * die with *_free(); in a record passed to a put/add call they are
 * borrowed from the caller for the duration of the call. */
struct cache_mailbox {
	uint32_t id;            /* permanent, assigned by cache_mailbox_add */
	char *name;             /* the server's name, raw modified UTF-7 */
	char delim;             /* hierarchy delimiter, '\0' for NIL */
	bool deleted;           /* gone from the server; data kept */
	uint32_t attrs;         /* CACHE_MBOX_* */
	char *attrs_raw;        /* LIST attributes as the server sent them */
	uint32_t uidvalidity;   /* current UIDVALIDITY, 0 = not known yet */
	uint32_t uidnext;       /* 0 = not known */
	uint64_t highestmodseq; /* 0 = no CONDSTORE */
	int64_t last_sync;      /* seconds since the epoch of the last
	                         * successful sync, 0 = never */
	/* Every UIDVALIDITY seen for this mailbox, in the order seen:
	 * uidvalidities[g] is generation g.  Read-only for callers; the cache
	 * appends to it whenever a record with a new uidvalidity is stored,
	 * and never renumbers, so (id, generation, UID) is a stable inode. */
	uint32_t ngenerations;
	uint32_t *uidvalidities;
};

/* Free a record returned by the cache (one allocation: do not free its
 * fields).  *mb set to NULL; safe with *mb == NULL. */
void cache_mailbox_free(struct cache_mailbox **mb);

/* Add a new mailbox: mb->name (required, 1 byte or more, else -EINVAL; a
 * long one is indexed under a hash, see mbox_name above) and the other
 * fields are stored, mb->id and the generation list are ignored.  A new id is
 * assigned and returned in *id_r.  -EEXIST if the name is already in the
 * index (recorded as a failure: look the name up first). */
int cache_mailbox_add(struct cache_txn *txn, const struct cache_mailbox *mb,
                      uint32_t *id_r);

/* Replace the record of mailbox mb->id (-ENOENT if there is none).  A
 * different mb->name renames it (see cache_mailbox_rename).  A uidvalidity
 * not seen before is appended as the next generation.  The generation list
 * in mb is ignored. */
int cache_mailbox_put(struct cache_txn *txn, const struct cache_mailbox *mb);

/* Update what a SELECT/STATUS/sync learned, leaving name and attributes
 * alone; appends a generation for a new uidvalidity (non-zero).  *gen_r
 * (may be NULL) gets the generation number of uidvalidity. */
int cache_mailbox_set_state(struct cache_txn *txn, uint32_t id,
                            uint32_t uidvalidity, uint32_t uidnext,
                            uint64_t highestmodseq, int64_t last_sync,
                            uint32_t *gen_r);

/* The record of mailbox id; *mb_r owned, free with cache_mailbox_free. */
int cache_mailbox_get(struct cache_txn *txn, uint32_t id,
                      struct cache_mailbox **mb_r);

/* The id of the mailbox the server calls name (exact bytes, any length;
 * -ENOENT for "", which no mailbox has). */
int cache_mailbox_lookup(struct cache_txn *txn, const char *name,
                         uint32_t *id_r);

/* cache_mailbox_lookup + cache_mailbox_get. */
int cache_mailbox_get_by_name(struct cache_txn *txn, const char *name,
                              struct cache_mailbox **mb_r);

/* The generation number of uidvalidity in mailbox id; -ENOENT if that
 * UIDVALIDITY was never seen for it. */
int cache_mailbox_generation(struct cache_txn *txn, uint32_t id,
                             uint32_t uidvalidity, uint32_t *gen_r);

/* Change the server name of mailbox id; the id, its messages and bodies
 * stay.  -EEXIST if new_name belongs to another mailbox (remove that one
 * first).  Renaming a mailbox with children: the server renames them too,
 * and the caller renames each child record. */
int cache_mailbox_rename(struct cache_txn *txn, uint32_t id,
                         const char *new_name);

/* Mark mailbox id gone from the server (or back).  Everything stays,
 * including the name index, so a mailbox that reappears under the same
 * name gets its old id back (and a new generation if its UIDVALIDITY
 * changed, which cache_rematch can then use). */
int cache_mailbox_set_deleted(struct cache_txn *txn, uint32_t id, bool deleted);

/* Purge mailbox id: its record, its name, every message record and body of
 * every generation.  Pending uploads aimed at it are not touched (they hold
 * user data).  The id is not reused.  0 if it did not exist. */
int cache_mailbox_remove(struct cache_txn *txn, uint32_t id);

/* Call cb for each mailbox in id order.  A record that cannot be decoded
 * is left out with a log line (the walk goes on and nothing is recorded in
 * the transaction): one damaged mailbox never hides the others.  mb is
 * borrowed, valid only during the call.  cb returns 0 to go on, > 0 to
 * stop (cache_mailbox_foreach returns 0), < 0 to stop with that error
 * (returned, not recorded in the transaction).  cb may read through txn
 * but must not write. */
int cache_mailbox_foreach(struct cache_txn *txn,
                          int (*cb)(const struct cache_mailbox *mb, void *ctx),
                          void *ctx);

/* The mtime of mailbox id's directory (seconds since the epoch; id 0: the
 * root), as the fs layer last stored it (the last change of its entries:
 * fs/imap/dirtime.h), kept in meta (see the schema above).  Any id may be given; the value stays
 * when the mailbox is removed.  -ENOENT (not recorded) if none is
 * stored. */
int cache_mailbox_mtime_get(struct cache_txn *txn, uint32_t id,
                            int64_t *mtime_r);
int cache_mailbox_mtime_set(struct cache_txn *txn, uint32_t id, int64_t mtime);

/* ------------------------------------------------------------------ */
/* Messages */

struct cache_key {
	uint32_t mailbox_id;
	uint32_t uidvalidity; /* non-zero */
	uint32_t uid;         /* non-zero */
};

/* Pointer fields (strings, arrays, bytes): in a record returned by the
 * cache they are owned by the record, inside its single allocation, and
 * die with *_free(); in a record passed to a put/add call they are
 * borrowed from the caller for the duration of the call. */
struct cache_msg {
	struct cache_key key;
	/* The exact length of the body once size_verified is set (a body
	 * was stored), the server's RFC822.SIZE until then. */
	uint64_t size;
	bool size_verified;
	int64_t internaldate; /* INTERNALDATE, seconds since the epoch */
	int16_t tz_minutes;   /* its zone, minutes east of UTC */
	uint64_t modseq;      /* 0 = no CONDSTORE */
	char *flags;          /* IMAP flags text: "\\Seen \\Flagged $Work" */
	char *subject;        /* decoded header fields, UTF-8 */
	char *from;
	char *date;
	char *message_id; /* as in the header, with the angle brackets */
	uint8_t *header;  /* raw header bytes, may be NULL if none */
	size_t header_len;
};

/* Free a record returned by the cache (one allocation).  *msg set to
 * NULL; safe with *msg == NULL. */
void cache_msg_free(struct cache_msg **msg);

/* Store the record of msg->key (insert or replace).  If the stored record
 * has a verified size and msg does not, the stored size is kept: a
 * listing never undoes what a fetched body proved. */
int cache_msg_put(struct cache_txn *txn, const struct cache_msg *msg);

/* The record of key; *msg_r owned, free with cache_msg_free. */
int cache_msg_get(struct cache_txn *txn, struct cache_key key,
                  struct cache_msg **msg_r);

/* Replace flags and MODSEQ of an existing record (-ENOENT, recorded, if
 * there is none).  flags NULL means "". */
int cache_msg_set_flags(struct cache_txn *txn, struct cache_key key,
                        const char *flags, uint64_t modseq);

/* Delete the record of key and its body, if cached (the message was
 * expunged).  0 if there was nothing. */
int cache_msg_delete(struct cache_txn *txn, struct cache_key key);

/* Call cb for each message of (mailbox_id, uidvalidity) with UID >=
 * uid_from, in UID order.  msg is borrowed, valid only during the call.
 * cb's return as in cache_mailbox_foreach; cb may read through txn but
 * must not write. */
int cache_msg_foreach(struct cache_txn *txn, uint32_t mailbox_id,
                      uint32_t uidvalidity, uint32_t uid_from,
                      int (*cb)(const struct cache_msg *msg, void *ctx),
                      void *ctx);

/* Call cb with the UID of each message of (mailbox_id, uidvalidity) with
 * UID >= uid_from, in UID order, without decoding the records (cheaper
 * than cache_msg_foreach when the UIDs are all that is needed).  cb's
 * return and rules as in cache_msg_foreach. */
int cache_msg_foreach_uid(struct cache_txn *txn, uint32_t mailbox_id,
                          uint32_t uidvalidity, uint32_t uid_from,
                          int (*cb)(uint32_t uid, void *ctx), void *ctx);

/* Number of messages of (mailbox_id, uidvalidity). */
int cache_msg_count(struct cache_txn *txn, uint32_t mailbox_id,
                    uint32_t uidvalidity, size_t *count_r);

/* What generation (mailbox_id, uidvalidity) holds: its message records
 * and the sum of their sizes (exact for a message whose body was stored,
 * RFC822.SIZE otherwise), and how many of them have their body cached
 * and the bodies' lengths.  One walk of the generation's records (with a
 * body lookup each): for status reports, not for hot paths. */
struct cache_usage {
	uint64_t messages;
	uint64_t bytes;
	uint64_t cached;
	uint64_t cached_bytes;
};

int cache_mailbox_usage(struct cache_txn *txn, uint32_t mailbox_id,
                        uint32_t uidvalidity, struct cache_usage *u_r);

/* The first message of (mailbox_id, uidvalidity) with UID >= uid_from
 * whose body is not cached: its UID in *uid_r and its size in *size_r
 * (may be NULL).  -ENOENT (not recorded) when every body from uid_from
 * on is cached. */
int cache_msg_next_uncached(struct cache_txn *txn, uint32_t mailbox_id,
                            uint32_t uidvalidity, uint32_t uid_from,
                            uint32_t *uid_r, uint64_t *size_r);

/* Delete every record and body of (mailbox_id, uidvalidity).  Bodies are
 * mail: call it only when the generation is truly unwanted, and never
 * merely because UIDVALIDITY changed (see cache_rematch).  *count_r (may
 * be NULL) gets the number of records deleted. */
int cache_msg_delete_generation(struct cache_txn *txn, uint32_t mailbox_id,
                                uint32_t uidvalidity, size_t *count_r);

/* ------------------------------------------------------------------ */
/* Bodies: the raw message bytes, exactly as fetched (never altered). */

/* Store the body of key (data borrowed, copied into the cache) and, in the
 * same transaction, set the record's size to len and mark it verified.
 * The record must exist (-ENOENT, recorded, otherwise). */
int cache_body_put(struct cache_txn *txn, struct cache_key key,
                   const void *data, size_t len);

/* 1 if the body of key is cached, 0 if not, or a negative errno. */
int cache_body_has(struct cache_txn *txn, struct cache_key key);

/* The length of the cached body; -ENOENT if it is not cached. */
int cache_body_size(struct cache_txn *txn, struct cache_key key,
                    uint64_t *size_r);

/* Copy up to len bytes starting at offset into buf (borrowed, len bytes);
 * *n_r gets the number copied: less than len at the end of the body, 0 at
 * or past it.  Only those bytes are touched, so a 128 KiB read of a 20 MB
 * body copies 128 KiB.  -ENOENT if the body is not cached. */
int cache_body_read(struct cache_txn *txn, struct cache_key key,
                    uint64_t offset, void *buf, size_t len, size_t *n_r);

/* Call fn once with a pointer to up to len bytes of the body starting at
 * offset (fewer at its end, none past it): straight from the map for a
 * body stored raw, from this thread's decompression buffer for a
 * compressed one (the last value decompressed on a thread is kept, so
 * reading a piece in several reads decompresses it once); copied into a
 * buffer of that size first if the range spans two pieces of a body
 * stored in pieces.  The pointer is valid only during the call (fn must
 * not keep it, nor wait for anything unbounded, nor call cache_body_* on
 * this thread).  fn's return value is returned.  Afterwards the map
 * pages read are dropped from the process's resident set (they stay in
 * the page cache).  -ENOENT if the body is not cached; -EIO (logged) if
 * it is damaged (a value that does not decompress to its length). */
int cache_body_view(struct cache_txn *txn, struct cache_key key,
                    uint64_t offset, size_t len,
                    int (*fn)(void *ctx, const void *data, size_t n),
                    void *ctx);

/* A heap copy of the whole body; *data_r owned (free()), *len_r its
 * length.  A zero-length body gives a non-NULL *data_r.  It costs the
 * body's length in memory: prefer cache_body_read / cache_body_view. */
int cache_body_get(struct cache_txn *txn, struct cache_key key, void **data_r,
                   size_t *len_r);

/* Delete the cached body (the record stays, its size stays verified). */
int cache_body_delete(struct cache_txn *txn, struct cache_key key);

/* Give the cached body of from to the message to, as cache_body_put
 * would (to's record must exist: -ENOENT recorded otherwise), and delete
 * it under from.  A body stored in pieces moves without being copied.
 * -ENOENT, not recorded, if from has no cached body. */
int cache_body_move(struct cache_txn *txn, struct cache_key from,
                    struct cache_key to);

/* A body that arrives in pieces, stored without ever holding all of it.
 *
 *   cache_body_stream_new()     no I/O
 *   cache_body_stream_write()*  buffers; whenever it holds 16 chunks
 *                               (4 MiB) it commits them in a write
 *                               transaction of its own (cache_run_write),
 *                               so it must not be called while the
 *                               thread holds a transaction
 *   cache_body_stream_finish()  or cache_pop_add_stream(): in the
 *                               caller's write transaction, the body
 *                               becomes the message's
 *   cache_body_stream_close()   always; frees, and deletes the pieces of
 *                               a body that was not stored (finish not
 *                               called, or its transaction not committed)
 *
 * Until the transaction of finish commits, no reader sees any of it; if
 * mailfs dies before, the pieces are deleted at the next cache_open.  At
 * most 4 MiB are held in memory, plus what the caller's transaction
 * holds.  A stream is used by one thread at a time. */
struct cache_body_stream;

int cache_body_stream_new(struct cache *cache, struct cache_body_stream **s_r);

/* Append len bytes (borrowed).  The first failure (-ENOMEM, -ENOSPC, -EIO,
 * -ESTALE if the pieces were deleted meanwhile by a cache_open of another
 * process) is sticky: later writes and the finish return it. */
int cache_body_stream_write(struct cache_body_stream *s, const void *data,
                            size_t len);

/* Bytes written so far. */
uint64_t cache_body_stream_size(const struct cache_body_stream *s);

/* Store what s holds as the body of key, in txn, as cache_body_put would
 * (the record must exist; its size becomes the stream's length and
 * verified).  s stays the caller's: close it after the commit.  If the
 * transaction is retried (cache_run_write), finish may be called again
 * with the same stream. */
int cache_body_stream_finish(struct cache_txn *txn, struct cache_body_stream *s,
                             struct cache_key key);

/* Free s (*s set to NULL; NULL is fine).  Runs a short write transaction
 * of its own when pieces of s are in the cache and no committed finish
 * took them: call it without holding a transaction.  Failures are
 * logged (the next cache_open deletes the pieces). */
void cache_body_stream_close(struct cache_body_stream **s);

/* ------------------------------------------------------------------ */
/* UIDVALIDITY change */

struct cache_rematch_stats {
	size_t matched;   /* old bodies given to a new-generation message */
	size_t unmatched; /* old bodies with no match, kept where they were */
};

enum cache_rematch_flags {
	/* Keep the old generation's copy of a matched body too (default:
	 * move it, freeing the space). */
	CACHE_REMATCH_COPY = 1u << 0,
};

/* After the records of the generation uidvalidity of mailbox_id have been
 * listed: for each cached body of any other generation of that mailbox,
 * find a message of the new generation with the same Message-ID
 * (non-empty, exact bytes) and a size equal to the old body's length, whose
 * body is not cached yet, and give it the body (cache_body_put semantics).
 * A duplicate (Message-ID, size) pair is matched one to one in UID order.
 * Bodies that match nothing stay under their old key, readable as before.
 * Nothing is ever deleted except, when moving, the old copy of a body that
 * now lives under its new key.  *stats_r (may be NULL) gets the counts, for
 * the caller's log line. */
int cache_rematch(struct cache_txn *txn, uint32_t mailbox_id,
                  uint32_t uidvalidity, unsigned flags,
                  struct cache_rematch_stats *stats_r);

/* ------------------------------------------------------------------ */
/* POP3: the append-only download list of the account.  A "UIDL" here is
 * the name the caller files a message under: the server's UIDL, or what
 * fs/pop/poller.c makes of it where the server's UIDLs do not tell messages
 * apart. */

/* Pointer fields (strings, arrays, bytes): in a record returned by the
 * cache they are owned by the record, inside its single allocation, and
 * die with *_free(); in a record passed to a put/add call they are
 * borrowed from the caller for the duration of the call. */
struct cache_pop {
	uint32_t num;           /* download number: 1, 2, 3..., never reused */
	char *uidl;             /* the UIDL it was added under */
	uint64_t size;          /* exact body length */
	int64_t downloaded;     /* seconds since the epoch */
	bool deleted_on_server; /* DELE + QUIT done (pop_keep) */
};

/* Longest name a POP3 message can be filed under (cache_pop_add,
 * cache_pop_alias); a longer one is never found (cache_pop_lookup). */
#define CACHE_POP_UIDL_MAX 255

/* Free a record returned by the cache (one allocation); *pop set to NULL;
 * safe with *pop == NULL. */
void cache_pop_free(struct cache_pop **pop);

/* Record a downloaded message: assign the next download number (*num_r),
 * store the record, the UIDL index entry and the body (key
 * CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY, number) in this
 * transaction.  uidl: 1..CACHE_POP_UIDL_MAX bytes (-EINVAL otherwise);
 * -EEXIST (recorded) if the UIDL is already known. */
int cache_pop_add(struct cache_txn *txn, const char *uidl, const void *body,
                  size_t len, int64_t downloaded, uint32_t *num_r);

/* cache_pop_add with the body in a stream (see cache_body_stream_finish:
 * close s after the commit). */
int cache_pop_add_stream(struct cache_txn *txn, const char *uidl,
                         struct cache_body_stream *s, int64_t downloaded,
                         uint32_t *num_r);

/* The record of download number num; *pop_r owned. */
int cache_pop_get(struct cache_txn *txn, uint32_t num,
                  struct cache_pop **pop_r);

/* The download number of uidl; -ENOENT if never downloaded. */
int cache_pop_lookup(struct cache_txn *txn, const char *uidl, uint32_t *num_r);

/* Let uidl (1..CACHE_POP_UIDL_MAX bytes) name download number num too,
 * so that cache_pop_lookup(uidl) finds it: for a message the caller has
 * come to know under another name than the one it was added under
 * (fs/pop/poller.c).
 * 0 if uidl already names num; -EEXIST (recorded) if it names another
 * number; -ENOENT (recorded) if num has no record. */
int cache_pop_alias(struct cache_txn *txn, const char *uidl, uint32_t num);

/* Call cb for each UIDL of the index that starts with prefix (non-empty),
 * in byte order, with the number it names.  uidl is a NUL-terminated
 * copy, valid during the call.  cb rules as in cache_mailbox_foreach. */
int cache_pop_uidl_foreach(struct cache_txn *txn, const char *prefix,
                           int (*cb)(const char *uidl, uint32_t num, void *ctx),
                           void *ctx);

/* Set or clear the deleted-on-server flag. */
int cache_pop_set_deleted(struct cache_txn *txn, uint32_t num, bool deleted);

/* Call cb for each record with number >= num_from in download order (cb
 * rules as in cache_mailbox_foreach). */
int cache_pop_foreach(struct cache_txn *txn, uint32_t num_from,
                      int (*cb)(const struct cache_pop *pop, void *ctx),
                      void *ctx);

/* Marks that fs/pop/poller.c keeps about a UIDL or an identity s (any
 * NUL-terminated string), kept in meta under a hash of s (see the schema
 * above): */
enum cache_pop_mark {
	CACHE_POP_DUP = 0,  /* "popdup.": the server lists UIDL s for more
	                     * than one message */
	CACHE_POP_CMP = 1,  /* "popcmp.": copies of identity s were listed
	                     * and not all cached: compare by bytes */
	CACHE_POP_SIZE = 2, /* "popsize.": the size the server lists for
	                     * the message filed as s */
};

/* The value of mark for s; -ENOENT (not recorded) if none is stored.
 * -EINVAL for an unknown mark or a NULL s. */
int cache_pop_mark_get(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t *val_r);
int cache_pop_mark_set(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t val);

/* ------------------------------------------------------------------ */
/* Pending writes: uploads (APPEND) not yet confirmed by the server.  They
 * are committed before the upload starts and deleted only after the server
 * confirmed it, so a crash or a dead server loses nothing. */

enum cache_pending_state {
	/* Being written: its close was never seen, so it may be cut short
	 * (a crash); never to be sent as it is.  Records of caches written
	 * before CACHE_PENDING_CLOSED existed say NEW for closed files too. */
	CACHE_PENDING_NEW = 0,
	CACHE_PENDING_SENT = 1,   /* closed; APPEND issued, no answer seen */
	CACHE_PENDING_FAILED = 2, /* the server refused it; kept for the user */
	CACHE_PENDING_CLOSED = 3, /* written and closed, not sent yet */
};

/* Pointer fields (strings, arrays, bytes): in a record returned by the
 * cache they are owned by the record, inside its single allocation, and
 * die with *_free(); in a record passed to a put/add call they are
 * borrowed from the caller for the duration of the call. */
struct cache_pending {
	uint64_t seq;         /* assigned by cache_pending_add; 1, 2, ... */
	uint32_t mailbox_id;  /* target mailbox */
	uint32_t state;       /* enum cache_pending_state */
	char *flags;          /* flags for the APPEND (user.mail.flags set
	                       * on the file being written), "" for none */
	char *name;           /* the name it was written under, "" if unknown
	                       * (records of older caches) */
	int64_t internaldate; /* 0 = let the server choose */
	int16_t tz_minutes;
	int64_t created; /* seconds since the epoch */
	uint64_t size;   /* length of the message bytes */
	uint8_t *data;   /* the message bytes; NULL in listings */
};

/* Free a record returned by the cache (one allocation); *p set to NULL;
 * safe with *p == NULL. */
void cache_pending_free(struct cache_pending **p);

/* Store an upload: p->mailbox_id, state, flags, name (NULL: ""),
 * internaldate, tz_minutes, created, and p->size bytes at p->data (NULL allowed
 * when size is 0). p->seq is ignored; the new sequence number goes to *seq_r.
 */
int cache_pending_add(struct cache_txn *txn, const struct cache_pending *p,
                      uint64_t *seq_r);

/* Add one write to upload seq without rewriting what it holds: len bytes
 * at offset off, over what is there and past its end (a gap reads as
 * zeros).  Writes are applied in the order they were added.  A file being
 * written is kept this way write by write.  -ENOENT (recorded) if there is
 * no upload seq. */
int cache_pending_write(struct cache_txn *txn, uint64_t seq, uint64_t off,
                        const void *data, size_t len);

/* The upload seq, its writes applied; with_data false leaves ->data NULL
 * (->size still set). */
int cache_pending_get(struct cache_txn *txn, uint64_t seq, bool with_data,
                      struct cache_pending **p_r);

/* Change the state of upload seq (-ENOENT, recorded, if there is none). */
int cache_pending_set_state(struct cache_txn *txn, uint64_t seq,
                            uint32_t state);

/* Move upload seq to mailbox_id under name (a rename), keeping its bytes
 * and writes (-ENOENT, recorded, if there is none). */
int cache_pending_set_target(struct cache_txn *txn, uint64_t seq,
                             uint32_t mailbox_id, const char *name);

/* Set the flags upload seq is to be sent with (the attribute
 * user.mail.flags set on the file), keeping everything else (-ENOENT,
 * recorded, if there is none). */
int cache_pending_set_flags(struct cache_txn *txn, uint64_t seq,
                            const char *flags);

/* Forget upload seq (and its writes) once the server has it. 0 if it was
 * not there. */
int cache_pending_delete(struct cache_txn *txn, uint64_t seq);

/* Call cb for each upload in sequence order, without the message bytes
 * (p->data NULL; cb rules as in cache_mailbox_foreach). */
int cache_pending_foreach(struct cache_txn *txn,
                          int (*cb)(const struct cache_pending *p, void *ctx),
                          void *ctx);

/* ------------------------------------------------------------------ */
/* One-shot helpers: each runs one short transaction of its own (writes
 * through cache_run_write, so a full map is grown and retried once). */

int cache_body_read_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, void *buf, size_t len, size_t *n_r);
int cache_body_view_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, size_t len,
                         int (*fn)(void *ctx, const void *data, size_t n),
                         void *ctx);
int cache_body_size_once(struct cache *cache, struct cache_key key,
                         uint64_t *size_r);
int cache_body_put_once(struct cache *cache, struct cache_key key,
                        const void *data, size_t len);
int cache_msg_get_once(struct cache *cache, struct cache_key key,
                       struct cache_msg **msg_r);
int cache_msg_set_flags_once(struct cache *cache, struct cache_key key,
                             const char *flags, uint64_t modseq);
int cache_pop_add_once(struct cache *cache, const char *uidl, const void *body,
                       size_t len, int64_t downloaded, uint32_t *num_r);
int cache_pending_add_once(struct cache *cache, const struct cache_pending *p,
                           uint64_t *seq_r);
int cache_pending_delete_once(struct cache *cache, uint64_t seq);

#endif
