/* Tests of the POP3 client: the dot-unstuffing machine, the status-line,
 * STAT, listing and CAPA parsers, APOP, and the client itself against
 * server transcripts.
 *
 * Every unstuffing vector is fed whole, one byte at a time, split at every
 * point into two and three pieces, and in chunks of every size; the output
 * bytes, the number of bytes consumed and the "done" result must be the
 * same each time.  A random differential test compares the machine with a
 * line-based reference implementation.
 *
 * The client tests run a scripted server on 127.0.0.1 (plaintext): each
 * script is the exact dialogue, the client's lines included, in the
 * manner of curl's test data. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "proto/log.h"
#include "proto/pop3.h"
#include "proto/pop3_parse.h"
#include "proto/sasl.h"

/* --- unstuffing ---------------------------------------------------------- */

struct obuf {
	char data[4096];
	size_t len;
	size_t calls;
};

static int obuf_out(void *ctx, const char *buf, size_t len)
{
	struct obuf *o = ctx;

	assert_true(len > 0);
	assert_true(len <= sizeof(o->data) - o->len);
	memcpy(o->data + o->len, buf, len);
	o->len += len;
	o->calls++;
	return 0;
}

struct result {
	struct obuf out;
	size_t used; /* bytes consumed in all */
	int done;
};

/* Feed in at the given cut points (sorted offsets, each in 0..len). */
static void feed_cuts(const char *in, size_t len, const size_t *cuts,
                      size_t ncuts, struct result *r)
{
	struct pop3_dotstate s;
	size_t pos = 0;

	memset(r, 0, sizeof(*r));
	pop3_dot_init(&s);
	for (size_t k = 0; k <= ncuts && !r->done; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		size_t used = SIZE_MAX;
		int rc;

		if (end < pos)
			continue;
		rc = pop3_unstuff(&s, in + pos, end - pos, &used, obuf_out,
		                  &r->out);
		assert_true(rc == 0 || rc == 1);
		assert_true(used <= end - pos);
		if (rc == 0)
			assert_int_equal(used, end - pos);
		r->used += used;
		pos = end;
		if (rc == 1) {
			r->done = 1;
			assert_true(pop3_dot_done(&s));
			/* Done stays done and consumes nothing more. */
			used = 99;
			assert_int_equal(pop3_unstuff(&s, "x", 1, &used,
			                              obuf_out, &r->out),
			                 1);
			assert_int_equal(used, 0);
		}
	}
	if (!r->done)
		assert_false(pop3_dot_done(&s));
}

static void assert_same(const struct result *a, const struct result *b)
{
	assert_int_equal(a->done, b->done);
	assert_int_equal(a->used, b->used);
	assert_int_equal(a->out.len, b->out.len);
	assert_memory_equal(a->out.data, b->out.data, a->out.len);
}

/* Every way of splitting; all must agree with the whole feed. */
static void check_splits(const char *in, size_t len, struct result *whole)
{
	struct result r;
	size_t cuts[4096];

	feed_cuts(in, len, NULL, 0, whole);
	/* one byte at a time */
	for (size_t i = 0; i < len && i < 4096; i++)
		cuts[i] = i + 1;
	feed_cuts(in, len, cuts, len < 4096 ? len : 4096, &r);
	assert_same(whole, &r);
	/* two pieces */
	for (size_t i = 0; i <= len; i++) {
		feed_cuts(in, len, &i, 1, &r);
		assert_same(whole, &r);
	}
	/* three pieces */
	if (len <= 64)
		for (size_t i = 0; i <= len; i++)
			for (size_t j = i; j <= len; j++) {
				size_t c2[2] = {i, j};

				feed_cuts(in, len, c2, 2, &r);
				assert_same(whole, &r);
			}
	/* chunks of every size */
	for (size_t k = 2; k < len; k++) {
		size_t n = 0;

		for (size_t off = k; off < len && n < 4096; off += k)
			cuts[n++] = off;
		feed_cuts(in, len, cuts, n, &r);
		assert_same(whole, &r);
	}
}

struct vec {
	const char *in;
	size_t in_len;
	const char *out;
	size_t out_len;
	int done;
	size_t trail; /* bytes after the terminator, not consumed */
};

#define V(i, o, d, u)                                                          \
	{                                                                      \
		i, sizeof(i) - 1, o, sizeof(o) - 1, d, u                       \
	}

static const struct vec vectors[] = {
        /* An empty message: the terminator right after the status. */
        V(".\r\n", "", 1, 0),
        /* What follows the terminator is the next response's. */
        V(".\r\n+OK next\r\n", "", 1, 10),
        V("abc\r\n.\r\n", "abc\r\n", 1, 0),
        V("abc\r\n.\r\nRETR-NEXT", "abc\r\n", 1, 9),
        /* Dovecot adds CRLF to a message without a final newline; the
         * CRLF before the "." is the message's. */
        V("Subject: x\r\n\r\nno newline\r\n.\r\n",
          "Subject: x\r\n\r\nno newline\r\n", 1, 0),
        /* A line that is just "." is sent as "..". */
        V("..\r\n.\r\n", ".\r\n", 1, 0),
        V("a\r\n..\r\nb\r\n.\r\n", "a\r\n.\r\nb\r\n", 1, 0),
        /* Lines starting with "..": one dot goes. */
        V("..abc\r\n...\r\n....x\r\n.\r\n", ".abc\r\n..\r\n...x\r\n", 1, 0),
        /* ".x" at a line start was not stuffed: the dot is content. */
        V(".abc\r\n.\r\n", ".abc\r\n", 1, 0),
        V("x\r\n. \r\n.\r\n", "x\r\n. \r\n", 1, 0),
        V(".\tx\r\n.\r\n", ".\tx\r\n", 1, 0),
        /* "." CR not followed by LF is content. */
        V(".\rx\r\n.\r\n", ".\rx\r\n", 1, 0),
        V(".\r\r\n.\r\n", ".\r\r\n", 1, 0),
        V(".\r.\r\n.\r\n", ".\r.\r\n", 1, 0),
        /* A bare LF does not start a line, so "." after it is plain. */
        V("x\n.\r\n.\r\n", "x\n.\r\n", 1, 0),
        V("x\r\n.\n\r\n.\r\n", "x\r\n.\n\r\n", 1, 0),
        /* Bare CR does not end a line either. */
        V("x\r.\r\n.\r\n", "x\r.\r\n", 1, 0),
        /* CR CR LF ends a line; the dot after it is at a line start. */
        V("x\r\r\n..\r\n.\r\n", "x\r\r\n.\r\n", 1, 0),
        /* Empty lines */
        V("\r\n.\r\n", "\r\n", 1, 0),
        V("\r\n\r\n\r\n.\r\n", "\r\n\r\n\r\n", 1, 0),
        /* NUL and 8-bit bytes go through. */
        V("a\0b\r\n\0.\r\n.\r\n", "a\0b\r\n\0.\r\n", 1, 0),
        V("\xff\xfe\r\n..\x80\r\n\x80.\r\n.\r\n",
          "\xff\xfe\r\n.\x80\r\n\x80.\r\n", 1, 0),
        V("\0\r\n.\r\n", "\0\r\n", 1, 0),
        /* Things that look like the terminator but are not. */
        V("x\r\n.x\r\n.\r\n", "x\r\n.x\r\n", 1, 0),
        V("x.\r\n.\r\n", "x.\r\n", 1, 0),
        V("x\r\n\r.\r\n.\r\n", "x\r\n\r.\r\n", 1, 0),
        V("x\r\n.\r\r\n.\r\n", "x\r\n.\r\r\n", 1, 0),
        /* Incomplete input: what is held is not output yet. */
        V("", "", 0, 0),
        V(".", "", 0, 0),
        V(".\r", "", 0, 0),
        V("x\r\n.", "x\r\n", 0, 0),
        V("x\r\n.\r", "x\r\n", 0, 0),
        V("x\r\n..", "x\r\n.", 0, 0),
        V("x\r", "x\r", 0, 0),
        V("x\r\n", "x\r\n", 0, 0),
        V("x\n.\r\n", "x\n.\r\n", 0, 0),
        /* Terminator variants a sloppy server might send are not
         * terminators: LF-only lines never end the response. */
        V("x\n.\n", "x\n.\n", 0, 0),
        V("x\r\n.\n", "x\r\n.\n", 0, 0),
        /* A message of dots */
        V("...\r\n....\r\n..\r\n.\r\n", "..\r\n...\r\n.\r\n", 1, 0),
};

/* A complete message is empty or ends with CRLF; stuffed again and
 * terminated, it must come out the same, consuming all of it: nothing
 * of the terminator leaked into it. */
static void check_round_trip(const struct result *r)
{
	char wire[2 * sizeof(r->out.data) + 3];
	struct result again;
	size_t n = 0;
	bool bol = true;

	if (r->out.len > 0) {
		assert_true(r->out.len >= 2);
		assert_memory_equal(r->out.data + r->out.len - 2, "\r\n", 2);
	}
	for (size_t i = 0; i < r->out.len; i++) {
		if (bol && r->out.data[i] == '.')
			wire[n++] = '.';
		wire[n++] = r->out.data[i];
		bol = i > 0 && r->out.data[i - 1] == '\r' &&
		      r->out.data[i] == '\n';
	}
	memcpy(wire + n, ".\r\n", 3);
	n += 3;
	feed_cuts(wire, n, NULL, 0, &again);
	assert_true(again.done);
	assert_int_equal(again.used, n);
	assert_int_equal(again.out.len, r->out.len);
	assert_memory_equal(again.out.data, r->out.data, r->out.len);
}

static void test_unstuff_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vectors) / sizeof(*vectors); i++) {
		const struct vec *v = &vectors[i];
		struct result r;

		check_splits(v->in, v->in_len, &r);
		if (r.done)
			check_round_trip(&r);
		if (r.done != v->done || r.out.len != v->out_len ||
		    memcmp(r.out.data, v->out, v->out_len) != 0)
			fail_msg("vector %zu: got done %d, %zu bytes", i,
			         r.done, r.out.len);
		assert_int_equal(r.used, v->in_len - v->trail);
	}
}

/* The terminator split at every position of a longer message. */
static void test_unstuff_terminator_splits(void **state)
{
	static const char msg[] =
	        "From: a\r\nSubject: b\r\n\r\nline\r\n..dot\r\n"
	        ".\r\n+OK";
	struct result whole, r;

	(void)state;
	check_splits(msg, sizeof(msg) - 1, &whole);
	assert_true(whole.done);
	assert_int_equal(whole.used, sizeof(msg) - 1 - 3);
	assert_int_equal(whole.out.len, whole.used - 3 - 1);
	/* Each cut inside ".\r\n" and the CRLF before it. */
	for (size_t at = whole.used - 5; at <= whole.used; at++) {
		feed_cuts(msg, sizeof(msg) - 1, &at, 1, &r);
		assert_same(&whole, &r);
	}
	/* The output never holds the terminator. */
	assert_null(memmem(whole.out.data, whole.out.len, "\r\n.\r\n", 5));
}

/* Runs of output: a plain message goes out in one call per feed. */
static void test_unstuff_runs(void **state)
{
	static const char msg[] = "abc\r\ndef\r\n.\r\n";
	struct pop3_dotstate s;
	struct obuf o = {0};
	size_t used;

	(void)state;
	pop3_dot_init(&s);
	assert_int_equal(
	        pop3_unstuff(&s, msg, sizeof(msg) - 1, &used, obuf_out, &o), 1);
	assert_int_equal(o.calls, 1);
	assert_int_equal(o.len, 10);
	/* A NULL out discards. */
	pop3_dot_init(&s);
	assert_int_equal(
	        pop3_unstuff(&s, msg, sizeof(msg) - 1, &used, NULL, NULL), 1);
	assert_int_equal(used, sizeof(msg) - 1);
}

static int failing_out(void *ctx, const char *buf, size_t len)
{
	int *calls = ctx;

	(void)buf;
	(void)len;
	return ++*calls == 2 ? -ENOSPC : 0;
}

static void test_unstuff_out_error(void **state)
{
	static const char msg[] = "abc\r\n..x\r\n.\r\n";
	struct pop3_dotstate s;
	size_t used = 0;
	int calls = 0;

	(void)state;
	pop3_dot_init(&s);
	assert_int_equal(pop3_unstuff(&s, msg, sizeof(msg) - 1, &used,
	                              failing_out, &calls),
	                 -ENOSPC);
	assert_true(used < sizeof(msg) - 1);
}

/* A line-based reference: split at CRLF only, "." alone ends, ".."
 * loses a dot.  For an incomplete last line, what the machine has
 * already passed on. */
static void reference(const char *in, size_t len, struct result *r)
{
	size_t pos = 0;

	memset(r, 0, sizeof(*r));
	for (;;) {
		const char *crlf = memmem(in + pos, len - pos, "\r\n", 2);
		size_t ll;
		const char *l = in + pos;

		if (crlf == NULL) {
			ll = len - pos;
			if ((ll == 1 && l[0] == '.') ||
			    (ll == 2 && l[0] == '.' && l[1] == '\r'))
				ll = 0;
			else if (ll >= 2 && l[0] == '.' && l[1] == '.')
				l++, ll--;
			memcpy(r->out.data + r->out.len, l, ll);
			r->out.len += ll;
			r->used = len;
			return;
		}
		ll = (size_t)(crlf - l);
		if (ll == 1 && l[0] == '.') {
			r->done = 1;
			r->used = pos + 3;
			return;
		}
		if (ll >= 2 && l[0] == '.' && l[1] == '.')
			memcpy(r->out.data + r->out.len, l + 1, ll + 1);
		else
			memcpy(r->out.data + r->out.len, l, ll + 2);
		r->out.len += ll + 2 - (ll >= 2 && l[0] == '.' && l[1] == '.');
		pos += ll + 2;
	}
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static void test_unstuff_random(void **state)
{
	static const char alphabet[] = ".\r\n\r\n.a\0\xff";
	char in[200];

	(void)state;
	for (int iter = 0; iter < 20000; iter++) {
		size_t len = rnd() % sizeof(in), cuts[16], n = rnd() % 16;
		struct result whole, ref, r;

		for (size_t i = 0; i < len; i++)
			in[i] = alphabet[rnd() % (sizeof(alphabet) - 1)];
		feed_cuts(in, len, NULL, 0, &whole);
		reference(in, len, &ref);
		assert_same(&whole, &ref);
		for (size_t i = 0; i < n; i++)
			cuts[i] = len ? rnd() % (len + 1) : 0;
		/* sort the cuts */
		for (size_t i = 1; i < n; i++)
			for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j];
			     j--) {
				size_t t = cuts[j];

				cuts[j] = cuts[j - 1];
				cuts[j - 1] = t;
			}
		feed_cuts(in, len, cuts, n, &r);
		assert_same(&whole, &r);
		if (whole.done)
			check_round_trip(&whole);
	}
}

/* --- status lines -------------------------------------------------------- */

static void test_line_find(void **state)
{
	size_t ll = 99, used = 99;
	char big[POP3_MAX_LINE + 3];

	(void)state;
	assert_int_equal(pop3_line_find("abc\r\nx", 6, 512, &ll, &used), 1);
	assert_int_equal(ll, 3);
	assert_int_equal(used, 5);
	assert_int_equal(pop3_line_find("abc\nx", 5, 512, &ll, &used), 1);
	assert_int_equal(ll, 3);
	assert_int_equal(used, 4);
	assert_int_equal(pop3_line_find("\r\n", 2, 512, &ll, &used), 1);
	assert_int_equal(ll, 0);
	assert_int_equal(used, 2);
	assert_int_equal(pop3_line_find("abc", 3, 512, &ll, &used), 0);
	assert_int_equal(pop3_line_find("abc\r", 4, 512, &ll, &used), 0);
	assert_int_equal(pop3_line_find("", 0, 512, &ll, &used), 0);
	/* The limit: max bytes plus the line end */
	assert_int_equal(pop3_line_find("abcd\r\n", 6, 4, &ll, &used), 1);
	assert_int_equal(ll, 4);
	assert_int_equal(pop3_line_find("abcd\n", 5, 4, &ll, &used), 1);
	assert_int_equal(pop3_line_find("abcd", 4, 4, &ll, &used), 0);
	assert_int_equal(pop3_line_find("abcd\r", 5, 4, &ll, &used), 0);
	assert_int_equal(pop3_line_find("abcde", 5, 4, &ll, &used), -EMSGSIZE);
	assert_int_equal(pop3_line_find("abcd\rx", 6, 4, &ll, &used),
	                 -EMSGSIZE);
	assert_int_equal(pop3_line_find("abcde\r\n", 7, 4, &ll, &used),
	                 -EMSGSIZE);
	assert_int_equal(pop3_line_find("abcde\n", 6, 4, &ll, &used),
	                 -EMSGSIZE);
	/* Every prefix of a too-long line: "need more" until it is
	 * certain, then too long, never a line. */
	memset(big, 'x', sizeof(big));
	for (size_t n = 0; n <= sizeof(big); n++) {
		int rc = pop3_line_find(big, n, POP3_MAX_LINE, &ll, &used);

		assert_int_equal(rc, n <= POP3_MAX_LINE ? 0 : -EMSGSIZE);
	}
	big[POP3_MAX_LINE] = '\r';
	big[POP3_MAX_LINE + 1] = '\n';
	assert_int_equal(pop3_line_find(big, POP3_MAX_LINE + 2, POP3_MAX_LINE,
	                                &ll, &used),
	                 1);
	assert_int_equal(ll, POP3_MAX_LINE);
	big[POP3_MAX_LINE] = 'x';
	big[POP3_MAX_LINE + 1] = '\r';
	big[POP3_MAX_LINE + 2] = '\n';
	assert_int_equal(pop3_line_find(big, POP3_MAX_LINE + 3, POP3_MAX_LINE,
	                                &ll, &used),
	                 -EMSGSIZE);
}

struct svec {
	const char *line;
	int rc;
	enum pop3_status status;
	const char *code; /* NULL: none */
	const char *text;
};

static const struct svec svectors[] = {
        {"+OK", 0, POP3_OK, NULL, ""},
        {"+OK ", 0, POP3_OK, NULL, ""},
        {"+OK Dovecot ready.", 0, POP3_OK, NULL, "Dovecot ready."},
        {"+ok lower case", 0, POP3_OK, NULL, "lower case"},
        {"+OK  two  spaces", 0, POP3_OK, NULL, "two  spaces"},
        {"-ERR", 0, POP3_ERR, NULL, ""},
        {"-ERR no such message", 0, POP3_ERR, NULL, "no such message"},
        {"-err x", 0, POP3_ERR, NULL, "x"},
        {"-ERR [IN-USE] Mailbox is locked", 0, POP3_ERR, "IN-USE",
         "Mailbox is locked"},
        {"-ERR [AUTH] Authentication failed.", 0, POP3_ERR, "AUTH",
         "Authentication failed."},
        {"-ERR [SYS/TEMP] try later", 0, POP3_ERR, "SYS/TEMP", "try later"},
        {"-ERR [SYS/PERM]", 0, POP3_ERR, "SYS/PERM", ""},
        {"+OK [UTF8] ok", 0, POP3_OK, "UTF8", "ok"},
        {"-ERR [LOGIN-DELAY]wait", 0, POP3_ERR, "LOGIN-DELAY", "wait"},
        /* Malformed codes stay in the text. */
        {"-ERR [] empty", 0, POP3_ERR, NULL, "[] empty"},
        {"-ERR [A//B] x", 0, POP3_ERR, NULL, "[A//B] x"},
        {"-ERR [/A] x", 0, POP3_ERR, NULL, "[/A] x"},
        {"-ERR [A/] x", 0, POP3_ERR, NULL, "[A/] x"},
        {"-ERR [IN USE] x", 0, POP3_ERR, NULL, "[IN USE] x"},
        {"-ERR [unterminated", 0, POP3_ERR, NULL, "[unterminated"},
        {"-ERR x [IN-USE]", 0, POP3_ERR, NULL, "x [IN-USE]"},
        /* Continuations (AUTH) */
        {"+", 0, POP3_CONT, NULL, ""},
        {"+ ", 0, POP3_CONT, NULL, ""},
        {"+ dGVzdA==", 0, POP3_CONT, NULL, "dGVzdA=="},
        {"+ [AUTH] x", 0, POP3_CONT, NULL, "[AUTH] x"},
        /* Not status lines */
        {"", -EPROTO, 0, NULL, NULL},
        {"OK", -EPROTO, 0, NULL, NULL},
        {"* OK imap", -EPROTO, 0, NULL, NULL},
        {"+OKAY", -EPROTO, 0, NULL, NULL},
        {"-ERROR", -EPROTO, 0, NULL, NULL},
        {"-ER", -EPROTO, 0, NULL, NULL},
        {"+x", -EPROTO, 0, NULL, NULL},
        {"-", -EPROTO, 0, NULL, NULL},
        {" +OK", -EPROTO, 0, NULL, NULL},
};

static void test_status_parse(void **state)
{
	struct pop3_status_line st;

	(void)state;
	for (size_t i = 0; i < sizeof(svectors) / sizeof(*svectors); i++) {
		const struct svec *v = &svectors[i];
		int rc = pop3_status_parse(v->line, strlen(v->line), &st);

		if (rc != v->rc)
			fail_msg("\"%s\": rc %d", v->line, rc);
		if (rc < 0)
			continue;
		assert_int_equal(st.status, v->status);
		if (v->code == NULL) {
			assert_int_equal(st.code_len, 0);
		} else {
			assert_int_equal(st.code_len, strlen(v->code));
			assert_memory_equal(st.code, v->code, st.code_len);
		}
		if (st.text_len != strlen(v->text) ||
		    memcmp(st.text, v->text, st.text_len) != 0)
			fail_msg("\"%s\": text \"%.*s\"", v->line,
			         (int)st.text_len, st.text);
	}
	/* A NUL anywhere is refused. */
	assert_int_equal(pop3_status_parse("+OK a\0b", 7, &st), -EPROTO);
	assert_int_equal(pop3_status_parse("\0+OK", 4, &st), -EPROTO);
	/* The length is what counts, not a NUL terminator. */
	assert_int_equal(pop3_status_parse("+OK abcdef", 6, &st), 0);
	assert_int_equal(st.text_len, 2);
	/* 8-bit text is kept */
	assert_int_equal(pop3_status_parse("-ERR \xc3\xa4", 7, &st), 0);
	assert_int_equal(st.text_len, 2);
}

static void test_status_codes(void **state)
{
	struct pop3_status_line st;

	(void)state;
	assert_int_equal(pop3_status_parse("-ERR [SYS/TEMP] x", 17, &st), 0);
	assert_true(pop3_status_has_code(&st, "SYS/TEMP"));
	assert_true(pop3_status_has_code(&st, "sys/temp"));
	assert_true(pop3_status_has_code(&st, "SYS"));
	assert_false(pop3_status_has_code(&st, "SY"));
	assert_false(pop3_status_has_code(&st, "SYS/TEMPX"));
	assert_false(pop3_status_has_code(&st, "SYS/PERM"));
	assert_false(pop3_status_has_code(&st, "IN-USE"));
	assert_int_equal(pop3_status_parse("-ERR [in-use] x", 15, &st), 0);
	assert_true(pop3_status_has_code(&st, "IN-USE"));
	assert_int_equal(pop3_status_parse("-ERR x", 6, &st), 0);
	assert_false(pop3_status_has_code(&st, "IN-USE"));
}

/* --- APOP ---------------------------------------------------------------- */

static void test_apop(void **state)
{
	static const char greet[] =
	        "POP3 server ready <1896.697170952@dbc.mtview.ca.us>";
	const char *ts;
	size_t len;
	char hex[33];

	(void)state;
	/* RFC 1939 section 7 */
	assert_int_equal(pop3_apop_timestamp(greet, strlen(greet), &ts, &len),
	                 0);
	assert_int_equal(len, 33);
	assert_memory_equal(ts, "<1896.697170952@dbc.mtview.ca.us>", len);
	assert_int_equal(pop3_apop_digest(ts, len, "tanstaaf", hex), 0);
	assert_string_equal(hex, "c4c9334bac560ecc979e58001b3e22fb");

	assert_int_equal(pop3_apop_timestamp("Dovecot ready.", 14, &ts, &len),
	                 -ENOENT);
	assert_int_equal(pop3_apop_timestamp("<no-at-sign>", 12, &ts, &len),
	                 -ENOENT);
	assert_int_equal(pop3_apop_timestamp("<a b@c>", 7, &ts, &len), -ENOENT);
	assert_int_equal(pop3_apop_timestamp("<a@b", 4, &ts, &len), -ENOENT);
	assert_int_equal(
	        pop3_apop_timestamp("<x> then <1.2@h> <3@i>", 22, &ts, &len),
	        0);
	assert_memory_equal(ts, "<1.2@h>", len);
	assert_int_equal(pop3_apop_timestamp("<<1@h>", 6, &ts, &len), 0);
	assert_memory_equal(ts, "<1@h>", len);
	/* The length limits the search, not a NUL. */
	assert_int_equal(pop3_apop_timestamp("<1@h>", 4, &ts, &len), -ENOENT);
}

/* --- STAT, UIDL, LIST and CAPA ------------------------------------------ */

static void test_stat_parse(void **state)
{
	unsigned count = 7;
	uint64_t size = 7;

	(void)state;
	assert_int_equal(pop3_stat_parse("2 320", &count, &size), 0);
	assert_int_equal(count, 2);
	assert_int_equal(size, 320);
	assert_int_equal(pop3_stat_parse("0 0 extra", &count, &size), 0);
	assert_int_equal(count, 0);
	assert_int_equal(pop3_stat_parse("4294967295\t\t18446744073709551615",
	                                 &count, &size),
	                 0);
	assert_int_equal(count, UINT32_MAX);
	assert_true(size == UINT64_MAX);
	count = 7;
	size = 7;
	assert_int_equal(pop3_stat_parse("4294967296 1", &count, &size),
	                 -EPROTO);
	assert_int_equal(
	        pop3_stat_parse("1 18446744073709551616", &count, &size),
	        -EPROTO);
	assert_int_equal(pop3_stat_parse("1", &count, &size), -EPROTO);
	assert_int_equal(pop3_stat_parse("1 ", &count, &size), -EPROTO);
	assert_int_equal(pop3_stat_parse("1 2x", &count, &size), -EPROTO);
	assert_int_equal(pop3_stat_parse(" 1 2", &count, &size), -EPROTO);
	assert_int_equal(pop3_stat_parse("", &count, &size), -EPROTO);
	/* Untouched on error. */
	assert_int_equal(count, 7);
	assert_int_equal(size, 7);
}

static void test_listing_parse(void **state)
{
	char longuid[POP3_MAX_UID + 16];
	const char *uid;
	unsigned msgnum;
	uint64_t size;
	size_t n;

	(void)state;
	assert_int_equal(pop3_uidl_parse("1 whqtswO00WBw418f9t5JxYwZ", 26,
	                                 &msgnum, &uid, &n),
	                 0);
	assert_int_equal(msgnum, 1);
	assert_int_equal(n, 24);
	assert_memory_equal(uid, "whqtswO00WBw418f9t5JxYwZ", n);
	assert_int_equal(
	        pop3_uidl_parse("12\t \tu-1 \t", 10, &msgnum, &uid, &n), 0);
	assert_int_equal(msgnum, 12);
	assert_int_equal(n, 3);
	assert_memory_equal(uid, "u-1", 3);
	assert_int_equal(pop3_uidl_parse("0 a", 3, &msgnum, &uid, &n), -EPROTO);
	assert_int_equal(pop3_uidl_parse("4294967296 a", 12, &msgnum, &uid, &n),
	                 -EPROTO);
	assert_int_equal(pop3_uidl_parse("1 ", 2, &msgnum, &uid, &n), -EPROTO);
	assert_int_equal(pop3_uidl_parse("1a b", 4, &msgnum, &uid, &n),
	                 -EPROTO);
	assert_int_equal(pop3_uidl_parse("1 a b", 5, &msgnum, &uid, &n),
	                 -EPROTO);
	assert_int_equal(pop3_uidl_parse("1 a\x7f", 4, &msgnum, &uid, &n),
	                 -EPROTO);
	assert_int_equal(pop3_uidl_parse("1 a\0b", 5, &msgnum, &uid, &n),
	                 -EPROTO);
	/* POP3_MAX_UID bytes are a unique-id, one more is not. */
	memcpy(longuid, "1 ", 2);
	memset(longuid + 2, 'u', POP3_MAX_UID + 1);
	longuid[2 + POP3_MAX_UID] = '\0';
	assert_int_equal(
	        pop3_uidl_parse(longuid, strlen(longuid), &msgnum, &uid, &n),
	        0);
	assert_int_equal(n, POP3_MAX_UID);
	longuid[2 + POP3_MAX_UID] = 'u';
	longuid[3 + POP3_MAX_UID] = '\0';
	assert_int_equal(
	        pop3_uidl_parse(longuid, strlen(longuid), &msgnum, &uid, &n),
	        -EPROTO);

	assert_int_equal(pop3_list_parse("2 200", 5, &msgnum, &size), 0);
	assert_int_equal(msgnum, 2);
	assert_int_equal(size, 200);
	/* RFC 1939: more after the size is allowed, and ignored. */
	assert_int_equal(pop3_list_parse("3\t120 more", 10, &msgnum, &size), 0);
	assert_int_equal(msgnum, 3);
	assert_int_equal(size, 120);
	assert_int_equal(pop3_list_parse("3 12x", 5, &msgnum, &size), -EPROTO);
	assert_int_equal(pop3_list_parse("3", 1, &msgnum, &size), -EPROTO);
	assert_int_equal(pop3_list_parse("x 1", 3, &msgnum, &size), -EPROTO);
}

static void test_capa_parse(void **state)
{
	(void)state;
	assert_true(pop3_capa_is("UIDL", "UIDL"));
	assert_true(pop3_capa_is("uidl", "UIDL"));
	assert_true(pop3_capa_is("SASL PLAIN", "SASL"));
	assert_false(pop3_capa_is("UIDLX", "UIDL"));
	assert_false(pop3_capa_is("UID", "UIDL"));
	assert_true(pop3_capa_is("EXPIRE 0", "EXPIRE 0"));
	assert_true(pop3_capa_is("EXPIRE 0 USER", "EXPIRE 0"));
	assert_false(pop3_capa_is("EXPIRE 0x", "EXPIRE 0"));
	assert_false(pop3_capa_is("EXPIRE 30", "EXPIRE 0"));

	assert_true(pop3_capa_sasl("SASL PLAIN XOAUTH2", "PLAIN"));
	assert_true(pop3_capa_sasl("sasl  plain   xoauth2", "XOAUTH2"));
	assert_false(pop3_capa_sasl("SASL PLAINX", "PLAIN"));
	assert_false(pop3_capa_sasl("SASL", "PLAIN"));
	assert_false(pop3_capa_sasl("SASLPLAIN", "PLAIN"));
	assert_false(pop3_capa_sasl("USER PLAIN", "PLAIN"));
}

/* --- a scripted server ------------------------------------------------- */

enum step_kind {
	SEND,   /* bytes */
	DRIP,   /* bytes, one per write, 1 ms apart */
	EXPECT, /* one client line (without CRLF), exactly */
	QUIET,  /* the client sends nothing more for 150 ms */
	EOF_,   /* the client closes without sending anything more */
	STALL,  /* wait until the client closes (at most 5 s) */
	CLOSE,  /* close the connection */
};

struct step {
	enum step_kind kind;
	const char *data;
	size_t len;
};

#define S(text)                                                                \
	{                                                                      \
		SEND, text "\r\n", sizeof(text "\r\n") - 1                     \
	}
#define RAW(data)                                                              \
	{                                                                      \
		SEND, data, sizeof(data) - 1                                   \
	}
#define D(data)                                                                \
	{                                                                      \
		DRIP, data, sizeof(data) - 1                                   \
	}
#define C(text)                                                                \
	{                                                                      \
		EXPECT, text, sizeof(text) - 1                                 \
	}
#define QUIET_                                                                 \
	{                                                                      \
		QUIET, NULL, 0                                                 \
	}
#define EOF_S                                                                  \
	{                                                                      \
		EOF_, NULL, 0                                                  \
	}
#define STALL_                                                                 \
	{                                                                      \
		STALL, NULL, 0                                                 \
	}
#define CLOSE_                                                                 \
	{                                                                      \
		CLOSE, NULL, 0                                                 \
	}

struct server {
	const struct step *steps;
	int lfd, fd;
	char port[8];
	pthread_t thread;
	char failure[512];
	char buf[65536];
	size_t blen;
	bool finished;
};

static void srv_fail(struct server *s, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static void srv_fail(struct server *s, const char *fmt, ...)
{
	va_list ap;

	if (s->failure[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(s->failure, sizeof(s->failure), fmt, ap);
	va_end(ap);
}

/* Read more from the client, waiting at most ms.  1: data, 0: EOF,
 * -1: timeout or error. */
static int srv_recv(struct server *s, int ms)
{
	struct pollfd p = {.fd = s->fd, .events = POLLIN};
	ssize_t n;

	if (poll(&p, 1, ms) <= 0)
		return -1;
	n = recv(s->fd, s->buf + s->blen, sizeof(s->buf) - s->blen, 0);
	if (n < 0)
		return -1;
	s->blen += (size_t)n;
	return n > 0;
}

static bool srv_expect(struct server *s, const struct step *st)
{
	for (;;) {
		char *crlf = memmem(s->buf, s->blen, "\r\n", 2);
		int rc;

		if (crlf != NULL) {
			size_t ll = (size_t)(crlf - s->buf);
			bool ok = ll == st->len &&
			          memcmp(s->buf, st->data, ll) == 0;

			if (!ok)
				srv_fail(s, "expected \"%s\", got \"%.*s\"",
				         st->data, (int)ll, s->buf);
			memmove(s->buf, crlf + 2, s->blen - ll - 2);
			s->blen -= ll + 2;
			return ok;
		}
		rc = srv_recv(s, 5000);
		if (rc <= 0) {
			srv_fail(s, "expected \"%s\", got %s", st->data,
			         rc == 0 ? "end of input" : "nothing");
			return false;
		}
	}
}

static void *srv_run(void *arg)
{
	struct server *s = arg;
	struct pollfd p = {.fd = s->lfd, .events = POLLIN};
	int one = 1;

	if (poll(&p, 1, 5000) <= 0) {
		srv_fail(s, "no client connected");
		return NULL;
	}
	s->fd = accept(s->lfd, NULL, NULL);
	if (s->fd < 0) {
		srv_fail(s, "accept failed");
		return NULL;
	}
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (const struct step *st = s->steps;; st++) {
		switch (st->kind) {
		case SEND:
			if (send(s->fd, st->data, st->len, MSG_NOSIGNAL) !=
			    (ssize_t)st->len) {
				srv_fail(s, "client closed while sending");
				goto out;
			}
			break;
		case DRIP:
			for (size_t i = 0; i < st->len; i++) {
				struct timespec ts = {0, 1000000};

				if (send(s->fd, st->data + i, 1,
				         MSG_NOSIGNAL) != 1) {
					srv_fail(s, "client closed while "
					            "dripping");
					goto out;
				}
				nanosleep(&ts, NULL);
			}
			break;
		case EXPECT:
			if (!srv_expect(s, st))
				goto out;
			break;
		case QUIET:
			if (s->blen > 0 || srv_recv(s, 150) >= 0) {
				srv_fail(s, "client sent \"%.*s\" too early",
				         (int)s->blen, s->buf);
				goto out;
			}
			break;
		case EOF_: {
			int rc = s->blen > 0 ? 1 : srv_recv(s, 5000);

			if (rc != 0)
				srv_fail(s,
				         "expected the client to close, "
				         "got %s \"%.*s\"",
				         rc < 0 ? "nothing" : "data",
				         (int)s->blen, s->buf);
			goto out;
		}
		case STALL:
			while (srv_recv(s, 5000) > 0)
				s->blen = 0;
			goto out;
		case CLOSE: goto out;
		}
	}
out:
	if (s->failure[0] == '\0')
		s->finished = true;
	close(s->fd);
	s->fd = -1;
	return NULL;
}

static void srv_start(struct server *s, const struct step *steps)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t alen = sizeof(a);

	memset(s, 0, sizeof(*s));
	s->steps = steps;
	s->fd = -1;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->lfd, 1), 0);
	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
	snprintf(s->port, sizeof(s->port), "%u", ntohs(a.sin_port));
	assert_int_equal(pthread_create(&s->thread, NULL, srv_run, s), 0);
}

static void srv_finish(struct server *s)
{
	pthread_join(s->thread, NULL);
	close(s->lfd);
	if (s->failure[0] != '\0')
		fail_msg("server: %s", s->failure);
	assert_true(s->finished);
}

static void config(struct pop3_config *cfg, const struct server *s)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->host = "127.0.0.1";
	cfg->port = s->port;
	cfg->tls = POP3_TLS_NONE;
	cfg->user = "alice";
	cfg->password = "secret";
	cfg->timeout_ms = 3000;
}

/* Connect with cfg; expect rc, class and a text fragment. */
static struct pop3_client *connect_expect(const struct pop3_config *cfg,
                                          int want_rc,
                                          enum proto_err_class want_cls,
                                          const char *want_text)
{
	struct pop3_client *c = NULL;
	struct proto_err err = {0};
	int rc = pop3_connect(&c, cfg, &err);

	if (rc != want_rc)
		fail_msg("pop3_connect: %d (%s: %s), wanted %d", rc,
		         proto_err_class_name(err.cls), err.text, want_rc);
	if (rc == 0) {
		assert_non_null(c);
		assert_int_equal(err.cls, PERR_NONE);
		return c;
	}
	assert_null(c);
	assert_int_equal(err.cls, want_cls);
	assert_int_equal(err.code, rc);
	if (want_text != NULL && strstr(err.text, want_text) == NULL)
		fail_msg("error text \"%s\" lacks \"%s\"", err.text, want_text);
	return NULL;
}

/* AGFsaWNlAHNlY3JldA== is base64("\0alice\0secret"). */
#define LOGIN_PLAIN                                                            \
	S("+OK Dovecot ready."), C("CAPA"), S("+OK"), S("TOP"), S("UIDL"),     \
	        S("RESP-CODES"), S("PIPELINING"), S("USER"),                   \
	        S("SASL PLAIN LOGIN"), S("."),                                 \
	        C("AUTH PLAIN AGFsaWNlAHNlY3JldA=="), S("+OK Logged in."),     \
	        C("CAPA"), S("+OK"), S("TOP"), S("UIDL"), S("RESP-CODES"),     \
	        S("PIPELINING"), S(".")

#define LOGIN_NOPIPE                                                           \
	S("+OK Dovecot ready."), C("CAPA"), S("+OK"), S("UIDL"), S("USER"),    \
	        S("."), C("USER alice"), S("+OK"), C("PASS secret"),           \
	        S("+OK Logged in."), C("CAPA"), S("+OK"), S("UIDL"), S("TOP"), \
	        S(".")

static void test_login_plain_and_quit(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,           C("NOOP"), S("+OK"), C("QUIT"),
	        S("+OK Logging out."), EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_true(pop3_has_cap(c, "PIPELINING"));
	assert_true(pop3_has_cap(c, "pipelining"));
	assert_false(pop3_has_cap(c, "PIPE"));
	assert_false(pop3_has_cap(c, "USER")); /* the list after login */
	assert_true(pop3_capa_known(c));
	assert_null(pop3_error(c));
	assert_int_equal(pop3_noop(c, &err), 0);
	assert_int_equal(pop3_quit(&c, &err), 0);
	assert_null(c);
	srv_finish(&s);
}

static void test_login_user_pass(void **state)
{
	static const struct step steps[] = {
	        LOGIN_NOPIPE,
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_false(pop3_has_cap(c, "PIPELINING"));
	assert_false(pop3_has_sasl(c, "PLAIN"));
	pop3_free(&c); /* no QUIT */
	assert_null(c);
	srv_finish(&s);
}

static void test_login_sasl_list(void **state)
{
	static const struct step steps[] = {
	        S("+OK hi"),  C("CAPA"),
	        S("+OK"),     S("SASL\tLOGIN  XOAUTH2 PLAIN"),
	        S("."),       C("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
	        S("+OK"),     C("CAPA"),
	        S("-ERR no"), EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_false(pop3_capa_known(c));
	pop3_free(&c);
	srv_finish(&s);
}

/* RFC 1939 section 7, with a server that has neither CAPA nor USER. */
static void test_login_apop_fallback(void **state)
{
	static const struct step steps[] = {
	        S("+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
	        C("CAPA"),
	        S("-ERR unknown command"),
	        C("USER mrose"),
	        S("-ERR unknown command"),
	        C("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
	        S("+OK mrose's maildrop has 2 messages (320 octets)"),
	        C("STAT"),
	        S("+OK 2 320"),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	uint64_t size;
	unsigned n;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.user = "mrose";
	cfg.password = "tanstaaf";
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_stat(c, &n, &size, &err), 0);
	assert_int_equal(n, 2);
	assert_int_equal(size, 320);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

/* CAPA offers nothing but the greeting has a timestamp: APOP. */
static void test_login_apop_only(void **state)
{
	static const struct step steps[] = {
	        S("+OK <1896.697170952@dbc.mtview.ca.us>"),
	        C("CAPA"),
	        S("+OK"),
	        S("UIDL"),
	        S("."),
	        C("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
	        S("-ERR [AUTH] permission denied"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.user = "mrose";
	cfg.password = "tanstaaf";
	connect_expect(&cfg, -EACCES, PERR_AUTH,
	               "refused the login for mrose: [AUTH] permission denied");
	srv_finish(&s);
}

static void test_login_nothing_usable(void **state)
{
	static const struct step steps[] = {
	        S("+OK hi"),      C("CAPA"), S("+OK"),
	        S("SASL GSSAPI"), S("."),    EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EPROTONOSUPPORT, PERR_AUTH, "no login");
	srv_finish(&s);
}

static void test_login_refused(void **state)
{
	static const struct step steps[] = {
	        S("+OK Dovecot ready."),
	        C("CAPA"),
	        S("+OK"),
	        S("SASL PLAIN"),
	        S("."),
	        C("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
	        S("-ERR [AUTH] Authentication failed."),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EACCES, PERR_AUTH,
	               "127.0.0.1 refused the login for alice: [AUTH] "
	               "Authentication failed.");
	srv_finish(&s);
}

static void test_login_in_use(void **state)
{
	static const struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("+OK"),
	        S("USER"),
	        S("RESP-CODES"),
	        S("."),
	        C("USER alice"),
	        S("+OK"),
	        C("PASS secret"),
	        S("-ERR [IN-USE] Mailbox is locked by another POP3 session"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EBUSY, PERR_NO, "locked by another client");
	srv_finish(&s);
}

static void test_login_sys_temp(void **state)
{
	static const struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("+OK"),
	        S("SASL PLAIN"),
	        S("."),
	        C("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
	        S("-ERR [SYS/TEMP] Temporary authentication failure"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EAGAIN, PERR_NO,
	               "[SYS/TEMP] Temporary authentication failure");
	srv_finish(&s);
}

/* A token too long for the AUTH line waits for the "+"; the error
 * challenge gets an empty answer (XOAUTH2). */
static void test_login_xoauth2(void **state)
{
	static char token[300];
	static char expect[1024];
	static struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("+OK"),
	        S("SASL PLAIN XOAUTH2"),
	        S("."),
	        C("AUTH XOAUTH2"),
	        S("+ "),
	        {EXPECT, expect, 0},
	        S("+ eyJzdGF0dXMiOiI0MDEifQ=="),
	        C(""),
	        S("-ERR Authentication failure: unknown user name or bad "
	          "password."),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;
	char *b64 = NULL;

	(void)state;
	memset(token, 'T', sizeof(token) - 1);
	token[sizeof(token) - 1] = '\0';
	assert_int_equal(sasl_xoauth2("alice", token, &b64), 0);
	snprintf(expect, sizeof(expect), "%s", b64);
	steps[7].len = strlen(expect);
	sasl_free_secret(&b64);
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.password = NULL;
	cfg.oauth2_token = token;
	connect_expect(&cfg, -EACCES, PERR_AUTH, "unknown user name");
	srv_finish(&s);
}

static void test_greeting_err(void **state)
{
	static const struct step steps[] = {
	        S("-ERR [SYS/TEMP] too many connections"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -ECONNREFUSED, PERR_BYE, "too many connections");
	srv_finish(&s);
}

static void test_greeting_garbage(void **state)
{
	static const struct step steps[] = {
	        S("* OK IMAP4rev1 ready"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EPROTO, PERR_PROTOCOL, "not a POP3 status line");
	srv_finish(&s);
}

static void test_greeting_too_long(void **state)
{
	static char line[POP3_MAX_LINE + 64];
	static struct step steps[] = {
	        {SEND, line, 0},
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	memcpy(line, "+OK ", 4);
	memset(line + 4, 'x', sizeof(line) - 4);
	steps[0].len = sizeof(line);
	srv_start(&s, steps);
	config(&cfg, &s);
	connect_expect(&cfg, -EPROTO, PERR_PROTOCOL, "longer than");
	srv_finish(&s);
}

static void test_greeting_stall(void **state)
{
	static const struct step steps[] = {
	        STALL_,
	};
	struct pop3_config cfg;
	struct server s;
	struct timespec t0, t1;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.timeout_ms = 300;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	connect_expect(&cfg, -ETIMEDOUT, PERR_TIMEOUT, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec < 3);
	srv_finish(&s);
}

static void test_stls_required_in_plaintext_mode(void **state)
{
	/* POP3_TLS_STLS with a server that lists no STLS: nothing but
	 * CAPA is sent. */
	static const struct step steps[] = {
	        S("+OK ready"),  C("CAPA"), S("+OK"), S("USER"),
	        S("SASL PLAIN"), S("."),    EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.tls = POP3_TLS_STLS;
	connect_expect(&cfg, -EPROTONOSUPPORT, PERR_NOTLS,
	               "does not offer STLS");
	srv_finish(&s);
}

static void test_stls_no_capa(void **state)
{
	static const struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("-ERR what?"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.tls = POP3_TLS_STLS;
	connect_expect(&cfg, -EPROTONOSUPPORT, PERR_NOTLS,
	               "does not offer STLS");
	srv_finish(&s);
}

static void test_stls_refused(void **state)
{
	static const struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("+OK"),
	        S("STLS"),
	        S("."),
	        C("STLS"),
	        S("-ERR TLS not available now"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.tls = POP3_TLS_STLS;
	connect_expect(&cfg, -EPROTONOSUPPORT, PERR_NOTLS,
	               "refused STLS: TLS not available now");
	srv_finish(&s);
}

/* Plaintext sent right after the STLS +OK (injection): refused before
 * the handshake. */
static void test_stls_injection(void **state)
{
	static const struct step steps[] = {
	        S("+OK ready"),
	        C("CAPA"),
	        S("+OK"),
	        S("STLS"),
	        S("."),
	        C("STLS"),
	        RAW("+OK Begin TLS negotiation\r\n+OK injected\r\n"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.tls = POP3_TLS_STLS;
	connect_expect(&cfg, -EPROTO, PERR_PROTOCOL, "before the TLS");
	srv_finish(&s);
}

/* --- commands ------------------------------------------------------------ */

struct uidls {
	unsigned n;
	unsigned num[8];
	char uid[8][POP3_MAX_UID + 1];
	uint64_t size[8];
};

static void uid_cb(void *ctx, unsigned msgnum, const char *uid)
{
	struct uidls *u = ctx;

	assert_true(u->n < 8);
	u->num[u->n] = msgnum;
	snprintf(u->uid[u->n], sizeof(u->uid[0]), "%s", uid);
	u->n++;
}

static void size_cb(void *ctx, unsigned msgnum, uint64_t size)
{
	struct uidls *u = ctx;

	assert_true(u->n < 8);
	u->num[u->n] = msgnum;
	u->size[u->n] = size;
	u->n++;
}

static void test_listings(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("STAT"),
	        S("+OK 3 1234567890123"),
	        C("UIDL"),
	        S("+OK"),
	        S("1 00000001579c6f19"),
	        S("2\tweird!uid~"),
	        S("3  x "),
	        S("."),
	        C("LIST"),
	        S("+OK 3 messages:"),
	        S("1 120"),
	        S("2 18446744073709551615"),
	        S("3 5 extra"),
	        S("."),
	        /* Malformed lines fail the command, not the session. */
	        C("UIDL"),
	        S("+OK"),
	        S("1 a"),
	        S("x b"),
	        S("3 c d"),
	        S("."),
	        C("LIST"),
	        S("+OK"),
	        S("1 18446744073709551616"),
	        S("."),
	        C("UIDL"),
	        S("+OK"),
	        S("0 zero"),
	        S("."),
	        C("NOOP"),
	        S("+OK"),
	        C("STAT"),
	        S("+OK x"),
	        C("RSET"),
	        S("+OK"),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct uidls u = {0};
	uint64_t size;
	unsigned n;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_stat(c, &n, &size, &err), 0);
	assert_int_equal(n, 3);
	assert_int_equal(size, 1234567890123ULL);
	assert_int_equal(pop3_uidl_all(c, uid_cb, &u, &err), 0);
	assert_int_equal(u.n, 3);
	assert_int_equal(u.num[0], 1);
	assert_string_equal(u.uid[0], "00000001579c6f19");
	assert_int_equal(u.num[1], 2);
	assert_string_equal(u.uid[1], "weird!uid~");
	assert_string_equal(u.uid[2], "x");
	memset(&u, 0, sizeof(u));
	assert_int_equal(pop3_list_all(c, size_cb, &u, &err), 0);
	assert_int_equal(u.n, 3);
	assert_int_equal(u.size[0], 120);
	assert_int_equal(u.size[1], UINT64_MAX);
	assert_int_equal(u.size[2], 5);

	memset(&u, 0, sizeof(u));
	assert_int_equal(pop3_uidl_all(c, uid_cb, &u, &err), -EPROTO);
	assert_int_equal(err.cls, PERR_PROTOCOL);
	assert_non_null(strstr(err.text, "\"x b\""));
	assert_int_equal(u.n, 1);
	proto_err_clear(&err);
	assert_int_equal(pop3_list_all(c, size_cb, &u, &err), -EPROTO);
	proto_err_clear(&err);
	assert_int_equal(pop3_uidl_all(c, uid_cb, &u, &err), -EPROTO);
	proto_err_clear(&err);
	assert_null(pop3_error(c));
	assert_int_equal(pop3_noop(c, &err), 0);
	assert_int_equal(pop3_stat(c, &n, &size, &err), -EPROTO);
	proto_err_clear(&err);
	assert_int_equal(pop3_rset(c, &err), 0);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

static void test_uidl_unsupported(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("UIDL"),
	        S("-ERR Unknown command: UIDL"),
	        C("TOP 1 0"),
	        S("+OK"),
	        S("Message-ID: <1@x>"),
	        S("Subject: hi"),
	        S(""),
	        S("."),
	        C("TOP 2 0"),
	        S("-ERR no such message"),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct uidls u = {0};
	char *data;
	size_t len;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_uidl_all(c, uid_cb, &u, &err), -ENOTSUP);
	assert_int_equal(err.cls, PERR_NO);
	assert_non_null(strstr(err.text, "Unknown command: UIDL"));
	proto_err_clear(&err);
	assert_int_equal(pop3_top_buf(c, 1, 0, &data, &len, &err), 0);
	assert_int_equal(len, 34);
	assert_memory_equal(data, "Message-ID: <1@x>\r\nSubject: hi\r\n\r\n",
	                    len);
	assert_int_equal(data[len], '\0');
	free(data);
	assert_int_equal(pop3_top_buf(c, 2, 0, &data, &len, &err), -ENOENT);
	assert_null(data);
	assert_int_equal(err.cls, PERR_NO);
	assert_non_null(strstr(err.text, "no such message"));
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

/* What a sink saw. */
struct msgs {
	unsigned n;
	struct {
		unsigned msgnum;
		int rc;
		char err[512];
		char data[512];
		size_t len;
		bool begun;
	} m[8];
	unsigned fail_data_of; /* msgnum whose data callback fails */
};

static int m_begin(void *ctx, unsigned msgnum)
{
	struct msgs *m = ctx;

	assert_true(m->n < 8);
	m->m[m->n].msgnum = msgnum;
	m->m[m->n].begun = true;
	return 0;
}

static int m_data(void *ctx, unsigned msgnum, const char *buf, size_t len)
{
	struct msgs *m = ctx;

	assert_int_equal(m->m[m->n].msgnum, msgnum);
	if (msgnum == m->fail_data_of)
		return -ENOSPC;
	assert_true(len <= sizeof(m->m[0].data) - m->m[m->n].len);
	memcpy(m->m[m->n].data + m->m[m->n].len, buf, len);
	m->m[m->n].len += len;
	return 0;
}

static void m_end(void *ctx, unsigned msgnum, int rc, const struct proto_err *e)
{
	struct msgs *m = ctx;

	assert_true(m->n < 8);
	if (!m->m[m->n].begun)
		m->m[m->n].msgnum = msgnum;
	assert_int_equal(m->m[m->n].msgnum, msgnum);
	m->m[m->n].rc = rc;
	if (rc < 0) {
		assert_non_null(e);
		assert_int_equal(e->code, rc);
		snprintf(m->m[m->n].err, sizeof(m->m[0].err), "%s", e->text);
	}
	m->n++;
}

#define MSG1 "From: a\r\n\r\n..leading dot\r\n.\r\n"
#define MSG3 "x\r\n..\r\n\r\n.\r\n"

static void test_retr_pipelined(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        /* All four commands arrive before any answer. */
	        C("RETR 1"),
	        C("RETR 2"),
	        C("RETR 3"),
	        C("RETR 4"),
	        QUIET_,
	        RAW("+OK 30 octets\r\n" MSG1 "-ERR [SYS/TEMP] cannot read "
	            "message 2\r\n+OK\r\n"),
	        D(MSG3 "+OK\r\n.\r\n"),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	static const unsigned nums[] = {1, 2, 3, 4};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct msgs m = {0};
	struct pop3_sink sink = {m_begin, m_data, m_end, &m};

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr_many(c, nums, 4, &sink, &err), 0);
	assert_int_equal(err.cls, PERR_NONE);
	assert_int_equal(m.n, 4);
	assert_int_equal(m.m[0].rc, 0);
	assert_int_equal(m.m[0].len, 25);
	assert_memory_equal(m.m[0].data, "From: a\r\n\r\n.leading dot\r\n",
	                    m.m[0].len);
	assert_int_equal(m.m[1].msgnum, 2);
	assert_false(m.m[1].begun);
	assert_int_equal(m.m[1].rc, -EAGAIN);
	assert_non_null(strstr(m.m[1].err, "[SYS/TEMP] cannot read message 2"));
	assert_int_equal(m.m[2].rc, 0);
	assert_int_equal(m.m[2].len, 8);
	assert_memory_equal(m.m[2].data, "x\r\n.\r\n\r\n", 8);
	assert_int_equal(m.m[3].rc, 0);
	assert_true(m.m[3].begun);
	assert_int_equal(m.m[3].len, 0);
	assert_int_equal(pop3_max_inflight(c), 4);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

static void test_retr_one_at_a_time(void **state)
{
	static const struct step steps[] = {
	        LOGIN_NOPIPE,
	        C("RETR 1"),
	        QUIET_,
	        RAW("+OK\r\n" MSG1),
	        C("RETR 3"),
	        QUIET_,
	        D("+OK\r\n" MSG3),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	static const unsigned nums[] = {1, 3};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct msgs m = {0};
	struct pop3_sink sink = {m_begin, m_data, m_end, &m};

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr_many(c, nums, 2, &sink, &err), 0);
	assert_int_equal(m.n, 2);
	assert_int_equal(m.m[1].len, 8);
	assert_int_equal(pop3_max_inflight(c), 1);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

/* A sink that fails: the message is read to its end and the next one is
 * delivered normally. */
static void test_retr_sink_error(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN, C("RETR 1"),
	        C("RETR 3"), RAW("+OK\r\n" MSG1 "+OK\r\n" MSG3),
	        C("QUIT"),   S("+OK"),
	        EOF_S,
	};
	static const unsigned nums[] = {1, 3};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct msgs m = {.fail_data_of = 1};
	struct pop3_sink sink = {m_begin, m_data, m_end, &m};

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr_many(c, nums, 2, &sink, &err), 0);
	assert_int_equal(m.n, 2);
	assert_int_equal(m.m[0].rc, -ENOSPC);
	assert_int_equal(m.m[1].rc, 0);
	assert_int_equal(m.m[1].len, 8);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

static void test_retr_buf_and_limit(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("RETR 1"),
	        RAW("+OK\r\n.\r\n"),
	        C("RETR 2"),
	        RAW("+OK\r\n0123456789\r\n.\r\n"),
	        C("RETR 3"),
	        RAW("+OK\r\n0123456789a\r\n.\r\n"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	char *data;
	size_t len;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	cfg.max_message = 12;
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr_buf(c, 1, &data, &len, &err), 0);
	assert_int_equal(len, 0);
	assert_int_equal(data[0], '\0');
	free(data);
	assert_int_equal(pop3_retr_buf(c, 2, &data, &len, &err), 0);
	assert_int_equal(len, 12);
	free(data);
	assert_int_equal(pop3_retr_buf(c, 3, &data, &len, &err), -EMSGSIZE);
	assert_null(data);
	assert_int_equal(err.cls, PERR_PROTOCOL);
	assert_non_null(pop3_error(c));
	/* Dead: everything fails at once with the same error. */
	proto_err_clear(&err);
	assert_int_equal(pop3_noop(c, &err), -EMSGSIZE);
	assert_int_equal(err.cls, PERR_PROTOCOL);
	proto_err_clear(&err);
	assert_int_equal(pop3_quit(&c, &err), -EMSGSIZE);
	assert_null(c);
	srv_finish(&s);
}

static void test_retr_eof_mid_message(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("RETR 1"),
	        RAW("+OK\r\nhalf a mess"),
	        CLOSE_,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	struct msgs m = {0};
	struct pop3_sink sink = {m_begin, m_data, m_end, &m};

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr(c, 1, &sink, &err), -ECONNRESET);
	assert_int_equal(err.cls, PERR_CONNECT);
	assert_int_equal(m.n, 1);
	assert_int_equal(m.m[0].rc, -ECONNRESET);
	pop3_free(&c);
	pthread_join(s.thread, NULL);
	close(s.lfd);
}

static void test_continuation_outside_auth(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("NOOP"),
	        S("+ what"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_noop(c, &err), -EPROTO);
	assert_int_equal(err.cls, PERR_PROTOCOL);
	pop3_free(&c);
	srv_finish(&s);
}

static void test_dele_quit(void **state)
{
	static const struct step steps[] = {
	        LOGIN_PLAIN,
	        C("DELE 1"),
	        S("+OK Marked to be deleted."),
	        C("DELE 2"),
	        C("DELE 9"),
	        C("DELE 3"),
	        S("+OK"),
	        S("-ERR There's no message 9."),
	        S("+OK"),
	        C("QUIT"),
	        S("-ERR [SYS/TEMP] Couldn't delete all messages"),
	        EOF_S,
	};
	static const unsigned nums[] = {2, 9, 3};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_dele(c, 1, &err), 0);
	assert_int_equal(pop3_dele_many(c, nums, 3, &err), -ENOENT);
	assert_int_equal(err.cls, PERR_NO);
	assert_non_null(strstr(err.text, "no message 9"));
	proto_err_clear(&err);
	assert_int_equal(pop3_quit(&c, &err), -EIO);
	assert_int_equal(err.cls, PERR_NO);
	assert_non_null(strstr(err.text, "did not commit"));
	srv_finish(&s);
}

/* Status lines with bare LF and a body dripped in one byte at a time. */
static void test_bare_lf_status_and_drip(void **state)
{
	static const struct step steps[] = {
	        D("+OK hi\n"),
	        C("CAPA"),
	        D("+OK\nUSER\r\n.\r\n"),
	        C("USER alice"),
	        D("+OK\n"),
	        C("PASS secret"),
	        D("+OK\n"),
	        C("CAPA"),
	        D("+OK\r\n.\r\n"),
	        C("RETR 1"),
	        D("+OK\r\n" MSG1),
	        C("QUIT"),
	        S("+OK"),
	        EOF_S,
	};
	struct pop3_config cfg;
	struct pop3_client *c;
	struct proto_err err = {0};
	struct server s;
	char *data;
	size_t len;

	(void)state;
	srv_start(&s, steps);
	config(&cfg, &s);
	c = connect_expect(&cfg, 0, 0, NULL);
	assert_int_equal(pop3_retr_buf(c, 1, &data, &len, &err), 0);
	assert_int_equal(len, 25);
	free(data);
	assert_int_equal(pop3_quit(&c, &err), 0);
	srv_finish(&s);
}

/* The password, its base64 and the digest never reach the log. */
static void test_secrets_not_logged(void **state)
{
	static const struct step plain[] = {LOGIN_PLAIN, EOF_S};
	static const struct step user[] = {LOGIN_NOPIPE, EOF_S};
	static const struct step apop[] = {
	        S("+OK <1896.697170952@dbc.mtview.ca.us>"),
	        C("CAPA"),
	        S("+OK"),
	        S("."),
	        C("APOP alice 3f18b52881e44c0cc6067f46e0ced7bc"),
	        S("-ERR no"),
	        EOF_S,
	};
	const struct step *scripts[] = {plain, user, apop};
	FILE *log;
	struct pop3_config cfg;
	struct pop3_client *c = NULL;
	struct proto_err err;
	char buf[65536];
	int fd, saved;
	ssize_t n;

	(void)state;
	log = tmpfile();
	assert_non_null(log);
	fd = fileno(log);
	saved = dup(2);
	log_set_level(LOG_DEBUG);
	dup2(fd, 2);
	for (size_t i = 0; i < 3; i++) {
		struct server s;

		srv_start(&s, scripts[i]);
		config(&cfg, &s);
		memset(&err, 0, sizeof(err));
		pop3_connect(&c, &cfg, &err);
		pop3_free(&c);
		pthread_join(s.thread, NULL);
		close(s.lfd);
	}
	dup2(saved, 2);
	close(saved);
	log_set_level(LOG_ERR);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	fclose(log);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_non_null(strstr(buf, "C: AUTH PLAIN <hidden>"));
	assert_non_null(strstr(buf, "C: PASS <hidden>"));
	assert_non_null(strstr(buf, "C: APOP alice <hidden>"));
	assert_non_null(strstr(buf, "-> transaction"));
	assert_null(strstr(buf, "secret"));
	assert_null(strstr(buf, "AGFsaWNlAHNlY3JldA"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_unstuff_vectors),
	        cmocka_unit_test(test_unstuff_terminator_splits),
	        cmocka_unit_test(test_unstuff_runs),
	        cmocka_unit_test(test_unstuff_out_error),
	        cmocka_unit_test(test_unstuff_random),
	        cmocka_unit_test(test_line_find),
	        cmocka_unit_test(test_status_parse),
	        cmocka_unit_test(test_status_codes),
	        cmocka_unit_test(test_apop),
	        cmocka_unit_test(test_stat_parse),
	        cmocka_unit_test(test_listing_parse),
	        cmocka_unit_test(test_capa_parse),
	        cmocka_unit_test(test_login_plain_and_quit),
	        cmocka_unit_test(test_login_user_pass),
	        cmocka_unit_test(test_login_sasl_list),
	        cmocka_unit_test(test_login_apop_fallback),
	        cmocka_unit_test(test_login_apop_only),
	        cmocka_unit_test(test_login_nothing_usable),
	        cmocka_unit_test(test_login_refused),
	        cmocka_unit_test(test_login_in_use),
	        cmocka_unit_test(test_login_sys_temp),
	        cmocka_unit_test(test_login_xoauth2),
	        cmocka_unit_test(test_greeting_err),
	        cmocka_unit_test(test_greeting_garbage),
	        cmocka_unit_test(test_greeting_too_long),
	        cmocka_unit_test(test_greeting_stall),
	        cmocka_unit_test(test_stls_required_in_plaintext_mode),
	        cmocka_unit_test(test_stls_no_capa),
	        cmocka_unit_test(test_stls_refused),
	        cmocka_unit_test(test_stls_injection),
	        cmocka_unit_test(test_listings),
	        cmocka_unit_test(test_uidl_unsupported),
	        cmocka_unit_test(test_retr_pipelined),
	        cmocka_unit_test(test_retr_one_at_a_time),
	        cmocka_unit_test(test_retr_sink_error),
	        cmocka_unit_test(test_retr_buf_and_limit),
	        cmocka_unit_test(test_retr_eof_mid_message),
	        cmocka_unit_test(test_continuation_outside_auth),
	        cmocka_unit_test(test_dele_quit),
	        cmocka_unit_test(test_bare_lf_status_and_drip),
	        cmocka_unit_test(test_secrets_not_logged),
	};

	signal(SIGPIPE, SIG_IGN);
	log_set_level(getenv("POP3_TEST_DEBUG") ? LOG_DEBUG : LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
