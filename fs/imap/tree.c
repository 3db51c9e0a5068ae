#include "fs/imap/tree.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "fs/imap/dirtime.h"
#include "proto/log.h"
#include "proto/utf7.h"

struct fs_tree {
	pthread_rwlock_t lock;
	struct fs_mailbox *v; /* owned array, sorted by id */
	size_t n;
	int64_t loaded;
	int64_t mtime; /* the root's (fs/imap/dirtime.h) */
};

int fs_tree_new(struct fs_tree **tree_r)
{
	struct fs_tree *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return -ENOMEM;
	pthread_rwlock_init(&t->lock, NULL);
	*tree_r = t;
	return 0;
}

static void clear_entries(struct fs_mailbox *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].file);
	}
	free(v);
}

void fs_tree_free(struct fs_tree **tp)
{
	struct fs_tree *t = *tp;

	if (t == NULL)
		return;
	clear_entries(t->v, t->n);
	pthread_rwlock_destroy(&t->lock);
	free(t);
	*tp = NULL;
}

char *fs_tree_component_name(const char *raw, size_t len)
{
	char *comp = strndup(raw, len), *dec = NULL, *out, *o;
	const char *src;

	if (comp == NULL)
		return NULL;
	if (utf7_decode(comp, &dec) < 0) {
		log_warn("mailbox name component \"%s\" is not valid modified "
		         "UTF-7; shown as is",
		         comp);
		dec = NULL;
	}
	src = dec != NULL ? dec : comp;
	out = malloc(strlen(src) * 3 + 4);
	if (out == NULL)
		goto out;
	o = out;
	if (*src == '\0') {
		memcpy(o, FS_TREE_EMPTY_NAME, sizeof(FS_TREE_EMPTY_NAME) - 1);
		o += sizeof(FS_TREE_EMPTY_NAME) - 1;
	} else if (strcmp(src, ".") == 0 || strcmp(src, "..") == 0) {
		memcpy(o, "%2E", 3);
		o += 3;
		src++;
	}
	for (; *src; src++) {
		if (*src == '%') {
			memcpy(o, "%25", 3);
			o += 3;
		} else if (*src == '/') {
			memcpy(o, "%2F", 3);
			o += 3;
		} else {
			*o++ = *src;
		}
	}
	*o = '\0';
out:
	free(dec);
	free(comp);
	return out;
}

/* A file name too long for the kernel, cut to its first bytes (whole
 * UTF-8 characters and whole escapes) and "%~" and 16 hex digits of the
 * SHA-256 of the whole name. */
static char *shorten(char *name)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t len = strlen(name), k = FS_TREE_NAME_MAX - FS_TREE_HASH_SUFFIX;
	char *out;

	if (len <= FS_TREE_NAME_MAX)
		return name;
	while (k > 0 && ((unsigned char)name[k] & 0xC0) == 0x80)
		k--;
	if (name[k - 1] == '%')
		k -= 1;
	else if (name[k - 2] == '%')
		k -= 2;
	out = malloc(k + FS_TREE_HASH_SUFFIX + 1);
	if (out == NULL ||
	    EVP_Digest(name, len, md, &mdlen, EVP_sha256(), NULL) != 1) {
		free(out);
		free(name);
		return NULL;
	}
	memcpy(out, name, k);
	memcpy(out + k, "%~", 2);
	for (int i = 0; i < 8; i++)
		snprintf(out + k + 2 + 2 * i, 3, "%02x", md[i]);
	free(name);
	return out;
}

char *fs_tree_file_name(const char *name, char delim)
{
	const char *last = delim ? strrchr(name, delim) : NULL;
	char *comp, *out;

	if (last == NULL || last != name) {
		last = last ? last + 1 : name;
		return shorten(fs_tree_component_name(last, strlen(last)));
	}
	/* The name starts with its only delimiter ("/x"): there is no
	 * mailbox called "" to be its parent, so it shows at the top with
	 * the delimiter written as an escape. */
	comp = fs_tree_component_name(name + 1, strlen(name + 1));
	if (comp == NULL ||
	    asprintf(&out, "%%%02X%s", (unsigned char)delim, comp) < 0)
		out = NULL;
	free(comp);
	return out ? shorten(out) : NULL;
}

/* The directory mtime the cache holds (fs/imap/dirtime.h). */
static int read_mtime(struct cache_txn *txn, struct fs_mailbox *e)
{
	int64_t v = 0;
	int rc;

	rc = cache_mailbox_mtime_get(txn, e->id, &v);
	if (rc == -ENOENT)
		return 0;
	e->mtime = v;
	return rc;
}

struct load_ctx {
	struct fs_mailbox *v;
	size_t n, cap;
	int rc;
	int64_t root_mtime; /* 0: none stored (a cache of an older mailfs) */
};

static int load_cb(const struct cache_mailbox *mb, void *ctx)
{
	struct load_ctx *l = ctx;
	struct fs_mailbox *e;

	if (mb->deleted)
		return 0;
	if (mb->id > FS_INO_MAX_ID) {
		log_err("mailbox id %u is too large for inode numbers; "
		        "mailbox %s is not shown",
		        mb->id, mb->name);
		return 0;
	}
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 32;
		struct fs_mailbox *nv = realloc(l->v, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		l->v = nv;
		l->cap = ncap;
	}
	e = &l->v[l->n];
	memset(e, 0, sizeof(*e));
	e->id = mb->id;
	e->delim = mb->delim;
	e->attrs = mb->attrs;
	e->selectable =
	        !(mb->attrs & (CACHE_MBOX_NOSELECT | CACHE_MBOX_NONEXISTENT));
	e->uidvalidity = mb->uidvalidity;
	e->last_sync = mb->last_sync;
	for (uint32_t g = 0; g < mb->ngenerations; g++)
		if (mb->uidvalidities[g] == mb->uidvalidity)
			e->gen = g;
	e->name = strdup(mb->name);
	e->file = fs_tree_file_name(mb->name, mb->delim);
	if (e->name == NULL || e->file == NULL) {
		free(e->name);
		free(e->file);
		return -ENOMEM;
	}
	l->n++;
	return 0;
}

static int load_read(struct cache_txn *txn, void *ctx)
{
	struct load_ctx *l = ctx;
	int rc = cache_mailbox_foreach(txn, load_cb, ctx);

	for (size_t i = 0; i < l->n && rc == 0; i++)
		rc = read_mtime(txn, &l->v[i]);
	if (rc == 0) {
		rc = cache_mailbox_mtime_get(txn, FS_DIRTIME_ROOT,
		                             &l->root_mtime);
		if (rc == -ENOENT)
			rc = 0;
	}
	return rc;
}

/* Parent of entry e: the mailbox whose name is e's name up to its last
 * delimiter.  The sync code makes sure such a mailbox exists. */
static uint32_t find_parent(const struct fs_mailbox *v, size_t n,
                            const struct fs_mailbox *e)
{
	const char *last = e->delim ? strrchr(e->name, e->delim) : NULL;
	size_t plen;

	if (last == NULL || last == e->name)
		return 0;
	plen = (size_t)(last - e->name);
	for (size_t i = 0; i < n; i++)
		if (v[i].delim == e->delim && strlen(v[i].name) == plen &&
		    memcmp(v[i].name, e->name, plen) == 0)
			return v[i].id;
	return 0;
}

static struct fs_mailbox *find_locked(struct fs_tree *t, uint32_t id);

int fs_tree_load(struct fs_tree *t, struct cache *cache)
{
	struct load_ctx l = {0};
	int rc;

	rc = cache_run_read(cache, load_read, &l);
	if (rc < 0) {
		clear_entries(l.v, l.n);
		return rc;
	}
	for (size_t i = 0; i < l.n; i++)
		l.v[i].parent = find_parent(l.v, l.n, &l.v[i]);
	for (size_t i = 0; i < l.n; i++)
		for (size_t j = 0; j < l.n; j++)
			if (l.v[j].parent == l.v[i].id)
				l.v[i].nsubdirs++;

	pthread_rwlock_wrlock(&t->lock);
	/* A listing may have finished between our read of the cache and
	 * now: keep what it learned rather than the older state read. */
	for (size_t i = 0; i < l.n; i++) {
		struct fs_mailbox *old = find_locked(t, l.v[i].id);

		if (old != NULL && old->last_sync > l.v[i].last_sync) {
			l.v[i].uidvalidity = old->uidvalidity;
			l.v[i].gen = old->gen;
			l.v[i].last_sync = old->last_sync;
		}
		if (old != NULL && old->mtime > l.v[i].mtime)
			l.v[i].mtime = old->mtime;
	}
	clear_entries(t->v, t->n);
	t->v = l.v;
	t->n = l.n;
	t->loaded = time(NULL);
	/* Without a root mtime of its own (an older cache, offline): the
	 * newest mailbox's, as older versions showed. */
	if (l.root_mtime > t->mtime)
		t->mtime = l.root_mtime;
	for (size_t i = 0; i < l.n && l.root_mtime == 0; i++)
		if (l.v[i].mtime > t->mtime)
			t->mtime = l.v[i].mtime;
	pthread_rwlock_unlock(&t->lock);
	return 0;
}

static struct fs_mailbox *find_locked(struct fs_tree *t, uint32_t id)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (t->v[mid].id == id)
			return &t->v[mid];
		if (t->v[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static struct fs_mailbox *copy_entry(const struct fs_mailbox *e)
{
	struct fs_mailbox *c = malloc(sizeof(*c));

	if (c == NULL)
		return NULL;
	*c = *e;
	c->name = strdup(e->name);
	c->file = strdup(e->file);
	if (c->name == NULL || c->file == NULL) {
		fs_mailbox_free(&c);
		return NULL;
	}
	return c;
}

int fs_tree_get(struct fs_tree *t, uint32_t id, struct fs_mailbox **mb_r)
{
	struct fs_mailbox *e;
	int rc = 0;

	pthread_rwlock_rdlock(&t->lock);
	e = find_locked(t, id);
	if (e == NULL)
		rc = -ENOENT;
	else if ((*mb_r = copy_entry(e)) == NULL)
		rc = -ENOMEM;
	pthread_rwlock_unlock(&t->lock);
	return rc;
}

int fs_tree_current(struct fs_tree *t, uint32_t id, uint32_t *uidvalidity_r,
                    uint32_t *gen_r)
{
	struct fs_mailbox *e;
	int rc = -ENOENT;

	pthread_rwlock_rdlock(&t->lock);
	e = find_locked(t, id);
	if (e != NULL && e->uidvalidity != 0) {
		*uidvalidity_r = e->uidvalidity;
		*gen_r = e->gen;
		rc = 0;
	}
	pthread_rwlock_unlock(&t->lock);
	return rc;
}

int fs_tree_find_trash(struct fs_tree *t, struct fs_mailbox **mb_r)
{
	struct fs_mailbox *hit = NULL;

	pthread_rwlock_rdlock(&t->lock);
	for (size_t i = 0; i < t->n && hit == NULL; i++)
		if ((t->v[i].attrs & CACHE_MBOX_TRASH) && t->v[i].selectable)
			hit = &t->v[i];
	for (size_t i = 0; i < t->n && hit == NULL; i++) {
		const char *n = t->v[i].name;
		char d = t->v[i].delim;

		if (!t->v[i].selectable)
			continue;
		if (strcasecmp(n, "Trash") == 0 ||
		    (strncasecmp(n, "INBOX", 5) == 0 && d != 0 && n[5] == d &&
		     strcasecmp(n + 6, "Trash") == 0))
			hit = &t->v[i];
	}
	*mb_r = hit ? copy_entry(hit) : NULL;
	pthread_rwlock_unlock(&t->lock);
	if (hit == NULL)
		return -ENOENT;
	return *mb_r ? 0 : -ENOMEM;
}

char fs_tree_root_delim(struct fs_tree *t)
{
	char d = '/';

	pthread_rwlock_rdlock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		if (t->v[i].delim != 0) {
			d = t->v[i].delim;
			if (strcmp(t->v[i].name, "INBOX") == 0)
				break;
		}
	}
	pthread_rwlock_unlock(&t->lock);
	return d;
}

/* Ids of the selectable mailboxes: all of them, or those synced before
 * `before` (see fs_tree_synced_before). */
static int selectable_ids(struct fs_tree *t, bool all, int64_t before,
                          uint32_t **ids_r, size_t *n_r)
{
	uint32_t *ids;
	size_t n = 0;

	pthread_rwlock_rdlock(&t->lock);
	ids = calloc(t->n ? t->n : 1, sizeof(*ids));
	for (size_t i = 0; ids != NULL && i < t->n; i++)
		if (t->v[i].selectable &&
		    (all || (t->v[i].last_sync < before &&
		             (before == 1 || t->v[i].last_sync != 0))))
			ids[n++] = t->v[i].id;
	pthread_rwlock_unlock(&t->lock);
	if (ids == NULL)
		return -ENOMEM;
	*ids_r = ids;
	*n_r = n;
	return 0;
}

int fs_tree_synced_before(struct fs_tree *t, int64_t before, uint32_t **ids_r,
                          size_t *n_r)
{
	return selectable_ids(t, false, before, ids_r, n_r);
}

int fs_tree_selectable(struct fs_tree *t, uint32_t **ids_r, size_t *n_r)
{
	return selectable_ids(t, true, 0, ids_r, n_r);
}

/* The entry above e, NULL at the top; *bad set if it is missing. */
static const struct fs_mailbox *
parent_locked(struct fs_tree *t, const struct fs_mailbox *e, bool *bad)
{
	const struct fs_mailbox *up;

	if (e->parent == 0)
		return NULL;
	up = find_locked(t, e->parent);
	if (up == NULL)
		*bad = true;
	return up;
}

int fs_tree_path(struct fs_tree *t, uint32_t id, char **path_r)
{
	const struct fs_mailbox *e;
	size_t len = 0, depth = 0;
	bool bad = false;
	char *p = NULL;
	int rc = 0;

	pthread_rwlock_rdlock(&t->lock);
	for (e = find_locked(t, id); e != NULL && depth <= t->n;
	     e = parent_locked(t, e, &bad)) {
		len += strlen(e->file) + 1;
		depth++;
	}
	if (depth == 0 || bad)
		rc = -ENOENT;
	else if (depth > t->n)
		rc = -ELOOP;
	else if ((p = malloc(len)) == NULL)
		rc = -ENOMEM;
	if (rc == 0) {
		/* From the end: the last component first. */
		p[--len] = '\0';
		for (e = find_locked(t, id); e != NULL;
		     e = parent_locked(t, e, &bad)) {
			size_t n = strlen(e->file);

			len -= n;
			memcpy(p + len, e->file, n);
			if (len > 0)
				p[--len] = '/';
		}
		*path_r = p;
	}
	pthread_rwlock_unlock(&t->lock);
	return rc;
}

int fs_tree_lookup(struct fs_tree *t, uint32_t parent, const char *file,
                   struct fs_mailbox **mb_r)
{
	int rc = -ENOENT;

	pthread_rwlock_rdlock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		if (t->v[i].parent == parent &&
		    strcmp(t->v[i].file, file) == 0) {
			*mb_r = copy_entry(&t->v[i]);
			rc = *mb_r ? 0 : -ENOMEM;
			break;
		}
	}
	pthread_rwlock_unlock(&t->lock);
	return rc;
}

static int cmp_file(const void *a, const void *b)
{
	const struct fs_mailbox *const *x = a, *const *y = b;

	return strcmp((*x)->file, (*y)->file);
}

int fs_tree_children(struct fs_tree *t, uint32_t parent,
                     struct fs_mailbox ***v_r, size_t *n_r)
{
	struct fs_mailbox **v;
	size_t n = 0;
	int rc = 0;

	pthread_rwlock_rdlock(&t->lock);
	v = calloc(t->n ? t->n : 1, sizeof(*v));
	if (v == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < t->n; i++) {
		if (t->v[i].parent != parent)
			continue;
		v[n] = copy_entry(&t->v[i]);
		if (v[n] == NULL) {
			fs_mailbox_vfree(&v, n);
			rc = -ENOMEM;
			goto out;
		}
		n++;
	}
out:
	pthread_rwlock_unlock(&t->lock);
	if (rc == 0) {
		qsort(v, n, sizeof(*v), cmp_file);
		*v_r = v;
		*n_r = n;
	}
	return rc;
}

uint32_t fs_tree_nsubdirs(struct fs_tree *t, uint32_t parent)
{
	uint32_t n = 0;

	pthread_rwlock_rdlock(&t->lock);
	for (size_t i = 0; i < t->n; i++)
		if (t->v[i].parent == parent)
			n++;
	pthread_rwlock_unlock(&t->lock);
	return n;
}

void fs_tree_set_state(struct fs_tree *t, uint32_t id, uint32_t uidvalidity,
                       uint32_t gen, int64_t last_sync, int64_t mtime)
{
	struct fs_mailbox *e;

	pthread_rwlock_wrlock(&t->lock);
	e = find_locked(t, id);
	if (e != NULL) {
		e->uidvalidity = uidvalidity;
		e->gen = gen;
		e->last_sync = last_sync;
		if (mtime > 0)
			e->mtime = mtime;
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_tree_set_mtime(struct fs_tree *t, uint32_t id, int64_t mtime)
{
	struct fs_mailbox *e;

	pthread_rwlock_wrlock(&t->lock);
	if (id == FS_DIRTIME_ROOT) {
		if (mtime > t->mtime)
			t->mtime = mtime;
	} else if ((e = find_locked(t, id)) != NULL && mtime > e->mtime) {
		e->mtime = mtime;
	}
	pthread_rwlock_unlock(&t->lock);
}

int64_t fs_tree_mtime(struct fs_tree *t)
{
	int64_t v;

	pthread_rwlock_rdlock(&t->lock);
	v = t->mtime;
	pthread_rwlock_unlock(&t->lock);
	return v;
}

int64_t fs_tree_loaded(struct fs_tree *t)
{
	int64_t v;

	pthread_rwlock_rdlock(&t->lock);
	v = t->loaded;
	pthread_rwlock_unlock(&t->lock);
	return v;
}

void fs_mailbox_free(struct fs_mailbox **mbp)
{
	struct fs_mailbox *mb = *mbp;

	if (mb == NULL)
		return;
	free(mb->name);
	free(mb->file);
	free(mb);
	*mbp = NULL;
}

void fs_mailbox_vfree(struct fs_mailbox ***vp, size_t n)
{
	struct fs_mailbox **v = *vp;

	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		fs_mailbox_free(&v[i]);
	free(v);
	*vp = NULL;
}
