/* Modified UTF-7 (RFC 3501 section 5.1.3).
 *
 * Encoded vectors were derived independently of this code: the modified
 * BASE64 of a string s is base64(s encoded as UTF-16BE) with "=" padding
 * removed and "/" replaced by ",". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/utf7.h"

struct pair {
	const char *utf7;
	const char *utf8;
};

static const struct pair valid[] = {
        {"", ""},
        {"INBOX", "INBOX"},
        /* RFC 3501 section 5.1.3 */
        {"~peter/mail/&U,BTFw-/&ZeVnLIqe-",
         "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},
        {"&-", "&"},
        {"&-&-", "&&"},
        {"a&-b", "a&b"},
        {"Entw&APw-rfe", "Entw\xc3\xbc"
                         "rfe"},
        /* U+0161: its low byte is "a", which must not count as ASCII */
        {"&AWE-", "\xc5\xa1"},
        /* U+1F600 as the surrogate pair D83D DE00 */
        {"&2D3eAA-", "\xf0\x9f\x98\x80"},
        {"&2D3eAADp-", "\xf0\x9f\x98\x80\xc3\xa9"},
        {"&IKzYPd4AIKw-", "\xe2\x82\xac\xf0\x9f\x98\x80\xe2\x82\xac"},
        /* the first and the last supplementary code points */
        {"&2ADcAA-", "\xf0\x90\x80\x80"},
        {"&2,,f,w-", "\xf4\x8f\xbf\xbf"},
        /* control characters are encoded */
        {"&AAk-", "\t"},
        {"&AH8-", "\x7f"},
        /* a run, then "&", then "-" right after a run */
        {"&AOQ-&-", "\xc3\xa4&"},
        {"&AOQ--", "\xc3\xa4-"},
        {"&AOQA5A-", "\xc3\xa4\xc3\xa4"},
        {"&AOQ-x&AOQ-", "\xc3\xa4x\xc3\xa4"},
};

static void test_valid(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		char *s = NULL;

		assert_int_equal(utf7_decode(valid[i].utf7, &s), 0);
		assert_string_equal(s, valid[i].utf8);
		free(s);
		s = NULL;
		assert_int_equal(utf7_encode(valid[i].utf8, &s), 0);
		assert_string_equal(s, valid[i].utf7);
		free(s);
	}
}

static const char *const invalid_utf7[] = {
        "&",           /* unterminated */
        "abc&",        /* unterminated */
        "&U,BTFw",     /* unterminated run */
        "&AOQ",        /* unterminated run */
        "&&-",         /* "&" is not BASE64 */
        "&AOQ!-",      /* bad character */
        "&AOQ=-",      /* padding is not allowed */
        "&2D3eAA==-",  /* padding is not allowed */
        "&U/BTFw-",    /* standard BASE64 "/" instead of "," */
        "&A-",         /* 6 bits: not even one byte */
        "&AO-",        /* 12 bits: one byte, odd */
        "&AOR-",       /* non-zero leftover bits */
        "&AOQA-",      /* superfluous character (8 leftover bits) */
        "&AOQA5-",     /* 30 bits: a unit and a half */
        "&AGE-",       /* "a" must not be encoded */
        "&ACY-",       /* "&" must be "&-" */
        "&ACA-",       /* space must not be encoded */
        "&AH4-",       /* "~" must not be encoded */
        "&AAA-",       /* encoded NUL */
        "&2D0-",       /* lone high surrogate */
        "&2D0A5A-",    /* high surrogate followed by a non-surrogate */
        "&2D3YPQ-",    /* two high surrogates */
        "&3gA-",       /* lone low surrogate */
        "&AOTeAA-",    /* low surrogate after a BMP character */
        "&3gDYPQ-",    /* reversed pair */
        "&AOQ-&AOQ-",  /* adjacent runs must be merged */
        "x&AOQ-&AOQ-", /* adjacent runs must be merged */
        "\xc3\xa4",    /* raw 8-bit */
        "a\tb",        /* raw control character */
        "a\x7f",       /* raw DEL */
        "a\x80-",      /* raw 8-bit */
        "&\xc3\xa4-",  /* raw 8-bit inside a run */
};

static void test_invalid_decode(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(invalid_utf7) / sizeof(invalid_utf7[0]); i++) {
		char *s = (char *)0x1;

		if (utf7_decode(invalid_utf7[i], &s) != -EINVAL)
			fail_msg("accepted invalid \"%s\"", invalid_utf7[i]);
		/* untouched on error */
		assert_ptr_equal(s, (char *)0x1);
	}
}

static const char *const invalid_utf8[] = {
        "\x80",                 /* stray continuation */
        "a\xbf",                /* stray continuation */
        "\xc3",                 /* truncated */
        "\xc3x",                /* truncated */
        "\xe2\x82",             /* truncated */
        "\xf0\x9f\x98",         /* truncated */
        "\xc0\x80",             /* overlong NUL */
        "\xc1\xbf",             /* overlong */
        "\xe0\x80\xaf",         /* overlong "/" */
        "\xe0\x9f\xbf",         /* overlong */
        "\xf0\x8f\xbf\xbf",     /* overlong */
        "\xed\xa0\x80",         /* UTF-8 encoded surrogate D800 */
        "\xed\xbf\xbf",         /* UTF-8 encoded surrogate DFFF */
        "\xf4\x90\x80\x80",     /* U+110000 */
        "\xf5\x80\x80\x80",     /* beyond U+10FFFF */
        "\xf8\x88\x80\x80\x80", /* 5-byte form */
        "\xfe",                 /* never valid */
        "\xff",                 /* never valid */
        "ok\xc3\xa4\xe2",       /* truncated at the end of a run */
};

static void test_invalid_encode(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(invalid_utf8) / sizeof(invalid_utf8[0]); i++) {
		char *s = (char *)0x1;

		if (utf7_encode(invalid_utf8[i], &s) != -EINVAL)
			fail_msg("accepted invalid UTF-8 #%zu", i);
		assert_ptr_equal(s, (char *)0x1);
	}
}

/* A fixed PRNG, so the test is the same on every libc. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 32);
}

static uint32_t random_cp(void)
{
	static const char special[] = "&-+,/~ A";
	uint32_t cp;

	switch (rng() % 6) {
	case 0: return (unsigned char)special[rng() % (sizeof(special) - 1)];
	case 1: return 0x20 + rng() % 0x5f;       /* printable ASCII */
	case 2: return 1 + rng() % 0x1f;          /* controls, no NUL */
	case 3: return 0x80 + rng() % 0x780;      /* two bytes */
	case 4: do { cp = 0x800 + rng() % 0xf800; /* rest of the BMP */
		} while (cp >= 0xd800 && cp <= 0xdfff);
		return cp;
	default: return 0x10000 + rng() % 0x100000; /* supplementary */
	}
}

static size_t put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static void test_random_roundtrip(void **state)
{
	char in[40 * 4 + 1];
	int iter;

	(void)state;
	for (iter = 0; iter < 20000; iter++) {
		size_t n = rng() % 40, len = 0, i;
		char *enc = NULL, *dec = NULL, *enc2 = NULL;

		for (i = 0; i < n; i++)
			len += put_utf8(in + len, random_cp());
		in[len] = '\0';

		assert_int_equal(utf7_encode(in, &enc), 0);
		for (i = 0; enc[i] != '\0'; i++)
			assert_true(enc[i] >= 0x20 && enc[i] <= 0x7e);
		assert_int_equal(utf7_decode(enc, &dec), 0);
		assert_string_equal(dec, in);
		/* the encoding is canonical: decoding it and encoding again
		 * gives the same bytes */
		assert_int_equal(utf7_encode(dec, &enc2), 0);
		assert_string_equal(enc2, enc);
		free(enc);
		free(dec);
		free(enc2);
	}
}

/* Random printable ASCII soup with "&" and "-": whatever decodes must
 * re-encode to exactly the input (only canonical forms are accepted). */
static void test_random_decode_canonical(void **state)
{
	static const char alphabet[] = "&&&---AOQa5+,/2D3eAA=";
	char in[24];
	int iter, ok = 0;

	(void)state;
	for (iter = 0; iter < 200000; iter++) {
		size_t n = rng() % (sizeof(in) - 1), i;
		char *dec = NULL, *enc = NULL;

		for (i = 0; i < n; i++)
			in[i] = alphabet[rng() % (sizeof(alphabet) - 1)];
		in[n] = '\0';
		if (utf7_decode(in, &dec) != 0)
			continue;
		ok++;
		assert_int_equal(utf7_encode(dec, &enc), 0);
		assert_string_equal(enc, in);
		free(dec);
		free(enc);
	}
	/* make sure the test exercised something */
	assert_true(ok > 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_valid),
	        cmocka_unit_test(test_invalid_decode),
	        cmocka_unit_test(test_invalid_encode),
	        cmocka_unit_test(test_random_roundtrip),
	        cmocka_unit_test(test_random_decode_canonical),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
