/* The IMAP client's connection engine: state, capabilities, tagged and
 * pipelined commands, reading and dispatching responses, literals.  The
 * map of the client's files is in imap_conn_int.h. */
#include "proto/imap_conn_int.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/strbuf.h"

#define IMAP_DEFAULT_TIMEOUT_MS 30000

static const char *const state_names[] = {
        [IMAP_ST_CONNECTING] = "connecting",
        [IMAP_ST_GREETING] = "greeting",
        [IMAP_ST_STARTTLS] = "starttls",
        [IMAP_ST_NOT_AUTHENTICATED] = "not-authenticated",
        [IMAP_ST_AUTHENTICATING] = "authenticating",
        [IMAP_ST_AUTHENTICATED] = "authenticated",
        [IMAP_ST_SELECTED] = "selected",
        [IMAP_ST_LOGOUT] = "logout",
        [IMAP_ST_DEAD] = "dead",
};

void imap_conn_set_state(struct imap_client *c, enum imap_state st)
{
	if (c->state == st)
		return;
	log_debug("imap %s: %s -> %s", c->label, state_names[c->state],
	          state_names[st]);
	c->state = st;
}

/* The connection died (struct proto_fate). */
static void died(void *ctx)
{
	imap_conn_set_state(ctx, IMAP_ST_DEAD);
}

const struct proto_err *imap_error(const struct imap_client *c)
{
	return proto_fate_error(&c->fate);
}

/* --- capabilities ---------------------------------------------------- */

void imap_conn_caps_clear(struct imap_client *c)
{
	for (size_t i = 0; i < c->n_caps; i++)
		free(c->caps[i]);
	free(c->caps);
	c->caps = NULL;
	c->n_caps = 0;
}

/* Replace the capability list with the atoms of list (from "* CAPABILITY"
 * or a [CAPABILITY ...] response code). */
static int caps_set(struct imap_client *c, const struct imap_value *list)
{
	char **caps;
	size_t n = 0;

	caps = calloc(list->count ? list->count : 1, sizeof(*caps));
	if (caps == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < list->count; i++) {
		const char *s = imap_value_str(&list->list[i], NULL);

		if (s == NULL || list->list[i].type == IMAP_VALUE_LITERAL)
			continue;
		caps[n] = strdup(s);
		if (caps[n] == NULL) {
			while (n > 0)
				free(caps[--n]);
			free(caps);
			return -ENOMEM;
		}
		for (char *p = caps[n]; *p; p++)
			*p = (char)toupper((unsigned char)*p);
		n++;
	}
	imap_conn_caps_clear(c);
	c->caps = caps;
	c->n_caps = n;
	c->caps_gen++;
	return 0;
}

bool imap_has_cap(const struct imap_client *c, const char *cap)
{
	for (size_t i = 0; i < c->n_caps; i++)
		if (strcasecmp(c->caps[i], cap) == 0)
			return true;
	return false;
}

/* --- streamed literals ----------------------------------------------- */

/* The routed body will not complete: tell its sink, once. */
void imap_conn_route_abort(struct imap_client *c)
{
	if (!c->route.open)
		return;
	c->route.open = false;
	if (c->route.sink != NULL && c->route.sink->abort != NULL)
		c->route.sink->abort(c->route.ctx);
}

static int route_begin(struct imap_client *c, struct imap_streamed *s,
                       const struct imap_response *partial, uint64_t size)
{
	uint32_t uid = 0;

	/* The UID, if the server sent it before the body; else done()
	 * gives it. */
	if (imap_value_u32(
	            imap_fetch_item(imap_list_get(&partial->args, 0), "UID"),
	            &uid) < 0)
		uid = 0;
	s->buf = NULL;
	s->size = (size_t)size;
	s->len = 0;
	s->routed = true;
	c->route.used = true;
	c->route.open = true;
	c->route.index = c->n_streamed;
	c->route.failed = c->route.sink->begin(c->route.ctx, uid, size) < 0;
	c->n_streamed++;
	c->stream_active = true;
	return 0;
}

static int sink_begin(void *ctx, const struct imap_response *partial,
                      const char *item, uint64_t size)
{
	struct imap_client *c = ctx;
	struct imap_streamed *s;

	if (c->n_streamed >= IMAP_MAX_STREAMED)
		return -EMSGSIZE;
	if (size > SIZE_MAX - 1)
		return -EMSGSIZE;
	s = &c->streamed[c->n_streamed];
	s->routed = false;
	if (c->route.sink != NULL && !c->route.used && item != NULL &&
	    strcasecmp(item, "BODY[]") == 0 &&
	    imap_response_is(partial, "FETCH"))
		return route_begin(c, s, partial, size);
	s->buf = malloc((size_t)size + 1);
	if (s->buf == NULL)
		return -ENOMEM;
	s->size = (size_t)size;
	s->len = 0;
	c->n_streamed++;
	c->stream_active = true;
	return 0;
}

static int sink_data(void *ctx, const void *buf, size_t len)
{
	struct imap_client *c = ctx;
	struct imap_streamed *s = &c->streamed[c->n_streamed - 1];

	if (len > s->size - s->len)
		return -EPROTO;
	if (s->routed) {
		s->len += len;
		if (!c->route.failed &&
		    c->route.sink->data(c->route.ctx, buf, len) < 0)
			c->route.failed = true;
		return 0;
	}
	memcpy(s->buf + s->len, buf, len);
	s->len += len;
	return 0;
}

static int sink_end(void *ctx)
{
	struct imap_client *c = ctx;
	struct imap_streamed *s = &c->streamed[c->n_streamed - 1];

	if (!s->routed)
		s->buf[s->len] = '\0';
	c->stream_active = false;
	return 0;
}

static void sink_abort(void *ctx)
{
	struct imap_client *c = ctx;

	c->stream_active = false;
	imap_conn_route_abort(c);
}

static const struct imap_literal_sink client_sink = {
        .begin = sink_begin,
        .data = sink_data,
        .end = sink_end,
        .abort = sink_abort,
};

/* After each response: a routed body its handler did not take is
 * aborted, and the next response may route one again. */
static void streamed_clear(struct imap_client *c)
{
	for (size_t i = 0; i < c->n_streamed; i++) {
		free(c->streamed[i].buf);
		c->streamed[i].buf = NULL;
	}
	c->n_streamed = 0;
	imap_conn_route_abort(c);
	c->route.used = false;
}

bool imap_conn_find_streamed(const struct imap_value *root,
                             const struct imap_value *target, size_t *index)
{
	if (root == target)
		return true;
	if (root->type == IMAP_VALUE_STREAMED)
		(*index)++;
	if (root->type == IMAP_VALUE_LIST)
		for (size_t i = 0; i < root->count; i++)
			if (imap_conn_find_streamed(&root->list[i], target,
			                            index))
				return true;
	return false;
}

const char *imap_conn_value_bytes(struct imap_client *c,
                                  const struct imap_response *resp,
                                  const struct imap_value *v, size_t *len_r)
{
	size_t index = 0;

	*len_r = 0;
	if (v == NULL)
		return NULL;
	if (v->type != IMAP_VALUE_STREAMED)
		return imap_value_str(v, len_r);
	if (!imap_conn_find_streamed(&resp->args, v, &index) ||
	    index >= c->n_streamed || c->streamed[index].routed)
		return NULL;
	*len_r = c->streamed[index].len;
	return c->streamed[index].buf;
}

/* --- reading and dispatching ----------------------------------------- */

struct imap_pending *imap_conn_find_pending(struct imap_client *c, unsigned tag)
{
	for (size_t i = 0; i < c->n_inflight; i++)
		if (c->inflight[i].tag == tag)
			return &c->inflight[i];
	return NULL;
}

static void remove_pending(struct imap_client *c, struct imap_pending *p)
{
	size_t i = (size_t)(p - c->inflight);

	memmove(&c->inflight[i], &c->inflight[i + 1],
	        (c->n_inflight - i - 1) * sizeof(*p));
	c->n_inflight--;
}

static void complete(struct imap_client *c, struct imap_pending *p, int rc,
                     const struct imap_response *tagged)
{
	p->done = true;
	p->rc = rc;
	p->wants_cont = false;
	if (p->h.done != NULL)
		p->h.done(p->h.ctx, rc, tagged);
	(void)c;
}

/* The connection died: every command in flight completes with the error. */
void imap_conn_fail_all(struct imap_client *c)
{
	for (size_t i = 0; i < c->n_inflight; i++)
		if (!c->inflight[i].done)
			complete(c, &c->inflight[i], c->fate.err.code, NULL);
}

static bool parse_tag(const char *s, unsigned *tag_r)
{
	unsigned long v;
	char *end;

	if (s[0] != 'A' || !isdigit((unsigned char)s[1]))
		return false;
	errno = 0;
	v = strtoul(s + 1, &end, 10);
	if (errno != 0 || *end != '\0' || v > UINT32_MAX)
		return false;
	*tag_r = (unsigned)v;
	return true;
}

static void handle_code(struct imap_client *c, const struct imap_response *resp)
{
	if (resp->code != NULL && strcasecmp(resp->code, "CAPABILITY") == 0)
		caps_set(c, &resp->code_args);
}

/* Keep a response code and its simple arguments ("APPENDUID 38505 3955")
 * as text for the caller. */
void imap_conn_code_copy(struct imap_code *out,
                         const struct imap_response *resp)
{
	size_t used = 0;

	memset(out, 0, sizeof(*out));
	if (resp->code == NULL)
		return;
	snprintf(out->code, sizeof(out->code), "%s", resp->code);
	for (size_t i = 0; i < resp->code_args.count; i++) {
		const char *a = imap_value_str(&resp->code_args.list[i], NULL);
		int n;

		if (a == NULL || used >= sizeof(out->args))
			break;
		n = snprintf(out->args + used, sizeof(out->args) - used, "%s%s",
		             used ? " " : "", a);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

static int handle_tagged(struct imap_client *c,
                         const struct imap_response *resp)
{
	struct imap_pending *p;
	unsigned tag;
	int rc = 0, wait_ms;

	if (!parse_tag(resp->tag, &tag) ||
	    (p = imap_conn_find_pending(c, tag)) == NULL || p->done)
		return proto_fate_failf(
		        &c->fate, PERR_PROTOCOL, -EPROTO,
		        "%s answered a command that was not sent (tag "
		        "%.40s)",
		        c->host, resp->tag);
	handle_code(c, resp);
	if (resp->status == IMAP_STATUS_NO)
		rc = -EPERM;
	else if (resp->status == IMAP_STATUS_BAD)
		rc = -EINVAL;
	/* Before the login, a refusal stays one (a STARTTLS refused is
	 * final; a login refused for load is the caller's to judge). */
	if ((c->state == IMAP_ST_AUTHENTICATED ||
	     c->state == IMAP_ST_SELECTED) &&
	    imap_busy_parse(resp->code, resp->text, &wait_ms) ==
	            IMAP_BUSY_THROTTLED) {
		if (rc < 0) {
			/* It did not happen; the caller sends it again. */
			rc = -EAGAIN;
			imap_conn_pace_hold(c, wait_ms, resp->text);
		} else {
			imap_conn_pace_slowed(c, resp->text);
		}
	}
	if (rc < 0 && resp->code != NULL)
		snprintf(p->text, sizeof(p->text), "[%s] %s", resp->code,
		         resp->text);
	else if (rc < 0)
		snprintf(p->text, sizeof(p->text), "%s", resp->text);
	imap_conn_code_copy(&p->code, resp);
	complete(c, p, rc, resp);
	return 0;
}

static int handle_untagged(struct imap_client *c,
                           const struct imap_response *resp)
{
	handle_code(c, resp);
	if (resp->kind == IMAP_RESP_DATA &&
	    imap_response_is(resp, "CAPABILITY"))
		caps_set(c, &resp->args);
	if (resp->kind == IMAP_RESP_STATUS && resp->status == IMAP_STATUS_BYE &&
	    c->state != IMAP_ST_LOGOUT)
		/* Deliver it first (the greeting reader wants the text),
		 * then the connection is gone. */
		log_info("imap %s: server says BYE: %.200s", c->label,
		         resp->text);

	for (size_t i = 0; i < c->n_inflight; i++) {
		struct imap_pending *p = &c->inflight[i];

		if (!p->done && p->h.untagged != NULL) {
			p->h.untagged(p->h.ctx, resp);
			goto out;
		}
	}
	if (c->untagged_cb != NULL)
		c->untagged_cb(c->untagged_ctx, resp);
out:
	if (resp->kind == IMAP_RESP_STATUS && resp->status == IMAP_STATUS_BYE &&
	    c->state != IMAP_ST_LOGOUT && c->state != IMAP_ST_GREETING)
		return proto_fate_failf(&c->fate, PERR_BYE, -ECONNRESET,
		                        "%s closed the connection: %.200s",
		                        c->host, resp->text);
	return 0;
}

static int handle_continuation(struct imap_client *c,
                               const struct imap_response *resp)
{
	for (size_t i = 0; i < c->n_inflight; i++) {
		struct imap_pending *p = &c->inflight[i];

		if (!p->done && p->wants_cont) {
			if (p->cont == NULL) {
				/* A literal waits for this go-ahead. */
				p->wants_cont = false;
				return 0;
			}
			return p->cont(c, p, resp);
		}
	}
	return proto_fate_failf(
	        &c->fate, PERR_PROTOCOL, -EPROTO,
	        "%s sent a continuation request nobody asked for", c->host);
}

/* Read one complete response (more input is fetched as needed) and
 * dispatch it.  *resp_r, if not NULL, receives the response (owned). */
int imap_conn_read_one(struct imap_client *c, struct imap_response **resp_r)
{
	struct imap_response *resp = NULL;
	struct proto_err e = {0};
	int rc;

	if (resp_r != NULL)
		*resp_r = NULL;
	if (c->fate.dead)
		return c->fate.err.code;
	for (;;) {
		size_t len, used = 0;
		const char *buf = net_rbuf(c->net, &len);

		if (len > 0) {
			rc = imap_parser_feed(c->parser, buf, len, &used,
			                      &resp);
			net_consume(c->net, used);
			if (rc == IMAP_PARSE_DONE)
				break;
			if (rc == IMAP_PARSE_ERROR) {
				rc = proto_fate_failf(
				        &c->fate, PERR_PROTOCOL, -EPROTO,
				        "malformed response from %s: %s",
				        c->host, imap_parser_error(c->parser));
				imap_conn_fail_all(c);
				return rc;
			}
		}
		rc = net_fill(c->net, &e);
		if (rc < 0) {
			rc = proto_fate_fail(&c->fate, &e);
			imap_conn_fail_all(c);
			return rc;
		}
		if (c->input_cb != NULL)
			c->input_cb(c->input_ctx);
	}

	switch (resp->kind) {
	case IMAP_RESP_TAGGED: rc = handle_tagged(c, resp); break;
	case IMAP_RESP_CONTINUATION: rc = handle_continuation(c, resp); break;
	default: rc = handle_untagged(c, resp); break;
	}
	streamed_clear(c);
	if (rc < 0)
		imap_conn_fail_all(c);
	if (resp_r != NULL && rc == 0)
		*resp_r = resp;
	else
		imap_response_free(&resp);
	return rc < 0 ? rc : 0;
}

int imap_wait(struct imap_client *c, unsigned tag, struct proto_err *err)
{
	return imap_wait_code(c, tag, NULL, err);
}

int imap_wait_code(struct imap_client *c, unsigned tag,
                   struct imap_code *code_r, struct proto_err *err)
{
	struct imap_pending *p;
	int rc;

	for (;;) {
		p = imap_conn_find_pending(c, tag);
		if (p == NULL)
			return proto_err_set(err, PERR_LOCAL, -EINVAL,
			                     "no command with tag A%u", tag);
		if (p->done)
			break;
		rc = imap_conn_read_one(c, NULL);
		if (rc < 0 && c->fate.dead)
			continue; /* imap_conn_fail_all() completed p */
	}
	rc = p->rc;
	if (code_r != NULL)
		*code_r = p->code;
	if (rc == -EPERM)
		proto_err_set(err, PERR_NO, rc, "%s", p->text);
	else if (rc == -EINVAL)
		proto_err_set(err, PERR_BAD, rc, "%s", p->text);
	else if (rc == -EAGAIN && !c->fate.dead)
		proto_err_set(err, PERR_BUSY, rc,
		              "%s throttled the request: %s", c->host, p->text);
	remove_pending(c, p);
	if (rc < 0 && c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	return rc;
}

int imap_wait_all(struct imap_client *c, struct proto_err *err)
{
	int first = 0;

	while (c->n_inflight > 0) {
		int rc = imap_wait(c, c->inflight[0].tag, err);

		if (rc < 0 && first == 0)
			first = rc;
	}
	return first;
}

size_t imap_inflight(const struct imap_client *c)
{
	return c->n_inflight;
}

void imap_set_untagged_handler(struct imap_client *c,
                               void (*cb)(void *ctx,
                                          const struct imap_response *resp),
                               void *ctx)
{
	c->untagged_cb = cb;
	c->untagged_ctx = ctx;
}

void imap_set_input_hook(struct imap_client *c, void (*cb)(void *ctx),
                         void *ctx)
{
	c->input_cb = cb;
	c->input_ctx = ctx;
}

/* --- sending ----------------------------------------------------------- */

/* Can s be sent as a quoted string?  (Not if it has CR, LF, NUL or 8-bit
 * bytes; those go as a literal.) */
static bool quotable(const char *s)
{
	for (; *s; s++)
		if (*s == '\r' || *s == '\n' || (unsigned char)*s >= 0x80)
			return false;
	return true;
}

static struct imap_pending *add_pending(struct imap_client *c,
                                        const struct imap_handler *h)
{
	struct imap_pending *p;

	if (c->n_inflight == c->cap_inflight) {
		size_t ncap = c->cap_inflight ? c->cap_inflight * 2 : 8;
		struct imap_pending *n =
		        realloc(c->inflight, ncap * sizeof(*c->inflight));

		if (n == NULL)
			return NULL;
		c->inflight = n;
		c->cap_inflight = ncap;
	}
	p = &c->inflight[c->n_inflight++];
	memset(p, 0, sizeof(*p));
	p->tag = ++c->next_tag;
	if (h != NULL)
		p->h = *h;
	return p;
}

int imap_conn_send(struct imap_client *c, const char *buf, size_t len)
{
	struct proto_err e = {0};
	int rc = net_write(c->net, buf, len, &e);

	if (rc < 0) {
		rc = proto_fate_fail(&c->fate, &e);
		imap_conn_fail_all(c);
	}
	return rc;
}

/* Log a command line at debug level, hiding credentials. */
void imap_conn_log_command(struct imap_client *c, const char *line, size_t len)
{
	if (log_get_level() < LOG_DEBUG)
		return;
	if (strcasestr(line, " LOGIN ") != NULL ||
	    strcasestr(line, " AUTHENTICATE ") != NULL) {
		const char *sp = strchr(line, ' ');
		const char *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
		const char *sp3 = sp2 ? strchr(sp2 + 1, ' ') : NULL;
		int keep = sp3 ? (int)(sp3 - line) : (int)len;

		log_debug("imap %s: C: %.*s <hidden>", c->label, keep, line);
		return;
	}
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	log_debug("imap %s: C: %.*s", c->label, (int)(len > 500 ? 500 : len),
	          line);
}

/* Wait for the go-ahead for a synchronising literal.  Returns 0 when it
 * came, or the command's result if the server refused the command. */
int imap_conn_wait_continuation(struct imap_client *c, struct imap_pending *p)
{
	unsigned tag = p->tag;

	p->wants_cont = true;
	for (;;) {
		int rc;

		p = imap_conn_find_pending(c, tag);
		if (p->done)
			return 1; /* answered (refused) before the literal */
		if (!p->wants_cont)
			return 0;
		rc = imap_conn_read_one(c, NULL);
		if (rc < 0 && !c->fate.dead)
			return rc;
	}
}

int imap_conn_submit(struct imap_client *c, const struct imap_handler *h,
                     const struct imap_arg *args, size_t nargs, unsigned *tag_r,
                     struct imap_pending **p_r)
{
	bool literal_plus = imap_has_cap(c, "LITERAL+");
	bool literal_minus = imap_has_cap(c, "LITERAL-");
	struct strbuf b = {0};
	struct imap_pending *p;
	unsigned tag;
	int rc = 0;

	if (c->fate.dead)
		return c->fate.err.code;
	if (c->state != IMAP_ST_LOGOUT) {
		rc = imap_conn_pace_wait(c);
		if (rc < 0)
			return rc;
	}
	p = add_pending(c, h);
	if (p == NULL)
		return -ENOMEM;
	tag = p->tag;
	if (tag_r != NULL)
		*tag_r = tag;
	if (p_r != NULL)
		*p_r = p;
	strbuf_printf(&b, "A%u ", tag);

	for (size_t i = 0; i < nargs; i++) {
		const struct imap_arg *a = &args[i];
		const char *data = a->data;
		size_t len =
		        a->kind == IMAP_ARG_LITERAL ? a->len : strlen(a->data);
		bool sync;

		if (a->kind == IMAP_ARG_RAW) {
			strbuf_add(&b, data, len);
			continue;
		}
		if (a->kind == IMAP_ARG_ASTRING && quotable(data)) {
			strbuf_str(&b, "\"");
			for (size_t j = 0; j < len; j++) {
				if (data[j] == '"' || data[j] == '\\')
					strbuf_str(&b, "\\");
				strbuf_add(&b, &data[j], 1);
			}
			strbuf_str(&b, "\"");
			continue;
		}
		/* A literal: non-synchronising when the server allows it. */
		sync = !(literal_plus || (literal_minus && len <= 4096));
		strbuf_printf(&b, "{%zu%s}\r\n", len, sync ? "" : "+");
		if (b.oom) {
			rc = -ENOMEM;
			goto out;
		}
		imap_conn_log_command(c, b.s, b.len);
		rc = imap_conn_send(c, b.s, b.len);
		b.len = 0;
		if (rc < 0)
			goto out;
		if (sync) {
			rc = imap_conn_wait_continuation(
			        c, imap_conn_find_pending(c, tag));
			if (rc < 0)
				goto out;
			if (rc > 0) {
				/* The server already answered; imap_wait()
				 * collects the result. */
				rc = 0;
				goto out;
			}
		}
		rc = imap_conn_send(c, data, len);
		if (rc < 0)
			goto out;
	}
	strbuf_str(&b, "\r\n");
	if (b.oom) {
		rc = -ENOMEM;
		goto out;
	}
	imap_conn_log_command(c, b.s, b.len);
	rc = imap_conn_send(c, b.s, b.len);
out:
	strbuf_wipe(&b);
	if (rc == -ENOMEM)
		rc = proto_fate_failf(&c->fate, PERR_LOCAL, -ENOMEM,
		                      "out of memory");
	if (rc < 0) {
		p = imap_conn_find_pending(c, tag);
		if (p != NULL && !p->done)
			complete(c, p, rc, NULL);
	}
	return rc;
}

int imap_submitv(struct imap_client *c, const struct imap_handler *h,
                 const struct imap_arg *args, size_t nargs, unsigned *tag_r)
{
	return imap_conn_submit(c, h, args, nargs, tag_r, NULL);
}

int imap_submit(struct imap_client *c, const struct imap_handler *h,
                unsigned *tag_r, const char *fmt, ...)
{
	struct imap_arg arg = {.kind = IMAP_ARG_RAW};
	char *line = NULL;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return -ENOMEM;
	arg.data = line;
	rc = imap_submitv(c, h, &arg, 1, tag_r);
	free(line);
	return rc;
}

/* The error for a command that could not be sent. */
int imap_conn_submit_err(struct imap_client *c, int rc, struct proto_err *err)
{
	if (c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	if (rc == -EAGAIN)
		return proto_err_set(err, PERR_BUSY, rc,
		                     "%s asks to wait %lld s before the next "
		                     "request, longer than the timeout",
		                     c->host,
		                     (long long)imap_conn_pace_left(c) / 1000);
	return proto_err_set(err, PERR_LOCAL, rc, "cannot send command: %s",
	                     strerror(-rc));
}

/* After a throttled answer (-EAGAIN) to a command first sent at start:
 * may it go again?  Yes while the waiting it has cost, plus the wait
 * still ahead, stays within the timeout.  The wait itself happens in
 * imap_conn_pace_wait() when it is sent again. */
bool imap_conn_may_retry(struct imap_client *c, int rc, int64_t start)
{
	return rc == -EAGAIN && !c->fate.dead && !atomic_load(&c->stopping) &&
	       imap_conn_now_ms() - start + imap_conn_pace_left(c) <=
	               c->timeout_ms;
}

/* Send a command and wait for its answer (code_r may be NULL); a
 * throttled command is sent again as imap_conn_may_retry() allows: it did not
 * happen, so sending it again cannot do it twice. */
int imap_conn_exec(struct imap_client *c, const struct imap_handler *h,
                   const struct imap_arg *args, size_t nargs,
                   struct imap_code *code_r, struct proto_err *err)
{
	int64_t start = imap_conn_now_ms();

	for (;;) {
		struct proto_err e = {0};
		unsigned tag;
		int rc = imap_submitv(c, h, args, nargs, &tag);

		if (rc < 0)
			rc = imap_conn_submit_err(c, rc, &e);
		else
			rc = imap_wait_code(c, tag, code_r, &e);
		if (imap_conn_may_retry(c, rc, start))
			continue;
		if (rc < 0 && err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
}

/* Submit a simple command and wait for it; untagged responses on the way
 * go to untagged(ctx, resp) if given. */
int imap_conn_run(struct imap_client *c,
                  void (*untagged)(void *ctx, const struct imap_response *),
                  void *ctx, struct proto_err *err, const char *fmt, ...)
{
	struct imap_handler h = {.untagged = untagged, .ctx = ctx};
	struct imap_arg arg = {.kind = IMAP_ARG_RAW};
	char *line = NULL;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	arg.data = line;
	rc = imap_conn_exec(c, &h, &arg, 1, NULL, err);
	free(line);
	return rc;
}

int imap_conn_quote_name(const char *name, char **out_r)
{
	struct strbuf b = {0};

	strbuf_str(&b, "\"");
	for (const char *p = name; *p; p++) {
		if (*p == '"' || *p == '\\')
			strbuf_str(&b, "\\");
		strbuf_add(&b, p, 1);
	}
	strbuf_str(&b, "\"");
	if (b.oom || !quotable(name)) {
		free(b.s);
		return -EINVAL;
	}
	*out_r = b.s;
	return 0;
}

/* --- making and ending a client ---------------------------------------- */

int imap_conn_new(struct imap_client **c_r, const struct imap_config *cfg,
                  struct proto_err *err)
{
	struct imap_parser_limits lim;
	struct imap_client *c;
	int timeout =
	        cfg->timeout_ms > 0 ? cfg->timeout_ms : IMAP_DEFAULT_TIMEOUT_MS;
	int rc;

	*c_r = NULL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	imap_pace_init(&c->own_pace);
	c->pace = cfg->pace != NULL ? cfg->pace : &c->own_pace;
	c->timeout_ms = timeout;
	atomic_init(&c->stopping, false);
	c->host = strdup(cfg->host);
	if (c->host == NULL ||
	    asprintf(&c->label, "%s@%s", cfg->user ? cfg->user : "",
	             cfg->host) < 0) {
		c->label = NULL;
		rc = proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
		goto fail;
	}
	proto_fate_init(&c->fate, "imap", c->label, died, c);
	imap_parser_limits_default(&lim);
	lim.max_literal = IMAP_MAX_LITERAL;
	lim.stream_threshold = IMAP_STREAM_THRESHOLD;
	rc = imap_parser_new(&lim, &c->parser);
	if (rc < 0) {
		rc = proto_err_set(err, PERR_LOCAL, rc, "out of memory");
		goto fail;
	}
	imap_parser_set_sink(c->parser, &client_sink, c);
	*c_r = c;
	return 0;
fail:
	imap_free(&c);
	return rc;
}

/* What compression saved on this connection, at debug level. */
static void log_compress_stats(struct imap_client *c)
{
	struct compress_stats st;

	if (c->net == NULL || !net_compress_stats(c->net, &st))
		return;
	log_debug("imap %s: compressed: read %llu bytes as %llu, wrote %llu "
	          "bytes as %llu",
	          c->label, (unsigned long long)st.in_plain,
	          (unsigned long long)st.in_raw,
	          (unsigned long long)st.out_plain,
	          (unsigned long long)st.out_raw);
}

void imap_free(struct imap_client **cp)
{
	struct imap_client *c = *cp;

	if (c == NULL)
		return;
	imap_parser_free(&c->parser);
	streamed_clear(c);
	log_compress_stats(c);
	net_close(&c->net);
	imap_conn_caps_clear(c);
	free(c->inflight);
	free(c->selected);
	free(c->label);
	free(c->host);
	imap_pace_destroy(&c->own_pace);
	free(c);
	*cp = NULL;
}

void imap_logout(struct imap_client **cp)
{
	struct imap_client *c = *cp;

	if (c == NULL)
		return;
	/* Nothing goes out while the server asks to wait, not even this. */
	if (!c->fate.dead && c->net != NULL && imap_conn_pace_left(c) == 0) {
		unsigned tag;

		/* Best effort with a short wait: the server may be gone. */
		net_set_timeout(c->net, 2000);
		imap_conn_set_state(c, IMAP_ST_LOGOUT);
		if (imap_submit(c, NULL, &tag, "LOGOUT") == 0)
			imap_wait(c, tag, NULL);
	}
	imap_free(cp);
}

int imap_poll(struct imap_client *c)
{
	for (;;) {
		struct proto_err e = {0};
		size_t len;
		int rc;

		if (c->fate.dead)
			return c->fate.err.code;
		net_rbuf(c->net, &len);
		if (len == 0) {
			rc = net_fill_wait(c->net, 0, &e);
			if (rc < 0) {
				proto_fate_fail(&c->fate, &e);
				imap_conn_fail_all(c);
				return c->fate.err.code;
			}
			if (rc == 0)
				return 0;
		}
		rc = imap_conn_read_one(c, NULL);
		if (rc < 0)
			return c->fate.dead ? c->fate.err.code : rc;
	}
}

void imap_shutdown(struct imap_client *c)
{
	if (c != NULL)
		atomic_store(&c->stopping, true);
	if (c != NULL && c->net != NULL)
		net_shutdown(c->net);
}
