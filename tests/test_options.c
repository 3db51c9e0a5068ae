/* Unit tests for fs/options.c: paths made absolute, the default cache
 * directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "fs/options.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void parse(struct fs_options *o, const char *opts)
{
	char *argv[] = {"mailfs",      "-o",   (char *)opts,
	                "imaps://u@h", "/mnt", NULL};
	struct fuse_args args = FUSE_ARGS_INIT(5, argv);

	assert_int_equal(fs_options_parse(&args, o), 0);
	fuse_opt_free_args(&args);
}

/* Regression: a relative cafile was read relative to "/" by every
 * connection made after mailfs went to the background. */
static void test_absolute(void **state)
{
	struct fs_options o;

	(void)state;
	parse(&o, "cafile=ca.pem,cache_dir=../c/d,passcmd=./pw x");
	assert_int_equal(fs_options_absolute(&o, "/start/here"), 0);
	assert_string_equal(o.cafile, "/start/here/ca.pem");
	assert_string_equal(o.cache_dir, "/start/here/../c/d");
	/* A shell command line, not a path: as given. */
	assert_string_equal(o.passcmd, "./pw x");
	fs_options_free(&o);

	parse(&o, "cafile=/etc/ca.pem,cache_dir=/var/c");
	assert_int_equal(fs_options_absolute(&o, "/"), 0);
	assert_string_equal(o.cafile, "/etc/ca.pem");
	assert_string_equal(o.cache_dir, "/var/c");
	fs_options_free(&o);

	parse(&o, "cache_dir=c");
	assert_int_equal(fs_options_absolute(&o, "/"), 0);
	assert_string_equal(o.cache_dir, "/c");
	fs_options_free(&o);

	/* No start directory known: a relative path is an error, an
	 * absolute one is fine. */
	parse(&o, "cafile=ca.pem");
	assert_int_equal(fs_options_absolute(&o, NULL), -ENOENT);
	fs_options_free(&o);
	parse(&o, "cafile=/ca.pem");
	assert_int_equal(fs_options_absolute(&o, NULL), 0);
	fs_options_free(&o);
}

static int parse_rc(struct fs_options *o, const char *opts)
{
	char *argv[] = {"mailfs",      "-o",   (char *)opts,
	                "imaps://u@h", "/mnt", NULL};
	struct fuse_args args = FUSE_ARGS_INIT(5, argv);
	int rc = fs_options_parse(&args, o);

	fuse_opt_free_args(&args);
	fs_options_free(o);
	return rc;
}

/* Regression: timeout=-1 was taken as 4294967295 s (%u), poll=0 and
 * timeout=0 silently as 1. */
static void test_numbers(void **state)
{
	static const char *const bad[] = {
	        "timeout=-1",
	        "timeout=0",
	        "timeout=3601",
	        "timeout=",
	        "timeout=1x",
	        "timeout= 5",
	        "timeout=+5",
	        "poll=0",
	        "poll=86401",
	        "poll=-60",
	        "connections=0",
	        "connections=17",
	        "connections=-1",
	        "log=",
	        "timeout=99999999999999999999",
	};
	struct fs_options o;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (parse_rc(&o, bad[i]) != -EINVAL)
			fail_msg("%s was accepted", bad[i]);
	parse(&o, "timeout=3600,poll=86400,connections=16");
	assert_int_equal(o.timeout, 3600);
	assert_int_equal(o.poll, 86400);
	assert_int_equal(o.connections, 16);
	fs_options_free(&o);
	parse(&o, "timeout=1,poll=1,connections=1");
	assert_int_equal(o.timeout, 1);
	assert_int_equal(o.poll, 1);
	assert_int_equal(o.connections, 1);
	fs_options_free(&o);
	parse(&o, "ro");
	assert_int_equal(o.timeout, 30);
	assert_int_equal(o.poll, 60);
	assert_int_equal(o.connections, 3);
	fs_options_free(&o);
}

/* fsname= is ours (the mount's source); log= a path made absolute. */
static void test_fsname_log_mountpoint(void **state)
{
	struct fs_options o;

	(void)state;
	parse(&o, "fsname=a\\,b,log=x/m.log");
	assert_string_equal(o.fsname, "a,b");
	assert_string_equal(o.account, "imaps://u@h");
	assert_string_equal(o.mountpoint, "/mnt");
	assert_int_equal(fs_options_absolute(&o, "/s"), 0);
	assert_string_equal(o.log, "/s/x/m.log");
	fs_options_free(&o);
	parse(&o, "log=syslog");
	assert_int_equal(fs_options_absolute(&o, "/s"), 0);
	assert_string_equal(o.log, "syslog");
	fs_options_free(&o);
}

static void expect_default(const char *want)
{
	char *dir = NULL;

	assert_int_equal(fs_options_default_cache_dir("u@h", &dir), 0);
	assert_string_equal(dir, want);
	free(dir);
}

/* Regression: the default came from $HOME, which a user mount may leave
 * pointing at another user's home (/root/.cache for a non-root user). */
static void test_default_cache_dir(void **state)
{
	struct passwd *pw = getpwuid(getuid());
	char want[4096];

	(void)state;
	assert_non_null(pw);
	setenv("XDG_CACHE_HOME", "/xdg", 1);
	setenv("HOME", "/elsewhere", 1);
	expect_default("/xdg/mailfs/u@h");
	/* Not absolute: ignored (XDG base directory specification). */
	setenv("XDG_CACHE_HOME", "rel", 1);
	snprintf(want, sizeof(want), "%s/.cache/mailfs/u@h", pw->pw_dir);
	expect_default(want);
	unsetenv("XDG_CACHE_HOME");
	expect_default(want);
}

/* The same for a non-root user, when we may become one: the home of that
 * user, whatever $HOME says. */
static void test_default_cache_dir_other_user(void **state)
{
	struct passwd *pw;
	char want[4096];
	int status = 0;
	pid_t pid;

	(void)state;
	if (getuid() != 0 || (pw = getpwnam("nobody")) == NULL)
		skip();
	snprintf(want, sizeof(want), "%s/.cache/mailfs/u@h", pw->pw_dir);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *dir = NULL;

		unsetenv("XDG_CACHE_HOME");
		setenv("HOME", "/root", 1);
		if (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
			_exit(2);
		if (fs_options_default_cache_dir("u@h", &dir) != 0)
			_exit(3);
		_exit(strcmp(dir, want) == 0 ? 0 : 4);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_absolute),
	        cmocka_unit_test(test_default_cache_dir),
	        cmocka_unit_test(test_default_cache_dir_other_user),
	        cmocka_unit_test(test_numbers),
	        cmocka_unit_test(test_fsname_log_mountpoint),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
