/* -o prefetch=all: every body of the account kept in the cache, fetched
 * in the background one batch at a time.
 *
 * The walk goes through the selectable mailboxes in id order and, in
 * each, through the messages whose body is not cached in UID order.  Each
 * step queues one body job (fs_sync_body, whose read-ahead makes it a
 * batch of the following uncached messages) or the listing of a mailbox
 * never listed; the job's callback (on a worker) takes the next step.  So
 * at most one prefetch job is queued at any time, and a user's request
 * waits at most for one batch.  Any failure ends the walk: the next
 * fs_sync_prefetch (every poll, from the watch) starts it again where
 * something is left. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/net/net_int.h"
#include "proto/log.h"

static void step(struct fs_sync *s);

static void stop_walk(struct fs_sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->prefetch_running = false;
	pthread_mutex_unlock(&s->lock);
}

static void fetched(void *ctx, int rc)
{
	struct fs_sync *s = ctx;

	if (rc < 0) {
		log_debug("prefetch paused: %s", strerror(-rc));
		stop_walk(s);
		return;
	}
	pthread_mutex_lock(&s->lock);
	if (s->prefetch_uid != UINT32_MAX)
		s->prefetch_uid++;
	pthread_mutex_unlock(&s->lock);
	step(s);
}

static void listed(void *ctx, int rc)
{
	fetched(ctx, rc < 0 ? rc : 0);
}

struct next {
	uint32_t id, uidvalidity, uid;
	int rc;
};

static int next_read(struct cache_txn *txn, void *ctx)
{
	struct next *n = ctx;

	n->rc = cache_msg_next_uncached(txn, n->id, n->uidvalidity, n->uid,
	                                &n->uid, NULL);
	return n->rc == -ENOENT ? 0 : n->rc;
}

/* Queue the job of the next step, or end the walk. */
static void step(struct fs_sync *s)
{
	struct mailfs *fs = s->fs;
	uint32_t *ids = NULL, id, uid;
	size_t n = 0;
	int rc;

	pthread_mutex_lock(&s->lock);
	id = s->prefetch_id;
	uid = s->prefetch_uid;
	pthread_mutex_unlock(&s->lock);
	if (fs_tree_selectable(fs->tree, &ids, &n) < 0) {
		stop_walk(s);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t uidvalidity, gen;
		struct next nx;

		if (ids[i] < id)
			continue;
		if (ids[i] > id) {
			id = ids[i];
			uid = 1;
			pthread_mutex_lock(&s->lock);
			s->prefetch_listed = false;
			pthread_mutex_unlock(&s->lock);
		}
		if (fs_tree_current(fs->tree, id, &uidvalidity, &gen) < 0)
			continue;
		if (uidvalidity == 0) {
			bool again;

			pthread_mutex_lock(&s->lock);
			again = !s->prefetch_listed;
			s->prefetch_listed = true;
			s->prefetch_id = id;
			s->prefetch_uid = 0;
			pthread_mutex_unlock(&s->lock);
			if (!again)
				continue;
			free(ids);
			/* listed() goes on with the same mailbox. */
			if (fs_sync_listing(s, id, listed, s) < 0)
				stop_walk(s);
			return;
		}
		nx = (struct next){id, uidvalidity, uid ? uid : 1, 0};
		rc = cache_run_read(fs->cache, next_read, &nx);
		if (rc < 0) {
			free(ids);
			stop_walk(s);
			return;
		}
		if (nx.rc == -ENOENT)
			continue;
		pthread_mutex_lock(&s->lock);
		s->prefetch_id = id;
		s->prefetch_uid = nx.uid;
		pthread_mutex_unlock(&s->lock);
		free(ids);
		if (fs_sync_body(s, id, uidvalidity, nx.uid, 0, fetched, s) < 0)
			stop_walk(s);
		return;
	}
	free(ids);
	log_debug("prefetch: every body is cached");
	stop_walk(s);
}

void fs_sync_prefetch(struct fs_sync *s)
{
	pthread_mutex_lock(&s->lock);
	if (s->prefetch_running || s->stop) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	s->prefetch_running = true;
	s->prefetch_id = 0;
	s->prefetch_uid = 1;
	s->prefetch_listed = false;
	pthread_mutex_unlock(&s->lock);
	step(s);
}
