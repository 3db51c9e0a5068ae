/* The string buffer of proto/strbuf and the base64 digits of proto/b64
 * (the encoders and decoders built on them are tested in test_sasl.c,
 * test_utf7.c and test_mime.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proto/b64.h"
#include "proto/strbuf.h"

static void test_strbuf(void **state)
{
	struct strbuf b = {0};
	char big[1000];
	char *s;

	(void)state;
	s = strbuf_take(&b);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);

	strbuf_str(&b, "A1 ");
	strbuf_printf(&b, "%u:%u", 1u, 5u);
	strbuf_add(&b, "\0x", 2);
	assert_int_equal(b.len, 8);
	assert_memory_equal(b.s, "A1 1:5\0x", 8);
	assert_int_equal(b.s[b.len], '\0');
	/* Growth keeps every byte and the terminator. */
	memset(big, 'z', sizeof(big));
	for (int i = 0; i < 100; i++)
		strbuf_add(&b, big, sizeof(big));
	assert_int_equal(b.len, 8 + 100 * sizeof(big));
	assert_int_equal(b.s[b.len], '\0');
	assert_int_equal(b.s[b.len - 1], 'z');
	assert_false(b.oom);
	strbuf_wipe(&b);
	assert_null(b.s);
	assert_int_equal(b.len, 0);

	/* Formatted text longer than the printf limit is an error. */
	memset(big, 'y', 200);
	big[200] = '\0';
	strbuf_printf(&b, "%s", big);
	assert_true(b.oom);
	strbuf_str(&b, "x");
	assert_null(strbuf_take(&b));
	assert_null(b.s);
	assert_false(b.oom);
}

static void test_b64(void **state)
{
	static const unsigned char in[] = {0xfb, 0xff, 0xbf, 'M', 'a'};
	char out[16];
	char *end;

	(void)state;
	assert_int_equal(strlen(b64_std), 64);
	assert_int_equal(strlen(b64_imap), 64);
	for (int i = 0; i < 64; i++) {
		assert_int_equal(b64_value(b64_std, (unsigned char)b64_std[i]),
		                 i);
		assert_int_equal(
		        b64_value(b64_imap, (unsigned char)b64_imap[i]), i);
	}
	assert_int_equal(b64_value(b64_std, ','), -1);
	assert_int_equal(b64_value(b64_imap, '/'), -1);
	assert_int_equal(b64_value(b64_std, '='), -1);
	assert_int_equal(b64_value(b64_std, '\0'), -1);

	end = b64_put(out, in, 5, b64_std, true);
	assert_int_equal(end - out, 8);
	assert_memory_equal(out, "+/+/TWE=", 8);
	end = b64_put(out, in, 5, b64_imap, false);
	assert_int_equal(end - out, 7);
	assert_memory_equal(out, "+,+,TWE", 7);
	end = b64_put(out, in + 3, 1, b64_std, true);
	assert_memory_equal(out, "TQ==", 4);
	assert_int_equal(end - out, 4);
	assert_ptr_equal(b64_put(out, in, 0, b64_std, true), out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_strbuf),
	        cmocka_unit_test(test_b64),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
