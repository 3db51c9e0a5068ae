/* Fuzz target for the IMAP response parser.
 *
 * Differential: the input is parsed
 *   A  in one feed and one byte at a time, with small limits;
 *   B  in one feed and one byte at a time, with large limits;
 *   C  at split points drawn from the input's hash, with a literal sink
 *      and a threshold also drawn from the hash;
 * and the sequences of results (response trees, "need more", error offset,
 * errno and message) must agree; C must agree with B's single feed when
 * every streamed literal is replaced by the bytes its sink received.  The
 * sink checks the begin/data/end protocol and that the bytes it gets add
 * up to each literal's size.  Every complete response of B is then written
 * back in wire form, parsed again and compared (round trip).  The UID sets
 * in B's responses (every value of a VANISHED response, every atom made of
 * digits, ":", "," and "*" elsewhere) go through imap_uidset_parse(), which
 * must agree with a simple reference parser, range for range, and report
 * nothing of a set it rejects.  Any disagreement abort()s. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/imap_client.h"
#include "proto/imap_parse.h"

struct event {
	int rc;
	size_t end;
	struct imap_response *resp;
	int errnum;
	char err[256];
};

struct events {
	struct event *v;
	size_t n;
	size_t cap;
};

/* Records streamed literals: their bytes one after another. */
struct fsink {
	struct buf bytes;
	uint64_t threshold;
	uint64_t max_literal;
	bool in_literal;
	uint64_t size;
	uint64_t got;
	size_t begins;
	size_t ends;
	size_t aborts;
};

static void buf_puts(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

/* --- the sink ------------------------------------------------------------ */

static int fs_begin(void *ctx, const struct imap_response *partial,
                    const char *item, uint64_t size)
{
	struct fsink *s = ctx;

	CHECK(!s->in_literal);
	CHECK(partial != NULL);
	CHECK(size >= s->threshold && size <= s->max_literal);
	if (item != NULL)
		CHECK(strlen(item) > 0);
	s->in_literal = true;
	s->size = size;
	s->got = 0;
	s->begins++;
	return 0;
}

static int fs_data(void *ctx, const void *data, size_t len)
{
	struct fsink *s = ctx;

	CHECK(s->in_literal);
	CHECK(len > 0 && len <= s->size - s->got);
	s->got += len;
	buf_put(&s->bytes, data, len);
	return 0;
}

static int fs_end(void *ctx)
{
	struct fsink *s = ctx;

	CHECK(s->in_literal);
	CHECK(s->got == s->size);
	s->in_literal = false;
	s->ends++;
	return 0;
}

static void fs_abort(void *ctx)
{
	struct fsink *s = ctx;

	CHECK(s->in_literal);
	s->in_literal = false;
	s->aborts++;
}

static const struct imap_literal_sink fuzz_sink = {
        .begin = fs_begin,
        .data = fs_data,
        .end = fs_end,
        .abort = fs_abort,
};

/* --- running ------------------------------------------------------------- */

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM };

static void push_event(struct events *e, int rc, size_t end,
                       struct imap_response *resp, const struct imap_parser *p)
{
	struct event *ev;

	if (e->n == e->cap) {
		e->cap = e->cap ? e->cap * 2 : 8;
		e->v = xrealloc(e->v, e->cap * sizeof(*e->v));
	}
	ev = &e->v[e->n++];
	memset(ev, 0, sizeof(*ev));
	ev->rc = rc;
	ev->end = end;
	ev->resp = resp;
	if (rc == IMAP_PARSE_ERROR) {
		ev->errnum = imap_parser_errno(p);
		CHECK(ev->errnum < 0);
		snprintf(ev->err, sizeof(ev->err), "%s", imap_parser_error(p));
		CHECK(ev->err[0] != '\0');
	}
}

static void run(const uint8_t *data, size_t size,
                const struct imap_parser_limits *lim, struct fsink *sink,
                enum split split, uint64_t seed, struct events *e)
{
	struct imap_parser *p;
	struct rng rng = {seed | 1};
	size_t pos = 0;
	int rc = IMAP_PARSE_DONE;

	memset(e, 0, sizeof(*e));
	CHECK(imap_parser_new(lim, &p) == 0);
	if (sink != NULL)
		imap_parser_set_sink(p, &fuzz_sink, sink);
	while (pos < size) {
		size_t n = size - pos, used = SIZE_MAX;
		/* Not NULL: feed must clear it unless DONE. */
		struct imap_response *resp = (void *)&rng;

		if (split == SPLIT_BYTES) {
			n = 1;
		} else if (split == SPLIT_RANDOM) {
			uint64_t r = rng_next(&rng);
			size_t want = (r & 3) == 0 ? 1 + (r >> 8) % 4096
			                           : 1 + (r >> 8) % 16;

			if (want < n)
				n = want;
		}
		rc = imap_parser_feed(p, data + pos, n, &used, &resp);
		CHECK(used <= n);
		if (rc == IMAP_PARSE_MORE) {
			CHECK(used == n && resp == NULL);
			pos += n;
			continue;
		}
		if (rc == IMAP_PARSE_ERROR) {
			CHECK(resp == NULL);
			push_event(e, rc, pos + used, NULL, p);
			CHECK(imap_parser_feed(p, "* OK\r\n", 6, &used,
			                       &resp) == IMAP_PARSE_ERROR);
			break;
		}
		CHECK(rc == IMAP_PARSE_DONE);
		CHECK(resp != NULL && used > 0);
		push_event(e, rc, pos + used, resp, p);
		pos += used;
	}
	if (rc == IMAP_PARSE_MORE)
		push_event(e, rc, size, NULL, p);
	imap_parser_free(&p);
	CHECK(p == NULL);
	if (sink != NULL) {
		CHECK(!sink->in_literal);
		CHECK(sink->begins == sink->ends + sink->aborts);
	}
}

static void events_free(struct events *e)
{
	for (size_t i = 0; i < e->n; i++)
		imap_response_free(&e->v[i].resp);
	free(e->v);
	memset(e, 0, sizeof(*e));
}

static void compare_exact(const struct events *a, const struct events *b)
{
	CHECK(a->n == b->n);
	for (size_t i = 0; i < a->n; i++) {
		CHECK(a->v[i].rc == b->v[i].rc);
		CHECK(a->v[i].end == b->v[i].end);
		CHECK(a->v[i].errnum == b->v[i].errnum);
		CHECK(strcmp(a->v[i].err, b->v[i].err) == 0);
		if (a->v[i].rc == IMAP_PARSE_DONE)
			CHECK(imap_response_equal(a->v[i].resp, b->v[i].resp));
	}
}

/* --- streamed against in-memory ------------------------------------------ */

struct stream_cursor {
	const struct buf *bytes;
	size_t off;
};

static bool str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* s may hold STREAMED values where m holds LITERAL ones. */
static bool value_equiv(const struct imap_value *s, const struct imap_value *m,
                        struct stream_cursor *cur)
{
	if (s->type == IMAP_VALUE_STREAMED) {
		if (m->type != IMAP_VALUE_LITERAL || s->size != m->size ||
		    s->literal8 != m->literal8 || s->str != NULL)
			return false;
		if (m->len > cur->bytes->len - cur->off)
			return false;
		if (m->len > 0 &&
		    memcmp(cur->bytes->data + cur->off, m->str, m->len) != 0)
			return false;
		cur->off += m->len;
		return true;
	}
	if (s->type != m->type || s->count != m->count)
		return false;
	if (s->type != IMAP_VALUE_LIST)
		return imap_value_equal(s, m);
	for (size_t i = 0; i < s->count; i++)
		if (!value_equiv(&s->list[i], &m->list[i], cur))
			return false;
	return true;
}

static void compare_streamed(const struct events *s, const struct events *m,
                             const struct fsink *sink)
{
	struct stream_cursor cur = {&sink->bytes, 0};

	CHECK(s->n == m->n);
	for (size_t i = 0; i < s->n; i++) {
		const struct imap_response *a = s->v[i].resp, *b = m->v[i].resp;

		CHECK(s->v[i].rc == m->v[i].rc);
		CHECK(s->v[i].end == m->v[i].end);
		CHECK(s->v[i].errnum == m->v[i].errnum);
		CHECK(strcmp(s->v[i].err, m->v[i].err) == 0);
		if (s->v[i].rc != IMAP_PARSE_DONE)
			continue;
		CHECK(a->kind == b->kind && a->status == b->status);
		CHECK(a->has_number == b->has_number && a->number == b->number);
		CHECK(a->text_len == b->text_len);
		CHECK(str_eq(a->text, b->text) && str_eq(a->tag, b->tag));
		CHECK(str_eq(a->code, b->code) &&
		      str_eq(a->keyword, b->keyword));
		CHECK(value_equiv(&a->code_args, &b->code_args, &cur));
		CHECK(value_equiv(&a->args, &b->args, &cur));
	}
}

/* --- helpers on a finished tree ------------------------------------------ */

static void exercise_value(const struct imap_value *v, unsigned depth)
{
	size_t len = 1;
	const char *str = imap_value_str(v, &len);
	uint64_t u64;
	uint32_t u32;
	int rc64 = imap_value_u64(v, &u64);
	int rc32 = imap_value_u32(v, &u32);

	CHECK(depth <= 64);
	switch (v->type) {
	case IMAP_VALUE_NIL:
	case IMAP_VALUE_LIST:
	case IMAP_VALUE_STREAMED: CHECK(str == NULL && len == 0); break;
	default:
		CHECK(str == v->str && len == v->len && str[len] == '\0');
		break;
	}
	if (v->type == IMAP_VALUE_ATOM || v->type == IMAP_VALUE_NUMBER) {
		CHECK(v->len > 0 && strlen(v->str) == v->len);
		CHECK(imap_atom_eq(v, v->str));
	}
	if (v->type == IMAP_VALUE_NUMBER) {
		CHECK(rc64 == 0 || rc64 == -ERANGE);
		if (rc64 == 0 && u64 <= UINT32_MAX)
			CHECK(rc32 == 0 && u32 == u64);
		else
			CHECK(rc32 == -ERANGE);
	} else {
		CHECK(rc64 == -EINVAL && rc32 == -EINVAL);
	}
	if (v->type == IMAP_VALUE_LITERAL)
		CHECK(v->size == v->len);
	if (v->type != IMAP_VALUE_LIST) {
		CHECK(imap_list_get(v, 0) == NULL);
		return;
	}
	CHECK(imap_list_get(v, v->count) == NULL);
	if (v->count >= 2 && v->list[0].type == IMAP_VALUE_ATOM)
		CHECK(imap_fetch_item(v, v->list[0].str) == &v->list[1]);
	for (size_t i = 0; i < v->count; i++) {
		CHECK(imap_list_get(v, i) == &v->list[i]);
		exercise_value(&v->list[i], depth + 1);
	}
}

/* --- UID sets ------------------------------------------------------------ */

#define SET_MAX_RANGES 64

struct set_ranges {
	size_t n, calls;
	uint32_t lo[SET_MAX_RANGES], hi[SET_MAX_RANGES];
	size_t stop_at; /* return 7 from this call on (0: never) */
};

static int set_cb(void *ctx, uint32_t lo, uint32_t hi)
{
	struct set_ranges *r = ctx;

	CHECK(lo >= 1 && lo <= hi);
	r->calls++;
	if (r->n < SET_MAX_RANGES) {
		r->lo[r->n] = lo;
		r->hi[r->n] = hi;
		r->n++;
	}
	return r->stop_at != 0 && r->calls >= r->stop_at ? 7 : 0;
}

/* One end of a range, the simple way: "*", or 1..4294967295 without a
 * leading zero. */
static bool ref_uid(const char *s, size_t len, uint32_t *v_r)
{
	uint64_t v = 0;

	if (len == 1 && s[0] == '*') {
		*v_r = UINT32_MAX;
		return true;
	}
	if (len == 0 || len > 10 || s[0] == '0')
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return false;
	*v_r = (uint32_t)v;
	return true;
}

/* Reference parser: the ranges of s into r, or false if malformed. */
static bool ref_uidset(const char *s, struct set_ranges *r)
{
	memset(r, 0, sizeof(*r));
	for (const char *p = s;;) {
		const char *end = strchr(p, ',');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		uint32_t a, b;

		if (colon == NULL) {
			if (!ref_uid(p, len, &a))
				return false;
			b = a;
		} else if (!ref_uid(p, (size_t)(colon - p), &a) ||
		           !ref_uid(colon + 1, len - (size_t)(colon - p) - 1,
		                    &b)) {
			return false;
		}
		set_cb(r, a < b ? a : b, a < b ? b : a);
		if (end == NULL)
			return true;
		p = end + 1;
	}
}

static void check_uidset(const char *s)
{
	struct set_ranges got = {0}, want, stop = {.stop_at = 1};
	bool ok = ref_uidset(s, &want);
	int rc = imap_uidset_parse(s, set_cb, &got);

	CHECK(rc == (ok ? 0 : -EINVAL));
	/* All or nothing: nothing of a rejected set is reported. */
	CHECK(got.calls == (ok ? want.calls : 0));
	for (size_t i = 0; i < got.n; i++)
		CHECK(got.lo[i] == want.lo[i] && got.hi[i] == want.hi[i]);
	if (ok)
		CHECK(imap_uidset_parse(s, set_cb, &stop) == 7 &&
		      stop.calls == 1);
}

/* Every UID set in v: with all, every string (the values of VANISHED);
 * else the atoms that look like one. */
static void uidsets_in(const struct imap_value *v, bool all, unsigned depth)
{
	const char *s;

	if (v->type == IMAP_VALUE_LIST) {
		for (size_t i = 0; i < v->count && depth < 64; i++)
			uidsets_in(&v->list[i], all, depth + 1);
		return;
	}
	s = imap_value_str(v, NULL);
	if (s == NULL)
		return;
	if (all ||
	    ((v->type == IMAP_VALUE_ATOM || v->type == IMAP_VALUE_NUMBER) &&
	     strspn(s, "0123456789:,*") == v->len))
		check_uidset(s);
}

/* --- round trip ---------------------------------------------------------- */

static void write_value(struct buf *b, const struct imap_value *v)
{
	char num[32];

	switch (v->type) {
	case IMAP_VALUE_NIL: buf_puts(b, "NIL"); break;
	case IMAP_VALUE_ATOM:
	case IMAP_VALUE_NUMBER: buf_put(b, v->str, v->len); break;
	case IMAP_VALUE_QUOTED:
		buf_puts(b, "\"");
		for (size_t i = 0; i < v->len; i++) {
			if (v->str[i] == '"' || v->str[i] == '\\')
				buf_puts(b, "\\");
			buf_put(b, &v->str[i], 1);
		}
		buf_puts(b, "\"");
		break;
	case IMAP_VALUE_LITERAL:
		snprintf(num, sizeof(num), "%s{%zu}\r\n",
		         v->literal8 ? "~" : "", v->len);
		buf_puts(b, num);
		buf_put(b, v->str, v->len);
		break;
	case IMAP_VALUE_LIST:
		buf_puts(b, "(");
		for (size_t i = 0; i < v->count; i++) {
			if (i > 0)
				buf_puts(b, " ");
			write_value(b, &v->list[i]);
		}
		buf_puts(b, ")");
		break;
	case IMAP_VALUE_STREAMED: CHECK(!"streamed literal in round trip");
	}
}

static void write_response(struct buf *b, const struct imap_response *r)
{
	static const char *status[] = {"", "OK", "NO", "BAD", "BYE", "PREAUTH"};
	char num[32];

	switch (r->kind) {
	case IMAP_RESP_CONTINUATION:
		buf_puts(b, "+ ");
		buf_put(b, r->text, r->text_len);
		break;
	case IMAP_RESP_TAGGED:
	case IMAP_RESP_STATUS:
		buf_puts(b, r->kind == IMAP_RESP_TAGGED ? r->tag : "*");
		buf_puts(b, " ");
		buf_puts(b, status[r->status]);
		if (r->code != NULL) {
			buf_puts(b, " [");
			buf_puts(b, r->code);
			for (size_t i = 0; i < r->code_args.count; i++) {
				buf_puts(b, " ");
				write_value(b, &r->code_args.list[i]);
			}
			buf_puts(b, "]");
		}
		if (r->text_len > 0) {
			buf_puts(b, " ");
			buf_put(b, r->text, r->text_len);
		}
		break;
	case IMAP_RESP_DATA:
		buf_puts(b, "*");
		if (r->has_number) {
			snprintf(num, sizeof(num), " %u", (unsigned)r->number);
			buf_puts(b, num);
		}
		buf_puts(b, " ");
		buf_puts(b, r->keyword);
		for (size_t i = 0; i < r->args.count; i++) {
			buf_puts(b, " ");
			write_value(b, &r->args.list[i]);
		}
		break;
	}
	buf_puts(b, "\r\n");
}

static void round_trip(const struct imap_response *r,
                       const struct imap_parser_limits *lim)
{
	struct imap_parser_limits lim2 = *lim;
	struct imap_parser *p;
	struct imap_response *again = NULL;
	struct buf b = {0};
	size_t used;

	write_response(&b, r);
	/* Writing may add a space between glued values and a CR to a bare
	 * LF; nothing else grows. */
	lim2.max_line = lim->max_line * 4;
	CHECK(imap_parser_new(&lim2, &p) == 0);
	CHECK(imap_parser_feed(p, b.data, b.len, &used, &again) ==
	      IMAP_PARSE_DONE);
	CHECK(used == b.len);
	CHECK(imap_response_equal(r, again));
	imap_response_free(&again);
	imap_parser_free(&p);
	free(b.data);
}

/* --- entry --------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct imap_parser_limits small, big;
	struct events a, b, c;
	struct fsink sink;
	uint64_t h = 14695981039346656037ULL;

	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 1099511628211ULL;

	imap_parser_limits_default(&small);
	small.max_line = 200;
	small.max_depth = 4;
	small.max_literal = 300;
	small.max_mem = 4096;
	imap_parser_limits_default(&big);
	big.max_literal = 1024 * 1024;

	run(data, size, &small, NULL, SPLIT_WHOLE, h, &a);
	run(data, size, &small, NULL, SPLIT_BYTES, h, &b);
	compare_exact(&a, &b);
	events_free(&a);
	events_free(&b);

	run(data, size, &big, NULL, SPLIT_WHOLE, h, &a);
	run(data, size, &big, NULL, SPLIT_BYTES, h, &b);
	compare_exact(&a, &b);
	events_free(&b);

	memset(&sink, 0, sizeof(sink));
	sink.threshold = (h >> 40) % 40;
	sink.max_literal = big.max_literal;
	big.stream_threshold = sink.threshold;
	run(data, size, &big, &sink, SPLIT_RANDOM, h, &c);
	compare_streamed(&c, &a, &sink);
	events_free(&c);
	free(sink.bytes.data);

	big.stream_threshold = IMAP_PARSER_DEFAULT_STREAM_THRESHOLD;
	for (size_t i = 0; i < a.n; i++) {
		if (a.v[i].rc != IMAP_PARSE_DONE)
			continue;
		exercise_value(&a.v[i].resp->code_args, 0);
		exercise_value(&a.v[i].resp->args, 0);
		uidsets_in(&a.v[i].resp->code_args, false, 0);
		uidsets_in(&a.v[i].resp->args,
		           a.v[i].resp->kind == IMAP_RESP_DATA &&
		                   imap_response_is(a.v[i].resp, "VANISHED"),
		           0);
		round_trip(a.v[i].resp, &big);
	}
	events_free(&a);
	return 0;
}
