#include "proto/cred.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Room for the longest secret, a "\r" that is not part of it, and a NUL. */
#define CRED_BUF (CRED_MAX_LEN + 2)

/* The first line of some input, collected as it arrives. */
struct cred_line {
	char *buf; /* owned; CRED_BUF bytes, wiped before free */
	size_t len;
	bool any;      /* at least one byte arrived */
	bool done;     /* the first "\n" arrived */
	bool too_long; /* the first line did not fit */
	bool nul;      /* the first line has a NUL byte */
};

static int cred_line_init(struct cred_line *l)
{
	memset(l, 0, sizeof(*l));
	l->buf = malloc(CRED_BUF);
	return l->buf == NULL ? -ENOMEM : 0;
}

static void cred_line_free(struct cred_line *l)
{
	if (l->buf != NULL) {
		explicit_bzero(l->buf, CRED_BUF);
		free(l->buf);
	}
	l->buf = NULL;
}

static void cred_line_feed(struct cred_line *l, const char *p, size_t n)
{
	size_t i;

	if (n > 0)
		l->any = true;
	for (i = 0; i < n && !l->done; i++) {
		if (p[i] == '\n') {
			l->done = true;
		} else if (l->len == CRED_BUF - 1) {
			l->too_long = true;
			l->done = true;
		} else {
			if (p[i] == '\0')
				l->nul = true;
			l->buf[l->len++] = p[i];
		}
	}
}

/* Turn the collected line into the secret; what names the source. */
static int cred_line_take(struct cred_line *l, const char *what,
                          char **secret_r, struct proto_err *err)
{
	char *s;

	if (l->len > 0 && l->buf[l->len - 1] == '\r')
		l->len--;
	if (l->too_long || l->len > CRED_MAX_LEN)
		return proto_err_set(err, PERR_LOCAL, -EMSGSIZE,
		                     "%s: the first line is longer than %d "
		                     "bytes",
		                     what, CRED_MAX_LEN);
	if (!l->any)
		return proto_err_set(err, PERR_LOCAL, -ENODATA,
		                     "%s: nothing was read", what);
	if (l->len == 0)
		return proto_err_set(err, PERR_LOCAL, -ENODATA,
		                     "%s: the first line is empty", what);
	if (l->nul)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "%s: the first line contains a NUL byte",
		                     what);
	s = malloc(l->len + 1);
	if (s == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM,
		                     "%s: out of memory", what);
	memcpy(s, l->buf, l->len);
	s[l->len] = '\0';
	*secret_r = s;
	return 0;
}

void cred_free(char **secret)
{
	if (*secret == NULL)
		return;
	explicit_bzero(*secret, strlen(*secret));
	free(*secret);
	*secret = NULL;
}

static void cred_deadline(struct timespec *d, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, d);
	d->tv_sec += ms / 1000;
	d->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (d->tv_nsec >= 1000000000L) {
		d->tv_sec++;
		d->tv_nsec -= 1000000000L;
	}
}

/* Milliseconds until d, rounded up; 0 once it has passed. */
static int cred_ms_left(const struct timespec *d)
{
	struct timespec now;
	int64_t ns;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (int64_t)(d->tv_sec - now.tv_sec) * 1000000000LL +
	     (d->tv_nsec - now.tv_nsec);
	if (ns <= 0)
		return 0;
	return (int)((ns + 999999) / 1000000);
}

/* Is this process the foreground job of its controlling terminal?  Then
 * the command must share our process group to use the terminal. */
static bool cred_tty_foreground(void)
{
	int fd = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
	bool fg;

	if (fd < 0)
		return false;
	fg = tcgetpgrp(fd) == getpgrp();
	close(fd);
	return fg;
}

/* The highest descriptor the fallback close loop must cover.  Computed
 * before fork(): getrlimit() is not on the async-signal-safe list. */
static int cred_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 ||
	    rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20))
		return 1 << 20;
	return (int)rl.rlim_cur;
}

/* Make fd an open descriptor on /dev/null unless it is open and not one of
 * the pipe's ends. */
static void cred_child_fill(int fd, const int pfd[2])
{
	int n;

	if (fd != pfd[0] && fd != pfd[1] && fcntl(fd, F_GETFD) >= 0)
		return;
	n = open("/dev/null", O_RDWR);
	if (n >= 0 && n != fd) {
		dup2(n, fd);
		close(n);
	}
}

static char cred_dir[PATH_MAX];

void cred_set_dir(const char *dir)
{
	if (dir == NULL || strlen(dir) >= sizeof(cred_dir))
		cred_dir[0] = '\0';
	else
		strcpy(cred_dir, dir);
}

/* In the child between fork() and exec: async-signal-safe calls only. */
static void cred_child(const char *cmd, const int pfd[2], bool own_group,
                       int fd_limit)
{
	char *argv[] = {"sh", "-c", (char *)cmd, NULL};
	struct sigaction sa;
	sigset_t none;
	int fd;

	if (own_group)
		setpgid(0, 0);
	/* mailfs ignores SIGPIPE and may block signals in threads; a shell
	 * pipeline in the command needs the defaults. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGPIPE, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	if (pfd[1] != STDOUT_FILENO) {
		if (dup2(pfd[1], STDOUT_FILENO) < 0)
			_exit(127);
	} else if (fcntl(STDOUT_FILENO, F_SETFD, 0) < 0) {
		_exit(127);
	}
	/* If mailfs had 0 or 2 closed, the pipe may sit there. */
	cred_child_fill(STDIN_FILENO, pfd);
	cred_child_fill(STDERR_FILENO, pfd);

	/* Everything else goes, FD_CLOEXEC or not: /dev/fuse, the LMDB
	 * file, sockets. */
#ifdef SYS_close_range
	if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
#endif
		for (fd = 3; fd < fd_limit; fd++)
			close(fd);

	if (cred_dir[0] != '\0' && chdir(cred_dir) != 0)
		_exit(127);
	execve("/bin/sh", argv, environ);
	_exit(127);
}

/* Wait for pid until the deadline; on timeout kill it (or its group). */
static int cred_reap(pid_t pid, bool own_group, const struct timespec *d,
                     int *status_r)
{
	for (;;) {
		pid_t r = waitpid(pid, status_r, WNOHANG);
		struct timespec nap = {0, 10 * 1000000L};
		int left;

		if (r == pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		left = cred_ms_left(d);
		if (left == 0)
			break;
		if (left < 10)
			nap.tv_nsec = left * 1000000L;
		nanosleep(&nap, NULL);
	}
	/* If the group does not exist after all, the shell alone; a
	 * blocking waitpid() on a live child would never return. */
	if (!own_group || kill(-pid, SIGKILL) != 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, status_r, 0) < 0 && errno == EINTR)
		;
	return -ETIMEDOUT;
}

int cred_from_cmd(const char *cmd, char **secret_r, struct proto_err *err)
{
	return cred_from_cmd_timeout(cmd, CRED_CMD_TIMEOUT_MS, secret_r, err);
}

int cred_from_cmd_timeout(const char *cmd, int timeout_ms, char **secret_r,
                          struct proto_err *err)
{
	struct cred_line line;
	struct timespec deadline;
	int pfd[2] = {-1, -1};
	char chunk[4096];
	bool own_group, timed_out = false;
	int rc, status = 0, fd_limit;
	pid_t pid;

	if (timeout_ms <= 0)
		return proto_err_set(err, PERR_LOCAL, -EINVAL,
		                     "command: invalid time limit");
	rc = cred_line_init(&line);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, rc,
		                     "command: out of memory");
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		rc = proto_err_set(err, PERR_LOCAL, -errno,
		                   "command: cannot create a pipe: %s",
		                   strerror(errno));
		goto out;
	}
	own_group = !cred_tty_foreground();
	fd_limit = cred_fd_limit();
	cred_deadline(&deadline, timeout_ms);

	pid = fork();
	if (pid < 0) {
		rc = proto_err_set(err, PERR_LOCAL, -errno,
		                   "command: cannot fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0)
		cred_child(cmd, pfd, own_group, fd_limit);
	/* Also here, so that the group exists before any kill(-pid); EACCES
	 * means the child already ran exec, after its own setpgid(). */
	if (own_group)
		setpgid(pid, pid);
	close(pfd[1]);
	pfd[1] = -1;

	/* Read to the end, not just the first line, so that the command is
	 * not killed by SIGPIPE for printing more. */
	for (;;) {
		struct pollfd p = {.fd = pfd[0], .events = POLLIN};
		int left = cred_ms_left(&deadline);
		ssize_t n;

		if (left == 0) {
			timed_out = true;
			break;
		}
		n = poll(&p, 1, left);
		if (n < 0 && errno != EINTR) {
			rc = -errno;
			break;
		}
		if (n <= 0)
			continue;
		n = read(pfd[0], chunk, sizeof(chunk));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		cred_line_feed(&line, chunk, (size_t)n);
	}
	close(pfd[0]);
	pfd[0] = -1;
	if (timed_out) {
		/* the deadline has passed: this kills at once */
		cred_reap(pid, own_group, &deadline, &status);
	} else {
		int r = cred_reap(pid, own_group, &deadline, &status);

		if (r == -ETIMEDOUT)
			timed_out = true;
		else if (r < 0 && rc == 0)
			rc = r;
	}

	if (timed_out) {
		if (timeout_ms % 1000 == 0)
			rc = proto_err_set(err, PERR_LOCAL, -ETIMEDOUT,
			                   "command: timed out after %d s, "
			                   "killed",
			                   timeout_ms / 1000);
		else
			rc = proto_err_set(err, PERR_LOCAL, -ETIMEDOUT,
			                   "command: timed out after %d ms, "
			                   "killed",
			                   timeout_ms);
	} else if (rc < 0) {
		rc = proto_err_set(err, PERR_LOCAL, rc,
		                   "command: cannot read its output or exit "
		                   "status: %s",
		                   strerror(-rc));
	} else if (WIFSIGNALED(status)) {
		rc = proto_err_set(err, PERR_LOCAL, -EIO,
		                   "command: killed by signal %d",
		                   WTERMSIG(status));
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		int st = WIFEXITED(status) ? WEXITSTATUS(status) : -1;

		rc = proto_err_set(err, PERR_LOCAL, -EIO,
		                   "command: exited with status %d%s", st,
		                   st == 127   ? " (command not found?)"
		                   : st == 126 ? " (not executable?)"
		                               : "");
	} else {
		rc = cred_line_take(&line, "command", secret_r, err);
	}
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	explicit_bzero(chunk, sizeof(chunk));
	cred_line_free(&line);
	return rc;
}

/* Read one line from fd, a byte at a time.  Returns 0 at the end of the
 * line or of the input, or a negative errno.  With wake_fd >= 0, waits in
 * poll() for either descriptor and returns -EINTR as soon as wake_fd is
 * readable: a signal handler writes to it, and unlike a flag checked
 * before read(), that cannot be missed if the signal comes just before
 * the wait. */
static int cred_read_line(int fd, struct cred_line *l, int wake_fd)
{
	while (!l->done) {
		struct pollfd p[2] = {
		        {.fd = fd, .events = POLLIN},
		        {.fd = wake_fd, .events = POLLIN},
		};
		ssize_t n;
		char c;

		if (wake_fd >= 0) {
			n = poll(p, 2, -1);
			if (n < 0 && errno != EINTR)
				return -errno;
			if (p[1].revents != 0)
				return -EINTR;
			if (n <= 0)
				continue;
		}
		n = read(fd, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			poll(p, 1, -1);
			continue;
		}
		if (n < 0)
			return -errno;
		if (n == 0)
			return 0;
		cred_line_feed(l, &c, 1);
		c = 0;
	}
	return 0;
}

int cred_from_stdin(char **secret_r, struct proto_err *err)
{
	struct cred_line line;
	int rc;

	rc = cred_line_init(&line);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, rc,
		                     "standard input: out of memory");
	rc = cred_read_line(STDIN_FILENO, &line, -1);
	if (rc < 0)
		rc = proto_err_set(err, PERR_LOCAL, rc,
		                   "standard input: cannot read: %s",
		                   strerror(-rc));
	else
		rc = cred_line_take(&line, "standard input", secret_r, err);
	cred_line_free(&line);
	return rc;
}

/* The terminal code follows the classic readpassphrase(): catch the
 * signals that would leave the terminal without echo, restore it, then
 * deliver them again. */
static const int cred_sigs[] = {
        SIGALRM, SIGHUP,  SIGINT,  SIGPIPE, SIGQUIT,
        SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU,
};
#define CRED_NSIGS (sizeof(cred_sigs) / sizeof(cred_sigs[0]))

static volatile sig_atomic_t cred_caught[CRED_NSIGS];
static volatile sig_atomic_t cred_wake_w = -1; /* self-pipe, write end */

static void cred_on_signal(int sig)
{
	int saved = errno;
	size_t i;

	for (i = 0; i < CRED_NSIGS; i++)
		if (cred_sigs[i] == sig)
			cred_caught[i] = 1;
	if (cred_wake_w >= 0 && write(cred_wake_w, "", 1) < 0) {
		/* full pipe: it is readable anyway */
	}
	errno = saved;
}

static bool cred_any_caught(void)
{
	size_t i;

	for (i = 0; i < CRED_NSIGS; i++)
		if (cred_caught[i])
			return true;
	return false;
}

static int cred_tty_once(int fd, const char *prompt, struct cred_line *l,
                         bool *restart_r)
{
	struct sigaction sa, old_sa[CRED_NSIGS];
	struct termios old, noecho;
	bool fatal = false, stopped = false;
	int rc, wake[2];
	size_t i;

	*restart_r = false;
	if (tcgetattr(fd, &old) != 0)
		return -errno;
	if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0)
		return -errno;
	for (i = 0; i < CRED_NSIGS; i++)
		cred_caught[i] = 0;
	cred_wake_w = wake[1];
	/* No SA_RESTART: a signal must interrupt a blocked tcsetattr(). */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = cred_on_signal;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < CRED_NSIGS; i++)
		sigaction(cred_sigs[i], &sa, &old_sa[i]);

	noecho = old;
	noecho.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	/* TCSAFLUSH drops type-ahead, so that nothing typed before the
	 * prompt is taken as the password.  A background job gets SIGTTOU
	 * here, which the handler turns into EINTR. */
	while ((rc = tcsetattr(fd, TCSAFLUSH, &noecho)) != 0 &&
	       errno == EINTR && !cred_any_caught())
		;
	if (rc == 0) {
		if (prompt != NULL && *prompt != '\0' &&
		    write(fd, prompt, strlen(prompt)) < 0)
			rc = -errno;
		if (rc == 0)
			rc = cred_read_line(fd, l, wake[0]);
		while (tcsetattr(fd, TCSAFLUSH, &old) != 0 && errno == EINTR &&
		       !cred_any_caught())
			;
		/* The user's Enter was not echoed. */
		if (write(fd, "\n", 1) < 0) {
			/* nothing to do about it */
		}
	} else if (!cred_any_caught()) {
		rc = -errno;
	}

	for (i = 0; i < CRED_NSIGS; i++)
		sigaction(cred_sigs[i], &old_sa[i], NULL);
	cred_wake_w = -1;
	close(wake[0]);
	close(wake[1]);

	/* Deliver what arrived, now that the terminal is sane again. */
	for (i = 0; i < CRED_NSIGS; i++) {
		if (!cred_caught[i])
			continue;
		kill(getpid(), cred_sigs[i]);
		if (cred_sigs[i] == SIGTSTP || cred_sigs[i] == SIGTTIN ||
		    cred_sigs[i] == SIGTTOU)
			stopped = true;
		else
			fatal = true;
	}
	if (fatal)
		return -EINTR;
	if (stopped) {
		*restart_r = true;
		return 0;
	}
	return rc < 0 ? rc : 0;
}

int cred_from_tty(const char *prompt, char **secret_r, struct proto_err *err)
{
	struct cred_line line;
	bool restart;
	int fd, rc;

	fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return proto_err_set(err, PERR_LOCAL, -errno,
		                     "cannot ask for the password: no terminal "
		                     "(%s); use -o passcmd=CMD or -o "
		                     "password_stdin",
		                     strerror(errno));
	rc = cred_line_init(&line);
	if (rc < 0) {
		close(fd);
		return proto_err_set(err, PERR_LOCAL, rc,
		                     "terminal: out of memory");
	}
	do {
		/* A stop signal means start over once we are continued. */
		explicit_bzero(line.buf, CRED_BUF);
		line.len = 0;
		line.any = line.done = line.too_long = line.nul = false;
		rc = cred_tty_once(fd, prompt, &line, &restart);
	} while (restart && rc == 0);

	if (rc == -EINTR)
		rc = proto_err_set(err, PERR_LOCAL, rc,
		                   "terminal: interrupted");
	else if (rc < 0)
		rc = proto_err_set(err, PERR_LOCAL, rc,
		                   "terminal: cannot read the password: %s",
		                   strerror(-rc));
	else
		rc = cred_line_take(&line, "terminal", secret_r, err);
	cred_line_free(&line);
	close(fd);
	return rc;
}
