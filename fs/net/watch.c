#include "fs/net/watch.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/net/sync.h"
#include "fs/imap/tree.h"
#include "proto/log.h"

/* RFC 2177: re-issue IDLE at least every 29 minutes. */
#define IDLE_MAX_MS    (25 * 60 * 1000)
/* Without IDLE, how often INBOX is asked for news. */
#define NOOP_EVERY_MS  3000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000

struct fs_watch {
	struct mailfs *fs;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	struct imap_client *c; /* owned; guarded by lock when replaced */
	uint32_t inbox;        /* mailbox id of INBOX, 0 if none */
	int64_t next_poll;     /* ms, monotonic: background resync */
	bool changed;          /* the server reported something */
	bool live;             /* IDLE runs and INBOX's view is current */
	bool idle;             /* the connection has IDLE */
	bool joined;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep up to ms unless stopped.  Returns true if stopped. */
static bool nap(struct fs_watch *w, int64_t ms)
{
	struct timespec ts;
	bool stop;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&w->lock);
	while (!w->stop &&
	       pthread_cond_timedwait(&w->cond, &w->lock, &ts) != ETIMEDOUT)
		;
	stop = w->stop;
	pthread_mutex_unlock(&w->lock);
	return stop;
}

static bool stopping(struct fs_watch *w)
{
	bool stop;

	pthread_mutex_lock(&w->lock);
	stop = w->stop;
	pthread_mutex_unlock(&w->lock);
	return stop;
}

/* What the server says on its own about the watched mailbox. */
static int news(void *ctx, const struct imap_response *resp)
{
	struct fs_watch *w = ctx;

	if (resp->kind != IMAP_RESP_DATA)
		return 0;
	if (imap_response_is(resp, "EXISTS") ||
	    imap_response_is(resp, "EXPUNGE") ||
	    imap_response_is(resp, "FETCH") ||
	    imap_response_is(resp, "VANISHED")) {
		w->changed = true;
		return 1;
	}
	return 0;
}

static void news_void(void *ctx, const struct imap_response *resp)
{
	news(ctx, resp);
}

/* A resync of INBOX ended: while IDLE goes on, its view stays current
 * (IDLE would tell otherwise). */
static void resynced(void *ctx, int rc)
{
	struct fs_watch *w = ctx;

	pthread_mutex_lock(&w->lock);
	w->live = rc == 0 && w->c != NULL && w->idle;
	pthread_mutex_unlock(&w->lock);
}

static uint32_t find_inbox(struct mailfs *fs)
{
	struct fs_mailbox *mb = NULL;
	uint32_t id = 0;

	if (fs_tree_lookup(fs->tree, 0, "INBOX", &mb) == 0 && mb->selectable)
		id = mb->id;
	fs_mailbox_free(&mb);
	return id;
}

/* Every poll seconds: the mailbox list, and every mailbox listed before
 * whose view is older than poll. */
static void background(struct fs_watch *w)
{
	struct mailfs *fs = w->fs;
	uint32_t *ids = NULL;
	size_t n = 0;
	int64_t poll = (int64_t)fs->opts.poll;

	if (now_ms() < w->next_poll)
		return;
	w->next_poll = now_ms() + poll * 1000;
	if (time(NULL) - fs_tree_loaded(fs->tree) >= poll)
		fs_sync_mailboxes(fs->sync, NULL, NULL);
	fs_sync_quota_refresh(fs->sync);
	if (fs->opts.prefetch_all)
		fs_sync_prefetch(fs->sync);
	if (fs_tree_synced_before(fs->tree, time(NULL) - poll + 1, &ids, &n) <
	    0)
		return;
	for (size_t i = 0; i < n; i++)
		fs_sync_listing(fs->sync, ids[i], NULL, NULL);
	free(ids);
}

static int connect_inbox(struct fs_watch *w, struct proto_err *err)
{
	struct imap_select_info info;
	struct imap_client *c = NULL;
	int rc;

	w->inbox = find_inbox(w->fs);
	if (w->inbox == 0)
		return -ENOENT;
	rc = fs_sync_connect(w->fs, &c, err);
	if (rc < 0)
		return rc;
	/* EXAMINE: read-only, so watching changes nothing (not even
	 * \Recent). */
	rc = imap_select(c, "INBOX", true, &info, err);
	if (rc < 0) {
		imap_free(&c);
		return rc;
	}
	imap_set_untagged_handler(c, news_void, w);
	pthread_mutex_lock(&w->lock);
	w->c = c;
	w->idle = imap_has_cap(c, "IDLE");
	/* Stopped while we connected: fs_watch_stop() found no connection
	 * to wake, so the IDLE that follows must fail at once. */
	if (w->stop)
		imap_shutdown(c);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

/* The watch's connection was refused because the account has too many
 * (see fs/net/sync.h)?  Then the pool gives one of its own up, if it can, so
 * that INBOX stays watched.  0: not such a refusal; 1: it was, and a
 * connection makes room (try again soon); 2: it was, and none can
 * (back off).  Logged once per mount, whichever. */
static int refused(struct fs_watch *w, const struct proto_err *err)
{
	bool room;

	if (!((err->cls == PERR_BUSY && err->code == -EUSERS) ||
	      (err->cls == PERR_BYE && err->code == -ECONNREFUSED)))
		return 0;
	room = fs_sync_shrink(w->fs->sync);
	if (imap_pace_refused(&w->fs->pace))
		log_warn("watching INBOX: the server refused another "
		         "connection (%s); %s (logged once)",
		         err->text,
		         room ? "a fetching connection makes room"
		              : "trying again from time to time");
	return room ? 1 : 2;
}

static void set_live(struct fs_watch *w, bool live)
{
	pthread_mutex_lock(&w->lock);
	w->live = live;
	pthread_mutex_unlock(&w->lock);
}

bool fs_watch_live(struct fs_watch *w, uint32_t id)
{
	bool live;

	if (w == NULL)
		return false;
	pthread_mutex_lock(&w->lock);
	live = w->live && w->inbox == id;
	pthread_mutex_unlock(&w->lock);
	return live;
}

static void drop(struct fs_watch *w)
{
	struct imap_client *c;

	pthread_mutex_lock(&w->lock);
	c = w->c;
	w->c = NULL;
	w->live = false;
	pthread_mutex_unlock(&w->lock);
	imap_free(&c);
}

static void *watch_main(void *arg)
{
	struct fs_watch *w = arg;
	struct mailfs *fs = w->fs;
	unsigned backoff = 0;

	w->next_poll = now_ms() + (int64_t)fs->opts.poll * 1000;
	while (!stopping(w)) {
		struct proto_err err = {0};
		int64_t until_poll;
		int rc;

		background(w);
		if (w->c == NULL) {
			rc = connect_inbox(w, &err);
			if (rc == -ENOENT) {
				/* No INBOX (yet): the background resync is
				 * all there is to do. */
				if (nap(w, (int64_t)fs->opts.poll * 1000))
					break;
				continue;
			}
			if (rc < 0) {
				backoff =
				        backoff ? backoff * 2 : BACKOFF_MIN_MS;
				if (backoff > BACKOFF_MAX_MS)
					backoff = BACKOFF_MAX_MS;
				switch (refused(w, &err)) {
				case 1: backoff = BACKOFF_MIN_MS; break;
				case 2: break;
				default:
					if (!login_reported(fs->login, &err))
						log_info(
						        "watching INBOX: %s (retrying "
						        "in %u s)",
						        err.text,
						        backoff / 1000);
				}
				if (nap(w, backoff))
					break;
				continue;
			}
			backoff = 0;
			/* Whatever happened while we were away. */
			fs_sync_listing(fs->sync, w->inbox, resynced, w);
		}

		until_poll = w->next_poll - now_ms();
		if (until_poll < 1000)
			until_poll = 1000;
		if (imap_has_cap(w->c, "IDLE")) {
			rc = imap_idle(w->c,
			               (int)(until_poll < IDLE_MAX_MS
			                             ? until_poll
			                             : IDLE_MAX_MS),
			               news, w, &err);
		} else {
			if (nap(w, NOOP_EVERY_MS))
				break;
			rc = imap_noop(w->c, &err);
		}
		if (w->changed) {
			/* Current again once this resync is done. */
			w->changed = false;
			set_live(w, false);
			if (fs_sync_listing(fs->sync, w->inbox, resynced, w) <
			    0)
				set_live(w, false);
		}
		if (rc == -EAGAIN && imap_error(w->c) == NULL) {
			/* Throttled (the server asked to wait longer than the
			 * timeout): the connection is fine; try again in a
			 * while, sending nothing meanwhile. */
			if (nap(w, BACKOFF_MIN_MS))
				break;
		} else if (rc < 0 && !stopping(w)) {
			log_info("watching INBOX: %s; reconnecting", err.text);
			drop(w);
			/* A server that refuses IDLE or NOOP outright would
			 * spin: wait as for a failed connection. */
			backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
			if (backoff > BACKOFF_MAX_MS)
				backoff = BACKOFF_MAX_MS;
			if (nap(w, backoff))
				break;
		} else if (rc == 0) {
			backoff = 0;
		}
	}
	drop(w);
	return NULL;
}

int fs_watch_start(struct mailfs *fs, struct fs_watch **watch_r)
{
	struct fs_watch *w = calloc(1, sizeof(*w));

	*watch_r = NULL;
	if (w == NULL)
		return -ENOMEM;
	w->fs = fs;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		pthread_mutex_destroy(&w->lock);
		pthread_cond_destroy(&w->cond);
		free(w);
		return -EAGAIN;
	}
	*watch_r = w;
	return 0;
}

void fs_watch_stop(struct fs_watch *w)
{
	if (w == NULL || w->joined)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	if (w->c != NULL)
		imap_shutdown(w->c);
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	w->joined = true;
}

void fs_watch_free(struct fs_watch **wp)
{
	struct fs_watch *w = *wp;

	if (w == NULL)
		return;
	fs_watch_stop(w);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w);
	*wp = NULL;
}
