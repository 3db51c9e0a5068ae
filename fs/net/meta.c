/* Message metadata as a UID FETCH gives it (size, dates, flags, the
 * headers shown in xattrs), collected in a struct listing and stored. */
#include "fs/net/net_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/mime.h"

static char *header_value(const struct imap_msg_meta *m, const char *name,
                          bool decode)
{
	char *v = NULL;

	if (m->headers == NULL)
		return strdup("");
	if (decode) {
		if (mime_header_decoded(m->headers, m->headers_len, name, &v) <
		    0)
			return strdup("");
	} else if (mime_header_field(m->headers, m->headers_len, name, &v) <
	           0) {
		return strdup("");
	}
	return v;
}

/* \Recent is a property of one session, not of the message: it is not
 * shown and cannot be set. */
char *fs_net_flags_without_recent(const char *flags)
{
	char *out = malloc(strlen(flags) + 1), *o = out;
	const char *p = flags;

	if (out == NULL)
		return NULL;
	while (*p) {
		const char *end = strchr(p, ' ');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > 0 &&
		    !(len == 7 && strncasecmp(p, "\\Recent", 7) == 0)) {
			if (o != out)
				*o++ = ' ';
			memcpy(o, p, len);
			o += len;
		}
		p += len;
		while (*p == ' ')
			p++;
	}
	*o = '\0';
	return out;
}

void fs_net_meta_cb(void *ctx, const struct imap_msg_meta *m)
{
	struct listing *l = ctx;
	struct meta *e;

	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 256;
		struct meta *nv = realloc(l->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			l->oom = true;
			return;
		}
		l->v = nv;
		l->cap = ncap;
	}
	e = &l->v[l->n];
	memset(e, 0, sizeof(*e));
	e->uid = m->uid;
	e->size = m->size;
	e->internaldate = m->internaldate;
	e->tz = (int16_t)m->tz_minutes;
	e->modseq = m->modseq;
	e->flags = fs_net_flags_without_recent(m->flags);
	e->subject = header_value(m, "Subject", true);
	e->from = header_value(m, "From", true);
	e->date = header_value(m, "Date", true);
	e->message_id = header_value(m, "Message-ID", false);
	l->n++;
	if (!e->flags || !e->subject || !e->from || !e->date || !e->message_id)
		l->oom = true;
}

void fs_net_meta_clear(struct meta *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].flags);
		free(v[i].subject);
		free(v[i].from);
		free(v[i].date);
		free(v[i].message_id);
	}
}

void fs_net_listing_clear(struct listing *l)
{
	fs_net_meta_clear(l->v, l->n);
	l->n = 0;
}

void fs_net_listing_free(struct listing *l)
{
	fs_net_listing_clear(l);
	free(l->v);
	l->v = NULL;
	l->cap = 0;
	free(l->uids);
	l->uids = NULL;
	l->nuids = l->capuids = 0;
	fs_net_meta_clear(l->sv, l->sn);
	free(l->sv);
	l->sv = NULL;
	l->sn = l->scap = 0;
	free(l->gone);
	free(l->old);
	l->gone = l->old = NULL;
	l->ngone = l->nold = 0;
}

int fs_net_cmp_meta(const void *a, const void *b)
{
	const struct meta *x = a, *y = b;

	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* Store what a metadata fetch said of one message. */
int fs_net_put_meta(struct cache_txn *txn, uint32_t id, uint32_t uidvalidity,
                    const struct meta *e)
{
	struct cache_msg msg = {
	        .key = {id, uidvalidity, e->uid},
	        .size = e->size,
	        .internaldate = e->internaldate,
	        .tz_minutes = e->tz,
	        .modseq = e->modseq,
	        .flags = e->flags,
	        .subject = e->subject,
	        .from = e->from,
	        .date = e->date,
	        .message_id = e->message_id,
	};

	return cache_msg_put(txn, &msg);
}
