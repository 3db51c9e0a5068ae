/* The base library's error records: proto_err_set() keeps the first
 * error, and struct proto_fate keeps the error that ended a connection.
 * Linked with the base library alone (no protocol code), as a module
 * that only logs and reports errors links it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "proto/error.h"

static void test_err_first_wins(void **state)
{
	struct proto_err e = {0};

	(void)state;
	assert_int_equal(proto_err_set(&e, PERR_TIMEOUT, -ETIMEDOUT,
	                               "%s did not answer", "h"),
	                 -ETIMEDOUT);
	assert_int_equal(e.cls, PERR_TIMEOUT);
	assert_int_equal(e.code, -ETIMEDOUT);
	assert_string_equal(e.text, "h did not answer");
	/* A later error is returned but not recorded. */
	assert_int_equal(proto_err_set(&e, PERR_LOCAL, -ENOMEM, "oom"),
	                 -ENOMEM);
	assert_int_equal(e.cls, PERR_TIMEOUT);
	assert_string_equal(e.text, "h did not answer");
	assert_int_equal(proto_err_set(NULL, PERR_LOCAL, -ENOMEM, "x"),
	                 -ENOMEM);
	proto_err_clear(&e);
	assert_int_equal(e.cls, PERR_NONE);
	assert_string_equal(e.text, "");
}

static void on_death(void *ctx)
{
	(*(int *)ctx)++;
}

static void test_fate(void **state)
{
	struct proto_fate f;
	struct proto_err e = {.cls = PERR_CONNECT, .code = -ECONNRESET},
	                 out = {0};
	int deaths = 0;

	(void)state;
	strcpy(e.text, "reset");
	proto_fate_init(&f, "imap", "u@h", on_death, &deaths);
	assert_false(f.dead);
	assert_null(proto_fate_error(&f));

	assert_int_equal(proto_fate_fail(&f, &e), -ECONNRESET);
	assert_true(f.dead);
	assert_int_equal(deaths, 1);
	assert_non_null(proto_fate_error(&f));
	assert_string_equal(proto_fate_error(&f)->text, "reset");

	/* The first error stays, and death comes once. */
	assert_int_equal(
	        proto_fate_failf(&f, PERR_PROTOCOL, -EPROTO, "bad %d", 1),
	        -ECONNRESET);
	assert_int_equal(deaths, 1);
	assert_int_equal(f.err.cls, PERR_CONNECT);

	/* It is reported into an empty error, not over a set one. */
	assert_int_equal(proto_fate_rc(&f, &out), -ECONNRESET);
	assert_int_equal(out.cls, PERR_CONNECT);
	assert_string_equal(out.text, "reset");
	proto_err_clear(&out);
	proto_err_set(&out, PERR_AUTH, -EACCES, "refused");
	assert_int_equal(proto_fate_rc(&f, &out), -ECONNRESET);
	assert_int_equal(out.cls, PERR_AUTH);
	assert_int_equal(proto_fate_rc(&f, NULL), -ECONNRESET);
}

/* An error without a code or a class still kills with one. */
static void test_fate_defaults(void **state)
{
	struct proto_fate f;
	struct proto_err e = {0};

	(void)state;
	proto_fate_init(&f, "pop3", "u@h", NULL, NULL);
	assert_int_equal(proto_fate_fail(&f, &e), -EIO);
	assert_int_equal(f.err.cls, PERR_LOCAL);

	proto_fate_init(&f, "pop3", "u@h", NULL, NULL);
	assert_int_equal(proto_fate_failf(&f, PERR_PROTOCOL, -EPROTO,
	                                  "%s sent %s", "h", "junk"),
	                 -EPROTO);
	assert_int_equal(f.err.cls, PERR_PROTOCOL);
	assert_string_equal(f.err.text, "h sent junk");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_err_first_wins),
	        cmocka_unit_test(test_fate),
	        cmocka_unit_test(test_fate_defaults),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
