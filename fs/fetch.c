/* mailfs fetch (fs/fetch.h). */
#include "fs/fetch.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "fs/status.h"

#define CACHED_ATTR "user.mailfs.cached"
#define RUN         32 /* messages a thread takes at a time */
#define THREADS_MAX 16
#define FAILS_MAX   20 /* failures in a row: the server is gone */
#define PLAIN_EVERY 10 /* seconds between plain progress lines */

struct item {
	char *path; /* owned */
	uint64_t size;
};

struct fetch {
	struct item *v; /* owned */
	size_t n, cap;
	uint64_t bytes;         /* of the items */
	uint64_t cached_before; /* messages already cached at the scan */
	bool oom;
	atomic_size_t next_run;
	atomic_size_t done, failed;
	atomic_uint_fast64_t done_bytes;
	atomic_uint fails_in_row;
	atomic_bool gone; /* the server cannot be reached */
};

static volatile sig_atomic_t stop_signal;
static struct fetch *walk_into; /* nftw has no context pointer */

static void on_signal(int sig)
{
	stop_signal = sig;
	signal(sig, SIG_DFL); /* a second one ends it at once */
}

/* 1 cached, 0 not, -1 not a message (or no answer). */
static int is_cached(const char *path)
{
	char v[4];
	ssize_t n = getxattr(path, CACHED_ATTR, v, sizeof(v));

	if (n == 1 && (v[0] == '0' || v[0] == '1'))
		return v[0] == '1';
	return -1;
}

static int walk_cb(const char *path, const struct stat *sb, int flag,
                   struct FTW *ftw)
{
	struct fetch *f = walk_into;
	int c;

	(void)ftw;
	if (stop_signal)
		return 1;
	if (flag != FTW_F || !S_ISREG(sb->st_mode))
		return 0;
	c = is_cached(path);
	if (c == 1)
		f->cached_before++;
	if (c != 0)
		return 0;
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 1024;
		struct item *v = realloc(f->v, cap * sizeof(*v));

		if (v == NULL) {
			f->oom = true;
			return 1;
		}
		f->v = v;
		f->cap = cap;
	}
	f->v[f->n].path = strdup(path);
	if (f->v[f->n].path == NULL) {
		f->oom = true;
		return 1;
	}
	f->v[f->n].size = (uint64_t)sb->st_size;
	f->bytes += (uint64_t)sb->st_size;
	f->n++;
	return 0;
}

/* Fetch one message: read its first byte, then ask again. */
static bool fetch_one(const struct item *it)
{
	char c;
	int fd;
	ssize_t n;

	if (is_cached(it->path) == 1)
		return true;
	fd = open(it->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	do
		n = pread(fd, &c, 1, 0);
	while (n < 0 && errno == EINTR && !stop_signal);
	close(fd);
	return n >= 0 && is_cached(it->path) == 1;
}

static void *worker(void *arg)
{
	struct fetch *f = arg;

	while (!stop_signal && !atomic_load(&f->gone)) {
		size_t run = atomic_fetch_add(&f->next_run, 1);
		size_t from = run * RUN;

		if (from >= f->n)
			break;
		for (size_t i = from; i < f->n && i < from + RUN; i++) {
			if (stop_signal || atomic_load(&f->gone))
				break;
			if (fetch_one(&f->v[i])) {
				atomic_fetch_add(&f->done_bytes, f->v[i].size);
				atomic_fetch_add(&f->done, 1);
				atomic_store(&f->fails_in_row, 0);
			} else {
				atomic_fetch_add(&f->failed, 1);
				if (atomic_fetch_add(&f->fails_in_row, 1) + 1 >=
				    FAILS_MAX)
					atomic_store(&f->gone, true);
			}
		}
	}
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int term_width(void)
{
	struct winsize ws;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
		return ws.ws_col;
	return 80;
}

static void hms(double s, char *buf, size_t size)
{
	long t = (long)(s + 0.5);

	if (t >= 3600)
		snprintf(buf, size, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60,
		         t % 60);
	else
		snprintf(buf, size, "%ld:%02ld", t / 60, t % 60);
}

/* One progress report: a bar redrawn in place on a terminal, a line
 * otherwise. */
static void progress(struct fetch *f, double elapsed, bool tty, bool last)
{
	size_t done = atomic_load(&f->done), failed = atomic_load(&f->failed);
	uint64_t bytes = atomic_load(&f->done_bytes);
	double rate = elapsed > 0 ? bytes / elapsed : 0;
	char b1[32], b2[32], r[32], left[32] = "?";
	char text[160];
	int width = term_width(), bar;

	fs_status_bytes((double)bytes, b1, sizeof(b1));
	fs_status_bytes((double)f->bytes, b2, sizeof(b2));
	fs_status_bytes(rate, r, sizeof(r));
	if (rate > 0)
		hms((double)(f->bytes - bytes) / rate, left, sizeof(left));
	snprintf(text, sizeof(text), "%zu/%zu messages  %s/%s  %s/s  %s left%s",
	         done, f->n, b1, b2, r, last ? "0:00" : left,
	         failed ? "  (some failed)" : "");
	if (last)
		snprintf(text, sizeof(text), "%zu/%zu messages  %s/%s  %s/s",
		         done, f->n, b1, b2, r);
	if (!tty) {
		fprintf(stderr, "mailfs fetch: %s\n", text);
		return;
	}
	bar = width - (int)strlen(text) - 5;
	if (bar > 40)
		bar = 40;
	fprintf(stderr, "\r");
	if (bar >= 10) {
		int full =
		        f->bytes ? (int)((double)bytes / f->bytes * bar) : bar;

		fprintf(stderr, "[");
		for (int i = 0; i < bar; i++)
			fputc(i < full ? '#' : '.', stderr);
		fprintf(stderr, "] ");
	}
	fprintf(stderr, "%s\033[K%s", text, last ? "\n" : "");
	fflush(stderr);
}

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: mailfs fetch [-j N] [-q] PATH...\n"
	        "\n"
	        "Download into the cache every message under PATH (a "
	        "mailbox, a folder tree or\n"
	        "the whole mount of a mailfs mount) that is not cached yet, "
	        "so that it can be\n"
	        "read offline.  Ctrl-C stops it; running it again goes on "
	        "where it stopped.\n"
	        "\n"
	        "    -j N       N messages on their way at a time (4)\n"
	        "    -q         no progress, only errors and the summary\n");
}

static void free_items(struct fetch *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->v[i].path);
	free(f->v);
}

int fs_fetch_main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"jobs", required_argument, NULL, 'j'},
	        {"quiet", no_argument, NULL, 'q'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	struct fetch f = {0};
	pthread_t threads[THREADS_MAX];
	unsigned nthreads = 4, started = 0;
	bool quiet = false, tty;
	double t0, last_plain;
	int c, ret = 0;
	char b1[32];

	optind = 1;
	while ((c = getopt_long(argc, argv, "j:qh", opts, NULL)) != -1) {
		char *end;
		unsigned long v;

		switch (c) {
		case 'j':
			v = strtoul(optarg, &end, 10);
			if (*end != '\0' || v == 0 || v > THREADS_MAX) {
				fprintf(stderr,
				        "mailfs fetch: -j %s: expected 1 to "
				        "%d\n",
				        optarg, THREADS_MAX);
				return 2;
			}
			nthreads = (unsigned)v;
			break;
		case 'q': quiet = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	tty = !quiet && isatty(STDERR_FILENO);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	walk_into = &f;
	for (int i = optind; i < argc && !stop_signal; i++) {
		char *mnt = fs_status_mount_of(argv[i]);

		if (mnt == NULL) {
			ret = 1;
			continue;
		}
		free(mnt);
		if (tty)
			fprintf(stderr, "mailfs fetch: looking through %s...",
			        argv[i]);
		if (nftw(argv[i], walk_cb, 16, FTW_PHYS | FTW_MOUNT) < 0) {
			fprintf(stderr, "%smailfs fetch: %s: %s\n",
			        tty ? "\n" : "", argv[i], strerror(errno));
			ret = 1;
		} else if (tty) {
			fprintf(stderr, "\r\033[K");
		}
		if (f.oom) {
			fprintf(stderr, "mailfs fetch: out of memory\n");
			free_items(&f);
			return 1;
		}
	}
	if (stop_signal) {
		fprintf(stderr, "mailfs fetch: interrupted\n");
		free_items(&f);
		return 128 + stop_signal;
	}
	fs_status_bytes((double)f.bytes, b1, sizeof(b1));
	if (f.n == 0) {
		printf("mailfs fetch: every message is cached (%llu)\n",
		       (unsigned long long)f.cached_before);
		free_items(&f);
		return ret;
	}
	if (!quiet)
		fprintf(stderr,
		        "mailfs fetch: %zu messages (%s) to fetch, %llu "
		        "cached already\n",
		        f.n, b1, (unsigned long long)f.cached_before);

	t0 = last_plain = now_s();
	for (unsigned i = 0; i < nthreads; i++) {
		if (pthread_create(&threads[i], NULL, worker, &f) != 0)
			break;
		started++;
	}
	if (started == 0) {
		fprintf(stderr, "mailfs fetch: cannot start a thread\n");
		free_items(&f);
		return 1;
	}
	/* Report until every message was tried (or a signal came). */
	while (atomic_load(&f.done) + atomic_load(&f.failed) < f.n &&
	       !stop_signal && !atomic_load(&f.gone)) {
		usleep(200000);
		if (tty)
			progress(&f, now_s() - t0, true, false);
		else if (!quiet && now_s() - last_plain >= PLAIN_EVERY) {
			progress(&f, now_s() - t0, false, false);
			last_plain = now_s();
		}
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	if (!quiet)
		progress(&f, now_s() - t0, tty, true);

	{
		size_t done = atomic_load(&f.done);
		size_t failed = atomic_load(&f.failed);

		if (stop_signal) {
			printf("mailfs fetch: interrupted: %zu of %zu messages "
			       "fetched; run it again to fetch the rest\n",
			       done, f.n);
			ret = 128 + stop_signal;
		} else if (atomic_load(&f.gone)) {
			printf("mailfs fetch: stopped after %zu failures in a "
			       "row (is the server reachable? see the "
			       "mount's log); %zu of %zu messages fetched\n",
			       (size_t)FAILS_MAX, done, f.n);
			ret = 1;
		} else if (failed > 0) {
			printf("mailfs fetch: %zu of %zu messages fetched, "
			       "%zu failed (see the mount's log); run it "
			       "again to retry\n",
			       done, f.n, failed);
			ret = 1;
		} else {
			printf("mailfs fetch: %zu messages (%s) fetched; "
			       "everything under %s is cached\n",
			       done, b1,
			       argc - optind == 1 ? argv[optind] : "the paths");
		}
	}
	free_items(&f);
	return ret;
}
