/* The ACCOUNT URL: every form, defaults, IPv6, percent-encoding, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/url.h"

struct good {
	const char *url;
	enum url_proto proto;
	bool tls;
	const char *user;
	const char *host;
	uint16_t port;
	bool port_explicit;
	const char *cache_name;
};

static const struct good goods[] = {
        {"imaps://alice@imap.example.com", URL_IMAP, true, "alice",
         "imap.example.com", 993, false, "alice@imap.example.com"},
        {"imap://alice@imap.example.com", URL_IMAP, false, "alice",
         "imap.example.com", 143, false, "alice@imap.example.com"},
        {"pop3s://bob@pop.example.com", URL_POP3, true, "bob",
         "pop.example.com", 995, false, "bob@pop.example.com+pop3"},
        {"pop3://bob@pop.example.com", URL_POP3, false, "bob",
         "pop.example.com", 110, false, "bob@pop.example.com+pop3"},
        /* explicit ports; the default ones do not show in the cache name */
        {"imaps://alice@h:993", URL_IMAP, true, "alice", "h", 993, true,
         "alice@h"},
        {"imap://alice@h:993", URL_IMAP, false, "alice", "h", 993, true,
         "alice@h"},
        {"imaps://alice@h:1993", URL_IMAP, true, "alice", "h", 1993, true,
         "alice@h:1993"},
        {"pop3://bob@h:1", URL_POP3, false, "bob", "h", 1, true,
         "bob@h:1+pop3"},
        {"pop3s://bob@h:65535", URL_POP3, true, "bob", "h", 65535, true,
         "bob@h:65535+pop3"},
        {"imaps://a@h:00993", URL_IMAP, true, "a", "h", 993, true, "a@h"},
        /* case-insensitive scheme, host lower-cased, trailing "/" */
        {"IMAPS://Alice@IMAP.Example.COM/", URL_IMAP, true, "Alice",
         "imap.example.com", 993, false, "Alice@imap.example.com"},
        {"PoP3S://x@h:995/", URL_POP3, true, "x", "h", 995, true, "x@h+pop3"},
        /* IPv4, IPv6 */
        {"imaps://u@127.0.0.1:10993", URL_IMAP, true, "u", "127.0.0.1", 10993,
         true, "u@127.0.0.1:10993"},
        {"imaps://u@[::1]:993", URL_IMAP, true, "u", "::1", 993, true,
         "u@[::1]"},
        {"imap://u@[2001:DB8::1]", URL_IMAP, false, "u", "2001:db8::1", 143,
         false, "u@[2001:db8::1]"},
        {"imaps://u@[::ffff:192.0.2.1]:1/", URL_IMAP, true, "u",
         "::ffff:192.0.2.1", 1, true, "u@[::ffff:192.0.2.1]:1"},
        {"imaps://u@[fe80::1%25eth0]:993", URL_IMAP, true, "u", "fe80::1%eth0",
         993, true, "u@[fe80::1%25eth0]"},
        /* percent-encoding in the user */
        {"imaps://alice%40example.com@imap.example.com", URL_IMAP, true,
         "alice@example.com", "imap.example.com", 993, false,
         "alice@example.com@imap.example.com"},
        {"imaps://a%3ab%3Ac@h", URL_IMAP, true, "a:b:c", "h", 993, false,
         "a:b:c@h"},
        {"imaps://%2Fetc%25@h", URL_IMAP, true, "/etc%", "h", 993, false,
         "%2Fetc%25@h"},
        {"imaps://j%C3%BCrgen@h", URL_IMAP, true, "j\xc3\xbcrgen", "h", 993,
         false, "j\xc3\xbcrgen@h"},
        /* a raw "@" and raw UTF-8 in the user */
        {"imaps://alice@example.com@imap.example.com", URL_IMAP, true,
         "alice@example.com", "imap.example.com", 993, false,
         "alice@example.com@imap.example.com"},
        {"imaps://j\xc3\xbcrgen@h", URL_IMAP, true, "j\xc3\xbcrgen", "h", 993,
         false, "j\xc3\xbcrgen@h"},
        /* a leading dot is escaped in the cache name */
        {"imaps://.hidden@h", URL_IMAP, true, ".hidden", "h", 993, false,
         "%2Ehidden@h"},
        {"imaps://..@h", URL_IMAP, true, "..", "h", 993, false, "%2E.@h"},
        {"imaps://u@mail_1.example-2.com", URL_IMAP, true, "u",
         "mail_1.example-2.com", 993, false, "u@mail_1.example-2.com"},
};

static void test_good(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(goods) / sizeof(goods[0]); i++) {
		const struct good *g = &goods[i];
		struct proto_err err = {0};
		struct account_url u;
		char port[6], *name = NULL;

		if (url_parse(g->url, &u, &err) != 0)
			fail_msg("%s: %s", g->url, err.text);
		assert_int_equal(err.cls, PERR_NONE);
		assert_int_equal(u.proto, g->proto);
		assert_int_equal(u.implicit_tls, g->tls);
		assert_string_equal(u.user, g->user);
		assert_string_equal(u.host, g->host);
		assert_int_equal(u.port, g->port);
		assert_int_equal(u.port_explicit, g->port_explicit);
		snprintf(port, sizeof(port), "%u", (unsigned)g->port);
		assert_string_equal(u.port_str, port);
		assert_int_equal(url_cache_name(&u, &name), 0);
		assert_string_equal(name, g->cache_name);
		assert_null(strchr(name, '/'));
		free(name);
		url_clear(&u);
		assert_null(u.user);
		assert_null(u.host);
		url_clear(&u);
	}
}

struct bad {
	const char *url;
	const char *msg; /* a part of the error text */
};

static const struct bad bads[] = {
        {"", "expected SCHEME://"},
        {"alice@imap.example.com", "expected SCHEME://"},
        {"imaps:/alice@h", "expected SCHEME://"},
        {"http://alice@h", "unknown scheme \"http\""},
        {"imapss://alice@h", "unknown scheme"},
        {"://alice@h", "unknown scheme \"\""},
        {"imaps://imap.example.com", "no user name"},
        {"imaps://", "no user name"},
        {"imaps://@h", "empty user name"},
        {"imaps://alice:hunter2@h", "never taken on the command line"},
        {"imaps://alice:@h", "never taken on the command line"},
        {"imaps://:pw@h", "never taken on the command line"},
        {"imaps://a%4@h", "invalid percent escape"},
        {"imaps://a%@h", "invalid percent escape"},
        {"imaps://a%zz@h", "invalid percent escape"},
        {"imaps://a%4g@h", "invalid percent escape"},
        {"imaps://a%00b@h", "NUL"},
        {"imaps://a%0d%0aA1 LOGIN@h", "spaces"},
        {"imaps://a%0Db@h", "control character"},
        {"imaps://a%7Fb@h", "control character"},
        {"imaps://alice@", "no host"},
        {"imaps://alice@:993", "no host"},
        {"imaps://alice@/", "no host"},
        {"imaps://al ice@h", "spaces"},
        {"imaps://alice@h\n", "control characters"},
        {"imaps://alice@h/INBOX", "nothing may follow"},
        {"imaps://alice@h//", "nothing may follow"},
        {"imaps://alice@h?x=1", "nothing may follow"},
        {"imaps://alice@h#frag", "nothing may follow"},
        {"imaps://alice@h:993/x", "nothing may follow"},
        {"imaps://alice@h;AUTH=PLAIN", "invalid character in the host"},
        {"imaps://alice@h!", "invalid character in the host"},
        {"imaps://alice@h\xc3\xa4", "must be ASCII"},
        {"imaps://alice@.h", "invalid host name"},
        {"imaps://alice@-h", "invalid host name"},
        {"imaps://alice@h:", "empty port"},
        {"imaps://alice@h:0", "1 to 65535"},
        {"imaps://alice@h:65536", "1 to 65535"},
        {"imaps://alice@h:99999999999999999999", "1 to 65535"},
        {"imaps://alice@h:-1", "1 to 65535"},
        {"imaps://alice@h:+1", "1 to 65535"},
        {"imaps://alice@h:0x10", "1 to 65535"},
        {"imaps://alice@h:99:1", "brackets"},
        {"imaps://alice@::1", "brackets"},
        {"imaps://alice@[::1", "missing \"]\""},
        {"imaps://alice@[::1]x", "after the IPv6"},
        {"imaps://alice@[::1]:", "empty port"},
        {"imaps://alice@[]", "invalid IPv6"},
        {"imaps://alice@[1.2.3.4]", "invalid IPv6"},
        {"imaps://alice@[::g]", "invalid IPv6"},
        {"imaps://alice@[fe80::1%eth0]", "invalid IPv6 zone"},
        {"imaps://alice@[fe80::1%25]", "invalid IPv6 zone"},
        {"imaps://alice@[fe80::1%25e/0]", "nothing may follow"},
        {"imaps://alice@[fe80::1%25e!0]", "invalid character in the IPv6"},
};

static void test_bad(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		struct proto_err err = {0};
		struct account_url u;

		if (url_parse(bads[i].url, &u, &err) != -EINVAL)
			fail_msg("accepted \"%s\"", bads[i].url);
		assert_int_equal(err.cls, PERR_LOCAL);
		assert_int_equal(err.code, -EINVAL);
		if (strstr(err.text, bads[i].msg) == NULL)
			fail_msg("\"%s\": got \"%s\", expected \"%s\"",
			         bads[i].url, err.text, bads[i].msg);
		assert_non_null(strstr(err.text, "account URL: "));
		assert_null(strchr(err.text, '\n'));
		/* left cleared */
		assert_null(u.user);
		assert_null(u.host);
	}
}

static void test_password_not_echoed(void **state)
{
	struct proto_err err = {0};
	struct account_url u;

	(void)state;
	assert_int_equal(url_parse("imaps://alice:hunter2@h", &u, &err),
	                 -EINVAL);
	assert_null(strstr(err.text, "hunter2"));
	assert_non_null(strstr(err.text, "passcmd"));
	assert_non_null(strstr(err.text, "password_stdin"));
}

static void test_null_err(void **state)
{
	struct account_url u;

	(void)state;
	assert_int_equal(url_parse("bogus", &u, NULL), -EINVAL);
	assert_int_equal(url_parse("imaps://a@h", &u, NULL), 0);
	url_clear(&u);
}

static void test_cache_name_limits(void **state)
{
	struct account_url u;
	char url[600], *name = NULL;

	(void)state;
	/* 255 bytes is the limit for a file name */
	memset(url, 0, sizeof(url));
	strcpy(url, "imaps://");
	memset(url + 8, 'a', 253);
	strcpy(url + 8 + 253, "@h");
	assert_int_equal(url_parse(url, &u, NULL), 0);
	assert_int_equal(url_cache_name(&u, &name), 0);
	assert_int_equal(strlen(name), 255);
	free(name);
	url_clear(&u);

	strcpy(url + 8 + 253, "a@h");
	assert_int_equal(url_parse(url, &u, NULL), 0);
	assert_int_equal(url_cache_name(&u, &name), -ENAMETOOLONG);
	url_clear(&u);

	/* short raw, but "/" escapes push it over */
	strcpy(url, "imaps://");
	for (int i = 0; i < 100; i++)
		strcat(url, "%2F");
	strcat(url, "@h");
	assert_int_equal(url_parse(url, &u, NULL), 0);
	assert_int_equal(url_cache_name(&u, &name), -ENAMETOOLONG);
	url_clear(&u);

	/* a host too long for DNS */
	strcpy(url, "imaps://u@");
	memset(url + 10, 'h', 254);
	url[10 + 254] = '\0';
	assert_int_equal(url_parse(url, &u, NULL), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_good),
	        cmocka_unit_test(test_bad),
	        cmocka_unit_test(test_password_not_echoed),
	        cmocka_unit_test(test_null_err),
	        cmocka_unit_test(test_cache_name_limits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
