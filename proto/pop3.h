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
 * The code is in proto/pop3.c (the session and its commands) and
 * proto/pop3_login.c (pop3_connect()), with proto/pop3_int.h, their
 * shared insides.  The pure parts they are built on (the dot-unstuffing
 * machine, the line finder, the status-line and listing parsers, APOP)
 * are in proto/pop3_parse.h, which this header includes. */
#ifndef MAILFS_POP3_H
#define MAILFS_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"
#include "proto/pop3_parse.h"

/* Default for pop3_config.max_message: larger than any mail system
 * delivers, small enough to bound what a hostile server can send. */
#define POP3_DEFAULT_MAX_MESSAGE (1024ULL * 1024 * 1024)

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
