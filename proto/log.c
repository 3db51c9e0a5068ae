#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>

static int log_level = LOG_INFO;
static bool log_syslog;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(int level)
{
	log_level = level;
}

int log_get_level(void)
{
	return log_level;
}

void log_use_syslog(bool on)
{
	if (on && !log_syslog)
		openlog("mailfs", LOG_PID, LOG_MAIL);
	log_syslog = on;
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
	static const char *const names[] = {
	        "emerg",   "alert",  "crit", "error",
	        "warning", "notice", "info", "debug",
	};

	if (level > log_level)
		return;
	if (log_syslog) {
		vsyslog(level, fmt, ap);
		return;
	}
	/* One lock so that lines from several threads never interleave. */
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "mailfs: %s: ", names[level & 7]);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
