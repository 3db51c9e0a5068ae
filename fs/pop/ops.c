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

#include "fs/dirsnap.h"
#include "fs/pop/poller.h"
#include "proto/log.h"
#include "proto/mime.h"

#define DIR_TIMEOUT 1.0
#define MSG_TIMEOUT 3600.0
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
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | 0555;
	st->st_nlink = 2 + subdirs;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = 4096;
	st->st_blocks = 8;
	st->st_blksize = 4096;
}

static void msg_attr(struct mailfs *fs, const struct cache_pop *p,
                     struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = fs_ino_pop_msg(p->num);
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = (off_t)p->size;
	st->st_blocks = (blkcnt_t)((p->size + 511) / 512);
	st->st_blksize = 4096;
	st->st_mtime = st->st_ctime = st->st_atime = (time_t)p->downloaded;
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

static bool parse_name(const char *name, uint32_t *num_r)
{
	unsigned long v;
	char *end;

	if (name[0] < '1' || name[0] > '9')
		return false;
	v = strtoul(name, &end, 10);
	if (strcmp(end, ".eml") != 0 || v == 0 || v > UINT32_MAX)
		return false;
	*num_r = (uint32_t)v;
	return true;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
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
	if (parent != fs_ino_pop_inbox() || !parse_name(name, &num) ||
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

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
                            struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
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
	char name[24];
	struct stat st;

	snprintf(name, sizeof(name), "%" PRIu32 ".eml", p->num);
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
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uintptr_t)s;
	if (fuse_reply_open(req, fi) != 0) {
		fs_dirsnap_free(s);
	}
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi)
{
	do_opendir(req, ino, fi, true);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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

static int reply_view(void *ctx, const void *data, size_t n)
{
	return fuse_reply_buf(ctx, data, n) == 0 ? 0 : -EIO;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	struct mailfs *fs = fs_of(req);
	uint32_t id, gen, num;
	int rc;

	(void)fi;
	if (!fs_ino_split(ino, &id, &gen, &num) || num == 0) {
		fuse_reply_err(req, EBADF);
		return;
	}
	rc = cache_body_view_once(fs->cache, pop_key(num), (uint64_t)off, size,
	                          reply_view, req);
	if (rc < 0 && rc != -EIO)
		fuse_reply_err(req, EIO);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static const char xattr_names[] = "user.mail.subject\0user.mail.from\0"
                                  "user.mail.date\0user.mail.message_id\0";

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	uint32_t id, gen, num;
	size_t len = sizeof(xattr_names) - 1;

	if (!fs_ino_split(ino, &id, &gen, &num) || num == 0)
		len = 0;
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, xattr_names, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
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
	size_t n = 0, len;
	int rc;

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
		fuse_reply_err(req, ENODATA);
		return;
	}
	len = val ? strlen(val) : 0;
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val ? val : "", len);
	free(val);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st = {
	        .f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255};

	(void)ino;
	fuse_reply_statfs(req, &st);
}

/* The inbox is append-only: nothing in it can be changed or removed. */
static void refuse(fuse_req_t req, const char *what)
{
	log_info("%s refused: a POP3 inbox is append-only", what);
	fuse_reply_err(req, EPERM);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
                     mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	refuse(req, "mkdir");
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	refuse(req, "rm");
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	refuse(req, "rmdir");
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
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

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode, struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	refuse(req, "creating a file");
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                       int to_set, struct fuse_file_info *fi)
{
	(void)ino;
	(void)attr;
	(void)to_set;
	(void)fi;
	refuse(req, "changing a message");
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        const char *value, size_t size, int flags)
{
	(void)ino;
	(void)name;
	(void)value;
	(void)size;
	(void)flags;
	refuse(req, "setfattr");
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino;
	(void)name;
	refuse(req, "setfattr -x");
}

const struct fuse_lowlevel_ops fs_pop_ops = {
        .lookup = op_lookup,
        .forget = op_forget,
        .forget_multi = op_forget_multi,
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
        .statfs = op_statfs,
        .mkdir = op_mkdir,
        .unlink = op_unlink,
        .rmdir = op_rmdir,
        .rename = op_rename,
        .create = op_create,
};
