/* The IMAP client's pacing: what servers say about load (struct
 * imap_pace in imap_client.h), and the waits it asks for. */
#include "proto/imap_conn_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proto/log.h"

/* A throttled command that names no back-off time waits this long; a
 * named time shorter than PACE_MIN_MS is taken as PACE_MIN_MS. */
#define PACE_DEFAULT_MS 1000
#define PACE_MIN_MS     100
/* Longest back-off taken from a server (it is bounded by the timeout
 * anyway; this keeps the arithmetic sane). */
#define PACE_MAX_MS     (24 * 3600 * 1000)
#define PACE_SLICE_MS   100 /* a pacing wait looks at shutdown */

int64_t imap_conn_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- pacing: what the server says about load --------------------------- */

enum { PACE_LOG_THROTTLED = 1, PACE_LOG_SLOWED = 2, PACE_LOG_REFUSED = 4 };

void imap_pace_init(struct imap_pace *p)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
}

void imap_pace_destroy(struct imap_pace *p)
{
	pthread_mutex_destroy(&p->lock);
}

bool imap_pace_refused(struct imap_pace *p)
{
	bool first;

	pthread_mutex_lock(&p->lock);
	p->refused++;
	first = !(p->logged & PACE_LOG_REFUSED);
	p->logged |= PACE_LOG_REFUSED;
	pthread_mutex_unlock(&p->lock);
	return first;
}

void imap_pace_report(struct imap_pace *p)
{
	unsigned t, s, r;

	pthread_mutex_lock(&p->lock);
	t = p->throttled;
	s = p->slowed;
	r = p->refused;
	pthread_mutex_unlock(&p->lock);
	if (t + s + r > 0)
		log_notice("the server throttled %u command%s, slowed %u "
		           "answer%s and refused %u connection%s (too many) "
		           "during this mount",
		           t, t == 1 ? "" : "s", s, s == 1 ? "" : "s", r,
		           r == 1 ? "" : "s");
}

static bool has_word(const char *text, const char *word)
{
	return text != NULL && strcasestr(text, word) != NULL;
}

enum imap_busy imap_busy_parse(const char *code, const char *text,
                               int *wait_ms_r)
{
	static const char backoff[] = "Suggested Backoff Time:";
	const char *b = text ? strcasestr(text, backoff) : NULL;

	*wait_ms_r = 0;
	if (has_word(text, "Too many simultaneous connections") ||
	    has_word(text, "Maximum number of connections") ||
	    has_word(text, "Too many connections"))
		return IMAP_BUSY_TOO_MANY;
	if (b != NULL) {
		char *end;
		long ms;

		errno = 0;
		ms = strtol(b + sizeof(backoff) - 1, &end, 10);
		if (errno == 0 && end != b + sizeof(backoff) - 1 && ms >= 0)
			*wait_ms_r = ms > PACE_MAX_MS ? PACE_MAX_MS : (int)ms;
		return IMAP_BUSY_THROTTLED;
	}
	if ((code != NULL && (strcasecmp(code, "THROTTLED") == 0 ||
	                      strcasecmp(code, "UNAVAILABLE") == 0)) ||
	    has_word(text, "[THROTTLED]") ||
	    has_word(text, "Request is throttled"))
		return IMAP_BUSY_THROTTLED;
	return IMAP_BUSY_NONE;
}

/* The server throttled a command: nothing goes out on any connection of
 * the account for ms. */
void imap_conn_pace_hold(struct imap_client *c, int ms, const char *text)
{
	struct imap_pace *p = c->pace;
	int64_t until;
	bool first;

	if (ms <= 0)
		ms = PACE_DEFAULT_MS;
	else if (ms < PACE_MIN_MS)
		ms = PACE_MIN_MS;
	until = imap_conn_now_ms() + ms;
	pthread_mutex_lock(&p->lock);
	if (p->until_ms < until)
		p->until_ms = until;
	p->throttled++;
	first = !(p->logged & PACE_LOG_THROTTLED);
	p->logged |= PACE_LOG_THROTTLED;
	pthread_mutex_unlock(&p->lock);
	if (first)
		log_warn("imap %s: the server is throttling requests (%.200s): "
		         "waiting %d ms as told before sending anything, then "
		         "sending the command again (logged once; counted)",
		         c->label, text, ms);
	else
		log_debug("imap %s: throttled, waiting %d ms", c->label, ms);
}

void imap_conn_pace_slowed(struct imap_client *c, const char *text)
{
	struct imap_pace *p = c->pace;
	bool first;

	pthread_mutex_lock(&p->lock);
	p->slowed++;
	first = !(p->logged & PACE_LOG_SLOWED);
	p->logged |= PACE_LOG_SLOWED;
	pthread_mutex_unlock(&p->lock);
	if (first)
		log_notice("imap %s: the server says it slowed its answers "
		           "down (%.200s) (logged once; counted)",
		           c->label, text);
}

/* How long the account must still wait before sending, in ms (0: go). */
int64_t imap_conn_pace_left(struct imap_client *c)
{
	int64_t left;

	pthread_mutex_lock(&c->pace->lock);
	left = c->pace->until_ms - imap_conn_now_ms();
	pthread_mutex_unlock(&c->pace->lock);
	return left > 0 ? left : 0;
}

/* Wait until the account may send again.  -EAGAIN, at once, when the
 * wait would be longer than the timeout; -ESHUTDOWN when imap_shutdown()
 * was called meanwhile. */
int imap_conn_pace_wait(struct imap_client *c)
{
	for (;;) {
		int64_t left = imap_conn_pace_left(c);
		struct timespec ts;

		if (left == 0)
			return 0;
		if (left > c->timeout_ms)
			return -EAGAIN;
		if (atomic_load(&c->stopping))
			return -ESHUTDOWN;
		if (left > PACE_SLICE_MS)
			left = PACE_SLICE_MS;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000000L;
		nanosleep(&ts, NULL);
	}
}
