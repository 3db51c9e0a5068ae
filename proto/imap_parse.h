/* IMAP4rev1/IMAP4rev2 response parser (RFC 3501, RFC 9051).
 *
 * The parser is pure: it is fed bytes and never reads a socket.  Each call
 * to imap_parser_feed() answers "done" (one complete response), "need more"
 * or "error".  The result is the same however the input is split: feeding a
 * response whole or one byte at a time builds the same tree, reports the
 * same error at the same byte, and delivers the same streamed bytes.
 *
 * Grammar accepted (a superset of what servers send, strict where a
 * mistake would desynchronise the stream):
 *
 *   response    = continue / tagged / untagged
 *   continue    = "+" [SP text] EOL           text kept verbatim (SASL base64)
 *   tagged      = tag SP ("OK" / "NO" / "BAD") [SP resp-text] EOL
 *   untagged    = "*" SP (status / data)
 *   status      = ("OK"/"NO"/"BAD"/"BYE"/"PREAUTH") [SP resp-text] EOL
 *   resp-text   = ["[" code-atom [SP values] "]" [SP]] text
 *   data        = [number SP] keyword [SP values] EOL
 *   values      = value *(SP value)
 *   value       = atom / number / NIL / quoted / literal / "(" [values] ")"
 *   literal     = ["~"] "{" digits ["+"] "}" EOL <n raw bytes>
 *   EOL         = CRLF / LF
 *
 * Tolerance choices:
 * - A bare LF ends a line like CRLF does (as Dovecot does).  A CR that is
 *   not followed by LF is an error.  Literal bytes are raw: CR, LF and NUL
 *   inside a literal are data, never line ends.
 * - Several spaces between values, and no space between ")" / a quoted
 *   string and the next value ("(a)(b)"), are accepted.
 * - Atoms in values are lenient: any byte above 0x20 except DEL and
 *   ( ) { " is an atom byte, so flags ("\Seen", "\*"), list wildcards,
 *   sequence sets ("1:*,5") and UTF-8 are atoms.  Inside a response code
 *   "]" also ends an atom.  In values (not in response codes) an atom may
 *   carry bracketed sections that may contain spaces, parentheses and
 *   quoted strings, followed by more atom bytes: "BODY[HEADER.FIELDS (FROM
 *   TO)]<0>" is one atom.
 * - "~{n}" is a literal8 only when "~" stands alone before "{"; "{" inside
 *   any other atom is an error.
 * - Quoted strings: "\x" stands for x for any x (as Dovecot); 8-bit bytes
 *   (UTF-8) are accepted; NUL, CR and LF are errors.
 * - The tag, status word, untagged keyword and response-code atom must be
 *   RFC 3501 atoms (tag: any ASTRING-CHAR but "+").  An empty line is an
 *   error.  The text after the status (or after "]") is free text: any
 *   bytes but NUL, CR and LF, quotes and brackets need not balance.
 * - NUL outside a literal is an error everywhere.
 *
 * Limits (struct imap_parser_limits) bound everything a server controls:
 * non-literal bytes of one response, list nesting, literal size (checked
 * digit by digit, before any allocation) and the memory one response tree
 * may take.  A limit hit is an error; the parser never aborts on input or
 * on out-of-memory.
 *
 * Errors: after IMAP_PARSE_ERROR the parser is dead (every later call
 * returns IMAP_PARSE_ERROR again); the connection cannot be resynchronised
 * and must be dropped.  imap_parser_error() gives a one-line message safe
 * to log (it quotes no server bytes), imap_parser_errno() the negative
 * errno: -EPROTO syntax, -EMSGSIZE a limit, -ENOMEM out of memory, or the
 * code a literal sink returned.
 */
#ifndef MAILFS_IMAP_PARSE_H
#define MAILFS_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults used by imap_parser_limits_default(). */
#define IMAP_PARSER_DEFAULT_MAX_LINE         (64 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_DEPTH        32
#define IMAP_PARSER_DEFAULT_MAX_LITERAL      (1024ULL * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_MAX_MEM          (64 * 1024 * 1024)
#define IMAP_PARSER_DEFAULT_STREAM_THRESHOLD (1024 * 1024)
/* max_depth may not exceed this (tree walks recurse once per level). */
#define IMAP_PARSER_DEPTH_CAP                1024

/* Return values of imap_parser_feed(). */
#define IMAP_PARSE_ERROR (-1)
#define IMAP_PARSE_MORE  0
#define IMAP_PARSE_DONE  1

enum imap_value_type {
	IMAP_VALUE_NIL = 0,  /* NIL (any case); str NULL */
	IMAP_VALUE_ATOM,     /* atom, incl. FETCH item names like BODY[]<0> */
	IMAP_VALUE_NUMBER,   /* atom made of digits only; str keeps them */
	IMAP_VALUE_QUOTED,   /* quoted string, escapes removed */
	IMAP_VALUE_LITERAL,  /* literal kept in memory */
	IMAP_VALUE_STREAMED, /* literal delivered to the sink; size only */
	IMAP_VALUE_LIST,     /* parenthesised list */
};

struct imap_value {
	enum imap_value_type type;
	/* LITERAL, STREAMED: it was sent as a literal8, "~{n}". */
	bool literal8;
	/* ATOM, NUMBER, QUOTED, LITERAL: owned, len bytes plus a NUL
	 * terminator.  Only a LITERAL may contain NUL bytes itself.  A
	 * consumer may take a LITERAL's buffer by setting str to NULL. */
	char *str;
	size_t len;
	/* LITERAL, STREAMED: the size announced in "{n}". */
	uint64_t size;
	/* LIST: owned array of count elements. */
	struct imap_value *list;
	size_t count;
	size_t list_cap; /* parser-internal: allocated elements */
};

enum imap_response_kind {
	IMAP_RESP_CONTINUATION = 1, /* "+ text" */
	IMAP_RESP_TAGGED,           /* "TAG OK|NO|BAD ..." */
	IMAP_RESP_STATUS,           /* "* OK|NO|BAD|BYE|PREAUTH ..." */
	IMAP_RESP_DATA,             /* "* [N] KEYWORD values" */
};

enum imap_status {
	IMAP_STATUS_NONE = 0,
	IMAP_STATUS_OK,
	IMAP_STATUS_NO,
	IMAP_STATUS_BAD,
	IMAP_STATUS_BYE,
	IMAP_STATUS_PREAUTH,
};

/* One response.  All pointers are owned by the response. */
struct imap_response {
	enum imap_response_kind kind;
	/* TAGGED, STATUS; IMAP_STATUS_NONE otherwise. */
	enum imap_status status;
	/* TAGGED: the tag as received (compare case-insensitively). */
	char *tag;
	/* TAGGED, STATUS: the response code atom as received, NULL if the
	 * response has none; code_args is an IMAP_VALUE_LIST of its
	 * arguments ("[COPYUID 38505 304,319:320 3956:3958]" gives code
	 * "COPYUID" and three values), count 0 when there are none. */
	char *code;
	struct imap_value code_args;
	/* CONTINUATION, TAGGED, STATUS: the free text up to the end of the
	 * line, "" when there is none; NULL for DATA.  No NUL inside. */
	char *text;
	size_t text_len;
	/* DATA: "* 12 FETCH ..." gives has_number, number 12. */
	bool has_number;
	uint32_t number;
	/* DATA: keyword as received ("FETCH", "CAPABILITY", "x-foo"). */
	char *keyword;
	/* DATA: IMAP_VALUE_LIST of the values after the keyword. */
	struct imap_value args;
};

struct imap_parser_limits {
	/* Non-literal bytes of one response, CRLFs and "{n}" included. */
	size_t max_line;
	/* Deepest nesting of parenthesised lists (<= IMAP_PARSER_DEPTH_CAP). */
	unsigned max_depth;
	/* Largest literal accepted, streamed or not. */
	uint64_t max_literal;
	/* Memory one response tree may take (values, strings, in-memory
	 * literals); streamed literals do not count. */
	size_t max_mem;
	/* Literals of at least this size go to the sink, if one is set. */
	uint64_t stream_threshold;
};

/* Receives big literals instead of memory.  begin, data and end are
 * required, abort is optional.  For a literal whose size is at least
 * stream_threshold:
 *
 *   begin(ctx, partial, item, size) when "{size}CRLF" has been read.
 *     partial is the response parsed so far (borrowed, valid during the
 *     call only; the literal itself is not in it yet; open lists hold the
 *     elements before the literal).  item is the atom just before the
 *     literal in its list (e.g. "BODY[]", "BINARY[1]"), NULL if the
 *     literal does not follow an atom.
 *   data(ctx, buf, len) for each run of literal bytes, in order, as they
 *     are fed (never with len 0).  The bytes are not kept.
 *   end(ctx) after the last byte.  The literal then appears in the tree
 *     as IMAP_VALUE_STREAMED with its size.  A literal of size 0 gets begin
 *     and end only.
 *
 * Each returns 0 or a negative errno; an error makes feed return
 * IMAP_PARSE_ERROR with that errno.  After a successful begin exactly one
 * of end() or abort() is called: abort (optional, may be NULL) when the
 * literal will not complete because data() failed or the parser was freed
 * mid-literal.  end() says the bytes are complete, not that the response
 * is valid: a later syntax error can still fail the response. */
struct imap_literal_sink {
	int (*begin)(void *ctx, const struct imap_response *partial,
	             const char *item, uint64_t size);
	int (*data)(void *ctx, const void *buf, size_t len);
	int (*end)(void *ctx);
	void (*abort)(void *ctx);
};

struct imap_parser;

/* Fill *limits with the IMAP_PARSER_DEFAULT_* values. */
void imap_parser_limits_default(struct imap_parser_limits *limits);

/* Create a parser.  limits NULL means the defaults; the struct is copied.
 * Returns 0, -EINVAL (max_line or max_mem 0, max_depth over the cap) or
 * -ENOMEM. */
int imap_parser_new(const struct imap_parser_limits *limits,
                    struct imap_parser **parser_r);

/* Free the parser and any half-parsed response; calls the sink's abort()
 * if a streamed literal is in progress.  Sets *parser to NULL; NULL and
 * *parser == NULL are fine. */
void imap_parser_free(struct imap_parser **parser);

/* Register (or with sink NULL remove) the literal sink.  The sink struct
 * and ctx are borrowed and must outlive their use.  Takes effect for
 * literals whose "{n}" line ends after the call; may be changed between
 * feeds, but is ignored while a streamed literal is in progress (its end
 * or abort goes to the sink that got begin). */
void imap_parser_set_sink(struct imap_parser *parser,
                          const struct imap_literal_sink *sink, void *ctx);

/* Feed len bytes.  Returns:
 *   IMAP_PARSE_DONE   one response is complete: *resp_r (owned by the
 *                     caller) is set, *consumed_r bytes of buf were used;
 *                     the rest belongs to the next response and must be
 *                     fed again.
 *   IMAP_PARSE_MORE   all len bytes were used (*consumed_r == len), the
 *                     response is not complete yet.
 *   IMAP_PARSE_ERROR  see imap_parser_error(); the parser is dead.
 *                     *consumed_r says how far it got.
 * *resp_r is NULL unless DONE. */
int imap_parser_feed(struct imap_parser *parser, const void *buf, size_t len,
                     size_t *consumed_r, struct imap_response **resp_r);

/* After IMAP_PARSE_ERROR: a one-line message ("" when no error), and the
 * negative errno (0 when no error). */
const char *imap_parser_error(const struct imap_parser *parser);
int imap_parser_errno(const struct imap_parser *parser);

/* Free a response and set *resp to NULL; NULL and *resp NULL are fine. */
void imap_response_free(struct imap_response **resp);

/* Deep equality of two responses / values produced by the parser (types,
 * strings byte for byte, numbers, literal8 marks, sizes, lists). */
bool imap_response_equal(const struct imap_response *a,
                         const struct imap_response *b);
bool imap_value_equal(const struct imap_value *a, const struct imap_value *b);

/* True when resp is DATA and its keyword equals keyword, ignoring ASCII
 * case. */
bool imap_response_is(const struct imap_response *resp, const char *keyword);

/* True when v is an ATOM or NUMBER equal to s, ignoring ASCII case. */
bool imap_atom_eq(const struct imap_value *v, const char *s);

/* Element i of a LIST; NULL when v is NULL, not a list, or too short. */
const struct imap_value *imap_list_get(const struct imap_value *v, size_t i);

/* In a list of name/value pairs (the list of "* N FETCH (...)", of
 * "* STATUS name (...)"), the value after the first name equal to name,
 * ignoring case ("UID", "BODY[]", "BODY[HEADER.FIELDS (SUBJECT)]").  NULL
 * when absent or list is not a list. */
const struct imap_value *imap_fetch_item(const struct imap_value *list,
                                         const char *name);

/* A NUMBER as an integer.  Returns 0, -EINVAL when v is not a NUMBER made
 * of digits, -ERANGE when it does not fit. */
int imap_value_u32(const struct imap_value *v, uint32_t *n_r);
int imap_value_u64(const struct imap_value *v, uint64_t *n_r);

/* The bytes of an ATOM, NUMBER, QUOTED or LITERAL (NUL-terminated; *len_r
 * counts a literal's inner NULs).  NULL with *len_r 0 for NIL, for a list,
 * a streamed literal or v NULL.  len_r may be NULL. */
const char *imap_value_str(const struct imap_value *v, size_t *len_r);

#endif
