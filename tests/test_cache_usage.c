/* What a mailbox holds and caches (cache_mailbox_usage) and the next
 * message whose body is not cached (cache_msg_next_uncached): bodies
 * small and in pieces, sizes verified or not, other generations and
 * mailboxes left out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"

struct fixture {
	char dir[256];
	struct cache *cache;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *base = getenv("TMPDIR");

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/mailfs-usage-XXXXXX",
	         base && *base ? base : "/tmp");
	if (mkdtemp(f->dir) == NULL || cache_open(f->dir, &f->cache) != 0) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[300];

	cache_close(&f->cache);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f);
	return 0;
}

static void put_msg(struct cache *c, uint32_t box, uint32_t uidv, uint32_t uid,
                    uint64_t size)
{
	struct cache_msg m = {.key = {box, uidv, uid}, .size = size};
	struct cache_txn *t = NULL;

	assert_int_equal(cache_txn_begin(c, true, &t), 0);
	assert_int_equal(cache_msg_put(t, &m), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static uint32_t add_box(struct cache *c, const char *name)
{
	struct cache_mailbox mb = {.name = (char *)name, .uidvalidity = 7};
	struct cache_txn *t = NULL;
	uint32_t id;

	assert_int_equal(cache_txn_begin(c, true, &t), 0);
	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	return id;
}

static void usage_of(struct cache *c, uint32_t box, uint32_t uidv,
                     struct cache_usage *u)
{
	struct cache_txn *t = NULL;

	assert_int_equal(cache_txn_begin(c, false, &t), 0);
	assert_int_equal(cache_mailbox_usage(t, box, uidv, u), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static int next_of(struct cache *c, uint32_t box, uint32_t uidv, uint32_t from,
                   uint32_t *uid, uint64_t *size)
{
	struct cache_txn *t = NULL;
	int rc;

	assert_int_equal(cache_txn_begin(c, false, &t), 0);
	rc = cache_msg_next_uncached(t, box, uidv, from, uid, size);
	assert_int_equal(cache_txn_commit(&t), 0); /* a miss is not recorded */
	return rc;
}

static void test_usage(void **state)
{
	struct fixture *f = *state;
	uint32_t a = add_box(f->cache, "A"), b = add_box(f->cache, "B");
	size_t big = 3 * CACHE_BODY_CHUNK + 17;
	char *data = malloc(big);
	struct cache_usage u;
	uint32_t uid;
	uint64_t size;

	assert_non_null(data);
	memset(data, 'x', big);
	for (uint32_t i = 1; i <= 5; i++)
		put_msg(f->cache, a, 7, i, 1000 + i);
	put_msg(f->cache, a, 6, 1, 99);  /* an older generation */
	put_msg(f->cache, b, 7, 1, 555); /* another mailbox */
	usage_of(f->cache, a, 7, &u);
	assert_int_equal(u.messages, 5);
	assert_int_equal(u.bytes, 5015);
	assert_int_equal(u.cached, 0);
	assert_int_equal(u.cached_bytes, 0);
	assert_int_equal(next_of(f->cache, a, 7, 1, &uid, &size), 0);
	assert_int_equal(uid, 1);
	assert_int_equal(size, 1001);

	/* A small body (whose length corrects the size) and one in
	 * pieces. */
	assert_int_equal(cache_body_put_once(f->cache,
	                                     (struct cache_key){a, 7, 1}, data,
	                                     10),
	                 0);
	assert_int_equal(cache_body_put_once(f->cache,
	                                     (struct cache_key){a, 7, 3}, data,
	                                     big),
	                 0);
	assert_int_equal(cache_body_put_once(f->cache,
	                                     (struct cache_key){a, 6, 1}, data,
	                                     99),
	                 0);
	usage_of(f->cache, a, 7, &u);
	assert_int_equal(u.messages, 5);
	assert_int_equal(u.bytes, 10 + 1002 + big + 1004 + 1005);
	assert_int_equal(u.cached, 2);
	assert_int_equal(u.cached_bytes, 10 + big);
	assert_int_equal(next_of(f->cache, a, 7, 1, &uid, &size), 0);
	assert_int_equal(uid, 2);
	assert_int_equal(next_of(f->cache, a, 7, 3, &uid, NULL), 0);
	assert_int_equal(uid, 4);
	assert_int_equal(next_of(f->cache, a, 7, 6, &uid, NULL), -ENOENT);
	usage_of(f->cache, b, 7, &u);
	assert_int_equal(u.messages, 1);
	assert_int_equal(u.cached, 0);
	usage_of(f->cache, a, 8, &u); /* nothing of that generation */
	assert_int_equal(u.messages, 0);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
