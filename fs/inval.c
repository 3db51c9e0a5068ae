#include "fs/inval.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/log.h"

struct inval {
	fuse_ino_t parent;
	bool dir;   /* the directory's attributes, not a name */
	char *name; /* owned */
	struct inval *next;
};

/* A size correction not yet told to the kernel. */
struct resized {
	fuse_ino_t ino;
	uint64_t old_size, size;
	struct resized *next;
};

struct fs_inval {
	struct fuse_session *se; /* borrowed */
	pthread_mutex_t rlock;
	struct resized *resized; /* owned list; short-lived entries */
	atomic_uint nresized;    /* READs skip the lock while it is 0 */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	struct inval *head, **tail; /* owned queue, oldest first */
};

static void send_one(struct fs_inval *inv, const struct inval *iv)
{
	int rc;

	if (iv->dir)
		rc = fuse_lowlevel_notify_inval_inode(inv->se, iv->parent, -1,
		                                      0);
	else
		rc = fuse_lowlevel_notify_inval_entry(
		        inv->se, iv->parent, iv->name, strlen(iv->name));
	/* -ENOENT: the kernel does not hold it, nothing to forget. */
	if (rc < 0 && rc != -ENOENT)
		log_debug("invalidation of %s in %llu failed: %s",
		          iv->dir ? "attributes" : iv->name,
		          (unsigned long long)iv->parent, strerror(-rc));
}

static void *inval_main(void *arg)
{
	struct fs_inval *inv = arg;

	pthread_mutex_lock(&inv->lock);
	for (;;) {
		struct inval *iv;

		while (inv->head == NULL && !inv->stop)
			pthread_cond_wait(&inv->cond, &inv->lock);
		if (inv->stop)
			break;
		iv = inv->head;
		inv->head = iv->next;
		if (inv->head == NULL)
			inv->tail = &inv->head;
		pthread_mutex_unlock(&inv->lock);
		send_one(inv, iv);
		free(iv->name);
		free(iv);
		pthread_mutex_lock(&inv->lock);
	}
	pthread_mutex_unlock(&inv->lock);
	return NULL;
}

int fs_inval_start(struct fuse_session *se, struct fs_inval **inv_r)
{
	struct fs_inval *inv = calloc(1, sizeof(*inv));

	if (inv == NULL)
		return -ENOMEM;
	inv->se = se;
	inv->tail = &inv->head;
	pthread_mutex_init(&inv->lock, NULL);
	pthread_mutex_init(&inv->rlock, NULL);
	pthread_cond_init(&inv->cond, NULL);
	if (pthread_create(&inv->thread, NULL, inval_main, inv) != 0) {
		pthread_cond_destroy(&inv->cond);
		pthread_mutex_destroy(&inv->lock);
		pthread_mutex_destroy(&inv->rlock);
		free(inv);
		return -EAGAIN;
	}
	*inv_r = inv;
	return 0;
}

void fs_inval_stop(struct fs_inval **invp)
{
	struct fs_inval *inv = *invp;

	if (inv == NULL)
		return;
	pthread_mutex_lock(&inv->lock);
	inv->stop = true;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
	pthread_join(inv->thread, NULL);
	while (inv->head != NULL) {
		struct inval *next = inv->head->next;

		free(inv->head->name);
		free(inv->head);
		inv->head = next;
	}
	while (inv->resized != NULL) {
		struct resized *next = inv->resized->next;

		free(inv->resized);
		inv->resized = next;
	}
	pthread_cond_destroy(&inv->cond);
	pthread_mutex_destroy(&inv->lock);
	pthread_mutex_destroy(&inv->rlock);
	free(inv);
	*invp = NULL;
}

void fs_inval_attr(struct fs_inval *inv, fuse_ino_t ino)
{
	int rc;

	if (inv == NULL)
		return;
	/* Offset -1: the attributes only; no page is touched (fs/inval.h). */
	rc = fuse_lowlevel_notify_inval_inode(inv->se, ino, -1, 0);
	if (rc < 0 && rc != -ENOENT)
		log_debug("invalidation of inode %llu failed: %s",
		          (unsigned long long)ino, strerror(-rc));
}

void fs_inval_resized(struct fs_inval *inv, fuse_ino_t ino, uint64_t old_size,
                      uint64_t size)
{
	struct resized *r;

	if (inv == NULL)
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL) {
		/* Cannot keep the rule: tell the kernel now, which is right
		 * but for READs that end a shorter body (the next read then
		 * asks for the size). */
		fs_inval_attr(inv, ino);
		return;
	}
	*r = (struct resized){ino, old_size, size, NULL};
	pthread_mutex_lock(&inv->rlock);
	for (struct resized *o = inv->resized; o != NULL; o = o->next) {
		if (o->ino == ino) {
			o->size = size; /* a store tried again */
			pthread_mutex_unlock(&inv->rlock);
			free(r);
			return;
		}
	}
	r->next = inv->resized;
	inv->resized = r;
	atomic_fetch_add(&inv->nresized, 1);
	pthread_mutex_unlock(&inv->rlock);
}

/* Detach the pending correction of ino and return it (to free), or NULL.
 * A READ up to end (0: none) that reaches the end of a shorter body
 * leaves it in place and sets *after_r. */
static struct resized *take_resized(struct fs_inval *inv, fuse_ino_t ino,
                                    uint64_t end, bool *after_r)
{
	struct resized *got = NULL, **pp;

	*after_r = false;
	if (inv == NULL || atomic_load(&inv->nresized) == 0)
		return NULL;
	pthread_mutex_lock(&inv->rlock);
	for (pp = &inv->resized; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->ino != ino)
			continue;
		if (end != 0 && (*pp)->size < (*pp)->old_size &&
		    end >= (*pp)->size) {
			*after_r = true;
			break;
		}
		got = *pp;
		*pp = got->next;
		atomic_fetch_sub(&inv->nresized, 1);
		break;
	}
	pthread_mutex_unlock(&inv->rlock);
	return got;
}

bool fs_inval_read_begin(struct fs_inval *inv, fuse_ino_t ino, uint64_t end)
{
	bool after;
	struct resized *r = take_resized(inv, ino, end, &after);

	if (r != NULL) {
		fs_inval_attr(inv, ino);
		free(r);
	}
	return after;
}

void fs_inval_read_end(struct fs_inval *inv, fuse_ino_t ino)
{
	fs_inval_settle(inv, ino);
}

void fs_inval_settle(struct fs_inval *inv, fuse_ino_t ino)
{
	bool after;
	struct resized *r = take_resized(inv, ino, 0, &after);

	if (r != NULL) {
		fs_inval_attr(inv, ino);
		free(r);
	}
}

static void queue(struct fs_inval *inv, fuse_ino_t parent, const char *name)
{
	struct inval *iv;

	if (inv == NULL)
		return;
	iv = calloc(1, sizeof(*iv));
	if (iv == NULL)
		return; /* the kernel's timeouts will do */
	iv->parent = parent;
	iv->dir = name == NULL;
	if (name != NULL) {
		iv->name = strdup(name);
		if (iv->name == NULL) {
			free(iv);
			return;
		}
	}
	pthread_mutex_lock(&inv->lock);
	if (inv->stop) {
		pthread_mutex_unlock(&inv->lock);
		free(iv->name);
		free(iv);
		return;
	}
	*inv->tail = iv;
	inv->tail = &iv->next;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
}

void fs_inval_entry(struct fs_inval *inv, fuse_ino_t parent, const char *name)
{
	queue(inv, parent, name);
}

void fs_inval_dir(struct fs_inval *inv, fuse_ino_t dir)
{
	queue(inv, dir, NULL);
}
