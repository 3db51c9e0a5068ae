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
#include "fs/config.h"
#include "fs/imap/newfile.h"
#include "fs/inval.h"
#include "fs/mailfs.h"
#include "fs/mixing.h"
#include "fs/net/sync.h"
#include "fs/net/watch.h"
#include "fs/pop/poller.h"
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
		if (rc < 0 && strncmp(err->text, "command: ", 9) == 0) {
			struct proto_err e = *err;

			proto_err_clear(err);
			proto_err_set(err, e.cls, rc, "%s: %s",
			              kind == LOGIN_OAUTH2 ? "oauth2_cmd"
			                                   : "passcmd",
			              e.text + 9);
		}
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
	int fd;                 /* write end of the status pipe; -1: none */
	bool daemon;            /* this is the child of start_background() */
	enum log_target bg_log; /* the log of the background process */
	bool keep_stderr;       /* it logs to standard error: keep it */
	bool no_syslog;         /* it logs to syslog, and there is none */
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
	log_set_target(st->bg_log);
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
	if (ret == 0 && st->no_syslog)
		fprintf(stderr,
		        "mailfs: warning: no syslog on this machine "
		        "(/dev/log): what mailfs logs in the background "
		        "is lost; use -o log=FILE\n");
	if (ret == 0) {
		fd = open("/dev/null", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			if (!st->keep_stderr)
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

/* Create the missing directories above path (0700), as for the cache. */
static int make_parents(const char *path)
{
	char *p = strdup(path), *s;
	int rc = 0;

	if (p == NULL)
		return -ENOMEM;
	for (s = strchr(p + 1, '/'); s != NULL && rc == 0;
	     s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST)
			rc = -errno;
		*s = '/';
	}
	free(p);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Where messages go: -o log=, else stderr in the foreground, else the
 * journal when systemd gave us one, else syslog.  Returns -1 (after
 * saying why) when the log file cannot be opened. */
static int choose_log(const struct fs_options *o, bool foreground,
                      struct startup *st)
{
	int rc;

	if (o->log != NULL && strcmp(o->log, "stderr") == 0) {
		st->bg_log = LOG_TARGET_STDERR;
		st->keep_stderr = true;
	} else if (o->log != NULL && strcmp(o->log, "syslog") == 0) {
		st->bg_log = LOG_TARGET_SYSLOG;
		log_set_target(LOG_TARGET_SYSLOG);
	} else if (o->log != NULL) {
		rc = make_parents(o->log);
		if (rc == 0)
			rc = log_open_file(o->log);
		if (rc < 0) {
			fprintf(stderr, "mailfs: log=%s: %s\n", o->log,
			        strerror(-rc));
			return -1;
		}
		st->bg_log = LOG_TARGET_FILE;
	} else if (log_stderr_is_journal()) {
		/* Under systemd, also with -f: lines with their priority. */
		if (foreground)
			log_set_target(LOG_TARGET_JOURNAL);
		st->bg_log = LOG_TARGET_JOURNAL;
		st->keep_stderr = true;
	} else if (foreground) {
		st->bg_log = LOG_TARGET_STDERR;
	} else {
		st->bg_log = LOG_TARGET_SYSLOG;
		st->no_syslog = access("/dev/log", F_OK) != 0;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Named accounts (fs/config.h). */

/* The index in argv of the first plain argument, as fuse_opt_parse()
 * sees it, or -1. */
static int first_plain_arg(int argc, char **argv)
{
	bool plain = false;
	int i;

	for (i = 1; i < argc; i++) {
		if (plain)
			return i;
		if (strcmp(argv[i], "--") == 0) {
			plain = true;
		} else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			if (strcmp(argv[i], "-o") == 0)
				i++;
		} else {
			return i;
		}
	}
	return -1;
}

static int load_config(struct fs_config **cfg_r)
{
	char *path = NULL, why[1024];
	int rc = fs_config_default_path(&path);

	if (rc < 0) {
		fprintf(stderr, "mailfs: no configuration file: no home "
		                "directory known (set XDG_CONFIG_HOME)\n");
		return rc;
	}
	rc = fs_config_load(path, cfg_r, why, sizeof(why));
	if (rc == -ENOENT)
		fprintf(stderr, "mailfs: no configuration file %s\n", path);
	else if (rc < 0)
		fprintf(stderr, "mailfs: %s\n", why);
	free(path);
	return rc;
}

/* The command line of a mount of account NAME: its options first (the
 * command line's come after them and win), NAME replaced by its URL, its
 * mount point added if none was given.  *argv_r is a new array whose
 * strings are borrowed from argv and a. */
static int account_argv(const struct fs_account *a, int argc, char **argv,
                        int at, bool have_mnt, int *argc_r, char ***argv_r)
{
	char **out = calloc((size_t)argc + 4, sizeof(*out));
	int n = 0, i;

	if (out == NULL)
		return -ENOMEM;
	out[n++] = argv[0];
	if (a->options != NULL) {
		out[n++] = "-o";
		out[n++] = a->options;
	}
	for (i = 1; i < argc; i++)
		out[n++] = i == at ? a->url : argv[i];
	if (!have_mnt)
		out[n++] = a->mountpoint;
	out[n] = NULL;
	*argc_r = n;
	*argv_r = out;
	return 0;
}

/* mailfs --list */
static int list_accounts(void)
{
	struct fs_config *cfg = NULL;
	size_t i;

	if (load_config(&cfg) < 0)
		return 1;
	printf("# %s\n", cfg->path);
	for (i = 0; i < cfg->n; i++) {
		const struct fs_account *a = &cfg->accounts[i];

		printf("%-12s %-44s %s%s\n", a->name, a->url,
		       a->mountpoint ? a->mountpoint : "-",
		       a->mountpoint && mount_listed(a->mountpoint)
		               ? "  (mounted)"
		               : "");
	}
	fs_config_free(&cfg);
	return 0;
}

/* mailfs --unmount NAME|MOUNTPOINT: fusermount3 -u of the account's
 * mount point (or of the directory given). */
static int unmount_account(const char *what)
{
	struct fs_account *a = NULL;
	char *argv[] = {"fusermount3", "-u", "--", NULL, NULL};
	int rc = fs_config_find(what, &a);

	if (rc < 0 && rc != -ENOENT)
		return 1;
	if (a != NULL && a->mountpoint == NULL) {
		fprintf(stderr, "mailfs: account %s has no mountpoint\n",
		        a->name);
		fs_account_free(&a);
		return 1;
	}
	if (a == NULL && strchr(what, '/') == NULL) {
		fprintf(stderr, "mailfs: no account %s\n", what);
		return 1;
	}
	argv[3] = a != NULL ? a->mountpoint : (char *)what;
	fflush(NULL);
	execvp(argv[0], argv);
	fprintf(stderr, "mailfs: cannot run fusermount3: %s\n",
	        strerror(errno));
	fs_account_free(&a);
	return 1;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = {0};
	struct fs_account *acct = NULL;
	char **acct_argv = NULL, *mount_opts = NULL, *source = NULL;
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
	if (fs.opts.list) {
		ret = list_accounts();
		goto out_args;
	}
	if (fs.opts.unmount) {
		if (fs.opts.account == NULL) {
			fprintf(stderr, "usage: mailfs --unmount "
			                "NAME|MOUNTPOINT\n");
			goto out_args;
		}
		ret = unmount_account(fs.opts.account);
		goto out_args;
	}
	/* Not a URL: the name of an account of the configuration file. */
	if (fs.opts.account != NULL && strstr(fs.opts.account, "://") == NULL) {
		struct fs_config *cfg = NULL;
		const struct fs_account *a;
		bool have_mnt = fs.opts.mountpoint != NULL;
		int n;

		if (load_config(&cfg) < 0)
			goto out_args;
		a = fs_config_get(cfg, fs.opts.account);
		if (a == NULL) {
			fprintf(stderr,
			        "mailfs: %s: not an account URL, and no account "
			        "of that name in %s (mailfs --list)\n",
			        fs.opts.account, cfg->path);
			fs_config_free(&cfg);
			goto out_args;
		}
		if (!have_mnt && a->mountpoint == NULL) {
			fprintf(stderr,
			        "mailfs: account %s has no mountpoint in %s: "
			        "give one (mailfs %s MOUNTPOINT)\n",
			        a->name, cfg->path, a->name);
			fs_config_free(&cfg);
			goto out_args;
		}
		acct = fs_account_dup(a);
		fs_config_free(&cfg);
		if (acct == NULL ||
		    account_argv(acct, argc, argv, first_plain_arg(argc, argv),
		                 have_mnt, &n, &acct_argv) < 0) {
			fprintf(stderr, "mailfs: out of memory\n");
			goto out_args;
		}
		fs_options_free(&fs.opts);
		fuse_opt_free_args(&args);
		args = (struct fuse_args)FUSE_ARGS_INIT(n, acct_argv);
		if (fs_options_parse(&args, &fs.opts) != 0)
			goto out_args;
	}
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
		fprintf(stderr, "usage: mailfs [options] ACCOUNT MOUNTPOINT, "
		                "or mailfs [options] NAME [MOUNTPOINT] "
		                "(mailfs -h for help)\n");
		goto out_args;
	}
	if (cmd.debug)
		log_set_level(LOG_DEBUG);
	/* The mount's source, as mount, findmnt and df show it. */
	source = strdup(fs.opts.fsname ? fs.opts.fsname
	                : acct         ? acct->name
	                               : fs.opts.account);
	if (source == NULL)
		goto out_args;
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
	if (choose_log(&fs.opts, cmd.foreground, &st) != 0)
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
	fs_mixing_warn(&fs, stderr);

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
	{
		char *kv = NULL;

		if (asprintf(&kv, "fsname=%s", source) < 0)
			goto out_conn;
		rc = fuse_opt_add_opt(&mount_opts, "-odefault_permissions,"
		                                   "subtype=mailfs");
		if (rc == 0)
			rc = fuse_opt_add_opt_escaped(&mount_opts, kv);
		free(kv);
		if (rc != 0 || fuse_opt_add_arg(&args, mount_opts) != 0)
			goto out_conn;
	}
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
		if (fs_sync_start(&fs, first, server_back, &fs, &fs.sync) < 0) {
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
	fs_mixing_register(&fs);
	log_info("mounted %s (%s) on %s", source, fs.opts.account,
	         cmd.mountpoint);

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
	if (unmounted)
		log_info("unmounted %s from %s", source, cmd.mountpoint);
	else
		log_info("stopped serving %s on %s%s", source, cmd.mountpoint,
		         ret != 0 ? " (the session failed)" : "");
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
	fs_mixing_unregister();
	log_flush_repeats();
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
	free(acct_argv);
	fs_account_free(&acct);
	free(mount_opts);
	free(source);
	imap_pace_destroy(&fs.pace);
	return ret;
}
