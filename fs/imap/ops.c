/* The FUSE low-level operations.
 *
 * Every handler answers from the cache (fs->cache, fs->tree).  When the
 * cache lacks something only the server has (a mailbox never listed, a
 * body never fetched), the handler queues a job on the network side
 * (fs/net/sync.c) and returns; the job's callback sends the reply from a
 * network thread.  So no FUSE worker ever waits for the network. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/attr.h"
#include "fs/dirsnap.h"
#include "fs/imap/change.h"
#include "fs/imap/newfile.h"
#include "fs/imap/status.h"
#include "fs/inval.h"
#include "fs/mailfs.h"
#include "fs/net/sync.h"
#include "fs/net/watch.h"
#include "fs/reply.h"
#include "proto/log.h"

#define DIR_TIMEOUT FS_ATTR_DIR_TIMEOUT
#define MSG_TIMEOUT FS_ATTR_MSG_TIMEOUT

static struct mailfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* --- attributes ------------------------------------------------------- */

static void dir_attr(struct mailfs *fs, uint32_t id, int64_t mtime,
                     struct stat *st)
{
	fs_attr_dir(fs, fs_ino_dir(id), 0755,
	            2 + fs_tree_nsubdirs(fs->tree, id), mtime, st);
}

/* The attributes of message m of generation gen; -EIO (logged) when it
 * has no inode number: its mailbox changed UIDVALIDITY too often
 * (fs/ino.h). */
static int msg_attr(struct mailfs *fs, uint32_t gen, const struct cache_msg *m,
                    struct stat *st)
{
	fuse_ino_t ino = fs_ino_msg(m->key.mailbox_id, gen, m->key.uid);

	if (ino == 0) {
		struct fs_mailbox *mb = NULL;

		fs_tree_get(fs->tree, m->key.mailbox_id, &mb);
		log_err("mailbox %s has changed UIDVALIDITY too often (%u "
		        "times): its messages cannot be shown",
		        mb != NULL ? mb->name : "?", gen);
		fs_mailbox_free(&mb);
		return -EIO;
	}
	fs_attr_file(fs, ino, 0444, m->size, m->internaldate, st);
	return 0;
}

/* The message behind an inode: its mailbox copy (current generation
 * only) and cache record. */
/* The UIDVALIDITY of generation gen of mailbox id.  An inode of an
 * older generation (a UIDVALIDITY change happened while it was in use)
 * keeps reading what was cached under it: bodies are copied, not moved,
 * when they are re-matched to the new UIDs. */
struct old_gen {
	uint32_t id, gen, uidvalidity;
};

static int old_gen_read(struct cache_txn *txn, void *ctx)
{
	struct old_gen *o = ctx;
	struct cache_mailbox *mb = NULL;
	int rc = cache_mailbox_get(txn, o->id, &mb);

	if (rc == 0 && o->gen < mb->ngenerations)
		o->uidvalidity = mb->uidvalidities[o->gen];
	else if (rc == 0)
		rc = -ESTALE;
	cache_mailbox_free(&mb);
	return rc;
}

static int old_generation(struct mailfs *fs, uint32_t id, uint32_t gen,
                          uint32_t *uidvalidity_r)
{
	struct old_gen o = {id, gen, 0};
	int rc = cache_run_read(fs->cache, old_gen_read, &o);

	if (rc == 0)
		*uidvalidity_r = o.uidvalidity;
	return rc;
}

static int get_msg(struct mailfs *fs, fuse_ino_t ino, struct fs_mailbox **mb_r,
                   struct cache_msg **msg_r)
{
	uint32_t id, gen, uid;
	struct fs_mailbox *mb = NULL;
	int rc;

	if (fs_ino_is_new(ino) || !fs_ino_split(ino, &id, &gen, &uid) ||
	    uid == 0)
		return -ENOENT;
	rc = fs_tree_get(fs->tree, id, &mb);
	if (rc < 0)
		return rc;
	if (mb->uidvalidity == 0) {
		fs_mailbox_free(&mb);
		return -ESTALE;
	}
	{
		uint32_t uidv = mb->uidvalidity;

		if (mb->gen != gen) {
			if (old_generation(fs, id, gen, &uidv) < 0) {
				fs_mailbox_free(&mb);
				return -ESTALE;
			}
			mb->gen = gen; /* the attributes keep the old inode */
		}
		rc = cache_msg_get_once(
		        fs->cache, (struct cache_key){id, uidv, uid}, msg_r);
	}
	if (rc < 0) {
		fs_mailbox_free(&mb);
		return rc;
	}
	if (mb_r != NULL)
		*mb_r = mb;
	else
		fs_mailbox_free(&mb);
	return 0;
}

/* The message's current cache key, from its inode number. */
static int msg_key(struct mailfs *fs, fuse_ino_t ino, struct cache_key *key_r)
{
	uint32_t id, gen, uid, uidvalidity, cur;

	if (fs_ino_is_new(ino) || !fs_ino_split(ino, &id, &gen, &uid) ||
	    uid == 0)
		return -ENOENT;
	if (fs_tree_current(fs->tree, id, &uidvalidity, &cur) < 0)
		return -ESTALE;
	if (cur != gen && old_generation(fs, id, gen, &uidvalidity) < 0)
		return -ESTALE;
	*key_r = (struct cache_key){id, uidvalidity, uid};
	return 0;
}

/* --- deferred replies -------------------------------------------------- */

enum deferred_op {
	D_LOOKUP,
	D_OPENDIR,
	D_OPEN,
	D_READ,
};

struct deferred {
	enum deferred_op op;
	fuse_req_t req;
	fuse_ino_t ino;
	struct fuse_file_info fi;
	size_t size; /* D_READ */
	off_t off;
	char name[]; /* D_LOOKUP */
};

static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name,
                      bool may_wait);
static void do_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi, bool may_wait);
static void do_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                    bool may_wait);
static void do_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    bool may_wait);

static void deferred_cb(void *ctx, int rc)
{
	struct deferred *d = ctx;

	switch (d->op) {
	case D_LOOKUP: do_lookup(d->req, d->ino, d->name, false); break;
	case D_OPENDIR: do_opendir(d->req, d->ino, &d->fi, false); break;
	case D_READ:
	case D_OPEN:
		if (rc < 0) {
			log_warn("message (inode %llu) could not be fetched: "
			         "%s",
			         (unsigned long long)d->ino,
			         rc == -ENOTCONN ? "the server cannot be "
			                           "reached"
			                         : strerror(-rc));
			fs_reply_fail(d->req, FS_ERR_FETCH, rc);
		} else if (d->op == D_READ) {
			do_read(d->req, d->ino, d->size, d->off, false);
		} else {
			do_open(d->req, d->ino, &d->fi, false);
		}
		break;
	}
	free(d);
}

static struct deferred *deferred_new(enum deferred_op op, fuse_req_t req,
                                     fuse_ino_t ino,
                                     const struct fuse_file_info *fi,
                                     const char *name)
{
	size_t nlen = name ? strlen(name) + 1 : 1;
	struct deferred *d = calloc(1, sizeof(*d) + nlen);

	if (d == NULL)
		return NULL;
	d->op = op;
	d->req = req;
	d->ino = ino;
	if (fi != NULL)
		d->fi = *fi;
	if (name != NULL)
		memcpy(d->name, name, nlen);
	return d;
}

/* The listing of mb must exist before we can answer (never listed): queue
 * it with a deferred reply.  Returns true if the request was deferred. */
static bool defer_listing(struct mailfs *fs, const struct fs_mailbox *mb,
                          struct deferred *d)
{
	if (d == NULL)
		return false;
	if (fs->sync != NULL &&
	    fs_sync_listing(fs->sync, mb->id, deferred_cb, d) == 0)
		return true;
	free(d);
	return false;
}

/* Is the view of mailbox mb (NULL: the mailbox list) older than poll?
 * Then the next look at it waits for a resync (fs/net/sync.c fetches only
 * what changed), so that ls shows what the server has; when the server
 * cannot be reached the cache answers at once. */
static bool stale(struct mailfs *fs, const struct fs_mailbox *mb)
{
	int64_t now = time(NULL), poll = (int64_t)fs->opts.poll;

	if (fs->sync == NULL)
		return false;
	if (now - fs_tree_loaded(fs->tree) >= poll)
		return true;
	return mb != NULL && mb->selectable && now - mb->last_sync >= poll &&
	       !fs_watch_live(fs->watch, mb->id);
}

/* Wait for a refresh of the mailbox list (the root directory, a name not
 * found in it).  Returns true if the request was deferred. */
static bool defer_list(struct mailfs *fs, struct deferred *d)
{
	if (d == NULL)
		return false;
	if (fs_sync_mailboxes(fs->sync, deferred_cb, d) == 0)
		return true;
	free(d);
	return false;
}

/* --- lookup / getattr ----------------------------------------------- */

static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name,
                      bool may_wait)
{
	struct mailfs *fs = fs_of(req);
	struct fuse_entry_param e = {0};
	struct fs_mailbox *mb = NULL, *dir = NULL;
	struct cache_msg *msg = NULL;
	uint32_t pid, gen, uid;
	int rc;

	if (!fs_ino_split(parent, &pid, &gen, &uid) || uid != 0) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (fs_tree_lookup(fs->tree, pid, name, &mb) == 0) {
		dir_attr(fs, mb->id, mb->mtime, &e.attr);
		e.ino = e.attr.st_ino;
		e.attr_timeout = e.entry_timeout = DIR_TIMEOUT;
		fs_mailbox_free(&mb);
		fuse_reply_entry(req, &e);
		return;
	}
	if (pid != 0 && fs_newfile_lookup(fs, pid, name, &e.attr)) {
		e.ino = e.attr.st_ino;
		e.attr_timeout = e.entry_timeout = DIR_TIMEOUT;
		fuse_reply_entry(req, &e);
		return;
	}
	if (pid == 0 || !fs_attr_parse_name(name, &uid)) {
		/* Perhaps a mailbox created elsewhere since the list was
		 * read. */
		if (may_wait && stale(fs, NULL) &&
		    defer_list(fs,
		               deferred_new(D_LOOKUP, req, parent, NULL, name)))
			return;
		fuse_reply_err(req, ENOENT);
		return;
	}
	rc = fs_tree_get(fs->tree, pid, &dir);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_LOCAL, rc);
		return;
	}
	if (dir->last_sync == 0 && dir->selectable) {
		if (may_wait &&
		    defer_listing(
		            fs, dir,
		            deferred_new(D_LOOKUP, req, parent, NULL, name))) {
			fs_mailbox_free(&dir);
			return;
		}
		log_warn("mailbox %s was never listed and the server cannot "
		         "be reached",
		         dir->name);
		fs_mailbox_free(&dir);
		fuse_reply_err(req, EIO);
		return;
	}
	if (dir->uidvalidity == 0) {
		fs_mailbox_free(&dir);
		fuse_reply_err(req, ENOENT);
		return;
	}
	rc = cache_msg_get_once(fs->cache,
	                        (struct cache_key){pid, dir->uidvalidity, uid},
	                        &msg);
	if (rc == -ENOENT && may_wait && stale(fs, dir) &&
	    defer_listing(fs, dir,
	                  deferred_new(D_LOOKUP, req, parent, NULL, name))) {
		/* Not known in a listing that is old: perhaps new. */
		fs_mailbox_free(&dir);
		return;
	}
	if (rc < 0) {
		fs_mailbox_free(&dir);
		fs_reply_fail(req, FS_ERR_LOOKUP, rc);
		return;
	}
	rc = msg_attr(fs, dir->gen, msg, &e.attr);
	e.ino = e.attr.st_ino;
	e.attr_timeout = e.entry_timeout = MSG_TIMEOUT;
	cache_msg_free(&msg);
	fs_mailbox_free(&dir);
	if (rc < 0)
		fs_reply_fail(req, FS_ERR_LOCAL, rc);
	else
		fuse_reply_entry(req, &e);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_lookup(req, parent, name, true);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct fs_mailbox *mb = NULL;
	struct cache_msg *msg = NULL;
	uint32_t id, gen, uid;
	struct stat st;
	int rc;

	(void)fi;
	if (fs_ino_is_new(ino)) {
		fs_newfile_getattr(req, ino);
		return;
	}
	if (!fs_ino_split(ino, &id, &gen, &uid)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (id == 0) {
		dir_attr(fs, 0, fs_tree_mtime(fs->tree), &st);
		fuse_reply_attr(req, &st, DIR_TIMEOUT);
		return;
	}
	if (uid == 0) {
		rc = fs_tree_get(fs->tree, id, &mb);
		if (rc < 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		dir_attr(fs, id, mb->mtime, &st);
		fs_mailbox_free(&mb);
		fuse_reply_attr(req, &st, DIR_TIMEOUT);
		return;
	}
	rc = get_msg(fs, ino, &mb, &msg);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_FIND, rc);
		return;
	}
	rc = msg_attr(fs, mb->gen, msg, &st);
	cache_msg_free(&msg);
	fs_mailbox_free(&mb);
	if (rc < 0)
		fs_reply_fail(req, FS_ERR_LOCAL, rc);
	else
		fuse_reply_attr(req, &st, MSG_TIMEOUT);
}

/* --- directories ------------------------------------------------------ */

struct snap_msgs {
	struct mailfs *fs;
	struct fs_dirsnap *s;
	uint32_t gen;
};

static int snap_msg_cb(const struct cache_msg *msg, void *ctx)
{
	struct snap_msgs *m = ctx;
	char name[FS_ATTR_NAME_SIZE];
	struct stat st;

	fs_attr_msg_name(msg->key.uid, name);
	if (msg_attr(m->fs, m->gen, msg, &st) < 0)
		return -EIO;
	return fs_dirsnap_add(m->s, name, &st, MSG_TIMEOUT);
}

struct snap_read {
	struct snap_msgs m;
	uint32_t id, uidvalidity;
};

static int snap_read(struct cache_txn *txn, void *ctx)
{
	struct snap_read *r = ctx;

	return cache_msg_foreach(txn, r->id, r->uidvalidity, 1, snap_msg_cb,
	                         &r->m);
}

struct snap_new {
	struct mailfs *fs;
	struct fs_dirsnap *s;
	uint32_t id, uidvalidity;
};

static int snap_new_cb(void *ctx, const char *name, const struct stat *st)
{
	struct snap_new *sn = ctx;
	struct cache_msg *m = NULL;
	uint32_t uid;

	/* A new file renamed onto a message's name (a restore): the
	 * message is listed, once. */
	if (fs_attr_parse_name(name, &uid) && sn->uidvalidity != 0 &&
	    cache_msg_get_once(sn->fs->cache,
	                       (struct cache_key){sn->id, sn->uidvalidity, uid},
	                       &m) == 0) {
		cache_msg_free(&m);
		return 0;
	}
	/* Being written: kept only briefly by the kernel. */
	return fs_dirsnap_add(sn->s, name, st, DIR_TIMEOUT);
}

static int build_snap(struct mailfs *fs, uint32_t id,
                      const struct fs_mailbox *mb, struct fs_dirsnap **snap_r)
{
	struct fs_dirsnap *s = fs_dirsnap_new();
	struct fs_mailbox **kids = NULL;
	size_t nkids = 0;
	struct stat st;
	int rc;

	if (s == NULL)
		return -ENOMEM;
	dir_attr(fs, id, mb ? mb->mtime : fs_tree_mtime(fs->tree), &st);
	rc = fs_dirsnap_add(s, ".", &st, DIR_TIMEOUT);
	dir_attr(fs, mb ? mb->parent : 0, 0, &st);
	if (rc == 0)
		rc = fs_dirsnap_add(s, "..", &st, DIR_TIMEOUT);
	if (rc == 0)
		rc = fs_tree_children(fs->tree, id, &kids, &nkids);
	for (size_t i = 0; i < nkids && rc == 0; i++) {
		dir_attr(fs, kids[i]->id, kids[i]->mtime, &st);
		rc = fs_dirsnap_add(s, kids[i]->file, &st, DIR_TIMEOUT);
	}
	fs_mailbox_vfree(&kids, nkids);

	if (rc == 0 && mb != NULL) {
		struct snap_new sn = {fs, s, id, mb->uidvalidity};

		rc = fs_newfile_list(fs, id, snap_new_cb, &sn);
	}
	if (rc == 0 && mb != NULL && mb->uidvalidity != 0) {
		struct snap_read r = {
		        .m = {fs, s, mb->gen},
		        .id = id,
		        .uidvalidity = mb->uidvalidity,
		};

		rc = cache_run_read(fs->cache, snap_read, &r);
	}
	if (rc < 0) {
		fs_dirsnap_free(s);
		return rc;
	}
	*snap_r = s;
	return 0;
}

static void do_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi, bool may_wait)
{
	struct mailfs *fs = fs_of(req);
	struct fs_mailbox *mb = NULL;
	struct fs_dirsnap *snap = NULL;
	uint32_t id, gen, uid;
	int rc;

	if (!fs_ino_split(ino, &id, &gen, &uid) || uid != 0) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (id == 0) {
		if (may_wait && stale(fs, NULL) &&
		    defer_list(fs, deferred_new(D_OPENDIR, req, ino, fi, NULL)))
			return;
	} else {
		rc = fs_tree_get(fs->tree, id, &mb);
		if (rc < 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		if ((mb->last_sync == 0 && mb->selectable) ||
		    (may_wait && stale(fs, mb))) {
			if (may_wait &&
			    defer_listing(fs, mb,
			                  deferred_new(D_OPENDIR, req, ino, fi,
			                               NULL))) {
				fs_mailbox_free(&mb);
				return;
			}
			if (mb->last_sync != 0)
				goto answer; /* from the cache */
			log_warn("mailbox %s was never listed and the server "
			         "cannot be reached",
			         mb->name);
			fs_mailbox_free(&mb);
			fuse_reply_err(req, EIO);
			return;
		}
	}
answer:
	rc = build_snap(fs, id, mb, &snap);
	fs_mailbox_free(&mb);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_LOCAL, rc);
		return;
	}
	fi->fh = (uintptr_t)snap;
	/* The listing is a snapshot; let the kernel cache it only briefly. */
	fi->cache_readdir = 0;
	fi->keep_cache = 0;
	if (fuse_reply_open(req, fi) != 0)
		fs_dirsnap_free(snap);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi)
{
	do_opendir(req, ino, fi, true);
}

/* --- files ------------------------------------------------------------ */

/* The body of message uid of mailbox box is not in the cache and its
 * fetch could not be queued (qrc; may_wait false: it was fetched and
 * failed): say why, and answer EIO. */
static void reply_not_cached(fuse_req_t req, struct mailfs *fs, const char *box,
                             uint32_t uid, int qrc, bool may_wait)
{
	/* -EAGAIN: its fetch failed just now, and that was logged. */
	log_msg(qrc == -EAGAIN ? LOG_DEBUG : LOG_WARNING,
	        "message %s/%" PRIu32 ".eml is not in the cache and %s", box,
	        uid,
	        fs->sync == NULL ? "mailfs is offline (-o offline)"
	        : !may_wait      ? "could not be fetched from the server"
	        : qrc == -ENOTCONN
	                ? "the server cannot be reached (mailfs reconnects by "
	                  "itself)"
	        : qrc == -EAGAIN ? "could not be fetched a moment ago"
	                         : "could not be queued for fetching");
	fs_reply_fail(req, FS_ERR_FETCH, qrc);
}

static void do_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                    bool may_wait)
{
	struct mailfs *fs = fs_of(req);
	struct fs_mailbox *mb = NULL;
	struct cache_msg *msg = NULL;
	struct cache_key key;
	uint64_t size;
	int rc;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, fs->readonly ? EROFS : EPERM);
		return;
	}
	/* The common case, a cached body, costs one lookup. */
	if (msg_key(fs, ino, &key) == 0 &&
	    cache_body_size_once(fs->cache, key, &size) == 0) {
		fi->keep_cache = 1;
		fi->noflush = 1;
		fuse_reply_open(req, fi);
		return;
	}
	rc = get_msg(fs, ino, &mb, &msg);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_FIND, rc);
		return;
	}
	rc = cache_body_size_once(fs->cache, msg->key, &size);
	if (rc == -ENOENT) {
		struct deferred *d =
		        may_wait ? deferred_new(D_OPEN, req, ino, fi, NULL)
		                 : NULL;

		int qrc = -ENOTCONN;

		if (d != NULL && fs->sync != NULL)
			qrc = fs_sync_body(fs->sync, msg->key.mailbox_id,
			                   msg->key.uidvalidity, msg->key.uid,
			                   0, deferred_cb, d);
		if (qrc == 0)
			goto out;
		free(d);
		reply_not_cached(req, fs, mb->name, msg->key.uid, qrc,
		                 may_wait);
		goto out;
	}
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_READ, rc);
		goto out;
	}
	/* A message never changes: let the page cache keep it. */
	fi->keep_cache = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
out:
	cache_msg_free(&msg);
	fs_mailbox_free(&mb);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);

	if (fs_ino_is_new(ino)) {
		fs_newfile_open(req, ino, fi);
		return;
	}
	/* A message never changes and needs nothing per open: with the
	 * kernel's "no open" support, ENOSYS tells it to stop sending opens
	 * (and releases) of files and to keep their pages cached, so a warm
	 * grep costs no round trip through mailfs per file.  Reads then
	 * fetch what is not cached (do_read). */
	if (fs->no_open && (fi->flags & O_ACCMODE) == O_RDONLY &&
	    !(fi->flags & O_TRUNC)) {
		atomic_store(&fs->opens_skipped, true);
		fuse_reply_err(req, ENOSYS);
		return;
	}
	do_open(req, ino, fi, true);
}

struct read_reply {
	struct fs_view_reply v;
	struct fs_inval *inval;
	fuse_ino_t ino;
	uint64_t end;
	bool after; /* invalidate the attributes after the reply */
};

static int reply_view(void *ctx, const void *data, size_t n)
{
	struct read_reply *r = ctx;

	/* The body is in the cache: if its size was just corrected, the
	 * kernel is told in the order fs/inval.h gives. */
	r->after = fs_inval_read_begin(r->inval, r->ino, r->end);
	return fs_reply_view(&r->v, data, n);
}

/* Read from the cache.  Once the kernel stopped sending opens (see
 * op_open), a body may not be cached yet when it is read: then the read
 * waits, like an open did, for the fetch (with read-ahead). */
static void do_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    bool may_wait)
{
	struct mailfs *fs = fs_of(req);
	struct cache_key key;
	struct read_reply r = {
	        {req, false}, fs->inval, ino, (uint64_t)off + size, false};
	int rc;

	rc = msg_key(fs, ino, &key);
	if (rc == 0)
		rc = cache_body_view_once(fs->cache, key, (uint64_t)off, size,
		                          reply_view, &r);
	if (r.after)
		fs_inval_read_end(fs->inval, ino);
	if (rc == 0 && off == 0 && fs->opts.mark_seen)
		fs_change_mark_seen(fs, key);
	if (rc == -ENOENT && may_wait) {
		struct deferred *d = deferred_new(D_READ, req, ino, NULL, NULL);
		struct fs_mailbox *mb = NULL;
		int qrc = -ENOTCONN;

		if (d != NULL) {
			d->size = size;
			d->off = off;
			if (fs->sync != NULL)
				qrc = fs_sync_body(fs->sync, key.mailbox_id,
				                   key.uidvalidity, key.uid,
				                   (uint64_t)off + size,
				                   deferred_cb, d);
			if (qrc == 0)
				return;
			free(d);
		}
		fs_tree_get(fs->tree, key.mailbox_id, &mb);
		reply_not_cached(req, fs, mb ? mb->name : "?", key.uid, qrc,
		                 true);
		fs_mailbox_free(&mb);
		return;
	}
	/* A damaged cache fails without calling reply_view: the request
	 * still needs its answer.  Once reply_view ran, it had one. */
	if (rc < 0 && !r.v.sent)
		fs_reply_fail(req, FS_ERR_READ, rc);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	(void)fi;
	if (fs_ino_is_new(ino)) {
		fs_newfile_read(req, ino, size, off);
		return;
	}
	do_read(req, ino, size, off, true);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi)
{
	if (fs_ino_is_new(ino))
		fs_newfile_release(req, ino, fi);
	else
		fuse_reply_err(req, 0);
}

/* --- extended attributes --------------------------------------------- */

static const char xattr_names[] = "user.mail.flags\0user.mail.subject\0"
                                  "user.mail.from\0user.mail.date\0"
                                  "user.mail.message_id\0";

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	uint32_t id, gen, uid;

	/* Directories have none. */
	if (!fs_ino_split(ino, &id, &gen, &uid) || uid == 0)
		fs_reply_xattr(req, size, NULL, 0);
	else
		fs_reply_xattr(req, size, xattr_names, sizeof(xattr_names) - 1);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        size_t size)
{
	struct mailfs *fs = fs_of(req);
	struct cache_msg *msg = NULL;
	struct cache_key key;
	const char *val = NULL;
	uint32_t id, gen, uid;
	int rc;

	/* Backup tools and ls ask every file for security.*, system.* (ACLs)
	 * and trusted.* attributes: none here, answered without a look at
	 * the cache, with EOPNOTSUPP (fs/attr.h says why; never ENOSYS,
	 * which would stop the kernel asking for user.mail.* too). */
	if (fs_attr_xattr_foreign(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (fs_ino_is_new(ino)) {
		char *v = NULL;

		/* A file being written: what its bytes and flags say; once
		 * uploaded, the message's. */
		rc = fs_newfile_getxattr(fs, ino, name, &v, &key);
		if (rc == 1)
			rc = cache_msg_get_once(fs->cache, key, &msg);
		if (rc < 0) {
			fs_reply_fail(req, FS_ERR_XATTR, rc);
			return;
		}
		if (msg == NULL) {
			if (v == NULL)
				fuse_reply_err(req, ENODATA);
			else
				fs_reply_xattr(req, size, v, strlen(v));
			free(v);
			return;
		}
	} else {
		if (!fs_ino_split(ino, &id, &gen, &uid)) {
			fuse_reply_err(req, ENODATA);
			return;
		}
		if (uid == 0) {
			if (fs_status_is_name(name))
				fs_status_dir_getxattr(req, fs, id, name, size);
			else
				fuse_reply_err(req, ENODATA);
			return;
		}
		/* The key alone (no copy of the mailbox, as get_msg makes): a
		 * backup tool asks each file for every attribute, one request
		 * each. */
		rc = msg_key(fs, ino, &key);
		if (rc == 0 && fs_status_is_name(name)) {
			fs_status_msg_getxattr(req, fs, key, name, size);
			return;
		}
		if (rc == 0)
			rc = cache_msg_get_once(fs->cache, key, &msg);
	}
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_XATTR, rc);
		return;
	}
	if (strcmp(name, "user.mail.flags") == 0)
		val = msg->flags;
	else if (strcmp(name, "user.mail.subject") == 0)
		val = msg->subject;
	else if (strcmp(name, "user.mail.from") == 0)
		val = msg->from;
	else if (strcmp(name, "user.mail.date") == 0)
		val = msg->date;
	else if (strcmp(name, "user.mail.message_id") == 0)
		val = msg->message_id;
	if (val == NULL)
		fuse_reply_err(req, ENODATA);
	else
		fs_reply_xattr(req, size, val, strlen(val));
	cache_msg_free(&msg);
}

/* --- changes: fs/imap/change.c and fs/imap/newfile.c
 * ---------------------------- */

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
                     mode_t mode)
{
	(void)mode;
	fs_change_mkdir(req, parent, name);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fs_change_unlink(req, parent, name);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fs_change_rmdir(req, parent, name);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname,
                      unsigned int flags)
{
	fs_change_rename(req, parent, name, newparent, newname, flags);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
                     mode_t mode, dev_t rdev)
{
	(void)rdev;
	fs_newfile_mknod(req, parent, name, mode);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode, struct fuse_file_info *fi)
{
	fs_newfile_create(req, parent, name, mode, fi);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                       int to_set, struct fuse_file_info *fi)
{
	if (fs_ino_is_new(ino)) {
		fs_newfile_setattr(req, ino, attr, to_set, fi);
		return;
	}
	/* A mailbox directory's times and mode mean nothing to the server:
	 * accepted and ignored (rsync -a sets them after a restore). */
	if (!(to_set & FUSE_SET_ATTR_SIZE) && !fs_of(req)->readonly) {
		uint32_t id, gen, uid;

		if (fs_ino_split(ino, &id, &gen, &uid) && uid == 0) {
			op_getattr(req, ino, NULL);
			return;
		}
	}
	/* A message never changes: not its bytes, size, times or mode. */
	fuse_reply_err(req, fs_of(req)->readonly ? EROFS : EPERM);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                     size_t size, off_t off, struct fuse_file_info *fi)
{
	if (fs_ino_is_new(ino))
		fs_newfile_write(req, ino, buf, size, off, fi);
	else
		fuse_reply_err(req, EPERM);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        const char *value, size_t size, int flags)
{
	struct cache_key key;

	/* A file being written (a restore sets its flags), or the message
	 * it became. */
	if (fs_ino_is_new(ino)) {
		if (!fs_newfile_setxattr(req, ino, name, value, size, &key))
			fs_change_setxattr_msg(req, key, name, value, size);
		return;
	}
	fs_change_setxattr(req, ino, name, value, size, flags);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct cache_key key;

	if (fs_ino_is_new(ino)) {
		if (!fs_newfile_removexattr(req, ino, name, &key))
			fs_change_setxattr_msg(req, key, name, "", 0);
		return;
	}
	fs_change_removexattr(req, ino, name);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct mailfs *fs = userdata;

	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) {
		conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
		fs->no_open = true;
	}
	/* O_TRUNC as a SETATTR of the size, not a flag of OPEN: once the
	 * kernel skips opens (op_open), a flag of an OPEN never sent is lost,
	 * and `cat new > FILE` over a file being uploaded would keep the old
	 * bytes past the new end. */
	conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	/* Bigger reads mean fewer round trips through the kernel. */
	conn->max_read = 0;
}

const struct fuse_lowlevel_ops fs_ops = {
        .init = op_init,
        .lookup = op_lookup,
        .forget = fs_op_forget,
        .forget_multi = fs_op_forget_multi,
        .getattr = op_getattr,
        .setattr = op_setattr,
        .opendir = op_opendir,
        .readdir = fs_dirsnap_op_readdir,
        .readdirplus = fs_dirsnap_op_readdirplus,
        .releasedir = fs_dirsnap_op_releasedir,
        .open = op_open,
        .read = op_read,
        .release = op_release,
        .listxattr = op_listxattr,
        .getxattr = op_getxattr,
        .setxattr = op_setxattr,
        .removexattr = op_removexattr,
        .statfs = fs_status_op_statfs,
        .mknod = op_mknod,
        .mkdir = op_mkdir,
        .unlink = op_unlink,
        .rmdir = op_rmdir,
        .rename = op_rename,
        .create = op_create,
        .write = op_write,
        /* No .flush: the first FLUSH gets ENOSYS from libfuse and the
         * kernel sends no more, so closing a message costs no round trip.
         * New files are kept in the cache write by write instead
         * (fs/imap/newfile.c). */
};
