/* A worker's connection: logged in as the mount does, prepared for
 * resyncs, and a mailbox selected on it. */
#include "fs/net/net_int.h"

#include <errno.h>
#include <string.h>

#include "proto/log.h"

void fs_sync_prepare(struct imap_client *c)
{
	struct proto_err err = {0};
	char enabled[256];

	/* QRESYNC makes a resync one round trip and reports expunges by
	 * UID (VANISHED); it implies CONDSTORE. */
	if (imap_has_cap(c, "QRESYNC") && imap_has_cap(c, "ENABLE") &&
	    imap_enable(c, "QRESYNC", enabled, &err) < 0)
		log_info("cannot enable QRESYNC: %s", err.text);
}

int fs_sync_connect(struct mailfs *fs, struct imap_client **c_r,
                    struct proto_err *err)
{
	int rc = login_imap(fs->login, &fs->imap, c_r, err);

	if (rc == 0)
		fs_sync_prepare(*c_r);
	return rc;
}

int fs_sync_open_mailbox(struct mailfs *fs, struct imap_client *c, uint32_t id,
                         uint32_t uidvalidity, bool writable)
{
	struct imap_select_info info;
	struct proto_err err = {0};
	struct fs_mailbox *mb = NULL;
	int rc;

	rc = fs_tree_get(fs->tree, id, &mb);
	if (rc < 0)
		return rc;
	if (imap_selected(c) == NULL ||
	    strcmp(imap_selected(c), mb->name) != 0 ||
	    (writable && !imap_selected_writable(c))) {
		rc = imap_select(c, mb->name, !writable, &info, &err);
		if (rc < 0) {
			log_warn("cannot open mailbox %s: %s", mb->name,
			         err.text);
		} else if (uidvalidity != 0 &&
		           info.uidvalidity != uidvalidity) {
			log_notice("mailbox %s: UIDVALIDITY is now %u (cached "
			           "%u); it will be listed again",
			           mb->name, info.uidvalidity, uidvalidity);
			rc = -ESTALE;
		}
	}
	fs_mailbox_free(&mb);
	return rc;
}
