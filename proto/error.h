/* Classified errors from the protocol layers.
 *
 * Functions below fs/ return 0 or a negative errno; when the caller needs to
 * tell a user *why* (DESIGN.md's one-line mount errors), they also fill a
 * struct proto_err.  The class says what kind of failure it was, the text is
 * one human-readable line, safe to print (never a secret). */
#ifndef MAILFS_ERROR_H
#define MAILFS_ERROR_H

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

/* Forget any recorded error. */
void proto_err_clear(struct proto_err *err);

/* A short name for the class ("TLS certificate", "authentication", ...). */
const char *proto_err_class_name(enum proto_err_class cls);

#endif
