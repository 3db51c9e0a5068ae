/* cliutil: what the test tools imapcli and pop3cli share: their common
 * options, the account URL, the secret, and a growing list of numbers.
 * Not installed.  For single-threaded command-line tools: cli_parse() uses
 * getopt_long() and sets the process's log level.
 *
 * Options both tools take: --cafile FILE, --passcmd CMD, --password-stdin,
 * --oauth2-cmd CMD, --notls, --timeout MS, --debug; and --max-size BYTES
 * where the tool asks for it. */
#ifndef MAILFS_TESTS_CLIUTIL_H
#define MAILFS_TESTS_CLIUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"
#include "proto/url.h"

struct cli_args {
	const char *cafile;     /* --cafile, or NULL (borrowed from argv) */
	const char *passcmd;    /* --passcmd, or NULL (borrowed) */
	const char *oauthcmd;   /* --oauth2-cmd, or NULL: the secret is a
	                         * token (borrowed) */
	bool pw_stdin;          /* --password-stdin */
	bool notls;             /* --notls */
	bool no_compress;       /* --no-compress (IMAP: no COMPRESS=DEFLATE) */
	int timeout_ms;         /* --timeout; 10000 when not given */
	uint64_t max_size;      /* --max-size; 0 when not given */
	struct account_url url; /* URL (owned: url_clear()) */
	const char *cmd;        /* COMMAND (borrowed) */
	char **args;            /* its ARGS (borrowed) */
	int nargs;              /* how many */
};

/* Parses "[options] URL COMMAND [ARGS]" of tool PROG (its name, for the
 * messages), whose URL must be of protocol PROTO; --max-size is an option
 * only if MAX_SIZE.  Returns 0 (A filled in); 2 after printing why to
 * standard error (nothing to clear); or -1 with ERR set when the URL does
 * not parse. */
int cli_parse(int argc, char **argv, const char *prog, enum url_proto proto,
              bool max_size, struct cli_args *a, struct proto_err *err);

/* The secret of A (release it with cred_free()): from --oauth2-cmd,
 * --passcmd, standard input (--password-stdin) or else the terminal.
 * Returns 0 or a negative errno with ERR set. */
int cli_secret(const struct cli_args *a, char **secret_r,
               struct proto_err *err);

/* Fills in the fields that struct imap_config and struct pop3_config share
 * from A (struct cli_args): the CA file, the timeout, host, port and user,
 * and SECRET (from cli_secret()) as the OAuth2 token or the password. */
#define CLI_CONFIG(cfg, a, secret)                                             \
	do {                                                                   \
		(cfg).cafile = (a).cafile;                                     \
		(cfg).timeout_ms = (a).timeout_ms;                             \
		(cfg).host = (a).url.host;                                     \
		(cfg).port = (a).url.port_str;                                 \
		(cfg).user = (a).url.user;                                     \
		if ((a).oauthcmd != NULL)                                      \
			(cfg).oauth2_token = (secret);                         \
		else                                                           \
			(cfg).password = (secret);                             \
	} while (0)

/* A growing array of numbers (UIDs, message numbers); zero-initialise it,
 * free(v) when done. */
struct cli_nums {
	uint32_t *v; /* owned */
	size_t n, cap;
};

/* Appends V to U.  Returns 0, or -ENOMEM with U unchanged. */
int cli_nums_add(struct cli_nums *u, uint32_t v);

#endif
