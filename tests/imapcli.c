/* imapcli: drives the proto/ IMAP client from the command line, for the
 * integration tests and the demo.  Not installed.
 *
 *   imapcli [options] URL COMMAND [ARGS]
 *
 * Options: --cafile FILE, --passcmd CMD, --password-stdin, --oauth2-cmd CMD,
 * --notls, --timeout MS, --debug.
 *
 * Commands:
 *   caps                     capabilities, one per line
 *   enable EXTS              ENABLE EXTS; prints what was enabled
 *   id                       ID; prints the server's answer
 *   list                     "ATTRS<TAB>DELIM<TAB>RAW<TAB>DECODED" per mailbox
 *   select MBOX              uidvalidity, uidnext, exists, highestmodseq
 *   meta MBOX                "UID SIZE INTERNALDATE TZ FLAGS" per message
 *   fetch MBOX DIR [BATCH]   every body to DIR/UID.eml, BATCH UIDs per
 *                            UID FETCH command, all commands pipelined
 *
 * MBOX is UTF-8; it is encoded to modified UTF-7 here.  On failure prints
 * "imapcli: CLASS: TEXT" and exits with 10 + the error class. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/cred.h"
#include "proto/imap_client.h"
#include "proto/log.h"
#include "proto/url.h"
#include "proto/utf7.h"

static int die(const struct proto_err *err)
{
	printf("imapcli: %s: %s\n", proto_err_class_name(err->cls), err->text);
	fflush(stdout);
	return 10 + (int)err->cls;
}

static void print_caps(struct imap_client *c)
{
	static const char *const known[] = {
	        "IMAP4rev1",     "IMAP4rev2",  "IDLE",     "UIDPLUS",
	        "MOVE",          "CONDSTORE",  "QRESYNC",  "SPECIAL-USE",
	        "LIST-EXTENDED", "ENABLE",     "ID",       "SASL-IR",
	        "LITERAL+",      "AUTH=PLAIN", "STARTTLS", "LOGINDISABLED",
	        "NAMESPACE",     "ESEARCH",
	};

	for (size_t i = 0; i < sizeof(known) / sizeof(*known); i++)
		if (imap_has_cap(c, known[i]))
			printf("%s\n", known[i]);
}

static void list_cb(void *ctx, const struct imap_mailbox *mb)
{
	char *dec = NULL;

	(void)ctx;
	if (utf7_decode(mb->name, &dec) < 0)
		dec = NULL;
	printf("%x\t%c\t%s\t%s\n", mb->attrs, mb->delim ? mb->delim : '-',
	       mb->name, dec ? dec : "(invalid)");
	free(dec);
}

static void meta_cb(void *ctx, const struct imap_msg_meta *m)
{
	(void)ctx;
	printf("%u %llu %lld %d %s\n", m->uid, (unsigned long long)m->size,
	       (long long)m->internaldate, m->tz_minutes, m->flags);
}

struct uids {
	uint32_t *v;
	size_t n, cap;
};

static void collect_uid(void *ctx, const struct imap_msg_meta *m)
{
	struct uids *u = ctx;

	if (u->n == u->cap) {
		size_t ncap = u->cap ? u->cap * 2 : 256;
		uint32_t *n = realloc(u->v, ncap * sizeof(*n));

		if (n == NULL)
			return;
		u->v = n;
		u->cap = ncap;
	}
	u->v[u->n++] = m->uid;
}

struct fetch_ctx {
	const char *dir;
	size_t count;
	int failed;
};

static void fetch_untagged(void *ctx, const struct imap_response *resp)
{
	struct fetch_ctx *f = ctx;
	const struct imap_value *items = imap_list_get(&resp->args, 0);
	const struct imap_value *body;
	char path[4096];
	const char *data;
	uint32_t uid;
	size_t len;
	FILE *out;

	if (!imap_response_is(resp, "FETCH") || items == NULL ||
	    imap_value_u32(imap_fetch_item(items, "UID"), &uid) < 0 ||
	    (body = imap_fetch_item(items, "BODY[]")) == NULL)
		return;
	data = imap_value_str(body, &len);
	if (data == NULL) {
		/* A streamed literal: fetch_bodies() handles those; this
		 * tool's pipelined path keeps to in-memory literals. */
		f->failed = 1;
		return;
	}
	snprintf(path, sizeof(path), "%s/%u.eml", f->dir, uid);
	out = fopen(path, "wb");
	if (out == NULL || fwrite(data, 1, len, out) != len) {
		f->failed = 1;
		if (out)
			fclose(out);
		return;
	}
	fclose(out);
	f->count++;
}

static void write_body(void *ctx, uint32_t uid, const char *data, size_t len)
{
	struct fetch_ctx *f = ctx;
	char path[4096];
	FILE *out;

	snprintf(path, sizeof(path), "%s/%u.eml", f->dir, uid);
	out = fopen(path, "wb");
	if (out == NULL || fwrite(data, 1, len, out) != len) {
		f->failed = 1;
		if (out)
			fclose(out);
		return;
	}
	fclose(out);
	f->count++;
}

/* Fetch all bodies: batches of `batch` UIDs, every batch's UID FETCH sent
 * before the first answer is read (pipelining).  Messages over the
 * client's streaming threshold are fetched again one at a time through
 * imap_fetch_bodies(), which collects streamed literals. */
static int fetch_all(struct imap_client *c, const char *dir, size_t batch,
                     struct proto_err *err)
{
	struct fetch_ctx f = {.dir = dir};
	struct uids u = {0};
	struct imap_handler h = {.untagged = fetch_untagged, .ctx = &f};
	int rc;

	rc = imap_fetch_meta(c, "1:*", 0, collect_uid, &u, err);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < u.n; i += batch) {
		size_t n = u.n - i < batch ? u.n - i : batch;
		char *set = imap_uidset_format(u.v + i, n);

		if (set == NULL) {
			rc = -ENOMEM;
			goto out;
		}
		rc = imap_submit(c, &h, NULL, "UID FETCH %s (UID BODY.PEEK[])",
		                 set);
		free(set);
		if (rc < 0) {
			if (imap_error(c) != NULL)
				*err = *imap_error(c);
			goto out;
		}
	}
	fprintf(stderr, "imapcli: %zu commands in flight\n", imap_inflight(c));
	rc = imap_wait_all(c, err);
	if (rc < 0)
		goto out;
	if (f.failed) {
		/* Some bodies were streamed; fetch those one by one. */
		for (size_t i = 0; i < u.n; i++) {
			char path[4096], set[16];

			snprintf(path, sizeof(path), "%s/%u.eml", dir, u.v[i]);
			if (access(path, F_OK) == 0)
				continue;
			snprintf(set, sizeof(set), "%u", u.v[i]);
			rc = imap_fetch_bodies(c, set, write_body, &f, err);
			if (rc < 0)
				goto out;
		}
	}
	printf("fetched %zu of %zu\n", f.count, u.n);
	rc = f.count == u.n ? 0 : -EIO;
out:
	free(u.v);
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
	        {"debug", no_argument, NULL, 'd'},
	        {NULL, 0, NULL, 0},
	};
	struct imap_config cfg = {.timeout_ms = 10000};
	const char *passcmd = NULL, *oauthcmd = NULL;
	struct account_url url = {0};
	struct proto_err err = {0};
	struct imap_client *c = NULL;
	bool pw_stdin = false, notls = false;
	char *secret = NULL, *mbox = NULL;
	const char *cmd;
	int opt, rc;

	signal(SIGPIPE, SIG_IGN);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': cfg.cafile = optarg; break;
		case 'p': passcmd = optarg; break;
		case 's': pw_stdin = true; break;
		case 'o': oauthcmd = optarg; break;
		case 'n': notls = true; break;
		case 't': cfg.timeout_ms = atoi(optarg); break;
		case 'd': log_set_level(LOG_DEBUG); break;
		default: return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr,
		        "usage: imapcli [options] URL COMMAND [ARGS]\n");
		return 2;
	}
	if (url_parse(argv[optind], &url, &err) < 0)
		return die(&err);
	if (url.proto != URL_IMAP) {
		fprintf(stderr, "imapcli: not an IMAP URL\n");
		url_clear(&url);
		return 2;
	}
	cmd = argv[optind + 1];
	cfg.host = url.host;
	cfg.port = url.port_str;
	cfg.user = url.user;
	cfg.tls = url.implicit_tls ? IMAP_TLS_IMPLICIT
	          : notls          ? IMAP_TLS_NONE
	                           : IMAP_TLS_STARTTLS;
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

	rc = imap_connect(&c, &cfg, &err);
	cred_free(&secret);
	if (rc < 0)
		goto out;

	if (optind + 2 < argc && utf7_encode(argv[optind + 2], &mbox) < 0) {
		rc = proto_err_set(&err, PERR_LOCAL, -EINVAL,
		                   "invalid mailbox name");
		goto out;
	}
	if (strcmp(cmd, "caps") == 0) {
		print_caps(c);
	} else if (strcmp(cmd, "enable") == 0 && optind + 2 < argc) {
		char got[256];

		rc = imap_enable(c, argv[optind + 2], got, &err);
		if (rc == 0)
			printf("enabled %s\n", got);
	} else if (strcmp(cmd, "id") == 0) {
		char got[256];

		rc = imap_id(c, got, &err);
		if (rc == 0)
			printf("server %s\n", got);
	} else if (strcmp(cmd, "list") == 0) {
		rc = imap_list(c, list_cb, NULL, &err);
	} else if (strcmp(cmd, "select") == 0 && mbox != NULL) {
		struct imap_select_info info;

		rc = imap_select(c, mbox, true, &info, &err);
		if (rc == 0)
			printf("uidvalidity %u\nuidnext %u\nexists %u\n"
			       "highestmodseq %llu\n",
			       info.uidvalidity, info.uidnext, info.exists,
			       (unsigned long long)info.highestmodseq);
	} else if (strcmp(cmd, "meta") == 0 && mbox != NULL) {
		struct imap_select_info info;

		rc = imap_select(c, mbox, true, &info, &err);
		if (rc == 0 && info.exists > 0)
			rc = imap_fetch_meta(c, "1:*", 0, meta_cb, NULL, &err);
	} else if (strcmp(cmd, "fetch") == 0 && mbox != NULL &&
	           optind + 3 < argc) {
		struct imap_select_info info;
		size_t batch =
		        optind + 4 < argc
		                ? (size_t)strtoul(argv[optind + 4], NULL, 10)
		                : 50;

		rc = imap_select(c, mbox, true, &info, &err);
		if (rc == 0 && info.exists > 0)
			rc = fetch_all(c, argv[optind + 3], batch ? batch : 1,
			               &err);
		else if (rc == 0)
			printf("fetched 0 of 0\n");
	} else {
		fprintf(stderr, "imapcli: unknown command or missing "
		                "arguments\n");
		rc = -EINVAL;
		err.cls = PERR_LOCAL;
		snprintf(err.text, sizeof(err.text), "usage");
	}
out:
	free(mbox);
	url_clear(&url);
	if (rc < 0) {
		if (err.cls == PERR_NONE)
			proto_err_set(&err, PERR_LOCAL, rc, "%s",
			              strerror(-rc));
		imap_free(&c);
		return die(&err);
	}
	imap_logout(&c);
	return 0;
}
