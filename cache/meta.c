/* Schema: meta.  Persistent counters, callers' named values, and the
 * values of other modules whose names this module builds (the mtime of a
 * mailbox directory, the POP3 marks). */
#include "cache_int.h"

#include <errno.h>
#include <string.h>

#define META_NAME_MAX 64

/* ------------------------------------------------------------------ */
/* Meta and counters */

int meta_read(struct cache_txn *t, const char *name, uint64_t *v_r)
{
	MDB_val v;
	int rc = db_get(t, DB_META, name, strlen(name), &v);

	if (rc)
		return rc;
	if (v.mv_size != 8)
		return corrupt(t, "meta", 0, 0, 0);
	*v_r = be64_get(v.mv_data);
	return 0;
}

int meta_write(struct cache_txn *t, const char *name, uint64_t val)
{
	uint8_t b[8];

	be64_put(b, val);
	return db_put(t, DB_META, name, strlen(name), b, 8, 0);
}

/* The next value of a persistent counter that starts at 1 and never goes
 * past max. */
int counter_next(struct cache_txn *t, const char *name, uint64_t max,
                 uint64_t *v_r)
{
	uint64_t v;
	int rc = meta_read(t, name, &v);

	if (rc == -ENOENT)
		v = 1;
	else if (rc)
		return rc;
	if (v == 0 || v > max)
		return txn_fail(t, -EOVERFLOW);
	rc = meta_write(t, name, v + 1);
	if (rc)
		return rc;
	*v_r = v;
	return 0;
}

static bool meta_name_ok(const char *name)
{
	size_t i, n;

	if (name == NULL)
		return false;
	n = strlen(name);
	if (n == 0 || n > META_NAME_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (name[i] < 0x21 || name[i] > 0x7e)
			return false;
	return strncmp(name, "cache.", 6) != 0 && strcmp(name, META_SCHEMA) &&
	       strncmp(name, META_MTIME, strlen(META_MTIME)) != 0 &&
	       strncmp(name, META_POP_DUP, strlen(META_POP_DUP)) != 0 &&
	       strncmp(name, META_POP_CMP, strlen(META_POP_CMP)) != 0 &&
	       strncmp(name, META_POP_SIZE, strlen(META_POP_SIZE)) != 0;
}

int cache_meta_get(struct cache_txn *txn, const char *name, uint64_t *val_r)
{
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (!meta_name_ok(name) || val_r == NULL)
		return txn_fail(txn, -EINVAL);
	return meta_read(txn, name, val_r);
}

int cache_meta_set(struct cache_txn *txn, const char *name, uint64_t val)
{
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	if (!meta_name_ok(name))
		return txn_fail(txn, -EINVAL);
	return meta_write(txn, name, val);
}

int cache_mailbox_mtime_get(struct cache_txn *txn, uint32_t id,
                            int64_t *mtime_r)
{
	char name[META_KEY_SIZE];
	uint64_t v;
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (mtime_r == NULL)
		return txn_fail(txn, -EINVAL);
	mtime_key(name, id);
	rc = meta_read(txn, name, &v);
	if (rc == 0)
		*mtime_r = (int64_t)v;
	return rc;
}

int cache_mailbox_mtime_set(struct cache_txn *txn, uint32_t id, int64_t mtime)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	mtime_key(name, id);
	return meta_write(txn, name, (uint64_t)mtime);
}

int cache_pop_mark_get(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t *val_r)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, false);

	if (rc)
		return rc;
	if (val_r == NULL)
		return txn_fail(txn, -EINVAL);
	rc = pop_mark_key(name, mark, s);
	if (rc)
		return txn_fail(txn, rc);
	return meta_read(txn, name, val_r);
}

int cache_pop_mark_set(struct cache_txn *txn, enum cache_pop_mark mark,
                       const char *s, uint64_t val)
{
	char name[META_KEY_SIZE];
	int rc = txn_check(txn, true);

	if (rc)
		return rc;
	rc = pop_mark_key(name, mark, s);
	if (rc)
		return txn_fail(txn, rc);
	return meta_write(txn, name, val);
}
