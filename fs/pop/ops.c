/* The FUSE operations of a POP3 mount: the root holds INBOX, INBOX holds
 * N.eml for every downloaded message, all answered from the cache.  Every
 * change is refused with EPERM: the inbox is append-only. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fs/attr.h"
#include "fs/dirsnap.h"
#include "fs/pop/poller.h"
#include "fs/reply.h"
#include "proto/log.h"
#include "proto/mime.h"

#define DIR_TIMEOUT FS_ATTR_DIR_TIMEOUT
#define MSG_TIMEOUT FS_ATTR_MSG_TIMEOUT
/* Headers for the attributes are looked for in the first bytes. */
#define HEADER_PEEK (64 * 1024)

static struct mailfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct cache_key pop_key(uint32_t num)
{
	return (struct cache_key){CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY,
	                          num};
}

static void dir_attr(struct mailfs *fs, fuse_ino_t ino, unsigned subdirs,
                     struct stat *st)
{
	fs_attr_dir(fs, ino, 0555, 2 + subdirs, 0, st);
}

static void msg_attr(struct mailfs *fs, const struct cache_pop *p,
                     struct stat *st)
{
	fs_attr_file(fs, fs_ino_pop_msg(p->num), 0444, p->size, p->downloaded,
	             st);
}

struct get_ctx {
	uint32_t num;
	struct cache_pop *p;
};

static int get_read(struct cache_txn *txn, void *ctx)
{
	struct get_ctx *g = ctx;

	return cache_pop_get(txn, g->num, &g->p);
}

/* The record of message ino (INBOX/N.eml). */
static int get_msg(struct mailfs *fs, fuse_ino_t ino, struct cache_pop **p_r)
{
	uint32_t id, gen, num;
	struct get_ctx g = {0};
	int rc;

	if (!fs_ino_split(ino, &id, &gen, &num) || id != FS_POP_INBOX_ID ||
	    num == 0)
		return -ENOENT;
	g.num = num;
	rc = cache_run_read(fs->cache, get_read, &g);
	if (rc < 0)
		return rc;
	*p_r = g.p;
	return 0;
}

static void pop_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mailfs *fs = fs_of(req);
	struct fuse_entry_param e = {0};
	struct cache_pop *p = NULL;
	uint32_t num;

	if (parent == FUSE_ROOT_ID) {
		if (strcmp(name, "INBOX") != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		dir_attr(fs, fs_ino_pop_inbox(), 0, &e.attr);
		e.ino = e.attr.st_ino;
		e.attr_timeout = e.entry_timeout = DIR_TIMEOUT;
		fuse_reply_entry(req, &e);
		return;
	}
	if (parent != fs_ino_pop_inbox() || !fs_attr_parse_name(name, &num) ||
	    get_msg(fs, fs_ino_pop_msg(num), &p) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	msg_attr(fs, p, &e.attr);
	e.ino = e.attr.st_ino;
	e.attr_timeout = e.entry_timeout = MSG_TIMEOUT;
	cache_pop_free(&p);
	fuse_reply_entry(req, &e);
}

static void pop_getattr(fuse_req_t req, fuse_ino_t ino,
                        struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct cache_pop *p = NULL;
	struct stat st;

	(void)fi;
	if (ino == FUSE_ROOT_ID || ino == fs_ino_pop_inbox()) {
		dir_attr(fs, ino, ino == FUSE_ROOT_ID ? 1 : 0, &st);
		fuse_reply_attr(req, &st, DIR_TIMEOUT);
		return;
	}
	if (get_msg(fs, ino, &p) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	msg_attr(fs, p, &st);
	cache_pop_free(&p);
	fuse_reply_attr(req, &st, MSG_TIMEOUT);
}

struct snap_ctx {
	struct mailfs *fs;
	struct fs_dirsnap *s;
};

static int snap_cb(const struct cache_pop *p, void *ctx)
{
	struct snap_ctx *c = ctx;
	char name[FS_ATTR_NAME_SIZE];
	struct stat st;

	fs_attr_msg_name(p->num, name);
	msg_attr(c->fs, p, &st);
	return fs_dirsnap_add(c->s, name, &st, MSG_TIMEOUT);
}

static int snap_read(struct cache_txn *txn, void *ctx)
{
	return cache_pop_foreach(txn, 1, snap_cb, ctx);
}

struct deferred {
	fuse_req_t req;
	fuse_ino_t ino;
	struct fuse_file_info fi;
};

static void do_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi, bool may_wait);

static void deferred_cb(void *ctx, int rc)
{
	struct deferred *d = ctx;

	(void)rc;
	do_opendir(d->req, d->ino, &d->fi, false);
	free(d);
}

static void do_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi, bool may_wait)
{
	struct mailfs *fs = fs_of(req);
	struct fs_dirsnap *s;
	struct stat st;
	int rc = 0;

	if (ino != FUSE_ROOT_ID && ino != fs_ino_pop_inbox()) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (ino != FUSE_ROOT_ID && may_wait && fs->pop != NULL) {
		/* Listing INBOX checks for new mail.  Only the very first
		 * listing waits for it; later ones show the cache now. */
		if (!fs_pop_ready(fs->pop)) {
			struct deferred *d = calloc(1, sizeof(*d));

			if (d != NULL) {
				d->req = req;
				d->ino = ino;
				d->fi = *fi;
				if (fs_pop_check(fs->pop, deferred_cb, d) == 0)
					return;
				free(d);
			}
		} else {
			fs_pop_check(fs->pop, NULL, NULL);
		}
	}
	s = fs_dirsnap_new();
	if (s == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	dir_attr(fs, ino, ino == FUSE_ROOT_ID ? 1 : 0, &st);
	rc = fs_dirsnap_add(s, ".", &st, DIR_TIMEOUT);
	if (rc == 0) {
		dir_attr(fs, FUSE_ROOT_ID, 1, &st);
		rc = fs_dirsnap_add(s, "..", &st, DIR_TIMEOUT);
	}
	if (rc == 0 && ino == FUSE_ROOT_ID) {
		dir_attr(fs, fs_ino_pop_inbox(), 0, &st);
		rc = fs_dirsnap_add(s, "INBOX", &st, DIR_TIMEOUT);
	} else if (rc == 0) {
		struct snap_ctx c = {fs, s};

		rc = cache_run_read(fs->cache, snap_read, &c);
	}
	if (rc < 0) {
		fs_dirsnap_free(s);
		fs_reply_fail(req, FS_ERR_LOCAL, rc);
		return;
	}
	fi->fh = (uintptr_t)s;
	if (fuse_reply_open(req, fi) != 0) {
		fs_dirsnap_free(s);
	}
}

static void pop_opendir(fuse_req_t req, fuse_ino_t ino,
                        struct fuse_file_info *fi)
{
	do_opendir(req, ino, fi, true);
}

static void pop_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct cache_pop *p = NULL;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		log_info("POP3 inbox is append-only: writing a message is "
		         "refused");
		fuse_reply_err(req, EPERM);
		return;
	}
	if (get_msg(fs, ino, &p) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	cache_pop_free(&p);
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void pop_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	struct fs_view_reply v = {req, false};
	uint32_t id, gen, num;
	int rc;

	(void)fi;
	if (!fs_ino_split(ino, &id, &gen, &num) || num == 0) {
		fuse_reply_err(req, EBADF);
		return;
	}
	rc = cache_body_view_once(fs->cache, pop_key(num), (uint64_t)off, size,
	                          fs_reply_view, &v);
	/* A damaged cache fails without calling fs_reply_view: the
	 * request still needs its answer. */
	if (rc < 0 && !v.sent)
		fs_reply_fail(req, FS_ERR_READ, rc);
}

static void pop_release(fuse_req_t req, fuse_ino_t ino,
                        struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static const char xattr_names[] = "user.mail.subject\0user.mail.from\0"
                                  "user.mail.date\0user.mail.message_id\0";

static void pop_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	uint32_t id, gen, num;
	size_t len = sizeof(xattr_names) - 1;

	/* Directories have none. */
	if (!fs_ino_split(ino, &id, &gen, &num) || num == 0)
		len = 0;
	fs_reply_xattr(req, size, xattr_names, len);
}

static void pop_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                         size_t size)
{
	static const struct {
		const char *attr, *field;
	} map[] = {
	        {"user.mail.subject", "Subject"},
	        {"user.mail.from", "From"},
	        {"user.mail.date", "Date"},
	        {"user.mail.message_id", "Message-ID"},
	};
	struct mailfs *fs = fs_of(req);
	const char *field = NULL;
	char *head, *val = NULL;
	uint32_t id, gen, num;
	size_t n = 0;
	int rc;

	if (fs_attr_xattr_foreign(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	for (size_t i = 0; i < sizeof(map) / sizeof(*map); i++)
		if (strcmp(name, map[i].attr) == 0)
			field = map[i].field;
	if (field == NULL || !fs_ino_split(ino, &id, &gen, &num) || num == 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	head = malloc(HEADER_PEEK);
	if (head == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rc = cache_body_read_once(fs->cache, pop_key(num), 0, head, HEADER_PEEK,
	                          &n);
	if (rc == 0 && mime_header_decoded(head, n, field, &val) < 0)
		val = NULL;
	free(head);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_XATTR, rc);
		return;
	}
	fs_reply_xattr(req, size, val ? val : "", val ? strlen(val) : 0);
	free(val);
}

/* The inbox is append-only: nothing in it can be changed or removed. */
static void refuse(fuse_req_t req, const char *what)
{
	log_info("%s refused: a POP3 inbox is append-only", what);
	fuse_reply_err(req, EPERM);
}

static void pop_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	refuse(req, "mkdir");
}

static void pop_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	refuse(req, "rm");
}

static void pop_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	refuse(req, "rmdir");
}

static void pop_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                       fuse_ino_t newparent, const char *newname,
                       unsigned int flags)
{
	(void)parent;
	(void)name;
	(void)newparent;
	(void)newname;
	(void)flags;
	refuse(req, "mv");
}

static void pop_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                       mode_t mode, struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	refuse(req, "creating a file");
}

static void pop_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                        int to_set, struct fuse_file_info *fi)
{
	(void)ino;
	(void)attr;
	(void)to_set;
	(void)fi;
	refuse(req, "changing a message");
}

static void pop_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                         const char *value, size_t size, int flags)
{
	(void)ino;
	(void)name;
	(void)value;
	(void)size;
	(void)flags;
	refuse(req, "setfattr");
}

static void pop_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino;
	(void)name;
	refuse(req, "setfattr -x");
}

const struct fuse_lowlevel_ops fs_pop_ops = {
        .lookup = pop_lookup,
        .forget = fs_op_forget,
        .forget_multi = fs_op_forget_multi,
        .getattr = pop_getattr,
        .setattr = pop_setattr,
        .opendir = pop_opendir,
        .readdir = fs_dirsnap_op_readdir,
        .readdirplus = fs_dirsnap_op_readdirplus,
        .releasedir = fs_dirsnap_op_releasedir,
        .open = pop_open,
        .read = pop_read,
        .release = pop_release,
        .listxattr = pop_listxattr,
        .getxattr = pop_getxattr,
        .setxattr = pop_setxattr,
        .removexattr = pop_removexattr,
        .statfs = fs_op_statfs,
        .mkdir = pop_mkdir,
        .unlink = pop_unlink,
        .rmdir = pop_rmdir,
        .rename = pop_rename,
        .create = pop_create,
};
