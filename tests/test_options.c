/* Unit tests for fs/options.c: paths made absolute, the default cache
 * directory; and parsing through fs_options_parse(): -o lists as mount(8)
 * passes an fstab line, backslash escapes, the fstab words that are not
 * options, what stays for libfuse, defaults, and the numeric ranges. */
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

/* --- parsing ------------------------------------------------------- */

struct parsed {
	struct fuse_args args; /* what is left for libfuse */
	struct fs_options o;
	int rc;
};

/* Parse "mailfs" and the NULL-terminated arguments. */
static struct parsed *parse_args(const char *first, ...)
{
	struct parsed *p = calloc(1, sizeof(*p));
	va_list ap;

	assert_non_null(p);
	assert_int_equal(fuse_opt_add_arg(&p->args, "mailfs"), 0);
	va_start(ap, first);
	for (const char *a = first; a != NULL; a = va_arg(ap, const char *))
		assert_int_equal(fuse_opt_add_arg(&p->args, a), 0);
	va_end(ap);
	p->rc = fs_options_parse(&p->args, &p->o);
	return p;
}

static void parsed_free(struct parsed *p)
{
	fs_options_free(&p->o);
	fuse_opt_free_args(&p->args);
	free(p);
}

/* Is word one of the arguments left (as a whole argument, or as one item
 * of a -o list)? */
static bool left(const struct parsed *p, const char *word)
{
	size_t n = strlen(word);

	for (int i = 0; i < p->args.argc; i++) {
		const char *a = p->args.argv[i];

		if (strcmp(a, word) == 0)
			return true;
		if (strncmp(a, "-o", 2) == 0) {
			const char *s = a[2] ? a + 2 : "";

			if (!a[2] && i + 1 < p->args.argc)
				s = p->args.argv[i + 1];
			for (const char *q = s; q != NULL;
			     q = strchr(q, ',') ? strchr(q, ',') + 1 : NULL)
				if (strncmp(q, word, n) == 0 &&
				    (q[n] == ',' || q[n] == '\0'))
					return true;
		}
	}
	return false;
}

static void test_defaults(void **state)
{
	struct parsed *p =
	        parse_args("imaps://alice@example.org", "/mnt/mail", NULL);

	(void)state;
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.account, "imaps://alice@example.org");
	assert_null(p->o.passcmd);
	assert_null(p->o.oauth2_cmd);
	assert_int_equal(p->o.password_stdin, 0);
	assert_int_equal(p->o.poll, 60);
	assert_int_equal(p->o.connections, 3);
	assert_int_equal(p->o.timeout, 30);
	assert_int_equal(p->o.delete_mode, FS_DELETE_TRASH);
	assert_int_equal(p->o.pop_keep_days, -1);
	assert_int_equal(p->o.mark_seen, 0);
	assert_int_equal(p->o.offline, 0);
	assert_int_equal(p->o.ro, 0);
	/* The mount point is libfuse's (fuse_parse_cmdline). */
	assert_true(left(p, "/mnt/mail"));
	assert_false(left(p, "imaps://alice@example.org"));
	parsed_free(p);
}

/* What mount(8) runs for the fstab line
 *   imaps://alice@example.org /mnt/mail fuse.mailfs
 *       _netdev,noauto,user,passcmd=pass\040show\040mail,poll=30 0 0
 * (mount.fuse3 passes the options as one -o list). */
static void test_fstab_line(void **state)
{
	struct parsed *p = parse_args(
	        "imaps://alice@example.org", "/mnt/mail", "-o",
	        "rw,_netdev,noauto,user,passcmd=pass\\040show\\040mail,"
	        "poll=30,connections=5,timeout=9,mark_seen,delete=expunge,"
	        "pop_keep=7,nosuid,nodev",
	        NULL);

	(void)state;
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.passcmd, "pass show mail");
	assert_int_equal(p->o.poll, 30);
	assert_int_equal(p->o.connections, 5);
	assert_int_equal(p->o.timeout, 9);
	assert_int_equal(p->o.mark_seen, 1);
	assert_int_equal(p->o.delete_mode, FS_DELETE_EXPUNGE);
	assert_int_equal(p->o.pop_keep_days, 7);
	/* fstab's words are gone; the kernel's options stay for libfuse;
	 * ours are not passed on. */
	assert_false(left(p, "_netdev"));
	assert_false(left(p, "noauto"));
	assert_false(left(p, "user"));
	assert_false(left(p, "poll=30"));
	assert_false(left(p, "mark_seen"));
	assert_true(left(p, "rw"));
	assert_true(left(p, "nosuid"));
	assert_true(left(p, "nodev"));
	assert_true(left(p, "/mnt/mail"));
	parsed_free(p);
}

/* Every word fstab may carry that is not an option. */
static void test_fstab_noise(void **state)
{
	static const char *const noise[] = {"_netdev", "noauto", "auto",
	                                    "user",    "nouser", "users",
	                                    "nofail"};

	(void)state;
	for (size_t i = 0; i < sizeof(noise) / sizeof(*noise); i++) {
		char opt[64];
		struct parsed *p;

		snprintf(opt, sizeof(opt), "-o%s", noise[i]);
		p = parse_args("imaps://a@h", "/m", opt, "-o", noise[i], NULL);
		assert_int_equal(p->rc, 0);
		assert_false(left(p, noise[i]));
		parsed_free(p);
	}
}

/* Backslash escapes of a -o list: octal (\040 a space, \054 a comma,
 * \134 a backslash) and an escaped comma. */
static void test_escapes(void **state)
{
	struct parsed *p;

	(void)state;
	p = parse_args("imaps://a@h", "/m", "-o",
	               "passcmd=gpg\\040-d\\040a\\054b\\134c,oauth2_cmd=x",
	               NULL);
	assert_int_equal(p->rc, -EINVAL); /* two secrets: one at a time */
	parsed_free(p);

	p = parse_args("imaps://a@h", "/m", "-o",
	               "passcmd=gpg\\040-d\\040a\\054b\\134c\\,d,poll=5", NULL);
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.passcmd, "gpg -d a,b\\c,d");
	assert_int_equal(p->o.poll, 5);
	parsed_free(p);

	/* Given as its own -o, a value keeps its spaces and commas as they
	 * are escaped. */
	p = parse_args("-o", "oauth2_cmd=oauth\\040token", "imaps://a@h", "/m",
	               NULL);
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.oauth2_cmd, "oauth token");
	assert_string_equal(p->o.account, "imaps://a@h");
	parsed_free(p);
}

/* ro is seen, and passed on to the kernel. */
static void test_ro(void **state)
{
	struct parsed *p =
	        parse_args("imaps://a@h", "/m", "-o", "ro,offline", NULL);

	(void)state;
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->o.ro, 1);
	assert_int_equal(p->o.offline, 1);
	assert_true(left(p, "ro"));
	assert_false(left(p, "offline"));
	parsed_free(p);
}

static int rc_of(const char *opts)
{
	struct parsed *p = parse_args("imaps://a@h", "/m", "-o", opts, NULL);
	int rc = p->rc;

	parsed_free(p);
	return rc;
}

static void test_ranges(void **state)
{
	struct parsed *p;

	(void)state;
	assert_int_equal(rc_of("connections=1"), 0);
	assert_int_equal(rc_of("connections=16"), 0);
	assert_int_equal(rc_of("connections=0"), -EINVAL);
	assert_int_equal(rc_of("connections=17"), -EINVAL);
	assert_int_equal(rc_of("connections=x"), -EINVAL);
	assert_int_equal(rc_of("poll=x"), -EINVAL);
	assert_int_equal(rc_of("pop_keep=0"), 0);
	assert_int_equal(rc_of("pop_keep=36500"), 0);
	assert_int_equal(rc_of("pop_keep=36501"), -EINVAL);
	assert_int_equal(rc_of("pop_keep=-1"), -EINVAL);
	assert_int_equal(rc_of("pop_keep=7days"), -EINVAL);
	assert_int_equal(rc_of("pop_keep="), -EINVAL);
	assert_int_equal(rc_of("delete=trash"), 0);
	assert_int_equal(rc_of("delete=refuse"), 0);
	assert_int_equal(rc_of("delete=shred"), -EINVAL);
	assert_int_equal(rc_of("passcmd=a,password_stdin"), -EINVAL);

	/* 0 for poll or timeout is out of range (it once meant one second). */
	assert_int_equal(rc_of("poll=0"), -EINVAL);
	assert_int_equal(rc_of("timeout=0"), -EINVAL);
	p = parse_args("imaps://a@h", "/m", "-o", "poll=1,timeout=1", NULL);
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->o.poll, 1);
	assert_int_equal(p->o.timeout, 1);
	parsed_free(p);

	p = parse_args("imaps://a@h", "/m", "-o",
	               "pop_keep=forever,delete=refuse,connections=16", NULL);
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->o.pop_keep_days, -1);
	assert_int_equal(p->o.delete_mode, FS_DELETE_REFUSE);
	assert_int_equal(p->o.connections, 16);
	parsed_free(p);
}

/* What is not ours stays for libfuse, in order. */
static void test_rest_for_libfuse(void **state)
{
	struct parsed *p = parse_args("-f", "-s", "imaps://a@h", "-o",
	                              "allow_other,poll=9", "/m", "-d", NULL);

	(void)state;
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->o.poll, 9);
	assert_string_equal(p->o.account, "imaps://a@h");
	assert_true(left(p, "-f"));
	assert_true(left(p, "-s"));
	assert_true(left(p, "-d"));
	assert_true(left(p, "allow_other"));
	assert_true(left(p, "/m"));
	assert_false(left(p, "imaps://a@h"));
	parsed_free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_absolute),
	        cmocka_unit_test(test_default_cache_dir),
	        cmocka_unit_test(test_default_cache_dir_other_user),
	        cmocka_unit_test(test_defaults),
	        cmocka_unit_test(test_fstab_line),
	        cmocka_unit_test(test_fstab_noise),
	        cmocka_unit_test(test_escapes),
	        cmocka_unit_test(test_ro),
	        cmocka_unit_test(test_ranges),
	        cmocka_unit_test(test_rest_for_libfuse),
	        cmocka_unit_test(test_numbers),
	        cmocka_unit_test(test_fsname_log_mountpoint),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
