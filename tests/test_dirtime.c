/* Directory mtimes (fs/imap/dirtime.h) on a real cache: the first time
 * seen is kept, each change moves the mtime forward (two in one second
 * too), and a parent moves once per transaction for its subdirectories
 * that came, went or moved (the root for top-level ones). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "fs/imap/dirtime.h"
#include "tests/tmpdir.h"

struct fixture {
	char tmp[PATH_MAX - 16], dir[PATH_MAX];
	struct cache *cache;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	if (test_tmpdir(f->tmp, sizeof(f->tmp), "mailfs-dirtime") != 0) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/cache", f->tmp);
	if (cache_open(f->dir, &f->cache) != 0)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cache_close(&f->cache);
	test_tmpdir_remove(f->tmp);
	free(f);
	return 0;
}

static struct cache_txn *wtxn(struct cache *c)
{
	struct cache_txn *t = NULL;

	assert_int_equal(cache_txn_begin(c, true, &t), 0);
	return t;
}

static int64_t stored(struct cache *c, uint32_t id)
{
	struct cache_txn *t = NULL;
	int64_t v = -1;
	int rc;

	assert_int_equal(cache_txn_begin(c, false, &t), 0);
	rc = cache_mailbox_mtime_get(t, id, &v);
	cache_txn_abort(&t);
	return rc == 0 ? v : -1;
}

static void test_next(void **state)
{
	(void)state;
	assert_true(fs_dirtime_next(100, 200) == 200);
	assert_true(fs_dirtime_next(200, 200) == 201); /* same second */
	assert_true(fs_dirtime_next(300, 200) == 301); /* clock behind */
	assert_true(fs_dirtime_next(0, 5) == 5);
}

static void test_seen_then_changed(void **state)
{
	struct fixture *f = *state;
	struct cache_txn *t = wtxn(f->cache);
	int64_t v = 0;
	bool is_new = false;

	/* First seen: stored; seen again later: kept. */
	assert_int_equal(fs_dirtime_seen(t, 4, 1000, &v, &is_new), 0);
	assert_true(v == 1000 && is_new);
	assert_int_equal(fs_dirtime_seen(t, 4, 5000, &v, &is_new), 0);
	assert_true(v == 1000 && !is_new);
	/* Changes move it forward, also twice in one second. */
	assert_int_equal(fs_dirtime_changed(t, 4, 2000, &v), 0);
	assert_true(v == 2000);
	assert_int_equal(fs_dirtime_changed(t, 4, 2000, &v), 0);
	assert_true(v == 2001);
	assert_int_equal(fs_dirtime_seen(t, 4, 9000, &v, NULL), 0);
	assert_true(v == 2001);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_true(stored(f->cache, 4) == 2001);
	assert_true(stored(f->cache, 5) == -1);
}

static uint32_t add_box(struct cache *c, const char *name)
{
	struct cache_mailbox mb = {.name = (char *)name, .delim = '/'};
	struct cache_txn *t = wtxn(c);
	uint32_t id = 0;

	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	return id;
}

static void test_parents(void **state)
{
	struct fixture *f = *state;
	uint32_t a = add_box(f->cache, "A"), ab = add_box(f->cache, "A/B");
	struct fs_dirtime_parents p = {0};
	struct cache_txn *t;

	(void)ab;
	t = wtxn(f->cache);
	/* A/B/C and A/B/D came, A/X went, Top moved: A/B once, A once,
	 * the root once. */
	assert_int_equal(fs_dirtime_parents_add(&p, "A/B/C", '/'), 0);
	assert_int_equal(fs_dirtime_parents_add(&p, "A/B/D", '/'), 0);
	assert_int_equal(fs_dirtime_parents_add(&p, "A/X", '/'), 0);
	assert_int_equal(fs_dirtime_parents_add(&p, "Top", '/'), 0);
	assert_int_equal(fs_dirtime_parents_add(&p, "Gone/Y", '/'), 0);
	assert_int_equal(fs_dirtime_parents_bump(&p, t, 7000), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(p.nids, 3);
	assert_true(stored(f->cache, ab) == 7000);
	assert_true(stored(f->cache, a) == 7000);
	assert_true(stored(f->cache, FS_DIRTIME_ROOT) == 7000);
	fs_dirtime_parents_clear(&p);
	assert_int_equal(p.n, 0);
	assert_null(p.ids);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_next),
	        cmocka_unit_test_setup_teardown(test_seen_then_changed, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_parents, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
