#include "fs/dirsnap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	char name[24]; /* "4294967295.eml" fits; longer names: long_name */
	char *long_name;
	struct stat st;
	double timeout;
};

struct fs_dirsnap {
	struct entry *e; /* owned */
	size_t n, cap;
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
	free(s);
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
	e->st = *st;
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
		size_t n;

		if (plus) {
			struct fuse_entry_param ep = {0};

			/* "." and ".." get no lookup count from the
			 * kernel; give it the attributes anyway. */
			ep.attr = e->st;
			ep.ino = e->st.st_ino;
			ep.attr_timeout = ep.entry_timeout = e->timeout;
			n = fuse_add_direntry_plus(req, p, rem, name, &ep,
			                           (off_t)i + 1);
		} else {
			n = fuse_add_direntry(req, p, rem, name, &e->st,
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
