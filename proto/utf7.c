#include "proto/utf7.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/b64.h"

static bool utf7_is_direct(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

/* The caller checked cp: at most U+10FFFF and not a surrogate. */
static char *utf7_put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | (cp >> 6));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | (cp >> 12));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | (cp >> 18));
		*o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* Decode one "&...-" run; *pp points just past the "&" and is left just
 * past the "-".  The run is known not to be the empty "&-". */
static int utf7_decode_run(const char **pp, char **op)
{
	const unsigned char *p = (const unsigned char *)*pp;
	char *o = *op;
	uint32_t bits = 0, high = 0;
	unsigned int nbits = 0;
	int v;

	for (; *p != '-'; p++) {
		uint32_t unit;

		/* NUL (unterminated run) lands here too. */
		v = b64_value(b64_imap, *p);
		if (v < 0)
			return -EINVAL;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		unit = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;

		if (high != 0) {
			if (unit < 0xdc00 || unit > 0xdfff)
				return -EINVAL;
			o = utf7_put_utf8(o, 0x10000 + ((high - 0xd800) << 10) +
			                             (unit - 0xdc00));
			high = 0;
		} else if (unit >= 0xd800 && unit <= 0xdbff) {
			high = unit;
		} else if (unit >= 0xdc00 && unit <= 0xdfff) {
			return -EINVAL;
		} else if (unit == 0 || utf7_is_direct(unit)) {
			/* A NUL cannot live in a C string, and printable
			 * ASCII has exactly one spelling: itself. */
			return -EINVAL;
		} else {
			o = utf7_put_utf8(o, unit);
		}
	}
	/* The shortest encoding leaves fewer than 6 bits, all zero. */
	if (high != 0 || nbits >= 6 || bits != 0)
		return -EINVAL;
	*pp = (const char *)p + 1;
	*op = o;
	return 0;
}

int utf7_decode(const char *in, char **utf8_r)
{
	const char *p = in;
	bool after_run = false;
	size_t len = strlen(in);
	char *out, *o;
	int rc;

	/* 8 BASE64 characters carry 3 UTF-16 units, at most 9 bytes of
	 * UTF-8 (three BMP characters); everything else shrinks. */
	if (len > (SIZE_MAX - 1) / 2)
		return -ENOMEM;
	out = malloc(len * 2 + 1);
	if (out == NULL)
		return -ENOMEM;
	o = out;
	while (*p != '\0') {
		unsigned char c = (unsigned char)*p;

		if (!utf7_is_direct(c)) {
			rc = -EINVAL;
			goto fail;
		}
		if (c != '&') {
			*o++ = (char)c;
			p++;
			after_run = false;
			continue;
		}
		p++;
		if (*p == '-') {
			*o++ = '&';
			p++;
			after_run = false;
			continue;
		}
		/* Two runs in a row must have been written as one. */
		if (after_run) {
			rc = -EINVAL;
			goto fail;
		}
		rc = utf7_decode_run(&p, &o);
		if (rc < 0)
			goto fail;
		after_run = true;
	}
	*o = '\0';
	*utf8_r = out;
	return 0;
fail:
	free(out);
	return rc;
}

/* Decode one UTF-8 character at s; returns its length, or -1 if it is not
 * valid UTF-8 (RFC 3629: no overlong forms, no surrogates, <= U+10FFFF). */
static int utf7_get_utf8(const unsigned char *s, uint32_t *cp_r)
{
	static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
	uint32_t cp;
	int n, i;

	if (s[0] < 0x80) {
		*cp_r = s[0];
		return 1;
	} else if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return -1;
	}
	/* A NUL stops here, so we never read past the terminator. */
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*cp_r = cp;
	return n;
}

static char *utf7_flush_run(char *o, const uint8_t *u16, size_t n)
{
	*o++ = '&';
	/* No "=" padding: the unused low bits of the last character are 0. */
	o = b64_put(o, u16, n, b64_imap, false);
	*o++ = '-';
	return o;
}

int utf7_encode(const char *utf8, char **out_r)
{
	const unsigned char *p = (const unsigned char *)utf8;
	size_t len = strlen(utf8);
	uint8_t *u16 = NULL;
	char *out = NULL, *o;
	int rc = -ENOMEM;

	/* Worst case is a lone control character: 1 byte becomes "&AAk-",
	 * 5 bytes.  Longer UTF-8 sequences cost less per byte.  The UTF-16
	 * of a run is at most twice its UTF-8. */
	if (len > (SIZE_MAX - 1) / 5)
		return -ENOMEM;
	out = malloc(len * 5 + 1);
	u16 = malloc(len * 2 + 1);
	if (out == NULL || u16 == NULL)
		goto out;
	o = out;
	while (*p != '\0') {
		size_t n = 0;

		if (utf7_is_direct(*p)) {
			*o++ = (char)*p;
			if (*p == '&')
				*o++ = '-';
			p++;
			continue;
		}
		/* Gather the whole run so it is written as one "&...-". */
		while (*p != '\0' && !utf7_is_direct(*p)) {
			uint32_t cp;
			int l = utf7_get_utf8(p, &cp);

			if (l < 0) {
				rc = -EINVAL;
				goto out;
			}
			p += l;
			if (cp >= 0x10000) {
				uint32_t hi = 0xd800 + ((cp - 0x10000) >> 10);
				uint32_t lo = 0xdc00 + ((cp - 0x10000) & 0x3ff);

				u16[n++] = (uint8_t)(hi >> 8);
				u16[n++] = (uint8_t)hi;
				cp = lo;
			}
			u16[n++] = (uint8_t)(cp >> 8);
			u16[n++] = (uint8_t)cp;
		}
		o = utf7_flush_run(o, u16, n);
	}
	*o = '\0';
	*out_r = out;
	out = NULL;
	rc = 0;
out:
	free(u16);
	free(out);
	return rc;
}
