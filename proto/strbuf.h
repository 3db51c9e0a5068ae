/* A growing string buffer, for building command lines and listings.
 *
 * The bytes are always NUL-terminated once anything was added (the
 * buffer keeps a byte spare), so s can be used as a C string when no NUL
 * was added.  Out of memory is sticky: the first failed growth sets oom,
 * every later call does nothing, and the caller checks oom once at the
 * end.  One thread at a time; the buffer owns s until strbuf_take(). */
#ifndef MAILFS_STRBUF_H
#define MAILFS_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *s; /* owned; NULL until something is added */
	size_t len, cap;
	bool oom;
};

/* Append len bytes of data (any bytes, NUL included). */
void strbuf_add(struct strbuf *b, const void *data, size_t len);

/* Append a C string. */
void strbuf_str(struct strbuf *b, const char *s);

/* Append formatted text (up to 127 bytes; longer sets oom). */
void strbuf_printf(struct strbuf *b, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* The string, owned by the caller from now on (free() it), or NULL when
 * the buffer ran out of memory (then it is freed).  An empty buffer gives
 * an empty string.  The buffer is left empty. */
char *strbuf_take(struct strbuf *b);

/* Overwrite every byte the buffer held with zeros (it may hold a
 * secret), free it and leave it empty. */
void strbuf_wipe(struct strbuf *b);

#endif
