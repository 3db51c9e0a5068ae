/* Inode numbers: the one place they are made or split.
 *
 * An inode number is computed from the cache key, never from a counter
 * (files being written aside), so that a file has the same number on every
 * mount: tools that remember inodes (rsync, backup programs, find -inum)
 * see the same file as the same file.  The layout below is a contract with
 * every user of a mount and must never change (tests/test_ino.c holds a
 * table of known numbers):
 *
 *                        bits 63..44   43..32          31..0
 *   root                 FUSE_ROOT_ID (1)
 *   mailbox directory    id            0               0
 *   message UID.eml      id            generation      UID
 *   file being written   id            FS_INO_NEW_GEN  num
 *   POP3 INBOX           1             0               0
 *   POP3 N.eml           1             0               N
 *
 * - id: the mailbox's permanent cache id, 1 .. FS_INO_MAX_ID (cache/ hands
 *   them out; fs/imap/tree.c leaves a mailbox with a larger one out, with
 *   a log line).  A POP3 mount shows one directory, INBOX, as id
 *   FS_POP_INBOX_ID.
 * - generation: the cache's number for the mailbox's UIDVALIDITY (struct
 *   cache_mailbox's uidvalidities[]: 0 for the first one seen, and the next
 *   number for each new one; never renumbered), 0 .. FS_INO_MAX_GEN.
 * - UID: the message's IMAP UID, 1 .. UINT32_MAX (0 is never a UID); for
 *   POP3 the message's number in download order, from 1.
 * - num: a file being written into mailbox id (fs/imap/newfile.h) has no
 *   cache key yet: num is a counter of the mount, from 1.  Its number is
 *   only valid for that mount.
 *
 * So no two kinds share a number: the root is below 2^44, every other
 * number has an id; a directory has UID 0 and generation 0; a file being
 * written has the generation no message may have.
 *
 * The guard.  The cache numbers generations without a bound, the inode
 * has 12 bits for them: generation FS_INO_NEW_GEN (4095) would be taken
 * for a file being written, 4096 and more would spill into the mailbox id.
 * fs_ino_msg() therefore refuses (returns 0, never an inode number) a
 * generation above FS_INO_MAX_GEN, as it refuses an id out of range or
 * UID 0; its callers answer EIO with a log line.  That takes a mailbox
 * whose UIDVALIDITY changed 4,095 times: then listing it fails with
 * "Input/output error" and the log says why; its messages stay in the
 * cache, untouched, and no other mailbox is affected.
 *
 * Everything here is pure: any thread may call it. */
#ifndef MAILFS_FS_INO_H
#define MAILFS_FS_INO_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

#define FS_INO_ID_SHIFT  44
#define FS_INO_GEN_SHIFT 32
#define FS_INO_ID_BITS   20
#define FS_INO_GEN_BITS  12
#define FS_INO_GEN_MASK  ((1u << FS_INO_GEN_BITS) - 1)
#define FS_INO_MAX_ID    ((1u << FS_INO_ID_BITS) - 1)
/* The generation of every file being written; no message has it. */
#define FS_INO_NEW_GEN   FS_INO_GEN_MASK
/* The largest generation a message's inode number can hold. */
#define FS_INO_MAX_GEN   (FS_INO_NEW_GEN - 1)

/* The INBOX directory of a POP3 mount, as a mailbox id. */
#define FS_POP_INBOX_ID 1u

static inline fuse_ino_t fs_ino_make(uint32_t id, uint32_t gen, uint32_t low)
{
	return (fuse_ino_t)id << FS_INO_ID_SHIFT |
	       (fuse_ino_t)gen << FS_INO_GEN_SHIFT | low;
}

/* Mailbox id's directory; 0 is the root.  0 for an id out of range. */
static inline fuse_ino_t fs_ino_dir(uint32_t id)
{
	if (id == 0)
		return FUSE_ROOT_ID;
	return id <= FS_INO_MAX_ID ? fs_ino_make(id, 0, 0) : 0;
}

/* Message uid of generation gen in mailbox id.  0 (refused: see above)
 * when id is 0 or out of range, gen above FS_INO_MAX_GEN, or uid 0. */
static inline fuse_ino_t fs_ino_msg(uint32_t id, uint32_t gen, uint32_t uid)
{
	if (id == 0 || id > FS_INO_MAX_ID || gen > FS_INO_MAX_GEN || uid == 0)
		return 0;
	return fs_ino_make(id, gen, uid);
}

/* File num being written into mailbox id; 0 when id is out of range or
 * num is 0. */
static inline fuse_ino_t fs_ino_new(uint32_t id, uint32_t num)
{
	if (id == 0 || id > FS_INO_MAX_ID || num == 0)
		return 0;
	return fs_ino_make(id, FS_INO_NEW_GEN, num);
}

/* Is ino a file being written (fs_ino_new)? */
static inline bool fs_ino_is_new(fuse_ino_t ino)
{
	return ino != FUSE_ROOT_ID &&
	       ((ino >> FS_INO_GEN_SHIFT) & FS_INO_GEN_MASK) == FS_INO_NEW_GEN;
}

/* The POP3 INBOX directory and its message N.eml (0 for num 0). */
static inline fuse_ino_t fs_ino_pop_inbox(void)
{
	return fs_ino_dir(FS_POP_INBOX_ID);
}

static inline fuse_ino_t fs_ino_pop_msg(uint32_t num)
{
	return fs_ino_msg(FS_POP_INBOX_ID, 0, num);
}

/* Split an inode number: the root gives id 0; a directory uid 0; a
 * message (or a file being written: fs_ino_is_new) its id, generation and
 * UID (num).  Returns false for numbers never handed out. */
static inline bool fs_ino_split(fuse_ino_t ino, uint32_t *id_r, uint32_t *gen_r,
                                uint32_t *uid_r)
{
	if (ino == FUSE_ROOT_ID) {
		*id_r = *gen_r = *uid_r = 0;
		return true;
	}
	*id_r = (uint32_t)(ino >> FS_INO_ID_SHIFT);
	*gen_r = (uint32_t)(ino >> FS_INO_GEN_SHIFT) & FS_INO_GEN_MASK;
	*uid_r = (uint32_t)ino;
	if (*id_r == 0)
		return false;
	return *uid_r != 0 || *gen_r == 0;
}

#endif
