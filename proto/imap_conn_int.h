/* The insides of the IMAP client (proto/imap_client.h), shared by the
 * files that make it up and included by nothing else:
 *
 *   imap_conn.c   the connection engine: the state machine, capabilities,
 *                 tagged commands and pipelining, reading and dispatching
 *                 responses through proto/imap_parse (literals streamed
 *                 into buffers or a body sink), continuations, the
 *                 timeouts, making and freeing a client;
 *   imap_pace.c   what the server says about load (struct imap_pace), and
 *                 the clock the waits are measured with;
 *   imap_login.c  the greeting, TLS and STARTTLS, AUTHENTICATE and LOGIN,
 *                 COMPRESS: imap_connect(); ENABLE, ID;
 *   imap_fetch.c  SELECT, EXAMINE and STATUS, FETCH of metadata and
 *                 bodies (the streaming body sink), resynchronisation;
 *   imap_cmd.c    LIST, NOOP, CREATE/DELETE/RENAME, STORE, EXPUNGE,
 *                 MOVE/COPY, APPEND, SEARCH, IDLE, and the UID-set and
 *                 date helpers.
 *
 * The calls named imap_conn_* are the engine's own (most defined in
 * imap_conn.c, the clock and the pacing ones in imap_pace.c, which calls
 * nothing of imap_conn.c: the files call each other in one direction).
 * Everything here runs on the thread driving the client, as
 * imap_client.h says; only imap_shutdown() comes from another thread (it
 * sets c->stopping and shuts the socket down), and c->pace may be shared
 * by the clients of one account, under its lock.  A connection that
 * failed is dead (c->fate): every call below then returns its error. */
#ifndef MAILFS_IMAP_CONN_INT_H
#define MAILFS_IMAP_CONN_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"
#include "proto/imap_client.h"
#include "proto/imap_parse.h"
#include "proto/net.h"

/* Largest message we accept from a server.  Bigger than any mail system
 * delivers; it bounds what a hostile server can make us allocate. */
#define IMAP_MAX_LITERAL      (1024ULL * 1024 * 1024)
/* Literals at least this big skip the parser's tree and are collected in
 * exactly-sized buffers (one copy of a big body, not two). */
#define IMAP_STREAM_THRESHOLD (256 * 1024)
#define IMAP_MAX_STREAMED     8 /* streamed literals in one response */

/* One state per step of the session; imap_conn_set_state() logs each
 * transition. */
enum imap_state {
	IMAP_ST_CONNECTING,
	IMAP_ST_GREETING,
	IMAP_ST_STARTTLS,
	IMAP_ST_NOT_AUTHENTICATED,
	IMAP_ST_AUTHENTICATING,
	IMAP_ST_AUTHENTICATED,
	IMAP_ST_SELECTED,
	IMAP_ST_LOGOUT,
	IMAP_ST_DEAD,
};

/* A command in flight. */
struct imap_pending {
	unsigned tag;
	bool done;
	int rc;
	struct imap_handler h;
	/* Internal: called for a continuation request ("+ ...") while this
	 * command waits for one (AUTHENTICATE).  Returns 0 or an error. */
	int (*cont)(struct imap_client *c, struct imap_pending *p,
	            const struct imap_response *resp);
	void *cont_ctx;
	bool wants_cont;
	/* The server's text of a NO or BAD, for the caller's error. */
	char text[400];
	/* The response code of the tagged answer and its arguments. */
	struct imap_code code;
};

struct imap_streamed {
	char *buf; /* owned; NULL when routed */
	size_t len, size;
	bool routed; /* the bytes went to the body sink (struct imap_route) */
};

/* While imap_fetch_bodies_stream() runs, the first streamed BODY[] literal
 * of each FETCH response goes to its sink as it arrives, not to memory. */
struct imap_route {
	const struct imap_body_sink *sink; /* borrowed; NULL: no fetch */
	void *ctx;                         /* borrowed */
	bool used;    /* a literal of the current response was routed */
	bool open;    /* begin called, done or abort not yet */
	bool failed;  /* begin or data failed: the rest is dropped */
	size_t index; /* its slot in streamed[] */
};

struct imap_client {
	struct net_conn *net;       /* owned */
	struct imap_parser *parser; /* owned */
	enum imap_state state;
	char *host;  /* owned */
	char *label; /* owned: "user@host" for log lines */
	unsigned next_tag;

	struct imap_pending *inflight; /* owned array, oldest first */
	size_t n_inflight, cap_inflight;

	char **caps; /* owned, upper-cased */
	size_t n_caps;
	unsigned caps_gen; /* bumped whenever the list is replaced */

	char *selected; /* owned, raw name, or NULL */
	bool selected_writable;
	bool qresync; /* ENABLE QRESYNC succeeded */

	void (*untagged_cb)(void *ctx, const struct imap_response *resp);
	void *untagged_ctx;
	void (*input_cb)(void *ctx);
	void *input_ctx;

	/* Streamed literals of the response being parsed, in order. */
	struct imap_streamed streamed[IMAP_MAX_STREAMED];
	size_t n_streamed;
	bool stream_active;
	struct imap_route route;

	int timeout_ms;
	struct imap_pace *pace;    /* borrowed, or &own_pace */
	struct imap_pace own_pace; /* when the config shares none */
	atomic_bool stopping;      /* imap_shutdown() was called */

	struct proto_fate fate; /* alive, or dead and why */
};

/* --- the engine (imap_conn.c) ------------------------------------------ */

/* Move the session to st, logged at debug level. */
void imap_conn_set_state(struct imap_client *c, enum imap_state st);

/* A new client with no connection yet (state CONNECTING is next): the
 * config's timeout (0: 30 s) and pace (NULL: its own), host and label
 * copied, a parser whose literals stream into c->streamed.  Free it with
 * imap_free().  0, or -ENOMEM with *err set. */
int imap_conn_new(struct imap_client **c_r, const struct imap_config *cfg,
                  struct proto_err *err);

/* Forget the capabilities (they could have been forged before TLS). */
void imap_conn_caps_clear(struct imap_client *c);

/* Read one complete response, fetching more input as needed, and
 * dispatch it (tagged answer, continuation, untagged to the handlers).
 * *resp_r, if not NULL, receives it (owned by the caller).  0, or the
 * error: a dead connection completes every command in flight with it. */
int imap_conn_read_one(struct imap_client *c, struct imap_response **resp_r);

/* Every command in flight completes with the connection's error. */
void imap_conn_fail_all(struct imap_client *c);

/* The command in flight with that tag, or NULL. */
struct imap_pending *imap_conn_find_pending(struct imap_client *c,
                                            unsigned tag);

/* imap_submitv() that also gives the command's slot (*p_r, valid until
 * the next submit or wait), for a caller that answers continuations
 * itself (AUTHENTICATE, IDLE). */
int imap_conn_submit(struct imap_client *c, const struct imap_handler *h,
                     const struct imap_arg *args, size_t nargs, unsigned *tag_r,
                     struct imap_pending **p_r);

/* Write bytes to the server; a failure kills the connection. */
int imap_conn_send(struct imap_client *c, const char *buf, size_t len);

/* Log a command line at debug level, hiding credentials. */
void imap_conn_log_command(struct imap_client *c, const char *line, size_t len);

/* Wait for the server's "+" for command p.  0 when it came, 1 when the
 * server answered the command instead, or the connection's error. */
int imap_conn_wait_continuation(struct imap_client *c, struct imap_pending *p);

/* The error (into *err) for a command that could not be sent (rc). */
int imap_conn_submit_err(struct imap_client *c, int rc, struct proto_err *err);

/* After rc from a command first sent at start (imap_conn_now_ms()): is it
 * a throttled answer that may be sent again within the timeout? */
bool imap_conn_may_retry(struct imap_client *c, int rc, int64_t start);

/* Send a command and wait for its answer (code_r may be NULL), sending
 * it again while it is throttled and imap_conn_may_retry() allows. */
int imap_conn_exec(struct imap_client *c, const struct imap_handler *h,
                   const struct imap_arg *args, size_t nargs,
                   struct imap_code *code_r, struct proto_err *err);

/* imap_conn_exec() of a printf-formatted command line (atoms and numbers
 * only); untagged responses on the way go to untagged(ctx, resp) if
 * given. */
int imap_conn_run(struct imap_client *c,
                  void (*untagged)(void *ctx, const struct imap_response *),
                  void *ctx, struct proto_err *err, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

/* name as a quoted string (malloc'd into *out_r), or -EINVAL when it
 * cannot be one (CR, LF, 8-bit) or on OOM. */
int imap_conn_quote_name(const char *name, char **out_r);

/* A response code and its simple arguments as text. */
void imap_conn_code_copy(struct imap_code *out,
                         const struct imap_response *resp);

/* The bytes of value v of resp, whether kept in the tree or streamed
 * (NULL for NIL, or for a literal that went to the body sink). */
const char *imap_conn_value_bytes(struct imap_client *c,
                                  const struct imap_response *resp,
                                  const struct imap_value *v, size_t *len_r);

/* Is target inside root?  *index counts the STREAMED values before it
 * (its slot in c->streamed). */
bool imap_conn_find_streamed(const struct imap_value *root,
                             const struct imap_value *target, size_t *index);

/* The body being routed to the sink will not complete: its abort, once. */
void imap_conn_route_abort(struct imap_client *c);

/* --- pacing and time (imap_pace.c) ------------------------------------- */

/* CLOCK_MONOTONIC in ms. */
int64_t imap_conn_now_ms(void);

/* The server throttled a command: nothing goes out on any connection of
 * the account for ms (0: the default). */
void imap_conn_pace_hold(struct imap_client *c, int ms, const char *text);

/* An OK said the server slowed its answer down: counted. */
void imap_conn_pace_slowed(struct imap_client *c, const char *text);

/* How long the account must still wait before sending, in ms (0: go). */
int64_t imap_conn_pace_left(struct imap_client *c);

/* Wait until the account may send again: 0, -EAGAIN at once when the
 * wait would be longer than the timeout, -ESHUTDOWN on imap_shutdown(). */
int imap_conn_pace_wait(struct imap_client *c);

#endif
