#include "proto/url.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define URL_HOST_MAX 253 /* longest DNS name in text form */
#define URL_NAME_MAX 255 /* longest file name on Linux file systems */

struct url_scheme {
	const char *name;
	enum url_proto proto;
	bool implicit_tls;
	uint16_t port;
};

static const struct url_scheme url_schemes[] = {
        {"imaps", URL_IMAP, true, URL_PORT_IMAPS},
        {"imap", URL_IMAP, false, URL_PORT_IMAP},
        {"pop3s", URL_POP3, true, URL_PORT_POP3S},
        {"pop3", URL_POP3, false, URL_PORT_POP3},
};

static int url_fail(struct proto_err *err, const char *what)
{
	return proto_err_set(err, PERR_LOCAL, -EINVAL, "account URL: %s", what);
}

static int url_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode the len bytes at s into a new string. */
static int url_decode_user(const char *s, size_t len, char **user_r,
                           struct proto_err *err)
{
	char *out, *o;
	size_t i;

	out = malloc(len + 1);
	if (out == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM,
		                     "account URL: out of memory");
	o = out;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			int hi, lo;

			/* s[i + 1] may be the end of the user part, never
			 * past the string's NUL: hi < 0 stops there. */
			hi = i + 1 < len ? url_hexval(s[i + 1]) : -1;
			lo = hi >= 0 && i + 2 < len ? url_hexval(s[i + 2]) : -1;
			if (lo < 0) {
				free(out);
				return url_fail(err,
				                "invalid percent escape in "
				                "the user name (expected "
				                "% and two hex digits)");
			}
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
			if (c == 0) {
				free(out);
				return url_fail(err, "the user name contains "
				                     "an encoded NUL (%00)");
			}
			/* CR or LF would end up inside a LOGIN or USER
			 * command. */
			if (c < 0x20 || c == 0x7f) {
				free(out);
				return url_fail(err, "the user name contains "
				                     "an encoded control "
				                     "character");
			}
		}
		*o++ = (char)c;
	}
	*o = '\0';
	*user_r = out;
	return 0;
}

static bool url_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

/* RFC 6874 ZoneID, restricted to the unreserved characters. */
static bool url_zone_char(char c)
{
	return url_host_char(c) || c == '~';
}

/* Parse "[v6]" or a name at s (len bytes, no port); sets *host_r. */
static int url_parse_host(const char *s, size_t len, char **host_r,
                          struct proto_err *err)
{
	char addr[INET6_ADDRSTRLEN + 1];
	struct in6_addr a6;
	char *host;
	size_t i;

	if (len == 0)
		return url_fail(err, "no host name after \"@\"");
	if (s[0] == '[') {
		const char *zone;
		size_t alen, zlen = 0;

		/* The caller cut at "]", so it is the last byte. */
		if (len < 2 || s[len - 1] != ']')
			return url_fail(err, "missing \"]\" after an IPv6 "
			                     "address");
		alen = len - 2;
		zone = memchr(s + 1, '%', alen);
		if (zone != NULL) {
			zlen = (size_t)(s + len - 1 - zone);
			alen = (size_t)(zone - (s + 1));
			if (zlen < 4 || strncmp(zone, "%25", 3) != 0)
				return url_fail(err, "invalid IPv6 zone "
				                     "(expected [ADDRESS%25"
				                     "ZONE])");
			for (i = 3; i < zlen; i++)
				if (!url_zone_char(zone[i]))
					return url_fail(err, "invalid "
					                     "character in "
					                     "the IPv6 zone");
		}
		if (alen == 0 || alen >= sizeof(addr))
			return url_fail(err, "invalid IPv6 address");
		memcpy(addr, s + 1, alen);
		addr[alen] = '\0';
		if (inet_pton(AF_INET6, addr, &a6) != 1)
			return url_fail(err, "invalid IPv6 address");
		/* "%25" becomes "%": one byte shorter per zone. */
		host = malloc(alen + (zlen ? zlen - 2 : 0) + 1);
		if (host == NULL)
			return proto_err_set(err, PERR_LOCAL, -ENOMEM,
			                     "account URL: out of memory");
		for (i = 0; i < alen; i++)
			host[i] = (char)tolower((unsigned char)addr[i]);
		if (zlen != 0) {
			host[alen] = '%';
			memcpy(host + alen + 1, zone + 3, zlen - 3);
			alen += 1 + zlen - 3;
		}
		host[alen] = '\0';
		*host_r = host;
		return 0;
	}
	if (len > URL_HOST_MAX)
		return url_fail(err, "host name too long");
	for (i = 0; i < len; i++) {
		if ((unsigned char)s[i] >= 0x80)
			return url_fail(err, "the host name must be ASCII "
			                     "(use the xn-- form of an "
			                     "international domain name)");
		if (!url_host_char(s[i]))
			return url_fail(err, "invalid character in the host "
			                     "name");
	}
	if (s[0] == '.' || s[0] == '-')
		return url_fail(err, "invalid host name");
	host = strndup(s, len);
	if (host == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM,
		                     "account URL: out of memory");
	/* DNS names are case-insensitive; one spelling keeps the cache
	 * directory name stable. */
	for (i = 0; i < len; i++)
		host[i] = (char)tolower((unsigned char)host[i]);
	*host_r = host;
	return 0;
}

static int url_parse_port(const char *s, size_t len, uint16_t *port_r,
                          struct proto_err *err)
{
	unsigned long v = 0;
	size_t i;

	if (len == 0)
		return url_fail(err, "empty port after \":\"");
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return url_fail(err, "the port must be a number from "
			                     "1 to 65535");
		v = v * 10 + (unsigned long)(s[i] - '0');
		if (v > 65535)
			return url_fail(err, "the port must be a number from "
			                     "1 to 65535");
	}
	if (v == 0)
		return url_fail(err, "the port must be a number from 1 to "
		                     "65535");
	*port_r = (uint16_t)v;
	return 0;
}

int url_parse(const char *s, struct account_url *r, struct proto_err *err)
{
	const struct url_scheme *scheme = NULL;
	const char *sep, *auth, *end, *at, *hp, *hend, *colon = NULL;
	size_t slen, i;
	int rc;

	memset(r, 0, sizeof(*r));
	for (i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c <= 0x20 || c == 0x7f)
			return url_fail(err, "spaces and control characters "
			                     "are not allowed");
	}

	sep = strstr(s, "://");
	if (sep == NULL)
		return url_fail(err, "expected SCHEME://USER@HOST[:PORT] "
		                     "with scheme imaps, imap, pop3s or pop3");
	slen = (size_t)(sep - s);
	for (i = 0; i < sizeof(url_schemes) / sizeof(url_schemes[0]); i++) {
		if (strlen(url_schemes[i].name) == slen &&
		    strncasecmp(s, url_schemes[i].name, slen) == 0) {
			scheme = &url_schemes[i];
			break;
		}
	}
	if (scheme == NULL) {
		/* The scheme comes before any user or password, so it is
		 * safe to repeat; cap it in case it is long. */
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "account URL: unknown scheme \"%.*s\" "
		                     "(expected imaps, imap, pop3s or pop3)",
		                     (int)(slen > 16 ? 16 : slen), s);
	}

	auth = sep + 3;
	end = auth + strcspn(auth, "/?#");
	if (end[0] != '\0' && !(end[0] == '/' && end[1] == '\0'))
		return url_fail(err, "nothing may follow the host and port "
		                     "but a single \"/\"");

	/* The host never contains "@", so a raw "@" in the user part is
	 * unambiguous. */
	at = NULL;
	for (hp = auth; hp < end; hp++)
		if (*hp == '@')
			at = hp;
	if (at == NULL)
		return url_fail(err, "no user name (expected "
		                     "SCHEME://USER@HOST[:PORT])");
	if (memchr(auth, ':', (size_t)(at - auth)) != NULL)
		return url_fail(err, "a password in the URL is not accepted: "
		                     "passwords are never taken on the command "
		                     "line (use -o passcmd=CMD or -o "
		                     "password_stdin)");
	if (at == auth)
		return url_fail(err, "empty user name");

	hp = at + 1;
	if (hp < end && *hp == '[') {
		const char *rb = memchr(hp, ']', (size_t)(end - hp));

		if (rb == NULL)
			return url_fail(err, "missing \"]\" after an IPv6 "
			                     "address");
		hend = rb + 1;
		if (hend < end && *hend != ':')
			return url_fail(err, "unexpected characters after "
			                     "the IPv6 address");
	} else {
		hend = memchr(hp, ':', (size_t)(end - hp));
		if (hend == NULL)
			hend = end;
		else if (memchr(hend + 1, ':', (size_t)(end - hend - 1)))
			return url_fail(err, "more than one \":\" after the "
			                     "host (an IPv6 address must be "
			                     "written in brackets, like "
			                     "[::1]:993)");
	}
	if (hend < end)
		colon = hend;

	rc = url_decode_user(auth, (size_t)(at - auth), &r->user, err);
	if (rc < 0)
		goto fail;
	rc = url_parse_host(hp, (size_t)(hend - hp), &r->host, err);
	if (rc < 0)
		goto fail;
	r->port = scheme->port;
	if (colon != NULL) {
		rc = url_parse_port(colon + 1, (size_t)(end - colon - 1),
		                    &r->port, err);
		if (rc < 0)
			goto fail;
		r->port_explicit = true;
	}
	snprintf(r->port_str, sizeof(r->port_str), "%u", (unsigned)r->port);
	r->proto = scheme->proto;
	r->implicit_tls = scheme->implicit_tls;
	return 0;
fail:
	url_clear(r);
	return rc;
}

void url_clear(struct account_url *u)
{
	free(u->user);
	free(u->host);
	memset(u, 0, sizeof(*u));
}

static bool url_default_port(const struct account_url *u)
{
	if (u->proto == URL_IMAP)
		return u->port == URL_PORT_IMAPS || u->port == URL_PORT_IMAP;
	return u->port == URL_PORT_POP3S || u->port == URL_PORT_POP3;
}

int url_cache_name(const struct account_url *u, char **name_r)
{
	char raw[3 * URL_NAME_MAX], *out, *o;
	size_t i;
	int n;

	n = snprintf(raw, sizeof(raw), "%s@%s%s%s%s%s%s", u->user,
	             strchr(u->host, ':') ? "[" : "", u->host,
	             strchr(u->host, ':') ? "]" : "",
	             url_default_port(u) ? "" : ":",
	             url_default_port(u) ? "" : u->port_str,
	             u->proto == URL_POP3 ? "+pop3" : "");
	if (n < 0)
		return -EINVAL;
	if ((size_t)n > URL_NAME_MAX)
		return -ENAMETOOLONG;
	/* Every byte can triple; check the real length below. */
	out = malloc((size_t)n * 3 + 1);
	if (out == NULL)
		return -ENOMEM;
	o = out;
	for (i = 0; raw[i] != '\0'; i++) {
		unsigned char c = (unsigned char)raw[i];

		/* "%" itself is escaped so that the mapping is injective;
		 * a leading "." would make ".", ".." or a hidden name. */
		if (c == '%' || c == '/' || c < 0x20 || c == 0x7f ||
		    (i == 0 && c == '.')) {
			sprintf(o, "%%%02X", c);
			o += 3;
		} else {
			*o++ = (char)c;
		}
	}
	*o = '\0';
	if ((size_t)(o - out) > URL_NAME_MAX) {
		free(out);
		return -ENAMETOOLONG;
	}
	*name_r = out;
	return 0;
}
