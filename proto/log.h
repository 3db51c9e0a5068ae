/* Logging for every layer of mailfs.
 *
 * A message goes to one target (log_set_target()):
 *   LOG_TARGET_STDERR   "mailfs: LEVEL: text" on standard error (the
 *                       default; mailfs in the foreground)
 *   LOG_TARGET_JOURNAL  "<N>text" on standard error, the stream systemd
 *                       connects to the journal (JOURNAL_STREAM), which
 *                       takes N as the line's priority (sd-daemon(3))
 *   LOG_TARGET_SYSLOG   syslog(3), facility LOG_MAIL, ident "mailfs"
 *   LOG_TARGET_FILE     "YYYY-MM-DD HH:MM:SS mailfs[PID]: LEVEL: text"
 *                       appended to the file of log_open_file()
 * Levels are the syslog ones (LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO,
 * LOG_DEBUG).  Nothing secret (passwords, tokens, AUTHENTICATE payloads)
 * may ever be passed to these functions.
 *
 * A repeating error or warning is written once: the same text at the same
 * level again within the repeat window (10 minutes) is only counted.  The
 * next time it comes after the window, it is written with the count
 * ("... (also 41 times in the last 12 min)"), and log_flush_repeats() (mailfs
 * calls it at unmount) writes the counts still untold ("... (41 more
 * times in the last 3 min)").  Up to 64 distinct
 * texts are tracked; the oldest is told and forgotten when a 65th comes.
 * Other levels are always written.
 *
 * Every function is safe from any thread (one lock); lines never
 * interleave. */
#ifndef MAILFS_LOG_H
#define MAILFS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <syslog.h>

enum log_target {
	LOG_TARGET_STDERR,
	LOG_TARGET_JOURNAL,
	LOG_TARGET_SYSLOG,
	LOG_TARGET_FILE,
};

/* Messages above this level are dropped.  Default LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);

/* Where messages go from now on.  LOG_TARGET_FILE needs log_open_file()
 * first (it sets the target itself). */
void log_set_target(enum log_target t);
enum log_target log_get_target(void);

/* Switch between standard error (false) and syslog (true). */
void log_use_syslog(bool on);

/* Open path for appending (created 0600 if missing, O_CLOEXEC) and make it
 * the target.  Returns 0 or a negative errno (the target is then
 * unchanged). */
int log_open_file(const char *path);

/* Is standard error the journal stream systemd gave this process
 * (JOURNAL_STREAM names its device and inode)? */
bool log_stderr_is_journal(void);

/* The repeat window in seconds (default 600; 0: write every message). */
void log_set_repeat_window(unsigned seconds);

/* Write the counts of repeats not yet told (see above) and forget them. */
void log_flush_repeats(void);

void log_msg(int level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap);

#define log_err(...)    log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
