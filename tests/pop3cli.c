/* pop3cli: drives the proto/ POP3 client from the command line, for the
 * integration tests.  Not installed.
 *
 *   pop3cli [options] URL COMMAND [ARGS]
 *
 * Options: --cafile FILE, --passcmd CMD, --password-stdin, --oauth2-cmd CMD,
 * --notls, --timeout MS, --max-size BYTES, --debug.
 *
 * Commands:
 *   caps                  the capabilities pop3cli knows, one per line,
 *                         and "SASL MECH" for each known mechanism
 *   stat                  "COUNT SIZE"
 *   uidl                  "MSGNUM UID" per message
 *   list                  "MSGNUM SIZE" per message
 *   retr DIR [MSGNUM...]  each message (every one when none is given) to
 *                         DIR/MSGNUM.eml, pipelined when the server
 *                         allows; prints "retrieved N of M" and, on
 *                         standard error, "pop3cli: N commands in flight"
 *   top MSGNUM [LINES]    TOP MSGNUM LINES (default 0) to standard output
 *   dele MSGNUM...        DELE each, then QUIT (which commits them)
 *   dele-drop MSGNUM...   DELE each, then drop the connection without QUIT
 *                         (which must commit nothing)
 *
 * Every command ends with QUIT unless it says otherwise, also when it
 * failed while the session stayed usable.  On failure prints
 * "pop3cli: CLASS: TEXT" and "pop3cli: errno NAME" and exits with 10 + the
 * error class. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cliutil.h"
#include "proto/cred.h"
#include "proto/pop3.h"
#include "proto/url.h"

static const char *errno_name(int e)
{
	switch (e) {
	case EBUSY: return "EBUSY";
	case EAGAIN: return "EAGAIN";
	case ENOTSUP: return "ENOTSUP";
	case EACCES: return "EACCES";
	case ENOENT: return "ENOENT";
	case EPERM: return "EPERM";
	case EPROTO: return "EPROTO";
	case EMSGSIZE: return "EMSGSIZE";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ECONNRESET: return "ECONNRESET";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case EIO: return "EIO";
	}
	return "other";
}

static int die(const struct proto_err *err)
{
	printf("pop3cli: %s: %s\n", proto_err_class_name(err->cls), err->text);
	printf("pop3cli: errno %s\n", errno_name(-err->code));
	fflush(stdout);
	return 10 + (int)err->cls;
}

static void print_caps(struct pop3_client *c)
{
	static const char *const known[] = {
	        "TOP",        "UIDL",   "USER",        "RESP-CODES",
	        "PIPELINING", "STLS",   "SASL",        "AUTH-RESP-CODE",
	        "UTF8",       "EXPIRE", "LOGIN-DELAY",
	};
	static const char *const mechs[] = {"PLAIN", "LOGIN", "XOAUTH2",
	                                    "OAUTHBEARER"};

	for (size_t i = 0; i < sizeof(known) / sizeof(*known); i++)
		if (pop3_has_cap(c, known[i]))
			printf("%s\n", known[i]);
	for (size_t i = 0; i < sizeof(mechs) / sizeof(*mechs); i++)
		if (pop3_has_sasl(c, mechs[i]))
			printf("SASL %s\n", mechs[i]);
}

static void uid_cb(void *ctx, unsigned msgnum, const char *uid)
{
	(void)ctx;
	printf("%u %s\n", msgnum, uid);
}

static void size_cb(void *ctx, unsigned msgnum, uint64_t size)
{
	(void)ctx;
	printf("%u %llu\n", msgnum, (unsigned long long)size);
}

struct retr_ctx {
	const char *dir;
	FILE *out;
	size_t count;
	int first_rc;
	struct proto_err err;
};

static int file_begin(void *ctx, unsigned msgnum)
{
	struct retr_ctx *r = ctx;
	char path[4096];

	snprintf(path, sizeof(path), "%s/%u.eml", r->dir, msgnum);
	r->out = fopen(path, "wb");
	return r->out == NULL ? -errno : 0;
}

static int file_data(void *ctx, unsigned msgnum, const char *buf, size_t len)
{
	struct retr_ctx *r = ctx;

	(void)msgnum;
	return fwrite(buf, 1, len, r->out) == len ? 0 : -EIO;
}

static void file_end(void *ctx, unsigned msgnum, int rc,
                     const struct proto_err *e)
{
	struct retr_ctx *r = ctx;

	if (r->out != NULL && fclose(r->out) != 0 && rc == 0)
		rc = -EIO;
	r->out = NULL;
	if (rc == 0) {
		r->count++;
		return;
	}
	fprintf(stderr, "pop3cli: message %u: %s\n", msgnum,
	        e != NULL ? e->text : strerror(-rc));
	if (r->first_rc == 0) {
		r->first_rc = rc;
		if (e != NULL)
			r->err = *e;
	}
}

static void collect_num(void *ctx, unsigned msgnum, uint64_t size)
{
	(void)size;
	(void)cli_nums_add(ctx, msgnum);
}

static int parse_nums(char **argv, int argc, struct cli_nums *u)
{
	for (int i = 0; i < argc; i++) {
		char *end;
		unsigned long v = strtoul(argv[i], &end, 10);

		if (*end != '\0' || v == 0 || v > UINT32_MAX)
			return -EINVAL;
		collect_num(u, (unsigned)v, 0);
	}
	return u->n == (size_t)argc ? 0 : -ENOMEM;
}

static int retr_all(struct pop3_client *c, const char *dir, char **argv,
                    int argc, struct proto_err *err)
{
	struct retr_ctx r = {.dir = dir};
	struct pop3_sink sink = {file_begin, file_data, file_end, &r};
	struct cli_nums u = {0};
	int rc;

	if (argc > 0)
		rc = parse_nums(argv, argc, &u);
	else
		rc = pop3_list_all(c, collect_num, &u, err);
	if (rc < 0)
		goto out;
	rc = pop3_retr_many(c, u.v, u.n, &sink, err);
	fprintf(stderr, "pop3cli: %zu commands in flight\n",
	        pop3_max_inflight(c));
	if (rc < 0)
		goto out;
	printf("retrieved %zu of %zu\n", r.count, u.n);
	if (r.first_rc < 0) {
		rc = r.first_rc;
		*err = r.err;
	}
out:
	free(u.v);
	return rc;
}

static int top(struct pop3_client *c, char **argv, int argc,
               struct proto_err *err)
{
	unsigned long n, lines = 0;
	size_t len;
	char *data;
	int rc;

	if (argc < 1)
		return -EINVAL;
	n = strtoul(argv[0], NULL, 10);
	if (argc > 1)
		lines = strtoul(argv[1], NULL, 10);
	rc = pop3_top_buf(c, (unsigned)n, (unsigned)lines, &data, &len, err);
	if (rc == 0) {
		fwrite(data, 1, len, stdout);
		free(data);
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct pop3_config cfg = {0};
	struct cli_args a;
	struct proto_err err = {0};
	struct pop3_client *c = NULL;
	bool quit = true;
	char *secret = NULL;
	const char *cmd;
	int rc, nargs;
	char **args;

	signal(SIGPIPE, SIG_IGN);
	rc = cli_parse(argc, argv, "pop3cli", URL_POP3, true, &a, &err);
	if (rc < 0)
		return die(&err);
	if (rc > 0)
		return rc;
	cmd = a.cmd;
	args = a.args;
	nargs = a.nargs;
	rc = cli_secret(&a, &secret, &err);
	if (rc < 0)
		goto out;
	CLI_CONFIG(cfg, a, secret);
	cfg.max_message = a.max_size;
	cfg.tls = a.url.implicit_tls ? POP3_TLS_IMPLICIT
	          : a.notls          ? POP3_TLS_NONE
	                             : POP3_TLS_STLS;

	rc = pop3_connect(&c, &cfg, &err);
	cred_free(&secret);
	if (rc < 0)
		goto out;

	if (strcmp(cmd, "caps") == 0) {
		print_caps(c);
	} else if (strcmp(cmd, "stat") == 0) {
		unsigned n;
		uint64_t size;

		rc = pop3_stat(c, &n, &size, &err);
		if (rc == 0)
			printf("%u %llu\n", n, (unsigned long long)size);
	} else if (strcmp(cmd, "uidl") == 0) {
		rc = pop3_uidl_all(c, uid_cb, NULL, &err);
	} else if (strcmp(cmd, "list") == 0) {
		rc = pop3_list_all(c, size_cb, NULL, &err);
	} else if (strcmp(cmd, "retr") == 0 && nargs >= 1) {
		rc = retr_all(c, args[0], args + 1, nargs - 1, &err);
	} else if (strcmp(cmd, "top") == 0 && nargs >= 1) {
		rc = top(c, args, nargs, &err);
	} else if ((strcmp(cmd, "dele") == 0 ||
	            strcmp(cmd, "dele-drop") == 0) &&
	           nargs >= 1) {
		struct cli_nums u = {0};

		quit = strcmp(cmd, "dele") == 0;
		rc = parse_nums(args, nargs, &u);
		if (rc == 0)
			rc = pop3_dele_many(c, u.v, u.n, &err);
		free(u.v);
	} else {
		fprintf(stderr, "pop3cli: unknown command or missing "
		                "arguments\n");
		rc = -EINVAL;
	}
	if (rc == -EINVAL && err.cls == PERR_NONE)
		proto_err_set(&err, PERR_LOCAL, rc, "usage");
out:
	url_clear(&a.url);
	if (rc < 0) {
		if (err.cls == PERR_NONE)
			proto_err_set(&err, PERR_LOCAL, rc, "%s",
			              strerror(-rc));
		/* A command failed but the session is fine: say goodbye. */
		if (c != NULL && pop3_error(c) == NULL && quit)
			pop3_quit(&c, NULL);
		pop3_free(&c);
		return die(&err);
	}
	if (!quit) {
		pop3_free(&c);
		printf("dropped without QUIT\n");
		return 0;
	}
	rc = pop3_quit(&c, &err);
	if (rc < 0)
		return die(&err);
	return 0;
}
