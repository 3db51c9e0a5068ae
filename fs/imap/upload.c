/* Uploads of new messages: the state machine, the cache's record of each
 * file being written, the upload job and its retries, and resumption
 * (see fs/imap/upload.h). */
#include "fs/imap/upload.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fs/imap/dirtime.h"
#include "fs/inval.h"
#include "fs/net/sync.h"
#include "fs/reply.h"
#include "proto/log.h"
#include "proto/mime.h"

static const char *const nf_state_names[] = {
        [NF_WRITING] = "writing",     [NF_STORED] = "closed",
        [NF_UPLOADING] = "uploading", [NF_DONE] = "uploaded",
        [NF_FAILED] = "refused",      [NF_INCOMPLETE] = "incomplete",
};

/* What a name shown for an incomplete file ends with. */
#define INCOMPLETE_SUFFIX ".incomplete"

int64_t fs_upload_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fs_upload_nf_free(struct nf *f)
{
	if (f == NULL)
		return;
	free(f->name);
	free(f->data);
	free(f->flags);
	free(f);
}

struct nf *fs_upload_find_name(struct fs_newfiles *n, uint32_t id,
                               const char *name)
{
	for (struct nf *f = n->list; f != NULL; f = f->next)
		if (f->id == id && f->name != NULL &&
		    strcmp(f->name, name) == 0 && f->state != NF_DONE)
			return f;
	return NULL;
}

/* The transitions of fs/imap/upload.h's drawing. */
static const bool allowed[NF_STATES][NF_STATES] = {
        [NF_WRITING] = {[NF_STORED] = true},
        [NF_STORED] = {[NF_WRITING] = true, [NF_UPLOADING] = true},
        [NF_UPLOADING] =
                {[NF_STORED] = true, [NF_DONE] = true, [NF_FAILED] = true},
        [NF_FAILED] = {[NF_WRITING] = true},
        [NF_INCOMPLETE] = {[NF_STORED] = true},
};

const char *fs_upload_state_name(enum nf_state s)
{
	return (unsigned)s < NF_STATES ? nf_state_names[s] : "?";
}

bool fs_upload_allowed(enum nf_state from, enum nf_state to)
{
	return (unsigned)from < NF_STATES && (unsigned)to < NF_STATES &&
	       allowed[from][to];
}

uint32_t fs_upload_persisted(enum nf_state s, bool maybe_sent)
{
	switch (s) {
	case NF_STORED:
		return maybe_sent ? CACHE_PENDING_SENT : CACHE_PENDING_CLOSED;
	case NF_UPLOADING: return CACHE_PENDING_SENT;
	case NF_FAILED: return CACHE_PENDING_FAILED;
	default: return CACHE_PENDING_NEW;
	}
}

static uint32_t persisted(const struct nf *f)
{
	return fs_upload_persisted(f->state, f->maybe_sent);
}

struct state_rec {
	uint64_t seq;
	uint32_t state;
};

static int pending_state(struct cache_txn *txn, void *ctx)
{
	struct state_rec *s = ctx;

	return cache_pending_set_state(txn, s->seq, s->state);
}

void fs_upload_set_state(struct cache *cache, struct nf *f, enum nf_state state)
{
	uint32_t before = persisted(f);
	struct state_rec ss;
	int rc;

	if (f->state == state)
		return;
	if (!fs_upload_allowed(f->state, state)) {
		log_err("new file %s: no transition %s -> %s (a bug); left %s",
		        f->name ? f->name : "(resumed)",
		        fs_upload_state_name(f->state),
		        fs_upload_state_name(state),
		        fs_upload_state_name(f->state));
		return;
	}
	log_debug("new file %s: %s -> %s", f->name ? f->name : "(resumed)",
	          fs_upload_state_name(f->state), fs_upload_state_name(state));
	f->state = state;
	if (state == NF_STORED)
		f->touched_ms = fs_upload_now_ms();
	ss = (struct state_rec){f->seq, persisted(f)};
	if (f->seq == 0 || f->dirty || ss.state == before)
		return;
	rc = cache_run_write(cache, pending_state, &ss);
	if (rc < 0) {
		log_err("cannot record the state of %s in the cache: %s",
		        f->name ? f->name : "an upload", strerror(-rc));
		f->dirty = true;
	}
}

/* --- uploads ----------------------------------------------------------- */

struct upload {
	struct mailfs *fs;
	uint32_t num;
};

static bool has_bare_lf(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			return true;
	return false;
}

static char *to_crlf(const char *p, size_t len, size_t *len_r)
{
	char *out = malloc(2 * len + 1), *o = out;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			*o++ = '\r';
		*o++ = p[i];
	}
	*len_r = (size_t)(o - out);
	return out;
}

struct stored {
	uint32_t id, uidvalidity, uid;
	const char *data;
	size_t len;
	int64_t date;
	uint64_t seq;
	char *flags;   /* borrowed: what the message has on the server */
	int64_t mtime; /* out: its directory's new mtime, 0 if not */
};

char *fs_upload_header(const char *data, size_t len, const char *name,
                       bool decode)
{
	size_t hlen = len < 65536 ? len : 65536;
	char *v = NULL;
	int rc = decode ? mime_header_decoded(data, hlen, name, &v)
	                : mime_header_field(data, hlen, name, &v);

	return rc == 0 ? v : NULL;
}

/* The server has the message: show it as UID.eml at once (no re-list,
 * no re-fetch) and forget the pending upload, in one transaction. */
static int store_done(struct cache_txn *txn, void *ctx)
{
	struct stored *s = ctx;
	int rc = 0;

	if (s->uid != 0) {
		char *subject =
		        fs_upload_header(s->data, s->len, "Subject", true);
		char *from = fs_upload_header(s->data, s->len, "From", true);
		char *date = fs_upload_header(s->data, s->len, "Date", true);
		char *msgid =
		        fs_upload_header(s->data, s->len, "Message-ID", false);
		struct cache_msg m = {
		        .key = {s->id, s->uidvalidity, s->uid},
		        .size = s->len,
		        .internaldate = s->date,
		        .flags = s->flags != NULL ? s->flags : "",
		        .subject = subject,
		        .from = from,
		        .date = date,
		        .message_id = msgid,
		};

		rc = cache_msg_put(txn, &m);
		if (rc == 0)
			rc = cache_body_put(txn, m.key, s->data, s->len);
		/* A name came: the directory changed (fs/imap/dirtime.h). */
		if (rc == 0)
			rc = fs_dirtime_changed(txn, s->id, time(NULL),
			                        &s->mtime);
		free(subject);
		free(from);
		free(date);
		free(msgid);
	}
	if (rc == 0 && s->seq != 0)
		rc = cache_pending_delete(txn, s->seq);
	return rc;
}

/* Is a message with this Message-ID and size already in the mailbox? (A
 * crash between APPEND and its answer.) */
struct size_match {
	size_t len;
	bool found;
};

static void size_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct size_match *s = ctx;

	if (m->size == s->len)
		s->found = true;
}

static bool already_there(struct mailfs *fs, struct imap_client *c, uint32_t id,
                          const char *data, size_t len)
{
	char *msgid = fs_upload_header(data, len, "Message-ID", false);
	struct size_match sm = {.len = len};
	struct proto_err err = {0};
	uint32_t *uids = NULL;
	char *set = NULL;
	size_t n = 0;

	if (msgid == NULL || msgid[0] == '\0' ||
	    fs_sync_open_mailbox(fs, c, id, 0, false) < 0 ||
	    imap_search_header(c, "Message-ID", msgid, &uids, &n, &err) < 0)
		goto out;
	if (n > 0 && (set = imap_uidset_format(uids, n)) != NULL)
		imap_fetch_meta(c, set, 0, size_cb, &sm, &err);
	if (sm.found)
		log_notice("upload %s was already on the server (sent before "
		           "a crash); not sent again",
		           msgid);
out:
	free(set);
	free(uids);
	free(msgid);
	return sm.found;
}

/* The flags an APPEND carries for the flags set on a file (user.mail.flags).
 * \Deleted is left out: a restored message marked for deletion would be
 * expunged by the next client that expunges the mailbox, and a backup is
 * restored to keep mail, not to lose it (logged).  New string. */
static char *append_flags(const char *flags, const char *name)
{
	char *out = malloc(strlen(flags) + 1), *o = out;
	bool dropped = false;

	if (out == NULL)
		return NULL;
	for (const char *p = flags; *p;) {
		size_t len = strcspn(p, " ");

		if (len == 8 && strncasecmp(p, "\\Deleted", 8) == 0) {
			dropped = true;
		} else if (len > 0) {
			if (o != out)
				*o++ = ' ';
			memcpy(o, p, len);
			o += len;
		}
		p += len;
		p += strspn(p, " ");
	}
	*o = '\0';
	if (dropped)
		log_info(
		        "%s: \\Deleted is not carried by its upload (a restored "
		        "message would be expunged with the next expunge)",
		        name ? name : "an upload");
	return out;
}

/* flags without its keywords (the system flags only); new string. */
static char *system_flags(const char *flags)
{
	char *out = malloc(strlen(flags) + 1), *o = out;

	if (out == NULL)
		return NULL;
	for (const char *p = flags; *p;) {
		size_t len = strcspn(p, " ");

		if (len > 0 && p[0] == '\\') {
			if (o != out)
				*o++ = ' ';
			memcpy(o, p, len);
			o += len;
		}
		p += len;
		p += strspn(p, " ");
	}
	*o = '\0';
	return out;
}

/* A server that refused the keywords of an APPEND (no PERMANENTFLAGS \*)
 * is logged once per mount, not once per message. */
static atomic_bool keywords_refused_logged;

/* APPEND st to mailbox box with flags; when the server refuses it, once
 * more without the keywords (if any: a server without PERMANENTFLAGS \*
 * may refuse unknown ones; the message matters more), then with CRLF line
 * ends (if it has bare LF: some servers refuse those).  *flags_r: the
 * flags it was sent with at last (owned by the caller).  *converted_r:
 * the converted bytes, if it came to that (st->data then points there). */
static int append_tries(struct mailfs *fs, struct imap_client *c,
                        const char *box, const char *name, struct stored *st,
                        char **flags_r, char **converted_r, uint32_t *uidv_r,
                        uint32_t *uid_r, struct proto_err *err)
{
	int rc = imap_append(c, box, *flags_r, (time_t)st->date, 0, st->data,
	                     st->len, uidv_r, uid_r, err);

	if (rc == -EPERM) {
		char *sys = system_flags(*flags_r);

		if (sys != NULL && strcmp(sys, *flags_r) != 0) {
			if (!atomic_exchange(&keywords_refused_logged, true))
				log_warn("%s refused an upload with keywords "
				         "(%s: %s); sent again without them "
				         "(logged once)",
				         fs->url.host, *flags_r, err->text);
			proto_err_clear(err);
			free(*flags_r);
			*flags_r = sys;
			sys = NULL;
			rc = imap_append(c, box, *flags_r, (time_t)st->date, 0,
			                 st->data, st->len, uidv_r, uid_r, err);
		}
		free(sys);
	}
	if (rc == -EPERM && has_bare_lf(st->data, st->len)) {
		size_t clen;

		/* Some servers refuse bare LF; only then is anything
		 * changed, and it is logged. */
		*converted_r = to_crlf(st->data, st->len, &clen);
		if (*converted_r != NULL) {
			log_notice("%s refused %s (%s); sending it again with "
			           "CRLF line ends",
			           fs->url.host, name ? name : "an upload",
			           err->text);
			proto_err_clear(err);
			st->data = *converted_r;
			st->len = clen;
			rc = imap_append(c, box, *flags_r, (time_t)st->date, 0,
			                 st->data, st->len, uidv_r, uid_r, err);
		}
	}
	return rc;
}

/* Set flags on the message an upload became (flags set on the file while
 * its APPEND was under way). */
static int store_flags_after(struct mailfs *fs, struct imap_client *c,
                             uint32_t id, uint32_t uidv, uint32_t uid,
                             const char *flags, const char *name)
{
	struct proto_err err = {0};
	int rc = fs_sync_open_mailbox(fs, c, id, uidv, true);

	if (rc == 0)
		rc = imap_uid_store(c, uid, "FLAGS", flags, &err);
	if (rc < 0)
		log_warn("%s: uploaded as UID %u, but its flags (%s) could not "
		         "be set: %s",
		         name ? name : "an upload", uid, flags,
		         err.text[0] ? err.text : strerror(-rc));
	return rc;
}

static int upload_fn(struct imap_client *c, void *ctx)
{
	struct upload *u = ctx;
	struct mailfs *fs = u->fs;
	struct fs_newfiles *n = fs->newfiles;
	struct stored st = {0};
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	char *converted = NULL, *name = NULL, *asked = NULL, *sent = NULL;
	bool maybe_sent;
	uint32_t uidv = 0, uid = 0;
	struct nf *f;
	int rc;

	pthread_mutex_lock(&n->lock);
	for (f = n->list; f != NULL && f->num != u->num; f = f->next)
		;
	if (f == NULL || f->state != NF_STORED || f->dirty) {
		if (f != NULL)
			f->queued = false;
		pthread_mutex_unlock(&n->lock);
		return 0;
	}
	/* Recorded as sent before the APPEND: after a crash it is first
	 * looked for on the server (already_there). */
	fs_upload_set_state(fs->cache, f, NF_UPLOADING);
	st.id = f->id;
	st.data = f->data;
	st.len = f->len;
	st.date = f->mtime;
	st.seq = f->seq;
	maybe_sent = f->maybe_sent;
	name = f->name ? strdup(f->name) : NULL;
	asked = strdup(f->flags != NULL ? f->flags : "");
	pthread_mutex_unlock(&n->lock);

	if (asked == NULL || (sent = append_flags(asked, name)) == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = fs_tree_get(fs->tree, st.id, &mb);
	if (rc < 0) {
		log_err("upload %s: its mailbox is gone; kept in the cache",
		        name ? name : "(resumed)");
		goto fail;
	}
	if (maybe_sent && already_there(fs, c, st.id, st.data, st.len)) {
		uid = 0;
		goto done;
	}
	rc = append_tries(fs, c, mb->name, name, &st, &sent, &converted, &uidv,
	                  &uid, &err);
	if (rc < 0) {
		log_err("upload of %s to %s failed: %s",
		        name ? name : "a message", mb->name,
		        err.text[0] ? err.text : strerror(-rc));
		goto fail;
	}
done:
	st.uidvalidity = uidv;
	st.uid = (mb->uidvalidity != 0 && uidv == mb->uidvalidity) ? uid : 0;
	/* Bytes with bare LF line ends are stored by some servers with CRLF:
	 * what the server serves is the truth, so such a message is not
	 * cached from what was sent; the listing brings it. */
	if (has_bare_lf(st.data, st.len))
		st.uid = 0;
	if (st.date == 0)
		st.date = time(NULL);
	log_info("uploaded %s to %s as UID %u%s%s", name ? name : "a message",
	         mb->name, uid, sent[0] ? " with flags " : "", sent);
	/* Flags set on the file while the APPEND was under way are stored
	 * now; the state becomes DONE in the same hold of the lock as the
	 * last look at them, so that a later change finds the message
	 * (fs/imap/newfile.c). */
	for (int tries = 0;; tries++) {
		char *want = NULL;

		pthread_mutex_lock(&n->lock);
		if (strcmp(f->flags != NULL ? f->flags : "", asked) != 0 &&
		    uid != 0 && tries < 8)
			want = strdup(f->flags != NULL ? f->flags : "");
		else if (strcmp(f->flags != NULL ? f->flags : "", asked) != 0)
			log_warn("%s: its flags changed during its upload, "
			         "but the server did not say its UID: set them "
			         "on the message (UID.eml)",
			         name ? name : "an upload");
		if (want == NULL) {
			st.flags = sent;
			rc = cache_run_write(fs->cache, store_done, &st);
			if (rc < 0)
				log_err("upload done, but the cache could not "
				        "record it: %s",
				        strerror(-rc));
			f->seq = 0; /* forgotten by store_done */
			f->uidvalidity = uidv;
			f->uid = uid;
			fs_upload_set_state(fs->cache, f, NF_DONE);
			f->queued = false;
			f->done_ms = fs_upload_now_ms();
			free(f->data);
			f->data = NULL;
			f->cap = 0;
			pthread_mutex_unlock(&n->lock);
			break;
		}
		pthread_mutex_unlock(&n->lock);
		free(asked);
		asked = want;
		if (store_flags_after(fs, c, st.id, uidv, uid, want, name) ==
		    0) {
			free(sent);
			sent = strdup(want);
			if (sent == NULL)
				sent = strdup("");
		}
		if (sent == NULL)
			break; /* out of memory: the listing will tell */
	}
	if (st.uid == 0 && fs->sync != NULL)
		fs_sync_listing(fs->sync, st.id, NULL, NULL);
	else if (st.mtime != 0) {
		fs_tree_set_mtime(fs->tree, st.id, st.mtime);
		fs_inval_dir(fs->inval, fs_ino_dir(st.id));
	}
	/* The name it was written under leaves listings (UID.eml shows
	 * instead) but still resolves for a while: see DONE_GRACE_MS. */
	rc = 0;
	goto out;
fail:
	pthread_mutex_lock(&n->lock);
	/* A refusal is final (kept for the user); a lost connection is
	 * retried when the server is back. */
	if (rc == -EPERM || rc == -EINVAL || rc == -ENOENT) {
		fs_upload_set_state(fs->cache, f, NF_FAILED);
	} else {
		f->maybe_sent = true;
		fs_upload_set_state(fs->cache, f, NF_STORED);
	}
	f->queued = false;
	pthread_mutex_unlock(&n->lock);
out:
	free(converted);
	free(name);
	free(asked);
	free(sent);
	fs_mailbox_free(&mb);
	return rc;
}

static void upload_done(void *ctx, int rc)
{
	(void)rc;
	free(ctx);
}

void fs_upload_start(struct mailfs *fs, uint32_t num)
{
	struct upload *u = malloc(sizeof(*u));

	if (u == NULL)
		return;
	u->fs = fs;
	u->num = num;
	if (fs->sync == NULL ||
	    fs_sync_call(fs->sync, upload_fn, u, upload_done, u) < 0) {
		struct nf *f;
		bool warn = false;

		free(u);
		pthread_mutex_lock(&fs->newfiles->lock);
		for (f = fs->newfiles->list; f != NULL; f = f->next) {
			if (f->num == num) {
				f->queued = false;
				/* Tried again when the server is back. */
				f->touched_ms = INT64_MAX / 2;
				warn = true;
			}
		}
		pthread_mutex_unlock(&fs->newfiles->lock);
		if (warn)
			log_notice("the server cannot be reached: the upload "
			           "waits in the cache until it is back");
	}
}

bool fs_upload_want(struct nf *f)
{
	if (f->state != NF_STORED || f->queued)
		return false;
	f->queued = true;
	return true;
}

struct resume_ctx {
	struct mailfs *fs;
	uint64_t *seqs;
	size_t n, cap;
};

static int resume_cb(const struct cache_pending *p, void *ctx)
{
	struct resume_ctx *r = ctx;

	if (p->state == CACHE_PENDING_FAILED)
		return 0;
	if (r->n == r->cap) {
		size_t ncap = r->cap ? r->cap * 2 : 16;
		uint64_t *nv = realloc(r->seqs, ncap * sizeof(*nv));

		if (nv == NULL)
			return -ENOMEM;
		r->seqs = nv;
		r->cap = ncap;
	}
	r->seqs[r->n++] = p->seq;
	return 0;
}

static int resume_read(struct cache_txn *txn, void *ctx)
{
	return cache_pending_foreach(txn, resume_cb, ctx);
}

struct get_pending {
	uint64_t seq;
	struct cache_pending *p;
};

static int get_pending(struct cache_txn *txn, void *ctx)
{
	struct get_pending *g = ctx;

	return cache_pending_get(txn, g->seq, true, &g->p);
}

/* The name an incomplete file is shown under in mailbox id (the lock is
 * held): NAME.incomplete (NAME as it was written; upload-SEQ when the
 * record is older than names), with .2, .3 ... if that is taken.
 * Owned by the caller; NULL without memory. */
static char *incomplete_name(struct fs_newfiles *n, uint32_t id,
                             const char *name, uint64_t seq)
{
	char base[64], *out = NULL;

	if (name == NULL || name[0] == '\0') {
		snprintf(base, sizeof(base), "upload-%llu",
		         (unsigned long long)seq);
		name = base;
	}
	for (unsigned k = 1; k < 1000; k++) {
		int rc = k == 1 ? asprintf(&out, "%s" INCOMPLETE_SUFFIX, name)
		                : asprintf(&out, "%s" INCOMPLETE_SUFFIX ".%u",
		                           name, k);

		if (rc < 0)
			return NULL;
		if (fs_upload_find_name(n, id, out) == NULL)
			break;
		free(out);
		out = NULL;
	}
	return out;
}

static void log_incomplete(struct mailfs *fs, uint32_t id, const char *name,
                           uint64_t size)
{
	struct fs_mailbox *mb = NULL;

	fs_tree_get(fs->tree, id, &mb);
	log_warn("%s/%s: %llu bytes written before mailfs stopped, but never "
	         "closed (its writer may have been cut off): not uploaded. "
	         "It stays in the cache: rename it to upload it as it is, or "
	         "remove it",
	         mb != NULL ? mb->name : "?", name ? name : "?",
	         (unsigned long long)size);
	fs_mailbox_free(&mb);
}

void fs_newfile_resume(struct mailfs *fs)
{
	struct resume_ctx r = {.fs = fs};
	struct fs_newfiles *n = fs->newfiles;

	if (cache_run_read(fs->cache, resume_read, &r) < 0)
		return;
	for (size_t i = 0; i < r.n; i++) {
		struct get_pending g = {.seq = r.seqs[i]};
		struct nf *f, *have;
		char *shown;
		bool incomplete;
		uint32_t num;

		pthread_mutex_lock(&n->lock);
		for (have = n->list; have != NULL; have = have->next)
			if (have->seq == r.seqs[i])
				break;
		if (have != NULL) {
			bool go;

			if (have->touched_ms == INT64_MAX / 2)
				have->touched_ms = 0;
			go = fs_upload_want(have);
			num = have->num;
			pthread_mutex_unlock(&n->lock);
			if (go)
				fs_upload_start(fs, num);
			continue;
		}
		pthread_mutex_unlock(&n->lock);
		if (cache_run_read(fs->cache, get_pending, &g) < 0)
			continue;
		f = calloc(1, sizeof(*f));
		if (f == NULL) {
			cache_pending_free(&g.p);
			continue;
		}
		f->id = f->ino_id = g.p->mailbox_id;
		f->queued = true;
		f->len = f->cap = g.p->size;
		f->data = malloc(f->len ? f->len : 1);
		if (f->data == NULL) {
			free(f);
			cache_pending_free(&g.p);
			continue;
		}
		memcpy(f->data, g.p->data, f->len);
		f->mtime = g.p->internaldate;
		f->seq = g.p->seq;
		if (g.p->flags[0] != '\0')
			f->flags = strdup(g.p->flags); /* NULL: none, logged */
		if (g.p->flags[0] != '\0' && f->flags == NULL)
			log_err("upload %llu: out of memory for its flags; "
			        "sent without them",
			        (unsigned long long)g.p->seq);
		f->maybe_sent = g.p->state == CACHE_PENDING_SENT;
		f->state = NF_STORED;
		/* Its close was never seen: its writer may have been cut off
		 * by the crash; what it holds may be a prefix. */
		if (g.p->state == CACHE_PENDING_NEW) {
			f->queued = false;
			f->state = NF_INCOMPLETE;
		}
		pthread_mutex_lock(&n->lock);
		f->num = ++n->next_num;
		if (f->state == NF_INCOMPLETE &&
		    (f->name = incomplete_name(n, f->id, g.p->name, f->seq)) ==
		            NULL) {
			pthread_mutex_unlock(&n->lock);
			cache_pending_free(&g.p);
			fs_upload_nf_free(f);
			continue;
		}
		f->next = n->list;
		n->list = f;
		num = f->num;
		incomplete = f->state == NF_INCOMPLETE;
		shown = incomplete ? strdup(f->name) : NULL;
		pthread_mutex_unlock(&n->lock);
		if (incomplete)
			log_incomplete(fs, g.p->mailbox_id, shown, g.p->size);
		else
			log_info("resuming an upload left in the cache (%llu "
			         "bytes)",
			         (unsigned long long)g.p->size);
		free(shown);
		cache_pending_free(&g.p);
		if (!incomplete)
			fs_upload_start(fs, num);
	}
	free(r.seqs);
}

/* --- keeping it in the cache ------------------------------------------ */

struct store_ctx {
	struct nf *f; /* borrowed under the lock */
	uint64_t old_seq;
	uint64_t seq;
};

static int store_pending(struct cache_txn *txn, void *ctx)
{
	struct store_ctx *s = ctx;
	struct cache_pending p = {
	        .mailbox_id = s->f->id,
	        .state = persisted(s->f),
	        .flags = s->f->flags != NULL ? s->f->flags : "",
	        .name = s->f->name,
	        .internaldate = s->f->mtime,
	        .created = time(NULL),
	        .size = s->f->len,
	        .data = (uint8_t *)s->f->data,
	};
	int rc = 0;

	if (s->old_seq != 0)
		rc = cache_pending_delete(txn, s->old_seq);
	if (rc == 0)
		rc = cache_pending_add(txn, &p, &s->seq);
	return rc;
}

struct part_ctx {
	uint64_t seq;
	off_t off;
	const char *buf;
	size_t size;
};

static int store_part(struct cache_txn *txn, void *ctx)
{
	struct part_ctx *pc = ctx;

	return cache_pending_write(txn, pc->seq, (uint64_t)pc->off, pc->buf,
	                           pc->size);
}

/* Commit f's change to the cache before it is answered: close() brings no
 * request (see UPLOAD_DELAY_MS), so what write() accepted must already be
 * safe when it returns.  A write (buf, size at off) that follows what the
 * cache holds is added as one part; anything else (the first write, a
 * truncation, a new time, a commit that failed before) stores the whole
 * file again.  The lock is held across the (short, local) commit so that
 * no other change slips in between.  0, or the errno to answer
 * (fs/reply.h: FS_ERR_KEEP). */
int fs_upload_keep(struct mailfs *fs, struct nf *f, const char *buf,
                   size_t size, off_t off)
{
	int rc;

	if (f->seq != 0 && !f->dirty && buf != NULL) {
		struct part_ctx pc = {f->seq, off, buf, size};

		rc = cache_run_write(fs->cache, store_part, &pc);
	} else {
		struct store_ctx s = {.f = f, .old_seq = f->seq};

		rc = cache_run_write(fs->cache, store_pending, &s);
		if (rc == 0)
			f->seq = s.seq;
	}
	f->touched_ms = fs_upload_now_ms();
	f->dirty = rc < 0;
	if (rc < 0) {
		log_err("cannot keep %s in the cache: %s",
		        f->name ? f->name : "a new file", strerror(-rc));
		return fs_errno(FS_ERR_KEEP, rc);
	}
	return 0;
}

struct drop_ctx {
	uint64_t seq;
};

static int drop_pending(struct cache_txn *txn, void *ctx)
{
	return cache_pending_delete(txn, ((struct drop_ctx *)ctx)->seq);
}

int fs_upload_drop(struct mailfs *fs, uint64_t seq)
{
	struct drop_ctx d = {seq};

	return cache_run_write(fs->cache, drop_pending, &d);
}

struct target_ctx {
	uint64_t seq;
	uint32_t id;
	const char *name;
};

static int pending_target(struct cache_txn *txn, void *ctx)
{
	struct target_ctx *t = ctx;

	return cache_pending_set_target(txn, t->seq, t->id, t->name);
}

struct flags_ctx {
	uint64_t seq;
	const char *flags;
};

static int pending_flags(struct cache_txn *txn, void *ctx)
{
	struct flags_ctx *fc = ctx;

	return cache_pending_set_flags(txn, fc->seq, fc->flags);
}

/* Kept like the bytes: a crash or a remount sends the file with them. */
int fs_upload_set_flags(struct mailfs *fs, struct nf *f, const char *flags)
{
	char *copy = flags[0] != '\0' ? strdup(flags) : NULL;
	struct flags_ctx fc = {f->seq, flags};
	int rc;

	if (flags[0] != '\0' && copy == NULL)
		return ENOMEM;
	free(f->flags);
	f->flags = copy;
	if (f->seq == 0 || f->dirty)
		return 0; /* stored with the file when it is (store_pending) */
	rc = cache_run_write(fs->cache, pending_flags, &fc);
	if (rc < 0) {
		log_err("cannot keep the flags of %s in the cache: %s",
		        f->name ? f->name : "a new file", strerror(-rc));
		f->dirty = true;
		return fs_errno(FS_ERR_KEEP, rc);
	}
	return 0;
}

/* A crash leaves a renamed file where and as the user last put it. */
void fs_upload_retarget(struct mailfs *fs, struct nf *f)
{
	struct target_ctx t = {f->seq, f->id, f->name};
	int rc;

	if (f->dirty && (f->seq != 0 || f->len > 0)) {
		fs_upload_keep(fs, f, NULL, 0,
		               0); /* stored whole, name included */
		return;
	}
	if (f->seq == 0)
		return;
	rc = cache_run_write(fs->cache, pending_target, &t);
	if (rc < 0) {
		log_err("cannot record the new name of %s in the cache: %s",
		        f->name, strerror(-rc));
		f->dirty = true;
	}
}
