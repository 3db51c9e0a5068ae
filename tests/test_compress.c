/* The COMPRESS=DEFLATE layer (proto/compress.h) alone, and inside
 * proto/net.c over a real TCP connection on 127.0.0.1: round trips, a
 * stream split at every byte, the sync flush that makes each write whole,
 * corrupt and ended streams, input that waits in the layer, and an
 * expansion bomb (about 1 MB that inflates to 1 GB) stopped at the input
 * buffer's limit. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <zlib.h>

#include "proto/compress.h"
#include "proto/net.h"

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

static int sink(void *ctx, const void *data, size_t len)
{
	assert_true(len > 0 && len <= 64 * 1024);
	buf_add(ctx, data, len);
	return 0;
}

/* Text that compresses like mail: lines of words, some repeated. */
static void make_text(struct buf *b, size_t len, unsigned seed)
{
	static const char *const words[] = {
	        "Received:", "from",     "by",   "the",
	        "mail",      "Subject:", "Re:",  "hello",
	        "meeting",   "tomorrow", "\r\n", "=?UTF-8?B?w6nDqQ==?=",
	        "12:34:56",  "+0200"};
	unsigned x = seed;

	while (b->len < len) {
		const char *w;

		x = x * 1103515245u + 12345u;
		w = words[(x >> 16) % (sizeof(words) / sizeof(words[0]))];
		buf_add(b, w, strlen(w));
		buf_add(b, " ", 1);
	}
	b->len = len;
}

static void make_random(struct buf *b, size_t len, unsigned seed)
{
	unsigned x = seed;

	for (size_t i = 0; i < len; i++) {
		unsigned char c;

		x = x * 1103515245u + 12345u;
		c = (unsigned char)(x >> 16);
		buf_add(b, &c, 1);
	}
}

/* Everything z can inflate now, cap bytes per call, appended to out. */
static int drain(struct compress *z, struct buf *out, size_t cap)
{
	unsigned char *tmp = malloc(cap);
	int rc;

	assert_non_null(tmp);
	for (;;) {
		size_t n = 0;

		rc = compress_inflate(z, tmp, cap, &n);
		assert_true(n <= cap);
		if (n > 0)
			buf_add(out, tmp, n);
		if (rc < 0 || n == 0)
			break;
	}
	free(tmp);
	return rc;
}

static void test_round_trip(void **state)
{
	static const size_t caps[] = {1, 7, 4096, 64 * 1024};
	struct buf inputs[4] = {{0}};

	(void)state;
	buf_add(&inputs[0], "A1 NOOP\r\n", 9);
	make_text(&inputs[1], 1024 * 1024, 1);
	make_random(&inputs[2], 300 * 1000, 2);
	make_text(&inputs[3], 100, 3);
	for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
		struct compress *w, *r;
		struct buf wire = {0}, out = {0}, all = {0};
		struct compress_stats st;

		assert_int_equal(compress_new(&w), 0);
		assert_int_equal(compress_new(&r), 0);
		for (size_t i = 0; i < 4; i++) {
			size_t mark = out.len;

			wire.len = 0;
			assert_int_equal(compress_deflate(w, inputs[i].p,
			                                  inputs[i].len, sink,
			                                  &wire),
			                 0);
			buf_add(&all, inputs[i].p, inputs[i].len);
			/* Each write is flushed: all of it comes out of
			 * its own bytes, nothing waits for the next. */
			assert_int_equal(compress_feed(r, wire.p, wire.len), 0);
			assert_int_equal(drain(r, &out, caps[c]), 0);
			assert_int_equal(out.len - mark, inputs[i].len);
			assert_false(compress_pending(r));
		}
		assert_int_equal(out.len, all.len);
		assert_memory_equal(out.p, all.p, all.len);
		compress_stats(w, &st);
		assert_int_equal(st.out_plain, all.len);
		compress_stats(r, &st);
		assert_int_equal(st.in_plain, all.len);
		/* Text shrinks: the layer is worth having. */
		assert_true(st.in_raw < st.in_plain * 6 / 10);
		compress_free(&w);
		compress_free(&r);
		assert_null(w);
		free(wire.p);
		free(out.p);
		free(all.p);
	}
	for (size_t i = 0; i < 4; i++)
		free(inputs[i].p);
}

/* A stream of three writes (IMAP-like lines), split in two at every byte,
 * and fed one byte at a time: always the same output. */
static void test_split_every_byte(void **state)
{
	static const char *const parts[] = {
	        "* 1 FETCH (UID 7 FLAGS (\\Seen))\r\n",
	        "* 2 FETCH (UID 8 BODY[] {12}\r\nHello world!)\r\n",
	        "A5 OK Fetch completed.\r\n"};
	struct compress *w;
	struct buf wire = {0}, plain = {0};

	(void)state;
	assert_int_equal(compress_new(&w), 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(compress_deflate(w, parts[i], strlen(parts[i]),
		                                  sink, &wire),
		                 0);
		buf_add(&plain, parts[i], strlen(parts[i]));
	}
	compress_free(&w);
	for (size_t cut = 0; cut <= wire.len; cut++) {
		struct compress *r;
		struct buf out = {0};

		assert_int_equal(compress_new(&r), 0);
		assert_int_equal(compress_feed(r, wire.p, cut), 0);
		assert_int_equal(drain(r, &out, 5), 0);
		assert_int_equal(compress_feed(r, wire.p + cut, wire.len - cut),
		                 0);
		assert_int_equal(drain(r, &out, 5), 0);
		assert_int_equal(out.len, plain.len);
		assert_memory_equal(out.p, plain.p, plain.len);
		compress_free(&r);
		free(out.p);
	}
	{
		struct compress *r;
		struct buf out = {0};

		assert_int_equal(compress_new(&r), 0);
		for (size_t i = 0; i < wire.len; i++) {
			size_t room;
			char *dst = compress_in_space(r, 1, &room);

			assert_non_null(dst);
			assert_true(room >= 1);
			*dst = (char)wire.p[i];
			compress_in_commit(r, 1);
			assert_true(compress_pending(r));
			assert_int_equal(drain(r, &out, 3), 0);
		}
		assert_int_equal(out.len, plain.len);
		assert_memory_equal(out.p, plain.p, plain.len);
		compress_free(&r);
		free(out.p);
	}
	free(wire.p);
	free(plain.p);
}

/* Bad input: an error, sticky, no output from a bad stream, no crash. */
static void test_corrupt(void **state)
{
	/* BFINAL=1, BTYPE=11: a block type that does not exist. */
	static const unsigned char bad_type[] = {0x07, 0x00, 0x00};
	/* A stored block whose length and its complement disagree. */
	static const unsigned char bad_stored[] = {0x00, 0x05, 0x00, 0x00,
	                                           0x00, 'h',  'e',  'l'};
	const unsigned char *cases[] = {bad_type, bad_stored};
	size_t lens[] = {sizeof(bad_type), sizeof(bad_stored)};
	struct buf noise = {0};

	(void)state;
	for (size_t i = 0; i < 2; i++) {
		struct compress *r;
		struct buf out = {0};
		char tmp[16];
		size_t n = 99;

		assert_int_equal(compress_new(&r), 0);
		assert_int_equal(compress_feed(r, cases[i], lens[i]), 0);
		assert_int_equal(drain(r, &out, 64), -EPROTO);
		assert_int_equal(out.len, 0);
		assert_non_null(strstr(compress_error(r), "corrupt"));
		/* Sticky; pending, so that a poll reports it at once. */
		assert_true(compress_pending(r));
		assert_int_equal(compress_inflate(r, tmp, sizeof(tmp), &n),
		                 -EPROTO);
		assert_int_equal(n, 0);
		compress_free(&r);
		free(out.p);
	}
	/* A zlib stream (with its header) is not raw deflate. */
	{
		unsigned char zs[64];
		uLongf zlen = sizeof(zs);
		struct compress *r;
		struct buf out = {0};

		assert_int_equal(
		        compress2(zs, &zlen, (const Bytef *)"hello", 5, 6),
		        Z_OK);
		assert_int_equal(compress_new(&r), 0);
		assert_int_equal(compress_feed(r, zs, zlen), 0);
		assert_int_equal(drain(r, &out, 64), -EPROTO);
		compress_free(&r);
		free(out.p);
	}
	/* Noise: whatever it inflates to, it ends in an error or in a wait
	 * for more, never a crash, and every call is bounded. */
	make_random(&noise, 256 * 1024, 7);
	for (unsigned s = 0; s < 64; s++) {
		struct compress *r;
		struct buf out = {0};
		size_t off = s * 1021;

		assert_int_equal(compress_new(&r), 0);
		assert_int_equal(compress_feed(r, noise.p + off, 4096), 0);
		(void)drain(r, &out, 1000);
		compress_free(&r);
		free(out.p);
	}
	free(noise.p);
}

/* RFC 4978 streams never end: what came before the end is delivered,
 * then the layer fails. */
static void test_stream_end(void **state)
{
	z_stream s = {0};
	unsigned char wire[128];
	struct compress *r;
	struct buf out = {0};

	(void)state;
	assert_int_equal(
	        deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY),
	        Z_OK);
	s.next_in = (Bytef *)"* BYE\r\n";
	s.avail_in = 7;
	s.next_out = wire;
	s.avail_out = sizeof(wire);
	assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
	assert_int_equal(compress_new(&r), 0);
	assert_int_equal(compress_feed(r, wire, sizeof(wire) - s.avail_out), 0);
	deflateEnd(&s);
	assert_int_equal(drain(r, &out, 64), -EPROTO);
	assert_int_equal(out.len, 7);
	assert_memory_equal(out.p, "* BYE\r\n", 7);
	assert_non_null(strstr(compress_error(r), "ended"));
	compress_free(&r);
	free(out.p);
}

/* About 1 MB of deflate that inflates to 1 GB of zeros (run-length
 * matches of 258 bytes, the most deflate can say in one code), made
 * once. */
static const struct buf *bomb(void)
{
	static unsigned char zeros[1024 * 1024];
	static struct buf wire;
	unsigned char out[64 * 1024];
	const uint64_t plain = 1ULL << 30;
	z_stream s = {0};

	if (wire.len > 0)
		return &wire;
	assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, -15, 9, Z_RLE), Z_OK);
	for (uint64_t done = 0; done < plain; done += sizeof(zeros)) {
		s.next_in = zeros;
		s.avail_in = sizeof(zeros);
		do {
			s.next_out = out;
			s.avail_out = sizeof(out);
			deflate(&s, done + sizeof(zeros) >= plain ? Z_SYNC_FLUSH
			                                          : Z_NO_FLUSH);
			buf_add(&wire, out, sizeof(out) - s.avail_out);
		} while (s.avail_out == 0);
	}
	deflateEnd(&s);
	return &wire;
}

/* The bomb through the layer: each call gives at most its buffer, the
 * queue holds the compressed bytes only. */
static void test_bomb_layer(void **state)
{
	const struct buf *wire = bomb();
	struct compress *r;
	unsigned char out[64 * 1024];
	uint64_t total = 0;

	(void)state;
	assert_true(wire->len < 1100 * 1024);
	assert_int_equal(compress_new(&r), 0);
	assert_int_equal(compress_feed(r, wire->p, wire->len), 0);
	for (int i = 0; i < 64; i++) {
		size_t n = 0;

		assert_int_equal(compress_inflate(r, out, sizeof(out), &n), 0);
		assert_int_equal(n, sizeof(out));
		total += n;
		assert_true(compress_pending(r));
	}
	assert_int_equal(total, 64 * sizeof(out));
	/* More queued than the layer takes is refused, not grown. */
	assert_int_equal(compress_feed(r, wire->p, COMPRESS_MAX_QUEUED),
	                 -ENOBUFS);
	compress_free(&r);
}

/* --- through proto/net.c, on a TCP connection ---------------------------- */

struct server {
	int lfd, fd;
	uint16_t port;
	const void *send; /* sent by the thread once accepted */
	size_t send_len;
	pthread_t th;
};

static void *server_thread(void *arg)
{
	struct server *s = arg;
	const char *p = s->send;
	size_t left = s->send_len;

	s->fd = accept(s->lfd, NULL, NULL);
	if (s->fd < 0)
		return NULL;
	while (left > 0) {
		ssize_t n = send(s->fd, p, left, MSG_NOSIGNAL);

		if (n <= 0)
			break; /* the client gave up: expected for the bomb */
		p += n;
		left -= (size_t)n;
	}
	return NULL;
}

static void server_start(struct server *s, const void *data, size_t len)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t alen = sizeof(a);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->lfd, 1), 0);
	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
	s->port = ntohs(a.sin_port);
	s->fd = -1;
	s->send = data;
	s->send_len = len;
	assert_int_equal(pthread_create(&s->th, NULL, server_thread, s), 0);
}

static void server_stop(struct server *s)
{
	pthread_join(s->th, NULL);
	if (s->fd >= 0)
		close(s->fd);
	close(s->lfd);
}

static struct net_conn *client_connect(struct server *s)
{
	struct net_conn *c = NULL;
	struct proto_err err = {0};
	char port[8];

	snprintf(port, sizeof(port), "%u", s->port);
	assert_int_equal(net_connect(&c, "127.0.0.1", port, 5000, &err), 0);
	return c;
}

/* "A1 OK" in plain text, then compressed lines in the same write: the
 * bytes after the OK wait in the layer, and a poll that finds the socket
 * empty must still find them (net_fill_wait(c, 0)). */
static void test_net_pending_after_ok(void **state)
{
	static const char line1[] = "* 3 EXISTS\r\n", line2[] = "* BYE\r\n";
	struct buf data = {0}, wire = {0};
	struct compress *w;
	struct server s;
	struct net_conn *c;
	struct proto_err err = {0};
	const char *rb;
	size_t len;
	int rc;

	(void)state;
	assert_int_equal(compress_new(&w), 0);
	assert_int_equal(compress_deflate(w, line1, strlen(line1), sink, &wire),
	                 0);
	assert_int_equal(compress_deflate(w, line2, strlen(line2), sink, &wire),
	                 0);
	compress_free(&w);
	buf_add(&data, "A1 OK go\r\n", 10);
	buf_add(&data, wire.p, wire.len);
	server_start(&s, data.p, data.len);
	c = client_connect(&s);
	/* Everything has arrived in one read. */
	while (net_rbuf(c, &len), len < data.len)
		assert_true(net_fill(c, &err) > 0);
	assert_int_equal(len, data.len);
	net_consume(c, 10); /* the parser took the OK line, no more */
	assert_int_equal(net_start_compress(c, &err), 0);
	assert_true(net_is_compressed(c));
	net_rbuf(c, &len);
	assert_int_equal(len, 0);
	/* Nothing on the socket; the layer holds both lines. */
	rc = net_fill_wait(c, 0, &err);
	assert_true(rc > 0);
	rb = net_rbuf(c, &len);
	assert_int_equal(len, strlen(line1) + strlen(line2));
	assert_memory_equal(rb, "* 3 EXISTS\r\n* BYE\r\n", len);
	net_consume(c, len);
	/* Now nothing waits anywhere. */
	assert_int_equal(net_fill_wait(c, 0, &err), 0);
	assert_int_equal(err.cls, PERR_NONE);
	net_close(&c);
	server_stop(&s);
	free(data.p);
	free(wire.p);
}

/* Corrupt compressed data from the server: a protocol error of the
 * connection, quickly. */
static void test_net_corrupt(void **state)
{
	static const unsigned char bad[] = {0x07, 0xff, 0xff, 0xff};
	struct server s;
	struct net_conn *c;
	struct proto_err err = {0};

	(void)state;
	server_start(&s, bad, sizeof(bad));
	c = client_connect(&s);
	assert_int_equal(net_start_compress(c, &err), 0);
	assert_int_equal(net_fill(c, &err), -EPROTO);
	assert_int_equal(err.cls, PERR_PROTOCOL);
	assert_non_null(strstr(err.text, "bad compressed data"));
	net_close(&c);
	server_stop(&s);
}

/* The bomb from a server, read by a caller that never consumes (a line
 * that never ends): stopped with -ENOBUFS at the buffer's limit, having
 * inflated no more than the limit plus one read. */
static void test_net_bomb(void **state)
{
	const struct buf *wire = bomb();
	struct compress_stats st;
	struct server s;
	struct net_conn *c;
	struct proto_err err = {0};
	size_t len;
	int rc;

	(void)state;
	server_start(&s, wire->p, wire->len);
	c = client_connect(&s);
	net_set_max_buffer(c, 1024 * 1024);
	assert_int_equal(net_start_compress(c, &err), 0);
	while ((rc = net_fill(c, &err)) > 0)
		assert_true(rc <= 64 * 1024);
	assert_int_equal(rc, -ENOBUFS);
	net_rbuf(c, &len);
	assert_true(len >= 1024 * 1024 && len <= 1024 * 1024 + 64 * 1024);
	assert_true(net_compress_stats(c, &st));
	assert_int_equal(st.in_plain, len);
	net_close(&c);
	if (s.fd >= 0)
		shutdown(s.fd,
		         SHUT_RDWR); /* the rest of the bomb goes nowhere */
	server_stop(&s);
}

/* Writes through the layer: what the peer inflates is what was written,
 * each write whole on its own. */
static void test_net_write(void **state)
{
	struct server s = {0};
	struct net_conn *c;
	struct proto_err err = {0};
	struct compress *r;
	struct buf big = {0}, out = {0};
	unsigned char tmp[65536];
	size_t want;

	(void)state;
	server_start(&s, NULL, 0);
	c = client_connect(&s);
	pthread_join(s.th, NULL);
	assert_true(s.fd >= 0);
	assert_int_equal(net_start_compress(c, &err), 0);
	assert_int_equal(net_write(c, "A1 NOOP\r\n", 9, &err), 0);
	make_text(&big, 200 * 1000, 9);
	assert_int_equal(net_write(c, big.p, big.len, &err), 0);
	want = 9 + big.len;
	assert_int_equal(compress_new(&r), 0);
	while (out.len < want) {
		ssize_t n = recv(s.fd, tmp, sizeof(tmp), 0);

		assert_true(n > 0);
		assert_int_equal(compress_feed(r, tmp, (size_t)n), 0);
		assert_int_equal(drain(r, &out, sizeof(tmp)), 0);
	}
	assert_int_equal(out.len, want);
	assert_memory_equal(out.p, "A1 NOOP\r\n", 9);
	assert_memory_equal(out.p + 9, big.p, big.len);
	compress_free(&r);
	net_close(&c);
	close(s.fd);
	close(s.lfd);
	free(big.p);
	free(out.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_round_trip),
	        cmocka_unit_test(test_split_every_byte),
	        cmocka_unit_test(test_corrupt),
	        cmocka_unit_test(test_stream_end),
	        cmocka_unit_test(test_bomb_layer),
	        cmocka_unit_test(test_net_pending_after_ok),
	        cmocka_unit_test(test_net_corrupt),
	        cmocka_unit_test(test_net_bomb),
	        cmocka_unit_test(test_net_write),
	};

	int rc = cmocka_run_group_tests(tests, NULL, NULL);

	free(((struct buf *)bomb())->p);
	return rc;
}
