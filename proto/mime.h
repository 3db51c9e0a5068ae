/* Header fields of a message, decoded to UTF-8 for the user.
 *
 * The fs layer shows four header fields of every message as extended
 * attributes.  It fetches them with
 * BODY.PEEK[HEADER.FIELDS (SUBJECT FROM DATE MESSAGE-ID)] and calls
 *
 *     user.mail.subject     mime_header_decoded(h, n, "Subject", &v)
 *     user.mail.from        mime_header_decoded(h, n, "From", &v)
 *     user.mail.date        mime_header_decoded(h, n, "Date", &v)
 *     user.mail.message_id  mime_header_decoded(h, n, "Message-ID", &v)
 *
 * mime_header_decoded() knows that Message-ID (and In-Reply-To, References,
 * Content-ID, Resent-Message-ID) carry identifiers, not text: for those it
 * unfolds, trims and makes the value safe UTF-8, but leaves "=?...?=" alone,
 * so the identifier can be compared with what other programs show.
 *
 * Everything here is a pure function over bytes: no I/O, no global state,
 * safe from any thread.  The input is distrusted server data and may hold
 * anything (NUL bytes, bare CR, 8-bit garbage, gigantic fields); no input
 * makes these functions fail other than with -ENOMEM, abort or take more
 * than time linear in its length.  They return 0 and a new NUL-terminated
 * string in *_r (release it with free()), or a negative errno and leave *_r
 * untouched.  A pointer with a length may be NULL when the length is 0.
 *
 * What the decoded text looks like (mime_decode_header, mime_decode_raw):
 *   - always valid UTF-8 (no overlong forms, surrogates or code points above
 *     U+10FFFF), at most MIME_DECODED_MAX bytes without the terminating NUL;
 *     longer text is cut at a character boundary;
 *   - no control characters but TAB: CR, LF, NUL, the other C0 controls, DEL
 *     and the C1 controls (U+0080..U+009F) each become one space; U+FEFF (a
 *     byte order mark) is dropped;
 *   - bytes that cannot be decoded become U+FFFD.
 */
#ifndef MAILFS_MIME_H
#define MAILFS_MIME_H

#include <stddef.h>

/* Longest decoded text, in bytes, not counting the terminating NUL.  This
 * is the largest extended attribute value Linux allows. */
#define MIME_DECODED_MAX 65536

/* Longest field value mime_header_field() returns, in bytes, not counting
 * the terminating NUL.  Large enough that the decoded text of a field that
 * reaches it is already cut at MIME_DECODED_MAX in practice. */
#define MIME_FIELD_MAX (4 * MIME_DECODED_MAX)

/* Find the first field called name (compared case-insensitively, ASCII) in
 * a raw header block, as returned for BODY.PEEK[HEADER] or
 * BODY.PEEK[HEADER.FIELDS (...)], and return its value, still encoded.
 *
 * Lines end with CRLF or a bare LF.  The block ends at the first empty line
 * or at len, whichever comes first.  A field starts at the beginning of a
 * line with its name, optional spaces or tabs (obsolete syntax) and ":";
 * lines starting with a space or a tab continue the field above.  Lines
 * that are not fields (garbage, an mbox "From " line) are skipped together
 * with their continuation lines.
 *
 * The value is everything after the ":", unfolded (a line break followed
 * by a space or tab is removed, the space or tab kept; RFC 5322 section
 * 2.2.3), with leading and trailing spaces, tabs, CRs and LFs removed.  NUL
 * bytes are replaced by spaces so that the result is one C string; nothing
 * else is changed or decoded: the value can hold any byte but NUL.  A value
 * longer than MIME_FIELD_MAX is cut there (not inside a UTF-8 sequence, if
 * it is UTF-8).  An empty field gives "".
 *
 * Returns 0, -ENOENT when there is no such field, -EINVAL when name is NULL,
 * empty or holds a byte that cannot appear in a field name (a control
 * character, space, ":" or 8-bit byte), -ENOMEM. */
int mime_header_field(const char *headers, size_t len, const char *name,
                      char **value_r);

/* Decode an unstructured header value (Subject) or a structured one with
 * phrases and comments (From, To) to UTF-8: RFC 2047 encoded words, the
 * charset of raw 8-bit text, control characters.
 *
 * Encoded words, "=?" charset ["*" language] "?" ("B" / "Q") "?" text "?=",
 * with the encoding letter in either case and the RFC 2231 language
 * suffix ignored, are recognized anywhere in the text, also without the
 * white space around them that RFC 2047 asks for and inside quoted strings,
 * because real mail puts them there.  The charset is a token of at most 75
 * characters from the RFC 2047 token alphabet; the text has no white space
 * and no "?".  Q: "_" is a space, "=" and two hex digits (either case) a
 * byte, any other "=" stays itself.  B: padding is optional and a "=" ends a
 * 4-character group (so two padded words glued together decode); bits left
 * over at the end are dropped; a character outside the base64 alphabet
 * makes the word malformed.
 *
 * White space (space, tab, CR, LF) between two encoded words is dropped
 * (RFC 2047 section 6.2), whatever their charsets.
 *
 * Words split inside a character: RFC 2047 says every encoded word must
 * hold whole characters, but real mailers split UTF-8 sequences (and base64
 * groups of multi-byte charsets) between words.  The bytes of encoded
 * words that follow one another (with only white space between them) and
 * name the same charset (compared case-insensitively, language ignored) are
 * therefore joined before they are converted, so such a character comes out
 * whole.  A character split between words of different charsets is
 * undecodable and becomes U+FFFD.
 *
 * Charsets: UTF-8, and US-ASCII, ISO-8859-1 and Windows-1252 (all three
 * read as Windows-1252, the superset that mail labelled with the other two
 * actually uses) are decoded here; every other charset through iconv(3),
 * with these supersets substituted when iconv has them: GB2312 and GBK as
 * GB18030, EUC-KR and KS_C_5601-1987 as CP949, Shift_JIS as CP932, Big5 as
 * CP950, ISO-2022-JP as ISO-2022-JP-3 (adds JIS X 0201 katakana), and
 * ISO-8859-8-I and ISO-8859-6-I as ISO-8859-8 and ISO-8859-6.  "UTF-16"
 * with no byte order mark is read as little-endian when most of its zero
 * bytes are at odd offsets (Windows mailers), else big-endian.  A charset
 * that iconv does not know (what it knows depends on the conversion
 * modules installed) or cannot open for lack of memory leaves the encoded
 * word as it is, like a malformed one: malformed encoded words are kept as
 * literal text, white space around them included.
 *
 * Raw text outside encoded words is kept as it is if all of it is valid
 * UTF-8, else every 8-bit byte of it is read as Windows-1252 (the
 * undefined bytes 0x81, 0x8d, 0x8f, 0x90 and 0x9d as U+FFFD).  This is
 * decided once for the whole input, so that one text is not read in two
 * charsets; encoded words are ASCII and do not count.  One exception: 7-bit
 * text with an ISO-2022-JP escape sequence (ESC "$B", ESC "$@", ESC "$(",
 * ESC "(I"), which old Japanese mailers put in headers unencoded, is read
 * as ISO-2022-JP.  There is no other guessing: the charset of 8-bit text
 * (raw GB2312 or Big5, say) is not looked for.
 *
 * Line breaks are not unfolded here: pass a value from mime_header_field(),
 * or each CR and LF becomes a space.  Returns 0 or -ENOMEM. */
int mime_decode_header(const char *raw, size_t len, char **utf8_r);

/* Like mime_decode_header() for text in which "=?...?=" is not to be
 * decoded (a Message-ID): only the raw 8-bit text and control character
 * rules apply.  Returns 0 or -ENOMEM. */
int mime_decode_raw(const char *raw, size_t len, char **utf8_r);

/* mime_header_field() and then mime_decode_header(), or mime_decode_raw()
 * for the identifier fields Message-ID, In-Reply-To, References,
 * Content-ID and Resent-Message-ID.  Returns 0, -ENOENT, -EINVAL or
 * -ENOMEM as mime_header_field(). */
int mime_header_decoded(const char *headers, size_t len, const char *name,
                        char **utf8_r);

#endif
