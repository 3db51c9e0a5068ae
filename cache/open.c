/* Opening an account cache (directory, lock, damage checks, schema check
 * and in-place upgrade, the clean-up of unfinished bodies) and closing it:
 * the top of cache/, above the schema files it calls (meta.c, body.c) and
 * the LMDB wrapper (env.c).  Of the schema it owns only the list of
 * databases and meta's "schema".  See cache.h for the contract,
 * cache_int.h for the module's parts. */
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
#include <sys/stat.h>
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

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache *open_list; /* protected by open_lock */

/* ------------------------------------------------------------------ */
/* Failures at open */

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
 * killed mailfs never leaves it behind.  A mailfs that was just unmounted
 * still holds it while it shuts down (threads stopped, cache closed): a
 * mount right after the unmount (a restart) waits up to
 * CACHE_LOCK_WAIT_MS for it before refusing. */
static int lock_dir(struct cache *c, struct report *r)
{
	struct timespec nap = {0, 100 * 1000000L};
	int tries = CACHE_LOCK_WAIT_MS / 100;

	c->lock_fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->lock_fd < 0)
		return report(r, -errno, "cache directory %s: %s", c->dir,
		              strerror(errno));
	for (;;) {
		if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK || tries-- <= 0)
			break;
		nanosleep(&nap, NULL);
	}
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
