#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096
#define REPEAT_SLOTS 64

struct repeat {
	char *text; /* owned; NULL: a free slot */
	int level;
	int64_t shown_ms; /* when it was last written */
	uint64_t seq;     /* order of writing: the lowest goes first */
	unsigned count;   /* repeats since then, not written */
};

static int log_level = LOG_INFO;
static enum log_target target = LOG_TARGET_STDERR;
static bool syslog_open;
static int log_fd = -1;
static unsigned repeat_window_s = 600;
static struct repeat repeats[REPEAT_SLOTS];
static uint64_t repeat_seq;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const names[] = {
        "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug",
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void log_set_level(int level)
{
	log_level = level;
}

int log_get_level(void)
{
	return log_level;
}

void log_set_target(enum log_target t)
{
	pthread_mutex_lock(&log_lock);
	if (t == LOG_TARGET_SYSLOG && !syslog_open) {
		openlog("mailfs", LOG_PID, LOG_MAIL);
		syslog_open = true;
	}
	if (t != LOG_TARGET_FILE || log_fd >= 0)
		target = t;
	pthread_mutex_unlock(&log_lock);
}

enum log_target log_get_target(void)
{
	return target;
}

void log_use_syslog(bool on)
{
	log_set_target(on ? LOG_TARGET_SYSLOG : LOG_TARGET_STDERR);
}

int log_open_file(const char *path)
{
	int fd =
	        open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY,
	             0600);

	if (fd < 0)
		return -errno;
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	target = LOG_TARGET_FILE;
	pthread_mutex_unlock(&log_lock);
	return 0;
}

bool log_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(2, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

void log_set_repeat_window(unsigned seconds)
{
	pthread_mutex_lock(&log_lock);
	repeat_window_s = seconds;
	pthread_mutex_unlock(&log_lock);
}

/* Write one line to the target, under log_lock. */
static void emit(int level, const char *text)
{
	char line[LOG_LINE_MAX + 128], stamp[32];
	struct tm tm;
	time_t now;
	int n;

	switch (target) {
	case LOG_TARGET_SYSLOG: syslog(level, "%s", text); return;
	case LOG_TARGET_JOURNAL:
		n = snprintf(line, sizeof(line), "<%d>%s\n", level & 7, text);
		break;
	case LOG_TARGET_FILE:
		now = time(NULL);
		localtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
		n = snprintf(line, sizeof(line), "%s mailfs[%ld]: %s: %s\n",
		             stamp, (long)getpid(), names[level & 7], text);
		break;
	default:
		n = snprintf(line, sizeof(line), "mailfs: %s: %s\n",
		             names[level & 7], text);
		break;
	}
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	/* One write per line: lines of several processes appending to one
	 * file never mix. */
	if (write(target == LOG_TARGET_FILE ? log_fd : 2, line, (size_t)n) < 0)
		return;
}

static void emit_count(const struct repeat *r, int64_t now, bool more)
{
	char text[LOG_LINE_MAX];
	int64_t s = (now - r->shown_ms) / 1000;

	const char *what = more ? "%s (%u more times in the last %lld %s)"
	                        : "%s (also %u times in the last %lld %s)";

	if (s < 120)
		snprintf(text, sizeof(text), what, r->text, r->count,
		         (long long)s, "s");
	else
		snprintf(text, sizeof(text), what, r->text, r->count,
		         (long long)(s / 60), "min");
	emit(r->level, text);
}

/* Is this error or warning a repeat to count rather than write?  Under
 * log_lock. */
static bool repeated(int level, const char *text)
{
	int64_t now = mono_ms();
	struct repeat *r, *free_slot = NULL, *oldest = NULL;
	size_t i;

	for (i = 0; i < REPEAT_SLOTS; i++) {
		r = &repeats[i];
		if (r->text == NULL) {
			if (free_slot == NULL)
				free_slot = r;
			continue;
		}
		if (r->level == level && strcmp(r->text, text) == 0)
			break;
		if (oldest == NULL || r->seq < oldest->seq)
			oldest = r;
	}
	if (i < REPEAT_SLOTS) {
		if (now - r->shown_ms < (int64_t)repeat_window_s * 1000) {
			r->count++;
			return true;
		}
		if (r->count > 0)
			emit_count(r, now, false);
		else
			emit(level, text);
		r->shown_ms = now;
		r->seq = ++repeat_seq;
		r->count = 0;
		return true;
	}
	r = free_slot ? free_slot : oldest;
	if (r->text != NULL) {
		if (r->count > 0)
			emit_count(r, now, true);
		free(r->text);
	}
	r->text = strdup(text);
	r->level = level;
	r->shown_ms = now;
	r->seq = ++repeat_seq;
	r->count = 0;
	return false;
}

void log_flush_repeats(void)
{
	int64_t now = mono_ms();
	size_t i;

	pthread_mutex_lock(&log_lock);
	for (i = 0; i < REPEAT_SLOTS; i++) {
		struct repeat *r = &repeats[i];

		if (r->text != NULL && r->count > 0)
			emit_count(r, now, true);
		free(r->text);
		memset(r, 0, sizeof(*r));
	}
	pthread_mutex_unlock(&log_lock);
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
	char text[LOG_LINE_MAX];
	int saved = errno;

	if (level > log_level)
		return;
	vsnprintf(text, sizeof(text), fmt, ap);
	pthread_mutex_lock(&log_lock);
	if (level > LOG_WARNING || repeat_window_s == 0 ||
	    !repeated(level, text))
		emit(level, text);
	pthread_mutex_unlock(&log_lock);
	errno = saved;
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
