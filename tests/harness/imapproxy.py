#!/usr/bin/env python3
"""A TLS proxy in front of the harness Dovecot that can misbehave on demand.

    import imapproxy
    with imapproxy.TLSProxy(dc, rewrite=imapproxy.constant_modseq) as proxy:
        url = proxy.url('alice')           # imaps://alice@localhost:PORT
        ...                                # mailfs -o cafile=<dc.ca> url MNT
        proxy.rewrites                     # how many server lines were changed
        proxy.drop()                       # close every connection (a network drop)

The proxy listens on 127.0.0.1 (free port) with Dovecot's own server
certificate (SAN localhost, signed by the harness CA), so a client that
trusts dc.ca and connects to host "localhost" verifies it as it would
Dovecot.  Each accepted connection gets its own TLS connection to Dovecot's
IMAPS port, and one thread that moves bytes both ways with select() and
bounded timeouts.  Server-to-client data goes through a LineRewriter when
REWRITE is given: a function (bytes -> bytes) applied to the protocol text
between CRLFs and literals, never to literal data, so literal byte counts
stay right.  Client-to-server data is forwarded unchanged, or through a
LineRewriter of REWRITE_CLIENT when that is given (a server whose names
differ from what it stores: the client's names are mapped back).

stop() (or the context manager) closes the listener and every connection
and joins the threads (bounded).

Compression: a line rewrite cannot look into a COMPRESS=DEFLATE stream
(RFC 4978: after "COMPRESS DEFLATE" both directions are raw deflate), so
when REWRITE or REWRITE_CLIENT is given the proxy hides COMPRESS=DEFLATE
from the server's capability lists (not counted in .rewrites), and the
client stays uncompressed; TLSProxy(..., compress=True) passes it on, for
a rewrite meant to act before the login only.  Without a rewrite the bytes
pass unchanged, compressed or not.

hide_caps('QRESYNC', ...) makes a rewrite of a server that lacks those
capabilities (for the CONDSTORE-only and plain resync paths); a name also
hides its NAME=VALUE forms (COMPRESS hides COMPRESS=DEFLATE).

OAuth2Gate makes the proxy an OAuth2 server whose tokens expire on demand,
in front of Dovecot's password login (see its docstring).

constant_modseq is the rewrite of a server that advertises CONDSTORE but
breaks it: every "MODSEQ (n)" becomes "MODSEQ (1)" and every
"HIGHESTMODSEQ n" (in [HIGHESTMODSEQ n] and in STATUS) becomes
"HIGHESTMODSEQ 1", so the mailbox looks unchanged whatever happens to it.

size_lie({uid: delta}) is the rewrite of a server whose RFC822.SIZE is not
the size of the body it then sends (Exchange Online, hMailServer, WildDuck):
the RFC822.SIZE of each UID given is announced DELTA bytes off (positive:
more than the body, negative: less); the body itself is unchanged.

stall_literal(uids) is the rewrite of a server that stops in the middle of
a message: the BODY[] literal of each UID given is announced longer than
the body it sends, so the client waits for bytes that never come.  Set
.active = False on the returned function and the server behaves again.
"""

import base64
import re
import select
import socket
import ssl
import threading
import time

IO_TIMEOUT = 10.0        # a TLS handshake, a connect, one blocked send
POLL = 0.2               # how often the threads look at the stop flag
MAX_LINE = 1 << 20       # longer "lines" are passed through unchanged

_MODSEQ = re.compile(rb'(?<![A-Za-z.])MODSEQ \(\d+\)', re.I)
_HIGHEST = re.compile(rb'(?<![A-Za-z.])HIGHESTMODSEQ \d+', re.I)
_LITERAL = re.compile(rb'~?\{(\d+)\+?\}\r\n\Z')


def constant_modseq(text):
    """The rewrite of a server whose mod-sequences never change."""
    return _HIGHEST.sub(b'HIGHESTMODSEQ 1', _MODSEQ.sub(b'MODSEQ (1)', text))


_FETCH = re.compile(rb'^\* \d+ FETCH \(', re.I)
_UID = re.compile(rb'(?<![A-Za-z.])UID (\d+)', re.I)
_SIZE = re.compile(rb'(?<![A-Za-z.])RFC822\.SIZE (\d+)', re.I)
_BODY_LITERAL = re.compile(rb'(?<![A-Za-z.])BODY\[\] ~?\{(\d+)\}\r\n\Z', re.I)


def _fetch_uid(text):
    """The UID of a FETCH response's first piece, or None."""
    if not _FETCH.match(text):
        return None
    m = _UID.search(text)
    return int(m.group(1)) if m else None


def size_lie(deltas):
    """The rewrite of a server that announces RFC822.SIZE + DELTAS[uid] for
    the UIDs in DELTAS (a dict uid -> int; the UID and RFC822.SIZE must be
    in the same piece of the FETCH response, as every server sends them).
    Returns the rewrite function."""
    def rewrite(text):
        uid = _fetch_uid(text)
        m = _SIZE.search(text) if uid in deltas else None
        if not m:
            return text
        size = max(0, int(m.group(1)) + deltas[uid])
        return text[:m.start(1)] + b'%d' % size + text[m.end(1):]

    return rewrite


def stall_literal(uids, extra=65536):
    """The rewrite of a server that stalls in the middle of the body of
    each UID in UIDS: its BODY[] literal is announced EXTRA bytes longer
    than the body that follows (the rest of the server's answer, shorter
    than EXTRA, is taken as literal data; then nothing more comes).  The
    returned function has an attribute .active (True); set it to False and
    later answers are passed unchanged."""
    uids = set(uids)

    def rewrite(text):
        m = _BODY_LITERAL.search(text) if rewrite.active else None
        if not m or _fetch_uid(text) not in uids:
            return text
        return text[:m.start(1)] + b'%d' % (int(m.group(1)) + extra) + text[m.end(1):]

    rewrite.active = True
    return rewrite


def hide_caps(*caps):
    """The rewrite of a server that does not offer CAPS (e.g. 'QRESYNC'):
    they are removed from every CAPABILITY list (untagged and in response
    codes).  Returns the rewrite function."""
    words = {c.upper().encode() for c in caps}
    cap_list = re.compile(rb'((?:^\* |\[)CAPABILITY )([^\]\r\n]*)', re.I)

    def strip(m):
        kept = [w for w in m.group(2).split(b' ')
                if w.upper().split(b'=')[0] not in words]
        return m.group(1) + b' '.join(kept)

    return lambda text: cap_list.sub(strip, text)


class OAuth2Gate:
    """The proxy as an OAuth2 server whose tokens expire on demand, in front
    of Dovecot's password login (the harness Dovecot has no OAuth2).

        gate = OAuth2Gate('alice', 'alicepw', newest=lambda: N)
        with TLSProxy(dc, rewrite=gate.server, rewrite_client=gate.client):
            ...                 # mailfs -o oauth2_cmd=CMD, CMD prints tok-N
            gate.expire()       # every token issued so far has expired
            gate.presented      # [(monotonic time, token, accepted)]

    AUTH=XOAUTH2 is added to every CAPABILITY list the server sends.  A
    client's "TAG AUTHENTICATE XOAUTH2 <initial response>" (SASL-IR) is
    checked here: its token is accepted when it is "tok-N" with N the newest
    issued (NEWEST() says which) and not expired.  Dovecot then gets
    "AUTHENTICATE PLAIN" with USER's real password, or with a wrong one, so
    that the answer, OK or NO [AUTHENTICATIONFAILED], is Dovecot's own.  Any
    other login command is made to fail the same way."""

    _AUTH = re.compile(rb'(\S+) (AUTHENTICATE|LOGIN)( .*)?\r\n\Z', re.I | re.S)
    _CAPS = re.compile(rb'((?:^\* |\[)CAPABILITY [^\]\r\n]*?)( AUTH=PLAIN)', re.I)

    def __init__(self, user, password, newest):
        self.user = user
        self.password = password
        self.newest = newest
        self.expired_upto = 0
        self.presented = []
        self._lock = threading.Lock()

    def expire(self):
        """Every token issued so far is refused from now on."""
        with self._lock:
            self.expired_upto = self.newest()

    def server(self, text):
        return self._CAPS.sub(rb'\1 AUTH=XOAUTH2\2', text)

    def client(self, text):
        m = self._AUTH.match(text)
        if not m:
            return text
        token, ok = None, False
        args = (m.group(3) or b'').split()
        if m.group(2).upper() == b'AUTHENTICATE' and len(args) == 2 \
                and args[0].upper() == b'XOAUTH2':
            try:
                ir = base64.b64decode(args[1], validate=True)
                token = re.search(rb'\x01auth=Bearer ([^\x01]*)\x01', ir).group(1).decode()
            except (ValueError, AttributeError, UnicodeDecodeError):
                token = None
        with self._lock:
            n = re.fullmatch(r'tok-(\d+)', token or '')
            ok = bool(n) and int(n.group(1)) == self.newest() \
                and int(n.group(1)) > self.expired_upto
            self.presented.append((time.monotonic(), token, ok))
        pw = self.password if ok else 'expired-%s' % token
        plain = base64.b64encode(b'\0' + self.user.encode() + b'\0' + pw.encode())
        return m.group(1) + b' AUTHENTICATE PLAIN ' + plain + b'\r\n'


class LineRewriter:
    """Feed it a server's byte stream in chunks of any size; it returns the
    bytes to pass on.  Protocol text is handed to FN one CRLF-terminated
    piece at a time (a piece ends at CRLF; a piece ending in a literal
    announcement {n} is followed by n bytes of literal data, which are
    passed through untouched, and the line goes on after them).  Counts the
    pieces FN changed in .changed.  PRE, if given, is applied before FN and
    its changes are not counted."""

    def __init__(self, fn, pre=None):
        self.fn = fn
        self.pre = pre
        self.buf = b''
        self.literal = 0         # literal bytes still to pass through
        self.changed = 0

    def feed(self, data):
        self.buf += data
        out = []
        while self.buf:
            if self.literal:
                n = min(self.literal, len(self.buf))
                out.append(self.buf[:n])
                self.buf = self.buf[n:]
                self.literal -= n
                continue
            end = self.buf.find(b'\r\n')
            if end < 0:
                if len(self.buf) > MAX_LINE:      # not IMAP as we know it
                    out.append(self.buf)
                    self.buf = b''
                break
            piece, self.buf = self.buf[:end + 2], self.buf[end + 2:]
            m = _LITERAL.search(piece)
            if self.pre is not None:
                piece = self.pre(piece)
            new = self.fn(piece)
            if new != piece:
                self.changed += 1
            out.append(new)
            if m:
                self.literal = int(m.group(1))
        return b''.join(out)

    def flush(self):
        """What is left (an unterminated line at EOF), unchanged."""
        rest, self.buf = self.buf, b''
        return rest


class TLSProxy:
    """See the module docstring.  DC: a mailharness.Dovecot (its imaps port,
    server certificate and CA are used); REWRITE: None or bytes -> bytes for
    server-to-client protocol text; REWRITE_CLIENT: the same for
    client-to-server text; COMPRESS: pass COMPRESS=DEFLATE on even with a
    rewrite (see the module docstring)."""

    def __init__(self, dc, rewrite=None, rewrite_client=None, compress=False):
        self.dc = dc
        self.rewrite = rewrite
        self.rewrite_client = rewrite_client
        # Lines can be rewritten only while they are not compressed.
        self.hide_compress = bool(rewrite or rewrite_client) and not compress
        self.target = (dc.address, dc.ports['imaps'])
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(dc.pki['server'], dc.pki['server.key'])
        self.client_ctx = dc.ssl_context()
        self.host, self.address = 'localhost', '127.0.0.1'
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.address, 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.connections = 0      # accepted and connected through to Dovecot
        self._rewriters = []
        self._lock = threading.Lock()
        self._conns = set()       # (client TLS socket, server TLS socket)
        self._threads = []
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def rewrites(self):
        """Server lines changed by REWRITE so far, over all connections."""
        with self._lock:
            return sum(r.changed for r in self._rewriters)

    def url(self, user, scheme='imaps'):
        return '%s://%s@%s:%d' % (scheme, user, self.host, self.port)

    # ----- threads

    def _accept(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.sock], [], [], POLL)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, conn):
        client = server = None
        try:
            conn.settimeout(IO_TIMEOUT)
            client = self.server_ctx.wrap_socket(conn, server_side=True)
            server = self._upstream(client)
            if server is None:
                return
            with self._lock:
                pre = hide_caps('COMPRESS') if self.hide_compress else None
                rw = (LineRewriter(self.rewrite or (lambda text: text), pre)
                      if self.rewrite or pre else None)
                if rw:
                    self._rewriters.append(rw)
            crw = LineRewriter(self.rewrite_client) if self.rewrite_client else None
            self._pump(client, server, rw, crw)
        except (OSError, ssl.SSLError, ValueError, AttributeError):
            # AttributeError: drop() (another thread) shut the TLS socket
            # down while this one was using it.
            pass
        finally:
            self._release(conn, client, server)

    def _upstream(self, client):
        """A TLS connection to Dovecot for CLIENT, counted and registered
        for drop(), both non-blocking; None (and nothing left open) once
        we stop."""
        raw = socket.create_connection(self.target, timeout=IO_TIMEOUT)
        try:
            server = self.client_ctx.wrap_socket(raw, server_hostname=self.dc.host)
        except BaseException:
            raw.close()
            raise
        with self._lock:
            if self._stop.is_set():
                server.close()
                return None
            self._conns.add((client, server))
            self.connections += 1
        client.setblocking(False)
        server.setblocking(False)
        return server

    def _release(self, conn, client, server):
        """Forget the connection of _upstream() and close the sockets of
        _serve() (None: not opened)."""
        with self._lock:
            self._conns.discard((client, server))
        for s in (client, server, conn):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _relay(self, client, server, on_data, on_round=None):
        """Read what CLIENT and SERVER send until we stop or ON_DATA(socket,
        bytes) or ON_ROUND() returns False: ON_DATA gets each piece read
        (b'' when that side closed), ON_ROUND() runs after each round (at
        most POLL apart).  One thread per connection: an SSL object must
        not be read and written by two threads at once.  The sockets are
        non-blocking, so a TLS record that is not complete yet (or one with
        no application data) never holds the other direction up.  Data
        OpenSSL already decrypted is not seen by select(), hence
        pending()."""
        while not self._stop.is_set():
            ready = [s for s in (client, server) if s.pending()]
            if not ready:
                ready, _, _ = select.select([client, server], [], [], POLL)
            for s in ready:
                try:
                    data = s.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                if not on_data(s, data):
                    return
            if on_round is not None and not on_round():
                return

    def _pump(self, client, server, rw, crw=None):
        """Move bytes both ways until either side closes or we stop."""
        peer = {client: server, server: client}

        def on_data(s, data):
            if not data:
                if rw is not None and s is server:
                    self._send(client, rw.flush())
                return False
            if rw is not None and s is server:
                data = rw.feed(data)
            if crw is not None and s is client:
                data = crw.feed(data)
            self._send(peer[s], data)
            return True
        self._relay(client, server, on_data)

    def _send(self, s, data):
        """All of DATA on non-blocking S, or OSError within IO_TIMEOUT."""
        deadline = time.monotonic() + IO_TIMEOUT
        view = memoryview(data)
        while view:
            try:
                n = s.send(view)
                view = view[n:]
                continue
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                raise OSError('proxy: send timed out')
            select.select([], [s], [], min(POLL, left))

    # ----- control

    def drop(self):
        """Close every connection now (both ends see the connection reset or
        closed, as after a network failure); keep accepting new ones."""
        with self._lock:
            conns = list(self._conns)
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(conns)

    def stop(self):
        self._stop.set()
        self.drop()
        self._accepter.join(IO_TIMEOUT)
        deadline = time.monotonic() + IO_TIMEOUT
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
