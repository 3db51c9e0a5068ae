/* The ACCOUNT argument: which server, which protocol, which user.
 *
 *   imaps://USER@HOST[:PORT]   IMAP, TLS from the first byte (993)
 *   imap://USER@HOST[:PORT]    IMAP, STARTTLS mandatory     (143)
 *   pop3s://USER@HOST[:PORT]   POP3, TLS from the first byte (995)
 *   pop3://USER@HOST[:PORT]    POP3, STLS mandatory          (110)
 *
 * The scheme is case-insensitive.  USER is percent-decoded
 * ("alice%40example.com@imap.example.com" is user "alice@example.com"); a
 * raw "@" in USER is accepted too, the host starts after the last "@".
 * HOST is a DNS name or IPv4 address (letters, digits, ".", "-", "_";
 * stored lower-cased) or an IPv6 address in brackets ("[::1]", with an
 * optional RFC 6874 zone "[fe80::1%25eth0]"; stored without the brackets
 * and with the zone as "fe80::1%eth0", the form getaddrinfo() takes).
 * PORT is decimal digits, 1..65535.  One trailing "/" is allowed; a path,
 * query or fragment is not.
 *
 * Rejected: an unknown scheme, a missing or empty user, "USER:PASSWORD@"
 * (passwords are never taken on the command line), an invalid "%" escape,
 * a user that decodes to a NUL or another control character (it would end
 * up inside a protocol command), spaces or control characters anywhere, an
 * empty or malformed host, a bad port.  Error messages never repeat the
 * URL, which might contain a password. */
#ifndef MAILFS_URL_H
#define MAILFS_URL_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/error.h"

enum url_proto {
	URL_IMAP,
	URL_POP3,
};

#define URL_PORT_IMAPS 993
#define URL_PORT_IMAP  143
#define URL_PORT_POP3S 995
#define URL_PORT_POP3  110

struct account_url {
	enum url_proto proto;
	bool implicit_tls;  /* imaps/pop3s; else STARTTLS/STLS is mandatory */
	char *user;         /* owned; percent-decoded, non-empty */
	char *host;         /* owned; no brackets, lower-case */
	uint16_t port;      /* explicit or the scheme's default */
	char port_str[6];   /* the same port in decimal, for getaddrinfo() */
	bool port_explicit; /* the URL named a port */
};

/* Parse s into *r.  On success returns 0 and *r owns its strings (release
 * with url_clear()).  On failure returns -EINVAL (or -ENOMEM), leaves *r
 * cleared, and sets err (class PERR_LOCAL) to one line naming what is
 * wrong, e.g. "account URL: unknown scheme \"http\" (expected imaps, imap,
 * pop3s or pop3)". */
int url_parse(const char *s, struct account_url *r, struct proto_err *err);

/* Free the strings of u and zero it.  Safe on a zeroed or cleared struct. */
void url_clear(struct account_url *u);

/* The default cache directory name for the account, one path component:
 *
 *   USER@HOST          IMAP on port 993 or 143, POP3 on 995 or 110
 *   USER@HOST:PORT     any other port
 *   USER@[V6ADDR]...   an IPv6 host keeps its brackets
 *   ...+pop3           POP3 accounts get this suffix
 *
 * TLS mode does not matter (imaps:// and imap:// reach the same mailbox
 * store, so they share a cache), but the port does (another port can be
 * another server) and so does the protocol (a POP3 cache holds something
 * else than an IMAP one for the same login).  To make it safe as a single
 * component, "%" and "/" and control characters are percent-encoded
 * ("%25", "%2F", "%0A"), and so is a leading "." ("%2E"), so the name is
 * never ".", ".." or hidden.  The mapping is injective.  Returns 0 and a
 * new string in *name_r (free() it), -ENAMETOOLONG if the name would be
 * longer than 255 bytes, or -ENOMEM. */
int url_cache_name(const struct account_url *u, char **name_r);

#endif
