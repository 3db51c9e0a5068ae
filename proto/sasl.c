#include "proto/sasl.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/b64.h"

/* The base64 here is written out rather than taken from EVP_EncodeBlock /
 * EVP_DecodeBlock: EVP_DecodeBlock accepts whitespace, does not report how
 * much padding it removed, and does not reject bad padding, and the input
 * it decodes may come from a hostile server. */

int sasl_b64_encode(const void *data, size_t len, char **b64_r)
{
	const unsigned char *in = data;
	char *out, *o;

	if (len > (SIZE_MAX - 1) / 4 * 3 - 2)
		return -ENOMEM;
	out = malloc((len + 2) / 3 * 4 + 1);
	if (out == NULL)
		return -ENOMEM;
	o = b64_put(out, in, len, b64_std, true);
	*o = '\0';
	*b64_r = out;
	return 0;
}

int sasl_b64_decode(const char *b64, size_t len, unsigned char **data_r,
                    size_t *len_r)
{
	const unsigned char *in = (const unsigned char *)b64;
	unsigned char *out, *o;
	size_t i, pad = 0;

	if (len % 4 != 0)
		return -EINVAL;
	if (len > 0 && in[len - 1] == '=')
		pad = in[len - 2] == '=' ? 2 : 1;
	out = malloc(len / 4 * 3 + 1);
	if (out == NULL)
		return -ENOMEM;
	o = out;
	for (i = 0; i < len; i += 4) {
		bool last = i + 4 == len;
		int v[4], k;

		for (k = 0; k < 4; k++) {
			/* "=" is only valid in the padding positions, which
			 * are checked below. */
			if (last && k >= 4 - (int)pad) {
				v[k] = 0;
				continue;
			}
			v[k] = b64_value(b64_std, in[i + k]);
			if (v[k] < 0)
				goto invalid;
		}
		*o++ = (unsigned char)(v[0] << 2 | v[1] >> 4);
		if (last && pad == 2) {
			/* 4 bits of the second character unused */
			if ((v[1] & 0x0f) != 0)
				goto invalid;
			break;
		}
		*o++ = (unsigned char)((v[1] & 0x0f) << 4 | v[2] >> 2);
		if (last && pad == 1) {
			if ((v[2] & 0x03) != 0)
				goto invalid;
			break;
		}
		*o++ = (unsigned char)((v[2] & 0x03) << 6 | v[3]);
	}
	*o = '\0';
	*len_r = (size_t)(o - out);
	*data_r = out;
	return 0;
invalid:
	free(out);
	return -EINVAL;
}

int sasl_oauth2(bool bearer, bool xoauth2, const char *user, const char *host,
                unsigned int port, const char *token, const char **mech_r,
                char **b64_r)
{
	if (bearer) {
		*mech_r = "OAUTHBEARER";
		return sasl_oauthbearer(user, host, port, token, b64_r);
	}
	if (xoauth2) {
		*mech_r = "XOAUTH2";
		return sasl_xoauth2(user, token, b64_r);
	}
	return -EPROTONOSUPPORT;
}

void sasl_free_secret(char **secret)
{
	if (*secret == NULL)
		return;
	OPENSSL_cleanse(*secret, strlen(*secret));
	free(*secret);
	*secret = NULL;
}

/* A buffer for a cleartext response; wiped before it is freed. */
struct sasl_buf {
	char *data;
	size_t len, cap;
	bool failed;
};

static void sasl_buf_add(struct sasl_buf *b, const void *p, size_t n)
{
	if (b->failed)
		return;
	if (n > b->cap - b->len) {
		/* Sizes are computed up front; running out is a bug, but
		 * refuse rather than overflow. */
		b->failed = true;
		return;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void sasl_buf_str(struct sasl_buf *b, const char *s)
{
	sasl_buf_add(b, s, strlen(s));
}

static int sasl_buf_init(struct sasl_buf *b, size_t cap)
{
	memset(b, 0, sizeof(*b));
	/* sasl_add() saturates at SIZE_MAX */
	if (cap > PTRDIFF_MAX)
		return -ENOMEM;
	b->data = malloc(cap);
	if (b->data == NULL)
		return -ENOMEM;
	b->cap = cap;
	return 0;
}

/* Encode the buffer to *b64_r and wipe and free it. */
static int sasl_buf_finish(struct sasl_buf *b, char **b64_r)
{
	int rc = -EINVAL;

	if (!b->failed)
		rc = sasl_b64_encode(b->data, b->len, b64_r);
	OPENSSL_cleanse(b->data, b->cap);
	free(b->data);
	b->data = NULL;
	return rc;
}

/* Sum of lengths, or SIZE_MAX on overflow (malloc then fails). */
static size_t sasl_add(size_t a, size_t b)
{
	return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static bool sasl_has_ctl(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* A bearer token goes after "Bearer " and before ^A: a space or a control
 * character would change where the server thinks it ends. */
static bool sasl_token_ok(const char *t)
{
	if (*t == '\0')
		return false;
	for (; *t != '\0'; t++)
		if ((unsigned char)*t <= 0x20 || *t == 0x7f)
			return false;
	return true;
}

int sasl_plain(const char *authzid, const char *user, const char *pass,
               char **b64_r)
{
	struct sasl_buf b;
	size_t n;
	int rc;

	if (authzid == NULL)
		authzid = "";
	if (*user == '\0' || *pass == '\0')
		return -EINVAL;
	n = sasl_add(sasl_add(strlen(authzid), strlen(user)),
	             sasl_add(strlen(pass), 2));
	rc = sasl_buf_init(&b, n);
	if (rc < 0)
		return rc;
	sasl_buf_str(&b, authzid);
	sasl_buf_add(&b, "", 1);
	sasl_buf_str(&b, user);
	sasl_buf_add(&b, "", 1);
	sasl_buf_str(&b, pass);
	return sasl_buf_finish(&b, b64_r);
}

int sasl_xoauth2(const char *user, const char *token, char **b64_r)
{
	static const char u[] = "user=", a[] = "\001auth=Bearer ";
	struct sasl_buf b;
	size_t n;
	int rc;

	if (*user == '\0' || sasl_has_ctl(user) || !sasl_token_ok(token))
		return -EINVAL;
	n = sasl_add(sasl_add(strlen(user), strlen(token)),
	             sizeof(u) - 1 + sizeof(a) - 1 + 2);
	rc = sasl_buf_init(&b, n);
	if (rc < 0)
		return rc;
	sasl_buf_str(&b, u);
	sasl_buf_str(&b, user);
	sasl_buf_str(&b, a);
	sasl_buf_str(&b, token);
	sasl_buf_add(&b, "\001\001", 2);
	return sasl_buf_finish(&b, b64_r);
}

int sasl_oauthbearer(const char *user, const char *host, unsigned int port,
                     const char *token, char **b64_r)
{
	char portkv[16];
	struct sasl_buf b;
	size_t n;
	int rc;

	if ((user != NULL && sasl_has_ctl(user)) ||
	    (host != NULL && (*host == '\0' || sasl_has_ctl(host))) ||
	    port > 65535 || !sasl_token_ok(token))
		return -EINVAL;
	portkv[0] = '\0';
	if (port != 0)
		snprintf(portkv, sizeof(portkv), "\001port=%u", port);

	/* "n,a=" USER (each byte at most 3) "," ^A "host=" HOST portkv
	 * ^A "auth=Bearer " TOKEN ^A ^A */
	n = sasl_add(user ? strlen(user) : 0, 0);
	n = n > SIZE_MAX / 3 ? SIZE_MAX : n * 3;
	n = sasl_add(n, host ? strlen(host) : 0);
	n = sasl_add(n, strlen(token));
	n = sasl_add(n, 5 + 6 + strlen(portkv) + 13 + 2);
	rc = sasl_buf_init(&b, n);
	if (rc < 0)
		return rc;
	sasl_buf_str(&b, "n,");
	if (user != NULL) {
		const char *p;

		sasl_buf_str(&b, "a=");
		for (p = user; *p != '\0'; p++) {
			if (*p == ',')
				sasl_buf_str(&b, "=2C");
			else if (*p == '=')
				sasl_buf_str(&b, "=3D");
			else
				sasl_buf_add(&b, p, 1);
		}
	}
	sasl_buf_str(&b, ",");
	if (host != NULL) {
		sasl_buf_str(&b, "\001host=");
		sasl_buf_str(&b, host);
	}
	sasl_buf_str(&b, portkv);
	sasl_buf_str(&b, "\001auth=Bearer ");
	sasl_buf_str(&b, token);
	sasl_buf_add(&b, "\001\001", 2);
	return sasl_buf_finish(&b, b64_r);
}
