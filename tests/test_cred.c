/* Where the password comes from: a command, standard input, the terminal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "proto/cred.h"

static void check_ok(const char *cmd, const char *expect)
{
	struct proto_err err = {0};
	char *s = NULL;

	if (cred_from_cmd(cmd, &s, &err) != 0)
		fail_msg("%s: %s", cmd, err.text);
	assert_int_equal(err.cls, PERR_NONE);
	assert_string_equal(s, expect);
	cred_free(&s);
	assert_null(s);
}

static void check_fail(const char *cmd, int code, const char *msg)
{
	struct proto_err err = {0};
	char *s = (char *)0x1;
	int rc = cred_from_cmd(cmd, &s, &err);

	if (rc != code)
		fail_msg("%s: got %d (%s), expected %d", cmd, rc, err.text,
		         code);
	assert_ptr_equal(s, (char *)0x1);
	assert_int_equal(err.cls, PERR_LOCAL);
	assert_int_equal(err.code, code);
	if (strstr(err.text, msg) == NULL)
		fail_msg("%s: \"%s\" does not mention \"%s\"", cmd, err.text,
		         msg);
	assert_null(strstr(err.text, "hunter2"));
}

static void test_cmd_lines(void **state)
{
	(void)state;
	check_ok("echo secret", "secret");
	check_ok("printf 'a\\nb\\n'", "a");
	check_ok("printf 'pw\\r\\n'", "pw");
	check_ok("printf 'pw\\r\\nx\\r\\n'", "pw");
	check_ok("printf 'no newline'", "no newline");
	check_ok("printf ' spaces kept \\n'", " spaces kept ");
	check_ok("printf 'a\\rb\\n'", "a\rb");
	/* stderr is not the secret */
	check_ok("echo oops >&2; echo pw", "pw");
}

static void test_cmd_limit(void **state)
{
	struct proto_err err = {0};
	char *s = NULL;
	size_t i;

	(void)state;
	/* exactly CRED_MAX_LEN bytes, then "\r\n" */
	assert_int_equal(cred_from_cmd("head -c 65536 /dev/zero | tr '\\0' a;"
	                               "printf '\\r\\n'",
	                               &s, &err),
	                 0);
	assert_int_equal(strlen(s), CRED_MAX_LEN);
	for (i = 0; i < CRED_MAX_LEN; i++)
		assert_int_equal(s[i], 'a');
	cred_free(&s);
	/* one byte more, even with the "\r\n" */
	assert_int_equal(cred_from_cmd("head -c 65537 /dev/zero | tr '\\0' a;"
	                               "printf '\\r\\n'",
	                               &s, &err),
	                 -EMSGSIZE);
	assert_null(s);
}

static void test_cmd_failures(void **state)
{
	(void)state;
	check_fail("exit 3", -EIO, "exited with status 3");
	check_fail("echo hunter2; exit 3", -EIO, "status 3");
	check_fail("no-such-command-for-mailfs-tests 2>/dev/null", -EIO,
	           "status 127");
	check_fail("true", -ENODATA, "nothing");
	check_fail("printf ''", -ENODATA, "nothing");
	check_fail("echo", -ENODATA, "empty");
	check_fail("printf '\\r\\nhunter2\\n'", -ENODATA, "empty");
	check_fail("printf 'a\\0b\\n'", -EINVAL, "NUL");
	check_fail("head -c 65537 /dev/zero | tr '\\0' a", -EMSGSIZE,
	           "longer than");
	check_fail("kill -TERM $$", -EIO, "signal 15");
}

/* Output far beyond the limit after the first line is read and dropped;
 * the command must not die of SIGPIPE. */
static void test_cmd_long_output(void **state)
{
	(void)state;
	check_ok("echo pw; head -c 3000000 /dev/zero", "pw");
}

/* mailfs ignores SIGPIPE; the command must get the default back. */
static void test_cmd_sigpipe_reset(void **state)
{
	void (*old)(int) = signal(SIGPIPE, SIG_IGN);
	sigset_t block, saved;

	(void)state;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &saved);
	check_fail("kill -PIPE $$; echo alive", -EIO, "signal 13");
	/* and a blocked signal is unblocked */
	check_fail("kill -TERM $$; echo alive", -EIO, "signal 15");
	sigprocmask(SIG_SETMASK, &saved, NULL);
	signal(SIGPIPE, old);
}

/* No descriptor but 0, 1 and 2 reaches the command, FD_CLOEXEC or not. */
static void test_cmd_no_fd_leak(void **state)
{
	struct proto_err err = {0};
	char cmd[512], *s = NULL;
	int f, hi, p[2];

	(void)state;
	f = open("/dev/null", O_RDONLY); /* no O_CLOEXEC on purpose */
	assert_true(f >= 3);
	hi = dup2(f, 200);
	assert_int_equal(hi, 200);
	assert_int_equal(pipe(p), 0);
	snprintf(cmd, sizeof(cmd),
	         "r=;"
	         "for n in %d %d %d %d; do"
	         "  [ -e /proc/self/fd/$n ] && r=\"$r leak$n\";"
	         "done;"
	         "[ -p /proc/self/fd/1 ] || r=\"$r stdout-not-a-pipe\";"
	         "[ -e /proc/self/fd/0 ] || r=\"$r no-stdin\";"
	         "[ -e /proc/self/fd/2 ] || r=\"$r no-stderr\";"
	         "echo \"clean$r\"",
	         f, hi, p[0], p[1]);
	if (cred_from_cmd(cmd, &s, &err) != 0)
		fail_msg("%s", err.text);
	assert_string_equal(s, "clean");
	cred_free(&s);
	close(f);
	close(hi);
	close(p[0]);
	close(p[1]);
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void check_timeout(const char *cmd)
{
	struct proto_err err = {0};
	char *s = (char *)0x1;
	double t0 = now_s();

	assert_int_equal(cred_from_cmd_timeout(cmd, 300, &s, &err), -ETIMEDOUT);
	assert_true(now_s() - t0 < 3.0);
	assert_ptr_equal(s, (char *)0x1);
	assert_int_equal(err.cls, PERR_LOCAL);
	assert_non_null(strstr(err.text, "timed out after 300 ms"));
}

static void test_cmd_timeout(void **state)
{
	struct proto_err err = {0};
	char *s = NULL;

	(void)state;
	/* silent and slow */
	check_timeout("sleep 20");
	/* the secret arrived, then stdout closed, but it does not exit */
	check_timeout("echo hunter2; exec >&-; sleep 20");
	/* a long limit does not slow down a quick command */
	assert_int_equal(cred_from_cmd_timeout("echo x", 60000, &s, &err), 0);
	assert_string_equal(s, "x");
	cred_free(&s);
	assert_int_equal(cred_from_cmd_timeout("echo x", 0, &s, &err), -EINVAL);
}

/* Same test as cred.c: in the foreground of a terminal, the command stays
 * in our process group and only the shell is killed. */
static int tty_foreground(void)
{
	int fd = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
	int fg;

	if (fd < 0)
		return 0;
	fg = tcgetpgrp(fd) == getpgrp();
	close(fd);
	return fg;
}

static int proc_gone(long pid)
{
	char path[64], buf[256], *p;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return 1;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	if (p == NULL)
		return 1;
	/* a zombie is as good as gone: the container's init may not reap */
	p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

static void test_cmd_timeout_kills_group(void **state)
{
	const char *dir = getenv("TMPDIR");
	char tmpl[256], cmd[512];
	long pid = 0;
	FILE *f;
	int fd, i;

	(void)state;
	if (tty_foreground())
		skip();
	snprintf(tmpl, sizeof(tmpl), "%s/mailfs-cred-XXXXXX",
	         dir != NULL && *dir != '\0' ? dir : "/tmp");
	fd = mkstemp(tmpl);
	assert_true(fd >= 0);
	close(fd);
	snprintf(cmd, sizeof(cmd), "sleep 30 & echo $! > %s; wait", tmpl);
	check_timeout(cmd);
	f = fopen(tmpl, "r");
	assert_non_null(f);
	assert_int_equal(fscanf(f, "%ld", &pid), 1);
	fclose(f);
	unlink(tmpl);
	assert_true(pid > 1);
	for (i = 0; i < 300 && !proc_gone(pid); i++)
		usleep(10000);
	assert_true(proc_gone(pid));
}

/* Put the read end of a pipe holding input on fd 0, run, restore fd 0. */
static int stdin_run(const char *input, size_t len, char **s, int *p0,
                     struct proto_err *err)
{
	int p[2], saved, rc;

	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], input, len), (ssize_t)len);
	close(p[1]);
	saved = dup(0);
	assert_true(saved >= 0);
	assert_int_equal(dup2(p[0], 0), 0);
	close(p[0]);
	rc = cred_from_stdin(s, err);
	if (p0 != NULL)
		*p0 = dup(0);
	assert_int_equal(dup2(saved, 0), 0);
	close(saved);
	return rc;
}

static void test_stdin(void **state)
{
	struct proto_err err = {0};
	char *s = NULL, rest[16];
	int fd;
	ssize_t n;

	(void)state;
	/* one line, and nothing after it consumed */
	assert_int_equal(stdin_run("pw\nrest", 7, &s, &fd, &err), 0);
	assert_string_equal(s, "pw");
	cred_free(&s);
	n = read(fd, rest, sizeof(rest));
	assert_int_equal(n, 4);
	assert_memory_equal(rest, "rest", 4);
	close(fd);

	assert_int_equal(stdin_run("pw\r\n", 4, &s, NULL, &err), 0);
	assert_string_equal(s, "pw");
	cred_free(&s);
	assert_int_equal(stdin_run("unterminated", 12, &s, NULL, &err), 0);
	assert_string_equal(s, "unterminated");
	cred_free(&s);

	s = (char *)0x1;
	assert_int_equal(stdin_run("", 0, &s, NULL, &err), -ENODATA);
	assert_non_null(strstr(err.text, "standard input"));
	proto_err_clear(&err);
	assert_int_equal(stdin_run("\nx\n", 3, &s, NULL, &err), -ENODATA);
	proto_err_clear(&err);
	assert_int_equal(stdin_run("a\0b\n", 4, &s, NULL, &err), -EINVAL);
	assert_ptr_equal(s, (char *)0x1);
}

/* A pseudo-terminal as the controlling terminal of a child. */
struct pty {
	int master;
	int slave; /* the parent's own handle, for tcgetattr */
	char name[64];
};

static void pty_open(struct pty *t)
{
	char *n;

	t->master = posix_openpt(O_RDWR | O_NOCTTY);
	assert_true(t->master >= 0);
	assert_int_equal(grantpt(t->master), 0);
	assert_int_equal(unlockpt(t->master), 0);
	n = ptsname(t->master);
	assert_non_null(n);
	snprintf(t->name, sizeof(t->name), "%s", n);
	t->slave = open(t->name, O_RDWR | O_NOCTTY);
	assert_true(t->slave >= 0);
}

/* In the child: become a session leader with the pty as controlling
 * terminal, ask, and report by exit status. */
static void pty_child(const struct pty *t)
{
	struct proto_err err = {0};
	struct termios tio;
	char *s = NULL;
	int fd, rc;

	signal(SIGINT, SIG_DFL);
	signal(SIGTSTP, SIG_DFL);
	close(t->master);
	if (setsid() < 0)
		_exit(10);
	fd = open(t->name, O_RDWR); /* acquires it as controlling tty */
	if (fd < 0)
		_exit(11);
	rc = cred_from_tty("Password: ", &s, &err);
	if (tcgetattr(fd, &tio) != 0 || !(tio.c_lflag & ECHO))
		_exit(12); /* echo not restored */
	if (rc != 0)
		_exit(13);
	if (strcmp(s, "hunter2") != 0)
		_exit(14);
	cred_free(&s);
	_exit(0);
}

/* Read from the master until want has been seen (count times). */
static void pty_expect(int master, const char *want, int count, char *log,
                       size_t logsz)
{
	size_t len = strlen(log);
	int seen = 0;

	while (seen < count) {
		struct pollfd p = {.fd = master, .events = POLLIN};
		const char *q;
		ssize_t n;

		assert_int_equal(poll(&p, 1, 5000), 1);
		n = read(master, log + len, logsz - len - 1);
		assert_true(n > 0);
		len += (size_t)n;
		log[len] = '\0';
		for (seen = 0, q = log; (q = strstr(q, want)) != NULL;
		     q += strlen(want))
			seen++;
	}
}

/* Everything until the child closes the terminal. */
static void pty_drain(int master, char *log, size_t logsz)
{
	size_t len = strlen(log);

	for (;;) {
		struct pollfd p = {.fd = master, .events = POLLIN};
		ssize_t n;

		if (poll(&p, 1, 5000) != 1)
			break;
		n = read(master, log + len, logsz - len - 1);
		if (n <= 0)
			break; /* EIO once the slave side is closed */
		len += (size_t)n;
	}
	log[len] = '\0';
}

static void test_tty(void **state)
{
	char log[4096] = "";
	struct pty t;
	int status;
	pid_t pid;

	(void)state;
	pty_open(&t);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		pty_child(&t);
	pty_expect(t.master, "Password: ", 1, log, sizeof(log));
	assert_int_equal(write(t.master, "hunter2\n", 8), 8);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	close(t.slave);
	pty_drain(t.master, log, sizeof(log));
	close(t.master);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child status 0x%x, terminal said \"%s\"", status,
		         log);
	/* not echoed, and a newline after the prompt */
	assert_null(strstr(log, "hunter2"));
	assert_non_null(strstr(log, "Password: \r\n"));
}

/* ^C at the prompt: the terminal gets its echo back, then SIGINT kills. */
static void test_tty_interrupt(void **state)
{
	char log[4096] = "";
	struct termios tio;
	struct pty t;
	int status;
	pid_t pid;

	(void)state;
	pty_open(&t);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		pty_child(&t);
	pty_expect(t.master, "Password: ", 1, log, sizeof(log));
	assert_int_equal(tcgetattr(t.slave, &tio), 0);
	assert_false(tio.c_lflag & ECHO);
	assert_int_equal(write(t.master, "hun\003", 4), 4);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGINT);
	assert_int_equal(tcgetattr(t.slave, &tio), 0);
	assert_true(tio.c_lflag & ECHO);
	close(t.slave);
	close(t.master);
}

/* ^Z at the prompt: the terminal is restored and the prompt asked again
 * (the child is in an orphaned process group, so it does not stop). */
static void test_tty_suspend(void **state)
{
	char log[4096] = "";
	struct pty t;
	int status;
	pid_t pid;

	(void)state;
	pty_open(&t);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		pty_child(&t);
	pty_expect(t.master, "Password: ", 1, log, sizeof(log));
	assert_int_equal(write(t.master, "xx\032", 3), 3);
	pty_expect(t.master, "Password: ", 2, log, sizeof(log));
	assert_int_equal(write(t.master, "hunter2\n", 8), 8);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	close(t.slave);
	close(t.master);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child status 0x%x, terminal said \"%s\"", status,
		         log);
}

/* In the foreground of a terminal the command shares our process group,
 * so it can read the terminal (a passphrase prompt) without SIGTTIN. */
static void test_cmd_tty_foreground(void **state)
{
	char log[4096] = "";
	struct pty t;
	int status;
	pid_t pid;

	(void)state;
	pty_open(&t);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct proto_err err = {0};
		char *s = NULL;
		int fd;

		close(t.master);
		if (setsid() < 0)
			_exit(10);
		fd = open(t.name, O_RDWR);
		if (fd < 0)
			_exit(11);
		if (cred_from_cmd_timeout("read x </dev/tty; echo \"got $x\"",
		                          5000, &s, &err) != 0)
			_exit(12);
		_exit(strcmp(s, "got hello") == 0 ? 0 : 13);
	}
	assert_int_equal(write(t.master, "hello\n", 6), 6);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	close(t.slave);
	pty_drain(t.master, log, sizeof(log));
	close(t.master);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child status 0x%x", status);
}

static void test_tty_none(void **state)
{
	int status;
	pid_t pid;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct proto_err err = {0};
		char *s = NULL;

		/* a new session has no controlling terminal */
		if (setsid() < 0)
			_exit(10);
		if (cred_from_tty("Password: ", &s, &err) == 0)
			_exit(11);
		if (s != NULL || strstr(err.text, "no terminal") == NULL)
			_exit(12);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* A command runs in the directory given to cred_set_dir(), whatever the
 * process's own working directory is: mailfs goes to "/" in the
 * background, and passcmd='./pass.sh' must still work when it runs again
 * there (a new login after a refusal, a fresh OAuth2 token). */
static void test_cmd_dir(void **state)
{
	char dir[] = "/tmp/mailfs-test-cred-XXXXXX", path[64], old[4096];
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pass", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("hunter3\n", f);
	fclose(f);
	assert_non_null(getcwd(old, sizeof(old)));
	assert_int_equal(chdir("/"), 0);

	check_fail("cat ./pass", -EIO, "status 1");
	cred_set_dir(dir);
	check_ok("cat ./pass", "hunter3");
	check_ok("pwd", dir);
	cred_set_dir(NULL);
	check_ok("pwd", "/");

	assert_int_equal(chdir(old), 0);
	unlink(path);
	rmdir(dir);
}

static void test_cred_free(void **state)
{
	char *s = NULL;

	(void)state;
	cred_free(&s);
	assert_null(s);
	s = strdup("x");
	cred_free(&s);
	assert_null(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_cmd_lines),
	        cmocka_unit_test(test_cmd_limit),
	        cmocka_unit_test(test_cmd_failures),
	        cmocka_unit_test(test_cmd_long_output),
	        cmocka_unit_test(test_cmd_sigpipe_reset),
	        cmocka_unit_test(test_cmd_no_fd_leak),
	        cmocka_unit_test(test_cmd_timeout),
	        cmocka_unit_test(test_cmd_timeout_kills_group),
	        cmocka_unit_test(test_stdin),
	        cmocka_unit_test(test_tty),
	        cmocka_unit_test(test_tty_interrupt),
	        cmocka_unit_test(test_tty_suspend),
	        cmocka_unit_test(test_cmd_tty_foreground),
	        cmocka_unit_test(test_tty_none),
	        cmocka_unit_test(test_cmd_dir),
	        cmocka_unit_test(test_cred_free),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
