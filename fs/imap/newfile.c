/* Files being written into an IMAP mount: the FUSE operations on them
 * (create, write, setattr, open, read, release, unlink, rename), the
 * closes seen (RELEASE, inotify: fs/imap/closes.h) and the uploader
 * thread.  What happens to a file once closed, and its record in the
 * cache, is fs/imap/upload.c's. */
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
#include "fs/imap/upload.h"
#include "fs/reply.h"
#include "proto/log.h"

#define NEW_TIMEOUT  1.0
#define NEW_MAX_SIZE (1024ULL * 1024 * 1024)

/* The fh of a descriptor of a new file: FH_RELEASED when the kernel told
 * us of it and will send its RELEASE (counted in opens); FH_NO_RELEASE
 * when it created the file but sends no RELEASE; 0 when it opened the
 * file without telling us (after it stopped sending opens). */
#define FH_RELEASED   1
#define FH_NO_RELEASE 2

/* A CREATE in a mailbox not watched yet: answered by the uploader once
 * the mailbox is watched (or cannot be), so that the file's close is
 * seen however soon it comes. */
struct creating {
	fuse_req_t req;
	uint32_t num; /* the file */
	struct fuse_file_info fi;
	bool mknod; /* answered with an entry, not an open file */
	struct creating *next;
};

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

void fs_newfiles_free(struct fs_newfiles **np)
{
	struct fs_newfiles *n = *np;

	if (n == NULL)
		return;
	while (n->list != NULL) {
		struct nf *next = n->list->next;

		fs_upload_nf_free(n->list);
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

/* An uploaded file whose name still resolves (DONE_GRACE_MS). */
static struct nf *find_done(struct fs_newfiles *n, uint32_t id,
                            const char *name)
{
	int64_t now = fs_upload_now_ms();

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

/* A close of f was seen (the lock is held).  With a descriptor still open
 * that the kernel told us of, the last RELEASE decides. */
static void close_seen(struct mailfs *fs, struct nf *f)
{
	if (f->state == NF_WRITING && !f->dirty && !f->untracked &&
	    f->opens == 0)
		fs_upload_set_state(fs->cache, f, NF_STORED);
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
	f = fs_upload_find_name(fs->newfiles, id, name);
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
	f = fs_upload_find_name(n, id, name);
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

/* fi NULL: a MKNOD's answer. */
static void reply_create(struct mailfs *fs, fuse_req_t req, struct nf *f,
                         struct fuse_file_info *fi)
{
	struct fuse_entry_param e = {0};

	nf_attr(fs, f, &e.attr);
	e.ino = e.attr.st_ino;
	e.attr_timeout = e.entry_timeout = NEW_TIMEOUT;
	if (fi == NULL) {
		fuse_reply_entry(req, &e);
		return;
	}
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
			reply_create(n->fs, c->req, f,
			             c->mknod ? NULL : &c->fi);
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
		int64_t now = fs_upload_now_ms();
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
			if (fs_upload_want(f))
				nums[k++] = f->num;
		}
		pthread_mutex_unlock(&n->lock);
		for (size_t i = 0; i < k; i++)
			fs_upload_start(n->fs, nums[i]);
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

/* --- FUSE operations --------------------------------------------------- */

/* CREATE (fi) or MKNOD of a regular file (fi NULL: tar makes the file
 * first, sets its attributes, then opens it to write). */
static void new_file(fuse_req_t req, fuse_ino_t parent, const char *name,
                     struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct fs_newfiles *n = fs->newfiles;
	uint32_t id, gen, uid;
	struct fs_mailbox *mb = NULL, *sub = NULL;
	struct nf *f;

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
	f->touched_ms = fs_upload_now_ms();
	/* Once the kernel skips opens it sends no RELEASE of this file
	 * either: only inotify will see it closed.  A MKNOD opens nothing:
	 * its opens come later (fs_newfile_open, or writes through
	 * descriptors we are not told of). */
	if (fi == NULL) {
		f->opens = 0;
	} else if (atomic_load(&fs->opens_skipped)) {
		f->untracked = true;
		fi->fh = FH_NO_RELEASE;
	} else {
		f->opens = 1;
		fi->fh = FH_RELEASED;
	}
	pthread_mutex_lock(&n->lock);
	drain_closes(n);
	if (fs_upload_find_name(n, id, name) != NULL) {
		pthread_mutex_unlock(&n->lock);
		fs_upload_nf_free(f);
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
			c->mknod = fi == NULL;
			if (fi != NULL)
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

void fs_newfile_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                       mode_t mode, struct fuse_file_info *fi)
{
	(void)mode;
	new_file(req, parent, name, fi);
}

void fs_newfile_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode)
{
	if (!S_ISREG(mode)) {
		/* Mail holds no devices, pipes or sockets. */
		fuse_reply_err(req, fs_of(req)->readonly ? EROFS : EPERM);
		return;
	}
	new_file(req, parent, name, NULL);
}

/* --- extended attributes of new files --------------------------------- */

/* The message an uploaded file became, if the server said. */
static bool uploaded_as(const struct nf *f, struct cache_key *key_r)
{
	if (f->state != NF_DONE || f->uid == 0)
		return false;
	*key_r = (struct cache_key){f->id, f->uidvalidity, f->uid};
	return true;
}

static bool is_header_attr(const char *name)
{
	return strcmp(name, "user.mail.subject") == 0 ||
	       strcmp(name, "user.mail.from") == 0 ||
	       strcmp(name, "user.mail.date") == 0 ||
	       strcmp(name, "user.mail.message_id") == 0;
}

/* remove: removexattr (value NULL). */
static bool set_attr(fuse_req_t req, fuse_ino_t ino, const char *name,
                     const char *value, size_t size, bool remove,
                     struct cache_key *key_r)
{
	struct mailfs *fs = fs_of(req);
	bool flags = strcmp(name, "user.mail.flags") == 0;
	char *norm = NULL;
	struct nf *f;
	int err = 0;

	if (!flags && !is_header_attr(name)) {
		fuse_reply_err(req, strncmp(name, "user.mail.", 10) == 0 ? EPERM
		                    : remove ? ENODATA
		                             : ENOTSUP);
		return true;
	}
	if (flags && !remove &&
	    (norm = fs_attr_flags_normalise(value, size)) == NULL) {
		log_info("user.mail.flags: not a list of IMAP flags");
		fuse_reply_err(req, EINVAL);
		return true;
	}
	pthread_mutex_lock(&fs->newfiles->lock);
	drain_closes(fs->newfiles);
	f = find_ino(fs->newfiles, ino);
	if (f == NULL) {
		err = ENOENT;
	} else if (!flags) {
		/* A header attribute shows the bytes, which say it already:
		 * a restore (rsync -X, cp -a, tar --xattrs) sets it back. */
		err = 0;
	} else if (uploaded_as(f, key_r)) {
		/* The server has it: the flags are the message's. */
		pthread_mutex_unlock(&fs->newfiles->lock);
		free(norm);
		return false;
	} else if (f->state == NF_DONE) {
		log_warn("%s: uploaded, but the server did not say its UID; "
		         "set the flags on the message (UID.eml) instead",
		         f->name ? f->name : "a new file");
		err = EIO;
	} else {
		/* Sent with its APPEND, or stored right after it. */
		err = fs_upload_set_flags(fs, f, norm != NULL ? norm : "");
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	free(norm);
	fuse_reply_err(req, err);
	return true;
}

bool fs_newfile_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                         const char *value, size_t size,
                         struct cache_key *key_r)
{
	return set_attr(req, ino, name, value, size, false, key_r);
}

bool fs_newfile_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                            struct cache_key *key_r)
{
	return set_attr(req, ino, name, NULL, 0, true, key_r);
}

int fs_newfile_getxattr(struct mailfs *fs, fuse_ino_t ino, const char *name,
                        char **val_r, struct cache_key *key_r)
{
	static const struct {
		const char *attr, *field;
		bool decode;
	} headers[] = {
	        {"user.mail.subject", "Subject", true},
	        {"user.mail.from", "From", true},
	        {"user.mail.date", "Date", true},
	        {"user.mail.message_id", "Message-ID", false},
	};
	struct nf *f;
	int rc = 0;

	*val_r = NULL;
	pthread_mutex_lock(&fs->newfiles->lock);
	f = find_ino(fs->newfiles, ino);
	if (f == NULL) {
		rc = -ENOENT;
	} else if (uploaded_as(f, key_r)) {
		rc = 1;
	} else if (strcmp(name, "user.mail.flags") == 0) {
		*val_r = strdup(f->flags != NULL ? f->flags : "");
		rc = *val_r == NULL ? -ENOMEM : 0;
	} else {
		for (size_t i = 0; i < sizeof(headers) / sizeof(*headers); i++)
			if (strcmp(name, headers[i].attr) == 0 &&
			    f->data != NULL)
				*val_r = fs_upload_header(f->data, f->len,
				                          headers[i].field,
				                          headers[i].decode);
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	return rc;
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
		fs_upload_set_state(fs->cache, f, NF_WRITING);
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
		err = fs_upload_keep(fs, f, NULL, 0, 0);
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
				fs_upload_set_state(fs->cache, f, NF_WRITING);
			reopened(fs, f);
			if ((fi->flags & O_TRUNC) && f->len > 0) {
				f->len = 0;
				f->dirty = true;
				err = fs_upload_keep(fs, f, NULL, 0, 0);
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
			err = fs_upload_keep(fs, f, buf, size, off);
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

bool fs_newfile_unlink(fuse_req_t req, uint32_t id, const char *name)
{
	struct mailfs *fs = fs_of(req);
	uint64_t seq = 0;
	struct nf *f;
	int err = 0;

	pthread_mutex_lock(&fs->newfiles->lock);
	f = fs_upload_find_name(fs->newfiles, id, name);
	if (f == NULL) {
		pthread_mutex_unlock(&fs->newfiles->lock);
		return false;
	}
	if (f->state == NF_UPLOADING) {
		err = EBUSY;
	} else {
		seq = f->seq;
		unlink_nf(fs->newfiles, f);
		fs_upload_nf_free(f);
	}
	pthread_mutex_unlock(&fs->newfiles->lock);
	if (err == 0 && seq != 0 && fs_upload_drop(fs, seq) < 0)
		err = EIO;
	fuse_reply_err(req, err);
	return true;
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
	f = fs_upload_find_name(n, id, name);
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
		old = fs_upload_find_name(n, newid, newname);
		if (old != NULL && old != f && writable(old)) {
			unlink_nf(n, old); /* replaced, as rename does */
			if (old->seq != 0)
				fs_upload_drop(fs, old->seq);
			fs_upload_nf_free(old);
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
		fs_upload_retarget(fs, f);
		f->touched_ms = fs_upload_now_ms();
		/* An incomplete file renamed: the user takes it as it is. */
		if (f->state == NF_INCOMPLETE && !f->dirty) {
			log_notice("%s: renamed, so taken as complete; "
			           "uploading its %zu bytes",
			           f->name, f->len);
			fs_upload_set_state(fs->cache, f, NF_STORED);
		}
		/* Renamed into place when written: that is the end of it. */
		go = f->len > 0 && fs_upload_want(f);
		num = f->num;
	}
	pthread_mutex_unlock(&n->lock);
	free(nn);
	fuse_reply_err(req, err);
	if (go)
		fs_upload_start(fs, num);
	return true;
}
