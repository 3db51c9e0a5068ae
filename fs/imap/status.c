/* The status attributes and statfs of an IMAP mount (fs/imap/status.h). */
#include "fs/imap/status.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/net/sync.h"
#include "fs/reply.h"
#include "fs/usage.h"
#include "proto/log.h"
#include "proto/strbuf.h"

/* A JSON page of the root's mailbox list stays below the kernel's limit
 * for one attribute (XATTR_SIZE_MAX, 64 KiB). */
#define PAGE_MAX 60000

struct box {
	uint32_t id;
	char *path; /* owned: below the mount point, "" for the root */
	bool selectable;
	uint32_t uidvalidity;
	int64_t last_sync;
	struct cache_usage u;
	uint64_t uploads, failed;
};

struct report {
	struct box *v; /* owned */
	size_t n, cap;
	struct cache_usage total;
	uint64_t uploads, failed;
};

static void report_free(struct report *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->v[i].path);
	free(r->v);
	memset(r, 0, sizeof(*r));
}

static int report_add(struct report *r, const struct fs_mailbox *mb, char *path)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct box *v = realloc(r->v, cap * sizeof(*v));

		if (v == NULL) {
			free(path);
			return -ENOMEM;
		}
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n++] = (struct box){
	        .id = mb->id,
	        .path = path,
	        .selectable = mb->selectable,
	        .uidvalidity = mb->uidvalidity,
	        .last_sync = mb->last_sync,
	};
	return 0;
}

/* Every mailbox below parent (whose path is prefix), depth first in name
 * order. */
static int collect(struct fs_tree *tree, uint32_t parent, const char *prefix,
                   struct report *r)
{
	struct fs_mailbox **kids = NULL;
	size_t n = 0;
	int rc = fs_tree_children(tree, parent, &kids, &n);

	for (size_t i = 0; i < n && rc == 0; i++) {
		char *path = NULL;

		if (asprintf(&path, "%s%s%s", prefix, prefix[0] ? "/" : "",
		             kids[i]->file) < 0) {
			rc = -ENOMEM;
			break;
		}
		rc = report_add(r, kids[i], path);
		if (rc == 0)
			rc = collect(tree, kids[i]->id, r->v[r->n - 1].path, r);
	}
	fs_mailbox_vfree(&kids, n);
	return rc;
}

static int count_pending(const struct cache_pending *p, void *ctx)
{
	struct report *r = ctx;
	bool failed = p->state == CACHE_PENDING_FAILED;

	if (failed)
		r->failed++;
	else
		r->uploads++;
	for (size_t i = 0; i < r->n; i++) {
		if (r->v[i].id != p->mailbox_id)
			continue;
		if (failed)
			r->v[i].failed++;
		else
			r->v[i].uploads++;
	}
	return 0;
}

struct usage_read {
	struct report *r;
	size_t from, to; /* the boxes whose usage is counted */
};

static int usage_read(struct cache_txn *txn, void *ctx)
{
	struct usage_read *ur = ctx;
	struct report *r = ur->r;
	int rc = 0;

	for (size_t i = ur->from; i < ur->to && rc == 0; i++) {
		struct box *b = &r->v[i];

		if (b->uidvalidity == 0)
			continue;
		rc = cache_mailbox_usage(txn, b->id, b->uidvalidity, &b->u);
		r->total.messages += b->u.messages;
		r->total.bytes += b->u.bytes;
		r->total.cached += b->u.cached;
		r->total.cached_bytes += b->u.cached_bytes;
	}
	if (rc == 0)
		rc = cache_pending_foreach(txn, count_pending, r);
	return rc;
}

/* The report of mailbox id alone, or with id 0 of every mailbox (the
 * usage of boxes from..to only: the others are left at zero). */
static int report_make(struct mailfs *fs, uint32_t id, size_t from, size_t to,
                       struct report *r)
{
	struct usage_read ur = {r, 0, 0};
	int rc;

	memset(r, 0, sizeof(*r));
	if (id == 0) {
		rc = collect(fs->tree, 0, "", r);
	} else {
		struct fs_mailbox *mb = NULL;
		char *path = NULL;

		rc = fs_tree_get(fs->tree, id, &mb);
		if (rc == 0)
			rc = fs_tree_path(fs->tree, id, &path);
		if (rc == 0)
			rc = report_add(r, mb, path);
		fs_mailbox_free(&mb);
	}
	ur.from = from < r->n ? from : r->n;
	ur.to = to < r->n ? to : r->n;
	if (rc == 0)
		rc = cache_run_read(fs->cache, usage_read, &ur);
	if (rc < 0)
		report_free(r);
	return rc;
}

static const char *connection(struct mailfs *fs, struct fs_sync_state *st)
{
	memset(st, 0, sizeof(*st));
	if (fs->sync == NULL)
		return "offline";
	fs_sync_get_state(fs->sync, st);
	if (st->retry_in > 0)
		return "unreachable";
	return st->connected > 0 ? "connected" : "idle";
}

static void json_counts(struct strbuf *b, const struct cache_usage *u,
                        uint64_t uploads, uint64_t failed)
{
	strbuf_printf(b,
	              "\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64
	              ",\"cached\":%" PRIu64 ",",
	              u->messages, u->bytes, u->cached);
	strbuf_printf(b,
	              "\"cached_bytes\":%" PRIu64 ",\"uploads\":%" PRIu64
	              ",\"failed_uploads\":%" PRIu64,
	              u->cached_bytes, uploads, failed);
}

static void json_box(struct strbuf *b, const struct box *x)
{
	strbuf_str(b, "{\"path\":");
	fs_usage_json_str(b, x->path);
	strbuf_printf(b, ",\"selectable\":%s,",
	              x->selectable ? "true" : "false");
	json_counts(b, &x->u, x->uploads, x->failed);
	strbuf_printf(b, ",\"last_sync\":%" PRId64 "}", x->last_sync);
}

static void json_connection(struct strbuf *b, struct mailfs *fs)
{
	struct fs_sync_state st;
	const char *c = connection(fs, &st);

	strbuf_printf(b,
	              "\"connection\":\"%s\",\"connections\":%u,"
	              "\"retry_in\":%" PRId64 ",\"jobs\":%u",
	              c, st.connected, (st.retry_in + 999) / 1000, st.jobs);
}

static void json_quota(struct strbuf *b, struct mailfs *fs)
{
	struct fs_quota q = {0};

	if (fs->sync != NULL)
		fs_sync_quota(fs->sync, &q);
	strbuf_str(b, "\"quota\":");
	if (!q.known || (!q.has_storage && !q.has_messages)) {
		strbuf_str(b, "null");
		return;
	}
	strbuf_str(b, "{");
	if (q.has_storage)
		strbuf_printf(b,
		              "\"storage_used\":%" PRIu64
		              ",\"storage_limit\":%" PRIu64 "%s",
		              q.storage_used, q.storage_limit,
		              q.has_messages ? "," : "");
	if (q.has_messages)
		strbuf_printf(b,
		              "\"messages_used\":%" PRIu64
		              ",\"messages_limit\":%" PRIu64,
		              q.messages_used, q.messages_limit);
	strbuf_str(b, "}");
}

/* The JSON of the root: page 0 with the account, the rest of the
 * mailboxes from index from on. */
static char *json_root(struct mailfs *fs, const struct report *r, size_t from)
{
	struct strbuf b = {0};
	size_t i;

	strbuf_str(&b, "{");
	if (from == 0) {
		strbuf_str(&b, "\"version\":1,\"account\":");
		fs_usage_json_str(&b, fs->opts.account ? fs->opts.account : "");
		strbuf_str(&b, ",\"mountpoint\":");
		fs_usage_json_str(&b, fs->mountpoint ? fs->mountpoint : "");
		strbuf_str(&b, ",");
		json_connection(&b, fs);
		strbuf_printf(&b, ",\"last_sync\":%" PRId64 ",",
		              fs_tree_loaded(fs->tree));
		json_quota(&b, fs);
		strbuf_str(&b, ",\"total\":{");
		json_counts(&b, &r->total, r->uploads, r->failed);
		strbuf_str(&b, "},");
	}
	strbuf_str(&b, "\"mailboxes\":[");
	for (i = from; i < r->n; i++) {
		size_t before = b.len;

		if (i > from)
			strbuf_str(&b, ",");
		json_box(&b, &r->v[i]);
		if (b.len > PAGE_MAX && i > from) {
			b.len = before;
			break;
		}
	}
	strbuf_str(&b, "]");
	if (i < r->n)
		strbuf_printf(&b, ",\"next\":%zu", i);
	strbuf_str(&b, "}");
	return strbuf_take(&b);
}

static char *json_dir(struct mailfs *fs, const struct report *r)
{
	struct strbuf b = {0};

	strbuf_str(&b, "{");
	json_connection(&b, fs);
	strbuf_str(&b, ",\"mailbox\":");
	json_box(&b, &r->v[0]);
	strbuf_str(&b, "}");
	return strbuf_take(&b);
}

/* The value of one number attribute (the name after the prefix) of the
 * report's totals (root) or its only box; NULL if not such a name. */
static char *number_attr(struct mailfs *fs, uint32_t id, const struct report *r,
                         const char *what)
{
	const struct cache_usage *u = id == 0 ? &r->total : &r->v[0].u;
	uint64_t uploads = id == 0 ? r->uploads : r->v[0].uploads;
	uint64_t failed = id == 0 ? r->failed : r->v[0].failed;
	int64_t v;
	char *s = NULL;

	if (strcmp(what, "messages") == 0)
		v = (int64_t)u->messages;
	else if (strcmp(what, "bytes") == 0)
		v = (int64_t)u->bytes;
	else if (strcmp(what, "cached") == 0)
		v = (int64_t)u->cached;
	else if (strcmp(what, "cached_bytes") == 0)
		v = (int64_t)u->cached_bytes;
	else if (strcmp(what, "uploads") == 0)
		v = (int64_t)uploads;
	else if (strcmp(what, "failed_uploads") == 0)
		v = (int64_t)failed;
	else if (strcmp(what, "last_sync") == 0)
		v = id == 0 ? fs_tree_loaded(fs->tree) : r->v[0].last_sync;
	else
		return NULL;
	if (asprintf(&s, "%" PRId64, v) < 0)
		return NULL;
	return s;
}

bool fs_status_is_name(const char *name)
{
	return strncmp(name, FS_STATUS_PREFIX, strlen(FS_STATUS_PREFIX)) == 0;
}

static bool known_name(const char *what)
{
	static const char *const names[] = {
	        "messages", "bytes",          "cached",    "cached_bytes",
	        "uploads",  "failed_uploads", "last_sync", "status",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(what, names[i]) == 0)
			return true;
	return false;
}

/* "status.N": page N of the root's mailbox list. */
static bool page_name(const char *what, size_t *from_r)
{
	char *end;
	unsigned long v;

	if (strncmp(what, "status.", 7) != 0 || what[7] < '0' || what[7] > '9')
		return false;
	v = strtoul(what + 7, &end, 10);
	if (*end != '\0')
		return false;
	*from_r = v;
	return true;
}

void fs_status_dir_getxattr(fuse_req_t req, struct mailfs *fs, uint32_t id,
                            const char *name, size_t size)
{
	const char *what = name + strlen(FS_STATUS_PREFIX);
	struct report r;
	size_t from = 0;
	char *val = NULL;
	int rc;

	if (strcmp(what, "connection") == 0) {
		struct fs_sync_state st;
		const char *c = connection(fs, &st);

		fs_reply_xattr(req, size, c, strlen(c));
		return;
	}
	if (!known_name(what) && !(id == 0 && page_name(what, &from))) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	if (id == 0 && page_name(what, &from)) {
		rc = report_make(fs, 0, from, SIZE_MAX, &r);
		if (rc == 0 && from >= r.n && from != 0) {
			report_free(&r);
			fuse_reply_err(req, ENODATA);
			return;
		}
	} else {
		rc = report_make(fs, id, 0, SIZE_MAX, &r);
	}
	if (rc < 0) {
		log_warn("status of mailbox %" PRIu32 ": %s", id,
		         strerror(-rc));
		fuse_reply_err(req, rc == -ENOENT ? ENOENT : EIO);
		return;
	}
	if (strcmp(what, "status") == 0 || (id == 0 && from > 0) ||
	    (id == 0 && strcmp(what, "status.0") == 0))
		val = id == 0 ? json_root(fs, &r, from) : json_dir(fs, &r);
	else
		val = number_attr(fs, id, &r, what);
	report_free(&r);
	if (val == NULL) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	fs_reply_xattr(req, size, val, strlen(val));
	free(val);
}

void fs_status_msg_getxattr(fuse_req_t req, struct mailfs *fs,
                            struct cache_key key, const char *name, size_t size)
{
	uint64_t len;
	int rc;

	if (strcmp(name, FS_STATUS_PREFIX "cached") != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	rc = cache_body_size_once(fs->cache, key, &len);
	if (rc < 0 && rc != -ENOENT) {
		fuse_reply_err(req, EIO);
		return;
	}
	fs_reply_xattr(req, size, rc == 0 ? "1" : "0", 1);
}

/* --- statfs ----------------------------------------------------------- */

/* The account's known size, walked at most every TOTAL_MS: df may be
 * called often (desktops poll it), and the walk reads every record.  One
 * mount per process, so one copy. */
#define TOTAL_MS 2000

static pthread_mutex_t total_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache_usage total_cached;
static int64_t total_when; /* ms, monotonic; 0: never */

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int account_total(struct mailfs *fs, struct cache_usage *u_r)
{
	struct report r;
	int64_t now = mono_ms();
	int rc = 0;

	pthread_mutex_lock(&total_lock);
	if (total_when == 0 || now - total_when >= TOTAL_MS) {
		rc = report_make(fs, 0, 0, SIZE_MAX, &r);
		if (rc == 0) {
			total_cached = r.total;
			total_when = now;
			report_free(&r);
		}
	}
	*u_r = total_cached;
	pthread_mutex_unlock(&total_lock);
	return rc;
}

void fs_status_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct mailfs *fs = fuse_req_userdata(req);
	struct fs_quota q = {0};
	struct cache_usage u = {0};
	struct statvfs st;
	uint64_t used, limit = 0, msgs, msg_limit = 0;

	(void)ino;
	if (account_total(fs, &u) < 0)
		log_warn("statfs: the cache cannot be read");
	if (fs->sync != NULL)
		fs_sync_quota(fs->sync, &q);
	used = u.bytes;
	msgs = u.messages;
	if (q.has_storage && q.storage_limit != 0) {
		used = q.storage_used;
		limit = q.storage_limit;
	}
	if (q.has_messages && q.messages_limit != 0) {
		msgs = q.messages_used;
		msg_limit = q.messages_limit;
	}
	fs_usage_statvfs(&st, used, limit, msgs, msg_limit);
	fuse_reply_statfs(req, &st);
}
