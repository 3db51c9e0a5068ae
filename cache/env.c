/* The LMDB environment of an account cache: opening it (directory, lock,
 * damage checks, schema check and in-place upgrade), closing it, the map
 * and its growth, transactions with their sticky errors, the one place
 * LMDB codes become errnos, and the database primitives of the schema
 * files.  Of the schema it owns only the list of databases and meta's
 * "schema".  See cache.h for the contract, cache_int.h for the module's
 * parts. */
#include "cache_int.h"

#include "proto/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static const char *const db_names[DB_COUNT] = {
        [DB_META] = "meta",
        [DB_MBOX] = "mbox",
        [DB_MBOX_NAME] = "mbox_name",
        [DB_MSG] = "msg",
        [DB_BODY] = "body",
        [DB_POP] = "pop",
        [DB_POP_UIDL] = "pop_uidl",
        [DB_PENDING] = "pending",
        [DB_BIGBODY] = "body_big",
        [DB_CHUNK] = "chunk",
        [DB_CHUNK_OPEN] = "chunk_open",
        [DB_ZBODY] = "zbody",
        [DB_ZDICT] = "zdict",
};

#define GROW_WAIT_S 10

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache *open_list; /* protected by open_lock */

/* ------------------------------------------------------------------ */
/* Errors */

/* The one place LMDB codes become errnos. */
static int mdb_errno(int rc)
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

/* Where cache_open's failure goes: into msg (one line for the user, the
 * first failure only) when the caller asked for it, else the log. */
struct report {
	char *msg;
	size_t size;
};

#define RECOVER                                                                \
	"; move it away to start a fresh cache, or restore it from a backup"

__attribute__((format(printf, 3, 4))) static int
report(struct report *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (r->msg == NULL || r->size == 0)
		log_vmsg(LOG_ERR, fmt, ap);
	else if (r->msg[0] == '\0')
		vsnprintf(r->msg, r->size, fmt, ap);
	va_end(ap);
	return err;
}

/* An LMDB failure at open: a file LMDB does not recognise is damaged. */
static int report_mdb(struct report *r, const char *dir, int rc)
{
	switch (rc) {
	case MDB_INVALID:
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
		return report(r, mdb_errno(rc),
		              "cache %s/data.mdb is damaged (%s)%s", dir,
		              mdb_strerror(rc), RECOVER);
	default:
		return report(r, mdb_errno(rc),
		              "cannot open the cache in %s: %s", dir,
		              mdb_strerror(rc));
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
/* Environment */

#if SIZE_MAX > UINT32_MAX
#define MAP_DEFAULT ((size_t)64 << 30)
#define MAP_MAX     ((size_t)16 << 40)
#else
#define MAP_DEFAULT ((size_t)1 << 30)
#define MAP_MAX     ((size_t)3 << 29)
#endif

static int active_init(struct cache *c)
{
	pthread_condattr_t ca;
	int rc;

	rc = pthread_mutex_init(&c->active_lock, NULL);
	if (rc)
		return -rc;
	rc = pthread_condattr_init(&ca);
	if (rc == 0) {
		rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		if (rc == 0)
			rc = pthread_cond_init(&c->active_zero, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (rc) {
		pthread_mutex_destroy(&c->active_lock);
		return -rc;
	}
	return 0;
}

/* Create dir and missing parents, 0700 each (exactly, whatever the
 * umask).  Existing directories are left as they are. */
static int mkdir_p(const char *dir)
{
	char *p, *s = strdup(dir);
	struct stat st;
	int rc = 0;

	if (s == NULL)
		return -ENOMEM;
	for (p = s + 1;; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(s, 0700) == 0) {
			if (chmod(s, 0700) != 0) {
				rc = -errno;
				break;
			}
		} else if (errno != EEXIST) {
			rc = -errno;
			break;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	if (rc == 0 && stat(s, &st) != 0)
		rc = -errno;
	else if (rc == 0 && !S_ISDIR(st.st_mode))
		rc = -ENOTDIR;
	free(s);
	return rc;
}

static int chmod_file(const char *dir, const char *file)
{
	char path[PATH_MAX];

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >=
	    sizeof(path))
		return -ENAMETOOLONG;
	if (chmod(path, 0600) != 0)
		return -errno;
	return 0;
}

/* Open the databases and check the schema, in one write transaction. */
static int cache_init_dbs(struct cache *c, struct report *r)
{
	struct cache_txn t = {.cache = c, .write = true};
	uint64_t schema, from;
	int i, rc;

	rc = mdb_txn_begin(c->env, NULL, 0, &t.txn);
	if (rc)
		return report_mdb(r, c->dir, rc);
	for (i = 0; i < DB_COUNT; i++) {
		rc = mdb_dbi_open(t.txn, db_names[i], MDB_CREATE, &c->dbi[i]);
		if (rc) {
			mdb_txn_abort(t.txn);
			return report_mdb(r, c->dir, rc);
		}
	}
	rc = meta_read(&t, META_SCHEMA, &schema);
	if (rc == -ENOENT) {
		schema = CACHE_SCHEMA_VERSION;
		rc = meta_write(&t, META_SCHEMA, schema);
	}
	if (rc == 0 && schema > CACHE_SCHEMA_VERSION) {
		rc = report(
		        r, -EPROTONOSUPPORT,
		        "cache %s was written by a newer mailfs (cache schema %llu, this mailfs knows up to %d); refusing to use it",
		        c->dir, (unsigned long long)schema,
		        CACHE_SCHEMA_VERSION);
	} else if (rc == 0 && schema == 0) {
		rc = report(r, -EIO,
		            "cache %s/data.mdb is damaged (schema version 0)%s",
		            c->dir, RECOVER);
	} else if (rc) {
		rc = report(r, rc, "cache %s: %s", c->dir, strerror(-rc));
	}
	/* Upgrades from older schemas, in this transaction; nothing stored
	 * is rewritten.  1 -> 2: bodies longer than CACHE_BODY_CHUNK are
	 * stored in pieces from now on, in databases that did not exist
	 * (created above, empty).  2 -> 3: small bodies are written to
	 * zbody, compressed, with the dictionary of zdict (both created
	 * above, empty).  Every body of schema 1 and 2 stays where it is and
	 * is read as it was (raw pieces are pieces of codec 0). */
	from = schema;
	if (rc == 0 && schema < CACHE_SCHEMA_VERSION) {
		schema = CACHE_SCHEMA_VERSION;
		rc = meta_write(&t, META_SCHEMA, schema);
	}
	if (rc) {
		mdb_txn_abort(t.txn);
		return rc;
	}
	rc = mdb_txn_commit(t.txn);
	if (rc)
		return report_mdb(r, c->dir, rc);
	if (from != schema)
		log_notice("cache %s: upgraded in place from schema %llu to "
		           "%llu (bodies are now stored compressed, those "
		           "longer than %u KiB in pieces; every cached "
		           "message is kept as it is)",
		           c->dir, (unsigned long long)from,
		           (unsigned long long)schema, CACHE_BODY_CHUNK / 1024);
	return 0;
}

/* ------------------------------------------------------------------ */
/* A data file shorter than its pages (see check_size) */

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local sigjmp_buf *probe_jmp;

static void probe_sigbus(int sig)
{
	if (probe_jmp != NULL)
		siglongjmp(*probe_jmp, 1);
	/* Not a probe: the access faults again, with the default action. */
	signal(sig, SIG_DFL);
}

/* Mark in bits the pages of [first, first + n) that one free-list record
 * (an LMDB ID list: count, then page numbers) names; returns how many. */
static size_t mark_free(const MDB_val *v, size_t first, size_t n, uint8_t *bits)
{
	const char *p = v->mv_data;
	size_t count, i, pg, marked = 0;

	if (v->mv_size < sizeof(size_t))
		return 0;
	memcpy(&count, p, sizeof(count));
	if (count > v->mv_size / sizeof(size_t) - 1)
		count = v->mv_size / sizeof(size_t) - 1;
	for (i = 1; i <= count; i++) {
		memcpy(&pg, p + i * sizeof(size_t), sizeof(pg));
		if (pg < first || pg - first >= n)
			continue;
		pg -= first;
		if (!(bits[pg / 8] & (1u << (pg % 8)))) {
			bits[pg / 8] |= (uint8_t)(1u << (pg % 8));
			marked++;
		}
	}
	return marked;
}

/* 1 if every page from first to last is on LMDB's free list (so nothing
 * ever reads it before writing it), 0 if not, or a negative errno.  The
 * free list itself may lie in the missing part: reading it there raises
 * SIGBUS, which is caught (only on this thread, only here) and means 0.
 * Leaving LMDB by siglongjmp is safe here: a read transaction holds no
 * lock, only its reader slot, which the abort releases. */
static int pages_free(MDB_env *env, size_t first, size_t last)
{
	size_t n = last - first + 1;
	uint8_t *bits = calloc(n / 8 + 1, 1);
	MDB_txn *volatile txn = NULL;
	MDB_cursor *volatile cur = NULL;
	volatile size_t marked = 0;
	volatile int rc = 0;
	struct sigaction sa, old;
	sigjmp_buf jb;

	if (bits == NULL)
		return -ENOMEM;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = probe_sigbus;
	sigemptyset(&sa.sa_mask);
	pthread_mutex_lock(&probe_lock);
	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(jb, 1) == 0) {
		MDB_txn *t = NULL;
		MDB_cursor *c = NULL;
		MDB_val k, v;

		probe_jmp = &jb;
		rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
		txn = t;
		if (rc == 0)
			rc = mdb_cursor_open(t, 0, &c); /* 0: the free list */
		cur = c;
		while (rc == 0 &&
		       (rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0)
			marked += mark_free(&v, first, n, bits);
		rc = rc == MDB_NOTFOUND ? 0 : mdb_errno(rc);
	} else {
		rc = 0;
		marked = 0;
	}
	probe_jmp = NULL;
	sigaction(SIGBUS, &old, NULL);
	pthread_mutex_unlock(&probe_lock);
	if (cur != NULL)
		mdb_cursor_close(cur);
	if (txn != NULL)
		mdb_txn_abort(txn);
	free(bits);
	return rc < 0 ? rc : marked == n;
}

/* LMDB maps the data file and reads any page the database points to: a
 * page past the end of a truncated file kills the process with SIGBUS.
 * Every page below the last page number is either in use or on the free
 * list, and pages in use have been written.  So the file is whole if it
 * reaches the last page, or if the pages it lacks are all free (LMDB does
 * not write pages it allocated and freed in one transaction). */
static int check_size(struct cache *c, struct report *r)
{
	MDB_envinfo info;
	MDB_stat ms;
	struct stat st;
	size_t need, have;
	int fd, rc;

	if (mdb_env_get_fd(c->env, &fd) != 0 || fstat(fd, &st) != 0 ||
	    mdb_env_info(c->env, &info) != 0 || mdb_env_stat(c->env, &ms) != 0)
		return report(r, -EIO, "cache %s: cannot read its size",
		              c->dir);
	need = ((size_t)info.me_last_pgno + 1) * ms.ms_psize;
	if ((uint64_t)st.st_size >= need)
		return 0;
	have = (size_t)st.st_size / ms.ms_psize;
	rc = pages_free(c->env, have, info.me_last_pgno);
	if (rc == 1)
		return 0;
	if (rc < 0)
		return report(r, rc,
		              "cache %s: cannot check its free pages: %s",
		              c->dir, strerror(-rc));
	return report(
	        r, -EUCLEAN,
	        "cache %s/data.mdb is damaged (truncated: %lld of %zu bytes)%s",
	        c->dir, (long long)st.st_size, need, RECOVER);
}

/* An empty data file would be made a fresh cache by LMDB: refuse it. */
static int check_empty(const char *dir, struct report *r)
{
	char path[PATH_MAX];
	struct stat st;

	if ((size_t)snprintf(path, sizeof(path), "%s/data.mdb", dir) >=
	    sizeof(path))
		return report(r, -ENAMETOOLONG, "cache %s: %s", dir,
		              strerror(ENAMETOOLONG));
	if (stat(path, &st) != 0)
		return 0; /* a new cache, or LMDB says why */
	if (S_ISREG(st.st_mode) && st.st_size == 0)
		return report(r, -EUCLEAN,
		              "cache %s is damaged (truncated: 0 bytes)%s",
		              path, RECOVER);
	return 0;
}

/* One mailfs per cache: two would both resume the same uploads and both
 * number POP3 downloads.  The lock lives as long as the descriptor, so a
 * killed mailfs never leaves it behind. */
static int lock_dir(struct cache *c, struct report *r)
{
	c->lock_fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->lock_fd < 0)
		return report(r, -errno, "cache directory %s: %s", c->dir,
		              strerror(errno));
	if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno == EWOULDBLOCK)
		return report(
		        r, -EBUSY,
		        "cache %s is in use by another mailfs (one mount per cache: unmount it, or give this mount its own cache_dir)",
		        c->dir);
	return report(r, -errno, "cache directory %s: cannot lock it: %s",
	              c->dir, strerror(errno));
}

static int open_cache(const char *dir, const struct cache_options *opt,
                      struct cache **cache_r, struct report *r)
{
	struct cache *c, *o;
	struct stat st;
	size_t map;
	int fd, rc, dead;
	bool listed = false;

	if (dir == NULL || *dir == '\0' || cache_r == NULL)
		return report(r, -EINVAL, "cache: no directory given");
	*cache_r = NULL;
	rc = mkdir_p(dir);
	if (rc)
		return report(r, rc, "cannot create the cache directory %s: %s",
		              dir, strerror(-rc));
	if (stat(dir, &st) != 0)
		return report(r, -errno, "cache directory %s: %s", dir,
		              strerror(errno));
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return report(r, -ENOMEM, "cache %s: %s", dir,
		              strerror(ENOMEM));
	c->lock_fd = -1;
	c->dir = strdup(dir);
	if (c->dir == NULL) {
		free(c);
		return report(r, -ENOMEM, "cache %s: %s", dir,
		              strerror(ENOMEM));
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->pid = getpid();
	c->map_max = MAP_MAX;
	rc = active_init(c);
	if (rc == 0) {
		rc = zdicts_init(c);
		if (rc == 0) {
			rc = piece_cache_init(c);
			if (rc)
				zdicts_free(c);
		}
		if (rc) {
			pthread_cond_destroy(&c->active_zero);
			pthread_mutex_destroy(&c->active_lock);
		}
	}
	if (rc) {
		free(c->dir);
		free(c);
		return report(r, rc, "cache %s: %s", dir, strerror(-rc));
	}

	/* LMDB must not open the same environment twice in one process:
	 * closing the second would drop the first one's fcntl locks. */
	pthread_mutex_lock(&open_lock);
	for (o = open_list; o; o = o->next_open)
		if (o->dev == c->dev && o->ino == c->ino)
			break;
	if (o == NULL) {
		c->next_open = open_list;
		open_list = c;
		listed = true;
	}
	pthread_mutex_unlock(&open_lock);
	if (!listed) {
		rc = report(r, -EBUSY,
		            "cache %s is already open in this process", dir);
		goto fail;
	}
	rc = lock_dir(c, r);
	if (rc == 0)
		rc = check_empty(dir, r);
	if (rc)
		goto fail;

	rc = mdb_env_create(&c->env);
	if (rc) {
		c->env = NULL;
		rc = report_mdb(r, dir, rc);
		goto fail;
	}
	map = opt && opt->map_size ? opt->map_size : MAP_DEFAULT;
	rc = mdb_env_set_mapsize(c->env, map);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(c->env, DB_COUNT + 4);
	if (rc == 0)
		rc = mdb_env_open(c->env, dir, MDB_NOTLS, 0600);
	if (rc) {
		rc = report_mdb(r, dir, rc);
		goto fail;
	}
	/* Before anything reads a page through the map. */
	rc = check_size(c, r);
	if (rc)
		goto fail;
	/* Exact modes whatever the umask, and whatever an older run left. */
	rc = chmod_file(dir, "data.mdb");
	if (rc == 0)
		rc = chmod_file(dir, "lock.mdb");
	if (rc) {
		rc = report(r, rc, "cache %s: cannot set file modes: %s", dir,
		            strerror(-rc));
		goto fail;
	}
	/* LMDB's other descriptors are close-on-exec, the data file's is
	 * not; passcmd children must not inherit it. */
	if (mdb_env_get_fd(c->env, &fd) == 0 && fd >= 0) {
		int fl = fcntl(fd, F_GETFD);

		if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
			rc = report(r, -errno, "cache %s: %s", dir,
			            strerror(errno));
			goto fail;
		}
	}
	/* Reader slots left behind by a crashed process. */
	mdb_reader_check(c->env, &dead);
	if (dead > 0)
		log_info("cache %s: cleared %d stale reader slot(s)", dir,
		         dead);
	rc = cache_init_dbs(c, r);
	if (rc)
		goto fail;
	stale_clean(c);
	*cache_r = c;
	return 0;

fail:
	cache_close(&c);
	return rc;
}

int cache_open_ex(const char *dir, const struct cache_options *opt,
                  struct cache **cache_r)
{
	struct report r = {NULL, 0};

	return open_cache(dir, opt, cache_r, &r);
}

int cache_open(const char *dir, struct cache **cache_r)
{
	return cache_open_ex(dir, NULL, cache_r);
}

int cache_open_msg(const char *dir, struct cache **cache_r, char *msg,
                   size_t msg_size)
{
	struct report r = {msg, msg_size};

	if (msg != NULL && msg_size > 0)
		msg[0] = '\0';
	return open_cache(dir, NULL, cache_r, &r);
}

void cache_close(struct cache **cache)
{
	struct cache *c, **pp;

	if (cache == NULL || *cache == NULL)
		return;
	c = *cache;
	*cache = NULL;
	if (c->env)
		mdb_env_close(c->env);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	pthread_mutex_lock(&open_lock);
	for (pp = &open_list; *pp; pp = &(*pp)->next_open) {
		if (*pp == c) {
			*pp = c->next_open;
			break;
		}
	}
	pthread_mutex_unlock(&open_lock);
	pthread_cond_destroy(&c->active_zero);
	pthread_mutex_destroy(&c->active_lock);
	zdicts_free(c);
	piece_cache_free(c);
	free(c->dir);
	free(c);
}

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
