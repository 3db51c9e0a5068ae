/* Inode numbers (fs/ino.h): round trips of every kind, the boundaries,
 * the refusal of generations that do not fit, that no two kinds share a
 * number, and the numbers mounts hand out today (a user-visible contract:
 * a change of layout must fail here). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>

#include "fs/ino.h"

enum kind { K_ROOT, K_DIR, K_MSG, K_NEW };

static const uint32_t ids[] = {
        1, 2, 3, 0x1234, FS_INO_MAX_ID - 1, FS_INO_MAX_ID};
static const uint32_t gens[] = {
        0, 1, 2, 100, FS_INO_MAX_GEN - 1, FS_INO_MAX_GEN};
static const uint32_t uids[] = {1,         2, 0xfff, 0x10000, UINT32_MAX - 1,
                                UINT32_MAX};

#define N(a) (sizeof(a) / sizeof(*(a)))

static enum kind kind_of(fuse_ino_t ino)
{
	uint32_t id, gen, uid;

	assert_true(fs_ino_split(ino, &id, &gen, &uid));
	if (ino == FUSE_ROOT_ID)
		return K_ROOT;
	if (fs_ino_is_new(ino))
		return K_NEW;
	return uid == 0 ? K_DIR : K_MSG;
}

static void test_limits(void **state)
{
	(void)state;
	/* The new-file generation is the one above the largest message
	 * generation, and both fit the 12 bits. */
	assert_int_equal(FS_INO_NEW_GEN, 4095);
	assert_int_equal(FS_INO_MAX_GEN, 4094);
	assert_int_equal(FS_INO_MAX_ID, (1u << 20) - 1);
	assert_int_equal(FS_POP_INBOX_ID, 1);
}

static void test_root(void **state)
{
	uint32_t id = 9, gen = 9, uid = 9;

	(void)state;
	assert_int_equal(fs_ino_dir(0), FUSE_ROOT_ID);
	assert_true(fs_ino_split(FUSE_ROOT_ID, &id, &gen, &uid));
	assert_int_equal(id, 0);
	assert_int_equal(gen, 0);
	assert_int_equal(uid, 0);
	assert_false(fs_ino_is_new(FUSE_ROOT_ID));
}

static void test_dir_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < N(ids); i++) {
		fuse_ino_t ino = fs_ino_dir(ids[i]);
		uint32_t id, gen, uid;

		assert_int_not_equal(ino, 0);
		assert_int_not_equal(ino, FUSE_ROOT_ID);
		assert_true(fs_ino_split(ino, &id, &gen, &uid));
		assert_int_equal(id, ids[i]);
		assert_int_equal(gen, 0);
		assert_int_equal(uid, 0);
		assert_false(fs_ino_is_new(ino));
	}
}

static void test_msg_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < N(ids); i++) {
		for (size_t g = 0; g < N(gens); g++) {
			for (size_t u = 0; u < N(uids); u++) {
				fuse_ino_t ino =
				        fs_ino_msg(ids[i], gens[g], uids[u]);
				uint32_t id, gen, uid;

				assert_int_not_equal(ino, 0);
				assert_true(fs_ino_split(ino, &id, &gen, &uid));
				assert_int_equal(id, ids[i]);
				assert_int_equal(gen, gens[g]);
				assert_int_equal(uid, uids[u]);
				assert_false(fs_ino_is_new(ino));
			}
		}
	}
}

static void test_new_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < N(ids); i++) {
		for (size_t u = 0; u < N(uids); u++) {
			fuse_ino_t ino = fs_ino_new(ids[i], uids[u]);
			uint32_t id, gen, num;

			assert_int_not_equal(ino, 0);
			assert_true(fs_ino_is_new(ino));
			assert_true(fs_ino_split(ino, &id, &gen, &num));
			assert_int_equal(id, ids[i]);
			assert_int_equal(gen, FS_INO_NEW_GEN);
			assert_int_equal(num, uids[u]);
		}
	}
}

static void test_pop(void **state)
{
	uint32_t id, gen, num;

	(void)state;
	assert_int_equal(fs_ino_pop_inbox(), fs_ino_dir(FS_POP_INBOX_ID));
	for (size_t u = 0; u < N(uids); u++) {
		fuse_ino_t ino = fs_ino_pop_msg(uids[u]);

		assert_int_equal(ino, fs_ino_msg(FS_POP_INBOX_ID, 0, uids[u]));
		assert_true(fs_ino_split(ino, &id, &gen, &num));
		assert_int_equal(id, FS_POP_INBOX_ID);
		assert_int_equal(gen, 0);
		assert_int_equal(num, uids[u]);
	}
	assert_int_equal(fs_ino_pop_msg(0), 0);
}

/* What cannot be numbered is refused: never a number of another kind. */
static void test_refusals(void **state)
{
	(void)state;
	/* A generation that would be a new file's, or spill into the id. */
	assert_int_equal(fs_ino_msg(1, FS_INO_NEW_GEN, 1), 0);
	assert_int_equal(fs_ino_msg(1, FS_INO_NEW_GEN + 1, 1), 0);
	assert_int_equal(fs_ino_msg(FS_INO_MAX_ID, 1u << 12, 7), 0);
	assert_int_equal(fs_ino_msg(5, UINT32_MAX, UINT32_MAX), 0);
	/* Mailbox ids out of range, and id 0 (the root has no messages). */
	assert_int_equal(fs_ino_dir(FS_INO_MAX_ID + 1), 0);
	assert_int_equal(fs_ino_dir(UINT32_MAX), 0);
	assert_int_equal(fs_ino_msg(FS_INO_MAX_ID + 1, 0, 1), 0);
	assert_int_equal(fs_ino_msg(0, 0, 1), 0);
	assert_int_equal(fs_ino_new(FS_INO_MAX_ID + 1, 1), 0);
	assert_int_equal(fs_ino_new(0, 1), 0);
	/* UID 0 would be the directory's number. */
	assert_int_equal(fs_ino_msg(1, 0, 0), 0);
	assert_int_equal(fs_ino_msg(1, 3, 0), 0);
	assert_int_equal(fs_ino_new(1, 0), 0);
}

/* Numbers never handed out do not split. */
static void test_split_rejects(void **state)
{
	uint32_t id, gen, uid;

	(void)state;
	assert_false(fs_ino_split(0, &id, &gen, &uid));
	assert_false(fs_ino_split(2, &id, &gen, &uid));
	assert_false(fs_ino_split(0xffffffffULL, &id, &gen, &uid));
	assert_false(fs_ino_split((fuse_ino_t)7 << 32, &id, &gen, &uid));
	/* a generation with UID 0 */
	assert_false(fs_ino_split((fuse_ino_t)1 << 44 | (fuse_ino_t)3 << 32,
	                          &id, &gen, &uid));
}

static int cmp_ino(const void *a, const void *b)
{
	fuse_ino_t x = *(const fuse_ino_t *)a, y = *(const fuse_ino_t *)b;

	return x < y ? -1 : x > y;
}

/* Every number of every kind, over the boundaries, is distinct, and
 * splits back to its own kind. */
static void test_kinds_distinct(void **state)
{
	size_t cap = 1 + N(ids) * (1 + N(gens) * N(uids) + N(uids)) + N(uids);
	fuse_ino_t *v = malloc(cap * sizeof(*v));
	size_t n = 0;

	(void)state;
	assert_non_null(v);
	v[n++] = FUSE_ROOT_ID;
	assert_int_equal(kind_of(FUSE_ROOT_ID), K_ROOT);
	for (size_t i = 0; i < N(ids); i++) {
		v[n] = fs_ino_dir(ids[i]);
		assert_int_equal(kind_of(v[n++]), K_DIR);
		for (size_t u = 0; u < N(uids); u++) {
			v[n] = fs_ino_new(ids[i], uids[u]);
			assert_int_equal(kind_of(v[n++]), K_NEW);
			for (size_t g = 0; g < N(gens); g++) {
				v[n] = fs_ino_msg(ids[i], gens[g], uids[u]);
				assert_int_equal(kind_of(v[n++]), K_MSG);
			}
		}
	}
	/* POP3's numbers are IMAP's with id 1: same kinds. */
	for (size_t u = 0; u < N(uids); u++)
		assert_int_equal(kind_of(fs_ino_pop_msg(uids[u])), K_MSG);
	assert_int_equal(kind_of(fs_ino_pop_inbox()), K_DIR);
	qsort(v, n, sizeof(*v), cmp_ino);
	for (size_t i = 1; i < n; i++)
		assert_true(v[i - 1] != v[i]);
	free(v);
}

/* The numbers mounts hand out today.  They are on users' disks (backup
 * indexes, rsync's view of a tree): never change one. */
static void test_known_numbers(void **state)
{
	(void)state;
	assert_int_equal(fs_ino_dir(0), 1);
	assert_int_equal(fs_ino_dir(1), 0x0000100000000000ULL);
	assert_int_equal(fs_ino_dir(2), 0x0000200000000000ULL);
	assert_int_equal(fs_ino_dir(0x1234), 0x0123400000000000ULL);
	assert_int_equal(fs_ino_dir(FS_INO_MAX_ID), 0xfffff00000000000ULL);
	assert_int_equal(fs_ino_msg(1, 0, 1), 0x0000100000000001ULL);
	assert_int_equal(fs_ino_msg(2, 0, 42), 0x000020000000002aULL);
	assert_int_equal(fs_ino_msg(5, 2, 42), 0x000050020000002aULL);
	assert_int_equal(fs_ino_msg(3, 1, UINT32_MAX), 0x00003001ffffffffULL);
	assert_int_equal(fs_ino_msg(FS_INO_MAX_ID, FS_INO_MAX_GEN, UINT32_MAX),
	                 0xfffffffeffffffffULL);
	assert_int_equal(fs_ino_new(1, 1), 0x00001fff00000001ULL);
	assert_int_equal(fs_ino_new(7, 300), 0x00007fff0000012cULL);
	assert_int_equal(fs_ino_new(FS_INO_MAX_ID, UINT32_MAX),
	                 0xffffffffffffffffULL);
	assert_int_equal(fs_ino_pop_inbox(), 0x0000100000000000ULL);
	assert_int_equal(fs_ino_pop_msg(1), 0x0000100000000001ULL);
	assert_int_equal(fs_ino_pop_msg(1000), 0x00001000000003e8ULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_limits),
	        cmocka_unit_test(test_root),
	        cmocka_unit_test(test_dir_round_trip),
	        cmocka_unit_test(test_msg_round_trip),
	        cmocka_unit_test(test_new_round_trip),
	        cmocka_unit_test(test_pop),
	        cmocka_unit_test(test_refusals),
	        cmocka_unit_test(test_split_rejects),
	        cmocka_unit_test(test_kinds_distinct),
	        cmocka_unit_test(test_known_numbers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
