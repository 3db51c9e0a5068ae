/* Directory mtimes: the last time a directory's entries changed (see
 * fs/imap/dirtime.h). */
#include "fs/imap/dirtime.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int64_t fs_dirtime_next(int64_t old, int64_t now)
{
	return now > old ? now : old + 1;
}

int fs_dirtime_changed(struct cache_txn *txn, uint32_t id, int64_t now,
                       int64_t *mtime_r)
{
	int64_t old = 0, next;
	int rc = cache_mailbox_mtime_get(txn, id, &old);

	if (rc < 0 && rc != -ENOENT)
		return rc;
	next = fs_dirtime_next(rc == 0 ? old : 0, now);
	rc = cache_mailbox_mtime_set(txn, id, next);
	if (rc == 0 && mtime_r != NULL)
		*mtime_r = next;
	return rc;
}

int fs_dirtime_seen(struct cache_txn *txn, uint32_t id, int64_t first,
                    int64_t *mtime_r, bool *is_new_r)
{
	int64_t v = 0;
	int rc = cache_mailbox_mtime_get(txn, id, &v);

	if (is_new_r != NULL)
		*is_new_r = false;
	if (rc == -ENOENT) {
		v = first;
		rc = cache_mailbox_mtime_set(txn, id, v);
		if (rc == 0 && is_new_r != NULL)
			*is_new_r = true;
	}
	if (rc == 0 && mtime_r != NULL)
		*mtime_r = v;
	return rc;
}

int fs_dirtime_parents_add(struct fs_dirtime_parents *p, const char *name,
                           char delim)
{
	char *copy;

	if (p->n == p->cap) {
		size_t ncap = p->cap ? p->cap * 2 : 8;
		char **nn = realloc(p->names, ncap * sizeof(*nn));
		char *nd;

		if (nn == NULL)
			return -ENOMEM;
		p->names = nn;
		nd = realloc(p->delims, ncap);
		if (nd == NULL)
			return -ENOMEM;
		p->delims = nd;
		p->cap = ncap;
	}
	copy = strdup(name);
	if (copy == NULL)
		return -ENOMEM;
	p->names[p->n] = copy;
	p->delims[p->n++] = delim;
	return 0;
}

/* The id of the parent of mailbox name: the mailbox named up to its last
 * delimiter, the root for a top-level name.  -ENOENT if the cache has no
 * such mailbox. */
static int parent_id(struct cache_txn *txn, const char *name, char delim,
                     uint32_t *id_r)
{
	const char *last = delim ? strrchr(name, delim) : NULL;
	struct cache_mailbox *mb = NULL;
	char *pname;
	int rc;

	if (last == NULL || last == name) {
		*id_r = FS_DIRTIME_ROOT;
		return 0;
	}
	pname = strndup(name, (size_t)(last - name));
	if (pname == NULL)
		return -ENOMEM;
	rc = cache_mailbox_get_by_name(txn, pname, &mb);
	if (rc == 0)
		*id_r = mb->id;
	cache_mailbox_free(&mb);
	free(pname);
	return rc;
}

int fs_dirtime_parents_bump(struct fs_dirtime_parents *p, struct cache_txn *txn,
                            int64_t now)
{
	int rc = 0;

	free(p->ids);
	p->ids = p->n > 0 ? malloc(p->n * sizeof(*p->ids)) : NULL;
	p->nids = 0;
	if (p->n > 0 && p->ids == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < p->n && rc == 0; i++) {
		uint32_t id = 0;
		bool dup = false;

		rc = parent_id(txn, p->names[i], p->delims[i], &id);
		if (rc == -ENOENT) {
			rc = 0; /* its parent went too: the grandparent moves */
			continue;
		}
		for (size_t k = 0; k < p->nids && !dup; k++)
			dup = p->ids[k] == id;
		if (rc == 0 && !dup) {
			rc = fs_dirtime_changed(txn, id, now, NULL);
			p->ids[p->nids++] = id;
		}
	}
	return rc;
}

void fs_dirtime_parents_clear(struct fs_dirtime_parents *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->names[i]);
	free(p->names);
	free(p->delims);
	free(p->ids);
	memset(p, 0, sizeof(*p));
}
