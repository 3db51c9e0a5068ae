#include "proto/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "proto/compress.h"
#include "proto/log.h"

#define NET_READ_CHUNK     (64 * 1024)
#define NET_DEFAULT_MAXBUF (1024 * 1024)

struct net_conn {
	int fd;
	SSL_CTX *ctx; /* owned */
	SSL *ssl;     /* owned */
	char *host;   /* owned */
	int timeout_ms;
	char *rbuf; /* owned; unconsumed input is rbuf[rstart, rend) */
	size_t rstart, rend, rcap, max_buffer;
	struct compress *z; /* owned; NULL until net_start_compress() */
	atomic_bool shut;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining(int64_t deadline)
{
	int64_t left = deadline - now_ms();

	if (left <= 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Wait until fd is ready for events or the deadline passes.
 * Returns 0 when ready, -ETIMEDOUT, or another negative errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = events};
		int left = remaining(deadline);
		int rc;

		if (left == 0)
			return -ETIMEDOUT;
		rc = poll(&pfd, 1, left);
		if (rc > 0)
			return 0;
		if (rc == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/* A name lookup runs in a thread of its own so that the caller can give
 * up after its deadline; getaddrinfo() itself has no timeout.  (glibc's
 * getaddrinfo_a() would do, but its helper threads do not survive the
 * fork() of daemonizing.)  The shared state is freed by whichever side
 * finishes last. */
struct lookup {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs;
	bool done;
	int rc;
	struct addrinfo *res;
	char *host, *port;
};

static void lookup_unref(struct lookup *l)
{
	bool last;

	pthread_mutex_lock(&l->lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&l->lock);
	if (!last)
		return;
	if (l->res != NULL)
		freeaddrinfo(l->res);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l->host);
	free(l->port);
	free(l);
}

static void *lookup_thread(void *arg)
{
	struct lookup *l = arg;
	struct addrinfo hints = {
	        .ai_family = AF_UNSPEC,
	        .ai_socktype = SOCK_STREAM,
	        .ai_flags = AI_ADDRCONFIG,
	};
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(l->host, l->port, &hints, &res);

	pthread_mutex_lock(&l->lock);
	l->rc = rc;
	l->res = res;
	l->done = true;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	lookup_unref(l);
	return NULL;
}

static int resolve(const char *host, const char *port, int64_t deadline,
                   struct addrinfo **res_r, struct proto_err *err)
{
	struct lookup *l = calloc(1, sizeof(*l));
	struct timespec ts;
	pthread_attr_t attr;
	pthread_t th;
	int rc;

	if (l == NULL || (l->host = strdup(host)) == NULL ||
	    (l->port = strdup(port)) == NULL) {
		if (l != NULL)
			free(l->host);
		free(l);
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	}
	pthread_mutex_init(&l->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cond, &ca);
	pthread_condattr_destroy(&ca);
	l->refs = 2;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&th, &attr, lookup_thread, l);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		l->refs = 1;
		lookup_unref(l);
		return proto_err_set(err, PERR_LOCAL, -rc,
		                     "cannot start a lookup: %s", strerror(rc));
	}
	ts.tv_sec = deadline / 1000;
	ts.tv_nsec = (deadline % 1000) * 1000000L;
	pthread_mutex_lock(&l->lock);
	while (!l->done) {
		if (pthread_cond_timedwait(&l->cond, &l->lock, &ts) ==
		    ETIMEDOUT)
			break;
	}
	if (!l->done) {
		pthread_mutex_unlock(&l->lock);
		lookup_unref(l);
		return proto_err_set(err, PERR_TIMEOUT, -ETIMEDOUT,
		                     "cannot resolve %s: timed out", host);
	}
	rc = l->rc;
	if (rc == 0) {
		*res_r = l->res;
		l->res = NULL;
	}
	pthread_mutex_unlock(&l->lock);
	lookup_unref(l);
	if (rc != 0)
		return proto_err_set(err, PERR_RESOLVE, -EHOSTUNREACH,
		                     "cannot resolve %s: %s", host,
		                     gai_strerror(rc));
	return 0;
}

static int connect_one(const struct addrinfo *ai, int64_t deadline, int *fd_r)
{
	int fd, rc, soerr = 0;
	socklen_t len = sizeof(soerr);

	fd = socket(ai->ai_family,
	            ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
	            ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		goto ok;
	if (errno != EINPROGRESS) {
		rc = -errno;
		goto fail;
	}
	rc = wait_fd(fd, POLLOUT, deadline);
	if (rc < 0)
		goto fail;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) {
		rc = -errno;
		goto fail;
	}
	if (soerr != 0) {
		rc = -soerr;
		goto fail;
	}
ok:
	/* Commands are small and pipelined: do not let Nagle hold them. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
	*fd_r = fd;
	return 0;
fail:
	close(fd);
	return rc;
}

int net_connect(struct net_conn **conn_r, const char *host, const char *port,
                int timeout_ms, struct proto_err *err)
{
	int64_t deadline = now_ms() + timeout_ms;
	struct addrinfo *res = NULL;
	struct net_conn *c;
	int rc, fd = -1;

	*conn_r = NULL;
	rc = resolve(host, port, deadline, &res, err);
	if (rc < 0)
		return rc;
	rc = -EHOSTUNREACH;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		rc = connect_one(ai, deadline, &fd);
		if (rc == 0 || rc == -ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (rc == -ETIMEDOUT)
		return proto_err_set(err, PERR_TIMEOUT, rc,
		                     "cannot connect to %s port %s: timed out",
		                     host, port);
	if (rc < 0)
		return proto_err_set(err, PERR_CONNECT, rc,
		                     "cannot connect to %s port %s: %s", host,
		                     port, strerror(-rc));

	c = calloc(1, sizeof(*c));
	if (c == NULL || (c->host = strdup(host)) == NULL) {
		free(c);
		close(fd);
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "out of memory");
	}
	c->fd = fd;
	c->timeout_ms = timeout_ms;
	c->max_buffer = NET_DEFAULT_MAXBUF;
	*conn_r = c;
	return 0;
}

static const char *verify_reason(long result)
{
	switch (result) {
	case X509_V_ERR_CERT_HAS_EXPIRED: return "certificate has expired";
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "certificate is not yet valid";
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return "certificate is for another host name (wrong host)";
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		return "certificate issuer is unknown (self-signed or "
		       "private CA; trust it with -o cafile=)";
	case X509_V_ERR_CERT_REVOKED: return "certificate has been revoked";
	}
	return X509_verify_cert_error_string(result);
}

/* The first queued OpenSSL error as text, and clear the queue. */
static const char *ssl_reason(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (e == 0)
		snprintf(buf, len, "connection closed during handshake");
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

int net_start_tls(struct net_conn *c, const struct net_tls_opts *opts,
                  struct proto_err *err)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	struct in6_addr a6;
	struct in_addr a4;
	char why[256];
	bool is_ip;

	if (c->ssl != NULL)
		return proto_err_set(err, PERR_PROTOCOL, -EPROTO,
		                     "TLS is already active");
	if (c->rend > c->rstart)
		return proto_err_set(err, PERR_PROTOCOL, -EPROTO,
		                     "%s sent data before the TLS handshake "
		                     "(possible injection); refusing",
		                     c->host);

	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx == NULL)
		goto nomem;
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_set_default_verify_paths(c->ctx) != 1)
		log_warn("cannot load the system CA store");
	if (opts != NULL && opts->cafile != NULL &&
	    SSL_CTX_load_verify_locations(c->ctx, opts->cafile, NULL) != 1) {
		ERR_clear_error();
		return proto_err_set(err, PERR_LOCAL, -ENOENT,
		                     "cannot load CA certificates from %s",
		                     opts->cafile);
	}
	c->ssl = SSL_new(c->ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
		goto nomem;

	is_ip = inet_pton(AF_INET, c->host, &a4) == 1 ||
	        inet_pton(AF_INET6, c->host, &a6) == 1;
	if (is_ip) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);

		if (X509_VERIFY_PARAM_set1_ip_asc(vp, c->host) != 1)
			goto nomem;
	} else {
		if (SSL_set1_host(c->ssl, c->host) != 1 ||
		    SSL_set_tlsext_host_name(c->ssl, c->host) != 1)
			goto nomem;
	}

	for (;;) {
		int rc = SSL_connect(c->ssl);
		int wrc;

		if (rc == 1)
			break;
		switch (SSL_get_error(c->ssl, rc)) {
		case SSL_ERROR_WANT_READ:
			wrc = wait_fd(c->fd, POLLIN, deadline);
			break;
		case SSL_ERROR_WANT_WRITE:
			wrc = wait_fd(c->fd, POLLOUT, deadline);
			break;
		default: {
			long vr = SSL_get_verify_result(c->ssl);

			if (vr != X509_V_OK) {
				ERR_clear_error();
				return proto_err_set(
				        err, PERR_TLS_VERIFY, -EPERM,
				        "TLS certificate of %s not trusted: %s",
				        c->host, verify_reason(vr));
			}
			return proto_err_set(err, PERR_TLS, -EIO,
			                     "TLS handshake with %s failed: %s",
			                     c->host,
			                     ssl_reason(why, sizeof(why)));
		}
		}
		if (wrc == -ETIMEDOUT)
			return proto_err_set(err, PERR_TIMEOUT, wrc,
			                     "TLS handshake with %s timed out",
			                     c->host);
		if (wrc < 0)
			return proto_err_set(err, PERR_TLS, wrc,
			                     "TLS handshake with %s failed: %s",
			                     c->host, strerror(-wrc));
	}
	log_debug("TLS with %s: %s, %s", c->host, SSL_get_version(c->ssl),
	          SSL_get_cipher(c->ssl));
	return 0;
nomem:
	ERR_clear_error();
	return proto_err_set(err, PERR_LOCAL, -ENOMEM,
	                     "cannot set up TLS: out of memory");
}

int net_probe_tls(const char *host, const char *port, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	struct proto_err e = {0};
	struct net_conn *c = NULL;
	int ret = 0, wrc = 0;

	if (net_connect(&c, host, port, timeout_ms, &e) < 0)
		return e.code == -ENOMEM ? -ENOMEM : 0;
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx != NULL) {
		SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
		c->ssl = SSL_new(c->ctx);
	}
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
		ret = -ENOMEM;
		goto out;
	}
	SSL_set_tlsext_host_name(c->ssl, host);
	while (wrc == 0) {
		int rc = SSL_connect(c->ssl);

		if (rc == 1) {
			ret = 1;
			break;
		}
		switch (SSL_get_error(c->ssl, rc)) {
		case SSL_ERROR_WANT_READ:
			wrc = wait_fd(c->fd, POLLIN, deadline);
			break;
		case SSL_ERROR_WANT_WRITE:
			wrc = wait_fd(c->fd, POLLOUT, deadline);
			break;
		default: wrc = -EPROTO; break;
		}
	}
out:
	ERR_clear_error();
	net_close(&c);
	return ret;
}

void net_set_timeout(struct net_conn *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms;
}

int net_get_timeout(const struct net_conn *c)
{
	return c->timeout_ms;
}

void net_set_max_buffer(struct net_conn *c, size_t max)
{
	c->max_buffer = max;
}

static int closed_err(struct net_conn *c, struct proto_err *err)
{
	if (atomic_load(&c->shut))
		return proto_err_set(err, PERR_CONNECT, -ECONNABORTED,
		                     "connection to %s was shut down", c->host);
	return proto_err_set(err, PERR_CONNECT, -ECONNRESET,
	                     "%s closed the connection", c->host);
}

/* Make room for at least NET_READ_CHUNK bytes after rend. */
/* After an SSL_read() or SSL_write() that returned n <= 0: 0 when it is
 * to be tried again once the socket is ready for *ev_r (TLS may need to
 * read in order to write, and the other way round), or the error: the
 * server closed the connection, or TLS failed (what: "read from"). */
static int ssl_again(struct net_conn *c, int n, short *ev_r, const char *what,
                     struct proto_err *err)
{
	char why[256];

	switch (SSL_get_error(c->ssl, n)) {
	case SSL_ERROR_WANT_READ: *ev_r = POLLIN; return 0;
	case SSL_ERROR_WANT_WRITE: *ev_r = POLLOUT; return 0;
	case SSL_ERROR_ZERO_RETURN: return closed_err(c, err);
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0)
			return closed_err(c, err);
		/* fall through */
	default:
		return proto_err_set(err, PERR_TLS, -EIO,
		                     "TLS %s %s failed: %s", what, c->host,
		                     ssl_reason(why, sizeof(why)));
	}
}

static int make_room(struct net_conn *c, struct proto_err *err)
{
	size_t used = c->rend - c->rstart;

	if (c->rstart > 0 && c->rcap - c->rend < NET_READ_CHUNK) {
		memmove(c->rbuf, c->rbuf + c->rstart, used);
		c->rstart = 0;
		c->rend = used;
	}
	if (c->rcap - c->rend < NET_READ_CHUNK) {
		size_t ncap = c->rcap ? c->rcap * 2 : 2 * NET_READ_CHUNK;
		char *n;

		if (used >= c->max_buffer)
			return proto_err_set(err, PERR_PROTOCOL, -ENOBUFS,
			                     "%s sent more than %zu bytes "
			                     "without a complete response",
			                     c->host, c->max_buffer);
		n = realloc(c->rbuf, ncap);
		if (n == NULL)
			return proto_err_set(err, PERR_LOCAL, -ENOMEM,
			                     "out of memory");
		c->rbuf = n;
		c->rcap = ncap;
	}
	return 0;
}

/* With compression: inflate what the layer holds into the input buffer
 * (at most NET_READ_CHUNK bytes: the expansion of one fill is bounded
 * whatever the server sent).  The bytes made (> 0), 0 when the layer
 * needs more input, or the error of a corrupt stream. */
static int inflate_some(struct net_conn *c, struct proto_err *err)
{
	size_t room = c->rcap - c->rend, made = 0;
	int rc;

	if (room > NET_READ_CHUNK)
		room = NET_READ_CHUNK;
	rc = compress_inflate(c->z, c->rbuf + c->rend, room, &made);
	if (rc == -ENOMEM)
		return proto_err_set(err, PERR_LOCAL, rc, "out of memory");
	if (rc < 0)
		return proto_err_set(err, PERR_PROTOCOL, rc,
		                     "%s sent bad compressed data: %s", c->host,
		                     compress_error(c->z));
	c->rend += made;
	return (int)made;
}

/* Where the next raw bytes from the socket go: the input buffer, or the
 * compression layer's queue.  0, or the error (the queue is full: it
 * cannot be, since the layer is emptied before each read; or OOM). */
static int raw_space(struct net_conn *c, char **dst_r, size_t *room_r,
                     struct proto_err *err)
{
	if (c->z == NULL) {
		*room_r = c->rcap - c->rend;
		*dst_r = c->rbuf + c->rend;
		return 0;
	}
	*dst_r = compress_in_space(c->z, NET_READ_CHUNK, room_r);
	if (*dst_r == NULL)
		return proto_err_set(err, PERR_LOCAL, -ENOMEM, "%s",
		                     compress_error(c->z));
	if (*room_r > NET_READ_CHUNK)
		*room_r = NET_READ_CHUNK;
	return 0;
}

/* n raw bytes arrived at raw_space(): > 0 when the caller has them. */
static int raw_arrived(struct net_conn *c, size_t n)
{
	if (c->z != NULL) {
		compress_in_commit(c->z, n);
		return 0; /* inflate_some() next time round */
	}
	c->rend += n;
	return (int)n;
}

/* Read until data, EOF, error or the deadline.  With compression the
 * layer is asked first, before the socket is read or waited for: bytes
 * it already holds are input waiting (net_fill_wait(c, 0) finds them). */
static int fill_until(struct net_conn *c, int64_t deadline, bool soft,
                      struct proto_err *err)
{
	int rc = make_room(c, err);

	if (rc < 0)
		return rc;
	for (;;) {
		size_t room;
		char *dst;
		short ev = POLLIN;

		if (atomic_load(&c->shut))
			return closed_err(c, err);
		if (c->z != NULL) {
			rc = inflate_some(c, err);
			if (rc != 0)
				return rc;
		}
		rc = raw_space(c, &dst, &room, err);
		if (rc < 0)
			return rc;
		if (c->ssl != NULL) {
			int n = SSL_read(c->ssl, dst,
			                 room > INT32_MAX ? INT32_MAX
			                                  : (int)room);

			if (n > 0) {
				rc = raw_arrived(c, (size_t)n);
				if (rc > 0)
					return rc;
				continue;
			}
			rc = ssl_again(c, n, &ev, "read from", err);
			if (rc < 0)
				return rc;
		} else {
			ssize_t n = read(c->fd, dst, room);

			if (n > 0) {
				rc = raw_arrived(c, (size_t)n);
				if (rc > 0)
					return rc;
				continue;
			}
			if (n == 0)
				return closed_err(c, err);
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return proto_err_set(err, PERR_CONNECT, -errno,
				                     "read from %s failed: %s",
				                     c->host, strerror(errno));
		}
		rc = wait_fd(c->fd, ev, deadline);
		if (rc == -ETIMEDOUT) {
			if (soft)
				return 0;
			return proto_err_set(err, PERR_TIMEOUT, rc,
			                     "%s did not answer within %d s",
			                     c->host, c->timeout_ms / 1000);
		}
		if (rc < 0)
			return proto_err_set(err, PERR_CONNECT, rc,
			                     "waiting for %s failed: %s",
			                     c->host, strerror(-rc));
	}
}

int net_fill(struct net_conn *c, struct proto_err *err)
{
	return fill_until(c, now_ms() + c->timeout_ms, false, err);
}

int net_fill_wait(struct net_conn *c, int timeout_ms, struct proto_err *err)
{
	return fill_until(c, now_ms() + timeout_ms, true, err);
}

int net_fill_greeting(struct net_conn *c, const char *host, const char *port,
                      const char *proto, const char *scheme,
                      const char *tls_port, struct proto_err *err)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	int64_t first = now_ms() + TLS_HINT_AFTER_MS;
	int64_t left;
	int rc;

	rc = fill_until(c, first < deadline ? first : deadline, true, err);
	if (rc != 0)
		return rc;
	left = deadline - now_ms();
	if (left > 0 &&
	    net_probe_tls(host, port,
	                  left < TLS_HINT_PROBE_MS ? (int)left
	                                           : TLS_HINT_PROBE_MS) == 1)
		return proto_err_set(err, PERR_PROTOCOL, -EPROTO,
		                     "%s port %s expects TLS from the first "
		                     "byte, not plain %s: use %s:// (the usual "
		                     "%s port is %s)",
		                     host, port, proto, scheme, scheme,
		                     tls_port);
	return fill_until(c, deadline, false, err);
}

const char *net_rbuf(const struct net_conn *c, size_t *len_r)
{
	*len_r = c->rend - c->rstart;
	return c->rbuf ? c->rbuf + c->rstart : "";
}

void net_consume(struct net_conn *c, size_t n)
{
	if (n > c->rend - c->rstart)
		n = c->rend - c->rstart;
	c->rstart += n;
	if (c->rstart == c->rend)
		c->rstart = c->rend = 0;
}

/* Send all of buf as it is, within the deadline. */
static int write_raw(struct net_conn *c, const void *buf, size_t len,
                     int64_t deadline, struct proto_err *err)
{
	const char *p = buf;

	while (len > 0) {
		short ev = POLLOUT;
		int rc;

		if (atomic_load(&c->shut))
			return closed_err(c, err);
		if (c->ssl != NULL) {
			int n = SSL_write(c->ssl, p,
			                  len > INT32_MAX ? INT32_MAX
			                                  : (int)len);

			if (n > 0) {
				p += n;
				len -= (size_t)n;
				continue;
			}
			rc = ssl_again(c, n, &ev, "write to", err);
			if (rc < 0)
				return rc;
		} else {
			ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);

			if (n >= 0) {
				p += n;
				len -= (size_t)n;
				continue;
			}
			if (errno == EINTR)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				return closed_err(c, err);
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return proto_err_set(err, PERR_CONNECT, -errno,
				                     "write to %s failed: %s",
				                     c->host, strerror(errno));
		}
		rc = wait_fd(c->fd, ev, deadline);
		if (rc == -ETIMEDOUT)
			return proto_err_set(err, PERR_TIMEOUT, rc,
			                     "%s did not accept data within "
			                     "%d s",
			                     c->host, c->timeout_ms / 1000);
		if (rc < 0)
			return proto_err_set(err, PERR_CONNECT, rc,
			                     "waiting for %s failed: %s",
			                     c->host, strerror(-rc));
	}
	return 0;
}

struct deflate_sink {
	struct net_conn *c;
	int64_t deadline;
	struct proto_err *err;
};

static int deflate_sink(void *ctx, const void *buf, size_t len)
{
	struct deflate_sink *d = ctx;

	return write_raw(d->c, buf, len, d->deadline, d->err);
}

int net_write(struct net_conn *c, const void *buf, size_t len,
              struct proto_err *err)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	struct deflate_sink d = {c, deadline, err};
	int rc;

	if (c->z == NULL)
		return write_raw(c, buf, len, deadline, err);
	rc = compress_deflate(c->z, buf, len, deflate_sink, &d);
	if (rc < 0) /* the sink's own errors are set already */
		proto_err_set(err, PERR_LOCAL, rc, "cannot compress: %s",
		              compress_error(c->z));
	return rc;
}

int net_start_compress(struct net_conn *c, struct proto_err *err)
{
	size_t left = c->rend - c->rstart;
	int rc;

	if (c->z != NULL)
		return proto_err_set(err, PERR_PROTOCOL, -EALREADY,
		                     "compression is already on");
	rc = compress_new(&c->z);
	if (rc < 0)
		return proto_err_set(err, PERR_LOCAL, rc, "out of memory");
	/* What the server sent after its OK is already compressed. */
	rc = compress_feed(c->z, c->rbuf + c->rstart, left);
	if (rc < 0) {
		compress_free(&c->z);
		return proto_err_set(err, PERR_LOCAL, rc, "out of memory");
	}
	c->rstart = c->rend = 0;
	return 0;
}

bool net_is_compressed(const struct net_conn *c)
{
	return c->z != NULL;
}

bool net_compress_stats(const struct net_conn *c, struct compress_stats *st)
{
	if (c->z == NULL)
		return false;
	compress_stats(c->z, st);
	return true;
}

bool net_is_tls(const struct net_conn *c)
{
	return c->ssl != NULL;
}

const char *net_host(const struct net_conn *c)
{
	return c->host;
}

void net_shutdown(struct net_conn *c)
{
	atomic_store(&c->shut, true);
	shutdown(c->fd, SHUT_RDWR);
}

void net_close(struct net_conn **cp)
{
	struct net_conn *c = *cp;

	if (c == NULL)
		return;
	if (c->ssl != NULL) {
		/* A quiet close: the peer may be gone, and a close_notify
		 * that cannot be sent must not block or raise SIGPIPE. */
		SSL_set_quiet_shutdown(c->ssl, 1);
		SSL_free(c->ssl);
	}
	SSL_CTX_free(c->ctx);
	compress_free(&c->z);
	if (c->fd >= 0)
		close(c->fd);
	free(c->rbuf);
	free(c->host);
	free(c);
	*cp = NULL;
}
