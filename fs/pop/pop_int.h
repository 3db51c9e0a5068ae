/* Inside the poller of a POP3 mount (fs/pop/): what its files share.
 * Nothing outside fs/pop/ includes this; the rest of mailfs uses
 * fs/pop/poller.h.
 *
 * Files, each one concept, and who calls whom (no call goes back up):
 *
 *   poller.c  the thread, its sessions every poll and on demand (log in,
 *             list, identify, retrieve, DELE under pop_keep, QUIT), and
 *             the public calls of poller.h.
 *   retr.c    retrieving messages and storing them in the cache: the
 *             RETR sink, the comparison of the bytes retrieved with the
 *             cached copies and versions, the new versions of a changed
 *             message.
 *   ident.c   telling messages apart: identities (UIDL, reused UIDLs, the
 *             SHA-256 of size and header), the popdup., popcmp. and
 *             popsize. marks, which listed message is which cached one
 *             (and which changed on the server), the names messages are
 *             filed under, and which header fields a comparison ignores.
 *
 *   poller.c -> retr.c, ident.c;  retr.c -> ident.c;  ident.c -> none
 *
 * Threads.  Everything declared here runs on the poller thread, within a
 * session (poller.c: session), except what the comment of a function says.
 * The fs_pop_retr_* sink callbacks run inside pop3_retr_many, the *_fn
 * functions inside cache_run_read or cache_run_write, both on the poller
 * thread.  The public calls of poller.h (fs_pop_start, fs_pop_stop,
 * fs_pop_check, fs_pop_ready) run on other threads, and take p->lock for
 * the fields below that it guards.
 *
 * Ownership: a struct drop (and what it points to) belongs to the session
 * that made it, freed with fs_pop_drop_free; a struct retr_ctx to the
 * session too (its stream and buffer are freed by session). */
#ifndef MAILFS_FS_POP_POP_INT_H
#define MAILFS_FS_POP_POP_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs/pop/poller.h"

struct pop_waiter;

/* One per mount.  p->lock guards stop, kick, ready and waiters.  c and
 * first are set by the poller thread (without the lock), which alone uses
 * them and warned_no_uidl; fs_pop_stop reads c under the lock to
 * interrupt a session (pop3_shutdown), and frees both after the join. */
struct fs_pop {
	struct mailfs *fs;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	bool kick;
	bool ready;
	struct pop_waiter *waiters; /* run after the next session */
	struct pop3_client *c;      /* owned; the session's connection: set
	                               and taken away under lock (stop wakes
	                               it from another thread), read by the
	                               poller thread without it */
	struct pop3_client *first;  /* owned until the first session */
	bool warned_no_uidl;
};

/* How a message of the maildrop is known in the cache (the name it is
 * filed under, cache_pop_lookup), its identity:
 *
 * - its UIDL, as long as the server has never listed that UIDL for two
 *   messages (a UIDL too long for a name, "uidl-sha256 HEX", see
 *   name_base);
 * - once it has (a server bug, remembered in the meta value "popdup.*"),
 *   "UIDL sha256:HEX", where HEX hashes the message's size and header
 *   (TOP n 0), so that the copies of a UIDL are told apart whichever of
 *   them leaves the maildrop first;
 * - on a server without UIDL, "sha256:HEX".
 *
 * Messages with the same identity (the same UIDL, size and header) are
 * filed as ID, ID#1, ID#2...  Which of them is which cannot be told from
 * the listing: when more are listed than are cached, all are retrieved
 * and compared with the cached ones by their bytes (fs_pop_retr_end), so that
 * none is stored twice or taken for another.  Messages filed under the
 * bare UIDL before it was seen reused (as UIDL, UIDL#1... by an older
 * mailfs) are matched by the hash of their cached header, else by their
 * bytes, and then filed under their identity too.
 *
 * A message under a UIDL that is cached is taken as cached as long as
 * the server lists it with the size it had ("popsize.*" remembers that
 * size where it is not the cached body's length).  When the size
 * differs, the server has changed the message: it is retrieved and
 * compared with the cached versions of that UIDL, ignoring the header
 * fields that mbox-based servers rewrite (volatile_field).  If it is one
 * of them, only its new size is remembered; otherwise it is stored as a
 * new message, filed as "UIDL changed", "UIDL changed#1"..., and both
 * versions are kept.  Until then it is not cached: never DELEted. */

/* One message of the server's maildrop in this session. */
struct drop_msg {
	unsigned num;
	char *uidl; /* owned: the server's UIDL, NULL when it has none */
	char *id;   /* owned: its identity (see above) */
	uint64_t size;
	bool reused; /* the server lists its UIDL for other messages too */
	bool keyed;  /* id hashes its size and header */
	bool skip;   /* not identified: left alone in this session */
	bool cached;
	bool changed;   /* cached, but listed with another size (see above) */
	uint64_t known; /* changed: the size it had */
	size_t group;   /* keyed: index in drop.g */
	uint32_t dl;    /* cached: its download number */
	int64_t downloaded; /* cached: when (for copies: the newest one) */
};

/* The messages of one keyed identity in this session. */
struct group {
	const char *id;   /* borrowed from its messages */
	const char *uidl; /* borrowed, NULL without UIDL */
	size_t first;     /* its messages: drop.by[first .. first + listed) */
	size_t listed;
	size_t cached;  /* its copies in the cache (struct cand) */
	size_t given;   /* copies given to its messages */
	int64_t newest; /* when its newest copy was downloaded */
	bool compare;   /* retrieve them all and compare (see above) */
	bool unsure;    /* "popcmp." set: compare until all are cached */
	bool note;      /* set "popcmp." before retrieving */
};

#define NO_GROUP SIZE_MAX

/* A cached message that may be one of the listed ones: a copy of a
 * group, or one filed under the bare UIDL of a group (legacy), which
 * belongs to no group until its header or its bytes match one. */
struct cand {
	uint32_t dl;
	uint64_t size;
	int64_t downloaded;
	size_t group;     /* NO_GROUP: not matched */
	const char *uidl; /* borrowed: a legacy one's UIDL */
	bool legacy;      /* not filed under its group's identity yet */
	bool claimed;     /* found to be a listed message by its bytes */
};

struct drop {
	struct drop_msg *v;
	size_t n, cap;
	struct drop_msg **by; /* owned: the identified messages by id */
	size_t nby;
	struct group *g; /* owned */
	size_t ng;
	struct cand *c; /* owned */
	size_t nc, ccap;
	bool oom;
};

/* File a message: under its UIDL, or as the next copy of its identity;
 * alias: a cached message found to be it, filed (again) under that
 * name, nothing stored. */
struct filing {
	const char *id;
	bool copy;
	uint32_t alias;
	const void *body;
	size_t len;
	struct cache_body_stream *stream; /* the body, instead of body */
	uint64_t listed;                  /* !copy: the size the server lists */
	int64_t when;
	uint32_t dl; /* out: its download number */
};

/* RETR sink: a message that only needs storing goes to the cache as it
 * arrives (a cache_body_stream, committed with its record at the end);
 * one that must be compared with cached ones by its bytes (retr_changed,
 * same_bytes) is collected in memory and compared when whole. */
struct retr_ctx {
	struct fs_pop *p;
	struct drop *d;
	struct cache_body_stream *st; /* owned, or NULL: in buf */
	char *buf;
	size_t len, cap;
	size_t stored;
	int rc;
};

/* ident.c: the listing and identities. */

/* Free what d holds; *d is all zero after. */
void fs_pop_drop_free(struct drop *d);

/* pop3_uidl_all and pop3_list_all callbacks: ctx is a struct drop. */
void fs_pop_uidl_cb(void *ctx, unsigned num, const char *uid);
void fs_pop_list_cb(void *ctx, unsigned num, uint64_t size);

/* On a server without UIDL: d holds every message, identified by a hash
 * of its size and header (TOP n 0). */
int fs_pop_hash_ids(struct fs_pop *p, struct drop *d, struct proto_err *err);

/* With UIDL, after the listing: reused UIDLs remembered ("popdup.") and
 * their messages identified by size and header. */
int fs_pop_reused_ids(struct fs_pop *p, struct drop *d, struct proto_err *err);

/* What is cached, what must be retrieved, and how (sets cached, changed,
 * dl, downloaded of d's messages, and the groups' compare). */
int fs_pop_match_cache(struct fs_pop *p, struct drop *d);

/* Is every message of the unsure group g cached now?  Then settle_fn (a
 * cache_run_write function, ctx d) marks the settled groups sure. */
bool fs_pop_settled(const struct drop *d, const struct group *g);
int fs_pop_settle_fn(struct cache_txn *txn, void *ctx);

/* ident.c: names in the cache (inside a transaction txn). */

/* "ID changed": the name of the changed versions of id.  *name_r owned. */
int fs_pop_changed_base(const char *id, char **name_r);

/* Cached message dl as a candidate in d of group (NO_GROUP: a legacy one
 * of uidl, borrowed); the messages filed as base, base#1...: the same. */
int fs_pop_add_cand(struct cache_txn *txn, struct drop *d, uint32_t dl,
                    size_t group, const char *uidl);
int fs_pop_find_copies(struct cache_txn *txn, struct drop *d, const char *base,
                       size_t group, const char *uidl);

/* The first free name of id, id#1, id#2...  *name_r owned. */
int fs_pop_free_name(struct cache_txn *txn, const char *id, char **name_r);

/* Remember ("popsize.") the size the server lists for the message filed
 * as id. */
int fs_pop_remember_size(struct cache_txn *txn, const char *id, uint64_t size);

/* A cache_run_write function: file (and store) the struct filing ctx. */
int fs_pop_file_fn(struct cache_txn *txn, void *ctx);

/* Are a and b the same message but for the header fields that mbox-based
 * servers rewrite?  Pure: any thread. */
bool fs_pop_same_but_volatile(const char *a, size_t an, const char *b,
                              size_t bn);

/* retr.c: the struct pop3_sink of a session's RETRs (ctx: a struct
 * retr_ctx).  end keeps a failure in r->rc (the session's result); the
 * other messages go on. */
int fs_pop_retr_begin(void *ctx, unsigned num);
int fs_pop_retr_data(void *ctx, unsigned num, const char *buf, size_t len);
void fs_pop_retr_end(void *ctx, unsigned num, int rc,
                     const struct proto_err *e);

#endif
