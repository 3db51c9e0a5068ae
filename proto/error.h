/* Classified errors from the protocol layers.
 *
 * Functions below fs/ return 0 or a negative errno; when the caller needs to
 * tell a user *why* (DESIGN.md's one-line mount errors), they also fill a
 * struct proto_err.  The class says what kind of failure it was, the text is
 * one human-readable line, safe to print (never a secret).
 *
 * Part of the base library with proto/log (meson's mailbase), which every
 * layer links; nothing here knows a protocol.  No global state: every
 * function is safe from any thread on its own arguments. */
#ifndef MAILFS_ERROR_H
#define MAILFS_ERROR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum proto_err_class {
	PERR_NONE = 0,
	PERR_RESOLVE,    /* host name could not be resolved */
	PERR_CONNECT,    /* TCP connection refused, unreachable, reset, EOF */
	PERR_TIMEOUT,    /* a network wait ran out of time */
	PERR_TLS,        /* TLS handshake or I/O failure (not verification) */
	PERR_TLS_VERIFY, /* certificate verification failed; text says why */
	PERR_NOTLS,      /* STARTTLS/STLS required but not offered */
	PERR_PROTOCOL,   /* malformed or unexpected server data, limits hit */
	PERR_NO,         /* server answered NO (or POP3 -ERR); its text kept */
	PERR_BAD,        /* server answered BAD; its text kept */
	PERR_AUTH,       /* authentication failed; server's text kept */
	PERR_BYE,        /* server closed the session with BYE */
	PERR_LOCAL, /* local failure: out of memory, a command that failed */
	/* The server asks to come back later: a command throttled (code
	 * -EAGAIN) or a connection refused because the account has too many
	 * (-EUSERS); its text kept. */
	PERR_BUSY,
};

struct proto_err {
	enum proto_err_class cls;
	int code; /* negative errno that goes with the failure */
	char text[512];
};

/* Record an error.  Safe with err == NULL.  Returns code (a negative errno),
 * so that "return proto_err_set(err, PERR_CONNECT, -ECONNREFUSED, ...);"
 * works.  The first error recorded wins: later calls do not overwrite an
 * error already set, so the root cause survives the unwinding. */
int proto_err_set(struct proto_err *err, enum proto_err_class cls, int code,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* proto_err_set() with a va_list. */
int proto_err_vset(struct proto_err *err, enum proto_err_class cls, int code,
                   const char *fmt, va_list ap)
        __attribute__((format(printf, 4, 0)));

/* Forget any recorded error. */
void proto_err_clear(struct proto_err *err);

/* A short name for the class ("TLS certificate", "authentication", ...). */
const char *proto_err_class_name(enum proto_err_class cls);

/* --- the error that ends a connection ----------------------------------
 *
 * A protocol client (IMAP, POP3) is alive until its first failure, and
 * dead with that error ever after: every later call fails at once with
 * it.  The first error is kept, so that the root cause is what the user
 * sees, not the errors of the unwinding.  A struct proto_fate belongs to
 * one client and is used by the thread driving it. */
struct proto_fate {
	bool dead;
	struct proto_err err; /* why, once dead */
	/* Set by proto_fate_init(): */
	const char *proto; /* "imap", "pop3": for the log */
	const char *label; /* borrowed: "user@host", for the log */
	/* Called once, when the client dies (its state machine moves to
	 * its dead state); may be NULL. */
	void (*died)(void *ctx);
	void *ctx;
};

/* Make f alive, named proto and label for the log (both borrowed), with
 * died(ctx) to call when it dies (may be NULL). */
void proto_fate_init(struct proto_fate *f, const char *proto, const char *label,
                     void (*died)(void *ctx), void *ctx);

/* The connection failed with e: unless it is dead already, it is now,
 * with e (code 0 taken as -EIO, class PERR_NONE as PERR_LOCAL), logged
 * at debug level.  Returns the kept error's code (negative). */
int proto_fate_fail(struct proto_fate *f, const struct proto_err *e);

/* proto_fate_fail() with an error made of cls, code and the text. */
int proto_fate_failf(struct proto_fate *f, enum proto_err_class cls, int code,
                     const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* The kept error into *err (may be NULL) unless *err holds one already;
 * returns the kept error's code.  For a dead connection. */
int proto_fate_rc(const struct proto_fate *f, struct proto_err *err);

/* The kept error, or NULL while the connection is alive. */
const struct proto_err *proto_fate_error(const struct proto_fate *f);

#endif
