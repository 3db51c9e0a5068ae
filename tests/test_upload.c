/* The upload state machine of new files (fs/imap/upload.h), without a
 * mount: the table of transitions, the state the cache records for each
 * state, and that fs_upload_set_state() logs every transition it makes,
 * keeps the cache's record in step, refuses every other one and marks a
 * file whose record cannot follow as dirty. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "fs/imap/upload.h"
#include "proto/log.h"
#include "tests/tmpdir.h"

/* The transitions fs/imap/upload.h lists, and no other. */
static const struct {
	enum nf_state from, to;
} transitions[] = {
        {NF_WRITING, NF_STORED},   {NF_STORED, NF_WRITING},
        {NF_STORED, NF_UPLOADING}, {NF_UPLOADING, NF_DONE},
        {NF_UPLOADING, NF_FAILED}, {NF_UPLOADING, NF_STORED},
        {NF_FAILED, NF_WRITING},   {NF_INCOMPLETE, NF_STORED},
};

#define N(a) (sizeof(a) / sizeof(*(a)))

static bool listed(enum nf_state from, enum nf_state to)
{
	for (size_t i = 0; i < N(transitions); i++)
		if (transitions[i].from == from && transitions[i].to == to)
			return true;
	return false;
}

struct fixture {
	char tmp[PATH_MAX];
	char dir[PATH_MAX + 32];
	struct cache *cache;
	char log[PATH_MAX + 32];
	int saved_stderr;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	if (test_tmpdir(f->tmp, sizeof(f->tmp), "mailfs-upload") != 0) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/cache", f->tmp);
	snprintf(f->log, sizeof(f->log), "%s/log", f->tmp);
	if (cache_open(f->dir, &f->cache) != 0)
		return -1;
	log_set_level(LOG_DEBUG);
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

/* Log lines go to standard error: catch them in a file. */
static void capture(struct fixture *f)
{
	int fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	fflush(stderr);
	f->saved_stderr = dup(2);
	assert_true(f->saved_stderr >= 0);
	assert_int_equal(dup2(fd, 2), 2);
	close(fd);
}

/* Stop catching; what was logged, in a static buffer. */
static const char *captured(struct fixture *f)
{
	static char buf[4096];
	FILE *in;
	size_t n;

	fflush(stderr);
	assert_int_equal(dup2(f->saved_stderr, 2), 2);
	close(f->saved_stderr);
	in = fopen(f->log, "r");
	assert_non_null(in);
	n = fread(buf, 1, sizeof(buf) - 1, in);
	buf[n] = '\0';
	fclose(in);
	return buf;
}

static uint64_t add_record(struct cache *cache, uint32_t state)
{
	struct cache_pending p = {
	        .mailbox_id = 3,
	        .state = state,
	        .flags = "",
	        .name = "msg.eml",
	        .size = 5,
	        .data = (uint8_t *)"hello",
	};
	uint64_t seq = 0;

	assert_int_equal(cache_pending_add_once(cache, &p, &seq), 0);
	assert_true(seq > 0);
	return seq;
}

struct get {
	uint64_t seq;
	uint32_t state;
};

static int get_state(struct cache_txn *txn, void *ctx)
{
	struct get *g = ctx;
	struct cache_pending *p = NULL;
	int rc = cache_pending_get(txn, g->seq, false, &p);

	if (rc == 0)
		g->state = p->state;
	cache_pending_free(&p);
	return rc;
}

static uint32_t record_state(struct cache *cache, uint64_t seq)
{
	struct get g = {seq, UINT32_MAX};

	assert_int_equal(cache_run_read(cache, get_state, &g), 0);
	return g.state;
}

static void test_table(void **state)
{
	(void)state;
	for (int from = 0; from < NF_STATES; from++)
		for (int to = 0; to < NF_STATES; to++)
			assert_int_equal(fs_upload_allowed(from, to),
			                 listed(from, to));
	assert_false(fs_upload_allowed(NF_STATES, NF_WRITING));
	assert_false(fs_upload_allowed(NF_WRITING, NF_STATES));
	/* Every state has a name for the logs. */
	for (int s = 0; s < NF_STATES; s++)
		assert_string_not_equal(fs_upload_state_name(s), "?");
}

/* After a crash only a file whose close was recorded may be sent, and one
 * that may be on the server already is first looked for there. */
static void test_persisted(void **state)
{
	(void)state;
	for (int sent = 0; sent < 2; sent++) {
		assert_int_equal(fs_upload_persisted(NF_WRITING, sent),
		                 CACHE_PENDING_NEW);
		assert_int_equal(fs_upload_persisted(NF_INCOMPLETE, sent),
		                 CACHE_PENDING_NEW);
		assert_int_equal(fs_upload_persisted(NF_DONE, sent),
		                 CACHE_PENDING_NEW);
		assert_int_equal(fs_upload_persisted(NF_UPLOADING, sent),
		                 CACHE_PENDING_SENT);
		assert_int_equal(fs_upload_persisted(NF_FAILED, sent),
		                 CACHE_PENDING_FAILED);
	}
	assert_int_equal(fs_upload_persisted(NF_STORED, false),
	                 CACHE_PENDING_CLOSED);
	assert_int_equal(fs_upload_persisted(NF_STORED, true),
	                 CACHE_PENDING_SENT);
}

/* Each transition is made, logged once, and the record follows. */
static void test_transitions(void **state)
{
	struct fixture *fx = *state;

	for (size_t i = 0; i < N(transitions); i++) {
		for (int sent = 0; sent < 2; sent++) {
			enum nf_state from = transitions[i].from;
			enum nf_state to = transitions[i].to;
			struct nf f = {
			        .name = "msg.eml",
			        .state = from,
			        .maybe_sent = sent,
			};
			char want[128];
			const char *log;

			f.seq = add_record(fx->cache,
			                   fs_upload_persisted(from, sent));
			capture(fx);
			fs_upload_set_state(fx->cache, &f, to);
			log = captured(fx);
			assert_int_equal(f.state, to);
			assert_false(f.dirty);
			snprintf(want, sizeof(want),
			         "new file msg.eml: %s -> %s",
			         fs_upload_state_name(from),
			         fs_upload_state_name(to));
			assert_non_null(strstr(log, want));
			assert_null(strstr(strstr(log, want) + 1, want));
			assert_int_equal(record_state(fx->cache, f.seq),
			                 fs_upload_persisted(to, sent));
			/* The upload of a closed file waits from now. */
			if (to == NF_STORED)
				assert_true(f.touched_ms > 0);
		}
	}
}

/* Nothing else: the state, the record and the file stay as they were. */
static void test_refused(void **state)
{
	struct fixture *fx = *state;

	for (int from = 0; from < NF_STATES; from++) {
		for (int to = 0; to < NF_STATES; to++) {
			uint32_t rec = fs_upload_persisted(from, false);
			struct nf f = {.name = "x.eml", .state = from};
			char made[128];
			const char *log;

			if (from == to || listed(from, to))
				continue;
			f.seq = add_record(fx->cache, rec);
			capture(fx);
			fs_upload_set_state(fx->cache, &f, to);
			log = captured(fx);
			assert_int_equal(f.state, from);
			assert_false(f.dirty);
			snprintf(made, sizeof(made), "x.eml: %s -> %s",
			         fs_upload_state_name(from),
			         fs_upload_state_name(to));
			assert_non_null(strstr(log, "no transition"));
			assert_null(strstr(log, made));
			assert_int_equal(record_state(fx->cache, f.seq), rec);
		}
	}
}

/* A transition to the same state is no transition: nothing logged. */
static void test_same_state(void **state)
{
	struct fixture *fx = *state;
	struct nf f = {.name = "same.eml", .state = NF_STORED};

	f.seq = add_record(fx->cache, CACHE_PENDING_CLOSED);
	capture(fx);
	fs_upload_set_state(fx->cache, &f, NF_STORED);
	assert_string_equal(captured(fx), "");
	assert_int_equal(f.state, NF_STORED);
}

/* A record that cannot follow marks the file dirty (it is not uploaded
 * until a change stores it whole); a dirty file's record is not touched,
 * nor is a file's that has none yet. */
static void test_record_cannot_follow(void **state)
{
	struct fixture *fx = *state;
	struct nf gone = {.name = "gone.eml", .state = NF_WRITING, .seq = 999};
	struct nf dirty = {.name = "dirty.eml", .state = NF_WRITING};
	struct nf none = {.name = "none.eml", .state = NF_WRITING};
	const char *log;

	capture(fx);
	fs_upload_set_state(fx->cache, &gone, NF_STORED);
	log = captured(fx);
	assert_int_equal(gone.state, NF_STORED);
	assert_true(gone.dirty);
	assert_non_null(strstr(log, "cannot record the state of gone.eml"));

	dirty.seq = add_record(fx->cache, CACHE_PENDING_NEW);
	dirty.dirty = true;
	fs_upload_set_state(fx->cache, &dirty, NF_STORED);
	assert_int_equal(dirty.state, NF_STORED);
	assert_int_equal(record_state(fx->cache, dirty.seq), CACHE_PENDING_NEW);

	capture(fx);
	fs_upload_set_state(fx->cache, &none, NF_STORED);
	log = captured(fx);
	assert_int_equal(none.state, NF_STORED);
	assert_false(none.dirty);
	assert_non_null(strstr(log, "new file none.eml: writing -> closed"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_table),
	        cmocka_unit_test(test_persisted),
	        cmocka_unit_test_setup_teardown(test_transitions, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_same_state, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_record_cannot_follow,
	                                        setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
