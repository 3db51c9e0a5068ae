/* A mailbox's listing: what changed since the last one (resync.c) or, the
 * first time and after a UIDVALIDITY change, every message's metadata.
 *
 * A full listing is stored as it arrives, a batch at a time, so that the
 * memory it takes does not grow with the mailbox: the records of a batch
 * are committed (and freed) while the rest is still coming, and only the
 * UIDs are kept to the end.  The mailbox's state (UIDVALIDITY, UIDNEXT,
 * HIGHESTMODSEQ, the time of the listing), the removal of the messages
 * the server no longer has and the directory's mtime are stored last, in
 * one transaction, once the whole answer is in: until then the mount
 * shows what it showed before (fs->tree keeps the old state), and a
 * listing cut short leaves the mailbox to be listed in full again. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/imap/dirtime.h"
#include "proto/log.h"

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

/* A batch: at most this many messages, or about this many bytes of
 * their metadata, before it is stored. */
#define LISTING_BATCH       4096
#define LISTING_BATCH_BYTES (2u << 20)

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int put_batch(struct cache_txn *txn, void *ctx)
{
	struct listing *l = ctx;
	int rc = 0;

	for (size_t i = 0; i < l->n && rc == 0; i++)
		rc = fs_net_put_meta(txn, l->id, l->info.uidvalidity, &l->v[i]);
	return rc;
}

static int put_stored(struct cache_txn *txn, void *ctx)
{
	struct listing *l = ctx;
	int rc = 0;

	for (size_t i = 0; i < l->sn && rc == 0; i++)
		rc = fs_net_put_meta(txn, l->id, l->info.uidvalidity,
		                     &l->sv[i]);
	return rc;
}

/* The store thread: commits l->sv while the worker reads on.  It touches
 * sv and store_rc only, and reads sn, id and info, which do not change
 * while it runs. */
static void *store_main(void *arg)
{
	struct listing *l = arg;

	l->store_rc = cache_run_write(l->cache, put_stored, l);
	return NULL;
}

/* Wait for the batch being stored, and free it.  Called by the worker
 * before each new batch and once the fetch is over. */
static void store_wait(struct listing *l)
{
	if (l->storing) {
		int64_t t0 = now_ms();

		pthread_join(l->store_thread, NULL);
		l->storing = false;
		l->store_ms += now_ms() - t0;
	}
	if (l->store_rc < 0 && l->store_err == 0)
		l->store_err = l->store_rc;
	fs_net_meta_clear(l->sv, l->sn);
	l->sn = 0;
}

/* The batch is full: hand it to the store thread (once the previous one
 * is stored) and go on with an empty one.  Nothing is stored once a batch
 * failed or memory ran out: the listing then fails at its end. */
static void flush_batch(struct listing *l)
{
	struct meta *v = l->v;
	size_t cap = l->cap;

	store_wait(l);
	if (l->store_err < 0 || l->oom || l->n == 0) {
		fs_net_listing_clear(l);
		l->bytes = 0;
		return;
	}
	l->v = l->sv;
	l->cap = l->scap;
	l->sv = v;
	l->sn = l->n;
	l->scap = cap;
	l->n = 0;
	l->bytes = 0;
	if (pthread_create(&l->store_thread, NULL, store_main, l) == 0) {
		l->storing = true;
	} else {
		store_main(l); /* no thread: store it here */
		store_wait(l);
	}
}

/* imap_fetch_meta's callback of a full listing. */
static void listing_meta_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct listing *l = ctx;
	size_t n = l->n;

	fs_net_meta_cb(l, m);
	if (l->n == n)
		return; /* out of memory */
	if (l->nuids == l->capuids) {
		size_t ncap = l->capuids ? l->capuids * 2 : 1024;
		uint32_t *nv = realloc(l->uids, ncap * sizeof(*nv));

		if (nv == NULL) {
			l->oom = true;
			return;
		}
		l->uids = nv;
		l->capuids = ncap;
	}
	l->uids[l->nuids++] = m->uid;
	if (m->internaldate > l->newest_date)
		l->newest_date = m->internaldate;
	l->bytes += sizeof(struct meta) + m->headers_len +
	            (m->flags != NULL ? strlen(m->flags) : 0);
	if (l->n >= LISTING_BATCH || l->bytes >= LISTING_BATCH_BYTES)
		flush_batch(l);
}

struct stale_ctx {
	const struct listing *l;
	uint32_t *uids;
	size_t n, cap;
};

static int stale_cb(uint32_t uid, void *ctx)
{
	struct stale_ctx *s = ctx;

	if (s->l->nuids > 0 && bsearch(&uid, s->l->uids, s->l->nuids,
	                               sizeof(uid), cmp_u32) != NULL)
		return 0;
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 64;
		uint32_t *n = realloc(s->uids, ncap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		s->uids = n;
		s->cap = ncap;
	}
	s->uids[s->n++] = uid;
	return 0;
}

/* The end of a full listing: the last batch, the mailbox's state, the
 * messages gone, the directory's mtime. */
/* The directory's mtime after this listing (fs/imap/dirtime.h), into
 * l->newest: the first listing only makes known what was there (the time
 * first seen, or the newest message when none is stored); a new
 * UIDVALIDITY renames everything; a listing in full of a known mailbox
 * (l->before: the messages cached until it began) changes it only when
 * messages came or went. */
static int listing_mtime(struct cache_txn *txn, struct listing *l)
{
	int64_t newest = l->newest_date;

	if (l->old_uidvalidity == 0)
		return fs_dirtime_seen(txn, l->id, newest > 0 ? newest : l->now,
		                       &l->newest, NULL);
	if (l->old_uidvalidity != l->info.uidvalidity || l->deleted > 0 ||
	    l->nuids > l->before - l->deleted)
		return fs_dirtime_changed(txn, l->id, l->now, &l->newest);
	l->newest = 0; /* unchanged */
	return 0;
}

/* The end of a full listing: the last batch, the mailbox's state, the
 * messages gone, the directory's mtime. */
static int store_listing(struct cache_txn *txn, void *ctx)
{
	struct listing *l = ctx;
	struct stale_ctx s = {.l = l};
	int rc = 0;

	l->deleted = 0;
	memset(&l->rematch, 0, sizeof(l->rematch));
	rc = cache_mailbox_set_state(txn, l->id, l->info.uidvalidity,
	                             l->info.uidnext, l->info.highestmodseq,
	                             l->now, &l->gen);
	if (rc == 0)
		rc = put_batch(txn, l);
	if (rc < 0)
		return rc;
	/* Messages the server no longer has were expunged elsewhere. */
	rc = cache_msg_foreach_uid(txn, l->id, l->info.uidvalidity, 1, stale_cb,
	                           &s);
	for (size_t i = 0; i < s.n && rc == 0; i++)
		rc = cache_msg_delete(
		        txn, (struct cache_key){l->id, l->info.uidvalidity,
		                                s.uids[i]});
	l->deleted = s.n;
	free(l->gone);
	l->gone = s.uids;
	l->ngone = s.n;
	if (rc == 0)
		rc = listing_mtime(txn, l);
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
	uint32_t id, uidvalidity;
	size_t n;
};

static int count_msgs(struct cache_txn *txn, void *ctx)
{
	struct count_ctx *c = ctx;

	return cache_msg_count(txn, c->id, c->uidvalidity, &c->n);
}

static int read_state(struct cache_txn *txn, void *ctx)
{
	struct count_ctx *c = ctx;

	return cache_mailbox_get(txn, c->id, &c->mb);
}

int fs_net_run_listing(struct worker *w, struct job *job)
{
	uint32_t id = job->id;
	struct mailfs *fs = w->s->fs;
	struct fs_mailbox *mb = NULL;
	struct count_ctx cc = {.id = id};
	struct listing l = {.id = id, .cache = fs->cache};
	struct proto_err err = {0};
	int64_t t0 = now_ms(), t_fetched = t0;
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
		rc = fs_net_resync(w, job, mb, cc.mb);
		if (rc != -EAGAIN)
			goto out;
	}
	rc = imap_select(w->c, mb->name, true, &l.info, &err);
	if (rc < 0) {
		log_warn("cannot open mailbox %s: %s", mb->name, err.text);
		goto out;
	}
	l.old_uidvalidity = cc.mb->uidvalidity;
	/* What was cached before the batches come in (directory mtime). */
	if (l.old_uidvalidity == l.info.uidvalidity) {
		struct count_ctx n = {.id = id,
		                      .uidvalidity = l.info.uidvalidity};

		rc = cache_run_read(fs->cache, count_msgs, &n);
		if (rc < 0)
			goto out;
		l.before = n.n;
	}
	if (l.info.exists > 0) {
		rc = imap_fetch_meta(w->c, "1:*", 0, listing_meta_cb, &l, &err);
		store_wait(&l);
		if (rc < 0) {
			log_warn("cannot list mailbox %s: %s", mb->name,
			         err.text);
			goto out;
		}
	}
	t_fetched = now_ms();
	if (l.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (l.store_err < 0) {
		rc = l.store_err;
		log_err("cannot store the listing of %s: %s", mb->name,
		        strerror(-rc));
		goto out;
	}
	for (size_t i = 1; i < l.nuids; i++) {
		if (l.uids[i - 1] >= l.uids[i]) {
			qsort(l.uids, l.nuids, sizeof(*l.uids), cmp_u32);
			break;
		}
	}
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
	log_debug("listing of %s: %zu messages, %zu gone, %lld ms (%lld ms "
	          "waiting for batches to be stored, %lld ms after the "
	          "fetch)",
	          mb->name, l.nuids, l.deleted, (long long)(now_ms() - t0),
	          (long long)l.store_ms, (long long)(now_ms() - t_fetched));
out:
	cache_mailbox_free(&cc.mb);
	fs_net_listing_free(&l);
	fs_mailbox_free(&mb);
	return rc;
}
