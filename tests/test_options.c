/* Option and fstab parsing (fs/options.h), through its public API: -o
 * lists as mount(8) passes an fstab line, backslash escapes, the fstab
 * words that are not options, what stays for libfuse, defaults, and the
 * numeric ranges.  The path options (cache_dir, cafile) are left to
 * their own tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/options.h"

struct parsed {
	struct fuse_args args; /* what is left for libfuse */
	struct fs_options o;
	int rc;
};

/* Parse "mailfs" and the NULL-terminated arguments. */
static struct parsed *parse(const char *first, ...)
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
	        parse("imaps://alice@example.org", "/mnt/mail", NULL);

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
	struct parsed *p = parse(
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
		p = parse("imaps://a@h", "/m", opt, "-o", noise[i], NULL);
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
	p = parse("imaps://a@h", "/m", "-o",
	          "passcmd=gpg\\040-d\\040a\\054b\\134c,oauth2_cmd=x", NULL);
	assert_int_equal(p->rc, -EINVAL); /* two secrets: one at a time */
	parsed_free(p);

	p = parse("imaps://a@h", "/m", "-o",
	          "passcmd=gpg\\040-d\\040a\\054b\\134c\\,d,poll=5", NULL);
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.passcmd, "gpg -d a,b\\c,d");
	assert_int_equal(p->o.poll, 5);
	parsed_free(p);

	/* Given as its own -o, a value keeps its spaces and commas as they
	 * are escaped. */
	p = parse("-o", "oauth2_cmd=oauth\\040token", "imaps://a@h", "/m",
	          NULL);
	assert_int_equal(p->rc, 0);
	assert_string_equal(p->o.oauth2_cmd, "oauth token");
	assert_string_equal(p->o.account, "imaps://a@h");
	parsed_free(p);
}

/* ro is seen, and passed on to the kernel. */
static void test_ro(void **state)
{
	struct parsed *p = parse("imaps://a@h", "/m", "-o", "ro,offline", NULL);

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
	struct parsed *p = parse("imaps://a@h", "/m", "-o", opts, NULL);
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

	/* 0 for poll and timeout means as short as can be: one second. */
	p = parse("imaps://a@h", "/m", "-o", "poll=0,timeout=0", NULL);
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->o.poll, 1);
	assert_int_equal(p->o.timeout, 1);
	parsed_free(p);

	p = parse("imaps://a@h", "/m", "-o",
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
	struct parsed *p = parse("-f", "-s", "imaps://a@h", "-o",
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
	        cmocka_unit_test(test_defaults),
	        cmocka_unit_test(test_fstab_line),
	        cmocka_unit_test(test_fstab_noise),
	        cmocka_unit_test(test_escapes),
	        cmocka_unit_test(test_ro),
	        cmocka_unit_test(test_ranges),
	        cmocka_unit_test(test_rest_for_libfuse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
