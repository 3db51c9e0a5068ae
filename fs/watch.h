/* Keeping a mounted IMAP account live: changes made elsewhere appear
 * without a remount.
 *
 * One thread with a connection of its own watches INBOX: IDLE (RFC 2177)
 * when the server offers it, else a NOOP every few seconds.  Whatever the
 * server reports there (new mail, flag changes, expunges) queues a resync
 * of INBOX on the network side (fs/sync.c), which fetches only what
 * changed and tells the kernel what went away.  The same thread also
 * resynchronises, every `poll` seconds, the mailbox list and the
 * mailboxes that were listed before, so that other mailboxes stay close
 * to the server even when nobody looks.
 *
 * A lost connection is reopened with back-off (1 s doubling to 60 s);
 * INBOX is resynchronised after each reconnection. */
#ifndef MAILFS_FS_WATCH_H
#define MAILFS_FS_WATCH_H

#include "fs/mailfs.h"

struct fs_watch;

/* Start watching (fs->sync must be running). */
int fs_watch_start(struct mailfs *fs, struct fs_watch **watch_r);

/* Stop the thread and close its connection; *watch set to NULL. */
void fs_watch_stop(struct fs_watch **watch);

#endif
