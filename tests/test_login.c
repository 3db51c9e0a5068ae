/* Where each login's secret comes from: passcmd run again after a refused
 * login, oauth2_cmd run again for new logins, shared by logins that come
 * together, a refused token never handed out again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/cred.h"
#include "proto/login.h"

/* A directory with the commands' files: "count" (runs so far) and
 * "password" (what the password command prints). */
struct dir {
	char path[64];
	char cmd[512];
};

static int setup(void **state)
{
	struct dir *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return -1;
	snprintf(d->path, sizeof(d->path), "/tmp/mailfs-login-XXXXXX");
	if (mkdtemp(d->path) == NULL)
		return -1;
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dir *d = *state;
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->path);
	if (system(cmd) != 0)
		return -1;
	free(d);
	return 0;
}

/* Count the run, then do what: e.g. "echo tok-$n". */
static const char *command(struct dir *d, const char *what)
{
	snprintf(d->cmd, sizeof(d->cmd),
	         "d='%s'; n=$(cat \"$d/count\" 2>/dev/null || echo 0); "
	         "n=$((n + 1)); echo $n > \"$d/count\"; %s",
	         d->path, what);
	return d->cmd;
}

static int runs(struct dir *d)
{
	char path[128];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "%s/count", d->path);
	f = fopen(path, "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%d", &n) != 1)
		n = -1;
	fclose(f);
	return n;
}

static void set_password(struct dir *d, const char *pw)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/password", d->path);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", pw);
	fclose(f);
}

static struct login *new_login(enum login_kind kind, const char *cmd,
                               const char *first)
{
	struct login *l = NULL;
	char *s = strdup(first);

	assert_non_null(s);
	assert_int_equal(login_new(&l, kind, cmd, 10 * 1000, &s), 0);
	assert_null(s);
	return l;
}

static const struct proto_err refusal = {
        PERR_AUTH, -EACCES, "host refused the login for alice: [AUTH] no"};

static void take(struct login *l, struct login_ticket *t, const char *want)
{
	struct proto_err err = {0};

	if (login_take(l, t, &err) != 0)
		fail_msg("login_take: %s", err.text);
	assert_string_equal(t->secret, want);
}

static void test_passcmd_rerun_once_after_refusal(void **state)
{
	struct dir *d = *state;
	struct login_ticket t, early;
	struct login *l;

	set_password(d, "new");
	l = new_login(LOGIN_PASSCMD, command(d, "cat \"$d/password\""), "old");
	/* passcmd is not run for a login */
	take(l, &t, "old");
	take(l, &early, "old");
	assert_int_equal(runs(d), 0);
	/* refused: run once more, the new password for one more try */
	assert_int_equal(login_refused(l, &t, &refusal), 0);
	assert_string_equal(t.secret, "new");
	assert_int_equal(runs(d), 1);
	login_done(l, &t, 0, NULL);
	assert_null(t.secret);
	/* a login that began before that run gets its result, no new run */
	assert_int_equal(login_refused(l, &early, &refusal), 0);
	assert_string_equal(early.secret, "new");
	assert_int_equal(runs(d), 1);
	/* one more try only: refused again, it is over */
	assert_int_equal(login_refused(l, &early, &refusal), -EACCES);
	assert_int_equal(runs(d), 1);
	login_done(l, &early, -EACCES, &refusal);
	/* later logins use the new one */
	take(l, &t, "new");
	login_done(l, &t, 0, NULL);
	assert_int_equal(runs(d), 1);
	assert_int_equal(login_runs(l), 1);
	login_free(&l);
	assert_null(l);
}

static void test_passcmd_same_password(void **state)
{
	struct dir *d = *state;
	struct login_ticket t, early;
	struct login *l;

	set_password(d, "same");
	l = new_login(LOGIN_PASSCMD, command(d, "cat \"$d/password\""), "same");
	take(l, &t, "same");
	take(l, &early, "same");
	assert_int_equal(login_refused(l, &t, &refusal), -EACCES);
	assert_int_equal(runs(d), 1);
	login_done(l, &t, -EACCES, &refusal);
	/* it ran since this login began: nothing new to ask */
	assert_int_equal(login_refused(l, &early, &refusal), -EACCES);
	assert_int_equal(runs(d), 1);
	login_done(l, &early, -EACCES, &refusal);
	/* the next refused login (after a back-off) asks again, once */
	take(l, &t, "same");
	set_password(d, "fixed");
	assert_int_equal(login_refused(l, &t, &refusal), 0);
	assert_string_equal(t.secret, "fixed");
	assert_int_equal(runs(d), 2);
	login_done(l, &t, 0, NULL);
	login_free(&l);
}

static void test_passcmd_fails(void **state)
{
	struct dir *d = *state;
	struct login_ticket t;
	struct login *l;

	l = new_login(LOGIN_PASSCMD, command(d, "exit 3"), "pw");
	take(l, &t, "pw");
	assert_int_equal(login_refused(l, &t, &refusal), -EACCES);
	assert_int_equal(runs(d), 1);
	login_done(l, &t, -EACCES, &refusal);
	take(l, &t, "pw");
	login_done(l, &t, 0, NULL);
	login_free(&l);
}

static void test_fixed_never_runs(void **state)
{
	struct login_ticket t;
	struct login *l;

	(void)state;
	l = new_login(LOGIN_FIXED, NULL, "typed");
	take(l, &t, "typed");
	assert_int_equal(login_refused(l, &t, &refusal), -EACCES);
	assert_string_equal(t.secret, "typed");
	login_done(l, &t, -EACCES, &refusal);
	take(l, &t, "typed");
	login_done(l, &t, 0, NULL);
	assert_int_equal(login_runs(l), 0);
	login_free(&l);
}

static void test_oauth2_fresh_then_run(void **state)
{
	struct dir *d = *state;
	struct login_ticket t, u;
	struct login *l;

	l = new_login(LOGIN_OAUTH2, command(d, "echo tok-$n"), "tok-0");
	/* just read at mount time: the first logins share it */
	take(l, &t, "tok-0");
	take(l, &u, "tok-0");
	assert_int_equal(runs(d), 0);
	/* refused: a new token for one more try */
	assert_int_equal(login_refused(l, &t, &refusal), 0);
	assert_string_equal(t.secret, "tok-1");
	login_done(l, &t, 0, NULL);
	/* the other login that took the old one gets the new one */
	assert_int_equal(login_refused(l, &u, &refusal), 0);
	assert_string_equal(u.secret, "tok-1");
	login_done(l, &u, 0, NULL);
	assert_int_equal(runs(d), 1);
	/* a refused token is never handed out again */
	take(l, &t, "tok-1");
	login_done(l, &t, -EACCES, &refusal);
	take(l, &t, "tok-2");
	assert_int_equal(runs(d), 2);
	login_done(l, &t, 0, NULL);
	login_free(&l);
}

static void test_oauth2_same_token_refused(void **state)
{
	struct dir *d = *state;
	struct proto_err err = {0};
	struct login_ticket t;
	struct login *l;

	l = new_login(LOGIN_OAUTH2, command(d, "echo stale"), "stale");
	take(l, &t, "stale");
	assert_int_equal(login_refused(l, &t, &refusal), -EACCES);
	assert_int_equal(runs(d), 1);
	login_done(l, &t, -EACCES, &refusal);
	/* the command still prints the refused token: no login with it */
	assert_int_equal(login_take(l, &t, &err), -EACCES);
	assert_null(t.secret);
	assert_int_equal(err.cls, PERR_AUTH);
	assert_non_null(strstr(err.text, "oauth2_cmd"));
	assert_int_equal(runs(d), 2);
	login_free(&l);
}

static void test_oauth2_command_fails(void **state)
{
	struct dir *d = *state;
	struct proto_err err = {0};
	struct login_ticket t;
	struct login *l;

	l = new_login(LOGIN_OAUTH2, command(d, "exit 3"), "tok");
	take(l, &t, "tok");
	login_done(l, &t, -EACCES, &refusal);
	assert_int_equal(login_take(l, &t, &err), -EIO);
	assert_int_equal(err.cls, PERR_LOCAL);
	assert_non_null(strstr(err.text, "oauth2_cmd: exited with status 3"));
	login_free(&l);
}

static void test_oauth2_timeout(void **state)
{
	struct dir *d = *state;
	struct proto_err err = {0};
	struct login_ticket t;
	struct login *l = NULL;
	struct timespec t0, t1;
	char *s = strdup("tok");

	assert_int_equal(login_new(&l, LOGIN_OAUTH2,
	                           command(d, "sleep 20; echo late"), 300, &s),
	                 0);
	take(l, &t, "tok");
	login_done(l, &t, -EACCES, &refusal);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(login_take(l, &t, &err), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec < 3);
	assert_non_null(strstr(err.text, "oauth2_cmd: timed out"));
	login_free(&l);
}

/* Logins that start together share one run. */
struct racer {
	struct login *l;
	pthread_barrier_t *go;
	char secret[32];
	int rc;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	struct proto_err err = {0};
	struct login_ticket t;

	pthread_barrier_wait(r->go);
	r->rc = login_take(r->l, &t, &err);
	if (r->rc == 0) {
		snprintf(r->secret, sizeof(r->secret), "%s", t.secret);
		login_done(r->l, &t, 0, NULL);
	}
	return NULL;
}

static void test_oauth2_together_one_run(void **state)
{
	enum { N = 8 };
	struct dir *d = *state;
	struct login_ticket t;
	struct racer r[N];
	pthread_t th[N];
	pthread_barrier_t go;
	struct login *l;

	l = new_login(LOGIN_OAUTH2, command(d, "sleep 0.3; echo tok-$n"),
	              "tok-0");
	take(l, &t, "tok-0");
	login_done(l, &t, -EACCES, &refusal);
	pthread_barrier_init(&go, NULL, N);
	for (int i = 0; i < N; i++) {
		r[i] = (struct racer){.l = l, .go = &go};
		assert_int_equal(pthread_create(&th[i], NULL, race, &r[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(r[i].rc, 0);
		assert_string_equal(r[i].secret, "tok-1");
	}
	pthread_barrier_destroy(&go);
	assert_int_equal(runs(d), 1);
	login_free(&l);
}

static void test_refusal_classes(void **state)
{
	struct proto_err e = {PERR_AUTH, -EPROTONOSUPPORT, "no XOAUTH2"};
	struct proto_err net = {PERR_CONNECT, -ECONNRESET, "reset"};
	struct proto_err busy = {PERR_NO, -EBUSY, "[IN-USE]"};

	(void)state;
	assert_true(login_is_refusal(&refusal));
	assert_false(login_is_refusal(&e));
	assert_false(login_is_refusal(&net));
	assert_false(login_is_refusal(&busy));
	assert_false(login_is_refusal(NULL));
}

static void test_reported_once_mounted(void **state)
{
	struct login_ticket t;
	struct login *l;

	(void)state;
	l = new_login(LOGIN_FIXED, NULL, "pw");
	/* at mount time the caller reports refusals */
	take(l, &t, "pw");
	login_done(l, &t, -EACCES, &refusal);
	assert_false(login_reported(l, &refusal));
	login_set_reporting(l, true);
	take(l, &t, "pw");
	login_done(l, &t, -EACCES, &refusal);
	assert_true(login_reported(l, &refusal));
	assert_false(login_reported(
	        l, &(struct proto_err){PERR_TIMEOUT, -ETIMEDOUT, "x"}));
	/* an accepted login ends the run of refusals */
	take(l, &t, "pw");
	login_done(l, &t, 0, NULL);
	assert_false(login_reported(l, &refusal));
	login_free(&l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(
	                test_passcmd_rerun_once_after_refusal, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_passcmd_same_password,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_passcmd_fails, setup,
	                                        teardown),
	        cmocka_unit_test(test_fixed_never_runs),
	        cmocka_unit_test_setup_teardown(test_oauth2_fresh_then_run,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_oauth2_same_token_refused,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_oauth2_command_fails,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_oauth2_timeout, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_oauth2_together_one_run,
	                                        setup, teardown),
	        cmocka_unit_test(test_refusal_classes),
	        cmocka_unit_test(test_reported_once_mounted),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
