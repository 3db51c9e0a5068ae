/* A job's waiters: the requests a job will answer, detached and answered
 * when their part of the job is done. */
#include "fs/net/net_int.h"

#include <stdlib.h>

/* Detach the waiters of job for uid (all of them if uid is 0) that read
 * up to at least until (0: every waiter, READ or not). */
struct waiter *fs_net_take_waiters(struct fs_sync *s, struct job *job,
                                   uint32_t uid, uint64_t until)
{
	struct waiter *got = NULL, **pp;

	pthread_mutex_lock(&s->lock);
	pp = &job->waiters;
	while (*pp != NULL) {
		struct waiter *wt = *pp;

		if ((uid == 0 || wt->uid == uid) &&
		    (until == 0 || wt->until >= until)) {
			*pp = wt->next;
			wt->next = got;
			got = wt;
		} else {
			pp = &wt->next;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return got;
}

void fs_net_run_waiters(struct waiter *wt, int rc)
{
	while (wt != NULL) {
		struct waiter *next = wt->next;

		if (wt->cb != NULL)
			wt->cb(wt->ctx, rc);
		free(wt);
		wt = next;
	}
}

bool fs_net_has_waiter(struct fs_sync *s, struct job *job, uint32_t uid)
{
	bool found = false;

	pthread_mutex_lock(&s->lock);
	for (struct waiter *wt = job->waiters; wt != NULL && !found;
	     wt = wt->next)
		found = wt->uid == uid;
	pthread_mutex_unlock(&s->lock);
	return found;
}

bool fs_net_job_has_uid(const struct job *j, uint32_t uid)
{
	for (size_t i = 0; i < j->nuids; i++)
		if (j->uids[i] == uid)
			return true;
	return false;
}

void fs_net_job_free(struct job *job)
{
	free(job->gone);
	free(job->uids);
	free(job);
}

void fs_net_job_unlink(struct fs_sync *s, struct job *job)
{
	for (struct job **pp = &s->jobs; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == job) {
			*pp = job->next;
			return;
		}
	}
}
