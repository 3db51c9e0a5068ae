/* Unit tests for proto/log.c: the log file and its format, repeated errors
 * written once with a count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "proto/log.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path[64];

static char *slurp(void)
{
	static char buf[65536];
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static unsigned lines(const char *s)
{
	unsigned n = 0;

	for (; *s != '\0'; s++)
		n += *s == '\n';
	return n;
}

static int setup(void **state)
{
	int fd;

	(void)state;
	strcpy(path, "/tmp/mailfs-log-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	unlink(path);
	assert_int_equal(log_open_file(path), 0);
	assert_int_equal(log_get_target(), LOG_TARGET_FILE);
	log_set_repeat_window(600);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	log_flush_repeats();
	unlink(path);
	return 0;
}

static void test_format(void **state)
{
	struct stat st;
	regex_t re;

	(void)state;
	log_info("mounted %s on %s", "work", "/mnt");
	log_debug("not shown at the default level");
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(
	        regcomp(&re,
	                "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:"
	                "[0-9]{2} mailfs\\[[0-9]+\\]: info: mounted "
	                "work on /mnt\n$",
	                REG_EXTENDED),
	        0);
	assert_int_equal(regexec(&re, slurp(), 0, NULL, 0), 0);
	regfree(&re);
	assert_int_equal(log_open_file("/nonexistent/dir/x.log"), -ENOENT);
	assert_int_equal(log_get_target(), LOG_TARGET_FILE);
}

static void test_repeats_counted(void **state)
{
	int i;

	(void)state;
	for (i = 0; i < 100; i++) {
		log_warn("cannot reach %s: %s", "imap.example.com",
		         "timed out");
		log_err("other failure");
		log_info("info lines are never held back");
	}
	assert_int_equal(lines(slurp()), 102);
	assert_non_null(strstr(slurp(), "warning: cannot reach "
	                                "imap.example.com: timed out\n"));
	/* Another text is another message. */
	log_warn("cannot reach %s: %s", "imap.example.com", "refused");
	assert_int_equal(lines(slurp()), 103);
	log_flush_repeats();
	assert_int_equal(lines(slurp()), 105);
	assert_non_null(strstr(slurp(), "warning: cannot reach "
	                                "imap.example.com: timed out (99 more "
	                                "times in the last 0 s)\n"));
	assert_non_null(strstr(slurp(), "error: other failure (99 more times "
	                                "in the last 0 s)\n"));
	/* Flushed: the next one is written again. */
	log_err("other failure");
	assert_int_equal(lines(slurp()), 106);
}

static void test_window(void **state)
{
	(void)state;
	log_set_repeat_window(1);
	log_err("flapping");
	log_err("flapping");
	log_err("flapping");
	assert_int_equal(lines(slurp()), 1);
	sleep(2);
	log_err("flapping");
	assert_int_equal(lines(slurp()), 2);
	assert_non_null(strstr(slurp(), "error: flapping (also 2 times in the "
	                                "last 2 s)\n"));
	log_set_repeat_window(0);
	log_err("every time");
	log_err("every time");
	assert_int_equal(lines(slurp()), 4);
}

static void test_many_texts(void **state)
{
	int i;

	(void)state;
	/* More distinct texts than slots: the oldest is told and forgotten;
	 * nothing is lost, nothing is written twice. */
	for (i = 0; i < 100; i++)
		log_err("failure %d", i);
	log_err("failure %d", 0);
	log_err("failure %d", 99);
	assert_int_equal(lines(slurp()), 101);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_format, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_repeats_counted, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_window, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_many_texts, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
