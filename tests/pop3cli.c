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
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cred.h"
#include "proto/log.h"
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

struct nums {
	unsigned *v;
	size_t n, cap;
};

static void collect_num(void *ctx, unsigned msgnum, uint64_t size)
{
	struct nums *u = ctx;

	(void)size;
	if (u->n == u->cap) {
		size_t ncap = u->cap ? u->cap * 2 : 256;
		unsigned *n = realloc(u->v, ncap * sizeof(*n));

		if (n == NULL)
			return;
		u->v = n;
		u->cap = ncap;
	}
	u->v[u->n++] = msgnum;
}

static int parse_nums(char **argv, int argc, struct nums *u)
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
	struct nums u = {0};
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
	static const struct option opts[] = {
	        {"cafile", required_argument, NULL, 'c'},
	        {"passcmd", required_argument, NULL, 'p'},
	        {"password-stdin", no_argument, NULL, 's'},
	        {"oauth2-cmd", required_argument, NULL, 'o'},
	        {"notls", no_argument, NULL, 'n'},
	        {"timeout", required_argument, NULL, 't'},
	        {"max-size", required_argument, NULL, 'm'},
	        {"debug", no_argument, NULL, 'd'},
	        {NULL, 0, NULL, 0},
	};
	struct pop3_config cfg = {.timeout_ms = 10000};
	const char *passcmd = NULL, *oauthcmd = NULL;
	struct account_url url = {0};
	struct proto_err err = {0};
	struct pop3_client *c = NULL;
	bool pw_stdin = false, notls = false, quit = true;
	char *secret = NULL;
	const char *cmd;
	int opt, rc, nargs;
	char **args;

	signal(SIGPIPE, SIG_IGN);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': cfg.cafile = optarg; break;
		case 'p': passcmd = optarg; break;
		case 's': pw_stdin = true; break;
		case 'o': oauthcmd = optarg; break;
		case 'n': notls = true; break;
		case 't': cfg.timeout_ms = atoi(optarg); break;
		case 'm': cfg.max_message = strtoull(optarg, NULL, 10); break;
		case 'd': log_set_level(LOG_DEBUG); break;
		default: return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr,
		        "usage: pop3cli [options] URL COMMAND [ARGS]\n");
		return 2;
	}
	if (url_parse(argv[optind], &url, &err) < 0)
		return die(&err);
	if (url.proto != URL_POP3) {
		fprintf(stderr, "pop3cli: not a POP3 URL\n");
		url_clear(&url);
		return 2;
	}
	cmd = argv[optind + 1];
	args = argv + optind + 2;
	nargs = argc - optind - 2;
	cfg.host = url.host;
	cfg.port = url.port_str;
	cfg.user = url.user;
	cfg.tls = url.implicit_tls ? POP3_TLS_IMPLICIT
	          : notls          ? POP3_TLS_NONE
	                           : POP3_TLS_STLS;
	if (oauthcmd != NULL)
		rc = cred_from_cmd(oauthcmd, &secret, &err);
	else if (passcmd != NULL)
		rc = cred_from_cmd(passcmd, &secret, &err);
	else if (pw_stdin)
		rc = cred_from_stdin(&secret, &err);
	else
		rc = cred_from_tty("Password: ", &secret, &err);
	if (rc < 0)
		goto out;
	if (oauthcmd != NULL)
		cfg.oauth2_token = secret;
	else
		cfg.password = secret;

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
		struct nums u = {0};

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
	url_clear(&url);
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
