#include "fs/dirsnap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* An entry's attributes are kept in a few fields, not in a struct stat
 * (144 bytes, two thirds of an entry): a mailbox of 100,000 messages
 * would hold 14 MB of them per open directory.  The fields readdirplus
 * hands the kernel are rebuilt from ino, mode, nlink, size and mtime, with
 * the owner and block size of the snapshot's first entry, 512-byte blocks
 * for the size and all three times equal (what fs/attr.h makes).  An
 * entry whose attributes do not fit that form keeps its struct stat
 * apart (full). */
struct entry {
	char name[24]; /* "4294967295.eml" fits; longer names: long_name */
	char *long_name;
	uint64_t ino;
	uint64_t size;
	int64_t mtime;
	uint32_t mode;
	uint32_t nlink;
	uint32_t full; /* 0, or 1 + its index in s->full */
	double timeout;
};

struct fs_dirsnap {
	struct entry *e; /* owned */
	size_t n, cap;
	struct stat *full; /* owned: attributes not of the usual form */
	size_t nfull, capfull;
	bool have_owner;
	uid_t uid;
	gid_t gid;
	blksize_t blksize;
};

struct fs_dirsnap *fs_dirsnap_new(void)
{
	return calloc(1, sizeof(struct fs_dirsnap));
}

void fs_dirsnap_free(struct fs_dirsnap *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++)
		free(s->e[i].long_name);
	free(s->e);
	free(s->full);
	free(s);
}

/* The attributes readdirplus gives of e (fuse_add_direntry_plus copies
 * these fields and no other). */
static void entry_stat(const struct fs_dirsnap *s, const struct entry *e,
                       struct stat *st)
{
	if (e->full != 0) {
		*st = s->full[e->full - 1];
		return;
	}
	memset(st, 0, sizeof(*st));
	st->st_ino = (ino_t)e->ino;
	st->st_mode = (mode_t)e->mode;
	st->st_nlink = (nlink_t)e->nlink;
	st->st_uid = s->uid;
	st->st_gid = s->gid;
	st->st_size = (off_t)e->size;
	st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
	st->st_blksize = s->blksize;
	st->st_mtime = st->st_ctime = st->st_atime = (time_t)e->mtime;
}

static bool same_attr(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	       a->st_mode == b->st_mode && a->st_nlink == b->st_nlink &&
	       a->st_uid == b->st_uid && a->st_gid == b->st_gid &&
	       a->st_rdev == b->st_rdev && a->st_size == b->st_size &&
	       a->st_blksize == b->st_blksize && a->st_blocks == b->st_blocks &&
	       a->st_atim.tv_sec == b->st_atim.tv_sec &&
	       a->st_atim.tv_nsec == b->st_atim.tv_nsec &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Keep st in e: in its fields, or apart when they cannot rebuild it. */
static int entry_set_stat(struct fs_dirsnap *s, struct entry *e,
                          const struct stat *st)
{
	struct stat back;

	if (!s->have_owner) {
		s->have_owner = true;
		s->uid = st->st_uid;
		s->gid = st->st_gid;
		s->blksize = st->st_blksize;
	}
	e->ino = (uint64_t)st->st_ino;
	e->mode = (uint32_t)st->st_mode;
	e->nlink = (uint32_t)st->st_nlink;
	e->size = (uint64_t)st->st_size;
	e->mtime = (int64_t)st->st_mtime;
	e->full = 0;
	entry_stat(s, e, &back);
	if (st->st_size >= 0 && st->st_nlink <= UINT32_MAX &&
	    same_attr(st, &back))
		return 0;
	if (s->nfull == s->capfull) {
		size_t ncap = s->capfull ? s->capfull * 2 : 8;
		struct stat *nv = realloc(s->full, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		s->full = nv;
		s->capfull = ncap;
	}
	s->full[s->nfull++] = *st;
	e->full = (uint32_t)s->nfull;
	return 0;
}

int fs_dirsnap_add(struct fs_dirsnap *s, const char *name,
                   const struct stat *st, double timeout)
{
	struct entry *e;
	size_t len = strlen(name);

	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 64;
		struct entry *nv = realloc(s->e, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		s->e = nv;
		s->cap = ncap;
	}
	e = &s->e[s->n];
	memset(e, 0, sizeof(*e));
	if (len < sizeof(e->name)) {
		memcpy(e->name, name, len + 1);
	} else if ((e->long_name = strdup(name)) == NULL) {
		return -ENOMEM;
	}
	if (entry_set_stat(s, e, st) < 0) {
		free(e->long_name);
		return -ENOMEM;
	}
	e->timeout = timeout;
	s->n++;
	return 0;
}

size_t fs_dirsnap_fill(const struct fs_dirsnap *s, fuse_req_t req, char *buf,
                       size_t size, off_t off, bool plus)
{
	char *p = buf;
	size_t rem = size;

	for (size_t i = (size_t)off; i < s->n; i++) {
		const struct entry *e = &s->e[i];
		const char *name = e->long_name ? e->long_name : e->name;
		struct fuse_entry_param ep = {0};
		size_t n;

		entry_stat(s, e, &ep.attr);
		if (plus) {
			/* "." and ".." get no lookup count from the
			 * kernel; give it the attributes anyway. */
			ep.ino = ep.attr.st_ino;
			ep.attr_timeout = ep.entry_timeout = e->timeout;
			n = fuse_add_direntry_plus(req, p, rem, name, &ep,
			                           (off_t)i + 1);
		} else {
			n = fuse_add_direntry(req, p, rem, name, &ep.attr,
			                      (off_t)i + 1);
		}
		if (n > rem)
			break;
		p += n;
		rem -= n;
	}
	return size - rem;
}

void fs_dirsnap_reply(fuse_req_t req, const struct fs_dirsnap *s, size_t size,
                      off_t off, bool plus)
{
	char *buf;

	if (s == NULL) {
		fuse_reply_err(req, EBADF);
		return;
	}
	buf = malloc(size ? size : 1);
	if (buf == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fuse_reply_buf(req, buf, fs_dirsnap_fill(s, req, buf, size, off, plus));
	free(buf);
}

/* The FUSE operations on a directory opened with a snapshot in fi->fh. */
void fs_dirsnap_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
                           off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	fs_dirsnap_reply(req, (struct fs_dirsnap *)(uintptr_t)fi->fh, size, off,
	                 false);
}

void fs_dirsnap_op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
                               off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	fs_dirsnap_reply(req, (struct fs_dirsnap *)(uintptr_t)fi->fh, size, off,
	                 true);
}

void fs_dirsnap_op_releasedir(fuse_req_t req, fuse_ino_t ino,
                              struct fuse_file_info *fi)
{
	(void)ino;
	fs_dirsnap_free((struct fs_dirsnap *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}
