/* A private temporary directory for a unit test: made under $TMPDIR (else
 * /tmp) as PREFIX-XXXXXX, and removed with everything in it.  Shared by
 * the tests that open a real cache (test_cache, test_dirtime,
 * test_upload). */
#ifndef MAILFS_TESTS_TMPDIR_H
#define MAILFS_TESTS_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Make the directory into buf (size bytes); 0, or -1 when it cannot be
 * made. */
static inline int test_tmpdir(char *buf, size_t size, const char *prefix)
{
	const char *base = getenv("TMPDIR");

	snprintf(buf, size, "%s/%s-XXXXXX", base && *base ? base : "/tmp",
	         prefix);
	return mkdtemp(buf) != NULL ? 0 : -1;
}

static inline int test_tmpdir_rm_one(const char *path, const struct stat *st,
                                     int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Remove dir and everything below it (links are not followed). */
static inline void test_tmpdir_remove(const char *dir)
{
	nftw(dir, test_tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
