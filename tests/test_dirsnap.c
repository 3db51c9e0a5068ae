/* Directory snapshots (fs/dirsnap.h): what readdir and readdirplus get,
 * decoded as the kernel decodes it: every entry once and in order, its
 * inode, type, offset and attributes; resuming at any offset; buffers too
 * small; names short and long. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/dirsnap.h"

#define NENT 300 /* more than one growth of the table */

struct ent {
	char name[300];
	struct stat st;
	double timeout;
};

static struct ent ents[NENT];

/* Entry i: ".", "..", then files and directories with names of every
 * length around the inline limit (23 bytes), and some of 255. */
static void make_entry(size_t i, struct ent *e)
{
	memset(e, 0, sizeof(*e));
	if (i == 0) {
		strcpy(e->name, ".");
	} else if (i == 1) {
		strcpy(e->name, "..");
	} else if (i % 50 == 7) {
		memset(e->name, 'L', 255);
		snprintf(e->name + 250, 6, "%05u", (unsigned)(i % 100000));
	} else {
		size_t len = 15 + i % 15; /* 15 .. 29 bytes */

		snprintf(e->name, sizeof(e->name), "%zu", i);
		memset(e->name + strlen(e->name), 'x', len - strlen(e->name));
		e->name[len] = '\0';
	}
	e->st.st_ino = 0x100000000000ULL + i;
	e->st.st_mode = (i < 2 || i % 3 == 0) ? S_IFDIR | 0755 : S_IFREG | 0444;
	e->st.st_size = (off_t)(i * 1000 + 1);
	e->st.st_nlink = i % 3 == 0 ? 2 + i % 5 : 1;
	e->st.st_uid = 1000;
	e->st.st_gid = 100;
	e->st.st_blksize = 4096;
	e->st.st_blocks = (blkcnt_t)((e->st.st_size + 511) / 512);
	e->st.st_mtime = 1700000000 + (time_t)i;
	e->st.st_atime = e->st.st_ctime = e->st.st_mtime;
	/* Attributes not of the usual form (fs/attr.h) are kept apart:
	 * each of these differs from it in one field. */
	switch (i % 11) {
	case 4: e->st.st_atime += 5; break;
	case 5: e->st.st_uid = 0; break;
	case 6: e->st.st_blocks = 0; break;
	case 8: e->st.st_mtim.tv_nsec = 123456789; break;
	case 9: e->st.st_blksize = 512; break;
	}
	e->timeout = i % 2 ? 3600.0 : 1.0;
}

static struct fs_dirsnap *make_snap(size_t n)
{
	struct fs_dirsnap *s = fs_dirsnap_new();

	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		make_entry(i, &ents[i]);
		assert_int_equal(fs_dirsnap_add(s, ents[i].name, &ents[i].st,
		                                ents[i].timeout),
		                 0);
	}
	return s;
}

/* Decode a readdir buffer; check each entry against ents[] from index
 * first.  Returns the number of entries; *last_off_r the offset of the
 * last one. */
static size_t check_plain(const char *buf, size_t len, size_t first,
                          uint64_t *last_off_r)
{
	size_t pos = 0, k = 0;

	while (pos < len) {
		const struct fuse_dirent *d = (const void *)(buf + pos);
		const struct ent *e = &ents[first + k];

		assert_true(pos + FUSE_NAME_OFFSET <= len);
		assert_int_equal(d->namelen, strlen(e->name));
		assert_memory_equal(d->name, e->name, d->namelen);
		assert_int_equal(d->ino, e->st.st_ino);
		assert_int_equal(d->type, (e->st.st_mode & S_IFMT) >> 12);
		assert_int_equal(d->off, first + k + 1);
		*last_off_r = d->off;
		pos += FUSE_DIRENT_SIZE(d);
		k++;
	}
	assert_int_equal(pos, len);
	return k;
}

static size_t check_plus(const char *buf, size_t len, size_t first,
                         uint64_t *last_off_r)
{
	size_t pos = 0, k = 0;

	while (pos < len) {
		const struct fuse_direntplus *d = (const void *)(buf + pos);
		const struct ent *e = &ents[first + k];
		const struct fuse_entry_out *o = &d->entry_out;

		assert_true(pos + FUSE_NAME_OFFSET_DIRENTPLUS <= len);
		assert_int_equal(d->dirent.namelen, strlen(e->name));
		assert_memory_equal(d->dirent.name, e->name, d->dirent.namelen);
		assert_int_equal(d->dirent.ino, e->st.st_ino);
		assert_int_equal(d->dirent.off, first + k + 1);
		assert_int_equal(d->dirent.type,
		                 (e->st.st_mode & S_IFMT) >> 12);
		/* The attributes and how long the kernel keeps them. */
		assert_int_equal(o->nodeid, e->st.st_ino);
		assert_int_equal(o->attr.ino, e->st.st_ino);
		assert_int_equal(o->attr.mode, e->st.st_mode);
		assert_int_equal(o->attr.size, e->st.st_size);
		assert_int_equal(o->attr.mtime, e->st.st_mtime);
		assert_int_equal(o->attr.mtimensec, e->st.st_mtim.tv_nsec);
		assert_int_equal(o->attr.atime, e->st.st_atime);
		assert_int_equal(o->attr.ctime, e->st.st_ctime);
		assert_int_equal(o->attr.nlink, e->st.st_nlink);
		assert_int_equal(o->attr.uid, e->st.st_uid);
		assert_int_equal(o->attr.gid, e->st.st_gid);
		assert_int_equal(o->attr.blocks, e->st.st_blocks);
		assert_int_equal(o->attr.blksize, e->st.st_blksize);
		assert_int_equal(o->entry_valid, (uint64_t)e->timeout);
		assert_int_equal(o->attr_valid, (uint64_t)e->timeout);
		*last_off_r = d->dirent.off;
		pos += FUSE_DIRENTPLUS_SIZE(d);
		k++;
	}
	assert_int_equal(pos, len);
	return k;
}

typedef size_t (*checker)(const char *, size_t, size_t, uint64_t *);

/* Read the whole snapshot as the kernel does: buffers of size bytes, each
 * request at the offset of the last entry it got. */
static void walk(struct fs_dirsnap *s, size_t n, size_t size, bool plus)
{
	checker check = plus ? check_plus : check_plain;
	char *buf = malloc(size);
	uint64_t off = 0;
	size_t seen = 0, rounds = 0;

	assert_non_null(buf);
	for (;;) {
		size_t len =
		        fs_dirsnap_fill(s, NULL, buf, size, (off_t)off, plus);
		size_t k;

		if (len == 0)
			break;
		k = check(buf, len, (size_t)off, &off);
		assert_true(k > 0);
		seen += k;
		assert_int_equal(off, seen);
		assert_true(++rounds <= n);
	}
	assert_int_equal(seen, n);
	free(buf);
}

static void test_whole(void **state)
{
	struct fs_dirsnap *s = make_snap(NENT);

	(void)state;
	walk(s, NENT, 1 << 20, false);
	walk(s, NENT, 1 << 20, true);
	fs_dirsnap_free(s);
}

/* Small buffers: only whole entries, and nothing lost or repeated across
 * requests. */
static void test_small_buffers(void **state)
{
	static const size_t sizes[] = {4096, 1000, 600, 500, 410};
	struct fs_dirsnap *s = make_snap(NENT);

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
		walk(s, NENT, sizes[i], false);
		walk(s, NENT, sizes[i], true);
	}
	fs_dirsnap_free(s);
}

/* Resuming at every offset (seekdir, a second getdents). */
static void test_every_offset(void **state)
{
	struct fs_dirsnap *s = make_snap(60);
	char buf[8192];

	(void)state;
	for (size_t off = 0; off <= 60; off++) {
		size_t len = fs_dirsnap_fill(s, NULL, buf, sizeof(buf),
		                             (off_t)off, false);
		uint64_t last = off;

		if (off == 60) {
			assert_int_equal(len, 0);
			continue;
		}
		assert_true(len > 0);
		assert_true(check_plain(buf, len, off, &last) > 0);
	}
	/* Far past the end. */
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, sizeof(buf), 1000, true),
	                 0);
	fs_dirsnap_free(s);
}

/* A buffer too small for the next entry gets nothing (the kernel then
 * asks again with a bigger one), not a cut entry. */
static void test_too_small(void **state)
{
	struct fs_dirsnap *s = make_snap(10);
	char buf[64];

	(void)state;
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, 0, 0, false), 0);
	assert_int_equal(
	        fs_dirsnap_fill(s, NULL, buf, FUSE_NAME_OFFSET, 0, false), 0);
	/* "." fits in 32 bytes as a plain entry, never as a plus one. */
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, 32, 0, false), 32);
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, 32, 0, true), 0);
	fs_dirsnap_free(s);
}

static void test_empty(void **state)
{
	struct fs_dirsnap *s = fs_dirsnap_new();
	char buf[256];

	(void)state;
	assert_non_null(s);
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, sizeof(buf), 0, false),
	                 0);
	assert_int_equal(fs_dirsnap_fill(s, NULL, buf, sizeof(buf), 0, true),
	                 0);
	fs_dirsnap_free(s);
	fs_dirsnap_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_whole),
	        cmocka_unit_test(test_small_buffers),
	        cmocka_unit_test(test_every_offset),
	        cmocka_unit_test(test_too_small),
	        cmocka_unit_test(test_empty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
