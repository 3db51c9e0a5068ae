/* What an IMAP mount tells about itself: the status attributes of its
 * directories and messages, and statfs (df).
 *
 * Status attributes (read-only, computed when asked; not listed by
 * listxattr, so that backups and `getfattr -d` do not copy numbers that
 * change; read them by name, `getfattr -n user.mailfs.status DIR`):
 *
 *   on a mailbox's directory, of that mailbox; on the root, of the whole
 *   account (every mailbox):
 *     user.mailfs.messages        messages on the server (its last listing)
 *     user.mailfs.bytes           their size
 *     user.mailfs.cached          messages whose body is in the cache
 *     user.mailfs.cached_bytes    those bodies' bytes
 *     user.mailfs.uploads         files written into the mount that the
 *                                 server has not confirmed yet
 *     user.mailfs.failed_uploads  uploads the server refused (kept)
 *     user.mailfs.last_sync       seconds since the epoch of the last
 *                                 resync (the root: of the mailbox list),
 *                                 0 if never
 *     user.mailfs.connection      connected | idle | unreachable | offline
 *     user.mailfs.status          all of the above as one JSON object;
 *                                 on the root also the quota, and every
 *                                 mailbox ("mailboxes": [...]).  A list too
 *                                 long for one attribute (64 KiB) ends
 *                                 early with "next": N; the rest is in
 *                                 user.mailfs.status.N, and so on.
 *   on a message:
 *     user.mailfs.cached          1 if its body is in the cache, else 0
 *
 * statfs: the quota (GETQUOTAROOT INBOX) where the server has one, else
 * the known size of the account (every message's size, none free); the
 * number of messages as inodes (MESSAGE quota as the total when there is
 * one).
 *
 * These run on FUSE threads and answer from the cache and from what the
 * network side knows (fs_sync_get_state, fs_sync_quota); they never wait
 * for the network. */
#ifndef MAILFS_FS_IMAP_STATUS_H
#define MAILFS_FS_IMAP_STATUS_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>

#include "fs/mailfs.h"

#define FS_STATUS_PREFIX "user.mailfs."

/* Is name a status attribute (starts with FS_STATUS_PREFIX)? */
bool fs_status_is_name(const char *name);

/* Answer getxattr of status attribute name on the directory of mailbox
 * id (0: the root).  ENODATA for a name that is not one. */
void fs_status_dir_getxattr(fuse_req_t req, struct mailfs *fs, uint32_t id,
                            const char *name, size_t size);

/* Answer getxattr of status attribute name on message key. */
void fs_status_msg_getxattr(fuse_req_t req, struct mailfs *fs,
                            struct cache_key key, const char *name,
                            size_t size);

/* The statfs operation. */
void fs_status_op_statfs(fuse_req_t req, fuse_ino_t ino);

#endif
