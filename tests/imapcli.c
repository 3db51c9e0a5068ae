/* imapcli: drives the proto/ IMAP client from the command line, for the
 * integration tests and the demo.  Not installed.
 *
 *   imapcli [options] URL COMMAND [ARGS]
 *
 * Options: --cafile FILE, --passcmd CMD, --password-stdin, --oauth2-cmd CMD,
 * --notls, --timeout MS, --debug, --no-compress (no COMPRESS=DEFLATE even
 * when the server offers it).
 *
 * Commands:
 *   caps                     capabilities, one per line
 *   compressed               "compressed yes|no" (COMPRESS=DEFLATE on?),
 *                            then a NOOP
 *   enable EXTS              ENABLE EXTS; prints what was enabled
 *   id                       ID; prints the server's answer
 *   list                     "ATTRS<TAB>DELIM<TAB>RAW<TAB>DECODED" per mailbox
 *   select MBOX              uidvalidity, uidnext, exists, highestmodseq
 *   meta MBOX                "UID SIZE INTERNALDATE TZ FLAGS" per message
 *   fetch MBOX DIR [BATCH]   every body to DIR/UID.eml, BATCH UIDs per
 *                            UID FETCH command, all commands pipelined
 *   fetchstream MBOX DIR     every body to DIR/UID.eml with one UID FETCH
 *                            1:* through imap_fetch_bodies_stream(), as
 *                            it arrives (DIR/.part until done); prints
 *                            "begin UID SIZE", "done UID PIECES" or
 *                            "abort", and "largest piece N"
 *   idle MBOX SECONDS        EXAMINE MBOX ("exists N"), then IDLE for at
 *                            most SECONDS (a decimal fraction is fine);
 *                            "woke: KEYWORD [N|SET]" for each EXISTS,
 *                            EXPUNGE, FETCH, RECENT or VANISHED (the first
 *                            one ends the IDLE), "seen: KIND" for anything
 *                            else, then "idle: woken" or "idle: time up"
 *   resync MBOX UIDVALIDITY MODSEQ UIDNEXT [OPTION...]
 *                            ENABLE QRESYNC when the server offers it, then
 *                            one imap_resync() of MBOX (EXAMINE) from that
 *                            known state: new_from UIDNEXT (0: none);
 *                            with QRESYNC enabled and MODSEQ not 0 the
 *                            flag changes come from the SELECT itself,
 *                            else flags_set "1:UIDNEXT-1" (when UIDNEXT >
 *                            1) with flags_since MODSEQ.  Options: "plain"
 *                            (no ENABLE, no CONDSTORE at all), "check=SET"
 *                            (check_set).  Prints, as the answers come,
 *                            "new UID SIZE (FLAGS)", "flags UID MODSEQ
 *                            (FLAGS)", "vanished LO HI", then the select
 *                            information as "select" does and "qresync
 *                            on|off".  When it fails and the connection is
 *                            still alive, a NOOP follows and "noop ok" is
 *                            printed before the error.
 *
 * MBOX is UTF-8; it is encoded to modified UTF-7 here.  On failure prints
 * "imapcli: CLASS: TEXT" and exits with 10 + the error class. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cliutil.h"
#include "proto/cred.h"
#include "proto/imap_client.h"
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

static void collect_uid(void *ctx, const struct imap_msg_meta *m)
{
	(void)cli_nums_add(ctx, m->uid);
}

struct fetch_ctx {
	const char *dir;
	size_t count;
	int failed;
};

/* DATA as DIR/UID.eml. */
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

static void fetch_untagged(void *ctx, const struct imap_response *resp)
{
	struct fetch_ctx *f = ctx;
	const struct imap_value *items = imap_list_get(&resp->args, 0);
	const struct imap_value *body;
	const char *data;
	uint32_t uid;
	size_t len;

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
	write_body(f, uid, data, len);
}

/* Fetch all bodies: batches of `batch` UIDs, every batch's UID FETCH sent
 * before the first answer is read (pipelining).  Messages over the
 * client's streaming threshold are fetched again one at a time through
 * imap_fetch_bodies(), which collects streamed literals. */
static int fetch_all(struct imap_client *c, const char *dir, size_t batch,
                     struct proto_err *err)
{
	struct fetch_ctx f = {.dir = dir};
	struct cli_nums u = {0};
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

/* fetchstream: each body to DIR/.part, renamed to UID.eml when done. */
struct stream_ctx {
	const char *dir;
	FILE *out;
	size_t pieces, largest;
	bool failed;
};

static int stream_begin(void *ctx, uint32_t uid, uint64_t size)
{
	struct stream_ctx *s = ctx;
	char path[4096];

	printf("begin %u %llu\n", uid, (unsigned long long)size);
	snprintf(path, sizeof(path), "%s/.part", s->dir);
	s->out = fopen(path, "wb");
	s->pieces = 0;
	return s->out != NULL ? 0 : -errno;
}

static int stream_data(void *ctx, const char *buf, size_t len)
{
	struct stream_ctx *s = ctx;

	s->pieces++;
	if (len > s->largest)
		s->largest = len;
	return fwrite(buf, 1, len, s->out) == len ? 0 : -EIO;
}

static void stream_done(void *ctx, uint32_t uid)
{
	struct stream_ctx *s = ctx;
	char from[4096], to[4096];

	snprintf(from, sizeof(from), "%s/.part", s->dir);
	snprintf(to, sizeof(to), "%s/%u.eml", s->dir, uid);
	if (fclose(s->out) != 0 || rename(from, to) != 0)
		s->failed = true;
	s->out = NULL;
	printf("done %u %zu\n", uid, s->pieces);
}

static void stream_abort(void *ctx)
{
	struct stream_ctx *s = ctx;
	char path[4096];

	if (s->out != NULL)
		fclose(s->out);
	s->out = NULL;
	snprintf(path, sizeof(path), "%s/.part", s->dir);
	unlink(path);
	printf("abort\n");
}

static int fetch_stream(struct imap_client *c, const char *mbox,
                        const char *dir, struct proto_err *err)
{
	static const struct imap_body_sink sink = {
	        .begin = stream_begin,
	        .data = stream_data,
	        .done = stream_done,
	        .abort = stream_abort,
	};
	struct stream_ctx s = {.dir = dir};
	struct imap_select_info info;
	int rc = imap_select(c, mbox, true, &info, err);

	if (rc == 0)
		rc = imap_fetch_bodies_stream(c, "1:*", &sink, &s, err);
	printf("largest piece %zu\n", s.largest);
	fflush(stdout);
	if (rc == 0 && s.failed)
		rc = proto_err_set(err, PERR_LOCAL, -EIO, "cannot write");
	return rc;
}

struct idle_ctx {
	bool woken;
};

/* Print an untagged response seen during IDLE; wake on mailbox news. */
static int idle_cb(void *ctx, const struct imap_response *resp)
{
	static const char *const news[] = {"EXISTS", "EXPUNGE", "FETCH",
	                                   "RECENT", "VANISHED"};
	struct idle_ctx *ic = ctx;
	const char *arg = NULL;

	for (size_t i = 0; i < resp->args.count && arg == NULL; i++)
		if (resp->args.list[i].type != IMAP_VALUE_LIST)
			arg = imap_value_str(&resp->args.list[i], NULL);
	if (resp->kind == IMAP_RESP_DATA) {
		for (size_t i = 0; i < sizeof(news) / sizeof(*news); i++) {
			if (!imap_response_is(resp, news[i]))
				continue;
			if (resp->has_number)
				printf("woke: %s %u\n", news[i], resp->number);
			else
				printf("woke: %s %s\n", news[i],
				       arg ? arg : "");
			fflush(stdout);
			ic->woken = true;
			return 1;
		}
		printf("seen: %s\n", resp->keyword);
	} else {
		static const char *const status[] = {"",    "OK",  "NO",
		                                     "BAD", "BYE", "PREAUTH"};

		printf("seen: %s\n", status[resp->status]);
	}
	fflush(stdout);
	return 0;
}

static int idle_cmd(struct imap_client *c, const char *mbox,
                    const char *seconds, struct proto_err *err)
{
	struct idle_ctx ic = {0};
	struct imap_select_info info;
	double s = strtod(seconds, NULL);
	int rc;

	rc = imap_select(c, mbox, true, &info, err);
	if (rc < 0)
		return rc;
	printf("exists %u\n", info.exists);
	fflush(stdout);
	rc = imap_idle(c, s > 0 ? (int)(s * 1000) : 0, idle_cb, &ic, err);
	if (rc == 0)
		printf("idle: %s\n", ic.woken ? "woken" : "time up");
	return rc;
}

static void resync_meta(void *ctx, const struct imap_msg_meta *m)
{
	(void)ctx;
	printf("new %u %llu (%s)\n", m->uid, (unsigned long long)m->size,
	       m->flags);
}

static void resync_flags(void *ctx, uint32_t uid, const char *flags,
                         uint64_t modseq)
{
	(void)ctx;
	printf("flags %u %llu (%s)\n", uid, (unsigned long long)modseq, flags);
}

static void resync_vanished(void *ctx, uint32_t lo, uint32_t hi)
{
	(void)ctx;
	printf("vanished %u %u\n", lo, hi);
}

static void print_select(const struct imap_select_info *info)
{
	printf("uidvalidity %u\nuidnext %u\nexists %u\nhighestmodseq %llu\n",
	       info->uidvalidity, info->uidnext, info->exists,
	       (unsigned long long)info->highestmodseq);
}

/* argv: MBOX UIDVALIDITY MODSEQ UIDNEXT [plain] [check=SET] */
static int resync_cmd(struct imap_client *c, const char *mbox, int argc,
                      char **argv, struct proto_err *err)
{
	struct imap_resync_cb cb = {.meta = resync_meta,
	                            .flags = resync_flags,
	                            .vanished = resync_vanished};
	struct imap_resync_req req = {.mailbox = mbox, .readonly = true};
	struct imap_select_info info;
	uint32_t uidnext;
	char flags_set[32];
	int rc;

	req.uidvalidity = (uint32_t)strtoul(argv[1], NULL, 10);
	req.modseq = strtoull(argv[2], NULL, 10);
	uidnext = (uint32_t)strtoul(argv[3], NULL, 10);
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "plain") == 0)
			req.plain = true;
		else if (strncmp(argv[i], "check=", 6) == 0)
			req.check_set = argv[i] + 6;
		else
			return proto_err_set(err, PERR_LOCAL, -EINVAL,
			                     "unknown resync option %s",
			                     argv[i]);
	}
	if (!req.plain && imap_has_cap(c, "QRESYNC") &&
	    imap_has_cap(c, "ENABLE")) {
		char got[256];

		rc = imap_enable(c, "QRESYNC", got, err);
		if (rc < 0)
			return rc;
	}
	req.new_from = uidnext;
	if ((!imap_qresync_enabled(c) || req.modseq == 0) && uidnext > 1) {
		snprintf(flags_set, sizeof(flags_set), "1:%u", uidnext - 1);
		req.flags_set = flags_set;
		req.flags_since = req.modseq;
	}
	rc = imap_resync(c, &req, &cb, &info, err);
	if (rc < 0) {
		struct proto_err e = {0};

		if (imap_error(c) == NULL && imap_noop(c, &e) == 0)
			printf("noop ok\n");
		return rc;
	}
	print_select(&info);
	printf("qresync %s\n", imap_qresync_enabled(c) ? "on" : "off");
	return 0;
}

int main(int argc, char **argv)
{
	struct imap_config cfg = {0};
	struct cli_args a;
	struct proto_err err = {0};
	struct imap_client *c = NULL;
	char *secret = NULL, *mbox = NULL;
	const char *cmd;
	int rc;

	signal(SIGPIPE, SIG_IGN);
	rc = cli_parse(argc, argv, "imapcli", URL_IMAP, false, &a, &err);
	if (rc < 0)
		return die(&err);
	if (rc > 0)
		return rc;
	cmd = a.cmd;
	rc = cli_secret(&a, &secret, &err);
	if (rc < 0)
		goto out;
	CLI_CONFIG(cfg, a, secret);
	cfg.no_compress = a.no_compress;
	cfg.tls = a.url.implicit_tls ? IMAP_TLS_IMPLICIT
	          : a.notls          ? IMAP_TLS_NONE
	                             : IMAP_TLS_STARTTLS;

	rc = imap_connect(&c, &cfg, &err);
	cred_free(&secret);
	if (rc < 0)
		goto out;

	if (a.nargs > 0 && utf7_encode(a.args[0], &mbox) < 0) {
		rc = proto_err_set(&err, PERR_LOCAL, -EINVAL,
		                   "invalid mailbox name");
		goto out;
	}
	if (strcmp(cmd, "caps") == 0) {
		print_caps(c);
	} else if (strcmp(cmd, "compressed") == 0) {
		/* Compressed or not, then a NOOP that must get through. */
		printf("compressed %s\n", imap_compressed(c) ? "yes" : "no");
		rc = imap_noop(c, &err);
	} else if (strcmp(cmd, "enable") == 0 && a.nargs > 0) {
		char got[256];

		rc = imap_enable(c, a.args[0], got, &err);
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
			print_select(&info);
	} else if (strcmp(cmd, "meta") == 0 && mbox != NULL) {
		struct imap_select_info info;

		rc = imap_select(c, mbox, true, &info, &err);
		if (rc == 0 && info.exists > 0)
			rc = imap_fetch_meta(c, "1:*", 0, meta_cb, NULL, &err);
	} else if (strcmp(cmd, "fetch") == 0 && mbox != NULL && a.nargs > 1) {
		struct imap_select_info info;
		size_t batch =
		        a.nargs > 2 ? (size_t)strtoul(a.args[2], NULL, 10) : 50;

		rc = imap_select(c, mbox, true, &info, &err);
		if (rc == 0 && info.exists > 0)
			rc = fetch_all(c, a.args[1], batch ? batch : 1, &err);
		else if (rc == 0)
			printf("fetched 0 of 0\n");
	} else if (strcmp(cmd, "fetchstream") == 0 && mbox != NULL &&
	           a.nargs > 1) {
		rc = fetch_stream(c, mbox, a.args[1], &err);
	} else if (strcmp(cmd, "idle") == 0 && mbox != NULL && a.nargs > 1) {
		rc = idle_cmd(c, mbox, a.args[1], &err);
	} else if (strcmp(cmd, "resync") == 0 && mbox != NULL && a.nargs > 3) {
		rc = resync_cmd(c, mbox, a.nargs, a.args, &err);
	} else {
		fprintf(stderr, "imapcli: unknown command or missing "
		                "arguments\n");
		rc = -EINVAL;
		err.cls = PERR_LOCAL;
		snprintf(err.text, sizeof(err.text), "usage");
	}
out:
	free(mbox);
	url_clear(&a.url);
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
