/* mailfs: mount an email account.
 *
 * Order matters here (STYLE.md).  Everything that can fail in a way the
 * user must see is checked in the foreground first: options (paths made
 * absolute), the account URL, the mount point, the password, the server
 * (TLS, login).  Then the process forks (LMDB and threads do not survive
 * fork(), so nothing of them exists yet).  The child starts a session of
 * its own, opens the cache, mounts, lists and starts its threads, while
 * the parent waits; only then does the child detach from the terminal and
 * tell the parent, which exits 0.  If any of that fails, the child prints
 * the reason on the standard error it still shares with the parent,
 * unmounts if it had mounted, and the parent exits with a non-zero status;
 * if the child dies instead (a signal), the parent says so, removes a mount
 * the child left, and exits non-zero.  With -f there is no fork and the
 * same steps run in the one process. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <mntent.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/cmd.h"
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
	char *name = NULL, *path = NULL;
	int rc = url_cache_name(url, &name);

	if (rc == 0)
		rc = fs_options_default_cache_dir(name, &path);
	free(name);
	return rc < 0 ? NULL : path;
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

/* ------------------------------------------------------------------ */
/* Start-up in the background: the child reports to the waiting parent. */

extern char **environ;

struct startup {
	int fd;      /* write end of the status pipe; -1: none */
	bool daemon; /* this is the child of start_background() */
};

/* A start-up failure or warning: on the standard error the user sees
 * (the child's is still the parent's until start-up ends), and in the log
 * of the background process. */
__attribute__((format(printf, 3, 4))) static void
say(const struct startup *st, int level, const char *fmt, ...)
{
	char text[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mailfs: %s%s\n",
	        level == LOG_WARNING ? "warning: " : "", text);
	if (st->daemon)
		log_msg(level, "%s", text);
}

/* The child's mount is left behind by its death: remove it (lazily: the
 * dead process answers nothing).  Only if the mount point is no longer
 * the directory it was before the fork, so nothing else is unmounted. */
static void remove_dead_mount(const char *mnt, dev_t before)
{
	char *argv[] = {"fusermount3", "-u", "-z", "--", (char *)mnt, NULL};
	struct stat st;
	pid_t pid;
	int status;

	if (stat(mnt, &st) == 0 && st.st_dev == before)
		return;
	if (umount2(mnt, MNT_DETACH) == 0)
		return;
	if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) == 0)
		waitpid(pid, &status, 0);
}

/* Crash tests stop mailfs at a chosen step (as in fs/pop.c): with
 * MAILFS_TEST_PAUSE=STEP it logs "pausing at STEP" and sleeps there. */
static void test_pause(const char *step)
{
	const char *want = getenv("MAILFS_TEST_PAUSE");

	if (want == NULL || strcmp(want, step) != 0)
		return;
	log_warn("pausing at %s (MAILFS_TEST_PAUSE)", step);
	sleep(3600);
}

/* Wait in the parent for the child's status byte, then exit with it. */
static void wait_for_child(pid_t pid, int fd, const char *mnt, dev_t dev)
{
	unsigned char status;
	ssize_t n;
	int ws;

	do
		n = read(fd, &status, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1)
		_exit(status);
	/* No status: the child died during start-up. */
	while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(ws))
		fprintf(stderr,
		        "mailfs: the background process died during start-up "
		        "(%s)\n",
		        strsignal(WTERMSIG(ws)));
	else
		fprintf(stderr,
		        "mailfs: the background process exited during start-up "
		        "(status %d)\n",
		        WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
	remove_dead_mount(mnt, dev);
	_exit(1);
}

/* Fork.  The parent never returns: it exits with the status the child
 * reports through startup_end(), or 1 if the child dies first.  The child
 * returns 0 in a session of its own, in "/", with its standard streams
 * still the parent's. */
static int start_background(struct startup *st, const char *mnt)
{
	struct stat sb;
	int p[2];
	pid_t pid;

	if (stat(mnt, &sb) != 0 || pipe2(p, O_CLOEXEC) != 0) {
		fprintf(stderr, "mailfs: cannot start: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "mailfs: cannot fork: %s\n", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid > 0) {
		close(p[1]);
		wait_for_child(pid, p[0], mnt, sb.st_dev);
	}
	close(p[0]);
	st->fd = p[1];
	st->daemon = true;
	setsid();
	if (chdir("/") != 0)
		return -1;
	log_use_syslog(true);
	return 0;
}

/* Start-up is over, with exit status ret (0: mounted and serving).  On
 * success the child lets go of the terminal first, so that the parent's
 * caller sees its standard streams close when the parent exits. */
static void startup_end(struct startup *st, int ret)
{
	unsigned char status =
	        ret == 0 ? 0 : (ret > 255 ? 1 : (unsigned char)ret);
	int fd;

	if (st->fd < 0)
		return;
	if (ret == 0) {
		fd = open("/dev/null", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
	if (write(st->fd, &status, 1) != 1)
		log_err("cannot report the start-up status: %s",
		        strerror(errno));
	close(st->fd);
	st->fd = -1;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = {0};
	struct fuse_loop_config *loop = NULL;
	struct imap_client *first = NULL;
	struct pop3_client *first_pop = NULL;
	struct startup st = {.fd = -1};
	bool down = false, mounted = false, unmounted = false;
	struct proto_err err = {0};
	struct mailfs fs = {0};
	char start_dir[PATH_MAX], why[1024];
	int ret = 1, rc;

	if (argc > 1 && strcmp(argv[1], "status") == 0)
		return fs_cmd_status(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "fetch") == 0)
		return fs_cmd_fetch(argc - 1, argv + 1);

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
	/* Absolute now: in the background the working directory is "/". */
	if (fs_options_absolute(&fs.opts,
	                        getcwd(start_dir, sizeof(start_dir))) != 0)
		goto out_args;
	/* passcmd and oauth2_cmd run again later, from "/": in this
	 * directory still. */
	cred_set_dir(start_dir);
	fs.cache_path = fs.opts.cache_dir ? strdup(fs.opts.cache_dir)
	                                  : default_cache_dir(&fs.url);
	if (fs.cache_path == NULL) {
		fprintf(stderr, "mailfs: no cache directory: no home directory "
		                "known; set XDG_CACHE_HOME or -o cache_dir=\n");
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
			goto out_conn;
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

	/* From here on, every failure goes through say() and ends the
	 * start-up with a non-zero status. */
	if (!cmd.foreground && start_background(&st, cmd.mountpoint) != 0)
		goto out_session;
	if (fuse_set_signal_handlers(fs.se) != 0) {
		say(&st, LOG_ERR, "cannot set signal handlers");
		goto out_session;
	}
	/* The cache first: a cache that cannot be used never gets a mount. */
	rc = cache_open_msg(fs.cache_path, &fs.cache, why, sizeof(why));
	if (rc < 0) {
		say(&st, LOG_ERR, "%s", why);
		goto out_signals;
	}
	if (fs_tree_new(&fs.tree) < 0 || fs_newfiles_new(&fs.newfiles) < 0) {
		say(&st, LOG_ERR, "out of memory");
		goto out_tree;
	}
	if (!fs.is_pop && first != NULL) {
		rc = fs_sync_list(&fs, first, &err);
		if (rc < 0)
			say(&st, LOG_WARNING,
			    "cannot list mailboxes: %s; showing the cached "
			    "list",
			    err.text);
	}
	if (!fs.is_pop && (rc = fs_tree_load(fs.tree, fs.cache)) < 0) {
		say(&st, LOG_ERR, "cannot load the mailbox list from %s: %s",
		    fs.cache_path, strerror(-rc));
		goto out_tree;
	}
	/* libfuse says why on standard error. */
	if (fuse_session_mount(fs.se, cmd.mountpoint) != 0)
		goto out_tree;
	mounted = true;
	test_pause("startup_mounted");
	/* POP3: first_pop is NULL when the server is down: the poller
	 * connects when it can. */
	if (fs.is_pop && !fs.offline) {
		if (fs_pop_start(&fs, first_pop, &fs.pop) < 0) {
			say(&st, LOG_ERR, "cannot start the POP3 poller");
			goto out_tree;
		}
		first_pop = NULL; /* owned by the poller now */
	}
	if (fs.offline) {
		log_notice("offline: serving the cache of %s@%s read-only",
		           fs.url.user, fs.url.host);
	} else if (!fs.is_pop) {
		if (fs_inval_start(fs.se, &fs.inval) < 0)
			log_warn("cannot start the invalidation thread: the "
			         "kernel learns of changes when its caches "
			         "expire");
		if (fs_sync_start(&fs, first, server_back, &fs, &fs.sync) <
		    0) {
			say(&st, LOG_ERR, "cannot start the network side");
			goto out_tree;
		}
		first = NULL; /* owned by the sync side now */
		/* List every mailbox never listed, in the background, so
		 * that a first ls -lR or rsync finds them ready. */
		fs_sync_listings_unlisted(fs.sync);
		/* Changes made elsewhere: IDLE on INBOX, and the other
		 * mailboxes every poll seconds. */
		if (fs_watch_start(&fs, &fs.watch) < 0)
			say(&st, LOG_WARNING,
			    "cannot start watching INBOX: changes made "
			    "elsewhere show when a directory is listed");
		/* Uploads a crash or a dead server left in the cache. */
		fs_newfile_resume(&fs);
		if (fs_newfiles_start(&fs) < 0)
			say(&st, LOG_WARNING,
			    "cannot start the uploader: new files are "
			    "uploaded at their last release only");
	}
	log_info("mounted %s on %s", fs.opts.account, cmd.mountpoint);

	if (cmd.singlethread) {
		startup_end(&st, 0);
		ret = fuse_session_loop(fs.se);
	} else {
		loop = fuse_loop_cfg_create();
		if (loop == NULL) {
			say(&st, LOG_ERR, "out of memory");
			goto out_sync;
		}
		fuse_loop_cfg_set_clone_fd(loop, cmd.clone_fd);
		fuse_loop_cfg_set_max_threads(loop, cmd.max_threads);
		startup_end(&st, 0);
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
	/* Unmount before the cache closes: nothing may be served from a
	 * closed cache, and the start-up status waits for both. */
	if (mounted)
		fuse_session_unmount(fs.se);
	cache_close(&fs.cache);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
	/* Still starting: the status goes to the waiting parent. */
	startup_end(&st, ret == 0 ? 1 : ret);
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
