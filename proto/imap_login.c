/* The IMAP client's login: greeting, TLS and STARTTLS, AUTHENTICATE and
 * LOGIN, COMPRESS (imap_connect), ENABLE and ID. */
#include "proto/imap_conn_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/sasl.h"

/* --- connecting and authenticating ----------------------------------- */

static int read_greeting(struct imap_client *c, bool *preauth_r,
                         struct proto_err *err)
{
	struct imap_response *resp = NULL;
	int rc;

	imap_conn_set_state(c, IMAP_ST_GREETING);
	rc = imap_conn_read_one(c, &resp);
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
	return imap_conn_run(c, NULL, NULL, err, "CAPABILITY");
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
	imap_conn_set_state(c, IMAP_ST_STARTTLS);
	rc = imap_conn_run(c, NULL, NULL, &e, "STARTTLS");
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
	imap_conn_caps_clear(c);
	rc = net_start_tls(c->net, &tls, &e);
	if (rc < 0) {
		proto_fate_fail(&c->fate, &e);
		return proto_fate_rc(&c->fate, err);
	}
	imap_conn_set_state(c, IMAP_ST_NOT_AUTHENTICATED);
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
static int auth_cont(struct imap_client *c, struct imap_pending *p,
                     const struct imap_response *resp)
{
	struct auth_ctx *a = p->cont_ctx;
	int rc;

	(void)resp;
	if (!a->sent) {
		a->sent = true;
		rc = imap_conn_send(c, a->initial, strlen(a->initial));
		if (rc == 0)
			rc = imap_conn_send(c, "\r\n", 2);
		return rc;
	}
	if (a->oauth && strcmp(a->mech, "OAUTHBEARER") == 0)
		return imap_conn_send(c, "AQ==\r\n", 6);
	return imap_conn_send(c, "\r\n", 2);
}

static int authenticate_sasl(struct imap_client *c, struct auth_ctx *a,
                             struct proto_err *err)
{
	struct imap_arg args[3];
	struct imap_pending *p;
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
		rc = imap_conn_submit(c, NULL, args, nargs, &tag, &p);
		explicit_bzero(line, strlen(line));
		free(line);
	} else {
		rc = imap_conn_submit(c, NULL, args, nargs, &tag, &p);
	}
	if (rc < 0)
		return imap_conn_submit_err(c, rc, err);
	p = imap_conn_find_pending(c, tag);
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

	imap_conn_set_state(c, IMAP_ST_AUTHENTICATING);
	if (cfg->oauth2_token != NULL) {
		a.oauth = true;
		rc = sasl_oauth2(imap_has_cap(c, "AUTH=OAUTHBEARER"),
		                 imap_has_cap(c, "AUTH=XOAUTH2"), cfg->user,
		                 cfg->host, (unsigned)atoi(cfg->port),
		                 cfg->oauth2_token, &a.mech, &a.initial);
		if (rc == -EPROTONOSUPPORT)
			return proto_err_set(
			        err, PERR_AUTH, rc,
			        "%s offers neither OAUTHBEARER nor "
			        "XOAUTH2 for oauth2_cmd",
			        c->host);
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
			rc = imap_conn_submit_err(c, rc, &e);
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
	imap_conn_set_state(c, IMAP_ST_AUTHENTICATED);
	return 0;
}

/* COMPRESS DEFLATE (RFC 4978), with nothing else in flight (the server
 * compresses from the byte after its OK, so nothing may be read between
 * that OK and the switch).  A refusal leaves the connection as it was. */
static int start_compress(struct imap_client *c, struct proto_err *err)
{
	struct proto_err e = {0};
	int rc;

	rc = imap_conn_run(c, NULL, NULL, &e, "COMPRESS DEFLATE");
	if (rc < 0 && !c->fate.dead) {
		log_info("imap %s: %s refused COMPRESS DEFLATE (%s); going on "
		         "uncompressed",
		         c->label, c->host, e.text);
		return 0;
	}
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	rc = net_start_compress(c->net, &e);
	if (rc < 0) {
		proto_fate_fail(&c->fate, &e);
		return proto_fate_rc(&c->fate, err);
	}
	log_debug("imap %s: COMPRESS DEFLATE OK: compression on", c->label);
	return 0;
}

int imap_connect(struct imap_client **client_r, const struct imap_config *cfg,
                 struct proto_err *err)
{
	struct net_tls_opts tls = {.cafile = cfg->cafile};
	struct imap_client *c;
	bool preauth = false;
	int rc;

	*client_r = NULL;
	rc = imap_conn_new(&c, cfg, err);
	if (rc < 0)
		return rc;
	imap_conn_set_state(c, IMAP_ST_CONNECTING);
	rc = net_connect(&c->net, cfg->host, cfg->port, c->timeout_ms, err);
	if (rc < 0)
		goto fail;
	if (cfg->tls == IMAP_TLS_IMPLICIT) {
		rc = net_start_tls(c->net, &tls, err);
		if (rc < 0)
			goto fail;
	}
	if (cfg->tls != IMAP_TLS_IMPLICIT) {
		/* Within a second or two, "use imaps://" rather than a
		 * timeout when the port wants TLS from the first byte. */
		rc = net_fill_greeting(c->net, cfg->host, cfg->port, "IMAP",
		                       "imaps", "993", err);
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

		imap_conn_set_state(c, IMAP_ST_NOT_AUTHENTICATED);
		rc = authenticate(c, cfg, err);
		if (rc < 0)
			goto fail;
		/* Servers announce more after login (CONDSTORE, QRESYNC,
		 * SPECIAL-USE ...); most send them in the tagged OK, which
		 * the engine has stored.  Otherwise ask. */
		if (c->caps_gen == gen) {
			rc = refresh_caps(c, err);
			if (rc < 0)
				goto fail;
		}
	}
	imap_conn_set_state(c, IMAP_ST_AUTHENTICATED);
	if (!cfg->no_compress && imap_has_cap(c, "COMPRESS=DEFLATE")) {
		rc = start_compress(c, err);
		if (rc < 0)
			goto fail;
	}
	*client_r = c;
	return 0;
fail:
	if (c->fate.dead)
		proto_fate_rc(&c->fate, err);
	imap_free(&c);
	return rc;
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
	rc = imap_conn_run(c, enabled_untagged, enabled_r, err, "ENABLE %s",
	                   exts);
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

bool imap_compressed(const struct imap_client *c)
{
	return c->net != NULL && net_is_compressed(c->net);
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
	return imap_conn_run(c, id_untagged, server_r, err,
	                     "ID (\"name\" \"mailfs\" \"version\" \"%s\")",
	                     MAILFS_VERSION);
}
