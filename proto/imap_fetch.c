/* The IMAP client's reading of a mailbox: SELECT, EXAMINE, STATUS, FETCH
 * of metadata and bodies (into a callback or a streaming body sink), and
 * the pipelined resynchronisation. */
#include "proto/imap_conn_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/log.h"
#include "proto/strbuf.h"

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

int imap_select(struct imap_client *c, const char *name, bool readonly,
                struct imap_select_info *info_r, struct proto_err *err)
{
	char *q = NULL;
	int rc;

	memset(info_r, 0, sizeof(*info_r));
	if (imap_conn_quote_name(name, &q) < 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "mailbox name cannot be sent");
	free(c->selected);
	c->selected = NULL;
	rc = imap_conn_run(c, select_untagged, info_r, err, "%s %s%s",
	                   readonly ? "EXAMINE" : "SELECT", q,
	                   imap_has_cap(c, "CONDSTORE") ? " (CONDSTORE)" : "");
	free(q);
	if (rc < 0) {
		if (!c->fate.dead)
			imap_conn_set_state(c, IMAP_ST_AUTHENTICATED);
		return rc;
	}
	info_r->readonly = readonly;
	c->selected = strdup(name);
	c->selected_writable = !readonly;
	imap_conn_set_state(c, IMAP_ST_SELECTED);
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
	if (imap_conn_quote_name(name, &q) < 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "mailbox name cannot be sent");
	rc = imap_conn_run(c, status_untagged, info_r, err,
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
	meta->headers = imap_conn_value_bytes(c, resp, v, &meta->headers_len);
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
	rc = imap_conn_run(
	        c, meta_untagged, &m, err, "UID FETCH %s %s%s", uidset,
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
	const struct imap_streamed *s;

	if (body->type != IMAP_VALUE_STREAMED || !c->route.open ||
	    !imap_conn_find_streamed(&resp->args, body, &index) ||
	    index != c->route.index)
		return false;
	s = &c->streamed[index];
	if (c->route.failed || s->len != s->size) {
		imap_conn_route_abort(c);
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
	data = imap_conn_value_bytes(b->c, resp, body, &len);
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

	return imap_conn_run(c, body_untagged, &b, err,
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
	rc = imap_conn_run(c, body_untagged, &b, err,
	                   "UID FETCH %s (UID BODY.PEEK[])", uidset);
	/* A body cut short by a dead connection ends here; the parser may
	 * still call sink_abort later (imap_free), which finds no route. */
	imap_conn_route_abort(c);
	c->route.sink = NULL;
	c->route.ctx = NULL;
	return rc;
}

/* --- resynchronisation ------------------------------------------------- */

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
	if (imap_conn_quote_name(req->mailbox, &q) < 0)
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
		first = imap_conn_submit_err(c, rc, err);
	}
	for (size_t i = 0; i < n; i++) {
		struct proto_err e = {0};

		rc = imap_wait(c, tags[i], &e);
		if (i == 0 && rc == 0) {
			info_r->readonly = req->readonly;
			c->selected = strdup(req->mailbox);
			c->selected_writable = !req->readonly;
			imap_conn_set_state(c, IMAP_ST_SELECTED);
		} else if (i == 0 && !c->fate.dead) {
			imap_conn_set_state(c, IMAP_ST_AUTHENTICATED);
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
	int64_t start = imap_conn_now_ms();

	for (;;) {
		struct proto_err e = {0};
		int rc = resync_once(c, req, cb, info_r, &e);

		if (imap_conn_may_retry(c, rc, start))
			continue;
		if (rc < 0 && err != NULL && err->cls == PERR_NONE)
			*err = e;
		return rc;
	}
}
