/* IMAP client: one connection to one server (RFC 3501, RFC 9051).
 *
 * A struct imap_client is driven by one thread at a time.  Commands are
 * pipelined: imap_submit() sends a command and returns its tag at once, so
 * several commands can be in flight; imap_wait() reads responses until a
 * given command has completed, dispatching every response on the way.
 * The synchronous helpers further down (imap_select(), imap_fetch_meta(),
 * ...) are built on the same two calls.
 *
 * Untagged responses go to the handler of the oldest command in flight
 * that has an untagged callback, or else to the connection's default
 * handler (imap_set_untagged_handler), which sees EXISTS, EXPUNGE, FETCH
 * FLAGS and the like that the server sends on its own.
 *
 * When the connection fails (timeout, EOF, malformed data, BYE) every
 * command in flight completes with the error, and every later call fails
 * at once with the same error: the caller drops the client and connects
 * again.  Nothing here ever waits without a bound: every wait uses the
 * timeout given at connect time.
 *
 * This header is the whole interface; the code behind it is in
 *   proto/imap_conn.c   the connection engine: pipelined commands, waits,
 *                       responses, literals, capabilities, polling, logout;
 *   proto/imap_pace.c   struct imap_pace and imap_busy_parse();
 *   proto/imap_login.c  imap_connect() (greeting, STARTTLS, login,
 *                       COMPRESS), imap_compressed(),
 *                       imap_enable(), imap_id();
 *   proto/imap_fetch.c  imap_select(), imap_status(), the FETCH calls,
 *                       imap_resync();
 *   proto/imap_cmd.c    imap_list(), imap_noop(), imap_idle(), the
 *                       commands that change mailboxes and messages,
 *                       imap_search_header() and the helpers at the end;
 * with proto/imap_conn_int.h, their shared insides. */
#ifndef MAILFS_IMAP_CLIENT_H
#define MAILFS_IMAP_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "proto/error.h"
#include "proto/imap_parse.h"

struct imap_client;

/* How fast the server lets an account go: shared by every connection of
 * one account (servers throttle the account, not one connection), so
 * that when one connection is told to back off, none of them sends
 * anything until the time is up.
 *
 * A command the server answers as throttled after the login -- a NO or
 * BAD saying
 * "Request is throttled. Suggested Backoff Time: N milliseconds"
 * (Exchange, Microsoft 365), or with [THROTTLED] or [UNAVAILABLE]
 * (RFC 5530) -- did not happen: the client waits as told (1 s when the
 * server names no time) and sends it again, as long as the waiting for
 * that command stays within the connection's timeout.  A wait longer
 * than that fails the command at once with -EAGAIN (class PERR_BUSY),
 * and nothing is sent into the window.  An OK that says [THROTTLED]
 * (Gmail: the answer was slowed down) is counted.  Each condition is
 * logged the first time; imap_pace_report() logs the counts. */
struct imap_pace {
	pthread_mutex_t lock;
	int64_t until_ms;   /* CLOCK_MONOTONIC ms; send nothing before */
	unsigned throttled; /* commands answered "throttled" */
	unsigned slowed;    /* OK answers that said [THROTTLED] */
	unsigned refused;   /* connections refused: too many of them */
	unsigned logged;    /* which of the three were logged (bits) */
};

void imap_pace_init(struct imap_pace *p);
void imap_pace_destroy(struct imap_pace *p);

/* Count a connection the server refused because the account has too
 * many (imap_connect() failed with PERR_BUSY, -EUSERS); true the first
 * time (the caller logs it then). */
bool imap_pace_refused(struct imap_pace *p);

/* Log what the server asked of this account, if anything (at unmount). */
void imap_pace_report(struct imap_pace *p);

/* What a server's answer says about load, from its response code (may
 * be NULL) and text (pure; for tests):
 *   IMAP_BUSY_NONE      nothing;
 *   IMAP_BUSY_THROTTLED the command was throttled (in a NO/BAD) or
 *                       slowed down (in an OK); *wait_ms_r gets the
 *                       suggested back-off, 0 when none is named;
 *   IMAP_BUSY_TOO_MANY  the account has too many connections (Gmail's
 *                       "Too many simultaneous connections", Dovecot's
 *                       "Maximum number of connections"). */
enum imap_busy { IMAP_BUSY_NONE, IMAP_BUSY_THROTTLED, IMAP_BUSY_TOO_MANY };
enum imap_busy imap_busy_parse(const char *code, const char *text,
                               int *wait_ms_r);

enum imap_tls_mode {
	IMAP_TLS_IMPLICIT, /* imaps://: TLS from the first byte */
	IMAP_TLS_STARTTLS, /* imap://: STARTTLS, mandatory */
	IMAP_TLS_NONE,     /* -o notls: plaintext, testing only */
};

struct imap_config {
	const char *host; /* borrowed */
	const char *port; /* borrowed */
	enum imap_tls_mode tls;
	const char *cafile; /* borrowed; extra CAs or NULL */
	const char *user;   /* borrowed */
	/* Exactly one of these two: a password (PLAIN or LOGIN), or an
	 * OAuth2 access token (XOAUTH2 or OAUTHBEARER).  Borrowed. */
	const char *password;
	const char *oauth2_token;
	int timeout_ms; /* every network wait; 0 means 30 s */
	/* Shared by the connections of one account (see struct
	 * imap_pace); borrowed; NULL: each client paces itself. */
	struct imap_pace *pace;
	/* true: never compress.  By default a server that offers
	 * COMPRESS=DEFLATE (RFC 4978) gets "COMPRESS DEFLATE" right after
	 * the login, and both directions are deflated from then on. */
	bool no_compress;
};

/* Connect, run TLS (implicit or STARTTLS), read the greeting and the
 * capabilities, authenticate, read the capabilities again, and turn
 * compression on when the server offers COMPRESS=DEFLATE (unless
 * cfg->no_compress; a server that refuses it is used uncompressed, and
 * compressed data that does not inflate later is a PERR_PROTOCOL error
 * of the connection).
 * On failure *err says why, with one of the classes of proto/error.h:
 * PERR_NOTLS when STARTTLS is not offered (or the server greets with
 * PREAUTH before TLS), PERR_AUTH with the server's text when the
 * credentials are refused, PERR_TLS_VERIFY with the reason, PERR_BUSY
 * (-EUSERS) when the server refuses the login because the account has
 * too many connections, PERR_BYE when it closes the connection at its
 * greeting (-ECONNREFUSED), ...  An untagged CAPABILITY the server sends
 * after the login replaces the list as the tagged OK's code would. */
int imap_connect(struct imap_client **client_r, const struct imap_config *cfg,
                 struct proto_err *err);

/* Send LOGOUT (best effort, short wait) and free everything. */
void imap_logout(struct imap_client **client);

/* Free without saying goodbye (the connection is dead or unwanted). */
void imap_free(struct imap_client **client);

/* Read and dispatch what the server sent on its own while the client was
 * idle, without waiting for more: a server that closes idle connections
 * (Gmail's BYE) is noticed here, before a command is sent into a dead
 * connection.  Returns 0, or the connection's error. */
int imap_poll(struct imap_client *c);

/* Wake a thread blocked on this client; safe from another thread. */
void imap_shutdown(struct imap_client *c);

/* Is the connection compressed (COMPRESS=DEFLATE accepted)? */
bool imap_compressed(const struct imap_client *c);

/* Is the capability advertised (case-insensitive, e.g. "IDLE",
 * "AUTH=PLAIN")?  The list is the latest one the server sent. */
bool imap_has_cap(const struct imap_client *c, const char *cap);

/* The error that killed the connection, or NULL if it is alive. */
const struct proto_err *imap_error(const struct imap_client *c);

/* --- pipelined commands --------------------------------------------- */

struct imap_handler {
	/* An untagged response arrived while this command was the oldest
	 * in flight with an untagged callback.  Borrowed response. */
	void (*untagged)(void *ctx, const struct imap_response *resp);
	/* The command completed: rc is 0 for OK, -EPERM for NO (class
	 * PERR_NO), -EINVAL for BAD (PERR_BAD), -EAGAIN for a NO or BAD
	 * that says the command was throttled (PERR_BUSY; see struct
	 * imap_pace), or the connection's error.
	 * tagged is the tagged response (NULL on connection failure). */
	void (*done)(void *ctx, int rc, const struct imap_response *tagged);
	void *ctx;
};

/* One argument of a command: text sent as is, an astring (quoted or sent
 * as a literal as needed), or a literal of raw bytes (APPEND). */
enum imap_arg_kind { IMAP_ARG_RAW, IMAP_ARG_ASTRING, IMAP_ARG_LITERAL };
struct imap_arg {
	enum imap_arg_kind kind;
	const char *data; /* borrowed */
	size_t len;       /* for IMAP_ARG_LITERAL; others are C strings */
};

/* Send a command made of args (separated by nothing: put spaces in RAW
 * parts), with a fresh tag.  Returns at once unless a synchronising
 * literal must wait for the server's continuation (a literal is
 * non-synchronising with LITERAL+, and with LITERAL- up to 4096 bytes),
 * or the account is told to back off: then it waits first, or fails
 * with -EAGAIN when the wait would be longer than the timeout.  *tag_r (may be
 * NULL) receives the tag number to pass to imap_wait().  h may be NULL. */
int imap_submitv(struct imap_client *c, const struct imap_handler *h,
                 const struct imap_arg *args, size_t nargs, unsigned *tag_r);

/* printf-style form for commands whose arguments need no quoting: the
 * caller formats atoms and numbers only (use imap_submitv for names). */
int imap_submit(struct imap_client *c, const struct imap_handler *h,
                unsigned *tag_r, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Read and dispatch responses until command `tag` has completed.
 * Returns its result (see imap_handler.done). */
int imap_wait(struct imap_client *c, unsigned tag, struct proto_err *err);

/* A response code of a tagged answer: "APPENDUID", args "38505 3955". */
struct imap_code {
	char code[32];
	char args[256];
};

/* imap_wait() that also gives the tagged answer's response code. */
int imap_wait_code(struct imap_client *c, unsigned tag,
                   struct imap_code *code_r, struct proto_err *err);

/* Read and dispatch until no command is in flight. */
int imap_wait_all(struct imap_client *c, struct proto_err *err);

/* Handler for untagged responses that no command claims. */
void imap_set_untagged_handler(struct imap_client *c,
                               void (*cb)(void *ctx,
                                          const struct imap_response *resp),
                               void *ctx);

/* cb(ctx) runs (on the thread driving the client) each time bytes from
 * the server arrive, so that a caller can tell a slow transfer from a
 * stalled one.  NULL removes it. */
void imap_set_input_hook(struct imap_client *c, void (*cb)(void *ctx),
                         void *ctx);

/* Number of commands in flight. */
size_t imap_inflight(const struct imap_client *c);

/* --- commands the mount needs ---------------------------------------- */

/* Every command below that the server answers as throttled is sent
 * again after the wait it asks for (struct imap_pace); so is the whole
 * pipeline of imap_resync().  A command that stays throttled longer than
 * the timeout fails with -EAGAIN. */

enum imap_mbox_attr {
	IMAP_MBOX_NOSELECT = 1 << 0,
	IMAP_MBOX_NONEXISTENT = 1 << 1,
	IMAP_MBOX_HASCHILDREN = 1 << 2,
	IMAP_MBOX_HASNOCHILDREN = 1 << 3,
	IMAP_MBOX_NOINFERIORS = 1 << 4,
	IMAP_MBOX_MARKED = 1 << 5,
	IMAP_MBOX_UNMARKED = 1 << 6,
	IMAP_MBOX_SUBSCRIBED = 1 << 7,
	IMAP_MBOX_REMOTE = 1 << 8,
	/* RFC 6154 special use */
	IMAP_MBOX_ALL = 1 << 16,
	IMAP_MBOX_ARCHIVE = 1 << 17,
	IMAP_MBOX_DRAFTS = 1 << 18,
	IMAP_MBOX_FLAGGED = 1 << 19,
	IMAP_MBOX_JUNK = 1 << 20,
	IMAP_MBOX_SENT = 1 << 21,
	IMAP_MBOX_TRASH = 1 << 22,
};

struct imap_mailbox {
	const char *name; /* borrowed; raw, modified UTF-7 as the server
	                     spells it (INBOX normalised to "INBOX") */
	char delim;       /* hierarchy delimiter, or 0 for none (NIL) */
	unsigned attrs;   /* enum imap_mbox_attr bits */
};

/* LIST "" "*", with RETURN (SPECIAL-USE) when the server offers
 * SPECIAL-USE and LIST-EXTENDED.  cb is called once per mailbox. */
int imap_list(struct imap_client *c,
              void (*cb)(void *ctx, const struct imap_mailbox *mb), void *ctx,
              struct proto_err *err);

struct imap_select_info {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint32_t exists;
	uint64_t highestmodseq; /* 0 when the server has no CONDSTORE */
	bool readonly;
};

/* EXAMINE (readonly) or SELECT a mailbox (name: raw modified UTF-7). */
int imap_select(struct imap_client *c, const char *name, bool readonly,
                struct imap_select_info *info_r, struct proto_err *err);

/* STATUS name (UIDVALIDITY UIDNEXT MESSAGES): the same fields of info_r
 * as imap_select() (exists is MESSAGES; highestmodseq 0), without
 * selecting it. */
int imap_status(struct imap_client *c, const char *name,
                struct imap_select_info *info_r, struct proto_err *err);

/* The mailbox selected now, or NULL. */
const char *imap_selected(const struct imap_client *c);

struct imap_msg_meta {
	uint32_t uid;
	uint64_t size;       /* RFC822.SIZE */
	time_t internaldate; /* seconds since the epoch, UTC */
	int tz_minutes;      /* the zone the server gave, e.g. -420 */
	const char *flags;   /* borrowed: "\Seen $Work", space separated */
	uint64_t modseq;     /* 0 unless CONDSTORE */
	const char *headers; /* borrowed: raw Subject/From/Date/Message-ID
	                        header lines, or NULL */
	size_t headers_len;
};

/* UID FETCH uidset (UID RFC822.SIZE FLAGS INTERNALDATE
 * BODY.PEEK[HEADER.FIELDS (SUBJECT FROM DATE MESSAGE-ID)] [MODSEQ])
 * [(CHANGEDSINCE n)]: one command for the whole set; cb per message. */
int imap_fetch_meta(struct imap_client *c, const char *uidset,
                    uint64_t changedsince,
                    void (*cb)(void *ctx, const struct imap_msg_meta *m),
                    void *ctx, struct proto_err *err);

/* UID FETCH uidset (UID BODY.PEEK[]): one command for the whole set;
 * cb is called once per message with its exact bytes (borrowed, valid
 * during the call).  Never sets \Seen. */
int imap_fetch_bodies(struct imap_client *c, const char *uidset,
                      void (*cb)(void *ctx, uint32_t uid, const char *data,
                                 size_t len),
                      void *ctx, struct proto_err *err);

/* Where imap_fetch_bodies_stream() delivers each body, as it arrives:
 *
 *   begin(ctx, uid, size)  a body of size bytes starts.  uid is its UID
 *                          if the server sent it before the body, else 0
 *                          (done gives it).
 *   data(ctx, buf, len)    its next bytes (borrowed, valid during the
 *                          call; never len 0), in order.
 *   done(ctx, uid)         all size bytes came and the FETCH response is
 *                          complete and well-formed: the body of uid.
 *   abort(ctx)             the body will not complete (the connection
 *                          failed, the response was malformed or had no
 *                          UID, or begin/data failed).
 *
 * Each begin is followed by exactly one done or abort, before the next
 * begin and before imap_fetch_bodies_stream() returns.  A negative return
 * from begin or data drops the rest of that body (read and discarded; the
 * connection goes on) and ends it with abort.  Bodies longer than 256 KiB
 * are never held in memory here: they come in pieces of what each read
 * from the network brings; shorter ones come in one piece. */
struct imap_body_sink {
	int (*begin)(void *ctx, uint32_t uid, uint64_t size);
	int (*data)(void *ctx, const char *buf, size_t len);
	void (*done)(void *ctx, uint32_t uid);
	void (*abort)(void *ctx);
};

/* UID FETCH uidset (UID BODY.PEEK[]) into sink (borrowed, with ctx, for
 * the duration of the call).  Never sets \Seen. */
int imap_fetch_bodies_stream(struct imap_client *c, const char *uidset,
                             const struct imap_body_sink *sink, void *ctx,
                             struct proto_err *err);

int imap_noop(struct imap_client *c, struct proto_err *err);

/* ENABLE exts (e.g. "CONDSTORE QRESYNC"); enabled_r gets what the server
 * says it enabled.  -EOPNOTSUPP without the ENABLE capability. */
int imap_enable(struct imap_client *c, const char *exts, char enabled_r[256],
                struct proto_err *err);

/* Did the server enable QRESYNC (RFC 7162) on this connection?  Then
 * expunges are reported as VANISHED and imap_resync() can ask for the
 * changes since a known state in its SELECT. */
bool imap_qresync_enabled(const struct imap_client *c);

/* --- resynchronisation and IDLE ---------------------------------------- */

/* What imap_resync() asks for, all in one pipelined round trip:
 *   SELECT (or EXAMINE) mailbox, with (QRESYNC (uidvalidity modseq)) when
 *     QRESYNC is enabled and modseq is not 0, else (CONDSTORE) if offered;
 *   UID FETCH new_from:* metadata (as imap_fetch_meta), if new_from;
 *   UID FETCH flags_set (UID FLAGS [MODSEQ]) [(CHANGEDSINCE flags_since)],
 *     if flags_set;
 *   UID FETCH check_set (UID FLAGS MODSEQ), if check_set.
 * When the server's UIDVALIDITY is not the one given, the answers belong
 * to the new numbering: the caller sees it in info_r and starts over. */
struct imap_resync_req {
	const char *mailbox; /* raw name */
	bool readonly;
	bool plain; /* no CONDSTORE at all: no parameters, no MODSEQ items */
	uint32_t uidvalidity;
	uint64_t modseq;
	uint32_t new_from;
	const char *flags_set;
	uint64_t flags_since;
	const char *check_set;
};

struct imap_resync_cb {
	/* A message of the new_from:* fetch (note: "N:*" always includes the
	 * last message, even when its UID is below N). */
	void (*meta)(void *ctx, const struct imap_msg_meta *m);
	/* A message's flags (from the flag fetches, or from the SELECT's
	 * QRESYNC answer); modseq 0 when the server gave none. */
	void (*flags)(void *ctx, uint32_t uid, const char *flags,
	              uint64_t modseq);
	/* UIDs lo..hi are expunged (VANISHED); any of them may be unknown. */
	void (*vanished)(void *ctx, uint32_t lo, uint32_t hi);
	void *ctx;
};

/* Returns 0 or the first command's error (the SELECT failing makes the
 * fetches fail too).  info_r as imap_select(). */
int imap_resync(struct imap_client *c, const struct imap_resync_req *req,
                const struct imap_resync_cb *cb,
                struct imap_select_info *info_r, struct proto_err *err);

/* IDLE (RFC 2177) on the selected mailbox for at most max_ms: every
 * untagged response goes to cb; when cb returns non-zero (something the
 * caller wants to act on) or the time is up, DONE is sent and the command
 * completed.  The wait for the server to speak is max_ms, not the
 * connection's timeout; a dead server shows up at DONE.  -EOPNOTSUPP
 * without the IDLE capability. */
int imap_idle(struct imap_client *c, int max_ms,
              int (*cb)(void *ctx, const struct imap_response *resp), void *ctx,
              struct proto_err *err);

/* ID: send mailfs's name and version (nothing about the user); server_r
 * gets the server's answer as "key=value ...". */
int imap_id(struct imap_client *c, char server_r[256], struct proto_err *err);

/* --- changing the mailbox (the selected one, for messages) ----------- */

int imap_create(struct imap_client *c, const char *name, struct proto_err *err);
int imap_delete(struct imap_client *c, const char *name, struct proto_err *err);
int imap_rename(struct imap_client *c, const char *from, const char *to,
                struct proto_err *err);

/* UID STORE uid OP.SILENT (flags); OP is "FLAGS", "+FLAGS" or "-FLAGS";
 * flags is a space-separated list, already checked by the caller. */
int imap_uid_store(struct imap_client *c, uint32_t uid, const char *op,
                   const char *flags, struct proto_err *err);

/* UID EXPUNGE of that one UID; -EOPNOTSUPP without UIDPLUS (a plain
 * EXPUNGE could remove other messages marked \Deleted). */
int imap_uid_expunge(struct imap_client *c, uint32_t uid,
                     struct proto_err *err);

/* Move one message to dest: UID MOVE, or UID COPY + \Deleted + UID
 * EXPUNGE (UIDPLUS needed, else -EOPNOTSUPP before anything is done).
 * The new UID comes from COPYUID (0 when the server does not say). */
int imap_uid_move(struct imap_client *c, uint32_t uid, const char *dest,
                  uint32_t *uidvalidity_r, uint32_t *uid_r,
                  struct proto_err *err);

/* APPEND data to mailbox, with flags (a flag list of any length; "" or
 * NULL for none) and, when date is not 0, that INTERNALDATE in zone
 * tz_minutes.  The new UID comes from APPENDUID (0 when the server does
 * not say). */
int imap_append(struct imap_client *c, const char *mailbox, const char *flags,
                time_t date, int tz_minutes, const char *data, size_t len,
                uint32_t *uidvalidity_r, uint32_t *uid_r,
                struct proto_err *err);

/* UID SEARCH HEADER field value in the selected mailbox; *uids_r is
 * malloc'd (free it), *n_r entries. */
int imap_search_header(struct imap_client *c, const char *field,
                       const char *value, uint32_t **uids_r, size_t *n_r,
                       struct proto_err *err);

/* Is the selected mailbox open read-write (SELECT, not EXAMINE)? */
bool imap_selected_writable(const struct imap_client *c);

/* What GETQUOTAROOT (RFC 9208, and RFC 2087 before it) says of a
 * mailbox's quota roots.  STORAGE is in units of 1024 octets, as the
 * server sends it; MESSAGE is a count.  Of several roots, each resource
 * is taken from the root with the least left.  A resource no root names
 * has has_* false. */
struct imap_quota {
	unsigned nroots; /* QUOTA responses seen */
	bool has_storage;
	uint64_t storage_used, storage_limit; /* KiB */
	bool has_messages;
	uint64_t messages_used, messages_limit;
};

/* GETQUOTAROOT mailbox.  -EOPNOTSUPP without the QUOTA capability.  A
 * QUOTA response that cannot be read is ignored. */
int imap_getquotaroot(struct imap_client *c, const char *mailbox,
                      struct imap_quota *q_r, struct proto_err *err);

/* --- helpers --------------------------------------------------------- */

/* Format a sorted array of UIDs as a compact set ("1:5,7,9:12").
 * Returns a malloc'd string (owned by the caller) or NULL on OOM. */
char *imap_uidset_format(const uint32_t *uids, size_t n);

/* Parse a UID set ("1:5,7,9:*"; "*" is UINT32_MAX) into ranges, lo <= hi,
 * calling cb for each (a non-zero return stops and is returned).  -EINVAL
 * for malformed input, and then cb is never called (the whole set is
 * checked first); nothing is expanded, so a huge range costs one call. */
int imap_uidset_parse(const char *s,
                      int (*cb)(void *ctx, uint32_t lo, uint32_t hi),
                      void *ctx);

/* Parse an INTERNALDATE ("17-Jul-1996 02:44:25 -0700"). */
int imap_date_parse(const char *s, time_t *t_r, int *tz_minutes_r);

#endif
