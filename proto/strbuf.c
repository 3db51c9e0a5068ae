#include "proto/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_add(struct strbuf *b, const void *data, size_t len)
{
	if (b->oom)
		return;
	if (len >= b->cap - b->len) {
		size_t ncap = b->cap ? b->cap : 256;
		char *n;

		while (len >= ncap - b->len) {
			if (ncap > SIZE_MAX / 2) {
				b->oom = true;
				return;
			}
			ncap *= 2;
		}
		n = realloc(b->s, ncap);
		if (n == NULL) {
			b->oom = true;
			return;
		}
		b->s = n;
		b->cap = ncap;
	}
	memcpy(b->s + b->len, data, len);
	b->len += len;
	b->s[b->len] = '\0';
}

void strbuf_str(struct strbuf *b, const char *s)
{
	strbuf_add(b, s, strlen(s));
}

void strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
	char tmp[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(tmp))
		strbuf_add(b, tmp, (size_t)n);
	else
		b->oom = true;
}

char *strbuf_take(struct strbuf *b)
{
	char *s;

	strbuf_add(b, "", 0);
	s = b->oom ? NULL : b->s;
	if (s == NULL)
		free(b->s);
	memset(b, 0, sizeof(*b));
	return s;
}

void strbuf_wipe(struct strbuf *b)
{
	if (b->s != NULL)
		explicit_bzero(b->s, b->cap);
	free(b->s);
	memset(b, 0, sizeof(*b));
}
