/* Header fields and RFC 2047 encoded words (proto/mime.h).
 *
 * Expected strings were worked out independently of this code, from the
 * RFCs and the charset tables, and are written as UTF-8 escapes.  The last
 * tests read the mail corpus: $MAILFS_CORPUS, else
 * $MAILFS_SOURCE/tests/corpus, else tests/corpus beside this file, from
 * __FILE__. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto/mime.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* An independent check of what mime.h promises for decoded text: strict
 * UTF-8, no control characters but TAB, within the bound. */
static bool text_ok(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t len = strlen(s);

	if (len > MIME_DECODED_MAX)
		return false;
	while (*p != '\0') {
		uint32_t cp;
		int k;

		if (*p < 0x80) {
			if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
				return false;
			p++;
			continue;
		}
		if ((*p & 0xe0) == 0xc0) {
			k = 1;
			cp = *p & 0x1f;
		} else if ((*p & 0xf0) == 0xe0) {
			k = 2;
			cp = *p & 0x0f;
		} else if ((*p & 0xf8) == 0xf0) {
			k = 3;
			cp = *p & 0x07;
		} else {
			return false;
		}
		for (int i = 1; i <= k; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i] & 0x3f);
		}
		if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) ||
		    (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return false;
		p += k + 1;
	}
	return true;
}

static char *decode_n(const char *in, size_t len)
{
	char *out = NULL;

	assert_int_equal(mime_decode_header(in, len, &out), 0);
	assert_non_null(out);
	assert_true(text_ok(out));
	return out;
}

static void check_decode(const char *in, const char *want)
{
	char *out = decode_n(in, strlen(in));

	if (strcmp(out, want) != 0)
		fail_msg("decoding \"%s\"\n  got  \"%s\"\n  want \"%s\"", in,
		         out, want);
	free(out);
}

struct vec {
	const char *in;
	const char *out;
};

static void check_vecs(const struct vec *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		check_decode(v[i].in, v[i].out);
}

/* RFC 2047 section 8, every example. */
static void test_rfc2047_examples(void **state)
{
	static const struct vec v[] = {
	        {"=?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>",
	         "Keith Moore <moore@cs.utk.edu>"},
	        {"=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
	         "Keld J\xc3\xb8rn Simonsen <keld@dkuug.dk>"},
	        {"=?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
	         "Andr\xc3\xa9 Pirard <PIRARD@vm1.ulg.ac.be>"},
	        {"=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\r\n"
	         "    =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=",
	         "If you can read this you understand the example."},
	        {"=?ISO-8859-1?Q?Olle_J=E4rnefors?= <ojarnef@admin.kth.se>",
	         "Olle J\xc3\xa4rnefors <ojarnef@admin.kth.se>"},
	        {"Nathaniel Borenstein <nsb@thumper.bellcore.com> "
	         "(=?iso-8859-8?b?7eXs+SDv4SDp7Oj08A==?=)",
	         "Nathaniel Borenstein <nsb@thumper.bellcore.com> "
	         "(\xd7\x9d\xd7\x95\xd7\x9c\xd7\xa9 \xd7\x9f\xd7\x91 "
	         "\xd7\x99\xd7\x9c\xd7\x98\xd7\xa4\xd7\xa0)"},
	        {"(=?ISO-8859-1?Q?a?=)", "(a)"},
	        {"(=?ISO-8859-1?Q?a?= b)", "(a b)"},
	        {"(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"},
	        {"(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)"},
	        {"(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)"},
	        {"(=?ISO-8859-1?Q?a_b?=)", "(a b)"},
	        {"(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_q(void **state)
{
	static const struct vec v[] = {
	        {"=?utf-8?q?a_b__c?=", "a b  c"},
	        {"=?UTF-8?Q?=C3=A9t=c3=a9?=", "\xc3\xa9t\xc3\xa9"},
	        {"=?utf-8?Q?=5F_=3D=3F?=", "_ =?"},
	        /* "=" not followed by two hex digits stays itself */
	        {"=?utf-8?q?100=?=", "100="},
	        {"=?utf-8?q?a=4?=", "a=4"},
	        {"=?utf-8?q?=G1=?=", "=G1="},
	        {"=?utf-8?q?=?=", "="},
	        /* empty encoded text */
	        {"=?utf-8?q?\?=", ""},
	        {"a =?utf-8?q?\?= b", "a  b"},
	        /* encoding letter and charset in either case */
	        {"=?Utf-8?q?x?= =?UTF-8?Q?y?=", "xy"},
	        /* RFC 2231 language suffix */
	        {"=?us-ascii*en?q?Hello?=", "Hello"},
	        {"=?iso-8859-1*fr-CA?Q?caf=E9?=", "caf\xc3\xa9"},
	        /* ISO-8859-1 and US-ASCII are read as Windows-1252 */
	        {"=?iso-8859-1?q?=93quoted=94_=80?=",
	         "\xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x82\xac"},
	        {"=?us-ascii?q?=E9?=", "\xc3\xa9"},
	        /* undefined in Windows-1252 */
	        {"=?windows-1252?q?=81?=", "\xef\xbf\xbd"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_b(void **state)
{
	static const struct vec v[] = {
	        {"=?utf-8?b?w6k=?=", "\xc3\xa9"},
	        /* padding missing, or too much */
	        {"=?utf-8?b?w6k?=", "\xc3\xa9"},
	        {"=?utf-8?B?YWJj?=", "abc"},
	        {"=?utf-8?B?YWI?=", "ab"},
	        {"=?utf-8?B?YQ?=", "a"},
	        {"=?utf-8?B?YQ=?=", "a"},
	        {"=?utf-8?B?YQ===?=", "a"},
	        /* two padded words glued together by a mailer */
	        {"=?utf-8?B?YQ==Yg==?=", "ab"},
	        /* a sextet left over is dropped */
	        {"=?utf-8?B?YWJjZ?=", "abc"},
	        {"=?utf-8?B?=?=", ""},
	        {"=?us-ascii?b?UmU6IGM=?=", "Re: c"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_invalid_base64(void **state)
{
	static const struct vec v[] = {
	        /* characters outside the alphabet: the word is literal */
	        {"=?utf-8?b?w6k*?=", "=?utf-8?b?w6k*?="},
	        {"=?utf-8?b?w6-k?=", "=?utf-8?b?w6-k?="},
	        {"x =?utf-8?b?!!!!?= y", "x =?utf-8?b?!!!!?= y"},
	        /* the white space next to a literal word stays */
	        {"=?utf-8?b?w6k=?= =?utf-8?b?#?= =?utf-8?b?w6k=?=",
	         "\xc3\xa9 =?utf-8?b?#?= \xc3\xa9"},
	        /* decodes to bytes that are not UTF-8 */
	        {"=?utf-8?b?/w==?=", "\xef\xbf\xbd"},
	        {"=?utf-8?b?w6nD?=", "\xc3\xa9\xef\xbf\xbd"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_malformed(void **state)
{
	static const struct vec v[] = {
	        {"=?utf-8?q?no end", "=?utf-8?q?no end"},
	        {"=?utf-8?x?abc?=", "=?utf-8?x?abc?="},
	        {"=?utf-8?qq?abc?=", "=?utf-8?qq?abc?="},
	        {"=??q?abc?=", "=??q?abc?="},
	        {"=?*en?q?abc?=", "=?*en?q?abc?="},
	        {"=?utf-8?q?a b?=", "=?utf-8?q?a b?="},
	        {"=?utf-8?q?a?b?=", "=?utf-8?q?a?b?="},
	        {"=?utf/8?q?a?=", "=?utf/8?q?a?="},
	        {"=?utf-8//TRANSLIT?q?a?=", "=?utf-8//TRANSLIT?q?a?="},
	        {"=?", "=?"},
	        {"=?=?=?", "=?=?=?"},
	        {"=?utf-8?q?", "=?utf-8?q?"},
	        {"=?utf-8?q?a?", "=?utf-8?q?a?"},
	        /* a malformed word, then a good one */
	        {"=?utf-8?q?a=?utf-8?q?b?=", "=?utf-8?q?ab"},
	        /* words need no white space around them in real mail */
	        {"x=?utf-8?q?a?=y", "xay"},
	        {"\"=?utf-8?q?J=C3=B6rg?=\" <j@x>", "\"J\xc3\xb6rg\" <j@x>"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_unknown_charset(void **state)
{
	static const struct vec v[] = {
	        {"=?x-no-such-charset?q?abc?=", "=?x-no-such-charset?q?abc?="},
	        {"a =?x-unknown?b?YWJj?= b", "a =?x-unknown?b?YWJj?= b"},
	        {"=?utf-8?q?a?= =?x-unknown?q?b?= =?utf-8?q?c?=",
	         "a =?x-unknown?q?b?= c"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

/* White space between adjacent words goes, elsewhere it stays. */
static void test_adjacent(void **state)
{
	static const struct vec v[] = {
	        {"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"},
	        {"=?utf-8?q?a?=\t \t=?utf-8?q?b?=", "ab"},
	        {"=?utf-8?q?a?==?utf-8?q?b?=", "ab"},
	        {"=?utf-8?q?a?= \r\n =?iso-8859-1?q?b?= =?koi8-r?q?c?=", "abc"},
	        {"=?utf-8?q?a_?= =?utf-8?q?_b?=", "a  b"},
	        {"a =?utf-8?q?b?= c", "a b c"},
	        {"=?utf-8?q?a?= b =?utf-8?q?c?=", "a b c"},
	        {"  =?utf-8?q?a?=  ", "  a  "},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

/* RFC 2047 wants whole characters in every word; real mail splits them.
 * Words of the same charset are joined before conversion. */
static void test_split_multibyte(void **state)
{
	static const struct vec v[] = {
	        /* "e" with acute split in Q */
	        {"=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "caf\xc3\xa9"},
	        /* and in B: c3 | a9 */
	        {"=?utf-8?b?ww==?= =?UTF-8?B?qQ==?=", "\xc3\xa9"},
	        /* a three-byte character split over three words */
	        {"=?utf-8?q?=E2?==?utf-8?q?=82?= =?utf-8?q?=AC?=",
	         "\xe2\x82\xac"},
	        /* the language does not matter */
	        {"=?utf-8*sl?q?=C5?= =?utf-8*en?q?=BE?=", "\xc5\xbe"},
	        /* a GB2312 character split */
	        {"=?gb2312?q?=D6?= =?gb2312?q?=D0?=", "\xe4\xb8\xad"},
	        /* a different charset in between cannot be joined */
	        {"=?utf-8?q?=C3?= =?iso-8859-1?q?a?= =?utf-8?q?=A9?=",
	         "\xef\xbf\xbd"
	         "a\xef\xbf\xbd"},
	        /* a character cut at the end of the run */
	        {"=?utf-8?q?ab=E2=82?= c", "ab\xef\xbf\xbd\xef\xbf\xbd c"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_charsets(void **state)
{
	static const struct vec v[] = {
	        /* ISO-2022-JP, Japanese for "subject test" and "Japanese" */
	        {"=?ISO-2022-JP?B?GyRCN29MPiVGJTklSBsoQiAbJEJGfEtcOGwbKEI=?=",
	         "\xe4\xbb\xb6\xe5\x90\x8d\xe3\x83\x86\xe3\x82\xb9\xe3\x83"
	         "\x88 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"},
	        /* split in two words, each returning to ASCII */
	        {"=?iso-2022-jp?B?GyRCN29MPhsoQg==?=\r\n"
	         " =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
	         "\xe4\xbb\xb6\xe5\x90\x8d\xe3\x83\x86\xe3\x82\xb9\xe3\x83"
	         "\x88"},
	        /* half-width katakana (ESC ( I), common in Japanese mail */
	        {"=?iso-2022-jp?q?=1B(I1=1B(B?=", "\xef\xbd\xb1"},
	        /* KOI8-R, Russian for "Hello, world" */
	        {"=?KOI8-R?B?8NLJ18XULCDNydI=?=",
	         "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, "
	         "\xd0\xbc\xd0\xb8\xd1\x80"},
	        {"=?koi8-r?q?=F0=D2=C9=D7=C5=D4?=",
	         "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82"},
	        /* Windows-1251 */
	        {"=?windows-1251?q?=CF=F0=E8?=", "\xd0\x9f\xd1\x80\xd0\xb8"},
	        /* ISO-8859-2 */
	        {"=?iso-8859-2?q?=B9?=", "\xc5\xa1"},
	        /* GB2312 and GBK */
	        {"=?GB2312?Q?=D6=D0=CE=C4?=", "\xe4\xb8\xad\xe6\x96\x87"},
	        {"=?gbk?b?1tDOxA==?=", "\xe4\xb8\xad\xe6\x96\x87"},
	        /* Big5 */
	        {"=?big5?q?=A4=A4=A4=E5?=", "\xe4\xb8\xad\xe6\x96\x87"},
	        /* Shift_JIS and EUC-JP: "Nihon" */
	        {"=?shift_jis?b?k/qWew==?=", "\xe6\x97\xa5\xe6\x9c\xac"},
	        {"=?euc-jp?q?=C6=FC=CB=DC?=", "\xe6\x97\xa5\xe6\x9c\xac"},
	        /* EUC-KR: "Hangul" */
	        {"=?euc-kr?q?=C7=D1=B1=DB?=", "\xed\x95\x9c\xea\xb8\x80"},
	        /* UTF-16 with and without a byte order mark */
	        {"=?utf-16?b?/v8AYQDp?=", "a\xc3\xa9"},
	        {"=?utf-16?b?//5hAOkA?=", "a\xc3\xa9"},
	        {"=?utf-16?b?AGEA6Q==?=", "a\xc3\xa9"},
	        {"=?utf-16?b?YQDpAA==?=", "a\xc3\xa9"},
	        {"=?utf-16le?b?YQDpAA==?=", "a\xc3\xa9"},
	        /* UTF-7 */
	        {"=?utf-7?q?Hi_+AOk-?=", "Hi \xc3\xa9"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

/* Raw 8-bit text: UTF-8 if all of it is, else Windows-1252. */
static void test_raw_8bit(void **state)
{
	static const struct vec v[] = {
	        {"Caf\xc3\xa9 \xe2\x82\xac", "Caf\xc3\xa9 \xe2\x82\xac"},
	        {"Caf\xe9", "Caf\xc3\xa9"},
	        {"\x93smart\x94 \x80 \xa0", "\xe2\x80\x9csmart\xe2\x80\x9d "
	                                    "\xe2\x82\xac \xc2\xa0"},
	        {"\x81\x8d\x8f\x90\x9d",
	         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf"
	         "\xbd"},
	        /* one invalid byte and the whole text is Windows-1252 */
	        {"\xc3\xa9 \xe9", "\xc3\x83\xc2\xa9 \xc3\xa9"},
	        /* overlong, surrogate, above U+10FFFF: not UTF-8 */
	        {"\xc0\xaf", "\xc3\x80\xc2\xaf"},
	        {"\xed\xa0\x80", "\xc3\xad\xc2\xa0\xe2\x82\xac"},
	        {"\xf4\x90\x80\x80",
	         "\xc3\xb4\xef\xbf\xbd\xe2\x82\xac\xe2\x82\xac"},
	        /* encoded words and raw UTF-8 together */
	        {"=?ISO-8859-1?Q?Maril=F9?= Gioffr\xc3\xa9",
	         "Maril\xc3\xb9 Gioffr\xc3\xa9"},
	        {"=?ISO-8859-1?Q?Maril=F9?= Gioffr\xe9",
	         "Maril\xc3\xb9 Gioffr\xc3\xa9"},
	        /* a byte order mark is dropped */
	        {"\xef\xbb\xbfHi", "Hi"},
	        /* raw ISO-2022-JP, with an encoded word after it */
	        {"Re: \x1b$B7oL>\x1b(B test =?utf-8?q?=C3=A9?=",
	         "Re: \xe4\xbb\xb6\xe5\x90\x8d test \xc3\xa9"},
	        {"\x1b(I1\x1b(B", "\xef\xbd\xb1"},
	        /* an escape that is not ISO-2022-JP is a control */
	        {"\x1b[1m", " [1m"},
	        /* ISO-2022-JP never has 8-bit bytes */
	        {"\x1b$B7o\xe9", " $B7o\xc3\xa9"},
	};

	(void)state;
	check_vecs(v, ARRAY_SIZE(v));
}

static void test_controls(void **state)
{
	static const char in[] = "a\0b\r\nc\x01\x1b[31m\x7f\td";
	char *out;

	(void)state;
	out = decode_n(in, sizeof(in) - 1);
	assert_string_equal(out, "a b  c  [31m \td");
	free(out);
	/* C1 controls, raw UTF-8 or decoded */
	check_decode("\xc2\x85x\xc2\x9b", " x ");
	check_decode("=?iso-8859-5?q?=85?=", " ");
	check_decode("=?utf-8?q?a=00b=0D=0Ac=09?=", "a b  c\t");
	/* no "=?" decoding here */
	assert_int_equal(mime_decode_raw("=?utf-8?q?a?=\r\xe9", 15, &out), 0);
	assert_string_equal(out, "=?utf-8?q?a?= \xc3\xa9");
	free(out);
	assert_int_equal(mime_decode_header(NULL, 0, &out), 0);
	assert_string_equal(out, "");
	free(out);
}

/* mime_header_field */

static char *field(const char *h, size_t len, const char *name, int want_rc)
{
	char *v = NULL;

	assert_int_equal(mime_header_field(h, len, name, &v), want_rc);
	if (want_rc == 0)
		assert_non_null(v);
	else
		assert_null(v);
	return v;
}

static void check_field(const char *h, const char *name, const char *want)
{
	char *v = field(h, strlen(h), name, want ? 0 : -ENOENT);

	if (want != NULL) {
		if (strcmp(v, want) != 0)
			fail_msg("field %s\n  got  \"%s\"\n  want \"%s\"", name,
			         v, want);
		free(v);
	}
}

static void test_field(void **state)
{
	static const char crlf[] = "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
	                           "Subject: Hello\r\n"
	                           " world\r\n"
	                           "\tagain  \r\n"
	                           "From: A <a@b>\r\n"
	                           "\r\n";
	static const char lf[] = "Date: Mon, 1 Jan 2024 10:00:00 +0000\n"
	                         "Subject: Hello\n"
	                         " world\n"
	                         "\tagain  \n"
	                         "From: A <a@b>\n"
	                         "\n";

	(void)state;
	check_field(crlf, "Subject", "Hello world\tagain");
	check_field(lf, "Subject", "Hello world\tagain");
	check_field(crlf, "subject", "Hello world\tagain");
	check_field(lf, "SUBJECT", "Hello world\tagain");
	check_field(crlf, "From", "A <a@b>");
	check_field(lf, "from", "A <a@b>");
	check_field(crlf, "Date", "Mon, 1 Jan 2024 10:00:00 +0000");
	check_field(crlf, "Message-ID", NULL);
	check_field(lf, "Subj", NULL);
	check_field(lf, "Subjects", NULL);
	check_field("", "Subject", NULL);
	check_field("\r\n", "Subject", NULL);
	/* the first of two */
	check_field("Subject: one\nSubject: two\n", "Subject", "one");
	/* empty and white-space-only values */
	check_field("Subject:\r\nFrom: x\r\n", "Subject", "");
	check_field("Subject:   \t \r\n", "Subject", "");
	check_field("Subject:\r\n   \r\n\r\n", "Subject", "");
	/* a value that starts on the next line */
	check_field("Subject:\r\n  Hello\r\n", "Subject", "Hello");
	/* the end of the block without a line end */
	check_field("Subject: x", "Subject", "x");
	check_field("Subject: x\r", "Subject", "x");
	check_field("Subject", "Subject", NULL);
	/* obsolete syntax: white space before the colon */
	check_field("Subject \t: x\n", "Subject", "x");
	/* nothing after the empty line counts */
	check_field("From: a\n\nSubject: body\n", "Subject", NULL);
	check_field("From: a\r\n\r\nSubject: body\r\n", "Subject", NULL);
	/* a continuation line is not a field */
	check_field("X-A: a\n Subject: no\n", "Subject", NULL);
	check_field(" Subject: no\n", "Subject", NULL);
	/* garbage lines are skipped, with their continuations */
	check_field("From sender Mon Jan  1\ngarbage\n x\nSubject: s\n",
	            "Subject", "s");
	check_field("From sender Mon Jan  1\nFrom: f\n", "From", "f");
	/* a name that is a prefix of another field's */
	check_field("Subject-X: no\nSubject: yes\n", "Subject", "yes");
	/* mixed line ends, a bare CR is data */
	check_field("Subject: a\r\n b\n c\r\n", "Subject", "a b c");
	check_field("Subject: a\rb\r\n", "Subject", "a\rb");
	/* a folded header, white space kept as it was */
	check_field("Subject: =?utf-8?q?a?=\r\n =?utf-8?q?b?=\r\n", "Subject",
	            "=?utf-8?q?a?= =?utf-8?q?b?=");
}

static void test_field_nul_garbage(void **state)
{
	static const char h[] = "\0\0garbage\xff\xfe\n"
	                        "X: \0\n"
	                        "Subject: a\0b\xff\r\n"
	                        " c\0\r\n"
	                        "\r\n";
	char *v;

	(void)state;
	v = field(h, sizeof(h) - 1, "Subject", 0);
	assert_string_equal(v, "a b\xff c");
	free(v);
	/* the length counts, not a NUL */
	v = field("Subject: abc\n", 11, "Subject", 0);
	assert_string_equal(v, "ab");
	free(v);
	/* bad names */
	field("Subject: x\n", 11, NULL, -EINVAL);
	field("Subject: x\n", 11, "", -EINVAL);
	field("Subject: x\n", 11, "Subject:", -EINVAL);
	field("Subject: x\n", 11, "Sub ject", -EINVAL);
	field("Subject: x\n", 11, "Subj\xc3\xa9", -EINVAL);
	field(NULL, 5, "Subject", -EINVAL);
	field(NULL, 0, "Subject", -ENOENT);
}

static void test_header_decoded(void **state)
{
	static const char h[] =
	        "Subject: =?utf-8?q?caf=C3=A9?=\r\n =?utf-8?q?_ok?=\r\n"
	        "From: =?iso-8859-1?q?Andr=E9?= <a@b>\r\n"
	        "Date: Tue, 2 Jan 2024 12:00:00 +0100 (CET)\r\n"
	        "Message-ID:\r\n <=?utf-8?q?x?=@example.org>\r\n"
	        "\r\n";
	char *v;

	(void)state;
	assert_int_equal(mime_header_decoded(h, strlen(h), "Subject", &v), 0);
	assert_string_equal(v, "caf\xc3\xa9 ok");
	free(v);
	assert_int_equal(mime_header_decoded(h, strlen(h), "from", &v), 0);
	assert_string_equal(v, "Andr\xc3\xa9 <a@b>");
	free(v);
	assert_int_equal(mime_header_decoded(h, strlen(h), "Date", &v), 0);
	assert_string_equal(v, "Tue, 2 Jan 2024 12:00:00 +0100 (CET)");
	free(v);
	assert_int_equal(mime_header_decoded(h, strlen(h), "Message-ID", &v),
	                 0);
	assert_string_equal(v, "<=?utf-8?q?x?=@example.org>");
	free(v);
	v = NULL;
	assert_int_equal(mime_header_decoded(h, strlen(h), "To", &v), -ENOENT);
	assert_null(v);
	assert_int_equal(mime_header_decoded(h, strlen(h), "", &v), -EINVAL);
	/* an 8-bit Message-ID still comes out as safe UTF-8 */
	assert_int_equal(mime_header_decoded("Message-Id: <\xe9\x01@x>\n", 19,
	                                     "message-id", &v),
	                 0);
	assert_string_equal(v, "<\xc3\xa9 @x>");
	free(v);
}

static char *repeat(const char *prefix, const char *unit, size_t count,
                    const char *suffix, size_t *len_r)
{
	size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
	size_t len = pl + ul * count + sl;
	char *s = malloc(len + 1);

	assert_non_null(s);
	memcpy(s, prefix, pl);
	for (size_t i = 0; i < count; i++)
		memcpy(s + pl + i * ul, unit, ul);
	memcpy(s + pl + ul * count, suffix, sl + 1);
	*len_r = len;
	return s;
}

static void test_long(void **state)
{
	size_t len, n;
	char *h, *v, *out;

	(void)state;
	/* a 300 KB field of 3-byte characters: cut at a character */
	h = repeat("Subject: ", "\xe2\x82\xac", 100000, "\r\n\r\n", &len);
	v = field(h, len, "Subject", 0);
	n = strlen(v);
	assert_true(n <= MIME_FIELD_MAX);
	assert_int_equal(n % 3, 0);
	assert_true(n > MIME_FIELD_MAX - 3);
	out = decode_n(v, n);
	assert_int_equal(strlen(out), MIME_DECODED_MAX / 3 * 3);
	assert_int_equal(memcmp(out, v, strlen(out)), 0);
	free(out);
	free(v);
	assert_int_equal(mime_header_decoded(h, len, "Subject", &out), 0);
	assert_true(text_ok(out));
	assert_int_equal(strlen(out), MIME_DECODED_MAX / 3 * 3);
	free(out);
	free(h);

	/* one long line of ASCII, and a field after it */
	h = repeat("X-Long: ", "a", 2000000, "\r\nSubject: s\r\n", &len);
	v = field(h, len, "X-Long", 0);
	assert_int_equal(strlen(v), MIME_FIELD_MAX);
	free(v);
	v = field(h, len, "Subject", 0);
	assert_string_equal(v, "s");
	free(v);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), MIME_DECODED_MAX);
	free(out);
	free(h);

	/* many folded lines */
	h = repeat("Subject: x", "\r\n y", 100000, "\r\n", &len);
	v = field(h, len, "Subject", 0);
	assert_int_equal(strlen(v), 1 + 2 * 100000);
	free(v);
	free(h);

	/* a word whose conversion fills iconv's output buffer many times */
	h = repeat("=?koi8-r?q?", "=F0", 2000, "?=", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), 2 * 2000);
	for (size_t i = 0; i < 2000; i++)
		assert_memory_equal(out + 2 * i, "\xd0\x9f", 2);
	free(out);
	free(h);
	/* and the bound */
	h = repeat("=?iso-2022-jp?b?GyRC", "MDAwMDAw", 30000, "?=", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), MIME_DECODED_MAX / 3 * 3);
	free(out);
	free(h);

	/* many encoded words, joined into one run */
	h = repeat("", "=?utf-8?q?=C3?= =?utf-8?q?=A9?= ", 20000, "", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), 2 * 20000 + 1); /* the last " " */
	free(out);
	free(h);

	/* hostile: many "=?" that never make a word; must stay linear */
	h = repeat("", "=?", 1000000, "", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), MIME_DECODED_MAX);
	free(out);
	free(h);
	h = repeat("", "=?a?q?", 300000, "", &len);
	out = decode_n(h, len);
	free(out);
	free(h);
	h = repeat("", "=?x-unknown?q?a?= ", 20000, "", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), MIME_DECODED_MAX);
	assert_memory_equal(out, h, MIME_DECODED_MAX);
	free(out);
	free(h);
	/* 8-bit garbage, three bytes of output for each */
	h = repeat("", "\x80", 100000, "", &len);
	out = decode_n(h, len);
	assert_int_equal(strlen(out), MIME_DECODED_MAX / 3 * 3);
	free(out);
	free(h);
}

/* Every prefix of some tricky inputs decodes to valid text. */
static void test_prefixes(void **state)
{
	static const char *const in[] = {
	        "=?utf-8?b?w6nDqcOp?= =?utf-8?q?=E2=82=AC?= x",
	        "=?ISO-2022-JP?B?GyRCN29MPiVGJTklSBsoQiAbJEJGfEtcOGwbKEI=?=",
	        "=?utf-16?b?2D3cSQ==?= \xe2\x82\xac\xf0\x9f\x91\x89",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(in); i++) {
		for (size_t n = 0; n <= strlen(in[i]); n++)
			free(decode_n(in[i], n));
	}
}

/* The shared corpus */

static char corpus_dir[2048];

static bool corpus_find(void)
{
	const char *env = getenv("MAILFS_CORPUS");
	struct stat st;

	if (env != NULL && *env != '\0') {
		snprintf(corpus_dir, sizeof(corpus_dir), "%s", env);
		return true; /* set on purpose: must be there */
	}
	env = getenv("MAILFS_SOURCE");
	if (env != NULL && *env != '\0') {
		snprintf(corpus_dir, sizeof(corpus_dir), "%s/tests/corpus", env);
	} else {
		const char *file = __FILE__;
		const char *slash = strrchr(file, '/');
		int n = slash != NULL ? (int)(slash - file) : 0;

		/* <source>/tests/test_mime.c -> <source>/tests/corpus */
		snprintf(corpus_dir, sizeof(corpus_dir), "%.*s%scorpus", n,
		         file, slash != NULL ? "/" : "");
	}
	return stat(corpus_dir, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	assert_non_null(f);
	do {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	fclose(f);
	buf[len] = '\0';
	*len_r = len;
	return buf;
}

struct corpus_stats {
	size_t messages;
	size_t subjects;
	size_t froms;
	size_t encoded; /* fields that held "=?" */
};

static void check_message(const char *path, const char *m, size_t len,
                          struct corpus_stats *st)
{
	static const char *const names[] = {"Subject", "From", "Date",
	                                    "Message-ID"};

	st->messages++;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		char *raw = NULL, *v = NULL;
		int rc = mime_header_field(m, len, names[i], &raw);

		if (rc == -ENOENT)
			continue;
		assert_int_equal(rc, 0);
		if (i == 0)
			st->subjects++;
		if (i == 1)
			st->froms++;
		if (strstr(raw, "=?") != NULL)
			st->encoded++;
		assert_int_equal(mime_header_decoded(m, len, names[i], &v), 0);
		if (!text_ok(v))
			fail_msg("%s: %s is not valid text", path, names[i]);
		free(v);
		v = NULL;
		assert_int_equal(mime_decode_header(raw, strlen(raw), &v), 0);
		assert_true(text_ok(v));
		free(v);
		free(raw);
	}
}

static void check_file(const char *path, struct corpus_stats *st)
{
	size_t len, n = strlen(path);
	char *buf = read_file(path, &len);

	if (n > 5 && strcmp(path + n - 5, ".mbox") == 0) {
		/* Split at "From " lines. */
		size_t start = 0;

		for (size_t i = 0; i <= len; i++) {
			bool at_from = i < len &&
			               (i == 0 || buf[i - 1] == '\n') &&
			               len - i >= 5 &&
			               memcmp(buf + i, "From ", 5) == 0;

			if (!at_from && i < len)
				continue;
			if (i > start) {
				const char *nl =
				        memchr(buf + start, '\n', i - start);
				size_t body =
				        nl != NULL ? (size_t)(nl - buf) + 1 : i;

				check_message(path, buf + body, i - body, st);
			}
			start = i;
		}
	} else {
		check_message(path, buf, len, st);
	}
	free(buf);
}

static void walk(const char *dir, struct corpus_stats *st)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		fail_msg("cannot open %s: %s", dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		char path[4096];
		struct stat sb;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		assert_int_equal(stat(path, &sb), 0);
		if (S_ISDIR(sb.st_mode)) {
			walk(path, st);
			continue;
		}
		if (strncmp(de->d_name, "LICENSE", 7) == 0 ||
		    strncmp(de->d_name, "COPYING", 7) == 0 ||
		    strcmp(de->d_name, "README.md") == 0)
			continue;
		check_file(path, st);
	}
	closedir(d);
}

static void test_corpus_all(void **state)
{
	struct corpus_stats st = {0};

	(void)state;
	if (!corpus_find())
		skip();
	walk(corpus_dir, &st);
	/* ~180 files, the mbox files hold several messages each */
	assert_true(st.messages >= 200);
	assert_true(st.subjects >= 150);
	assert_true(st.froms >= 150);
	assert_true(st.encoded >= 15);
}

struct corpus_case {
	const char *file;
	const char *name;
	const char *want;
};

static void test_corpus_values(void **state)
{
	static const struct corpus_case c[] = {
	        /* split UTF-8 character between words of the same charset,
	         * RFC 2231 languages, three charset spellings */
	        {"spamassassin/nice/unicode1", "Subject",
	         "Doma\xc4\x8d"
	         "e omre\xc5\xbe"
	         "je"},
	        {"spamassassin/nice/unicode1", "From",
	         "Maril\xc3\xb9 Gioffr\xc3\xa9 \xe2\x99\xa5 "
	         "<Maril\xc3\xb9.Gioffr\xc3\xa9@esempio-universit\xc3\xa0.it>"},
	        /* UTF-16 surrogate pair after a little-endian BOM */
	        {"spamassassin/nice/unicode2", "From", "\xf0\x9f\x91\x89 test"},
	        /* Traditional Chinese, four folded B words */
	        {"spamassassin/nice/unicode2", "Subject",
	         "\xe3\x80\x90\xe9\x87\x8d\xe8\xa6\x81\xe8\xa8\x8a\xe6\x81\xaf"
	         "\xe3\x80\x91\xe5\x8f\xb0\xe9\x9b\xbb"
	         "105\xe5\xb9\xb4"
	         "3\xe6\x9c\x88\xe9\x9b\xbb\xe8\xb2\xbb\xef\xbc\x8c\xe5\xa7\x94"
	         "\xe8\xa8\x97\xe9\x87\x91\xe8\x9e\x8d\xe6\xa9\x9f\xe6\xa7\x8b"
	         "\xe6\x89\xa3\xe7\xb9\xb3\xe6\x88\x90\xe5\x8a\x9f\xe9\x9b\xbb"
	         "\xe5\xad\x90\xe7\xb9\xb3\xe8\xb2\xbb\xe6\x86\x91\xe8\xad\x89"
	         "(\xe9\x9b\xbb\xe8\x99\x9f"
	         "07487616730)"},
	        /* Simplified Chinese in Q, LF line ends */
	        {"spamassassin/spam/unicode2", "Subject",
	         "\xe5\xa4\x96\xe8\xb4\xb8\xe5\xae\xa2\xe6\x88\xb7\xe5\xbc\x80"
	         "\xe5\x8f\x91\xef\xbc\x8c\xe5\x8a\xbf\xe5\x9c\xa8\xe5\xbf\x85"
	         "\xe8\xa1\x8c"},
	        /* GB2312 */
	        {"spamassassin/nice/cjk/gb2312.2", "Subject",
	         "RE: \xe8\xa3\x85\xe7\xa1\xac\xe7\xa2\x9f\xe9\x97\xae\xe9\xa2"
	         "\x98"},
	        {"spamassassin/nice/cjk/gb2312.2", "From",
	         "Jason Lee (\xe6\x9d\x8e\xe5\xb1\x95\xe9\x94\x8b) "
	         "<Jason_Lee@quantatw.com>"},
	        /* UTF-16 without a byte order mark, little-endian */
	        {"spamassassin/spam/utf16.eml", "Subject",
	         "Design and manufacturing"},
	        /* CRLF, Q with =XX for ASCII, an emoji, folded */
	        {"postal-mime/calendar-event.eml", "Subject",
	         "Invitation: Test event \xe2\x8f\xb0 @ Thu Apr 11, 2024 11am "
	         "- 12pm (GMT+3) (andris@ethereal.email)"},
	        /* raw Big5, no encoded words: read as Windows-1252 */
	        {"spamassassin/nice/cjk/big5-base64.1", "Date",
	         "Tue, 19 Jun 2001 01:16:04 +0800 (CST)"},
	        {"spamassassin/nice/cjk/gb2312.1", "Message-ID",
	         "<1811099-2200312752653615@pc3>"},
	};

	(void)state;
	if (!corpus_find())
		skip();
	for (size_t i = 0; i < ARRAY_SIZE(c); i++) {
		char path[4096];
		size_t len;
		char *buf, *v = NULL;

		snprintf(path, sizeof(path), "%s/%s", corpus_dir, c[i].file);
		buf = read_file(path, &len);
		assert_int_equal(mime_header_decoded(buf, len, c[i].name, &v),
		                 0);
		if (strcmp(v, c[i].want) != 0)
			fail_msg("%s %s\n  got  \"%s\"\n  want \"%s\"",
			         c[i].file, c[i].name, v, c[i].want);
		free(v);
		free(buf);
	}
}

/* Raw 8-bit Big5 and GB2312 subjects without a charset: not UTF-8, so
 * Windows-1252, which at least keeps the ASCII and is valid text. */
static void test_corpus_raw_8bit(void **state)
{
	char path[4096];
	size_t len;
	char *buf, *v;

	(void)state;
	if (!corpus_find())
		skip();
	snprintf(path, sizeof(path), "%s/spamassassin/nice/cjk/big5-base64.1",
	         corpus_dir);
	buf = read_file(path, &len);
	assert_int_equal(mime_header_decoded(buf, len, "Subject", &v), 0);
	/* 0xb9 0x64 0xc3 0xfb */
	assert_memory_equal(v, "[SLAT-talk] \xc2\xb9\x64\xc3\x83\xc3\xbb", 19);
	assert_true(text_ok(v));
	free(v);
	free(buf);
	snprintf(path, sizeof(path), "%s/spamassassin/nice/cjk/gb2312.1",
	         corpus_dir);
	buf = read_file(path, &len);
	assert_int_equal(mime_header_decoded(buf, len, "From", &v), 0);
	/* 0xcc 0xa8 */
	assert_memory_equal(v, "\"\xc3\x8c\xc2\xa8", 5);
	assert_true(strlen(v) > 16);
	assert_string_equal(v + strlen(v) - 16, "\" <1234@e34.com>");
	free(v);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_rfc2047_examples),
	        cmocka_unit_test(test_q),
	        cmocka_unit_test(test_b),
	        cmocka_unit_test(test_invalid_base64),
	        cmocka_unit_test(test_malformed),
	        cmocka_unit_test(test_unknown_charset),
	        cmocka_unit_test(test_adjacent),
	        cmocka_unit_test(test_split_multibyte),
	        cmocka_unit_test(test_charsets),
	        cmocka_unit_test(test_raw_8bit),
	        cmocka_unit_test(test_controls),
	        cmocka_unit_test(test_field),
	        cmocka_unit_test(test_field_nul_garbage),
	        cmocka_unit_test(test_header_decoded),
	        cmocka_unit_test(test_long),
	        cmocka_unit_test(test_prefixes),
	        cmocka_unit_test(test_corpus_all),
	        cmocka_unit_test(test_corpus_values),
	        cmocka_unit_test(test_corpus_raw_8bit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
