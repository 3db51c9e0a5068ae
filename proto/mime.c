/* Header fields and RFC 2047 encoded words, decoded to UTF-8.  The rules are
 * in mime.h; comments here say why the code does what it does. */
#include "proto/mime.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/b64.h"

/* Longest "charset*language" of an encoded word.  RFC 2047 limits the
 * whole word to 75 characters. */
#define CHARSET_MAX 75

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static bool is_lws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static unsigned char ascii_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Case-insensitive ASCII comparison; strncasecmp() follows the locale. */
static bool ascii_eq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (ascii_lower(a[i]) != ascii_lower(b[i]))
			return false;
	}
	return true;
}

/* Length of the valid UTF-8 sequence at s (1 to 4) and its code point, or
 * 0 if s does not start one: overlong forms, surrogates, code points above
 * U+10FFFF and truncated sequences are invalid. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp_r)
{
	uint32_t cp;
	size_t k;

	if (s[0] < 0x80) {
		*cp_r = s[0];
		return 1;
	}
	if (s[0] < 0xc2)
		return 0;
	if (s[0] < 0xe0) {
		k = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] < 0xf0) {
		k = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] < 0xf5) {
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
	if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*cp_r = cp;
	return k;
}

static bool utf8_valid(const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t k;

	for (size_t i = 0; i < n; i += k) {
		k = utf8_next(s + i, n - i, &cp);
		if (k == 0)
			return false;
	}
	return true;
}

/* Windows-1252 0x80..0x9f; 0xa0..0xff are the same code points. */
static const uint16_t cp1252_c1[32] = {
        0x20ac, 0xfffd, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
        0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0xfffd, 0x017d, 0xfffd,
        0xfffd, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
        0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0xfffd, 0x017e, 0x0178,
};

static uint32_t cp1252(unsigned char c)
{
	return c >= 0x80 && c < 0xa0 ? cp1252_c1[c - 0x80] : c;
}

/* The decoded text.  Once a character does not fit, nothing more is
 * appended, so a cut text is a prefix ending at a character boundary. */
struct obuf {
	char *p; /* owned */
	size_t len;
	size_t cap;
	bool full;
	bool nomem;
};

static bool ob_done(const struct obuf *o)
{
	return o->full || o->nomem;
}

static void ob_bytes(struct obuf *o, const char *s, size_t n)
{
	if (ob_done(o))
		return;
	if (o->len + n > MIME_DECODED_MAX) {
		o->full = true;
		return;
	}
	if (o->len + n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 128;
		char *p;

		while (cap < o->len + n + 1)
			cap *= 2;
		if (cap > MIME_DECODED_MAX + 1)
			cap = MIME_DECODED_MAX + 1;
		p = realloc(o->p, cap);
		if (p == NULL) {
			o->nomem = true;
			return;
		}
		o->p = p;
		o->cap = cap;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

/* Every character of the output goes through here: this is where controls
 * are replaced, so no path can let one through. */
static void ob_cp(struct obuf *o, uint32_t cp)
{
	char b[4];
	size_t n;

	if (cp == 0xfeff)
		return;
	if ((cp < 0x20 && cp != '\t') || (cp >= 0x7f && cp < 0xa0))
		cp = ' ';
	else if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		cp = 0xfffd;
	if (cp < 0x80) {
		b[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		b[0] = (char)(0xf0 | cp >> 18);
		b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	ob_bytes(o, b, n);
}

/* UTF-8 with one U+FFFD for each byte that does not start a valid
 * sequence. */
static void ob_utf8(struct obuf *o, const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t k;

	for (size_t i = 0; i < n && !ob_done(o); i += k) {
		k = utf8_next(s + i, n - i, &cp);
		if (k == 0) {
			cp = 0xfffd;
			k = 1;
		}
		ob_cp(o, cp);
	}
}

static void ob_1252(struct obuf *o, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n && !ob_done(o); i++)
		ob_cp(o, cp1252(s[i]));
}

static int ob_finish(struct obuf *o, char **utf8_r)
{
	if (o->nomem) {
		free(o->p);
		return -ENOMEM;
	}
	if (o->p == NULL) {
		o->p = malloc(1);
		if (o->p == NULL)
			return -ENOMEM;
	}
	o->p[o->len] = '\0';
	*utf8_r = o->p;
	return 0;
}

/* Charsets */

enum cs_kind {
	CS_UTF8,
	CS_1252,
	CS_ICONV,
};

static const char *const cs_utf8[] = {"utf-8", "utf8"};

static const char *const cs_1252[] = {
        "us-ascii",     "ascii",     "us",         "ansi_x3.4-1968",
        "iso-8859-1",   "iso8859-1", "iso_8859-1", "iso-ir-100",
        "latin1",       "l1",        "cp819",      "ibm819",
        "windows-1252", "cp1252",    "x-cp1252",
};

/* Supersets that real mail labelled with the first name uses. */
static const struct {
	const char *name;
	const char *iconv;
} cs_alias[] = {
        {"gb2312", "GB18030"},
        {"gbk", "GB18030"},
        {"x-gbk", "GB18030"},
        {"cp936", "GB18030"},
        {"euc-cn", "GB18030"},
        {"csgb2312", "GB18030"},
        {"euc-kr", "CP949"},
        {"ks_c_5601-1987", "CP949"},
        {"ks_c_5601", "CP949"},
        {"ksc5601", "CP949"},
        {"ksc_5601", "CP949"},
        {"shift_jis", "CP932"},
        {"shift-jis", "CP932"},
        {"sjis", "CP932"},
        {"x-sjis", "CP932"},
        {"ms_kanji", "CP932"},
        {"csshiftjis", "CP932"},
        {"big5", "CP950"},
        {"x-x-big5", "CP950"},
        {"iso-2022-jp", "ISO-2022-JP-3"},
        {"csiso2022jp", "ISO-2022-JP-3"},
        {"iso-8859-8-i", "ISO-8859-8"},
        {"iso-8859-6-i", "ISO-8859-6"},
        {"unicode-1-1-utf-7", "UTF-7"},
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static bool cs_is(const char *cs, size_t n, const char *const *list,
                  size_t count)
{
	for (size_t i = 0; i < count; i++) {
		if (strlen(list[i]) == n && ascii_eq(cs, list[i], n))
			return true;
	}
	return false;
}

/* The charset of a run of encoded words. */
struct run {
	enum cs_kind kind;
	char name[CHARSET_MAX + 1]; /* as the word spells it */
	iconv_t cd;                 /* CS_ICONV */
	bool utf16_guess;           /* "UTF-16": endianness unstated */
	size_t unit;                /* bytes to skip past an invalid one */
	unsigned char *buf;         /* owned: the words' bytes */
	size_t len;
	size_t cap;
};

static iconv_t cs_iconv_open(const char *name)
{
	return iconv_open("UTF-8", name);
}

/* Set up r for charset cs.  Returns false if the charset is unknown. */
static bool run_open(struct run *r, const char *cs, size_t n)
{
	const char *mapped = NULL;

	memcpy(r->name, cs, n);
	r->name[n] = '\0';
	r->len = 0;
	r->utf16_guess = false;
	r->unit = 1;
	if (cs_is(cs, n, cs_utf8, ARRAY_SIZE(cs_utf8))) {
		r->kind = CS_UTF8;
		return true;
	}
	if (cs_is(cs, n, cs_1252, ARRAY_SIZE(cs_1252))) {
		r->kind = CS_1252;
		return true;
	}
	r->kind = CS_ICONV;
	for (size_t i = 0; i < ARRAY_SIZE(cs_alias); i++) {
		if (cs_is(cs, n, &cs_alias[i].name, 1)) {
			mapped = cs_alias[i].iconv;
			break;
		}
	}
	r->cd = (iconv_t)-1;
	if (mapped != NULL)
		r->cd = cs_iconv_open(mapped);
	if (r->cd == (iconv_t)-1)
		r->cd = cs_iconv_open(r->name);
	if (r->cd == (iconv_t)-1)
		return false;
	if ((n >= 6 && ascii_eq(cs, "utf-16", 6)) ||
	    (n >= 5 && ascii_eq(cs, "ucs-2", 5)))
		r->unit = 2;
	else if ((n >= 6 && ascii_eq(cs, "utf-32", 6)) ||
	         (n >= 5 && ascii_eq(cs, "ucs-4", 5)))
		r->unit = 4;
	r->utf16_guess = n == 6 && ascii_eq(cs, "utf-16", 6);
	return true;
}

static void run_close(struct run *r)
{
	if (r->kind == CS_ICONV && r->cd != (iconv_t)-1)
		iconv_close(r->cd);
	r->cd = (iconv_t)-1;
	r->kind = CS_UTF8;
}

/* Windows writes UTF-16 little-endian without a byte order mark, and
 * labels it "utf-16", which by RFC 2781 means big-endian.  Text in mail
 * headers is mostly Latin script, whose high bytes are zero. */
static void run_guess_utf16(struct run *r)
{
	size_t zero[2] = {0, 0};
	iconv_t cd;

	if (r->len >= 2 && ((r->buf[0] == 0xfe && r->buf[1] == 0xff) ||
	                    (r->buf[0] == 0xff && r->buf[1] == 0xfe)))
		return;
	for (size_t i = 0; i < r->len; i++) {
		if (r->buf[i] == 0)
			zero[i & 1]++;
	}
	cd = cs_iconv_open(zero[1] > zero[0] ? "UTF-16LE" : "UTF-16BE");
	if (cd == (iconv_t)-1)
		return;
	iconv_close(r->cd);
	r->cd = cd;
}

static void run_iconv(struct run *r, struct obuf *o)
{
	char *in = (char *)r->buf;
	size_t inleft = r->len;
	char tmp[1024];

	if (r->utf16_guess)
		run_guess_utf16(r);
	iconv(r->cd, NULL, NULL, NULL, NULL);
	while (inleft > 0 && !ob_done(o)) {
		char *out = tmp;
		size_t outleft = sizeof(tmp);
		char *in0 = in;
		size_t rc = iconv(r->cd, &in, &inleft, &out, &outleft);
		int err = errno;

		ob_utf8(o, (unsigned char *)tmp, (size_t)(out - tmp));
		if (rc != (size_t)-1)
			break;
		if (err == E2BIG && (in != in0 || out != tmp))
			continue;
		/* An invalid or truncated sequence, or no progress. */
		ob_cp(o, 0xfffd);
		if (err != EILSEQ)
			break;
		if (inleft <= r->unit)
			break;
		in += r->unit;
		inleft -= r->unit;
	}
	if (!ob_done(o)) {
		/* Return to the initial shift state: UTF-8 has none, but a
		 * conversion may keep a character back. */
		char *out = tmp;
		size_t outleft = sizeof(tmp);

		if (iconv(r->cd, NULL, NULL, &out, &outleft) != (size_t)-1)
			ob_utf8(o, (unsigned char *)tmp, (size_t)(out - tmp));
	}
}

/* Convert the bytes gathered for a run and empty it. */
static void run_flush(struct run *r, struct obuf *o)
{
	if (r->len == 0)
		return;
	switch (r->kind) {
	case CS_UTF8: ob_utf8(o, r->buf, r->len); break;
	case CS_1252: ob_1252(o, r->buf, r->len); break;
	case CS_ICONV: run_iconv(r, o); break;
	}
	r->len = 0;
}

static bool run_reserve(struct run *r, size_t n)
{
	size_t cap;
	unsigned char *p;

	if (r->len + n <= r->cap)
		return true;
	cap = r->cap ? r->cap : 256;
	while (cap < r->len + n)
		cap *= 2;
	p = realloc(r->buf, cap);
	if (p == NULL)
		return false;
	r->buf = p;
	r->cap = cap;
	return true;
}

/* Encoded words */

struct eword {
	size_t end;     /* offset just past the closing "?=" */
	const char *cs; /* charset, language removed */
	size_t cs_len;
	char enc; /* 'B' or 'Q' */
	const char *text;
	size_t text_len;
};

/* The RFC 2047 token alphabet: RFC 2045 token minus "." and "=", and "*"
 * for RFC 2231.  Excluding "/" and "," also keeps iconv_open() from seeing
 * "//TRANSLIT" and the like. */
static bool is_cs_char(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	return c != '\0' && strchr("!#$%&'*+-^_`{|}~", c) != NULL;
}

static int hex_val(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = ascii_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parse the encoded word that starts with "=?" at s + pos.
 *
 * The scan for the charset and for the text each stops at the first "?" or
 * at a byte that cannot be there, so an attempt that fails has only looked
 * at bytes that cannot start another word before where it stopped: the
 * caller's scan over many failing "=?" stays linear. */
static bool ew_parse(const char *s, size_t len, size_t pos, struct eword *w)
{
	size_t i = pos + 2;
	size_t start = i;
	const char *star;

	while (i < len && i - start <= CHARSET_MAX && is_cs_char(s[i]))
		i++;
	if (i >= len || s[i] != '?' || i == start || i - start > CHARSET_MAX)
		return false;
	w->cs = s + start;
	star = memchr(w->cs, '*', i - start);
	w->cs_len = star != NULL ? (size_t)(star - w->cs) : i - start;
	if (w->cs_len == 0)
		return false;
	i++;
	if (i + 1 >= len || s[i + 1] != '?')
		return false;
	w->enc = (char)(ascii_lower(s[i]) == 'b'   ? 'B'
	                : ascii_lower(s[i]) == 'q' ? 'Q'
	                                           : 0);
	if (w->enc == 0)
		return false;
	i += 2;
	start = i;
	while (i < len && s[i] > ' ' && s[i] < 0x7f && s[i] != '?')
		i++;
	if (i + 1 >= len || s[i] != '?' || s[i + 1] != '=')
		return false;
	w->text = s + start;
	w->text_len = i - start;
	w->end = i + 2;
	if (w->enc == 'B') {
		for (size_t k = 0; k < w->text_len; k++) {
			if (w->text[k] != '=' &&
			    b64_value(b64_std, (unsigned char)w->text[k]) < 0)
				return false;
		}
	}
	return true;
}

/* Append the bytes of w to the run.  Returns false when out of memory. */
static bool ew_decode(const struct eword *w, struct run *r)
{
	const unsigned char *t = (const unsigned char *)w->text;
	size_t n = w->text_len;
	uint32_t acc = 0;
	int q = 0;

	if (!run_reserve(r, n))
		return false;
	if (w->enc == 'Q') {
		for (size_t i = 0; i < n; i++) {
			int hi, lo;

			if (t[i] == '_') {
				r->buf[r->len++] = ' ';
			} else if (t[i] == '=' && i + 2 < n &&
			           (hi = hex_val(t[i + 1])) >= 0 &&
			           (lo = hex_val(t[i + 2])) >= 0) {
				r->buf[r->len++] =
				        (unsigned char)(hi << 4 | lo);
				i += 2;
			} else {
				r->buf[r->len++] = t[i];
			}
		}
		return true;
	}
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '=') {
			q = 0;
			acc = 0;
			continue;
		}
		acc = (acc << 6 | (uint32_t)b64_value(b64_std, t[i])) &
		      0xffffff;
		q++;
		if (q == 2)
			r->buf[r->len++] = (unsigned char)(acc >> 4);
		else if (q == 3)
			r->buf[r->len++] = (unsigned char)(acc >> 2);
		else if (q == 4) {
			r->buf[r->len++] = (unsigned char)acc;
			q = 0;
			acc = 0;
		}
	}
	return true;
}

enum raw_kind {
	RAW_UTF8,
	RAW_1252,
	RAW_JIS,
};

/* How to read the text outside encoded words.  Old Japanese mailers put
 * ISO-2022-JP in headers as it is: 7-bit, so it would pass for ASCII, but
 * its escape sequences would turn into spaces and its kanji into ASCII
 * garbage. */
static enum raw_kind raw_kind(const char *s, size_t len)
{
	bool esc = false;

	if (!utf8_valid((const unsigned char *)s, len))
		return RAW_1252;
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)s[i] >= 0x80)
			return RAW_UTF8;
		if (s[i] == 0x1b && i + 2 < len &&
		    ((s[i + 1] == '$' && (s[i + 2] == 'B' || s[i + 2] == '@' ||
		                          s[i + 2] == '(')) ||
		     (s[i + 1] == '(' && s[i + 2] == 'I')))
			esc = true;
	}
	return esc ? RAW_JIS : RAW_UTF8;
}

static void emit_raw(struct obuf *o, const char *s, size_t n,
                     enum raw_kind kind)
{
	struct run r = {.kind = CS_UTF8, .cd = (iconv_t)-1};

	if (n == 0)
		return;
	if (kind == RAW_JIS && run_open(&r, "iso-2022-jp", 11)) {
		if (run_reserve(&r, n)) {
			memcpy(r.buf, s, n);
			r.len = n;
			run_flush(&r, o);
		} else {
			o->nomem = true;
		}
		run_close(&r);
		free(r.buf);
		return;
	}
	if (kind == RAW_1252)
		ob_1252(o, (const unsigned char *)s, n);
	else
		ob_utf8(o, (const unsigned char *)s, n);
}

static int decode(const char *s, size_t len, bool words, char **utf8_r)
{
	struct obuf o = {0};
	struct run r = {.kind = CS_UTF8, .cd = (iconv_t)-1};
	enum raw_kind raw;
	size_t lit = 0; /* start of the literal text not yet emitted */
	size_t i = 0;

	if (s == NULL)
		len = 0;
	/* Encoded words are ASCII, so all of the raw text is valid UTF-8
	 * exactly when the whole input is. */
	raw = raw_kind(s, len);
	while (words && i + 1 < len && !ob_done(&o)) {
		struct eword w;
		size_t j;

		if (s[i] != '=' || s[i + 1] != '?' ||
		    !ew_parse(s, len, i, &w) || !run_open(&r, w.cs, w.cs_len)) {
			i++;
			continue;
		}
		emit_raw(&o, s + lit, i - lit, raw);
		/* A run of encoded words with white space between them. */
		for (;;) {
			size_t k;

			j = w.end;
			if (!ew_decode(&w, &r)) {
				o.nomem = true;
				break;
			}
			for (k = j; k < len && is_lws(s[k]); k++)
				;
			if (k + 1 >= len || s[k] != '=' || s[k + 1] != '?' ||
			    !ew_parse(s, len, k, &w))
				break;
			if (w.cs_len == strlen(r.name) &&
			    ascii_eq(w.cs, r.name, w.cs_len))
				continue;
			run_flush(&r, &o);
			run_close(&r);
			if (!run_open(&r, w.cs, w.cs_len)) {
				/* Unknown: the word is literal text, and so is
				 * the white space before it. */
				break;
			}
		}
		run_flush(&r, &o);
		run_close(&r);
		i = lit = j;
	}
	emit_raw(&o, s + lit, len - lit, raw);
	free(r.buf);
	return ob_finish(&o, utf8_r);
}

int mime_decode_header(const char *raw, size_t len, char **utf8_r)
{
	return decode(raw, len, true, utf8_r);
}

int mime_decode_raw(const char *raw, size_t len, char **utf8_r)
{
	return decode(raw, len, false, utf8_r);
}

/* Header fields */

static bool name_valid(const char *name, size_t *len_r)
{
	size_t n;

	if (name == NULL)
		return false;
	for (n = 0; name[n] != '\0'; n++) {
		unsigned char c = name[n];

		if (c <= ' ' || c >= 0x7f || c == ':')
			return false;
	}
	*len_r = n;
	return n > 0;
}

/* Does the line at h (n bytes, no line end) start field name?  Sets
 * *value_r to the offset just past the ":". */
static bool field_match(const char *h, size_t n, const char *name,
                        size_t name_len, size_t *value_r)
{
	size_t i = name_len;

	if (n < name_len || !ascii_eq(h, name, name_len))
		return false;
	while (i < n && is_wsp(h[i]))
		i++;
	if (i >= n || h[i] != ':')
		return false;
	*value_r = i + 1;
	return true;
}

static bool is_line_break(const char *h, size_t len, size_t i, size_t *nl_r)
{
	if (h[i] == '\n') {
		*nl_r = i;
		return true;
	}
	if (h[i] == '\r' && i + 1 < len && h[i + 1] == '\n') {
		*nl_r = i + 1;
		return true;
	}
	return false;
}

/* The unfolded, trimmed value starting at h + i. */
static int field_value(const char *h, size_t len, size_t i, char **value_r)
{
	/* A few bytes more than the limit, to see where a UTF-8 sequence
	 * that crosses it starts. */
	size_t cap = MIME_FIELD_MAX + 4;
	size_t n = 0;
	char *v;

	if (cap > len - i)
		cap = len - i;
	v = malloc(cap + 1);
	if (v == NULL)
		return -ENOMEM;
	for (; i < len && n < cap; i++) {
		char c = h[i];
		size_t nl;

		if (is_line_break(h, len, i, &nl)) {
			if (nl + 1 < len && is_wsp(h[nl + 1])) {
				i = nl;
				continue;
			}
			break;
		}
		if (c == '\0')
			c = ' ';
		if (n == 0 && is_lws(c))
			continue;
		v[n++] = c;
	}
	if (n > MIME_FIELD_MAX) {
		size_t cut = MIME_FIELD_MAX;

		while (cut > MIME_FIELD_MAX - 3 &&
		       ((unsigned char)v[cut] & 0xc0) == 0x80)
			cut--;
		if (((unsigned char)v[cut] & 0xc0) == 0x80)
			cut = MIME_FIELD_MAX;
		n = cut;
	}
	while (n > 0 && is_lws(v[n - 1]))
		n--;
	v[n] = '\0';
	*value_r = v;
	return 0;
}

int mime_header_field(const char *headers, size_t len, const char *name,
                      char **value_r)
{
	size_t name_len;
	size_t i = 0;

	if (!name_valid(name, &name_len) || (headers == NULL && len > 0))
		return -EINVAL;
	while (i < len) {
		const char *nl = memchr(headers + i, '\n', len - i);
		size_t eol = nl != NULL ? (size_t)(nl - headers) : len;
		size_t value;

		if (headers[i] == '\n' ||
		    (headers[i] == '\r' &&
		     (i + 1 == len || headers[i + 1] == '\n')))
			break;
		if (!is_wsp(headers[i]) &&
		    field_match(headers + i, eol - i, name, name_len, &value))
			return field_value(headers, len, i + value, value_r);
		i = eol + 1;
	}
	return -ENOENT;
}

static const char *const id_fields[] = {
        "message-id", "in-reply-to",       "references",
        "content-id", "resent-message-id",
};

int mime_header_decoded(const char *headers, size_t len, const char *name,
                        char **utf8_r)
{
	char *value;
	int rc;

	rc = mime_header_field(headers, len, name, &value);
	if (rc < 0)
		return rc;
	if (cs_is(name, strlen(name), id_fields, ARRAY_SIZE(id_fields)))
		rc = mime_decode_raw(value, strlen(value), utf8_r);
	else
		rc = mime_decode_header(value, strlen(value), utf8_r);
	free(value);
	return rc;
}
