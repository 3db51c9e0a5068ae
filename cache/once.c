/* The one-shot helpers of cache.h: each call one transaction of its own,
 * through cache_run_read or cache_run_write.  Owns no database. */
#include "cache_int.h"

#include <stddef.h>

/* ------------------------------------------------------------------ */
/* One-shot helpers */

struct once {
	struct cache_key key;
	uint64_t u64;
	const void *data;
	size_t len;
	const char *str;
	int64_t when;
	void *buf;
	size_t *n_r;
	uint64_t *u64_r;
	uint32_t *u32_r;
	struct cache_msg **msg_r;
	const struct cache_pending *pending;
};

static int once_body_read(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_read(t, o->key, o->u64, o->buf, o->len, o->n_r);
}

int cache_body_read_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, void *buf, size_t len, size_t *n_r)
{
	struct once o = {
	        .key = key, .u64 = offset, .buf = buf, .len = len, .n_r = n_r};

	return cache_run_read(cache, once_body_read, &o);
}

struct once_view {
	struct cache_key key;
	uint64_t offset;
	size_t len;
	int (*fn)(void *ctx, const void *data, size_t n);
	void *ctx;
};

static int once_body_view(struct cache_txn *t, void *ctx)
{
	struct once_view *o = ctx;

	return cache_body_view(t, o->key, o->offset, o->len, o->fn, o->ctx);
}

int cache_body_view_once(struct cache *cache, struct cache_key key,
                         uint64_t offset, size_t len,
                         int (*fn)(void *ctx, const void *data, size_t n),
                         void *ctx)
{
	struct once_view o = {key, offset, len, fn, ctx};

	return cache_run_read(cache, once_body_view, &o);
}

static int once_body_size(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_size(t, o->key, o->u64_r);
}

int cache_body_size_once(struct cache *cache, struct cache_key key,
                         uint64_t *size_r)
{
	struct once o = {.key = key, .u64_r = size_r};

	return cache_run_read(cache, once_body_size, &o);
}

static int once_body_put(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_body_put(t, o->key, o->data, o->len);
}

int cache_body_put_once(struct cache *cache, struct cache_key key,
                        const void *data, size_t len)
{
	struct once o = {.key = key, .data = data, .len = len};

	return cache_run_write(cache, once_body_put, &o);
}

static int once_msg_get(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_msg_get(t, o->key, o->msg_r);
}

int cache_msg_get_once(struct cache *cache, struct cache_key key,
                       struct cache_msg **msg_r)
{
	struct once o = {.key = key, .msg_r = msg_r};

	return cache_run_read(cache, once_msg_get, &o);
}

static int once_msg_set_flags(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_msg_set_flags(t, o->key, o->str, o->u64);
}

int cache_msg_set_flags_once(struct cache *cache, struct cache_key key,
                             const char *flags, uint64_t modseq)
{
	struct once o = {.key = key, .str = flags, .u64 = modseq};

	return cache_run_write(cache, once_msg_set_flags, &o);
}

static int once_pop_add(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pop_add(t, o->str, o->data, o->len, o->when, o->u32_r);
}

int cache_pop_add_once(struct cache *cache, const char *uidl, const void *body,
                       size_t len, int64_t downloaded, uint32_t *num_r)
{
	struct once o = {.str = uidl,
	                 .data = body,
	                 .len = len,
	                 .when = downloaded,
	                 .u32_r = num_r};

	return cache_run_write(cache, once_pop_add, &o);
}

static int once_pending_add(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pending_add(t, o->pending, o->u64_r);
}

int cache_pending_add_once(struct cache *cache, const struct cache_pending *p,
                           uint64_t *seq_r)
{
	struct once o = {.pending = p, .u64_r = seq_r};

	return cache_run_write(cache, once_pending_add, &o);
}

static int once_pending_delete(struct cache_txn *t, void *ctx)
{
	struct once *o = ctx;

	return cache_pending_delete(t, o->u64);
}

int cache_pending_delete_once(struct cache *cache, uint64_t seq)
{
	struct once o = {.u64 = seq};

	return cache_run_write(cache, once_pending_delete, &o);
}
