/* The configuration file: a line parser that trusts nothing (the format
 * and the rules are in config.h). */
#include "fs/config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum key_kind {
	K_URL,
	K_MOUNTPOINT,
	K_OPTIONS,
	K_STRING, /* passed as key=value */
	K_PATH,   /* key=value, the value made absolute */
	K_LOG,    /* syslog, stderr, or a path */
	K_FLAG,   /* yes/no: passed as key, or left out */
};

static const struct {
	const char *name;
	enum key_kind kind;
} keys[] = {
        {"url", K_URL},
        {"mountpoint", K_MOUNTPOINT},
        {"options", K_OPTIONS},
        {"passcmd", K_STRING},
        {"oauth2_cmd", K_STRING},
        {"password_stdin", K_FLAG},
        {"cafile", K_PATH},
        {"notls", K_FLAG},
        {"cache_dir", K_PATH},
        {"offline", K_FLAG},
        {"delete", K_STRING},
        {"pop_keep", K_STRING},
        {"poll", K_STRING},
        {"mark_seen", K_FLAG},
        {"connections", K_STRING},
        {"timeout", K_STRING},
        {"log", K_LOG},
        {"fsname", K_STRING},
        {"ro", K_FLAG},
        {"allow_other", K_FLAG},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

struct parser {
	struct fs_config *cfg;
	const char *home;
	unsigned line;
	bool seen[N_KEYS]; /* keys of the current section */
	char *why;
	size_t why_len;
};

__attribute__((format(printf, 2, 3))) static int bad(struct parser *p,
                                                     const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (p->why_len > 0)
		snprintf(p->why, p->why_len, "line %u: %s", p->line, text);
	return -EINVAL;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool name_ok(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > 64)
		return false;
	for (i = 0; i < len; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		             (c >= '0' && c <= '9');

		if (!alnum && (i == 0 || strchr("._@+-", c) == NULL))
			return false;
	}
	return true;
}

/* Append len bytes of s to *list (a "-o" list) as they are. */
static int list_add(char **list, const char *s, size_t len)
{
	size_t old = *list ? strlen(*list) : 0, n = old;
	char *out = realloc(*list, old + 1 + len + 1);

	if (out == NULL)
		return -ENOMEM;
	if (old > 0)
		out[n++] = ',';
	memcpy(out + n, s, len);
	n += len;
	out[n] = '\0';
	*list = out;
	return 0;
}

/* Append "key=value" to *list, the value escaped. */
static int list_add_kv(char **list, const char *key, const char *v)
{
	size_t klen = strlen(key), len = strlen(v), i, n = klen + 1;
	char *item = malloc(klen + 1 + 2 * len + 1);
	int rc;

	if (item == NULL)
		return -ENOMEM;
	memcpy(item, key, klen);
	item[klen] = '=';
	for (i = 0; i < len; i++) {
		if (v[i] == ',' || v[i] == '\\')
			item[n++] = '\\';
		item[n++] = v[i];
	}
	rc = list_add(list, item, n);
	free(item);
	return rc;
}

/* A path value: "~" and "~/x" are the home directory, a relative path is
 * relative to it. */
static char *expand_path(const char *home, const char *v)
{
	char *out = NULL;

	if (v[0] == '/')
		return strdup(v);
	if (v[0] == '~' && (v[1] == '\0' || v[1] == '/'))
		v += v[1] == '\0' ? 1 : 2;
	if (asprintf(&out, "%s%s%s", home,
	             v[0] == '\0' || home[strlen(home) - 1] == '/' ? "" : "/",
	             v) < 0)
		return NULL;
	return out;
}

static int parse_flag(const char *v, bool *on)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};
	size_t i;

	for (i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*on = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*on = false;
			return 0;
		}
	}
	return -EINVAL;
}

static int add_section(struct parser *p, const char *name, size_t len)
{
	struct fs_config *cfg = p->cfg;
	struct fs_account *a;
	size_t i;

	if (!name_ok(name, len))
		return bad(p,
		           "bad account name \"%.*s\" (letters, digits and "
		           "._@+- only, at most 64)",
		           (int)(len > 64 ? 64 : len), name);
	if ((len == 6 && memcmp(name, "status", 6) == 0) ||
	    (len == 5 && memcmp(name, "fetch", 5) == 0))
		return bad(p,
		           "\"%.*s\" is a command of mailfs, not an account "
		           "name",
		           (int)len, name);
	for (i = 0; i < cfg->n; i++)
		if (strlen(cfg->accounts[i].name) == len &&
		    memcmp(cfg->accounts[i].name, name, len) == 0)
			return bad(p,
			           "account \"%.*s\" again (first on line %u)",
			           (int)len, name, cfg->accounts[i].line);
	a = realloc(cfg->accounts, (cfg->n + 1) * sizeof(*a));
	if (a == NULL)
		return -ENOMEM;
	cfg->accounts = a;
	a = &cfg->accounts[cfg->n];
	memset(a, 0, sizeof(*a));
	a->name = strndup(name, len);
	if (a->name == NULL)
		return -ENOMEM;
	a->line = p->line;
	cfg->n++;
	memset(p->seen, 0, sizeof(p->seen));
	return 0;
}

static int set_key(struct parser *p, size_t k, const char *v)
{
	struct fs_account *a = &p->cfg->accounts[p->cfg->n - 1];
	char *path = NULL;
	bool on;
	int rc;

	switch (keys[k].kind) {
	case K_URL: a->url = strdup(v); return a->url ? 0 : -ENOMEM;
	case K_MOUNTPOINT:
		a->mountpoint = expand_path(p->home, v);
		return a->mountpoint ? 0 : -ENOMEM;
	case K_OPTIONS: return list_add(&a->options, v, strlen(v));
	case K_FLAG:
		if (parse_flag(v, &on) < 0)
			return bad(p, "%s = %s: expected yes or no",
			           keys[k].name, v);
		return on ? list_add(&a->options, keys[k].name,
		                     strlen(keys[k].name))
		          : 0;
	case K_LOG:
		if (strcmp(v, "syslog") == 0 || strcmp(v, "stderr") == 0)
			break;
		/* fall through */
	case K_PATH:
		path = expand_path(p->home, v);
		if (path == NULL)
			return -ENOMEM;
		v = path;
		break;
	case K_STRING: break;
	}
	rc = list_add_kv(&a->options, keys[k].name, v);
	free(path);
	return rc;
}

static int key_line(struct parser *p, const char *s, size_t len)
{
	const char *eq = memchr(s, '=', len), *v, *end = s + len;
	size_t klen, k;
	char *value;
	int rc;

	if (eq == NULL)
		return bad(p, "expected \"[NAME]\" or \"key = value\"");
	klen = (size_t)(eq - s);
	while (klen > 0 && is_blank(s[klen - 1]))
		klen--;
	for (k = 0; k < N_KEYS; k++)
		if (strlen(keys[k].name) == klen &&
		    memcmp(keys[k].name, s, klen) == 0)
			break;
	if (k == N_KEYS)
		return bad(p, "unknown key \"%.*s\"",
		           (int)(klen > 64 ? 64 : klen), s);
	if (p->cfg->n == 0)
		return bad(p, "\"%s\" before the first [NAME]", keys[k].name);
	if (p->seen[k])
		return bad(p, "\"%s\" given twice for account %s", keys[k].name,
		           p->cfg->accounts[p->cfg->n - 1].name);
	p->seen[k] = true;
	v = eq + 1;
	while (v < end && is_blank(*v))
		v++;
	if (v == end)
		return bad(p, "\"%s\" has no value", keys[k].name);
	value = strndup(v, (size_t)(end - v));
	if (value == NULL)
		return -ENOMEM;
	rc = set_key(p, k, value);
	free(value);
	return rc;
}

/* One line without its end, blanks at both ends already dropped. */
static int one_line(struct parser *p, const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 && s[i] != '\t')
			return bad(p, "control character (byte 0x%02x)",
			           (unsigned char)s[i]);
		else if (s[i] == 0x7f)
			return bad(p, "control character (byte 0x7f)");
	if (len == 0 || s[0] == '#' || s[0] == ';')
		return 0;
	if (s[0] == '[') {
		const char *name = s + 1;
		size_t n = len - 1;

		if (s[len - 1] != ']')
			return bad(p, "\"[\" without \"]\" at the end");
		n--;
		while (n > 0 && is_blank(*name)) {
			name++;
			n--;
		}
		while (n > 0 && is_blank(name[n - 1]))
			n--;
		return add_section(p, name, n);
	}
	return key_line(p, s, len);
}

static int check_accounts(struct parser *p)
{
	size_t i;

	for (i = 0; i < p->cfg->n; i++) {
		if (p->cfg->accounts[i].url == NULL) {
			p->line = p->cfg->accounts[i].line;
			return bad(p, "account %s has no url",
			           p->cfg->accounts[i].name);
		}
	}
	return 0;
}

int fs_config_parse(const char *text, size_t len, const char *home,
                    struct fs_config **cfg_r, char *why, size_t why_len)
{
	struct parser p = {.home = home, .why = why, .why_len = why_len};
	const char *s = text, *end = text + len;
	int rc = 0;

	*cfg_r = NULL;
	if (why_len > 0)
		why[0] = '\0';
	p.cfg = calloc(1, sizeof(*p.cfg));
	if (p.cfg == NULL)
		return -ENOMEM;
	while (rc == 0 && s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *e = nl ? nl : end, *b = s;

		p.line++;
		if (e - s > FS_CONFIG_MAX_LINE) {
			rc = bad(&p, "longer than %d bytes",
			         FS_CONFIG_MAX_LINE);
			break;
		}
		if (memchr(s, '\0', (size_t)(e - s)) != NULL) {
			rc = bad(&p, "NUL byte");
			break;
		}
		if (e > b && e[-1] == '\r')
			e--;
		while (b < e && is_blank(*b))
			b++;
		while (e > b && is_blank(e[-1]))
			e--;
		rc = one_line(&p, b, (size_t)(e - b));
		s = nl ? nl + 1 : end;
	}
	if (rc == 0)
		rc = check_accounts(&p);
	if (rc < 0) {
		if (rc == -ENOMEM && why_len > 0)
			snprintf(why, why_len, "out of memory");
		fs_config_free(&p.cfg);
		return rc;
	}
	*cfg_r = p.cfg;
	return 0;
}

/* The home directory of the user running mailfs (the real user id), from
 * the password database; $HOME only if the user has no entry there. */
static const char *home_dir(void)
{
	struct passwd *pw = getpwuid(getuid());
	const char *home = NULL;

	if (pw != NULL && pw->pw_dir != NULL && pw->pw_dir[0] == '/')
		home = pw->pw_dir;
	else if (pw == NULL)
		home = getenv("HOME");
	return home != NULL && home[0] == '/' ? home : NULL;
}

int fs_config_default_path(char **path_r)
{
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = home_dir();
	int rc;

	*path_r = NULL;
	if (xdg != NULL && xdg[0] == '/')
		rc = asprintf(path_r, "%s/mailfs/config", xdg);
	else if (home != NULL)
		rc = asprintf(path_r, "%s/.config/mailfs/config", home);
	else
		return -ENOENT;
	if (rc < 0) {
		*path_r = NULL;
		return -ENOMEM;
	}
	return 0;
}

static int read_all(int fd, char **text_r, size_t *len_r)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap), *n;
	ssize_t got;

	if (buf == NULL)
		return -ENOMEM;
	for (;;) {
		if (len == cap) {
			if (cap > FS_CONFIG_MAX_SIZE) {
				free(buf);
				return -EFBIG;
			}
			n = realloc(buf, cap * 2);
			if (n == NULL) {
				free(buf);
				return -ENOMEM;
			}
			buf = n;
			cap *= 2;
		}
		got = read(fd, buf + len, cap - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			int rc = -errno;

			free(buf);
			return rc;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	if (len > FS_CONFIG_MAX_SIZE) {
		free(buf);
		return -EFBIG;
	}
	*text_r = buf;
	*len_r = len;
	return 0;
}

int fs_config_load(const char *path, struct fs_config **cfg_r, char *why,
                   size_t why_len)
{
	const char *home = home_dir();
	char *text = NULL, line_why[512];
	struct stat st;
	size_t len = 0;
	int fd, rc;

	*cfg_r = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		rc = -errno;
		snprintf(why, why_len, "%s: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		snprintf(why, why_len, "%s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, why_len, "%s is not a regular file", path);
		close(fd);
		return -EPERM;
	}
	if (st.st_uid != getuid()) {
		snprintf(why, why_len,
		         "%s belongs to another user (uid %u); refusing it: it "
		         "names commands that print passwords",
		         path, (unsigned)st.st_uid);
		close(fd);
		return -EPERM;
	}
	if ((st.st_mode & 077) != 0) {
		snprintf(
		        why, why_len,
		        "%s is accessible by others (mode %04o); refusing it: "
		        "it names commands that print passwords (chmod 600 %s)",
		        path, (unsigned)(st.st_mode & 07777), path);
		close(fd);
		return -EPERM;
	}
	rc = read_all(fd, &text, &len);
	close(fd);
	if (rc == -EFBIG) {
		snprintf(why, why_len, "%s: larger than %d bytes", path,
		         FS_CONFIG_MAX_SIZE);
		return -EINVAL;
	}
	if (rc < 0) {
		snprintf(why, why_len, "%s: %s", path, strerror(-rc));
		return rc;
	}
	if (home == NULL) {
		free(text);
		snprintf(why, why_len, "%s: no home directory known", path);
		return -ENOENT;
	}
	rc = fs_config_parse(text, len, home, cfg_r, line_why,
	                     sizeof(line_why));
	free(text);
	if (rc < 0) {
		snprintf(why, why_len, "%s: %s", path, line_why);
		return rc;
	}
	(*cfg_r)->path = strdup(path);
	if ((*cfg_r)->path == NULL) {
		fs_config_free(cfg_r);
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

const struct fs_account *fs_config_get(const struct fs_config *cfg,
                                       const char *name)
{
	size_t i;

	for (i = 0; cfg != NULL && i < cfg->n; i++)
		if (strcmp(cfg->accounts[i].name, name) == 0)
			return &cfg->accounts[i];
	return NULL;
}

static bool same_dir(const char *a, const char *b)
{
	char ra[PATH_MAX], rb[PATH_MAX];
	struct stat sa, sb;

	if (realpath(a, ra) != NULL && realpath(b, rb) != NULL)
		return strcmp(ra, rb) == 0;
	/* Not reachable now (a hung mount, say): by the words. */
	if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
		return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
	return strcmp(a, b) == 0;
}

int fs_config_find(const char *name_or_mountpoint, struct fs_account **acct_r)
{
	const struct fs_account *a = NULL;
	struct fs_config *cfg = NULL;
	char *path = NULL, why[1024];
	size_t i;
	int rc;

	*acct_r = NULL;
	rc = fs_config_default_path(&path);
	if (rc < 0)
		return rc;
	rc = fs_config_load(path, &cfg, why, sizeof(why));
	free(path);
	if (rc == -ENOENT)
		return rc;
	if (rc < 0) {
		fprintf(stderr, "mailfs: %s\n", why);
		return rc;
	}
	a = fs_config_get(cfg, name_or_mountpoint);
	for (i = 0; a == NULL && i < cfg->n; i++)
		if (cfg->accounts[i].mountpoint != NULL &&
		    same_dir(cfg->accounts[i].mountpoint, name_or_mountpoint))
			a = &cfg->accounts[i];
	rc = -ENOENT;
	if (a != NULL) {
		*acct_r = fs_account_dup(a);
		rc = *acct_r ? 0 : -ENOMEM;
	}
	fs_config_free(&cfg);
	return rc;
}

static char *dup_or_null(const char *s, bool *ok)
{
	char *d;

	if (s == NULL)
		return NULL;
	d = strdup(s);
	if (d == NULL)
		*ok = false;
	return d;
}

struct fs_account *fs_account_dup(const struct fs_account *a)
{
	struct fs_account *d = calloc(1, sizeof(*d));
	bool ok = true;

	if (d == NULL)
		return NULL;
	d->name = dup_or_null(a->name, &ok);
	d->url = dup_or_null(a->url, &ok);
	d->mountpoint = dup_or_null(a->mountpoint, &ok);
	d->options = dup_or_null(a->options, &ok);
	d->line = a->line;
	if (!ok)
		fs_account_free(&d);
	return d;
}

static void account_clear(struct fs_account *a)
{
	free(a->name);
	free(a->url);
	free(a->mountpoint);
	free(a->options);
	memset(a, 0, sizeof(*a));
}

void fs_account_free(struct fs_account **a)
{
	if (*a == NULL)
		return;
	account_clear(*a);
	free(*a);
	*a = NULL;
}

void fs_config_free(struct fs_config **cfg)
{
	size_t i;

	if (*cfg == NULL)
		return;
	for (i = 0; i < (*cfg)->n; i++)
		account_clear(&(*cfg)->accounts[i]);
	free((*cfg)->accounts);
	free((*cfg)->path);
	free(*cfg);
	*cfg = NULL;
}
