/* Logging for every layer of mailfs.
 *
 * Messages go to standard error while the process is in the foreground and
 * to syslog (facility LOG_MAIL) once it has daemonized.  Levels are the
 * syslog ones (LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG).
 * Nothing secret (passwords, tokens, AUTHENTICATE payloads) may ever be
 * passed to these functions. */
#ifndef MAILFS_LOG_H
#define MAILFS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <syslog.h>

/* Messages above this level are dropped.  Default LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);

/* Switch between standard error (false) and syslog (true). */
void log_use_syslog(bool on);

void log_msg(int level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap);

#define log_err(...)    log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
