/* Fuzz target for the POP3 parsers of server input: the dot-unstuffing
 * machine, the line finder, the status-line parser, the STAT, UIDL, LIST
 * and CAPA parsers and the APOP timestamp finder.
 *
 * Unstuffing is differential: the input is fed whole, one byte at a time
 * and at split points drawn from its hash, and compared with a line-based
 * reference; output, bytes consumed and "done" must agree.  A complete
 * message must be empty or end in CRLF, and stuffed again and terminated
 * it must come back unchanged (nothing of the terminator leaked into it).
 * The input is then cut into lines with two limits, and every line's
 * status and listing parses are checked against the grammar.  Any disagreement
 * abort()s. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/pop3_parse.h"

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
			        __LINE__, #cond);                              \
			abort();                                               \
		}                                                              \
	} while (0)

struct buf {
	char *data;
	size_t len, cap;
};

static void buf_put(struct buf *b, const char *data, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2 + 64;
		b->data = realloc(b->data, b->cap);
		CHECK(b->data != NULL);
	}
	if (len > 0)
		memcpy(b->data + b->len, data, len);
	b->len += len;
}

static int out_cb(void *ctx, const char *data, size_t len)
{
	CHECK(len > 0);
	buf_put(ctx, data, len);
	return 0;
}

struct run {
	struct buf out;
	size_t used;
	bool done;
};

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 2685821657736338717ULL;
}

enum split { WHOLE, BYTES, RANDOM };

static void unstuff(const uint8_t *data, size_t size, enum split split,
                    uint64_t seed, struct run *r)
{
	struct pop3_dotstate s;
	struct rng rng = {seed | 1};
	size_t pos = 0;

	memset(r, 0, sizeof(*r));
	pop3_dot_init(&s);
	while (pos < size) {
		size_t n = size - pos, used = SIZE_MAX;
		int rc;

		if (split == BYTES) {
			n = 1;
		} else if (split == RANDOM) {
			size_t want = 1 + rng_next(&rng) % 9;

			if (want < n)
				n = want;
		}
		rc = pop3_unstuff(&s, (const char *)data + pos, n, &used,
		                  out_cb, &r->out);
		CHECK(rc == 0 || rc == 1);
		CHECK(used <= n);
		CHECK(rc == 1 || used == n);
		CHECK(pop3_dot_done(&s) == (rc == 1));
		r->used += used;
		pos += n;
		if (rc == 1) {
			r->done = true;
			break;
		}
	}
	if (r->done) {
		size_t used = 7;

		CHECK(pop3_unstuff(&s, "x", 1, &used, out_cb, &r->out) == 1);
		CHECK(used == 0);
	}
}

/* Lines end at CRLF only; "." alone ends; ".." loses a dot.  For the
 * incomplete last line, what the machine has already passed on. */
static void reference(const uint8_t *in, size_t len, struct run *r)
{
	const char *p = (const char *)in;
	size_t pos = 0;

	memset(r, 0, sizeof(*r));
	for (;;) {
		const char *crlf = memmem(p + pos, len - pos, "\r\n", 2);
		const char *l = p + pos;
		size_t ll;

		if (crlf == NULL) {
			ll = len - pos;
			if ((ll == 1 && l[0] == '.') ||
			    (ll == 2 && l[0] == '.' && l[1] == '\r'))
				ll = 0;
			else if (ll >= 2 && l[0] == '.' && l[1] == '.')
				l++, ll--;
			buf_put(&r->out, l, ll);
			r->used = len;
			return;
		}
		ll = (size_t)(crlf - l);
		if (ll == 1 && l[0] == '.') {
			r->done = true;
			r->used = pos + 3;
			return;
		}
		if (ll >= 2 && l[0] == '.' && l[1] == '.')
			buf_put(&r->out, l + 1, ll + 1);
		else
			buf_put(&r->out, l, ll + 2);
		pos += ll + 2;
	}
}

static void same(const struct run *a, const struct run *b)
{
	CHECK(a->done == b->done);
	CHECK(a->used == b->used);
	CHECK(a->out.len == b->out.len);
	CHECK(a->out.len == 0 ||
	      memcmp(a->out.data, b->out.data, a->out.len) == 0);
}

static void round_trip(const struct run *r)
{
	struct buf wire = {0};
	struct run again;
	bool bol = true;

	if (r->out.len > 0) {
		CHECK(r->out.len >= 2);
		CHECK(memcmp(r->out.data + r->out.len - 2, "\r\n", 2) == 0);
	}
	for (size_t i = 0; i < r->out.len; i++) {
		if (bol && r->out.data[i] == '.')
			buf_put(&wire, ".", 1);
		buf_put(&wire, &r->out.data[i], 1);
		bol = i > 0 && r->out.data[i - 1] == '\r' &&
		      r->out.data[i] == '\n';
	}
	buf_put(&wire, ".\r\n", 3);
	unstuff((const uint8_t *)wire.data, wire.len, WHOLE, 0, &again);
	CHECK(again.done && again.used == wire.len);
	CHECK(again.out.len == r->out.len);
	CHECK(r->out.len == 0 ||
	      memcmp(again.out.data, r->out.data, r->out.len) == 0);
	free(wire.data);
	free(again.out.data);
}

/* --- status lines -------------------------------------------------------- */

static bool rchar(unsigned char ch)
{
	return ch >= 0x21 && ch <= 0x7f && ch != '/' && ch != ']';
}

static void check_status(const char *line, size_t len)
{
	struct pop3_status_line st, st2;
	int rc = pop3_status_parse(line, len, &st);

	CHECK(rc == 0 || rc == -EPROTO);
	CHECK(pop3_status_parse(line, len, &st2) == rc);
	if (rc < 0)
		return;
	CHECK(memcmp(&st, &st2, sizeof(st)) == 0);
	CHECK(memchr(line, '\0', len) == NULL);
	switch (st.status) {
	case POP3_OK:
		CHECK(len >= 3 && strncasecmp(line, "+OK", 3) == 0);
		CHECK(len == 3 || line[3] == ' ');
		break;
	case POP3_ERR:
		CHECK(len >= 4 && strncasecmp(line, "-ERR", 4) == 0);
		CHECK(len == 4 || line[4] == ' ');
		break;
	case POP3_CONT:
		CHECK(line[0] == '+' && (len == 1 || line[1] == ' '));
		CHECK(st.code_len == 0);
		break;
	default: CHECK(!"unknown status");
	}
	CHECK(st.text >= line && st.text + st.text_len == line + len);
	CHECK(st.text_len == 0 || st.text[0] != ' ');
	if (st.code_len > 0) {
		bool level = false;

		CHECK(st.code > line && st.code[-1] == '[');
		CHECK(st.code + st.code_len < st.text);
		CHECK(st.code[st.code_len] == ']');
		for (size_t i = 0; i < st.code_len; i++) {
			if (st.code[i] == '/') {
				CHECK(level);
				level = false;
			} else {
				CHECK(rchar((unsigned char)st.code[i]));
				level = true;
			}
		}
		CHECK(level);
		/* A code matches itself and its first level. */
		{
			char code[POP3_MAX_LINE + 1];
			size_t first;

			memcpy(code, st.code, st.code_len);
			code[st.code_len] = '\0';
			first = strcspn(code, "/");
			CHECK(pop3_status_has_code(&st, code));
			if (first < st.code_len) {
				code[first] = '\0';
				CHECK(pop3_status_has_code(&st, code));
			}
		}
	} else {
		CHECK(!pop3_status_has_code(&st, "IN-USE"));
	}
}

static void check_timestamp(const char *line, size_t len)
{
	const char *ts;
	size_t n;

	if (pop3_apop_timestamp(line, len, &ts, &n) != 0)
		return;
	CHECK(ts >= line && ts + n <= line + len);
	CHECK(n >= 3 && n <= 255 && ts[0] == '<' && ts[n - 1] == '>');
	CHECK(memchr(ts, '@', n) != NULL);
	for (size_t i = 1; i + 1 < n; i++)
		CHECK((unsigned char)ts[i] > 0x20 && ts[i] != 0x7f &&
		      ts[i] != '<' && ts[i] != '>');
}

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* A decimal number without leading spaces, at p. */
static size_t digits(const char *p)
{
	size_t n = 0;

	while (p[n] >= '0' && p[n] <= '9')
		n++;
	return n;
}

/* The line as a UIDL, LIST, STAT and CAPA line. */
static void check_listing(const char *line, size_t len)
{
	char *s = malloc(len + 1);
	const char *uid;
	unsigned msgnum, count;
	uint64_t size;
	size_t n;

	CHECK(s != NULL);
	memcpy(s, line, len);
	s[len] = '\0';
	if (pop3_uidl_parse(s, len, &msgnum, &uid, &n) == 0) {
		CHECK(strlen(s) == len && msgnum > 0);
		CHECK(digits(s) > 0 && is_space(s[digits(s)]));
		CHECK(uid > s && uid + n <= s + len && is_space(uid[-1]));
		CHECK(n > 0 && n <= POP3_MAX_UID);
		for (size_t i = 0; i < n; i++)
			CHECK(uid[i] > 0x20 && uid[i] < 0x7f);
		for (const char *p = uid + n; p < s + len; p++)
			CHECK(is_space(*p));
	}
	if (pop3_list_parse(s, len, &msgnum, &size) == 0) {
		n = digits(s);
		CHECK(strlen(s) == len && msgnum > 0 && n > 0 &&
		      is_space(s[n]));
		CHECK(strtoul(s, NULL, 10) == msgnum);
	}
	if (pop3_stat_parse(s, &count, &size) == 0) {
		n = digits(s);
		CHECK(n > 0 && is_space(s[n]) && strtoul(s, NULL, 10) == count);
	}
	if (pop3_capa_sasl(s, "PLAIN"))
		CHECK(pop3_capa_is(s, "SASL") && strcasestr(s, "PLAIN"));
	free(s);
}

/* Cut data into lines with limit max; each line is checked.  Also: the
 * answer for every prefix of the remaining input is "need more" until
 * the full answer is reached, and never contradicts it. */
static void lines(const uint8_t *data, size_t size, size_t max)
{
	const char *p = (const char *)data;
	size_t pos = 0;

	while (pos < size) {
		size_t ll = 0, used = 0, ll2, used2;
		int rc = pop3_line_find(p + pos, size - pos, max, &ll, &used);

		CHECK(rc == 1 || rc == 0 || rc == -EMSGSIZE);
		for (size_t n = 0; n < size - pos && n < 600; n += 1 + n / 8) {
			int r2 = pop3_line_find(p + pos, n, max, &ll2, &used2);

			if (r2 == 1)
				CHECK(rc == 1 && ll2 == ll && used2 == used);
			else if (r2 == -EMSGSIZE)
				CHECK(rc == -EMSGSIZE);
		}
		if (rc != 1)
			return;
		CHECK(ll <= max && used <= size - pos && used >= ll + 1);
		CHECK(p[pos + used - 1] == '\n');
		CHECK(memchr(p + pos, '\n', ll) == NULL);
		check_status(p + pos, ll);
		check_timestamp(p + pos, ll);
		check_listing(p + pos, ll);
		pos += used;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t h = 14695981039346656037ULL;
	struct run whole, bytes, random, ref;

	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 1099511628211ULL;

	unstuff(data, size, WHOLE, h, &whole);
	unstuff(data, size, BYTES, h, &bytes);
	unstuff(data, size, RANDOM, h, &random);
	reference(data, size, &ref);
	same(&whole, &bytes);
	same(&whole, &random);
	same(&whole, &ref);
	if (whole.done)
		round_trip(&whole);
	free(whole.out.data);
	free(bytes.out.data);
	free(random.out.data);
	free(ref.out.data);

	lines(data, size, 64);
	lines(data, size, POP3_MAX_LINE);
	if (size <= POP3_MAX_LINE)
		check_status((const char *)data, size);
	return 0;
}
