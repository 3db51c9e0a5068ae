/* mailfs: mount an email account.
 *
 * Order matters here (STYLE.md): everything that can fail in a way the
 * user must see (options, the account URL, the mount point, the password,
 * the server: TLS, login) is checked in the foreground, before mounting;
 * then the filesystem is mounted, the process daemonizes, and only then
 * are the cache opened and threads started (LMDB and threads do not
 * survive fork()). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <mntent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/inval.h"
#include "fs/mailfs.h"
#include "fs/imap/newfile.h"
#include "fs/pop/poller.h"
#include "fs/net/sync.h"
#include "fs/net/watch.h"
#include "proto/cred.h"
#include "proto/log.h"

static int check_mountpoint(const char *path)
{
	struct dirent *de;
	struct stat st;
	DIR *d;

	if (stat(path, &st) != 0) {
		fprintf(stderr, "mailfs: mount point %s: %s\n", path,
		        strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "mailfs: mount point %s is not a directory\n",
		        path);
		return -1;
	}
	d = opendir(path);
	if (d == NULL) {
		fprintf(stderr, "mailfs: mount point %s: %s\n", path,
		        strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 &&
		    strcmp(de->d_name, "..") != 0) {
			closedir(d);
			fprintf(stderr, "mailfs: mount point %s is not empty\n",
			        path);
			return -1;
		}
	}
	closedir(d);
	return 0;
}

static char *default_cache_dir(const struct account_url *url)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");
	char *name = NULL, *path = NULL;
	int rc;

	if (url_cache_name(url, &name) < 0)
		return NULL;
	if (xdg != NULL && xdg[0] == '/')
		rc = asprintf(&path, "%s/mailfs/%s", xdg, name);
	else if (home != NULL && home[0] == '/')
		rc = asprintf(&path, "%s/.cache/mailfs/%s", home, name);
	else
		rc = -1;
	free(name);
	return rc < 0 ? NULL : path;
}

static char *absolute(const char *path)
{
	char cwd[PATH_MAX];
	char *out = NULL;

	if (path[0] == '/')
		return strdup(path);
	if (getcwd(cwd, sizeof(cwd)) == NULL ||
	    asprintf(&out, "%s/%s", cwd, path) < 0)
		return NULL;
	return out;
}

static bool cache_exists(const char *dir)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	return access(path, F_OK) == 0;
}

/* Read the secret once, in the foreground (the commands get the long
 * limit of cred_from_cmd(): a passphrase may be typed), and make it the
 * source of every login: later runs of the commands are bounded by
 * -o timeout. */
static int get_secret(struct mailfs *fs, struct proto_err *err)
{
	enum login_kind kind = LOGIN_FIXED;
	const char *cmd = NULL;
	char prompt[512], *secret = NULL;
	int rc;

	if (fs->opts.oauth2_cmd != NULL) {
		kind = LOGIN_OAUTH2;
		cmd = fs->opts.oauth2_cmd;
	} else if (fs->opts.passcmd != NULL) {
		kind = LOGIN_PASSCMD;
		cmd = fs->opts.passcmd;
	}
	if (cmd != NULL) {
		rc = cred_from_cmd(cmd, &secret, err);
	} else if (fs->opts.password_stdin) {
		rc = cred_from_stdin(&secret, err);
	} else {
		snprintf(prompt, sizeof(prompt),
		         "Password for %s@%s: ", fs->url.user, fs->url.host);
		rc = cred_from_tty(prompt, &secret, err);
	}
	if (rc < 0)
		return rc;
	rc = login_new(&fs->login, kind, cmd, (int)fs->opts.timeout * 1000,
	               &secret);
	cred_free(&secret);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, rc, "out of memory");
	return 0;
}

/* Deleting from a POP3 maildrop also deletes from the IMAP view of the
 * same account: say so once, if that account is mounted over IMAP too. */
static void warn_pop_keep(struct mailfs *fs)
{
	struct account_url imap = fs->url;
	char *name = NULL, *dir = NULL, *path, *slash;
	struct stat st;

	if (fs->opts.pop_keep_days < 0)
		return;
	imap.proto = URL_IMAP;
	imap.port = URL_PORT_IMAPS;
	imap.port_explicit = false;
	snprintf(imap.port_str, sizeof(imap.port_str), "%u", URL_PORT_IMAPS);
	if (url_cache_name(&imap, &name) < 0 ||
	    (dir = strdup(fs->cache_path)) == NULL)
		goto out;
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	if (slash != NULL && asprintf(&path, "%s/%s", dir, name) >= 0) {
		if (stat(path, &st) == 0)
			fprintf(stderr,
			        "mailfs: warning: %s@%s is also cached over "
			        "IMAP (%s); with pop_keep=%ld, messages "
			        "deleted from the POP3 maildrop vanish for "
			        "IMAP clients too\n",
			        fs->url.user, fs->url.host, path,
			        fs->opts.pop_keep_days);
		free(path);
	}
out:
	free(name);
	free(dir);
}

static bool unreachable(const struct proto_err *err)
{
	return err->cls == PERR_RESOLVE || err->cls == PERR_CONNECT ||
	       err->cls == PERR_TIMEOUT;
}

/* Is path a mount point in our mount table?  Read from /proc, never
 * through the mount (a mount whose session ended would not answer).  When
 * the table cannot be read, yes: the safe answer for the caller. */
static bool mount_listed(const char *path)
{
	FILE *f = setmntent("/proc/self/mounts", "r");
	struct mntent *m;
	bool found = false;

	if (f == NULL)
		return true;
	while (!found && (m = getmntent(f)) != NULL)
		found = strcmp(m->mnt_dir, path) == 0;
	endmntent(f);
	return found;
}

/* The network side's reconnect callback (fs/net/sync.h), on a worker:
 * uploads that waited for the server go now.  The network side knows
 * nothing of uploads; the mount wires the two together here. */
static void server_back(void *ctx)
{
	fs_newfile_resume(ctx);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = {0};
	struct fuse_loop_config *loop = NULL;
	struct imap_client *first = NULL;
	struct pop3_client *first_pop = NULL;
	bool down = false, unmounted = false;
	struct proto_err err = {0};
	struct mailfs fs = {0};
	int ret = 1, rc;

	imap_pace_init(&fs.pace);
	/* A dead TLS socket must give EPIPE, not kill the daemon. */
	signal(SIGPIPE, SIG_IGN);
	/* Many threads, little memory each: few malloc arenas keep the
	 * resident set small. */
	mallopt(M_ARENA_MAX, 2);
	if (fs_options_parse(&args, &fs.opts) != 0)
		goto out_args;
	if (fuse_parse_cmdline(&args, &cmd) != 0)
		goto out_args;
	if (cmd.show_help) {
		fs_options_help();
		printf("FUSE options:\n");
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (cmd.show_version) {
		printf("mailfs %s\n", MAILFS_VERSION);
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (fs.opts.account == NULL || cmd.mountpoint == NULL) {
		fprintf(stderr, "usage: mailfs [options] ACCOUNT MOUNTPOINT "
		                "(mailfs -h for help)\n");
		goto out_args;
	}
	if (cmd.debug)
		log_set_level(LOG_DEBUG);
	if (url_parse(fs.opts.account, &fs.url, &err) < 0) {
		fprintf(stderr, "mailfs: %s\n", err.text);
		goto out_args;
	}
	fs.is_pop = fs.url.proto == URL_POP3;
	if (check_mountpoint(cmd.mountpoint) != 0)
		goto out_args;
	/* Absolute now: daemonizing changes the working directory. */
	fs.cache_path = fs.opts.cache_dir ? absolute(fs.opts.cache_dir)
	                                  : default_cache_dir(&fs.url);
	if (fs.cache_path == NULL) {
		fprintf(stderr, "mailfs: no cache directory: set HOME, "
		                "XDG_CACHE_HOME or -o cache_dir=\n");
		goto out_args;
	}
	fs.uid = getuid();
	fs.gid = getgid();
	fs.mountpoint = cmd.mountpoint;

	fs.imap.host = fs.url.host;
	fs.imap.port = fs.url.port_str;
	fs.imap.user = fs.url.user;
	fs.imap.cafile = fs.opts.cafile;
	fs.imap.timeout_ms = (int)fs.opts.timeout * 1000;
	fs.imap.pace = &fs.pace;
	fs.imap.no_compress = !fs.opts.compress;
	fs.imap.tls = fs.url.implicit_tls ? IMAP_TLS_IMPLICIT
	              : fs.opts.notls     ? IMAP_TLS_NONE
	                                  : IMAP_TLS_STARTTLS;
	fs.pop3.host = fs.url.host;
	fs.pop3.port = fs.url.port_str;
	fs.pop3.user = fs.url.user;
	fs.pop3.cafile = fs.opts.cafile;
	fs.pop3.timeout_ms = fs.imap.timeout_ms;
	fs.pop3.tls = fs.url.implicit_tls ? POP3_TLS_IMPLICIT
	              : fs.opts.notls     ? POP3_TLS_NONE
	                                  : POP3_TLS_STLS;
	if (fs.is_pop)
		warn_pop_keep(&fs);

	if (fs.opts.offline) {
		if (!cache_exists(fs.cache_path)) {
			fprintf(stderr,
			        "mailfs: offline: no cache for %s@%s in %s "
			        "(mount it online once)\n",
			        fs.url.user, fs.url.host, fs.cache_path);
			goto out_args;
		}
		fs.offline = true;
	} else {
		if (get_secret(&fs, &err) < 0) {
			fprintf(stderr, "mailfs: %s\n", err.text);
			goto out_args;
		}
		if (fs.is_pop)
			rc = login_pop3(fs.login, &fs.pop3, &first_pop, &err);
		else
			rc = login_imap(fs.login, &fs.imap, &first, &err);
		if (rc < 0 && unreachable(&err) &&
		    cache_exists(fs.cache_path)) {
			fprintf(stderr,
			        "mailfs: warning: %s; serving the cache "
			        "read-only until the server is back\n",
			        err.text);
			down = true;
		} else if (rc < 0 && fs.is_pop &&
		           (rc == -EBUSY || rc == -EAGAIN)) {
			/* The login was accepted; the maildrop is locked by
			 * another client for now ([IN-USE], [SYS/TEMP]).  The
			 * poller tries again. */
			fprintf(stderr,
			        "mailfs: warning: %s; checking again in a "
			        "while\n",
			        err.text);
		} else if (rc < 0) {
			fprintf(stderr, "mailfs: cannot mount %s: %s\n",
			        fs.opts.account, err.text);
			goto out_args;
		}
	}
	/* A server down at mount time makes the mount read-only; reading
	 * reconnects by itself when it comes back. */
	fs.readonly = fs.opts.ro || fs.offline || down;
	/* From here on a refused login is for the log (once), not for the
	 * user at the terminal. */
	if (fs.login != NULL)
		login_set_reporting(fs.login, true);

	/* The kernel checks permissions from the modes we report. */
	fuse_opt_add_arg(&args, "-odefault_permissions,fsname=mailfs,"
	                        "subtype=mailfs");
	if (fs.is_pop)
		fs.se = fuse_session_new(&args, &fs_pop_ops, sizeof(fs_pop_ops),
		                         &fs);
	else
		fs.se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &fs);
	if (fs.se == NULL)
		goto out_conn;
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_session;
	if (fuse_session_mount(fs.se, cmd.mountpoint) != 0)
		goto out_signals;
	if (fuse_daemonize(cmd.foreground) != 0)
		goto out_unmount;
	if (!cmd.foreground)
		log_use_syslog(true);

	rc = cache_open(fs.cache_path, &fs.cache);
	if (rc < 0) {
		log_err("cannot open the cache in %s: %s", fs.cache_path,
		        strerror(-rc));
		goto out_unmount;
	}
	if (fs_tree_new(&fs.tree) < 0 || fs_newfiles_new(&fs.newfiles) < 0)
		goto out_tree;
	if (fs.is_pop) {
		if (!fs.offline) {
			/* first_pop is NULL when the server is down: the
			 * poller connects when it can. */
			if (fs_pop_start(&fs, first_pop, &fs.pop) < 0)
				goto out_tree;
			first_pop = NULL; /* owned by the poller now */
		}
	} else if (first != NULL) {
		rc = fs_sync_list(&fs, first, &err);
		if (rc < 0)
			log_warn("cannot list mailboxes: %s; showing the "
			         "cached list",
			         err.text);
	}
	if (!fs.is_pop && fs_tree_load(fs.tree, fs.cache) < 0)
		goto out_tree;
	if (fs.offline) {
		log_notice("offline: serving the cache of %s@%s read-only",
		           fs.url.user, fs.url.host);
	} else if (!fs.is_pop) {
		if (fs_inval_start(fs.se, &fs.inval) < 0)
			log_warn("cannot start the invalidation thread: the "
			         "kernel learns of changes when its caches "
			         "expire");
		if (fs_sync_start(&fs, first, server_back, &fs, &fs.sync) < 0)
			goto out_tree;
		first = NULL; /* owned by the sync side now */
		/* List every mailbox never listed, in the background, so
		 * that a first ls -lR or rsync finds them ready. */
		fs_sync_listings_unlisted(fs.sync);
		/* Changes made elsewhere: IDLE on INBOX, and the other
		 * mailboxes every poll seconds. */
		if (fs_watch_start(&fs, &fs.watch) < 0)
			log_warn("cannot start watching INBOX: changes made "
			         "elsewhere show when a directory is listed");
		/* Uploads a crash or a dead server left in the cache. */
		fs_newfile_resume(&fs);
		if (fs_newfiles_start(&fs) < 0)
			log_warn("cannot start the uploader: new files are "
			         "uploaded at their last release only");
	}
	log_info("mounted %s on %s", fs.opts.account, cmd.mountpoint);

	if (cmd.singlethread) {
		ret = fuse_session_loop(fs.se);
	} else {
		loop = fuse_loop_cfg_create();
		if (loop == NULL)
			goto out_sync;
		fuse_loop_cfg_set_clone_fd(loop, cmd.clone_fd);
		fuse_loop_cfg_set_max_threads(loop, cmd.max_threads);
		ret = fuse_session_loop_mt(fs.se, loop);
		fuse_loop_cfg_destroy(loop);
	}
	/* 0: the kernel ended the session (not a signal).  Gone from the
	 * mount table too, it was unmounted (not aborted): no file of the
	 * mount can still be open. */
	unmounted = ret == 0 && !mount_listed(cmd.mountpoint);
	ret = ret != 0 ? 1 : 0;
out_sync:
	fs_watch_stop(fs.watch);
	fs_newfiles_stop(&fs);
	if (unmounted)
		fs_newfiles_unmounted(&fs);
	fs_sync_stop(&fs.sync);
	fs_watch_free(&fs.watch);
	fs_pop_stop(&fs.pop);
	imap_pace_report(&fs.pace);
out_tree:
	fs_inval_stop(&fs.inval);
	fs_newfiles_free(&fs.newfiles);
	fs_tree_free(&fs.tree);
	cache_close(&fs.cache);
out_unmount:
	fuse_session_unmount(fs.se);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
out_conn:
	imap_free(&first);
	pop3_free(&first_pop);
out_args:
	login_free(&fs.login);
	free(fs.cache_path);
	url_clear(&fs.url);
	fs_options_free(&fs.opts);
	free(cmd.mountpoint);
	fuse_opt_free_args(&args);
	imap_pace_destroy(&fs.pace);
	return ret;
}
