/* SASL encodings.
 *
 * Expected base64 values were computed independently of this code with
 * Python's base64 module, e.g.
 *   python3 -c 'import base64;
 * print(base64.b64encode(b"\0tim\0tanstaaftanstaaf").decode())' and the base64
 * test vectors are those of RFC 4648 section 10. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sasl.h"

static void check_b64(const void *data, size_t len, const char *b64)
{
	unsigned char *dec = NULL;
	size_t dlen = 0;
	char *enc = NULL;

	assert_int_equal(sasl_b64_encode(data, len, &enc), 0);
	assert_string_equal(enc, b64);
	assert_int_equal(sasl_b64_decode(b64, strlen(b64), &dec, &dlen), 0);
	assert_int_equal(dlen, len);
	assert_memory_equal(dec, data, len);
	assert_int_equal(dec[dlen], '\0');
	free(enc);
	free(dec);
}

static void test_b64_rfc4648(void **state)
{
	(void)state;
	check_b64("", 0, "");
	check_b64("f", 1, "Zg==");
	check_b64("fo", 2, "Zm8=");
	check_b64("foo", 3, "Zm9v");
	check_b64("foob", 4, "Zm9vYg==");
	check_b64("fooba", 5, "Zm9vYmE=");
	check_b64("foobar", 6, "Zm9vYmFy");
}

static void test_b64_all_bytes(void **state)
{
	/* base64.b64encode(bytes(range(256))) */
	static const char expect[] =
	        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKiss"
	        "LS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZ"
	        "WltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWG"
	        "h4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKz"
	        "tLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g"
	        "4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==";
	unsigned char all[256];
	int i;

	(void)state;
	for (i = 0; i < 256; i++)
		all[i] = (unsigned char)i;
	check_b64(all, sizeof(all), expect);
}

static void test_b64_decode_invalid(void **state)
{
	static const char *const bad[] = {
	        "Zg",       /* missing padding */
	        "Zg=",      /* short padding */
	        "Zm9",      /* length not a multiple of 4 */
	        "Z",        /* length */
	        "Zg===",    /* length */
	        "Z===",     /* too much padding */
	        "====",     /* only padding */
	        "Zg==Zg==", /* padding in the middle */
	        "Z=g=",     /* padding in the middle of a quad */
	        "=Zm9",     /* padding first */
	        "Zh==",     /* non-zero unused bits */
	        "Zm9=",     /* non-zero unused bits */
	        "Zm8-",     /* base64url, not base64 */
	        "Zm8_",     /* base64url */
	        "Zm 9v",    /* whitespace */
	        "Zm9v\r\n", /* line break */
	        "Zm9v\n",   /* line break */
	        "Zm,v",     /* modified UTF-7 alphabet */
	        "Zm9\x80",  /* 8-bit */
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned char *d = (unsigned char *)0x1;
		size_t n = 42;

		if (sasl_b64_decode(bad[i], strlen(bad[i]), &d, &n) != -EINVAL)
			fail_msg("accepted \"%s\"", bad[i]);
		assert_ptr_equal(d, (unsigned char *)0x1);
		assert_int_equal(n, 42);
	}
}

static void test_b64_decode_embedded(void **state)
{
	unsigned char *d = NULL;
	size_t n = 0;

	(void)state;
	/* a NUL inside the encoded characters is invalid, not an end */
	assert_int_equal(sasl_b64_decode("Zm\0v", 4, &d, &n), -EINVAL);
	/* length-delimited: what follows is not looked at */
	assert_int_equal(sasl_b64_decode("Zm9vJUNK", 4, &d, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(d, "foo", 4);
	free(d);
	/* data with NULs: "\0tim\0" */
	assert_int_equal(sasl_b64_decode("AHRpbQA=", 8, &d, &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(d, "\0tim\0", 5);
	free(d);
}

static void test_plain(void **state)
{
	char *s = NULL;

	(void)state;
	/* RFC 4616 section 4, first example: no authzid */
	assert_int_equal(sasl_plain(NULL, "tim", "tanstaaftanstaaf", &s), 0);
	assert_string_equal(s, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
	sasl_free_secret(&s);
	assert_null(s);
	assert_int_equal(sasl_plain("", "tim", "tanstaaftanstaaf", &s), 0);
	assert_string_equal(s, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
	sasl_free_secret(&s);
	/* RFC 4616 section 4, second example: authzid "Ursel" */
	assert_int_equal(sasl_plain("Ursel", "Kurt", "xipj3plmq", &s), 0);
	assert_string_equal(s, "VXJzZWwAS3VydAB4aXBqM3BsbXE=");
	sasl_free_secret(&s);
	/* base64.b64encode(b"\0alice\0hunter2") */
	assert_int_equal(sasl_plain(NULL, "alice", "hunter2", &s), 0);
	assert_string_equal(s, "AGFsaWNlAGh1bnRlcjI=");
	sasl_free_secret(&s);

	s = (char *)0x1;
	assert_int_equal(sasl_plain(NULL, "", "pw", &s), -EINVAL);
	assert_int_equal(sasl_plain(NULL, "u", "", &s), -EINVAL);
	assert_ptr_equal(s, (char *)0x1);
}

static void test_xoauth2(void **state)
{
	char *s = NULL;

	(void)state;
	/* Google's documented example; base64.b64encode(b"user=someuser@
	 * example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEu
	 * Y29tCg\x01\x01") */
	assert_int_equal(
	        sasl_xoauth2("someuser@example.com",
	                     "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
	                     &s),
	        0);
	assert_string_equal(
	        s,
	        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==");
	sasl_free_secret(&s);

	s = (char *)0x1;
	assert_int_equal(sasl_xoauth2("", "tok", &s), -EINVAL);
	assert_int_equal(sasl_xoauth2("u\001", "tok", &s), -EINVAL);
	assert_int_equal(sasl_xoauth2("u", "", &s), -EINVAL);
	assert_int_equal(sasl_xoauth2("u", "to k", &s), -EINVAL);
	assert_int_equal(sasl_xoauth2("u", "tok\001", &s), -EINVAL);
	assert_int_equal(sasl_xoauth2("u", "tok\n", &s), -EINVAL);
	assert_ptr_equal(s, (char *)0x1);
}

static void test_oauthbearer(void **state)
{
	char *s = NULL;

	(void)state;
	/* RFC 7628 section 4.1; base64.b64encode(b"n,a=user@example.com,
	 * \x01host=server.example.com\x01port=143\x01auth=Bearer
	 * vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01") */
	assert_int_equal(
	        sasl_oauthbearer(
	                "user@example.com", "server.example.com", 143,
	                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", &s),
	        0);
	assert_string_equal(
	        s,
	        "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB");
	sasl_free_secret(&s);

	/* GS2 escaping; base64.b64encode(b"n,a=a=3Db=2Cc,\x01host=imap.
	 * example.com\x01port=993\x01auth=Bearer tok\x01\x01") */
	assert_int_equal(
	        sasl_oauthbearer("a=b,c", "imap.example.com", 993, "tok", &s),
	        0);
	assert_string_equal(
	        s,
	        "bixhPWE9M0RiPTJDYywBaG9zdD1pbWFwLmV4YW1wbGUuY29tAXBvcnQ9OTkzAWF1dGg9QmVhcmVyIHRvawEB");
	sasl_free_secret(&s);

	/* no authzid, host or port; base64.b64encode(b"n,,\x01auth=Bearer
	 * tok\x01\x01") */
	assert_int_equal(sasl_oauthbearer(NULL, NULL, 0, "tok", &s), 0);
	assert_string_equal(s, "biwsAWF1dGg9QmVhcmVyIHRvawEB");
	sasl_free_secret(&s);

	/* every byte of the user escaped: the worst case for the size */
	assert_int_equal(sasl_oauthbearer(",,,,", "h", 65535, "t", &s), 0);
	sasl_free_secret(&s);

	s = (char *)0x1;
	assert_int_equal(sasl_oauthbearer("u\001", "h", 1, "t", &s), -EINVAL);
	assert_int_equal(sasl_oauthbearer("u", "h\001", 1, "t", &s), -EINVAL);
	assert_int_equal(sasl_oauthbearer("u", "", 1, "t", &s), -EINVAL);
	assert_int_equal(sasl_oauthbearer("u", "h", 65536, "t", &s), -EINVAL);
	assert_int_equal(sasl_oauthbearer("u", "h", 1, "", &s), -EINVAL);
	assert_int_equal(sasl_oauthbearer("u", "h", 1, "a b", &s), -EINVAL);
	assert_ptr_equal(s, (char *)0x1);
}

/* The mechanism is chosen by what the server offers, OAUTHBEARER first,
 * and its initial response is the one of that mechanism. */
static void test_oauth2_choice(void **state)
{
	const char *mech = NULL;
	char *s = NULL, *want = NULL;

	(void)state;
	assert_int_equal(
	        sasl_oauth2(true, true, "u@x", "imap.x", 993, "tok", &mech, &s),
	        0);
	assert_string_equal(mech, "OAUTHBEARER");
	assert_int_equal(sasl_oauthbearer("u@x", "imap.x", 993, "tok", &want),
	                 0);
	assert_string_equal(s, want);
	sasl_free_secret(&s);
	sasl_free_secret(&want);

	assert_int_equal(sasl_oauth2(false, true, "u@x", "imap.x", 993, "tok",
	                             &mech, &s),
	                 0);
	assert_string_equal(mech, "XOAUTH2");
	assert_int_equal(sasl_xoauth2("u@x", "tok", &want), 0);
	assert_string_equal(s, want);
	sasl_free_secret(&s);
	sasl_free_secret(&want);

	mech = NULL;
	assert_int_equal(sasl_oauth2(false, false, "u@x", "imap.x", 993, "tok",
	                             &mech, &s),
	                 -EPROTONOSUPPORT);
	assert_null(mech);
	assert_null(s);
	/* The mechanism's own checks still apply. */
	assert_int_equal(
	        sasl_oauth2(false, true, "u", "h", 1, "to k", &mech, &s),
	        -EINVAL);
	assert_null(s);
}

static void test_free_secret(void **state)
{
	char *s = NULL;

	(void)state;
	sasl_free_secret(&s);
	assert_null(s);
	s = strdup("secret");
	assert_non_null(s);
	sasl_free_secret(&s);
	assert_null(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_b64_rfc4648),
	        cmocka_unit_test(test_b64_all_bytes),
	        cmocka_unit_test(test_b64_decode_invalid),
	        cmocka_unit_test(test_b64_decode_embedded),
	        cmocka_unit_test(test_plain),
	        cmocka_unit_test(test_xoauth2),
	        cmocka_unit_test(test_oauthbearer),
	        cmocka_unit_test(test_oauth2_choice),
	        cmocka_unit_test(test_free_secret),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
