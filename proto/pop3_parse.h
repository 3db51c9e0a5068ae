/* The pure parts of the POP3 client (RFC 1939, RFC 2449): what takes the
 * bytes a server sent and never touches a socket.  proto/pop3.c is built
 * on them; the tests and the fuzzer drive them directly.
 *
 * The dot-unstuffing machine for multi-line responses, the line finder,
 * the status-line parser, the parsers of a STAT answer, of the lines of
 * a UIDL or LIST listing and of CAPA lines (no I/O, no allocation), and
 * APOP's timestamp finder and digest.  Every function is safe from any
 * thread on its own arguments. */
#ifndef MAILFS_POP3_PARSE_H
#define MAILFS_POP3_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest status line or line of a CAPA/UIDL/LIST listing, without its
 * CRLF.  RFC 2449 allows 512 octets; servers exceed that in error texts,
 * so the limit is generous but bounded. */
#define POP3_MAX_LINE 8192

/* Longest unique-id accepted from UIDL.  RFC 1939 says 1 to 70
 * characters in 0x21..0x7E; some servers go longer. */
#define POP3_MAX_UID 512

/* --- dot-unstuffing (RFC 1939 section 3) ------------------------------- */

/* State of one multi-line response body.  Zero it (or pop3_dot_init())
 * before the first byte after the status line's CRLF. */
struct pop3_dotstate {
	unsigned char st;
};

/* Receives the un-stuffed bytes; returns 0 or a negative errno. */
typedef int (*pop3_out_fn)(void *ctx, const char *buf, size_t len);

void pop3_dot_init(struct pop3_dotstate *s);

/* Feed the next len bytes of a multi-line response.  The message bytes
 * are passed to out (which may be NULL to discard them), in order, as
 * runs of at most len bytes:
 *
 *  - a "." at the start of a line (after CRLF, or as the first byte) is
 *    held; ".." gives ".", "." CRLF is the terminator, and "." followed by
 *    anything else is passed on unchanged (RFC 1939 strips it, but a
 *    server that stuffs never sends it: only one that does not stuff, and
 *    then the dot is content);
 *  - the CRLF before the terminating "." belongs to the message: an empty
 *    message is "." CRLF right after the status line, a one-line message
 *    "x" CRLF "." CRLF gives "x" CRLF;
 *  - every other byte is passed on unchanged: bare CR, bare LF (which do
 *    not start a line), NUL, 8-bit bytes;
 *  - the terminator never reaches out.
 *
 * Any split of the input gives the same output bytes.  *used_r receives
 * the number of bytes consumed: len, or fewer when the terminator ended
 * inside the input (what follows belongs to the next response).
 * Returns 1 when the terminator has been consumed, 0 when more input is
 * needed, or the negative errno that out returned (*used_r then says how
 * far the input was consumed; the state is that of the failed run and
 * the response should be abandoned).  After 1, further calls consume
 * nothing and return 1. */
int pop3_unstuff(struct pop3_dotstate *s, const char *in, size_t len,
                 size_t *used_r, pop3_out_fn out, void *ctx);

bool pop3_dot_done(const struct pop3_dotstate *s);

/* --- status lines ----------------------------------------------------- */

/* Find the end of the first line in buf.  A line ends with LF; a CR just
 * before it is part of the line end.  On 1, *line_len_r is the line's
 * length without its end and *used_r the length with it.  Returns 0 when
 * no line end is in buf yet and buf is not longer than max_line (more
 * input may complete it), or -EMSGSIZE when the line is longer than
 * max_line bytes (without its end). */
int pop3_line_find(const char *buf, size_t len, size_t max_line,
                   size_t *line_len_r, size_t *used_r);

enum pop3_status {
	POP3_OK,   /* "+OK" */
	POP3_ERR,  /* "-ERR" */
	POP3_CONT, /* "+" alone or "+ text": a SASL challenge (AUTH) */
};

/* A parsed status line.  The pointers are borrowed from the line given
 * to pop3_status_parse(). */
struct pop3_status_line {
	enum pop3_status status;
	/* RFC 2449 response code between "[" and "]" after the status,
	 * e.g. "IN-USE", "SYS/TEMP", "AUTH"; code_len 0 when there is none
	 * (or it is malformed: then it is left in the text). */
	const char *code;
	size_t code_len;
	/* The text after the status (and the code), with leading spaces
	 * dropped; for POP3_CONT the base64 challenge. */
	const char *text;
	size_t text_len;
};

/* Parse one status line (without its line end).  The status indicator
 * is matched case-insensitively and must be followed by a space or the
 * end of the line.  Returns 0, or -EPROTO for anything that is not a
 * status line, or a line with a NUL byte. */
int pop3_status_parse(const char *line, size_t len, struct pop3_status_line *r);

/* Does the status line carry response code `code` (case-insensitive)?
 * A code matches its own hierarchy: "SYS" matches "SYS/TEMP". */
bool pop3_status_has_code(const struct pop3_status_line *st, const char *code);

/* --- APOP (RFC 1939 section 7) ----------------------------------------- */

/* The APOP timestamp in a greeting text: from a "<" to the next ">",
 * containing an "@" and no spaces or control characters, at most 255
 * bytes.  Returns 0 with the borrowed span (brackets included) in
 * *ts_r and *ts_len_r, or -ENOENT. */
int pop3_apop_timestamp(const char *text, size_t len, const char **ts_r,
                        size_t *ts_len_r);

/* hex_r receives the lower-case hex MD5 of timestamp followed by secret,
 * NUL-terminated.  Returns 0, -ENOMEM, or -ENOTSUP when MD5 is not
 * available (a FIPS build of OpenSSL).  Intermediate copies of the
 * secret are wiped. */
int pop3_apop_digest(const char *timestamp, size_t ts_len, const char *secret,
                     char hex_r[33]);

/* --- answers and listings --------------------------------------------- */

/* The text of a STAT answer (the status line's text, a C string): the
 * number of messages (at most UINT32_MAX) and their total size, as
 * decimal numbers separated by spaces or tabs; more text after the size
 * (after a space or tab) is ignored.  Returns 0, or -EPROTO. */
int pop3_stat_parse(const char *text, unsigned *count_r, uint64_t *size_r);

/* One line of a UIDL listing, without its line end: "msgnum uid", the
 * message number in 1..UINT32_MAX, the unique-id 1 to POP3_MAX_UID bytes
 * in 0x21..0x7E, spaces or tabs between them and nothing but spaces and
 * tabs after.  line is a C string of len bytes (a NUL before line[len]
 * makes the line malformed).  Returns 0 with the unique-id's span
 * (borrowed from line) in *uid_r and *uid_len_r, or -EPROTO. */
int pop3_uidl_parse(const char *line, size_t len, unsigned *msgnum_r,
                    const char **uid_r, size_t *uid_len_r);

/* One line of a LIST listing: "msgnum size" (RFC 1939 allows more after
 * the size, after a space or tab: it is ignored).  line as for
 * pop3_uidl_parse().  Returns 0, or -EPROTO. */
int pop3_list_parse(const char *line, size_t len, unsigned *msgnum_r,
                    uint64_t *size_r);

/* Is the first word of a CAPA line (tabs already made spaces) name,
 * case-insensitively?  name may hold a space ("EXPIRE 0"): then the line
 * must start with those words. */
bool pop3_capa_is(const char *line, const char *name);

/* Is the CAPA line a "SASL" line that lists mechanism mech? */
bool pop3_capa_sasl(const char *line, const char *mech);

#endif
