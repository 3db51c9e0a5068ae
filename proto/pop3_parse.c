#include "proto/pop3_parse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

/* --- dot-unstuffing -------------------------------------------------- */

enum dot_state {
	DOT_BOL = 0, /* at the start of a line (nothing held) */
	DOT_MID,     /* inside a line */
	DOT_CR,      /* after a CR inside a line */
	DOT_DOT,     /* "." at the start of a line, held */
	DOT_DOT_CR,  /* "." CR at the start of a line, held */
	DOT_DONE,    /* the terminator was consumed */
};

void pop3_dot_init(struct pop3_dotstate *s)
{
	s->st = DOT_BOL;
}

bool pop3_dot_done(const struct pop3_dotstate *s)
{
	return s->st == DOT_DONE;
}

/* The bytes are passed on in runs: [run, i) is pending output.  Held
 * bytes are never part of a run (run is moved past them), and when they
 * turn out to be content they are sent from constants. */
int pop3_unstuff(struct pop3_dotstate *s, const char *in, size_t len,
                 size_t *used_r, pop3_out_fn out, void *ctx)
{
	size_t i, run = 0;
	int rc;

#define EMIT(p, n)                                                             \
	do {                                                                   \
		if ((n) > 0 && out != NULL) {                                  \
			rc = out(ctx, (p), (n));                               \
			if (rc < 0) {                                          \
				*used_r = i;                                   \
				return rc;                                     \
			}                                                      \
		}                                                              \
	} while (0)

	if (s->st == DOT_DONE) {
		*used_r = 0;
		return 1;
	}
	for (i = 0; i < len; i++) {
		unsigned char b = (unsigned char)in[i];

		switch ((enum dot_state)s->st) {
		case DOT_BOL:
			if (b == '.') {
				EMIT(in + run, i - run);
				run = i + 1;
				s->st = DOT_DOT;
			} else {
				s->st = b == '\r' ? DOT_CR : DOT_MID;
			}
			break;
		case DOT_MID:
			if (b == '\r')
				s->st = DOT_CR;
			break;
		case DOT_CR:
			if (b == '\n')
				s->st = DOT_BOL;
			else if (b != '\r')
				s->st = DOT_MID;
			break;
		case DOT_DOT:
			/* run == i here: the held dot was left out. */
			if (b == '.') {
				/* ".." -> "."; this second dot starts the run
				 */
				s->st = DOT_MID;
			} else if (b == '\r') {
				run = i + 1;
				s->st = DOT_DOT_CR;
			} else {
				/* Not stuffed: the dot is content. */
				EMIT(".", 1);
				s->st = DOT_MID;
			}
			break;
		case DOT_DOT_CR:
			if (b == '\n') {
				s->st = DOT_DONE;
				*used_r = i + 1;
				return 1;
			}
			/* "." CR then not LF: all of it is content, and b is
			 * seen as the byte after a CR. */
			EMIT(".\r", 2);
			s->st = b == '\r' ? DOT_CR : DOT_MID;
			break;
		case DOT_DONE: break;
		}
	}
	EMIT(in + run, len - run);
	*used_r = len;
	return 0;
#undef EMIT
}

/* --- status lines ---------------------------------------------------- */

int pop3_line_find(const char *buf, size_t len, size_t max_line,
                   size_t *line_len_r, size_t *used_r)
{
	size_t lim = max_line + 2 < len ? max_line + 2 : len;
	const char *lf = memchr(buf, '\n', lim);
	size_t ll;

	if (lf == NULL) {
		if (len > max_line + 1 ||
		    (len == max_line + 1 && buf[max_line] != '\r'))
			return -EMSGSIZE;
		return 0;
	}
	ll = (size_t)(lf - buf);
	*used_r = ll + 1;
	if (ll > 0 && buf[ll - 1] == '\r')
		ll--;
	if (ll > max_line)
		return -EMSGSIZE;
	*line_len_r = ll;
	return 1;
}

/* RFC 2449: rchar = %x21-2E / %x30-5C / %x5E-7F, levels split by "/". */
static bool valid_code(const char *p, size_t len)
{
	bool level_empty = true;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)p[i];

		if (ch == '/') {
			if (level_empty)
				return false;
			level_empty = true;
		} else if (ch >= 0x21 && ch <= 0x7f && ch != ']') {
			level_empty = false;
		} else {
			return false;
		}
	}
	return !level_empty;
}

int pop3_status_parse(const char *line, size_t len, struct pop3_status_line *r)
{
	size_t p;

	memset(r, 0, sizeof(*r));
	if (memchr(line, '\0', len) != NULL)
		return -EPROTO;
	if (len >= 3 && strncasecmp(line, "+OK", 3) == 0 &&
	    (len == 3 || line[3] == ' ')) {
		r->status = POP3_OK;
		p = 3;
	} else if (len >= 4 && strncasecmp(line, "-ERR", 4) == 0 &&
	           (len == 4 || line[4] == ' ')) {
		r->status = POP3_ERR;
		p = 4;
	} else if (len >= 1 && line[0] == '+' && (len == 1 || line[1] == ' ')) {
		r->status = POP3_CONT;
		p = 1;
	} else {
		return -EPROTO;
	}
	while (p < len && line[p] == ' ')
		p++;
	if (r->status != POP3_CONT && p < len && line[p] == '[') {
		const char *end = memchr(line + p + 1, ']', len - p - 1);

		if (end != NULL &&
		    valid_code(line + p + 1, (size_t)(end - line) - p - 1)) {
			r->code = line + p + 1;
			r->code_len = (size_t)(end - line) - p - 1;
			p = (size_t)(end - line) + 1;
			while (p < len && line[p] == ' ')
				p++;
		}
	}
	r->text = line + p;
	r->text_len = len - p;
	return 0;
}

bool pop3_status_has_code(const struct pop3_status_line *st, const char *code)
{
	size_t n = strlen(code);

	if (st->code_len < n || strncasecmp(st->code, code, n) != 0)
		return false;
	return st->code_len == n || st->code[n] == '/';
}

/* --- APOP ------------------------------------------------------------ */

int pop3_apop_timestamp(const char *text, size_t len, const char **ts_r,
                        size_t *ts_len_r)
{
	for (size_t i = 0; i < len; i++) {
		bool at = false, ok = true;
		size_t j;

		if (text[i] != '<')
			continue;
		for (j = i + 1; j < len && text[j] != '>'; j++) {
			unsigned char ch = (unsigned char)text[j];

			if (ch <= 0x20 || ch == 0x7f || ch == '<')
				ok = false;
			if (ch == '@')
				at = true;
		}
		if (j == len)
			break;
		if (ok && at && j - i + 1 <= 255) {
			*ts_r = text + i;
			*ts_len_r = j - i + 1;
			return 0;
		}
	}
	return -ENOENT;
}

int pop3_apop_digest(const char *timestamp, size_t ts_len, const char *secret,
                     char hex_r[33])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	size_t slen = strlen(secret);
	unsigned int mdlen = 0;
	char *buf;
	int ok;

	if (ts_len > SIZE_MAX - slen - 1)
		return -EINVAL;
	buf = malloc(ts_len + slen + 1);
	if (buf == NULL)
		return -ENOMEM;
	memcpy(buf, timestamp, ts_len);
	memcpy(buf + ts_len, secret, slen);
	ok = EVP_Digest(buf, ts_len + slen, md, &mdlen, EVP_md5(), NULL);
	explicit_bzero(buf, ts_len + slen);
	free(buf);
	if (ok != 1 || mdlen != 16)
		return -ENOTSUP;
	for (unsigned i = 0; i < 16; i++) {
		hex_r[2 * i] = hex[md[i] >> 4];
		hex_r[2 * i + 1] = hex[md[i] & 15];
	}
	hex_r[32] = '\0';
	explicit_bzero(md, sizeof(md));
	return 0;
}

/* --- answers and listings ------------------------------------------- */

/* Parse a decimal number at *p (advanced past it). */
static bool parse_u64(const char **p, uint64_t *v_r)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*p = s;
	*v_r = v;
	return true;
}

static bool parse_msgnum(const char **p, unsigned *n_r)
{
	uint64_t v;

	if (!parse_u64(p, &v) || v == 0 || v > UINT32_MAX)
		return false;
	*n_r = (unsigned)v;
	return true;
}

static void skip_spaces(const char **p)
{
	while (**p == ' ' || **p == '\t')
		(*p)++;
}

int pop3_stat_parse(const char *text, unsigned *count_r, uint64_t *size_r)
{
	const char *p = text;
	uint64_t count, size;

	if (!parse_u64(&p, &count) || count > UINT32_MAX ||
	    (*p != ' ' && *p != '\t'))
		return -EPROTO;
	skip_spaces(&p);
	if (!parse_u64(&p, &size) || (*p != '\0' && *p != ' ' && *p != '\t'))
		return -EPROTO;
	*count_r = (unsigned)count;
	*size_r = size;
	return 0;
}

/* "msgnum" and the spaces after it, at the start of a listing line. */
static const char *listing_msgnum(const char *line, size_t len,
                                  unsigned *msgnum_r)
{
	const char *p = line;

	if (strlen(line) != len || !parse_msgnum(&p, msgnum_r) ||
	    (*p != ' ' && *p != '\t'))
		return NULL;
	skip_spaces(&p);
	return p;
}

int pop3_uidl_parse(const char *line, size_t len, unsigned *msgnum_r,
                    const char **uid_r, size_t *uid_len_r)
{
	const char *uid = listing_msgnum(line, len, msgnum_r), *p;
	size_t n = 0;

	if (uid == NULL)
		return -EPROTO;
	while (uid[n] > 0x20 && uid[n] < 0x7f)
		n++;
	if (n == 0 || n > POP3_MAX_UID)
		return -EPROTO;
	p = uid + n;
	skip_spaces(&p);
	if (*p != '\0')
		return -EPROTO;
	*uid_r = uid;
	*uid_len_r = n;
	return 0;
}

int pop3_list_parse(const char *line, size_t len, unsigned *msgnum_r,
                    uint64_t *size_r)
{
	const char *p = listing_msgnum(line, len, msgnum_r);

	/* RFC 1939 allows more after the size; it is ignored. */
	if (p == NULL || !parse_u64(&p, size_r) ||
	    (*p != '\0' && *p != ' ' && *p != '\t'))
		return -EPROTO;
	return 0;
}

bool pop3_capa_is(const char *line, const char *name)
{
	size_t n = strlen(name);

	return strncasecmp(line, name, n) == 0 &&
	       (line[n] == '\0' || line[n] == ' ');
}

bool pop3_capa_sasl(const char *line, const char *mech)
{
	const char *p = line;

	if (!pop3_capa_is(p, "SASL"))
		return false;
	p += 4;
	while (*p == ' ') {
		while (*p == ' ')
			p++;
		if (pop3_capa_is(p, mech))
			return true;
		p += strcspn(p, " ");
	}
	return false;
}
