#include "fs/net/sync.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fs/inval.h"
#include "fs/imap/newfile.h"
#include "proto/log.h"
#include "proto/mime.h"

/* Read-ahead bounds for one body fetch. */
#define BATCH_MAX_MSGS  512
#define BATCH_MAX_BYTES (8u * 1024 * 1024)
/* Fetched bodies are committed to the cache in groups of about this many
 * bytes (one fsync per group), or at once when someone waits for one. */
#define COMMIT_BYTES    (1u * 1024 * 1024)
/* A directory being read file after file keeps the next batch coming
 * for this long after the last message someone waited for. */
#define WALK_MS         10000
#define BACKOFF_MIN_MS  1000
#define BACKOFF_MAX_MS  60000
/* A body whose fetch just failed fails again at once for this long: the
 * kernel follows a failed read-ahead with a read of its first page, and
 * one stalled server must cost the reader one timeout, not two. */
#define FAILED_MS       500
#define FAILED_MAX      64

enum job_kind {
	JOB_LIST,
	JOB_LISTING,
	JOB_BODY,
	JOB_CALL,
};

struct waiter {
	fs_sync_cb cb;
	void *ctx;
	uint32_t uid;   /* JOB_BODY: the message waited for */
	uint64_t until; /* JOB_BODY: a READ of the bytes before this, or 0 */
	int64_t since;  /* ms, monotonic: when it began to wait */
	struct waiter *next;
};

struct job {
	enum job_kind kind;
	uint32_t id;
	uint32_t uidvalidity;
	uint32_t *uids; /* owned; JOB_BODY: asked for, then the batch */
	size_t nuids, capuids;
	bool running;
	bool prefetch;  /* read-ahead nobody waits for yet */
	uint32_t *gone; /* JOB_LISTING: UIDs whose names are gone */
	size_t ngone;
	bool dir_changed; /* JOB_LISTING: names came or went */
	fs_sync_fn fn;    /* JOB_CALL */
	void *fn_ctx;
	struct waiter *waiters; /* owned list */
	struct job *next;
};

struct worker {
	struct fs_sync *s;
	pthread_t thread;
	bool started;
	struct imap_client *c; /* owned */
	struct job *job;       /* running, or NULL */
	/* ms, monotonic: when the server last sent this worker anything. */
	_Atomic int64_t input_ms;
	bool live; /* counted in s->live (under s->lock) */
};

struct failed_body {
	uint32_t id, uidvalidity, uid;
	int64_t until; /* ms, monotonic */
};

struct fs_sync {
	struct mailfs *fs;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *jobs; /* queued and running, oldest first */
	bool stop;
	struct worker *workers;
	unsigned nworkers;
	/* The server caps the account's connections: workers it refused
	 * leave the pool for the rest of the mount. */
	unsigned active;        /* workers not retired */
	unsigned live;          /* workers with a connection now */
	unsigned retire_wanted; /* idle workers asked to leave */
	int64_t down_until;     /* ms, monotonic; 0: not backing off */
	uint32_t walk_id;       /* the mailbox being read file after file */
	int64_t walk_until;     /* ms, monotonic */
	unsigned backoff;       /* ms */
	/* The server advertises CONDSTORE but its MODSEQs cannot be trusted:
	 * every resync fetches all flags from now on. */
	bool condstore_broken;
	/* The thread that gives up on waiters past their deadline. */
	pthread_t reaper;
	bool reaper_started;
	pthread_cond_t reaper_cond;
	int64_t timeout_ms;
	struct failed_body failed[FAILED_MAX]; /* a ring */
	unsigned nfailed;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp_u32_key(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static const char *job_name(enum job_kind k)
{
	return k == JOB_LIST      ? "mailbox list"
	       : k == JOB_LISTING ? "listing"
	       : k == JOB_BODY    ? "fetch"
	                          : "change";
}

/* --- mailbox list ------------------------------------------------------ */

struct list_entry {
	char *name;
	char delim;
	uint32_t attrs;       /* CACHE_MBOX_* */
	uint32_t uidvalidity; /* from STATUS when it may be a rename, or 0 */
	bool skip;            /* could not be stored: left as it is */
};

struct list_result {
	struct list_entry *v;
	size_t n, cap;
	bool oom;
	/* Set by store_list when one step failed: the entry (index) or the
	 * vanished mailbox (id) it was about. */
	size_t failed;
	uint32_t failed_id;
	uint32_t *keep; /* owned: vanished ids not to be marked deleted */
	size_t nkeep;
};

static uint32_t cache_attrs(unsigned a)
{
	static const struct {
		unsigned imap;
		uint32_t cache;
	} map[] = {
	        {IMAP_MBOX_NOSELECT, CACHE_MBOX_NOSELECT},
	        {IMAP_MBOX_NONEXISTENT, CACHE_MBOX_NONEXISTENT},
	        {IMAP_MBOX_HASCHILDREN, CACHE_MBOX_HASCHILDREN},
	        {IMAP_MBOX_HASNOCHILDREN, CACHE_MBOX_HASNOCHILDREN},
	        {IMAP_MBOX_NOINFERIORS, CACHE_MBOX_NOINFERIORS},
	        {IMAP_MBOX_MARKED, CACHE_MBOX_MARKED},
	        {IMAP_MBOX_UNMARKED, CACHE_MBOX_UNMARKED},
	        {IMAP_MBOX_SUBSCRIBED, CACHE_MBOX_SUBSCRIBED},
	        {IMAP_MBOX_REMOTE, CACHE_MBOX_REMOTE},
	        {IMAP_MBOX_ALL, CACHE_MBOX_ALL},
	        {IMAP_MBOX_ARCHIVE, CACHE_MBOX_ARCHIVE},
	        {IMAP_MBOX_DRAFTS, CACHE_MBOX_DRAFTS},
	        {IMAP_MBOX_FLAGGED, CACHE_MBOX_FLAGGED},
	        {IMAP_MBOX_JUNK, CACHE_MBOX_JUNK},
	        {IMAP_MBOX_SENT, CACHE_MBOX_SENT},
	        {IMAP_MBOX_TRASH, CACHE_MBOX_TRASH},
	};
	uint32_t r = 0;

	for (size_t i = 0; i < sizeof(map) / sizeof(*map); i++)
		if (a & map[i].imap)
			r |= map[i].cache;
	return r;
}

static void list_add(struct list_result *l, const char *name, char delim,
                     uint32_t attrs)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].name, name) == 0)
			return;
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 32;
		struct list_entry *nv = realloc(l->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			l->oom = true;
			return;
		}
		l->v = nv;
		l->cap = ncap;
	}
	l->v[l->n].name = strdup(name);
	if (l->v[l->n].name == NULL) {
		l->oom = true;
		return;
	}
	l->v[l->n].delim = delim;
	l->v[l->n].attrs = attrs;
	l->v[l->n].uidvalidity = 0;
	l->v[l->n].skip = false;
	l->n++;
}

static void list_cb(void *ctx, const struct imap_mailbox *mb)
{
	list_add(ctx, mb->name, mb->delim, cache_attrs(mb->attrs));
}

static void list_free(struct list_result *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	free(l->keep);
}

struct vanish_ctx {
	struct list_result *l;
	uint32_t *ids;
	size_t n, cap;
	bool oom;
};

static int vanish_cb(const struct cache_mailbox *mb, void *ctx)
{
	struct vanish_ctx *v = ctx;

	if (mb->deleted)
		return 0;
	for (size_t i = 0; i < v->l->n; i++)
		if (strcmp(v->l->v[i].name, mb->name) == 0)
			return 0;
	if (v->n == v->cap) {
		size_t ncap = v->cap ? v->cap * 2 : 16;
		uint32_t *n = realloc(v->ids, ncap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		v->ids = n;
		v->cap = ncap;
	}
	v->ids[v->n++] = mb->id;
	return 0;
}

/* The vanished mailbox (a cached one the list no longer has) that new
 * entry e is, renamed elsewhere: same UIDVALIDITY.  0 if none. */
static uint32_t renamed_from(struct cache_txn *txn, struct vanish_ctx *v,
                             const struct list_entry *e)
{
	for (size_t i = 0; e->uidvalidity != 0 && i < v->n; i++) {
		struct cache_mailbox *old = NULL;
		bool same = cache_mailbox_get(txn, v->ids[i], &old) == 0 &&
		            old->uidvalidity == e->uidvalidity;
		uint32_t id = v->ids[i];

		cache_mailbox_free(&old);
		if (same) {
			v->ids[i] = v->ids[--v->n];
			return id;
		}
	}
	return 0;
}

/* Store what the list says of entry e. */
static int store_entry(struct cache_txn *txn, struct vanish_ctx *v,
                       const struct list_entry *e)
{
	struct cache_mailbox *old = NULL;
	uint32_t from;
	int rc;

	rc = cache_mailbox_get_by_name(txn, e->name, &old);
	if (rc == -ENOENT && (from = renamed_from(txn, v, e)) != 0) {
		/* Renamed elsewhere: its id, cached messages and bodies go
		 * with the new name. */
		log_info("mailbox id %u was renamed to %s on the server; its "
		         "cached mail goes with it",
		         from, e->name);
		rc = cache_mailbox_rename(txn, from, e->name);
		if (rc == 0)
			rc = cache_mailbox_get(txn, from, &old);
	}
	if (rc == -ENOENT) {
		struct cache_mailbox mb = {
		        .name = e->name,
		        .delim = e->delim,
		        .attrs = e->attrs,
		};
		uint32_t id;

		return cache_mailbox_add(txn, &mb, &id);
	}
	if (rc == 0 && (old->deleted || old->delim != e->delim ||
	                old->attrs != e->attrs)) {
		struct cache_mailbox mb = *old;

		mb.delim = e->delim;
		mb.attrs = e->attrs;
		mb.deleted = false;
		rc = cache_mailbox_put(txn, &mb);
	}
	cache_mailbox_free(&old);
	return rc;
}

static bool kept(const struct list_result *l, uint32_t id)
{
	for (size_t i = 0; i < l->nkeep; i++)
		if (l->keep[i] == id)
			return true;
	return false;
}

/* One write transaction for the whole list.  A step that fails names its
 * entry in l->failed (or its vanished mailbox in l->failed_id), so that
 * fs_sync_list can leave that one out and store the rest. */
static int store_list(struct cache_txn *txn, void *ctx)
{
	struct list_result *l = ctx;
	struct vanish_ctx v = {.l = l};
	int rc;

	l->failed = SIZE_MAX;
	l->failed_id = 0;
	rc = cache_mailbox_foreach(txn, vanish_cb, &v);
	for (size_t i = 0; i < l->n && rc == 0; i++) {
		if (l->v[i].skip)
			continue;
		rc = store_entry(txn, &v, &l->v[i]);
		if (rc < 0)
			l->failed = i;
	}
	for (size_t i = 0; i < v.n && rc == 0; i++) {
		if (kept(l, v.ids[i]))
			continue;
		log_info("mailbox id %u is gone from the server; its cached "
		         "mail is kept but no longer shown",
		         v.ids[i]);
		rc = cache_mailbox_set_deleted(txn, v.ids[i], true);
		if (rc < 0)
			l->failed_id = v.ids[i];
	}
	free(v.ids);
	return rc;
}

/* Errors that are about the cache as a whole, not about one mailbox:
 * leaving a mailbox out would not help. */
static bool cache_wide(int rc)
{
	return rc == -ENOSPC || rc == -ENOMEM || rc == -EAGAIN ||
	       rc == -E2BIG || rc == -ECHILD || rc == -EROFS;
}

/* Whether the skip of mailbox name is news: a list is stored again and
 * again, and the same damaged mailbox is worth one warning, not one per
 * LIST.  Remembers a bounded number of names. */
static bool skip_is_news(const char *name)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static char *seen[64];
	static size_t nseen;
	bool news = true;

	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < nseen && news; i++)
		news = strcmp(seen[i], name) != 0;
	if (news && nseen < sizeof(seen) / sizeof(*seen) &&
	    (seen[nseen] = strdup(name)) != NULL)
		nseen++;
	pthread_mutex_unlock(&lock);
	return news;
}

/* Store the list; a mailbox that cannot be stored, for whatever reason,
 * is left out with a log line (and keeps what the cache had of it), and
 * the store is tried again without it: the rest always shows.  Each try
 * leaves out one more, so this ends. */
static int store_list_all(struct mailfs *fs, struct list_result *l)
{
	for (;;) {
		int rc = cache_run_write(fs->cache, store_list, l);

		if (rc >= 0 || cache_wide(rc))
			return rc;
		if (l->failed < l->n) {
			const char *name = l->v[l->failed].name;

			l->v[l->failed].skip = true;
			log_msg(skip_is_news(name) ? LOG_WARNING : LOG_DEBUG,
			        "mailbox %s cannot be stored in the cache (%s); "
			        "it is left out of the mailbox list",
			        name, strerror(-rc));
		} else if (l->failed_id != 0 && !kept(l, l->failed_id)) {
			uint32_t *nk =
			        realloc(l->keep, (l->nkeep + 1) * sizeof(*nk));

			if (nk == NULL)
				return -ENOMEM;
			l->keep = nk;
			l->keep[l->nkeep++] = l->failed_id;
			log_warn("mailbox id %u is gone from the server but "
			         "cannot be marked so in the cache (%s)",
			         l->failed_id, strerror(-rc));
		} else {
			return rc;
		}
	}
}

/* Which listed names are new to the cache, and are there mailboxes the
 * list no longer has?  Both at once look like renames. */
struct rename_scan {
	struct list_result *l;
	bool *fresh; /* per entry: unknown to the cache */
	size_t nfresh, nvanished;
};

static int vanished_count_cb(const struct cache_mailbox *mb, void *ctx)
{
	struct rename_scan *r = ctx;

	if (mb->deleted || mb->uidvalidity == 0)
		return 0;
	for (size_t i = 0; i < r->l->n; i++)
		if (strcmp(r->l->v[i].name, mb->name) == 0)
			return 0;
	r->nvanished++;
	return 0;
}

static int rename_scan_read(struct cache_txn *txn, void *ctx)
{
	struct rename_scan *r = ctx;

	for (size_t i = 0; i < r->l->n; i++) {
		struct cache_mailbox *mb = NULL;
		int rc = cache_mailbox_get_by_name(txn, r->l->v[i].name, &mb);

		cache_mailbox_free(&mb);
		if (rc == -ENOENT &&
		    !(r->l->v[i].attrs & CACHE_MBOX_NOSELECT)) {
			r->fresh[i] = true;
			r->nfresh++;
		} else if (rc < 0 && rc != -ENOENT) {
			return rc;
		}
	}
	return cache_mailbox_foreach(txn, vanished_count_cb, r);
}

/* A mailbox renamed elsewhere keeps its UIDVALIDITY (RFC 3501 lets a
 * server keep it, and they do): ask STATUS of the new names, only when
 * some cached mailbox vanished in the same list. */
static void find_renames(struct mailfs *fs, struct imap_client *c,
                         struct list_result *l)
{
	struct rename_scan r = {.l = l};

	r.fresh = calloc(l->n ? l->n : 1, sizeof(*r.fresh));
	if (r.fresh == NULL ||
	    cache_run_read(fs->cache, rename_scan_read, &r) < 0 ||
	    r.nfresh == 0 || r.nvanished == 0) {
		free(r.fresh);
		return;
	}
	for (size_t i = 0; i < l->n; i++) {
		struct imap_select_info info;
		struct proto_err err = {0};

		if (r.fresh[i] &&
		    imap_status(c, l->v[i].name, &info, &err) == 0)
			l->v[i].uidvalidity = info.uidvalidity;
	}
	free(r.fresh);
}

int fs_sync_list(struct mailfs *fs, struct imap_client *c,
                 struct proto_err *err)
{
	struct list_result l = {0};
	size_t n;
	int rc;

	rc = imap_list(c, list_cb, &l, err);
	if (rc < 0)
		goto out;
	/* Parents the server did not list (some servers list "a/b" without
	 * "a") become \Noselect directories so that the tree is whole. */
	n = l.n;
	for (size_t i = 0; i < n; i++) {
		char delim = l.v[i].delim;
		char *name;

		if (delim == 0 || (name = strdup(l.v[i].name)) == NULL)
			continue;
		for (char *p = strrchr(name, delim); p != NULL && p != name;
		     p = strrchr(name, delim)) {
			*p = '\0';
			list_add(&l, name, delim,
			         CACHE_MBOX_NOSELECT | CACHE_MBOX_NONEXISTENT |
			                 CACHE_MBOX_HASCHILDREN);
		}
		free(name);
	}
	if (l.oom) {
		rc = proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
		goto out;
	}
	find_renames(fs, c, &l);
	if (imap_error(c) != NULL) {
		rc = proto_err_set(err, imap_error(c)->cls, -EIO, "%s",
		                   imap_error(c)->text);
		goto out;
	}
	rc = store_list_all(fs, &l);
	if (rc < 0) {
		proto_err_set(err, PERR_LOCAL, rc,
		              "cannot store the mailbox list: %s",
		              strerror(-rc));
		goto out;
	}
	rc = fs_tree_load(fs->tree, fs->cache);
	log_debug("mailbox list: %zu mailboxes", l.n);
out:
	list_free(&l);
	return rc;
}

/* --- message listing ------------------------------------------------ */

struct meta {
	uint32_t uid;
	uint64_t size;
	int64_t internaldate;
	int16_t tz;
	uint64_t modseq;
	char *flags, *subject, *from, *date, *message_id;
};

struct listing {
	struct meta *v;
	size_t n, cap;
	bool oom;
	/* store step */
	uint32_t id;
	struct imap_select_info info;
	uint32_t old_uidvalidity;
	uint32_t gen;
	size_t deleted;
	struct cache_rematch_stats rematch;
	int64_t now;
	int64_t newest; /* INTERNALDATE of the newest message */
	uint32_t *gone; /* UIDs removed from the listing */
	size_t ngone;
	uint32_t *old; /* UIDs of the previous UIDVALIDITY */
	size_t nold;
};

static char *header_value(const struct imap_msg_meta *m, const char *name,
                          bool decode)
{
	char *v = NULL;

	if (m->headers == NULL)
		return strdup("");
	if (decode) {
		if (mime_header_decoded(m->headers, m->headers_len, name, &v) <
		    0)
			return strdup("");
	} else if (mime_header_field(m->headers, m->headers_len, name, &v) <
	           0) {
		return strdup("");
	}
	return v;
}

/* \Recent is a property of one session, not of the message: it is not
 * shown and cannot be set. */
static char *flags_without_recent(const char *flags)
{
	char *out = malloc(strlen(flags) + 1), *o = out;
	const char *p = flags;

	if (out == NULL)
		return NULL;
	while (*p) {
		const char *end = strchr(p, ' ');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > 0 &&
		    !(len == 7 && strncasecmp(p, "\\Recent", 7) == 0)) {
			if (o != out)
				*o++ = ' ';
			memcpy(o, p, len);
			o += len;
		}
		p += len;
		while (*p == ' ')
			p++;
	}
	*o = '\0';
	return out;
}

static void meta_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct listing *l = ctx;
	struct meta *e;

	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 256;
		struct meta *nv = realloc(l->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			l->oom = true;
			return;
		}
		l->v = nv;
		l->cap = ncap;
	}
	e = &l->v[l->n];
	memset(e, 0, sizeof(*e));
	e->uid = m->uid;
	e->size = m->size;
	e->internaldate = m->internaldate;
	e->tz = (int16_t)m->tz_minutes;
	e->modseq = m->modseq;
	e->flags = flags_without_recent(m->flags);
	e->subject = header_value(m, "Subject", true);
	e->from = header_value(m, "From", true);
	e->date = header_value(m, "Date", true);
	e->message_id = header_value(m, "Message-ID", false);
	l->n++;
	if (!e->flags || !e->subject || !e->from || !e->date || !e->message_id)
		l->oom = true;
}

static void listing_free(struct listing *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].flags);
		free(l->v[i].subject);
		free(l->v[i].from);
		free(l->v[i].date);
		free(l->v[i].message_id);
	}
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
	free(l->gone);
	free(l->old);
	l->gone = l->old = NULL;
	l->ngone = l->nold = 0;
}

struct old_uids {
	uint32_t id, uidvalidity;
	uint32_t *v;
	size_t n, cap;
};

static int old_uid_cb(const struct cache_msg *msg, void *ctx)
{
	struct old_uids *o = ctx;

	if (o->n == o->cap) {
		size_t ncap = o->cap ? o->cap * 2 : 64;
		uint32_t *nv = realloc(o->v, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		o->v = nv;
		o->cap = ncap;
	}
	o->v[o->n++] = msg->key.uid;
	return 0;
}

static int old_uids_read(struct cache_txn *txn, void *ctx)
{
	struct old_uids *o = ctx;

	return cache_msg_foreach(txn, o->id, o->uidvalidity, 1, old_uid_cb, o);
}

static int cmp_meta(const void *a, const void *b)
{
	const struct meta *x = a, *y = b;

	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

struct stale_ctx {
	const struct listing *l;
	uint32_t *uids;
	size_t n, cap;
};

static int stale_cb(const struct cache_msg *msg, void *ctx)
{
	struct stale_ctx *s = ctx;
	struct meta key = {.uid = msg->key.uid};

	if (s->l->n > 0 &&
	    bsearch(&key, s->l->v, s->l->n, sizeof(key), cmp_meta) != NULL)
		return 0;
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 64;
		uint32_t *n = realloc(s->uids, ncap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		s->uids = n;
		s->cap = ncap;
	}
	s->uids[s->n++] = msg->key.uid;
	return 0;
}

/* Store what a metadata fetch said of one message. */
static int put_meta(struct cache_txn *txn, uint32_t id, uint32_t uidvalidity,
                    const struct meta *e)
{
	struct cache_msg msg = {
	        .key = {id, uidvalidity, e->uid},
	        .size = e->size,
	        .internaldate = e->internaldate,
	        .tz_minutes = e->tz,
	        .modseq = e->modseq,
	        .flags = e->flags,
	        .subject = e->subject,
	        .from = e->from,
	        .date = e->date,
	        .message_id = e->message_id,
	};

	return cache_msg_put(txn, &msg);
}

static int store_listing(struct cache_txn *txn, void *ctx)
{
	struct listing *l = ctx;
	struct stale_ctx s = {.l = l};
	int rc;

	l->deleted = 0;
	memset(&l->rematch, 0, sizeof(l->rematch));
	rc = cache_mailbox_set_state(txn, l->id, l->info.uidvalidity,
	                             l->info.uidnext, l->info.highestmodseq,
	                             l->now, &l->gen);
	for (size_t i = 0; i < l->n && rc == 0; i++) {
		const struct meta *e = &l->v[i];
		rc = put_meta(txn, l->id, l->info.uidvalidity, e);
	}
	if (rc < 0)
		return rc;
	/* Messages the server no longer has were expunged elsewhere. */
	rc = cache_msg_foreach(txn, l->id, l->info.uidvalidity, 1, stale_cb,
	                       &s);
	for (size_t i = 0; i < s.n && rc == 0; i++)
		rc = cache_msg_delete(
		        txn, (struct cache_key){l->id, l->info.uidvalidity,
		                                s.uids[i]});
	l->deleted = s.n;
	free(l->gone);
	l->gone = s.uids;
	l->ngone = s.n;
	if (rc == 0 && l->n > 0) {
		/* The directory's mtime: its newest message, so that it is
		 * stable while nothing arrives (rsync -a sees no change). */
		int64_t newest = 0;
		char name[32];

		for (size_t i = 0; i < l->n; i++)
			if (l->v[i].internaldate > newest)
				newest = l->v[i].internaldate;
		snprintf(name, sizeof(name), "mtime.%u", l->id);
		rc = cache_meta_set(txn, name, (uint64_t)newest);
		l->newest = newest;
	}
	if (rc == 0 && l->old_uidvalidity != 0 &&
	    l->old_uidvalidity != l->info.uidvalidity)
		/* Copied, not moved: inodes of the old numbering that are
		 * still open keep reading. */
		rc = cache_rematch(txn, l->id, l->info.uidvalidity,
		                   CACHE_REMATCH_COPY, &l->rematch);
	return rc;
}

struct count_ctx {
	struct cache_mailbox *mb;
	uint32_t id;
};

static int read_state(struct cache_txn *txn, void *ctx)
{
	struct count_ctx *c = ctx;

	return cache_mailbox_get(txn, c->id, &c->mb);
}

/* --- incremental resync ------------------------------------------------ */

/* How many of the newest UIDs are fetched again at each CONDSTORE resync
 * to check that the server's MODSEQs move when flags change. */
#define CHECK_UIDS 64

struct flag_change {
	uint32_t uid;
	uint64_t modseq;
	char *flags; /* owned, without \Recent */
};

struct uid_range {
	uint32_t lo, hi;
};

struct resync {
	struct fs_sync *s;
	struct mailfs *fs;
	const char *name; /* for log lines */
	uint32_t id, uidvalidity, uidnext;
	uint64_t modseq;      /* cached HIGHESTMODSEQ */
	struct listing fresh; /* new messages (UID >= uidnext) */
	struct flag_change *fl;
	size_t nfl, capfl;
	struct uid_range *van;
	size_t nvan, capvan;
	uint32_t *seen; /* full flag fetch: every UID the server has */
	size_t nseen, capseen;
	bool full; /* the flag fetch covered every old UID */
	bool oom;
	bool fresh_stored; /* second pass: new messages already stored */
	size_t gone_base, changed_base;
	int64_t mtime; /* new directory mtime, or 0 */
	/* results of the store step */
	struct imap_select_info info;
	uint32_t gen;
	int64_t now;
	size_t changed, count;
	bool broken; /* MODSEQ did not move for a changed message */
	uint32_t *gone;
	size_t ngone, capgone;
};

static bool grow(void **v, size_t *cap, size_t n, size_t size)
{
	size_t ncap;
	void *nv;

	if (n < *cap)
		return true;
	ncap = *cap ? *cap * 2 : 64;
	nv = realloc(*v, ncap * size);
	if (nv == NULL)
		return false;
	*v = nv;
	*cap = ncap;
	return true;
}

static void resync_flags_cb(void *ctx, uint32_t uid, const char *flags,
                            uint64_t modseq)
{
	struct resync *r = ctx;
	struct flag_change *f;

	if (r->full) {
		if (!grow((void **)&r->seen, &r->capseen, r->nseen,
		          sizeof(*r->seen))) {
			r->oom = true;
			return;
		}
		r->seen[r->nseen++] = uid;
	}
	if (!grow((void **)&r->fl, &r->capfl, r->nfl, sizeof(*r->fl))) {
		r->oom = true;
		return;
	}
	f = &r->fl[r->nfl];
	f->uid = uid;
	f->modseq = modseq;
	f->flags = flags_without_recent(flags);
	if (f->flags == NULL)
		r->oom = true;
	else
		r->nfl++;
}

static void resync_meta_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct resync *r = ctx;

	/* "N:*" answers with the last message even when it is older than
	 * N: then it is only a fresh look at its flags. */
	if (m->uid < r->uidnext) {
		bool full = r->full;

		r->full = false;
		resync_flags_cb(r, m->uid, m->flags, m->modseq);
		r->full = full;
		return;
	}
	meta_cb(&r->fresh, m);
}

static void resync_vanished_cb(void *ctx, uint32_t lo, uint32_t hi)
{
	struct resync *r = ctx;

	if (!grow((void **)&r->van, &r->capvan, r->nvan, sizeof(*r->van))) {
		r->oom = true;
		return;
	}
	r->van[r->nvan++] = (struct uid_range){lo, hi};
}

static void resync_free(struct resync *r)
{
	for (size_t i = 0; i < r->nfl; i++)
		free(r->fl[i].flags);
	free(r->fl);
	free(r->van);
	free(r->seen);
	free(r->gone);
	listing_free(&r->fresh);
	r->fl = NULL;
	r->van = NULL;
	r->seen = r->gone = NULL;
	r->nfl = r->nvan = r->nseen = r->ngone = 0;
	r->capfl = r->capvan = r->capseen = r->capgone = 0;
}

/* Do two flag lists name the same flags (in any order; flag names are
 * case-insensitive)? */
static bool same_flags(const char *a, const char *b)
{
	size_t na = 0, nb = 0;

	for (int pass = 0; pass < 2; pass++) {
		const char *x = pass ? b : a, *y = pass ? a : b;

		for (const char *p = x; *p;) {
			size_t len = strcspn(p, " ");
			bool found = false;

			for (const char *q = y; *q && !found;) {
				size_t ql = strcspn(q, " ");

				found = ql == len &&
				        strncasecmp(p, q, len) == 0;
				q += ql;
				q += strspn(q, " ");
			}
			if (len > 0 && !found)
				return false;
			if (len > 0)
				*(pass ? &nb : &na) += 1;
			p += len;
			p += strspn(p, " ");
		}
	}
	return na == nb;
}

struct range_collect {
	struct resync *r;
	uint32_t hi;
	const uint32_t *keep; /* sorted; NULL: collect everything */
	size_t nkeep;
};

static int add_gone(struct resync *r, uint32_t uid)
{
	if (!grow((void **)&r->gone, &r->capgone, r->ngone, sizeof(*r->gone)))
		return -ENOMEM;
	r->gone[r->ngone++] = uid;
	return 0;
}

static int range_cb(const struct cache_msg *msg, void *ctx)
{
	struct range_collect *rc = ctx;

	if (msg->key.uid > rc->hi)
		return 1;
	if (rc->nkeep > 0 && bsearch(&msg->key.uid, rc->keep, rc->nkeep,
	                             sizeof(*rc->keep), cmp_u32_key) != NULL)
		return 0;
	return add_gone(rc->r, msg->key.uid);
}

static int store_resync(struct cache_txn *txn, void *ctx)
{
	struct resync *r = ctx;
	int64_t newest = 0;
	uint64_t mtime = 0;
	char name[32];
	int rc;

	r->changed = r->changed_base;
	r->ngone = r->gone_base;
	rc = cache_mailbox_set_state(txn, r->id, r->uidvalidity,
	                             r->info.uidnext, r->info.highestmodseq,
	                             r->now, &r->gen);
	for (size_t i = 0; i < r->fresh.n && rc == 0 && !r->fresh_stored; i++) {
		const struct meta *e = &r->fresh.v[i];
		rc = put_meta(txn, r->id, r->uidvalidity, e);
		if (e->internaldate > newest)
			newest = e->internaldate;
	}
	for (size_t i = 0; i < r->nfl && rc == 0; i++) {
		const struct flag_change *f = &r->fl[i];
		struct cache_key key = {r->id, r->uidvalidity, f->uid};
		struct cache_msg *old = NULL;

		rc = cache_msg_get(txn, key, &old);
		if (rc == -ENOENT) {
			rc = 0; /* not known here (yet): the listing has it */
			continue;
		}
		if (rc < 0)
			break;
		if (!same_flags(old->flags, f->flags)) {
			/* A change the MODSEQs should have shown. */
			if (r->modseq != 0 && f->modseq != 0 &&
			    f->modseq <= r->modseq)
				r->broken = true;
			rc = cache_msg_set_flags(txn, key, f->flags, f->modseq);
			r->changed++;
		} else if (old->modseq != f->modseq) {
			rc = cache_msg_set_flags(txn, key, f->flags, f->modseq);
		}
		cache_msg_free(&old);
	}
	for (size_t i = 0; i < r->nvan && rc == 0; i++) {
		struct range_collect c = {.r = r, .hi = r->van[i].hi};

		rc = cache_msg_foreach(txn, r->id, r->uidvalidity, r->van[i].lo,
		                       range_cb, &c);
	}
	if (rc == 0 && r->full && r->uidnext > 1) {
		/* Every old UID the server still has was in the answer. */
		struct range_collect c = {.r = r,
		                          .hi = r->uidnext - 1,
		                          .keep = r->seen,
		                          .nkeep = r->nseen};

		if (r->nseen > 0)
			qsort(r->seen, r->nseen, sizeof(*r->seen), cmp_u32_key);
		rc = cache_msg_foreach(txn, r->id, r->uidvalidity, 1, range_cb,
		                       &c);
	}
	for (size_t i = r->gone_base; i < r->ngone && rc == 0; i++)
		rc = cache_msg_delete(
		        txn,
		        (struct cache_key){r->id, r->uidvalidity, r->gone[i]});
	snprintf(name, sizeof(name), "mtime.%u", r->id);
	if (rc == 0 && newest > 0) {
		rc = cache_meta_get(txn, name, &mtime);
		if (rc == -ENOENT)
			rc = 0;
		if (rc == 0 && (uint64_t)newest > mtime) {
			rc = cache_meta_set(txn, name, (uint64_t)newest);
			r->mtime = newest;
		}
	}
	if (rc == 0)
		rc = cache_msg_count(txn, r->id, r->uidvalidity, &r->count);
	return rc;
}

static void resync_log_broken(struct resync *r, const char *why)
{
	bool first;

	pthread_mutex_lock(&r->s->lock);
	first = !r->s->condstore_broken;
	r->s->condstore_broken = true;
	pthread_mutex_unlock(&r->s->lock);
	if (first)
		log_notice("the server's CONDSTORE cannot be trusted (%s, in "
		           "mailbox %s); flags are resynchronised in full from "
		           "now on",
		           why, r->name);
}

/* Bring the cached listing of a mailbox listed before up to date without
 * fetching what is known: new messages, flag changes, expunges.  With
 * QRESYNC it is one round trip (SELECT ... QRESYNC, VANISHED); with
 * CONDSTORE one, plus one more when messages were expunged; without, the
 * flags of every message.  Returns -EAGAIN when the mailbox must be
 * listed in full instead (UIDVALIDITY changed). */
static int resync_listing(struct worker *w, struct job *job,
                          const struct fs_mailbox *mb,
                          const struct cache_mailbox *cached)
{
	struct fs_sync *s = w->s;
	struct mailfs *fs = s->fs;
	struct resync r = {.s = s,
	                   .fs = fs,
	                   .name = mb->name,
	                   .id = mb->id,
	                   .uidvalidity = cached->uidvalidity,
	                   .uidnext = cached->uidnext,
	                   .modseq = cached->highestmodseq,
	                   .fresh = {.id = mb->id}};
	struct imap_resync_cb cb = {.meta = resync_meta_cb,
	                            .flags = resync_flags_cb,
	                            .vanished = resync_vanished_cb,
	                            .ctx = &r};
	struct imap_resync_req req = {.mailbox = mb->name,
	                              .readonly = true,
	                              .uidvalidity = cached->uidvalidity,
	                              .new_from = cached->uidnext};
	struct proto_err err = {0};
	char old_set[32], check_set[32];
	bool condstore, broken;
	const char *how;
	int64_t t0 = now_ms();
	int rc;

	if (cached->uidnext == 0)
		return -EAGAIN; /* no UIDNEXT known: nothing to start from */
	pthread_mutex_lock(&s->lock);
	broken = s->condstore_broken;
	pthread_mutex_unlock(&s->lock);
	condstore = !broken && cached->highestmodseq != 0 &&
	            imap_has_cap(w->c, "CONDSTORE");
	snprintf(old_set, sizeof(old_set), "1:%u", cached->uidnext - 1);
	snprintf(check_set, sizeof(check_set), "%u:%u",
	         cached->uidnext > CHECK_UIDS ? cached->uidnext - CHECK_UIDS
	                                      : 1,
	         cached->uidnext - 1);
	if (condstore && imap_qresync_enabled(w->c)) {
		req.modseq = cached->highestmodseq;
		how = "QRESYNC";
	} else if (condstore) {
		req.flags_set = old_set;
		req.flags_since = cached->highestmodseq;
		how = "CONDSTORE";
	} else {
		req.plain = broken;
		req.flags_set = old_set;
		r.full = true;
		how = "all flags";
	}
	if (cached->uidnext <= 1) {
		req.flags_set = NULL; /* no old messages */
		r.full = false;
	} else if (condstore) {
		req.check_set = check_set;
	}

	r.now = time(NULL);
	rc = imap_resync(w->c, &req, &cb, &r.info, &err);
	if (rc < 0 && imap_error(w->c) == NULL && condstore) {
		/* Refused: the server's CONDSTORE/QRESYNC is not what it
		 * says.  Once more, the plain way. */
		resync_log_broken(&r, err.text);
		resync_free(&r);
		condstore = false;
		how = "all flags";
		req = (struct imap_resync_req){
		        .mailbox = mb->name,
		        .readonly = true,
		        .plain = true,
		        .new_from = cached->uidnext,
		        .flags_set = cached->uidnext > 1 ? old_set : NULL};
		r.full = req.flags_set != NULL;
		rc = imap_resync(w->c, &req, &cb, &r.info, &err);
	}
	if (rc < 0) {
		log_warn("cannot resynchronise mailbox %s: %s", mb->name,
		         err.text);
		goto out;
	}
	if (r.info.uidvalidity != cached->uidvalidity) {
		rc = -EAGAIN;
		goto out;
	}
	if (r.oom || r.fresh.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (condstore && r.info.highestmodseq < cached->highestmodseq) {
		/* RFC 7162: MODSEQs never go back while UIDVALIDITY stays;
		 * 0 (NOMODSEQ) means this mailbox has none. */
		if (r.info.highestmodseq != 0)
			resync_log_broken(&r, "HIGHESTMODSEQ went back");
		condstore = false;
	}
	if (r.fresh.n > 0)
		qsort(r.fresh.v, r.fresh.n, sizeof(*r.fresh.v), cmp_meta);
	rc = cache_run_write(fs->cache, store_resync, &r);
	if (rc == 0 && r.broken)
		resync_log_broken(&r, "flags changed without a new MODSEQ");
	/* What the first answer cannot have shown: expunges without
	 * QRESYNC (the count tells), any flag change when MODSEQs are
	 * unusable.  All flags of the old messages settle both. */
	if (rc == 0 && !r.full && r.uidnext > 1 &&
	    (r.count != r.info.exists || r.broken || !condstore)) {
		struct imap_select_info info2;

		for (size_t i = 0; i < r.nfl; i++)
			free(r.fl[i].flags);
		r.nfl = r.nvan = 0;
		r.fresh_stored = true;
		r.gone_base = r.ngone;
		r.changed_base = r.changed;
		r.full = true;
		how = "all flags";
		rc = imap_resync(
		        w->c,
		        &(struct imap_resync_req){.mailbox = mb->name,
		                                  .readonly = true,
		                                  .plain = true,
		                                  .flags_set = old_set},
		        &cb, &info2, &err);
		if (rc < 0)
			log_warn("cannot resynchronise mailbox %s: %s",
			         mb->name, err.text);
		else if (info2.uidvalidity == cached->uidvalidity)
			rc = cache_run_write(fs->cache, store_resync, &r);
	}
	if (rc < 0) {
		if (imap_error(w->c) == NULL)
			log_err("cannot store the resync of %s: %s", mb->name,
			        strerror(-rc));
		goto out;
	}
	job->gone = r.gone;
	job->ngone = r.ngone;
	job->dir_changed = r.ngone > 0 || r.fresh.n > 0;
	r.gone = NULL;
	fs_tree_set_state(fs->tree, mb->id, cached->uidvalidity, r.gen, r.now,
	                  r.mtime);
	log_debug("resync of %s (%s): %zu new, %zu flags changed, %zu gone, "
	          "%zu messages, %lld ms",
	          mb->name, how, r.fresh.n, r.changed, job->ngone, r.count,
	          (long long)(now_ms() - t0));
out:
	resync_free(&r);
	return rc;
}

static int run_listing(struct worker *w, struct job *job)
{
	uint32_t id = job->id;
	struct mailfs *fs = w->s->fs;
	struct fs_mailbox *mb = NULL;
	struct count_ctx cc = {.id = id};
	struct listing l = {.id = id};
	struct proto_err err = {0};
	int rc;

	/* The list too, when it is old: mailboxes created, renamed or
	 * deleted elsewhere show with the next listing of their parent. */
	if (time(NULL) - fs_tree_loaded(fs->tree) >= (int64_t)fs->opts.poll &&
	    fs_sync_list(fs, w->c, &err) < 0)
		log_warn("cannot list mailboxes: %s", err.text);
	rc = fs_tree_get(fs->tree, id, &mb);
	if (rc < 0)
		return rc;
	l.now = time(NULL);
	if (!mb->selectable) {
		fs_tree_set_state(fs->tree, id, 0, 0, l.now, 0);
		goto out;
	}
	rc = cache_run_read(fs->cache, read_state, &cc);
	if (rc < 0)
		goto out;
	if (cc.mb->uidvalidity != 0) {
		/* Listed before: fetch only what changed. */
		rc = resync_listing(w, job, mb, cc.mb);
		if (rc != -EAGAIN)
			goto out;
	}
	rc = imap_select(w->c, mb->name, true, &l.info, &err);
	if (rc < 0) {
		log_warn("cannot open mailbox %s: %s", mb->name, err.text);
		goto out;
	}
	l.old_uidvalidity = cc.mb->uidvalidity;
	if (l.info.exists > 0) {
		rc = imap_fetch_meta(w->c, "1:*", 0, meta_cb, &l, &err);
		if (rc < 0) {
			log_warn("cannot list mailbox %s: %s", mb->name,
			         err.text);
			goto out;
		}
	}
	if (l.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (l.n > 0)
		qsort(l.v, l.n, sizeof(*l.v), cmp_meta);
	if (l.old_uidvalidity != 0 && l.old_uidvalidity != l.info.uidvalidity) {
		/* Every name of the old numbering leaves the kernel's view. */
		struct old_uids o = {.id = id,
		                     .uidvalidity = l.old_uidvalidity};

		if (cache_run_read(fs->cache, old_uids_read, &o) == 0) {
			l.old = o.v;
			l.nold = o.n;
		} else {
			free(o.v);
		}
	}
	rc = cache_run_write(fs->cache, store_listing, &l);
	if (rc < 0) {
		log_err("cannot store the listing of %s: %s", mb->name,
		        strerror(-rc));
		goto out;
	}
	if (l.info.uidvalidity > 0 && l.gen > FS_INO_MAX_GEN)
		log_err("mailbox %s has changed UIDVALIDITY too often; its "
		        "messages cannot be shown",
		        mb->name);
	/* Hand the names that are gone to the worker, which tells the
	 * kernel once the waiters have their answers. */
	job->gone = malloc((l.ngone + l.nold + 1) * sizeof(*job->gone));
	if (job->gone != NULL) {
		if (l.ngone > 0)
			memcpy(job->gone, l.gone, l.ngone * sizeof(*l.gone));
		if (l.nold > 0)
			memcpy(job->gone + l.ngone, l.old,
			       l.nold * sizeof(*l.old));
		job->ngone = l.ngone + l.nold;
	}
	job->dir_changed = true;
	fs_tree_set_state(fs->tree, id, l.info.uidvalidity, l.gen, l.now,
	                  l.newest);
	if (l.old_uidvalidity != 0 && l.old_uidvalidity != l.info.uidvalidity)
		log_notice("mailbox %s: UIDVALIDITY changed from %u to %u; "
		           "%zu cached bodies matched to new UIDs by "
		           "Message-ID and size, %zu kept under the old "
		           "UIDVALIDITY",
		           mb->name, l.old_uidvalidity, l.info.uidvalidity,
		           l.rematch.matched, l.rematch.unmatched);
	log_debug("listing of %s: %zu messages, %zu gone", mb->name, l.n,
	          l.deleted);
out:
	cache_mailbox_free(&cc.mb);
	listing_free(&l);
	fs_mailbox_free(&mb);
	return rc;
}

/* --- bodies ---------------------------------------------------------- */

struct pending_body {
	uint32_t uid;
	struct cache_body_stream *body; /* owned: stored by store_bodies */
	size_t len;
	bool resized;      /* the server's RFC822.SIZE was wrong */
	uint64_t old_size; /* then: what it said (and the kernel may hold) */
};

struct body_batch {
	struct worker *w;
	struct job *job;
	uint32_t id, uidvalidity, gen;
	struct pending_body *v;
	size_t n, cap, bytes;
	int rc;
	size_t stored;
	/* The body arriving now: a long one goes to the cache in pieces as
	 * it comes (cache_body_stream), never whole in memory. */
	struct cache_body_stream *cur; /* owned */
};

static int store_bodies(struct cache_txn *txn, void *ctx)
{
	struct body_batch *b = ctx;
	int rc = 0;

	for (size_t i = 0; i < b->n && rc == 0; i++) {
		struct cache_key key = {b->id, b->uidvalidity, b->v[i].uid};
		struct cache_msg *old = NULL;

		rc = cache_msg_get(txn, key, &old);
		if (rc == -ENOENT) {
			/* Expunged while we fetched it; nothing to keep it
			 * under. */
			rc = 0;
			continue;
		}
		b->v[i].resized = rc == 0 && old->size != b->v[i].len;
		b->v[i].old_size = rc == 0 ? old->size : 0;
		/* Before the body can be read: see fs/inval.h. */
		if (b->v[i].resized)
			fs_inval_resized(b->w->s->fs->inval,
			                 fs_ino_msg(b->id, b->gen, b->v[i].uid),
			                 old->size, b->v[i].len);
		if (b->v[i].resized)
			log_notice("message UID %u: server said %llu bytes, "
			           "the body has %zu; size corrected",
			           b->v[i].uid, (unsigned long long)old->size,
			           b->v[i].len);
		cache_msg_free(&old);
		if (rc == 0)
			rc = cache_body_stream_finish(txn, b->v[i].body, key);
	}
	return rc;
}

/* Detach the waiters of job for uid (all of them if uid is 0) that read
 * up to at least until (0: every waiter, READ or not). */
static struct waiter *take_waiters(struct fs_sync *s, struct job *job,
                                   uint32_t uid, uint64_t until)
{
	struct waiter *got = NULL, **pp;

	pthread_mutex_lock(&s->lock);
	pp = &job->waiters;
	while (*pp != NULL) {
		struct waiter *wt = *pp;

		if ((uid == 0 || wt->uid == uid) &&
		    (until == 0 || wt->until >= until)) {
			*pp = wt->next;
			wt->next = got;
			got = wt;
		} else {
			pp = &wt->next;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return got;
}

static void run_waiters(struct waiter *wt, int rc)
{
	while (wt != NULL) {
		struct waiter *next = wt->next;

		if (wt->cb != NULL)
			wt->cb(wt->ctx, rc);
		free(wt);
		wt = next;
	}
}

static bool has_waiter(struct fs_sync *s, struct job *job, uint32_t uid)
{
	bool found = false;

	pthread_mutex_lock(&s->lock);
	for (struct waiter *wt = job->waiters; wt != NULL && !found;
	     wt = wt->next)
		found = wt->uid == uid;
	pthread_mutex_unlock(&s->lock);
	return found;
}

/* The kernel may hold the size the server announced (RFC822.SIZE), and
 * READs of the message may be waiting for this body, their pages locked.
 * The order of replies and invalidation is fs/inval.h's rule: a shorter
 * body's READs that reach its end are answered first, then the kernel's
 * attributes are invalidated (settled; at once for a longer body), then
 * the other waiters answered (an open, a READ that stops earlier). */
static void answer_resized(struct body_batch *b, const struct pending_body *p)
{
	struct fs_sync *s = b->w->s;

	if (p->len < p->old_size)
		run_waiters(take_waiters(s, b->job, p->uid,
		                         p->len > 0 ? p->len : 1),
		            0);
	fs_inval_settle(s->fs->inval, fs_ino_msg(b->id, b->gen, p->uid));
}

static void flush_bodies(struct body_batch *b)
{
	struct mailfs *fs = b->w->s->fs;
	int rc;

	if (b->n == 0)
		return;
	rc = cache_run_write(fs->cache, store_bodies, b);
	if (rc < 0) {
		log_err("cannot store fetched messages in the cache: %s",
		        strerror(-rc));
		b->rc = rc;
	}
	for (size_t i = 0; i < b->n; i++) {
		if (b->v[i].resized)
			answer_resized(b, &b->v[i]);
		run_waiters(take_waiters(b->w->s, b->job, b->v[i].uid, 0),
		            rc < 0 ? -EIO : 0);
		cache_body_stream_close(&b->v[i].body);
	}
	b->stored += rc < 0 ? 0 : b->n;
	b->n = 0;
	b->bytes = 0;
}

/* The bodies come through a struct imap_body_sink. */
static int body_begin(void *ctx, uint32_t uid, uint64_t size)
{
	struct body_batch *b = ctx;
	int rc;

	(void)uid;
	(void)size;
	cache_body_stream_close(&b->cur);
	rc = cache_body_stream_new(b->w->s->fs->cache, &b->cur);
	if (rc < 0)
		b->rc = rc;
	return rc;
}

static int body_data(void *ctx, const char *data, size_t len)
{
	struct body_batch *b = ctx;
	int rc = cache_body_stream_write(b->cur, data, len);

	if (rc < 0 && b->rc == 0) {
		log_err("cannot store a fetched message in the cache: %s",
		        strerror(-rc));
		b->rc = rc;
	}
	return rc;
}

static void body_abort(void *ctx)
{
	struct body_batch *b = ctx;

	cache_body_stream_close(&b->cur);
}

static void body_done(void *ctx, uint32_t uid)
{
	struct body_batch *b = ctx;
	struct pending_body *p;

	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 32;
		struct pending_body *nv = realloc(b->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			b->rc = -ENOMEM;
			cache_body_stream_close(&b->cur);
			return;
		}
		b->v = nv;
		b->cap = ncap;
	}
	p = &b->v[b->n];
	p->uid = uid;
	p->len = (size_t)cache_body_stream_size(b->cur);
	p->body = b->cur;
	b->cur = NULL;
	b->n++;
	b->bytes += p->len;
	if (b->bytes >= COMMIT_BYTES || has_waiter(b->w->s, b->job, uid))
		flush_bodies(b);
}

static const struct imap_body_sink body_sink = {
        .begin = body_begin,
        .data = body_data,
        .done = body_done,
        .abort = body_abort,
};

struct readahead {
	uint32_t from;
	uint32_t *uids;
	size_t n, max;
	uint64_t bytes;
	int rc;
};

static int readahead_cb(const struct cache_msg *msg, void *ctx)
{
	struct readahead *r = ctx;

	if (msg->size_verified)
		return 0;
	if (r->n >= r->max || r->bytes + msg->size > BATCH_MAX_BYTES)
		return 1;
	r->uids[r->n++] = msg->key.uid;
	r->bytes += msg->size;
	return 0;
}

struct readahead_txn {
	uint32_t id, uidvalidity;
	struct readahead *r;
};

static int readahead_read(struct cache_txn *txn, void *ctx)
{
	struct readahead_txn *t = ctx;

	return cache_msg_foreach(txn, t->id, t->uidvalidity, t->r->from,
	                         readahead_cb, t->r);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static bool uid_in(const struct job *j, uint32_t uid)
{
	for (size_t i = 0; i < j->nuids; i++)
		if (j->uids[i] == uid)
			return true;
	return false;
}

/* Extend the running body job with read-ahead: the uncached messages that
 * follow the first one asked for, not already being fetched elsewhere. */
static void plan_batch(struct worker *w, struct job *job)
{
	struct fs_sync *s = w->s;
	uint32_t cand[BATCH_MAX_MSGS];
	struct readahead r = {.uids = cand, .max = BATCH_MAX_MSGS};
	struct readahead_txn t = {job->id, job->uidvalidity, &r};

	pthread_mutex_lock(&s->lock);
	qsort(job->uids, job->nuids, sizeof(*job->uids), cmp_u32);
	r.from = job->uids[0];
	if (job->prefetch)
		job->nuids = 0; /* only what is still uncached */
	pthread_mutex_unlock(&s->lock);

	if (cache_run_read(s->fs->cache, readahead_read, &t) < 0)
		return;

	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < r.n; i++) {
		bool busy = uid_in(job, cand[i]);

		for (struct job *j = s->jobs; j != NULL && !busy; j = j->next)
			busy = j != job && j->kind == JOB_BODY &&
			       j->id == job->id && j->running &&
			       uid_in(j, cand[i]);
		if (busy)
			continue;
		if (job->nuids == job->capuids) {
			size_t ncap = job->capuids * 2;
			uint32_t *nv =
			        realloc(job->uids, ncap * sizeof(*job->uids));

			if (nv == NULL)
				break;
			job->uids = nv;
			job->capuids = ncap;
		}
		job->uids[job->nuids++] = cand[i];
	}
	qsort(job->uids, job->nuids, sizeof(*job->uids), cmp_u32);
	pthread_mutex_unlock(&s->lock);
}

int fs_sync_open_mailbox(struct mailfs *fs, struct imap_client *c, uint32_t id,
                         uint32_t uidvalidity, bool writable)
{
	struct imap_select_info info;
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	int rc;

	rc = fs_tree_get(fs->tree, id, &mb);
	if (rc < 0)
		return rc;
	if (imap_selected(c) == NULL ||
	    strcmp(imap_selected(c), mb->name) != 0 ||
	    (writable && !imap_selected_writable(c))) {
		rc = imap_select(c, mb->name, !writable, &info, &err);
		if (rc < 0) {
			log_warn("cannot open mailbox %s: %s", mb->name,
			         err.text);
		} else if (uidvalidity != 0 &&
		           info.uidvalidity != uidvalidity) {
			log_notice("mailbox %s: UIDVALIDITY is now %u (cached "
			           "%u); it will be listed again",
			           mb->name, info.uidvalidity, uidvalidity);
			rc = -ESTALE;
		}
	}
	fs_mailbox_free(&mb);
	return rc;
}

static int ensure_selected(struct worker *w, uint32_t id, uint32_t uidvalidity)
{
	return fs_sync_open_mailbox(w->s->fs, w->c, id, uidvalidity, false);
}

static void queue_prefetch(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                           uint32_t from);

/* Someone waits for a message the server did not return.  A session
 * learns of new mail only when the server says so (EXISTS, at a command's
 * end): a connection that selected the mailbox before the message came
 * does not see it yet, although a listing on another one did.  NOOP
 * brings its view up to date; then those messages once more. */
static int fetch_missed(struct worker *w, struct job *job, struct body_batch *b)
{
	struct proto_err err = {0};
	uint32_t *missed = NULL;
	size_t n = 0;
	char *set;
	int rc;

	missed = malloc(job->nuids * sizeof(*missed));
	if (missed == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < job->nuids; i++)
		if (has_waiter(w->s, job, job->uids[i]))
			missed[n++] = job->uids[i];
	if (n == 0) {
		free(missed);
		return 0;
	}
	set = imap_uidset_format(missed, n);
	free(missed);
	if (set == NULL)
		return -ENOMEM;
	rc = imap_noop(w->c, &err);
	if (rc == 0)
		rc = imap_fetch_bodies_stream(w->c, set, &body_sink, b, &err);
	if (rc < 0)
		log_warn("fetching messages %s failed: %s", set, err.text);
	flush_bodies(b);
	log_debug("fetched again after NOOP: %s", set);
	free(set);
	return rc;
}

static int run_body(struct worker *w, struct job *job)
{
	struct body_batch b = {.w = w,
	                       .job = job,
	                       .id = job->id,
	                       .uidvalidity = job->uidvalidity};
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	bool walking;
	uint32_t next;
	char *set;
	int rc;

	if (fs_tree_get(w->s->fs->tree, job->id, &mb) == 0) {
		b.gen = mb->gen;
		fs_mailbox_free(&mb);
	}
	plan_batch(w, job);
	if (job->nuids == 0)
		return 0;
	/* Someone waits: the directory is being read.  Fetch the next batch
	 * on another connection while this one arrives. */
	pthread_mutex_lock(&w->s->lock);
	if (!job->prefetch) {
		w->s->walk_id = job->id;
		w->s->walk_until = now_ms() + WALK_MS;
	}
	walking = w->s->walk_id == job->id && w->s->walk_until > now_ms();
	next = job->uids[job->nuids - 1] + 1;
	pthread_mutex_unlock(&w->s->lock);
	if (walking && next != 0)
		queue_prefetch(w->s, job->id, job->uidvalidity, next);

	rc = ensure_selected(w, job->id, job->uidvalidity);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&w->s->lock);
	set = imap_uidset_format(job->uids, job->nuids);
	pthread_mutex_unlock(&w->s->lock);
	if (set == NULL)
		return -ENOMEM;
	rc = imap_fetch_bodies_stream(w->c, set, &body_sink, &b, &err);
	if (rc < 0)
		log_warn("fetching messages %s failed: %s", set, err.text);
	flush_bodies(&b);
	log_debug("fetched %zu of %zu messages (%s)", b.stored, job->nuids,
	          set);
	free(set);
	if (rc == 0 && b.rc == 0 && b.stored < job->nuids)
		rc = fetch_missed(w, job, &b);
	cache_body_stream_close(&b.cur);
	free(b.v);
	if (rc == 0 && b.rc < 0)
		rc = b.rc;
	return rc;
}

/* --- workers and the queue -------------------------------------------- */

void fs_sync_prepare(struct imap_client *c)
{
	struct proto_err err = {0};
	char enabled[256];

	/* QRESYNC makes a resync one round trip and reports expunges by
	 * UID (VANISHED); it implies CONDSTORE. */
	if (imap_has_cap(c, "QRESYNC") && imap_has_cap(c, "ENABLE") &&
	    imap_enable(c, "QRESYNC", enabled, &err) < 0)
		log_info("cannot enable QRESYNC: %s", err.text);
}

int fs_sync_connect(struct mailfs *fs, struct imap_client **c_r,
                    struct proto_err *err)
{
	int rc = login_imap(fs->login, &fs->imap, c_r, err);

	if (rc == 0)
		fs_sync_prepare(*c_r);
	return rc;
}

static void worker_input(void *ctx)
{
	struct worker *w = ctx;

	atomic_store(&w->input_ms, now_ms());
}

static void set_live(struct worker *w, bool live)
{
	pthread_mutex_lock(&w->s->lock);
	if (w->live != live)
		w->s->live += live ? 1 : (unsigned)-1;
	w->live = live;
	pthread_mutex_unlock(&w->s->lock);
}

/* Did the server refuse a new connection because the account has too
 * many?  Gmail and Dovecot say so at login; a BYE instead of a greeting
 * (Exchange) says nothing, but it is the same refusal. */
static bool refused_for_cap(const struct proto_err *err)
{
	return (err->cls == PERR_BUSY && err->code == -EUSERS) ||
	       (err->cls == PERR_BYE && err->code == -ECONNREFUSED);
}

/* A worker leaves the pool (under s->lock). */
static void retire(struct worker *w, const char *why)
{
	struct fs_sync *s = w->s;

	s->active--;
	if (imap_pace_refused(&s->fs->pace))
		log_warn("the server refused another connection (%s): using "
		         "%u connection%s for the rest of the mount (logged "
		         "once)",
		         why, s->active, s->active == 1 ? "" : "s");
	else
		log_debug("the server refused another connection (%s): %u "
		          "left",
		          why, s->active);
}

/* Connect w if it has no connection.  -EUSERS: the server refused it
 * for having too many while other workers have one, and w has left the
 * pool; -EAGAIN: the login was throttled while others work (the job
 * goes to them); -ENOTCONN: the server cannot be reached (back-off). */
static int worker_connect(struct worker *w)
{
	struct fs_sync *s = w->s;
	bool back = false;
	struct proto_err err = {0};
	int64_t now = now_ms();
	int rc;

	/* A BYE that came while the connection sat idle (an idle timeout)
	 * is read now: a change must not be sent into a closed
	 * connection, where it could not be told whether it happened. */
	if (w->c != NULL)
		imap_poll(w->c);
	if (w->c != NULL && imap_error(w->c) != NULL) {
		log_info("connection lost: %s; reconnecting",
		         imap_error(w->c)->text);
		imap_free(&w->c);
		set_live(w, false);
	}
	if (w->c != NULL)
		return 0;
	pthread_mutex_lock(&s->lock);
	if (s->down_until > now) {
		pthread_mutex_unlock(&s->lock);
		return -ENOTCONN;
	}
	pthread_mutex_unlock(&s->lock);

	rc = fs_sync_connect(s->fs, &w->c, &err);
	pthread_mutex_lock(&s->lock);
	if (rc < 0 && refused_for_cap(&err) && s->live > 0 && s->active > 1) {
		retire(w, err.text);
		pthread_mutex_unlock(&s->lock);
		return -EUSERS;
	}
	if (rc < 0 && err.cls == PERR_BUSY && s->live > 0) {
		pthread_mutex_unlock(&s->lock);
		return -EAGAIN;
	}
	if (rc < 0) {
		s->backoff = s->backoff ? s->backoff * 2 : BACKOFF_MIN_MS;
		if (s->backoff > BACKOFF_MAX_MS)
			s->backoff = BACKOFF_MAX_MS;
		s->down_until = now_ms() + s->backoff;
		if (!login_reported(s->fs->login, &err))
			log_warn("cannot reach the server: %s (retrying in %u "
			         "s)",
			         err.text, s->backoff / 1000);
		rc = -ENOTCONN;
	} else {
		back = s->backoff != 0;
		s->backoff = 0;
		s->down_until = 0;
		imap_set_input_hook(w->c, worker_input, w);
		w->live = true;
		s->live++;
	}
	pthread_mutex_unlock(&s->lock);
	/* The server is back: uploads that waited for it go now. */
	if (back) {
		log_info("the server is reachable again");
		fs_newfile_resume(s->fs);
	}
	return rc;
}

static void free_job(struct job *job)
{
	free(job->gone);
	free(job->uids);
	free(job);
}

static void unlink_job(struct fs_sync *s, struct job *job)
{
	for (struct job **pp = &s->jobs; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == job) {
			*pp = job->next;
			return;
		}
	}
}

/* Remember that the bodies job's waiters wanted could not be had (for
 * FAILED_MS; see there).  Called with s->lock held. */
static void note_failed(struct fs_sync *s, const struct job *job,
                        const struct waiter *wt)
{
	int64_t until = now_ms() + FAILED_MS;

	for (; wt != NULL; wt = wt->next) {
		struct failed_body *f = &s->failed[s->nfailed++ % FAILED_MAX];

		*f = (struct failed_body){job->id, job->uidvalidity, wt->uid,
		                          until};
	}
}

static bool failed_recently(struct fs_sync *s, uint32_t id,
                            uint32_t uidvalidity, uint32_t uid)
{
	int64_t now = now_ms();

	for (unsigned i = 0; i < FAILED_MAX; i++) {
		const struct failed_body *f = &s->failed[i];

		if (f->until > now && f->uid == uid && f->id == id &&
		    f->uidvalidity == uidvalidity)
			return true;
	}
	return false;
}

/* The reaper: a waiter whose job has not begun within the timeout, or
 * whose connection has sent nothing for that long, gets -ETIMEDOUT; the
 * job itself goes on (a body then still reaches the cache).  Changes
 * (JOB_CALL) are left to their connection's own timeouts: one that has
 * begun may happen on the server and its context is in use, and an
 * upload's callback does not expect to be told "not run". */
static int64_t waiter_deadline(struct fs_sync *s, const struct worker *w,
                               const struct waiter *wt)
{
	int64_t from = wt->since;

	if (w != NULL) {
		int64_t input = atomic_load(&w->input_ms);

		if (input > from)
			from = input;
	}
	return from + s->timeout_ms;
}

static const struct worker *worker_of(struct fs_sync *s, const struct job *job)
{
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].job == job)
			return &s->workers[i];
	return NULL;
}

/* Detach the waiters past their deadline (all jobs); *next_r gets the
 * earliest deadline still ahead.  Called with s->lock held. */
static struct waiter *take_expired(struct fs_sync *s, int64_t *next_r)
{
	struct waiter *got = NULL;
	int64_t now = now_ms();

	*next_r = INT64_MAX;
	for (struct job **jp = &s->jobs; *jp != NULL;) {
		struct job *job = *jp;
		const struct worker *w =
		        job->running ? worker_of(s, job) : NULL;
		struct waiter **pp = &job->waiters, *expired = NULL;

		if (job->kind == JOB_CALL) {
			jp = &job->next;
			continue;
		}
		while (*pp != NULL) {
			struct waiter *wt = *pp;
			int64_t dl = waiter_deadline(s, w, wt);

			if (dl > now) {
				if (dl < *next_r)
					*next_r = dl;
				pp = &wt->next;
				continue;
			}
			*pp = wt->next;
			wt->next = expired;
			expired = wt;
		}
		if (job->kind == JOB_BODY)
			note_failed(s, job, expired);
		while (expired != NULL) {
			struct waiter *next = expired->next;

			expired->next = got;
			got = expired;
			expired = next;
		}
		jp = &job->next;
	}
	return got;
}

static void *reaper_main(void *arg)
{
	struct fs_sync *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stop) {
		int64_t next;
		struct waiter *expired = take_expired(s, &next);

		if (expired != NULL) {
			pthread_mutex_unlock(&s->lock);
			log_debug("requests waited %lld s for the server; "
			          "giving up on them",
			          (long long)(s->timeout_ms / 1000));
			run_waiters(expired, -ETIMEDOUT);
			pthread_mutex_lock(&s->lock);
			continue;
		}
		if (next == INT64_MAX) {
			pthread_cond_wait(&s->reaper_cond, &s->lock);
		} else {
			/* Input pushes deadlines on without a signal: look
			 * again at the earliest one. */
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			next -= now_ms();
			ts.tv_sec += next / 1000;
			ts.tv_nsec += (next % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->reaper_cond, &s->lock, &ts);
		}
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Waiters that joined job after their body was stored (between a READ's
 * look at the cache and its enqueue) get it now.  job is unlinked. */
static void answer_cached(struct fs_sync *s, struct job *job)
{
	struct waiter *cached = NULL, **pp = &job->waiters;

	while (*pp != NULL) {
		struct waiter *wt = *pp;
		struct cache_key key = {job->id, job->uidvalidity, wt->uid};
		uint64_t size;

		if (cache_body_size_once(s->fs->cache, key, &size) == 0) {
			*pp = wt->next;
			wt->next = cached;
			cached = wt;
		} else {
			pp = &wt->next;
		}
	}
	run_waiters(cached, 0);
}

/* The next job to start: the oldest someone waits for, else the oldest
 * (read-ahead).  Called with s->lock held. */
static struct job *next_job(struct fs_sync *s)
{
	struct job *first = NULL;

	for (struct job *job = s->jobs; job != NULL; job = job->next) {
		if (job->running)
			continue;
		if (job->waiters != NULL)
			return job;
		if (first == NULL)
			first = job;
	}
	return first;
}

static int run_job(struct worker *w, struct job *job)
{
	struct proto_err err = {0};
	int rc = 0;

	switch (job->kind) {
	case JOB_LIST:
		rc = fs_sync_list(w->s->fs, w->c, &err);
		if (rc < 0)
			log_warn("cannot list mailboxes: %s", err.text);
		break;
	case JOB_LISTING: rc = run_listing(w, job); break;
	case JOB_BODY: rc = run_body(w, job); break;
	case JOB_CALL: rc = job->fn(w->c, job->fn_ctx); break;
	}
	return rc;
}

/* Wait ms on s->cond (s->lock held), or less when woken. */
static void nap(struct fs_sync *s, int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct fs_sync *s = w->s;

	/* Log in now, in parallel, not when the first job needs it. */
	if (w->c != NULL) {
		fs_sync_prepare(w->c); /* the mount's first connection */
		imap_set_input_hook(w->c, worker_input, w);
		set_live(w, true);
	}
	if (worker_connect(w) == -EUSERS)
		goto out;

	for (;;) {
		struct job *job = NULL;
		bool leave = false;
		int rc;

		pthread_mutex_lock(&s->lock);
		for (;;) {
			if (s->stop)
				break;
			/* Another connection of the mount was refused for
			 * too many: an idle worker makes room. */
			if (s->retire_wanted > 0 && s->active > 1 && w->live) {
				s->retire_wanted--;
				s->active--;
				log_info("giving up a fetching connection to "
				         "make room: %u left",
				         s->active);
				leave = true;
				break;
			}
			job = next_job(s);
			if (job != NULL)
				break;
			pthread_cond_wait(&s->cond, &s->lock);
		}
		if (s->stop || leave) {
			pthread_mutex_unlock(&s->lock);
			break;
		}
		job->running = true;
		w->job = job;
		pthread_mutex_unlock(&s->lock);

		for (int attempt = 0;; attempt++) {
			const struct proto_err *dead;

			rc = worker_connect(w);
			if (rc < 0)
				break;
			rc = run_job(w, job);
			dead = w->c != NULL ? imap_error(w->c) : NULL;
			if (rc < 0 && dead != NULL)
				rc = -EIO;
			/* A connection the server closed while it sat idle
			 * (an idle timeout, a restart) fails at once: run
			 * the job again on a fresh one.  Not after a timeout
			 * (the bound would double), and not a change (it
			 * may have happened). */
			if (rc == 0 || dead == NULL || attempt > 0 ||
			    dead->cls == PERR_TIMEOUT || job->kind == JOB_CALL)
				break;
			log_info("connection lost: %s; trying again",
			         dead->text);
		}
		if (rc == -EUSERS || rc == -EAGAIN) {
			/* Not run: the job goes back to the queue, for the
			 * workers that have a connection. */
			pthread_mutex_lock(&s->lock);
			job->running = false;
			w->job = NULL;
			pthread_cond_broadcast(&s->cond);
			if (rc == -EAGAIN && !s->stop)
				nap(s, BACKOFF_MIN_MS);
			pthread_mutex_unlock(&s->lock);
			if (rc == -EUSERS)
				break;
			continue;
		}
		if (rc < 0)
			log_debug("%s job for mailbox %u failed: %s",
			          job_name(job->kind), job->id, strerror(-rc));

		pthread_mutex_lock(&s->lock);
		unlink_job(s, job);
		w->job = NULL;
		pthread_mutex_unlock(&s->lock);
		if (job->kind == JOB_BODY)
			answer_cached(s, job);
		pthread_mutex_lock(&s->lock);
		if (job->kind == JOB_BODY)
			note_failed(s, job, job->waiters);
		pthread_mutex_unlock(&s->lock);
		/* Whoever still waits (a body that did not come) gets the
		 * error, or -EIO if the batch as a whole worked. */
		run_waiters(job->waiters, rc < 0                  ? rc
		                          : job->kind == JOB_BODY ? -EIO
		                                                  : 0);
		/* Names that went away (expunged elsewhere, or renumbered by
		 * a UIDVALIDITY change) leave the kernel's caches, and the
		 * directory's attributes when names came or went. */
		for (size_t i = 0; i < job->ngone; i++) {
			char name[24];

			snprintf(name, sizeof(name), "%u.eml", job->gone[i]);
			fs_inval_entry(s->fs->inval, fs_ino_dir(job->id), name);
		}
		if (job->dir_changed)
			fs_inval_dir(s->fs->inval, fs_ino_dir(job->id));
		free_job(job);
	}
out:
	imap_logout(&w->c);
	set_live(w, false);
	return NULL;
}

static int enqueue(struct fs_sync *s, enum job_kind kind, uint32_t id,
                   uint32_t uidvalidity, uint32_t uid, uint64_t until,
                   fs_sync_cb cb, void *ctx)
{
	struct waiter *wt = calloc(1, sizeof(*wt));
	struct job *job = NULL, **tail;

	if (wt == NULL)
		return -ENOMEM;
	wt->cb = cb;
	wt->ctx = ctx;
	wt->uid = uid;
	wt->until = until;
	wt->since = now_ms();

	pthread_mutex_lock(&s->lock);
	if (s->stop || s->down_until > now_ms()) {
		pthread_mutex_unlock(&s->lock);
		free(wt);
		return s->stop ? -ESHUTDOWN : -ENOTCONN;
	}
	if (kind == JOB_BODY && failed_recently(s, id, uidvalidity, uid)) {
		pthread_mutex_unlock(&s->lock);
		free(wt);
		return -EAGAIN;
	}
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next) {
		struct job *j = *tail;

		if (j->kind != kind || j->id != id ||
		    j->uidvalidity != uidvalidity)
			continue;
		if (kind != JOB_BODY || uid_in(j, uid) || !j->running)
			job = j;
		if (job != NULL && !job->running)
			job->prefetch = false;
		if (job != NULL)
			break;
	}
	if (job == NULL) {
		job = calloc(1, sizeof(*job));
		if (job == NULL) {
			pthread_mutex_unlock(&s->lock);
			free(wt);
			return -ENOMEM;
		}
		job->kind = kind;
		job->id = id;
		job->uidvalidity = uidvalidity;
		while (*tail != NULL)
			tail = &(*tail)->next;
		*tail = job;
	}
	if (kind == JOB_BODY && !uid_in(job, uid)) {
		if (job->nuids == job->capuids) {
			size_t ncap = job->capuids ? job->capuids * 2 : 8;
			uint32_t *nv =
			        realloc(job->uids, ncap * sizeof(*job->uids));

			if (nv == NULL) {
				pthread_mutex_unlock(&s->lock);
				free(wt);
				return -ENOMEM;
			}
			job->uids = nv;
			job->capuids = ncap;
		}
		job->uids[job->nuids++] = uid;
	}
	wt->next = job->waiters;
	job->waiters = wt;
	pthread_cond_signal(&s->cond);
	pthread_cond_signal(&s->reaper_cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* Queue read-ahead from UID `from` on, unless read-ahead for that
 * mailbox is already waiting for a worker. */
static void queue_prefetch(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                           uint32_t from)
{
	struct job *job, **tail;

	pthread_mutex_lock(&s->lock);
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next) {
		job = *tail;
		if (job->kind == JOB_BODY && job->id == id && !job->running &&
		    job->prefetch) {
			pthread_mutex_unlock(&s->lock);
			return;
		}
	}
	job = calloc(1, sizeof(*job));
	if (job != NULL)
		job->uids = malloc(8 * sizeof(*job->uids));
	if (job == NULL || job->uids == NULL || s->stop) {
		if (job != NULL)
			free(job->uids);
		free(job);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	job->kind = JOB_BODY;
	job->prefetch = true;
	job->id = id;
	job->uidvalidity = uidvalidity;
	job->uids[0] = from;
	job->nuids = 1;
	job->capuids = 8;
	*tail = job;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

int fs_sync_mailboxes(struct fs_sync *s, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_LIST, 0, 0, 0, 0, cb, ctx);
}

int fs_sync_listing(struct fs_sync *s, uint32_t id, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_LISTING, id, 0, 0, 0, cb, ctx);
}

int fs_sync_call(struct fs_sync *s, fs_sync_fn fn, void *fn_ctx, fs_sync_cb cb,
                 void *ctx)
{
	struct waiter *wt = calloc(1, sizeof(*wt));
	struct job *job = calloc(1, sizeof(*job)), **tail;

	if (wt == NULL || job == NULL) {
		free(wt);
		free(job);
		return -ENOMEM;
	}
	wt->cb = cb;
	wt->ctx = ctx;
	job->kind = JOB_CALL;
	job->fn = fn;
	job->fn_ctx = fn_ctx;
	job->waiters = wt;
	pthread_mutex_lock(&s->lock);
	if (s->stop || s->down_until > now_ms()) {
		int rc = s->stop ? -ESHUTDOWN : -ENOTCONN;

		pthread_mutex_unlock(&s->lock);
		free(wt);
		free(job);
		return rc;
	}
	for (tail = &s->jobs; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = job;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

bool fs_sync_shrink(struct fs_sync *s)
{
	bool ok = false;

	pthread_mutex_lock(&s->lock);
	if (s->active > s->retire_wanted + 1 && s->live > 1) {
		s->retire_wanted++;
		ok = true;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return ok;
}

void fs_sync_listings_unlisted(struct fs_sync *s)
{
	uint32_t *ids = NULL;
	size_t n = 0;

	if (fs_tree_synced_before(s->fs->tree, 1, &ids, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++)
		fs_sync_listing(s, ids[i], NULL, NULL);
	free(ids);
}

int fs_sync_body(struct fs_sync *s, uint32_t id, uint32_t uidvalidity,
                 uint32_t uid, uint64_t until, fs_sync_cb cb, void *ctx)
{
	return enqueue(s, JOB_BODY, id, uidvalidity, uid, until, cb, ctx);
}

int fs_sync_start(struct mailfs *fs, struct imap_client *first,
                  struct fs_sync **sync_r)
{
	struct fs_sync *s = calloc(1, sizeof(*s));
	unsigned n = fs->opts.connections;

	if (s == NULL)
		return -ENOMEM;
	s->fs = fs;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->workers = calloc(n, sizeof(*s->workers));
	if (s->workers == NULL) {
		free(s);
		return -ENOMEM;
	}
	s->nworkers = n;
	s->active = n;
	s->timeout_ms = (int64_t)fs->opts.timeout * 1000;
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->reaper_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->reaper_started =
	        pthread_create(&s->reaper, NULL, reaper_main, s) == 0;
	if (!s->reaper_started)
		log_warn("cannot start the reaper thread: requests wait for "
		         "the network's own timeouts");
	for (unsigned i = 0; i < n; i++) {
		s->workers[i].s = s;
		if (i == 0)
			s->workers[i].c = first;
		if (pthread_create(&s->workers[i].thread, NULL, worker_main,
		                   &s->workers[i]) != 0) {
			log_err("cannot start a network thread");
			break;
		}
		s->workers[i].started = true;
	}
	*sync_r = s;
	return 0;
}

void fs_sync_stop(struct fs_sync **sp)
{
	struct fs_sync *s = *sp;
	struct job *queued;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	/* Wake workers blocked on the network. */
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].job != NULL && s->workers[i].c != NULL)
			imap_shutdown(s->workers[i].c);
	pthread_cond_broadcast(&s->cond);
	pthread_cond_broadcast(&s->reaper_cond);
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->nworkers; i++)
		if (s->workers[i].started)
			pthread_join(s->workers[i].thread, NULL);
	if (s->reaper_started)
		pthread_join(s->reaper, NULL);
	queued = s->jobs;
	s->jobs = NULL;
	while (queued != NULL) {
		struct job *next = queued->next;

		run_waiters(queued->waiters, -ESHUTDOWN);
		free_job(queued);
		queued = next;
	}
	for (unsigned i = 0; i < s->nworkers; i++)
		if (!s->workers[i].started)
			imap_free(&s->workers[i].c);
	free(s->workers);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	pthread_cond_destroy(&s->reaper_cond);
	free(s);
	*sp = NULL;
}
