/* The account's quota: GETQUOTAROOT INBOX (RFC 9208) on a worker, as a
 * change job (fs_sync_call), its answer kept in struct fs_sync for statfs
 * and the status attributes. */
#include <errno.h>
#include <string.h>

#include "fs/net/net_int.h"
#include "proto/log.h"

static int quota_fn(struct imap_client *c, void *ctx)
{
	struct fs_sync *s = ctx;
	struct proto_err err = {0};
	struct imap_quota q;
	int rc = imap_getquotaroot(c, "INBOX", &q, &err);

	pthread_mutex_lock(&s->lock);
	if (rc == -EOPNOTSUPP) {
		s->quota_none = true;
	} else if (rc == 0) {
		s->quota = (struct fs_quota){
		        .known = true,
		        .has_storage = q.has_storage,
		        .storage_used = q.storage_used * 1024,
		        .storage_limit = q.storage_limit * 1024,
		        .has_messages = q.has_messages,
		        .messages_used = q.messages_used,
		        .messages_limit = q.messages_limit,
		};
	}
	pthread_mutex_unlock(&s->lock);
	if (rc < 0 && rc != -EOPNOTSUPP)
		log_debug("GETQUOTAROOT INBOX failed: %s", err.text);
	/* A server that refuses it (NO) is not a broken connection. */
	return rc == -EPERM || rc == -EINVAL || rc == -EOPNOTSUPP ? 0 : rc;
}

static void quota_done(void *ctx, int rc)
{
	struct fs_sync *s = ctx;

	(void)rc;
	pthread_mutex_lock(&s->lock);
	s->quota_busy = false;
	pthread_mutex_unlock(&s->lock);
}

void fs_sync_quota_refresh(struct fs_sync *s)
{
	pthread_mutex_lock(&s->lock);
	if (s->quota_busy || s->quota_none || s->stop) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	s->quota_busy = true;
	pthread_mutex_unlock(&s->lock);
	if (fs_sync_call(s, quota_fn, s, quota_done, s) < 0)
		quota_done(s, 0);
}

void fs_sync_quota(struct fs_sync *s, struct fs_quota *q_r)
{
	pthread_mutex_lock(&s->lock);
	*q_r = s->quota;
	pthread_mutex_unlock(&s->lock);
}
