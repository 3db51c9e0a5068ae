/* The digits of base64: the standard alphabet (RFC 4648, for SASL and
 * MIME) and IMAP's modified one (RFC 3501 5.1.3, "," for "/", for
 * mailbox names in modified UTF-7).
 *
 * Only the digits and the groups of three bytes: padding, whitespace and
 * what input is valid are the caller's rules (proto/sasl is strict,
 * proto/mime tolerant, proto/utf7 pads nothing).  Pure functions, safe
 * from any thread. */
#ifndef MAILFS_B64_H
#define MAILFS_B64_H

#include <stdbool.h>
#include <stddef.h>

/* The 64 digits, in order, NUL-terminated. */
extern const char b64_std[];  /* A-Z a-z 0-9 + / */
extern const char b64_imap[]; /* A-Z a-z 0-9 + , */

/* The value (0..63) of the digit ch in alphabet (b64_std or b64_imap),
 * or -1 when ch is not one of its digits ("=" and NUL included). */
int b64_value(const char *alphabet, unsigned char ch);

/* Write the digits of the n bytes at in to o, in alphabet, with "="
 * padding when pad (then a multiple of 4 digits); no NUL is written.
 * o must have room for (n + 2) / 3 * 4 characters.  Returns the end of
 * what was written. */
char *b64_put(char *o, const unsigned char *in, size_t n, const char *alphabet,
              bool pad);

#endif
