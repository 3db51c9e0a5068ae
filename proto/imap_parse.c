/* IMAP response parser: a byte-at-a-time state machine.
 *
 * Every decision is taken on one byte with state carried between bytes, so
 * the result cannot depend on where the input was split.  Only literal
 * bodies are copied in runs, and they carry no decisions. */
#include "imap_parse.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum pstate {
	S_START,      /* first byte of a response */
	S_CONT,       /* after "+" */
	S_STAR,       /* after "*" */
	S_TAG,        /* in the tag */
	S_TSTATUS,    /* in the status word of a tagged response */
	S_UWORD,      /* after "* ": a number or a keyword */
	S_KEYWORD,    /* after "* N ": the keyword */
	S_STATUS_SP,  /* after "OK ": "[" or text */
	S_CODE,       /* in the response code atom */
	S_AFTER_CODE, /* after "]" */
	S_TEXT,       /* free text to the end of the line */
	S_CR,         /* CR seen at the end of the response */
	S_VALUES,     /* between values */
	S_ATOM,       /* in an atom */
	S_SECTION,    /* in an atom's [...] */
	S_SECTION_Q,  /* in a quoted string inside [...] */
	S_SECTION_QE, /* after a backslash there */
	S_QUOTED,     /* in a quoted string */
	S_QUOTED_ESC, /* after a backslash there */
	S_LIT_SIZE,   /* after "{" */
	S_LIT_PLUS,   /* after "{n+" */
	S_LIT_CLOSE,  /* after "}" */
	S_LIT_CR,     /* after "}" CR */
	S_LIT_DATA,   /* literal bytes */
};

/* What step() tells the feed loop. */
enum step_rc {
	STEP_NEXT = 0, /* byte consumed */
	STEP_AGAIN,    /* state changed, give the same byte to the new state */
	STEP_DONE,     /* byte consumed and the response is complete */
};

struct imap_parser {
	struct imap_parser_limits lim;
	const struct imap_literal_sink *sink; /* borrowed */
	void *sink_ctx;                       /* borrowed */

	enum pstate state;
	bool dead;
	int err;
	char errmsg[256];

	struct imap_response *resp; /* owned, under construction */
	uint64_t off;               /* bytes of this response so far */
	size_t line;                /* non-literal bytes so far */
	size_t mem;                 /* bytes charged to this response */

	/* Open lists: stack[0] is resp->args or resp->code_args. */
	struct imap_value **stack; /* owned array, borrowed pointers */
	unsigned depth;
	bool code_ctx; /* values of a response code: "]" ends them */

	char *tok; /* owned; the token being read */
	size_t tok_len;
	size_t tok_cap;

	uint64_t lit_size;
	uint64_t lit_left;
	bool lit8;
	bool lit_digits;
	bool lit_stream; /* the current literal goes to the sink */
	bool lit_begun;  /* sink->begin succeeded, end/abort pending */
	char *lit_buf;   /* owned; in-memory literal */
	size_t lit_pos;
};

static int fail(struct imap_parser *p, int err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* The message never quotes server bytes: it goes to logs. */
static int fail(struct imap_parser *p, int err, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(p->errmsg))
		snprintf(p->errmsg + n, sizeof(p->errmsg) - (size_t)n,
		         " (byte %llu of the response)",
		         (unsigned long long)p->off);
	p->err = err;
	p->dead = true;
	return err;
}

static int fail_nomem(struct imap_parser *p)
{
	return fail(p, -ENOMEM, "out of memory");
}

static int fail_mem(struct imap_parser *p)
{
	return fail(p, -EMSGSIZE,
	            "response needs more than %zu bytes of memory",
	            p->lim.max_mem);
}

/* Account n bytes to the response tree before allocating them. */
static int charge(struct imap_parser *p, size_t n)
{
	if (n > p->lim.max_mem - p->mem)
		return fail_mem(p);
	p->mem += n;
	return 0;
}

/* --- character classes ------------------------------------------------ */

/* RFC 3501 ATOM-CHAR. */
static bool is_atom_char(unsigned char c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return strchr("(){%*\"\\]", c) == NULL;
}

/* tag = 1*<any ASTRING-CHAR except "+"> */
static bool is_tag_char(unsigned char c)
{
	return (is_atom_char(c) || c == ']') && c != '+';
}

/* The lenient atom of values; see the header. */
static bool is_value_atom_char(const struct imap_parser *p, unsigned char c)
{
	if (c <= 0x20 || c == 0x7f)
		return false;
	if (c == '(' || c == ')' || c == '{' || c == '"')
		return false;
	if (c == ']' && p->code_ctx)
		return false;
	return true;
}

static bool is_eol(unsigned char c)
{
	return c == '\r' || c == '\n';
}

/* --- token buffer ----------------------------------------------------- */

/* The token only ever holds non-literal bytes, so max_line bounds it. */
static int tok_add(struct imap_parser *p, unsigned char c)
{
	if (p->tok_len + 1 >= p->tok_cap) {
		size_t ncap = p->tok_cap ? p->tok_cap * 2 : 64;
		char *n = realloc(p->tok, ncap);

		if (n == NULL)
			return fail_nomem(p);
		p->tok = n;
		p->tok_cap = ncap;
	}
	p->tok[p->tok_len++] = (char)c;
	p->tok[p->tok_len] = '\0';
	return 0;
}

static void tok_reset(struct imap_parser *p)
{
	p->tok_len = 0;
	if (p->tok != NULL)
		p->tok[0] = '\0';
}

/* A charged, NUL-terminated copy of the token. */
static int tok_take(struct imap_parser *p, char **str_r)
{
	char *s;
	int rc;

	rc = charge(p, p->tok_len + 1);
	if (rc < 0)
		return rc;
	s = malloc(p->tok_len + 1);
	if (s == NULL)
		return fail_nomem(p);
	if (p->tok_len > 0)
		memcpy(s, p->tok, p->tok_len);
	s[p->tok_len] = '\0';
	*str_r = s;
	tok_reset(p);
	return 0;
}

static bool tok_is_digits(const struct imap_parser *p)
{
	if (p->tok_len == 0)
		return false;
	for (size_t i = 0; i < p->tok_len; i++)
		if (p->tok[i] < '0' || p->tok[i] > '9')
			return false;
	return true;
}

/* --- tree building ---------------------------------------------------- */

static void value_clear(struct imap_value *v)
{
	if (v->type == IMAP_VALUE_LIST) {
		for (size_t i = 0; i < v->count; i++)
			value_clear(&v->list[i]);
	}
	free(v->list);
	free(v->str);
	memset(v, 0, sizeof(*v));
}

/* A new zeroed (NIL) element at the end of the innermost open list.  Every
 * element below count is always valid, so a half-built tree can be freed;
 * an open list's array is only grown while it is the innermost one, so the
 * stack's pointers into parents' arrays stay valid. */
static int value_append(struct imap_parser *p, struct imap_value **v_r)
{
	struct imap_value *list = p->stack[p->depth];
	int rc;

	if (list->count == list->list_cap) {
		size_t ncap = list->list_cap ? list->list_cap * 2 : 4;
		struct imap_value *n;

		if (ncap > SIZE_MAX / sizeof(*n))
			return fail_nomem(p);
		rc = charge(p, (ncap - list->list_cap) * sizeof(*n));
		if (rc < 0)
			return rc;
		n = realloc(list->list, ncap * sizeof(*n));
		if (n == NULL)
			return fail_nomem(p);
		list->list = n;
		list->list_cap = ncap;
	}
	*v_r = &list->list[list->count++];
	memset(*v_r, 0, sizeof(**v_r));
	return 0;
}

static int finish_atom(struct imap_parser *p)
{
	struct imap_value *v;
	int rc;

	rc = value_append(p, &v);
	if (rc < 0)
		return rc;
	if (p->tok_len == 3 && strncasecmp(p->tok, "NIL", 3) == 0) {
		tok_reset(p);
		return 0;
	}
	v->type = tok_is_digits(p) ? IMAP_VALUE_NUMBER : IMAP_VALUE_ATOM;
	v->len = p->tok_len;
	return tok_take(p, &v->str);
}

static int finish_quoted(struct imap_parser *p)
{
	struct imap_value *v;
	int rc;

	rc = value_append(p, &v);
	if (rc < 0)
		return rc;
	v->type = IMAP_VALUE_QUOTED;
	v->len = p->tok_len;
	return tok_take(p, &v->str);
}

static int open_list(struct imap_parser *p)
{
	struct imap_value *v;
	int rc;

	if (p->depth >= p->lim.max_depth)
		return fail(p, -EMSGSIZE, "lists nested deeper than %u",
		            p->lim.max_depth);
	rc = value_append(p, &v);
	if (rc < 0)
		return rc;
	v->type = IMAP_VALUE_LIST;
	p->stack[++p->depth] = v;
	return 0;
}

static void set_root(struct imap_parser *p, struct imap_value *root,
                     bool code_ctx)
{
	assert(p->depth == 0);
	p->stack[0] = root;
	p->code_ctx = code_ctx;
}

static int set_text(struct imap_parser *p)
{
	p->resp->text_len = p->tok_len;
	return tok_take(p, &p->resp->text);
}

/* --- literals --------------------------------------------------------- */

static const char *literal_item(const struct imap_parser *p)
{
	const struct imap_value *list = p->stack[p->depth];

	if (list->count == 0 ||
	    list->list[list->count - 1].type != IMAP_VALUE_ATOM)
		return NULL;
	return list->list[list->count - 1].str;
}

static void sink_abort(struct imap_parser *p)
{
	if (p->lit_begun && p->sink != NULL && p->sink->abort != NULL)
		p->sink->abort(p->sink_ctx);
	p->lit_begun = false;
}

static int literal_finish(struct imap_parser *p)
{
	struct imap_value *v = NULL;
	int rc;

	if (p->lit_stream) {
		p->lit_begun = false;
		rc = p->sink->end(p->sink_ctx);
		if (rc < 0)
			return fail(p, rc, "literal sink failed at the end: %s",
			            strerror(-rc));
	}
	rc = value_append(p, &v);
	if (rc < 0)
		return rc;
	v->literal8 = p->lit8;
	v->size = p->lit_size;
	if (p->lit_stream) {
		v->type = IMAP_VALUE_STREAMED;
	} else {
		v->type = IMAP_VALUE_LITERAL;
		v->str = p->lit_buf;
		v->len = (size_t)p->lit_size;
		p->lit_buf = NULL;
	}
	p->state = S_VALUES;
	return 0;
}

/* "{n}" and its line end have been read. */
static int literal_start(struct imap_parser *p)
{
	int rc;

	p->lit_left = p->lit_size;
	p->lit_pos = 0;
	p->lit_stream =
	        p->sink != NULL && p->lit_size >= p->lim.stream_threshold;
	if (p->lit_stream) {
		rc = p->sink->begin(p->sink_ctx, p->resp, literal_item(p),
		                    p->lit_size);
		if (rc < 0)
			return fail(p, rc, "literal sink refused a literal: %s",
			            strerror(-rc));
		p->lit_begun = true;
	} else {
		/* Checked before the cast: max_literal may exceed SIZE_MAX. */
		if (p->lit_size >= p->lim.max_mem)
			return fail_mem(p);
		rc = charge(p, (size_t)p->lit_size + 1);
		if (rc < 0)
			return rc;
		p->lit_buf = malloc((size_t)p->lit_size + 1);
		if (p->lit_buf == NULL)
			return fail_nomem(p);
		p->lit_buf[p->lit_size] = '\0';
	}
	p->state = S_LIT_DATA;
	if (p->lit_left == 0)
		return literal_finish(p);
	return 0;
}

static int literal_data(struct imap_parser *p, const unsigned char *buf,
                        size_t n)
{
	int rc;

	assert(n > 0 && n <= p->lit_left);
	if (p->lit_stream) {
		rc = p->sink->data(p->sink_ctx, buf, n);
		if (rc < 0) {
			sink_abort(p);
			return fail(p, rc, "literal sink failed: %s",
			            strerror(-rc));
		}
	} else {
		memcpy(p->lit_buf + p->lit_pos, buf, n);
		p->lit_pos += n;
	}
	p->lit_left -= n;
	if (p->lit_left == 0)
		return literal_finish(p);
	return 0;
}

static int literal_digit(struct imap_parser *p, unsigned char c)
{
	unsigned d = c - '0';

	if (p->lit_size > (UINT64_MAX - d) / 10)
		return fail(p, -EMSGSIZE, "literal size overflows");
	p->lit_size = p->lit_size * 10 + d;
	if (p->lit_size > p->lim.max_literal)
		return fail(p, -EMSGSIZE,
		            "literal larger than the limit of %llu bytes",
		            (unsigned long long)p->lim.max_literal);
	p->lit_digits = true;
	return 0;
}

static void literal_prefix(struct imap_parser *p, bool lit8)
{
	p->lit8 = lit8;
	p->lit_size = 0;
	p->lit_digits = false;
	p->state = S_LIT_SIZE;
}

/* --- line ends -------------------------------------------------------- */

/* c is CR or LF ending the response. */
static int end_line(struct imap_parser *p, unsigned char c)
{
	if (c == '\r') {
		p->state = S_CR;
		return STEP_NEXT;
	}
	return STEP_DONE;
}

static int end_text_empty(struct imap_parser *p, unsigned char c)
{
	int rc;

	tok_reset(p);
	rc = set_text(p);
	if (rc < 0)
		return rc;
	return end_line(p, c);
}

static int parse_status(const struct imap_parser *p, bool tagged,
                        enum imap_status *status_r)
{
	static const struct {
		const char *word;
		enum imap_status status;
	} words[] = {
	        {"OK", IMAP_STATUS_OK},           {"NO", IMAP_STATUS_NO},
	        {"BAD", IMAP_STATUS_BAD},         {"BYE", IMAP_STATUS_BYE},
	        {"PREAUTH", IMAP_STATUS_PREAUTH},
	};
	size_t n = tagged ? 3 : sizeof(words) / sizeof(words[0]);

	for (size_t i = 0; i < n; i++) {
		if (strcasecmp(p->tok, words[i].word) == 0) {
			*status_r = words[i].status;
			return 0;
		}
	}
	return -1;
}

/* After the status word: SP or the line end. */
static int after_status(struct imap_parser *p, unsigned char c)
{
	tok_reset(p);
	if (c == ' ') {
		p->state = S_STATUS_SP;
		return STEP_NEXT;
	}
	return end_text_empty(p, c);
}

/* --- the state machine ------------------------------------------------ */

static int step_start(struct imap_parser *p, unsigned char c)
{
	if (c == '+') {
		p->resp->kind = IMAP_RESP_CONTINUATION;
		p->state = S_CONT;
	} else if (c == '*') {
		p->state = S_STAR;
	} else if (is_tag_char(c)) {
		p->resp->kind = IMAP_RESP_TAGGED;
		p->state = S_TAG;
		return tok_add(p, c);
	} else if (is_eol(c)) {
		return fail(p, -EPROTO, "empty line");
	} else {
		return fail(p, -EPROTO,
		            "invalid tag: response starts with byte 0x%02x", c);
	}
	return STEP_NEXT;
}

static int step_tstatus(struct imap_parser *p, unsigned char c)
{
	if (is_atom_char(c))
		return tok_add(p, c);
	if (c != ' ' && !is_eol(c))
		return fail(p, -EPROTO, "invalid byte 0x%02x in status", c);
	if (parse_status(p, true, &p->resp->status) < 0)
		return fail(p, -EPROTO,
		            "tagged response without OK, NO or BAD");
	return after_status(p, c);
}

static int step_uword(struct imap_parser *p, unsigned char c)
{
	int rc;

	if (is_atom_char(c))
		return tok_add(p, c);
	if (c != ' ' && !is_eol(c))
		return fail(p, -EPROTO, "invalid byte 0x%02x in keyword", c);
	if (p->tok_len == 0)
		return fail(p, -EPROTO, "missing keyword after '*'");
	if (p->state == S_UWORD && tok_is_digits(p)) {
		uint64_t n = 0;

		for (size_t i = 0; i < p->tok_len; i++) {
			n = n * 10 + (unsigned)(p->tok[i] - '0');
			if (n > UINT32_MAX)
				return fail(p, -EPROTO,
				            "message number too large");
		}
		if (c != ' ')
			return fail(p, -EPROTO,
			            "missing keyword after message number");
		p->resp->has_number = true;
		p->resp->number = (uint32_t)n;
		tok_reset(p);
		p->state = S_KEYWORD;
		return STEP_NEXT;
	}
	if (p->state == S_UWORD &&
	    parse_status(p, false, &p->resp->status) == 0) {
		p->resp->kind = IMAP_RESP_STATUS;
		return after_status(p, c);
	}
	p->resp->kind = IMAP_RESP_DATA;
	rc = tok_take(p, &p->resp->keyword);
	if (rc < 0)
		return rc;
	set_root(p, &p->resp->args, false);
	if (c == ' ') {
		p->state = S_VALUES;
		return STEP_NEXT;
	}
	return end_line(p, c);
}

static int step_code(struct imap_parser *p, unsigned char c)
{
	int rc;

	if (is_atom_char(c))
		return tok_add(p, c);
	if (c != ']' && c != ' ')
		return fail(p, -EPROTO, "invalid byte 0x%02x in response code",
		            c);
	if (p->tok_len == 0)
		return fail(p, -EPROTO, "empty response code");
	rc = tok_take(p, &p->resp->code);
	if (rc < 0)
		return rc;
	if (c == ']') {
		p->state = S_AFTER_CODE;
	} else {
		set_root(p, &p->resp->code_args, true);
		p->state = S_VALUES;
	}
	return STEP_NEXT;
}

static int step_values(struct imap_parser *p, unsigned char c)
{
	int rc;

	switch (c) {
	case ' ': return STEP_NEXT;
	case '(': return open_list(p);
	case ')':
		if (p->depth == 0)
			return fail(p, -EPROTO, "unexpected ')'");
		p->depth--;
		return STEP_NEXT;
	case '"':
		tok_reset(p);
		p->state = S_QUOTED;
		return STEP_NEXT;
	case '{': literal_prefix(p, false); return STEP_NEXT;
	case '\r':
	case '\n':
		if (p->code_ctx)
			return fail(p, -EPROTO, "unterminated response code");
		if (p->depth > 0)
			return fail(p, -EPROTO, "unterminated list");
		return end_line(p, c);
	default: break;
	}
	if (c == ']' && p->code_ctx) {
		if (p->depth > 0)
			return fail(p, -EPROTO,
			            "unbalanced list in response code");
		p->code_ctx = false;
		p->state = S_AFTER_CODE;
		return STEP_NEXT;
	}
	if (!is_value_atom_char(p, c))
		return fail(p, -EPROTO, "unexpected byte 0x%02x", c);
	tok_reset(p);
	rc = tok_add(p, c);
	if (rc < 0)
		return rc;
	p->state = (c == '[' && !p->code_ctx) ? S_SECTION : S_ATOM;
	return STEP_NEXT;
}

static int step_atom(struct imap_parser *p, unsigned char c)
{
	int rc;

	if (c == '[' && !p->code_ctx) {
		p->state = S_SECTION;
		return tok_add(p, c);
	}
	if (is_value_atom_char(p, c))
		return tok_add(p, c);
	if (c == '{') {
		if (p->tok_len == 1 && p->tok[0] == '~') {
			tok_reset(p);
			literal_prefix(p, true);
			return STEP_NEXT;
		}
		return fail(p, -EPROTO, "'{' inside an atom");
	}
	rc = finish_atom(p);
	if (rc < 0)
		return rc;
	p->state = S_VALUES;
	return STEP_AGAIN;
}

/* Bytes of a section are kept verbatim: the section is part of the item
 * name, and the consumer matches it against what it asked for. */
static int step_section(struct imap_parser *p, unsigned char c)
{
	if (is_eol(c))
		return fail(p, -EPROTO, "unterminated '[' in an atom");
	switch (p->state) {
	case S_SECTION:
		if (c == ']')
			p->state = S_ATOM;
		else if (c == '"')
			p->state = S_SECTION_Q;
		break;
	case S_SECTION_Q:
		if (c == '"')
			p->state = S_SECTION;
		else if (c == '\\')
			p->state = S_SECTION_QE;
		break;
	default:
		assert(p->state == S_SECTION_QE);
		p->state = S_SECTION_Q;
		break;
	}
	return tok_add(p, c);
}

static int step_quoted(struct imap_parser *p, unsigned char c)
{
	int rc;

	if (is_eol(c))
		return fail(p, -EPROTO, "unterminated quoted string");
	if (p->state == S_QUOTED_ESC) {
		p->state = S_QUOTED;
		return tok_add(p, c);
	}
	if (c == '\\') {
		p->state = S_QUOTED_ESC;
		return STEP_NEXT;
	}
	if (c != '"')
		return tok_add(p, c);
	rc = finish_quoted(p);
	if (rc < 0)
		return rc;
	p->state = S_VALUES;
	return STEP_NEXT;
}

static int step_literal(struct imap_parser *p, unsigned char c)
{
	switch (p->state) {
	case S_LIT_SIZE:
		if (c >= '0' && c <= '9')
			return literal_digit(p, c);
		if (!p->lit_digits)
			return fail(p, -EPROTO, "literal without a size");
		if (c == '+') {
			p->state = S_LIT_PLUS;
			return STEP_NEXT;
		}
		if (c == '}') {
			p->state = S_LIT_CLOSE;
			return STEP_NEXT;
		}
		return fail(p, -EPROTO, "invalid byte 0x%02x in literal size",
		            c);
	case S_LIT_PLUS:
		if (c != '}')
			return fail(p, -EPROTO, "invalid literal size");
		p->state = S_LIT_CLOSE;
		return STEP_NEXT;
	case S_LIT_CLOSE:
		if (c == '\r') {
			p->state = S_LIT_CR;
			return STEP_NEXT;
		}
		if (c == '\n')
			return literal_start(p);
		return fail(p, -EPROTO,
		            "literal size not followed by a line end");
	default:
		assert(p->state == S_LIT_CR);
		if (c != '\n')
			return fail(p, -EPROTO, "CR not followed by LF");
		return literal_start(p);
	}
}

/* Returns an enum step_rc or a negative errno (the parser is then dead). */
static int step(struct imap_parser *p, unsigned char c)
{
	int rc;

	/* Only literal bytes may be NUL: in every other state it is an
	 * error, and refusing it here keeps tokens free of NUL. */
	if (c == '\0')
		return fail(p, -EPROTO, "NUL byte outside a literal");

	switch (p->state) {
	case S_START: return step_start(p, c);
	case S_CONT:
		if (c == ' ') {
			p->state = S_TEXT;
			return STEP_NEXT;
		}
		if (is_eol(c))
			return end_text_empty(p, c);
		return fail(p, -EPROTO, "no space after '+'");
	case S_STAR:
		if (c != ' ')
			return fail(p, -EPROTO, "no space after '*'");
		p->state = S_UWORD;
		return STEP_NEXT;
	case S_TAG:
		if (is_tag_char(c))
			return tok_add(p, c);
		if (c != ' ')
			return fail(p, -EPROTO, "invalid byte 0x%02x in tag",
			            c);
		rc = tok_take(p, &p->resp->tag);
		if (rc < 0)
			return rc;
		p->state = S_TSTATUS;
		return STEP_NEXT;
	case S_TSTATUS: return step_tstatus(p, c);
	case S_UWORD:
	case S_KEYWORD: return step_uword(p, c);
	case S_STATUS_SP:
		if (c == '[') {
			p->state = S_CODE;
			return STEP_NEXT;
		}
		if (is_eol(c))
			return end_text_empty(p, c);
		p->state = S_TEXT;
		return STEP_AGAIN;
	case S_CODE: return step_code(p, c);
	case S_AFTER_CODE:
		if (is_eol(c))
			return end_text_empty(p, c);
		p->state = S_TEXT;
		return c == ' ' ? STEP_NEXT : STEP_AGAIN;
	case S_TEXT:
		if (!is_eol(c))
			return tok_add(p, c);
		rc = set_text(p);
		if (rc < 0)
			return rc;
		return end_line(p, c);
	case S_CR:
		if (c != '\n')
			return fail(p, -EPROTO, "CR not followed by LF");
		return STEP_DONE;
	case S_VALUES: return step_values(p, c);
	case S_ATOM: return step_atom(p, c);
	case S_SECTION:
	case S_SECTION_Q:
	case S_SECTION_QE: return step_section(p, c);
	case S_QUOTED:
	case S_QUOTED_ESC: return step_quoted(p, c);
	case S_LIT_SIZE:
	case S_LIT_PLUS:
	case S_LIT_CLOSE:
	case S_LIT_CR: return step_literal(p, c);
	case S_LIT_DATA: break;
	}
	assert(!"literal data reached step()");
	return fail(p, -EPROTO, "internal parser error");
}

/* --- public ----------------------------------------------------------- */

void imap_parser_limits_default(struct imap_parser_limits *limits)
{
	limits->max_line = IMAP_PARSER_DEFAULT_MAX_LINE;
	limits->max_depth = IMAP_PARSER_DEFAULT_MAX_DEPTH;
	limits->max_literal = IMAP_PARSER_DEFAULT_MAX_LITERAL;
	limits->max_mem = IMAP_PARSER_DEFAULT_MAX_MEM;
	limits->stream_threshold = IMAP_PARSER_DEFAULT_STREAM_THRESHOLD;
}

int imap_parser_new(const struct imap_parser_limits *limits,
                    struct imap_parser **parser_r)
{
	struct imap_parser *p;

	*parser_r = NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	if (limits != NULL)
		p->lim = *limits;
	else
		imap_parser_limits_default(&p->lim);
	if (p->lim.max_line == 0 || p->lim.max_mem == 0 ||
	    p->lim.max_depth > IMAP_PARSER_DEPTH_CAP) {
		free(p);
		return -EINVAL;
	}
	p->stack = calloc(p->lim.max_depth + 1, sizeof(*p->stack));
	if (p->stack == NULL) {
		free(p);
		return -ENOMEM;
	}
	p->state = S_START;
	*parser_r = p;
	return 0;
}

static void reset_response(struct imap_parser *p)
{
	imap_response_free(&p->resp);
	free(p->lit_buf);
	p->lit_buf = NULL;
	p->state = S_START;
	p->off = 0;
	p->line = 0;
	p->mem = 0;
	p->depth = 0;
	p->code_ctx = false;
	tok_reset(p);
}

void imap_parser_free(struct imap_parser **parser)
{
	struct imap_parser *p;

	if (parser == NULL || *parser == NULL)
		return;
	p = *parser;
	sink_abort(p);
	reset_response(p);
	free(p->tok);
	free(p->stack);
	free(p);
	*parser = NULL;
}

void imap_parser_set_sink(struct imap_parser *parser,
                          const struct imap_literal_sink *sink, void *ctx)
{
	/* A literal already being streamed keeps its sink: end/abort go to
	 * whoever got begin. */
	if (parser->lit_begun)
		return;
	parser->sink = sink;
	parser->sink_ctx = ctx;
}

static int new_response(struct imap_parser *p)
{
	int rc;

	rc = charge(p, sizeof(*p->resp));
	if (rc < 0)
		return rc;
	p->resp = calloc(1, sizeof(*p->resp));
	if (p->resp == NULL)
		return fail_nomem(p);
	p->resp->code_args.type = IMAP_VALUE_LIST;
	p->resp->args.type = IMAP_VALUE_LIST;
	p->stack[0] = &p->resp->args;
	return 0;
}

int imap_parser_feed(struct imap_parser *p, const void *buf, size_t len,
                     size_t *consumed_r, struct imap_response **resp_r)
{
	const unsigned char *in = buf;
	size_t i = 0;
	int rc = 0;

	*consumed_r = 0;
	*resp_r = NULL;
	if (p->dead)
		return IMAP_PARSE_ERROR;

	while (i < len) {
		if (p->state == S_LIT_DATA) {
			size_t n = len - i;

			if (n > p->lit_left)
				n = (size_t)p->lit_left;
			p->off += n;
			i += n;
			rc = literal_data(p, in + i - n, n);
			if (rc < 0)
				goto error;
			continue;
		}
		if (p->resp == NULL) {
			rc = new_response(p);
			if (rc < 0)
				goto error;
		}
		p->off++;
		i++;
		if (++p->line > p->lim.max_line) {
			rc = fail(
			        p, -EMSGSIZE,
			        "response longer than %zu bytes (literals not counted)",
			        p->lim.max_line);
			goto error;
		}
		do {
			rc = step(p, in[i - 1]);
		} while (rc == STEP_AGAIN);
		if (rc < 0)
			goto error;
		if (rc == STEP_DONE) {
			*resp_r = p->resp;
			p->resp = NULL;
			reset_response(p);
			*consumed_r = i;
			return IMAP_PARSE_DONE;
		}
	}
	*consumed_r = len;
	return IMAP_PARSE_MORE;

error:
	assert(p->dead);
	sink_abort(p);
	reset_response(p);
	*consumed_r = i;
	return IMAP_PARSE_ERROR;
}

const char *imap_parser_error(const struct imap_parser *parser)
{
	return parser->err != 0 ? parser->errmsg : "";
}

int imap_parser_errno(const struct imap_parser *parser)
{
	return parser->err;
}

void imap_response_free(struct imap_response **resp)
{
	struct imap_response *r;

	if (resp == NULL || *resp == NULL)
		return;
	r = *resp;
	free(r->tag);
	free(r->code);
	free(r->text);
	free(r->keyword);
	value_clear(&r->code_args);
	value_clear(&r->args);
	free(r);
	*resp = NULL;
}

static bool str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

bool imap_value_equal(const struct imap_value *a, const struct imap_value *b)
{
	if (a->type != b->type || a->literal8 != b->literal8 ||
	    a->len != b->len || a->size != b->size || a->count != b->count)
		return false;
	if ((a->str == NULL) != (b->str == NULL))
		return false;
	if (a->str != NULL && memcmp(a->str, b->str, a->len) != 0)
		return false;
	for (size_t i = 0; i < a->count; i++)
		if (!imap_value_equal(&a->list[i], &b->list[i]))
			return false;
	return true;
}

bool imap_response_equal(const struct imap_response *a,
                         const struct imap_response *b)
{
	if (a->kind != b->kind || a->status != b->status ||
	    a->has_number != b->has_number || a->number != b->number ||
	    a->text_len != b->text_len)
		return false;
	if (!str_equal(a->tag, b->tag) || !str_equal(a->code, b->code) ||
	    !str_equal(a->text, b->text) || !str_equal(a->keyword, b->keyword))
		return false;
	return imap_value_equal(&a->code_args, &b->code_args) &&
	       imap_value_equal(&a->args, &b->args);
}

bool imap_response_is(const struct imap_response *resp, const char *keyword)
{
	return resp != NULL && resp->kind == IMAP_RESP_DATA &&
	       resp->keyword != NULL && strcasecmp(resp->keyword, keyword) == 0;
}

bool imap_atom_eq(const struct imap_value *v, const char *s)
{
	if (v == NULL ||
	    (v->type != IMAP_VALUE_ATOM && v->type != IMAP_VALUE_NUMBER))
		return false;
	return strlen(s) == v->len && strcasecmp(v->str, s) == 0;
}

const struct imap_value *imap_list_get(const struct imap_value *v, size_t i)
{
	if (v == NULL || v->type != IMAP_VALUE_LIST || i >= v->count)
		return NULL;
	return &v->list[i];
}

const struct imap_value *imap_fetch_item(const struct imap_value *list,
                                         const char *name)
{
	if (list == NULL || list->type != IMAP_VALUE_LIST)
		return NULL;
	for (size_t i = 0; i + 1 < list->count; i += 2)
		if (imap_atom_eq(&list->list[i], name))
			return &list->list[i + 1];
	return NULL;
}

int imap_value_u64(const struct imap_value *v, uint64_t *n_r)
{
	uint64_t n = 0;

	if (v == NULL || v->type != IMAP_VALUE_NUMBER || v->len == 0)
		return -EINVAL;
	for (size_t i = 0; i < v->len; i++) {
		unsigned d = (unsigned char)v->str[i] - '0';

		if (d > 9)
			return -EINVAL;
		if (n > (UINT64_MAX - d) / 10)
			return -ERANGE;
		n = n * 10 + d;
	}
	*n_r = n;
	return 0;
}

int imap_value_u32(const struct imap_value *v, uint32_t *n_r)
{
	uint64_t n;
	int rc;

	rc = imap_value_u64(v, &n);
	if (rc < 0)
		return rc;
	if (n > UINT32_MAX)
		return -ERANGE;
	*n_r = (uint32_t)n;
	return 0;
}

const char *imap_value_str(const struct imap_value *v, size_t *len_r)
{
	size_t dummy;

	if (len_r == NULL)
		len_r = &dummy;
	*len_r = 0;
	if (v == NULL)
		return NULL;
	switch (v->type) {
	case IMAP_VALUE_ATOM:
	case IMAP_VALUE_NUMBER:
	case IMAP_VALUE_QUOTED:
	case IMAP_VALUE_LITERAL: *len_r = v->len; return v->str;
	default: return NULL;
	}
}
