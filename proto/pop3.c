/* The POP3 client's session: reading, sending, pipelining and the
 * commands of the TRANSACTION state.  The map of its files is in
 * pop3_int.h. */
#include "proto/pop3_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/strbuf.h"

/* Commands in flight with PIPELINING.  Each is a few bytes, so the
 * whole window fits in any socket buffer and writing it can never block
 * on a server that is itself blocked writing answers to us. */
#define POP3_PIPELINE_WINDOW 16

/* --- the client ------------------------------------------------------ */

static const char *const state_names[] = {
        [POP3_ST_CONNECTING] = "connecting",
        [POP3_ST_TLS_HANDSHAKE] = "tls-handshake",
        [POP3_ST_GREETING] = "greeting",
        [POP3_ST_CAPA] = "capa",
        [POP3_ST_STLS] = "stls",
        [POP3_ST_AUTH] = "auth",
        [POP3_ST_USER] = "user",
        [POP3_ST_PASS] = "pass",
        [POP3_ST_APOP] = "apop",
        [POP3_ST_TRANSACTION] = "transaction",
        [POP3_ST_QUIT] = "quit",
        [POP3_ST_DEAD] = "dead",
};

void pop3_conn_set_state(struct pop3_client *c, enum pop3_state st)
{
	if (c->state == st)
		return;
	log_debug("pop3 %s: %s -> %s", c->label, state_names[c->state],
	          state_names[st]);
	c->state = st;
}

/* The connection died (struct proto_fate). */
static void died(void *ctx)
{
	pop3_conn_set_state(ctx, POP3_ST_DEAD);
}

/* Server text made safe for an error message or a log line: control
 * characters become "?"; at most dst_size - 1 bytes. */
static void clean_text(char *dst, size_t dst_size, const char *src, size_t len)
{
	size_t n = len < dst_size - 1 ? len : dst_size - 1;

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)src[i];

		dst[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	dst[n] = '\0';
}

const struct proto_err *pop3_error(const struct pop3_client *c)
{
	return proto_fate_error(&c->fate);
}

size_t pop3_max_inflight(const struct pop3_client *c)
{
	return c->max_inflight;
}

/* --- capabilities ---------------------------------------------------- */

void pop3_conn_caps_clear(struct pop3_client *c)
{
	for (size_t i = 0; i < c->n_caps; i++)
		free(c->caps[i]);
	c->n_caps = 0;
	c->capa_known = false;
}

bool pop3_has_cap(const struct pop3_client *c, const char *name)
{
	for (size_t i = 0; i < c->n_caps; i++)
		if (pop3_capa_is(c->caps[i], name))
			return true;
	return false;
}

bool pop3_has_sasl(const struct pop3_client *c, const char *mech)
{
	for (size_t i = 0; i < c->n_caps; i++)
		if (pop3_capa_sasl(c->caps[i], mech))
			return true;
	return false;
}

bool pop3_capa_known(const struct pop3_client *c)
{
	return c->capa_known;
}

/* --- reading --------------------------------------------------------- */

/* Read one line into c->line. */
static int read_line(struct pop3_client *c)
{
	struct proto_err e = {0};

	if (c->fate.dead)
		return c->fate.err.code;
	for (;;) {
		size_t len, ll = 0, used = 0;
		const char *buf = net_rbuf(c->net, &len);
		int rc = pop3_line_find(buf, len, POP3_MAX_LINE, &ll, &used);

		if (rc < 0)
			return proto_fate_failf(
			        &c->fate, PERR_PROTOCOL, -EPROTO,
			        "%s sent a line longer than %d bytes", c->host,
			        POP3_MAX_LINE);
		if (rc > 0) {
			memcpy(c->line, buf, ll);
			c->line[ll] = '\0';
			c->line_len = ll;
			net_consume(c->net, used);
			return 0;
		}
		rc = net_fill(c->net, &e);
		if (rc < 0)
			return proto_fate_fail(&c->fate, &e);
	}
}

/* Read and parse a status line. */
int pop3_conn_read_status(struct pop3_client *c, struct pop3_status_line *st)
{
	char shown[200];
	int rc = read_line(c);

	if (rc < 0)
		return rc;
	clean_text(shown, sizeof(shown), c->line, c->line_len);
	log_debug("pop3 %s: S: %s", c->label, shown);
	if (pop3_status_parse(c->line, c->line_len, st) < 0)
		return proto_fate_failf(
		        &c->fate, PERR_PROTOCOL, -EPROTO,
		        "%s sent something that is not a POP3 status "
		        "line: \"%.80s\"",
		        c->host, shown);
	return 0;
}

/* The server's text of the latest status line (response code included),
 * cleaned, for an error message. */
void pop3_conn_status_text(struct pop3_client *c, char *dst, size_t size)
{
	size_t p = 0;

	if (c->line_len > 0 && (c->line[0] == '+' || c->line[0] == '-')) {
		while (p < c->line_len && c->line[p] != ' ')
			p++;
		while (p < c->line_len && c->line[p] == ' ')
			p++;
	}
	clean_text(dst, size, c->line + p, c->line_len - p);
	if (dst[0] == '\0')
		snprintf(dst, size, "(no text)");
}

/* Output of a multi-line response, collected into lines (CAPA, UIDL,
 * LIST); a line longer than POP3_MAX_LINE is a protocol error. */
struct lines {
	char buf[POP3_MAX_LINE + 1];
	size_t len;
	int (*line)(void *ctx, char *line, size_t len);
	void *ctx;
	int rc; /* the first error a line handler returned */
};

static int lines_flush(struct lines *l)
{
	size_t n = l->len;
	int rc;

	if (n > 0 && l->buf[n - 1] == '\r')
		n--;
	l->buf[n] = '\0';
	l->len = 0;
	rc = l->line(l->ctx, l->buf, n);
	if (rc < 0 && l->rc == 0)
		l->rc = rc;
	return 0;
}

static int lines_out(void *ctx, const char *buf, size_t len)
{
	struct lines *l = ctx;

	for (size_t i = 0; i < len; i++) {
		if (buf[i] == '\n') {
			lines_flush(l);
			continue;
		}
		if (l->len >= POP3_MAX_LINE)
			return -EMSGSIZE;
		l->buf[l->len++] = buf[i];
	}
	return 0;
}

/* Read a multi-line body to its terminator, passing it to out.  An error
 * from out is fatal for the connection (it is used for the limits). */
static int read_body(struct pop3_client *c, pop3_out_fn out, void *ctx)
{
	struct pop3_dotstate ds;
	struct proto_err e = {0};

	pop3_dot_init(&ds);
	for (;;) {
		size_t len, used = 0;
		const char *buf = net_rbuf(c->net, &len);
		int rc;

		if (len > 0) {
			rc = pop3_unstuff(&ds, buf, len, &used, out, ctx);
			net_consume(c->net, used);
			if (rc == 1)
				return 0;
			if (rc == -EMSGSIZE)
				return proto_fate_failf(
				        &c->fate, PERR_PROTOCOL, rc,
				        "%s sent a response over the size "
				        "limit",
				        c->host);
			if (rc < 0)
				return proto_fate_failf(
				        &c->fate, PERR_LOCAL, rc,
				        "cannot store the response from "
				        "%s: %s",
				        c->host, strerror(-rc));
		}
		rc = net_fill(c->net, &e);
		if (rc < 0)
			return proto_fate_fail(&c->fate, &e);
	}
}

int pop3_conn_read_lines(struct pop3_client *c,
                         int (*line)(void *ctx, char *line, size_t len),
                         void *ctx)
{
	struct lines *l = malloc(sizeof(*l));
	int rc;

	if (l == NULL)
		return proto_fate_failf(&c->fate, PERR_LOCAL, -ENOMEM,
		                        "out of memory");
	l->len = 0;
	l->line = line;
	l->ctx = ctx;
	l->rc = 0;
	rc = read_body(c, lines_out, l);
	if (rc == 0 && l->len > 0)
		lines_flush(l); /* a last line without CRLF */
	if (rc == 0)
		rc = l->rc;
	free(l);
	return rc;
}

/* --- sending --------------------------------------------------------- */

static int send_raw(struct pop3_client *c, const char *buf, size_t len)
{
	struct proto_err e = {0};
	int rc;

	if (c->fate.dead)
		return c->fate.err.code;
	rc = net_write(c->net, buf, len, &e);
	if (rc < 0)
		return proto_fate_fail(&c->fate, &e);
	return 0;
}

/* Send one command line (CRLF added) and log it.  Commands that carry a
 * secret use pop3_conn_send_secret(). */
int pop3_conn_send_cmd(struct pop3_client *c, const char *fmt, ...)
{
	char buf[POP3_MAX_LINE];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 2)
		return proto_fate_failf(&c->fate, PERR_LOCAL, -EINVAL,
		                        "command too long");
	log_debug("pop3 %s: C: %s", c->label, buf);
	memcpy(buf + n, "\r\n", 2);
	return send_raw(c, buf, (size_t)n + 2);
}

/* Send prefix, secret and CRLF in one write; log prefix and "<hidden>". */
int pop3_conn_send_secret(struct pop3_client *c, const char *prefix,
                          const char *secret)
{
	size_t plen = strlen(prefix), slen = strlen(secret);
	char *buf = malloc(plen + slen + 3);
	int rc;

	if (buf == NULL)
		return proto_fate_failf(&c->fate, PERR_LOCAL, -ENOMEM,
		                        "out of memory");
	memcpy(buf, prefix, plen);
	memcpy(buf + plen, secret, slen);
	memcpy(buf + plen + slen, "\r\n", 3);
	log_debug("pop3 %s: C: %s<hidden>", c->label, prefix);
	rc = send_raw(c, buf, plen + slen + 2);
	explicit_bzero(buf, plen + slen + 3);
	free(buf);
	return rc;
}

/* Send a command and read its status line.  Returns 0 (st filled in) or
 * the connection's error. */
int pop3_conn_command(struct pop3_client *c, struct pop3_status_line *st,
                      const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int rc, n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return proto_fate_failf(&c->fate, PERR_LOCAL, -EINVAL,
		                        "command too long");
	rc = pop3_conn_send_cmd(c, "%s", buf);
	if (rc == 0)
		rc = pop3_conn_read_status(c, st);
	if (rc == 0 && st->status == POP3_CONT)
		return proto_fate_failf(&c->fate, PERR_PROTOCOL, -EPROTO,
		                        "%s sent a continuation to %s", c->host,
		                        buf);
	return rc;
}

/* The error for a -ERR answer to a command (the latest status line). */
static int refused(struct pop3_client *c, const struct pop3_status_line *st,
                   int dflt, const char *what, struct proto_err *err)
{
	char text[400];

	pop3_conn_status_text(c, text, sizeof(text));
	if (pop3_status_has_code(st, "IN-USE"))
		return proto_err_set(err, PERR_NO, -EBUSY,
		                     "%s: the maildrop is locked by another "
		                     "client (another POP3 session is open); "
		                     "try again later: %s",
		                     c->host, text);
	if (pop3_status_has_code(st, "SYS/TEMP"))
		return proto_err_set(err, PERR_NO, -EAGAIN,
		                     "%s has a temporary problem with %s: %s",
		                     c->host, what, text);
	return proto_err_set(err, PERR_NO, dflt, "%s refused %s: %s", c->host,
	                     what, text);
}

/* --- pipelining ------------------------------------------------------ */

struct pipe_ops {
	/* Format command i (no CRLF) into buf; returns its length. */
	int (*format)(void *ctx, size_t i, char *buf, size_t size);
	/* Handle the answer to command i, reading any multi-line body.
	 * Returns 0, or the connection's error. */
	int (*reply)(struct pop3_client *c, void *ctx, size_t i,
	             const struct pop3_status_line *st);
};

/* Run n commands, up to POP3_PIPELINE_WINDOW in flight when the server
 * offers PIPELINING (RFC 2449 section 6.6), else one at a time.  The
 * answers come in order. */
static int run_pipeline(struct pop3_client *c, size_t n,
                        const struct pipe_ops *ops, void *ctx,
                        struct proto_err *err)
{
	size_t window =
	        pop3_has_cap(c, "PIPELINING") ? POP3_PIPELINE_WINDOW : 1;
	size_t sent = 0, done = 0;

	if (c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	while (done < n) {
		char buf[POP3_PIPELINE_WINDOW * 64];
		struct pop3_status_line st;
		size_t blen = 0;
		int rc;

		while (sent < n && sent - done < window) {
			int k = ops->format(ctx, sent, buf + blen,
			                    sizeof(buf) - blen - 2);

			if (k < 0 || (size_t)k >= sizeof(buf) - blen - 2) {
				proto_fate_failf(&c->fate, PERR_LOCAL, -EINVAL,
				                 "command too long");
				return proto_fate_rc(&c->fate, err);
			}
			log_debug("pop3 %s: C: %.*s", c->label, k, buf + blen);
			memcpy(buf + blen + k, "\r\n", 2);
			blen += (size_t)k + 2;
			sent++;
		}
		if (sent - done > c->max_inflight)
			c->max_inflight = sent - done;
		if (blen > 0 && send_raw(c, buf, blen) < 0)
			return proto_fate_rc(&c->fate, err);
		if (pop3_conn_read_status(c, &st) < 0)
			return proto_fate_rc(&c->fate, err);
		if (st.status == POP3_CONT) {
			proto_fate_failf(&c->fate, PERR_PROTOCOL, -EPROTO,
			                 "%s sent a continuation outside AUTH",
			                 c->host);
			return proto_fate_rc(&c->fate, err);
		}
		rc = ops->reply(c, ctx, done, &st);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
		done++;
	}
	return 0;
}

/* --- making and ending a client ------------------------------------ */

int pop3_conn_new(struct pop3_client **c_r, const struct pop3_config *cfg,
                  struct proto_err *err)
{
	struct pop3_client *c;
	int rc;

	*c_r = NULL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	c->max_message =
	        cfg->max_message ? cfg->max_message : POP3_DEFAULT_MAX_MESSAGE;
	c->host = strdup(cfg->host);
	if (c->host == NULL ||
	    asprintf(&c->label, "%s@%s", cfg->user ? cfg->user : "",
	             cfg->host) < 0) {
		c->label = NULL;
		rc = proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
		goto fail;
	}
	proto_fate_init(&c->fate, "pop3", c->label, died, c);
	*c_r = c;
	return 0;
fail:
	pop3_free(&c);
	return rc;
}

void pop3_free(struct pop3_client **cp)
{
	struct pop3_client *c = *cp;

	if (c == NULL)
		return;
	net_close(&c->net);
	pop3_conn_caps_clear(c);
	free(c->timestamp);
	free(c->label);
	free(c->host);
	free(c);
	*cp = NULL;
}

int pop3_quit(struct pop3_client **cp, struct proto_err *err)
{
	struct pop3_client *c = *cp;
	struct pop3_status_line st;
	char text[400];
	int rc;

	if (c == NULL)
		return 0;
	if (c->fate.dead) {
		rc = proto_fate_rc(&c->fate, err);
		pop3_free(cp);
		return rc;
	}
	pop3_conn_set_state(c, POP3_ST_QUIT);
	rc = pop3_conn_command(c, &st, "QUIT");
	if (rc < 0) {
		rc = proto_fate_rc(&c->fate, err);
	} else if (st.status != POP3_OK) {
		pop3_conn_status_text(c, text, sizeof(text));
		rc = proto_err_set(err, PERR_NO, -EIO,
		                   "%s did not commit the deletions: %s",
		                   c->host, text);
	}
	pop3_free(cp);
	return rc;
}

void pop3_shutdown(struct pop3_client *c)
{
	if (c != NULL && c->net != NULL)
		net_shutdown(c->net);
}

/* --- simple commands ------------------------------------------------- */

/* A simple command in the TRANSACTION state: 0 for +OK, the -ERR
 * error (dflt as the errno), or the connection's error. */
static int simple(struct pop3_client *c, struct pop3_status_line *st, int dflt,
                  const char *what, struct proto_err *err)
{
	int rc;

	if (c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	rc = pop3_conn_command(c, st, "%s", what);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (st->status != POP3_OK)
		return refused(c, st, dflt, what, err);
	return 0;
}

int pop3_stat(struct pop3_client *c, unsigned *count_r, uint64_t *size_r,
              struct proto_err *err)
{
	struct pop3_status_line st;
	int rc;

	rc = simple(c, &st, -EPERM, "STAT", err);
	if (rc < 0)
		return rc;
	if (pop3_stat_parse(st.text, count_r, size_r) < 0)
		return proto_err_set(err, PERR_PROTOCOL, -EPROTO,
		                     "%s sent a malformed STAT answer",
		                     c->host);
	return 0;
}

int pop3_noop(struct pop3_client *c, struct proto_err *err)
{
	struct pop3_status_line st;

	return simple(c, &st, -EPERM, "NOOP", err);
}

int pop3_rset(struct pop3_client *c, struct proto_err *err)
{
	struct pop3_status_line st;

	return simple(c, &st, -EPERM, "RSET", err);
}

/* --- UIDL and LIST --------------------------------------------------- */

struct listing {
	struct pop3_client *c;
	bool uidl;
	void (*uid_cb)(void *ctx, unsigned msgnum, const char *uid);
	void (*size_cb)(void *ctx, unsigned msgnum, uint64_t size);
	void *ctx;
	char bad[80]; /* the first malformed line, cleaned */
	bool failed;  /* after it, the callbacks are not called */
};

static int listing_line(void *ctx, char *line, size_t len)
{
	struct listing *l = ctx;
	unsigned msgnum;

	if (len == 0 || l->failed)
		return 0; /* an empty line carries nothing: tolerated */
	if (l->uidl) {
		const char *uid;
		size_t n;

		if (pop3_uidl_parse(line, len, &msgnum, &uid, &n) < 0)
			goto bad;
		line[uid + n - line] = '\0';
		l->uid_cb(l->ctx, msgnum, uid);
	} else {
		uint64_t size;

		if (pop3_list_parse(line, len, &msgnum, &size) < 0)
			goto bad;
		l->size_cb(l->ctx, msgnum, size);
	}
	return 0;
bad:
	if (l->bad[0] == '\0')
		clean_text(l->bad, sizeof(l->bad), line, len);
	l->failed = true;
	return -EPROTO;
}

static int run_listing(struct pop3_client *c, struct listing *l,
                       struct proto_err *err)
{
	const char *verb = l->uidl ? "UIDL" : "LIST";
	struct pop3_status_line st;
	int rc;

	if (c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	rc = pop3_conn_command(c, &st, "%s", verb);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (st.status != POP3_OK) {
		if (l->uidl && !pop3_status_has_code(&st, "IN-USE") &&
		    !pop3_status_has_code(&st, "SYS")) {
			char text[400];

			pop3_conn_status_text(c, text, sizeof(text));
			return proto_err_set(err, PERR_NO, -ENOTSUP,
			                     "%s does not support UIDL: %s",
			                     c->host, text);
		}
		return refused(c, &st, -EPERM, verb, err);
	}
	rc = pop3_conn_read_lines(c, listing_line, l);
	if (rc < 0 && c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	if (rc < 0)
		return proto_err_set(err, PERR_PROTOCOL, rc,
		                     "%s sent a malformed %s line: \"%s\"",
		                     c->host, verb, l->bad);
	return 0;
}

int pop3_uidl_all(struct pop3_client *c,
                  void (*cb)(void *ctx, unsigned msgnum, const char *uid),
                  void *ctx, struct proto_err *err)
{
	struct listing l = {.c = c, .uidl = true, .uid_cb = cb, .ctx = ctx};

	return run_listing(c, &l, err);
}

int pop3_list_all(struct pop3_client *c,
                  void (*cb)(void *ctx, unsigned msgnum, uint64_t size),
                  void *ctx, struct proto_err *err)
{
	struct listing l = {.c = c, .uidl = false, .size_cb = cb, .ctx = ctx};

	return run_listing(c, &l, err);
}

/* --- RETR and TOP ---------------------------------------------------- */

struct retr {
	struct pop3_client *c;
	const unsigned *msgnums;
	const struct pop3_sink *sink;
	bool top;
	unsigned lines;
	/* The message being read: */
	unsigned msgnum;
	uint64_t size;
	int sink_rc;
};

static int retr_format(void *ctx, size_t i, char *buf, size_t size)
{
	struct retr *r = ctx;

	if (r->top)
		return snprintf(buf, size, "TOP %u %u", r->msgnums[i],
		                r->lines);
	return snprintf(buf, size, "RETR %u", r->msgnums[i]);
}

/* Bytes of the message: the size limit, then the sink.  A sink error
 * only stops the sink; the body is still read to its end. */
static int retr_out(void *ctx, const char *buf, size_t len)
{
	struct retr *r = ctx;
	const struct pop3_sink *s = r->sink;

	if (len > r->c->max_message - r->size)
		return -EMSGSIZE;
	r->size += len;
	if (r->sink_rc == 0 && s != NULL && s->data != NULL)
		r->sink_rc = s->data(s->ctx, r->msgnum, buf, len);
	if (r->sink_rc > 0)
		r->sink_rc = -EIO;
	return 0;
}

static void retr_end(struct retr *r, int rc, const struct proto_err *e)
{
	if (r->sink != NULL && r->sink->end != NULL)
		r->sink->end(r->sink->ctx, r->msgnum, rc, e);
}

static int retr_reply(struct pop3_client *c, void *ctx, size_t i,
                      const struct pop3_status_line *st)
{
	struct retr *r = ctx;
	const struct pop3_sink *s = r->sink;
	struct proto_err e = {0};
	char what[48];
	int rc;

	r->msgnum = r->msgnums[i];
	r->size = 0;
	r->sink_rc = 0;
	if (st->status != POP3_OK) {
		snprintf(what, sizeof(what), "%s of message %u",
		         r->top ? "TOP" : "RETR", r->msgnum);
		rc = refused(c, st,
		             r->top && !pop3_has_cap(c, "TOP") ? -ENOTSUP
		                                               : -ENOENT,
		             what, &e);
		retr_end(r, rc, &e);
		return 0;
	}
	if (s != NULL && s->begin != NULL)
		r->sink_rc = s->begin(s->ctx, r->msgnum);
	if (r->sink_rc > 0)
		r->sink_rc = -EIO;
	rc = read_body(c, retr_out, r);
	if (rc < 0) {
		retr_end(r, rc, &c->fate.err);
		return rc;
	}
	if (r->sink_rc < 0) {
		proto_err_set(&e, PERR_LOCAL, r->sink_rc,
		              "cannot store message %u: %s", r->msgnum,
		              strerror(-r->sink_rc));
		retr_end(r, r->sink_rc, &e);
		return 0;
	}
	retr_end(r, 0, NULL);
	return 0;
}

static const struct pipe_ops retr_ops = {
        .format = retr_format,
        .reply = retr_reply,
};

int pop3_retr_many(struct pop3_client *c, const unsigned *msgnums, size_t n,
                   const struct pop3_sink *sink, struct proto_err *err)
{
	struct retr r = {.c = c, .msgnums = msgnums, .sink = sink};

	return run_pipeline(c, n, &retr_ops, &r, err);
}

/* Keeps the result of the one message for the caller. */
struct one {
	const struct pop3_sink *sink;
	int rc;
	struct proto_err err;
	bool ended;
};

static int one_begin(void *ctx, unsigned msgnum)
{
	struct one *o = ctx;

	if (o->sink != NULL && o->sink->begin != NULL)
		return o->sink->begin(o->sink->ctx, msgnum);
	return 0;
}

static int one_data(void *ctx, unsigned msgnum, const char *buf, size_t len)
{
	struct one *o = ctx;

	if (o->sink != NULL && o->sink->data != NULL)
		return o->sink->data(o->sink->ctx, msgnum, buf, len);
	return 0;
}

static void one_end(void *ctx, unsigned msgnum, int rc,
                    const struct proto_err *e)
{
	struct one *o = ctx;

	o->ended = true;
	o->rc = rc;
	if (e != NULL)
		o->err = *e;
	if (o->sink != NULL && o->sink->end != NULL)
		o->sink->end(o->sink->ctx, msgnum, rc, e);
}

static int retr_one(struct pop3_client *c, bool top, unsigned msgnum,
                    unsigned lines, const struct pop3_sink *sink,
                    struct proto_err *err)
{
	struct one o = {.sink = sink};
	struct pop3_sink wrap = {one_begin, one_data, one_end, &o};
	struct retr r = {.c = c,
	                 .msgnums = &msgnum,
	                 .sink = &wrap,
	                 .top = top,
	                 .lines = lines};
	int rc;

	rc = run_pipeline(c, 1, &retr_ops, &r, err);
	if (rc < 0)
		return rc;
	if (o.rc < 0 && err != NULL && err->cls == PERR_NONE)
		*err = o.err;
	return o.rc;
}

int pop3_retr(struct pop3_client *c, unsigned msgnum,
              const struct pop3_sink *sink, struct proto_err *err)
{
	return retr_one(c, false, msgnum, 0, sink, err);
}

int pop3_top(struct pop3_client *c, unsigned msgnum, unsigned lines,
             const struct pop3_sink *sink, struct proto_err *err)
{
	return retr_one(c, true, msgnum, lines, sink, err);
}

/* The bytes of a message, into a growing buffer. */
static int grow_data(void *ctx, unsigned msgnum, const char *buf, size_t len)
{
	struct strbuf *g = ctx;

	(void)msgnum;
	strbuf_add(g, buf, len);
	return g->oom ? -ENOMEM : 0;
}

static int into_buf(struct pop3_client *c, bool top, unsigned msgnum,
                    unsigned lines, char **data_r, size_t *len_r,
                    struct proto_err *err)
{
	struct strbuf g = {0};
	struct pop3_sink sink = {.data = grow_data, .ctx = &g};
	size_t len;
	int rc;

	*data_r = NULL;
	*len_r = 0;
	rc = retr_one(c, top, msgnum, lines, &sink, err);
	if (rc < 0) {
		free(g.s);
		return rc;
	}
	len = g.len;
	*data_r = strbuf_take(&g); /* NUL-terminated */
	if (*data_r == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	*len_r = len;
	return 0;
}

int pop3_retr_buf(struct pop3_client *c, unsigned msgnum, char **data_r,
                  size_t *len_r, struct proto_err *err)
{
	return into_buf(c, false, msgnum, 0, data_r, len_r, err);
}

int pop3_top_buf(struct pop3_client *c, unsigned msgnum, unsigned lines,
                 char **data_r, size_t *len_r, struct proto_err *err)
{
	return into_buf(c, true, msgnum, lines, data_r, len_r, err);
}

/* --- DELE ------------------------------------------------------------ */

struct dele {
	const unsigned *msgnums;
	struct proto_err *err;
	int rc;
};

static int dele_format(void *ctx, size_t i, char *buf, size_t size)
{
	struct dele *d = ctx;

	return snprintf(buf, size, "DELE %u", d->msgnums[i]);
}

static int dele_reply(struct pop3_client *c, void *ctx, size_t i,
                      const struct pop3_status_line *st)
{
	struct dele *d = ctx;
	char what[48];
	int rc;

	if (st->status == POP3_OK)
		return 0;
	snprintf(what, sizeof(what), "DELE of message %u", d->msgnums[i]);
	rc = refused(c, st, -ENOENT, what, d->err);
	if (d->rc == 0)
		d->rc = rc;
	return 0;
}

static const struct pipe_ops dele_ops = {
        .format = dele_format,
        .reply = dele_reply,
};

int pop3_dele_many(struct pop3_client *c, const unsigned *msgnums, size_t n,
                   struct proto_err *err)
{
	struct dele d = {.msgnums = msgnums, .err = err};
	int rc;

	rc = run_pipeline(c, n, &dele_ops, &d, err);
	return rc < 0 ? rc : d.rc;
}

int pop3_dele(struct pop3_client *c, unsigned msgnum, struct proto_err *err)
{
	return pop3_dele_many(c, &msgnum, 1, err);
}
