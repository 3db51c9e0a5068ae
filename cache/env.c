/* The LMDB wrapper of an account cache: transactions with their sticky
 * errors, the one place LMDB codes become errnos, the map and its growth
 * (and the trimming of its resident pages), and the database primitives
 * of the schema files.  It calls nothing else in cache/; opening and
 * closing an environment is open.c's.  See cache.h for the contract,
 * cache_int.h for the module's parts. */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define GROW_WAIT_S 10

/* ------------------------------------------------------------------ */
/* Errors */

/* The one place LMDB codes become errnos. */
int mdb_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS: return 0;
	case MDB_NOTFOUND: return -ENOENT;
	case MDB_KEYEXIST: return -EEXIST;
	case MDB_MAP_FULL: return -ENOSPC;
	case MDB_READERS_FULL: return -EAGAIN;
	case MDB_TLS_FULL: return -EAGAIN;
	case MDB_MAP_RESIZED: return -EAGAIN;
	case MDB_TXN_FULL: return -E2BIG;
	case MDB_CURSOR_FULL: return -E2BIG;
	case MDB_PAGE_FULL: return -E2BIG;
	case MDB_BAD_VALSIZE: return -EINVAL;
	case MDB_BAD_RSLOT: return -EINVAL;
	case MDB_BAD_TXN: return -EINVAL;
	case MDB_BAD_DBI: return -EINVAL;
	case MDB_INCOMPATIBLE: return -EIO;
	case MDB_DBS_FULL: return -EIO;
	case MDB_PAGE_NOTFOUND: return -EIO;
	case MDB_CORRUPTED: return -EIO;
	case MDB_PANIC: return -EIO;
	case MDB_VERSION_MISMATCH: return -EIO;
	case MDB_INVALID: return -EIO;
	default:
		/* LMDB passes system errors through as positive errnos. */
		if (rc > 0)
			return -rc;
		return -EIO;
	}
}

int txn_fail(struct cache_txn *t, int err)
{
	if (t->err == 0)
		t->err = err;
	return err;
}

int txn_mdb_fail(struct cache_txn *t, int rc)
{
	if (rc == MDB_MAP_FULL)
		t->map_full = true;
	if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_PANIC)
		log_err("cache %s: %s", t->cache->dir, mdb_strerror(rc));
	return txn_fail(t, mdb_errno(rc));
}

int txn_check(struct cache_txn *t, bool write)
{
	if (t == NULL)
		return -EINVAL;
	if (t->err)
		return t->err;
	if (write && !t->write)
		return txn_fail(t, -EROFS);
	return 0;
}

int corrupt(struct cache_txn *t, const char *what, uint64_t a, uint64_t b,
            uint64_t c)
{
	log_err("cache %s: undecodable %s record (%llu %llu %llu)",
	        t->cache->dir, what, (unsigned long long)a,
	        (unsigned long long)b, (unsigned long long)c);
	return txn_fail(t, -EIO);
}

/* ------------------------------------------------------------------ */
/* Database primitives.  -ENOENT from db_get is not recorded: the callers
 * decide whether a miss is a failure. */

int db_get(struct cache_txn *t, int db, const void *k, size_t klen, MDB_val *v)
{
	MDB_val key = {klen, (void *)k};
	int rc = mdb_get(t->txn, t->cache->dbi[db], &key, v);

	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc)
		return txn_mdb_fail(t, rc);
	return 0;
}

/* Reserve vlen bytes for key and return where to write them. */
int db_reserve(struct cache_txn *t, int db, const void *k, size_t klen,
               size_t vlen, unsigned flags, uint8_t **p_r)
{
	MDB_val key = {klen, (void *)k};
	MDB_val val = {vlen, NULL};
	int rc;

	*p_r = NULL;
	/* Counted before the put: after MDB_MAP_FULL it says how much room
	 * the retry needs. */
	t->bytes += klen + vlen;
	rc = mdb_put(t->txn, t->cache->dbi[db], &key, &val,
	             flags | MDB_RESERVE);
	if (rc == MDB_KEYEXIST)
		return txn_fail(t, -EEXIST);
	if (rc)
		return txn_mdb_fail(t, rc);
	*p_r = val.mv_data;
	return 0;
}

int db_put(struct cache_txn *t, int db, const void *k, size_t klen,
           const void *v, size_t vlen, unsigned flags)
{
	uint8_t *p = NULL;
	int rc = db_reserve(t, db, k, klen, vlen, flags, &p);

	if (rc == 0 && vlen)
		memcpy(p, v, vlen);
	return rc;
}

/* Deleting what is not there succeeds. */
int db_del(struct cache_txn *t, int db, const void *k, size_t klen)
{
	MDB_val key = {klen, (void *)k};
	int rc = mdb_del(t->txn, t->cache->dbi[db], &key, NULL);

	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return txn_mdb_fail(t, rc);
	return 0;
}

/* Call fn for every entry whose key starts with prefix[0..plen), from the
 * first key >= start[0..slen) on (start begins with the prefix).  fn
 * returns 0 to go on, > 0 to stop, < 0 to fail; its failures are returned,
 * not recorded.  fn must not write to db. */
int db_scan(struct cache_txn *t, int db, const void *start, size_t slen,
            size_t plen, scan_fn fn, void *ctx)
{
	MDB_cursor *cur;
	MDB_val k = {slen, (void *)start}, v;
	int rc, ret = 0;
	MDB_cursor_op op = slen ? MDB_SET_RANGE : MDB_FIRST;

	rc = mdb_cursor_open(t->txn, t->cache->dbi[db], &cur);
	if (rc)
		return txn_mdb_fail(t, rc);
	for (;;) {
		rc = mdb_cursor_get(cur, &k, &v, op);
		op = MDB_NEXT;
		if (rc == MDB_NOTFOUND)
			break;
		if (rc) {
			ret = txn_mdb_fail(t, rc);
			break;
		}
		if (plen &&
		    (k.mv_size < plen || memcmp(k.mv_data, start, plen) != 0))
			break;
		ret = fn(t, &k, &v, ctx);
		if (ret) {
			if (ret > 0)
				ret = 0;
			break;
		}
	}
	mdb_cursor_close(cur);
	return ret;
}

int db_count(struct cache_txn *t, int db, size_t *count_r)
{
	MDB_stat st;
	int rc = mdb_stat(t->txn, t->cache->dbi[db], &st);

	if (rc)
		return txn_mdb_fail(t, rc);
	*count_r = st.ms_entries;
	return 0;
}

/* Delete every entry whose key starts with prefix; count them. */
int db_del_prefix(struct cache_txn *t, int db, const void *prefix, size_t plen,
                  size_t *count_r)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	int rc;

	rc = mdb_cursor_open(t->txn, t->cache->dbi[db], &cur);
	if (rc)
		return txn_mdb_fail(t, rc);
	for (;;) {
		/* Seek afresh after each delete instead of trusting the
		 * cursor's position after mdb_cursor_del. */
		k.mv_size = plen;
		k.mv_data = (void *)prefix;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc == MDB_NOTFOUND)
			break;
		if (rc)
			goto fail;
		if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
			break;
		rc = mdb_cursor_del(cur, 0);
		if (rc)
			goto fail;
		n++;
	}
	mdb_cursor_close(cur);
	if (count_r)
		*count_r = n;
	return 0;
fail:
	mdb_cursor_close(cur);
	return txn_mdb_fail(t, rc);
}

/* ------------------------------------------------------------------ */
/* The map */

size_t cache_map_size(struct cache *cache)
{
	MDB_envinfo info;

	if (cache == NULL || mdb_env_info(cache->env, &info) != 0)
		return 0;
	return info.me_mapsize;
}

static void active_enter(struct cache *c)
{
	pthread_mutex_lock(&c->active_lock);
	c->active++;
	pthread_mutex_unlock(&c->active_lock);
}

static void active_leave(struct cache *c)
{
	pthread_mutex_lock(&c->active_lock);
	if (--c->active == 0)
		pthread_cond_broadcast(&c->active_zero);
	pthread_mutex_unlock(&c->active_lock);
}

/* Set the map size (0: adopt the size another process set) once no
 * transaction of this process is live.  New transactions are not held
 * back meanwhile, so a thread that holds one while calling this cannot
 * deadlock: the wait is bounded and then fails with -EBUSY. */
static int map_resize(struct cache *c, size_t size)
{
	struct timespec ts;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += GROW_WAIT_S;
	pthread_mutex_lock(&c->active_lock);
	while (c->active > 0 && rc == 0)
		rc = pthread_cond_timedwait(&c->active_zero, &c->active_lock,
		                            &ts);
	if (c->active > 0) {
		rc = -EBUSY;
	} else if (size && size <= cache_map_size(c)) {
		rc = 0; /* a concurrent grower got there first */
	} else {
		atomic_store(&c->seen_lo, 0);
		atomic_store(&c->seen_hi, 0);
		rc = mdb_errno(mdb_env_set_mapsize(c->env, size));
	}
	pthread_mutex_unlock(&c->active_lock);
	return rc;
}

/* Grow the map so that at least need more bytes fit: double it, or more
 * if need asks for it, up to map_max. */
static int cache_grow(struct cache *c, size_t need)
{
	size_t cur = cache_map_size(c);
	size_t room = cur < c->map_max ? c->map_max - cur : 0;
	size_t add = cur;
	int rc;

	if (need <= room / 2 && add < 2 * need)
		add = 2 * need;
	if (add > room)
		add = room;
	if (add == 0) {
		log_err("cache %s: map full at its maximum size (%zu MiB)",
		        c->dir, cur >> 20);
		return -ENOSPC;
	}
	rc = map_resize(c, cur + add);
	if (rc) {
		log_warn("cache %s: map full, cannot grow it now: %s", c->dir,
		         strerror(-rc));
		return -ENOSPC;
	}
	log_info("cache %s: map grown from %zu to %zu MiB", c->dir, cur >> 20,
	         (cur + add) >> 20);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Transactions */

int cache_txn_begin(struct cache *cache, bool write, struct cache_txn **txn_r)
{
	struct cache_txn *t;
	int rc;

	if (cache == NULL || txn_r == NULL)
		return -EINVAL;
	*txn_r = NULL;
	if (getpid() != cache->pid) {
		log_err("cache %s: used across fork(); open it in the process that uses it",
		        cache->dir);
		return -ECHILD;
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	t->cache = cache;
	t->write = write;
	active_enter(cache);
	rc = mdb_txn_begin(cache->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
	if (rc == MDB_MAP_RESIZED) {
		/* Another process grew the map: adopt its size. */
		active_leave(cache);
		map_resize(cache, 0);
		active_enter(cache);
		rc = mdb_txn_begin(cache->env, NULL, write ? 0 : MDB_RDONLY,
		                   &t->txn);
	}
	if (rc) {
		active_leave(cache);
		free(t);
		return mdb_errno(rc);
	}
	*txn_r = t;
	return 0;
}

/* LMDB reports a short write as EIO, and a full disk mostly shows up as a
 * short write.  Call it ENOSPC when the file system has less room left
 * than the transaction wrote. */
static bool fs_full(struct cache *c, size_t bytes)
{
	struct statvfs sv;
	int fd;

	if (mdb_env_get_fd(c->env, &fd) != 0 || fstatvfs(fd, &sv) != 0)
		return false;
	if (bytes < (1u << 20))
		bytes = 1u << 20;
	return sv.f_bavail < bytes / (sv.f_frsize ? sv.f_frsize : 1) + 1;
}

/* Drop every page of the map from the process's page tables.  Lookups
 * and writes touch pages all over the map, and the kernel maps the pages
 * around each fault too, so without this the resident set slowly grows
 * to the size of the cache.  The map is a read-only shared file mapping:
 * the pages stay in the page cache and a later access (even one under
 * way in another thread) simply faults them in again. */
static void trim_map(struct cache *c)
{
	uintptr_t lo = atomic_load(&c->seen_lo), hi = atomic_load(&c->seen_hi);
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);

	if (lo == 0 || hi <= lo)
		return;
	lo &= ~(page - 1);
	madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* LMDB does not tell where its map is; the span of the pointers it has
 * handed to read transactions is inside it (write transactions can return
 * pointers to private dirty pages, which must never be trimmed).  The span
 * is forgotten whenever the map is resized, which only happens while no
 * transaction is alive. */
void note_span(struct cache_txn *t, const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p, b = a + n, cur;

	if (t->write || p == NULL || n == 0)
		return;
	cur = atomic_load(&t->cache->seen_lo);
	while ((cur == 0 || a < cur) &&
	       !atomic_compare_exchange_weak(&t->cache->seen_lo, &cur, a))
		;
	cur = atomic_load(&t->cache->seen_hi);
	while (b > cur &&
	       !atomic_compare_exchange_weak(&t->cache->seen_hi, &cur, b))
		;
}

#define TRIM_READS 32
#define TRIM_BYTES (4u * 1024 * 1024)

void note_read(struct cache *c)
{
	if (atomic_fetch_add(&c->reads_since_trim, 1) + 1 >= TRIM_READS) {
		atomic_store(&c->reads_since_trim, 0);
		trim_map(c);
	}
}

static void note_written(struct cache *c, size_t bytes)
{
	if (atomic_fetch_add(&c->bytes_since_trim, bytes) + bytes >=
	    TRIM_BYTES) {
		atomic_store(&c->bytes_since_trim, 0);
		trim_map(c);
	}
}

/* End t, committing if asked and no step failed.  *map_full_r tells
 * whether the failure was a full map (worth growing and retrying). */
static int txn_end(struct cache_txn *t, bool commit, bool *map_full_r)
{
	bool map_full = t->map_full;
	int rc = t->err;

	if (commit && t->write && rc == 0) {
		int mrc = mdb_txn_commit(t->txn);

		if (mrc == MDB_MAP_FULL)
			map_full = true;
		rc = mdb_errno(mrc);
		if (rc == -EIO && fs_full(t->cache, t->bytes))
			rc = -ENOSPC;
		if (rc)
			log_warn("cache %s: commit failed: %s", t->cache->dir,
			         strerror(-rc));
		else
			note_written(t->cache, t->bytes);
	} else {
		mdb_txn_abort(t->txn);
	}
	active_leave(t->cache);
	free(t);
	if (map_full_r)
		*map_full_r = map_full;
	return rc;
}

int cache_txn_commit(struct cache_txn **txn)
{
	struct cache_txn *t;

	if (txn == NULL || *txn == NULL)
		return -EINVAL;
	t = *txn;
	*txn = NULL;
	return txn_end(t, true, NULL);
}

void cache_txn_abort(struct cache_txn **txn)
{
	if (txn == NULL || *txn == NULL)
		return;
	txn_end(*txn, false, NULL);
	*txn = NULL;
}

int cache_txn_error(const struct cache_txn *txn)
{
	return txn ? txn->err : -EINVAL;
}

int cache_run_write(struct cache *cache,
                    int (*fn)(struct cache_txn *txn, void *ctx), void *ctx)
{
	struct cache_txn *t;
	bool map_full;
	size_t bytes;
	int attempt, rc;

	if (fn == NULL)
		return -EINVAL;
	for (attempt = 0;; attempt++) {
		rc = cache_txn_begin(cache, true, &t);
		if (rc)
			return rc;
		rc = fn(t, ctx);
		bytes = t->bytes;
		if (rc) {
			map_full = t->map_full;
			txn_end(t, false, NULL);
		} else {
			rc = txn_end(t, true, &map_full);
		}
		if (rc != -ENOSPC || !map_full || attempt > 0)
			return rc;
		if (cache_grow(cache, bytes) != 0)
			return -ENOSPC;
	}
}

int cache_run_read(struct cache *cache,
                   int (*fn)(struct cache_txn *txn, void *ctx), void *ctx)
{
	struct cache_txn *t;
	int rc, end;

	if (fn == NULL)
		return -EINVAL;
	rc = cache_txn_begin(cache, false, &t);
	if (rc)
		return rc;
	rc = fn(t, ctx);
	end = txn_end(t, false, NULL);
	return rc ? rc : end;
}
