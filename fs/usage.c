#include "fs/usage.h"

#include <stdio.h>
#include <string.h>

void fs_usage_statvfs(struct statvfs *st, uint64_t used, uint64_t limit,
                      uint64_t messages, uint64_t msg_limit)
{
	uint64_t used_blocks = (used + FS_USAGE_FRSIZE - 1) / FS_USAGE_FRSIZE;

	memset(st, 0, sizeof(*st));
	st->f_bsize = 4096;
	st->f_frsize = FS_USAGE_FRSIZE;
	st->f_namemax = 255;
	if (limit != 0) {
		uint64_t total = limit / FS_USAGE_FRSIZE;

		st->f_blocks = total;
		st->f_bfree = st->f_bavail =
		        total > used_blocks ? total - used_blocks : 0;
	} else {
		st->f_blocks = used_blocks;
	}
	if (st->f_blocks == 0)
		st->f_blocks = 1;
	if (msg_limit != 0) {
		st->f_files = msg_limit;
		st->f_ffree = st->f_favail =
		        msg_limit > messages ? msg_limit - messages : 0;
	} else {
		st->f_files = messages;
	}
}

/* Length of the valid UTF-8 sequence at s, 0 if there is none. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n;
	unsigned min;
	unsigned cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, min = 0x80, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, min = 0x800, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, min = 0x10000, cp = s[0] & 0x07;
	else
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void fs_usage_json_str(struct strbuf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	strbuf_str(b, "\"");
	while (*p != '\0') {
		size_t n = utf8_len(p);

		if (n == 0) {
			strbuf_str(b, "\\ufffd");
			p++;
		} else if (*p == '"' || *p == '\\') {
			strbuf_printf(b, "\\%c", *p);
			p++;
		} else if (*p < 0x20 || *p == 0x7f) {
			strbuf_printf(b, "\\u%04x", *p);
			p++;
		} else {
			strbuf_add(b, p, n);
			p += n;
		}
	}
	strbuf_str(b, "\"");
}
