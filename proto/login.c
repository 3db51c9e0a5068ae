#include "proto/login.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/cred.h"
#include "proto/log.h"

struct login {
	pthread_mutex_t lock;
	pthread_cond_t ran; /* a run of the command ended */
	enum login_kind kind;
	const char *cmd;  /* borrowed; NULL for LOGIN_FIXED */
	const char *name; /* the option, for messages */
	int timeout_ms;
	char *secret;       /* owned; the newest secret; wiped */
	unsigned gen;       /* bumped whenever secret changes */
	int64_t fetched_ms; /* when the command last printed a secret */
	unsigned fetches;   /* runs that printed a secret */
	bool refused;       /* a server refused secret */
	bool running;       /* a thread runs the command now */
	bool reporting;     /* log refusals (the mount is up) */
	bool reported;      /* the current run of refusals is logged */
	unsigned refusals;  /* refused logins since the last accepted one */
	unsigned runs;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int login_new(struct login **l_r, enum login_kind kind, const char *cmd,
              int timeout_ms, char **secret)
{
	struct login *l = calloc(1, sizeof(*l));

	*l_r = NULL;
	if (l == NULL)
		return -ENOMEM;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->ran, NULL);
	l->kind = cmd != NULL ? kind : LOGIN_FIXED;
	l->cmd = cmd;
	l->name = kind == LOGIN_OAUTH2 ? "oauth2_cmd" : "passcmd";
	l->timeout_ms = timeout_ms > 0 ? timeout_ms : 30 * 1000;
	l->secret = *secret;
	*secret = NULL;
	l->gen = 1;
	l->fetched_ms = now_ms();
	*l_r = l;
	return 0;
}

void login_free(struct login **lp)
{
	struct login *l = *lp;

	if (l == NULL)
		return;
	cred_free(&l->secret);
	pthread_cond_destroy(&l->ran);
	pthread_mutex_destroy(&l->lock);
	free(l);
	*lp = NULL;
}

bool login_is_refusal(const struct proto_err *err)
{
	return err != NULL && err->cls == PERR_AUTH && err->code == -EACCES;
}

void login_set_reporting(struct login *l, bool on)
{
	pthread_mutex_lock(&l->lock);
	l->reporting = on;
	pthread_mutex_unlock(&l->lock);
}

bool login_reported(struct login *l, const struct proto_err *err)
{
	bool r;

	pthread_mutex_lock(&l->lock);
	r = l->reporting && l->reported && login_is_refusal(err);
	pthread_mutex_unlock(&l->lock);
	return r;
}

unsigned login_runs(struct login *l)
{
	unsigned n;

	pthread_mutex_lock(&l->lock);
	n = l->runs;
	pthread_mutex_unlock(&l->lock);
	return n;
}

/* Run the command, with the lock released meanwhile; others wait on
 * l->ran.  Returns 1 when it printed a new secret (which is now l's), 0
 * when it printed the current one, or a negative errno with err set. */
static int run_locked(struct login *l, struct proto_err *err)
{
	struct proto_err e = {0};
	const char *text = e.text;
	char *s = NULL;
	int rc;

	l->running = true;
	pthread_mutex_unlock(&l->lock);
	rc = cred_from_cmd_timeout(l->cmd, l->timeout_ms, &s, &e);
	pthread_mutex_lock(&l->lock);
	l->running = false;
	l->runs++;
	pthread_cond_broadcast(&l->ran);
	if (rc < 0) {
		if (strncmp(text, "command: ", 9) == 0)
			text += 9;
		return proto_err_set(err, PERR_LOCAL, rc, "%s: %s", l->name,
		                     text);
	}
	l->fetched_ms = now_ms();
	l->fetches++;
	if (strcmp(s, l->secret) == 0) {
		cred_free(&s);
		return 0;
	}
	cred_free(&l->secret);
	l->secret = s;
	l->gen++;
	l->refused = false;
	return 1;
}

int login_take(struct login *l, struct login_ticket *t, struct proto_err *err)
{
	int rc = 0;

	memset(t, 0, sizeof(*t));
	pthread_mutex_lock(&l->lock);
	t->seen = l->fetches;
	for (;;) {
		if (l->running) {
			pthread_cond_wait(&l->ran, &l->lock);
			continue;
		}
		if (l->kind != LOGIN_OAUTH2)
			break;
		if (!l->refused && now_ms() - l->fetched_ms < LOGIN_FRESH_MS)
			break;
		if (l->refused && l->fetches > t->seen) {
			/* It ran since this login began, and printed the
			 * token a server has refused. */
			rc = proto_err_set(err, PERR_AUTH, -EACCES,
			                   "%s printed the token the server "
			                   "refused",
			                   l->name);
			goto out;
		}
		rc = run_locked(l, err);
		if (rc < 0)
			goto out;
		rc = 0;
	}
	t->secret = strdup(l->secret);
	if (t->secret == NULL)
		rc = proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	t->gen = l->gen;
out:
	pthread_mutex_unlock(&l->lock);
	return rc;
}

int login_refused(struct login *l, struct login_ticket *t,
                  const struct proto_err *why)
{
	struct proto_err e = {0};
	char *copy;
	int rc = -EACCES;

	pthread_mutex_lock(&l->lock);
	while (l->running)
		pthread_cond_wait(&l->ran, &l->lock);
	if (t->gen == l->gen)
		l->refused = true;
	if (t->retried || l->kind == LOGIN_FIXED)
		goto out;
	if (l->refused || strcmp(l->secret, t->secret) == 0) {
		/* Nothing newer yet.  If the command ran since this login
		 * began, it has nothing newer to say either. */
		if (l->fetches > t->seen)
			goto out;
		if (run_locked(l, &e) < 0) {
			log_warn("after a refused login: %s", e.text);
			goto out;
		}
		if (l->refused || strcmp(l->secret, t->secret) == 0)
			goto out;
	}
	copy = strdup(l->secret);
	if (copy == NULL)
		goto out;
	cred_free(&t->secret);
	t->secret = copy;
	t->gen = l->gen;
	t->retried = true;
	rc = 0;
out:
	pthread_mutex_unlock(&l->lock);
	if (rc == 0)
		log_notice("%s; %s gave a new %s: trying it once", why->text,
		           l->name,
		           l->kind == LOGIN_OAUTH2 ? "token" : "password");
	return rc;
}

void login_done(struct login *l, struct login_ticket *t, int rc,
                const struct proto_err *err)
{
	static const char *const how[] = {
	        [LOGIN_FIXED] = "",
	        [LOGIN_PASSCMD] = "; passcmd is asked again after each "
	                          "refused login",
	        [LOGIN_OAUTH2] = "; oauth2_cmd runs for each new login",
	};

	pthread_mutex_lock(&l->lock);
	if (rc == 0) {
		if (l->reported)
			log_notice("logged in again, after %u refused logins",
			           l->refusals);
		l->refusals = 0;
		l->reported = false;
	} else if (login_is_refusal(err)) {
		if (t->secret != NULL && t->gen == l->gen)
			l->refused = true;
		l->refusals++;
		if (l->reporting && !l->reported) {
			l->reported = true;
			log_warn("%s%s; retrying with back-off, not logged "
			         "again until a login succeeds",
			         err->text, how[l->kind]);
		}
	}
	pthread_mutex_unlock(&l->lock);
	cred_free(&t->secret);
}

/* One attempt with one secret; ctx says with what protocol. */
typedef int (*login_try_fn)(void *ctx, enum login_kind kind, const char *secret,
                            struct proto_err *err);

static int login_run(struct login *l, login_try_fn fn, void *ctx,
                     struct proto_err *err)
{
	struct login_ticket t;
	struct proto_err e = {0};
	int rc;

	rc = login_take(l, &t, &e);
	if (rc == 0) {
		rc = fn(ctx, l->kind, t.secret, &e);
		if (rc < 0 && login_is_refusal(&e) &&
		    login_refused(l, &t, &e) == 0) {
			proto_err_clear(&e);
			rc = fn(ctx, l->kind, t.secret, &e);
		}
	}
	login_done(l, &t, rc, &e);
	if (rc < 0 && err != NULL && err->cls == PERR_NONE)
		*err = e;
	return rc;
}

struct imap_try {
	const struct imap_config *cfg;
	struct imap_client **c_r;
};

static int imap_try(void *ctx, enum login_kind kind, const char *secret,
                    struct proto_err *err)
{
	struct imap_try *x = ctx;
	struct imap_config cfg = *x->cfg;

	cfg.password = kind == LOGIN_OAUTH2 ? NULL : secret;
	cfg.oauth2_token = kind == LOGIN_OAUTH2 ? secret : NULL;
	return imap_connect(x->c_r, &cfg, err);
}

int login_imap(struct login *l, const struct imap_config *cfg,
               struct imap_client **c_r, struct proto_err *err)
{
	struct imap_try x = {cfg, c_r};

	*c_r = NULL;
	return login_run(l, imap_try, &x, err);
}

struct pop3_try {
	const struct pop3_config *cfg;
	struct pop3_client **c_r;
};

static int pop3_try(void *ctx, enum login_kind kind, const char *secret,
                    struct proto_err *err)
{
	struct pop3_try *x = ctx;
	struct pop3_config cfg = *x->cfg;

	cfg.password = kind == LOGIN_OAUTH2 ? NULL : secret;
	cfg.oauth2_token = kind == LOGIN_OAUTH2 ? secret : NULL;
	return pop3_connect(x->c_r, &cfg, err);
}

int login_pop3(struct login *l, const struct pop3_config *cfg,
               struct pop3_client **c_r, struct proto_err *err)
{
	struct pop3_try x = {cfg, c_r};

	*c_r = NULL;
	return login_run(l, pop3_try, &x, err);
}
