/* The bytes of the on-disk format that every schema shares: big-endian
 * integers, the record writer and reader, and every key the cache builds
 * (message keys, mailbox name keys, body piece keys, upload part keys and
 * the meta names of other modules' values), and which mailbox ids a key
 * may hold.  Owns no database; calls nothing else in cache/.  The layouts
 * are the schema in cache.h. */
#include "cache_int.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Big-endian integers, record writer and reader */

void be32_put(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

uint32_t be32_get(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

void be64_put(uint8_t *p, uint64_t v)
{
	be32_put(p, v >> 32);
	be32_put(p + 4, (uint32_t)v);
}

uint64_t be64_get(const uint8_t *p)
{
	return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

void msgkey_make(uint8_t out[KEY_LEN], struct cache_key k)
{
	be32_put(out, k.mailbox_id);
	be32_put(out + 4, k.uidvalidity);
	be32_put(out + 8, k.uid);
}

struct cache_key msgkey_parse(const uint8_t *p)
{
	struct cache_key k = {be32_get(p), be32_get(p + 4), be32_get(p + 8)};

	return k;
}

bool mbox_id_ok(uint32_t id)
{
	return id != CACHE_ROOT_MAILBOX_ID && id != CACHE_POP_MAILBOX_ID;
}

void wr_bytes(struct wr *w, const void *d, size_t n)
{
	if (w->p && n)
		memcpy(w->p + w->n, d, n);
	w->n += n;
}

void wr_u8(struct wr *w, uint8_t v)
{
	wr_bytes(w, &v, 1);
}

void wr_u16(struct wr *w, uint16_t v)
{
	uint8_t b[2] = {v >> 8, (uint8_t)v};

	wr_bytes(w, b, 2);
}

void wr_u32(struct wr *w, uint32_t v)
{
	uint8_t b[4];

	be32_put(b, v);
	wr_bytes(w, b, 4);
}

void wr_u64(struct wr *w, uint64_t v)
{
	uint8_t b[8];

	be64_put(b, v);
	wr_bytes(w, b, 8);
}

/* Callers check lengths with len_ok() first. */
void wr_blob(struct wr *w, const void *d, size_t n)
{
	wr_u32(w, (uint32_t)n);
	wr_bytes(w, d, n);
}

void wr_str(struct wr *w, const char *s)
{
	wr_blob(w, s, s ? strlen(s) : 0);
}

bool len_ok(size_t n)
{
	return n <= UINT32_MAX;
}

bool str_ok(const char *s)
{
	return s == NULL || len_ok(strlen(s));
}

void rd_init(struct rd *r, const MDB_val *v)
{
	r->p = v->mv_data;
	r->len = v->mv_size;
	r->off = 0;
	r->bad = false;
}

const uint8_t *rd_take(struct rd *r, size_t n)
{
	const uint8_t *p;

	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	p = r->p + r->off;
	r->off += n;
	return p;
}

uint8_t rd_u8(struct rd *r)
{
	const uint8_t *p = rd_take(r, 1);

	return p ? p[0] : 0;
}

uint16_t rd_u16(struct rd *r)
{
	const uint8_t *p = rd_take(r, 2);

	return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}

uint32_t rd_u32(struct rd *r)
{
	const uint8_t *p = rd_take(r, 4);

	return p ? be32_get(p) : 0;
}

uint64_t rd_u64(struct rd *r)
{
	const uint8_t *p = rd_take(r, 8);

	return p ? be64_get(p) : 0;
}

struct span rd_blob(struct rd *r)
{
	struct span s = {NULL, 0};
	uint32_t n = rd_u32(r);

	s.p = rd_take(r, n);
	if (s.p)
		s.n = n;
	return s;
}

/* The whole value was consumed, nothing more, nothing less. */
bool rd_ok(const struct rd *r)
{
	return !r->bad && r->off == r->len;
}

/* Copy s into *cur as a C string and advance. */
char *out_str(uint8_t **cur, struct span s)
{
	char *p = (char *)*cur;

	if (s.n)
		memcpy(p, s.p, s.n);
	p[s.n] = '\0';
	*cur += s.n + 1;
	return p;
}

void *scratch_get(struct scratch *s, size_t n)
{
	void *p;

	if (n <= s->cap)
		return s->p;
	p = realloc(s->p, n);
	if (p == NULL)
		return NULL;
	s->p = p;
	s->cap = n;
	return p;
}

/* ------------------------------------------------------------------ */
/* Keys */

/* Length check of a name used as a key. */
int key_name_check(struct cache_txn *t, const char *name, size_t max)
{
	size_t n;

	if (name == NULL)
		return -EINVAL;
	n = strlen(name);
	if (n == 0)
		return -EINVAL;
	if (n > max || n > (size_t)mdb_env_get_maxkeysize(t->cache->env))
		return -ENAMETOOLONG;
	return 0;
}

int name_key(struct cache_txn *t, const char *name, struct name_key *k)
{
	size_t n = strlen(name), max = mdb_env_get_maxkeysize(t->cache->env);
	size_t head;

	if (n == 0)
		return -EINVAL;
	k->hashed = n > max;
	if (!k->hashed) {
		k->p = name;
		k->n = n;
		return 0;
	}
	if (max > NAME_KEY_MAX)
		max = NAME_KEY_MAX;
	head = max - 1 - NAME_HASH_LEN;
	memcpy(k->buf, name, head);
	k->buf[head] = '\0';
	if (EVP_Digest(name, n, k->buf + head + 1, NULL, EVP_sha256(), NULL) !=
	    1)
		return -ENOMEM;
	k->p = k->buf;
	k->n = head + 1 + NAME_HASH_LEN;
	return 0;
}

void chunk_key(uint8_t k[CHUNK_KEY_LEN], uint64_t blob, uint64_t idx)
{
	be64_put(k, blob);
	be32_put(k + 8, (uint32_t)idx);
}

void part_key(uint8_t k[PART_KEY_LEN], uint64_t seq, uint32_t n)
{
	be64_put(k, seq);
	be32_put(k + 8, n);
}

/* The meta name of mailbox id's directory mtime: "mtime." and the id in
 * decimal. */
void mtime_key(char name[META_KEY_SIZE], uint32_t id)
{
	snprintf(name, META_KEY_SIZE, META_MTIME "%u", id);
}

/* The meta name of a POP3 mark of s: the mark's prefix and the first 8
 * bytes of the SHA-256 of s in lower-case hex. */
int pop_mark_key(char name[META_KEY_SIZE], enum cache_pop_mark mark,
                 const char *s)
{
	static const char *const prefix[] = {
	        [CACHE_POP_DUP] = META_POP_DUP,
	        [CACHE_POP_CMP] = META_POP_CMP,
	        [CACHE_POP_SIZE] = META_POP_SIZE,
	};
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	if ((unsigned)mark >= sizeof(prefix) / sizeof(*prefix) || s == NULL)
		return -EINVAL;
	if (EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) != 1)
		return -ENOMEM;
	snprintf(name, META_KEY_SIZE, "%s%02x%02x%02x%02x%02x%02x%02x%02x",
	         prefix[mark], md[0], md[1], md[2], md[3], md[4], md[5], md[6],
	         md[7]);
	return 0;
}
