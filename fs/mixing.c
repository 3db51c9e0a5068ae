/* One login over POP3 and IMAP at once: the warning and the registry of
 * running mounts (mixing.h). */
#include "fs/mixing.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/mailfs.h"
#include "proto/log.h"

static const char *const service_labels[] = {
        "imap", "imap4", "imaps", "pop", "pop3", "pops", "pop3s", "mail", "mx",
};

static bool is_address(const char *h)
{
	return strchr(h, ':') != NULL || strspn(h, "0123456789.") == strlen(h);
}

/* The domain of a host name: without its first label when that label
 * names a mail service, or when three labels or more remain. */
static const char *provider_of(const char *h)
{
	const char *dot = strchr(h, '.');
	size_t i, first;

	if (dot == NULL || dot[1] == '\0' || is_address(h))
		return h;
	first = (size_t)(dot - h);
	for (i = 0; i < sizeof(service_labels) / sizeof(service_labels[0]); i++)
		if (strlen(service_labels[i]) == first &&
		    strncasecmp(h, service_labels[i], first) == 0)
			return dot + 1;
	if (strchr(dot + 1, '.') != NULL)
		return dot + 1;
	return h;
}

bool fs_same_provider(const char *a, const char *b)
{
	if (strcasecmp(a, b) == 0)
		return true;
	if (is_address(a) || is_address(b))
		return false;
	return strcasecmp(provider_of(a), provider_of(b)) == 0;
}

/* ------------------------------------------------------------------ */
/* The registry. */

static char registered[PATH_MAX];

static int registry_dir(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char run[64];
	struct stat st;

	if (xdg != NULL && xdg[0] == '/') {
		snprintf(buf, len, "%s/mailfs/mounts", xdg);
		return 0;
	}
	snprintf(run, sizeof(run), "/run/user/%u", (unsigned)getuid());
	if (stat(run, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    st.st_uid != getuid())
		return -ENOENT;
	snprintf(buf, len, "%s/mailfs/mounts", run);
	return 0;
}

struct entry {
	char proto[8];
	char user[256];
	char host[256];
	char url[512];
	char mountpoint[PATH_MAX];
	long pop_keep;
};

static void field(char *dst, size_t len, const char *line, const char *key)
{
	size_t k = strlen(key);
	size_t n;

	if (strncmp(line, key, k) != 0 || line[k] != '=')
		return;
	line += k + 1;
	n = strcspn(line, "\n");
	if (n >= len)
		n = len - 1;
	memcpy(dst, line, n);
	dst[n] = '\0';
}

static bool read_entry(const char *path, struct entry *e)
{
	char line[PATH_MAX + 64], keep[32] = "-1";
	FILE *f = fopen(path, "re");

	if (f == NULL)
		return false;
	memset(e, 0, sizeof(*e));
	while (fgets(line, sizeof(line), f) != NULL) {
		field(e->proto, sizeof(e->proto), line, "proto");
		field(e->user, sizeof(e->user), line, "user");
		field(e->host, sizeof(e->host), line, "host");
		field(e->url, sizeof(e->url), line, "url");
		field(e->mountpoint, sizeof(e->mountpoint), line, "mountpoint");
		field(keep, sizeof(keep), line, "pop_keep");
	}
	fclose(f);
	e->pop_keep = strtol(keep, NULL, 10);
	return e->proto[0] != '\0' && e->user[0] != '\0' && e->host[0] != '\0';
}

/* The first running mount of the registry over proto for the login of fs
 * (and, for POP3, with pop_keep); false if none. */
static bool find_mount(const struct mailfs *fs, const char *proto,
                       struct entry *e)
{
	char dir[PATH_MAX], path[PATH_MAX + 32];
	struct dirent *de;
	bool found = false;
	DIR *d;

	if (registry_dir(dir, sizeof(dir)) < 0 || (d = opendir(dir)) == NULL)
		return false;
	while (!found && (de = readdir(d)) != NULL) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);

		if (de->d_name[0] == '.' || *end != '\0' || pid <= 0)
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >=
		    (int)sizeof(path))
			continue;
		if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
			unlink(path);
			continue;
		}
		if (pid == (long)getpid() || !read_entry(path, e))
			continue;
		found = strcmp(e->proto, proto) == 0 &&
		        strcasecmp(e->user, fs->url.user) == 0 &&
		        fs_same_provider(e->host, fs->url.host) &&
		        (strcmp(proto, "imap") == 0 || e->pop_keep >= 0);
	}
	closedir(d);
	return found;
}

static int mkdirs(char *path)
{
	char *s;

	for (s = path + 1; *s != '\0'; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(path, 0700) != 0 && errno != EEXIST) {
			*s = '/';
			return -errno;
		}
		*s = '/';
	}
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

void fs_mixing_register(const struct mailfs *fs)
{
	char dir[PATH_MAX], tmp[PATH_MAX + 48];
	FILE *f;
	int rc;

	if (registry_dir(dir, sizeof(dir)) < 0)
		return;
	rc = mkdirs(dir);
	if (rc < 0) {
		log_debug("mount registry %s: %s", dir, strerror(-rc));
		return;
	}
	if (snprintf(registered, sizeof(registered), "%s/%ld", dir,
	             (long)getpid()) >= (int)sizeof(registered) ||
	    snprintf(tmp, sizeof(tmp), "%s/.%ld.new", dir, (long)getpid()) >=
	            (int)sizeof(tmp)) {
		registered[0] = '\0';
		return;
	}
	f = fopen(tmp, "we");
	if (f == NULL) {
		log_debug("mount registry %s: %s", tmp, strerror(errno));
		registered[0] = '\0';
		return;
	}
	fprintf(f,
	        "proto=%s\nuser=%s\nhost=%s\nurl=%s\npop_keep=%ld\n"
	        "mountpoint=%s\n",
	        fs->is_pop ? "pop3" : "imap", fs->url.user, fs->url.host,
	        fs->opts.account, fs->opts.pop_keep_days, fs->mountpoint);
	if (fclose(f) != 0 || rename(tmp, registered) != 0) {
		log_debug("mount registry %s: %s", registered, strerror(errno));
		unlink(tmp);
		registered[0] = '\0';
	}
}

void fs_mixing_unregister(void)
{
	if (registered[0] != '\0')
		unlink(registered);
	registered[0] = '\0';
}

/* ------------------------------------------------------------------ */
/* IMAP caches: directories USER@HOST[:PORT] (url_cache_name()). */

static void unescape(char *s)
{
	char *d = s;

	for (; *s != '\0'; s++) {
		unsigned v;

		if (s[0] == '%' && sscanf(s + 1, "%2x", &v) == 1 &&
		    s[1] != '\0' && s[2] != '\0') {
			*d++ = (char)v;
			s += 2;
		} else {
			*d++ = *s;
		}
	}
	*d = '\0';
}

/* Is the cache directory name an IMAP cache of the login of fs? */
static bool imap_cache_of(const struct mailfs *fs, const char *name)
{
	char buf[NAME_MAX + 1], *at, *host, *colon;
	size_t len = strlen(name);

	if (len >= sizeof(buf) ||
	    (len > 5 && strcmp(name + len - 5, "+pop3") == 0))
		return false;
	memcpy(buf, name, len + 1);
	unescape(buf);
	at = strrchr(buf, '@');
	if (at == NULL)
		return false;
	*at = '\0';
	host = at + 1;
	if (host[0] == '[') {
		host++;
		colon = strchr(host, ']');
	} else {
		colon = strrchr(host, ':');
	}
	if (colon != NULL)
		*colon = '\0';
	return strcasecmp(buf, fs->url.user) == 0 &&
	       fs_same_provider(host, fs->url.host);
}

static bool find_cache_in(const struct mailfs *fs, const char *dir, char *path,
                          size_t len)
{
	struct dirent *de;
	bool found = false;
	struct stat st;
	DIR *d = opendir(dir);

	if (d == NULL)
		return false;
	while (!found && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !imap_cache_of(fs, de->d_name))
			continue;
		if (snprintf(path, len, "%s/%s", dir, de->d_name) >= (int)len)
			continue;
		found = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
	}
	closedir(d);
	return found;
}

/* An IMAP cache of the login next to the POP3 cache. */
static bool find_cache(const struct mailfs *fs, char *path, size_t len)
{
	char *dir = strdup(fs->cache_path), *slash;
	bool found = false;

	if (dir == NULL)
		return false;
	slash = strrchr(dir, '/');
	if (slash != NULL) {
		*slash = '\0';
		found = find_cache_in(fs, dir, path, len);
	}
	free(dir);
	return found;
}

void fs_mixing_warn(const struct mailfs *fs, FILE *out)
{
	char path[PATH_MAX];
	struct entry e;

	if (fs->is_pop) {
		if (fs->opts.pop_keep_days < 0)
			return;
		if (find_mount(fs, "imap", &e))
			fprintf(out,
			        "mailfs: warning: %s@%s is also mounted over "
			        "IMAP (%s on %s); with pop_keep=%ld, messages "
			        "deleted from the POP3 maildrop vanish for IMAP "
			        "clients too\n",
			        fs->url.user, fs->url.host, e.url, e.mountpoint,
			        fs->opts.pop_keep_days);
		else if (find_cache(fs, path, sizeof(path)))
			fprintf(out,
			        "mailfs: warning: %s@%s is also cached over "
			        "IMAP (%s); with pop_keep=%ld, messages "
			        "deleted from the POP3 maildrop vanish for "
			        "IMAP clients too\n",
			        fs->url.user, fs->url.host, path,
			        fs->opts.pop_keep_days);
		return;
	}
	if (find_mount(fs, "pop3", &e))
		fprintf(out,
		        "mailfs: warning: %s@%s is also mounted over POP3 (%s "
		        "on %s) with pop_keep=%ld: every message it downloads "
		        "is deleted from the server %ld days later, and then "
		        "vanishes from this IMAP mount and its cache too (the "
		        "POP3 mount's cache keeps it)\n",
		        fs->url.user, fs->url.host, e.url, e.mountpoint,
		        e.pop_keep, e.pop_keep);
}
