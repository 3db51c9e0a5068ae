#include "fs/reply.h"

#include <errno.h>
#include <string.h>
#include <sys/statvfs.h>

int fs_errno(enum fs_err kind, int rc)
{
	switch (kind) {
	case FS_ERR_FIND: return rc == -ESTALE ? ESTALE : ENOENT;
	case FS_ERR_LOOKUP: return rc == -ENOENT ? ENOENT : EIO;
	case FS_ERR_READ: return rc == -ESTALE ? ESTALE : EIO;
	case FS_ERR_FETCH: return EIO;
	case FS_ERR_KEEP: return rc == -ENOSPC ? ENOSPC : EIO;
	case FS_ERR_QUEUE: return rc == -ENOTCONN ? EIO : -rc;
	case FS_ERR_XATTR: return ENODATA;
	case FS_ERR_LOCAL: return -rc;
	case FS_ERR_CHANGE: break;
	}
	switch (rc) {
	case -EPERM: /* NO */
	case -EOPNOTSUPP: /* the server cannot do it safely */ return EPERM;
	case -EINVAL: return EINVAL;
	case -ENOTEMPTY: return ENOTEMPTY;
	case -ESTALE: return ESTALE;
	case -ENOENT: return ENOENT;
	case -EEXIST: return EEXIST;
	/* The server throttles and asks to wait longer than `timeout`:
	 * nothing happened; try again later. */
	case -EAGAIN: return EAGAIN;
	default: return EIO;
	}
}

void fs_reply_fail(fuse_req_t req, enum fs_err kind, int rc)
{
	fuse_reply_err(req, fs_errno(kind, rc));
}

void fs_reply_xattr(fuse_req_t req, size_t size, const char *value, size_t len)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

int fs_reply_view(void *ctx, const void *data, size_t n)
{
	struct fs_view_reply *v = ctx;

	v->sent = true;
	return fuse_reply_buf(v->req, data, n) == 0 ? 0 : -EIO;
}

void fs_op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

void fs_op_forget_multi(fuse_req_t req, size_t count,
                        struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

void fs_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st = {
	        .f_bsize = 4096,
	        .f_frsize = 4096,
	        .f_namemax = 255,
	};

	(void)ino;
	fuse_reply_statfs(req, &st);
}
