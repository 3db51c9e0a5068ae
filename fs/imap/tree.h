/* The directory tree of an IMAP mount.
 *
 * Inode numbers (a mailbox's directory: its id; a message: its id,
 * generation and UID) are made and split by fs/ino.h only.
 *
 * The tree itself is an in-memory table of the mailboxes the cache knows,
 * reloaded from the cache after every LIST.  Each mailbox has a parent (a
 * mailbox id, or 0 for the root) and a file name: the last component of
 * its server name, escaped as fs_tree_file_name says below. */
#ifndef MAILFS_FS_IMAP_TREE_H
#define MAILFS_FS_IMAP_TREE_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"
#include "fs/ino.h"

/* One mailbox as the tree shows it.  Copies handed out are owned by the
 * caller (fs_mailbox_free). */
struct fs_mailbox {
	uint32_t id;
	uint32_t parent; /* mailbox id, 0 for the root */
	char *name;      /* owned: server name, raw modified UTF-7 */
	char *file;      /* owned: the directory's file name, UTF-8 */
	char delim;
	uint32_t attrs; /* CACHE_MBOX_* */
	bool selectable;
	uint32_t nsubdirs;
	uint32_t uidvalidity; /* 0 until first listed */
	uint32_t gen;         /* generation of uidvalidity */
	int64_t last_sync;    /* 0: never listed */
	int64_t mtime;        /* st_mtime: when its entries last changed
	                       * (fs/imap/dirtime.h) */
};

struct fs_tree;

int fs_tree_new(struct fs_tree **tree_r);
void fs_tree_free(struct fs_tree **tree);

/* Rebuild the table from the cache's mailbox records (deleted ones are
 * left out). */
int fs_tree_load(struct fs_tree *tree, struct cache *cache);

/* Copy of mailbox id; -ENOENT if the tree has none. */
int fs_tree_get(struct fs_tree *tree, uint32_t id, struct fs_mailbox **mb_r);

/* The current UIDVALIDITY and its generation of mailbox id, without
 * copying anything (for the hot paths: open, read). */
int fs_tree_current(struct fs_tree *tree, uint32_t id, uint32_t *uidvalidity_r,
                    uint32_t *gen_r);

/* The mailbox rm moves messages to: the one with the special use attr
 * (CACHE_MBOX_TRASH), else one called Trash at the top level or under
 * INBOX.  -ENOENT if there is none. */
int fs_tree_find_trash(struct fs_tree *tree, struct fs_mailbox **mb_r);

/* The hierarchy delimiter to use for a new top-level mailbox. */
char fs_tree_root_delim(struct fs_tree *tree);

/* Ids of the selectable mailboxes whose listing is older than before
 * (seconds since the epoch) but which were listed once; before == 1
 * gives those never listed.  *ids_r malloc'd. */
int fs_tree_synced_before(struct fs_tree *tree, int64_t before,
                          uint32_t **ids_r, size_t *n_r);

/* Ids of all selectable mailboxes; *ids_r malloc'd. */
int fs_tree_selectable(struct fs_tree *tree, uint32_t **ids_r, size_t *n_r);

/* The path of mailbox id's directory below the mount point ("A/B"); new
 * string in *path_r.  -ENOENT if the tree lacks it or a parent of it. */
int fs_tree_path(struct fs_tree *tree, uint32_t id, char **path_r);

/* The child directory called file under parent (0: root). */
int fs_tree_lookup(struct fs_tree *tree, uint32_t parent, const char *file,
                   struct fs_mailbox **mb_r);

/* Copies of all children of parent, in name order; *n_r entries. */
int fs_tree_children(struct fs_tree *tree, uint32_t parent,
                     struct fs_mailbox ***v_r, size_t *n_r);

/* Number of direct subdirectories of parent (0: root). */
uint32_t fs_tree_nsubdirs(struct fs_tree *tree, uint32_t parent);

/* Update what a listing learned; mtime 0 leaves the mtime alone. */
void fs_tree_set_state(struct fs_tree *tree, uint32_t id, uint32_t uidvalidity,
                       uint32_t gen, int64_t last_sync, int64_t mtime);

/* The mtime of directory id (0: the root) moved forward to mtime, as the
 * cache now holds it (fs/imap/dirtime.h); an older value is ignored. */
void fs_tree_set_mtime(struct fs_tree *tree, uint32_t id, int64_t mtime);

/* The root directory's mtime (fs/imap/dirtime.h; with a cache of an older
 * mailfs that holds none, the newest mailbox mtime). */
int64_t fs_tree_mtime(struct fs_tree *tree);

/* Time the mailbox list was last loaded (to know when it is stale). */
int64_t fs_tree_loaded(struct fs_tree *tree);

void fs_mailbox_free(struct fs_mailbox **mb);
void fs_mailbox_vfree(struct fs_mailbox ***v, size_t n);

/* File names.  A mailbox's directory is called after the last component
 * of its server name (what follows the last delimiter):
 *
 * - decoded from modified UTF-7 (shown as is if invalid),
 * - "%" -> "%25", "/" -> "%2F", and a leading "." of "." or ".." -> "%2E",
 * - an empty component ("a/", "b//c") -> FS_TREE_EMPTY_NAME, a lone "%",
 * - a name that starts with its only delimiter ("/x"), which has no parent
 *   mailbox, is shown at the top as the delimiter's escape and the rest:
 *   "/x" -> "%2Fx" ('.' -> "%2E", any delimiter d -> "%" and d in hex),
 * - a file name over FS_TREE_NAME_MAX bytes is cut (whole characters,
 *   whole escapes) and ends in "%~" and 16 hex digits of the SHA-256 of
 *   the whole file name: the same on every mount.
 *
 * Every "%" of a file name of a real component starts "%25", "%2F" or
 * "%2E", so the empty name, the delimiter escapes and the "%~" ending
 * never stand for another mailbox's name. */
#define FS_TREE_EMPTY_NAME  "%"
#define FS_TREE_NAME_MAX    255 /* NAME_MAX */
#define FS_TREE_HASH_SUFFIX 18  /* "%~" and 16 hex digits */

/* The file name of one component of a server name (the rules above but
 * the last two).  New string, NULL if out of memory. */
char *fs_tree_component_name(const char *raw, size_t len);

/* The file name of the mailbox called name (raw modified UTF-7) whose
 * delimiter is delim ('\0' for none), by all the rules above.  New
 * string, NULL if out of memory. */
char *fs_tree_file_name(const char *name, char delim);

#endif
