/* Unit tests for cache/: the LMDB schema and access layer.  Every test gets
 * a fresh temporary directory, removed afterwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka needs the headers above first. */
#include <cmocka.h>

#include "cache/cache.h"
#include "fixtures/cache-v1/content.h"
#include "fixtures/cache-v2/content.h"
#include "tests/tmpdir.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct fixture {
	char tmp[PATH_MAX];      /* the temporary directory */
	char dir[PATH_MAX + 32]; /* the cache directory inside it */
	struct cache *cache;     /* owned */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	if (test_tmpdir(f->tmp, sizeof(f->tmp), "mailfs-cache") != 0) {
		free(f);
		return -1;
	}
	/* Two levels that do not exist yet: cache_open creates them. */
	snprintf(f->dir, sizeof(f->dir), "%s/acct/user@host", f->tmp);
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

static struct cache *open_cache(struct fixture *f)
{
	assert_int_equal(cache_open(f->dir, &f->cache), 0);
	assert_non_null(f->cache);
	return f->cache;
}

static struct cache *reopen(struct fixture *f)
{
	cache_close(&f->cache);
	assert_null(f->cache);
	return open_cache(f);
}

static struct cache_txn *wtxn(struct cache *c)
{
	struct cache_txn *t = NULL;

	assert_int_equal(cache_txn_begin(c, true, &t), 0);
	return t;
}

static struct cache_txn *rtxn(struct cache *c)
{
	struct cache_txn *t = NULL;

	assert_int_equal(cache_txn_begin(c, false, &t), 0);
	return t;
}

static uint32_t add_mailbox(struct cache_txn *t, const char *name)
{
	struct cache_mailbox mb = {.name = (char *)name, .delim = '/'};
	uint32_t id = 0;

	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	return id;
}

static void put_msg(struct cache_txn *t, uint32_t mbox, uint32_t uidv,
                    uint32_t uid, const char *msgid, uint64_t size)
{
	struct cache_msg m = {
	        .key = {mbox, uidv, uid},
	        .size = size,
	        .internaldate = 1700000000 + uid,
	        .flags = "\\Seen",
	        .subject = "s",
	        .message_id = (char *)msgid,
	};

	assert_int_equal(cache_msg_put(t, &m), 0);
}

static void *pattern(size_t len, unsigned seed)
{
	uint8_t *p = malloc(len ? len : 1);
	size_t i;

	assert_non_null(p);
	for (i = 0; i < len; i++)
		p[i] = (uint8_t)((i * 131 + seed) ^ (i >> 11));
	return p;
}

/* Bytes no compressor shortens (xorshift64), for tests that need a body
 * to take its length on disk. */
static void *noise(size_t len, unsigned seed)
{
	uint8_t *p = malloc(len ? len : 1);
	uint64_t x = 0x9e3779b97f4a7c15ull ^ seed;

	assert_non_null(p);
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
	return p;
}

/* ------------------------------------------------------------------ */

struct uid_list {
	uint32_t uid[16];
	uint32_t uidv[16];
	size_t n;
};

static int collect_uid(const struct cache_msg *m, void *ctx)
{
	struct uid_list *l = ctx;

	if (l->n == 16)
		return -E2BIG;
	l->uidv[l->n] = m->key.uidvalidity;
	l->uid[l->n++] = m->key.uid;
	return 0;
}

static int stop_after_two(const struct cache_msg *m, void *ctx)
{
	struct uid_list *l = ctx;

	l->uid[l->n++] = m->key.uid;
	return l->n == 2 ? 1 : 0;
}

static void test_key_order(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint32_t uids[] = {256, 2, 65536, 1, 16777216, 255, 257};
	static const uint32_t sorted[] = {1, 2, 255, 256, 257, 65536, 16777216};
	struct uid_list l = {.n = 0};
	struct cache_txn *t = wtxn(c);
	uint32_t a, b;
	size_t i, n;

	a = add_mailbox(t, "INBOX");
	b = add_mailbox(t, "Other");
	assert_int_equal(a, 1);
	assert_int_equal(b, 2);
	for (i = 0; i < sizeof(uids) / sizeof(*uids); i++)
		put_msg(t, a, 5, uids[i], "<x@y>", 10);
	/* Neighbours that must not leak into the scan of (a, 5). */
	put_msg(t, a, 4, 7, "<x@y>", 1);
	put_msg(t, a, 6, 1, "<x@y>", 1);
	put_msg(t, a, 256, 1, "<x@y>", 1);
	put_msg(t, b, 5, 3, "<x@y>", 1);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_null(t);

	t = rtxn(c);
	assert_int_equal(cache_msg_foreach(t, a, 5, 0, collect_uid, &l), 0);
	assert_int_equal(l.n, 7);
	for (i = 0; i < 7; i++) {
		assert_int_equal(l.uid[i], sorted[i]);
		assert_int_equal(l.uidv[i], 5);
	}
	assert_int_equal(cache_msg_count(t, a, 5, &n), 0);
	assert_int_equal(n, 7);
	assert_int_equal(cache_msg_count(t, a, 6, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(cache_msg_count(t, b, 5, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(cache_msg_count(t, a, 99, &n), 0);
	assert_int_equal(n, 0);

	/* Resume from a UID, as readdir with an offset does. */
	l.n = 0;
	assert_int_equal(cache_msg_foreach(t, a, 5, 256, collect_uid, &l), 0);
	assert_int_equal(l.n, 4);
	assert_int_equal(l.uid[0], 256);
	assert_int_equal(l.uid[3], 16777216);

	/* A callback can stop early. */
	l.n = 0;
	assert_int_equal(cache_msg_foreach(t, a, 5, 0, stop_after_two, &l), 0);
	assert_int_equal(l.n, 2);
	assert_int_equal(l.uid[1], 2);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static void test_modes(void **state)
{
	struct fixture *f = *state;
	char path[2 * PATH_MAX];
	struct stat st;
	/* A umask that would strip the owner's bits: modes must be exact
	 * anyway. */
	mode_t old = umask(0277);

	open_cache(f);
	umask(old);
	assert_int_equal(stat(f->dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0700);
	snprintf(path, sizeof(path), "%s/acct", f->tmp);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(path, sizeof(path), "%s/lock.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* Files loosened by someone else are tightened on the next open. */
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	cache_close(&f->cache);
	assert_int_equal(chmod(path, 0644), 0);
	open_cache(f);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
}

static void test_open_twice_busy(void **state)
{
	struct fixture *f = *state;
	struct cache *other = NULL;

	open_cache(f);
	assert_int_equal(cache_open(f->dir, &other), -EBUSY);
	assert_null(other);
	/* After closing, opening works again. */
	reopen(f);
	assert_int_equal(cache_open("", &other), -EINVAL);
}

static void test_msg_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint8_t hdr[] = "Subject: a\r\nX-Bin: \0\x01\xff\r\n\r\n";
	size_t long_len = 100000;
	char *longstr = malloc(long_len + 1);
	struct cache_msg m = {0}, *got = NULL;
	struct cache_txn *t;
	uint32_t id;

	assert_non_null(longstr);
	memset(longstr, 'x', long_len);
	longstr[long_len] = '\0';
	longstr[0] = '\xc3'; /* UTF-8 "é" */
	longstr[1] = '\xa9';

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	m.key = (struct cache_key){id, 4000000000u, 4294967295u};
	m.size = 123456789012ull;
	m.internaldate = -86400; /* before the epoch */
	m.tz_minutes = -330;
	m.modseq = 18446744073709551615ull;
	m.flags = "\\Seen \\Flagged $Work";
	m.subject = longstr;
	m.from = "";
	m.date = NULL; /* stored as "" */
	m.message_id = "<1@example.com>";
	m.header = (uint8_t *)hdr;
	m.header_len = sizeof(hdr) - 1;
	assert_int_equal(cache_msg_put(t, &m), 0);

	/* A record with no strings and no header at all. */
	put_msg(t, id, 7, 1, NULL, 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	assert_int_equal(cache_msg_get_once(c, m.key, &got), 0);
	assert_non_null(got);
	assert_int_equal(got->key.mailbox_id, id);
	assert_int_equal(got->key.uidvalidity, 4000000000u);
	assert_int_equal(got->key.uid, 4294967295u);
	assert_true(got->size == 123456789012ull);
	assert_false(got->size_verified);
	assert_true(got->internaldate == -86400);
	assert_int_equal(got->tz_minutes, -330);
	assert_true(got->modseq == 18446744073709551615ull);
	assert_string_equal(got->flags, "\\Seen \\Flagged $Work");
	assert_string_equal(got->subject, longstr);
	assert_int_equal(strlen(got->subject), long_len);
	assert_string_equal(got->from, "");
	assert_string_equal(got->date, "");
	assert_string_equal(got->message_id, "<1@example.com>");
	assert_int_equal(got->header_len, sizeof(hdr) - 1);
	assert_memory_equal(got->header, hdr, sizeof(hdr) - 1);
	cache_msg_free(&got);
	assert_null(got);

	assert_int_equal(
	        cache_msg_get_once(c, (struct cache_key){id, 7, 1}, &got), 0);
	assert_string_equal(got->message_id, "");
	assert_string_equal(got->from, "");
	assert_null(got->header);
	assert_int_equal(got->header_len, 0);
	assert_int_equal(got->size, 0);
	cache_msg_free(&got);

	/* Misses are answers, not failures. */
	t = rtxn(c);
	assert_int_equal(cache_msg_get(t, (struct cache_key){id, 7, 2}, &got),
	                 -ENOENT);
	assert_null(got);
	assert_int_equal(cache_txn_error(t), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Flags and MODSEQ update, the rest stays. */
	assert_int_equal(cache_msg_set_flags_once(c, m.key, "", 42), 0);
	assert_int_equal(cache_msg_get_once(c, m.key, &got), 0);
	assert_string_equal(got->flags, "");
	assert_int_equal(got->modseq, 42);
	assert_string_equal(got->message_id, "<1@example.com>");
	assert_true(got->size == 123456789012ull);
	cache_msg_free(&got);
	assert_int_equal(cache_msg_set_flags_once(
	                         c, (struct cache_key){id, 7, 99}, "", 1),
	                 -ENOENT);

	/* A message needs its mailbox. */
	t = wtxn(c);
	put_msg(t, id, 1, 1, NULL, 0);
	m.key.mailbox_id = id + 100;
	assert_int_equal(cache_msg_put(t, &m), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), -ENOENT);
	free(longstr);
}

static void test_body_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint8_t body[] =
	        "From: a\r\n\r\n\0line\r\n.\r\n\0\0\r\r\n\n";
	const size_t blen = sizeof(body) - 1;
	struct cache_key k;
	struct cache_msg *got = NULL;
	struct cache_txn *t;
	uint8_t buf[64];
	uint64_t sz = 0;
	void *all = NULL;
	size_t n = 99;
	uint32_t id;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	k = (struct cache_key){id, 9, 3};
	put_msg(t, id, 9, 3, "<b@x>", 5000); /* the server's RFC822.SIZE */
	assert_int_equal(cache_body_has(t, k), 0);
	assert_int_equal(cache_body_put(t, k, body, blen), 0);
	assert_int_equal(cache_body_has(t, k), 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	assert_int_equal(cache_body_size_once(c, k, &sz), 0);
	assert_int_equal(sz, blen);
	assert_int_equal(cache_body_read_once(c, k, 0, buf, sizeof(buf), &n),
	                 0);
	assert_int_equal(n, blen);
	assert_memory_equal(buf, body, blen);
	/* The record's size is now exact and verified. */
	assert_int_equal(cache_msg_get_once(c, k, &got), 0);
	assert_int_equal(got->size, blen);
	assert_true(got->size_verified);
	cache_msg_free(&got);

	/* A later listing with RFC822.SIZE does not undo it. */
	t = wtxn(c);
	put_msg(t, id, 9, 3, "<b@x>", 5000);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(cache_msg_get_once(c, k, &got), 0);
	assert_int_equal(got->size, blen);
	assert_true(got->size_verified);
	cache_msg_free(&got);

	t = rtxn(c);
	assert_int_equal(cache_body_get(t, k, &all, &n), 0);
	assert_int_equal(n, blen);
	assert_memory_equal(all, body, blen);
	free(all);
	assert_int_equal(cache_body_size(t, (struct cache_key){id, 9, 4}, &sz),
	                 -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* A zero-length body is a body. */
	t = wtxn(c);
	put_msg(t, id, 9, 4, "<e@x>", 77);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 9, 4}, NULL, 0), 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 9, 4}), 1);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(
	        cache_msg_get_once(c, (struct cache_key){id, 9, 4}, &got), 0);
	assert_int_equal(got->size, 0);
	assert_true(got->size_verified);
	cache_msg_free(&got);

	/* Deleting the body keeps the record; deleting the message takes
	 * both. */
	t = wtxn(c);
	assert_int_equal(cache_body_delete(t, (struct cache_key){id, 9, 4}), 0);
	assert_int_equal(cache_body_delete(t, (struct cache_key){id, 9, 4}), 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 9, 4}), 0);
	assert_int_equal(cache_msg_delete(t, k), 0);
	assert_int_equal(cache_msg_delete(t, k), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = rtxn(c);
	assert_int_equal(cache_body_has(t, k), 0);
	assert_int_equal(cache_msg_get(t, k, &got), -ENOENT);
	assert_int_equal(cache_msg_get(t, (struct cache_key){id, 9, 4}, &got),
	                 0);
	cache_msg_free(&got);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* No body without a record. */
	assert_int_equal(
	        cache_body_put_once(c, (struct cache_key){id, 9, 50}, body, 3),
	        -ENOENT);
}

static void test_big_body(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 20u << 20;
	uint8_t *body = pattern(len, 7), *buf = malloc(128 << 10);
	struct cache_key k;
	struct cache_txn *t;
	uint64_t sz = 0;
	size_t n = 0;
	void *all = NULL;
	uint32_t id;

	assert_non_null(buf);
	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	k = (struct cache_key){id, 1, 1};
	put_msg(t, id, 1, 1, "<big@x>", len + 17);
	assert_int_equal(cache_body_put(t, k, body, len), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;

	assert_int_equal(cache_body_size_once(c, k, &sz), 0);
	assert_int_equal(sz, len);
	/* A FUSE-sized read in the middle. */
	assert_int_equal(
	        cache_body_read_once(c, k, 5000000, buf, 128 << 10, &n), 0);
	assert_int_equal(n, 128 << 10);
	assert_memory_equal(buf, body + 5000000, 128 << 10);
	/* First bytes. */
	assert_int_equal(cache_body_read_once(c, k, 0, buf, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(buf[0], body[0]);
	/* Across the end: short read. */
	assert_int_equal(
	        cache_body_read_once(c, k, len - 100, buf, 128 << 10, &n), 0);
	assert_int_equal(n, 100);
	assert_memory_equal(buf, body + len - 100, 100);
	/* The last byte exactly. */
	assert_int_equal(cache_body_read_once(c, k, len - 1, buf, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(buf[0], body[len - 1]);
	/* At and past the end: nothing, not an error. */
	assert_int_equal(cache_body_read_once(c, k, len, buf, 10, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_body_read_once(c, k, len + 12345, buf, 10, &n),
	                 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_body_read_once(c, k, UINT64_MAX, buf, 10, &n),
	                 0);
	assert_int_equal(n, 0);
	/* Zero-length read. */
	assert_int_equal(cache_body_read_once(c, k, 10, buf, 0, &n), 0);
	assert_int_equal(n, 0);

	t = rtxn(c);
	assert_int_equal(cache_body_get(t, k, &all, &n), 0);
	assert_int_equal(n, len);
	assert_memory_equal(all, body, len);
	free(all);
	assert_int_equal(cache_txn_commit(&t), 0);
	free(buf);
	free(body);
}

static void test_reopen_commit_abort(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox *mb = NULL;
	struct cache_txn *t;
	uint32_t id = 0;

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "Kept"), 1);
	put_msg(t, 1, 3, 10, "<k@x>", 10);
	assert_int_equal(cache_txn_commit(&t), 0);

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "Aborted"), 2);
	put_msg(t, 1, 3, 11, "<a@x>", 10);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){1, 3, 10}, "xy", 2), 0);
	cache_txn_abort(&t);
	assert_null(t);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "Kept", &id), 0);
	assert_int_equal(id, 1);
	assert_int_equal(cache_mailbox_lookup(t, "Aborted", &id), -ENOENT);
	assert_int_equal(cache_mailbox_get(t, 2, &mb), -ENOENT);
	assert_null(mb);
	assert_int_equal(cache_body_has(t, (struct cache_key){1, 3, 10}), 0);
	{
		size_t n = 0;

		assert_int_equal(cache_msg_count(t, 1, 3, &n), 0);
		assert_int_equal(n, 1);
	}
	assert_int_equal(cache_txn_commit(&t), 0);

	/* The aborted id is reused (it was never committed); committed ids
	 * never are. */
	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "Next"), 2);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static void test_sticky_error(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox mb = {.name = "Dup"};
	struct cache_txn *t;
	uint32_t id = 0;
	size_t n = 0;

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 5, 1, "<1@x>", 3);
	/* A failing step: a body for a message that has no record. */
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){1, 5, 2}, "abc", 3),
	        -ENOENT);
	assert_int_equal(cache_txn_error(t), -ENOENT);
	/* Everything after it fails with the same error, untouched. */
	assert_int_equal(cache_mailbox_add(t, &mb, &id), -ENOENT);
	assert_int_equal(cache_msg_count(t, 1, 5, &n), -ENOENT);
	assert_int_equal(cache_body_has(t, (struct cache_key){1, 5, 1}),
	                 -ENOENT);
	assert_int_equal(cache_txn_commit(&t), -ENOENT);
	assert_null(t);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "INBOX", &id), -ENOENT);
	assert_int_equal(cache_msg_count(t, 1, 5, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Writing through a read transaction fails it. */
	t = rtxn(c);
	assert_int_equal(cache_mailbox_add(t, &mb, &id), -EROFS);
	assert_int_equal(cache_mailbox_lookup(t, "Dup", &id), -EROFS);
	assert_int_equal(cache_txn_commit(&t), -EROFS);

	/* -EEXIST on add is a failure too. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	assert_int_equal(cache_mailbox_add(t, &mb, &id), -EEXIST);
	assert_int_equal(cache_txn_commit(&t), -EEXIST);
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "Dup", &id), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(cache_txn_begin(c, true, NULL), -EINVAL);
}

static int fail_after_add(struct cache_txn *t, void *ctx)
{
	(void)ctx;
	add_mailbox(t, "Never");
	return -EIO;
}

static void test_run_write_failure(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_txn *t;
	uint32_t id;

	assert_int_equal(cache_run_write(c, fail_after_add, NULL), -EIO);
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "Never", &id), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
}

struct batch {
	uint32_t mbox;
	uint32_t n;
};

static int write_batch(struct cache_txn *t, void *ctx)
{
	struct batch *b = ctx;
	struct cache_msg m = {.flags = "", .message_id = "<m@x>"};
	uint32_t i;
	int rc = 0;

	m.key.mailbox_id = b->mbox;
	m.key.uidvalidity = 77;
	for (i = 1; i <= b->n && rc == 0; i++) {
		m.key.uid = i * 3;
		m.size = i;
		rc = cache_msg_put(t, &m);
	}
	return rc;
}

static void test_batch_listing(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct batch b = {0, 3000};
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	size_t n = 0;

	t = wtxn(c);
	b.mbox = add_mailbox(t, "INBOX");
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(cache_run_write(c, write_batch, &b), 0);
	t = rtxn(c);
	assert_int_equal(cache_msg_count(t, b.mbox, 77, &n), 0);
	assert_int_equal(n, 3000);
	assert_int_equal(
	        cache_msg_get(t, (struct cache_key){b.mbox, 77, 9000}, &m), 0);
	assert_int_equal(m->size, 3000);
	cache_msg_free(&m);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Deleting the generation takes records and bodies. */
	t = wtxn(c);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){b.mbox, 77, 3}, "x", 1),
	        0);
	assert_int_equal(cache_msg_delete_generation(t, b.mbox, 77, &n), 0);
	assert_int_equal(n, 3000);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = rtxn(c);
	assert_int_equal(cache_msg_count(t, b.mbox, 77, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){b.mbox, 77, 3}),
	                 0);
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* ------------------------------------------------------------------ */

static void test_mailbox_record(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox in = {0}, *mb = NULL;
	struct cache_txn *t;
	uint32_t id = 0, gen = 99;

	in.name = "&AMQ-rger/Stra&AN8-e"; /* modified UTF-7, kept raw */
	in.delim = '\0';
	in.attrs = cache_mailbox_attrs_parse(
	        "(\\HasNoChildren \\trash \\X-Unknown \\Noselect)");
	assert_int_equal(in.attrs, CACHE_MBOX_HASNOCHILDREN | CACHE_MBOX_TRASH |
	                                   CACHE_MBOX_NOSELECT);
	in.attrs_raw = "\\HasNoChildren \\Trash \\X-Unknown \\Noselect";
	in.uidvalidity = 1234567;
	in.uidnext = 4242;
	in.highestmodseq = 1ull << 40;
	in.last_sync = 1700000123;

	t = wtxn(c);
	assert_int_equal(cache_mailbox_add(t, &in, &id), 0);
	assert_int_equal(id, 1);
	in.name = "";
	assert_int_equal(cache_mailbox_add(t, &in, &id), -EINVAL);
	cache_txn_abort(&t);
	t = wtxn(c);
	in.name = "&AMQ-rger/Stra&AN8-e";
	assert_int_equal(cache_mailbox_add(t, &in, &id), 0);
	assert_int_equal(id, 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(
	        cache_mailbox_get_by_name(t, "&AMQ-rger/Stra&AN8-e", &mb), 0);
	assert_int_equal(mb->id, 1);
	assert_string_equal(mb->name, "&AMQ-rger/Stra&AN8-e");
	assert_int_equal(mb->delim, '\0');
	assert_false(mb->deleted);
	assert_int_equal(mb->attrs, in.attrs);
	assert_string_equal(mb->attrs_raw, in.attrs_raw);
	assert_int_equal(mb->uidvalidity, 1234567);
	assert_int_equal(mb->uidnext, 4242);
	assert_true(mb->highestmodseq == 1ull << 40);
	assert_true(mb->last_sync == 1700000123);
	assert_int_equal(mb->ngenerations, 1);
	assert_int_equal(mb->uidvalidities[0], 1234567);
	cache_mailbox_free(&mb);
	assert_null(mb);
	assert_int_equal(cache_mailbox_generation(t, 1, 1234567, &gen), 0);
	assert_int_equal(gen, 0);
	assert_int_equal(cache_mailbox_get(t, 0, &mb), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Empty optional strings and a plain delimiter. */
	t = wtxn(c);
	in = (struct cache_mailbox){.name = "INBOX", .delim = '.'};
	assert_int_equal(cache_mailbox_add(t, &in, &id), 0);
	assert_int_equal(id, 2);
	assert_int_equal(cache_mailbox_get(t, 2, &mb), 0);
	assert_string_equal(mb->attrs_raw, "");
	assert_int_equal(mb->delim, '.');
	assert_int_equal(mb->ngenerations, 0);
	assert_int_equal(mb->uidvalidity, 0);
	/* put replaces the fields. */
	mb->attrs = CACHE_MBOX_HASCHILDREN;
	mb->uidnext = 9;
	assert_int_equal(cache_mailbox_put(t, mb), 0);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_mailbox_get(t, 2, &mb), 0);
	assert_int_equal(mb->attrs, CACHE_MBOX_HASCHILDREN);
	assert_int_equal(mb->uidnext, 9);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static int collect_names(const struct cache_mailbox *mb, void *ctx)
{
	char *out = ctx;

	strcat(out, mb->name);
	strcat(out, mb->deleted ? "-," : ",");
	return 0;
}

static void test_mailbox_rename(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox *mb = NULL;
	struct cache_txn *t;
	char names[256] = "";
	uint32_t id = 0, work, gen = 0;

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	work = add_mailbox(t, "Work");
	assert_int_equal(work, 2);
	assert_int_equal(cache_mailbox_set_state(t, work, 50, 10, 0, 0, &gen),
	                 0);
	assert_int_equal(gen, 0);
	put_msg(t, work, 50, 3, "<w@x>", 4);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){work, 50, 3}, "body", 4),
	        0);
	assert_int_equal(cache_mailbox_rename(t, work, "Jobs"), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "Work", &id), -ENOENT);
	assert_int_equal(cache_mailbox_lookup(t, "Jobs", &id), 0);
	assert_int_equal(id, work);
	assert_int_equal(cache_mailbox_get(t, work, &mb), 0);
	assert_string_equal(mb->name, "Jobs");
	assert_int_equal(mb->uidvalidity, 50);
	assert_int_equal(mb->ngenerations, 1);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_body_has(t, (struct cache_key){work, 50, 3}), 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Onto a name that is taken: refused, nothing changes. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_rename(t, work, "INBOX"), -EEXIST);
	assert_int_equal(cache_txn_commit(&t), -EEXIST);
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, "INBOX", &id), 0);
	assert_int_equal(id, 1);
	assert_int_equal(cache_mailbox_lookup(t, "Jobs", &id), 0);
	assert_int_equal(id, work);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Rename through put; renaming to the same name is a no-op. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_get(t, work, &mb), 0);
	mb->name = "Jobs/Old";
	assert_int_equal(cache_mailbox_put(t, mb), 0);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_mailbox_rename(t, work, "Jobs/Old"), 0);
	assert_int_equal(cache_mailbox_lookup(t, "Jobs", &id), -ENOENT);
	assert_int_equal(cache_mailbox_lookup(t, "Jobs/Old", &id), 0);
	assert_int_equal(id, work);

	/* Deleted marks keep everything; remove purges; ids not reused. */
	assert_int_equal(cache_mailbox_set_deleted(t, 1, true), 0);
	assert_int_equal(cache_mailbox_foreach(t, collect_names, names), 0);
	assert_string_equal(names, "INBOX-,Jobs/Old,");
	assert_int_equal(cache_mailbox_remove(t, work), 0);
	assert_int_equal(cache_mailbox_remove(t, work), 0);
	assert_int_equal(cache_mailbox_lookup(t, "Jobs/Old", &id), -ENOENT);
	assert_int_equal(cache_body_has(t, (struct cache_key){work, 50, 3}), 0);
	assert_int_equal(
	        cache_mailbox_add(
	                t, &(struct cache_mailbox){.name = "Jobs/Old"}, &id),
	        0);
	assert_int_equal(id, 3);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_get_by_name(t, "INBOX", &mb), 0);
	assert_true(mb->deleted);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_mailbox_get(t, work, &mb), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* The largest key of this LMDB build (511 unless it was built otherwise). */
static size_t max_key(void)
{
	MDB_env *env;
	size_t n;

	assert_int_equal(mdb_env_create(&env), 0);
	n = (size_t)mdb_env_get_maxkeysize(env);
	mdb_env_close(env);
	return n;
}

/* A name of len bytes: prefix, then 'a'..'z' repeated, then tail. */
static char *long_name(const char *prefix, size_t len, const char *tail)
{
	char *s = malloc(len + 1);
	size_t p = strlen(prefix), t = strlen(tail);

	assert_non_null(s);
	assert_true(p + t <= len);
	memcpy(s, prefix, p);
	for (size_t i = p; i < len - t; i++)
		s[i] = (char)('a' + i % 26);
	memcpy(s + len - t, tail, t);
	s[len] = '\0';
	return s;
}

/* Every key of the mbox_name database, read straight from the files: n
 * keys into keys[] (copies) and their ids. */
struct raw_keys {
	size_t n;
	char *key[16];
	size_t len[16];
	uint32_t id[16];
};

static void read_name_keys(const char *dir, struct raw_keys *r)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_cursor *cur;
	MDB_val k, v;

	memset(r, 0, sizeof(*r));
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "mbox_name", 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	while (mdb_cursor_get(cur, &k, &v, r->n ? MDB_NEXT : MDB_FIRST) == 0) {
		assert_true(r->n < 16);
		assert_int_equal(v.mv_size, 4);
		r->key[r->n] = malloc(k.mv_size);
		assert_non_null(r->key[r->n]);
		memcpy(r->key[r->n], k.mv_data, k.mv_size);
		r->len[r->n] = k.mv_size;
		r->id[r->n] = (uint32_t)((const uint8_t *)v.mv_data)[0] << 24 |
		              (uint32_t)((const uint8_t *)v.mv_data)[1] << 16 |
		              (uint32_t)((const uint8_t *)v.mv_data)[2] << 8 |
		              ((const uint8_t *)v.mv_data)[3];
		r->n++;
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

static void free_name_keys(struct raw_keys *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->key[i]);
}

/* The raw key that names id. */
static size_t key_of(const struct raw_keys *r, uint32_t id, const char **k_r)
{
	for (size_t i = 0; i < r->n; i++) {
		if (r->id[i] == id) {
			*k_r = r->key[i];
			return r->len[i];
		}
	}
	fail_msg("no index entry names mailbox %u", id);
	return 0;
}

static void assert_found(struct cache_txn *t, const char *name, uint32_t id)
{
	struct cache_mailbox *mb = NULL;
	uint32_t got = 0;

	assert_int_equal(cache_mailbox_lookup(t, name, &got), 0);
	assert_int_equal(got, id);
	assert_int_equal(cache_mailbox_get_by_name(t, name, &mb), 0);
	assert_int_equal(mb->id, id);
	assert_string_equal(mb->name, name);
	cache_mailbox_free(&mb);
}

/* Names longer than an LMDB key (a nested name of 6 levels of 100
 * characters is one) are filed under a hash; names that fit keep their
 * key byte for byte. */
static void test_mailbox_long_names(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t max = max_key();
	char *at = long_name("At/", max, ""),
	     *over = long_name("Ov/", max + 1, "");
	char *shared[3], *nested, *moved, *gone;
	uint32_t id_at, id_over, id_shared[3], id_nested, id = 0;
	struct raw_keys r;
	struct cache_txn *t;
	char names[8192] = "";
	const char *k = NULL;
	size_t n;

	/* Three names alike in their first 1000 bytes, so alike in any
	 * prefix a key could hold. */
	shared[0] = long_name("Sh/", 1002, "/A");
	shared[1] = long_name("Sh/", 1002, "/B");
	shared[2] = long_name("Sh/", 1500, "/A");
	nested = long_name("", 605, "");
	for (int i = 1; i < 6; i++)
		nested[i * 101 - 1] = '/';
	moved = long_name("Mv/", 900, "/moved");
	gone = long_name("Gone/", 700, "");

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	id_at = add_mailbox(t, at);
	id_over = add_mailbox(t, over);
	for (int i = 0; i < 3; i++)
		id_shared[i] = add_mailbox(t, shared[i]);
	id_nested = add_mailbox(t, nested);
	assert_int_equal(
	        cache_mailbox_add(t, &(struct cache_mailbox){.name = shared[1]},
	                          &id),
	        -EEXIST);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	id_at = add_mailbox(t, at);
	id_over = add_mailbox(t, over);
	for (int i = 0; i < 3; i++)
		id_shared[i] = add_mailbox(t, shared[i]);
	id_nested = add_mailbox(t, nested);
	assert_int_equal(add_mailbox(t, gone), id_nested + 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_found(t, "INBOX", 1);
	assert_found(t, at, id_at);
	assert_found(t, over, id_over);
	for (int i = 0; i < 3; i++)
		assert_found(t, shared[i], id_shared[i]);
	assert_found(t, nested, id_nested);
	/* A long name that was never added, alike the others up to its
	 * last byte, is not found. */
	shared[1][1001] = 'C';
	assert_int_equal(cache_mailbox_lookup(t, shared[1], &id), -ENOENT);
	shared[1][1001] = 'B';
	assert_int_equal(cache_mailbox_foreach(t, collect_names, names), 0);
	/* Each name and its comma. */
	assert_int_equal(strlen(names), 6 + (max + 1) + (max + 2) + 1003 +
	                                        1003 + 1501 + 606 + 701);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* On disk: a name that fits is its own key, as it always was; a
	 * longer one is its first bytes, a NUL and 32 bytes of hash, no
	 * longer than a key. */
	cache_close(&f->cache);
	read_name_keys(f->dir, &r);
	assert_int_equal(r.n, 8);
	n = key_of(&r, 1, &k);
	assert_int_equal(n, 5);
	assert_memory_equal(k, "INBOX", 5);
	n = key_of(&r, id_at, &k);
	assert_int_equal(n, max);
	assert_memory_equal(k, at, max);
	n = key_of(&r, id_over, &k);
	assert_true(n <= max);
	assert_int_equal(n, 511);
	assert_memory_equal(k, over, 511 - 33);
	assert_int_equal(k[511 - 33], '\0');
	for (int i = 0; i < 3; i++) {
		n = key_of(&r, id_shared[i], &k);
		assert_int_equal(n, 511);
		assert_memory_equal(k, shared[i], 511 - 33);
		assert_int_equal(k[511 - 33], '\0');
	}
	free_name_keys(&r);
	open_cache(f);
	c = f->cache;

	/* Rename: long to long, long to short, short to long; then remove. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_rename(t, id_shared[0], moved), 0);
	assert_int_equal(cache_mailbox_rename(t, id_over, "Short"), 0);
	assert_int_equal(cache_mailbox_rename(t, id_at, over), 0);
	/* Onto a long name that is taken: refused. */
	assert_int_equal(cache_mailbox_rename(t, id_nested, shared[1]),
	                 -EEXIST);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_mailbox_rename(t, id_shared[0], moved), 0);
	assert_int_equal(cache_mailbox_rename(t, id_over, "Short"), 0);
	assert_int_equal(cache_mailbox_rename(t, id_at, over), 0);
	assert_int_equal(cache_mailbox_remove(t, id_nested + 1), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_lookup(t, shared[0], &id), -ENOENT);
	assert_int_equal(cache_mailbox_lookup(t, at, &id), -ENOENT);
	assert_int_equal(cache_mailbox_lookup(t, gone, &id), -ENOENT);
	assert_found(t, moved, id_shared[0]);
	assert_found(t, "Short", id_over);
	assert_found(t, over, id_at);
	assert_found(t, shared[1], id_shared[1]);
	assert_found(t, shared[2], id_shared[2]);
	assert_found(t, nested, id_nested);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_close(&f->cache);
	/* No stale index entry is left behind. */
	read_name_keys(f->dir, &r);
	assert_int_equal(r.n, 7);
	free_name_keys(&r);

	free(at);
	free(over);
	for (int i = 0; i < 3; i++)
		free(shared[i]);
	free(nested);
	free(moved);
	free(gone);
}

/* One damaged mailbox record is left out of a walk; the others are all
 * there and the transaction stays usable. */
static void test_mailbox_damaged_record(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox *mb = NULL;
	struct cache_txn *t;
	char names[256] = "";
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t key[4] = {0, 0, 0, 2}, bad[3] = {0xff, 0, 0};
	MDB_val k = {4, key}, v = {3, bad};
	uint32_t id = 0;

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	assert_int_equal(add_mailbox(t, "Damaged"), 2);
	assert_int_equal(add_mailbox(t, "Work"), 3);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_close(&f->cache);

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "mbox", 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	c = open_cache(f);
	t = rtxn(c);
	assert_int_equal(cache_mailbox_foreach(t, collect_names, names), 0);
	assert_string_equal(names, "INBOX,Work,");
	assert_int_equal(cache_txn_error(t), 0);
	assert_int_equal(cache_mailbox_get_by_name(t, "Work", &mb), 0);
	assert_int_equal(mb->id, 3);
	cache_mailbox_free(&mb);
	/* Asking for the damaged one is an error, as before. */
	assert_int_equal(cache_mailbox_lookup(t, "Damaged", &id), 0);
	assert_int_equal(cache_mailbox_get(t, id, &mb), -EIO);
	assert_int_equal(cache_txn_commit(&t), -EIO);
}

static void test_generations_stable(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_mailbox *mb = NULL;
	struct cache_txn *t;
	uint32_t id, gen = 99;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	assert_int_equal(cache_mailbox_set_state(t, id, 7, 1, 0, 100, &gen), 0);
	assert_int_equal(gen, 0);
	assert_int_equal(cache_mailbox_set_state(t, id, 9, 1, 0, 200, &gen), 0);
	assert_int_equal(gen, 1);
	/* Back to an old UIDVALIDITY: its old generation, not a new one. */
	assert_int_equal(cache_mailbox_set_state(t, id, 7, 5, 0, 300, &gen), 0);
	assert_int_equal(gen, 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_generation(t, id, 7, &gen), 0);
	assert_int_equal(gen, 0);
	assert_int_equal(cache_mailbox_generation(t, id, 9, &gen), 0);
	assert_int_equal(gen, 1);
	assert_int_equal(cache_mailbox_generation(t, id, 8, &gen), -ENOENT);
	assert_int_equal(cache_txn_error(t), 0);
	assert_int_equal(cache_mailbox_get(t, id, &mb), 0);
	assert_int_equal(mb->uidvalidity, 7);
	assert_int_equal(mb->uidnext, 5);
	assert_true(mb->last_sync == 300);
	assert_int_equal(mb->ngenerations, 2);
	assert_int_equal(mb->uidvalidities[0], 7);
	assert_int_equal(mb->uidvalidities[1], 9);
	cache_mailbox_free(&mb);
	assert_int_equal(cache_txn_commit(&t), 0);

	t = wtxn(c);
	assert_int_equal(cache_mailbox_set_state(t, id, 11, 1, 0, 400, &gen),
	                 0);
	assert_int_equal(gen, 2);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_generation(t, id, 11, &gen), 0);
	assert_int_equal(gen, 2);
	assert_int_equal(cache_mailbox_generation(t, id, 9, &gen), 0);
	assert_int_equal(gen, 1);
	assert_int_equal(cache_txn_commit(&t), 0);
}

static void read_body(struct cache *c, struct cache_key k, const char *want)
{
	char buf[128];
	size_t n = 0;

	assert_int_equal(cache_body_read_once(c, k, 0, buf, sizeof(buf), &n),
	                 0);
	assert_int_equal(n, strlen(want));
	assert_memory_equal(buf, want, n);
}

static void test_rematch(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_rematch_stats st = {99, 99};
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	uint32_t id, gen;

	/* Generation 0: UIDVALIDITY 100, four messages, three cached. */
	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	assert_int_equal(cache_mailbox_set_state(t, id, 100, 5, 0, 1, &gen), 0);
	put_msg(t, id, 100, 1, "<a@x>", 999); /* wrong RFC822.SIZE */
	put_msg(t, id, 100, 2, "<b@x>", 5);
	put_msg(t, id, 100, 3, "<c@x>", 5);
	put_msg(t, id, 100, 4, "<d@x>", 5);
	put_msg(t, id, 100, 5, "", 5); /* no Message-ID */
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 100, 1}, "AAAAA", 5),
	        0);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 100, 2}, "BBBBB", 5),
	        0);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 100, 3}, "CCCCC", 5),
	        0);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 100, 5}, "EEEEE", 5),
	        0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* The server changed UIDVALIDITY; the new listing. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_set_state(t, id, 200, 20, 0, 2, &gen),
	                 0);
	assert_int_equal(gen, 1);
	put_msg(t, id, 200, 10, "<a@x>", 5); /* same id, same size: match */
	put_msg(t, id, 200, 11, "<b@x>", 6); /* same id, other size: no */
	put_msg(t, id, 200, 12, "<d@x>", 5); /* no old body to give */
	put_msg(t, id, 200, 13, "", 5);      /* no Message-ID: never */
	assert_int_equal(cache_rematch(t, id, 200, 0, &st), 0);
	assert_int_equal(st.matched, 1);
	assert_int_equal(st.unmatched, 3); /* b, c and the one without id */
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	read_body(c, (struct cache_key){id, 200, 10}, "AAAAA");
	assert_int_equal(
	        cache_msg_get_once(c, (struct cache_key){id, 200, 10}, &m), 0);
	assert_int_equal(m->size, 5);
	assert_true(m->size_verified);
	cache_msg_free(&m);
	t = rtxn(c);
	/* Moved, not copied. */
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 100, 1}), 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 200, 11}), 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 200, 12}), 0);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 200, 13}), 0);
	/* Old records remain. */
	assert_int_equal(cache_msg_get(t, (struct cache_key){id, 100, 2}, &m),
	                 0);
	assert_string_equal(m->message_id, "<b@x>");
	cache_msg_free(&m);
	assert_int_equal(cache_txn_commit(&t), 0);
	/* Unmatched bodies are kept, readable under the old generation. */
	read_body(c, (struct cache_key){id, 100, 2}, "BBBBB");
	read_body(c, (struct cache_key){id, 100, 3}, "CCCCC");
	read_body(c, (struct cache_key){id, 100, 5}, "EEEEE");

	/* Running it again changes nothing. */
	t = wtxn(c);
	assert_int_equal(cache_rematch(t, id, 200, 0, &st), 0);
	assert_int_equal(st.matched, 0);
	assert_int_equal(st.unmatched, 3);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* A third generation, copying: c's body now matches, twice-listed
	 * duplicates of it get one body. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_set_state(t, id, 300, 40, 0, 3, &gen),
	                 0);
	assert_int_equal(gen, 2);
	put_msg(t, id, 300, 30, "<c@x>", 5);
	put_msg(t, id, 300, 31, "<c@x>", 5);
	put_msg(t, id, 300, 32, "<a@x>", 5);
	assert_int_equal(cache_rematch(t, id, 300, CACHE_REMATCH_COPY, &st), 0);
	/* a (now in gen 200) and c matched; b and the id-less one kept. */
	assert_int_equal(st.matched, 2);
	assert_int_equal(st.unmatched, 2);
	assert_int_equal(cache_txn_commit(&t), 0);
	read_body(c, (struct cache_key){id, 300, 30}, "CCCCC");
	read_body(c, (struct cache_key){id, 300, 32}, "AAAAA");
	read_body(c, (struct cache_key){id, 100, 3}, "CCCCC");
	read_body(c, (struct cache_key){id, 200, 10}, "AAAAA");
	t = rtxn(c);
	assert_int_equal(cache_body_has(t, (struct cache_key){id, 300, 31}), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* ------------------------------------------------------------------ */

static int collect_pop(const struct cache_pop *p, void *ctx)
{
	char *out = ctx;
	char line[300];

	snprintf(line, sizeof(line), "%u:%s:%llu:%lld:%d,", p->num, p->uidl,
	         (unsigned long long)p->size, (long long)p->downloaded,
	         p->deleted_on_server);
	strcat(out, line);
	return 0;
}

static void test_pop(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint8_t body2[] = "X: y\r\n\r\n\0\r\n.\r\n";
	struct cache_pop *p = NULL;
	struct cache_txn *t;
	char list[1024] = "";
	char uidl255[CACHE_POP_UIDL_MAX + 1], uidl256[CACHE_POP_UIDL_MAX + 2];
	uint32_t num = 0;

	assert_int_equal(cache_pop_add_once(c, "uidl-a", "AAA", 3, 1000, &num),
	                 0);
	assert_int_equal(num, 1);
	assert_int_equal(cache_pop_add_once(c, "uidl-b", body2,
	                                    sizeof(body2) - 1, 2000, &num),
	                 0);
	assert_int_equal(num, 2);
	assert_int_equal(cache_pop_add_once(c, "uidl-a", "ZZZ", 3, 3000, &num),
	                 -EEXIST);
	memset(uidl255, 'u', CACHE_POP_UIDL_MAX);
	uidl255[CACHE_POP_UIDL_MAX] = '\0';
	memset(uidl256, 'u', CACHE_POP_UIDL_MAX + 1);
	uidl256[CACHE_POP_UIDL_MAX + 1] = '\0';
	assert_int_equal(cache_pop_add_once(c, uidl256, "", 0, 1, &num),
	                 -EINVAL);
	assert_int_equal(cache_pop_add_once(c, "", "", 0, 1, &num), -EINVAL);
	assert_int_equal(cache_pop_add_once(c, uidl255, "", 0, 4000, &num), 0);
	assert_int_equal(num, 3);

	t = wtxn(c);
	assert_int_equal(cache_pop_set_deleted(t, 1, true), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_pop_lookup(t, "uidl-b", &num), 0);
	assert_int_equal(num, 2);
	assert_int_equal(cache_pop_lookup(t, "uidl-zz", &num), -ENOENT);
	assert_int_equal(cache_pop_lookup(t, uidl256, &num), -ENOENT);
	assert_int_equal(cache_pop_get(t, 2, &p), 0);
	assert_int_equal(p->num, 2);
	assert_string_equal(p->uidl, "uidl-b");
	assert_int_equal(p->size, sizeof(body2) - 1);
	assert_true(p->downloaded == 2000);
	assert_false(p->deleted_on_server);
	cache_pop_free(&p);
	assert_null(p);
	assert_int_equal(cache_pop_get(t, 9, &p), -ENOENT);
	assert_int_equal(cache_pop_foreach(t, 0, collect_pop, list), 0);
	assert_int_equal(
	        strncmp(list, "1:uidl-a:3:1000:1,2:uidl-b:14:2000:0,3:uuu", 41),
	        0);
	/* From the middle, and the long UIDL survives. */
	list[0] = '\0';
	assert_int_equal(cache_pop_foreach(t, 3, collect_pop, list), 0);
	assert_int_equal(strncmp(list, "3:uuuu", 6), 0);
	assert_int_equal(strlen(list),
	                 strlen("3::0:4000:0,") + CACHE_POP_UIDL_MAX);
	assert_int_equal(cache_txn_error(t), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Bodies under the documented pseudo-mailbox key. */
	{
		struct cache_key k = {CACHE_POP_MAILBOX_ID,
		                      CACHE_POP_UIDVALIDITY, 2};
		uint8_t buf[64];
		size_t n = 0;

		assert_int_equal(
		        cache_body_read_once(c, k, 0, buf, sizeof(buf), &n), 0);
		assert_int_equal(n, sizeof(body2) - 1);
		assert_memory_equal(buf, body2, n);
		k.uid = 3;
		assert_int_equal(
		        cache_body_read_once(c, k, 0, buf, sizeof(buf), &n), 0);
		assert_int_equal(n, 0);
		/* IMAP calls refuse the pseudo-mailbox. */
		assert_int_equal(cache_body_put_once(c, k, "x", 1), -EINVAL);
	}

	/* Numbers are never reused. */
	assert_int_equal(cache_pop_add_once(c, "uidl-c", "C", 1, 5000, &num),
	                 0);
	assert_int_equal(num, 4);
}

static int collect_uidl(const char *uidl, uint32_t num, void *ctx)
{
	char *out = ctx;
	char line[300];

	snprintf(line, sizeof(line), "%s=%u,", uidl, num);
	strcat(out, line);
	return strcmp(uidl, "stop") == 0 ? 1 : 0;
}

/* A message known under a second name (fs/pop/poller.c: a reused UIDL), and the
 * names found by prefix. */
static void test_pop_alias(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_pop *p = NULL;
	struct cache_txn *t;
	char list[1024] = "";
	char uidl256[257];
	uint32_t num = 0;

	assert_int_equal(cache_pop_add_once(c, "dup", "AAA", 3, 1000, &num), 0);
	assert_int_equal(cache_pop_add_once(c, "dup#1", "BB", 2, 1000, &num),
	                 0);
	assert_int_equal(cache_pop_add_once(c, "dupe", "C", 1, 1000, &num), 0);
	assert_int_equal(cache_pop_add_once(c, "stop", "", 0, 1000, &num), 0);

	t = wtxn(c);
	assert_int_equal(cache_pop_alias(t, "dup sha256:aa", 1), 0);
	assert_int_equal(cache_pop_alias(t, "dup sha256:aa", 1), 0);
	assert_int_equal(cache_pop_alias(t, "dup sha256:bb", 2), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Another number under a taken name, a number without a record,
	 * bad names: refused, and recorded. */
	t = wtxn(c);
	assert_int_equal(cache_pop_alias(t, "dup sha256:aa", 2), -EEXIST);
	assert_int_equal(cache_txn_error(t), -EEXIST);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_pop_alias(t, "x", 9), -ENOENT);
	assert_int_equal(cache_txn_error(t), -ENOENT);
	cache_txn_abort(&t);
	memset(uidl256, 'u', 256);
	uidl256[256] = '\0';
	t = wtxn(c);
	assert_int_equal(cache_pop_alias(t, uidl256, 1), -EINVAL);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_pop_alias(t, "", 1), -EINVAL);
	cache_txn_abort(&t);
	t = rtxn(c);
	assert_int_equal(cache_pop_alias(t, "y", 1), -EROFS);
	cache_txn_abort(&t);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_pop_lookup(t, "dup sha256:bb", &num), 0);
	assert_int_equal(num, 2);
	assert_int_equal(cache_pop_lookup(t, "dup sha256:aa", &num), 0);
	assert_int_equal(num, 1);
	/* The record keeps the name it was added under. */
	assert_int_equal(cache_pop_get(t, 1, &p), 0);
	assert_string_equal(p->uidl, "dup");
	cache_pop_free(&p);
	assert_int_equal(cache_pop_uidl_foreach(t, "dup", collect_uidl, list),
	                 0);
	assert_string_equal(list, "dup=1,dup sha256:aa=1,dup sha256:bb=2,"
	                          "dup#1=2,dupe=3,");
	list[0] = '\0';
	assert_int_equal(cache_pop_uidl_foreach(t, "dup#", collect_uidl, list),
	                 0);
	assert_string_equal(list, "dup#1=2,");
	list[0] = '\0';
	assert_int_equal(
	        cache_pop_uidl_foreach(t, "nothing", collect_uidl, list), 0);
	assert_int_equal(cache_pop_uidl_foreach(t, uidl256, collect_uidl, list),
	                 0);
	assert_string_equal(list, "");
	/* cb > 0 stops the walk. */
	assert_int_equal(cache_pop_uidl_foreach(t, "s", collect_uidl, list), 0);
	assert_string_equal(list, "stop=4,");
	assert_int_equal(cache_txn_error(t), 0);
	assert_int_equal(cache_pop_uidl_foreach(t, "", collect_uidl, list),
	                 -EINVAL);
	cache_txn_abort(&t);
}

static int collect_pending(const struct cache_pending *p, void *ctx)
{
	char *out = ctx;
	char line[128];

	assert_null(p->data);
	snprintf(line, sizeof(line), "%llu:%u:%u:%s:%llu,",
	         (unsigned long long)p->seq, p->mailbox_id, p->state, p->flags,
	         (unsigned long long)p->size);
	strcat(out, line);
	return 0;
}

static void test_pending(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint8_t msg[] = "Subject: up\r\n\r\n\0bin\r\n";
	struct cache_pending in = {0}, *p = NULL;
	struct cache_txn *t;
	char list[512] = "";
	uint64_t seq = 0;

	in.mailbox_id = 3;
	in.state = CACHE_PENDING_NEW;
	in.flags = "\\Draft";
	in.name = "draft.eml";
	in.internaldate = 1600000000;
	in.tz_minutes = 120;
	in.created = 1700000000;
	in.size = sizeof(msg) - 1;
	in.data = (uint8_t *)msg;
	assert_int_equal(cache_pending_add_once(c, &in, &seq), 0);
	assert_int_equal(seq, 1);
	in.mailbox_id = 4;
	in.flags = NULL;
	in.name = NULL;
	in.size = 0;
	in.data = NULL;
	assert_int_equal(cache_pending_add_once(c, &in, &seq), 0);
	assert_int_equal(seq, 2);

	/* Survives a "crash" (no clean shutdown of anything but LMDB). */
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_pending_foreach(t, collect_pending, list), 0);
	assert_string_equal(list, "1:3:0:\\Draft:21,2:4:0::0,");
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->seq, 1);
	assert_int_equal(p->mailbox_id, 3);
	assert_string_equal(p->flags, "\\Draft");
	assert_string_equal(p->name, "draft.eml");
	assert_true(p->internaldate == 1600000000);
	assert_int_equal(p->tz_minutes, 120);
	assert_true(p->created == 1700000000);
	assert_int_equal(p->size, sizeof(msg) - 1);
	assert_memory_equal(p->data, msg, sizeof(msg) - 1);
	cache_pending_free(&p);
	assert_null(p);
	assert_int_equal(cache_pending_get(t, 1, false, &p), 0);
	assert_null(p->data);
	assert_int_equal(p->size, sizeof(msg) - 1);
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);

	t = wtxn(c);
	assert_int_equal(cache_pending_set_state(t, 1, CACHE_PENDING_CLOSED),
	                 0);
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->state, CACHE_PENDING_CLOSED);
	assert_string_equal(p->name, "draft.eml");
	cache_pending_free(&p);
	assert_int_equal(cache_pending_set_state(t, 1, CACHE_PENDING_SENT), 0);
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->state, CACHE_PENDING_SENT);
	assert_memory_equal(p->data, msg, sizeof(msg) - 1);
	cache_pending_free(&p);
	assert_int_equal(
	        cache_pending_set_state(t, 1, CACHE_PENDING_CLOSED + 1),
	        -EINVAL);
	cache_txn_abort(&t);

	/* A rename: another mailbox and name, the rest kept. */
	t = wtxn(c);
	assert_int_equal(cache_pending_set_target(t, 1, 9, "moved.eml"), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = rtxn(c);
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->mailbox_id, 9);
	assert_string_equal(p->name, "moved.eml");
	assert_int_equal(p->state, CACHE_PENDING_NEW);
	assert_string_equal(p->flags, "\\Draft");
	assert_true(p->internaldate == 1600000000);
	assert_int_equal(p->tz_minutes, 120);
	assert_true(p->created == 1700000000);
	assert_int_equal(p->size, sizeof(msg) - 1);
	assert_memory_equal(p->data, msg, sizeof(msg) - 1);
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = wtxn(c);
	assert_int_equal(cache_pending_set_target(t, 7, 9, "x"), -ENOENT);
	cache_txn_abort(&t);
	/* Flags set on the file (user.mail.flags): replaced, the rest
	 * kept; none is "". */
	t = wtxn(c);
	assert_int_equal(cache_pending_set_flags(t, 1, "\\Seen $Work"), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = rtxn(c);
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_string_equal(p->flags, "\\Seen $Work");
	assert_string_equal(p->name, "moved.eml");
	assert_int_equal(p->mailbox_id, 9);
	assert_true(p->internaldate == 1600000000);
	assert_int_equal(p->size, sizeof(msg) - 1);
	assert_memory_equal(p->data, msg, sizeof(msg) - 1);
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = wtxn(c);
	assert_int_equal(cache_pending_set_flags(t, 1, ""), 0);
	assert_int_equal(cache_pending_get(t, 1, false, &p), 0);
	assert_string_equal(p->flags, "");
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = wtxn(c);
	assert_int_equal(cache_pending_set_flags(t, 7, "\\Seen"), -ENOENT);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_pending_set_target(t, 1, 3, "draft.eml"), 0);
	assert_int_equal(cache_pending_set_state(t, 1, CACHE_PENDING_SENT), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Confirmed by the server: forget it.  The sequence goes on. */
	assert_int_equal(cache_pending_delete_once(c, 1), 0);
	assert_int_equal(cache_pending_delete_once(c, 1), 0);
	reopen(f);
	c = f->cache;
	list[0] = '\0';
	t = rtxn(c);
	assert_int_equal(cache_pending_foreach(t, collect_pending, list), 0);
	assert_string_equal(list, "2:4:0::0,");
	assert_int_equal(cache_pending_get(t, 1, false, &p), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(cache_pending_add_once(c, &in, &seq), 0);
	assert_int_equal(seq, 3);
	t = wtxn(c);
	assert_int_equal(cache_pending_set_state(t, 1, CACHE_PENDING_SENT),
	                 -ENOENT);
	assert_int_equal(cache_txn_commit(&t), -ENOENT);
}

static int stop_after_first(const struct cache_pending *p, void *ctx)
{
	(void)p;
	(*(int *)ctx)++;
	return 1;
}

static void test_pending_parts(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	static const uint8_t want[] = "Jello world\0\0\0!";
	struct cache_pending in = {0}, *p = NULL;
	struct cache_txn *t;
	char list[512] = "";
	uint64_t seq = 0, other = 0;
	int calls = 0;

	in.mailbox_id = 3;
	in.flags = "";
	in.size = 5;
	in.data = (uint8_t *)"Hello";
	assert_int_equal(cache_pending_add_once(c, &in, &seq), 0);
	/* Writes go on after the record, and a record added later sorts
	 * after all of them. */
	t = wtxn(c);
	assert_int_equal(cache_pending_write(t, seq, 5, " world", 6), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	in.mailbox_id = 4;
	in.size = 0;
	in.data = NULL;
	assert_int_equal(cache_pending_add_once(c, &in, &other), 0);
	t = wtxn(c);
	assert_int_equal(cache_pending_write(t, seq, 0, "J", 1), 0);
	assert_int_equal(cache_pending_write(t, seq, 14, "!", 1), 0);
	assert_int_equal(cache_pending_write(t, other, 0, "x", 1), 0);
	assert_int_equal(cache_pending_write(t, seq, 3, NULL, 0), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_pending_get(t, seq, true, &p), 0);
	assert_int_equal(p->size, sizeof(want) - 1);
	assert_memory_equal(p->data, want, sizeof(want) - 1);
	assert_int_equal(p->data[p->size], 0);
	cache_pending_free(&p);
	assert_int_equal(cache_pending_get(t, seq, false, &p), 0);
	assert_null(p->data);
	assert_int_equal(p->size, sizeof(want) - 1);
	cache_pending_free(&p);
	assert_int_equal(cache_pending_get(t, other, true, &p), 0);
	assert_int_equal(p->size, 1);
	assert_memory_equal(p->data, "x", 1);
	cache_pending_free(&p);
	assert_int_equal(cache_pending_foreach(t, collect_pending, list), 0);
	assert_string_equal(list, "1:3:0::15,2:4:0::1,");
	assert_int_equal(cache_pending_foreach(t, stop_after_first, &calls), 0);
	assert_int_equal(calls, 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* The state can change under the writes. */
	t = wtxn(c);
	assert_int_equal(cache_pending_set_state(t, seq, CACHE_PENDING_SENT),
	                 0);
	assert_int_equal(cache_pending_get(t, seq, true, &p), 0);
	assert_int_equal(p->state, CACHE_PENDING_SENT);
	assert_memory_equal(p->data, want, sizeof(want) - 1);
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Deleting an upload deletes its writes. */
	assert_int_equal(cache_pending_delete_once(c, seq), 0);
	list[0] = '\0';
	t = rtxn(c);
	assert_int_equal(cache_pending_get(t, seq, false, &p), -ENOENT);
	assert_int_equal(cache_pending_foreach(t, collect_pending, list), 0);
	assert_string_equal(list, "2:4:0::1,");
	assert_int_equal(cache_txn_commit(&t), 0);

	/* No upload, no write. */
	t = wtxn(c);
	assert_int_equal(cache_pending_write(t, seq, 0, "y", 1), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), -ENOENT);
}

static void test_meta(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_txn *t;
	uint64_t v = 0;

	t = wtxn(c);
	assert_int_equal(cache_meta_set(t, "pop.last_check", 1ull << 50), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_meta_get(t, "pop.last_check", &v), 0);
	assert_true(v == 1ull << 50);
	assert_int_equal(cache_meta_get(t, "nothing", &v), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = wtxn(c);
	assert_int_equal(cache_meta_set(t, "schema", 99), -EINVAL);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_meta_set(t, "cache.next_mailbox", 1), -EINVAL);
	cache_txn_abort(&t);
}

/* The meta values of other modules whose names this module builds: a
 * mailbox's mtime and the POP3 marks.  Their names are reserved. */
static void test_meta_typed(void **state)
{
	static const char *const reserved[] = {
	        "mtime.1", "popdup.12b26475137f0033", "popcmp.x", "popsize.y"};
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_txn *t;
	int64_t when = 0;
	uint64_t v = 0;

	t = wtxn(c);
	assert_int_equal(cache_mailbox_mtime_set(t, 7, -5), 0);
	assert_int_equal(cache_mailbox_mtime_set(t, UINT32_MAX, 1ll << 40), 0);
	assert_int_equal(cache_pop_mark_set(t, CACHE_POP_DUP, "a", 1), 0);
	assert_int_equal(cache_pop_mark_set(t, CACHE_POP_CMP, "a", 0), 0);
	assert_int_equal(cache_pop_mark_set(t, CACHE_POP_SIZE, "", 1ull << 60),
	                 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_mailbox_mtime_get(t, 7, &when), 0);
	assert_true(when == -5);
	assert_int_equal(cache_mailbox_mtime_get(t, UINT32_MAX, &when), 0);
	assert_true(when == 1ll << 40);
	assert_int_equal(cache_mailbox_mtime_get(t, 8, &when), -ENOENT);
	assert_int_equal(cache_pop_mark_get(t, CACHE_POP_DUP, "a", &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(cache_pop_mark_get(t, CACHE_POP_CMP, "a", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(cache_pop_mark_get(t, CACHE_POP_SIZE, "", &v), 0);
	assert_true(v == 1ull << 60);
	/* Each mark has names of its own. */
	assert_int_equal(cache_pop_mark_get(t, CACHE_POP_SIZE, "a", &v),
	                 -ENOENT);
	assert_int_equal(cache_pop_mark_get(t, CACHE_POP_DUP, "b", &v),
	                 -ENOENT);
	/* A miss is an answer, not a failure. */
	assert_int_equal(cache_txn_error(t), 0);
	for (size_t i = 0; i < sizeof(reserved) / sizeof(*reserved); i++)
		assert_int_equal(cache_meta_get(t, reserved[i], &v), -EINVAL);
	cache_txn_abort(&t);
	t = wtxn(c);
	assert_int_equal(cache_pop_mark_set(t, (enum cache_pop_mark)3, "a", 1),
	                 -EINVAL);
	assert_int_equal(cache_txn_commit(&t), -EINVAL);
	for (size_t i = 0; i < sizeof(reserved) / sizeof(*reserved); i++) {
		t = wtxn(c);
		assert_int_equal(cache_meta_set(t, reserved[i], 1), -EINVAL);
		cache_txn_abort(&t);
	}
}

/* A cache written by a newer mailfs: edit the stored schema version the
 * way a newer build would have written it. */
static void test_schema_refusal(void **state)
{
	struct fixture *f = *state;
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = {6, "schema"}, v;
	uint8_t b[8] = {0};
	struct cache *other = NULL;

	open_cache(f);
	cache_close(&f->cache);

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_int_equal(v.mv_size, 8);
	assert_memory_equal(v.mv_data, "\0\0\0\0\0\0\0\x03", 8);
	b[7] = CACHE_SCHEMA_VERSION + 1;
	v.mv_size = 8;
	v.mv_data = b;
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	assert_int_equal(cache_open(f->dir, &other), -EPROTONOSUPPORT);
	assert_null(other);
	/* A refused open leaves nothing behind: a second try says the same. */
	assert_int_equal(cache_open(f->dir, &other), -EPROTONOSUPPORT);
}

static void test_map_grow(void **state)
{
	struct fixture *f = *state;
	struct cache_options opt = {.map_size = 1u << 20};
	const size_t len = 4u << 20;
	uint8_t *body = noise(len, 3), *buf = malloc(len);
	struct cache_key k = {1, 1, 1};
	struct cache_txn *t;
	size_t before, n = 0;

	assert_non_null(buf);
	assert_int_equal(cache_open_ex(f->dir, &opt, &f->cache), 0);
	before = cache_map_size(f->cache);
	assert_true(before >= 1u << 20 && before < len);
	t = wtxn(f->cache);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 1, 1, "<m@x>", len);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* An explicit transaction: the full map fails it, nothing written. */
	t = wtxn(f->cache);
	assert_int_equal(cache_body_put(t, k, body, len), -ENOSPC);
	assert_int_equal(cache_txn_commit(&t), -ENOSPC);
	t = rtxn(f->cache);
	assert_int_equal(cache_body_has(t, k), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* The one-shot path grows the map and retries. */
	assert_int_equal(cache_body_put_once(f->cache, k, body, len), 0);
	assert_true(cache_map_size(f->cache) > before + len);
	assert_int_equal(cache_body_read_once(f->cache, k, 0, buf, len, &n), 0);
	assert_int_equal(n, len);
	assert_memory_equal(buf, body, len);
	free(buf);
	free(body);
}

/* A transaction of another thread that outlives the wait for the map to
 * be grown: LMDB must not remap under it, so the grow is refused (the
 * write fails with -ENOSPC, nothing written, the map as it was) and works
 * once the transaction has ended. */
struct held_reader {
	struct cache *c;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool begun, release;
	int rc;
};

static void *hold_reader(void *arg)
{
	struct held_reader *h = arg;
	struct cache_msg *m = NULL;
	struct cache_txn *t = NULL;

	h->rc = cache_txn_begin(h->c, false, &t);
	pthread_mutex_lock(&h->lock);
	h->begun = true;
	pthread_cond_broadcast(&h->cond);
	while (!h->release)
		pthread_cond_wait(&h->cond, &h->lock);
	pthread_mutex_unlock(&h->lock);
	if (h->rc == 0)
		h->rc = cache_msg_get(t, (struct cache_key){1, 1, 1}, &m);
	if (h->rc == 0 && m->size != 77)
		h->rc = -EIO;
	cache_msg_free(&m);
	if (t != NULL && cache_txn_commit(&t) != 0 && h->rc == 0)
		h->rc = -EIO;
	return NULL;
}

static void test_map_grow_waits_for_readers(void **state)
{
	struct fixture *f = *state;
	struct cache_options opt = {.map_size = 1u << 20};
	struct held_reader h = {.lock = PTHREAD_MUTEX_INITIALIZER,
	                        .cond = PTHREAD_COND_INITIALIZER};
	const size_t len = 4u << 20;
	uint8_t *body = noise(len, 9);
	struct cache_key k = {1, 1, 1};
	struct cache_txn *t;
	pthread_t th;
	size_t before;

	assert_int_equal(cache_open_ex(f->dir, &opt, &f->cache), 0);
	h.c = f->cache;
	t = wtxn(f->cache);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 1, 1, "<m@x>", 77);
	assert_int_equal(cache_txn_commit(&t), 0);
	before = cache_map_size(f->cache);

	assert_int_equal(pthread_create(&th, NULL, hold_reader, &h), 0);
	pthread_mutex_lock(&h.lock);
	while (!h.begun)
		pthread_cond_wait(&h.cond, &h.lock);
	pthread_mutex_unlock(&h.lock);
	assert_int_equal(cache_body_put_once(f->cache, k, body, len), -ENOSPC);
	assert_int_equal(cache_map_size(f->cache), before);
	pthread_mutex_lock(&h.lock);
	h.release = true;
	pthread_cond_broadcast(&h.cond);
	pthread_mutex_unlock(&h.lock);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(h.rc, 0);
	assert_int_equal(cache_body_size_once(f->cache, k, &(uint64_t){0}),
	                 -ENOENT);

	assert_int_equal(cache_body_put_once(f->cache, k, body, len), 0);
	assert_true(cache_map_size(f->cache) > before);
	free(body);
}

/* A real write failure from the file system (here: the file size limit,
 * which fails write() like a full disk does) leaves the database as it
 * was. */
static void test_write_failure_unchanged(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 8u << 20;
	uint8_t *body = noise(len, 5);
	struct cache_key k = {1, 1, 1};
	struct rlimit old, lim;
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	char path[2 * PATH_MAX];
	struct stat st;
	void (*oldsig)(int);
	int rc;

	t = wtxn(c);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 1, 1, "<m@x>", 77);
	assert_int_equal(cache_txn_commit(&t), 0);

	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = (rlim_t)st.st_size + (1u << 20);
	if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < lim.rlim_cur)
		skip();
	oldsig = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	rc = cache_body_put_once(c, k, body, len);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	/* LMDB reports the short write as EIO; on a full file system the
	 * cache turns that into -ENOSPC. */
	assert_true(rc == -EIO || rc == -EFBIG || rc == -ENOSPC);

	reopen(f);
	c = f->cache;
	t = rtxn(c);
	assert_int_equal(cache_body_has(t, k), 0);
	assert_int_equal(cache_msg_get(t, k, &m), 0);
	assert_int_equal(m->size, 77);
	assert_false(m->size_verified);
	cache_msg_free(&m);
	assert_int_equal(cache_txn_commit(&t), 0);
	/* And it works again once there is room. */
	assert_int_equal(cache_body_put_once(c, k, body, len), 0);
	free(body);
}

/* A forked child must not use its parent's cache. */
static void test_fork_refused(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct cache_txn *t = NULL;
	int status = 0;
	pid_t pid;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int rc = cache_txn_begin(c, false, &t);

		_exit(rc == -ECHILD && t == NULL ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* The parent goes on as before. */
	t = rtxn(c);
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* ------------------------------------------------------------------ */
/* A damaged cache is refused, never touched; a cache is used by one
 * process at a time. */

static uint8_t *slurp(const char *path, size_t *len_r)
{
	FILE *fp = fopen(path, "rb");
	uint8_t *buf;
	long len;

	assert_non_null(fp);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	len = ftell(fp);
	assert_true(len >= 0);
	rewind(fp);
	buf = malloc(len ? (size_t)len : 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
	fclose(fp);
	*len_r = (size_t)len;
	return buf;
}

/* Fill the cache with n messages and bodies of len bytes each. */
static void fill(struct cache *c, unsigned n, size_t len)
{
	struct cache_txn *t = wtxn(c);
	uint32_t id = add_mailbox(t, "INBOX");
	unsigned uid;

	for (uid = 1; uid <= n; uid++) {
		uint8_t *body = noise(len, uid);
		char msgid[32];

		snprintf(msgid, sizeof(msgid), "<%u@fill>", uid);
		put_msg(t, id, 1, uid, msgid, len);
		assert_int_equal(cache_body_put(t,
		                                (struct cache_key){id, 1, uid},
		                                body, len),
		                 0);
		free(body);
	}
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* Regression: a data file truncated to half (a full disk during a copy, a
 * bad restore) made the first access to a page past its end kill mailfs
 * with SIGBUS.  It is refused at open, with a message naming the file, and
 * left exactly as it is. */
static void test_truncated_refused(void **state)
{
	struct fixture *f = *state;
	struct cache *other = NULL;
	char path[2 * PATH_MAX], msg[1024] = "";
	uint8_t *before, *after;
	size_t blen, alen, half;
	struct stat st;

	fill(open_cache(f), 400, 6000);
	cache_close(&f->cache);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);
	half = (size_t)st.st_size / 2;
	assert_true(half > 1u << 20);
	assert_int_equal(truncate(path, (off_t)half), 0);
	before = slurp(path, &blen);
	assert_int_equal(blen, half);

	assert_int_equal(cache_open_msg(f->dir, &other, msg, sizeof(msg)),
	                 -EUCLEAN);
	assert_null(other);
	assert_non_null(strstr(msg, path));
	assert_non_null(strstr(msg, "damaged"));
	assert_non_null(strstr(msg, "truncated"));
	assert_null(strchr(msg, '\n'));
	/* Twice: the first refusal changed nothing. */
	assert_int_equal(cache_open(f->dir, &other), -EUCLEAN);
	after = slurp(path, &alen);
	assert_int_equal(alen, blen);
	assert_memory_equal(after, before, blen);
	free(before);
	free(after);

	/* An empty data file is not silently made a fresh cache either. */
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(cache_open_msg(f->dir, &other, msg, sizeof(msg)),
	                 -EUCLEAN);
	assert_non_null(strstr(msg, path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 0);
}

/* LMDB itself may leave the data file shorter than its last page number
 * says: pages allocated and freed in one transaction are never written.
 * Such a file is healthy (those pages are on the free list) and must open.
 * Made here with LMDB directly: a big value written and deleted again in
 * the same transaction, a few times. */
static void test_short_but_healthy(void **state)
{
	struct fixture *f = *state;
	char path[2 * PATH_MAX];
	static char val[1 << 20];
	MDB_envinfo info;
	MDB_stat ms;
	struct stat st;
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	bool shorter = false;
	unsigned i;
	struct cache_txn *t;
	uint64_t v = 0;

	open_cache(f);
	cache_close(&f->cache);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_mapsize(env, (size_t)1 << 32), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_NOTLS, 0600), 0);
	for (i = 0; i < 50 && !shorter; i++) {
		unsigned k = i % 2;
		MDB_val key = {sizeof(k), &k}, big = {sizeof(val), val};
		MDB_val small = {10, val};

		assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
		assert_int_equal(mdb_dbi_open(txn, "scratch", MDB_CREATE, &dbi),
		                 0);
		assert_int_equal(mdb_put(txn, dbi, &key, &small, 0), 0);
		k += 2;
		assert_int_equal(mdb_put(txn, dbi, &key, &big, 0), 0);
		assert_int_equal(mdb_del(txn, dbi, &key, NULL), 0);
		assert_int_equal(mdb_txn_commit(txn), 0);
		assert_int_equal(mdb_env_info(env, &info), 0);
		assert_int_equal(mdb_env_stat(env, &ms), 0);
		assert_int_equal(stat(path, &st), 0);
		shorter = (size_t)st.st_size <
		          (info.me_last_pgno + 1) * (size_t)ms.ms_psize;
	}
	mdb_env_close(env);
	/* If this LMDB never does it, the test proves nothing: say so. */
	assert_true(shorter);

	open_cache(f);
	t = wtxn(f->cache);
	assert_int_equal(cache_meta_set(t, "still.works", 42), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	t = rtxn(reopen(f));
	assert_int_equal(cache_meta_get(t, "still.works", &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(cache_txn_commit(&t), 0);
}

/* Two mailfs processes on one cache would both resume the same uploads
 * and both number POP3 downloads: the second open fails, whichever
 * process it comes from. */
static void test_open_in_other_process_busy(void **state)
{
	struct fixture *f = *state;
	int up[2], down[2], status = 0, rc;
	char b = 0, msg[1024] = "";
	struct cache *other = NULL;
	pid_t pid;

	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct cache *c = NULL;
		int rc = cache_open(f->dir, &c);

		b = rc == 0 ? 'y' : 'n';
		if (write(up[1], &b, 1) != 1 || read(down[0], &b, 1) != 1)
			_exit(2);
		cache_close(&c);
		_exit(rc == 0 ? 0 : 1);
	}
	assert_int_equal(read(up[0], &b, 1), 1);
	rc = b == 'y' ? cache_open_msg(f->dir, &other, msg, sizeof(msg)) : 1;
	/* Let the child go before any assertion can end the test. */
	assert_int_equal(write(down[1], &b, 1), 1);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(rc, -EBUSY);
	assert_null(other);
	assert_non_null(strstr(msg, f->dir));
	assert_non_null(strstr(msg, "in use"));
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	close(up[0]);
	close(up[1]);
	close(down[0]);
	close(down[1]);
	/* Once that process is gone, the cache opens. */
	open_cache(f);
}

/* A mailfs that was just unmounted holds its cache while it shuts down;
 * a mount right after it (a restart) waits for it instead of failing. */
static void test_open_waits_for_a_closing_process(void **state)
{
	struct fixture *f = *state;
	struct timespec t0, t1;
	int up[2], status = 0, rc;
	struct cache *other = NULL;
	char b = 0;
	pid_t pid;

	assert_int_equal(pipe(up), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct cache *c = NULL;
		int rc = cache_open(f->dir, &c);

		b = rc == 0 ? 'y' : 'n';
		if (write(up[1], &b, 1) != 1)
			_exit(2);
		usleep(1500 * 1000); /* shutting down, then gone */
		cache_close(&c);
		_exit(rc == 0 ? 0 : 1);
	}
	assert_int_equal(read(up[0], &b, 1), 1);
	assert_int_equal(b, 'y');
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = cache_open(f->dir, &other);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(rc, 0);
	assert_non_null(other);
	assert_true(t1.tv_sec - t0.tv_sec < CACHE_LOCK_WAIT_MS / 1000);
	cache_close(&other);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	close(up[0]);
	close(up[1]);
}

struct thread_arg {
	struct cache *cache;
	struct cache_txn *txn;
	uint32_t mbox;
	int rc;
	size_t last;
};

static void *end_txn_thread(void *p)
{
	struct thread_arg *a = p;
	size_t n = 0;

	a->rc = cache_msg_count(a->txn, a->mbox, 1, &n);
	if (a->rc == 0)
		a->rc = cache_txn_commit(&a->txn);
	a->last = n;
	return NULL;
}

static void *reader_thread(void *p)
{
	struct thread_arg *a = p;
	int i;

	for (i = 0; i < 300 && a->rc == 0; i++) {
		struct cache_txn *t = NULL;
		size_t n = 0;

		a->rc = cache_txn_begin(a->cache, false, &t);
		if (a->rc)
			break;
		a->rc = cache_msg_count(t, a->mbox, 1, &n);
		if (cache_txn_commit(&t) != 0 && a->rc == 0)
			a->rc = -EIO;
		/* Snapshots never go backwards. */
		if (n < a->last)
			a->rc = -ERANGE;
		a->last = n;
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	struct thread_arg r[3], x = {0};
	pthread_t th[3], tx;
	struct cache_txn *t;
	uint32_t uid, mbox;
	int i;

	t = wtxn(c);
	mbox = add_mailbox(t, "INBOX");
	put_msg(t, mbox, 1, 1, "<1@x>", 1);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* A read transaction begun here and ended on another thread. */
	x.cache = c;
	x.mbox = mbox;
	x.txn = rtxn(c);
	assert_int_equal(pthread_create(&tx, NULL, end_txn_thread, &x), 0);
	assert_int_equal(pthread_join(tx, NULL), 0);
	assert_int_equal(x.rc, 0);
	assert_int_equal(x.last, 1);
	assert_null(x.txn);

	/* Readers in parallel with a writer committing one by one. */
	for (i = 0; i < 3; i++) {
		r[i] = (struct thread_arg){.cache = c, .mbox = mbox};
		assert_int_equal(
		        pthread_create(&th[i], NULL, reader_thread, &r[i]), 0);
	}
	for (uid = 2; uid <= 200; uid++) {
		t = wtxn(c);
		put_msg(t, mbox, 1, uid, "<n@x>", uid);
		assert_int_equal(cache_txn_commit(&t), 0);
	}
	for (i = 0; i < 3; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(r[i].rc, 0);
		assert_true(r[i].last >= 1 && r[i].last <= 200);
	}
}

/* ------------------------------------------------------------------ */
/* Bodies in pieces (schema 2) */

#define CHUNK CACHE_BODY_CHUNK

/* Entries of a named database, read with LMDB itself (the cache closed). */
static size_t db_entries(struct fixture *f, const char *name)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat st;
	size_t n = 0;
	bool open = f->cache != NULL;

	cache_close(&f->cache);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	if (mdb_dbi_open(txn, name, 0, &dbi) == 0) {
		assert_int_equal(mdb_stat(txn, dbi, &st), 0);
		n = st.ms_entries;
	}
	mdb_txn_abort(txn);
	mdb_env_close(env);
	if (open)
		open_cache(f);
	return n;
}

/* Every read call agrees with want at offsets around each piece boundary
 * and at odd places, for lengths inside a piece and across one. */
struct view_check {
	const uint8_t *want;
	size_t n;
};

static int view_cmp(void *ctx, const void *data, size_t n)
{
	struct view_check *v = ctx;

	assert_int_equal(n, v->n);
	assert_memory_equal(data, v->want, n);
	return 7;
}

static void check_reads(struct cache *c, struct cache_key k,
                        const uint8_t *want, size_t len)
{
	static const size_t lens[] = {1,      2,     4096,      70000,
	                              131072, CHUNK, CHUNK + 1, 3 * CHUNK + 5};
	uint8_t *buf = malloc(4 * CHUNK);
	uint64_t size = 0;

	assert_non_null(buf);
	assert_int_equal(cache_body_size_once(c, k, &size), 0);
	assert_int_equal(size, len);
	for (size_t b = 0; b <= len / CHUNK + 1; b++) {
		for (int d = -3; d <= 3; d++) {
			int64_t o = (int64_t)(b * CHUNK) + d * (d < 0 ? 1 : 7);

			if (o < 0)
				continue;
			for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]);
			     i++) {
				size_t off = (size_t)o, n = 99, exp;
				struct view_check v;

				exp = off >= len            ? 0
				      : len - off < lens[i] ? len - off
				                            : lens[i];
				assert_int_equal(
				        cache_body_read_once(c, k, off, buf,
				                             lens[i], &n),
				        0);
				assert_int_equal(n, exp);
				assert_memory_equal(buf, want + off, n);
				v.want = want + off;
				v.n = exp;
				assert_int_equal(
				        cache_body_view_once(c, k, off, lens[i],
				                             view_cmp, &v),
				        7);
			}
		}
	}
	free(buf);
}

static void test_body_pieces(void **state)
{
	struct fixture *f = *state;
	static const size_t sizes[] = {CHUNK - 1, CHUNK, CHUNK + 1,
	                               3 * CHUNK + 17, 2 * CHUNK};
	const size_t n = sizeof(sizes) / sizeof(sizes[0]);
	struct cache *c = open_cache(f);
	struct cache_txn *t;
	uint32_t id;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	for (size_t i = 0; i < n; i++) {
		uint8_t *body = pattern(sizes[i], (unsigned)i);

		put_msg(t, id, 1, (uint32_t)i + 1, "<p@x>", 1);
		assert_int_equal(
		        cache_body_put(
		                t, (struct cache_key){id, 1, (uint32_t)i + 1},
		                body, sizes[i]),
		        0);
		free(body);
	}
	assert_int_equal(cache_txn_commit(&t), 0);
	/* Up to one chunk: one value; longer: pieces. */
	assert_int_equal(db_entries(f, "zbody"), 2);
	assert_int_equal(db_entries(f, "body_big"), 3);
	assert_int_equal(db_entries(f, "chunk"), 2 + 4 + 2);
	assert_int_equal(db_entries(f, "chunk_open"), 0);
	reopen(f);
	for (size_t i = 0; i < n; i++) {
		struct cache_key k = {id, 1, (uint32_t)i + 1};
		uint8_t *body = pattern(sizes[i], (unsigned)i);
		struct cache_msg *m = NULL;
		void *all = NULL;
		size_t len = 0;

		check_reads(f->cache, k, body, sizes[i]);
		t = rtxn(f->cache);
		assert_int_equal(cache_body_get(t, k, &all, &len), 0);
		assert_int_equal(len, sizes[i]);
		assert_memory_equal(all, body, len);
		assert_int_equal(cache_msg_get(t, k, &m), 0);
		assert_true(m->size_verified);
		assert_int_equal(m->size, sizes[i]);
		assert_int_equal(cache_txn_commit(&t), 0);
		cache_msg_free(&m);
		free(all);
		free(body);
	}
	/* Replacing a body in pieces by a short one frees its pieces. */
	t = wtxn(f->cache);
	assert_int_equal(
	        cache_body_put(t, (struct cache_key){id, 1, 4}, "short", 5), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 2 + 2);
	/* Deleting bodies deletes their pieces: one message, then all. */
	t = wtxn(f->cache);
	assert_int_equal(cache_msg_delete(t, (struct cache_key){id, 1, 3}), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 2);
	t = wtxn(f->cache);
	assert_int_equal(cache_body_delete(t, (struct cache_key){id, 1, 5}), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 0);
	assert_int_equal(db_entries(f, "body_big"), 0);
}

/* Write body[0..len) into a stream in uneven pieces. */
static void stream_feed(struct cache_body_stream *s, const uint8_t *body,
                        size_t len)
{
	static const size_t step[] = {1, 4097,       65536 + 3,
	                              7, CHUNK + 11, 300000};
	size_t off = 0;

	for (size_t i = 0; off < len; i++) {
		size_t n = step[i % (sizeof(step) / sizeof(step[0]))];

		if (n > len - off)
			n = len - off;
		assert_int_equal(cache_body_stream_write(s, body + off, n), 0);
		off += n;
		assert_int_equal(cache_body_stream_size(s), off);
	}
}

static void test_body_stream(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 21 * CHUNK + 123; /* more than one flush */
	uint8_t *body = pattern(len, 11), *small = pattern(5000, 12);
	struct cache_body_stream *s = NULL, *s2 = NULL;
	struct cache_key k, k2;
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	uint32_t id;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	put_msg(t, id, 1, 1, "<s@x>", 12345);
	put_msg(t, id, 1, 2, "<t@x>", 1);
	assert_int_equal(cache_txn_commit(&t), 0);
	k = (struct cache_key){id, 1, 1};
	k2 = (struct cache_key){id, 1, 2};

	assert_int_equal(cache_body_stream_new(c, &s), 0);
	stream_feed(s, body, len);
	/* Pieces are committed, but the body does not exist yet. */
	t = rtxn(c);
	assert_int_equal(cache_body_has(t, k), 0);
	assert_int_equal(cache_msg_get(t, k, &m), 0);
	assert_false(m->size_verified);
	assert_int_equal(m->size, 12345);
	cache_msg_free(&m);
	assert_int_equal(cache_txn_commit(&t), 0);
	/* (The pieces themselves: see test_body_stream_abandoned; a stream
	 * must not outlive its cache, so the cache stays open here.) */

	t = wtxn(c);
	assert_int_equal(cache_body_stream_finish(t, s, k), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_body_stream_close(&s);
	assert_null(s);
	assert_int_equal(db_entries(f, "chunk"), 22);
	assert_int_equal(db_entries(f, "chunk_open"), 0);
	c = f->cache;
	check_reads(c, k, body, len);
	assert_int_equal(cache_msg_get_once(c, k, &m), 0);
	assert_true(m->size_verified);
	assert_int_equal(m->size, len);
	cache_msg_free(&m);

	/* A short stream is stored as one value. */
	assert_int_equal(cache_body_stream_new(c, &s2), 0);
	stream_feed(s2, small, 5000);
	t = wtxn(c);
	assert_int_equal(cache_body_stream_finish(t, s2, k2), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_body_stream_close(&s2);
	assert_int_equal(db_entries(f, "zbody"), 1);
	check_reads(f->cache, k2, small, 5000);

	/* A message without a record takes no body; the stream's pieces are
	 * deleted at its close. */
	assert_int_equal(cache_body_stream_new(f->cache, &s), 0);
	stream_feed(s, body, 17 * CHUNK);
	t = wtxn(f->cache);
	assert_int_equal(
	        cache_body_stream_finish(t, s, (struct cache_key){id, 1, 9}),
	        -ENOENT);
	assert_int_equal(cache_txn_commit(&t), -ENOENT);
	cache_body_stream_close(&s);
	assert_int_equal(db_entries(f, "chunk"), 22);
	assert_int_equal(db_entries(f, "chunk_open"), 0);
	free(body);
	free(small);
}

/* A fetch that stops half way leaves nothing readable and nothing behind:
 * abandoned (closed unfinished), finished in a transaction that is aborted,
 * or cut short by the death of the process (cleaned at the next open). */
static void test_body_stream_abandoned(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 40 * CHUNK;
	uint8_t *body = pattern(len, 13);
	struct cache_body_stream *s = NULL;
	struct cache_key k;
	struct cache_txn *t;
	uint32_t id;
	pid_t pid;
	int status;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	put_msg(t, id, 1, 1, "<a@x>", len);
	assert_int_equal(cache_txn_commit(&t), 0);
	k = (struct cache_key){id, 1, 1};

	assert_int_equal(cache_body_stream_new(c, &s), 0);
	stream_feed(s, body, len / 2);
	cache_body_stream_close(&s);
	assert_int_equal(db_entries(f, "chunk"), 0);
	assert_int_equal(db_entries(f, "chunk_open"), 0);

	assert_int_equal(cache_body_stream_new(f->cache, &s), 0);
	stream_feed(s, body, len);
	t = wtxn(f->cache);
	assert_int_equal(cache_body_stream_finish(t, s, k), 0);
	cache_txn_abort(&t);
	cache_body_stream_close(&s);
	assert_int_equal(db_entries(f, "chunk"), 0);
	assert_int_equal(cache_body_size_once(f->cache, k, &(uint64_t){0}),
	                 -ENOENT);

	cache_close(&f->cache);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct cache *cc = NULL;

		if (cache_open(f->dir, &cc) != 0 ||
		    cache_body_stream_new(cc, &s) != 0 ||
		    cache_body_stream_write(s, body, len / 2) != 0)
			_exit(1);
		_exit(0); /* dies with the pieces written, unfinished */
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_true(db_entries(f, "chunk") >= 16);
	assert_int_equal(db_entries(f, "chunk_open"), 1);
	open_cache(f);
	assert_int_equal(db_entries(f, "chunk"), 0);
	assert_int_equal(db_entries(f, "chunk_open"), 0);
	assert_int_equal(cache_body_size_once(f->cache, k, &(uint64_t){0}),
	                 -ENOENT);
	free(body);
}

/* Moves, rematches, generation and mailbox removal of bodies in pieces;
 * a missing piece is a clear error. */
static void test_body_pieces_lifecycle(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 5 * CHUNK + 3;
	uint8_t *body = pattern(len, 17);
	struct cache_rematch_stats st;
	struct cache_key a = {0, 100, 1}, b = {0, 100, 2}, n1 = {0, 200, 7};
	struct cache_txn *t;
	uint8_t buf[16];
	size_t n;
	uint32_t id;

	t = wtxn(c);
	id = add_mailbox(t, "INBOX");
	a.mailbox_id = b.mailbox_id = n1.mailbox_id = id;
	assert_int_equal(cache_mailbox_set_state(t, id, 100, 5, 0, 1, NULL), 0);
	put_msg(t, id, 100, 1, "<big@x>", 1);
	put_msg(t, id, 100, 2, "<other@x>", 1);
	assert_int_equal(cache_body_put(t, a, body, len), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* A move takes the pieces along, without copying them. */
	t = wtxn(c);
	assert_int_equal(cache_body_move(t, a, b), 0);
	assert_int_equal(cache_body_has(t, a), 0);
	assert_int_equal(cache_body_move(t, a, b), -ENOENT);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 6);
	check_reads(f->cache, b, body, len);

	/* UIDVALIDITY 200: the new message with the same Message-ID and
	 * size gets a copy (CACHE_REMATCH_COPY), the old one keeps its. */
	t = wtxn(f->cache);
	put_msg(t, id, 100, 2, "<big@x>", 1);
	assert_int_equal(cache_mailbox_set_state(t, id, 200, 8, 0, 2, NULL), 0);
	put_msg(t, id, 200, 7, "<big@x>", len);
	assert_int_equal(cache_rematch(t, id, 200, CACHE_REMATCH_COPY, &st), 0);
	assert_int_equal(st.matched, 1);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 12);
	check_reads(f->cache, n1, body, len);
	check_reads(f->cache, b, body, len);

	/* A piece gone from the file: an error, not wrong bytes. */
	{
		MDB_env *env;
		MDB_txn *txn;
		MDB_dbi dbi;
		MDB_cursor *cur;
		MDB_val k, v;

		cache_close(&f->cache);
		assert_int_equal(mdb_env_create(&env), 0);
		assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
		assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
		assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
		assert_int_equal(mdb_dbi_open(txn, "chunk", 0, &dbi), 0);
		assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
		assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_FIRST), 0);
		assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_NEXT), 0);
		assert_int_equal(mdb_cursor_del(cur, 0), 0);
		mdb_cursor_close(cur);
		assert_int_equal(mdb_txn_commit(txn), 0);
		mdb_env_close(env);
		open_cache(f);
	}
	assert_int_equal(cache_body_read_once(f->cache, b, CHUNK + 5, buf,
	                                      sizeof(buf), &n),
	                 -EIO);
	assert_int_equal(
	        cache_body_read_once(f->cache, b, 5, buf, sizeof(buf), &n), 0);

	/* Dropping a generation, then the mailbox, frees every piece. */
	t = wtxn(f->cache);
	assert_int_equal(cache_msg_delete_generation(t, id, 100, NULL), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 6);
	t = wtxn(f->cache);
	assert_int_equal(cache_mailbox_remove(t, id), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk"), 0);
	assert_int_equal(db_entries(f, "body_big"), 0);
	free(body);
}

static void test_pop_stream(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f);
	const size_t len = 18 * CHUNK + 1;
	uint8_t *body = pattern(len, 19);
	struct cache_body_stream *s = NULL;
	struct cache_key k = {CACHE_POP_MAILBOX_ID, CACHE_POP_UIDVALIDITY, 0};
	struct cache_pop *p = NULL;
	struct cache_txn *t;
	uint32_t num = 0;

	assert_int_equal(cache_body_stream_new(c, &s), 0);
	stream_feed(s, body, len);
	t = wtxn(c);
	assert_int_equal(
	        cache_pop_add_stream(t, "uidl-big", s, 1700000000, &num), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_body_stream_close(&s);
	assert_int_equal(num, 1);
	k.uid = num;
	check_reads(c, k, body, len);
	t = rtxn(c);
	assert_int_equal(cache_pop_get(t, num, &p), 0);
	assert_int_equal(p->size, len);
	cache_pop_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(db_entries(f, "chunk_open"), 0);
	free(body);
}

/* ------------------------------------------------------------------ */
/* The on-disk format, byte for byte: every database of a freshly written
 * cache holding one of each kind of entry, dumped with LMDB itself and
 * compared with the bytes the schema in cache.h prescribes (written out
 * here by hand, hashes included), so that any change of a key or record
 * layout fails here. */

#define BYTES(s) s, sizeof(s) - 1

/* A row of the dump: db, key, the first vcmp bytes of the value and the
 * value's length. */
struct disk_row {
	const char *db;
	const char *k;
	size_t klen;
	const char *v;
	size_t vcmp;
	size_t vlen;
};

#define ROW(db, k, v)                                                          \
	{                                                                      \
		db, BYTES(k), BYTES(v), sizeof(v) - 1                          \
	}
#define ROW_HEAD(db, k, v, n)                                                  \
	{                                                                      \
		db, BYTES(k), BYTES(v), n                                      \
	}
/* A compressed value: its head only (the frame depends on zstd's
 * version). */
#define ANY_LEN            ((size_t)-1)
#define ROW_ZSTD(db, k, v) ROW_HEAD(db, k, v, ANY_LEN)

/* The value of a meta entry: u64 BE. */
#define U64(v) "\x00\x00\x00\x00\x00\x00\x00" v

#define MSG_REC_HEAD "\x01\x01\x00\x00\x00\x00\x00"
#define MSG_REC_TAIL                                                           \
	"\x00\x00\x00\x00\x65\x53\xf1\x00\x00\x3c\x00\x00\x00\x00"             \
	"\x00\x00\x00\x07\x00\x00\x00\x05\x5c\x53\x65\x65"                     \
	"\x6e\x00\x00\x00\x01\x73\x00\x00\x00\x01\x66\x00"                     \
	"\x00\x00\x01\x64\x00\x00\x00\x05\x3c\x6d\x40\x78"                     \
	"\x3e\x00\x00\x00\x08\x48\x3a\x20\x76\x0d\x0a\x0d"                     \
	"\x0a"
/* Codec 1 (zstd, no dictionary), the length of a whole piece. */
#define ZSTD_PIECE "\x01\x00\x04\x00\x00"
#define STREAM_PIECE(i)                                                        \
	ROW_ZSTD("chunk", "\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00" i,    \
	         ZSTD_PIECE)

/* The mailbox named by disk_long_name (600 bytes) is filed under its
 * first 478 bytes, a NUL and this SHA-256 of the whole name. */
#define LONG_NAME_HASH                                                         \
	"\xaf\x9f\x38\x64\x87\x8d\x29\xca\x14\x31\x3d\xc7"                     \
	"\x1a\x7b\x78\xa3\x20\xcc\x36\xa5\x90\xec\xe9\xf5"                     \
	"\xc6\xbc\x16\x2d\xf2\x98\x63\xea"

static const struct disk_row disk_rows[] = {
        /* meta: counters, schema, the values of fs/ and of tests */
        ROW("meta", "cache.next_blob", U64("\x03")),
        ROW("meta", "cache.next_mailbox", U64("\x03")),
        ROW("meta", "cache.next_pending", U64("\x02")),
        ROW("meta", "cache.next_pop", U64("\x02")),
        ROW("meta", "mtime.1", "\x00\x00\x00\x00\x65\x53\xf1\x00"),
        /* "popcmp." + SHA-256("uidl-a sha256:00"), first 8 bytes, hex */
        ROW("meta", "popcmp.727a5bf1c8d9183c", U64("\x01")),
        /* "popdup." + SHA-256("uidl-a"), first 8 bytes, hex */
        ROW("meta", "popdup.12b26475137f0033", U64("\x01")),
        ROW("meta", "popsize.12b26475137f0033", U64("\x09")),
        ROW("meta", "schema", U64("\x03")),
        ROW("meta", "user.value", U64("\x07")),
        /* mbox: id u32 -> record; the long-named one by length only */
        ROW("mbox", "\x00\x00\x00\x01",
            "\x01\x2f\x00\x00\x00\x00\x10\x00\x00\x00\x09\x00"
            "\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x64\x00"
            "\x00\x00\x00\x65\x53\xf1\x01\x00\x00\x00\x05\x49"
            "\x4e\x42\x4f\x58\x00\x00\x00\x0e\x5c\x48\x61\x73"
            "\x4e\x6f\x43\x68\x69\x6c\x64\x72\x65\x6e\x00\x00"
            "\x00\x01\x00\x00\x00\x09"),
        ROW_HEAD("mbox", "\x00\x00\x00\x02", "\x01\x2f\x00", 643),
        /* mbox_name: name -> id u32 (the long name: see test) */
        ROW("mbox_name", "INBOX", "\x00\x00\x00\x01"),
        {"mbox_name", NULL, 511, BYTES("\x00\x00\x00\x02"), 4},
        /* msg: (mailbox, UIDVALIDITY, UID) -> record */
        ROW("msg", "\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x02",
            MSG_REC_HEAD "\x00\x00\x05" MSG_REC_TAIL),
        ROW("msg", "\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x03",
            MSG_REC_HEAD "\x04\x00\x01" MSG_REC_TAIL),
        /* pop: number u32 -> record; pop_uidl: UIDL -> number */
        ROW("pop", "\x00\x00\x00\x01",
            "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00"
            "\x00\x00\x65\x53\xf1\x02\x00\x00\x00\x06\x75\x69"
            "\x64\x6c\x2d\x61"),
        ROW("pop_uidl", "uidl-a", "\x00\x00\x00\x01"),
        ROW("pop_uidl", "uidl-b", "\x00\x00\x00\x01"),
        /* pending: seq u64 -> record, (seq u64, part u32) -> off u64 +
         * bytes */
        ROW("pending", "\x00\x00\x00\x00\x00\x00\x00\x01",
            "\x02\x03\x00\x00\x00\x01\x00\x00\x00\x00\x65\x53"
            "\xf1\x03\xff\x88\x00\x00\x00\x00\x65\x53\xf1\x04"
            "\x00\x00\x00\x05\x5c\x53\x65\x65\x6e\x00\x00\x00"
            "\x07\x6e\x65\x77\x2e\x65\x6d\x6c\x00\x00\x00\x00"
            "\x00\x00\x00\x04\x61\x62\x63\x64"),
        ROW("pending", "\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
            "\x00\x00\x00\x00\x00\x00\x00\x04"
            "efg"),
        /* body_big: message key -> version, length, chunk size, blob */
        ROW("body_big", "\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x03",
            "\x01\x00\x00\x00\x00\x00\x04\x00\x01\x00\x04\x00"
            "\x00\x00\x00\x00\x00\x00\x00\x00\x01"),
        /* chunk: (blob u64, piece u32) -> codec byte, then the bytes
         * (codec 0) or length u32 and a zstd frame (codec 1) */
        ROW_ZSTD("chunk", "\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
                 ZSTD_PIECE),
        ROW("chunk", "\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01",
            "\x00\x83"),
        STREAM_PIECE("\x00"),
        STREAM_PIECE("\x01"),
        STREAM_PIECE("\x02"),
        STREAM_PIECE("\x03"),
        STREAM_PIECE("\x04"),
        STREAM_PIECE("\x05"),
        STREAM_PIECE("\x06"),
        STREAM_PIECE("\x07"),
        STREAM_PIECE("\x08"),
        STREAM_PIECE("\x09"),
        STREAM_PIECE("\x0a"),
        STREAM_PIECE("\x0b"),
        STREAM_PIECE("\x0c"),
        STREAM_PIECE("\x0d"),
        STREAM_PIECE("\x0e"),
        STREAM_PIECE("\x0f"),
        /* chunk_open: blob u64 -> version 1, start time u64 */
        ROW_HEAD("chunk_open", "\x00\x00\x00\x00\x00\x00\x00\x02", "\x01", 9),
        /* zbody: message key -> codec byte 0 and the bytes (too short
         * to gain from compression); POP3 under (UINT32_MAX, 0, n) */
        ROW("zbody", "\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x02",
            "\x00hello"),
        ROW("zbody", "\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x01",
            "\x00pop body"),
};

static const char *const disk_dbs[] = {
        "body", "body_big", "chunk", "chunk_open", "mbox",  "mbox_name", "meta",
        "msg",  "pending",  "pop",   "pop_uidl",   "zbody", "zdict",
};

static void disk_long_name(char name[601])
{
	memcpy(name, "Long/", 5);
	for (size_t i = 0; i < 595; i++)
		name[5 + i] = (char)('a' + i % 26);
	name[600] = '\0';
}

/* One of each entry, through the public calls only. */
static void disk_write(struct fixture *f)
{
	struct cache_mailbox mb = {.name = "INBOX",
	                           .delim = '/',
	                           .attrs = CACHE_MBOX_HASNOCHILDREN,
	                           .attrs_raw = "\\HasNoChildren"};
	struct cache_msg m = {.size = 5,
	                      .internaldate = 1700000000,
	                      .tz_minutes = 60,
	                      .modseq = 7,
	                      .flags = "\\Seen",
	                      .subject = "s",
	                      .from = "f",
	                      .date = "d",
	                      .message_id = "<m@x>",
	                      .header = (uint8_t *)"H: v\r\n\r\n",
	                      .header_len = 8};
	struct cache_pending p = {.mailbox_id = 1,
	                          .state = CACHE_PENDING_CLOSED,
	                          .flags = "\\Seen",
	                          .name = "new.eml",
	                          .internaldate = 1700000003,
	                          .tz_minutes = -120,
	                          .created = 1700000004,
	                          .size = 4,
	                          .data = (uint8_t *)"abcd"};
	struct cache *c = open_cache(f);
	char name[601];
	uint8_t *big = pattern(CHUNK + 1, 3);
	struct cache_txn *t = wtxn(c);
	uint32_t id, num;
	uint64_t seq;

	disk_long_name(name);
	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	assert_int_equal(id, 1);
	assert_int_equal(
	        cache_mailbox_set_state(t, id, 9, 4, 100, 1700000001, NULL), 0);
	mb = (struct cache_mailbox){.name = name, .delim = '/'};
	assert_int_equal(cache_mailbox_add(t, &mb, &id), 0);
	assert_int_equal(id, 2);
	m.key = (struct cache_key){1, 9, 2};
	assert_int_equal(cache_msg_put(t, &m), 0);
	assert_int_equal(cache_body_put(t, m.key, "hello", 5), 0);
	m.key.uid = 3;
	assert_int_equal(cache_msg_put(t, &m), 0);
	assert_int_equal(cache_body_put(t, m.key, big, CHUNK + 1), 0);
	assert_int_equal(
	        cache_pop_add(t, "uidl-a", "pop body", 8, 1700000002, &num), 0);
	assert_int_equal(cache_pop_alias(t, "uidl-b", num), 0);
	assert_int_equal(cache_pending_add(t, &p, &seq), 0);
	assert_int_equal(cache_pending_write(t, seq, 4, "efg", 3), 0);
	assert_int_equal(cache_meta_set(t, "user.value", 7), 0);
	assert_int_equal(cache_mailbox_mtime_set(t, 1, 1700000000), 0);
	assert_int_equal(cache_pop_mark_set(t, CACHE_POP_DUP, "uidl-a", 1), 0);
	assert_int_equal(
	        cache_pop_mark_set(t, CACHE_POP_CMP, "uidl-a sha256:00", 1), 0);
	assert_int_equal(cache_pop_mark_set(t, CACHE_POP_SIZE, "uidl-a", 9), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_close(&f->cache);
	free(big);
}

/* The pieces of a body whose download was cut off (left for the next
 * cache_open to delete): written by a child that dies. */
static void disk_write_unfinished(struct fixture *f)
{
	uint8_t *body = pattern(16 * CHUNK, 5);
	pid_t pid;
	int status;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct cache_body_stream *s = NULL;
		struct cache *cc = NULL;

		if (cache_open(f->dir, &cc) != 0 ||
		    cache_body_stream_new(cc, &s) != 0 ||
		    cache_body_stream_write(s, body, 16 * CHUNK) != 0)
			_exit(1);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	free(body);
}

static void test_disk_format(void **state)
{
	struct fixture *f = *state;
	const size_t nrows = sizeof(disk_rows) / sizeof(disk_rows[0]);
	uint8_t long_key[511];
	char name[601];
	MDB_env *env;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_dbi dbi;
	MDB_val k, v;
	size_t i, row = 0;

	disk_write(f);
	disk_write_unfinished(f);
	disk_long_name(name);
	memcpy(long_key, name, 478);
	long_key[478] = '\0';
	memcpy(long_key + 479, LONG_NAME_HASH, 32);

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_env_get_maxkeysize(env), 511);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	/* The main database names the databases, nothing else. */
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	for (i = 0; mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0; i++) {
		assert_true(i < sizeof(disk_dbs) / sizeof(disk_dbs[0]));
		assert_int_equal(k.mv_size, strlen(disk_dbs[i]));
		assert_memory_equal(k.mv_data, disk_dbs[i], k.mv_size);
	}
	assert_int_equal(i, sizeof(disk_dbs) / sizeof(disk_dbs[0]));
	mdb_cursor_close(cur);
	/* Each database in the order of the rows: its entries in key order. */
	while (row < nrows) {
		const char *db = disk_rows[row].db;

		assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
		assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
		while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
			const struct disk_row *r = &disk_rows[row];
			const void *want = r->k ? (const void *)r->k : long_key;

			if (row >= nrows || strcmp(r->db, db) != 0 ||
			    k.mv_size != r->klen ||
			    memcmp(k.mv_data, want, r->klen) != 0 ||
			    (r->vlen != ANY_LEN && v.mv_size != r->vlen) ||
			    memcmp(v.mv_data, r->v, r->vcmp) != 0)
				fail_msg(
				        "%s: entry %zu is not row %zu of the "
				        "table (key of %zu bytes, value of %zu)",
				        db, row, row, k.mv_size, v.mv_size);
			row++;
		}
		mdb_cursor_close(cur);
		/* Every row of db was found. */
		assert_true(row == nrows || strcmp(disk_rows[row].db, db) != 0);
	}
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

/* ------------------------------------------------------------------ */
/* A cache written by the mailfs of schema 1 (tests/fixtures/cache-v1). */

static void copy_fixture(struct fixture *f, const char *name)
{
	const char *src = getenv("MAILFS_FIXTURES");
	char path[PATH_MAX + 64];
	FILE *in, *out;
	char buf[65536];
	size_t n;

	assert_non_null(src);
	snprintf(path, sizeof(path), "%s/%s/data.mdb", src, name);
	in = fopen(path, "rb");
	assert_non_null(in);
	snprintf(path, sizeof(path), "%s/acct", f->tmp);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(mkdir(f->dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	out = fopen(path, "wb");
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	assert_int_equal(fclose(out), 0);
	fclose(in);
}

/* Every body of the fixture, byte for byte, through every read call. */
static void check_fixture_bodies(struct cache *c)
{
	struct cache_txn *t = rtxn(c);
	uint8_t *want = malloc(1 << 20), *got = malloc(1 << 20);
	size_t n;

	assert_non_null(want);
	assert_non_null(got);
	for (size_t i = 0; i < sizeof(fix_bodies) / sizeof(fix_bodies[0]);
	     i++) {
		const struct fix_body *b = &fix_bodies[i];
		uint32_t id = 0;
		struct cache_key k;
		struct cache_msg *m = NULL;
		uint64_t size = 0;
		void *all = NULL;
		size_t len = 0;

		assert_int_equal(cache_mailbox_lookup(t, b->mailbox, &id), 0);
		k = (struct cache_key){id, b->uidvalidity, b->uid};
		fix_body(fix_seed(b), want, b->len);
		assert_int_equal(cache_body_has(t, k), 1);
		assert_int_equal(cache_body_size(t, k, &size), 0);
		assert_int_equal(size, b->len);
		assert_int_equal(cache_msg_get(t, k, &m), 0);
		assert_true(m->size_verified);
		assert_int_equal(m->size, b->len);
		cache_msg_free(&m);
		assert_int_equal(cache_body_get(t, k, &all, &len), 0);
		assert_int_equal(len, b->len);
		assert_memory_equal(all, want, len);
		free(all);
		assert_int_equal(
		        cache_body_read(t, k, b->len - 9, got, 100, &n), 0);
		assert_int_equal(n, 9);
		assert_memory_equal(got, want + b->len - 9, 9);
	}
	for (size_t i = 0; i < sizeof(fix_pops) / sizeof(fix_pops[0]); i++) {
		struct cache_key k = {CACHE_POP_MAILBOX_ID,
		                      CACHE_POP_UIDVALIDITY, (uint32_t)i + 1};
		uint32_t num = 0;
		struct cache_pop *p = NULL;

		assert_int_equal(cache_pop_lookup(t, fix_pops[i].uidl, &num),
		                 0);
		assert_int_equal(num, i + 1);
		assert_int_equal(cache_pop_get(t, num, &p), 0);
		assert_int_equal(p->size, fix_pops[i].len);
		assert_int_equal(p->downloaded, FIX_POP_WHEN + (int64_t)i);
		cache_pop_free(&p);
		fix_body(501 + (uint32_t)i, want, fix_pops[i].len);
		assert_int_equal(cache_body_read(t, k, 0, got, 1 << 20, &n), 0);
		assert_int_equal(n, fix_pops[i].len);
		assert_memory_equal(got, want, n);
	}
	assert_int_equal(cache_txn_commit(&t), 0);
	free(want);
	free(got);
}

/* The schema number the file says, read with LMDB itself. */
static uint64_t raw_schema(struct fixture *f)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = {6, "schema"}, v;
	uint64_t n = 0;
	bool open = f->cache != NULL;

	cache_close(&f->cache);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_int_equal(v.mv_size, 8);
	for (int i = 0; i < 8; i++)
		n = n << 8 | ((const uint8_t *)v.mv_data)[i];
	mdb_txn_abort(txn);
	mdb_env_close(env);
	if (open)
		open_cache(f);
	return n;
}

static void test_fixture_v1(void **state)
{
	struct fixture *f = *state;
	struct cache_pending *p = NULL;
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	uint8_t want[FIX_PENDING_LEN + FIX_PENDING_PART];
	uint64_t v = 0;
	uint32_t id = 0;
	size_t count = 0;

	copy_fixture(f, "cache-v1");
	assert_int_equal(raw_schema(f), 1);
	open_cache(f);
	check_fixture_bodies(f->cache);

	t = rtxn(f->cache);
	assert_int_equal(cache_meta_get(t, FIX_META_NAME, &v), 0);
	assert_int_equal(v, FIX_META_VALUE);
	assert_int_equal(cache_mailbox_lookup(t, "INBOX", &id), 0);
	assert_int_equal(cache_msg_count(t, id, FIX_INBOX_UIDV, &count), 0);
	assert_int_equal(count, 3);
	assert_int_equal(cache_msg_get(t,
	                               (struct cache_key){id, FIX_INBOX_UIDV,
	                                                  FIX_UNCACHED_UID},
	                               &m),
	                 0);
	assert_false(m->size_verified);
	assert_int_equal(m->size, FIX_UNCACHED_SIZE);
	cache_msg_free(&m);
	assert_int_equal(
	        cache_body_has(t, (struct cache_key){id, FIX_INBOX_UIDV,
	                                             FIX_UNCACHED_UID}),
	        0);
	/* The upload the server never confirmed, with its later write. */
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->mailbox_id, id);
	assert_int_equal(p->state, CACHE_PENDING_NEW);
	assert_string_equal(p->flags, FIX_PENDING_FLAGS);
	assert_int_equal(p->size, sizeof(want));
	fix_body(900, want, FIX_PENDING_LEN);
	fix_body(901, want + FIX_PENDING_LEN, FIX_PENDING_PART);
	assert_memory_equal(p->data, want, sizeof(want));
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Upgraded in place to this schema, nothing lost: the same after a
	 * reopen. */
	assert_int_equal(raw_schema(f), CACHE_SCHEMA_VERSION);
	check_fixture_bodies(f->cache);

	/* The upgraded cache takes bodies in pieces next to the old ones,
	 * and the old long body (one value) moves and goes like any. */
	{
		const size_t len = 3 * CACHE_BODY_CHUNK + 1;
		uint8_t *body = malloc(len);
		struct cache_body_stream *s = NULL;
		struct cache_key k3 = {id, FIX_INBOX_UIDV, FIX_UNCACHED_UID};
		struct cache_key k2 = {id, FIX_INBOX_UIDV, 2};
		uint8_t buf[64];
		size_t n;

		assert_non_null(body);
		fix_body(3, body, len);
		assert_int_equal(cache_body_stream_new(f->cache, &s), 0);
		assert_int_equal(cache_body_stream_write(s, body, len), 0);
		t = wtxn(f->cache);
		assert_int_equal(cache_body_stream_finish(t, s, k3), 0);
		assert_int_equal(cache_txn_commit(&t), 0);
		cache_body_stream_close(&s);
		check_reads(f->cache, k3, body, len);
		fix_body(2, body, 270000);
		check_reads(f->cache, k2, body, 270000);
		t = wtxn(f->cache);
		put_msg(t, id, FIX_INBOX_UIDV, 20, "<2@fixture.example>", 1);
		assert_int_equal(
		        cache_body_move(
		                t, k2,
		                (struct cache_key){id, FIX_INBOX_UIDV, 20}),
		        0);
		assert_int_equal(cache_txn_commit(&t), 0);
		check_reads(f->cache,
		            (struct cache_key){id, FIX_INBOX_UIDV, 20}, body,
		            270000);
		assert_int_equal(cache_body_read_once(f->cache, k2, 0, buf,
		                                      sizeof(buf), &n),
		                 -ENOENT);
		free(body);
	}
}

/* ------------------------------------------------------------------ */
/* Compressed bodies (cache/compress.c) */

/* LMDB itself on the cache's files, the cache closed meanwhile (and
 * reopened at raw_end if it was open): to look at and to damage values
 * the way a bad disk or a bug would. */
struct raw {
	struct fixture *f;
	MDB_env *env;
	MDB_txn *txn;
	bool open;
};

static void raw_begin(struct raw *r, struct fixture *f, bool write)
{
	r->f = f;
	r->open = f->cache != NULL;
	cache_close(&f->cache);
	assert_int_equal(mdb_env_create(&r->env), 0);
	assert_int_equal(mdb_env_set_maxdbs(r->env, 32), 0);
	assert_int_equal(
	        mdb_env_open(r->env, f->dir, write ? 0 : MDB_RDONLY, 0600), 0);
	assert_int_equal(
	        mdb_txn_begin(r->env, NULL, write ? 0 : MDB_RDONLY, &r->txn),
	        0);
}

/* The value under key in db (valid until raw_end), NULL if none. */
static const uint8_t *raw_val(struct raw *r, const char *db, const void *key,
                              size_t klen, size_t *len_r)
{
	MDB_val k = {klen, (void *)key}, v;
	MDB_dbi dbi;

	if (mdb_dbi_open(r->txn, db, 0, &dbi) != 0 ||
	    mdb_get(r->txn, dbi, &k, &v) != 0)
		return NULL;
	*len_r = v.mv_size;
	return v.mv_data;
}

/* Replace (or, with val NULL, delete) the value under key in db. */
static void raw_set(struct raw *r, const char *db, const void *key, size_t klen,
                    const void *val, size_t vlen)
{
	MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
	MDB_dbi dbi;

	assert_int_equal(mdb_dbi_open(r->txn, db, 0, &dbi), 0);
	if (val != NULL)
		assert_int_equal(mdb_put(r->txn, dbi, &k, &v, 0), 0);
	else
		assert_int_equal(mdb_del(r->txn, dbi, &k, NULL), 0);
}

static void raw_end(struct raw *r)
{
	assert_int_equal(mdb_txn_commit(r->txn), 0);
	mdb_env_close(r->env);
	if (r->open)
		open_cache(r->f);
}

/* A heap copy of the value under key in db; NULL if none. */
static uint8_t *raw_get(struct fixture *f, const char *db, const void *key,
                        size_t klen, size_t *len_r)
{
	struct raw r;
	const uint8_t *v;
	uint8_t *out = NULL;

	raw_begin(&r, f, false);
	v = raw_val(&r, db, key, klen, len_r);
	if (v != NULL) {
		out = malloc(*len_r ? *len_r : 1);
		assert_non_null(out);
		memcpy(out, v, *len_r);
	}
	raw_end(&r);
	return out;
}

static void raw_put(struct fixture *f, const char *db, const void *key,
                    size_t klen, const void *val, size_t vlen)
{
	struct raw r;

	raw_begin(&r, f, true);
	raw_set(&r, db, key, klen, val, vlen);
	raw_end(&r);
}

static void msg_key_bytes(uint8_t out[12], struct cache_key k)
{
	uint32_t v[3] = {k.mailbox_id, k.uidvalidity, k.uid};

	for (int i = 0; i < 3; i++) {
		out[4 * i] = (uint8_t)(v[i] >> 24);
		out[4 * i + 1] = (uint8_t)(v[i] >> 16);
		out[4 * i + 2] = (uint8_t)(v[i] >> 8);
		out[4 * i + 3] = (uint8_t)v[i];
	}
}

static uint32_t be32_of(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

struct view_fast {
	const uint8_t *want;
	size_t n;
};

static int view_fast_cmp(void *ctx, const void *data, size_t n)
{
	struct view_fast *v = ctx;

	return n == v->n && memcmp(data, v->want, n) == 0 ? 7 : -1;
}

/* Reads of a small body at every offset of its first and last 64 bytes
 * and at odd strides between, several lengths, both calls. */
static void check_every_offset(struct cache *c, struct cache_key k,
                               const uint8_t *want, size_t len)
{
	static const size_t lens[] = {1, 7, 4096, 131072};
	uint8_t *buf = malloc(131072);
	struct cache_txn *t = rtxn(c);

	assert_non_null(buf);
	for (size_t off = 0; off <= len + 1;
	     off += off < 64 || off + 64 >= len ? 1 : 97) {
		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			size_t n = 99, exp = off >= len            ? 0
			                     : len - off < lens[i] ? len - off
			                                           : lens[i];
			struct view_fast v = {want + (off < len ? off : len),
			                      exp};

			assert_int_equal(
			        cache_body_read(t, k, off, buf, lens[i], &n),
			        0);
			assert_int_equal(n, exp);
			if (memcmp(buf, want + (off < len ? off : len), n))
				fail_msg("bytes differ at %zu + %zu", off, n);
			assert_int_equal(cache_body_view(t, k, off, lens[i],
			                                 view_fast_cmp, &v),
			                 7);
		}
	}
	assert_int_equal(cache_txn_commit(&t), 0);
	free(buf);
}

/* Small bodies: compressible text is stored compressed (codec 1 before
 * the cache has a dictionary), noise and tiny bodies raw (codec 0); the
 * size is the body's and every read gives its bytes. */
static void test_body_compressed(void **state)
{
	struct fixture *f = *state;
	const size_t tlen = 5000, nlen = 3000;
	uint8_t *text = malloc(tlen), *rnd = noise(nlen, 1), *v, kb[12];
	struct cache_key kt = {1, 1, 1}, kn = {1, 1, 2}, k0 = {1, 1, 3};
	struct cache *c = open_cache(f);
	struct cache_txn *t = wtxn(c);
	uint64_t size = 0;
	size_t vlen = 0;
	void *all = NULL;
	size_t alen = 0;

	assert_non_null(text);
	fix2_text(1, text, tlen);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	for (uint32_t uid = 1; uid <= 3; uid++)
		put_msg(t, 1, 1, uid, "<m@x>", 1);
	assert_int_equal(cache_body_put(t, kt, text, tlen), 0);
	assert_int_equal(cache_body_put(t, kn, rnd, nlen), 0);
	assert_int_equal(cache_body_put(t, k0, "", 0), 0);
	assert_int_equal(cache_txn_commit(&t), 0);

	msg_key_bytes(kb, kt);
	v = raw_get(f, "zbody", kb, 12, &vlen);
	assert_non_null(v);
	assert_int_equal(v[0], 1);
	assert_int_equal(be32_of(v + 1), tlen);
	assert_true(vlen < tlen / 2);
	free(v);
	msg_key_bytes(kb, kn);
	v = raw_get(f, "zbody", kb, 12, &vlen);
	assert_non_null(v);
	assert_int_equal(v[0], 0);
	assert_int_equal(vlen, 1 + nlen);
	assert_memory_equal(v + 1, rnd, nlen);
	free(v);
	msg_key_bytes(kb, k0);
	v = raw_get(f, "zbody", kb, 12, &vlen);
	assert_non_null(v);
	assert_int_equal(vlen, 1);
	assert_int_equal(v[0], 0);
	free(v);
	assert_int_equal(db_entries(f, "body"), 0);

	c = f->cache;
	assert_int_equal(cache_body_size_once(c, kt, &size), 0);
	assert_int_equal(size, tlen);
	assert_int_equal(cache_body_size_once(c, k0, &size), 0);
	assert_int_equal(size, 0);
	check_every_offset(c, kt, text, tlen);
	check_every_offset(c, kn, rnd, nlen);
	check_every_offset(c, k0, (const uint8_t *)"", 0);
	t = rtxn(c);
	assert_int_equal(cache_body_get(t, kt, &all, &alen), 0);
	assert_int_equal(alen, tlen);
	assert_memory_equal(all, text, tlen);
	free(all);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Replaced under the same key: the reads of this thread show the new
	 * bytes, not the last ones they decompressed. */
	fix2_text(2, text, tlen);
	assert_int_equal(cache_body_put_once(c, kt, text, tlen), 0);
	check_reads(c, kt, text, tlen);
	/* Moved: the encoded value as it was, read the same. */
	t = wtxn(c);
	put_msg(t, 1, 1, 9, "<m@x>", 1);
	assert_int_equal(cache_body_move(t, kt, (struct cache_key){1, 1, 9}),
	                 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	check_every_offset(c, (struct cache_key){1, 1, 9}, text, tlen);
	t = rtxn(c);
	assert_int_equal(cache_body_has(t, kt), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	free(text);
	free(rnd);
}

/* Text bodies of the kind mail is made of: words, lines, a header. */
static size_t mail_like(uint32_t seed, uint8_t *out, size_t cap)
{
	size_t len = 400 + (seed * 7919u) % 3000;
	int n;

	if (len > cap)
		len = cap;
	n = snprintf((char *)out, cap,
	             "Received: from mx%u.example.net by mail.example.org\r\n"
	             "From: Person %u <p%u@example.com>\r\n"
	             "To: alice@example.org\r\nSubject: Report %u\r\n"
	             "Message-ID: <%u@example.com>\r\n\r\n",
	             seed % 7, seed % 13, seed % 13, seed, seed);
	assert_true(n > 0 && (size_t)n < len);
	fix2_text(seed, out + n, len - (size_t)n);
	return len;
}

/* Once the cache holds enough small bodies, a dictionary is trained from
 * them and stored (zdict, with its checksum); later bodies are
 * compressed with it (codec 2), earlier ones stay as they were, and every
 * one reads back exactly, also after a reopen (the dictionary loaded from
 * the cache, not from memory). */
static void test_body_dictionary(void **state)
{
	struct fixture *f = *state;
	const uint32_t n = 400;
	uint8_t *buf = malloc(8192), kb[12], dk[4] = {0, 0, 0, 1};
	const uint8_t *cv;
	struct raw r;
	size_t len, vlen = 0, raw2 = 0, enc2 = 0;
	struct cache *c = open_cache(f);
	struct cache_txn *t = wtxn(c);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	uint64_t val = 0;

	assert_non_null(buf);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	for (uint32_t uid = 1; uid <= n; uid++)
		put_msg(t, 1, 1, uid, "<m@x>", 1);
	assert_int_equal(cache_txn_commit(&t), 0);
	/* In transactions of 50, as bodies arrive. */
	for (uint32_t uid = 1; uid <= n;) {
		t = wtxn(c);
		for (int i = 0; i < 50 && uid <= n; i++, uid++) {
			len = mail_like(uid, buf, 8192);
			assert_int_equal(
			        cache_body_put(t, (struct cache_key){1, 1, uid},
			                       buf, len),
			        0);
		}
		assert_int_equal(cache_txn_commit(&t), 0);
	}
	t = rtxn(c);
	assert_int_equal(cache_meta_get(t, "cache.zdict", &val), -EINVAL);
	assert_int_equal(cache_txn_commit(&t), -EINVAL);
	raw_begin(&r, f, false);
	cv = raw_val(&r, "meta", "cache.zdict", 11, &vlen);
	assert_non_null(cv);
	assert_int_equal(vlen, 8);
	assert_memory_equal(cv, U64("\x01"), 8);
	cv = raw_val(&r, "meta", "cache.next_zdict", 16, &vlen);
	assert_non_null(cv);
	assert_memory_equal(cv, U64("\x02"), 8);
	cv = raw_val(&r, "zdict", dk, 4, &vlen);
	assert_non_null(cv);
	assert_true(vlen > 9 + 1024);
	assert_int_equal(cv[0], 1);
	assert_int_equal(
	        EVP_Digest(cv + 9, vlen - 9, md, &mdlen, EVP_sha256(), NULL),
	        1);
	assert_memory_equal(cv + 1, md, 8);
	for (uint32_t uid = 1; uid <= n; uid++) {
		struct cache_key k = {1, 1, uid};

		len = mail_like(uid, buf, 8192);
		msg_key_bytes(kb, k);
		cv = raw_val(&r, "zbody", kb, 12, &vlen);
		assert_non_null(cv);
		/* Trained at the first put that found 256 bodies: the
		 * first 256 were stored without it. */
		assert_int_equal(cv[0], uid <= 256 ? 1 : 2);
		assert_int_equal(be32_of(cv + 1), len);
		if (cv[0] == 2) {
			assert_int_equal(be32_of(cv + 5), 1);
			raw2 += len;
			enc2 += vlen;
		}
	}
	raw_end(&r);
	assert_int_equal(db_entries(f, "zdict"), 1);
	/* The dictionary earns its keep: well under half. */
	assert_true(enc2 * 10 < raw2 * 4);
	reopen(f);
	for (uint32_t uid = 1; uid <= n; uid++) {
		struct cache_key k = {1, 1, uid};
		void *all = NULL;
		size_t alen = 0;

		len = mail_like(uid, buf, 8192);
		if (uid % 25 == 0 || uid == 256) {
			check_every_offset(f->cache, k, buf, len);
			continue;
		}
		t = rtxn(f->cache);
		assert_int_equal(cache_body_get(t, k, &all, &alen), 0);
		assert_int_equal(alen, len);
		assert_true(memcmp(all, buf, len) == 0);
		free(all);
		assert_int_equal(cache_txn_commit(&t), 0);
	}
	free(buf);
}

/* A body in pieces: compressible pieces compressed (codec 1), the
 * incompressible one raw (codec 0), each read at every piece boundary
 * and odd offsets, whole, moved and copied. */
static void test_pieces_compressed(void **state)
{
	struct fixture *f = *state;
	const size_t len = 4 * CHUNK + 12345;
	uint8_t *body = malloc(len), *rnd = noise(CHUNK, 3), *v;
	struct cache_key k = {1, 1, 1}, k2 = {1, 2, 1};
	struct cache *c = open_cache(f);
	struct cache_body_stream *s = NULL;
	struct cache_txn *t = wtxn(c);
	uint8_t ck[12] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
	static const uint8_t codec[5] = {1, 0, 1, 1, 1};
	size_t vlen = 0;

	assert_non_null(body);
	fix2_text(5, body, len);
	memcpy(body + CHUNK, rnd, CHUNK);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 1, 1, "<big@x>", 1);
	assert_int_equal(cache_body_put(t, k, body, len), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	for (uint8_t i = 0; i < 5; i++) {
		size_t n = i < 4 ? CHUNK : 12345;

		ck[11] = i;
		v = raw_get(f, "chunk", ck, 12, &vlen);
		assert_non_null(v);
		assert_int_equal(v[0], codec[i]);
		if (v[0] == 0) {
			assert_int_equal(vlen, 1 + n);
		} else {
			assert_int_equal(be32_of(v + 1), n);
			assert_true(vlen < n / 2);
		}
		free(v);
	}
	c = f->cache;
	check_reads(c, k, body, len);
	for (size_t off = CHUNK - 5; off < CHUNK + 5; off++) {
		uint8_t buf[16];
		size_t n = 0;

		assert_int_equal(cache_body_read_once(c, k, off, buf, 13, &n),
		                 0);
		assert_int_equal(n, 13);
		assert_memory_equal(buf, body + off, 13);
	}

	/* The same through a stream; then a copy (rematch with COPY) and
	 * reads of both. */
	t = wtxn(c);
	assert_int_equal(cache_mailbox_set_state(t, 1, 2, 2, 0, 1, NULL), 0);
	put_msg(t, 1, 2, 1, "<big@x>", len);
	assert_int_equal(cache_txn_commit(&t), 0);
	assert_int_equal(cache_body_stream_new(c, &s), 0);
	stream_feed(s, body, len);
	t = wtxn(c);
	put_msg(t, 1, 1, 2, "<other@x>", 1);
	assert_int_equal(
	        cache_body_stream_finish(t, s, (struct cache_key){1, 1, 2}), 0);
	assert_int_equal(cache_rematch(t, 1, 2, CACHE_REMATCH_COPY, NULL), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	cache_body_stream_close(&s);
	check_reads(c, (struct cache_key){1, 1, 2}, body, len);
	check_reads(c, k2, body, len);
	check_reads(c, k, body, len);
	free(body);
	free(rnd);
}

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

struct piece_reader {
	struct cache *c;
	struct cache_key k;
	const uint8_t *want;
	size_t len;
	unsigned seed;
	int bad;
};

static void *piece_reader_run(void *arg)
{
	struct piece_reader *r = arg;
	uint8_t *buf = malloc(2 * CHUNK);
	uint64_t x = 0x1234567u + r->seed;

	if (buf == NULL) {
		r->bad++;
		return NULL;
	}
	for (int i = 0; i < 300; i++) {
		size_t off = (size_t)(xorshift(&x) % r->len), n = 0;
		size_t len = (size_t)(xorshift(&x) % (CHUNK + 7)) + 1;
		size_t exp = r->len - off < len ? r->len - off : len;
		struct view_fast v = {r->want + off, exp};

		if (cache_body_read_once(r->c, r->k, off, buf, len, &n) != 0 ||
		    n != exp || memcmp(buf, r->want + off, n) != 0)
			r->bad++;
		if (cache_body_view_once(r->c, r->k, off, len, view_fast_cmp,
		                         &v) != 7)
			r->bad++;
	}
	free(buf);
	return NULL;
}

/* Threads reading the compressed pieces of one body at once, at random
 * offsets and lengths: the pieces they decode are shared between them
 * and every read gives the right bytes. */
static void test_pieces_threads(void **state)
{
	struct fixture *f = *state;
	const size_t len = 6 * CHUNK + 999;
	uint8_t *body = malloc(len);
	struct cache_key k = {1, 1, 1};
	struct cache *c = open_cache(f);
	struct cache_txn *t = wtxn(c);
	struct piece_reader r[4];
	pthread_t th[4];

	assert_non_null(body);
	fix2_text(77, body, len);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	put_msg(t, 1, 1, 1, "<m@x>", 1);
	assert_int_equal(cache_body_put(t, k, body, len), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	for (unsigned i = 0; i < 4; i++) {
		r[i] = (struct piece_reader){c, k, body, len, i, 0};
		assert_int_equal(
		        pthread_create(&th[i], NULL, piece_reader_run, &r[i]),
		        0);
	}
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(r[i].bad, 0);
	}
	free(body);
}

/* What the cache logs while fn runs, from stderr. */
static char *capture_log(void (*fn)(void *), void *ctx)
{
	char path[] = "/tmp/mailfs-log-XXXXXX";
	int fd = mkstemp(path), saved;
	char *out = calloc(1, 65536);

	assert_true(fd >= 0);
	assert_non_null(out);
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fd, 2), 2);
	fn(ctx);
	fflush(stderr);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	assert_true(pread(fd, out, 65535, 0) >= 0);
	close(fd);
	unlink(path);
	return out;
}

struct damaged_read {
	struct cache *c;
	struct cache_key k;
	size_t len;
	int rc_read, rc_view, rc_get;
};

static int view_any(void *ctx, const void *data, size_t n)
{
	(void)ctx;
	(void)data;
	(void)n;
	return 0;
}

static void damaged_read_fn(void *ctx)
{
	struct damaged_read *d = ctx;
	uint8_t *buf = malloc(CHUNK);
	void *all = NULL;
	size_t n = 0, alen = 0;
	struct cache_txn *t;

	assert_non_null(buf);
	d->rc_read = cache_body_read_once(d->c, d->k, 0, buf, CHUNK, &n);
	if (d->rc_read == 0)
		assert_int_equal(n, d->len < CHUNK ? d->len : CHUNK);
	d->rc_view = cache_body_view_once(d->c, d->k, 1, 100, view_any, NULL);
	t = rtxn(d->c);
	d->rc_get = cache_body_get(t, d->k, &all, &alen);
	if (d->rc_get == 0)
		assert_int_equal(alen, d->len);
	free(all);
	cache_txn_abort(&t);
	free(buf);
}

static void be_put(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* A damaged compressed value (cut short, garbage, a wrong length, an
 * unknown codec, a missing or damaged dictionary) reads as -EIO with a
 * log line naming it, never a crash nor other bytes; the decoder is fed
 * every kind of truncation and byte flips of real values. */
static void test_body_damaged(void **state)
{
	struct fixture *f = *state;
	const uint32_t n = 300, fuzz = 200;
	uint8_t *buf = malloc(8192), *good, *pgood, *p1, *bad, kb[12],
	        dk[4] = {0, 0, 0, 1},
	        ck[12] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
	struct cache_key k = {1, 1, n}, kp = {1, 1, n + 1};
	size_t glen = 0, plen = 0, p1len = 0, dlen = 0, len, tlen;
	uint8_t *body = malloc(2 * CHUNK), *dict;
	struct damaged_read d;
	struct cache_txn *t;
	struct raw r;
	char *log;
	uint64_t x = 42;

	assert_non_null(buf);
	assert_non_null(body);
	open_cache(f);
	t = wtxn(f->cache);
	assert_int_equal(add_mailbox(t, "INBOX"), 1);
	for (uint32_t uid = 1; uid <= n + 1; uid++)
		put_msg(t, 1, 1, uid, "<m@x>", 1);
	for (uint32_t uid = 1; uid <= n; uid++) {
		len = mail_like(uid, buf, 8192);
		assert_int_equal(cache_body_put(t,
		                                (struct cache_key){1, 1, uid},
		                                buf, len),
		                 0);
	}
	fix2_text(9, body, 2 * CHUNK);
	assert_int_equal(cache_body_put(t, kp, body, 2 * CHUNK), 0);
	assert_int_equal(cache_txn_commit(&t), 0);
	tlen = len = mail_like(n, buf, 8192);
	msg_key_bytes(kb, k);
	good = raw_get(f, "zbody", kb, 12, &glen);
	assert_non_null(good);
	assert_int_equal(good[0], 2);
	pgood = raw_get(f, "chunk", ck, 12, &plen);
	assert_non_null(pgood);
	assert_int_equal(pgood[0], 1);
	ck[11] = 1;
	p1 = raw_get(f, "chunk", ck, 12, &p1len);
	assert_non_null(p1);
	ck[11] = 0;
	dict = raw_get(f, "zdict", dk, 4, &dlen);
	assert_non_null(dict);
	bad = malloc(plen + glen + dlen);
	assert_non_null(bad);

	/* Each kind of damage under a key of its own (UID 1000 + i), with
	 * its log line. */
	struct {
		const char *what;
		size_t cut;    /* keep this many bytes (0: all) */
		int flip;      /* xor 0xff from this byte on (-1: none) */
		uint32_t lenv; /* the length field: 1 longer, 2 shorter, 3
		                * huge (0: as it is) */
	} cases[] = {
	        {"cut short", 20, -1, 0},  {"header only", 9, -1, 0},
	        {"header cut", 3, -1, 0},  {"garbage", 0, 12, 0},
	        {"longer", 0, -1, 1},      {"shorter", 0, -1, 2},
	        {"length huge", 0, -1, 3}, {"unknown codec", 0, 0, 0},
	};
	const size_t ncases = sizeof(cases) / sizeof(cases[0]);

	raw_begin(&r, f, true);
	for (size_t i = 0; i < ncases; i++) {
		size_t blen = cases[i].cut ? cases[i].cut : glen;

		memcpy(bad, good, glen);
		if (cases[i].flip >= 0)
			for (size_t j = (size_t)cases[i].flip; j < glen; j++)
				bad[j] ^= 0xff;
		if (cases[i].flip == 0)
			bad[0] = 7;
		if (cases[i].lenv)
			be_put(bad + 1,
			       cases[i].lenv == 1   ? len + 1
			       : cases[i].lenv == 2 ? len - 1
			                            : 0xffffffffu,
			       4);
		msg_key_bytes(kb, (struct cache_key){1, 1, 1000 + (uint32_t)i});
		raw_set(&r, "zbody", kb, 12, bad, blen);
	}
	raw_end(&r);
	for (size_t i = 0; i < ncases; i++) {
		char name[64];

		d = (struct damaged_read){
		        f->cache, {1, 1, 1000 + (uint32_t)i}, len, 0, 0, 0};
		log = capture_log(damaged_read_fn, &d);
		if (d.rc_read != -EIO || d.rc_view != -EIO || d.rc_get != -EIO)
			fail_msg("%s: %d %d %d", cases[i].what, d.rc_read,
			         d.rc_view, d.rc_get);
		/* "damaged body (...)" or, for a header that does not
		 * parse, "undecodable body record (...)". */
		snprintf(name, sizeof(name), "(1 1 %zu)", 1000 + i);
		if (strstr(log, name) == NULL || strstr(log, " body ") == NULL)
			fail_msg("%s: no log line naming it: %s", cases[i].what,
			         log);
		free(log);
	}
	check_every_offset(f->cache, k, buf, len);

	/* A damaged piece. */
	memcpy(bad, pgood, plen);
	bad[plen / 2] ^= 0x5a;
	bad[plen / 2 + 1] ^= 0xa5;
	bad[plen / 2 + 2] ^= 0x33;
	raw_put(f, "chunk", ck, 12, bad, plen / 2 + 3);
	d = (struct damaged_read){f->cache, kp, 2 * CHUNK, 0, 0, 0};
	log = capture_log(damaged_read_fn, &d);
	assert_int_equal(d.rc_read, -EIO);
	assert_int_equal(d.rc_view, -EIO);
	assert_int_equal(d.rc_get, -EIO);
	assert_non_null(strstr(log, "damaged body piece (1 0 0)"));
	free(log);
	raw_put(f, "chunk", ck, 12, pgood, plen);
	check_reads(f->cache, kp, body, 2 * CHUNK);

	/* The dictionary damaged, then missing: the bodies that need it
	 * fail; the others read. */
	memcpy(bad, dict, dlen);
	bad[dlen - 1] ^= 1;
	raw_put(f, "zdict", dk, 4, bad, dlen);
	d = (struct damaged_read){f->cache, k, len, 0, 0, 0};
	log = capture_log(damaged_read_fn, &d);
	assert_int_equal(d.rc_read, -EIO);
	assert_non_null(strstr(log, "compression dictionary (checksum)"));
	free(log);
	raw_put(f, "zdict", dk, 4, NULL, 0);
	d.c = f->cache; /* reopened */
	log = capture_log(damaged_read_fn, &d);
	assert_int_equal(d.rc_read, -EIO);
	assert_non_null(strstr(log, "compression dictionary (missing)"));
	free(log);
	len = mail_like(1, buf, 8192);
	check_every_offset(f->cache, (struct cache_key){1, 1, 1}, buf, len);
	raw_put(f, "zdict", dk, 4, dict, dlen);

	/* Truncations and random flips of both values, each under a key of
	 * its own (a body for the small one; for the piece, a body_big
	 * record naming blob 100 + j whose first piece is the damaged one):
	 * -EIO or the right length, never a crash (run under the sanitizers
	 * too). */
	raw_begin(&r, f, true);
	for (uint32_t j = 0; j < 2 * fuzz; j++) {
		bool piece = j >= fuzz;
		const uint8_t *g = piece ? pgood : good;
		size_t gl = piece ? plen : glen, bl = gl;
		uint64_t rnd = xorshift(&x);

		memcpy(bad, g, gl);
		if (j % fuzz < fuzz / 2) {
			bl = 1 + (size_t)(rnd % (gl - 1));
		} else {
			for (int m = 0; m < 1 + (int)(j % 4); m++)
				bad[(xorshift(&x) >> 8) % gl] ^=
				        (uint8_t)(rnd >> 40 | 1);
		}
		msg_key_bytes(kb, (struct cache_key){1, 1, 2000 + j});
		if (!piece) {
			raw_set(&r, "zbody", kb, 12, bad, bl);
		} else {
			uint8_t rec[21], pk[12];

			rec[0] = 1;
			be_put(rec + 1, 2 * CHUNK, 8);
			be_put(rec + 9, CHUNK, 4);
			be_put(rec + 13, 100 + j, 8);
			raw_set(&r, "body_big", kb, 12, rec, sizeof(rec));
			be_put(pk, 100 + j, 8);
			be_put(pk + 8, 0, 4);
			raw_set(&r, "chunk", pk, 12, bad, bl);
			be_put(pk + 8, 1, 4);
			raw_set(&r, "chunk", pk, 12, p1, p1len);
		}
	}
	raw_end(&r);
	log = NULL;
	for (uint32_t j = 0; j < 2 * fuzz; j++) {
		d = (struct damaged_read){f->cache,
		                          {1, 1, 2000 + j},
		                          j >= fuzz ? 2 * CHUNK : tlen,
		                          0,
		                          0,
		                          0};
		free(capture_log(damaged_read_fn, &d));
		assert_true(d.rc_read == 0 || d.rc_read == -EIO);
		assert_true(d.rc_view == 0 || d.rc_view == -EIO);
		assert_true(d.rc_get == 0 || d.rc_get == -EIO);
	}
	check_every_offset(f->cache, k, buf, mail_like(n, buf, 8192));
	check_reads(f->cache, kp, body, 2 * CHUNK);
	free(good);
	free(pgood);
	free(p1);
	free(dict);
	free(bad);
	free(body);
	free(buf);
}

/* ------------------------------------------------------------------ */
/* A cache written by the mailfs of schema 2 (tests/fixtures/cache-v2). */

/* Every body of the v2 fixture, byte for byte, read at every piece
 * boundary and at odd offsets, with its record and size. */
static void check_fixture2_bodies(struct cache *c)
{
	uint8_t *want = malloc(1 << 20);

	assert_non_null(want);
	for (size_t i = 0; i < sizeof(fix2_bodies) / sizeof(fix2_bodies[0]);
	     i++) {
		const struct fix2_body *b = &fix2_bodies[i];
		struct cache_txn *t = rtxn(c);
		struct cache_msg *m = NULL;
		uint32_t id = 0;
		struct cache_key k;

		assert_int_equal(cache_mailbox_lookup(t, b->mailbox, &id), 0);
		k = (struct cache_key){id, b->uidvalidity, b->uid};
		assert_int_equal(cache_body_has(t, k), 1);
		assert_int_equal(cache_msg_get(t, k, &m), 0);
		assert_true(m->size_verified);
		assert_int_equal(m->size, b->len);
		cache_msg_free(&m);
		assert_int_equal(cache_txn_commit(&t), 0);
		fix2_fill(b, want);
		check_reads(c, k, want, b->len);
	}
	for (size_t i = 0; i < sizeof(fix2_pops) / sizeof(fix2_pops[0]); i++) {
		struct cache_key k = {CACHE_POP_MAILBOX_ID,
		                      CACHE_POP_UIDVALIDITY, (uint32_t)i + 1};
		struct cache_txn *t = rtxn(c);
		struct cache_pop *p = NULL;
		uint32_t num = 0;

		assert_int_equal(cache_pop_lookup(t, fix2_pops[i].uidl, &num),
		                 0);
		assert_int_equal(num, i + 1);
		assert_int_equal(cache_pop_get(t, num, &p), 0);
		assert_int_equal(p->size, fix2_pops[i].len);
		assert_int_equal(p->downloaded, FIX2_POP_WHEN + (int64_t)i);
		cache_pop_free(&p);
		assert_int_equal(cache_txn_commit(&t), 0);
		fix_body(501 + (uint32_t)i, want, fix2_pops[i].len);
		check_reads(c, k, want, fix2_pops[i].len);
	}
	free(want);
}

static void test_fixture_v2(void **state)
{
	struct fixture *f = *state;
	struct cache_pending *p = NULL;
	struct cache_msg *m = NULL;
	struct cache_txn *t;
	uint8_t want[FIX2_PENDING_LEN + FIX2_PENDING_PART];
	struct cache_key k3, k4, k20;
	uint64_t v = 0;
	uint32_t id = 0;
	size_t count = 0;

	copy_fixture(f, "cache-v2");
	assert_int_equal(raw_schema(f), 2);
	open_cache(f);
	check_fixture2_bodies(f->cache);

	t = rtxn(f->cache);
	assert_int_equal(cache_meta_get(t, FIX2_META_NAME, &v), 0);
	assert_int_equal(v, FIX2_META_VALUE);
	assert_int_equal(cache_mailbox_lookup(t, "INBOX", &id), 0);
	assert_int_equal(cache_msg_count(t, id, FIX2_INBOX_UIDV, &count), 0);
	assert_int_equal(count, 6);
	k3 = (struct cache_key){id, FIX2_INBOX_UIDV, FIX2_UNCACHED_UID};
	assert_int_equal(cache_msg_get(t, k3, &m), 0);
	assert_false(m->size_verified);
	assert_int_equal(m->size, FIX2_UNCACHED_SIZE);
	cache_msg_free(&m);
	assert_int_equal(cache_body_has(t, k3), 0);
	/* The upload the server never confirmed, with its later write. */
	assert_int_equal(cache_pending_get(t, 1, true, &p), 0);
	assert_int_equal(p->mailbox_id, id);
	assert_int_equal(p->state, CACHE_PENDING_CLOSED);
	assert_string_equal(p->flags, FIX2_PENDING_FLAGS);
	assert_string_equal(p->name, "draft.eml");
	assert_int_equal(p->size, sizeof(want));
	fix_body(900, want, FIX2_PENDING_LEN);
	fix_body(901, want + FIX2_PENDING_LEN, FIX2_PENDING_PART);
	assert_memory_equal(p->data, want, sizeof(want));
	cache_pending_free(&p);
	assert_int_equal(cache_txn_commit(&t), 0);

	/* Upgraded in place to this schema, nothing lost: the same after a
	 * reopen. */
	assert_int_equal(raw_schema(f), CACHE_SCHEMA_VERSION);
	check_fixture2_bodies(f->cache);

	/* New bodies next to the old ones; an old body in pieces moves and
	 * is copied (a rematch with copy) like any. */
	{
		const size_t len = 2 * CACHE_BODY_CHUNK + 77;
		const struct fix2_body *b4 = &fix2_bodies[2];
		uint8_t *body = malloc(len > b4->len ? len : b4->len);
		struct cache_rematch_stats st;

		assert_non_null(body);
		fix2_text(3, body, len);
		t = wtxn(f->cache);
		assert_int_equal(cache_body_put(t, k3, body, len), 0);
		assert_int_equal(cache_txn_commit(&t), 0);
		check_reads(f->cache, k3, body, len);

		k4 = (struct cache_key){id, FIX2_INBOX_UIDV, 4};
		k20 = (struct cache_key){id, FIX2_INBOX_UIDV + 1, 20};
		t = wtxn(f->cache);
		assert_int_equal(cache_mailbox_set_state(t, id,
		                                         FIX2_INBOX_UIDV + 1,
		                                         21, 0, 1, NULL),
		                 0);
		put_msg(t, id, FIX2_INBOX_UIDV + 1, 20, "<4@fixture.example>",
		        b4->len);
		assert_int_equal(cache_rematch(t, id, FIX2_INBOX_UIDV + 1,
		                               CACHE_REMATCH_COPY, &st),
		                 0);
		assert_int_equal(st.matched, 1);
		assert_int_equal(cache_txn_commit(&t), 0);
		fix2_fill(b4, body);
		check_reads(f->cache, k20, body, b4->len);
		check_reads(f->cache, k4, body, b4->len);
		free(body);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_key_order, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_modes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_open_twice_busy, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_msg_roundtrip, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_roundtrip, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_big_body, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_reopen_commit_abort, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_sticky_error, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_run_write_failure, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_batch_listing, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_mailbox_record, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_mailbox_rename, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_mailbox_long_names, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_mailbox_damaged_record,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_generations_stable, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_rematch, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pop, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pop_alias, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_pending, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pending_parts, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_meta_typed, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_schema_refusal, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_map_grow, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_map_grow_waits_for_readers,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_write_failure_unchanged,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_fork_refused, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_body_pieces, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_stream, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_stream_abandoned,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_body_pieces_lifecycle,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pop_stream, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_disk_format, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_fixture_v1, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_fixture_v2, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_compressed, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_dictionary, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_pieces_compressed, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_body_damaged, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_pieces_threads, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_truncated_refused, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_short_but_healthy, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_open_in_other_process_busy,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_open_waits_for_a_closing_process, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
