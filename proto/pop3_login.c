/* The POP3 client's login: greeting, TLS and STLS, CAPA, AUTH, USER/PASS
 * and APOP (pop3_connect). */
#include "proto/pop3_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/log.h"
#include "proto/net.h"
#include "proto/sasl.h"

#define POP3_DEFAULT_TIMEOUT_MS 30000
/* RFC 5034 section 4: the AUTH line with its initial response, CRLF
 * included, must fit in 255 octets; else the response waits for "+". */
#define POP3_AUTH_LINE_MAX      255
/* Challenges answered before the client gives up on a SASL exchange. */
#define POP3_MAX_SASL_ROUNDS    3

/* --- connecting and logging in --------------------------------------- */

static int capa_line(void *ctx, char *line, size_t len)
{
	struct pop3_client *c = ctx;
	char *copy;

	if (len == 0 || c->n_caps >= POP3_MAX_CAPS)
		return 0;
	copy = strndup(line, len);
	if (copy == NULL)
		return -ENOMEM;
	/* Tabs as spaces, so that word matching needs to know one. */
	for (char *p = copy; *p; p++)
		if (*p == '\t')
			*p = ' ';
	c->caps[c->n_caps++] = copy;
	return 0;
}

/* CAPA; a server without it (RFC 1939 only) answers -ERR. */
static int ask_capa(struct pop3_client *c, struct proto_err *err)
{
	struct pop3_status_line st;
	enum pop3_state prev = c->state;
	int rc;

	pop3_conn_set_state(c, POP3_ST_CAPA);
	pop3_conn_caps_clear(c);
	rc = pop3_conn_command(c, &st, "CAPA");
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (st.status == POP3_OK) {
		rc = pop3_conn_read_lines(c, capa_line, c);
		if (rc < 0 && c->fate.dead)
			return proto_fate_rc(&c->fate, err);
		if (rc < 0)
			return proto_err_set(err, PERR_LOCAL, rc,
			                     "out of memory");
		c->capa_known = true;
	}
	pop3_conn_set_state(c, prev);
	return 0;
}

static int read_greeting(struct pop3_client *c, struct proto_err *err)
{
	struct pop3_status_line st;
	const char *ts;
	size_t ts_len;
	char text[400];

	pop3_conn_set_state(c, POP3_ST_GREETING);
	if (pop3_conn_read_status(c, &st) < 0)
		return proto_fate_rc(&c->fate, err);
	if (st.status == POP3_ERR) {
		pop3_conn_status_text(c, text, sizeof(text));
		proto_fate_failf(&c->fate, PERR_BYE, -ECONNREFUSED,
		                 "%s refused the connection: %s", c->host,
		                 text);
		return proto_fate_rc(&c->fate, err);
	}
	if (st.status != POP3_OK) {
		proto_fate_failf(&c->fate, PERR_PROTOCOL, -EPROTO,
		                 "%s did not greet like a POP3 server",
		                 c->host);
		return proto_fate_rc(&c->fate, err);
	}
	free(c->timestamp);
	c->timestamp = NULL;
	if (pop3_apop_timestamp(st.text, st.text_len, &ts, &ts_len) == 0) {
		c->timestamp = strndup(ts, ts_len);
		if (c->timestamp == NULL)
			return proto_err_set(err, PERR_LOCAL, -ENOMEM,
			                     "out of memory");
	}
	return 0;
}

static int do_stls(struct pop3_client *c, const struct pop3_config *cfg,
                   struct proto_err *err)
{
	struct net_tls_opts tls = {.cafile = cfg->cafile};
	struct pop3_status_line st;
	struct proto_err e = {0};
	char text[400];
	int rc;

	rc = ask_capa(c, err);
	if (rc < 0)
		return rc;
	if (!pop3_has_cap(c, "STLS"))
		return proto_err_set(err, PERR_NOTLS, -EPROTONOSUPPORT,
		                     "%s does not offer STLS; refusing to send "
		                     "the password in plaintext (use pop3s://, "
		                     "or -o notls for testing)",
		                     c->host);
	pop3_conn_set_state(c, POP3_ST_STLS);
	rc = pop3_conn_command(c, &st, "STLS");
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	if (st.status != POP3_OK) {
		pop3_conn_status_text(c, text, sizeof(text));
		return proto_err_set(err, PERR_NOTLS, -EPROTONOSUPPORT,
		                     "%s refused STLS: %s", c->host, text);
	}
	/* The capabilities from before TLS could have been forged. */
	pop3_conn_caps_clear(c);
	pop3_conn_set_state(c, POP3_ST_TLS_HANDSHAKE);
	rc = net_start_tls(c->net, &tls, &e);
	if (rc < 0) {
		proto_fate_fail(&c->fate, &e);
		return proto_fate_rc(&c->fate, err);
	}
	return ask_capa(c, err);
}

/* The error for a refused login (the latest status line). */
static int auth_refused(struct pop3_client *c,
                        const struct pop3_status_line *st,
                        const struct pop3_config *cfg, struct proto_err *err)
{
	char text[400];

	pop3_conn_status_text(c, text, sizeof(text));
	if (pop3_status_has_code(st, "IN-USE"))
		return proto_err_set(err, PERR_NO, -EBUSY,
		                     "%s: the maildrop of %s is locked by "
		                     "another client (another POP3 session is "
		                     "open); try again later: %s",
		                     c->host, cfg->user, text);
	if (pop3_status_has_code(st, "SYS/TEMP") ||
	    pop3_status_has_code(st, "LOGIN-DELAY"))
		return proto_err_set(err, PERR_NO, -EAGAIN,
		                     "%s cannot log %s in now; try again "
		                     "later: %s",
		                     c->host, cfg->user, text);
	return proto_err_set(err, PERR_AUTH, -EACCES,
	                     "%s refused the login for %s: %s", c->host,
	                     cfg->user, text);
}

/* AUTH mech with the initial response ir (base64, secret).  On return
 * *st is the final +OK or -ERR. */
static int auth_sasl(struct pop3_client *c, const char *mech, const char *ir,
                     struct pop3_status_line *st)
{
	bool sent = 5 + strlen(mech) + 1 + strlen(ir) + 2 <= POP3_AUTH_LINE_MAX;
	char prefix[64];
	int rc;

	snprintf(prefix, sizeof(prefix), "AUTH %s ", mech);
	if (sent)
		rc = pop3_conn_send_secret(c, prefix, ir);
	else
		rc = pop3_conn_send_cmd(c, "AUTH %s", mech);
	if (rc < 0)
		return rc;
	for (int round = 0;; round++) {
		rc = pop3_conn_read_status(c, st);
		if (rc < 0)
			return rc;
		if (st->status != POP3_CONT)
			return 0;
		if (round >= POP3_MAX_SASL_ROUNDS) {
			/* RFC 5034: "*" cancels; the server answers -ERR. */
			rc = pop3_conn_send_cmd(c, "*");
		} else if (!sent) {
			sent = true;
			rc = pop3_conn_send_secret(c, "", ir);
		} else if (strcmp(mech, "OAUTHBEARER") == 0) {
			/* RFC 7628 3.2.3: a lone ^A after the error. */
			rc = pop3_conn_send_cmd(c, "AQ==");
		} else {
			/* XOAUTH2: an empty response after the error. */
			rc = pop3_conn_send_cmd(c, "%s", "");
		}
		if (rc < 0)
			return rc;
	}
}

static bool sendable(const char *s)
{
	for (; *s; s++)
		if (*s == '\r' || *s == '\n')
			return false;
	return true;
}

static int login_apop(struct pop3_client *c, const struct pop3_config *cfg,
                      struct pop3_status_line *st, struct proto_err *err)
{
	char digest[33], prefix[POP3_MAX_LINE];
	int rc;

	pop3_conn_set_state(c, POP3_ST_APOP);
	rc = pop3_apop_digest(c->timestamp, strlen(c->timestamp), cfg->password,
	                      digest);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, rc,
		                     "cannot compute the APOP digest: %s",
		                     strerror(-rc));
	if (snprintf(prefix, sizeof(prefix), "APOP %s ", cfg->user) >=
	    (int)sizeof(prefix))
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "user name too long");
	rc = pop3_conn_send_secret(c, prefix, digest);
	explicit_bzero(digest, sizeof(digest));
	if (rc == 0)
		rc = pop3_conn_read_status(c, st);
	if (rc < 0)
		return proto_fate_rc(&c->fate, err);
	return 0;
}

static int login(struct pop3_client *c, const struct pop3_config *cfg,
                 struct proto_err *err)
{
	struct pop3_status_line st;
	char *ir = NULL;
	int rc;

	if (cfg->user == NULL || cfg->user[0] == '\0' || !sendable(cfg->user) ||
	    strchr(cfg->user, ' ') != NULL)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "the user name cannot be sent to a POP3 "
		                     "server");
	if (cfg->oauth2_token != NULL) {
		const char *mech;

		pop3_conn_set_state(c, POP3_ST_AUTH);
		rc = sasl_oauth2(pop3_has_sasl(c, "OAUTHBEARER"),
		                 pop3_has_sasl(c, "XOAUTH2") || !c->capa_known,
		                 cfg->user, cfg->host,
		                 (unsigned)atoi(cfg->port), cfg->oauth2_token,
		                 &mech, &ir);
		if (rc == -EPROTONOSUPPORT)
			return proto_err_set(
			        err, PERR_AUTH, rc,
			        "%s offers neither OAUTHBEARER nor "
			        "XOAUTH2 for oauth2_cmd",
			        c->host);
		if (rc < 0)
			return proto_err_set(err, PERR_LOCAL, rc,
			                     "cannot encode the token: %s",
			                     strerror(-rc));
		rc = auth_sasl(c, mech, ir, &st);
		sasl_free_secret(&ir);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
		goto result;
	}
	if (cfg->password == NULL || cfg->password[0] == '\0')
		return proto_err_set(err, PERR_LOCAL, -EINVAL, "no password");
	if (pop3_has_sasl(c, "PLAIN")) {
		pop3_conn_set_state(c, POP3_ST_AUTH);
		rc = sasl_plain(NULL, cfg->user, cfg->password, &ir);
		if (rc < 0)
			return proto_err_set(err, PERR_LOCAL, rc,
			                     "cannot encode the password: %s",
			                     strerror(-rc));
		rc = auth_sasl(c, "PLAIN", ir, &st);
		sasl_free_secret(&ir);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
		goto result;
	}
	if (pop3_has_cap(c, "USER") || !c->capa_known) {
		if (!sendable(cfg->password))
			return proto_err_set(err, PERR_LOCAL, -EINVAL,
			                     "the password cannot be sent with "
			                     "PASS");
		pop3_conn_set_state(c, POP3_ST_USER);
		rc = pop3_conn_command(c, &st, "USER %s", cfg->user);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
		if (st.status != POP3_OK) {
			/* Without CAPA, -ERR to USER may just mean that
			 * the server does not do USER: APOP is what is
			 * left. */
			if (!c->capa_known && c->timestamp != NULL &&
			    !pop3_status_has_code(&st, "IN-USE") &&
			    !pop3_status_has_code(&st, "SYS"))
				goto apop;
			goto result;
		}
		pop3_conn_set_state(c, POP3_ST_PASS);
		rc = pop3_conn_send_secret(c, "PASS ", cfg->password);
		if (rc == 0)
			rc = pop3_conn_read_status(c, &st);
		if (rc < 0)
			return proto_fate_rc(&c->fate, err);
		goto result;
	}
	if (c->timestamp == NULL)
		return proto_err_set(err, PERR_AUTH, -EPROTONOSUPPORT,
		                     "%s offers no login mailfs can use "
		                     "(neither SASL PLAIN nor USER nor APOP)",
		                     c->host);
apop:
	rc = login_apop(c, cfg, &st, err);
	if (rc < 0)
		return rc;
result:
	if (st.status == POP3_OK)
		return 0;
	if (st.status == POP3_CONT) {
		proto_fate_failf(&c->fate, PERR_PROTOCOL, -EPROTO,
		                 "%s sent a continuation outside AUTH",
		                 c->host);
		return proto_fate_rc(&c->fate, err);
	}
	return auth_refused(c, &st, cfg, err);
}

int pop3_connect(struct pop3_client **client_r, const struct pop3_config *cfg,
                 struct proto_err *err)
{
	struct net_tls_opts tls = {.cafile = cfg->cafile};
	struct pop3_client *c;
	int timeout =
	        cfg->timeout_ms > 0 ? cfg->timeout_ms : POP3_DEFAULT_TIMEOUT_MS;
	int rc;

	*client_r = NULL;
	rc = pop3_conn_new(&c, cfg, err);
	if (rc < 0)
		return rc;
	pop3_conn_set_state(c, POP3_ST_CONNECTING);
	rc = net_connect(&c->net, cfg->host, cfg->port, timeout, err);
	if (rc < 0)
		goto fail;
	/* The body of a message is consumed as it arrives; only a status
	 * line and a read's worth of data need to fit. */
	net_set_max_buffer(c->net, 1024 * 1024);
	if (cfg->tls == POP3_TLS_IMPLICIT) {
		pop3_conn_set_state(c, POP3_ST_TLS_HANDSHAKE);
		rc = net_start_tls(c->net, &tls, err);
		if (rc < 0)
			goto fail;
	}
	if (cfg->tls != POP3_TLS_IMPLICIT) {
		/* Within a second or two, "use pop3s://" rather than a
		 * timeout when the port wants TLS from the first byte. */
		rc = net_fill_greeting(c->net, cfg->host, cfg->port, "POP3",
		                       "pop3s", "995", err);
		if (rc < 0)
			goto fail;
	}
	rc = read_greeting(c, err);
	if (rc < 0)
		goto fail;
	if (cfg->tls == POP3_TLS_STLS) {
		rc = do_stls(c, cfg, err);
	} else {
		if (cfg->tls == POP3_TLS_NONE)
			log_warn("pop3 %s: plaintext connection (notls): the "
			         "password and all mail cross the network "
			         "unencrypted",
			         c->label);
		rc = ask_capa(c, err);
	}
	if (rc < 0)
		goto fail;
	rc = login(c, cfg, err);
	if (rc < 0)
		goto fail;
	pop3_conn_set_state(c, POP3_ST_TRANSACTION);
	/* RFC 2449: capabilities may change after login (EXPIRE,
	 * LOGIN-DELAY, PIPELINING on some servers). */
	if (c->capa_known) {
		rc = ask_capa(c, err);
		if (rc < 0)
			goto fail;
		if (!c->capa_known)
			log_debug("pop3 %s: CAPA refused after login",
			          c->label);
	}
	/* RFC 2449 EXPIRE 0: whatever is retrieved is gone from the
	 * server, whatever pop_keep says. */
	if (pop3_has_cap(c, "EXPIRE 0"))
		log_warn("pop3 %s: the server deletes messages once they are "
		         "retrieved (EXPIRE 0)",
		         c->label);
	*client_r = c;
	return 0;
fail:
	if (c->fate.dead)
		proto_fate_rc(&c->fate, err);
	pop3_free(&c);
	return rc;
}
