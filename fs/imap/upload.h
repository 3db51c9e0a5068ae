/* Uploads of new messages (fs/imap/newfile.h): the state machine of a file
 * being written, its record in the cache, the upload job, its retries,
 * and the resumption of the uploads the cache holds.  For fs/imap/newfile.c
 * (the FUSE operations on files being written and the closes seen) and the
 * unit tests; nothing else includes this.
 *
 * The states of a file (enum nf_state) and the only transitions between
 * them:
 *
 *   WRITING    -> STORED     its close was seen (RELEASE, inotify, unmount)
 *   STORED     -> WRITING    written again before its upload started
 *   STORED     -> UPLOADING  the upload job starts (recorded as sent first)
 *   UPLOADING  -> DONE       the server has it
 *   UPLOADING  -> FAILED     the server refused it (kept in the cache)
 *   UPLOADING  -> STORED     the connection failed: retried when it is back
 *   FAILED     -> WRITING    opened for writing again
 *   INCOMPLETE -> STORED     renamed: the user takes it as it is
 *
 * A file starts as WRITING (created) or, resumed from the cache at mount
 * time, as STORED (its close was recorded) or INCOMPLETE (it was not).
 * After that its state changes only through fs_upload_set_state(), which
 * refuses a transition not listed above (a bug: logged), logs each one,
 * and keeps the cache's record (fs_upload_persisted) in step.
 *
 * Locking: struct fs_newfiles's lock guards its list and every field of
 * every struct nf on it; the functions here that take an nf, or the
 * list, are called with it held (fs_upload_start() and fs_newfile_resume()
 * without it).  Cache transactions run under it: they are short and local.
 * Threads: FUSE workers (writes, renames), the uploader thread (starting
 * uploads), IMAP workers (the upload job), and whoever calls
 * fs_newfile_resume (mount time, reconnection). */
#ifndef MAILFS_FS_IMAP_UPLOAD_H
#define MAILFS_FS_IMAP_UPLOAD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cache/cache.h"
#include "fs/mailfs.h"

/* Changed only by fs_upload_set_state(), which keeps the cache record in
 * step. */
enum nf_state {
	NF_WRITING,    /* being written: its close not seen yet (kept in the
	                * cache write by write) */
	NF_STORED,     /* closed: waits for its upload */
	NF_UPLOADING,  /* APPEND under way */
	NF_DONE,       /* the server has it (uid, when it said) */
	NF_FAILED,     /* the server refused it; kept in the cache */
	NF_INCOMPLETE, /* found in the cache at mount time, its close never
	                * seen (a crash cut its writer off): shown as
	                * NAME.incomplete, sent only once renamed */
	NF_STATES,     /* how many there are */
};

struct nf {
	uint32_t num; /* inode: fs_ino_new(ino_id, num) */
	uint32_t id;  /* target mailbox */
	char *name;   /* owned; NULL for uploads resumed from the cache */
	char *data;   /* owned; the message */
	size_t len, cap;
	bool dirty;      /* the cache lacks a change (its commit failed) */
	bool maybe_sent; /* a crash may have left it on the server */
	int64_t mtime;   /* 0: let the server choose the INTERNALDATE */
	char *flags;     /* owned: user.mail.flags set on it (normalised);
	                  * NULL for none.  Sent with the APPEND; set while
	                  * it is under way, stored right after it */
	uint32_t uidvalidity, uid; /* DONE: what the server made of it (uid
	                            * 0: it did not say) */
	enum nf_state state;
	uint64_t seq;       /* the pending upload in the cache, 0 for none */
	unsigned opens;     /* descriptors the kernel told us of (CREATE,
	                     * OPEN), minus their RELEASEs */
	bool untracked;     /* written through a descriptor the kernel did
	                     * not tell us of: only inotify sees its close */
	uint32_t ino_id;    /* the mailbox in its inode number (fixed) */
	bool queued;        /* an upload job is queued or running */
	int64_t touched_ms; /* last change, close or rename (monotonic) */
	int64_t done_ms;    /* when the server confirmed it */
	struct nf *next;
};

struct fs_newfiles {
	pthread_mutex_t lock;
	struct nf *list; /* owned */
	uint32_t next_num;
	/* The uploader: starts the upload of a closed file once nothing
	 * happened to it for a moment (see uploader_main). */
	struct mailfs *fs;
	pthread_t thread;
	pthread_t closes_thread; /* records closes as soon as they come */
	pthread_cond_t cond;
	bool started, closes_started, stop;
	struct fs_closes *closes;  /* owned; NULL: no closes are seen */
	struct creating *creating; /* owned: CREATEs waiting for a watch */
	bool rewatch; /* a file was moved into a mailbox not watched */
};

/* CREATEs waiting for their mailbox to be watched (fs/imap/newfile.c). */
struct creating;

/* The name of a state, for logs. */
const char *fs_upload_state_name(enum nf_state s);

/* Is from -> to one of the transitions listed above? */
bool fs_upload_allowed(enum nf_state from, enum nf_state to);

/* The state the cache records for a file in state s (enum
 * cache_pending_state): whether its close was seen is what decides,
 * after a crash, if it may be sent (fs_newfile_resume); maybe_sent: an
 * APPEND of it may have reached the server. */
uint32_t fs_upload_persisted(enum nf_state s, bool maybe_sent);

/* The one place f->state changes (the lock is held): the transition is
 * checked and logged, and the cache record follows.  If the record
 * cannot follow, f is marked dirty: it is not uploaded, and its next
 * change stores it whole, state included. */
void fs_upload_set_state(struct cache *cache, struct nf *f,
                         enum nf_state state);

/* Mark f's upload as queued if it is STORED and not queued yet; true if
 * the caller must then call fs_upload_start() (after unlocking). */
bool fs_upload_want(struct nf *f);

/* Queue the upload of file num on a network worker (without the lock).
 * When the server cannot be reached it waits in the cache until
 * fs_newfile_resume(). */
void fs_upload_start(struct mailfs *fs, uint32_t num);

/* Commit f's change to the cache before it is answered (the lock is
 * held): the write (buf, size at off) as a part, or (buf NULL) the whole
 * file.  0, or the errno to answer (fs/reply.h: FS_ERR_KEEP), logged. */
int fs_upload_keep(struct mailfs *fs, struct nf *f, const char *buf,
                   size_t size, off_t off);

/* user.mail.flags was set on f (the lock is held): flags (normalised,
 * "" for none) replace what it had, in memory and in its record in the
 * cache.  0, or the errno to answer (logged). */
int fs_upload_set_flags(struct mailfs *fs, struct nf *f, const char *flags);

/* Header field name of the message data (the first 64 KB), decoded from
 * MIME words if decode; new string, NULL if there is none. */
char *fs_upload_header(const char *data, size_t len, const char *name,
                       bool decode);

/* f was renamed (the lock is held): its record follows. */
void fs_upload_retarget(struct mailfs *fs, struct nf *f);

/* Forget the pending upload seq in the cache.  0 or a negative errno. */
int fs_upload_drop(struct mailfs *fs, uint64_t seq);

/* The file in n's list called name in mailbox id, not uploaded yet (the
 * lock is held); NULL if none. */
struct nf *fs_upload_find_name(struct fs_newfiles *n, uint32_t id,
                               const char *name);

void fs_upload_nf_free(struct nf *f);

/* Milliseconds of the monotonic clock. */
int64_t fs_upload_now_ms(void);

#endif
