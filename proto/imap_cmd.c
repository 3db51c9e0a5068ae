/* The IMAP client's other commands: LIST, NOOP, the commands that change
 * mailboxes and messages (CREATE, DELETE, RENAME, STORE, EXPUNGE, MOVE,
 * COPY, APPEND), SEARCH, GETQUOTAROOT and IDLE; and the UID-set and date
 * helpers. */
#include "proto/imap_conn_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/strbuf.h"

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
		return imap_conn_run(c, list_untagged, &l, err,
		                     "LIST \"\" \"*\" RETURN (SPECIAL-USE)");
	return imap_conn_run(c, list_untagged, &l, err, "LIST \"\" \"*\"");
}

/* --- NOOP ---------------------------------------------------------------- */

int imap_noop(struct imap_client *c, struct proto_err *err)
{
	return imap_conn_run(c, NULL, NULL, err, "NOOP");
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

	return imap_conn_exec(c, NULL, args, 3, code_r, err);
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

	return imap_conn_exec(c, NULL, args, 4, NULL, err);
}

int imap_uid_store(struct imap_client *c, uint32_t uid, const char *op,
                   const char *flags, struct proto_err *err)
{
	return imap_conn_run(c, NULL, NULL, err, "UID STORE %u %s.SILENT (%s)",
	                     uid, op, flags);
}

int imap_uid_expunge(struct imap_client *c, uint32_t uid, struct proto_err *err)
{
	if (!imap_has_cap(c, "UIDPLUS"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s has no UIDPLUS: expunging one "
		                     "message could expunge others",
		                     c->host);
	return imap_conn_run(c, NULL, NULL, err, "UID EXPUNGE %u", uid);
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
	imap_conn_code_copy(&code, resp);
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
		rc = imap_conn_exec(c, &h, args, 2, &code, err);
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
	/* " (" flags ") " and a date: the flags are not bounded. */
	size_t flen = flags != NULL ? strlen(flags) : 0;
	size_t osize = flen + 64;
	char *opts = malloc(osize);
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
	if (opts == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	snprintf(opts, osize, " ");
	if (flen > 0)
		snprintf(opts, osize, " (%s) ", flags);
	if (date > 0) {
		time_t local = date + (time_t)tz_minutes * 60;
		struct tm tm;
		size_t used = strlen(opts);
		int tz = tz_minutes < 0 ? -tz_minutes : tz_minutes;

		gmtime_r(&local, &tm);
		snprintf(opts + used, osize - used,
		         "\"%02d-%s-%04d %02d:%02d:%02d %c%02d%02d\" ",
		         tm.tm_mday, month_names[tm.tm_mon], tm.tm_year + 1900,
		         tm.tm_hour, tm.tm_min, tm.tm_sec,
		         tz_minutes < 0 ? '-' : '+', tz / 60, tz % 60);
	}
	rc = imap_conn_exec(c, NULL, args, 4, &code, err);
	free(opts);
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
	rc = imap_conn_exec(c, &h, args, 2, NULL, err);
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

/* --- QUOTA (RFC 9208) --------------------------------------------------- */

/* Keep (used, limit) of one resource if it has less left than the one
 * kept so far. */
static void quota_keep(bool *has, uint64_t *used, uint64_t *limit, uint64_t u,
                       uint64_t l)
{
	uint64_t left = l > u ? l - u : 0;
	uint64_t kept = *limit > *used ? *limit - *used : 0;

	if (*has && kept <= left)
		return;
	*has = true;
	*used = u;
	*limit = l;
}

/* "* QUOTA root (STORAGE 10 512 MESSAGE 3 1000)" */
static void quota_untagged(void *ctx, const struct imap_response *resp)
{
	struct imap_quota *q = ctx;
	const struct imap_value *l = imap_list_get(&resp->args, 1);

	if (!imap_response_is(resp, "QUOTA") || l == NULL ||
	    l->type != IMAP_VALUE_LIST)
		return;
	q->nroots++;
	for (size_t i = 0; i + 2 < l->count; i += 3) {
		const char *res = imap_value_str(&l->list[i], NULL);
		uint64_t used, limit;

		if (res == NULL || imap_value_u64(&l->list[i + 1], &used) < 0 ||
		    imap_value_u64(&l->list[i + 2], &limit) < 0)
			break;
		if (strcasecmp(res, "STORAGE") == 0)
			quota_keep(&q->has_storage, &q->storage_used,
			           &q->storage_limit, used, limit);
		else if (strcasecmp(res, "MESSAGE") == 0)
			quota_keep(&q->has_messages, &q->messages_used,
			           &q->messages_limit, used, limit);
	}
}

int imap_getquotaroot(struct imap_client *c, const char *mailbox,
                      struct imap_quota *q_r, struct proto_err *err)
{
	struct imap_handler h = {.untagged = quota_untagged, .ctx = q_r};
	struct imap_arg args[] = {
	        {IMAP_ARG_RAW, "GETQUOTAROOT ", 0},
	        {IMAP_ARG_ASTRING, mailbox, 0},
	};

	memset(q_r, 0, sizeof(*q_r));
	if (!imap_has_cap(c, "QUOTA"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s does not offer QUOTA", c->host);
	return imap_conn_exec(c, &h, args, 2, NULL, err);
}

/* --- IDLE ---------------------------------------------------------------- */

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

int imap_idle(struct imap_client *c, int max_ms,
              int (*cb)(void *ctx, const struct imap_response *resp), void *ctx,
              struct proto_err *err)
{
	struct idle_ctx ic = {.cb = cb, .ctx = ctx};
	struct imap_handler h = {.untagged = idle_untagged, .ctx = &ic};
	int64_t deadline = imap_conn_now_ms() + max_ms;
	struct imap_pending *p = NULL;
	unsigned tag;
	int rc;

	if (!imap_has_cap(c, "IDLE"))
		return proto_err_set(err, PERR_LOCAL, -EOPNOTSUPP,
		                     "%s does not offer IDLE", c->host);
	rc = imap_conn_submit(c, &h,
	                      &(struct imap_arg){IMAP_ARG_RAW, "IDLE", 0}, 1,
	                      &tag, &p);
	if (rc < 0)
		return c->fate.dead ? proto_fate_rc(&c->fate, err) : rc;
	/* Wait for the server's "+ idling"; a refusal completes the
	 * command instead. */
	rc = imap_conn_wait_continuation(c, p);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (rc > 0)
		return imap_wait(c, tag, err);
	while (!ic.wake && !imap_conn_find_pending(c, tag)->done) {
		int64_t left = deadline - imap_conn_now_ms();
		struct proto_err e = {0};
		size_t len;

		if (left <= 0)
			break;
		net_rbuf(c->net, &len);
		if (len == 0) {
			rc = net_fill_wait(c->net, (int)left, &e);
			if (rc < 0) {
				proto_fate_fail(&c->fate, &e);
				imap_conn_fail_all(c);
				return proto_fate_rc(&c->fate, err);
			}
			if (rc == 0)
				continue;
		}
		rc = imap_conn_read_one(c, NULL);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
	}
	if (!imap_conn_find_pending(c, tag)->done) {
		imap_conn_log_command(c, "DONE", 4);
		rc = imap_conn_send(c, "DONE\r\n", 6);
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
