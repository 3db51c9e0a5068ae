/* cliutil: see cliutil.h. */
#include "cliutil.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "proto/cred.h"
#include "proto/log.h"

int cli_parse(int argc, char **argv, const char *prog, enum url_proto proto,
              bool max_size, struct cli_args *a, struct proto_err *err)
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
	        {"no-compress", no_argument, NULL, 'z'},
	        {NULL, 0, NULL, 0},
	};
	int opt;

	*a = (struct cli_args){.timeout_ms = 10000};
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': a->cafile = optarg; break;
		case 'p': a->passcmd = optarg; break;
		case 's': a->pw_stdin = true; break;
		case 'o': a->oauthcmd = optarg; break;
		case 'n': a->notls = true; break;
		case 't': a->timeout_ms = atoi(optarg); break;
		case 'm':
			if (!max_size) {
				fprintf(stderr,
				        "%s: unrecognized option '--max-size'\n",
				        prog);
				return 2;
			}
			a->max_size = strtoull(optarg, NULL, 10);
			break;
		case 'd': log_set_level(LOG_DEBUG); break;
		case 'z':
			if (proto != URL_IMAP) {
				fprintf(stderr,
				        "%s: unrecognized option "
				        "'--no-compress'\n",
				        prog);
				return 2;
			}
			a->no_compress = true;
			break;
		default: return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr, "usage: %s [options] URL COMMAND [ARGS]\n",
		        prog);
		return 2;
	}
	if (url_parse(argv[optind], &a->url, err) < 0)
		return -1;
	if (a->url.proto != proto) {
		fprintf(stderr, "%s: not %s URL\n", prog,
		        proto == URL_IMAP ? "an IMAP" : "a POP3");
		url_clear(&a->url);
		return 2;
	}
	a->cmd = argv[optind + 1];
	a->args = argv + optind + 2;
	a->nargs = argc - optind - 2;
	return 0;
}

int cli_secret(const struct cli_args *a, char **secret_r, struct proto_err *err)
{
	if (a->oauthcmd != NULL)
		return cred_from_cmd(a->oauthcmd, secret_r, err);
	if (a->passcmd != NULL)
		return cred_from_cmd(a->passcmd, secret_r, err);
	if (a->pw_stdin)
		return cred_from_stdin(secret_r, err);
	return cred_from_tty("Password: ", secret_r, err);
}

int cli_nums_add(struct cli_nums *u, uint32_t v)
{
	if (u->n == u->cap) {
		size_t ncap = u->cap ? u->cap * 2 : 256;
		uint32_t *n = realloc(u->v, ncap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		u->v = n;
		u->cap = ncap;
	}
	u->v[u->n++] = v;
	return 0;
}
