/* A POP3 mount: an append-only INBOX.
 *
 *   MOUNTPOINT/INBOX/1.eml 2.eml ...   numbered in download order
 *
 * The network side is one thread that runs short sessions (connect, UIDL,
 * RETR what is new, DELE what pop_keep allows, QUIT) every poll seconds
 * and when INBOX is listed, so other clients are not locked out for long.
 * Each session logs in with login_pop3() and fs->login, so oauth2_cmd
 * runs for it and passcmd after a refused login (proto/login.h).
 * Every message's bytes are committed to the cache, with its UIDL (and,
 * where the server reuses UIDLs, a hash of its size and header), before
 * anything else happens to it; a message is DELEted on the server only
 * when it is in the cache and pop_keep's days have passed.  A message
 * the server changes under a cached UIDL (listed with another size) is
 * retrieved again and, if it differs in more than the header fields mbox
 * servers rewrite, kept as a new message.  Files never change and never
 * disappear. */
#ifndef MAILFS_FS_POP_POLLER_H
#define MAILFS_FS_POP_POLLER_H

#include "fs/mailfs.h"
#include "fs/net/sync.h"
#include "proto/pop3.h"

/* Inode numbers of INBOX and its messages: fs_ino_pop_inbox() and
 * fs_ino_pop_msg() (fs/ino.h). */

struct fs_pop;

/* Start the poller.  first (may be NULL) is a connected client used for
 * the first session (owned from now on). */
int fs_pop_start(struct mailfs *fs, struct pop3_client *first,
                 struct fs_pop **pop_r);

/* Stop it; a session under way is interrupted (without QUIT, so the
 * server commits no DELE of an unfinished session). */
void fs_pop_stop(struct fs_pop **pop);

/* Ask for a session now.  cb (may be NULL) runs when it is over, with 0
 * or the error; -ENOTCONN at once when the poller is stopped. */
int fs_pop_check(struct fs_pop *pop, fs_sync_cb cb, void *ctx);

/* Has a session completed since the mount (or has the cache anything)?
 * The first listing of an empty cache waits for the first session. */
bool fs_pop_ready(struct fs_pop *pop);

/* The FUSE operations of a POP3 mount (fs/pop/ops.c). */
extern const struct fuse_lowlevel_ops fs_pop_ops;

#endif
