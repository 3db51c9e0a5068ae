/* Network transport: TCP with timeouts, TLS with OpenSSL.
 *
 * One struct net_conn is one connection to a server.  It is used by one
 * thread at a time; the only call that is safe from another thread is
 * net_shutdown(), which wakes a thread blocked in net_fill()/net_write().
 *
 * Every wait is bounded by the connection's timeout: name resolution, the
 * TCP connect, the TLS handshake, each read and each write.  A wait that
 * runs out fails with -ETIMEDOUT and class PERR_TIMEOUT.
 *
 * Input is buffered: net_fill() appends what the server sent to an internal
 * buffer, net_rbuf() shows it and net_consume() drops what the caller has
 * parsed.  Protocol parsers consume exactly what they understood, so bytes
 * that arrive early (after a STARTTLS OK, say) stay visible to the caller.
 *
 * Compression (RFC 4978, proto/compress.h): after net_start_compress()
 * every byte written is deflated (and flushed at the end of each
 * net_write()), and every byte read is inflated before it reaches the
 * input buffer; the calls below work as before on the plain bytes.  Input
 * the layer holds (compressed bytes not inflated yet, or inflated ones
 * that did not fit) counts as input waiting: net_fill() and
 * net_fill_wait() take it before they read or wait on the socket, so
 * "net_rbuf() is empty and net_fill_wait(c, 0) returns 0" means nothing
 * is waiting anywhere.  Nothing else may poll the socket. */
#ifndef MAILFS_NET_H
#define MAILFS_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/compress.h"
#include "proto/error.h"

struct net_conn;

struct net_tls_opts {
	const char *cafile; /* borrowed; extra PEM CAs, or NULL */
};

/* Resolve host and connect to the first address that answers, within
 * timeout_ms in all.  Errors: PERR_RESOLVE, PERR_CONNECT, PERR_TIMEOUT. */
int net_connect(struct net_conn **conn_r, const char *host, const char *port,
                int timeout_ms, struct proto_err *err);

/* Run the TLS handshake on a connected socket and verify the server's
 * certificate against the system store plus opts->cafile, and its name
 * against the host given to net_connect().  Fails with PERR_PROTOCOL if
 * the server already sent bytes that nobody consumed (they would have been
 * sent in plaintext and could be an injection), PERR_TLS_VERIFY with the
 * reason (expired, wrong host, unknown issuer) or PERR_TLS. */
int net_start_tls(struct net_conn *c, const struct net_tls_opts *opts,
                  struct proto_err *err);

/* Does host:port speak TLS from the first byte?  A connection of its own
 * sends a TLS ClientHello and waits at most timeout_ms for the handshake
 * to complete (the certificate is not checked: nothing is sent over it;
 * the connection is closed at once).  For a hint when a plaintext
 * greeting does not come: a client pointed at an implicit-TLS port waits
 * for a greeting the server never sends.  Returns 1 (TLS), 0 (no answer,
 * not TLS, cannot connect) or -ENOMEM. */
int net_probe_tls(const char *host, const char *port, int timeout_ms);

/* The IMAP and POP3 clients probe (net_probe_tls()) when a plaintext
 * connection has had no greeting for TLS_HINT_AFTER_MS, and give the
 * probe TLS_HINT_PROBE_MS (less if less of the timeout is left). */
#define TLS_HINT_AFTER_MS 1000
#define TLS_HINT_PROBE_MS 2000

/* Wait for the first bytes of a plaintext greeting from host:port, all
 * within the connection's one timeout: after TLS_HINT_AFTER_MS without
 * any, ask net_probe_tls() whether the port wants TLS from the first
 * byte, then wait for the rest of the timeout.  Returns the number of
 * bytes that arrived (> 0), or a negative errno as net_fill() (-ETIMEDOUT
 * when nothing came at all), or -EPROTO (PERR_PROTOCOL) when the port
 * speaks TLS: err then says "... expects TLS from the first byte, not
 * plain PROTO: use SCHEME:// (the usual SCHEME port is TLS_PORT)". */
int net_fill_greeting(struct net_conn *c, const char *host, const char *port,
                      const char *proto, const char *scheme,
                      const char *tls_port, struct proto_err *err);

/* Change the timeout used by every following wait. */
void net_set_timeout(struct net_conn *c, int timeout_ms);
int net_get_timeout(const struct net_conn *c);

/* Wait (up to the timeout) for more bytes and append them to the input
 * buffer.  Returns the number of bytes added (> 0; at most 64 KiB, also
 * when they were inflated from fewer) or a negative errno:
 * -ECONNRESET (class PERR_CONNECT) when the server closed the connection,
 * -ETIMEDOUT, -EIO for TLS failures, -ENOBUFS when the buffer would grow
 * past max_buffer (see net_set_max_buffer), -EPROTO (PERR_PROTOCOL) for
 * compressed data that does not inflate. */
int net_fill(struct net_conn *c, struct proto_err *err);

/* Like net_fill() but waits at most timeout_ms (0: do not wait) and returns
 * 0 instead of -ETIMEDOUT when nothing arrived.  For IDLE and polling. */
int net_fill_wait(struct net_conn *c, int timeout_ms, struct proto_err *err);

/* The unconsumed input: *len_r bytes at the returned pointer (borrowed,
 * valid until the next net_fill/net_consume). */
const char *net_rbuf(const struct net_conn *c, size_t *len_r);
void net_consume(struct net_conn *c, size_t n);

/* Largest amount of unconsumed input the buffer may hold (default 1 MiB:
 * parsers consume as they go, so only one line needs to fit). */
void net_set_max_buffer(struct net_conn *c, size_t max);

/* Send all of buf, waiting up to the timeout for room.  With
 * compression, buf is deflated and flushed (Z_SYNC_FLUSH): what one call
 * wrote reaches the server whole.  A failure leaves the stream broken:
 * the caller drops the connection. */
int net_write(struct net_conn *c, const void *buf, size_t len,
              struct proto_err *err);

/* Compress both directions from the next byte on (COMPRESS=DEFLATE): call
 * it right after parsing the server's OK to "COMPRESS DEFLATE" (RFC 4978:
 * the server compresses from the byte after that line).  Unconsumed
 * input, which the server sent after the OK, is compressed data and moves
 * into the layer.  0, -EALREADY, or -ENOMEM. */
int net_start_compress(struct net_conn *c, struct proto_err *err);
bool net_is_compressed(const struct net_conn *c);

/* The layer's byte counts (*st); false (and nothing) without it. */
bool net_compress_stats(const struct net_conn *c, struct compress_stats *st);

bool net_is_tls(const struct net_conn *c);
const char *net_host(const struct net_conn *c);

/* Wake any thread blocked on this connection; its call fails.  Safe to
 * call from any thread, any number of times, before net_close(). */
void net_shutdown(struct net_conn *c);

void net_close(struct net_conn **c);

#endif
