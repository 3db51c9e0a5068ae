/* Fuzz target for the COMPRESS=DEFLATE layer (proto/compress.h).
 *
 * The input is used twice:
 *   A  as compressed data from a server: fed to the layer in pieces whose
 *      sizes come from the input's bytes, inflated into buffers of varying
 *      size after each piece.  No call may write more than its buffer; an
 *      error must be sticky and give no bytes; nothing may crash or leak.
 *   B  as plain data: deflated in up to three writes (each flushed), and
 *      inflated again, one piece per write: each write must come out whole
 *      from its own bytes, and the whole must equal the input.
 * Any disagreement abort()s. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/compress.h"

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
			        __LINE__, #cond);                              \
			abort();                                               \
		}                                                              \
	} while (0)

#define MAX_PLAIN (256 * 1024) /* A: stop after this much output */

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = realloc(b->p, b->cap);
		CHECK(b->p != NULL);
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

static int sink(void *ctx, const void *data, size_t len)
{
	CHECK(len > 0 && len <= 64 * 1024);
	buf_add(ctx, data, len);
	return 0;
}

/* Inflate what is there, cap bytes a call; the error, or 0. */
static int drain(struct compress *z, size_t cap, size_t *total)
{
	static unsigned char out[65536];

	for (;;) {
		size_t n = 12345;
		int rc = compress_inflate(z, out, cap, &n);

		CHECK(n <= cap);
		if (rc < 0) {
			CHECK(n == 0);
			CHECK(compress_pending(z));
			n = 12345;
			CHECK(compress_inflate(z, out, cap, &n) == rc);
			CHECK(n == 0);
			return rc;
		}
		*total += n;
		if (n == 0 || *total > MAX_PLAIN)
			return 0;
	}
}

static void as_compressed(const uint8_t *data, size_t size)
{
	struct compress *z;
	size_t off = 0, total = 0, i = 0;

	CHECK(compress_new(&z) == 0);
	while (off < size && total <= MAX_PLAIN) {
		size_t piece = 1 + data[i % size] % 97;
		size_t cap = 1 + (size_t)data[(i * 7 + 3) % size] * 256;

		if (piece > size - off)
			piece = size - off;
		CHECK(compress_feed(z, data + off, piece) == 0);
		off += piece;
		i++;
		if (drain(z, cap, &total) < 0)
			break;
	}
	compress_free(&z);
	CHECK(z == NULL);
}

static void round_trip(const uint8_t *data, size_t size)
{
	struct compress *w, *r;
	size_t cuts[4] = {0, size / 3, size / 2 + (size ? data[0] % 5 : 0),
	                  size};
	struct buf out = {0};

	if (cuts[2] > size)
		cuts[2] = size;
	CHECK(compress_new(&w) == 0);
	CHECK(compress_new(&r) == 0);
	for (int k = 0; k < 3; k++) {
		struct buf wire = {0};
		size_t len = cuts[k + 1] - cuts[k], mark = out.len;
		unsigned char tmp[1000];

		CHECK(compress_deflate(w, data + cuts[k], len, sink, &wire) ==
		      0);
		CHECK(compress_feed(r, wire.p, wire.len) == 0);
		for (;;) {
			size_t n = 0;

			CHECK(compress_inflate(r, tmp, sizeof(tmp), &n) == 0);
			if (n == 0)
				break;
			buf_add(&out, tmp, n);
		}
		CHECK(out.len - mark == len);
		free(wire.p);
	}
	CHECK(out.len == size);
	CHECK(size == 0 || memcmp(out.p, data, size) == 0);
	free(out.p);
	compress_free(&w);
	compress_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 0)
		as_compressed(data, size);
	round_trip(data, size);
	return 0;
}
