/* One login used over POP3 and over IMAP at once.
 *
 * A provider serves one mailbox under both protocols, usually under two
 * host names (pop.gmail.com and imap.gmail.com).  A POP3 mount with
 * pop_keep deletes what it downloaded from that mailbox, and an IMAP
 * mount of the same login then sees those messages expunged: they vanish
 * from it and from its cache (the POP3 cache keeps them).  mailfs warns at
 * mount time, in both directions, once:
 *   - mounting POP3 with pop_keep (not "forever") while the login is
 *     mounted over IMAP, or has an IMAP cache (in the directory of the
 *     POP3 cache, or of the default cache);
 *   - mounting IMAP while a POP3 mount of the login has pop_keep.
 * "The same login" is the same user name (compared without regard to
 * case) at the same provider (fs_same_provider()).
 *
 * Mounts know of each other through a registry: one file per running
 * mount, $XDG_RUNTIME_DIR/mailfs/mounts/PID (XDG_RUNTIME_DIR only if it is
 * absolute; else /run/user/UID when that directory is the user's; else
 * there is no registry), holding "key=value" lines: proto (imap, pop3),
 * user, host, url, pop_keep (days, -1 forever), mountpoint.  A file whose
 * process is gone is ignored and removed. */
#ifndef MAILFS_FS_MIXING_H
#define MAILFS_FS_MIXING_H

#include <stdbool.h>
#include <stdio.h>

struct mailfs;

/* Are host names a and b the same provider?  The same name (without
 * regard to case), or the same domain once a first label naming a mail
 * service ("imap", "imap4", "imaps", "pop", "pop3", "pops", "pop3s",
 * "mail", "mx") is taken off, or, for names of three labels or more,
 * once any first label is taken off: pop.gmail.com and imap.gmail.com,
 * pop.provider.nl and imap.provider.nl, pop.localhost and
 * imap.localhost.  IP addresses only equal themselves.  Pure. */
bool fs_same_provider(const char *a, const char *b);

/* The start-up warning above, printed on out ("mailfs: warning: ..."),
 * at most one line.  Call in the foreground, once the URL, the options
 * and the cache path are known. */
void fs_mixing_warn(const struct mailfs *fs, FILE *out);

/* Enter this mount in the registry (after it is mounted), and take it out
 * again (at unmount; also safe when never entered).  Failures are
 * logged at debug level only: the registry serves warnings. */
void fs_mixing_register(const struct mailfs *fs);
void fs_mixing_unregister(void);

#endif
