/* Changes made through an IMAP mount that act on the server at once:
 * rm, mv of a message, mkdir, rmdir, mv of a directory, and the flags
 * attribute.  Each handler checks what it can from the cache, then hands
 * the work to a network worker (fs_sync_call) and returns; the reply is
 * sent when the server has answered, after the cache and the tree have
 * been brought up to date, so that an ls right after shows the result. */
#include "fs/imap/change.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/xattr.h>
#include <time.h>

#include "fs/attr.h"
#include "fs/imap/dirtime.h"
#include "fs/imap/newfile.h"
#include "fs/inval.h"
#include "fs/net/sync.h"
#include "fs/reply.h"
#include "proto/log.h"
#include "proto/utf7.h"

enum chg_op {
	C_DELETE,
	C_MOVE,
	C_MKDIR,
	C_RMDIR,
	C_RENAME_DIR,
	C_FLAGS,
};

struct chg {
	struct mailfs *fs;
	fuse_req_t req;
	enum chg_op op;
	struct cache_key key; /* the message */
	uint32_t dst_id;      /* C_MOVE, C_DELETE to Trash: destination */
	bool expunge;         /* C_DELETE: expunge rather than move */
	fuse_ino_t newparent; /* C_MOVE: where the kernel put the entry */
	char *newname;        /* C_MOVE: its name there; C_MKDIR: file name */
	uint32_t parent_id;   /* C_MKDIR */
	uint32_t id;          /* C_RMDIR, C_RENAME_DIR */
	char *name;           /* server name: C_MKDIR (new), C_RMDIR */
	char *oldname;        /* C_RENAME_DIR */
	char *flags;          /* C_FLAGS */
	char delim;           /* C_RENAME_DIR: the mailbox's delimiter */
	int64_t src_mtime;    /* C_DELETE, C_MOVE: new mtimes of the */
	int64_t dst_mtime;    /* directories (0: unchanged) */
};

static void chg_free(struct chg *c)
{
	free(c->newname);
	free(c->name);
	free(c->oldname);
	free(c->flags);
	free(c);
}

/* A change of kind op that req asks for, or NULL after answering ENOMEM
 * (and freeing nothing of the caller's).  newname, when not NULL, is
 * copied into ->newname. */
static struct chg *chg_new(fuse_req_t req, struct mailfs *fs, enum chg_op op,
                           const char *newname)
{
	struct chg *ch = calloc(1, sizeof(*ch));

	if (ch != NULL && newname != NULL &&
	    (ch->newname = strdup(newname)) == NULL) {
		free(ch);
		ch = NULL;
	}
	if (ch == NULL) {
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	ch->fs = fs;
	ch->req = req;
	ch->op = op;
	return ch;
}

static struct mailfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static bool can_change(fuse_req_t req)
{
	struct mailfs *fs = fs_of(req);

	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return false;
	}
	if (fs->sync == NULL) {
		fuse_reply_err(req, EIO);
		return false;
	}
	return true;
}

static void queue(struct chg *c, fs_sync_fn fn, fs_sync_cb cb)
{
	int rc = fs_sync_call(c->fs->sync, fn, c, cb, c);

	if (rc < 0) {
		log_warn("cannot change the mailbox: %s",
		         rc == -ENOTCONN ? "the server cannot be reached"
		                         : strerror(-rc));
		fs_reply_fail(c->req, FS_ERR_QUEUE, rc);
		chg_free(c);
	}
}

/* --- messages ------------------------------------------------------- */

struct move_cache {
	struct cache_key from, to;    /* to.uid 0: just forget from */
	int64_t from_mtime, to_mtime; /* out: the directories' new mtimes */
};

/* After a move: the message shows under its new key at once (with its
 * body if it was cached), and no longer under the old one. */
static int move_in_cache(struct cache_txn *txn, void *ctx)
{
	struct move_cache *m = ctx;
	struct cache_msg *msg = NULL;
	int rc;

	if (m->to.uid != 0) {
		rc = cache_msg_get(txn, m->from, &msg);
		if (rc == 0) {
			msg->key = m->to;
			rc = cache_msg_put(txn, msg);
			/* The body goes along (in pieces: without a copy). */
			if (rc == 0) {
				rc = cache_body_move(txn, m->from, m->to);
				if (rc == -ENOENT)
					rc = 0; /* its body was not cached */
			}
			cache_msg_free(&msg);
		} else if (rc == -ENOENT) {
			rc = 0;
		}
		if (rc < 0)
			return rc;
		/* A name came (fs/imap/dirtime.h); when the new UID is not
		 * known, the destination's listing finds it. */
		rc = fs_dirtime_changed(txn, m->to.mailbox_id, time(NULL),
		                        &m->to_mtime);
		if (rc < 0)
			return rc;
	}
	rc = cache_msg_delete(txn, m->from);
	if (rc == 0)
		rc = fs_dirtime_changed(txn, m->from.mailbox_id, time(NULL),
		                        &m->from_mtime);
	return rc;
}

static int delete_fn(struct imap_client *c, void *ctx)
{
	struct chg *ch = ctx;
	struct mailfs *fs = ch->fs;
	struct move_cache mc = {.from = ch->key};
	struct proto_err err = {0};
	struct fs_mailbox *dst = NULL;
	uint32_t uidv = 0, uid = 0;
	int rc;

	rc = fs_sync_open_mailbox(fs, c, ch->key.mailbox_id,
	                          ch->key.uidvalidity, true);
	if (rc < 0)
		return rc;
	if (ch->expunge) {
		rc = imap_uid_store(c, ch->key.uid, "+FLAGS", "\\Deleted",
		                    &err);
		if (rc == 0)
			rc = imap_uid_expunge(c, ch->key.uid, &err);
	} else {
		rc = fs_tree_get(fs->tree, ch->dst_id, &dst);
		if (rc == 0)
			rc = imap_uid_move(c, ch->key.uid, dst->name, &uidv,
			                   &uid, &err);
		if (rc == 0 && dst->uidvalidity != 0 &&
		    uidv == dst->uidvalidity)
			mc.to = (struct cache_key){dst->id, uidv, uid};
	}
	if (rc < 0) {
		log_warn("%s of UID %u failed: %s",
		         ch->op == C_MOVE ? "move" : "delete", ch->key.uid,
		         err.text[0] ? err.text : strerror(-rc));
		fs_mailbox_free(&dst);
		return rc;
	}
	rc = cache_run_write(fs->cache, move_in_cache, &mc);
	if (rc < 0) {
		log_warn("the cache could not record the change: %s",
		         strerror(-rc));
	} else {
		fs_tree_set_mtime(fs->tree, mc.from.mailbox_id, mc.from_mtime);
		ch->src_mtime = mc.from_mtime;
		if (mc.to.uid != 0) {
			fs_tree_set_mtime(fs->tree, mc.to.mailbox_id,
			                  mc.to_mtime);
			ch->dst_mtime = mc.to_mtime;
		}
	}
	if (mc.to.uid == 0 && dst != NULL)
		fs_sync_listing(fs->sync, dst->id, NULL, NULL);
	log_info("%s UID %u%s%s", ch->expunge ? "expunged" : "moved",
	         ch->key.uid, dst ? " to " : "", dst ? dst->name : "");
	fs_mailbox_free(&dst);
	return 0;
}

static void delete_done(void *ctx, int rc)
{
	struct chg *ch = ctx;

	fuse_reply_err(ch->req, rc < 0 ? fs_errno(FS_ERR_CHANGE, rc) : 0);
	/* The kernel moved its entry to the name mv gave; the message
	 * shows as NEWUID.eml instead.  Queued after the reply: the rename
	 * holds the directory's lock until it has its answer. */
	if (rc == 0 && ch->op == C_MOVE && ch->newname != NULL)
		fs_inval_entry(ch->fs->inval, ch->newparent, ch->newname);
	/* Their mtimes moved (rm to Trash: the kernel knows nothing of
	 * Trash's). */
	if (rc == 0 && ch->src_mtime != 0)
		fs_inval_dir(ch->fs->inval, fs_ino_dir(ch->key.mailbox_id));
	if (rc == 0 && ch->dst_mtime != 0)
		fs_inval_dir(ch->fs->inval, fs_ino_dir(ch->dst_id));
	chg_free(ch);
}

/* The message UID.eml in directory id, or -ENOENT. */
static int find_msg(struct mailfs *fs, uint32_t id, const char *name,
                    struct cache_key *key_r)
{
	uint32_t uidv, gen, uid;
	struct cache_msg *m = NULL;
	int rc;

	if (!fs_attr_parse_name(name, &uid))
		return -ENOENT;
	if (fs_tree_current(fs->tree, id, &uidv, &gen) < 0)
		return -ENOENT;
	*key_r = (struct cache_key){id, uidv, uid};
	rc = cache_msg_get_once(fs->cache, *key_r, &m);
	cache_msg_free(&m);
	return rc;
}

static uint32_t dir_id(fuse_ino_t ino)
{
	uint32_t id, gen, uid;

	if (!fs_ino_split(ino, &id, &gen, &uid) || uid != 0)
		return UINT32_MAX;
	return id;
}

void fs_change_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mailfs *fs = fs_of(req);
	uint32_t id = dir_id(parent);
	struct fs_mailbox *mb = NULL, *trash = NULL;
	struct cache_key key;
	struct chg *ch;

	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (id != UINT32_MAX && id != 0 && fs_newfile_unlink(req, id, name))
		return;
	if (id == UINT32_MAX || id == 0 || find_msg(fs, id, name, &key) < 0) {
		struct fs_mailbox *sub = NULL;

		if (id != UINT32_MAX &&
		    fs_tree_lookup(fs->tree, id, name, &sub) == 0) {
			fs_mailbox_free(&sub);
			fuse_reply_err(req, EISDIR);
			return;
		}
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (fs->opts.delete_mode == FS_DELETE_REFUSE) {
		log_info("rm refused (-o delete=refuse)");
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!can_change(req))
		return;
	ch = chg_new(req, fs, C_DELETE, NULL);
	if (ch == NULL)
		return;
	ch->key = key;
	ch->expunge = fs->opts.delete_mode == FS_DELETE_EXPUNGE;
	if (!ch->expunge) {
		if (fs_tree_find_trash(fs->tree, &trash) < 0) {
			log_warn("rm: no Trash mailbox to move the message to "
			         "(use -o delete=expunge to expunge instead)");
			fuse_reply_err(req, EPERM);
			chg_free(ch);
			return;
		}
		/* In Trash itself, rm expunges. */
		ch->expunge = trash->id == id;
		ch->dst_id = trash->id;
		fs_mailbox_free(&trash);
	}
	fs_mailbox_free(&mb);
	queue(ch, delete_fn, delete_done);
}

/* mv MSG OTHERDIR/ */
static void move_message(fuse_req_t req, uint32_t id, const char *name,
                         fuse_ino_t newparent, const char *newname)
{
	struct mailfs *fs = fs_of(req);
	uint32_t newid = dir_id(newparent);
	struct fs_mailbox *dst = NULL;
	struct cache_key key;
	struct chg *ch;

	if (find_msg(fs, id, name, &key) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (newid == id) {
		log_info("mv: a message's name is its UID; it cannot be "
		         "renamed");
		fuse_reply_err(req, EPERM);
		return;
	}
	if (newid == UINT32_MAX || newid == 0 ||
	    fs_tree_get(fs->tree, newid, &dst) < 0 || !dst->selectable) {
		fs_mailbox_free(&dst);
		fuse_reply_err(req, EPERM);
		return;
	}
	fs_mailbox_free(&dst);
	if (!can_change(req))
		return;
	ch = chg_new(req, fs, C_MOVE, newname);
	if (ch == NULL)
		return;
	ch->key = key;
	ch->dst_id = newid;
	ch->newparent = newparent;
	queue(ch, delete_fn, delete_done);
}

/* --- flags ----------------------------------------------------------- */

static int flags_fn(struct imap_client *c, void *ctx)
{
	struct chg *ch = ctx;
	struct proto_err err = {0};
	int rc;

	rc = fs_sync_open_mailbox(ch->fs, c, ch->key.mailbox_id,
	                          ch->key.uidvalidity, true);
	if (rc == 0)
		rc = imap_uid_store(c, ch->key.uid, "FLAGS", ch->flags, &err);
	if (rc < 0) {
		log_warn("setting flags of UID %u failed: %s", ch->key.uid,
		         err.text[0] ? err.text : strerror(-rc));
		return rc;
	}
	rc = cache_msg_set_flags_once(ch->fs->cache, ch->key, ch->flags, 0);
	/* A message just uploaded into a mailbox never listed is not cached
	 * yet: its listing brings it, flags and all. */
	return rc == -ENOENT ? 0 : rc;
}

static void flags_done(void *ctx, int rc)
{
	struct chg *ch = ctx;

	fuse_reply_err(ch->req, rc < 0 ? fs_errno(FS_ERR_CHANGE, rc) : 0);
	chg_free(ch);
}

/* The message behind inode ino, if it is of its mailbox's current
 * UIDVALIDITY. */
static bool msg_of(struct mailfs *fs, fuse_ino_t ino, struct cache_key *key_r)
{
	uint32_t id, gen, uid, uidv, cur;

	if (!fs_ino_split(ino, &id, &gen, &uid) || uid == 0 ||
	    fs_tree_current(fs->tree, id, &uidv, &cur) < 0 || cur != gen)
		return false;
	*key_r = (struct cache_key){id, uidv, uid};
	return true;
}

static void set_flags(fuse_req_t req, struct cache_key key, const char *value,
                      size_t size)
{
	struct mailfs *fs = fs_of(req);
	struct chg *ch;
	char *flags;

	flags = fs_attr_flags_normalise(value, size);
	if (flags == NULL) {
		log_info("user.mail.flags: not a list of IMAP flags");
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!can_change(req)) {
		free(flags);
		return;
	}
	ch = chg_new(req, fs, C_FLAGS, NULL);
	if (ch == NULL) {
		free(flags);
		return;
	}
	ch->key = key;
	ch->flags = flags;
	queue(ch, flags_fn, flags_done);
}

/* The value of header attribute name of message m; NULL if it has none,
 * and *known_r false if name is no such attribute. */
static const char *header_attr(const struct cache_msg *m, const char *name,
                               bool *known_r)
{
	static const char *const names[] = {"user.mail.subject",
	                                    "user.mail.from", "user.mail.date",
	                                    "user.mail.message_id"};
	const char *const vals[] = {m->subject, m->from, m->date,
	                            m->message_id};

	for (size_t i = 0; i < 4; i++) {
		if (strcmp(name, names[i]) == 0) {
			*known_r = true;
			return vals[i];
		}
	}
	*known_r = false;
	return NULL;
}

/* A header attribute shows the message, which never changes: setting it
 * to what it is changes nothing and succeeds (rsync -X, cp -a and tar
 * --xattrs copy it back with the message); anything else is EPERM. */
static void set_header(fuse_req_t req, struct cache_key key, const char *name,
                       const char *value, size_t size, bool remove)
{
	struct mailfs *fs = fs_of(req);
	struct cache_msg *m = NULL;
	const char *cur = NULL;
	bool known = false;
	int err = EPERM;
	int rc = cache_msg_get_once(fs->cache, key, &m);

	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_XATTR, rc);
		return;
	}
	cur = header_attr(m, name, &known);
	if (known && remove && cur == NULL)
		err = ENODATA;
	else if (known && !remove && cur != NULL && strlen(cur) == size &&
	         memcmp(cur, value, size) == 0)
		err = 0;
	cache_msg_free(&m);
	fuse_reply_err(req, err);
}

void fs_change_setxattr_msg(fuse_req_t req, struct cache_key key,
                            const char *name, const char *value, size_t size)
{
	if (fs_of(req)->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (strcmp(name, "user.mail.flags") == 0)
		set_flags(req, key, value, size);
	else if (strncmp(name, "user.mail.", 10) == 0)
		set_header(req, key, name, value, size, false);
	else
		fuse_reply_err(req, ENOTSUP);
}

/* -o mark_seen: a message read through the mount gets \Seen, as a mail
 * reader would set it.  Fire and forget: the read does not wait. */
struct seen {
	struct mailfs *fs;
	struct cache_key key;
	char *flags; /* the new flag list */
};

static int seen_fn(struct imap_client *c, void *ctx)
{
	struct seen *sn = ctx;
	struct proto_err err = {0};
	int rc;

	rc = fs_sync_open_mailbox(sn->fs, c, sn->key.mailbox_id,
	                          sn->key.uidvalidity, true);
	if (rc == 0)
		rc = imap_uid_store(c, sn->key.uid, "+FLAGS", "\\Seen", &err);
	if (rc == 0)
		rc = cache_msg_set_flags_once(sn->fs->cache, sn->key, sn->flags,
		                              0);
	else
		log_warn("mark_seen: cannot set \\Seen on UID %u: %s",
		         sn->key.uid, err.text[0] ? err.text : strerror(-rc));
	return rc;
}

static void seen_done(void *ctx, int rc)
{
	struct seen *sn = ctx;

	(void)rc;
	free(sn->flags);
	free(sn);
}

void fs_change_mark_seen(struct mailfs *fs, struct cache_key key)
{
	struct cache_msg *m = NULL;
	struct seen *sn;

	if (fs->readonly || fs->sync == NULL ||
	    cache_msg_get_once(fs->cache, key, &m) < 0)
		return;
	if (strcasestr(m->flags, "\\Seen") != NULL) {
		cache_msg_free(&m);
		return;
	}
	sn = calloc(1, sizeof(*sn));
	if (sn == NULL || asprintf(&sn->flags, "%s%s\\Seen", m->flags,
	                           m->flags[0] ? " " : "") < 0) {
		free(sn);
		cache_msg_free(&m);
		return;
	}
	cache_msg_free(&m);
	sn->fs = fs;
	sn->key = key;
	if (fs_sync_call(fs->sync, seen_fn, sn, seen_done, sn) < 0)
		seen_done(sn, -EIO);
}

void fs_change_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        const char *value, size_t size, int flags)
{
	struct mailfs *fs = fs_of(req);
	struct cache_key key;

	(void)flags;
	if (fs->readonly && strncmp(name, "user.mail.", 10) == 0) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!msg_of(fs, ino, &key)) {
		/* A directory, or a message of an older UIDVALIDITY. */
		fuse_reply_err(
		        req,
		        strncmp(name, "user.mail.", 10) == 0 &&
		                        strcmp(name, "user.mail.flags") != 0
		                ? EPERM
		                : ENOTSUP);
		return;
	}
	fs_change_setxattr_msg(req, key, name, value, size);
}

void fs_change_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct mailfs *fs = fs_of(req);
	struct cache_key key;

	if (strncmp(name, "user.mail.", 10) != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!msg_of(fs, ino, &key)) {
		fuse_reply_err(req, strcmp(name, "user.mail.flags") == 0
		                            ? ENOTSUP
		                            : EPERM);
		return;
	}
	if (strcmp(name, "user.mail.flags") == 0)
		set_flags(req, key, "", 0);
	else
		set_header(req, key, name, NULL, 0, true);
}

/* --- mailboxes ------------------------------------------------------- */

/* The server name of a new mailbox called file under parent (0: root):
 * the file name decoded (%2F, %25, %2E), encoded to modified UTF-7 and
 * joined with the parent's name by its delimiter.  raw (may be NULL): the
 * component to use as it is instead (a mailbox moved under its own file
 * name keeps its server component, even one shown shortened or empty).
 * The empty name and shortened names ("%~") cannot be made from a file
 * name: -EINVAL. */
static int server_name(struct mailfs *fs, uint32_t parent, const char *file,
                       const char *raw, char **name_r)
{
	struct fs_mailbox *p = NULL;
	char *plain = malloc(strlen(file) + 1), *o = plain, *enc = NULL;
	char delim;
	int rc;

	if (plain == NULL)
		return -ENOMEM;
	if (raw == NULL && (strcmp(file, FS_TREE_EMPTY_NAME) == 0 ||
	                    strstr(file, "%~") != NULL)) {
		log_info("mkdir: \"%s\" is the name of an empty or a "
		         "shortened mailbox name; no mailbox can be made "
		         "from it",
		         file);
		free(plain);
		return -EINVAL;
	}
	for (const char *s = file; *s; s++) {
		if (s[0] == '%' && strncasecmp(s, "%2F", 3) == 0) {
			*o++ = '/';
			s += 2;
		} else if (s[0] == '%' && strncasecmp(s, "%25", 3) == 0) {
			*o++ = '%';
			s += 2;
		} else if (s[0] == '%' && strncasecmp(s, "%2E", 3) == 0) {
			*o++ = '.';
			s += 2;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	if (parent != 0) {
		rc = fs_tree_get(fs->tree, parent, &p);
		if (rc < 0)
			goto out;
		delim = p->delim ? p->delim : fs_tree_root_delim(fs->tree);
		if (p->attrs & CACHE_MBOX_NOINFERIORS) {
			rc = -EPERM;
			goto out;
		}
	} else {
		delim = fs_tree_root_delim(fs->tree);
	}
	if (raw != NULL) {
		enc = strdup(raw);
		rc = enc ? 0 : -ENOMEM;
	} else if (strchr(plain, delim) != NULL) {
		log_info("mkdir: \"%s\" contains the server's hierarchy "
		         "delimiter '%c'",
		         plain, delim);
		rc = -EINVAL;
	} else {
		rc = utf7_encode(plain, &enc);
	}
	if (rc < 0)
		goto out;
	if (p != NULL)
		rc = asprintf(name_r, "%s%c%s", p->name, delim, enc) < 0
		             ? -ENOMEM
		             : 0;
	else
		rc = (*name_r = strdup(enc)) ? 0 : -ENOMEM;
out:
	free(enc);
	free(plain);
	fs_mailbox_free(&p);
	return rc;
}

static int refresh_list(struct mailfs *fs, struct imap_client *c)
{
	struct proto_err err = {0};
	int rc = fs_sync_list(fs, c, &err);

	if (rc < 0)
		log_warn("cannot list mailboxes: %s", err.text);
	return rc;
}

static int mkdir_fn(struct imap_client *c, void *ctx)
{
	struct chg *ch = ctx;
	struct proto_err err = {0};
	int rc = imap_create(c, ch->name, &err);

	if (rc < 0) {
		log_warn("mkdir %s failed: %s", ch->name, err.text);
		return rc;
	}
	return refresh_list(ch->fs, c);
}

static void mkdir_done(void *ctx, int rc)
{
	struct chg *ch = ctx;
	struct fs_mailbox *mb = NULL;

	if (rc == 0 && fs_tree_lookup(ch->fs->tree, ch->parent_id, ch->newname,
	                              &mb) == 0) {
		struct fuse_entry_param e = {0};

		/* Its mtime: the time it was first seen (never 1970). */
		e.ino = fs_ino_dir(mb->id);
		fs_attr_dir(ch->fs, e.ino, 0755,
		            2 + fs_tree_nsubdirs(ch->fs->tree, mb->id),
		            mb->mtime, &e.attr);
		e.attr_timeout = e.entry_timeout = 1.0;
		fuse_reply_entry(ch->req, &e);
		fs_mailbox_free(&mb);
	} else {
		fuse_reply_err(ch->req,
		               rc < 0 ? fs_errno(FS_ERR_CHANGE, rc) : EIO);
	}
	chg_free(ch);
}

void fs_change_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mailfs *fs = fs_of(req);
	uint32_t pid = dir_id(parent);
	struct fs_mailbox *sub = NULL;
	struct chg *ch;
	int rc;

	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (pid == UINT32_MAX) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (fs_tree_lookup(fs->tree, pid, name, &sub) == 0) {
		fs_mailbox_free(&sub);
		fuse_reply_err(req, EEXIST);
		return;
	}
	if (!can_change(req))
		return;
	ch = chg_new(req, fs, C_MKDIR, name);
	if (ch == NULL)
		return;
	ch->parent_id = pid;
	rc = server_name(fs, pid, name, NULL, &ch->name);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_CHANGE, rc);
		chg_free(ch);
		return;
	}
	queue(ch, mkdir_fn, mkdir_done);
}

static int rmdir_fn(struct imap_client *c, void *ctx)
{
	struct chg *ch = ctx;
	struct imap_select_info info;
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	int rc;

	rc = fs_tree_get(ch->fs->tree, ch->id, &mb);
	if (rc < 0)
		return rc;
	/* Only an empty mailbox goes: ask the server, not the cache. */
	if (mb->selectable) {
		rc = imap_select(c, mb->name, true, &info, &err);
		if (rc == 0 && info.exists > 0)
			rc = -ENOTEMPTY;
	}
	if (rc == 0) {
		/* DELETE of the selected mailbox: leave it first. */
		rc = imap_select(c, "INBOX", true, &info, &err);
		proto_err_clear(&err);
		rc = imap_delete(c, mb->name, &err);
		if (rc < 0)
			log_warn("rmdir %s failed: %s", mb->name, err.text);
	}
	fs_mailbox_free(&mb);
	if (rc < 0)
		return rc;
	return refresh_list(ch->fs, c);
}

static void plain_done(void *ctx, int rc)
{
	struct chg *ch = ctx;

	fuse_reply_err(ch->req, rc < 0 ? fs_errno(FS_ERR_CHANGE, rc) : 0);
	chg_free(ch);
}

struct has_new {
	bool any;
};

static int note_new(void *ctx, const char *name, const struct stat *st)
{
	(void)name;
	(void)st;
	((struct has_new *)ctx)->any = true;
	return 1;
}

void fs_change_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mailfs *fs = fs_of(req);
	uint32_t pid = dir_id(parent);
	struct fs_mailbox *mb = NULL;
	struct has_new hn = {false};
	struct chg *ch;

	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (pid == UINT32_MAX || fs_tree_lookup(fs->tree, pid, name, &mb) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fs_newfile_list(fs, mb->id, note_new, &hn);
	if (strcmp(mb->name, "INBOX") == 0) {
		fuse_reply_err(req, EPERM);
	} else if (mb->nsubdirs > 0 || hn.any) {
		fuse_reply_err(req, ENOTEMPTY);
	} else if (can_change(req)) {
		ch = chg_new(req, fs, C_RMDIR, NULL);
		if (ch != NULL) {
			ch->id = mb->id;
			queue(ch, rmdir_fn, plain_done);
		}
	}
	fs_mailbox_free(&mb);
}

struct rename_cache {
	const char *from, *to;
	char delim;
	struct {
		uint32_t id;
		char *name;
	} * v;
	size_t n;
	int rc;
	struct fs_dirtime_parents parents; /* the old and the new parent */
};

static int collect_renamed(const struct cache_mailbox *mb, void *ctx)
{
	struct rename_cache *r = ctx;
	size_t flen = strlen(r->from);
	void *nv;

	if (strcmp(mb->name, r->from) != 0 &&
	    !(strncmp(mb->name, r->from, flen) == 0 && mb->delim != 0 &&
	      mb->name[flen] == mb->delim))
		return 0;
	nv = realloc(r->v, (r->n + 1) * sizeof(*r->v));
	if (nv == NULL)
		return -ENOMEM;
	r->v = nv;
	r->v[r->n].id = mb->id;
	if (asprintf(&r->v[r->n].name, "%s%s", r->to, mb->name + flen) < 0)
		return -ENOMEM;
	r->n++;
	return 0;
}

/* The mailbox and everything under it get their new names in the cache,
 * keeping their ids and so their cached mail. */
static int rename_in_cache(struct cache_txn *txn, void *ctx)
{
	struct rename_cache *r = ctx;
	int rc;

	for (size_t i = 0; i < r->n; i++)
		free(r->v[i].name);
	free(r->v);
	r->v = NULL;
	r->n = 0;
	fs_dirtime_parents_clear(&r->parents);
	/* Collect first: no writes inside a foreach. */
	rc = cache_mailbox_foreach(txn, collect_renamed, r);
	for (size_t i = 0; i < r->n && rc == 0; i++)
		rc = cache_mailbox_rename(txn, r->v[i].id, r->v[i].name);
	/* One name left the old parent, one came to the new. */
	if (rc == 0)
		rc = fs_dirtime_parents_add(&r->parents, r->from, r->delim);
	if (rc == 0)
		rc = fs_dirtime_parents_add(&r->parents, r->to, r->delim);
	if (rc == 0)
		rc = fs_dirtime_parents_bump(&r->parents, txn, time(NULL));
	return rc;
}

static int rename_fn(struct imap_client *c, void *ctx)
{
	struct chg *ch = ctx;
	struct rename_cache r = {
	        .from = ch->oldname, .to = ch->name, .delim = ch->delim};
	struct imap_select_info info;
	struct proto_err err = {0};
	int rc;

	/* Renaming the selected mailbox: leave it first. */
	if (imap_selected(c) != NULL &&
	    strcmp(imap_selected(c), ch->oldname) == 0)
		imap_select(c, "INBOX", true, &info, &err);
	proto_err_clear(&err);
	rc = imap_rename(c, ch->oldname, ch->name, &err);
	if (rc < 0) {
		log_warn("mv %s %s failed: %s", ch->oldname, ch->name,
		         err.text);
		return rc;
	}
	rc = cache_run_write(ch->fs->cache, rename_in_cache, &r);
	if (rc < 0)
		log_warn("the cache could not record the rename: %s",
		         strerror(-rc));
	for (size_t i = 0; i < r.n; i++)
		free(r.v[i].name);
	free(r.v);
	fs_dirtime_parents_clear(&r.parents);
	return refresh_list(ch->fs, c);
}

static void rename_dir(fuse_req_t req, uint32_t id, const char *name,
                       fuse_ino_t newparent, const char *newname)
{
	struct mailfs *fs = fs_of(req);
	uint32_t newid = dir_id(newparent);
	struct fs_mailbox *mb = NULL, *exists = NULL;
	const char *raw = NULL;
	struct chg *ch;
	int rc;

	if (fs_tree_lookup(fs->tree, id, name, &mb) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (newid == UINT32_MAX || strcmp(mb->name, "INBOX") == 0) {
		fs_mailbox_free(&mb);
		fuse_reply_err(req, EPERM);
		return;
	}
	if (fs_tree_lookup(fs->tree, newid, newname, &exists) == 0) {
		fs_mailbox_free(&exists);
		fs_mailbox_free(&mb);
		fuse_reply_err(req, EEXIST);
		return;
	}
	if (!can_change(req)) {
		fs_mailbox_free(&mb);
		return;
	}
	ch = calloc(1, sizeof(*ch));
	if (ch == NULL || (ch->oldname = strdup(mb->name)) == NULL) {
		free(ch);
		fs_mailbox_free(&mb);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (strcmp(newname, mb->file) == 0 && mb->delim != 0 &&
	    strrchr(mb->name, mb->delim) != NULL)
		raw = strrchr(mb->name, mb->delim) + 1;
	else if (strcmp(newname, mb->file) == 0)
		raw = mb->name;
	ch->fs = fs;
	ch->req = req;
	ch->op = C_RENAME_DIR;
	ch->delim = mb->delim;
	rc = server_name(fs, newid, newname, raw, &ch->name);
	fs_mailbox_free(&mb);
	if (rc < 0) {
		fs_reply_fail(req, FS_ERR_CHANGE, rc);
		chg_free(ch);
		return;
	}
	queue(ch, rename_fn, plain_done);
}

void fs_change_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname,
                      unsigned int flags)
{
	struct mailfs *fs = fs_of(req);
	uint32_t id = dir_id(parent), newid = dir_id(newparent);
	struct fs_mailbox *sub = NULL;

	if (fs->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (flags & RENAME_EXCHANGE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (id == UINT32_MAX || newid == UINT32_MAX) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (id != 0 && newid != 0 &&
	    fs_newfile_rename(req, id, name, newid, newname))
		return;
	if (fs_tree_lookup(fs->tree, id, name, &sub) == 0) {
		fs_mailbox_free(&sub);
		rename_dir(req, id, name, newparent, newname);
		return;
	}
	move_message(req, id, name, newparent, newname);
}
