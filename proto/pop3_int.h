/* The insides of the POP3 client (proto/pop3.h), shared by its two
 * files and included by nothing else:
 *
 *   pop3.c        the session: reading status lines and multi-line
 *                 bodies, sending commands, pipelining, the commands of
 *                 the TRANSACTION state (STAT, UIDL, LIST, RETR, TOP,
 *                 DELE, RSET, NOOP), QUIT;
 *   pop3_login.c  pop3_connect(): greeting, TLS and STLS, CAPA, AUTH,
 *                 USER/PASS, APOP;
 *
 * built on the pure parsers of proto/pop3_parse.h.  Everything here runs
 * on the thread driving the client.  A connection that failed is dead
 * (c->fate): every call below then returns its error. */
#ifndef MAILFS_POP3_INT_H
#define MAILFS_POP3_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"
#include "proto/net.h"
#include "proto/pop3.h"
#include "proto/pop3_parse.h"

#define POP3_MAX_CAPS 64

/* One state per step of the session; pop3_conn_set_state() logs each
 * transition. */
enum pop3_state {
	POP3_ST_CONNECTING,
	POP3_ST_TLS_HANDSHAKE,
	POP3_ST_GREETING,
	POP3_ST_CAPA,
	POP3_ST_STLS,
	POP3_ST_AUTH,
	POP3_ST_USER,
	POP3_ST_PASS,
	POP3_ST_APOP,
	POP3_ST_TRANSACTION,
	POP3_ST_QUIT,
	POP3_ST_DEAD,
};

struct pop3_client {
	struct net_conn *net; /* owned */
	enum pop3_state state;
	char *host;  /* owned */
	char *label; /* owned: "user@host" for log lines */

	char *caps[POP3_MAX_CAPS]; /* owned: CAPA lines */
	size_t n_caps;
	bool capa_known;
	char *timestamp; /* owned: APOP timestamp of the greeting, or NULL */

	uint64_t max_message;
	size_t max_inflight;

	/* The latest status line, NUL-terminated (it may hold a NUL
	 * before line_len, which the parser rejects). */
	char line[POP3_MAX_LINE + 1];
	size_t line_len;

	struct proto_fate fate; /* alive, or dead and why */
};

/* Move the session to st, logged at debug level. */
void pop3_conn_set_state(struct pop3_client *c, enum pop3_state st);

/* A new client with no connection yet: max_message, host and label from
 * cfg.  Free it with pop3_free().  0, or -ENOMEM with *err set. */
int pop3_conn_new(struct pop3_client **c_r, const struct pop3_config *cfg,
                  struct proto_err *err);

/* Forget the CAPA lines (before asking again, or after STLS). */
void pop3_conn_caps_clear(struct pop3_client *c);

/* Read and parse a status line; one that is not kills the connection. */
int pop3_conn_read_status(struct pop3_client *c, struct pop3_status_line *st);

/* The server's text of the latest status line (response code included),
 * cleaned, for an error message. */
void pop3_conn_status_text(struct pop3_client *c, char *dst, size_t size);

/* Read a multi-line body to its terminator, a line at a time to line()
 * (without its line end, NUL-terminated); the first error line()
 * returned is returned once the body is read. */
int pop3_conn_read_lines(struct pop3_client *c,
                         int (*line)(void *ctx, char *line, size_t len),
                         void *ctx);

/* Send one command line (CRLF added) and log it. */
int pop3_conn_send_cmd(struct pop3_client *c, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* Send prefix, secret and CRLF in one write; log prefix and "<hidden>". */
int pop3_conn_send_secret(struct pop3_client *c, const char *prefix,
                          const char *secret);

/* Send a command and read its status line (a continuation there kills
 * the connection).  0 (st filled in) or the connection's error. */
int pop3_conn_command(struct pop3_client *c, struct pop3_status_line *st,
                      const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#endif
