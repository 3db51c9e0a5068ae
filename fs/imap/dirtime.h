/* The mtime of a directory of an IMAP mount: the last time its entries
 * changed.
 *
 * A mailbox directory's entries are its messages and its subdirectories;
 * the root's are the top-level mailboxes.  Its mtime is kept in the cache
 * (cache_mailbox_mtime_*; the root under id FS_DIRTIME_ROOT) and moves
 * only when its entries change:
 *
 * - a message arrives (found by a listing or resync: new UIDs that the
 *   cache did not hold; an upload through the mount), is expunged (found
 *   by a resync or listing; rm through the mount), or moves in or out;
 * - the UIDVALIDITY changes (every name changes);
 * - a subdirectory is created, deleted or renamed (through the mount or
 *   elsewhere, found when the mailbox list is read).
 *
 * Then it becomes the time the change was seen, or one second more than
 * it was if that is not later (fs_dirtime_next): every change moves it
 * forward, so that a tool comparing times (rsync's quick check, notmuch,
 * backup tools) sees it, even two changes in one second.  Nothing else
 * moves it: not a resync that finds nothing new, not a flag change (a
 * message's flags are not an entry of its directory), not a remount.
 *
 * A directory seen for the first time (a mailbox in a LIST, the root at
 * the first mount) gets the time it was first seen, stored at once: it
 * never shows 1970, and its first listing, which only makes known what it
 * held all along, changes nothing.  Caches written before this rule keep
 * the mtime they hold (the INTERNALDATE of the newest message).
 *
 * These run inside the caller's write transaction; the caller then tells
 * the tree (fs_tree_set_mtime) and the kernel (fs_inval_dir), in that
 * order, once the transaction committed. */
#ifndef MAILFS_FS_IMAP_DIRTIME_H
#define MAILFS_FS_IMAP_DIRTIME_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"

#define FS_DIRTIME_ROOT 0u

/* The mtime after a change seen at now of a directory whose mtime was
 * old: now, or old + 1 if now is not later. */
int64_t fs_dirtime_next(int64_t old, int64_t now);

/* The entries of directory id (FS_DIRTIME_ROOT: the root) changed at now:
 * its new mtime is stored and given in *mtime_r.  0 or a negative
 * errno. */
int fs_dirtime_changed(struct cache_txn *txn, uint32_t id, int64_t now,
                       int64_t *mtime_r);

/* Directory id is seen: if it has no mtime yet, first becomes it (stored).
 * *mtime_r: its mtime, and *is_new_r (may be NULL) whether it was just
 * set.  0 or a negative errno. */
int fs_dirtime_seen(struct cache_txn *txn, uint32_t id, int64_t first,
                    int64_t *mtime_r, bool *is_new_r);

/* Parents whose subdirectories changed, gathered during one write
 * transaction (the mailbox list's store) and moved at its end, when every
 * mailbox of the list is in the cache: each parent once. */
struct fs_dirtime_parents {
	char **names; /* owned: the mailboxes that came, went or moved */
	char *delims;
	size_t n, cap;
	uint32_t *ids; /* after fs_dirtime_parents_bump: the parents moved */
	size_t nids;
};

/* Mailbox name (delimiter delim) came, went, or was renamed (once with
 * each name): its parent's entries changed.  0 or -ENOMEM. */
int fs_dirtime_parents_add(struct fs_dirtime_parents *p, const char *name,
                           char delim);

/* Move the mtime of each parent noted (the root for top-level names) to
 * now, once; p->ids then names them.  0 or a negative errno. */
int fs_dirtime_parents_bump(struct fs_dirtime_parents *p, struct cache_txn *txn,
                            int64_t now);

/* Forget everything noted (the transaction is run again, or done). */
void fs_dirtime_parents_clear(struct fs_dirtime_parents *p);

#endif
