/* `mailfs fetch [-j N] [-q] PATH...`: download into the cache every
 * message body under each PATH (a message, a mailbox, a folder tree or
 * the whole mount) that is not cached yet, so that it can be read
 * offline.
 *
 * It works through the mount: it walks PATH, asks each message whether
 * its body is cached (the attribute user.mailfs.cached, fs/imap/status.h)
 * and reads the first byte of each one that is not, which makes the
 * mount fetch that body and, with its read-ahead, the uncached messages
 * that follow it in one batch.  N threads (default 4) take consecutive
 * runs of messages, so that N batches are on their way at a time.
 *
 * Progress: on a terminal (standard error), a bar with messages, bytes,
 * rate and time left; otherwise a plain line every 10 seconds, and a
 * summary at the end.  SIGINT or SIGTERM stops it cleanly: the reads on
 * their way finish (each is bounded by the mount's timeout), what they
 * fetched stays cached, and a second run goes on with what is left (a
 * second signal ends it at once).
 *
 * Exit status: 0 every body is cached; 1 some could not be fetched (the
 * reason is in the mount's log) or a PATH is not in a mailfs mount; 2 bad
 * usage; 130 (143) interrupted by SIGINT (SIGTERM). */
#ifndef MAILFS_FS_FETCH_H
#define MAILFS_FS_FETCH_H

/* argv[0] is "fetch". */
int fs_fetch_main(int argc, char **argv);

#endif
