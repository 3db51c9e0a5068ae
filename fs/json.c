#include "fs/json.h"

#include <math.h> /* isfinite */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/usage.h"

#define DEPTH_MAX 32

struct parser {
	const char *p, *end;
	unsigned depth;
};

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
	                           *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static bool lit(struct parser *ps, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
		return false;
	ps->p += n;
	return true;
}

static int hex4(const char *p)
{
	int v = 0;

	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static void put_utf8(struct strbuf *b, unsigned cp)
{
	unsigned char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | cp >> 6);
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | cp >> 12);
		u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | cp >> 18);
		u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	strbuf_add(b, u, n);
}

/* A string at ps->p (at its opening quote); new C string or NULL. */
static char *parse_string(struct parser *ps)
{
	struct strbuf b = {0};

	if (ps->p >= ps->end || *ps->p != '"')
		return NULL;
	ps->p++;
	strbuf_add(&b, "", 0);
	while (ps->p < ps->end && *ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p++;

		if (c < 0x20)
			goto bad;
		if (c != '\\') {
			strbuf_add(&b, &c, 1);
			continue;
		}
		if (ps->p >= ps->end)
			goto bad;
		c = (unsigned char)*ps->p++;
		switch (c) {
		case '"':
		case '\\':
		case '/': strbuf_add(&b, &c, 1); break;
		case 'b': strbuf_str(&b, "\b"); break;
		case 'f': strbuf_str(&b, "\f"); break;
		case 'n': strbuf_str(&b, "\n"); break;
		case 'r': strbuf_str(&b, "\r"); break;
		case 't': strbuf_str(&b, "\t"); break;
		case 'u': {
			int cp, lo;

			if (ps->end - ps->p < 4 || (cp = hex4(ps->p)) < 0)
				goto bad;
			ps->p += 4;
			if (cp >= 0xd800 && cp <= 0xdbff &&
			    ps->end - ps->p >= 6 && ps->p[0] == '\\' &&
			    ps->p[1] == 'u' &&
			    (lo = hex4(ps->p + 2)) >= 0xdc00 && lo <= 0xdfff) {
				cp = 0x10000 + ((cp - 0xd800) << 10) +
				     (lo - 0xdc00);
				ps->p += 6;
			} else if (cp >= 0xd800 && cp <= 0xdfff) {
				cp = 0xfffd;
			}
			if (cp == 0)
				goto bad; /* no NUL inside a C string */
			put_utf8(&b, (unsigned)cp);
			break;
		}
		default: goto bad;
		}
	}
	if (ps->p >= ps->end)
		goto bad;
	ps->p++;
	return strbuf_take(&b);
bad:
	free(b.s);
	return NULL;
}

static struct json *parse_value(struct parser *ps);

static bool add_item(struct json *j, struct json *v, char *key)
{
	struct json **items =
	        realloc(j->items, (j->count + 1) * sizeof(*items));

	if (items == NULL)
		return false;
	j->items = items;
	if (j->type == JSON_OBJECT) {
		char **keys = realloc(j->keys, (j->count + 1) * sizeof(*keys));

		if (keys == NULL)
			return false;
		j->keys = keys;
		j->keys[j->count] = key;
	}
	j->items[j->count++] = v;
	return true;
}

static struct json *parse_container(struct parser *ps, struct json *j)
{
	char close = j->type == JSON_ARRAY ? ']' : '}';

	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return j;
	}
	for (;;) {
		char *key = NULL;
		struct json *v;

		skip_ws(ps);
		if (j->type == JSON_OBJECT) {
			key = parse_string(ps);
			skip_ws(ps);
			if (key == NULL || ps->p >= ps->end || *ps->p != ':') {
				free(key);
				goto bad;
			}
			ps->p++;
		}
		v = parse_value(ps);
		if (v == NULL || !add_item(j, v, key)) {
			json_free(v);
			free(key);
			goto bad;
		}
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (ps->p < ps->end && *ps->p == close) {
			ps->p++;
			return j;
		}
		goto bad;
	}
bad:
	json_free(j);
	return NULL;
}

static struct json *parse_value(struct parser *ps)
{
	struct json *j;

	skip_ws(ps);
	if (ps->p >= ps->end || ++ps->depth > DEPTH_MAX)
		return NULL;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return NULL;
	if (*ps->p == '{' || *ps->p == '[') {
		j->type = *ps->p == '{' ? JSON_OBJECT : JSON_ARRAY;
		j = parse_container(ps, j);
	} else if (*ps->p == '"') {
		j->type = JSON_STRING;
		j->s = parse_string(ps);
		if (j->s == NULL) {
			free(j);
			j = NULL;
		}
	} else if (lit(ps, "true") || lit(ps, "false")) {
		j->type = JSON_BOOL;
		j->b = ps->p[-1] == 'e' && ps->p[-2] == 'u';
	} else if (lit(ps, "null")) {
		j->type = JSON_NULL;
	} else {
		char buf[64], *end;
		size_t n = 0;

		while (ps->p + n < ps->end && n < sizeof(buf) - 1 &&
		       strchr("0123456789+-.eE", ps->p[n]) != NULL)
			n++;
		memcpy(buf, ps->p, n);
		buf[n] = '\0';
		j->type = JSON_NUMBER;
		j->n = strtod(buf, &end);
		if (n == 0 || end != buf + n || !isfinite(j->n)) {
			free(j);
			j = NULL;
		} else {
			ps->p += n;
		}
	}
	if (j != NULL)
		ps->depth--;
	return j;
}

struct json *json_parse(const char *text, size_t len)
{
	struct parser ps = {text, text + len, 0};
	struct json *j = parse_value(&ps);

	skip_ws(&ps);
	if (j != NULL && ps.p != ps.end) {
		json_free(j);
		j = NULL;
	}
	return j;
}

void json_free(struct json *j)
{
	if (j == NULL)
		return;
	for (size_t i = 0; i < j->count; i++) {
		json_free(j->items[i]);
		if (j->keys != NULL)
			free(j->keys[i]);
	}
	free(j->items);
	free(j->keys);
	free(j->s);
	free(j);
}

const struct json *json_get(const struct json *j, const char *key)
{
	if (j == NULL || j->type != JSON_OBJECT)
		return NULL;
	for (size_t i = 0; i < j->count; i++)
		if (strcmp(j->keys[i], key) == 0)
			return j->items[i];
	return NULL;
}

double json_num(const struct json *j, const char *key, double def)
{
	const struct json *v = json_get(j, key);

	return v != NULL && v->type == JSON_NUMBER ? v->n : def;
}

const char *json_str(const struct json *j, const char *key, const char *def)
{
	const struct json *v = json_get(j, key);

	return v != NULL && v->type == JSON_STRING ? v->s : def;
}

void json_write(struct strbuf *b, const struct json *j)
{
	switch (j->type) {
	case JSON_NULL: strbuf_str(b, "null"); break;
	case JSON_BOOL: strbuf_str(b, j->b ? "true" : "false"); break;
	case JSON_NUMBER:
		if (j->n > -9007199254740992.0 && j->n < 9007199254740992.0 &&
		    (double)(long long)j->n == j->n)
			strbuf_printf(b, "%lld", (long long)j->n);
		else
			strbuf_printf(b, "%.17g", j->n);
		break;
	case JSON_STRING: fs_usage_json_str(b, j->s); break;
	case JSON_ARRAY:
	case JSON_OBJECT:
		strbuf_str(b, j->type == JSON_ARRAY ? "[" : "{");
		for (size_t i = 0; i < j->count; i++) {
			if (i > 0)
				strbuf_str(b, ",");
			if (j->type == JSON_OBJECT) {
				fs_usage_json_str(b, j->keys[i]);
				strbuf_str(b, ":");
			}
			json_write(b, j->items[i]);
		}
		strbuf_str(b, j->type == JSON_ARRAY ? "]" : "}");
		break;
	}
}

bool json_append(struct json *j, struct json *v)
{
	if (j == NULL || j->type != JSON_ARRAY || !add_item(j, v, NULL)) {
		json_free(v);
		return false;
	}
	return true;
}
