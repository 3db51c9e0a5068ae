/* The mailbox list: LIST, the parents a server leaves out, renames made
 * elsewhere (told by UIDVALIDITY), and its store into the cache, which
 * leaves out a mailbox it cannot store rather than the whole list. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/imap/dirtime.h"
#include "fs/inval.h"
#include "proto/log.h"

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
	/* Directories whose subdirectories changed (fs/imap/dirtime.h). */
	struct fs_dirtime_parents parents;
	int64_t now;
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
	fs_dirtime_parents_clear(&l->parents);
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
	struct fs_dirtime_parents *parents = &v->l->parents;
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
		rc = cache_mailbox_get(txn, from, &old);
		if (rc == 0)
			rc = fs_dirtime_parents_add(parents, old->name,
			                            old->delim);
		cache_mailbox_free(&old);
		if (rc == 0)
			rc = fs_dirtime_parents_add(parents, e->name, e->delim);
		if (rc == 0)
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

		rc = cache_mailbox_add(txn, &mb, &id);
		if (rc == 0)
			rc = fs_dirtime_parents_add(parents, e->name, e->delim);
		if (rc == 0)
			rc = fs_dirtime_seen(txn, id, v->l->now, NULL, NULL);
		return rc;
	}
	/* Never shown 1970: the time it was first seen (fs/imap/dirtime.h). */
	if (rc == 0)
		rc = fs_dirtime_seen(txn, old->id, v->l->now, NULL, NULL);
	if (rc == 0 && old->deleted)
		rc = fs_dirtime_parents_add(parents, e->name, e->delim);
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

/* Mailbox id went away: its parent's entries changed. */
static int gone_parent(struct cache_txn *txn, struct list_result *l,
                       uint32_t id)
{
	struct cache_mailbox *mb = NULL;
	int rc = cache_mailbox_get(txn, id, &mb);

	if (rc == 0)
		rc = fs_dirtime_parents_add(&l->parents, mb->name, mb->delim);
	cache_mailbox_free(&mb);
	return rc;
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
	fs_dirtime_parents_clear(&l->parents);
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
		if (rc == 0)
			rc = gone_parent(txn, l, v.ids[i]);
		if (rc < 0)
			l->failed_id = v.ids[i];
	}
	free(v.ids);
	/* The directories whose subdirectories came, went or moved. */
	if (rc == 0)
		rc = fs_dirtime_seen(txn, FS_DIRTIME_ROOT, l->now, NULL, NULL);
	if (rc == 0)
		rc = fs_dirtime_parents_bump(&l->parents, txn, l->now);
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
	l.now = time(NULL);
	rc = store_list_all(fs, &l);
	if (rc < 0) {
		proto_err_set(err, PERR_LOCAL, rc,
		              "cannot store the mailbox list: %s",
		              strerror(-rc));
		goto out;
	}
	rc = fs_tree_load(fs->tree, fs->cache);
	/* Their mtimes moved: the kernel asks again (fs/inval.h). */
	for (size_t i = 0; i < l.parents.nids; i++)
		fs_inval_dir(fs->inval, fs_ino_dir(l.parents.ids[i]));
	log_debug("mailbox list: %zu mailboxes", l.n);
out:
	list_free(&l);
	return rc;
}
