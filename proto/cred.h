/* Where the password (or OAuth2 token) comes from.
 *
 * DESIGN.md: the password is never taken from argv and never logged.  It
 * comes from a command (-o passcmd=CMD, -o oauth2_cmd=CMD), from standard
 * input (-o password_stdin) or from the terminal.
 *
 * Every function returns 0 and a new NUL-terminated secret in *secret_r,
 * which the caller releases with cred_free(), or a negative errno with
 * *secret_r untouched and err (class PERR_LOCAL) set to one line that says
 * what went wrong.  The secret is never part of an error text.  The first
 * line is the secret: reading stops at "\n", one "\r" before it is
 * dropped, an unterminated last line counts as a line.  An empty secret,
 * one that contains a NUL byte or one longer than CRED_MAX_LEN bytes is an
 * error.  Buffers that held the secret are wiped before they are freed. */
#ifndef MAILFS_CRED_H
#define MAILFS_CRED_H

#include "proto/error.h"

#define CRED_MAX_LEN        (64 * 1024)
#define CRED_CMD_TIMEOUT_MS (120 * 1000)

/* Run cmd with "/bin/sh -c cmd" and take the first line of its standard
 * output.  The command's standard input and standard error are mailfs's;
 * its standard output is a pipe; every other descriptor is closed in the
 * child (whether or not it has FD_CLOEXEC), so /dev/fuse and the cache
 * never leak into it.  SIGPIPE and the signal mask are reset to the
 * defaults for it.  All of its output is read (and all but the first line
 * discarded) so that it does not die of SIGPIPE, then mailfs waits for it.
 *
 * Errors: the command exited with a non-zero status (-EIO, "exited with
 * status N"), was killed by a signal (-EIO), printed nothing or an empty
 * first line (-ENODATA), or did not finish within CRED_CMD_TIMEOUT_MS
 * (-ETIMEDOUT; it is then killed with SIGKILL).
 *
 * The command runs in its own process group, so that a timeout kills
 * everything it started, except when mailfs is the foreground job of a
 * terminal: then it stays in mailfs's group so that it can still read the
 * terminal (a passphrase prompt) without being stopped by SIGTTIN, and a
 * timeout kills only the shell.
 *
 * Uses fork(): safe in a threaded process (the child only makes
 * async-signal-safe calls before exec).  The first run is made before
 * LMDB is opened; proto/login.c runs the command again from network
 * threads of a mount, with the cache open: the child closes every
 * descriptor above 2 and execs at once, so it never uses the environment
 * (STYLE.md's fork rule).  Must not race with a SIGCHLD disposition of
 * SIG_IGN (the exit status would be lost). */
int cred_from_cmd(const char *cmd, char **secret_r, struct proto_err *err);

/* The directory the commands of cred_from_cmd() run in: dir is copied
 * (NULL or "" for the current one).  Set once, before any thread runs a
 * command: mailfs sets the directory it was started in, so a command
 * such as "./getpass.sh" works after it has gone to the background (its
 * working directory is then "/").  A command whose directory cannot be
 * entered exits 127 (as a command that cannot be run). */
void cred_set_dir(const char *dir);

/* cred_from_cmd() with another time limit in milliseconds (> 0). */
int cred_from_cmd_timeout(const char *cmd, int timeout_ms, char **secret_r,
                          struct proto_err *err);

/* Read one line from file descriptor 0, one byte at a time so that nothing
 * after the line is consumed.  Waits as long as it takes.  Errors: end of
 * input before any byte or an empty line (-ENODATA), read errors. */
int cred_from_stdin(char **secret_r, struct proto_err *err);

/* Ask on the controlling terminal (/dev/tty, not standard input): write
 * prompt, turn echo off, read one line, restore the terminal, write a
 * newline.  If SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM or SIGPIPE
 * arrives while waiting, the terminal is restored first and then the
 * signal is delivered again with the caller's disposition (by default the
 * process dies, with echo back on); if the process survives, -EINTR.  On
 * SIGTSTP, SIGTTIN or SIGTTOU the terminal is restored, the process stops,
 * and the prompt is asked again when it continues.
 * Errors: no controlling terminal (-ENXIO or what open() said), end of
 * input or an empty line (-ENODATA), -EINTR.
 * Installs signal handlers for the duration: call it from the main thread
 * before other threads start, and not from two threads at once. */
int cred_from_tty(const char *prompt, char **secret_r, struct proto_err *err);

/* Wipe the secret, free it and set *secret to NULL.  Safe with NULL. */
void cred_free(char **secret);

#endif
