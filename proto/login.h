/* Logging in again and again: where each login of a mount gets its
 * password or OAuth2 token.
 *
 * A mount logs in many times: at mount time, then whenever a connection
 * was lost (sync workers, the INBOX watch) or a POP3 session starts.  The
 * secret read at mount time may be worthless by then:
 *
 *   - oauth2_cmd: access tokens live about an hour.  The command runs
 *     again for every new login (token helpers such as oama or
 *     mutt_oauth2.py hand out their cached token, or refresh it when it is
 *     about to expire).  Logins that start while it runs, or within
 *     LOGIN_FRESH_MS after it ended, share its token, so that connections
 *     opened together run it once.  A token a server refused is never
 *     used again.
 *   - passcmd: the password may change.  After a refused login (the
 *     server answered NO / -ERR to the login itself: class PERR_AUTH with
 *     -EACCES; not a network error, not a missing mechanism) the command
 *     runs once more, unless it already ran since that login began, and if
 *     it prints another password the login is tried once more with it.
 *   - password_stdin or a typed password: nothing to run again.
 *
 * A login that is refused in the end is for the caller to back off from.
 * After login_set_reporting(l, true) (the mount is up), refusals are
 * logged here, once until a login is accepted again, and
 * login_reported() tells the caller not to log them again; before that
 * (mount time), the caller reports them.
 *
 * Thread safety: every function may be called from any number of threads
 * at once, except login_new() and login_free().  The command runs with
 * the lock released; other threads that need a secret meanwhile wait for
 * its result (at most timeout_ms).  The command is run by fork and exec
 * (proto/cred.h), never from a thread that must not block: FUSE handlers
 * never log in.
 *
 * Secrets: every copy handed out or replaced is wiped before it is freed;
 * no secret is ever logged. */
#ifndef MAILFS_LOGIN_H
#define MAILFS_LOGIN_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/error.h"
#include "proto/imap_client.h"
#include "proto/pop3.h"

/* Logins that start within this long after the command ended share its
 * token (oauth2_cmd). */
#define LOGIN_FRESH_MS 5000

enum login_kind {
	LOGIN_FIXED,   /* password_stdin or typed: never read again */
	LOGIN_PASSCMD, /* run again after a refused login */
	LOGIN_OAUTH2,  /* run again for every new login */
};

struct login;

/* A new source that starts with *secret, the secret read at mount time
 * (taken over: *secret is set to NULL), as if cmd had just printed it.
 * cmd (borrowed; NULL for LOGIN_FIXED) is run again with a limit of
 * timeout_ms (> 0) each time.  Returns 0 or -ENOMEM (then *secret is
 * still the caller's). */
int login_new(struct login **l_r, enum login_kind kind, const char *cmd,
              int timeout_ms, char **secret);

/* Wipe and free everything; sets *l to NULL.  Safe with NULL. */
void login_free(struct login **l);

/* Connect and log in with cfg (its password and oauth2_token are ignored:
 * the secret comes from l), retrying once as described above.  Results as
 * imap_connect() / pop3_connect(). */
int login_imap(struct login *l, const struct imap_config *cfg,
               struct imap_client **c_r, struct proto_err *err);
int login_pop3(struct login *l, const struct pop3_config *cfg,
               struct pop3_client **c_r, struct proto_err *err);

/* From now on, log refused logins (once per run of refusals). */
void login_set_reporting(struct login *l, bool on);

/* Was err a refused login that l has already logged?  Then the caller
 * backs off without logging it again. */
bool login_reported(struct login *l, const struct proto_err *err);

/* Is err a refused login (the server said no to these credentials)? */
bool login_is_refusal(const struct proto_err *err);

/* --- the steps of a login, for callers with their own protocol --------- */

/* One login's secret: take it, try it, then report how it went. */
struct login_ticket {
	char *secret;  /* owned copy; wiped */
	unsigned gen;  /* which secret of l it is */
	unsigned seen; /* runs of the command that had printed a secret
	                  when the login began */
	bool retried;  /* login_refused() already gave a new one */
};

/* The secret for a new login (with oauth2_cmd, this may run it).  Errors:
 * the command failed (class PERR_LOCAL, err says why, naming the option),
 * or it printed the very token a server refused (PERR_AUTH, -EACCES). */
int login_take(struct login *l, struct login_ticket *t, struct proto_err *err);

/* The server refused t's secret (why: the refusal, for the log).
 * Returns 0 when t now holds another secret worth one more try (at most
 * once per ticket), or -EACCES. */
int login_refused(struct login *l, struct login_ticket *t,
                  const struct proto_err *why);

/* The login ended: accepted (rc == 0), refused in the end, or failed for
 * another reason (err says which).  Logs as described above and wipes t. */
void login_done(struct login *l, struct login_ticket *t, int rc,
                const struct proto_err *err);

/* How many times the command ran since login_new() (for tests). */
unsigned login_runs(struct login *l);

#endif
