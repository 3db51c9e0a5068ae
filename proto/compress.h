/* The COMPRESS=DEFLATE layer (RFC 4978): one connection's two streams of
 * raw deflate (zlib, no header, 32 KiB window), outgoing and incoming.
 *
 * Pure: it never touches a socket.  proto/net.c puts it between the
 * protocol and the TLS connection once the server has said OK to
 * "COMPRESS DEFLATE"; the unit tests and the fuzz target drive it alone.
 *
 * Outgoing: compress_deflate() compresses what the client writes and
 * ends every call with Z_SYNC_FLUSH, so that each batch of commands
 * reaches the server whole and at once (the server must be able to act on
 * a command without waiting for the next one).
 *
 * Incoming: the server's bytes are untrusted.  They are queued with
 * compress_in_space()/compress_in_commit() (or compress_feed()) and
 * inflated on demand by compress_inflate() into the caller's buffer, at
 * most as many bytes as it has room for: the expansion of one call is
 * bounded by its output buffer, whatever the input (deflate can expand
 * about 1000 times, so 1 MB of input may inflate to 1 GB; the caller sees
 * it one bounded piece at a time, and its own limits apply to what the
 * bytes mean).  A corrupt stream, a stream that ends (RFC 4978 streams
 * never end), or a zlib failure is an error, sticky: every later call
 * fails with it.  Nothing here aborts on input.
 *
 * "Pending" input: bytes queued and not yet inflated, and inflated bytes
 * zlib still holds because the last output buffer was full.  A caller that
 * asks "is there anything to read?" must try compress_inflate() before
 * waiting on the socket; compress_pending() says whether that try can
 * yield anything without more input.
 *
 * One struct compress per connection, used by one thread at a time. */
#ifndef MAILFS_COMPRESS_H
#define MAILFS_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct compress;

/* Most compressed input queued and not yet inflated (compress_feed() and
 * compress_in_space() refuse more; the caller inflates first). */
#define COMPRESS_MAX_QUEUED (1024 * 1024 + 64 * 1024)

/* A new pair of streams.  0 or -ENOMEM. */
int compress_new(struct compress **z_r);
void compress_free(struct compress **z);

/* Room for at least min bytes of compressed input at the returned pointer
 * (*room_r bytes in all); NULL when that much cannot be queued (-ENOBUFS:
 * inflate first) or out of memory.  compress_in_commit(z, n) then says
 * that n of those bytes were filled. */
char *compress_in_space(struct compress *z, size_t min, size_t *room_r);
void compress_in_commit(struct compress *z, size_t n);

/* Queue len bytes of compressed input (a copy).  0, -ENOBUFS past
 * COMPRESS_MAX_QUEUED, or -ENOMEM. */
int compress_feed(struct compress *z, const void *buf, size_t len);

/* Inflate queued input into out, at most cap bytes; *len_r receives how
 * many were written, 0 when the input queued so far holds no more complete
 * output.  0, or -EPROTO for a corrupt or ended stream, -ENOMEM (see
 * compress_error()). */
int compress_inflate(struct compress *z, void *out, size_t cap, size_t *len_r);

/* Can compress_inflate() give bytes without more input?  (Input is queued
 * and not inflated yet, or the last call filled its buffer.) */
bool compress_pending(const struct compress *z);

/* Compress len bytes and flush (Z_SYNC_FLUSH), handing the output to
 * sink(ctx, bytes, n) in pieces of at most 64 KiB; the first error of
 * sink (negative) is returned as is.  0, -ENOMEM or sink's error. */
int compress_deflate(struct compress *z, const void *buf, size_t len,
                     int (*sink)(void *ctx, const void *buf, size_t len),
                     void *ctx);

/* Why the last call failed (for a log line or an error message). */
const char *compress_error(const struct compress *z);

/* Bytes so far: compressed and plain, in (inflated) and out (deflated). */
struct compress_stats {
	uint64_t in_raw, in_plain, out_raw, out_plain;
};
void compress_stats(const struct compress *z, struct compress_stats *st);

#endif
