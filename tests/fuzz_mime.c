/* Fuzz target for header fields and RFC 2047 decoding (proto/mime.h).
 *
 * The first byte of the input picks a field name, the rest is a header
 * block.  Every decoded text must be strict UTF-8 with no control character
 * but TAB and at most MIME_DECODED_MAX bytes; a field value at most
 * MIME_FIELD_MAX bytes, without LF and without white space at its ends.
 * Differential checks:
 *   - mime_header_decoded() equals mime_header_field() then
 *     mime_decode_header() (mime_decode_raw() for Message-ID);
 *   - with no "=?" in the input, mime_decode_header() equals
 *     mime_decode_raw();
 *   - input that is already clean text (ASCII or UTF-8, no controls but
 *     TAB, no C1, no byte order mark) decodes to itself, cut to the bound.
 * Any failure abort()s. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/mime.h"

static const char *const names[] = {
        "Subject", "From", "Date", "Message-ID", "References", "X-Mailer",
};

/* Length of the clean character at s: strict UTF-8, not a control but
 * TAB, not U+FEFF; 0 if it is not one. */
static size_t clean_char(const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t k;

	if (s[0] < 0x80)
		return (s[0] >= 0x20 && s[0] != 0x7f) || s[0] == '\t' ? 1 : 0;
	if ((s[0] & 0xe0) == 0xc0) {
		k = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		k = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		k = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) ||
	    (k == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp < 0xa0 || cp == 0xfeff)
		return 0;
	return k;
}

/* Is s[0..n) clean text?  Sets *cut_r to the length of its longest prefix
 * of whole characters within MIME_DECODED_MAX. */
static bool clean_text(const unsigned char *s, size_t n, size_t *cut_r)
{
	size_t i = 0, k;

	*cut_r = 0;
	while (i < n) {
		k = clean_char(s + i, n - i);
		if (k == 0)
			return false;
		i += k;
		if (i <= MIME_DECODED_MAX)
			*cut_r = i;
	}
	return true;
}

static void check_text(const char *s)
{
	size_t len = strlen(s), cut;

	CHECK(len <= MIME_DECODED_MAX);
	CHECK(clean_text((const unsigned char *)s, len, &cut));
}

static bool is_id_field(const char *name)
{
	return strcmp(name, "Message-ID") == 0 ||
	       strcmp(name, "References") == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *name, *h;
	char *v = NULL, *d1 = NULL, *d2 = NULL;
	size_t len, cut;
	int rc;

	if (size == 0)
		return 0;
	name = names[data[0] % (sizeof(names) / sizeof(names[0]))];
	h = (const char *)data + 1;
	len = size - 1;

	rc = mime_header_field(h, len, name, &v);
	CHECK(rc == 0 || rc == -ENOENT || rc == -ENOMEM);
	if (rc == 0) {
		size_t n = strlen(v);

		CHECK(n <= MIME_FIELD_MAX);
		CHECK(memchr(v, '\n', n) == NULL);
		if (n > 0) {
			CHECK(v[0] != ' ' && v[0] != '\t' && v[0] != '\r');
			CHECK(v[n - 1] != ' ' && v[n - 1] != '\t' &&
			      v[n - 1] != '\r');
		}
		if (is_id_field(name))
			rc = mime_decode_raw(v, n, &d1);
		else
			rc = mime_decode_header(v, n, &d1);
		CHECK(rc == 0 || rc == -ENOMEM);
	}
	rc = mime_header_decoded(h, len, name, &d2);
	CHECK(rc == 0 || rc == -ENOENT || rc == -ENOMEM);
	if (d1 != NULL && d2 != NULL) {
		check_text(d1);
		CHECK(strcmp(d1, d2) == 0);
	}
	free(v);
	free(d1);
	free(d2);
	d1 = d2 = NULL;

	/* The whole input as one value. */
	rc = mime_decode_header(h, len, &d1);
	CHECK(rc == 0 || rc == -ENOMEM);
	if (rc == 0)
		check_text(d1);
	rc = mime_decode_raw(h, len, &d2);
	CHECK(rc == 0 || rc == -ENOMEM);
	if (rc == 0)
		check_text(d2);
	if (d1 != NULL && d2 != NULL && memmem(h, len, "=?", 2) == NULL)
		CHECK(strcmp(d1, d2) == 0);
	if (d2 != NULL && clean_text((const unsigned char *)h, len, &cut)) {
		CHECK(strlen(d2) == cut);
		CHECK(memcmp(d2, h, cut) == 0);
	}
	free(d1);
	free(d2);
	return 0;
}
