/* Tests of the IMAP client's helpers that need no server: UID sets as
 * servers send them (VANISHED, COPYUID) parsed into ranges, the sets the
 * client formats parsed back, and what providers' answers say about load
 * (throttling, connection caps). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/imap_client.h"

#define MAX_RANGES 16

/* What imap_uidset_parse() reported. */
struct ranges {
	size_t n;
	uint32_t lo[MAX_RANGES], hi[MAX_RANGES];
	size_t calls;
	size_t stop_after; /* return stop_rc from this call on (0: never) */
	int stop_rc;
};

static int collect(void *ctx, uint32_t lo, uint32_t hi)
{
	struct ranges *r = ctx;

	r->calls++;
	assert_true(lo <= hi);
	if (r->n < MAX_RANGES) {
		r->lo[r->n] = lo;
		r->hi[r->n] = hi;
		r->n++;
	}
	if (r->stop_after != 0 && r->calls >= r->stop_after)
		return r->stop_rc;
	return 0;
}

/* Parse s; expect rc and, when given, the ranges as "lo-hi lo-hi ...". */
static void check(const char *s, int want_rc, const char *want)
{
	struct ranges r = {0};
	char got[512] = "";
	size_t used = 0;
	int rc = imap_uidset_parse(s, collect, &r);

	if (rc != want_rc)
		fail_msg("\"%s\": rc %d, want %d", s, rc, want_rc);
	for (size_t i = 0; i < r.n; i++)
		used += (size_t)snprintf(got + used, sizeof(got) - used,
		                         "%s%u-%u", i ? " " : "", r.lo[i],
		                         r.hi[i]);
	if (strcmp(got, want) != 0)
		fail_msg("\"%s\": ranges \"%s\", want \"%s\"", s, got, want);
}

static void test_single(void **state)
{
	(void)state;
	check("7", 0, "7-7");
	check("1", 0, "1-1");
	check("4294967295", 0, "4294967295-4294967295");
	check("1,3,5", 0, "1-1 3-3 5-5");
}

static void test_ranges(void **state)
{
	(void)state;
	check("1:5", 0, "1-5");
	check("1:5,7,9:12", 0, "1-5 7-7 9-12");
	check("3:3", 0, "3-3");
	/* Overlapping and unordered ranges are the caller's business. */
	check("9:12,1:10,5", 0, "9-12 1-10 5-5");
	/* Huge: one call, nothing expanded. */
	check("1:4294967295", 0, "1-4294967295");
}

static void test_reversed(void **state)
{
	(void)state;
	check("5:3", 0, "3-5");
	check("4294967295:1", 0, "1-4294967295");
	check("12:9,2", 0, "9-12 2-2");
}

static void test_star(void **state)
{
	(void)state;
	check("*", 0, "4294967295-4294967295");
	check("9:*", 0, "9-4294967295");
	check("*:9", 0, "9-4294967295");
	check("1,*", 0, "1-1 4294967295-4294967295");
	check("*:*", 0, "4294967295-4294967295");
}

static void test_malformed(void **state)
{
	static const char *const bad[] = {
	        "",      /* empty */
	        "1,",    /* trailing comma */
	        ",1",    /* leading comma */
	        "1,,2",  /* empty element */
	        "1:",    /* open range */
	        ":5",    /* no start */
	        "1::2",  /* double colon */
	        "1:2:3", /* three ends */
	        "0",     /* UIDs start at 1 */
	        "0:5",   /* ... at either end */
	        "5:0",
	        "01",         /* leading zero */
	        "4294967296", /* overflow by one */
	        "1:4294967296",
	        "99999999999999999999999", /* far over, no wrap */
	        "18446744073709551617",    /* 2^64 + 1 */
	        "-1",
	        "+1",
	        "1 2",
	        " 1",
	        "1 ",
	        "1;2",
	        "abc",
	        "1:x",
	        "**",
	        "*5",
	        "5*",
	        "3:5,x", /* garbage after a good range */
	        "1:5,7,9:12,",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		/* Rejected as a whole: no range of a malformed set is
		 * reported, not even the good ones before the error. */
		check(bad[i], -EINVAL, "");
}

static void test_stop(void **state)
{
	struct ranges r = {.stop_after = 2, .stop_rc = 42};

	(void)state;
	assert_int_equal(imap_uidset_parse("1,2:3,4,5", collect, &r), 42);
	assert_int_equal(r.calls, 2);
	assert_int_equal(r.lo[1], 2);
	assert_int_equal(r.hi[1], 3);

	memset(&r, 0, sizeof(r));
	r.stop_after = 1;
	r.stop_rc = -ECANCELED;
	assert_int_equal(imap_uidset_parse("9:*,1", collect, &r), -ECANCELED);
	assert_int_equal(r.calls, 1);

	/* Stopping at the last range still returns the stop value. */
	memset(&r, 0, sizeof(r));
	r.stop_after = 3;
	r.stop_rc = 1;
	assert_int_equal(imap_uidset_parse("1,2,3", collect, &r), 1);
	assert_int_equal(r.calls, 3);
}

/* Expand the ranges back into UIDs (small sets only). */
struct expand {
	uint32_t *v;
	size_t n, cap;
};

static int expand(void *ctx, uint32_t lo, uint32_t hi)
{
	struct expand *e = ctx;

	for (uint64_t u = lo; u <= hi; u++) {
		if (e->n == e->cap)
			return -E2BIG;
		e->v[e->n++] = (uint32_t)u;
	}
	return 0;
}

static void round_trip(const uint32_t *uids, size_t n, const char *want)
{
	uint32_t back[256];
	struct expand e = {.v = back, .cap = 256};
	char *set = imap_uidset_format(uids, n);

	assert_non_null(set);
	if (want != NULL)
		assert_string_equal(set, want);
	if (n == 0) {
		/* The empty set formats as "", which is no UID set. */
		assert_int_equal(imap_uidset_parse(set, expand, &e), -EINVAL);
		free(set);
		return;
	}
	assert_int_equal(imap_uidset_parse(set, expand, &e), 0);
	assert_int_equal(e.n, n);
	assert_memory_equal(back, uids, n * sizeof(*uids));
	free(set);
}

static void test_round_trip(void **state)
{
	static const uint32_t one[] = {7};
	static const uint32_t run[] = {1, 2, 3, 4, 5};
	static const uint32_t mixed[] = {1, 2, 3, 5, 7, 8, 9, 12};
	static const uint32_t edge[] = {4294967293U, 4294967294U, 4294967295U};
	static const uint32_t pairs[] = {1, 2, 4, 5, 7, 8};
	uint32_t many[200];
	uint32_t seed = 12345;

	(void)state;
	round_trip(NULL, 0, "");
	round_trip(one, 1, "7");
	round_trip(run, 5, "1:5");
	round_trip(mixed, 8, "1:3,5,7:9,12");
	round_trip(edge, 3, "4294967293:4294967295");
	round_trip(pairs, 6, "1:2,4:5,7:8");

	/* Random sorted sets with gaps of 1..3. */
	for (int iter = 0; iter < 200; iter++) {
		uint32_t uid = 0;
		size_t n;

		seed = seed * 1103515245 + 12345;
		n = 1 + (seed >> 16) % 200;
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245 + 12345;
			uid += 1 + (seed >> 16) % 3;
			many[i] = uid;
		}
		round_trip(many, n, NULL);
	}
}

/* Answers as Exchange / Microsoft 365, Gmail and Dovecot send them. */
static void test_busy(void **state)
{
	int ms = -1;

	(void)state;
	assert_int_equal(imap_busy_parse(NULL,
	                                 "Request is throttled. Suggested "
	                                 "Backoff Time: 2000 milliseconds",
	                                 &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(ms, 2000);
	assert_int_equal(imap_busy_parse(NULL,
	                                 "Request is throttled. Suggested "
	                                 "Backoff Time: 299910 milliseconds",
	                                 &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(ms, 299910);
	/* A silly time is bounded, a missing one is 0. */
	assert_int_equal(imap_busy_parse(NULL,
	                                 "Suggested Backoff Time: "
	                                 "99999999999999 milliseconds",
	                                 &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(ms, 24 * 3600 * 1000);
	assert_int_equal(imap_busy_parse(NULL, "Request is throttled.", &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(ms, 0);
	assert_int_equal(imap_busy_parse(NULL, "Success [THROTTLED]", &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(imap_busy_parse("THROTTLED", "Success", &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(imap_busy_parse("UNAVAILABLE", "Try later", &ms),
	                 IMAP_BUSY_THROTTLED);
	assert_int_equal(imap_busy_parse("ALERT",
	                                 "Too many simultaneous connections. "
	                                 "(Failure)",
	                                 &ms),
	                 IMAP_BUSY_TOO_MANY);
	assert_int_equal(imap_busy_parse("UNAVAILABLE",
	                                 "Maximum number of connections from "
	                                 "user+IP exceeded "
	                                 "(mail_max_userip_connections=16)",
	                                 &ms),
	                 IMAP_BUSY_TOO_MANY);
	/* Ordinary answers say nothing about load. */
	assert_int_equal(
	        imap_busy_parse(NULL, "Fetch completed (0.001 secs).", &ms),
	        IMAP_BUSY_NONE);
	assert_int_equal(imap_busy_parse("AUTHENTICATIONFAILED",
	                                 "Authentication failed.", &ms),
	                 IMAP_BUSY_NONE);
	assert_int_equal(
	        imap_busy_parse("TRYCREATE", "Mailbox doesn't exist", &ms),
	        IMAP_BUSY_NONE);
	assert_int_equal(imap_busy_parse(NULL, NULL, &ms), IMAP_BUSY_NONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_single),
	        cmocka_unit_test(test_ranges),
	        cmocka_unit_test(test_reversed),
	        cmocka_unit_test(test_star),
	        cmocka_unit_test(test_malformed),
	        cmocka_unit_test(test_stop),
	        cmocka_unit_test(test_round_trip),
	        cmocka_unit_test(test_busy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
