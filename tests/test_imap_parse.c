/* Tests of the IMAP response parser.
 *
 * Every vector is parsed several times: in one feed, one byte at a time and
 * in chunks of five bytes; the sequence of results (trees, error offsets and
 * messages, streamed bytes) must be identical before any value is checked.
 * Vectors are modelled on what Dovecot, Gmail, Exchange and the RFC
 * examples send. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/imap_parse.h"

/* --- running a vector --------------------------------------------------- */

#define MAX_EVENTS  16
#define MAX_STREAMS 8

struct event {
	int rc;     /* DONE, ERROR, or MORE when the input ended mid-response */
	size_t end; /* offset just after the response, or of the error */
	struct imap_response *resp;
	int errnum;
	char err[256];
};

/* Records what a literal sink is told. */
struct rec {
	int begins, ends, aborts;
	size_t data_calls;
	struct {
		uint64_t size;
		bool item_null;
		char item[80];
		bool has_number;
		uint32_t number;
		char keyword[32];
		size_t nargs;
		size_t start; /* offset in data */
	} lit[MAX_STREAMS];
	unsigned char data[8192];
	size_t data_len;
	bool in_literal;
	/* Fail a callback with this errno (0: succeed). */
	int fail_begin, fail_data, fail_end;
};

struct run {
	struct event ev[MAX_EVENTS];
	size_t n;
	struct rec rec;
};

static int rec_begin(void *ctx, const struct imap_response *partial,
                     const char *item, uint64_t size)
{
	struct rec *r = ctx;
	int i = r->begins;

	assert_false(r->in_literal);
	assert_non_null(partial);
	assert_true(i < MAX_STREAMS);
	r->begins++;
	r->lit[i].size = size;
	r->lit[i].item_null = item == NULL;
	snprintf(r->lit[i].item, sizeof(r->lit[i].item), "%s",
	         item ? item : "");
	r->lit[i].has_number = partial->has_number;
	r->lit[i].number = partial->number;
	snprintf(r->lit[i].keyword, sizeof(r->lit[i].keyword), "%s",
	         partial->keyword ? partial->keyword : "");
	r->lit[i].nargs = partial->args.count;
	r->lit[i].start = r->data_len;
	if (r->fail_begin)
		return r->fail_begin;
	r->in_literal = true;
	return 0;
}

static int rec_data(void *ctx, const void *buf, size_t len)
{
	struct rec *r = ctx;

	assert_true(r->in_literal);
	assert_true(len > 0);
	assert_true(r->data_len + len <= sizeof(r->data));
	memcpy(r->data + r->data_len, buf, len);
	r->data_len += len;
	r->data_calls++;
	return r->fail_data;
}

static int rec_end(void *ctx)
{
	struct rec *r = ctx;

	assert_true(r->in_literal);
	r->in_literal = false;
	r->ends++;
	assert_int_equal(r->data_len - r->lit[r->begins - 1].start,
	                 r->lit[r->begins - 1].size);
	return r->fail_end;
}

static void rec_abort(void *ctx)
{
	struct rec *r = ctx;

	assert_true(r->in_literal);
	r->in_literal = false;
	r->aborts++;
}

static const struct imap_literal_sink rec_sink = {
        .begin = rec_begin,
        .data = rec_data,
        .end = rec_end,
        .abort = rec_abort,
};

/* Feed buf to a new parser in chunks of chunk bytes (0: all at once). */
static void run_feed(const struct imap_parser_limits *lim, bool sink,
                     const struct rec *rec_init, const void *buf, size_t len,
                     size_t chunk, struct run *r)
{
	const unsigned char *in = buf;
	struct imap_parser *p;
	size_t pos = 0;
	int rc = IMAP_PARSE_DONE;

	memset(r, 0, sizeof(*r));
	if (rec_init != NULL)
		r->rec = *rec_init;
	assert_int_equal(imap_parser_new(lim, &p), 0);
	if (sink)
		imap_parser_set_sink(p, &rec_sink, &r->rec);
	while (pos < len) {
		size_t n = chunk ? chunk : len - pos;
		size_t used = 0;
		struct imap_response *resp = NULL;

		if (n > len - pos)
			n = len - pos;
		rc = imap_parser_feed(p, in + pos, n, &used, &resp);
		assert_true(used <= n);
		if (rc == IMAP_PARSE_MORE) {
			assert_int_equal(used, n);
			assert_null(resp);
			pos += n;
			continue;
		}
		assert_true(r->n < MAX_EVENTS);
		r->ev[r->n].rc = rc;
		r->ev[r->n].end = pos + used;
		r->ev[r->n].resp = resp;
		r->n++;
		if (rc == IMAP_PARSE_ERROR) {
			struct event *e = &r->ev[r->n - 1];

			assert_null(resp);
			e->errnum = imap_parser_errno(p);
			assert_true(e->errnum < 0);
			snprintf(e->err, sizeof(e->err), "%s",
			         imap_parser_error(p));
			assert_true(strlen(e->err) > 0);
			/* Dead for good. */
			assert_int_equal(imap_parser_feed(p, "* OK\r\n", 6,
			                                  &used, &resp),
			                 IMAP_PARSE_ERROR);
			assert_null(resp);
			break;
		}
		assert_int_equal(rc, IMAP_PARSE_DONE);
		assert_non_null(resp);
		assert_true(used > 0);
		pos += used;
	}
	if (rc == IMAP_PARSE_MORE) {
		assert_true(r->n < MAX_EVENTS);
		r->ev[r->n].rc = IMAP_PARSE_MORE;
		r->ev[r->n].end = len;
		r->n++;
	}
	imap_parser_free(&p);
	assert_null(p);
}

static void run_free(struct run *r)
{
	for (size_t i = 0; i < r->n; i++)
		imap_response_free(&r->ev[i].resp);
	r->n = 0;
}

static void assert_runs_equal(const struct run *a, const struct run *b,
                              bool sink_errors_at_chunk)
{
	assert_int_equal(a->n, b->n);
	for (size_t i = 0; i < a->n; i++) {
		const struct event *x = &a->ev[i], *y = &b->ev[i];

		assert_int_equal(x->rc, y->rc);
		assert_int_equal(x->errnum, y->errnum);
		if (x->rc == IMAP_PARSE_ERROR && sink_errors_at_chunk)
			continue; /* a failing data() sees other chunks */
		assert_int_equal(x->end, y->end);
		assert_string_equal(x->err, y->err);
		if (x->rc == IMAP_PARSE_DONE)
			assert_true(imap_response_equal(x->resp, y->resp));
	}
	assert_int_equal(a->rec.begins, b->rec.begins);
	assert_int_equal(a->rec.ends, b->rec.ends);
	assert_int_equal(a->rec.aborts, b->rec.aborts);
	if (sink_errors_at_chunk)
		return;
	assert_int_equal(a->rec.data_len, b->rec.data_len);
	assert_memory_equal(a->rec.data, b->rec.data, a->rec.data_len);
	for (int i = 0; i < a->rec.begins; i++) {
		assert_int_equal(a->rec.lit[i].size, b->rec.lit[i].size);
		assert_string_equal(a->rec.lit[i].item, b->rec.lit[i].item);
		assert_int_equal(a->rec.lit[i].item_null,
		                 b->rec.lit[i].item_null);
		assert_int_equal(a->rec.lit[i].nargs, b->rec.lit[i].nargs);
	}
}

/* Run whole, byte by byte and in chunks of 5; check they agree; leave the
 * whole-buffer run in *r. */
static void run_all(const struct imap_parser_limits *lim, bool sink,
                    const struct rec *rec_init, const void *buf, size_t len,
                    struct run *r)
{
	static const size_t chunks[] = {1, 5};
	bool chunk_errs = rec_init != NULL && rec_init->fail_data != 0;

	run_feed(lim, sink, rec_init, buf, len, 0, r);
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		struct run *o = malloc(sizeof(*o));

		assert_non_null(o);
		run_feed(lim, sink, rec_init, buf, len, chunks[i], o);
		assert_runs_equal(r, o, chunk_errs);
		run_free(o);
		free(o);
	}
}

#define RUN_ALL(lim, sink, init, s, run)                                       \
	run_all(lim, sink, init, s, sizeof(s) - 1, run)

/* Parse one complete response with default limits and no sink. */
static struct imap_response *parse_n(const char *s, size_t len)
{
	struct run *r = malloc(sizeof(*r));
	struct imap_response *resp;

	assert_non_null(r);
	run_all(NULL, false, NULL, s, len, r);
	if (r->n != 1 || r->ev[0].rc != IMAP_PARSE_DONE)
		print_error("vector: %.*s\nerror: %s\n", (int)len, s,
		            r->ev[0].err);
	assert_int_equal(r->n, 1);
	assert_int_equal(r->ev[0].rc, IMAP_PARSE_DONE);
	assert_int_equal(r->ev[0].end, len);
	resp = r->ev[0].resp;
	r->ev[0].resp = NULL;
	run_free(r);
	free(r);
	return resp;
}

#define PARSE(s) parse_n(s, sizeof(s) - 1)

/* Expect the vector to fail with errnum and a message containing msg. */
static void error_n(const struct imap_parser_limits *lim, const char *s,
                    size_t len, int errnum, const char *msg)
{
	struct run *r = malloc(sizeof(*r));
	struct event *e;

	assert_non_null(r);
	run_all(lim, false, NULL, s, len, r);
	assert_true(r->n >= 1);
	e = &r->ev[r->n - 1];
	if (e->rc != IMAP_PARSE_ERROR || strstr(e->err, msg) == NULL)
		print_error("vector: %.*s\ngot rc %d: %s\n", (int)len, s, e->rc,
		            e->err);
	assert_int_equal(e->rc, IMAP_PARSE_ERROR);
	assert_int_equal(e->errnum, errnum);
	assert_non_null(strstr(e->err, msg));
	run_free(r);
	free(r);
}

#define ERR(s, errnum, msg) error_n(NULL, s, sizeof(s) - 1, errnum, msg)
#define ERR_LIM(l, s, e, m) error_n(l, s, sizeof(s) - 1, e, m)

/* Expect the vector to be incomplete: MORE, no response. */
static void more_n(const char *s, size_t len)
{
	struct run *r = malloc(sizeof(*r));

	assert_non_null(r);
	run_all(NULL, false, NULL, s, len, r);
	if (len == 0) {
		assert_int_equal(r->n, 0);
	} else {
		assert_int_equal(r->n, 1);
		assert_int_equal(r->ev[0].rc, IMAP_PARSE_MORE);
	}
	run_free(r);
	free(r);
}

#define MORE(s) more_n(s, sizeof(s) - 1)

/* --- value assertions --------------------------------------------------- */

static const struct imap_value *el(const struct imap_value *v, size_t i)
{
	const struct imap_value *e = imap_list_get(v, i);

	assert_non_null(e);
	return e;
}

static void assert_type_str(const struct imap_value *v,
                            enum imap_value_type type, const char *s)
{
	size_t len;

	assert_non_null(v);
	assert_int_equal(v->type, type);
	assert_non_null(imap_value_str(v, &len));
	assert_int_equal(len, strlen(s));
	assert_string_equal(v->str, s);
}

static void assert_atom(const struct imap_value *v, const char *s)
{
	assert_type_str(v, IMAP_VALUE_ATOM, s);
}

static void assert_quoted(const struct imap_value *v, const char *s)
{
	assert_type_str(v, IMAP_VALUE_QUOTED, s);
}

static void assert_num(const struct imap_value *v, uint64_t n)
{
	uint64_t got;

	assert_non_null(v);
	assert_int_equal(v->type, IMAP_VALUE_NUMBER);
	assert_int_equal(imap_value_u64(v, &got), 0);
	assert_int_equal(got, n);
}

static void assert_nil(const struct imap_value *v)
{
	size_t len = 99;

	assert_non_null(v);
	assert_int_equal(v->type, IMAP_VALUE_NIL);
	assert_null(imap_value_str(v, &len));
	assert_int_equal(len, 0);
}

static void assert_lit(const struct imap_value *v, const void *bytes,
                       size_t len)
{
	size_t got_len;
	const char *got;

	assert_non_null(v);
	assert_int_equal(v->type, IMAP_VALUE_LITERAL);
	assert_int_equal(v->size, len);
	got = imap_value_str(v, &got_len);
	assert_non_null(got);
	assert_int_equal(got_len, len);
	if (len > 0)
		assert_memory_equal(got, bytes, len);
	assert_int_equal(got[len], '\0');
}

static void assert_list(const struct imap_value *v, size_t count)
{
	assert_non_null(v);
	assert_int_equal(v->type, IMAP_VALUE_LIST);
	assert_int_equal(v->count, count);
}

static void assert_status(const struct imap_response *r,
                          enum imap_response_kind kind, enum imap_status status,
                          const char *code, const char *text)
{
	assert_int_equal(r->kind, kind);
	assert_int_equal(r->status, status);
	if (code == NULL)
		assert_null(r->code);
	else
		assert_string_equal(r->code, code);
	assert_non_null(r->text);
	assert_string_equal(r->text, text);
	assert_int_equal(r->text_len, strlen(text));
	assert_null(r->keyword);
	assert_int_equal(r->args.count, 0);
}

static void assert_data(const struct imap_response *r, const char *keyword,
                        size_t nargs)
{
	assert_int_equal(r->kind, IMAP_RESP_DATA);
	assert_int_equal(r->status, IMAP_STATUS_NONE);
	assert_string_equal(r->keyword, keyword);
	assert_true(imap_response_is(r, keyword));
	assert_null(r->tag);
	assert_null(r->text);
	assert_null(r->code);
	assert_list(&r->args, nargs);
}

/* --- status responses ----------------------------------------------------- */

static void test_greeting_dovecot(void **state)
{
	struct imap_response *r;
	static const char *caps[] = {"IMAP4rev1", "SASL-IR",  "LOGIN-REFERRALS",
	                             "ID",        "ENABLE",   "IDLE",
	                             "LITERAL+",  "STARTTLS", "AUTH=PLAIN"};

	(void)state;
	r = PARSE(
	        "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID "
	        "ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN] Dovecot ready.\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, "CAPABILITY",
	              "Dovecot ready.");
	assert_null(r->tag);
	assert_false(r->has_number);
	assert_list(&r->code_args, 9);
	for (size_t i = 0; i < 9; i++)
		assert_atom(el(&r->code_args, i), caps[i]);
	assert_true(imap_atom_eq(el(&r->code_args, 6), "literal+"));
	imap_response_free(&r);
	assert_null(r);
}

static void test_greeting_gmail_exchange(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* OK Gimap ready for requests from 192.0.2.7 "
	          "n12mb34567890abc\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, NULL,
	              "Gimap ready for requests from 192.0.2.7 "
	              "n12mb34567890abc");
	assert_int_equal(r->code_args.count, 0);
	imap_response_free(&r);

	/* Brackets at the end of the text are text, not a code. */
	r = PARSE("* OK The Microsoft Exchange IMAP4 service is ready. "
	          "[QQBNADMAUABSADAANgBDAEEAMAAwADEAMgAuAA==]\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, NULL,
	              "The Microsoft Exchange IMAP4 service is ready. "
	              "[QQBNADMAUABSADAANgBDAEEAMAAwADEAMgAuAA==]");
	imap_response_free(&r);

	r = PARSE("* BYE Microsoft Exchange Server IMAP4 server signing "
	          "off.\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_BYE, NULL,
	              "Microsoft Exchange Server IMAP4 server signing off.");
	imap_response_free(&r);

	r = PARSE("* bye Autologout; idle for too long\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_BYE, NULL,
	              "Autologout; idle for too long");
	imap_response_free(&r);

	r = PARSE("* PREAUTH [CAPABILITY IMAP4rev2] Logged in as alice\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_PREAUTH, "CAPABILITY",
	              "Logged in as alice");
	assert_list(&r->code_args, 1);
	assert_atom(el(&r->code_args, 0), "IMAP4rev2");
	imap_response_free(&r);

	r = PARSE("* No [ALERT] Mailbox is at 95% of quota\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_NO, "ALERT",
	              "Mailbox is at 95% of quota");
	assert_int_equal(r->code_args.count, 0);
	imap_response_free(&r);

	r = PARSE("* BAD Unknown command\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_BAD, NULL,
	              "Unknown command");
	imap_response_free(&r);
}

static void test_tagged(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("a001 OK [READ-WRITE] SELECT completed\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "READ-WRITE",
	              "SELECT completed");
	assert_string_equal(r->tag, "a001");
	imap_response_free(&r);

	r = PARSE("A0002 OK [READ-ONLY] Examine completed (0.001 + 0.000 "
	          "secs).\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "READ-ONLY",
	              "Examine completed (0.001 + 0.000 secs).");
	assert_string_equal(r->tag, "A0002");
	imap_response_free(&r);

	r = PARSE("a2 no [AUTHENTICATIONFAILED] Authentication failed.\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_NO,
	              "AUTHENTICATIONFAILED", "Authentication failed.");
	assert_string_equal(r->tag, "a2");
	imap_response_free(&r);

	r = PARSE("A3 BAD Error in IMAP command UID FETCH: Invalid uidset "
	          "(0.001 + 0.000 secs).\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_BAD, NULL,
	              "Error in IMAP command UID FETCH: Invalid uidset "
	              "(0.001 + 0.000 secs).");
	imap_response_free(&r);

	/* No text at all, a code and no text, text glued to the code. */
	r = PARSE("A4 OK\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, NULL, "");
	assert_string_equal(r->tag, "A4");
	imap_response_free(&r);
	r = PARSE("A4 OK \r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, NULL, "");
	imap_response_free(&r);
	r = PARSE("A5 OK [ALERT]\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "ALERT", "");
	imap_response_free(&r);
	r = PARSE("A6 OK [ALERT]now\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "ALERT", "now");
	imap_response_free(&r);
	/* Extra spaces belong to the text. */
	r = PARSE("A7 OK  [ALERT] x\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, NULL, " [ALERT] x");
	imap_response_free(&r);
	r = PARSE("A8 OK [ALERT]  x \r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "ALERT", " x ");
	imap_response_free(&r);

	/* "]" is an ASTRING-CHAR, so it may appear in a tag. */
	r = PARSE("x]1.b OK done\r\n");
	assert_string_equal(r->tag, "x]1.b");
	imap_response_free(&r);
}

static void test_codes(void **state)
{
	struct imap_response *r;
	uint32_t u32;
	uint64_t u64;

	(void)state;
	r = PARSE("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, "UIDVALIDITY",
	              "UIDs valid");
	assert_list(&r->code_args, 1);
	assert_int_equal(imap_value_u32(el(&r->code_args, 0), &u32), 0);
	assert_int_equal(u32, 3857529045u);
	imap_response_free(&r);

	r = PARSE("* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, "PERMANENTFLAGS",
	              "Limited");
	assert_list(&r->code_args, 1);
	assert_list(el(&r->code_args, 0), 3);
	assert_atom(el(el(&r->code_args, 0), 0), "\\Deleted");
	assert_atom(el(el(&r->code_args, 0), 1), "\\Seen");
	assert_atom(el(el(&r->code_args, 0), 2), "\\*");
	imap_response_free(&r);

	r = PARSE("A003 OK [APPENDUID 38505 3955] APPEND completed\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "APPENDUID",
	              "APPEND completed");
	assert_list(&r->code_args, 2);
	assert_num(el(&r->code_args, 0), 38505);
	assert_num(el(&r->code_args, 1), 3955);
	imap_response_free(&r);

	r = PARSE("A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_OK, "COPYUID", "Done");
	assert_list(&r->code_args, 3);
	assert_num(el(&r->code_args, 0), 38505);
	assert_atom(el(&r->code_args, 1), "304,319:320");
	assert_atom(el(&r->code_args, 2), "3956:3958");
	assert_int_equal(imap_value_u32(el(&r->code_args, 1), &u32), -EINVAL);
	imap_response_free(&r);

	r = PARSE("* OK [HIGHESTMODSEQ 715194045007] Highest\r\n");
	assert_int_equal(imap_value_u64(el(&r->code_args, 0), &u64), 0);
	assert_int_equal(u64, 715194045007ULL);
	assert_int_equal(imap_value_u32(el(&r->code_args, 0), &u32), -ERANGE);
	imap_response_free(&r);

	r = PARSE("A1 NO [BADCHARSET (UTF-8 \"ISO-8859-1\")] Unknown\r\n");
	assert_list(&r->code_args, 1);
	assert_list(el(&r->code_args, 0), 2);
	assert_atom(el(el(&r->code_args, 0), 0), "UTF-8");
	assert_quoted(el(el(&r->code_args, 0), 1), "ISO-8859-1");
	imap_response_free(&r);

	/* A quoted "]" does not end the code. */
	r = PARSE("A1 NO [BADCHARSET (\"x]y\")] bad\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_NO, "BADCHARSET", "bad");
	assert_quoted(el(el(&r->code_args, 0), 0), "x]y");
	imap_response_free(&r);

	r = PARSE("A1 NO [REFERRAL imap://alice;AUTH=*@SERVER2/] Remote\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_NO, "REFERRAL",
	              "Remote");
	assert_atom(el(&r->code_args, 0), "imap://alice;AUTH=*@SERVER2/");
	imap_response_free(&r);

	r = PARSE("* NO [WEBALERT https://accounts.example.com/Continue?sarp=1"
	          "&scc=1&plt=AKgnsb%2Bx] Web login required.\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_NO, "WEBALERT",
	              "Web login required.");
	assert_atom(el(&r->code_args, 0),
	            "https://accounts.example.com/"
	            "Continue?sarp=1&scc=1&plt=AKgnsb%2Bx");
	imap_response_free(&r);

	r = PARSE("* OK [MODIFIED 7,9] Conditional STORE failed\r\n");
	assert_atom(el(&r->code_args, 0), "7,9");
	imap_response_free(&r);

	/* Trailing space inside the brackets, and a NIL argument. */
	r = PARSE("* OK [X-FOO NIL ] t\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, "X-FOO", "t");
	assert_list(&r->code_args, 1);
	assert_nil(el(&r->code_args, 0));
	imap_response_free(&r);

	/* A literal inside a response code: its bytes are raw. */
	r = PARSE("* NO [BADCHARSET ({3}\r\na]b)] x\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_NO, "BADCHARSET", "x");
	assert_lit(el(el(&r->code_args, 0), 0), "a]b", 3);
	imap_response_free(&r);

	/* A "[" inside a code is an ordinary atom byte. */
	r = PARSE("* OK [X a[b] t\r\n");
	assert_atom(el(&r->code_args, 0), "a[b");
	assert_string_equal(r->text, "t");
	imap_response_free(&r);
}

static void test_text_odd(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* OK [ALERT] Shutdown in \"10 minutes (really) [ok {5}\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, "ALERT",
	              "Shutdown in \"10 minutes (really) [ok {5}");
	imap_response_free(&r);

	/* "{5}" at the end of text is no literal: the response ends. */
	r = PARSE("A1 NO {5}\r\n");
	assert_status(r, IMAP_RESP_TAGGED, IMAP_STATUS_NO, NULL, "{5}");
	imap_response_free(&r);

	r = PARSE("* OK Gr\xc3\xbc\xc3\x9f"
	          "e\tand ) ( ] \\ \" %*\r\n");
	assert_status(r, IMAP_RESP_STATUS, IMAP_STATUS_OK, NULL,
	              "Gr\xc3\xbc\xc3\x9f"
	              "e\tand ) ( ] \\ \" %*");
	imap_response_free(&r);
}

static void test_continuation(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("+ idling\r\n");
	assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
	assert_string_equal(r->text, "idling");
	assert_null(r->tag);
	imap_response_free(&r);

	r = PARSE("+ dXNlcm5hbWU6\r\n");
	assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
	assert_string_equal(r->text, "dXNlcm5hbWU6");
	assert_int_equal(r->text_len, 12);
	imap_response_free(&r);

	r = PARSE("+ \r\n");
	assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
	assert_string_equal(r->text, "");
	imap_response_free(&r);

	r = PARSE("+\r\n");
	assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
	assert_string_equal(r->text, "");
	assert_int_equal(r->text_len, 0);
	imap_response_free(&r);

	/* Continuation text is kept verbatim, brackets and all. */
	r = PARSE("+ [ALERT] Ready for literal {3}\r\n");
	assert_string_equal(r->text, "[ALERT] Ready for literal {3}");
	assert_null(r->code);
	imap_response_free(&r);
}

/* --- untagged data ------------------------------------------------------- */

static void test_capability(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID "
	          "XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 "
	          "AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER\r\n");
	assert_data(r, "CAPABILITY", 15);
	assert_atom(el(&r->args, 0), "IMAP4rev1");
	assert_atom(el(&r->args, 8), "X-GM-EXT-1");
	assert_atom(el(&r->args, 14), "AUTH=OAUTHBEARER");
	imap_response_free(&r);

	r = PARSE("* capability IMAP4rev2 LITERAL- \r\n");
	assert_data(r, "capability", 2);
	assert_true(imap_response_is(r, "CAPABILITY"));
	assert_false(imap_response_is(r, "CAPABILITIES"));
	assert_atom(el(&r->args, 1), "LITERAL-");
	imap_response_free(&r);
}

static void test_list(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* LIST (\\HasNoChildren) \"/\" INBOX\r\n");
	assert_data(r, "LIST", 3);
	assert_list(el(&r->args, 0), 1);
	assert_atom(el(el(&r->args, 0), 0), "\\HasNoChildren");
	assert_quoted(el(&r->args, 1), "/");
	assert_atom(el(&r->args, 2), "INBOX");
	imap_response_free(&r);

	r = PARSE("* LIST (\\Noselect \\HasChildren) \".\" \"INBOX.Sent "
	          "Items\"\r\n");
	assert_list(el(&r->args, 0), 2);
	assert_quoted(el(&r->args, 2), "INBOX.Sent Items");
	imap_response_free(&r);

	r = PARSE("* LIST () NIL Foo\r\n");
	assert_list(el(&r->args, 0), 0);
	assert_nil(el(&r->args, 1));
	assert_atom(el(&r->args, 2), "Foo");
	imap_response_free(&r);

	r = PARSE(
	        "* LIST (\\HasNoChildren \\Trash) \"/\" \"[Gmail]/Trash\"\r\n");
	assert_quoted(el(&r->args, 2), "[Gmail]/Trash");
	imap_response_free(&r);

	r = PARSE("* LIST (\\HasNoChildren) \"/\" &AMQ-rger\r\n");
	assert_atom(el(&r->args, 2), "&AMQ-rger");
	imap_response_free(&r);

	/* "~" followed by anything but "{" is an atom byte. */
	r = PARSE("* LIST (\\Noselect) \"/\" ~/Mail/foo\r\n");
	assert_atom(el(&r->args, 2), "~/Mail/foo");
	imap_response_free(&r);

	r = PARSE("* LIST (\\HasNoChildren) \"/\" {12}\r\nWeird \"name\"\r\n");
	assert_data(r, "LIST", 3);
	assert_lit(el(&r->args, 2), "Weird \"name\"", 12);
	imap_response_free(&r);

	r = PARSE("* LIST (\\HasNoChildren) \"/\" \"Entw\xc3\xbc"
	          "rfe\"\r\n");
	assert_quoted(el(&r->args, 2), "Entw\xc3\xbcrfe");
	imap_response_free(&r);

	/* LIST-EXTENDED child info. */
	r = PARSE("* LIST (\\Subscribed) \"/\" \"Foo\" (\"CHILDINFO\" "
	          "(\"SUBSCRIBED\"))\r\n");
	assert_data(r, "LIST", 4);
	assert_quoted(el(el(el(&r->args, 3), 1), 0), "SUBSCRIBED");
	imap_response_free(&r);
}

static void test_numbered(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* 12 EXISTS\r\n");
	assert_data(r, "EXISTS", 0);
	assert_true(r->has_number);
	assert_int_equal(r->number, 12);
	imap_response_free(&r);

	r = PARSE("* 0 RECENT\r\n");
	assert_data(r, "RECENT", 0);
	assert_true(r->has_number);
	assert_int_equal(r->number, 0);
	imap_response_free(&r);

	r = PARSE("* 3 expunge\r\n");
	assert_data(r, "expunge", 0);
	assert_true(imap_response_is(r, "EXPUNGE"));
	assert_int_equal(r->number, 3);
	imap_response_free(&r);

	r = PARSE("* 4294967295 EXISTS\r\n");
	assert_int_equal(r->number, 4294967295u);
	imap_response_free(&r);

	ERR("* 4294967296 EXISTS\r\n", -EPROTO, "number too large");
	ERR("* 99999999999999999999999 EXISTS\r\n", -EPROTO,
	    "number too large");
	ERR("* 12\r\n", -EPROTO, "missing keyword");
	ERR("* 12 \r\n", -EPROTO, "missing keyword");
}

static void test_search(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* SEARCH 2 84 882\r\n");
	assert_data(r, "SEARCH", 3);
	assert_num(el(&r->args, 0), 2);
	assert_num(el(&r->args, 1), 84);
	assert_num(el(&r->args, 2), 882);
	assert_string_equal(el(&r->args, 2)->str, "882");
	imap_response_free(&r);

	r = PARSE("* SEARCH\r\n");
	assert_data(r, "SEARCH", 0);
	imap_response_free(&r);

	r = PARSE("* SEARCH \r\n");
	assert_data(r, "SEARCH", 0);
	imap_response_free(&r);

	r = PARSE("* SEARCH 1 2 (MODSEQ 917162500)\r\n");
	assert_data(r, "SEARCH", 3);
	assert_num(el(el(&r->args, 2), 1), 917162500);
	imap_response_free(&r);

	r = PARSE("* ESEARCH (TAG \"a1\") UID ALL 1:5,7\r\n");
	assert_data(r, "ESEARCH", 4);
	assert_atom(el(el(&r->args, 0), 0), "TAG");
	assert_quoted(el(el(&r->args, 0), 1), "a1");
	assert_atom(el(&r->args, 1), "UID");
	assert_atom(el(&r->args, 2), "ALL");
	assert_atom(el(&r->args, 3), "1:5,7");
	imap_response_free(&r);

	r = PARSE("* ESEARCH (TAG \"A285\") UID MIN 7 MAX 3800\r\n");
	assert_data(r, "ESEARCH", 6);
	assert_num(el(&r->args, 5), 3800);
	imap_response_free(&r);
}

static void test_misc_data(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
	          "$Forwarded)\r\n");
	assert_data(r, "FLAGS", 1);
	assert_list(el(&r->args, 0), 6);
	assert_atom(el(el(&r->args, 0), 5), "$Forwarded");
	imap_response_free(&r);

	r = PARSE("* ENABLED CONDSTORE QRESYNC\r\n");
	assert_data(r, "ENABLED", 2);
	assert_atom(el(&r->args, 1), "QRESYNC");
	imap_response_free(&r);

	r = PARSE("* ID (\"name\" \"Dovecot\" \"version\" \"2.3.19\")\r\n");
	assert_data(r, "ID", 1);
	assert_list(el(&r->args, 0), 4);
	assert_quoted(el(el(&r->args, 0), 3), "2.3.19");
	imap_response_free(&r);

	r = PARSE("* ID NIL\r\n");
	assert_data(r, "ID", 1);
	assert_nil(el(&r->args, 0));
	imap_response_free(&r);

	r = PARSE("* ID nil\r\n");
	assert_nil(el(&r->args, 0));
	imap_response_free(&r);

	r = PARSE("* VANISHED (EARLIER) 1:3,5\r\n");
	assert_data(r, "VANISHED", 2);
	assert_atom(el(el(&r->args, 0), 0), "EARLIER");
	assert_atom(el(&r->args, 1), "1:3,5");
	imap_response_free(&r);

	r = PARSE("* VANISHED 405,407,410:425\r\n");
	assert_data(r, "VANISHED", 1);
	imap_response_free(&r);

	r = PARSE("* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n");
	assert_data(r, "STATUS", 2);
	assert_atom(el(&r->args, 0), "blurdybloop");
	assert_num(imap_fetch_item(el(&r->args, 1), "messages"), 231);
	assert_num(imap_fetch_item(el(&r->args, 1), "UIDNEXT"), 44292);
	assert_null(imap_fetch_item(el(&r->args, 1), "UNSEEN"));
	imap_response_free(&r);

	r = PARSE("* STATUS \"Sent Items\" (MESSAGES 3 HIGHESTMODSEQ 12)\r\n");
	assert_quoted(el(&r->args, 0), "Sent Items");
	assert_num(imap_fetch_item(el(&r->args, 1), "HIGHESTMODSEQ"), 12);
	imap_response_free(&r);

	r = PARSE("* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) "
	          "NIL\r\n");
	assert_data(r, "NAMESPACE", 3);
	assert_quoted(el(el(el(&r->args, 0), 0), 0), "");
	assert_quoted(el(el(el(&r->args, 0), 0), 1), "/");
	assert_quoted(el(el(el(&r->args, 1), 0), 0), "Other Users/");
	assert_nil(el(&r->args, 2));
	imap_response_free(&r);

	r = PARSE("* NAMESPACE ((\"\" \"/\" \"X-PARAM\" (\"FLAG1\" "
	          "\"FLAG2\"))) NIL NIL\r\n");
	assert_list(el(el(el(&r->args, 0), 0), 3), 2);
	imap_response_free(&r);

	/* Unknown keywords are parsed generically. */
	r = PARSE("* XAPPLEPUSHSERVICE aps-version 2 aps-topic "
	          "com.apple.mail.XServer.x\r\n");
	assert_data(r, "XAPPLEPUSHSERVICE", 4);
	assert_num(el(&r->args, 1), 2);
	imap_response_free(&r);

	r = PARSE("* QUOTA \"\" (STORAGE 10 512)\r\n");
	assert_data(r, "QUOTA", 2);
	assert_quoted(el(&r->args, 0), "");
	assert_num(el(el(&r->args, 1), 2), 512);
	imap_response_free(&r);

	r = PARSE("* x-foo bar\r\n");
	assert_data(r, "x-foo", 1);
	assert_true(imap_response_is(r, "X-FOO"));
	imap_response_free(&r);

	r = PARSE("* METADATA INBOX (/private/comment {3}\r\nabc)\r\n");
	assert_data(r, "METADATA", 2);
	assert_atom(el(el(&r->args, 1), 0), "/private/comment");
	assert_lit(el(el(&r->args, 1), 1), "abc", 3);
	imap_response_free(&r);

	/* A number with a status word is plain data. */
	r = PARSE("* 5 OK\r\n");
	assert_data(r, "OK", 0);
	assert_int_equal(r->number, 5);
	imap_response_free(&r);
}

/* --- FETCH --------------------------------------------------------------- */

static void test_fetch_basic(void **state)
{
	struct imap_response *r;
	const struct imap_value *fl, *v;
	uint32_t u32;
	size_t len;

	(void)state;
	r = PARSE("* 12 FETCH (FLAGS (\\Seen $Work) INTERNALDATE "
	          "\"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 4286 UID 42 "
	          "MODSEQ (12345))\r\n");
	assert_data(r, "FETCH", 1);
	assert_int_equal(r->number, 12);
	fl = el(&r->args, 0);
	assert_list(fl, 10);
	v = imap_fetch_item(fl, "FLAGS");
	assert_list(v, 2);
	assert_atom(el(v, 0), "\\Seen");
	assert_atom(el(v, 1), "$Work");
	assert_quoted(imap_fetch_item(fl, "internaldate"),
	              "17-Jul-1996 02:44:25 -0700");
	assert_int_equal(
	        imap_value_u32(imap_fetch_item(fl, "RFC822.SIZE"), &u32), 0);
	assert_int_equal(u32, 4286);
	assert_int_equal(imap_value_u32(imap_fetch_item(fl, "uid"), &u32), 0);
	assert_int_equal(u32, 42);
	assert_num(el(imap_fetch_item(fl, "MODSEQ"), 0), 12345);
	assert_null(imap_fetch_item(fl, "BODY[]"));
	/* A value is never taken for a name. */
	assert_null(imap_fetch_item(fl, "4286"));
	/* Lists have no string. */
	assert_null(imap_value_str(v, &len));
	assert_int_equal(len, 0);
	imap_response_free(&r);

	r = PARSE("* 1 FETCH (X-GM-THRID 1278455344230334865 X-GM-MSGID "
	          "1278455344230334865 X-GM-LABELS (\\Inbox \\Sent Important "
	          "\"Muy Importante\") UID 4 FLAGS (\\Seen))\r\n");
	fl = el(&r->args, 0);
	assert_num(imap_fetch_item(fl, "X-GM-THRID"), 1278455344230334865ULL);
	v = imap_fetch_item(fl, "X-GM-LABELS");
	assert_list(v, 4);
	assert_quoted(el(v, 3), "Muy Importante");
	imap_response_free(&r);
}

static void test_fetch_envelope(void **state)
{
	struct imap_response *r;
	const struct imap_value *env, *addr;

	(void)state;
	/* RFC 3501 section 8; note ")(" without a space. */
	r = PARSE("* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 "
	          "02:44:25 -0700\" RFC822.SIZE 4286 ENVELOPE (\"Wed, 17 Jul "
	          "1996 02:23:25 -0700 (PDT)\" \"IMAP4rev1 WG mtg summary and "
	          "minutes\" ((\"Terry Gray\" NIL \"gray\" "
	          "\"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" "
	          "\"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" "
	          "\"cac.washington.edu\")) ((NIL NIL \"imap\" "
	          "\"cac.washington.edu\")) ((NIL NIL \"minutes\" "
	          "\"CNRI.Reston.VA.US\")(\"John Klensin\" NIL \"KLENSIN\" "
	          "\"MIT.EDU\")) NIL NIL "
	          "\"<B27397-0100000@cac.washington.edu>\") BODY (\"TEXT\" "
	          "\"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 3028 "
	          "92))\r\n");
	env = imap_fetch_item(el(&r->args, 0), "ENVELOPE");
	assert_list(env, 10);
	assert_quoted(el(env, 0), "Wed, 17 Jul 1996 02:23:25 -0700 (PDT)");
	assert_quoted(el(env, 1), "IMAP4rev1 WG mtg summary and minutes");
	addr = el(el(env, 2), 0);
	assert_list(addr, 4);
	assert_quoted(el(addr, 0), "Terry Gray");
	assert_nil(el(addr, 1));
	assert_quoted(el(addr, 2), "gray");
	assert_list(el(env, 6), 2);
	assert_quoted(el(el(el(env, 6), 1), 0), "John Klensin");
	assert_nil(el(env, 7));
	assert_nil(el(env, 8));
	assert_quoted(el(env, 9), "<B27397-0100000@cac.washington.edu>");
	assert_num(el(imap_fetch_item(el(&r->args, 0), "BODY"), 6), 3028);
	imap_response_free(&r);

	/* Literals inside the envelope (Dovecot sends 8-bit or long
	 * subjects and names as literals). */
	r = PARSE("* 2 FETCH (UID 9 ENVELOPE (NIL {12}\r\nSubject \"x\"( "
	          "((\"A\" NIL {5}\r\nal\r\nc \"b.example\")) NIL NIL NIL NIL "
	          "NIL NIL {0}\r\n))\r\n");
	env = imap_fetch_item(el(&r->args, 0), "ENVELOPE");
	assert_list(env, 10);
	assert_nil(el(env, 0));
	assert_lit(el(env, 1), "Subject \"x\"(", 12);
	assert_lit(el(el(el(env, 2), 0), 2), "al\r\nc", 5);
	assert_quoted(el(el(el(env, 2), 0), 3), "b.example");
	assert_lit(el(env, 9), "", 0);
	imap_response_free(&r);
}

static void test_fetch_bodystructure(void **state)
{
	struct imap_response *r;
	const struct imap_value *bs;

	(void)state;
	r = PARSE("* 1 FETCH (UID 10 BODYSTRUCTURE ((\"text\" \"plain\" "
	          "(\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 1 NIL NIL NIL "
	          "NIL)(\"application\" \"pdf\" (\"name\" \"a.pdf\") NIL NIL "
	          "\"base64\" 1234 NIL (\"attachment\" (\"filename\" "
	          "\"a.pdf\")) NIL NIL) \"mixed\" (\"boundary\" \"xyz\") NIL "
	          "NIL NIL))\r\n");
	bs = imap_fetch_item(el(&r->args, 0), "BODYSTRUCTURE");
	assert_list(bs, 7);
	assert_list(el(bs, 0), 12);
	assert_list(el(bs, 1), 11);
	assert_quoted(el(bs, 2), "mixed");
	assert_quoted(el(el(el(el(bs, 1), 8), 1), 1), "a.pdf");
	assert_num(el(el(bs, 1), 6), 1234);
	imap_response_free(&r);
}

static void test_fetch_sections(void **state)
{
	struct imap_response *r;
	const struct imap_value *fl;

	(void)state;
	r = PARSE("* 1 FETCH (UID 10 BODY[HEADER.FIELDS (SUBJECT FROM DATE "
	          "MESSAGE-ID)] {21}\r\nSubject: hi\r\nX: y\r\n\r\n "
	          "BODY[1.2.MIME]<0> {0}\r\n BINARY[1] ~{5}\r\nab\0\r\n "
	          "BODY[]<0> NIL BINARY.SIZE[1] 1234 RFC822.HEADER {2}\r\n\r\n "
	          "BODY[HEADER.FIELDS (\"X-W]\")] NIL)\r\n");
	fl = el(&r->args, 0);
	assert_list(fl, 16);
	assert_atom(el(fl, 2), "BODY[HEADER.FIELDS (SUBJECT FROM DATE "
	                       "MESSAGE-ID)]");
	assert_lit(imap_fetch_item(fl, "BODY[HEADER.FIELDS (SUBJECT FROM "
	                               "DATE MESSAGE-ID)]"),
	           "Subject: hi\r\nX: y\r\n\r\n", 21);
	assert_lit(imap_fetch_item(fl, "body[1.2.mime]<0>"), "", 0);
	assert_lit(imap_fetch_item(fl, "BINARY[1]"), "ab\0\r\n", 5);
	assert_true(imap_fetch_item(fl, "BINARY[1]")->literal8);
	assert_false(imap_fetch_item(fl, "body[1.2.mime]<0>")->literal8);
	assert_nil(imap_fetch_item(fl, "BODY[]<0>"));
	assert_num(imap_fetch_item(fl, "BINARY.SIZE[1]"), 1234);
	assert_lit(imap_fetch_item(fl, "RFC822.HEADER"), "\r\n", 2);
	assert_atom(el(fl, 14), "BODY[HEADER.FIELDS (\"X-W]\")]");
	imap_response_free(&r);

	/* Escapes inside a quoted string inside a section are kept. */
	r = PARSE(
	        "* 1 FETCH (BODY[HEADER.FIELDS (\"a\\\"]\" B)]<5> {1}\r\nx)\r\n");
	assert_atom(el(el(&r->args, 0), 0),
	            "BODY[HEADER.FIELDS (\"a\\\"]\" B)]<5>");
	assert_lit(el(el(&r->args, 0), 1), "x", 1);
	imap_response_free(&r);

	/* An atom that starts with a section; an empty section. */
	r = PARSE("* X [a b] BODY[] c\r\n");
	assert_data(r, "X", 3);
	assert_atom(el(&r->args, 0), "[a b]");
	assert_atom(el(&r->args, 1), "BODY[]");
	imap_response_free(&r);
}

/* --- literals ----------------------------------------------------------- */

static void test_literal_raw(void **state)
{
	static const char body[] = "a\0b\rc\nd\r\n)\"{5}\r\n\r\n.\r\n\xff";
	struct imap_response *r;
	const struct imap_value *fl;

	(void)state;
	r = PARSE("* 7 FETCH (BODY[] {22}\r\na\0b\rc\nd\r\n)\"{5}\r\n\r\n.\r\n"
	          "\xff UID 7 FLAGS (\\Seen))\r\n");
	fl = el(&r->args, 0);
	assert_list(fl, 6);
	assert_lit(imap_fetch_item(fl, "BODY[]"), body, sizeof(body) - 1);
	assert_num(imap_fetch_item(fl, "UID"), 7);
	assert_atom(el(imap_fetch_item(fl, "FLAGS"), 0), "\\Seen");
	imap_response_free(&r);

	r = PARSE("* 1 FETCH (BODY[] {3+}\r\nabc)\r\n");
	assert_lit(el(el(&r->args, 0), 1), "abc", 3);
	imap_response_free(&r);

	r = PARSE("* 1 FETCH (BINARY[] ~{3}\r\n\0\0\0)\r\n");
	assert_lit(el(el(&r->args, 0), 1), "\0\0\0", 3);
	assert_true(el(el(&r->args, 0), 1)->literal8);
	imap_response_free(&r);

	/* Leading zeros in a size are harmless. */
	r = PARSE("* 1 FETCH (BODY[] {0003}\r\nabc)\r\n");
	assert_lit(el(el(&r->args, 0), 1), "abc", 3);
	imap_response_free(&r);

	/* Two literals back to back, a literal at the end of the line. */
	r = PARSE("* X {1}\r\na{1}\r\nb {2}\r\ncd\r\n");
	assert_data(r, "X", 3);
	assert_lit(el(&r->args, 0), "a", 1);
	assert_lit(el(&r->args, 1), "b", 1);
	assert_lit(el(&r->args, 2), "cd", 2);
	imap_response_free(&r);

	/* Literal data that looks like the end of the response. */
	r = PARSE("* X {6}\r\n)\r\n* 1\r\n");
	assert_lit(el(&r->args, 0), ")\r\n* 1", 6);
	imap_response_free(&r);
}

static void test_quoted(void **state)
{
	struct imap_response *r;

	(void)state;
	r = PARSE("* LIST () \"\\\\\" \"a\\\"b\\\\c\"\r\n");
	assert_quoted(el(&r->args, 1), "\\");
	assert_quoted(el(&r->args, 2), "a\"b\\c");
	imap_response_free(&r);

	/* "{5}" inside a quoted string is not a literal. */
	r = PARSE("* 1 FETCH (X \"{5}\" Y)\r\n");
	assert_quoted(el(el(&r->args, 0), 1), "{5}");
	assert_atom(el(el(&r->args, 0), 2), "Y");
	imap_response_free(&r);

	r = PARSE("* X \"{5}\"\r\n");
	assert_quoted(el(&r->args, 0), "{5}");
	imap_response_free(&r);

	/* Any escaped byte stands for itself (as Dovecot). */
	r = PARSE("* X \"\\a\\(\"\r\n");
	assert_quoted(el(&r->args, 0), "a(");
	imap_response_free(&r);

	/* Glued values. */
	r = PARSE("* X \"a\"\"b\"(c)(d)NIL\r\n");
	assert_data(r, "X", 5);
	assert_quoted(el(&r->args, 1), "b");
	assert_atom(el(el(&r->args, 3), 0), "d");
	assert_nil(el(&r->args, 4));
	imap_response_free(&r);

	/* A quoted "NIL" is a string. */
	r = PARSE("* X \"NIL\" NILS\r\n");
	assert_quoted(el(&r->args, 0), "NIL");
	assert_atom(el(&r->args, 1), "NILS");
	imap_response_free(&r);
}

static void test_bare_lf(void **state)
{
	struct imap_response *a, *b;

	(void)state;
	a = PARSE("* 1 FETCH (UID 5 BODY[] {3}\r\na\nb)\r\n");
	b = PARSE("* 1 FETCH (UID 5 BODY[] {3}\na\nb)\n");
	assert_true(imap_response_equal(a, b));
	assert_lit(el(el(&b->args, 0), 3), "a\nb", 3);
	imap_response_free(&a);
	imap_response_free(&b);

	a = PARSE("A1 OK [ALERT] done\r\n");
	b = PARSE("A1 OK [ALERT] done\n");
	assert_true(imap_response_equal(a, b));
	imap_response_free(&a);
	imap_response_free(&b);

	a = PARSE("+\n");
	assert_string_equal(a->text, "");
	imap_response_free(&a);
}

static void test_two_responses(void **state)
{
	static const char in[] = "* 1 EXISTS\r\n* 2 EXISTS\r\nA1 OK done\r\n"
	                         "* 3 EXPUNGE";
	struct imap_parser *p;
	struct imap_response *r;
	struct run run;
	size_t used;

	(void)state;
	run_all(NULL, false, NULL, in, sizeof(in) - 1, &run);
	assert_int_equal(run.n, 4);
	assert_int_equal(run.ev[0].end, 12);
	assert_int_equal(run.ev[1].end, 24);
	assert_int_equal(run.ev[2].end, 36);
	assert_int_equal(run.ev[3].rc, IMAP_PARSE_MORE);
	assert_int_equal(run.ev[1].resp->number, 2);
	assert_string_equal(run.ev[2].resp->tag, "A1");
	run_free(&run);

	/* The raw API: consumed_r stops at the end of each response. */
	assert_int_equal(imap_parser_new(NULL, &p), 0);
	assert_int_equal(imap_parser_feed(p, in, sizeof(in) - 1, &used, &r),
	                 IMAP_PARSE_DONE);
	assert_int_equal(used, 12);
	assert_int_equal(r->number, 1);
	imap_response_free(&r);
	assert_int_equal(
	        imap_parser_feed(p, in + 12, sizeof(in) - 13, &used, &r),
	        IMAP_PARSE_DONE);
	assert_int_equal(used, 12);
	imap_response_free(&r);
	assert_int_equal(
	        imap_parser_feed(p, in + 24, sizeof(in) - 25, &used, &r),
	        IMAP_PARSE_DONE);
	assert_int_equal(used, 12);
	imap_response_free(&r);
	assert_int_equal(
	        imap_parser_feed(p, in + 36, sizeof(in) - 37, &used, &r),
	        IMAP_PARSE_MORE);
	assert_int_equal(used, sizeof(in) - 37);
	assert_null(r);
	assert_int_equal(imap_parser_feed(p, "\r\n", 2, &used, &r),
	                 IMAP_PARSE_DONE);
	assert_int_equal(used, 2);
	assert_int_equal(r->number, 3);
	assert_true(imap_response_is(r, "EXPUNGE"));
	imap_response_free(&r);
	/* Nothing fed: need more. */
	assert_int_equal(imap_parser_feed(p, "", 0, &used, &r),
	                 IMAP_PARSE_MORE);
	assert_int_equal(used, 0);
	assert_string_equal(imap_parser_error(p), "");
	assert_int_equal(imap_parser_errno(p), 0);
	imap_parser_free(&p);
	imap_parser_free(&p);
	imap_parser_free(NULL);
	imap_response_free(NULL);
}

static void test_more(void **state)
{
	(void)state;
	MORE("");
	MORE("*");
	MORE("* 3 EXISTS");
	MORE("* 3 EXISTS\r");
	MORE("A1 OK [ALERT");
	MORE("* 1 FETCH (BODY[] {10}");
	MORE("* 1 FETCH (BODY[] {10}\r");
	MORE("* 1 FETCH (BODY[] {10}\r\nabc");
	MORE("* 1 FETCH (BODY[] {10}\r\n0123456789");
	MORE("* 1 FETCH (BODY[] {10}\r\n0123456789)");
	MORE("* LIST () \"/ INBO");
	MORE("+ ready");
}

/* --- errors -------------------------------------------------------------- */

static void test_errors_syntax(void **state)
{
	(void)state;
	ERR("\r\n", -EPROTO, "empty line");
	ERR("\n", -EPROTO, "empty line");
	ERR("(foo OK done\r\n", -EPROTO,
	    "invalid tag: response starts with byte 0x28");
	ERR("\x01 OK\r\n", -EPROTO, "invalid tag");
	ERR(" OK\r\n", -EPROTO, "invalid tag");
	ERR("a%b OK\r\n", -EPROTO, "in tag");
	ERR("a+b OK\r\n", -EPROTO, "in tag");
	ERR("A1\r\n", -EPROTO, "in tag");
	ERR("A1 YES done\r\n", -EPROTO, "without OK, NO or BAD");
	ERR("A1 BYE done\r\n", -EPROTO, "without OK, NO or BAD");
	ERR("A1 \r\n", -EPROTO, "without OK, NO or BAD");
	ERR("A1 O(K\r\n", -EPROTO, "in status");
	ERR("+x\r\n", -EPROTO, "no space after '+'");
	ERR("*x\r\n", -EPROTO, "no space after '*'");
	ERR("*\r\n", -EPROTO, "no space after '*'");
	ERR("*  OK\r\n", -EPROTO, "missing keyword");
	ERR("* \r\n", -EPROTO, "missing keyword");
	ERR("* FLAGS(\\Seen)\r\n", -EPROTO, "in keyword");
	ERR("* LIST () \"/ INBOX\r\n", -EPROTO, "unterminated quoted");
	ERR("* LIST () \"/\\\r\n", -EPROTO, "unterminated quoted");
	ERR("* FLAGS (\\Seen\r\n", -EPROTO, "unterminated list");
	ERR("* FLAGS (\\Seen \"x\")(\r\n", -EPROTO, "unterminated list");
	ERR("* FLAGS \\Seen)\r\n", -EPROTO, "unexpected ')'");
	ERR("* OK hi\rthere\r\n", -EPROTO, "CR not followed by LF");
	ERR("* X a\r\r\n", -EPROTO, "CR not followed by LF");
	ERR("* OK h\0i\r\n", -EPROTO, "NUL");
	ERR("* X \"a\0\"\r\n", -EPROTO, "NUL");
	ERR("* X a\tb\r\n", -EPROTO, "unexpected byte 0x09");
	ERR("* X a\x7f\r\n", -EPROTO, "unexpected byte 0x7f");
	ERR("* X a{5}\r\nabcde\r\n", -EPROTO, "'{' inside an atom");
	ERR("* X {abc}\r\n", -EPROTO, "literal without a size");
	ERR("* X {}\r\n", -EPROTO, "literal without a size");
	ERR("* X {+}\r\n", -EPROTO, "literal without a size");
	ERR("* X {5+x\r\n", -EPROTO, "invalid literal size");
	ERR("* X {5 }\r\n", -EPROTO, "in literal size");
	ERR("* X {5} x\r\n", -EPROTO, "not followed by a line end");
	ERR("* X {5}\rx", -EPROTO, "CR not followed by LF");
	ERR("* OK [ALERT\r\n", -EPROTO, "in response code");
	ERR("* OK [\r\n", -EPROTO, "in response code");
	ERR("* OK []\r\n", -EPROTO, "empty response code");
	ERR("* OK [ ALERT]\r\n", -EPROTO, "empty response code");
	ERR("* OK [A(B)]\r\n", -EPROTO, "in response code");
	ERR("* OK [X a\r\n", -EPROTO, "unterminated response code");
	ERR("* OK [X \"a]\r\n", -EPROTO, "unterminated quoted");
	ERR("* OK [BADCHARSET (UTF-8] x\r\n", -EPROTO, "unbalanced list");
	ERR("* OK [X a)] x\r\n", -EPROTO, "unexpected ')'");
	ERR("* 1 FETCH (BODY[HEADER\r\n", -EPROTO, "unterminated '['");
	ERR("* 1 FETCH (BODY[HEADER.FIELDS (\"A]\r\n", -EPROTO,
	    "unterminated '['");
	/* An error after a good response: the first is still delivered. */
	ERR("* 1 EXISTS\r\n* 2 EXISTS\r\r\n", -EPROTO, "CR not followed");
}

static void test_errors_limits(void **state)
{
	struct imap_parser_limits lim;
	struct imap_response *r;
	char buf[200];
	struct run run;

	(void)state;
	imap_parser_limits_default(&lim);
	assert_int_equal(lim.max_line, 64 * 1024);
	assert_int_equal(lim.max_depth, 32);
	assert_int_equal(lim.max_literal, 1024ULL * 1024 * 1024);

	/* Line length: exactly at the limit passes, one more fails. */
	lim.max_line = 32;
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "* OK ", 5);
	memcpy(buf + 30, "\r\n", 2);
	run_all(&lim, false, NULL, buf, 32, &run);
	assert_int_equal(run.n, 1);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
	assert_int_equal(run.ev[0].resp->text_len, 25);
	run_free(&run);
	memcpy(buf + 30, "x\r\n", 3);
	error_n(&lim, buf, 33, -EMSGSIZE, "longer than 32 bytes");
	/* An endless line fails without the CRLF ever coming. */
	memset(buf + 5, 'x', sizeof(buf) - 5);
	error_n(&lim, buf, sizeof(buf), -EMSGSIZE, "longer than 32 bytes");

	/* Literal bytes do not count against the line. */
	lim.max_line = 40;
	{
		static const char in[] = "* 1 FETCH (BODY[] {50}\r\n"
		                         "0123456789012345678901234567890123"
		                         "456789012345678"
		                         "9)\r\n";
		run_all(&lim, false, NULL, in, sizeof(in) - 1, &run);
		assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
		assert_lit(el(el(&run.ev[0].resp->args, 0), 1),
		           "01234567890123456789012345678901234567890123456789",
		           50);
		run_free(&run);
	}
	/* ... but the segments after literals do. */
	ERR_LIM(&lim,
	        "* 1 FETCH (BODY[] {1}\r\nx BODY[1] {1}\r\nx UID 1234567)\r\n",
	        -EMSGSIZE, "longer than 40");

	/* Nesting. */
	imap_parser_limits_default(&lim);
	lim.max_depth = 3;
	RUN_ALL(&lim, false, NULL, "* X (((a)))\r\n", &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
	assert_atom(el(el(el(el(&run.ev[0].resp->args, 0), 0), 0), 0), "a");
	run_free(&run);
	ERR_LIM(&lim, "* X ((((a))))\r\n", -EMSGSIZE, "nested deeper than 3");
	ERR_LIM(&lim, "* OK [X ((((a))))] x\r\n", -EMSGSIZE, "nested deeper");
	{
		char deep[100];
		int n = snprintf(deep, sizeof(deep), "* X ");

		for (int i = 0; i < 33; i++)
			deep[n++] = '(';
		error_n(NULL, deep, (size_t)n, -EMSGSIZE,
		        "nested deeper than 32");
		n = 4;
		for (int i = 0; i < 32; i++)
			deep[n++] = '(';
		for (int i = 0; i < 32; i++)
			deep[n++] = ')';
		memcpy(deep + n, "\r\n", 2);
		r = parse_n(deep, (size_t)n + 2);
		imap_response_free(&r);
	}

	/* Literal size limit and overflow, caught on the digits. */
	imap_parser_limits_default(&lim);
	lim.max_literal = 10;
	RUN_ALL(&lim, false, NULL, "* X {10}\r\n0123456789\r\n", &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
	run_free(&run);
	ERR_LIM(&lim, "* X {11}\r\n0123456789x\r\n", -EMSGSIZE,
	        "literal larger than the limit of 10 bytes");
	ERR_LIM(&lim, "* X {11", -EMSGSIZE, "literal larger than the limit");
	ERR_LIM(NULL, "* X {123456789012345678901234567890}\r\n", -EMSGSIZE,
	        "literal larger than the limit");
	lim.max_literal = UINT64_MAX;
	lim.max_mem = SIZE_MAX;
	ERR_LIM(&lim, "* X {123456789012345678901234567890}\r\n", -EMSGSIZE,
	        "literal size overflows");
	ERR_LIM(&lim, "* X {18446744073709551616}\r\n", -EMSGSIZE,
	        "literal size overflows");
	/* The largest size parses; it cannot be kept in memory. */
	ERR_LIM(&lim, "* X {18446744073709551615}\r\n", -EMSGSIZE, "memory");

	/* Memory of the tree. */
	imap_parser_limits_default(&lim);
	lim.max_mem = 1024;
	ERR_LIM(&lim, "* X {2000}\r\n", -EMSGSIZE,
	        "more than 1024 bytes of memory");
	ERR_LIM(&lim, "* X {1024}\r\n", -EMSGSIZE, "memory");
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "* X ", 4);
	for (size_t i = 5; i < sizeof(buf); i += 2)
		buf[i] = ' ';
	error_n(&lim, buf, sizeof(buf), -EMSGSIZE, "memory");

	/* Bad limits. */
	{
		struct imap_parser *p = NULL;

		imap_parser_limits_default(&lim);
		lim.max_depth = IMAP_PARSER_DEPTH_CAP + 1;
		assert_int_equal(imap_parser_new(&lim, &p), -EINVAL);
		assert_null(p);
		lim.max_depth = 0;
		lim.max_line = 0;
		assert_int_equal(imap_parser_new(&lim, &p), -EINVAL);
		lim.max_line = 100;
		lim.max_mem = 0;
		assert_int_equal(imap_parser_new(&lim, &p), -EINVAL);
		/* Depth 0 is allowed: no lists at all. */
		lim.max_mem = 4096;
		ERR_LIM(&lim, "* X ()\r\n", -EMSGSIZE, "nested deeper than 0");
	}
}

/* --- streaming ----------------------------------------------------------- */

static void test_stream_fetch(void **state)
{
	static const char in[] =
	        "* 7 FETCH (UID 42 ENVELOPE (NIL {3}\r\nabc NIL NIL NIL NIL "
	        "NIL NIL NIL NIL) BODY[] {36}\r\n"
	        "From: a@b\r\n\r\nline\0with NUL\rand CR\n. "
	        "FLAGS (\\Seen))\r\n"
	        "* 8 FETCH (UID 43 BODY[] {16}\r\n0123456789abcdef)\r\n";
	struct imap_parser_limits lim;
	const struct imap_value *fl, *v;
	struct run run;

	(void)state;
	imap_parser_limits_default(&lim);
	lim.stream_threshold = 10;
	run_all(&lim, true, NULL, in, sizeof(in) - 1, &run);
	assert_int_equal(run.n, 2);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
	assert_int_equal(run.ev[1].rc, IMAP_PARSE_DONE);
	assert_int_equal(run.rec.begins, 2);
	assert_int_equal(run.rec.ends, 2);
	assert_int_equal(run.rec.aborts, 0);
	assert_int_equal(run.rec.data_len, 52);
	assert_memory_equal(run.rec.data,
	                    "From: a@b\r\n\r\nline\0with NUL\rand CR\n. "
	                    "0123456789abcdef",
	                    52);
	/* What begin saw: the response so far and the item name. */
	assert_int_equal(run.rec.lit[0].size, 36);
	assert_string_equal(run.rec.lit[0].item, "BODY[]");
	assert_true(run.rec.lit[0].has_number);
	assert_int_equal(run.rec.lit[0].number, 7);
	assert_string_equal(run.rec.lit[0].keyword, "FETCH");
	assert_int_equal(run.rec.lit[0].nargs, 1);
	assert_int_equal(run.rec.lit[1].size, 16);
	assert_int_equal(run.rec.lit[1].number, 8);

	/* The small literal stayed in memory, the big one is a size. */
	fl = el(&run.ev[0].resp->args, 0);
	assert_list(fl, 8);
	assert_lit(el(imap_fetch_item(fl, "ENVELOPE"), 1), "abc", 3);
	v = imap_fetch_item(fl, "BODY[]");
	assert_non_null(v);
	assert_int_equal(v->type, IMAP_VALUE_STREAMED);
	assert_int_equal(v->size, 36);
	assert_null(v->str);
	assert_null(imap_value_str(v, NULL));
	assert_atom(el(imap_fetch_item(fl, "FLAGS"), 0), "\\Seen");
	v = imap_fetch_item(el(&run.ev[1].resp->args, 0), "BODY[]");
	assert_int_equal(v->type, IMAP_VALUE_STREAMED);
	assert_int_equal(v->size, 16);
	run_free(&run);

	/* Byte by byte, data arrives in 52 calls of one byte. */
	run_feed(&lim, true, NULL, in, sizeof(in) - 1, 1, &run);
	assert_int_equal(run.rec.data_calls, 52);
	run_free(&run);
	run_feed(&lim, true, NULL, in, sizeof(in) - 1, 0, &run);
	assert_int_equal(run.rec.data_calls, 2);
	run_free(&run);

	/* Without a sink the literals are kept in memory. */
	run_all(&lim, false, NULL, in, sizeof(in) - 1, &run);
	assert_int_equal(run.n, 2);
	assert_int_equal(run.rec.begins, 0);
	assert_lit(imap_fetch_item(el(&run.ev[1].resp->args, 0), "BODY[]"),
	           "0123456789abcdef", 16);
	run_free(&run);
}

/* Streamed literals do not count against the tree's memory. */
static void test_stream_memory(void **state)
{
	struct imap_parser_limits lim;
	char *in = malloc(3000);
	struct run run;
	size_t n;

	(void)state;
	assert_non_null(in);
	n = (size_t)sprintf(in, "* 1 FETCH (UID 9 BODY[] {2000}\r\n");
	for (size_t i = 0; i < 2000; i++)
		in[n++] = (char)(i * 7);
	memcpy(in + n, ")\r\n", 3);
	n += 3;
	imap_parser_limits_default(&lim);
	lim.max_mem = 1024;
	lim.stream_threshold = 100;
	run_all(&lim, true, NULL, in, n, &run);
	assert_int_equal(run.n, 1);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_DONE);
	assert_int_equal(run.rec.data_len, 2000);
	assert_memory_equal(run.rec.data, in + n - 2003, 2000);
	assert_int_equal(el(el(&run.ev[0].resp->args, 0), 3)->size, 2000);
	run_free(&run);
	error_n(&lim, in, n, -EMSGSIZE, "more than 1024 bytes of memory");
	free(in);
}

static void test_stream_edge(void **state)
{
	struct imap_parser_limits lim;
	struct run run;

	(void)state;
	imap_parser_limits_default(&lim);
	lim.stream_threshold = 0;
	/* Threshold 0 streams every literal, even an empty one; the item
	 * is NULL when the literal does not follow an atom. */
	RUN_ALL(&lim, true, NULL,
	        "* LIST () \"/\" {0}\r\n\r\n* 1 FETCH (BINARY[2] ~{2}\r\n\0\1)\r\n",
	        &run);
	assert_int_equal(run.n, 2);
	assert_int_equal(run.rec.begins, 2);
	assert_int_equal(run.rec.ends, 2);
	assert_true(run.rec.lit[0].item_null);
	assert_int_equal(run.rec.lit[0].size, 0);
	assert_int_equal(run.rec.lit[0].nargs, 2);
	assert_string_equal(run.rec.lit[1].item, "BINARY[2]");
	assert_int_equal(run.rec.data_len, 2);
	assert_memory_equal(run.rec.data, "\0\1", 2);
	assert_int_equal(el(&run.ev[0].resp->args, 2)->type,
	                 IMAP_VALUE_STREAMED);
	assert_true(el(el(&run.ev[1].resp->args, 0), 1)->literal8);
	run_free(&run);

	/* A literal in a response code streams too; item is the atom. */
	RUN_ALL(&lim, true, NULL, "* OK [X y {2}\r\n]]] t\r\n", &run);
	assert_int_equal(run.n, 1);
	assert_string_equal(run.rec.lit[0].item, "y");
	assert_memory_equal(run.rec.data, "]]", 2);
	assert_string_equal(run.ev[0].resp->text, "t");
	run_free(&run);

	/* Over max_literal fails before begin. */
	lim.max_literal = 5;
	RUN_ALL(&lim, true, NULL, "* X {6}\r\nabcdef\r\n", &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_ERROR);
	assert_int_equal(run.rec.begins, 0);
	run_free(&run);

	/* A syntax error after a complete streamed literal: end was called,
	 * the response fails. */
	lim.max_literal = 100;
	RUN_ALL(&lim, true, NULL, "* X {2}\r\nab\"\r\n", &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_ERROR);
	assert_int_equal(run.rec.ends, 1);
	assert_int_equal(run.rec.aborts, 0);
	run_free(&run);
}

static void test_stream_errors(void **state)
{
	static const char in[] = "* 1 FETCH (BODY[] {20}\r\n"
	                         "01234567890123456789)\r\n";
	struct imap_parser_limits lim;
	struct rec init;
	struct run run;
	struct imap_parser *p;
	struct imap_response *resp;
	size_t used;

	(void)state;
	imap_parser_limits_default(&lim);
	lim.stream_threshold = 1;

	memset(&init, 0, sizeof(init));
	init.fail_begin = -ENOSPC;
	run_all(&lim, true, &init, in, sizeof(in) - 1, &run);
	assert_int_equal(run.n, 1);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_ERROR);
	assert_int_equal(run.ev[0].errnum, -ENOSPC);
	assert_non_null(strstr(run.ev[0].err, "refused"));
	assert_int_equal(run.rec.begins, 1);
	assert_int_equal(run.rec.aborts, 0);
	assert_int_equal(run.rec.data_len, 0);
	run_free(&run);

	memset(&init, 0, sizeof(init));
	init.fail_data = -EIO;
	run_all(&lim, true, &init, in, sizeof(in) - 1, &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_ERROR);
	assert_int_equal(run.ev[0].errnum, -EIO);
	assert_int_equal(run.rec.aborts, 1);
	assert_int_equal(run.rec.ends, 0);
	run_free(&run);

	memset(&init, 0, sizeof(init));
	init.fail_end = -EDQUOT;
	run_all(&lim, true, &init, in, sizeof(in) - 1, &run);
	assert_int_equal(run.ev[0].rc, IMAP_PARSE_ERROR);
	assert_int_equal(run.ev[0].errnum, -EDQUOT);
	assert_int_equal(run.rec.ends, 1);
	assert_int_equal(run.rec.aborts, 0);
	assert_int_equal(run.rec.data_len, 20);
	run_free(&run);

	/* Freed in the middle of a streamed literal: abort. */
	memset(&init, 0, sizeof(init));
	assert_int_equal(imap_parser_new(&lim, &p), 0);
	imap_parser_set_sink(p, &rec_sink, &init);
	assert_int_equal(imap_parser_feed(p, in, 30, &used, &resp),
	                 IMAP_PARSE_MORE);
	assert_int_equal(init.begins, 1);
	assert_int_equal(init.data_len, 6);
	/* Changing the sink mid-literal is ignored. */
	imap_parser_set_sink(p, NULL, NULL);
	assert_int_equal(imap_parser_feed(p, in + 30, 4, &used, &resp),
	                 IMAP_PARSE_MORE);
	assert_int_equal(init.data_len, 10);
	imap_parser_free(&p);
	assert_int_equal(init.aborts, 1);
	assert_int_equal(init.ends, 0);

	/* A sink removed between responses: literals go to memory again. */
	memset(&init, 0, sizeof(init));
	assert_int_equal(imap_parser_new(&lim, &p), 0);
	imap_parser_set_sink(p, &rec_sink, &init);
	assert_int_equal(imap_parser_feed(p, in, sizeof(in) - 1, &used, &resp),
	                 IMAP_PARSE_DONE);
	assert_int_equal(el(el(&resp->args, 0), 1)->type, IMAP_VALUE_STREAMED);
	imap_response_free(&resp);
	imap_parser_set_sink(p, NULL, NULL);
	assert_int_equal(imap_parser_feed(p, in, sizeof(in) - 1, &used, &resp),
	                 IMAP_PARSE_DONE);
	assert_lit(el(el(&resp->args, 0), 1), "01234567890123456789", 20);
	imap_response_free(&resp);
	imap_parser_free(&p);
	assert_int_equal(init.begins, 1);
}

/* Every value of each limit, from 0 or 1 up: the parse is the reference
 * parse up to a point, and then fails cleanly on that limit (the sanitizer
 * checks nothing leaks on any of these paths). */
static void sweep(const char *in, size_t len, const char *what,
                  void (*set)(struct imap_parser_limits *, size_t), size_t from,
                  size_t to, size_t stride, const char *msg)
{
	struct imap_parser_limits lim;
	struct run *ref = malloc(sizeof(*ref)), *r = malloc(sizeof(*r));
	size_t errors = 0;

	assert_non_null(ref);
	assert_non_null(r);
	run_all(NULL, false, NULL, in, len, ref);
	assert_int_equal(ref->ev[ref->n - 1].rc, IMAP_PARSE_DONE);
	for (size_t v = from; v <= to; v += stride) {
		imap_parser_limits_default(&lim);
		set(&lim, v);
		run_all(&lim, false, NULL, in, len, r);
		assert_true(r->n >= 1 && r->n <= ref->n);
		for (size_t i = 0; i + 1 < r->n; i++)
			assert_true(imap_response_equal(r->ev[i].resp,
			                                ref->ev[i].resp));
		if (r->ev[r->n - 1].rc == IMAP_PARSE_ERROR) {
			if (strstr(r->ev[r->n - 1].err, msg) == NULL)
				print_error("%s %zu: %s\n", what, v,
				            r->ev[r->n - 1].err);
			assert_non_null(strstr(r->ev[r->n - 1].err, msg));
			assert_int_equal(r->ev[r->n - 1].errnum, -EMSGSIZE);
			errors++;
		} else {
			assert_int_equal(r->n, ref->n);
			assert_true(imap_response_equal(
			        r->ev[r->n - 1].resp, ref->ev[r->n - 1].resp));
		}
		run_free(r);
	}
	/* The sweep must reach both outcomes. */
	assert_true(errors > 0);
	assert_true(errors < (to - from) / stride + 1);
	run_free(ref);
	free(ref);
	free(r);
}

static void set_mem(struct imap_parser_limits *l, size_t v)
{
	l->max_mem = v;
}

static void set_line(struct imap_parser_limits *l, size_t v)
{
	l->max_line = v;
}

static void set_depth(struct imap_parser_limits *l, size_t v)
{
	l->max_depth = (unsigned)v;
}

static void set_literal(struct imap_parser_limits *l, size_t v)
{
	l->max_literal = v;
}

static void test_limit_sweep(void **state)
{
	static const char in[] =
	        "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n"
	        "+ dXNlcm5hbWU6\r\n"
	        "a1 OK [PERMANENTFLAGS (\\Seen \\*)] done\r\n"
	        "* NO [BADCHARSET ({5}\r\nUTF-8)] x\r\n"
	        "* 12 FETCH (UID 42 FLAGS (\\Seen) ENVELOPE (NIL {3}\r\nabc "
	        "((\"A\" NIL \"a\" \"b\")) NIL NIL NIL NIL NIL NIL NIL) "
	        "BODY[HEADER.FIELDS (FROM)] {12}\r\nFrom: a@b\r\n\r BODY[] "
	        "{30}\r\n0123456789abcdefghijklmnopqrst)\r\n"
	        "* LIST (\\HasNoChildren) \"/\" \"Sent Items\"\r\n"
	        "* 3 EXISTS\r\n"
	        "a2 OK [COPYUID 1 2:3 4:5] Done\r\n";

#define VEC(s)                                                                 \
	{                                                                      \
		s, sizeof(s) - 1                                               \
	}
	/* One response each, so that every allocation gets its turn. */
	static const struct {
		const char *s;
		size_t len;
	} single[] = {
	        VEC("A4 OK\r\n"),       VEC("+\r\n"),
	        VEC("* BYE\r\n"),       VEC("* 1 EXISTS\r\n"),
	        VEC("* SEARCH 1\r\n"),  VEC("* X \"q\"\r\n"),
	        VEC("* X {0}\r\n\r\n"), VEC("* X ~{1}\r\n\0\r\n"),
	        VEC("* OK [A] t\r\n"),  VEC("* OK [A b] t\r\n"),
	};
#undef VEC

	(void)state;
	for (size_t i = 0; i < sizeof(single) / sizeof(single[0]); i++)
		sweep(single[i].s, single[i].len, "max_mem", set_mem, 1, 1000,
		      1, "memory");
	sweep(in, sizeof(in) - 1, "max_mem", set_mem, 1, 3000, 1, "memory");
	sweep(in, sizeof(in) - 1, "max_line", set_line, 1, 200, 1,
	      "longer than");
	sweep(in, sizeof(in) - 1, "max_depth", set_depth, 0, 4, 1,
	      "nested deeper");
	sweep(in, sizeof(in) - 1, "max_literal", set_literal, 0, 31, 1,
	      "literal larger");
}

/* --- helpers ------------------------------------------------------------- */

static void test_helpers(void **state)
{
	struct imap_response *r;
	const struct imap_value *a;
	uint32_t u32 = 7;
	uint64_t u64 = 7;
	size_t len;

	(void)state;
	r = PARSE("* X 4294967295 4294967296 18446744073709551615 "
	          "18446744073709551616 00012 abc \"12\" (1 2 3) NIL\r\n");
	a = &r->args;
	assert_int_equal(imap_value_u32(el(a, 0), &u32), 0);
	assert_int_equal(u32, 4294967295u);
	assert_int_equal(imap_value_u32(el(a, 1), &u32), -ERANGE);
	assert_int_equal(imap_value_u64(el(a, 1), &u64), 0);
	assert_int_equal(u64, 4294967296ULL);
	assert_int_equal(imap_value_u64(el(a, 2), &u64), 0);
	assert_true(u64 == UINT64_MAX);
	assert_int_equal(imap_value_u64(el(a, 3), &u64), -ERANGE);
	assert_int_equal(imap_value_u32(el(a, 4), &u32), 0);
	assert_int_equal(u32, 12);
	assert_string_equal(el(a, 4)->str, "00012");
	assert_int_equal(imap_value_u32(el(a, 5), &u32), -EINVAL);
	/* A quoted number is a string. */
	assert_int_equal(imap_value_u32(el(a, 6), &u32), -EINVAL);
	assert_int_equal(imap_value_u64(el(a, 7), &u64), -EINVAL);
	assert_int_equal(imap_value_u64(el(a, 8), &u64), -EINVAL);
	assert_int_equal(imap_value_u64(NULL, &u64), -EINVAL);

	assert_string_equal(imap_value_str(el(a, 5), &len), "abc");
	assert_int_equal(len, 3);
	assert_string_equal(imap_value_str(el(a, 6), NULL), "12");
	assert_null(imap_value_str(el(a, 8), &len));
	assert_null(imap_value_str(NULL, &len));
	assert_null(imap_value_str(el(a, 7), &len));

	assert_true(imap_atom_eq(el(a, 5), "ABC"));
	assert_false(imap_atom_eq(el(a, 5), "AB"));
	assert_false(imap_atom_eq(el(a, 5), "ABCD"));
	assert_true(imap_atom_eq(el(a, 4), "00012"));
	assert_false(imap_atom_eq(el(a, 6), "12"));
	assert_false(imap_atom_eq(el(a, 8), "NIL"));
	assert_false(imap_atom_eq(NULL, "x"));

	assert_null(imap_list_get(a, 9));
	assert_null(imap_list_get(el(a, 5), 0));
	assert_null(imap_list_get(NULL, 0));
	assert_non_null(imap_list_get(el(a, 7), 2));
	assert_null(imap_list_get(el(a, 7), 3));
	assert_null(imap_fetch_item(el(a, 5), "x"));
	assert_null(imap_fetch_item(NULL, "x"));
	/* Pairs only: an odd last element has no value. */
	assert_null(imap_fetch_item(a, "NIL"));
	assert_false(imap_response_is(r, "Y"));
	assert_false(imap_response_is(NULL, "X"));
	imap_response_free(&r);

	/* Equality sees every difference. */
	{
		struct imap_response *x = PARSE("* X (a \"b\" {1}\r\nc)\r\n");
		struct imap_response *y = PARSE("* X (a \"b\" {1}\r\nd)\r\n");
		struct imap_response *z = PARSE("* X (a b {1}\r\nc)\r\n");
		struct imap_response *w = PARSE("* x (a \"b\" {1}\r\nc)\r\n");

		assert_true(imap_response_equal(x, x));
		assert_false(imap_response_equal(x, y));
		assert_false(imap_response_equal(x, z));
		assert_false(imap_response_equal(x, w));
		imap_response_free(&x);
		imap_response_free(&y);
		imap_response_free(&z);
		imap_response_free(&w);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_greeting_dovecot),
	        cmocka_unit_test(test_greeting_gmail_exchange),
	        cmocka_unit_test(test_tagged),
	        cmocka_unit_test(test_codes),
	        cmocka_unit_test(test_text_odd),
	        cmocka_unit_test(test_continuation),
	        cmocka_unit_test(test_capability),
	        cmocka_unit_test(test_list),
	        cmocka_unit_test(test_numbered),
	        cmocka_unit_test(test_search),
	        cmocka_unit_test(test_misc_data),
	        cmocka_unit_test(test_fetch_basic),
	        cmocka_unit_test(test_fetch_envelope),
	        cmocka_unit_test(test_fetch_bodystructure),
	        cmocka_unit_test(test_fetch_sections),
	        cmocka_unit_test(test_literal_raw),
	        cmocka_unit_test(test_quoted),
	        cmocka_unit_test(test_bare_lf),
	        cmocka_unit_test(test_two_responses),
	        cmocka_unit_test(test_more),
	        cmocka_unit_test(test_errors_syntax),
	        cmocka_unit_test(test_errors_limits),
	        cmocka_unit_test(test_stream_fetch),
	        cmocka_unit_test(test_stream_memory),
	        cmocka_unit_test(test_stream_edge),
	        cmocka_unit_test(test_stream_errors),
	        cmocka_unit_test(test_limit_sweep),
	        cmocka_unit_test(test_helpers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
