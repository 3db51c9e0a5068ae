/* A small JSON reader for the commands that read what a mount reports
 * (mailfs status): parse text into a tree, look values up by key, write
 * a tree back as text.  Numbers are kept as doubles (exact up to 2^53,
 * far beyond any count or size here).  Pure; one thread per tree. */
#ifndef MAILFS_FS_JSON_H
#define MAILFS_FS_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/strbuf.h"

enum json_type {
	JSON_NULL,
	JSON_BOOL,
	JSON_NUMBER,
	JSON_STRING,
	JSON_ARRAY,
	JSON_OBJECT,
};

struct json {
	enum json_type type;
	bool b;
	double n;
	char *s;             /* owned: JSON_STRING (UTF-8, NUL-terminated) */
	struct json **items; /* owned: JSON_ARRAY, JSON_OBJECT values */
	char **keys;         /* owned: JSON_OBJECT keys */
	size_t count;
};

/* Parse len bytes of text (one value, whitespace around it allowed).
 * NULL if it is not valid JSON, nests deeper than 32, or memory runs
 * out. */
struct json *json_parse(const char *text, size_t len);

void json_free(struct json *j);

/* The value of key in object j; NULL if j is not an object or lacks it. */
const struct json *json_get(const struct json *j, const char *key);

/* The number at key (def if missing or not a number). */
double json_num(const struct json *j, const char *key, double def);

/* The string at key (def if missing or not a string). */
const char *json_str(const struct json *j, const char *key, const char *def);

/* Append j as compact JSON text. */
void json_write(struct strbuf *b, const struct json *j);

/* Add v (owned from now on) to array j; false (v freed) if out of
 * memory or j is not an array. */
bool json_append(struct json *j, struct json *v);

#endif
