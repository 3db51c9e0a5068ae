#include "fs/imap/closes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/log.h"

struct watch {
	uint32_t id; /* mailbox */
	int wd;      /* -1: could not be watched */
};

struct fs_closes {
	const char *mountpoint; /* borrowed */
	int fd;                 /* inotify, -1 for none */
	pthread_mutex_t lock;   /* guards what follows */
	struct watch *v;        /* owned */
	size_t n, cap;
	bool stop;   /* fs_closes_stop() was called */
	bool busy;   /* the watcher waits for the mount */
	bool orphan; /* freed while busy: the watcher frees it */
	bool warned; /* a mailbox could not be watched (logged once) */
};

int fs_closes_new(const char *mountpoint, struct fs_closes **c_r)
{
	struct fs_closes *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return -ENOMEM;
	c->mountpoint = mountpoint;
	pthread_mutex_init(&c->lock, NULL);
	c->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (c->fd < 0)
		log_warn("inotify: %s; files written into the mount are "
		         "uploaded at their last release if the kernel sends "
		         "it, when renamed, or after the unmount",
		         strerror(errno));
	*c_r = c;
	return 0;
}

static void closes_destroy(struct fs_closes *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->v);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Callers hold the lock. */
static struct watch *find_id(struct fs_closes *c, uint32_t id)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->v[i].id == id)
			return &c->v[i];
	return NULL;
}

static struct watch *find_wd(struct fs_closes *c, int wd)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->v[i].wd == wd)
			return &c->v[i];
	return NULL;
}

static void add_locked(struct fs_closes *c, uint32_t id, int wd)
{
	struct watch *w = find_id(c, id);

	if (w == NULL && c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 16;
		struct watch *nv = realloc(c->v, ncap * sizeof(*nv));

		if (nv == NULL)
			return; /* tried again at the next call */
		c->v = nv;
		c->cap = ncap;
	}
	if (w == NULL)
		w = &c->v[c->n++];
	w->id = id;
	w->wd = wd;
}

/* Watch the directory of mailbox id: its wd, or -1 with errno set.  The
 * path goes through the mount; what it reaches must be that mailbox's
 * directory (not, say, a directory of another filesystem mounted over
 * ours). */
static int watch_one(struct fs_closes *c, struct fs_tree *tree, uint32_t id)
{
	char *rel = NULL, path[PATH_MAX];
	struct stat st;
	int rc, wd;

	rc = fs_tree_path(tree, id, &rel);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	rc = snprintf(path, sizeof(path), "%s/%s", c->mountpoint, rel);
	free(rel);
	if (rc < 0 || (size_t)rc >= sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	wd = inotify_add_watch(c->fd, path, IN_CLOSE_WRITE | IN_ONLYDIR);
	if (wd >= 0 && (stat(path, &st) != 0 || st.st_ino != fs_ino_dir(id))) {
		inotify_rm_watch(c->fd, wd);
		errno = EXDEV;
		wd = -1;
	}
	return wd;
}

int fs_closes_watch(struct fs_closes *c, struct fs_tree *tree, uint32_t id)
{
	struct watch *w;
	bool orphan, stop;
	int wd, err, rc;

	if (c->fd < 0)
		return 0;
	pthread_mutex_lock(&c->lock);
	w = find_id(c, id);
	rc = w != NULL ? w->wd >= 0 : -1;
	stop = c->stop;
	c->busy = !stop && w == NULL;
	pthread_mutex_unlock(&c->lock);
	if (stop)
		return -ECANCELED;
	if (rc >= 0) /* tried before */
		return rc;

	wd = watch_one(c, tree, id);
	err = errno;

	pthread_mutex_lock(&c->lock);
	c->busy = false;
	stop = c->stop;
	orphan = c->orphan;
	if (!stop)
		add_locked(c, id, wd);
	if (!stop && wd < 0 && !c->warned) {
		c->warned = true;
		log_warn("cannot watch a mailbox directory through %s (%s): "
		         "files written there are uploaded at their last "
		         "release if the kernel sends it, when renamed, or "
		         "after the unmount",
		         c->mountpoint, strerror(err));
	}
	pthread_mutex_unlock(&c->lock);
	/* Stopped while we waited for the mount: touch nothing that is not
	 * ours. */
	if (orphan)
		closes_destroy(c);
	return stop ? -ECANCELED : wd >= 0;
}

int fs_closes_state(struct fs_closes *c, uint32_t id)
{
	struct watch *w;
	int state;

	if (c->fd < 0)
		return -1;
	pthread_mutex_lock(&c->lock);
	w = find_id(c, id);
	state = w == NULL ? 0 : w->wd >= 0 ? 1 : -1;
	pthread_mutex_unlock(&c->lock);
	return state;
}

int fs_closes_fd(const struct fs_closes *c)
{
	return c->fd;
}

void fs_closes_read(struct fs_closes *c,
                    void (*cb)(void *ctx, uint32_t id, const char *name),
                    void *ctx)
{
	_Alignas(struct inotify_event) char buf[16384];
	ssize_t len;

	if (c->fd < 0)
		return;
	while ((len = read(c->fd, buf, sizeof(buf))) > 0) {
		const struct inotify_event *ev;

		for (char *p = buf; p < buf + len; p += sizeof(*ev) + ev->len) {
			struct watch *w;
			uint32_t id = 0;

			ev = (const struct inotify_event *)p;
			if (ev->mask & IN_Q_OVERFLOW) {
				cb(ctx, 0, NULL);
				continue;
			}
			pthread_mutex_lock(&c->lock);
			w = find_wd(c, ev->wd);
			if (w != NULL) {
				id = w->id;
				/* Gone (rmdir, unmount): it may be watched
				 * again when written to. */
				if (ev->mask & IN_IGNORED)
					*w = c->v[--c->n];
			}
			pthread_mutex_unlock(&c->lock);
			if (id == 0)
				continue;
			if (ev->mask & IN_IGNORED)
				cb(ctx, id, NULL);
			else if ((ev->mask & IN_CLOSE_WRITE) && ev->len > 0)
				cb(ctx, id, ev->name);
		}
	}
}

bool fs_closes_stop(struct fs_closes *c)
{
	bool busy;

	if (c == NULL)
		return true;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	busy = c->busy;
	pthread_mutex_unlock(&c->lock);
	return !busy;
}

void fs_closes_free(struct fs_closes **cp)
{
	struct fs_closes *c = *cp;
	bool busy;

	if (c == NULL)
		return;
	*cp = NULL;
	pthread_mutex_lock(&c->lock);
	busy = c->busy;
	c->orphan = busy;
	pthread_mutex_unlock(&c->lock);
	if (!busy)
		closes_destroy(c);
}
