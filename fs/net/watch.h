/* Keeping a mounted IMAP account live: changes made elsewhere appear
 * without a remount.
 *
 * One thread with a connection of its own watches INBOX: IDLE (RFC 2177)
 * when the server offers it, else a NOOP every few seconds.  Whatever the
 * server reports there (new mail, flag changes, expunges) queues a resync
 * of INBOX on the network side (fs/net/sync.h), which fetches only what
 * changed and tells the kernel what went away.  The same thread also
 * resynchronises, every `poll` seconds, the mailbox list and the
 * mailboxes that were listed before, so that other mailboxes stay close
 * to the server even when nobody looks.
 *
 * A lost connection is reopened with back-off (1 s doubling to 60 s),
 * logging in with fs->login as the workers do (fs_sync_connect());
 * INBOX is resynchronised after each reconnection. */
#ifndef MAILFS_FS_NET_WATCH_H
#define MAILFS_FS_NET_WATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "fs/mailfs.h"

struct fs_watch;

/* Start watching (fs->sync must be running). */
int fs_watch_start(struct mailfs *fs, struct fs_watch **watch_r);

/* Is mailbox id watched with IDLE right now, its cached view current (so
 * that opening it needs no resync)?  False for NULL. */
bool fs_watch_live(struct fs_watch *watch, uint32_t id);

/* Stop the thread and close its connection (NULL is fine).  Resyncs it
 * queued may still call back into it: free it only once fs->sync has
 * stopped. */
void fs_watch_stop(struct fs_watch *watch);

/* Stop (if not done) and free; *watch set to NULL. */
void fs_watch_free(struct fs_watch **watch);

#endif
