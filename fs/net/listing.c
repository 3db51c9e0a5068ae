/* A mailbox's listing: what changed since the last one (resync.c) or, the
 * first time and after a UIDVALIDITY change, every message's metadata. */
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

struct stale_ctx {
	const struct listing *l;
	uint32_t *uids;
	size_t n, cap;
};

static int stale_cb(const struct cache_msg *msg, void *ctx)
{
	struct stale_ctx *s = ctx;
	struct meta key = {.uid = msg->key.uid};

	if (s->l->n > 0 && bsearch(&key, s->l->v, s->l->n, sizeof(key),
	                           fs_net_cmp_meta) != NULL)
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

/* The directory's mtime after this listing (fs/imap/dirtime.h), into
 * l->newest: the first listing only makes known what was there (the time
 * first seen, or the newest message when none is stored); a new
 * UIDVALIDITY renames everything; a listing in full of a known mailbox
 * (before: the messages cached until now) changes it only when messages
 * came or went. */
static int listing_mtime(struct cache_txn *txn, struct listing *l,
                         size_t before)
{
	int64_t newest = 0;

	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].internaldate > newest)
			newest = l->v[i].internaldate;
	if (l->old_uidvalidity == 0)
		return fs_dirtime_seen(txn, l->id, newest > 0 ? newest : l->now,
		                       &l->newest, NULL);
	if (l->old_uidvalidity != l->info.uidvalidity || l->deleted > 0 ||
	    l->n > before - l->deleted)
		return fs_dirtime_changed(txn, l->id, l->now, &l->newest);
	l->newest = 0; /* unchanged */
	return 0;
}

static int store_listing(struct cache_txn *txn, void *ctx)
{
	struct listing *l = ctx;
	struct stale_ctx s = {.l = l};
	size_t before = 0;
	int rc = 0;

	l->deleted = 0;
	memset(&l->rematch, 0, sizeof(l->rematch));
	if (l->old_uidvalidity == l->info.uidvalidity)
		rc = cache_msg_count(txn, l->id, l->info.uidvalidity, &before);
	if (rc == 0)
		rc = cache_mailbox_set_state(
		        txn, l->id, l->info.uidvalidity, l->info.uidnext,
		        l->info.highestmodseq, l->now, &l->gen);
	for (size_t i = 0; i < l->n && rc == 0; i++) {
		const struct meta *e = &l->v[i];
		rc = fs_net_put_meta(txn, l->id, l->info.uidvalidity, e);
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
	if (rc == 0)
		rc = listing_mtime(txn, l, before);
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

int fs_net_run_listing(struct worker *w, struct job *job)
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
	if (l.info.exists > 0) {
		rc = imap_fetch_meta(w->c, "1:*", 0, fs_net_meta_cb, &l, &err);
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
		qsort(l.v, l.n, sizeof(*l.v), fs_net_cmp_meta);
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
	fs_net_listing_free(&l);
	fs_mailbox_free(&mb);
	return rc;
}
