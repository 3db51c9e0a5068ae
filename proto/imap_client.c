#include "proto/imap_client.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/sasl.h"
#include "proto/strbuf.h"

#define IMAP_DEFAULT_TIMEOUT_MS 30000
/* Largest message we accept from a server.  Bigger than any mail system
 * delivers; it bounds what a hostile server can make us allocate. */
#define IMAP_MAX_LITERAL        (1024ULL * 1024 * 1024)
/* Literals at least this big skip the parser's tree and are collected in
 * exactly-sized buffers (one copy of a big body, not two). */
#define IMAP_STREAM_THRESHOLD   (256 * 1024)
#define IMAP_MAX_STREAMED       8 /* streamed literals in one response */
/* A throttled command that names no back-off time waits this long; a
 * named time shorter than PACE_MIN_MS is taken as PACE_MIN_MS. */
#define PACE_DEFAULT_MS         1000
#define PACE_MIN_MS             100
/* Longest back-off taken from a server (it is bounded by the timeout
 * anyway; this keeps the arithmetic sane). */
#define PACE_MAX_MS             (24 * 3600 * 1000)
#define PACE_SLICE_MS           100 /* a pacing wait looks at shutdown */

enum imap_state {
	IMAP_ST_CONNECTING,
	IMAP_ST_GREETING,
	IMAP_ST_STARTTLS,
	IMAP_ST_NOT_AUTHENTICATED,
	IMAP_ST_AUTHENTICATING,
	IMAP_ST_AUTHENTICATED,
	IMAP_ST_SELECTED,
	IMAP_ST_LOGOUT,
	IMAP_ST_DEAD,
};

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

struct imap_client;

/* A command in flight. */
struct pending {
	unsigned tag;
	bool done;
	int rc;
	struct imap_handler h;
	/* Internal: called for a continuation request ("+ ...") while this
	 * command waits for one (AUTHENTICATE).  Returns 0 or an error. */
	int (*cont)(struct imap_client *c, struct pending *p,
	            const struct imap_response *resp);
	void *cont_ctx;
	bool wants_cont;
	/* The server's text of a NO or BAD, for the caller's error. */
	char text[400];
	/* The response code of the tagged answer and its arguments. */
	struct imap_code code;
};

struct streamed {
	char *buf; /* owned; NULL when routed */
	size_t len, size;
	bool routed; /* the bytes went to the body sink (struct route) */
};

/* While imap_fetch_bodies_stream() runs, the first streamed BODY[] literal
 * of each FETCH response goes to its sink as it arrives, not to memory. */
struct route {
	const struct imap_body_sink *sink; /* borrowed; NULL: no fetch */
	void *ctx;                         /* borrowed */
	bool used;    /* a literal of the current response was routed */
	bool open;    /* begin called, done or abort not yet */
	bool failed;  /* begin or data failed: the rest is dropped */
	size_t index; /* its slot in streamed[] */
};

struct imap_client {
	struct net_conn *net;       /* owned */
	struct imap_parser *parser; /* owned */
	enum imap_state state;
	char *host;  /* owned */
	char *label; /* owned: "user@host" for log lines */
	unsigned next_tag;

	struct pending *inflight; /* owned array, oldest first */
	size_t n_inflight, cap_inflight;

	char **caps; /* owned, upper-cased */
	size_t n_caps;
	unsigned caps_gen; /* bumped whenever the list is replaced */

	char *selected; /* owned, raw name, or NULL */
	bool selected_writable;
	bool qresync; /* ENABLE QRESYNC succeeded */

	void (*untagged_cb)(void *ctx, const struct imap_response *resp);
	void *untagged_ctx;
	void (*input_cb)(void *ctx);
	void *input_ctx;

	/* Streamed literals of the response being parsed, in order. */
	struct streamed streamed[IMAP_MAX_STREAMED];
	size_t n_streamed;
	bool stream_active;
	struct route route;

	int timeout_ms;
	struct imap_pace *pace;    /* borrowed, or &own_pace */
	struct imap_pace own_pace; /* when the config shares none */
	atomic_bool stopping;      /* imap_shutdown() was called */

	struct proto_fate fate; /* alive, or dead and why */
};

static int64_t mono_ms(void);

static void set_state(struct imap_client *c, enum imap_state st)
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
	set_state(ctx, IMAP_ST_DEAD);
}

const struct proto_err *imap_error(const struct imap_client *c)
{
	return proto_fate_error(&c->fate);
}

/* --- pacing: what the server says about load --------------------------- */

enum { PACE_LOG_THROTTLED = 1, PACE_LOG_SLOWED = 2, PACE_LOG_REFUSED = 4 };

void imap_pace_init(struct imap_pace *p)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
}

void imap_pace_destroy(struct imap_pace *p)
{
	pthread_mutex_destroy(&p->lock);
}

bool imap_pace_refused(struct imap_pace *p)
{
	bool first;

	pthread_mutex_lock(&p->lock);
	p->refused++;
	first = !(p->logged & PACE_LOG_REFUSED);
	p->logged |= PACE_LOG_REFUSED;
	pthread_mutex_unlock(&p->lock);
	return first;
}

void imap_pace_report(struct imap_pace *p)
{
	unsigned t, s, r;

	pthread_mutex_lock(&p->lock);
	t = p->throttled;
	s = p->slowed;
	r = p->refused;
	pthread_mutex_unlock(&p->lock);
	if (t + s + r > 0)
		log_notice("the server throttled %u command%s, slowed %u "
		           "answer%s and refused %u connection%s (too many) "
		           "during this mount",
		           t, t == 1 ? "" : "s", s, s == 1 ? "" : "s", r,
		           r == 1 ? "" : "s");
}

static bool has_word(const char *text, const char *word)
{
	return text != NULL && strcasestr(text, word) != NULL;
}

enum imap_busy imap_busy_parse(const char *code, const char *text,
                               int *wait_ms_r)
{
	static const char backoff[] = "Suggested Backoff Time:";
	const char *b = text ? strcasestr(text, backoff) : NULL;

	*wait_ms_r = 0;
	if (has_word(text, "Too many simultaneous connections") ||
	    has_word(text, "Maximum number of connections") ||
	    has_word(text, "Too many connections"))
		return IMAP_BUSY_TOO_MANY;
	if (b != NULL) {
		char *end;
		long ms;

		errno = 0;
		ms = strtol(b + sizeof(backoff) - 1, &end, 10);
		if (errno == 0 && end != b + sizeof(backoff) - 1 && ms >= 0)
			*wait_ms_r = ms > PACE_MAX_MS ? PACE_MAX_MS : (int)ms;
		return IMAP_BUSY_THROTTLED;
	}
	if ((code != NULL && (strcasecmp(code, "THROTTLED") == 0 ||
	                      strcasecmp(code, "UNAVAILABLE") == 0)) ||
	    has_word(text, "[THROTTLED]") ||
	    has_word(text, "Request is throttled"))
		return IMAP_BUSY_THROTTLED;
	return IMAP_BUSY_NONE;
}

/* The server throttled a command: nothing goes out on any connection of
 * the account for ms. */
static void pace_hold(struct imap_client *c, int ms, const char *text)
{
	struct imap_pace *p = c->pace;
	int64_t until;
	bool first;

	if (ms <= 0)
		ms = PACE_DEFAULT_MS;
	else if (ms < PACE_MIN_MS)
		ms = PACE_MIN_MS;
	until = mono_ms() + ms;
	pthread_mutex_lock(&p->lock);
	if (p->until_ms < until)
		p->until_ms = until;
	p->throttled++;
	first = !(p->logged & PACE_LOG_THROTTLED);
	p->logged |= PACE_LOG_THROTTLED;
	pthread_mutex_unlock(&p->lock);
	if (first)
		log_warn("imap %s: the server is throttling requests (%.200s): "
		         "waiting %d ms as told before sending anything, then "
		         "sending the command again (logged once; counted)",
		         c->label, text, ms);
	else
		log_debug("imap %s: throttled, waiting %d ms", c->label, ms);
}

static void pace_slowed(struct imap_client *c, const char *text)
{
	struct imap_pace *p = c->pace;
	bool first;

	pthread_mutex_lock(&p->lock);
	p->slowed++;
	first = !(p->logged & PACE_LOG_SLOWED);
	p->logged |= PACE_LOG_SLOWED;
	pthread_mutex_unlock(&p->lock);
	if (first)
		log_notice("imap %s: the server says it slowed its answers "
		           "down (%.200s) (logged once; counted)",
		           c->label, text);
}

/* How long the account must still wait before sending, in ms (0: go). */
static int64_t pace_left(struct imap_client *c)
{
	int64_t left;

	pthread_mutex_lock(&c->pace->lock);
	left = c->pace->until_ms - mono_ms();
	pthread_mutex_unlock(&c->pace->lock);
	return left > 0 ? left : 0;
}

/* Wait until the account may send again.  -EAGAIN, at once, when the
 * wait would be longer than the timeout; -ESHUTDOWN when imap_shutdown()
 * was called meanwhile. */
static int pace_wait(struct imap_client *c)
{
	for (;;) {
		int64_t left = pace_left(c);
		struct timespec ts;

		if (left == 0)
			return 0;
		if (left > c->timeout_ms)
			return -EAGAIN;
		if (atomic_load(&c->stopping))
			return -ESHUTDOWN;
		if (left > PACE_SLICE_MS)
			left = PACE_SLICE_MS;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000000L;
		nanosleep(&ts, NULL);
	}
}

/* --- capabilities ---------------------------------------------------- */

static void caps_clear(struct imap_client *c)
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
	caps_clear(c);
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
static void route_abort(struct imap_client *c)
{
	if (!c->route.open)
		return;
	c->route.open = false;
	if (c->route.sink != NULL && c->route.sink->abort != NULL)
		c->route.sink->abort(c->route.ctx);
}

static int route_begin(struct imap_client *c, struct streamed *s,
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
	struct streamed *s;

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
	struct streamed *s = &c->streamed[c->n_streamed - 1];

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
	struct streamed *s = &c->streamed[c->n_streamed - 1];

	if (!s->routed)
		s->buf[s->len] = '\0';
	c->stream_active = false;
	return 0;
}

static void sink_abort(void *ctx)
{
	struct imap_client *c = ctx;

	c->stream_active = false;
	route_abort(c);
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
	route_abort(c);
	c->route.used = false;
}

/* The bytes of v, whether kept in the tree or streamed.  The streamed
 * literals of a response are matched to its STREAMED values in order. */
static const char *value_bytes(struct imap_client *c,
                               const struct imap_response *resp,
                               const struct imap_value *v, size_t *len_r);

static bool find_streamed(const struct imap_value *root,
                          const struct imap_value *target, size_t *index)
{
	if (root == target)
		return true;
	if (root->type == IMAP_VALUE_STREAMED)
		(*index)++;
	if (root->type == IMAP_VALUE_LIST)
		for (size_t i = 0; i < root->count; i++)
			if (find_streamed(&root->list[i], target, index))
				return true;
	return false;
}

static const char *value_bytes(struct imap_client *c,
                               const struct imap_response *resp,
                               const struct imap_value *v, size_t *len_r)
{
	size_t index = 0;

	*len_r = 0;
	if (v == NULL)
		return NULL;
	if (v->type != IMAP_VALUE_STREAMED)
		return imap_value_str(v, len_r);
	if (!find_streamed(&resp->args, v, &index) || index >= c->n_streamed ||
	    c->streamed[index].routed)
		return NULL;
	*len_r = c->streamed[index].len;
	return c->streamed[index].buf;
}

/* --- reading and dispatching ----------------------------------------- */

static struct pending *find_pending(struct imap_client *c, unsigned tag)
{
	for (size_t i = 0; i < c->n_inflight; i++)
		if (c->inflight[i].tag == tag)
			return &c->inflight[i];
	return NULL;
}

static void remove_pending(struct imap_client *c, struct pending *p)
{
	size_t i = (size_t)(p - c->inflight);

	memmove(&c->inflight[i], &c->inflight[i + 1],
	        (c->n_inflight - i - 1) * sizeof(*p));
	c->n_inflight--;
}

static void complete(struct imap_client *c, struct pending *p, int rc,
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
static void fail_all(struct imap_client *c)
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
static void code_copy(struct imap_code *out, const struct imap_response *resp)
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
	struct pending *p;
	unsigned tag;
	int rc = 0, wait_ms;

	if (!parse_tag(resp->tag, &tag) || (p = find_pending(c, tag)) == NULL ||
	    p->done)
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
			pace_hold(c, wait_ms, resp->text);
		} else {
			pace_slowed(c, resp->text);
		}
	}
	if (rc < 0 && resp->code != NULL)
		snprintf(p->text, sizeof(p->text), "[%s] %s", resp->code,
		         resp->text);
	else if (rc < 0)
		snprintf(p->text, sizeof(p->text), "%s", resp->text);
	code_copy(&p->code, resp);
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
		struct pending *p = &c->inflight[i];

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
		struct pending *p = &c->inflight[i];

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
static int read_one(struct imap_client *c, struct imap_response **resp_r)
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
				fail_all(c);
				return rc;
			}
		}
		rc = net_fill(c->net, &e);
		if (rc < 0) {
			rc = proto_fate_fail(&c->fate, &e);
			fail_all(c);
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
		fail_all(c);
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
	struct pending *p;
	int rc;

	for (;;) {
		p = find_pending(c, tag);
		if (p == NULL)
			return proto_err_set(err, PERR_LOCAL, -EINVAL,
			                     "no command with tag A%u", tag);
		if (p->done)
			break;
		rc = read_one(c, NULL);
		if (rc < 0 && c->fate.dead)
			continue; /* fail_all() completed p */
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

static struct pending *add_pending(struct imap_client *c,
                                   const struct imap_handler *h)
{
	struct pending *p;

	if (c->n_inflight == c->cap_inflight) {
		size_t ncap = c->cap_inflight ? c->cap_inflight * 2 : 8;
		struct pending *n =
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

static int send_buf(struct imap_client *c, const char *buf, size_t len)
{
	struct proto_err e = {0};
	int rc = net_write(c->net, buf, len, &e);

	if (rc < 0) {
		rc = proto_fate_fail(&c->fate, &e);
		fail_all(c);
	}
	return rc;
}

/* Log a command line at debug level, hiding credentials. */
static void log_command(struct imap_client *c, const char *line, size_t len)
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
static int wait_continuation(struct imap_client *c, struct pending *p)
{
	unsigned tag = p->tag;

	p->wants_cont = true;
	for (;;) {
		int rc;

		p = find_pending(c, tag);
		if (p->done)
			return 1; /* answered (refused) before the literal */
		if (!p->wants_cont)
			return 0;
		rc = read_one(c, NULL);
		if (rc < 0 && !c->fate.dead)
			return rc;
	}
}

static int submit_internal(struct imap_client *c, const struct imap_handler *h,
                           const struct imap_arg *args, size_t nargs,
                           unsigned *tag_r, struct pending **p_r)
{
	bool literal_plus = imap_has_cap(c, "LITERAL+");
	bool literal_minus = imap_has_cap(c, "LITERAL-");
	struct strbuf b = {0};
	struct pending *p;
	unsigned tag;
	int rc = 0;

	if (c->fate.dead)
		return c->fate.err.code;
	if (c->state != IMAP_ST_LOGOUT) {
		rc = pace_wait(c);
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
		log_command(c, b.s, b.len);
		rc = send_buf(c, b.s, b.len);
		b.len = 0;
		if (rc < 0)
			goto out;
		if (sync) {
			rc = wait_continuation(c, find_pending(c, tag));
			if (rc < 0)
				goto out;
			if (rc > 0) {
				/* The server already answered; imap_wait()
				 * collects the result. */
				rc = 0;
				goto out;
			}
		}
		rc = send_buf(c, data, len);
		if (rc < 0)
			goto out;
	}
	strbuf_str(&b, "\r\n");
	if (b.oom) {
		rc = -ENOMEM;
		goto out;
	}
	log_command(c, b.s, b.len);
	rc = send_buf(c, b.s, b.len);
out:
	strbuf_wipe(&b);
	if (rc == -ENOMEM)
		rc = proto_fate_failf(&c->fate, PERR_LOCAL, -ENOMEM,
		                      "out of memory");
	if (rc < 0) {
		p = find_pending(c, tag);
		if (p != NULL && !p->done)
			complete(c, p, rc, NULL);
	}
	return rc;
}

int imap_submitv(struct imap_client *c, const struct imap_handler *h,
                 const struct imap_arg *args, size_t nargs, unsigned *tag_r)
{
	return submit_internal(c, h, args, nargs, tag_r, NULL);
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
static int submit_err(struct imap_client *c, int rc, struct proto_err *err)
{
	if (c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	if (rc == -EAGAIN)
		return proto_err_set(err, PERR_BUSY, rc,
		                     "%s asks to wait %lld s before the next "
		                     "request, longer than the timeout",
		                     c->host, (long long)pace_left(c) / 1000);
	return proto_err_set(err, PERR_LOCAL, rc, "cannot send command: %s",
	                     strerror(-rc));
}

/* After a throttled answer (-EAGAIN) to a command first sent at start:
 * may it go again?  Yes while the waiting it has cost, plus the wait
 * still ahead, stays within the timeout.  The wait itself happens in
 * pace_wait() when it is sent again. */
static bool may_retry(struct imap_client *c, int rc, int64_t start)
{
	return rc == -EAGAIN && !c->fate.dead && !atomic_load(&c->stopping) &&
	       mono_ms() - start + pace_left(c) <= c->timeout_ms;
}

/* Send a command and wait for its answer (code_r may be NULL); a
 * throttled command is sent again as may_retry() allows: it did not
 * happen, so sending it again cannot do it twice. */
static int exec(struct imap_client *c, const struct imap_handler *h,
                const struct imap_arg *args, size_t nargs,
                struct imap_code *code_r, struct proto_err *err)
{
	int64_t start = mono_ms();

	for (;;) {
		struct proto_err e = {0};
		unsigned tag;
		int rc = imap_submitv(c, h, args, nargs, &tag);

		if (rc < 0)
			rc = submit_err(c, rc, &e);
		else
			rc = imap_wait_code(c, tag, code_r, &e);
		if (may_retry(c, rc, start))
			continue;
		if (rc < 0 && err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
}

/* Submit a simple command and wait for it; untagged responses on the way
 * go to untagged(ctx, resp) if given. */
static int run_cmd(struct imap_client *c,
                   void (*untagged)(void *ctx, const struct imap_response *),
                   void *ctx, struct proto_err *err, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
static int run_cmd(struct imap_client *c,
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
	rc = exec(c, &h, &arg, 1, NULL, err);
	free(line);
	return rc;
}

/* --- connecting and authenticating ----------------------------------- */

static int read_greeting(struct imap_client *c, bool *preauth_r,
                         struct proto_err *err)
{
	struct imap_response *resp = NULL;
	int rc;

	set_state(c, IMAP_ST_GREETING);
	rc = read_one(c, &resp);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (resp->kind != IMAP_RESP_STATUS ||
	    (resp->status != IMAP_STATUS_OK &&
	     resp->status != IMAP_STATUS_PREAUTH &&
	     resp->status != IMAP_STATUS_BYE)) {
		imap_response_free(&resp);
		rc = proto_fate_failf(&c->fate, PERR_PROTOCOL, -EPROTO,
		                      "%s did not greet like an IMAP server",
		                      c->host);
		return proto_fate_rc(&c->fate, err);
	}
	if (resp->status == IMAP_STATUS_BYE) {
		bool busy = imap_busy_parse(resp->code, resp->text,
		                            &(int){0}) == IMAP_BUSY_TOO_MANY;

		rc = proto_fate_failf(&c->fate, busy ? PERR_BUSY : PERR_BYE,
		                      busy ? -EUSERS : -ECONNREFUSED,
		                      "%s refused the connection: %.300s",
		                      c->host, resp->text);
		imap_response_free(&resp);
		return proto_fate_rc(&c->fate, err);
	}
	*preauth_r = resp->status == IMAP_STATUS_PREAUTH;
	imap_response_free(&resp);
	return 0;
}

static int refresh_caps(struct imap_client *c, struct proto_err *err)
{
	return run_cmd(c, NULL, NULL, err, "CAPABILITY");
}

static int do_starttls(struct imap_client *c, const struct imap_config *cfg,
                       struct proto_err *err)
{
	struct net_tls_opts tls = {.cafile = cfg->cafile};
	struct proto_err e = {0};
	int rc;

	if (c->n_caps == 0) {
		rc = refresh_caps(c, err);
		if (rc < 0)
			return rc;
	}
	if (!imap_has_cap(c, "STARTTLS"))
		return proto_err_set(err, PERR_NOTLS, -EPROTONOSUPPORT,
		                     "%s does not offer STARTTLS; refusing to "
		                     "send the password in plaintext (use "
		                     "imaps://, or -o notls for testing)",
		                     c->host);
	set_state(c, IMAP_ST_STARTTLS);
	rc = run_cmd(c, NULL, NULL, &e, "STARTTLS");
	if (rc == -EPERM || rc == -EINVAL)
		return proto_err_set(err, PERR_NOTLS, -EPROTONOSUPPORT,
		                     "%s refused STARTTLS: %s", c->host,
		                     e.text);
	if (rc < 0) {
		if (err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
	proto_err_clear(&e);
	/* The capabilities from before TLS could have been forged. */
	caps_clear(c);
	rc = net_start_tls(c->net, &tls, &e);
	if (rc < 0) {
		proto_fate_fail(&c->fate, &e);
		return proto_fate_rc(&c->fate, err);
	}
	set_state(c, IMAP_ST_NOT_AUTHENTICATED);
	return refresh_caps(c, err);
}

struct auth_ctx {
	const char *mech;
	char *initial; /* owned secret: base64 initial response */
	bool sent;     /* initial response sent */
	bool oauth;
};

/* A continuation during AUTHENTICATE: send the initial response if it has
 * not gone with the command (no SASL-IR); after that a continuation is
 * the server's error challenge (XOAUTH2, OAUTHBEARER), to which the
 * client answers with an empty response (RFC 7628: a lone ^A) so that the
 * server sends its tagged NO. */
static int auth_cont(struct imap_client *c, struct pending *p,
                     const struct imap_response *resp)
{
	struct auth_ctx *a = p->cont_ctx;
	int rc;

	(void)resp;
	if (!a->sent) {
		a->sent = true;
		rc = send_buf(c, a->initial, strlen(a->initial));
		if (rc == 0)
			rc = send_buf(c, "\r\n", 2);
		return rc;
	}
	if (a->oauth && strcmp(a->mech, "OAUTHBEARER") == 0)
		return send_buf(c, "AQ==\r\n", 6);
	return send_buf(c, "\r\n", 2);
}

static int authenticate_sasl(struct imap_client *c, struct auth_ctx *a,
                             struct proto_err *err)
{
	struct imap_arg args[3];
	struct pending *p;
	size_t nargs = 0;
	unsigned tag;
	int rc;

	args[nargs++] = (struct imap_arg){IMAP_ARG_RAW, "AUTHENTICATE ", 0};
	args[nargs++] = (struct imap_arg){IMAP_ARG_RAW, a->mech, 0};
	if (imap_has_cap(c, "SASL-IR")) {
		args[nargs++] = (struct imap_arg){IMAP_ARG_RAW, NULL, 0};
		a->sent = true;
	}
	if (a->sent) {
		char *line = NULL;

		if (asprintf(&line, " %s", a->initial) < 0)
			return proto_err_set(err, PERR_LOCAL, -ENOMEM,
			                     "out of memory");
		args[2].data = line;
		rc = submit_internal(c, NULL, args, nargs, &tag, &p);
		explicit_bzero(line, strlen(line));
		free(line);
	} else {
		rc = submit_internal(c, NULL, args, nargs, &tag, &p);
	}
	if (rc < 0)
		return submit_err(c, rc, err);
	p = find_pending(c, tag);
	p->cont = auth_cont;
	p->cont_ctx = a;
	p->wants_cont = true;
	return imap_wait(c, tag, err);
}

static int authenticate(struct imap_client *c, const struct imap_config *cfg,
                        struct proto_err *err)
{
	struct proto_err e = {0};
	struct auth_ctx a = {0};
	int rc;

	set_state(c, IMAP_ST_AUTHENTICATING);
	if (cfg->oauth2_token != NULL) {
		a.oauth = true;
		if (imap_has_cap(c, "AUTH=OAUTHBEARER")) {
			a.mech = "OAUTHBEARER";
			rc = sasl_oauthbearer(cfg->user, cfg->host,
			                      (unsigned)atoi(cfg->port),
			                      cfg->oauth2_token, &a.initial);
		} else if (imap_has_cap(c, "AUTH=XOAUTH2")) {
			a.mech = "XOAUTH2";
			rc = sasl_xoauth2(cfg->user, cfg->oauth2_token,
			                  &a.initial);
		} else {
			return proto_err_set(
			        err, PERR_AUTH, -EPROTONOSUPPORT,
			        "%s offers neither OAUTHBEARER nor "
			        "XOAUTH2 for oauth2_cmd",
			        c->host);
		}
		if (rc < 0)
			return proto_err_set(err, PERR_LOCAL, rc,
			                     "out of memory");
		rc = authenticate_sasl(c, &a, &e);
	} else if (imap_has_cap(c, "AUTH=PLAIN")) {
		a.mech = "PLAIN";
		rc = sasl_plain(NULL, cfg->user, cfg->password, &a.initial);
		if (rc < 0)
			return proto_err_set(err, PERR_LOCAL, rc,
			                     "out of memory");
		rc = authenticate_sasl(c, &a, &e);
	} else if (!imap_has_cap(c, "LOGINDISABLED")) {
		struct imap_arg args[] = {
		        {IMAP_ARG_RAW, "LOGIN ", 0},
		        {IMAP_ARG_ASTRING, cfg->user, 0},
		        {IMAP_ARG_RAW, " ", 0},
		        {IMAP_ARG_ASTRING, cfg->password, 0},
		};
		unsigned tag;

		rc = imap_submitv(c, NULL, args, 4, &tag);
		if (rc == 0)
			rc = imap_wait(c, tag, &e);
		else
			rc = submit_err(c, rc, &e);
	} else {
		return proto_err_set(err, PERR_AUTH, -EPROTONOSUPPORT,
		                     "%s allows neither AUTHENTICATE PLAIN nor "
		                     "LOGIN (LOGINDISABLED)",
		                     c->host);
	}
	sasl_free_secret(&a.initial);
	if ((rc == -EPERM || rc == -EINVAL) &&
	    imap_busy_parse(NULL, e.text, &(int){0}) == IMAP_BUSY_TOO_MANY)
		/* Not the credentials: the account has too many
		 * connections (Gmail, Dovecot).  Try again later. */
		return proto_err_set(err, PERR_BUSY, -EUSERS,
		                     "%s refused another connection for %s: %s",
		                     c->host, cfg->user, e.text);
	if ((rc == -EPERM || rc == -EINVAL) &&
	    (imap_busy_parse(NULL, e.text, &(int){0}) == IMAP_BUSY_THROTTLED ||
	     strncasecmp(e.text, "[UNAVAILABLE]", 13) == 0))
		return proto_err_set(err, PERR_BUSY, -EAGAIN,
		                     "%s cannot log %s in now: %s", c->host,
		                     cfg->user, e.text);
	if (rc == -EPERM || rc == -EINVAL)
		return proto_err_set(err, PERR_AUTH, -EACCES,
		                     "%s refused the login for %s: %s", c->host,
		                     cfg->user, e.text);
	if (rc < 0) {
		if (err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
	set_state(c, IMAP_ST_AUTHENTICATED);
	return 0;
}

int imap_connect(struct imap_client **client_r, const struct imap_config *cfg,
                 struct proto_err *err)
{
	struct net_tls_opts tls = {.cafile = cfg->cafile};
	struct imap_parser_limits lim;
	struct imap_client *c;
	bool preauth = false;
	int timeout =
	        cfg->timeout_ms > 0 ? cfg->timeout_ms : IMAP_DEFAULT_TIMEOUT_MS;
	int rc;

	*client_r = NULL;
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
	c->fate.proto = "imap";
	c->fate.label = c->label;
	c->fate.died = died;
	c->fate.ctx = c;
	imap_parser_limits_default(&lim);
	lim.max_literal = IMAP_MAX_LITERAL;
	lim.stream_threshold = IMAP_STREAM_THRESHOLD;
	rc = imap_parser_new(&lim, &c->parser);
	if (rc < 0) {
		rc = proto_err_set(err, PERR_LOCAL, rc, "out of memory");
		goto fail;
	}
	imap_parser_set_sink(c->parser, &client_sink, c);

	set_state(c, IMAP_ST_CONNECTING);
	rc = net_connect(&c->net, cfg->host, cfg->port, timeout, err);
	if (rc < 0)
		goto fail;
	if (cfg->tls == IMAP_TLS_IMPLICIT) {
		rc = net_start_tls(c->net, &tls, err);
		if (rc < 0)
			goto fail;
	}
	rc = read_greeting(c, &preauth, err);
	if (rc < 0)
		goto fail;
	if (cfg->tls == IMAP_TLS_STARTTLS) {
		if (preauth) {
			/* RFC 9051 11.1: a PREAUTH greeting on a cleartext
			 * connection leaves no chance for STARTTLS. */
			rc = proto_err_set(
			        err, PERR_NOTLS, -EPROTONOSUPPORT,
			        "%s greeted with PREAUTH before TLS; "
			        "refusing the unencrypted session",
			        c->host);
			goto fail;
		}
		rc = do_starttls(c, cfg, err);
		if (rc < 0)
			goto fail;
	} else if (cfg->tls == IMAP_TLS_NONE) {
		log_warn("imap %s: plaintext connection (notls): the password "
		         "and all mail cross the network unencrypted",
		         c->label);
	}
	if (c->n_caps == 0) {
		rc = refresh_caps(c, err);
		if (rc < 0)
			goto fail;
	}
	if (!imap_has_cap(c, "IMAP4REV1") && !imap_has_cap(c, "IMAP4REV2")) {
		rc = proto_err_set(err, PERR_PROTOCOL, -EPROTONOSUPPORT,
		                   "%s does not speak IMAP4rev1", c->host);
		goto fail;
	}
	if (!preauth) {
		unsigned gen = c->caps_gen;

		set_state(c, IMAP_ST_NOT_AUTHENTICATED);
		rc = authenticate(c, cfg, err);
		if (rc < 0)
			goto fail;
		/* Servers announce more after login (CONDSTORE, QRESYNC,
		 * SPECIAL-USE ...); most send them in the tagged OK, which
		 * handle_code() has stored.  Otherwise ask. */
		if (c->caps_gen == gen) {
			rc = refresh_caps(c, err);
			if (rc < 0)
				goto fail;
		}
	}
	set_state(c, IMAP_ST_AUTHENTICATED);
	*client_r = c;
	return 0;
fail:
	if (c->fate.dead)
		proto_fate_rc(&c->fate, err);
	imap_free(&c);
	return rc;
}

void imap_free(struct imap_client **cp)
{
	struct imap_client *c = *cp;

	if (c == NULL)
		return;
	imap_parser_free(&c->parser);
	streamed_clear(c);
	net_close(&c->net);
	caps_clear(c);
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
	if (!c->fate.dead && c->net != NULL && pace_left(c) == 0) {
		unsigned tag;

		/* Best effort with a short wait: the server may be gone. */
		net_set_timeout(c->net, 2000);
		set_state(c, IMAP_ST_LOGOUT);
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
				fail_all(c);
				return c->fate.err.code;
			}
			if (rc == 0)
				return 0;
		}
		rc = read_one(c, NULL);
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

/* --- LIST ---------------------------------------------------------------- */

struct list_ctx {
	void (*cb)(void *ctx, const struct imap_mailbox *mb);
	void *ctx;
};

static const struct {
	const char *name;
	unsigned bit;
} mbox_attrs[] = {
        {"\\Noselect", IMAP_MBOX_NOSELECT},
        {"\\NonExistent", IMAP_MBOX_NONEXISTENT | IMAP_MBOX_NOSELECT},
        {"\\HasChildren", IMAP_MBOX_HASCHILDREN},
        {"\\HasNoChildren", IMAP_MBOX_HASNOCHILDREN},
        {"\\Noinferiors", IMAP_MBOX_NOINFERIORS},
        {"\\Marked", IMAP_MBOX_MARKED},
        {"\\Unmarked", IMAP_MBOX_UNMARKED},
        {"\\Subscribed", IMAP_MBOX_SUBSCRIBED},
        {"\\Remote", IMAP_MBOX_REMOTE},
        {"\\All", IMAP_MBOX_ALL},
        {"\\Archive", IMAP_MBOX_ARCHIVE},
        {"\\Drafts", IMAP_MBOX_DRAFTS},
        {"\\Flagged", IMAP_MBOX_FLAGGED},
        {"\\Junk", IMAP_MBOX_JUNK},
        {"\\Sent", IMAP_MBOX_SENT},
        {"\\Trash", IMAP_MBOX_TRASH},
};

static void list_untagged(void *ctx, const struct imap_response *resp)
{
	const struct imap_value *attrs, *delim, *name;
	struct list_ctx *l = ctx;
	struct imap_mailbox mb = {0};
	const char *d, *n;
	size_t dlen, nlen;

	if (!imap_response_is(resp, "LIST"))
		return;
	attrs = imap_list_get(&resp->args, 0);
	delim = imap_list_get(&resp->args, 1);
	name = imap_list_get(&resp->args, 2);
	if (attrs == NULL || attrs->type != IMAP_VALUE_LIST || delim == NULL ||
	    name == NULL) {
		log_warn("ignoring a malformed LIST response");
		return;
	}
	for (size_t i = 0; i < attrs->count; i++)
		for (size_t j = 0; j < sizeof(mbox_attrs) / sizeof(*mbox_attrs);
		     j++)
			if (imap_atom_eq(&attrs->list[i], mbox_attrs[j].name))
				mb.attrs |= mbox_attrs[j].bit;
	d = imap_value_str(delim, &dlen);
	if (d != NULL && dlen != 1) {
		log_warn("ignoring a LIST response with delimiter of length "
		         "%zu",
		         dlen);
		return;
	}
	mb.delim = d != NULL ? d[0] : 0;
	n = imap_value_str(name, &nlen);
	if (n == NULL || nlen == 0 || strlen(n) != nlen) {
		log_warn("ignoring a LIST response with an unusable name");
		return;
	}
	mb.name = strcasecmp(n, "INBOX") == 0 ? "INBOX" : n;
	l->cb(l->ctx, &mb);
}

int imap_list(struct imap_client *c,
              void (*cb)(void *ctx, const struct imap_mailbox *mb), void *ctx,
              struct proto_err *err)
{
	struct list_ctx l = {.cb = cb, .ctx = ctx};

	if (imap_has_cap(c, "LIST-EXTENDED") && imap_has_cap(c, "SPECIAL-USE"))
		return run_cmd(c, list_untagged, &l, err,
		               "LIST \"\" \"*\" RETURN (SPECIAL-USE)");
	return run_cmd(c, list_untagged, &l, err, "LIST \"\" \"*\"");
}

/* --- SELECT / EXAMINE ---------------------------------------------------- */

static void select_untagged(void *ctx, const struct imap_response *resp)
{
	struct imap_select_info *info = ctx;
	const struct imap_value *arg = imap_list_get(&resp->code_args, 0);

	if (resp->kind == IMAP_RESP_DATA && imap_response_is(resp, "EXISTS") &&
	    resp->has_number) {
		info->exists = resp->number;
		return;
	}
	if (resp->kind == IMAP_RESP_DATA && imap_response_is(resp, "EXPUNGE") &&
	    info->exists > 0) {
		info->exists--;
		return;
	}
	if (resp->kind != IMAP_RESP_STATUS || resp->code == NULL)
		return;
	if (strcasecmp(resp->code, "UIDVALIDITY") == 0)
		imap_value_u32(arg, &info->uidvalidity);
	else if (strcasecmp(resp->code, "UIDNEXT") == 0)
		imap_value_u32(arg, &info->uidnext);
	else if (strcasecmp(resp->code, "HIGHESTMODSEQ") == 0)
		imap_value_u64(arg, &info->highestmodseq);
}

static int quote_name(const char *name, char **out_r)
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

int imap_select(struct imap_client *c, const char *name, bool readonly,
                struct imap_select_info *info_r, struct proto_err *err)
{
	char *q = NULL;
	int rc;

	memset(info_r, 0, sizeof(*info_r));
	if (quote_name(name, &q) < 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "mailbox name cannot be sent");
	free(c->selected);
	c->selected = NULL;
	rc = run_cmd(c, select_untagged, info_r, err, "%s %s%s",
	             readonly ? "EXAMINE" : "SELECT", q,
	             imap_has_cap(c, "CONDSTORE") ? " (CONDSTORE)" : "");
	free(q);
	if (rc < 0) {
		if (!c->fate.dead)
			set_state(c, IMAP_ST_AUTHENTICATED);
		return rc;
	}
	info_r->readonly = readonly;
	c->selected = strdup(name);
	c->selected_writable = !readonly;
	set_state(c, IMAP_ST_SELECTED);
	return 0;
}

static void status_untagged(void *ctx, const struct imap_response *resp)
{
	struct imap_select_info *info = ctx;
	const struct imap_value *items = imap_list_get(&resp->args, 1);

	if (!imap_response_is(resp, "STATUS") || items == NULL ||
	    items->type != IMAP_VALUE_LIST)
		return;
	imap_value_u32(imap_fetch_item(items, "UIDVALIDITY"),
	               &info->uidvalidity);
	imap_value_u32(imap_fetch_item(items, "UIDNEXT"), &info->uidnext);
	imap_value_u32(imap_fetch_item(items, "MESSAGES"), &info->exists);
}

int imap_status(struct imap_client *c, const char *name,
                struct imap_select_info *info_r, struct proto_err *err)
{
	char *q = NULL;
	int rc;

	memset(info_r, 0, sizeof(*info_r));
	info_r->readonly = true;
	if (quote_name(name, &q) < 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "mailbox name cannot be sent");
	rc = run_cmd(c, status_untagged, info_r, err,
	             "STATUS %s (UIDVALIDITY UIDNEXT MESSAGES)", q);
	free(q);
	return rc;
}

const char *imap_selected(const struct imap_client *c)
{
	return c->selected;
}

bool imap_selected_writable(const struct imap_client *c)
{
	return c->selected != NULL && c->selected_writable;
}

/* --- FETCH --------------------------------------------------------------- */

struct meta_ctx {
	struct imap_client *c;
	void (*cb)(void *ctx, const struct imap_msg_meta *m);
	void *ctx;
	int rc;
};

/* Join a FLAGS list into "\Seen $Work". */
static char *join_flags(const struct imap_value *flags)
{
	struct strbuf b = {0};

	for (size_t i = 0; flags != NULL && i < flags->count; i++) {
		const char *s = imap_value_str(&flags->list[i], NULL);

		if (s == NULL)
			continue;
		if (b.len > 0)
			strbuf_str(&b, " ");
		strbuf_str(&b, s);
	}
	return strbuf_take(&b);
}

static const struct imap_value *find_item_prefix(const struct imap_value *list,
                                                 const char *prefix)
{
	size_t plen = strlen(prefix);

	for (size_t i = 0; i + 1 < list->count; i += 2) {
		const struct imap_value *k = &list->list[i];

		if (k->type == IMAP_VALUE_ATOM && k->len >= plen &&
		    strncasecmp(k->str, prefix, plen) == 0)
			return &list->list[i + 1];
	}
	return NULL;
}

/* A FETCH response with the metadata items of imap_fetch_meta: fill *meta
 * (its flags are malloc'd into *flags_r).  Returns 1 if it is one, 0 if it
 * is another kind of FETCH (an unsolicited flag update), -ENOMEM. */
static int meta_parse(struct imap_client *c, const struct imap_response *resp,
                      struct imap_msg_meta *meta, char **flags_r)
{
	const struct imap_value *items, *v;

	memset(meta, 0, sizeof(*meta));
	*flags_r = NULL;
	items = imap_list_get(&resp->args, 0);
	if (items == NULL || items->type != IMAP_VALUE_LIST ||
	    imap_value_u32(imap_fetch_item(items, "UID"), &meta->uid) < 0 ||
	    imap_value_u64(imap_fetch_item(items, "RFC822.SIZE"), &meta->size) <
	            0)
		return 0;
	v = imap_fetch_item(items, "INTERNALDATE");
	if (v == NULL || imap_value_str(v, NULL) == NULL ||
	    imap_date_parse(imap_value_str(v, NULL), &meta->internaldate,
	                    &meta->tz_minutes) < 0) {
		log_warn("message UID %u has no valid INTERNALDATE", meta->uid);
		meta->internaldate = 0;
	}
	imap_value_u64(
	        imap_fetch_item(items, "MODSEQ") != NULL
	                ? imap_list_get(imap_fetch_item(items, "MODSEQ"), 0)
	                : NULL,
	        &meta->modseq);
	v = find_item_prefix(items, "BODY[HEADER");
	meta->headers = value_bytes(c, resp, v, &meta->headers_len);
	*flags_r = join_flags(imap_fetch_item(items, "FLAGS"));
	if (*flags_r == NULL)
		return -ENOMEM;
	meta->flags = *flags_r;
	return 1;
}

static void meta_untagged(void *ctx, const struct imap_response *resp)
{
	struct meta_ctx *m = ctx;
	struct imap_msg_meta meta;
	char *flags = NULL;
	int rc = 0;

	if (imap_response_is(resp, "FETCH"))
		rc = meta_parse(m->c, resp, &meta, &flags);
	if (rc < 0) {
		m->rc = rc;
		return;
	}
	if (rc == 0) {
		/* An unsolicited update, not our answer. */
		if (m->c->untagged_cb != NULL)
			m->c->untagged_cb(m->c->untagged_ctx, resp);
		return;
	}
	m->cb(m->ctx, &meta);
	free(flags);
}

/* The items of a metadata FETCH, with or without MODSEQ. */
#define META_ITEMS(modseq)                                                     \
	"(UID RFC822.SIZE FLAGS INTERNALDATE" modseq                           \
	" BODY.PEEK[HEADER.FIELDS (SUBJECT FROM DATE MESSAGE-ID)])"

int imap_fetch_meta(struct imap_client *c, const char *uidset,
                    uint64_t changedsince,
                    void (*cb)(void *ctx, const struct imap_msg_meta *m),
                    void *ctx, struct proto_err *err)
{
	struct meta_ctx m = {.c = c, .cb = cb, .ctx = ctx};
	bool condstore = imap_has_cap(c, "CONDSTORE");
	char since[48] = "";
	int rc;

	if (changedsince > 0 && condstore)
		snprintf(since, sizeof(since), " (CHANGEDSINCE %llu)",
		         (unsigned long long)changedsince);
	rc = run_cmd(c, meta_untagged, &m, err, "UID FETCH %s %s%s", uidset,
	             condstore ? META_ITEMS(" MODSEQ") : META_ITEMS(""), since);
	if (rc == 0 && m.rc < 0)
		return proto_err_set(err, PERR_LOCAL, m.rc, "out of memory");
	return rc;
}

struct body_ctx {
	struct imap_client *c;
	void (*cb)(void *ctx, uint32_t uid, const char *data, size_t len);
	const struct imap_body_sink *sink; /* instead of cb */
	void *ctx;
};

/* A body kept in memory (shorter than IMAP_STREAM_THRESHOLD), given to a
 * body sink in one piece. */
static void sink_whole(const struct body_ctx *b, uint32_t uid, const char *data,
                       size_t len)
{
	const struct imap_body_sink *k = b->sink;

	if (k->begin(b->ctx, uid, len) == 0 &&
	    (len == 0 || k->data(b->ctx, data, len) == 0))
		k->done(b->ctx, uid);
	else if (k->abort != NULL)
		k->abort(b->ctx);
}

/* If the body value of resp is the routed literal, its sink learns the
 * UID and that it is complete (or that it failed). */
static bool routed_done(const struct body_ctx *b,
                        const struct imap_response *resp,
                        const struct imap_value *body, uint32_t uid)
{
	struct imap_client *c = b->c;
	size_t index = 0;
	const struct streamed *s;

	if (body->type != IMAP_VALUE_STREAMED || !c->route.open ||
	    !find_streamed(&resp->args, body, &index) ||
	    index != c->route.index)
		return false;
	s = &c->streamed[index];
	if (c->route.failed || s->len != s->size) {
		route_abort(c);
		return true;
	}
	c->route.open = false;
	b->sink->done(b->ctx, uid);
	return true;
}

static void body_untagged(void *ctx, const struct imap_response *resp)
{
	struct body_ctx *b = ctx;
	const struct imap_value *items, *body;
	const char *data;
	uint32_t uid;
	size_t len;

	if (!imap_response_is(resp, "FETCH"))
		goto other;
	items = imap_list_get(&resp->args, 0);
	if (items == NULL || items->type != IMAP_VALUE_LIST ||
	    imap_value_u32(imap_fetch_item(items, "UID"), &uid) < 0 ||
	    (body = imap_fetch_item(items, "BODY[]")) == NULL)
		goto other;
	if (b->sink != NULL && routed_done(b, resp, body, uid))
		return;
	data = value_bytes(b->c, resp, body, &len);
	if (data == NULL) {
		/* NIL: the server cannot give the message (it happens
		 * with broken stores); report nothing for this UID. */
		log_warn("%s returned no body for UID %u", b->c->host, uid);
		return;
	}
	if (b->sink != NULL)
		sink_whole(b, uid, data, len);
	else
		b->cb(b->ctx, uid, data, len);
	return;
other:
	if (b->c->untagged_cb != NULL)
		b->c->untagged_cb(b->c->untagged_ctx, resp);
}

int imap_fetch_bodies(struct imap_client *c, const char *uidset,
                      void (*cb)(void *ctx, uint32_t uid, const char *data,
                                 size_t len),
                      void *ctx, struct proto_err *err)
{
	struct body_ctx b = {.c = c, .cb = cb, .ctx = ctx};

	return run_cmd(c, body_untagged, &b, err,
	               "UID FETCH %s (UID BODY.PEEK[])", uidset);
}

int imap_fetch_bodies_stream(struct imap_client *c, const char *uidset,
                             const struct imap_body_sink *sink, void *ctx,
                             struct proto_err *err)
{
	struct body_ctx b = {.c = c, .sink = sink, .ctx = ctx};
	int rc;

	if (sink == NULL || sink->begin == NULL || sink->data == NULL ||
	    sink->done == NULL)
		return proto_err_set(err, PERR_LOCAL, -EINVAL, "no body sink");
	c->route.sink = sink;
	c->route.ctx = ctx;
	rc = run_cmd(c, body_untagged, &b, err,
	             "UID FETCH %s (UID BODY.PEEK[])", uidset);
	/* A body cut short by a dead connection ends here; the parser may
	 * still call sink_abort later (imap_free), which finds no route. */
	route_abort(c);
	c->route.sink = NULL;
	c->route.ctx = NULL;
	return rc;
}

int imap_noop(struct imap_client *c, struct proto_err *err)
{
	return run_cmd(c, NULL, NULL, err, "NOOP");
}

/* --- resynchronisation and IDLE ------------------------------------------ */

struct resync_ctx {
	struct imap_client *c;
	const struct imap_resync_cb *cb;
	struct imap_select_info *info;
	bool earlier; /* the VANISHED response being read has (EARLIER) */
	int rc;
};

static int vanished_range(void *ctx, uint32_t lo, uint32_t hi)
{
	struct resync_ctx *r = ctx;
	uint64_t n = (uint64_t)hi - lo + 1;

	/* Without EARLIER, these are expunges happening now (RFC 7162
	 * 3.2.10): the message count goes down as with EXPUNGE. */
	if (!r->earlier)
		r->info->exists = n >= r->info->exists
		                          ? 0
		                          : r->info->exists - (uint32_t)n;
	if (r->cb->vanished != NULL)
		r->cb->vanished(r->cb->ctx, lo, hi);
	return 0;
}

/* "* VANISHED [(EARLIER)] uid-set" (RFC 7162): every UID in the set is
 * gone, whether it was reported before or not. */
static void resync_vanished(struct resync_ctx *r,
                            const struct imap_response *resp)
{
	const char *set = NULL;

	r->earlier = false;
	for (size_t i = 0; i < resp->args.count; i++) {
		const struct imap_value *v = &resp->args.list[i];

		if (v->type != IMAP_VALUE_LIST)
			set = imap_value_str(v, NULL);
		else if (v->count == 1 && imap_value_str(&v->list[0], NULL) &&
		         strcasecmp(imap_value_str(&v->list[0], NULL),
		                    "EARLIER") == 0)
			r->earlier = true;
	}
	if (set == NULL || imap_uidset_parse(set, vanished_range, r) < 0)
		log_warn("imap %s: ignoring a malformed VANISHED response",
		         r->c->label);
}

/* A FETCH with UID and FLAGS but no metadata: a flag change. */
static int flags_parse(const struct imap_response *resp, uint32_t *uid_r,
                       char **flags_r, uint64_t *modseq_r)
{
	const struct imap_value *items = imap_list_get(&resp->args, 0);
	const struct imap_value *flags, *modseq;

	*flags_r = NULL;
	*modseq_r = 0;
	if (items == NULL || items->type != IMAP_VALUE_LIST ||
	    imap_value_u32(imap_fetch_item(items, "UID"), uid_r) < 0 ||
	    (flags = imap_fetch_item(items, "FLAGS")) == NULL ||
	    flags->type != IMAP_VALUE_LIST)
		return 0;
	modseq = imap_fetch_item(items, "MODSEQ");
	if (modseq != NULL)
		imap_value_u64(imap_list_get(modseq, 0), modseq_r);
	*flags_r = join_flags(flags);
	return *flags_r == NULL ? -ENOMEM : 1;
}

static void resync_untagged(void *ctx, const struct imap_response *resp)
{
	struct resync_ctx *r = ctx;
	struct imap_msg_meta meta;
	uint64_t modseq;
	char *flags = NULL;
	uint32_t uid;
	int rc;

	if (resp->kind == IMAP_RESP_DATA &&
	    imap_response_is(resp, "VANISHED")) {
		resync_vanished(r, resp);
		return;
	}
	if (resp->kind != IMAP_RESP_DATA || !imap_response_is(resp, "FETCH")) {
		select_untagged(r->info, resp);
		return;
	}
	rc = meta_parse(r->c, resp, &meta, &flags);
	if (rc > 0 && r->cb->meta != NULL)
		r->cb->meta(r->cb->ctx, &meta);
	if (rc == 0) {
		rc = flags_parse(resp, &uid, &flags, &modseq);
		if (rc > 0 && r->cb->flags != NULL)
			r->cb->flags(r->cb->ctx, uid, flags, modseq);
	}
	if (rc < 0)
		r->rc = rc;
	free(flags);
}

static int resync_once(struct imap_client *c, const struct imap_resync_req *req,
                       const struct imap_resync_cb *cb,
                       struct imap_select_info *info_r, struct proto_err *err)
{
	struct resync_ctx r = {.c = c, .cb = cb, .info = info_r};
	struct imap_handler h = {.untagged = resync_untagged, .ctx = &r};
	bool condstore = !req->plain && imap_has_cap(c, "CONDSTORE");
	const char *mitems = condstore ? META_ITEMS(" MODSEQ") : META_ITEMS("");
	char param[80] = "", since[48] = "";
	unsigned tags[4];
	size_t n = 0;
	char *q = NULL;
	int rc, first = 0;

	memset(info_r, 0, sizeof(*info_r));
	if (quote_name(req->mailbox, &q) < 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "mailbox name cannot be sent");
	free(c->selected);
	c->selected = NULL;
	if (req->modseq != 0 && c->qresync && condstore)
		snprintf(param, sizeof(param), " (QRESYNC (%u %llu))",
		         req->uidvalidity, (unsigned long long)req->modseq);
	else if (condstore)
		snprintf(param, sizeof(param), " (CONDSTORE)");
	if (req->flags_since != 0 && condstore)
		snprintf(since, sizeof(since), " (CHANGEDSINCE %llu)",
		         (unsigned long long)req->flags_since);

	/* One round trip: everything is sent before anything is read. */
	rc = imap_submit(c, &h, &tags[n], "%s %s%s",
	                 req->readonly ? "EXAMINE" : "SELECT", q, param);
	free(q);
	n += rc == 0;
	if (rc == 0 && req->new_from != 0) {
		rc = imap_submit(c, &h, &tags[n], "UID FETCH %u:* %s",
		                 req->new_from, mitems);
		n += rc == 0;
	}
	if (rc == 0 && req->flags_set != NULL) {
		rc = imap_submit(c, &h, &tags[n],
		                 "UID FETCH %s (UID FLAGS%s)%s", req->flags_set,
		                 condstore ? " MODSEQ" : "", since);
		n += rc == 0;
	}
	if (rc == 0 && req->check_set != NULL) {
		rc = imap_submit(c, &h, &tags[n],
		                 "UID FETCH %s (UID FLAGS MODSEQ)",
		                 req->check_set);
		n += rc == 0;
	}
	if (rc < 0 && c->fate.dead)
		return proto_fate_rc(&c->fate, err);
	if (rc < 0) {
		/* Not sent (told to back off meanwhile): collect what was,
		 * then report it, so that the whole goes again. */
		first = submit_err(c, rc, err);
	}
	for (size_t i = 0; i < n; i++) {
		struct proto_err e = {0};

		rc = imap_wait(c, tags[i], &e);
		if (i == 0 && rc == 0) {
			info_r->readonly = req->readonly;
			c->selected = strdup(req->mailbox);
			c->selected_writable = !req->readonly;
			set_state(c, IMAP_ST_SELECTED);
		} else if (i == 0 && !c->fate.dead) {
			set_state(c, IMAP_ST_AUTHENTICATED);
		}
		if (rc < 0 && (first == 0 || c->fate.dead)) {
			first = rc;
			if (err != NULL)
				*err = e;
		}
	}
	if (first == 0 && r.rc < 0)
		first = proto_err_set(err, PERR_LOCAL, r.rc, "out of memory");
	return first;
}

/* The pipeline as a whole goes again when a command of it was throttled:
 * it only reads, so a part that was answered gives the same again. */
int imap_resync(struct imap_client *c, const struct imap_resync_req *req,
                const struct imap_resync_cb *cb,
                struct imap_select_info *info_r, struct proto_err *err)
{
	int64_t start = mono_ms();

	for (;;) {
		struct proto_err e = {0};
		int rc = resync_once(c, req, cb, info_r, &e);

		if (may_retry(c, rc, start))
			continue;
		if (rc < 0 && err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
}

struct idle_ctx {
	int (*cb)(void *ctx, const struct imap_response *resp);
	void *ctx;
	bool wake;
};

static void idle_untagged(void *ctx, const struct imap_response *resp)
{
	struct idle_ctx *ic = ctx;

	if (ic->cb(ic->ctx, resp) != 0)
		ic->wake = true;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int imap_idle(struct imap_client *c, int max_ms,
              int (*cb)(void *ctx, const struct imap_response *resp), void *ctx,
              struct proto_err *err)
{
	struct idle_ctx ic = {.cb = cb, .ctx = ctx};
	struct imap_handler h = {.untagged = idle_untagged, .ctx = &ic};
	int64_t deadline = mono_ms() + max_ms;
	struct pending *p = NULL;
	unsigned tag;
	int rc;

	if (!imap_has_cap(c, "IDLE"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s does not offer IDLE", c->host);
	rc = submit_internal(c, &h, &(struct imap_arg){IMAP_ARG_RAW, "IDLE", 0},
	                     1, &tag, &p);
	if (rc < 0)
		return c->fate.dead ? proto_fate_rc(&c->fate, err) : rc;
	/* Wait for the server's "+ idling"; a refusal completes the
	 * command instead. */
	rc = wait_continuation(c, p);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (rc > 0)
		return imap_wait(c, tag, err);
	while (!ic.wake && !find_pending(c, tag)->done) {
		int64_t left = deadline - mono_ms();
		struct proto_err e = {0};
		size_t len;

		if (left <= 0)
			break;
		net_rbuf(c->net, &len);
		if (len == 0) {
			rc = net_fill_wait(c->net, (int)left, &e);
			if (rc < 0) {
				proto_fate_fail(&c->fate, &e);
				fail_all(c);
				return proto_fate_rc(&c->fate, err);
			}
			if (rc == 0)
				continue;
		}
		rc = read_one(c, NULL);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
	}
	if (!find_pending(c, tag)->done) {
		log_command(c, "DONE", 4);
		rc = send_buf(c, "DONE\r\n", 6);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
	}
	return imap_wait(c, tag, err);
}

/* --- helpers ------------------------------------------------------------- */

char *imap_uidset_format(const uint32_t *uids, size_t n)
{
	struct strbuf b = {0};

	for (size_t i = 0; i < n;) {
		size_t j = i;

		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		if (b.len > 0)
			strbuf_str(&b, ",");
		if (j == i)
			strbuf_printf(&b, "%u", uids[i]);
		else
			strbuf_printf(&b, "%u:%u", uids[i], uids[j]);
		i = j + 1;
	}
	return strbuf_take(&b);
}

static int uid_parse(const char **pp, uint32_t *v_r)
{
	const char *p = *pp;
	uint64_t v = 0;

	if (*p == '*') {
		*v_r = UINT32_MAX;
		*pp = p + 1;
		return 0;
	}
	if (*p < '1' || *p > '9')
		return -EINVAL;
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (uint64_t)(*p++ - '0');
		if (v > UINT32_MAX)
			return -EINVAL;
	}
	*v_r = (uint32_t)v;
	*pp = p;
	return 0;
}

/* One pass over a UID set; with cb NULL it only checks the syntax. */
static int uidset_walk(const char *s,
                       int (*cb)(void *ctx, uint32_t lo, uint32_t hi),
                       void *ctx)
{
	const char *p = s;

	if (*p == '\0')
		return -EINVAL;
	for (;;) {
		uint32_t lo, hi;
		int rc;

		if (uid_parse(&p, &lo) < 0)
			return -EINVAL;
		hi = lo;
		if (*p == ':') {
			p++;
			if (uid_parse(&p, &hi) < 0)
				return -EINVAL;
		}
		if (*p != ',' && *p != '\0')
			return -EINVAL;
		rc = cb ? cb(ctx, lo < hi ? lo : hi, lo < hi ? hi : lo) : 0;
		if (rc != 0)
			return rc;
		if (*p == '\0')
			return 0;
		p++;
	}
}

int imap_uidset_parse(const char *s,
                      int (*cb)(void *ctx, uint32_t lo, uint32_t hi), void *ctx)
{
	/* The whole set is checked before any range is reported: a
	 * malformed VANISHED must not be applied in part. */
	int rc = uidset_walk(s, NULL, NULL);

	return rc < 0 ? rc : uidset_walk(s, cb, ctx);
}

int imap_date_parse(const char *s, time_t *t_r, int *tz_minutes_r)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	int day, year, hh, mm, ss, tz, mon;
	char mname[4], sign;
	struct tm tm = {0};
	const char *m;
	time_t t;

	/* date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
	 *             SP time SP zone DQUOTE; day may be space-padded. */
	if (sscanf(s, " %2d-%3c-%4d %2d:%2d:%2d %c%4d", &day, mname, &year, &hh,
	           &mm, &ss, &sign, &tz) != 8)
		return -EINVAL;
	mname[3] = '\0';
	m = strcasestr(months, mname);
	if (m == NULL || (m - months) % 3 != 0 || (sign != '+' && sign != '-'))
		return -EINVAL;
	mon = (int)(m - months) / 3;
	if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 ||
	    year < 1900 || tz > 9959 || tz % 100 > 59)
		return -EINVAL;
	tm.tm_year = year - 1900;
	tm.tm_mon = mon;
	tm.tm_mday = day;
	tm.tm_hour = hh;
	tm.tm_min = mm;
	tm.tm_sec = ss;
	t = timegm(&tm);
	tz = (tz / 100) * 60 + tz % 100;
	if (sign == '-')
		tz = -tz;
	*t_r = t - (time_t)tz * 60;
	*tz_minutes_r = tz;
	return 0;
}

/* --- changing the mailbox ------------------------------------------------ */

/* Run a command with one mailbox-name argument between two raw parts. */
static int run_named(struct imap_client *c, const char *before,
                     const char *name, const char *after,
                     struct imap_code *code_r, struct proto_err *err)
{
	struct imap_arg args[] = {
	        {IMAP_ARG_RAW, before, 0},
	        {IMAP_ARG_ASTRING, name, 0},
	        {IMAP_ARG_RAW, after, 0},
	};

	return exec(c, NULL, args, 3, code_r, err);
}

int imap_create(struct imap_client *c, const char *name, struct proto_err *err)
{
	return run_named(c, "CREATE ", name, "", NULL, err);
}

int imap_delete(struct imap_client *c, const char *name, struct proto_err *err)
{
	return run_named(c, "DELETE ", name, "", NULL, err);
}

int imap_rename(struct imap_client *c, const char *from, const char *to,
                struct proto_err *err)
{
	struct imap_arg args[] = {
	        {IMAP_ARG_RAW, "RENAME ", 0},
	        {IMAP_ARG_ASTRING, from, 0},
	        {IMAP_ARG_RAW, " ", 0},
	        {IMAP_ARG_ASTRING, to, 0},
	};

	return exec(c, NULL, args, 4, NULL, err);
}

int imap_uid_store(struct imap_client *c, uint32_t uid, const char *op,
                   const char *flags, struct proto_err *err)
{
	return run_cmd(c, NULL, NULL, err, "UID STORE %u %s.SILENT (%s)", uid,
	               op, flags);
}

int imap_uid_expunge(struct imap_client *c, uint32_t uid, struct proto_err *err)
{
	if (!imap_has_cap(c, "UIDPLUS"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s has no UIDPLUS: expunging one "
		                     "message could expunge others",
		                     c->host);
	return run_cmd(c, NULL, NULL, err, "UID EXPUNGE %u", uid);
}

/* "[COPYUID uidvalidity src dst]": the destination of a single UID. */
static void parse_copyuid(const struct imap_code *code, uint32_t *uidv_r,
                          uint32_t *uid_r)
{
	unsigned long v = 0, d = 0;
	char src[128];

	if (strcasecmp(code->code, "COPYUID") == 0 &&
	    sscanf(code->args, "%lu %127s %lu", &v, src, &d) == 3 &&
	    v <= UINT32_MAX && d <= UINT32_MAX) {
		*uidv_r = (uint32_t)v;
		*uid_r = (uint32_t)d;
	}
}

static void move_untagged(void *ctx, const struct imap_response *resp)
{
	struct imap_code code;

	if (resp->kind != IMAP_RESP_STATUS || resp->code == NULL)
		return;
	code_copy(&code, resp);
	parse_copyuid(&code, &((uint32_t *)ctx)[0], &((uint32_t *)ctx)[1]);
}

int imap_uid_move(struct imap_client *c, uint32_t uid, const char *dest,
                  uint32_t *uidvalidity_r, uint32_t *uid_r,
                  struct proto_err *err)
{
	struct imap_handler h = {.untagged = move_untagged};
	uint32_t got[2] = {0, 0};
	struct imap_code code;
	char head[48];
	int rc;

	*uidvalidity_r = *uid_r = 0;
	if (imap_has_cap(c, "MOVE")) {
		struct imap_arg args[] = {
		        {IMAP_ARG_RAW, head, 0},
		        {IMAP_ARG_ASTRING, dest, 0},
		};

		snprintf(head, sizeof(head), "UID MOVE %u ", uid);
		h.ctx = got;
		rc = exec(c, &h, args, 2, &code, err);
		if (rc == 0 && got[1] == 0)
			parse_copyuid(&code, &got[0], &got[1]);
	} else {
		/* COPY, then expunge exactly that UID (UIDPLUS) or refuse
		 * before copying: an EXPUNGE could take other messages. */
		if (!imap_has_cap(c, "UIDPLUS"))
			return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
			                     "%s has neither MOVE nor UIDPLUS",
			                     c->host);
		snprintf(head, sizeof(head), "UID COPY %u ", uid);
		rc = run_named(c, head, dest, "", &code, err);
		if (rc == 0) {
			parse_copyuid(&code, &got[0], &got[1]);
			rc = imap_uid_store(c, uid, "+FLAGS", "\\Deleted", err);
		}
		if (rc == 0)
			rc = imap_uid_expunge(c, uid, err);
	}
	*uidvalidity_r = got[0];
	*uid_r = got[1];
	return rc;
}

static const char *const month_names[] = {"Jan", "Feb", "Mar", "Apr",
                                          "May", "Jun", "Jul", "Aug",
                                          "Sep", "Oct", "Nov", "Dec"};

int imap_append(struct imap_client *c, const char *mailbox, const char *flags,
                time_t date, int tz_minutes, const char *data, size_t len,
                uint32_t *uidvalidity_r, uint32_t *uid_r, struct proto_err *err)
{
	char opts[128] = " ";
	struct imap_arg args[] = {
	        {IMAP_ARG_RAW, "APPEND ", 0},
	        {IMAP_ARG_ASTRING, mailbox, 0},
	        {IMAP_ARG_RAW, opts, 0},
	        {IMAP_ARG_LITERAL, data, len},
	};
	struct imap_code code;
	unsigned long v = 0, u = 0;
	int rc;

	*uidvalidity_r = *uid_r = 0;
	if (flags != NULL && flags[0] != '\0')
		snprintf(opts, sizeof(opts), " (%s) ", flags);
	if (date > 0) {
		time_t local = date + (time_t)tz_minutes * 60;
		struct tm tm;
		size_t used = strlen(opts);
		int tz = tz_minutes < 0 ? -tz_minutes : tz_minutes;

		gmtime_r(&local, &tm);
		snprintf(opts + used, sizeof(opts) - used,
		         "\"%02d-%s-%04d %02d:%02d:%02d %c%02d%02d\" ",
		         tm.tm_mday, month_names[tm.tm_mon], tm.tm_year + 1900,
		         tm.tm_hour, tm.tm_min, tm.tm_sec,
		         tz_minutes < 0 ? '-' : '+', tz / 60, tz % 60);
	}
	rc = exec(c, NULL, args, 4, &code, err);
	if (rc == 0 && strcasecmp(code.code, "APPENDUID") == 0 &&
	    sscanf(code.args, "%lu %lu", &v, &u) == 2 && v <= UINT32_MAX &&
	    u <= UINT32_MAX) {
		*uidvalidity_r = (uint32_t)v;
		*uid_r = (uint32_t)u;
	}
	return rc;
}

struct search_ctx {
	uint32_t *v;
	size_t n, cap;
	bool oom;
};

static void search_untagged(void *ctx, const struct imap_response *resp)
{
	struct search_ctx *s = ctx;

	if (!imap_response_is(resp, "SEARCH"))
		return;
	for (size_t i = 0; i < resp->args.count; i++) {
		uint32_t uid;

		if (imap_value_u32(&resp->args.list[i], &uid) < 0)
			continue;
		if (s->n == s->cap) {
			size_t ncap = s->cap ? s->cap * 2 : 16;
			uint32_t *nv = realloc(s->v, ncap * sizeof(*nv));

			if (nv == NULL) {
				s->oom = true;
				return;
			}
			s->v = nv;
			s->cap = ncap;
		}
		s->v[s->n++] = uid;
	}
}

int imap_search_header(struct imap_client *c, const char *field,
                       const char *value, uint32_t **uids_r, size_t *n_r,
                       struct proto_err *err)
{
	struct search_ctx s = {0};
	struct imap_handler h = {.untagged = search_untagged, .ctx = &s};
	char head[96];
	struct imap_arg args[] = {
	        {IMAP_ARG_RAW, head, 0},
	        {IMAP_ARG_ASTRING, value, 0},
	};
	int rc;

	*uids_r = NULL;
	*n_r = 0;
	snprintf(head, sizeof(head), "UID SEARCH HEADER %s ", field);
	rc = exec(c, &h, args, 2, NULL, err);
	if (rc == 0 && s.oom)
		rc = proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	if (rc < 0) {
		free(s.v);
		return rc;
	}
	*uids_r = s.v;
	*n_r = s.n;
	return 0;
}

/* --- ENABLE and ID ------------------------------------------------------- */

static void enabled_untagged(void *ctx, const struct imap_response *resp)
{
	char *out = ctx;
	size_t used = strlen(out);

	if (!imap_response_is(resp, "ENABLED"))
		return;
	for (size_t i = 0; i < resp->args.count; i++) {
		const char *a = imap_value_str(&resp->args.list[i], NULL);

		if (a != NULL && used + strlen(a) + 2 < 256) {
			used += (size_t)snprintf(out + used, 256 - used, "%s%s",
			                         used ? " " : "", a);
		}
	}
}

int imap_enable(struct imap_client *c, const char *exts, char enabled_r[256],
                struct proto_err *err)
{
	int rc;

	enabled_r[0] = '\0';
	if (!imap_has_cap(c, "ENABLE"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s does not offer ENABLE", c->host);
	rc = run_cmd(c, enabled_untagged, enabled_r, err, "ENABLE %s", exts);
	if (rc == 0) {
		char *dup = strdup(enabled_r), *save = NULL;

		for (char *t = dup ? strtok_r(dup, " ", &save) : NULL;
		     t != NULL; t = strtok_r(NULL, " ", &save))
			if (strcasecmp(t, "QRESYNC") == 0)
				c->qresync = true;
		free(dup);
	}
	return rc;
}

bool imap_qresync_enabled(const struct imap_client *c)
{
	return c->qresync;
}

static void id_untagged(void *ctx, const struct imap_response *resp)
{
	char *out = ctx;
	const struct imap_value *list = imap_list_get(&resp->args, 0);
	size_t used = 0;

	if (!imap_response_is(resp, "ID") || list == NULL ||
	    list->type != IMAP_VALUE_LIST)
		return;
	for (size_t i = 0; i + 1 < list->count; i += 2) {
		const char *k = imap_value_str(&list->list[i], NULL);
		const char *v = imap_value_str(&list->list[i + 1], NULL);
		int n;

		if (k == NULL || used >= 256)
			continue;
		n = snprintf(out + used, 256 - used, "%s%s=%s", used ? " " : "",
		             k, v ? v : "NIL");
		if (n > 0)
			used += (size_t)n;
	}
}

int imap_id(struct imap_client *c, char server_r[256], struct proto_err *err)
{
	server_r[0] = '\0';
	if (!imap_has_cap(c, "ID"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s does not offer ID", c->host);
	/* Only the program's name and version: nothing about the user. */
	return run_cmd(c, id_untagged, server_r, err,
	               "ID (\"name\" \"mailfs\" \"version\" \"%s\")",
	               MAILFS_VERSION);
}
