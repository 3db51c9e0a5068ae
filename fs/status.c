/* mailfs status (fs/status.h). */
#include "fs/status.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "fs/config.h"
#include "proto/strbuf.h"

#define STATUS_ATTR "user.mailfs.status"

/* --- mounts ------------------------------------------------------------ */

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
	char *o = s;

	for (char *p = s; *p != '\0'; p++) {
		if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' &&
		    p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
			*o++ = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 |
			              (p[3] - '0'));
			p += 3;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
}

/* The mount points of every mailfs mount, in mount order; *n_r of them. */
static char **mailfs_mounts(size_t *n_r)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char **v = NULL, *line = NULL;
	size_t n = 0, cap = 0;

	*n_r = 0;
	if (f == NULL)
		return NULL;
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *mnt = NULL, *tok, *type = NULL;
		int field = 0;
		bool dash = false;

		for (tok = strtok_r(line, " \n", &save); tok != NULL;
		     tok = strtok_r(NULL, " \n", &save), field++) {
			if (field == 4)
				mnt = tok;
			else if (dash && type == NULL)
				type = tok;
			else if (field > 5 && strcmp(tok, "-") == 0)
				dash = true;
		}
		if (mnt == NULL || type == NULL ||
		    strcmp(type, "fuse.mailfs") != 0)
			continue;
		unescape(mnt);
		{
			char **nv = realloc(v, (n + 1) * sizeof(*nv));

			if (nv == NULL || (nv[n] = strdup(mnt)) == NULL) {
				free(nv != NULL ? nv : v);
				v = NULL;
				n = 0;
				break;
			}
			v = nv;
			n++;
		}
	}
	free(line);
	fclose(f);
	*n_r = n;
	return v;
}

static void free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

char *fs_status_mount_of(const char *path)
{
	char real[PATH_MAX], *best = NULL;
	size_t n, bestlen = 0;
	char **v;

	if (realpath(path, real) == NULL) {
		fprintf(stderr, "mailfs status: %s: %s\n", path,
		        strerror(errno));
		return NULL;
	}
	v = mailfs_mounts(&n);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(v[i]);

		if (strncmp(real, v[i], len) != 0 ||
		    (real[len] != '\0' && real[len] != '/' &&
		     strcmp(v[i], "/") != 0))
			continue;
		if (best == NULL || len > bestlen) {
			best = v[i];
			bestlen = len;
		}
	}
	best = best != NULL ? strdup(best) : NULL;
	free_list(v, n);
	if (best == NULL)
		fprintf(stderr, "mailfs status: %s is not in a mailfs mount\n",
		        path);
	return best;
}

/* --- reading ----------------------------------------------------------- */

int fs_status_getxattr(const char *path, const char *name, char **val_r)
{
	for (int tries = 0; tries < 8; tries++) {
		ssize_t n = getxattr(path, name, NULL, 0), got;
		char *buf;

		if (n < 0)
			return -errno;
		buf = malloc((size_t)n + 1);
		if (buf == NULL)
			return -ENOMEM;
		got = getxattr(path, name, buf, (size_t)n);
		if (got < 0) {
			int e = errno;

			free(buf);
			if (e == ERANGE)
				continue; /* it grew meanwhile */
			return -e;
		}
		buf[got] = '\0';
		*val_r = buf;
		return 0;
	}
	return -ERANGE;
}

static struct json *read_json(const char *path, const char *name, int *err_r)
{
	char *text = NULL;
	struct json *j;
	int rc = fs_status_getxattr(path, name, &text);

	if (rc < 0) {
		*err_r = rc;
		return NULL;
	}
	j = json_parse(text, strlen(text));
	free(text);
	if (j == NULL || j->type != JSON_OBJECT) {
		json_free(j);
		*err_r = -EBADMSG;
		return NULL;
	}
	return j;
}

struct json *fs_status_read(const char *mnt, int *err_r)
{
	struct json *root = read_json(mnt, STATUS_ATTR, err_r), *list;
	double next;

	if (root == NULL)
		return NULL;
	list = (struct json *)json_get(root, "mailboxes");
	next = json_num(root, "next", -1);
	/* Later pages of a long mailbox list. */
	for (int pages = 0; list != NULL && next > 0 && pages < 100000;
	     pages++) {
		char name[64];
		struct json *page;
		struct json *items;

		snprintf(name, sizeof(name), STATUS_ATTR ".%.0f", next);
		page = read_json(mnt, name, err_r);
		if (page == NULL) {
			json_free(root);
			return NULL;
		}
		items = (struct json *)json_get(page, "mailboxes");
		for (size_t i = 0; items != NULL && i < items->count; i++) {
			json_append(list, items->items[i]);
			items->items[i] = NULL;
		}
		if (items != NULL)
			items->count = 0;
		next = json_num(page, "next", -1);
		json_free(page);
	}
	/* "next" said where the first page ended: no more. */
	for (size_t i = 0; i < root->count; i++) {
		if (strcmp(root->keys[i], "next") != 0)
			continue;
		json_free(root->items[i]);
		free(root->keys[i]);
		memmove(&root->items[i], &root->items[i + 1],
		        (root->count - i - 1) * sizeof(*root->items));
		memmove(&root->keys[i], &root->keys[i + 1],
		        (root->count - i - 1) * sizeof(*root->keys));
		root->count--;
		break;
	}
	return root;
}

/* --- the table --------------------------------------------------------- */

void fs_status_bytes(double n, char *buf, size_t size)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	unsigned u = 0;

	while (n >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		n /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%.0f B", n);
	else
		snprintf(buf, size, "%.1f %s", n, units[u]);
}

static void ago(double when, char *buf, size_t size)
{
	double d = difftime(time(NULL), (time_t)when);

	if (when <= 0)
		snprintf(buf, size, "never");
	else if (d < 120)
		snprintf(buf, size, "%.0f s ago", d < 0 ? 0 : d);
	else if (d < 7200)
		snprintf(buf, size, "%.0f min ago", d / 60);
	else if (d < 172800)
		snprintf(buf, size, "%.0f h ago", d / 3600);
	else
		snprintf(buf, size, "%.0f days ago", d / 86400);
}

static void print_row(const char *name, const struct json *o, int width)
{
	char cached[32], size[32], when[32] = "";
	const struct json *sel = json_get(o, "selectable");

	fs_status_bytes(json_num(o, "cached_bytes", 0), cached, sizeof(cached));
	fs_status_bytes(json_num(o, "bytes", 0), size, sizeof(size));
	if (json_get(o, "last_sync") != NULL)
		ago(json_num(o, "last_sync", 0), when, sizeof(when));
	if (sel != NULL && sel->type == JSON_BOOL && !sel->b) {
		printf("%-*s  %9s  %9s  %11s  %11s  %7s  %s\n", width, name,
		       "-", "-", "-", "-", "-", "(no messages: \\Noselect)");
		return;
	}
	printf("%-*s  %9.0f  %9.0f  %11s  %11s  %7.0f  %s", width, name,
	       json_num(o, "messages", 0), json_num(o, "cached", 0), cached,
	       size, json_num(o, "uploads", 0), when);
	if (json_num(o, "failed_uploads", 0) > 0)
		printf("  (%.0f uploads refused: see the log)",
		       json_num(o, "failed_uploads", 0));
	printf("\n");
}

static void print_table(const char *mnt, const struct json *st)
{
	const struct json *list = json_get(st, "mailboxes");
	const struct json *quota = json_get(st, "quota");
	const char *conn = json_str(st, "connection", "?");
	char when[32], a[32], b[32];
	int width = 7;

	printf("%s: %s\n", mnt, json_str(st, "account", "?"));
	printf("  connection: %s", conn);
	if (strcmp(conn, "connected") == 0)
		printf(" (%.0f connection%s)", json_num(st, "connections", 0),
		       json_num(st, "connections", 0) == 1 ? "" : "s");
	else if (strcmp(conn, "unreachable") == 0)
		printf(" (next attempt in %.0f s)",
		       json_num(st, "retry_in", 0));
	else if (strcmp(conn, "offline") == 0)
		printf(" (serving the cache only)");
	printf("\n");
	ago(json_num(st, "last_sync", 0), when, sizeof(when));
	printf("  mailbox list: %s\n", when);
	if (quota != NULL && quota->type == JSON_OBJECT) {
		printf("  quota:");
		if (json_get(quota, "storage_limit") != NULL) {
			fs_status_bytes(json_num(quota, "storage_used", 0), a,
			                sizeof(a));
			fs_status_bytes(json_num(quota, "storage_limit", 0), b,
			                sizeof(b));
			printf(" %s of %s", a, b);
		}
		if (json_get(quota, "messages_limit") != NULL)
			printf("%s %.0f of %.0f messages",
			       json_get(quota, "storage_limit") != NULL ? ";"
			                                                : "",
			       json_num(quota, "messages_used", 0),
			       json_num(quota, "messages_limit", 0));
		printf("\n");
	} else {
		printf("  quota: none reported by the server\n");
	}
	for (size_t i = 0; list != NULL && i < list->count; i++) {
		int w = (int)strlen(json_str(list->items[i], "path", ""));

		if (w > width)
			width = w > 60 ? 60 : w;
	}
	printf("\n%-*s  %9s  %9s  %11s  %11s  %7s  %s\n", width, "MAILBOX",
	       "MESSAGES", "CACHED", "CACHED SIZE", "SIZE", "UPLOADS",
	       "LAST RESYNC");
	for (size_t i = 0; list != NULL && i < list->count; i++)
		print_row(json_str(list->items[i], "path", "?"), list->items[i],
		          width);
	print_row("TOTAL", json_get(st, "total"), width);
}

static int report_one(const char *mnt, bool as_json, struct strbuf *out)
{
	int err = 0;
	struct json *st = fs_status_read(mnt, &err);

	if (st == NULL) {
		fprintf(stderr, "mailfs status: %s: %s\n", mnt,
		        err == -ENOTCONN
		                ? "its mailfs is gone; unmount it with "
		                  "fusermount3 -u"
		        : err == -ENODATA || err == -ENOTSUP
		                ? "this mount reports no status (a POP3 mount, "
		                  "or an older mailfs)"
		        : err == -EBADMSG ? "its status cannot be read"
		                          : strerror(-err));
		return 1;
	}
	if (as_json) {
		if (out->len > 1)
			strbuf_str(out, ",");
		json_write(out, st);
	} else {
		print_table(mnt, st);
	}
	json_free(st);
	return 0;
}

/* The directory an argument of mailfs status names: a directory, or the
 * mount point of the account of that name in the configuration file.  New
 * string, or NULL after saying why. */
static char *status_dir(const char *arg)
{
	struct fs_account *acct = NULL;
	struct stat sb;
	char *dir;
	int rc;

	if (stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode))
		return strdup(arg);
	rc = fs_config_find(arg, &acct);
	if (rc == 0 && acct->mountpoint != NULL) {
		dir = strdup(acct->mountpoint);
		fs_account_free(&acct);
		return dir;
	}
	if (rc == 0)
		fprintf(stderr,
		        "mailfs status: account %s has no mountpoint in the "
		        "configuration file; give its mount point\n",
		        arg);
	else if (rc == -ENOENT)
		fprintf(stderr,
		        "mailfs status: %s: neither a directory nor an account "
		        "of the configuration file\n",
		        arg);
	fs_account_free(&acct);
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: mailfs status [--json] [MOUNTPOINT|NAME]\n"
	        "\n"
	        "Per mailbox of a mailfs mount (every mount without "
	        "MOUNTPOINT; NAME: an account of the configuration file): messages on\n"
	        "the server, messages and bytes cached, uploads waiting, "
	        "the last resync; and\n"
	        "the connection and the quota.\n");
}

int fs_status_main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"json", no_argument, NULL, 'j'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	bool as_json = false;
	struct strbuf out = {0};
	char **mounts = NULL;
	size_t n = 0;
	int c, ret = 0;

	alarm(STATUS_TIMEOUT);
	optind = 1;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		if (c == 'j') {
			as_json = true;
		} else if (c == 'h') {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind > 1) {
		usage(stderr);
		return 2;
	}
	if (argc - optind == 1) {
		char *dir = status_dir(argv[optind]), *mnt;

		if (dir == NULL)
			return 1;
		mnt = fs_status_mount_of(dir);
		free(dir);
		if (mnt == NULL)
			return 1;
		mounts = malloc(sizeof(*mounts));
		if (mounts == NULL) {
			free(mnt);
			return 1;
		}
		mounts[0] = mnt;
		n = 1;
	} else {
		mounts = mailfs_mounts(&n);
		if (n == 0) {
			fprintf(stderr, "mailfs status: no mailfs mount\n");
			return 1;
		}
	}
	if (as_json && argc - optind == 0)
		strbuf_str(&out, "[");
	for (size_t i = 0; i < n; i++) {
		if (!as_json && i > 0)
			printf("\n");
		ret |= report_one(mounts[i], as_json, &out);
	}
	if (as_json && argc - optind == 0)
		strbuf_str(&out, "]");
	if (as_json && out.len > 0 && !out.oom)
		printf("%s\n", out.s);
	free(out.s);
	free_list(mounts, n);
	return ret;
}
