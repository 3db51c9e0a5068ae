/* The incremental listing of a mailbox listed before: new messages, flag
 * changes and expunges, without fetching what the cache knows. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fs/imap/dirtime.h"
#include "proto/log.h"

static int cmp_u32_key(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

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
	f->flags = fs_net_flags_without_recent(flags);
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
	fs_net_meta_cb(&r->fresh, m);
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
	fs_net_listing_free(&r->fresh);
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

/* Is message uid new to the cache (not uploaded or moved in through the
 * mount, which cached it at once)?  Then *came is set. */
static int arrived(struct cache_txn *txn, const struct resync *r, uint32_t uid,
                   bool *came)
{
	struct cache_msg *m = NULL;
	int rc = cache_msg_get(
	        txn, (struct cache_key){r->id, r->uidvalidity, uid}, &m);

	cache_msg_free(&m);
	if (rc == -ENOENT)
		*came = true;
	return rc == -ENOENT ? 0 : rc;
}

static int store_resync(struct cache_txn *txn, void *ctx)
{
	struct resync *r = ctx;
	bool came = false;
	int rc;

	r->changed = r->changed_base;
	r->ngone = r->gone_base;
	rc = cache_mailbox_set_state(txn, r->id, r->uidvalidity,
	                             r->info.uidnext, r->info.highestmodseq,
	                             r->now, &r->gen);
	for (size_t i = 0; i < r->fresh.n && rc == 0 && !r->fresh_stored; i++) {
		const struct meta *e = &r->fresh.v[i];

		if (!came)
			rc = arrived(txn, r, e->uid, &came);
		if (rc == 0)
			rc = fs_net_put_meta(txn, r->id, r->uidvalidity, e);
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
	/* Names came or went: the directory changed (fs/imap/dirtime.h). */
	if (rc == 0 && (came || r->ngone > r->gone_base))
		rc = fs_dirtime_changed(txn, r->id, r->now, &r->mtime);
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
int fs_net_resync(struct worker *w, struct job *job,
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
		qsort(r.fresh.v, r.fresh.n, sizeof(*r.fresh.v),
		      fs_net_cmp_meta);
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
	job->dir_changed = r.ngone > 0 || r.fresh.n > 0 || r.mtime != 0;
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
