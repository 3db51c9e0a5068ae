/* COMPRESS=DEFLATE streams (proto/compress.h). */
#include "proto/compress.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#define OUT_CHUNK (64 * 1024) /* deflate output handed to the sink */
#define IN_MIN    (64 * 1024) /* first size of the input queue */

struct compress {
	z_stream in, out;
	bool in_ready, out_ready; /* inflateInit2/deflateInit2 succeeded */
	unsigned char *q;         /* owned: queued input is q[qstart, qend) */
	size_t qstart, qend, qcap;
	bool out_full; /* the last inflate filled its buffer */
	int failed;    /* sticky error of the incoming stream, or 0 */
	int out_failed;
	int last; /* the error of the last failed call */
	struct compress_stats st;
	char err[160];
};

static int fail(struct compress *z, int rc, const char *fmt, const char *why)
{
	snprintf(z->err, sizeof(z->err), fmt, why ? why : "");
	z->last = rc;
	return rc;
}

int compress_new(struct compress **z_r)
{
	struct compress *z = calloc(1, sizeof(*z));

	*z_r = NULL;
	if (z == NULL)
		return -ENOMEM;
	/* Negative window bits: raw deflate, no zlib header (RFC 4978). */
	if (inflateInit2(&z->in, -15) != Z_OK)
		goto nomem;
	z->in_ready = true;
	if (deflateInit2(&z->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
	                 Z_DEFAULT_STRATEGY) != Z_OK)
		goto nomem;
	z->out_ready = true;
	*z_r = z;
	return 0;
nomem:
	compress_free(&z);
	return -ENOMEM;
}

void compress_free(struct compress **zp)
{
	struct compress *z = *zp;

	if (z == NULL)
		return;
	if (z->in_ready)
		inflateEnd(&z->in);
	if (z->out_ready)
		deflateEnd(&z->out);
	free(z->q);
	free(z);
	*zp = NULL;
}

/* --- incoming ------------------------------------------------------------ */

char *compress_in_space(struct compress *z, size_t min, size_t *room_r)
{
	size_t used = z->qend - z->qstart;

	*room_r = 0;
	if (min > COMPRESS_MAX_QUEUED || used > COMPRESS_MAX_QUEUED - min) {
		fail(z, -ENOBUFS, "too much compressed input queued%s", NULL);
		return NULL;
	}
	if (z->qstart > 0 && z->qcap - z->qend < min) {
		memmove(z->q, z->q + z->qstart, used);
		z->qstart = 0;
		z->qend = used;
	}
	if (z->qcap - z->qend < min) {
		size_t ncap = z->qcap ? z->qcap : IN_MIN;
		unsigned char *n;

		while (ncap - z->qend < min)
			ncap *= 2;
		n = realloc(z->q, ncap);
		if (n == NULL) {
			fail(z, -ENOMEM, "out of memory%s", NULL);
			return NULL;
		}
		z->q = n;
		z->qcap = ncap;
	}
	*room_r = z->qcap - z->qend;
	return (char *)z->q + z->qend;
}

void compress_in_commit(struct compress *z, size_t n)
{
	if (n > z->qcap - z->qend)
		n = z->qcap - z->qend;
	z->qend += n;
	z->st.in_raw += n;
}

int compress_feed(struct compress *z, const void *buf, size_t len)
{
	size_t room;
	char *dst;

	if (len == 0)
		return 0;
	dst = compress_in_space(z, len, &room);
	if (dst == NULL)
		return z->last;
	memcpy(dst, buf, len);
	compress_in_commit(z, len);
	return 0;
}

int compress_inflate(struct compress *z, void *out, size_t cap, size_t *len_r)
{
	size_t avail = z->qend - z->qstart, used, made;
	int rc;

	*len_r = 0;
	if (z->failed)
		return z->failed;
	if (cap == 0)
		return 0;
	if (cap > UINT_MAX)
		cap = UINT_MAX;
	if (avail > UINT_MAX)
		avail = UINT_MAX;
	z->in.next_in = z->q != NULL ? z->q + z->qstart : (unsigned char *)"";
	z->in.avail_in = (uInt)avail;
	z->in.next_out = out;
	z->in.avail_out = (uInt)cap;
	rc = inflate(&z->in, Z_SYNC_FLUSH);
	used = avail - z->in.avail_in;
	made = cap - z->in.avail_out;
	z->qstart += used;
	if (z->qstart == z->qend)
		z->qstart = z->qend = 0;
	z->out_full = made == cap;
	z->st.in_plain += made;
	*len_r = made;
	switch (rc) {
	case Z_OK:
	case Z_BUF_ERROR: /* no progress possible now: needs more input */
		return 0;
	case Z_STREAM_END:
		/* RFC 4978: the stream lasts as long as the connection.  What
		 * came before the end is delivered; the next call fails. */
		z->failed =
		        fail(z, -EPROTO, "the compressed stream ended%s", NULL);
		return made > 0 ? 0 : z->failed;
	case Z_MEM_ERROR:
		z->failed = fail(z, -ENOMEM, "out of memory%s", NULL);
		return z->failed;
	default: /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
		z->failed = fail(z, -EPROTO, "corrupt compressed data (%s)",
		                 z->in.msg ? z->in.msg : "zlib error");
		*len_r = 0; /* nothing from a stream known to be bad */
		z->out_full = false;
		return z->failed;
	}
}

bool compress_pending(const struct compress *z)
{
	return z->failed != 0 || z->qend > z->qstart || z->out_full;
}

/* --- outgoing ------------------------------------------------------------ */

int compress_deflate(struct compress *z, const void *buf, size_t len,
                     int (*sink)(void *ctx, const void *buf, size_t len),
                     void *ctx)
{
	unsigned char chunk[OUT_CHUNK];
	const unsigned char *p = buf;

	if (z->out_failed)
		return z->out_failed;
	if (len == 0)
		return 0;
	z->st.out_plain += len;
	while (len > 0) {
		size_t piece = len > UINT_MAX ? UINT_MAX : len;
		int flush = piece == len ? Z_SYNC_FLUSH : Z_NO_FLUSH;

		z->out.next_in = (unsigned char *)p;
		z->out.avail_in = (uInt)piece;
		do {
			size_t n;
			int rc;

			z->out.next_out = chunk;
			z->out.avail_out = sizeof(chunk);
			rc = deflate(&z->out, flush);
			if (rc != Z_OK && rc != Z_BUF_ERROR) {
				z->out_failed = fail(
				        z, -EIO, "deflate failed (%s)",
				        z->out.msg ? z->out.msg : "zlib error");
				return z->out_failed;
			}
			n = sizeof(chunk) - z->out.avail_out;
			if (n > 0) {
				int src = sink(ctx, chunk, n);

				z->st.out_raw += n;
				if (src < 0) {
					/* Part of the stream is gone: it
					 * cannot go on. */
					z->out_failed = src;
					return src;
				}
			}
		} while (z->out.avail_out == 0 || z->out.avail_in > 0);
		p += piece;
		len -= piece;
	}
	return 0;
}

const char *compress_error(const struct compress *z)
{
	return z->err[0] ? z->err : "no error";
}

void compress_stats(const struct compress *z, struct compress_stats *st)
{
	*st = z->st;
}
