/* The state of one mount, shared by the FUSE handlers (fs/imap/ops.c), the
 * network side (fs/net/) and main (fs/main.c). */
#ifndef MAILFS_FS_MAILFS_H
#define MAILFS_FS_MAILFS_H

#include <fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "cache/cache.h"
#include "fs/options.h"
#include "fs/imap/tree.h"
#include "proto/imap_client.h"
#include "proto/login.h"
#include "proto/pop3.h"
#include "proto/url.h"

struct fs_sync;
struct fs_pop;
struct fs_newfiles;
struct fs_inval;

struct mailfs {
	struct fs_options opts;
	struct account_url url;
	struct imap_config imap; /* borrows from url and opts; no secret */
	struct imap_pace pace;   /* the server's back-off, for every
	                            connection of the mount (imap.pace) */
	struct pop3_config pop3; /* the same, for a POP3 account */
	bool is_pop;
	struct login *login;          /* owned; the secret of every login */
	char *cache_path;             /* owned */
	struct cache *cache;          /* owned */
	struct fs_tree *tree;         /* owned */
	struct fs_sync *sync;         /* owned; IMAP; NULL when offline */
	struct fs_watch *watch;       /* owned; IMAP; NULL when offline */
	struct fs_pop *pop;           /* owned; POP3; NULL when offline */
	struct fs_newfiles *newfiles; /* owned; files being written */
	struct fs_inval *inval;       /* owned; IMAP; NULL when offline */
	struct fuse_session *se;      /* owned by main */
	const char *mountpoint;       /* borrowed from main; absolute */
	bool offline;                 /* no server: serve the cache */
	bool readonly;                /* -o ro, or offline */
	bool no_open;                 /* the kernel can skip opens of files */
	/* An open was answered ENOSYS (fs/imap/ops.c): from then on the kernel
	 * sends no OPEN and no RELEASE of files, not even of files it
	 * creates (fs/imap/newfile.c). */
	atomic_bool opens_skipped;
	uid_t uid;
	gid_t gid;
};

/* The low-level operations table (fs/imap/ops.c). */
extern const struct fuse_lowlevel_ops fs_ops;

#endif
