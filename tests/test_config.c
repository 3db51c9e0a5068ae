/* Unit tests for fs/config.c (the configuration file: valid files,
 * malformed lines, random input) and fs/mixing.c's fs_same_provider(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "fs/config.h"
#include "fs/mixing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct fs_config *parse_ok(const char *text)
{
	struct fs_config *cfg = NULL;
	char why[512];
	int rc = fs_config_parse(text, strlen(text), "/home/al", &cfg, why,
	                         sizeof(why));

	if (rc != 0)
		fail_msg("parse failed: %s", why);
	return cfg;
}

static void parse_bad(const char *text, const char *want)
{
	struct fs_config *cfg = NULL;
	char why[512];
	int rc = fs_config_parse(text, strlen(text), "/home/al", &cfg, why,
	                         sizeof(why));

	assert_int_equal(rc, -EINVAL);
	assert_null(cfg);
	if (strcmp(why, want) != 0)
		fail_msg("for %s: got \"%s\", want \"%s\"", text, why, want);
}

static void test_valid(void **state)
{
	struct fs_config *cfg;
	const struct fs_account *a;

	(void)state;
	cfg = parse_ok("# comment\n"
	               "; another\n"
	               "\n"
	               "[work]\r\n"
	               "url = imaps://alice%40example.com@imap.example.com\n"
	               "\tpasscmd   =   pass show a,b\\c # not a comment  \n"
	               "mountpoint = ~/mail/work\n"
	               "cafile = certs/ca.pem\n"
	               "mark_seen = Yes\n"
	               "offline = no\n"
	               "poll=120\n"
	               "log = stderr\n"
	               "options = allow_other,delete=expunge\n"
	               "[ home.2@x+y ]\n"
	               "url = pop3s://bob@pop.example.com\n"
	               "log = ~\n"
	               "cache_dir = /var/c\n");
	assert_int_equal(cfg->n, 2);
	a = fs_config_get(cfg, "work");
	assert_non_null(a);
	assert_int_equal(a->line, 4);
	assert_string_equal(a->url,
	                    "imaps://alice%40example.com@imap.example.com");
	assert_string_equal(a->mountpoint, "/home/al/mail/work");
	assert_string_equal(a->options,
	                    "passcmd=pass show a\\,b\\\\c # not a comment,"
	                    "cafile=/home/al/certs/ca.pem,mark_seen,poll=120,"
	                    "log=stderr,allow_other,delete=expunge");
	a = fs_config_get(cfg, "home.2@x+y");
	assert_non_null(a);
	assert_null(a->mountpoint);
	assert_string_equal(a->options, "log=/home/al,cache_dir=/var/c");
	assert_null(fs_config_get(cfg, "nosuch"));
	assert_null(fs_config_get(cfg, "Work"));
	fs_config_free(&cfg);
	assert_null(cfg);

	/* No accounts at all is a valid, empty file. */
	cfg = parse_ok("# nothing yet\n");
	assert_int_equal(cfg->n, 0);
	fs_config_free(&cfg);
	cfg = parse_ok("");
	fs_config_free(&cfg);
	/* A last line without its newline. */
	cfg = parse_ok("[a]\nurl = imaps://u@h");
	assert_string_equal(cfg->accounts[0].url, "imaps://u@h");
	fs_config_free(&cfg);
}

static void test_malformed(void **state)
{
	char big[FS_CONFIG_MAX_LINE + 64];

	(void)state;
	parse_bad("url = imaps://u@h\n",
	          "line 1: \"url\" before the first [NAME]");
	parse_bad("[a]\nurl = imaps://u@h\npasword = x\n",
	          "line 3: unknown key \"pasword\"");
	parse_bad("[a]\nurl = imaps://u@h\nurl = imaps://v@h\n",
	          "line 3: \"url\" given twice for account a");
	parse_bad("[a]\nurl = imaps://u@h\n[a]\nurl = imaps://u@h\n",
	          "line 3: account \"a\" again (first on line 1)");
	parse_bad("[a]\npasscmd = x\n", "line 1: account a has no url");
	parse_bad("[a]\nurl =\n", "line 2: \"url\" has no value");
	parse_bad("[a]\nurl =   \t \n", "line 2: \"url\" has no value");
	parse_bad("[a]\nurl imaps://u@h\n",
	          "line 2: expected \"[NAME]\" or \"key = value\"");
	parse_bad("[a\n", "line 1: \"[\" without \"]\" at the end");
	parse_bad("[]\n", "line 1: bad account name \"\" (letters, digits and "
	                  "._@+- only, at most 64)");
	parse_bad("[-a]\n", "line 1: bad account name \"-a\" (letters, digits "
	                    "and ._@+- only, at most 64)");
	parse_bad("[a b]\n", "line 1: bad account name \"a b\" (letters, "
	                     "digits and ._@+- only, at most 64)");
	parse_bad("[a/b]\n", "line 1: bad account name \"a/b\" (letters, "
	                     "digits and ._@+- only, at most 64)");
	parse_bad("[status]\n",
	          "line 1: \"status\" is a command of mailfs, not an account "
	          "name");
	parse_bad("[fetch]\n", "line 1: \"fetch\" is a command of mailfs, not "
	                       "an account name");
	parse_bad("[a]\nurl = imaps://u@h\nmark_seen = maybe\n",
	          "line 3: mark_seen = maybe: expected yes or no");
	parse_bad("[a]\nurl = imaps://u@h\x01\n",
	          "line 2: control character (byte 0x01)");
	parse_bad("[a]\nurl = imaps://u@h\x7f\n",
	          "line 2: control character (byte 0x7f)");
	parse_bad("[a]\nurl = imaps://u@h\rx\n",
	          "line 2: control character (byte 0x0d)");
	parse_bad("= x\n", "line 1: unknown key \"\"");
	memset(big, 'x', sizeof(big));
	memcpy(big, "[a]\n#", 5);
	big[sizeof(big) - 1] = '\0';
	parse_bad(big, "line 2: longer than 4096 bytes");
	{
		/* A NUL byte inside the text. */
		static const char nul[] = "[a]\nurl = imaps://u@h\0x\n";
		struct fs_config *cfg = NULL;
		char why[256];

		assert_int_equal(fs_config_parse(nul, sizeof(nul) - 1, "/h",
		                                 &cfg, why, sizeof(why)),
		                 -EINVAL);
		assert_string_equal(why, "line 2: NUL byte");
	}
}

/* Random and mutated input: never a crash, always a clean answer. */
static void test_random(void **state)
{
	static const char seed[] = "[work]\nurl = imaps://u@h\npasscmd = x\n"
	                           "mountpoint = ~/m\noptions = ro\n";
	static const char alphabet[] = "[]=#;\n\r\t ~/,\\aurlo\x01\x7f\xff";
	char buf[256];
	unsigned i, j;

	(void)state;
	srand(12345);
	for (i = 0; i < 20000; i++) {
		struct fs_config *cfg = NULL;
		size_t len;
		char why[512];
		int rc;

		if (i % 2 == 0) {
			len = sizeof(seed) - 1;
			memcpy(buf, seed, len);
			for (j = 0; j < 1 + (unsigned)rand() % 4; j++)
				buf[(size_t)rand() % len] =
				        alphabet[(size_t)rand() %
				                 (sizeof(alphabet) - 1)];
		} else {
			len = (size_t)rand() % sizeof(buf);
			for (j = 0; j < len; j++)
				buf[j] = alphabet[(size_t)rand() %
				                  (sizeof(alphabet) - 1)];
		}
		rc = fs_config_parse(buf, len, "/h", &cfg, why, sizeof(why));
		assert_true(rc == 0 || rc == -EINVAL);
		if (rc == 0) {
			for (j = 0; j < cfg->n; j++)
				assert_non_null(cfg->accounts[j].url);
			fs_config_free(&cfg);
		} else {
			assert_null(cfg);
			assert_true(strncmp(why, "line ", 5) == 0);
		}
	}
}

static char *write_config(const char *text, mode_t mode)
{
	char *dir = strdup("/tmp/mailfs-config-XXXXXX"), *path = NULL;
	FILE *f;

	assert_non_null(mkdtemp(dir));
	assert_true(asprintf(&path, "%s/config", dir) > 0);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
	free(dir);
	return path;
}

static void remove_config(char *path)
{
	char *slash;

	unlink(path);
	slash = strrchr(path, '/');
	*slash = '\0';
	rmdir(path);
	free(path);
}

static void test_load_modes(void **state)
{
	static const mode_t refused[] = {0644, 0640, 0604, 0620, 0602, 0700};
	struct fs_config *cfg = NULL;
	char why[1024];
	size_t i;
	char *path;

	(void)state;
	path = write_config("[a]\nurl = imaps://u@h\n", 0600);
	assert_int_equal(fs_config_load(path, &cfg, why, sizeof(why)), 0);
	assert_int_equal(cfg->n, 1);
	assert_string_equal(cfg->path, path);
	fs_config_free(&cfg);
	assert_int_equal(chmod(path, 0400), 0);
	assert_int_equal(fs_config_load(path, &cfg, why, sizeof(why)), 0);
	fs_config_free(&cfg);
	for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		if (refused[i] == 0700)
			continue; /* owner bits only: accepted */
		assert_int_equal(chmod(path, refused[i]), 0);
		assert_int_equal(fs_config_load(path, &cfg, why, sizeof(why)),
		                 -EPERM);
		assert_null(cfg);
		assert_non_null(strstr(why, "chmod 600"));
	}
	remove_config(path);
	path = write_config("[a]\nurl = imaps://u@h\nbad\n", 0600);
	assert_int_equal(fs_config_load(path, &cfg, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "config: line 3: expected"));
	remove_config(path);
	assert_int_equal(
	        fs_config_load("/nonexistent/config", &cfg, why, sizeof(why)),
	        -ENOENT);
	assert_int_equal(fs_config_load("/tmp", &cfg, why, sizeof(why)),
	                 -EPERM);
}

static void test_find(void **state)
{
	struct fs_account *a = NULL;
	char *path, *dir;

	(void)state;
	path = write_config("[work]\nurl = imaps://u@h\nmountpoint = /tmp\n"
	                    "[other]\nurl = imaps://v@h\n",
	                    0600);
	dir = strdup(path);
	*strrchr(dir, '/') = '\0';
	*strrchr(dir, '/') = '\0';
	assert_true(strncmp(dir, "/tmp", 4) == 0);
	{
		/* XDG_CONFIG_HOME/mailfs/config: rename the file's folder. */
		char *xdg = NULL, *cfgdir = NULL, *old = strdup(path);

		assert_true(asprintf(&xdg, "%s.xdg", path) > 0);
		assert_int_equal(mkdir(xdg, 0700), 0);
		assert_true(asprintf(&cfgdir, "%s/mailfs", xdg) > 0);
		assert_int_equal(mkdir(cfgdir, 0700), 0);
		free(path);
		assert_true(asprintf(&path, "%s/config", cfgdir) > 0);
		assert_int_equal(rename(old, path), 0);
		setenv("XDG_CONFIG_HOME", xdg, 1);
		assert_int_equal(fs_config_find("work", &a), 0);
		assert_string_equal(a->name, "work");
		assert_string_equal(a->url, "imaps://u@h");
		fs_account_free(&a);
		assert_null(a);
		/* By its mount point, also written otherwise. */
		assert_int_equal(fs_config_find("/tmp/", &a), 0);
		assert_string_equal(a->name, "work");
		fs_account_free(&a);
		assert_int_equal(fs_config_find("/tmp/../tmp", &a), 0);
		fs_account_free(&a);
		assert_int_equal(fs_config_find("other", &a), 0);
		assert_null(a->mountpoint);
		fs_account_free(&a);
		assert_int_equal(fs_config_find("nosuch", &a), -ENOENT);
		assert_null(a);
		assert_int_equal(fs_config_find("/", &a), -ENOENT);
		/* Refused for its mode: an error, not "no such account". */
		assert_int_equal(chmod(path, 0644), 0);
		assert_int_equal(fs_config_find("work", &a), -EPERM);
		unlink(path);
		assert_int_equal(fs_config_find("work", &a), -ENOENT);
		rmdir(cfgdir);
		rmdir(xdg);
		*strrchr(old, '/') = '\0';
		rmdir(old);
		free(old);
		free(xdg);
		free(cfgdir);
	}
	free(path);
	free(dir);
}

static void test_same_provider(void **state)
{
	(void)state;
	assert_true(fs_same_provider("pop.gmail.com", "imap.gmail.com"));
	assert_true(fs_same_provider("pop.provider.nl", "imap.provider.nl"));
	assert_true(fs_same_provider("POP3.Provider.NL", "imap.provider.nl"));
	assert_true(
	        fs_same_provider("pop.mail.yahoo.com", "imap.mail.yahoo.com"));
	assert_true(fs_same_provider("pop.localhost", "imap.localhost"));
	assert_true(fs_same_provider("outlook.office365.com",
	                             "outlook.office365.com"));
	assert_true(fs_same_provider("mail.example.org", "example.org"));
	assert_true(fs_same_provider("127.0.0.1", "127.0.0.1"));
	assert_true(fs_same_provider("::1", "::1"));
	assert_false(fs_same_provider("pop.gmail.com", "imap.fastmail.com"));
	assert_false(fs_same_provider("imap.example.com", "example.org"));
	assert_false(fs_same_provider("a.com", "b.com"));
	assert_false(fs_same_provider("localhost", "otherhost"));
	assert_false(fs_same_provider("127.0.0.1", "127.0.0.2"));
	assert_false(fs_same_provider("10.0.0.1", "localhost"));
	assert_false(fs_same_provider("gmail.com", "com"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_valid),
	        cmocka_unit_test(test_malformed),
	        cmocka_unit_test(test_random),
	        cmocka_unit_test(test_load_modes),
	        cmocka_unit_test(test_find),
	        cmocka_unit_test(test_same_provider),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
