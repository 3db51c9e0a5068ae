/* fuzz_util: what the fuzz targets share: CHECK() (a failed check is a
 * finding: message and abort()), a growing byte buffer and a small
 * deterministic random generator for split points.  Header only; for the
 * fuzz targets (tests/fuzz_*.c), single-threaded. */
#ifndef MAILFS_TESTS_FUZZ_UTIL_H
#define MAILFS_TESTS_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
			        __LINE__, #cond);                              \
			abort();                                               \
		}                                                              \
	} while (0)

/* realloc() that cannot fail (out of memory aborts). */
static inline void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);

	CHECK(q != NULL);
	return q;
}

/* Bytes one after another; zero-initialise, free(data) when done. */
struct buf {
	char *data; /* owned */
	size_t len, cap;
};

static inline void buf_put(struct buf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2 + 64;
		b->data = xrealloc(b->data, b->cap);
	}
	if (len > 0)
		memcpy(b->data + b->len, data, len);
	b->len += len;
}

/* xorshift64*: the same sequence for the same seed, which must not be 0. */
struct rng {
	uint64_t s;
};

static inline uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 2685821657736338717ULL;
}

#endif
