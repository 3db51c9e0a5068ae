/* What both kinds of mount report about their size and state: the statfs
 * answer (df) and the JSON text of the status attributes.  Pure: any
 * thread may call these. */
#ifndef MAILFS_FS_USAGE_H
#define MAILFS_FS_USAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/statvfs.h>

#include "proto/strbuf.h"

/* Bytes of a statfs block: quotas are counted in KiB (RFC 9208). */
#define FS_USAGE_FRSIZE 1024

/* The statfs answer of an account that uses used bytes in messages
 * messages.  limit (bytes) and msg_limit, when not 0, are the quota: the
 * total and what is left (nothing when over it).  Without a limit the
 * filesystem is as big as what it holds, none of it free, and never
 * smaller than one block (a filesystem of 0 blocks is one plain `df`
 * leaves out). */
void fs_usage_statvfs(struct statvfs *st, uint64_t used, uint64_t limit,
                      uint64_t messages, uint64_t msg_limit);

/* Append s as a JSON string (quotes included): control characters,
 * quotes and backslashes escaped, each byte that is not part of valid
 * UTF-8 replaced by U+FFFD, so that the text is always valid JSON. */
void fs_usage_json_str(struct strbuf *b, const char *s);

#endif
