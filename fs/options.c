#include "fs/options.h"

#include <errno.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
	KEY_DISCARD,
	KEY_RO,
	KEY_FSNAME,
};

#define OPT(t, p)                                                              \
	{                                                                      \
		t, offsetof(struct fs_options, p), 1                           \
	}

static const struct fuse_opt fs_opts[] = {
        OPT("passcmd=%s", passcmd),
        OPT("password_stdin", password_stdin),
        OPT("oauth2_cmd=%s", oauth2_cmd),
        OPT("cafile=%s", cafile),
        OPT("notls", notls),
        OPT("cache_dir=%s", cache_dir),
        OPT("offline", offline),
        OPT("delete=%s", delete_str),
        OPT("pop_keep=%s", pop_keep),
        OPT("poll=%s", poll_str),
        OPT("mark_seen", mark_seen),
        OPT("connections=%s", connections_str),
        OPT("timeout=%s", timeout_str),
        OPT("log=%s", log),
        OPT("--list", list),
        OPT("--unmount", unmount),
        /* The mount's source: ours to set (fs/main.c), so that a default
         * of ours never overrides the user's. */
        FUSE_OPT_KEY("fsname=", KEY_FSNAME),
        OPT("compress=%s", compress_str),
        OPT("prefetch=%s", prefetch),
        /* fstab noise: accepted and ignored so that an fstab line works. */
        FUSE_OPT_KEY("_netdev", KEY_DISCARD),
        FUSE_OPT_KEY("noauto", KEY_DISCARD),
        FUSE_OPT_KEY("auto", KEY_DISCARD),
        FUSE_OPT_KEY("user", KEY_DISCARD),
        FUSE_OPT_KEY("nouser", KEY_DISCARD),
        FUSE_OPT_KEY("users", KEY_DISCARD),
        FUSE_OPT_KEY("nofail", KEY_DISCARD),
        /* Seen, and passed on to the kernel. */
        FUSE_OPT_KEY("ro", KEY_RO),
        FUSE_OPT_END,
};

static int opt_proc(void *data, const char *arg, int key,
                    struct fuse_args *outargs)
{
	struct fs_options *o = data;

	(void)outargs;
	switch (key) {
	case KEY_DISCARD: return 0;
	case KEY_RO: o->ro = 1; return 1;
	case KEY_FSNAME:
		free(o->fsname);
		o->fsname = strdup(arg + strlen("fsname="));
		return o->fsname ? 0 : -1;
	case FUSE_OPT_KEY_NONOPT:
		/* The first plain argument is the account; the second, the
		 * mount point, is left for fuse_parse_cmdline() too. */
		if (o->account == NULL) {
			o->account = strdup(arg);
			return o->account ? 0 : -1;
		}
		if (o->mountpoint == NULL) {
			o->mountpoint = strdup(arg);
			return o->mountpoint ? 1 : -1;
		}
		return 1;
	default: return 1;
	}
}

/* A decimal number in [min, max], or the default when not given. */
static int number(const char *name, const char *s, unsigned min, unsigned max,
                  unsigned *out)
{
	unsigned long v;
	char *end;

	if (s == NULL)
		return 0;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v < min ||
	    v > max) {
		fprintf(stderr,
		        "mailfs: %s=%s: expected a number from %u to %u\n",
		        name, s, min, max);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

int fs_options_parse(struct fuse_args *args, struct fs_options *o)
{
	memset(o, 0, sizeof(*o));
	o->poll = 60;
	o->connections = 3;
	o->timeout = 30;
	if (fuse_opt_parse(args, o, fs_opts, opt_proc) != 0)
		return -EINVAL;
	if (number("poll", o->poll_str, 1, 86400, &o->poll) < 0 ||
	    number("connections", o->connections_str, 1, 16, &o->connections) <
	            0 ||
	    number("timeout", o->timeout_str, 1, 3600, &o->timeout) < 0)
		return -EINVAL;
	if (o->log != NULL && o->log[0] == '\0') {
		fprintf(stderr, "mailfs: log=: expected syslog, stderr or a "
		                "file\n");
		return -EINVAL;
	}

	if (o->delete_str == NULL || strcmp(o->delete_str, "trash") == 0)
		o->delete_mode = FS_DELETE_TRASH;
	else if (strcmp(o->delete_str, "expunge") == 0)
		o->delete_mode = FS_DELETE_EXPUNGE;
	else if (strcmp(o->delete_str, "refuse") == 0)
		o->delete_mode = FS_DELETE_REFUSE;
	else {
		fprintf(stderr,
		        "mailfs: delete=%s: expected trash, expunge or "
		        "refuse\n",
		        o->delete_str);
		return -EINVAL;
	}

	o->pop_keep_days = -1;
	if (o->pop_keep != NULL && strcmp(o->pop_keep, "forever") != 0) {
		char *end;

		errno = 0;
		o->pop_keep_days = strtol(o->pop_keep, &end, 10);
		if (errno != 0 || *end != '\0' || end == o->pop_keep ||
		    o->pop_keep_days < 0 || o->pop_keep_days > 36500) {
			fprintf(stderr,
			        "mailfs: pop_keep=%s: expected forever "
			        "or a number of days\n",
			        o->pop_keep);
			return -EINVAL;
		}
	}
	if (o->prefetch != NULL && strcmp(o->prefetch, "all") == 0) {
		o->prefetch_all = true;
	} else if (o->prefetch != NULL && strcmp(o->prefetch, "none") != 0) {
		fprintf(stderr, "mailfs: prefetch=%s: expected all or none\n",
		        o->prefetch);
		return -EINVAL;
	}
	o->compress = true;
	if (o->compress_str != NULL && strcmp(o->compress_str, "no") == 0)
		o->compress = false;
	else if (o->compress_str != NULL &&
	         strcmp(o->compress_str, "yes") != 0) {
		fprintf(stderr, "mailfs: compress=%s: expected yes or no\n",
		        o->compress_str);
		return -EINVAL;
	}
	if (!!o->passcmd + !!o->password_stdin + !!o->oauth2_cmd > 1) {
		fprintf(stderr, "mailfs: give only one of passcmd, "
		                "password_stdin and oauth2_cmd\n");
		return -EINVAL;
	}
	return 0;
}

static int make_absolute(char **path, const char *what, const char *start)
{
	char *out = NULL;

	if (*path == NULL || (*path)[0] == '/')
		return 0;
	if (start == NULL || start[0] != '/') {
		fprintf(stderr,
		        "mailfs: %s=%s: a relative path, and the current "
		        "directory is unknown\n",
		        what, *path);
		return -ENOENT;
	}
	if (asprintf(&out, "%s%s%s", start,
	             start[strlen(start) - 1] == '/' ? "" : "/", *path) < 0)
		return -ENOMEM;
	free(*path);
	*path = out;
	return 0;
}

int fs_options_absolute(struct fs_options *o, const char *start_dir)
{
	int rc = make_absolute(&o->cafile, "cafile", start_dir);

	if (rc == 0)
		rc = make_absolute(&o->cache_dir, "cache_dir", start_dir);
	if (rc == 0 && o->log != NULL && strcmp(o->log, "syslog") != 0 &&
	    strcmp(o->log, "stderr") != 0)
		rc = make_absolute(&o->log, "log", start_dir);
	return rc;
}

int fs_options_default_cache_dir(const char *name, char **dir_r)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = NULL;
	struct passwd *pw;
	int rc;

	*dir_r = NULL;
	if (xdg != NULL && xdg[0] == '/') {
		rc = asprintf(dir_r, "%s/mailfs/%s", xdg, name);
	} else {
		pw = getpwuid(getuid());
		if (pw != NULL && pw->pw_dir != NULL && pw->pw_dir[0] == '/')
			home = pw->pw_dir;
		else if (pw == NULL)
			home = getenv("HOME");
		if (home == NULL || home[0] != '/')
			return -ENOENT;
		rc = asprintf(dir_r, "%s/.cache/mailfs/%s", home, name);
	}
	if (rc < 0) {
		*dir_r = NULL;
		return -ENOMEM;
	}
	return 0;
}

void fs_options_free(struct fs_options *o)
{
	free(o->account);
	free(o->passcmd);
	free(o->oauth2_cmd);
	free(o->cafile);
	free(o->cache_dir);
	free(o->delete_str);
	free(o->pop_keep);
	free(o->log);
	free(o->fsname);
	free(o->mountpoint);
	free(o->poll_str);
	free(o->connections_str);
	free(o->timeout_str);
	free(o->compress_str);
	free(o->prefetch);
	memset(o, 0, sizeof(*o));
}

void fs_options_help(void)
{
	printf("usage: mailfs [options] ACCOUNT MOUNTPOINT\n"
	       "       mailfs [options] NAME [MOUNTPOINT]\n"
	       "       mailfs --list | --unmount NAME|MOUNTPOINT\n"
	       "       mailfs status [NAME|MOUNTPOINT] | fetch PATH\n"
	       "\n"
	       "ACCOUNT is imaps://USER@HOST[:PORT], imap://USER@HOST[:PORT] "
	       "(STARTTLS),\n"
	       "pop3s://USER@HOST[:PORT] or pop3://USER@HOST[:PORT] (STLS).\n"
	       "NAME is an account of ~/.config/mailfs/config (see "
	       "mailfs(1)).\n"
	       "\n"
	       "Paths in options are relative to the current directory.\n"
	       "\n"
	       "mailfs options:\n"
	       "    -o passcmd=CMD         run CMD; its first line is the "
	       "password\n"
	       "    -o password_stdin      read the password from standard "
	       "input\n"
	       "    -o oauth2_cmd=CMD      CMD prints an OAuth2 access token\n"
	       "    -o cafile=FILE         also trust the CA certificates in "
	       "FILE\n"
	       "    -o notls               allow plaintext (testing only)\n"
	       "    -o cache_dir=DIR       where the cache lives (default\n"
	       "                           ~/.cache/mailfs/USER@HOST)\n"
	       "    -o offline             serve the cache only, read-only\n"
	       "    -o delete=trash|expunge|refuse   what rm does (IMAP)\n"
	       "    -o pop_keep=forever|DAYS         POP3: when to delete "
	       "on the server\n"
	       "    -o poll=SECONDS        how old a listing may get (60)\n"
	       "    -o mark_seen           reading sets \\Seen\n"
	       "    -o connections=N       parallel IMAP connections (3)\n"
	       "    -o timeout=SECONDS     bound on every network wait (30)\n"
	       "    -o log=syslog|stderr|FILE   where messages go (default:\n"
	       "                           stderr with -f, else the journal\n"
	       "                           under systemd, else syslog)\n"
	       "    -o fsname=NAME         the mount's source (default: the\n"
	       "                           account name or URL)\n"
	       "    -o compress=yes|no     COMPRESS=DEFLATE when the server "
	       "offers it (yes)\n"
	       "    -o prefetch=all        keep every body cached, in the "
	       "background\n"
	       "\n");
}
