#include "fs/imap/newfile.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/attr.h"
#include "fs/imap/closes.h"
#include "fs/net/sync.h"
#include "fs/reply.h"
#include "proto/log.h"
#include "proto/mime.h"

#define NEW_TIMEOUT  1.0
#define NEW_MAX_SIZE (1024ULL * 1024 * 1024)

/* Changed only by set_state(), which keeps the cache record in step. */
enum nf_state {
	NF_WRITING,    /* being written: its close not seen yet (kept in the
	                * cache write by write) */
	NF_STORED,     /* closed: waits for its upload */
	NF_UPLOADING,  /* APPEND under way */
	NF_DONE,       /* the server has it (uid, when it said) */
	NF_FAILED,     /* the server refused it; kept in the cache */
	NF_INCOMPLETE, /* found in the cache at mount time, its close never
	                * seen (a crash cut its writer off): shown as
	                * NAME.incomplete, sent only once renamed */
};

static const char *const nf_state_names[] = {
        [NF_WRITING] = "writing",     [NF_STORED] = "closed",
        [NF_UPLOADING] = "uploading", [NF_DONE] = "uploaded",
        [NF_FAILED] = "refused",      [NF_INCOMPLETE] = "incomplete",
};

/* What a name shown for an incomplete file ends with. */
#define INCOMPLETE_SUFFIX ".incomplete"

/* The fh of a descriptor of a new file: FH_RELEASED when the kernel told
 * us of it and will send its RELEASE (counted in opens); FH_NO_RELEASE
 * when it created the file but sends no RELEASE; 0 when it opened the
 * file without telling us (after it stopped sending opens). */
#define FH_RELEASED   1
#define FH_NO_RELEASE 2

struct nf {
	uint32_t num; /* inode: fs_ino_new(ino_id, num) */
	uint32_t id;  /* target mailbox */
	char *name;   /* owned; NULL for uploads resumed from the cache */
	char *data;   /* owned; the message */
	size_t len, cap;
	bool dirty;      /* the cache lacks a change (its commit failed) */
	bool maybe_sent; /* a crash may have left it on the server */
	int64_t mtime;   /* 0: let the server choose the INTERNALDATE */
	enum nf_state state;
	uint64_t seq;       /* the pending upload in the cache, 0 for none */
	unsigned opens;     /* descriptors the kernel told us of (CREATE,
	                     * OPEN), minus their RELEASEs */
	bool untracked;     /* written through a descriptor the kernel did
	                     * not tell us of: only inotify sees its close */
	uint32_t ino_id;    /* the mailbox in its inode number (fixed) */
	bool queued;        /* an upload job is queued or running */
	int64_t touched_ms; /* last change, close or rename (monotonic) */
	int64_t done_ms;    /* when the server confirmed it */
	struct nf *next;
};

struct fs_newfiles {
	pthread_mutex_t lock;
	struct nf *list; /* owned */
	uint32_t next_num;
	/* The uploader: starts the upload of a closed file once nothing
	 * happened to it for a moment (see uploader_main). */
	struct mailfs *fs;
	pthread_t thread;
	pthread_t closes_thread; /* records closes as soon as they come */
	pthread_cond_t cond;
	bool started, closes_started, stop;
	struct fs_closes *closes;  /* owned; NULL: no closes are seen */
	struct creating *creating; /* owned: CREATEs waiting for a watch */
	bool rewatch; /* a file was moved into a mailbox not watched */
};

/* A CREATE in a mailbox not watched yet: answered by the uploader once
 * the mailbox is watched (or cannot be), so that the file's close is
 * seen however soon it comes. */
struct creating {
	fuse_req_t req;
	uint32_t num; /* the file */
	struct fuse_file_info fi;
	struct creating *next;
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* How long a closed file waits before its upload starts: rsync sets the
 * time and renames right after closing.  A file is never taken as closed
 * for being left alone: see fs/imap/newfile.h for how closes are seen. */
#define UPLOAD_DELAY_MS 1000
/* How long the name of an uploaded file still resolves, so that a rename
 * that comes after the upload (rsync) finds it. */
#define DONE_GRACE_MS   30000

int fs_newfiles_new(struct fs_newfiles **nf_r)
{
	struct fs_newfiles *n = calloc(1, sizeof(*n));

	if (n == NULL)
		return -ENOMEM;
	pthread_mutex_init(&n->lock, NULL);
	*nf_r = n;
	return 0;
}

static void nf_free(struct nf *f)
{
	if (f == NULL)
		return;
	free(f->name);
	free(f->data);
	free(f);
}

void fs_newfiles_free(struct fs_newfiles **np)
{
	struct fs_newfiles *n = *np;

	if (n == NULL)
		return;
	while (n->list != NULL) {
		struct nf *next = n->list->next;

		nf_free(n->list);
		n->list = next;
	}
	fs_closes_free(&n->closes);
	pthread_mutex_destroy(&n->lock);
	free(n);
	*np = NULL;
}

static struct mailfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static fuse_ino_t nf_ino(const struct nf *f)
{
	return fs_ino_new(f->ino_id, f->num);
}

static bool visible(const struct nf *f)
{
	return f->name != NULL && f->state != NF_DONE;
}

/* Callers hold the lock. */
static struct nf *find_name(struct fs_newfiles *n, uint32_t id,
                            const char *name)
{
	for (struct nf *f = n->list; f != NULL; f = f->next)
		if (f->id == id && f->name != NULL &&
		    strcmp(f->name, name) == 0 && f->state != NF_DONE)
			return f;
	return NULL;
}

/* An uploaded file whose name still resolves (DONE_GRACE_MS). */
static struct nf *find_done(struct fs_newfiles *n, uint32_t id,
                            const char *name)
{
	int64_t now = mono_ms();

	for (struct nf *f = n->list; f != NULL; f = f->next)
		if (f->id == id && f->name != NULL &&
		    strcmp(f->name, name) == 0 && f->state == NF_DONE &&
		    now - f->done_ms < DONE_GRACE_MS)
			return f;
	return NULL;
}

static struct nf *find_ino(struct fs_newfiles *n, fuse_ino_t ino)
{
	for (struct nf *f = n->list; f != NULL; f = f->next)
		if (nf_ino(f) == ino)
			return f;
	return NULL;
}

/* f was moved into its mailbox: have the uploader watch it, if it is not
 * watched and was never tried. */
static void want_watch(struct fs_newfiles *n, struct nf *f)
{
	if (n->closes != NULL && fs_closes_state(n->closes, f->id) == 0) {
		n->rewatch = true;
		pthread_cond_broadcast(&n->cond);
	}
}

static bool writable(const struct nf *f)
{
	return f->state == NF_WRITING || f->state == NF_STORED ||
	       f->state == NF_INCOMPLETE;
}

/* The state the cache records for f: whether its close was seen is what
 * decides, after a crash, if it may be sent (fs_newfile_resume). */
static uint32_t persisted(const struct nf *f)
{
	switch (f->state) {
	case NF_STORED:
		return f->maybe_sent ? CACHE_PENDING_SENT
		                     : CACHE_PENDING_CLOSED;
	case NF_UPLOADING: return CACHE_PENDING_SENT;
	case NF_FAILED: return CACHE_PENDING_FAILED;
	default: return CACHE_PENDING_NEW;
	}
}

struct state_rec {
	uint64_t seq;
	uint32_t state;
};

static int pending_state(struct cache_txn *txn, void *ctx)
{
	struct state_rec *s = ctx;

	return cache_pending_set_state(txn, s->seq, s->state);
}

/* The one place f->state changes (the lock is held): the transition is
 * logged and the cache record follows.  If the record cannot follow, f
 * is marked dirty: it is not uploaded, and its next change stores it
 * whole, state included. */
static void set_state(struct mailfs *fs, struct nf *f, enum nf_state state)
{
	uint32_t before = persisted(f);
	struct state_rec ss;
	int rc;

	if (f->state == state)
		return;
	log_debug("new file %s: %s -> %s", f->name ? f->name : "(resumed)",
	          nf_state_names[f->state], nf_state_names[state]);
	f->state = state;
	if (state == NF_STORED)
		f->touched_ms = mono_ms();
	ss = (struct state_rec){f->seq, persisted(f)};
	if (f->seq == 0 || f->dirty || ss.state == before)
		return;
	rc = cache_run_write(fs->cache, pending_state, &ss);
	if (rc < 0) {
		log_err("cannot record the state of %s in the cache: %s",
		        f->name ? f->name : "an upload", strerror(-rc));
		f->dirty = true;
	}
}

/* A close of f was seen (the lock is held).  With a descriptor still open
 * that the kernel told us of, the last RELEASE decides. */
static void close_seen(struct mailfs *fs, struct nf *f)
{
	if (f->state == NF_WRITING && !f->dirty && !f->untracked &&
	    f->opens == 0)
		set_state(fs, f, NF_STORED);
}

static void unlink_nf(struct fs_newfiles *n, struct nf *f)
{
	for (struct nf **pp = &n->list; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			return;
		}
	}
}

static void nf_attr(struct mailfs *fs, const struct nf *f, struct stat *st)
{
	/* Writable by its owner until it is uploaded. */
	fs_attr_file(fs, nf_ino(f), writable(f) ? 0644 : 0444, f->len,
	             f->mtime ? f->mtime : time(NULL), st);
}

bool fs_newfile_lookup(struct mailfs *fs, uint32_t id, const char *name,
                       struct stat *st_r)
{
	struct nf *f;

	pthread_mutex_lock(&fs->newfiles->lock);
	f = find_name(fs->newfiles, id, name);
	if (f == NULL)
		f = find_done(fs->newfiles, id, name);
	if (f != NULL)
		nf_attr(fs, f, st_r);
	pthread_mutex_unlock(&fs->newfiles->lock);
	return f != NULL;
}

int fs_newfile_list(struct mailfs *fs, uint32_t id,
                    int (*cb)(void *ctx, const char *name,
                              const struct stat *st),
                    void *ctx)
{
	int rc = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	for (struct nf *f = fs->newfiles->list; f != NULL && rc == 0;
	     f = f->next) {
		struct stat st;

		if (f->id != id || !visible(f))
			continue;
		nf_attr(fs, f, &st);
		rc = cb(ctx, f->name, &st);
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	return rc;
}

/* --- uploads ----------------------------------------------------------- */

struct upload {
	struct mailfs *fs;
	uint32_t num;
};

static bool has_bare_lf(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			return true;
	return false;
}

static char *to_crlf(const char *p, size_t len, size_t *len_r)
{
	char *out = malloc(2 * len + 1), *o = out;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			*o++ = '\r';
		*o++ = p[i];
	}
	*len_r = (size_t)(o - out);
	return out;
}

struct stored {
	uint32_t id, uidvalidity, uid;
	const char *data;
	size_t len;
	int64_t date;
	uint64_t seq;
};

static char *header(const char *data, size_t len, const char *name, bool decode)
{
	size_t hlen = len < 65536 ? len : 65536;
	char *v = NULL;
	int rc = decode ? mime_header_decoded(data, hlen, name, &v)
	                : mime_header_field(data, hlen, name, &v);

	return rc == 0 ? v : NULL;
}

/* The server has the message: show it as UID.eml at once (no re-list,
 * no re-fetch) and forget the pending upload, in one transaction. */
static int store_done(struct cache_txn *txn, void *ctx)
{
	struct stored *s = ctx;
	int rc = 0;

	if (s->uid != 0) {
		char *subject = header(s->data, s->len, "Subject", true);
		char *from = header(s->data, s->len, "From", true);
		char *date = header(s->data, s->len, "Date", true);
		char *msgid = header(s->data, s->len, "Message-ID", false);
		struct cache_msg m = {
		        .key = {s->id, s->uidvalidity, s->uid},
		        .size = s->len,
		        .internaldate = s->date,
		        .flags = "",
		        .subject = subject,
		        .from = from,
		        .date = date,
		        .message_id = msgid,
		};

		rc = cache_msg_put(txn, &m);
		if (rc == 0)
			rc = cache_body_put(txn, m.key, s->data, s->len);
		free(subject);
		free(from);
		free(date);
		free(msgid);
	}
	if (rc == 0 && s->seq != 0)
		rc = cache_pending_delete(txn, s->seq);
	return rc;
}

/* Is a message with this Message-ID and size already in the mailbox? (A
 * crash between APPEND and its answer.) */
struct size_match {
	size_t len;
	bool found;
};

static void size_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct size_match *s = ctx;

	if (m->size == s->len)
		s->found = true;
}

static bool already_there(struct mailfs *fs, struct imap_client *c, uint32_t id,
                          const char *data, size_t len)
{
	char *msgid = header(data, len, "Message-ID", false);
	struct size_match sm = {.len = len};
	struct proto_err err = {0};
	uint32_t *uids = NULL;
	char *set = NULL;
	size_t n = 0;

	if (msgid == NULL || msgid[0] == '\0' ||
	    fs_sync_open_mailbox(fs, c, id, 0, false) < 0 ||
	    imap_search_header(c, "Message-ID", msgid, &uids, &n, &err) < 0)
		goto out;
	if (n > 0 && (set = imap_uidset_format(uids, n)) != NULL)
		imap_fetch_meta(c, set, 0, size_cb, &sm, &err);
	if (sm.found)
		log_notice("upload %s was already on the server (sent before "
		           "a crash); not sent again",
		           msgid);
out:
	free(set);
	free(uids);
	free(msgid);
	return sm.found;
}

static int upload_fn(struct imap_client *c, void *ctx)
{
	struct upload *u = ctx;
	struct mailfs *fs = u->fs;
	struct fs_newfiles *n = fs->newfiles;
	struct stored st = {0};
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	char *converted = NULL, *name = NULL;
	bool maybe_sent;
	uint32_t uidv = 0, uid = 0;
	struct nf *f;
	int rc;

	pthread_mutex_lock(&n->lock);
	for (f = n->list; f != NULL && f->num != u->num; f = f->next)
		;
	if (f == NULL || f->state != NF_STORED || f->dirty) {
		if (f != NULL)
			f->queued = false;
		pthread_mutex_unlock(&n->lock);
		return 0;
	}
	/* Recorded as sent before the APPEND: after a crash it is first
	 * looked for on the server (already_there). */
	set_state(fs, f, NF_UPLOADING);
	st.id = f->id;
	st.data = f->data;
	st.len = f->len;
	st.date = f->mtime;
	st.seq = f->seq;
	maybe_sent = f->maybe_sent;
	name = f->name ? strdup(f->name) : NULL;
	pthread_mutex_unlock(&n->lock);

	rc = fs_tree_get(fs->tree, st.id, &mb);
	if (rc < 0) {
		log_err("upload %s: its mailbox is gone; kept in the cache",
		        name ? name : "(resumed)");
		goto fail;
	}
	if (maybe_sent && already_there(fs, c, st.id, st.data, st.len)) {
		uid = 0;
		goto done;
	}
	rc = imap_append(c, mb->name, "", (time_t)st.date, 0, st.data, st.len,
	                 &uidv, &uid, &err);
	if (rc == -EPERM && has_bare_lf(st.data, st.len)) {
		size_t clen;

		/* Some servers refuse bare LF; only then is anything
		 * changed, and it is logged. */
		converted = to_crlf(st.data, st.len, &clen);
		if (converted != NULL) {
			log_notice("%s refused %s (%s); sending it again with "
			           "CRLF line ends",
			           fs->url.host, name ? name : "an upload",
			           err.text);
			proto_err_clear(&err);
			st.data = converted;
			st.len = clen;
			rc = imap_append(c, mb->name, "", (time_t)st.date, 0,
			                 st.data, st.len, &uidv, &uid, &err);
		}
	}
	if (rc < 0) {
		log_err("upload of %s to %s failed: %s",
		        name ? name : "a message", mb->name,
		        err.text[0] ? err.text : strerror(-rc));
		goto fail;
	}
done:
	st.uidvalidity = uidv;
	st.uid = (mb->uidvalidity != 0 && uidv == mb->uidvalidity) ? uid : 0;
	/* Bytes with bare LF line ends are stored by some servers with CRLF:
	 * what the server serves is the truth, so such a message is not
	 * cached from what was sent; the listing brings it. */
	if (has_bare_lf(st.data, st.len))
		st.uid = 0;
	if (st.date == 0)
		st.date = time(NULL);
	rc = cache_run_write(fs->cache, store_done, &st);
	if (rc < 0)
		log_err("upload done, but the cache could not record it: %s",
		        strerror(-rc));
	if (st.uid == 0 && fs->sync != NULL)
		fs_sync_listing(fs->sync, st.id, NULL, NULL);
	log_info("uploaded %s to %s as UID %u", name ? name : "a message",
	         mb->name, uid);
	pthread_mutex_lock(&n->lock);
	f->seq = 0; /* forgotten by store_done */
	set_state(fs, f, NF_DONE);
	f->queued = false;
	f->done_ms = mono_ms();
	free(f->data);
	f->data = NULL;
	f->cap = 0;
	pthread_mutex_unlock(&n->lock);
	/* The name it was written under leaves listings (UID.eml shows
	 * instead) but still resolves for a while: see DONE_GRACE_MS. */
	rc = 0;
	goto out;
fail:
	pthread_mutex_lock(&n->lock);
	/* A refusal is final (kept for the user); a lost connection is
	 * retried when the server is back. */
	if (rc == -EPERM || rc == -EINVAL || rc == -ENOENT) {
		set_state(fs, f, NF_FAILED);
	} else {
		f->maybe_sent = true;
		set_state(fs, f, NF_STORED);
	}
	f->queued = false;
	pthread_mutex_unlock(&n->lock);
out:
	free(converted);
	free(name);
	fs_mailbox_free(&mb);
	return rc;
}

static void upload_done(void *ctx, int rc)
{
	(void)rc;
	free(ctx);
}

static void start_upload(struct mailfs *fs, uint32_t num)
{
	struct upload *u = malloc(sizeof(*u));

	if (u == NULL)
		return;
	u->fs = fs;
	u->num = num;
	if (fs->sync == NULL ||
	    fs_sync_call(fs->sync, upload_fn, u, upload_done, u) < 0) {
		struct nf *f;
		bool warn = false;

		free(u);
		pthread_mutex_lock(&fs->newfiles->lock);
		for (f = fs->newfiles->list; f != NULL; f = f->next) {
			if (f->num == num) {
				f->queued = false;
				/* Tried again when the server is back. */
				f->touched_ms = INT64_MAX / 2;
				warn = true;
			}
		}
		pthread_mutex_unlock(&fs->newfiles->lock);
		if (warn)
			log_notice("the server cannot be reached: the upload "
			           "waits in the cache until it is back");
	}
}

/* Queue the upload of f (the lock is held); start_upload() is called
 * by the caller after unlocking. */
static bool want_upload(struct nf *f)
{
	if (f->state != NF_STORED || f->queued)
		return false;
	f->queued = true;
	return true;
}

/* fs_closes_read's callback (the lock is held). */
static void closed(void *ctx, uint32_t id, const char *name)
{
	struct fs_newfiles *n = ctx;
	struct nf *f;

	if (name == NULL) {
		/* Closes there (id 0: anywhere) may have gone unseen: such a
		 * file is taken as closed at unmount (fs_newfiles_unmounted)
		 * or when renamed. */
		if (id != 0)
			log_debug("mailbox %u is no longer watched", id);
		else
			log_warn("inotify dropped events: closes of files "
			         "written into the mount may go unseen");
		return;
	}
	f = find_name(n, id, name);
	if (f != NULL) {
		f->untracked = false;
		close_seen(n->fs, f);
	}
}

/* Take the closes inotify saw before going on (the lock is held): a
 * handler that changes a file must not take an old close for a new one
 * (a file closed, then opened again and written: `echo >>`). */
static void drain_closes(struct fs_newfiles *n)
{
	if (n->closes != NULL)
		fs_closes_read(n->closes, closed, n);
}

static void reply_create(struct mailfs *fs, fuse_req_t req, struct nf *f,
                         struct fuse_file_info *fi)
{
	struct fuse_entry_param e = {0};

	nf_attr(fs, f, &e.attr);
	e.ino = e.attr.st_ino;
	e.attr_timeout = e.entry_timeout = NEW_TIMEOUT;
	fi->direct_io = 0;
	fi->keep_cache = 0;
	fuse_reply_create(req, &e, fi);
}

/* Answer the CREATEs that waited for mailbox id to be watched (the lock
 * is held); all of them when id is 0. */
static void answer_creates(struct fs_newfiles *n, uint32_t id)
{
	struct creating **pp = &n->creating;

	while (*pp != NULL) {
		struct creating *c = *pp;
		struct nf *f;

		for (f = n->list; f != NULL && f->num != c->num; f = f->next)
			;
		if (id != 0 && f != NULL && f->id != id) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		if (f == NULL)
			fuse_reply_err(c->req, EIO);
		else
			reply_create(n->fs, c->req, f, &c->fi);
		free(c);
	}
}

/* Watch what needs watching, without the lock (it walks the mount: see
 * fs/imap/closes.h); false once stopped, when n may be gone. */
static bool watch_needed(struct fs_newfiles *n)
{
	uint32_t id = 0;
	int rc;

	if (n->creating != NULL) {
		struct creating *c = n->creating;
		struct nf *f;

		for (f = n->list; f != NULL && f->num != c->num; f = f->next)
			;
		if (f == NULL) {
			n->creating = c->next;
			fuse_reply_err(c->req, EIO);
			free(c);
			return true;
		}
		id = f->id;
	} else if (n->rewatch) {
		n->rewatch = false;
		for (struct nf *f = n->list; f != NULL && id == 0; f = f->next)
			if (f->name != NULL &&
			    (f->state == NF_WRITING || f->state == NF_STORED) &&
			    fs_closes_state(n->closes, f->id) == 0)
				id = f->id;
		if (id != 0)
			n->rewatch = true; /* until none is left */
	}
	if (id == 0) {
		answer_creates(n, 0);
		return true;
	}
	pthread_mutex_unlock(&n->lock);
	rc = fs_closes_watch(n->closes, n->fs->tree, id);
	if (rc == -ECANCELED)
		return false;
	pthread_mutex_lock(&n->lock);
	answer_creates(n, id);
	return true;
}

static void *uploader_main(void *arg)
{
	struct fs_newfiles *n = arg;

	pthread_mutex_lock(&n->lock);
	while (!n->stop) {
		int64_t now = mono_ms();
		uint32_t nums[64];
		size_t k = 0;
		struct timespec ts;

		drain_closes(n);
		if (n->closes != NULL && (n->creating != NULL || n->rewatch)) {
			/* Once stopped, n may be gone. */
			if (!watch_needed(n))
				return NULL;
			continue;
		}
		/* Only a close seen makes a file STORED: one left alone is
		 * not taken as written (its writer may be slow). */
		for (struct nf *f = n->list; f != NULL && k < 64; f = f->next) {
			if (f->len == 0 || f->dirty ||
			    now - f->touched_ms < UPLOAD_DELAY_MS)
				continue;
			if (want_upload(f))
				nums[k++] = f->num;
		}
		pthread_mutex_unlock(&n->lock);
		for (size_t i = 0; i < k; i++)
			start_upload(n->fs, nums[i]);
		pthread_mutex_lock(&n->lock);
		if (k > 0)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 250 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&n->cond, &n->lock, &ts);
	}
	answer_creates(n, 0);
	pthread_mutex_unlock(&n->lock);
	return NULL;
}

/* Records each close as soon as inotify reports it, so that a crash
 * right after a writer closed its file finds the close in the cache. */
static void *closes_main(void *arg)
{
	struct fs_newfiles *n = arg;
	struct pollfd p = {fs_closes_fd(n->closes), POLLIN, 0};

	for (;;) {
		bool stop;

		pthread_mutex_lock(&n->lock);
		stop = n->stop;
		if (!stop)
			drain_closes(n);
		pthread_mutex_unlock(&n->lock);
		if (stop)
			return NULL;
		poll(&p, 1, 100); /* and check for a stop */
	}
}

int fs_newfiles_start(struct mailfs *fs)
{
	struct fs_newfiles *n = fs->newfiles;
	pthread_condattr_t ca;

	n->fs = fs;
	/* Closes matter only where files can be written.  Nothing is
	 * watched yet: a mailbox is when a file is created in it. */
	if (!fs->readonly && fs->mountpoint != NULL)
		fs_closes_new(fs->mountpoint, &n->closes);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&n->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&n->thread, NULL, uploader_main, n) != 0)
		return -EAGAIN;
	n->started = true;
	if (n->closes != NULL && fs_closes_fd(n->closes) >= 0 &&
	    pthread_create(&n->closes_thread, NULL, closes_main, n) == 0)
		n->closes_started = true;
	return 0;
}

void fs_newfiles_stop(struct mailfs *fs)
{
	struct fs_newfiles *n = fs->newfiles;

	if (n == NULL || !n->started)
		return;
	pthread_mutex_lock(&n->lock);
	n->stop = true;
	pthread_cond_broadcast(&n->cond);
	pthread_mutex_unlock(&n->lock);
	if (n->closes_started)
		pthread_join(n->closes_thread, NULL);
	n->closes_started = false;
	if (fs_closes_stop(n->closes))
		pthread_join(n->thread, NULL);
	else /* waiting for the mount, perhaps for good: fs/imap/closes.h */
		pthread_detach(n->thread);
	n->started = false;
}

void fs_newfiles_unmounted(struct mailfs *fs)
{
	struct fs_newfiles *n = fs->newfiles;

	if (n == NULL)
		return;
	pthread_mutex_lock(&n->lock);
	drain_closes(n);
	for (struct nf *f = n->list; f != NULL; f = f->next) {
		if (f->state != NF_WRITING || f->dirty || f->len == 0)
			continue;
		f->untracked = false;
		f->opens = 0;
		close_seen(fs, f);
		if (f->state == NF_STORED)
			log_info(
			        "%s: its close was not seen, but the unmount "
			        "means it is closed; uploaded at the next mount",
			        f->name ? f->name : "a new file");
	}
	pthread_mutex_unlock(&n->lock);
}

struct resume_ctx {
	struct mailfs *fs;
	uint64_t *seqs;
	size_t n, cap;
};

static int resume_cb(const struct cache_pending *p, void *ctx)
{
	struct resume_ctx *r = ctx;

	if (p->state == CACHE_PENDING_FAILED)
		return 0;
	if (r->n == r->cap) {
		size_t ncap = r->cap ? r->cap * 2 : 16;
		uint64_t *nv = realloc(r->seqs, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		r->seqs = nv;
		r->cap = ncap;
	}
	r->seqs[r->n++] = p->seq;
	return 0;
}

static int resume_read(struct cache_txn *txn, void *ctx)
{
	return cache_pending_foreach(txn, resume_cb, ctx);
}

struct get_pending {
	uint64_t seq;
	struct cache_pending *p;
};

static int get_pending(struct cache_txn *txn, void *ctx)
{
	struct get_pending *g = ctx;

	return cache_pending_get(txn, g->seq, true, &g->p);
}

/* The name an incomplete file is shown under in mailbox id (the lock is
 * held): NAME.incomplete (NAME as it was written; upload-SEQ when the
 * record is older than names), with .2, .3 ... if that is taken.
 * Owned by the caller; NULL without memory. */
static char *incomplete_name(struct fs_newfiles *n, uint32_t id,
                             const char *name, uint64_t seq)
{
	char base[64], *out = NULL;

	if (name == NULL || name[0] == '\0') {
		snprintf(base, sizeof(base), "upload-%llu",
		         (unsigned long long)seq);
		name = base;
	}
	for (unsigned k = 1; k < 1000; k++) {
		int rc = k == 1 ? asprintf(&out, "%s" INCOMPLETE_SUFFIX, name)
		                : asprintf(&out, "%s" INCOMPLETE_SUFFIX ".%u",
		                           name, k);

		if (rc < 0)
			return NULL;
		if (find_name(n, id, out) == NULL)
			break;
		free(out);
		out = NULL;
	}
	return out;
}

static void log_incomplete(struct mailfs *fs, uint32_t id, const char *name,
                           uint64_t size)
{
	struct fs_mailbox *mb = NULL;

	fs_tree_get(fs->tree, id, &mb);
	log_warn("%s/%s: %llu bytes written before mailfs stopped, but never "
	         "closed (its writer may have been cut off): not uploaded. "
	         "It stays in the cache: rename it to upload it as it is, or "
	         "remove it",
	         mb != NULL ? mb->name : "?", name ? name : "?",
	         (unsigned long long)size);
	fs_mailbox_free(&mb);
}

void fs_newfile_resume(struct mailfs *fs)
{
	struct resume_ctx r = {.fs = fs};
	struct fs_newfiles *n = fs->newfiles;

	if (cache_run_read(fs->cache, resume_read, &r) < 0)
		return;
	for (size_t i = 0; i < r.n; i++) {
		struct get_pending g = {.seq = r.seqs[i]};
		struct nf *f, *have;
		char *shown;
		bool incomplete;
		uint32_t num;

		pthread_mutex_lock(&n->lock);
		for (have = n->list; have != NULL; have = have->next)
			if (have->seq == r.seqs[i])
				break;
		if (have != NULL) {
			bool go;

			if (have->touched_ms == INT64_MAX / 2)
				have->touched_ms = 0;
			go = want_upload(have);
			num = have->num;
			pthread_mutex_unlock(&n->lock);
			if (go)
				start_upload(fs, num);
			continue;
		}
		pthread_mutex_unlock(&n->lock);
		if (cache_run_read(fs->cache, get_pending, &g) < 0)
			continue;
		f = calloc(1, sizeof(*f));
		if (f == NULL) {
			cache_pending_free(&g.p);
			continue;
		}
		f->id = f->ino_id = g.p->mailbox_id;
		f->queued = true;
		f->len = f->cap = g.p->size;
		f->data = malloc(f->len ? f->len : 1);
		if (f->data == NULL) {
			free(f);
			cache_pending_free(&g.p);
			continue;
		}
		memcpy(f->data, g.p->data, f->len);
		f->mtime = g.p->internaldate;
		f->seq = g.p->seq;
		f->maybe_sent = g.p->state == CACHE_PENDING_SENT;
		f->state = NF_STORED;
		/* Its close was never seen: its writer may have been cut off
		 * by the crash; what it holds may be a prefix. */
		if (g.p->state == CACHE_PENDING_NEW) {
			f->queued = false;
			f->state = NF_INCOMPLETE;
		}
		pthread_mutex_lock(&n->lock);
		f->num = ++n->next_num;
		if (f->state == NF_INCOMPLETE &&
		    (f->name = incomplete_name(n, f->id, g.p->name, f->seq)) ==
		            NULL) {
			pthread_mutex_unlock(&n->lock);
			cache_pending_free(&g.p);
			nf_free(f);
			continue;
		}
		f->next = n->list;
		n->list = f;
		num = f->num;
		incomplete = f->state == NF_INCOMPLETE;
		shown = incomplete ? strdup(f->name) : NULL;
		pthread_mutex_unlock(&n->lock);
		if (incomplete)
			log_incomplete(fs, g.p->mailbox_id, shown, g.p->size);
		else
			log_info("resuming an upload left in the cache (%llu "
			         "bytes)",
			         (unsigned long long)g.p->size);
		free(shown);
		cache_pending_free(&g.p);
		if (!incomplete)
			start_upload(fs, num);
	}
	free(r.seqs);
}

/* --- keeping it in the cache ------------------------------------------ */

struct store_ctx {
	struct nf *f; /* borrowed under the lock */
	uint64_t old_seq;
	uint64_t seq;
};

static int store_pending(struct cache_txn *txn, void *ctx)
{
	struct store_ctx *s = ctx;
	struct cache_pending p = {
	        .mailbox_id = s->f->id,
	        .state = persisted(s->f),
	        .flags = "",
	        .name = s->f->name,
	        .internaldate = s->f->mtime,
	        .created = time(NULL),
	        .size = s->f->len,
	        .data = (uint8_t *)s->f->data,
	};
	int rc = 0;

	if (s->old_seq != 0)
		rc = cache_pending_delete(txn, s->old_seq);
	if (rc == 0)
		rc = cache_pending_add(txn, &p, &s->seq);
	return rc;
}

struct part_ctx {
	uint64_t seq;
	off_t off;
	const char *buf;
	size_t size;
};

static int store_part(struct cache_txn *txn, void *ctx)
{
	struct part_ctx *pc = ctx;

	return cache_pending_write(txn, pc->seq, (uint64_t)pc->off, pc->buf,
	                           pc->size);
}

/* Commit f's change to the cache before it is answered: close() brings no
 * request (see UPLOAD_DELAY_MS), so what write() accepted must already be
 * safe when it returns.  A write (buf, size at off) that follows what the
 * cache holds is added as one part; anything else (the first write, a
 * truncation, a new time, a commit that failed before) stores the whole
 * file again.  The lock is held across the (short, local) commit so that
 * no other change slips in between.  0, or the errno to answer
 * (fs/reply.h: FS_ERR_KEEP). */
static int keep(struct mailfs *fs, struct nf *f, const char *buf, size_t size,
                off_t off)
{
	int rc;

	if (f->seq != 0 && !f->dirty && buf != NULL) {
		struct part_ctx pc = {f->seq, off, buf, size};

		rc = cache_run_write(fs->cache, store_part, &pc);
	} else {
		struct store_ctx s = {.f = f, .old_seq = f->seq};

		rc = cache_run_write(fs->cache, store_pending, &s);
		if (rc == 0)
			f->seq = s.seq;
	}
	f->touched_ms = mono_ms();
	f->dirty = rc < 0;
	if (rc < 0) {
		log_err("cannot keep %s in the cache: %s",
		        f->name ? f->name : "a new file", strerror(-rc));
		return fs_errno(FS_ERR_KEEP, rc);
	}
	return 0;
}

/* --- FUSE operations --------------------------------------------------- */

void fs_newfile_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                       mode_t mode, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct fs_newfiles *n = fs->newfiles;
	uint32_t id, gen, uid;
	struct fs_mailbox *mb = NULL, *sub = NULL;
	struct nf *f;

	(void)mode;
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!fs_ino_split(parent, &id, &gen, &uid) || uid != 0 || id == 0 ||
	    fs_tree_get(fs->tree, id, &mb) < 0) {
		log_info("a message can only be created inside a mailbox");
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!mb->selectable) {
		log_info("%s cannot hold messages (\\Noselect)", mb->name);
		fs_mailbox_free(&mb);
		fuse_reply_err(req, EPERM);
		return;
	}
	fs_mailbox_free(&mb);
	if (fs_tree_lookup(fs->tree, id, name, &sub) == 0) {
		fs_mailbox_free(&sub);
		fuse_reply_err(req, EEXIST);
		return;
	}
	f = calloc(1, sizeof(*f));
	if (f == NULL || (f->name = strdup(name)) == NULL) {
		free(f);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	f->id = f->ino_id = id;
	f->state = NF_WRITING;
	f->touched_ms = mono_ms();
	/* Once the kernel skips opens it sends no RELEASE of this file
	 * either: only inotify will see it closed. */
	if (atomic_load(&fs->opens_skipped)) {
		f->untracked = true;
		fi->fh = FH_NO_RELEASE;
	} else {
		f->opens = 1;
		fi->fh = FH_RELEASED;
	}
	pthread_mutex_lock(&n->lock);
	drain_closes(n);
	if (find_name(n, id, name) != NULL) {
		pthread_mutex_unlock(&n->lock);
		nf_free(f);
		fuse_reply_err(req, EEXIST);
		return;
	}
	f->num = ++n->next_num;
	f->next = n->list;
	n->list = f;
	/* Its close must be seen, however soon it comes: the mailbox is
	 * watched before the file exists for its writer. */
	if (n->closes != NULL && n->started && !n->stop &&
	    fs_closes_state(n->closes, id) == 0) {
		struct creating *c = calloc(1, sizeof(*c));

		if (c != NULL) {
			c->req = req;
			c->num = f->num;
			c->fi = *fi;
			c->next = n->creating;
			n->creating = c;
			pthread_cond_broadcast(&n->cond);
			pthread_mutex_unlock(&n->lock);
			return;
		}
	}
	reply_create(fs, req, f, fi);
	pthread_mutex_unlock(&n->lock);
}

void fs_newfile_getattr(fuse_req_t req, fuse_ino_t ino)
{
	struct mailfs *fs = fs_of(req);
	struct nf *f;
	struct stat st;

	pthread_mutex_lock(&fs->newfiles->lock);
	f = find_ino(fs->newfiles, ino);
	if (f != NULL)
		nf_attr(fs, f, &st);
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (f == NULL)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_attr(req, &st, NEW_TIMEOUT);
}

/* A change through descriptor fi (NULL: by path) is coming to f: from one
 * the kernel did not tell us of, only inotify will see it closed (the
 * lock is held). */
static void written_through(struct nf *f, const struct fuse_file_info *fi)
{
	if (fi != NULL && fi->fh != FH_RELEASED)
		f->untracked = true;
}

/* f is written again after its close was seen (the lock is held). */
static void reopened(struct mailfs *fs, struct nf *f)
{
	if (f->state == NF_STORED && !f->queued)
		set_state(fs, f, NF_WRITING);
}

void fs_newfile_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                        int to_set, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct nf *f;
	struct stat st;
	int err = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	drain_closes(fs->newfiles);
	f = find_ino(fs->newfiles, ino);
	if (f == NULL) {
		err = ENOENT;
	} else if (to_set & FUSE_SET_ATTR_SIZE) {
		if (!writable(f) || (f->state == NF_STORED && f->queued)) {
			err = EPERM;
		} else if ((uint64_t)attr->st_size > f->len) {
			err = EPERM; /* no holes in mail */
		} else if ((size_t)attr->st_size < f->len) {
			/* O_TRUNC, or truncate(): being written again. */
			written_through(f, fi);
			reopened(fs, f);
			f->len = (size_t)attr->st_size;
			f->dirty = true;
		}
	}
	/* cp -p and rsync -t: the time becomes the INTERNALDATE, if the
	 * upload has not started yet.  Modes and owners mean nothing to a
	 * mail server: accepted and ignored. */
	if (err == 0 && (to_set & FUSE_SET_ATTR_MTIME) && writable(f) &&
	    f->mtime != attr->st_mtime) {
		f->mtime = attr->st_mtime;
		f->dirty = true;
	}
	/* Kept like a write (a truncation, the time of the pending upload),
	 * unless nothing was ever written. */
	if (err == 0 && f->dirty && (f->seq != 0 || f->len > 0))
		err = keep(fs, f, NULL, 0, 0);
	if (err == 0)
		nf_attr(fs, f, &st);
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, NEW_TIMEOUT);
}

void fs_newfile_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct nf *f;
	int err = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	drain_closes(fs->newfiles);
	f = find_ino(fs->newfiles, ino);
	if (f == NULL || f->state == NF_DONE) {
		err = ENOENT;
	} else if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		if (f->state == NF_UPLOADING ||
		    (f->state == NF_STORED && f->queued)) {
			err = EPERM;
		} else {
			if (f->state == NF_FAILED)
				set_state(fs, f, NF_WRITING);
			reopened(fs, f);
			if ((fi->flags & O_TRUNC) && f->len > 0) {
				f->len = 0;
				f->dirty = true;
				err = keep(fs, f, NULL, 0, 0);
			}
		}
	}
	/* An OPEN comes only while the kernel sends them: its RELEASE will
	 * come too. */
	if (err == 0) {
		f->opens++;
		fi->fh = FH_RELEASED;
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_open(req, fi);
}

void fs_newfile_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off)
{
	struct mailfs *fs = fs_of(req);
	char *copy = NULL;
	size_t n = 0;
	struct nf *f;

	pthread_mutex_lock(&fs->newfiles->lock);
	f = find_ino(fs->newfiles, ino);
	if (f != NULL && f->data != NULL && (size_t)off < f->len) {
		n = f->len - (size_t)off < size ? f->len - (size_t)off : size;
		copy = malloc(n);
		if (copy != NULL)
			memcpy(copy, f->data + off, n);
		else
			n = 0;
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (f == NULL)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_buf(req, copy, n);
	free(copy);
}

void fs_newfile_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                      size_t size, off_t off, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct nf *f;
	int err = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	drain_closes(fs->newfiles);
	f = find_ino(fs->newfiles, ino);
	/* A closed file may be opened and written again: until its upload
	 * starts, it is being written again. */
	if (f != NULL && (f->state == NF_WRITING || f->state == NF_STORED ||
	                  f->state == NF_INCOMPLETE))
		written_through(f, fi);
	if (f != NULL)
		reopened(fs, f);
	if (f == NULL ||
	    (f->state != NF_WRITING && f->state != NF_INCOMPLETE)) {
		err = f == NULL ? ENOENT : EPERM;
	} else if (off < 0 || (uint64_t)off + size > NEW_MAX_SIZE) {
		err = EFBIG;
	} else {
		size_t end = (size_t)off + size;

		if (end > f->cap) {
			size_t ncap = f->cap ? f->cap : 64 * 1024;
			char *nd;

			while (ncap < end)
				ncap *= 2;
			nd = realloc(f->data, ncap);
			if (nd == NULL) {
				err = ENOMEM;
				goto out;
			}
			f->data = nd;
			f->cap = ncap;
		}
		if ((size_t)off > f->len) /* a hole: zeros, as files do */
			memset(f->data + f->len, 0, (size_t)off - f->len);
		memcpy(f->data + off, buf, size);
		if (end > f->len)
			f->len = end;
		if (size > 0 || f->dirty)
			err = keep(fs, f, buf, size, off);
	}
out:
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_write(req, size);
}

void fs_newfile_release(fuse_req_t req, fuse_ino_t ino,
                        struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct nf *f;

	pthread_mutex_lock(&fs->newfiles->lock);
	drain_closes(fs->newfiles);
	f = find_ino(fs->newfiles, ino);
	if (f != NULL && fi->fh == FH_RELEASED) {
		if (f->opens > 0)
			f->opens--;
		/* The last descriptor we know of is closed: as for a close
		 * seen by inotify, the upload starts a second later. */
		close_seen(fs, f);
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	fuse_reply_err(req, 0);
}

struct drop_ctx {
	uint64_t seq;
};

static int drop_pending(struct cache_txn *txn, void *ctx)
{
	return cache_pending_delete(txn, ((struct drop_ctx *)ctx)->seq);
}

bool fs_newfile_unlink(fuse_req_t req, uint32_t id, const char *name)
{
	struct mailfs *fs = fs_of(req);
	struct drop_ctx d = {0};
	struct nf *f;
	int err = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	f = find_name(fs->newfiles, id, name);
	if (f == NULL) {
		pthread_mutex_unlock(&fs->newfiles->lock);
		return false;
	}
	if (f->state == NF_UPLOADING) {
		err = EBUSY;
	} else {
		d.seq = f->seq;
		unlink_nf(fs->newfiles, f);
		nf_free(f);
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (err == 0 && d.seq != 0 &&
	    cache_run_write(fs->cache, drop_pending, &d) < 0)
		err = EIO;
	fuse_reply_err(req, err);
	return true;
}

struct target_ctx {
	uint64_t seq;
	uint32_t id;
	const char *name;
};

static int pending_target(struct cache_txn *txn, void *ctx)
{
	struct target_ctx *t = ctx;

	return cache_pending_set_target(txn, t->seq, t->id, t->name);
}

/* f was renamed (the lock is held): its record follows, so that a crash
 * leaves it where and as the user last put it. */
static void retarget(struct mailfs *fs, struct nf *f)
{
	struct target_ctx t = {f->seq, f->id, f->name};
	int rc;

	if (f->dirty && (f->seq != 0 || f->len > 0)) {
		keep(fs, f, NULL, 0, 0); /* stored whole, name included */
		return;
	}
	if (f->seq == 0)
		return;
	rc = cache_run_write(fs->cache, pending_target, &t);
	if (rc < 0) {
		log_err("cannot record the new name of %s in the cache: %s",
		        f->name, strerror(-rc));
		f->dirty = true;
	}
}

bool fs_newfile_rename(fuse_req_t req, uint32_t id, const char *name,
                       uint32_t newid, const char *newname)
{
	struct mailfs *fs = fs_of(req);
	struct fs_newfiles *n = fs->newfiles;
	struct nf *f, *old;
	uint32_t num = 0;
	bool go = false;
	char *nn;
	int err = 0;

	nn = strdup(newname);
	pthread_mutex_lock(&n->lock);
	/* A close before this rename (rsync renames what it closed) is
	 * reported under the old name: take it while that name holds. */
	drain_closes(n);
	f = find_name(n, id, name);
	if (f == NULL) {
		/* Renamed into place after the upload finished (rsync):
		 * the message is already in, as UID.eml. */
		f = find_done(n, id, name);
		if (f != NULL) {
			free(f->name);
			f->name = nn;
			nn = NULL;
		}
		pthread_mutex_unlock(&n->lock);
		free(nn);
		if (f == NULL)
			return false;
		fuse_reply_err(req, 0);
		return true;
	}
	if (nn == NULL) {
		err = ENOMEM;
	} else if (newid != id && !writable(f)) {
		err = EBUSY;
	} else {
		old = find_name(n, newid, newname);
		if (old != NULL && old != f && writable(old)) {
			unlink_nf(n, old); /* replaced, as rename does */
			if (old->seq != 0) {
				struct drop_ctx d = {old->seq};

				cache_run_write(fs->cache, drop_pending, &d);
			}
			nf_free(old);
		}
		free(f->name);
		f->name = nn;
		nn = NULL;
		if (newid != id) {
			/* The pending upload now goes to newid, and its
			 * close is seen there, if at all. */
			f->id = newid;
			want_watch(n, f);
		}
		retarget(fs, f);
		f->touched_ms = mono_ms();
		/* An incomplete file renamed: the user takes it as it is. */
		if (f->state == NF_INCOMPLETE && !f->dirty) {
			log_notice("%s: renamed, so taken as complete; "
			           "uploading its %zu bytes",
			           f->name, f->len);
			set_state(fs, f, NF_STORED);
		}
		/* Renamed into place when written: that is the end of it. */
		go = f->len > 0 && want_upload(f);
		num = f->num;
	}
	pthread_mutex_unlock(&n->lock);
	free(nn);
	fuse_reply_err(req, err);
	if (go)
		start_upload(fs, num);
	return true;
}
