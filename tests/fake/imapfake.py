"""A scripted fake IMAP server: plays a transcript, records the client.

For the cases a real server cannot produce on demand: malformed replies,
disconnects mid-literal, stalls, injected bytes after STARTTLS.  Python 3
standard library only.

    t = Transcript.load('starttls_ok.imap')        # file in this directory
    with FakeServer(t, tls_context=ctx) as srv:     # listens on 127.0.0.1
        ... run the client against srv.port ...
        srv.wait(10)
    assert srv.failure is None and srv.done

TranscriptChecks gives a unittest.TestCase assertPlayed(srv, result) and
explain(srv, result), the dialogue for assertion messages.

One FakeServer accepts one connection and plays the transcript on it, step
by step.  After the last step it keeps reading (and recording) until the
client closes, so that anything the client sends after the script ends is
visible in srv.after.

Transcript format
-----------------
One step per line; blank lines and lines starting with "#" are ignored.

  S: TEXT      send TEXT followed by CRLF
  S. TEXT      send TEXT with no line end (a partial line or literal)
  C: TEXT      expect one line from the client (without its CRLF) equal to
               TEXT exactly
  C~ REGEX     expect one line from the client that REGEX matches in full
               (named groups are captured, see below)
  TLS          run the server side of the TLS handshake now (STARTTLS)
  DEFLATE      from here on both directions are raw deflate (COMPRESS=
               DEFLATE, RFC 4978): what the client sends is inflated before
               it is matched, and each S step goes out compressed, flushed
               (Z_SYNC_FLUSH)
  RAW TEXT     send TEXT as it stands, not compressed even after DEFLATE
               (corrupt data; a blob made by the test, e.g. a bomb)
  STALL [S]    answer nothing: read and record until the client closes, or
               S seconds pass (default: the step timeout)
  SLEEP S      pause S seconds
  CLOSE        close the connection now (also ends the transcript)
  DATA NAME TEXT   define a named blob (not a step; may be anywhere)
  INCLUDE FILE     the steps and data of FILE (relative to this file)

Consecutive S:, S., RAW and DEFLATE lines go out in a single write, so
"TAG OK" and the bytes injected after it arrive together (also when they
are compressed: "S: A2 OK", DEFLATE, "S: * 1 EXISTS" is one write, the OK
in plain text and the rest compressed).  The raw bytes sent are in
.sent_raw; .log holds them before compression.

In S and DATA text, escapes \\r \\n \\t \\0 \\xNN and \\\\ give those bytes;
everything else is sent as UTF-8.  In S text, {NAME} is replaced by a
capture or a blob of that name, and {literal:NAME} by an IMAP literal of the
blob, "{N}" CRLF and the N bytes.  NAME must start with a letter, so "{42}"
is sent as it stands.  A C: line with a space in it captures its first
word as "tag" (the client's tag); a C~ line captures its named groups
(name one "tag" to set it).  Lines without a space, such as the answer to
a continuation request, leave "tag" as it was.

Blobs can also be given by the test (Transcript.load(name, data={...})),
e.g. messages too big to write into a file; those override DATA lines.
"""

import os
import re
import socket
import ssl
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

STEP_TIMEOUT = 10.0    # longest wait for one client line
ACCEPT_TIMEOUT = 20.0  # longest wait for the client to connect

_ESCAPE = re.compile(rb'\\(x[0-9a-fA-F]{2}|[rnt0\\])')
_SUBST = re.compile(r'\{(literal:)?([A-Za-z_]\w*)\}')
_SIMPLE = {b'r': b'\r', b'n': b'\n', b't': b'\t', b'0': b'\0', b'\\': b'\\'}


def unescape(text):
    """TEXT (str) as bytes: UTF-8, with the escapes described above."""
    def one(m):
        e = m.group(1)
        if e[:1] == b'x':
            return bytes([int(e[1:], 16)])
        return _SIMPLE[e]
    return _ESCAPE.sub(one, text.encode('utf-8'))


class TranscriptError(Exception):
    pass


class Step:
    """One transcript step.  kind: send, expect, tls, stall, sleep, close."""

    def __init__(self, kind, arg=None, where=''):
        self.kind = kind
        self.arg = arg
        self.where = where  # "file:line", for messages

    def __repr__(self):
        return 'Step(%s, %r) at %s' % (self.kind, self.arg, self.where)


class Transcript:
    def __init__(self, steps, data, name='<transcript>'):
        self.steps = steps
        self.data = data
        self.name = name

    @classmethod
    def load(cls, name, data=None):
        """Parse the transcript file NAME (relative to this directory)."""
        path = name if os.path.isabs(name) else os.path.join(HERE, name)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        return cls.parse(text, data, source=path)

    @classmethod
    def parse(cls, text, data=None, source='<string>'):
        steps, blobs = [], {}
        cls._parse_into(text, source, steps, blobs, depth=0)
        blobs.update(data or {})
        return cls(steps, blobs, os.path.basename(source))

    @classmethod
    def _parse_into(cls, text, source, steps, blobs, depth):
        if depth > 8:
            raise TranscriptError('%s: INCLUDE nested too deep' % source)
        for n, line in enumerate(text.split('\n'), 1):
            where = '%s:%d' % (os.path.basename(source), n)
            line = line.rstrip('\r')
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            op, _, rest = line.partition(' ')
            if op in ('S:', 'S.'):
                parts = cls._parse_send(rest)
                if op == 'S:':
                    parts.append(b'\r\n')
                steps.append(Step('send', parts, where))
            elif op == 'C:':
                steps.append(Step('expect', rest, where))
            elif op == 'C~':
                try:
                    steps.append(Step('expect', re.compile(rest), where))
                except re.error as e:
                    raise TranscriptError('%s: bad regex: %s' % (where, e))
            elif op == 'TLS':
                steps.append(Step('tls', None, where))
            elif op == 'DEFLATE':
                steps.append(Step('deflate', None, where))
            elif op == 'RAW':
                steps.append(Step('raw', cls._parse_send(rest), where))
            elif op == 'STALL':
                steps.append(Step('stall', float(rest) if rest else None, where))
            elif op == 'SLEEP':
                steps.append(Step('sleep', float(rest), where))
            elif op == 'CLOSE':
                steps.append(Step('close', None, where))
            elif op == 'DATA':
                name, _, value = rest.partition(' ')
                blobs[name] = unescape(value)
            elif op == 'INCLUDE':
                path = os.path.join(os.path.dirname(source), rest.strip())
                with open(path, encoding='utf-8') as f:
                    cls._parse_into(f.read(), path, steps, blobs, depth + 1)
            else:
                raise TranscriptError('%s: unknown step %r' % (where, op))

    @staticmethod
    def _parse_send(text):
        """Split S text into bytes and (kind, name) substitutions."""
        parts, pos = [], 0
        for m in _SUBST.finditer(text):
            parts.append(unescape(text[pos:m.start()]))
            parts.append(('literal' if m.group(1) else 'value', m.group(2)))
            pos = m.end()
        parts.append(unescape(text[pos:]))
        return parts


class FakeServer:
    """Plays one Transcript to the first client that connects.

    Results, valid after wait():
      failure   None, or why the client did not follow the transcript
      done      every step was played
      raw       all bytes the client sent (after TLS: the decrypted ones;
                after DEFLATE: the inflated ones)
      lines     the client's lines (bytes, CRLF removed), in order
      after     the bytes the client sent after the last step
      captures  the values captured by C and C~ lines
      tls       the TLS handshake completed
      tls_error the handshake error, if the client aborted it
      log       [(who, bytes)]: who is 'C' or 'S' (or '*' for events)
    """

    def __init__(self, transcript, tls_context=None, host='127.0.0.1',
                 step_timeout=STEP_TIMEOUT, accept_timeout=ACCEPT_TIMEOUT,
                 drip=0.0):
        self.transcript = transcript
        self.tls_context = tls_context
        self.step_timeout = step_timeout
        self.accept_timeout = accept_timeout
        self.drip = drip  # > 0: send one byte at a time, this far apart
        self.failure = None
        self.done = False
        self.raw = b''
        self.lines = []
        self.after = b''
        self.captures = {}
        self.tls = False
        self.tls_error = None
        self.log = []
        self._buf = b''
        self._conn = None
        self._eof = False
        self._deflate = None     # zlib objects once DEFLATE was played
        self._inflate = None
        self.sent_raw = 0        # bytes on the wire (compressed or not)
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, 0))
        self._lsock.listen(1)
        self.port = self._lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.wait(self.step_timeout)
        self.close()

    def wait(self, timeout):
        """Wait (bounded) for the conversation to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self):
        """Stop listening and drop the connection (ends the thread soon)."""
        for s in (self._conn, self._lsock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(self.step_timeout)
        for s in (self._conn, self._lsock):
            if s is not None:
                s.close()

    def dialogue(self, limit=300):
        """The conversation as text, for assertion messages."""
        out = ['--- %s' % self.transcript.name]
        for who, data in self.log:
            text = repr(data)[2:-1]
            if len(text) > limit:
                text = text[:limit] + '...(%d bytes)' % len(data)
            out.append('%s %s' % (who, text))
        if self.failure:
            out.append('! ' + self.failure)
        return '\n'.join(out)

    # ----------------------------------------------------------- playing

    def _fail(self, why):
        if self.failure is None:
            self.failure = why
        self.log.append(('*', why.encode()))

    def _run(self):
        self._lsock.settimeout(self.accept_timeout)
        try:
            conn, _ = self._lsock.accept()
        except OSError:
            self._fail('no client connected')
            return
        self._conn = conn
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.step_timeout)
        try:
            self._play(self.transcript.steps)
            if self._conn is not None:
                # Record whatever the client still sends, until it closes.
                mark = len(self.raw)
                self._read_until_eof(self.step_timeout)
                self.after = self.raw[mark:]
        except Exception as e:  # noqa: BLE001 - reported, never raised
            self._fail('%s: %s' % (type(e).__name__, e))
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except OSError:
                    pass

    def _play(self, steps):
        i = 0
        while i < len(steps):
            step = steps[i]
            if step.kind in ('send', 'raw', 'deflate'):
                out, wire = b'', b''
                while i < len(steps) and steps[i].kind in ('send', 'raw', 'deflate'):
                    st = steps[i]
                    i += 1
                    if st.kind == 'deflate':
                        self._start_deflate()
                        continue
                    data = self._render(st)
                    out += data
                    if st.kind == 'send' and self._deflate is not None:
                        data = (self._deflate.compress(data)
                                + self._deflate.flush(zlib.Z_SYNC_FLUSH))
                    wire += data
                if not self._send(out, wire):
                    self._hangup()
                    return
                continue
            i += 1
            if step.kind == 'expect':
                if not self._expect(step):
                    self._hangup()
                    return
            elif step.kind == 'tls':
                if not self._start_tls(step):
                    self._hangup()
                    return
            elif step.kind == 'stall':
                self.log.append(('*', b'stall'))
                self._read_until_eof(step.arg or self.step_timeout)
            elif step.kind == 'sleep':
                time.sleep(step.arg)
            elif step.kind == 'close':
                self.log.append(('*', b'close'))
                self.done = True
                self._hangup()
                return
        self.done = True

    def _hangup(self):
        if self._conn is None:
            return
        try:
            self._conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._conn.close()
        self._conn = None

    def _render(self, step):
        out = b''
        for p in step.arg:
            if isinstance(p, bytes):
                out += p
                continue
            kind, name = p
            if name in self.captures:
                value = self.captures[name].encode('utf-8')
            elif name in self.transcript.data:
                value = self.transcript.data[name]
            else:
                raise TranscriptError('%s: nothing named %r' % (step.where, name))
            if kind == 'literal':
                value = b'{%d}\r\n' % len(value) + value
            out += value
        return out

    def _start_deflate(self):
        self.log.append(('*', b'deflate'))
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        # Anything the client sent after its command is compressed too.
        rest, self._buf = self._buf, b''
        if rest:
            self._buf = self._inflate.decompress(rest)

    def _send(self, data, wire=None):
        """Send data (WIRE: what goes on the wire for it, if not the
        same); False if the client hung up meanwhile (it may: a client that
        gives up on a bad response closes while we write)."""
        self.log.append(('S', data))
        data = data if wire is None else wire
        self.sent_raw += len(data)
        try:
            if self.drip <= 0:
                self._conn.sendall(data)
            else:
                for i in range(len(data)):
                    self._conn.sendall(data[i:i + 1])
                    time.sleep(self.drip)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            self._eof = True
            self.log.append(('*', b'client closed while the server was sending'))
            return False
        return True

    def _recv(self, timeout):
        """Read more from the client into the buffer; False on EOF."""
        if self._eof:
            return False
        self._conn.settimeout(timeout)
        try:
            data = self._conn.recv(65536)
        except (ssl.SSLError, ConnectionError):
            data = b''
        if not data:
            self._eof = True
            self.log.append(('*', b'client closed'))
            return False
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error as e:
                self._fail('the client sent bad compressed data: %s' % e)
                self._eof = True
                return False
        self.raw += data
        self._buf += data
        return True

    def _readline(self):
        """One client line without its CRLF; None on EOF or timeout."""
        deadline = time.monotonic() + self.step_timeout
        while b'\r\n' not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                if not self._recv(left):
                    return None
            except socket.timeout:
                return None
        line, _, self._buf = self._buf.partition(b'\r\n')
        self.lines.append(line)
        self.log.append(('C', line))
        return line

    def _expect(self, step):
        line = self._readline()
        if line is None:
            self._fail('%s: expected %s, got %s' % (
                step.where, self._want(step),
                'end of input' if self._eof else 'nothing within %g s' % self.step_timeout))
            return False
        text = line.decode('utf-8', errors='replace')
        if isinstance(step.arg, str):
            ok, groups = text == step.arg, {}
        else:
            m = step.arg.fullmatch(text)
            ok, groups = m is not None, (m.groupdict() if m else {})
        if not ok:
            self._fail('%s: expected %s, got %r' % (step.where, self._want(step), text))
            return False
        if isinstance(step.arg, str) and ' ' in text:
            self.captures['tag'] = text.split(' ', 1)[0]
        self.captures.update({k: v for k, v in groups.items() if v is not None})
        return True

    @staticmethod
    def _want(step):
        if isinstance(step.arg, str):
            return repr(step.arg)
        return '/%s/' % step.arg.pattern

    def _start_tls(self, step):
        if self.tls_context is None:
            self._fail('%s: TLS step but no TLS context' % step.where)
            return False
        if self._buf:
            self._fail('%s: the client sent %r before the TLS handshake'
                       % (step.where, self._buf[:60]))
            return False
        self.log.append(('*', b'TLS handshake'))
        self._conn.settimeout(self.step_timeout)
        try:
            self._conn = self.tls_context.wrap_socket(self._conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.tls_error = str(e)
            self._fail('%s: TLS handshake failed: %s' % (step.where, e))
            self._conn = None  # wrap_socket() closed it
            return False
        self.tls = True
        return True

    def _read_until_eof(self, limit):
        deadline = time.monotonic() + limit
        while self._conn is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                if not self._recv(left):
                    return
            except socket.timeout:
                return
            # Keep the line log current for what arrives here too.
            while b'\r\n' in self._buf:
                line, _, self._buf = self._buf.partition(b'\r\n')
                self.lines.append(line)
                self.log.append(('C', line))


class TranscriptChecks:
    """Assertions for a unittest.TestCase whose client ran against a
    FakeServer: SRV, the server after wait(); R, what the client run gave
    (shown in messages)."""

    def explain(self, srv, r):
        return '\n%s\n%s' % (srv.dialogue(), r)

    def assertPlayed(self, srv, r):
        """The client followed the transcript to its end."""
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertTrue(srv.done, self.explain(srv, r))
