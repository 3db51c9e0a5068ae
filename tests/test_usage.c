/* What a mount reports about itself, the pure parts: the statfs answer
 * (fs/usage.h), JSON strings always valid (fs_usage_json_str), and the
 * JSON reader the status command uses (fs/json.h), round trips included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "fs/json.h"
#include "fs/usage.h"

static void test_statvfs_quota(void **state)
{
	struct statvfs st;

	(void)state;
	fs_usage_statvfs(&st, 600 * 1024 + 1, 10 * 1024 * 1024, 80, 500);
	assert_int_equal(st.f_frsize, 1024);
	assert_int_equal(st.f_blocks, 10240);
	assert_int_equal(st.f_bfree, 10240 - 601);
	assert_int_equal(st.f_bavail, 10240 - 601);
	assert_int_equal(st.f_files, 500);
	assert_int_equal(st.f_ffree, 420);
	/* Over quota: nothing free, never a wrap-around. */
	fs_usage_statvfs(&st, 11 * 1024 * 1024, 10 * 1024 * 1024, 600, 500);
	assert_int_equal(st.f_bfree, 0);
	assert_int_equal(st.f_ffree, 0);
}

static void test_statvfs_known_size(void **state)
{
	struct statvfs st;

	(void)state;
	fs_usage_statvfs(&st, 2049, 0, 7, 0);
	assert_int_equal(st.f_blocks, 3);
	assert_int_equal(st.f_bfree, 0);
	assert_int_equal(st.f_files, 7);
	assert_int_equal(st.f_ffree, 0);
	/* An empty account still has one block: df lists it. */
	fs_usage_statvfs(&st, 0, 0, 0, 0);
	assert_int_equal(st.f_blocks, 1);
}

static char *json_of(const char *s)
{
	struct strbuf b = {0};

	fs_usage_json_str(&b, s);
	return strbuf_take(&b);
}

static void test_json_str(void **state)
{
	char *s;

	(void)state;
	s = json_of("a\"b\\c\n\x01 é");
	assert_string_equal(s, "\"a\\\"b\\\\c\\u000a\\u0001 é\"");
	free(s);
	/* Invalid UTF-8 (a lone continuation byte, an overlong form, a
	 * cut sequence) becomes U+FFFD: the text stays valid JSON. */
	s = json_of("x\x80y\xc0\xafz\xe2\x82");
	assert_string_equal(s, "\"x\\ufffdy\\ufffd\\ufffdz\\ufffd\\ufffd\"");
	free(s);
}

static void test_json_parse(void **state)
{
	const char *text =
	        " {\"a\": 1, \"b\": [true, false, null, \"x\\u00e9\\ud83d\\ude00\"],"
	        " \"c\": {\"d\": -2.5e1}, \"big\": 9007199254740991} ";
	struct json *j = json_parse(text, strlen(text));
	struct strbuf b = {0};
	char *out;

	(void)state;
	assert_non_null(j);
	assert_true(json_num(j, "a", 0) == 1);
	assert_int_equal(json_get(j, "b")->count, 4);
	assert_true(json_get(j, "b")->items[0]->b);
	assert_false(json_get(j, "b")->items[1]->b);
	assert_int_equal(json_get(j, "b")->items[2]->type, JSON_NULL);
	assert_string_equal(json_get(j, "b")->items[3]->s,
	                    "xé\xf0\x9f\x98\x80");
	assert_true(json_num(json_get(j, "c"), "d", 0) == -25);
	assert_true(json_num(j, "big", 0) == 9007199254740991.0);
	assert_null(json_get(j, "missing"));
	assert_string_equal(json_str(j, "a", "def"), "def");
	json_write(&b, j);
	out = strbuf_take(&b);
	assert_string_equal(
	        out, "{\"a\":1,\"b\":[true,false,null,\"xé\xf0\x9f\x98\x80\"],"
	             "\"c\":{\"d\":-25},\"big\":9007199254740991}");
	free(out);
	json_free(j);
}

static void test_json_bad(void **state)
{
	static const char *const bad[] = {
	        "",           "{",           "[1,]",     "{\"a\" 1}",
	        "{\"a\":1,}", "\"\\u0000\"", "\"\x01\"", "tru",
	        "1 2",        "{\"a\":nan}", "\"abc",    "[\"\\x\"]",
	};
	char deep[100];
	struct json *ok;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_null(json_parse(bad[i], strlen(bad[i])));
	memset(deep, '[', 40);
	memset(deep + 40, ']', 40);
	assert_null(json_parse(deep, 80));
	ok = json_parse(deep + 10, 60); /* 30 deep is fine */
	assert_non_null(ok);
	json_free(ok);
}

static void test_json_append(void **state)
{
	struct json *a = json_parse("[1]", 3), *v = json_parse("2", 1);
	struct strbuf b = {0};
	char *out;

	(void)state;
	assert_true(json_append(a, v));
	json_write(&b, a);
	out = strbuf_take(&b);
	assert_string_equal(out, "[1,2]");
	free(out);
	json_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_statvfs_quota),
	        cmocka_unit_test(test_statvfs_known_size),
	        cmocka_unit_test(test_json_str),
	        cmocka_unit_test(test_json_parse),
	        cmocka_unit_test(test_json_bad),
	        cmocka_unit_test(test_json_append),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
