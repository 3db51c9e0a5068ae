/* POP3 client: one connection to one maildrop (RFC 1939, RFC 2449 CAPA,
 * RFC 2595 STLS, RFC 5034 AUTH, RFC 3206 response codes).
 *
 * A struct pop3_client is driven by one thread at a time; pop3_shutdown()
 * may be called from another thread to wake it.  Every network wait is
 * bounded by the timeout given at connect time.
 *
 * When the connection fails (timeout, EOF, a malformed or over-long
 * status line, a message over the size limit) the client is dead: every
 * later call fails at once with the same error (pop3_error()), and the
 * caller frees it and connects again.  A -ERR answer to a command is not
 * fatal: that command fails (class PERR_NO, the server's text kept) and
 * the session goes on.
 *
 * POP3 deletes nothing until QUIT: DELE only marks a message, and the
 * marks are committed when pop3_quit() receives the server's +OK.
 * pop3_free() drops the connection without QUIT, so the server forgets
 * the marks (RFC 1939: no UPDATE state without QUIT).
 *
 * Below the client are the pure parts it is built on, which the tests and
 * the fuzzer drive directly: the dot-unstuffing machine for multi-line
 * responses, the line finder and the status-line parser (no I/O, no
 * allocation), and APOP's timestamp finder and digest. */
#ifndef MAILFS_POP3_H
#define MAILFS_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"

/* Longest status line or line of a CAPA/UIDL/LIST listing, without its
 * CRLF.  RFC 2449 allows 512 octets; servers exceed that in error texts,
 * so the limit is generous but bounded. */
#define POP3_MAX_LINE 8192

/* Longest unique-id accepted from UIDL.  RFC 1939 says 1 to 70
 * characters in 0x21..0x7E; some servers go longer. */
#define POP3_MAX_UID 512

/* Default for pop3_config.max_message: larger than any mail system
 * delivers, small enough to bound what a hostile server can send. */
#define POP3_DEFAULT_MAX_MESSAGE (1024ULL * 1024 * 1024)

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

/* --- the client -------------------------------------------------------- */

struct pop3_client;

enum pop3_tls_mode {
	POP3_TLS_IMPLICIT, /* pop3s://: TLS from the first byte */
	POP3_TLS_STLS,     /* pop3://: STLS, mandatory */
	POP3_TLS_NONE,     /* -o notls: plaintext, testing only */
};

struct pop3_config {
	const char *host; /* borrowed */
	const char *port; /* borrowed */
	enum pop3_tls_mode tls;
	const char *cafile; /* borrowed; extra CAs or NULL */
	const char *user;   /* borrowed */
	/* Exactly one of these two: a password (AUTH PLAIN, USER/PASS or
	 * APOP), or an OAuth2 access token (AUTH XOAUTH2 or OAUTHBEARER).
	 * Borrowed. */
	const char *password;
	const char *oauth2_token;
	int timeout_ms;       /* every network wait; 0 means 30 s */
	uint64_t max_message; /* largest RETR/TOP answer; 0: the default */
};

/* Connect, run TLS, read the greeting, ask CAPA and log in.
 *
 * TLS: implicit from the first byte, or with STLS: greeting, CAPA, STLS
 * (refused with PERR_NOTLS, before any credential is sent, when CAPA does
 * not offer it or the server refuses it), the handshake (refused with
 * PERR_PROTOCOL when the server sent bytes after its +OK: they came in
 * plaintext and could be an injection), then CAPA again, since the list
 * from before TLS could be forged.
 *
 * Login, in order of preference: with an OAuth2 token, AUTH OAUTHBEARER
 * or XOAUTH2; with a password, AUTH PLAIN when CAPA lists SASL PLAIN
 * (the initial response on the AUTH line when the line fits in 255
 * octets, RFC 5034), else USER/PASS, and APOP only when neither is
 * possible (CAPA lists neither, or the server has no CAPA and refuses
 * USER) and the greeting has a timestamp.
 *
 * Errors (class in *err): PERR_AUTH (-EACCES) with the server's text,
 * response code included, when the login is refused; PERR_NO with -EBUSY
 * when the server answers [IN-USE] (another client holds the maildrop
 * lock: try again later), with -EAGAIN for [SYS/TEMP] or [LOGIN-DELAY];
 * PERR_BYE when the greeting is -ERR; PERR_NOTLS, PERR_TLS_VERIFY,
 * PERR_CONNECT, PERR_TIMEOUT, PERR_PROTOCOL as their names say.  The
 * password, the token and the AUTH and PASS lines are never logged. */
int pop3_connect(struct pop3_client **client_r, const struct pop3_config *cfg,
                 struct proto_err *err);

/* Send QUIT, which commits the DELE marks (the UPDATE state), wait for
 * the answer and free the client.  Returns 0 when the server said +OK;
 * -EIO (class PERR_NO, its text kept) when it answered -ERR (RFC 1939:
 * some marked messages were not removed); the connection's error when it
 * was dead or died: then nothing was committed, or it is unknown whether
 * it was.  *cp is NULL afterwards in every case. */
int pop3_quit(struct pop3_client **cp, struct proto_err *err);

/* Free without QUIT: the server commits no deletion. */
void pop3_free(struct pop3_client **cp);

/* Wake a thread blocked on this client; safe from another thread. */
void pop3_shutdown(struct pop3_client *c);

/* The error that killed the connection, or NULL if it is alive. */
const struct proto_err *pop3_error(const struct pop3_client *c);

/* Is the capability (the first word of a CAPA line, e.g. "PIPELINING",
 * "UIDL", "TOP") advertised in the latest CAPA answer? */
bool pop3_has_cap(const struct pop3_client *c, const char *name);

/* Does the SASL capability line list the mechanism? */
bool pop3_has_sasl(const struct pop3_client *c, const char *mech);

/* Did the server answer CAPA at all (RFC 1939-only servers do not)? */
bool pop3_capa_known(const struct pop3_client *c);

/* Maximum number of commands in flight at any time since connecting (1
 * without PIPELINING), for tests and statistics. */
size_t pop3_max_inflight(const struct pop3_client *c);

/* --- commands (TRANSACTION state) --------------------------------------
 *
 * Every command returns 0 or a negative errno and sets *err.  A -ERR
 * answer gives class PERR_NO with the server's text: -ENOENT for a
 * message command (no such message, or deleted), -EPERM for others,
 * -EBUSY for [IN-USE], -EAGAIN for [SYS/TEMP]; the session goes on. */

/* STAT: number of messages and their total size in octets. */
int pop3_stat(struct pop3_client *c, unsigned *count_r, uint64_t *size_r,
              struct proto_err *err);

/* UIDL: cb once per message, in the server's order, with its number and
 * unique-id (borrowed, NUL-terminated).  A server without UIDL (-ERR):
 * -ENOTSUP, class PERR_NO, so that the caller can fall back to TOP.  A
 * malformed line fails the command with -EPROTO, class PERR_PROTOCOL
 * (the listing is read to its end, the session goes on); cb has then
 * been called for the lines before it, and not after it.  The same goes
 * for pop3_list_all(). */
int pop3_uidl_all(struct pop3_client *c,
                  void (*cb)(void *ctx, unsigned msgnum, const char *uid),
                  void *ctx, struct proto_err *err);

/* LIST: cb once per message with its number and size in octets (the
 * size the server states, which counts CRLF line ends; the bytes RETR
 * delivers may differ). */
int pop3_list_all(struct pop3_client *c,
                  void (*cb)(void *ctx, unsigned msgnum, uint64_t size),
                  void *ctx, struct proto_err *err);

/* Where a retrieved message goes.  Every callback may be NULL. */
struct pop3_sink {
	/* The server said +OK; the message's bytes follow. */
	int (*begin)(void *ctx, unsigned msgnum);
	/* The next bytes of the message, un-dot-stuffed (borrowed, valid
	 * during the call): concatenated they are the message exactly, as
	 * the server stores it (line ends untouched, the terminator
	 * removed).  A negative errno from begin or data abandons the
	 * message: the rest of it is read and discarded, and end is called
	 * with that error. */
	int (*data)(void *ctx, unsigned msgnum, const char *buf, size_t len);
	/* The message is complete (rc 0) or failed: rc is the sink's own
	 * error, or a -ERR answer (class PERR_NO in *e, the server's text)
	 * for this message.  When the connection dies, end is called with
	 * its error for the message being read, and not for those whose
	 * answer never came. */
	void (*end)(void *ctx, unsigned msgnum, int rc,
	            const struct proto_err *e);
	void *ctx;
};

/* RETR one message into sink.  Returns the message's result (as given to
 * sink->end), or the connection's error. */
int pop3_retr(struct pop3_client *c, unsigned msgnum,
              const struct pop3_sink *sink, struct proto_err *err);

/* RETR n messages, pipelined when the server offers PIPELINING (several
 * RETR sent before the first answer is read), else one at a time; sink
 * sees the messages in the order given.  Returns 0 when the connection
 * survived (per-message results go to sink->end), else its error. */
int pop3_retr_many(struct pop3_client *c, const unsigned *msgnums, size_t n,
                   const struct pop3_sink *sink, struct proto_err *err);

/* RETR into a new buffer: *data_r (malloc'd, NUL-terminated after
 * *len_r bytes; free() it), or an error with *data_r NULL. */
int pop3_retr_buf(struct pop3_client *c, unsigned msgnum, char **data_r,
                  size_t *len_r, struct proto_err *err);

/* TOP msgnum lines: the header and the first `lines` lines of the body
 * (0: the header and the blank line after it), for identifying messages
 * on a server without UIDL.  Like pop3_retr(); -ENOTSUP when the server
 * refuses TOP and CAPA does not list it. */
int pop3_top(struct pop3_client *c, unsigned msgnum, unsigned lines,
             const struct pop3_sink *sink, struct proto_err *err);

int pop3_top_buf(struct pop3_client *c, unsigned msgnum, unsigned lines,
                 char **data_r, size_t *len_r, struct proto_err *err);

/* DELE: mark a message for deletion at QUIT. */
int pop3_dele(struct pop3_client *c, unsigned msgnum, struct proto_err *err);

/* DELE n messages, pipelined when possible.  Every message is tried;
 * returns the first error. */
int pop3_dele_many(struct pop3_client *c, const unsigned *msgnums, size_t n,
                   struct proto_err *err);

/* RSET: unmark every message marked by DELE in this session. */
int pop3_rset(struct pop3_client *c, struct proto_err *err);

int pop3_noop(struct pop3_client *c, struct proto_err *err);

#endif
