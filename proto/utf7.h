/* Modified UTF-7 for IMAP mailbox names (RFC 3501 section 5.1.3).
 *
 * IMAP servers send and expect mailbox names in modified UTF-7: printable
 * US-ASCII (0x20..0x7e) stands for itself except "&", which is written
 * "&-"; every other character is written as "&" + the modified BASE64
 * (alphabet A-Z a-z 0-9 + ",", no "=" padding) of its UTF-16BE code units
 * + "-".  mailfs shows the names to the user in UTF-8.
 *
 * Both directions are strict and produce or accept only the one canonical
 * form, so that decoding then encoding gives back the server's bytes and a
 * name cannot have two spellings.  Like Dovecot, utf7_decode() rejects
 * (-EINVAL):
 *   - raw bytes outside 0x20..0x7e (8-bit or control characters);
 *   - "&" with no closing "-", or a character outside the modified BASE64
 *     alphabet inside "&...-" (including "=" and the standard "/");
 *   - an encoded run whose bits do not end on a UTF-16 unit: an odd number
 *     of bytes, a superfluous BASE64 character, or non-zero padding bits;
 *   - printable ASCII (including "&") written in BASE64, and an encoded NUL;
 *   - an unpaired or reversed UTF-16 surrogate;
 *   - two encoded runs back to back ("&AOQ-&AOQ-" must be "&AOQA5A-");
 *     "&AOQ-&-" ("ä&") is fine.
 * utf7_encode() rejects (-EINVAL) input that is not valid UTF-8: overlong
 * forms, UTF-16 surrogates (U+D800..U+DFFF), code points above U+10FFFF,
 * truncated or stray continuation bytes.  Characters outside the Basic
 * Multilingual Plane are encoded as surrogate pairs.
 *
 * Both return 0 and a new NUL-terminated string in *_r (free() it), or a
 * negative errno (-EINVAL, -ENOMEM) and leave *_r untouched. */
#ifndef MAILFS_UTF7_H
#define MAILFS_UTF7_H

/* IMAP mailbox name (modified UTF-7) to UTF-8. */
int utf7_decode(const char *in, char **utf8_r);

/* UTF-8 to IMAP mailbox name (modified UTF-7). */
int utf7_encode(const char *utf8, char **out_r);

#endif
