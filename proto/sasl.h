/* SASL encodings for IMAP AUTHENTICATE and POP3 AUTH.
 *
 * Only the client side of the mechanisms mailfs uses: PLAIN (RFC 4616) and
 * the OAuth2 bearer mechanisms XOAUTH2 (Google, Microsoft) and OAUTHBEARER
 * (RFC 7628), plus the base64 (RFC 4648, standard alphabet, padded) that
 * carries them.
 *
 * The mechanism functions return the base64 of the initial client response,
 * ready to send.  It contains the password or token: free it with
 * sasl_free_secret(), which wipes it first.  Every intermediate buffer that
 * held a secret is wiped before it is freed.
 *
 * All functions return 0 or a negative errno (-EINVAL for bad arguments or
 * input, -ENOMEM) and leave their output parameters untouched on error. */
#ifndef MAILFS_SASL_H
#define MAILFS_SASL_H

#include <stdbool.h>
#include <stddef.h>

/* Base64 of len bytes at data, "=" padded, no line breaks.  len == 0 gives
 * "".  The result is a new string (free() or sasl_free_secret()). */
int sasl_b64_encode(const void *data, size_t len, char **b64_r);

/* Decode the len characters at b64 (they need not be NUL-terminated).
 * Strict: the length must be a multiple of 4, only the standard alphabet,
 * "=" only as the last one or two characters, no whitespace, and the unused
 * bits before the padding must be zero (the canonical encoding).  On
 * success *data_r is a new buffer of *len_r bytes plus a NUL terminator
 * (the data itself may contain NULs); free() it.  "" decodes to 0 bytes.
 * Returns -EINVAL for invalid input. */
int sasl_b64_decode(const char *b64, size_t len, unsigned char **data_r,
                    size_t *len_r);

/* PLAIN (RFC 4616): base64(authzid NUL user NUL pass).  authzid may be
 * NULL or "" (act as user).  user and pass must be non-empty. */
int sasl_plain(const char *authzid, const char *user, const char *pass,
               char **b64_r);

/* XOAUTH2: base64("user=" user ^A "auth=Bearer " token ^A ^A), where ^A is
 * the byte 0x01.  user must be non-empty and free of control characters;
 * token non-empty and free of spaces and control characters. */
int sasl_xoauth2(const char *user, const char *token, char **b64_r);

/* OAUTHBEARER (RFC 7628): base64 of the GS2 header "n,a=USER," with "="
 * written "=3D" and "," written "=2C" in USER, then
 * ^A "host=" host ^A "port=" port ^A "auth=Bearer " token ^A ^A.
 * user NULL gives the header "n,," (no authzid); host NULL or port 0 leaves
 * that key out (RFC 7628 says they SHOULD be sent).  user and host must be
 * free of control characters, token as for sasl_xoauth2(). */
int sasl_oauthbearer(const char *user, const char *host, unsigned int port,
                     const char *token, char **b64_r);

/* The OAuth2 mechanism for a server that offers OAUTHBEARER (bearer)
 * and/or XOAUTH2 (xoauth2), with its initial response: OAUTHBEARER when
 * offered (host and port as above), else XOAUTH2.  *mech_r gets the
 * mechanism's name (a constant).  -EPROTONOSUPPORT when neither is
 * offered; else as sasl_oauthbearer() and sasl_xoauth2(). */
int sasl_oauth2(bool bearer, bool xoauth2, const char *user, const char *host,
                unsigned int port, const char *token, const char **mech_r,
                char **b64_r);

/* Wipe the NUL-terminated string *secret, free it and set *secret to NULL.
 * Safe with *secret == NULL. */
void sasl_free_secret(char **secret);

#endif
