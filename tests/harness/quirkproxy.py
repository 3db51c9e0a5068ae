#!/usr/bin/env python3
"""A quirk proxy: the harness Dovecot seen as Exchange, Gmail or iCloud.

    import quirkproxy
    with quirkproxy.QuirkProxy(dc, 'exchange') as proxy:     # or 'gmail', 'icloud'
        url = proxy.url('alice')
        ...                                  # mount url with -o cafile=<dc.ca>
        proxy.stats()                        # what the proxy did and saw

    quirkproxy.QuirkProxy(dc, quirks=quirkproxy.Quirks(throttle_every=20))
    quirkproxy.QuirkProxy(dc, 'exchange', size_skew=False)   # a mode minus one quirk

Built on imapproxy.TLSProxy (TLS on both sides, one thread per connection).
Unlike it, this proxy also reads what the client sends, command by command
(literals followed, so a literal's bytes are never taken for a command),
and may answer a command itself instead of passing it on.  Its own answers
go to the client only between two server responses, never inside one.

Each mode is a set of behaviours (struct Quirks), each of which can also be
switched on alone:

hide              capabilities removed from every CAPABILITY list (the
                  greeting's code, the untagged response, OK [CAPABILITY]);
                  a name such as COMPRESS also hides COMPRESS=DEFLATE
literal_minus     LITERAL+ shown as LITERAL- (RFC 7888), and enforced: a
                  non-synchronising literal over 4096 bytes is swallowed and
                  its command answered "BAD [TOOBIG]" (RFC 7888, section 4)
caps_after_login  the tagged OK of LOGIN/AUTHENTICATE loses its [CAPABILITY]
                  code; the list comes first as an untagged CAPABILITY (Gmail)
refuse            commands the provider lacks, answered by the proxy:
                  {pattern: answer}; patterns are regular expressions on the
                  command line after the tag (e.g. MOVE on iCloud, ENABLE
                  QRESYNC, SELECT ... (CONDSTORE) on Exchange)
size_skew         RFC822.SIZE off by a few bytes on some messages, larger and
                  smaller (Exchange): n+3 when n % 3 == 0, n-2 when n % 3 == 1
throttle_every    every Nth command after login (counted over all
                  connections; not CAPABILITY, LOGIN, AUTHENTICATE, LOGOUT,
                  IDLE, ID) opens a back-off window of backoff_ms: it and
                  every command arriving in the window is answered
                  "NO Request is throttled. Suggested Backoff Time: N
                  milliseconds" (Exchange; N is what is left of the window)
ok_throttled_every every Nth tagged OK gets " [THROTTLED]" (Gmail)
max_connections   a cap on simultaneous connections: past it, Gmail answers
                  the login "NO [ALERT] Too many simultaneous connections.
                  (Failure)"; Exchange greets with "* BYE Connection is
                  closed. 13" and closes (cap_style)
idle_bye          seconds: a logged-in connection that sent no command for
                  that long (and has none in flight, and is not in IDLE) gets
                  "* BYE" and is closed (Gmail)

Compression: the proxy reads and rewrites both directions line by line,
and cannot look into a COMPRESS=DEFLATE stream (RFC 4978), so it always
hides COMPRESS (whatever `hide` says) and answers a COMPRESS command itself
with NO, never passing it on.  Exchange lacks COMPRESS anyway; Gmail does
offer COMPRESS=DEFLATE, and the proxy strips it: the provider modes test
the uncompressed path, and the compressed one is tested against the
harness Dovecot directly (its imap_zlib plugin).

The texts are those public reports quote from the providers (Gmail's
connection refusal, Exchange's throttling), where one was found; Exchange's
connection cap and iCloud's refusal of MOVE are modelled on the wording
these servers use for their other refusals.

stats() counts what happened: commands seen, windows opened, commands that
arrived inside a back-off window (in_window) and those of them that came
later than GRACE after the window opened (ignored_backoff: a client that
honours the back-off sends none; commands sent before the client could know
-- pipelined with the throttled one, or racing it on another connection --
arrive within GRACE), connections refused for the cap, idle BYEs, sizes
skewed, OKs marked [THROTTLED], commands refused, TOOBIG literals.
"""

import re
import ssl
import threading
import time

import imapproxy

GRACE = 0.1     # s: a command this soon after a window opened was on its way

_CAPS = re.compile(rb'((?:^\* |\[)CAPABILITY )([^\]\r\n]*)', re.I)
_TAGGED_OK_CAPS = re.compile(rb'^([A-Za-z0-9.]+) OK \[CAPABILITY ([^\]\r\n]*)\] ?(.*)\r\n\Z', re.I | re.S)
_TAGGED = re.compile(rb'^([A-Za-z0-9.]+) (OK|NO|BAD)\b', re.I)
_SIZE = re.compile(rb'RFC822\.SIZE (\d+)', re.I)
_CLIENT_LITERAL = re.compile(rb'~?\{(\d+)(\+?)\}\r\n\Z')
_COMMAND = re.compile(rb'^([A-Za-z0-9.]+) ([A-Za-z]+)(?: ([A-Za-z]+))?')

COMMANDS = {b'CAPABILITY', b'NOOP', b'LOGOUT', b'STARTTLS', b'AUTHENTICATE', b'LOGIN',
            b'SELECT', b'EXAMINE', b'CREATE', b'DELETE', b'RENAME', b'SUBSCRIBE',
            b'UNSUBSCRIBE', b'LIST', b'LSUB', b'NAMESPACE', b'STATUS', b'APPEND', b'CHECK',
            b'CLOSE', b'UNSELECT', b'EXPUNGE', b'SEARCH', b'FETCH', b'STORE', b'COPY',
            b'MOVE', b'UID', b'IDLE', b'ENABLE', b'ID', b'COMPRESS', b'GETQUOTAROOT',
            b'GETQUOTA', b'XLIST'}
NOT_THROTTLED = {b'CAPABILITY', b'LOGIN', b'AUTHENTICATE', b'LOGOUT', b'IDLE', b'ID',
                 b'STARTTLS'}

EXCHANGE_THROTTLED = 'NO Request is throttled. Suggested Backoff Time: %d milliseconds'
EXCHANGE_BYE = b'* BYE Connection is closed. 13\r\n'
GMAIL_TOO_MANY = 'NO [ALERT] Too many simultaneous connections. (Failure)'
GMAIL_IDLE_BYE = b'* BYE Session expired, please login again.\r\n'



def skewed_size(n):
    """The RFC822.SIZE size_skew announces for a message of n bytes: 3 more
    when n % 3 == 0, 2 fewer when n % 3 == 1 (and n > 2), else n."""
    if n % 3 == 0:
        return n + 3
    if n % 3 == 1 and n > 2:
        return n - 2
    return n

class Quirks:
    """One provider's behaviours; see the module docstring."""

    def __init__(self, **kw):
        self.hide = ()
        self.literal_minus = False
        self.caps_after_login = False
        self.refuse = {}
        self.size_skew = False
        self.throttle_every = 0
        self.backoff_ms = 2000
        self.ok_throttled_every = 0
        self.max_connections = 0
        self.cap_style = 'gmail'
        self.idle_bye = 0
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError('unknown quirk %r' % k)
            setattr(self, k, v)


_EXCHANGE_ARG = 'BAD Command Argument Error. 11'
MODES = {
    'exchange': dict(
        hide=('CONDSTORE', 'QRESYNC', 'COMPRESS'),
        refuse={rb'^ENABLE\b.*\b(CONDSTORE|QRESYNC)\b': _EXCHANGE_ARG,
                rb'^COMPRESS\b': 'BAD Command Error. 10',
                rb'^(SELECT|EXAMINE) .*\((CONDSTORE|QRESYNC)\b': _EXCHANGE_ARG,
                rb'^(UID )?FETCH .*\b(CHANGEDSINCE|MODSEQ|VANISHED)\b': _EXCHANGE_ARG},
        size_skew=True,
        throttle_every=12,
        backoff_ms=2000,
        max_connections=3,
        cap_style='exchange'),
    'gmail': dict(
        hide=('QRESYNC',),
        refuse={rb'^ENABLE\b.*\bQRESYNC\b': 'BAD Could not parse command',
                rb'^(SELECT|EXAMINE) .*\(QRESYNC\b': 'BAD Could not parse command',
                rb'^(UID )?FETCH .*\bVANISHED\b': 'BAD Could not parse command'},
        literal_minus=True,
        caps_after_login=True,
        ok_throttled_every=7,
        max_connections=2,
        cap_style='gmail',
        idle_bye=4),
    'icloud': dict(
        hide=('MOVE',),
        refuse={rb'^(UID )?MOVE\b': 'BAD Parse Error'}),
}


class _Conn:
    """Per connection: what the client is in the middle of sending."""

    def __init__(self):
        self.buf = b''
        self.literal = 0          # literal bytes still to come from the client
        self.cmd = None           # None, or 'forward' / 'swallow' for the command under way
        self.authed = False
        self.counted = False      # in QuirkProxy.authed
        self.idling = False
        self.mid = False          # the server's line goes on after a literal
        self.inflight = set()     # tags forwarded, not answered yet
        self.last = time.monotonic()
        self.out = []             # the proxy's own answers, waiting for a boundary


class QuirkProxy(imapproxy.TLSProxy):
    def __init__(self, dc, mode=None, quirks=None, **overrides):
        if quirks is None:
            kw = dict(MODES[mode]) if mode else {}
            kw.update(overrides)
            quirks = Quirks(**kw)
        self.q = quirks
        # Lines can be rewritten only while they are not compressed.
        if not any(h.upper() == 'COMPRESS' for h in quirks.hide):
            quirks.hide = tuple(quirks.hide) + ('COMPRESS',)
        self.mode = mode
        self._stats = dict(commands=0, windows=0, in_window=0, ignored_backoff=0,
                           refused_connections=0, idle_byes=0, size_skews=0,
                           ok_throttled=0, refused_commands=0, toobig=0,
                           max_simultaneous=0)
        self._window_start = 0.0
        self._window_until = 0.0
        self._oks = 0
        self._throttle_count = 0
        self.ignored = []         # the commands counted in ignored_backoff
        self.live = 0             # connections open now
        self.authed = 0           # of them logged in (for Gmail's cap)
        super().__init__(dc, rewrite=None)

    def stats(self):
        with self._lock:
            return dict(self._stats)

    def _count(self, key, n=1):
        with self._lock:
            self._stats[key] += n

    # ----- connection handling

    def _serve(self, conn):
        client = server = None
        counted = False
        try:
            conn.settimeout(imapproxy.IO_TIMEOUT)
            client = self.server_ctx.wrap_socket(conn, server_side=True)
            with self._lock:
                full = (self.q.max_connections and self.q.cap_style == 'exchange'
                        and self.live >= self.q.max_connections)
                if full:
                    self._stats['refused_connections'] += 1
                else:
                    self.live += 1
                    counted = True
                    self._stats['max_simultaneous'] = max(self._stats['max_simultaneous'],
                                                          self.live)
            if full:
                client.sendall(EXCHANGE_BYE)
                return
            server = self._upstream(client)
            if server is None:
                return
            st = _Conn()
            rw = imapproxy.LineRewriter(lambda text: self._server_line(st, text))
            try:
                self._pump2(client, server, rw, st)
            finally:
                with self._lock:
                    if st.counted:
                        self.authed -= 1
        except (OSError, ssl.SSLError, ValueError, AttributeError):
            pass
        finally:
            if counted:
                with self._lock:
                    self.live -= 1
            self._release(conn, client, server)

    def _pump2(self, client, server, rw, st):
        def on_data(s, data):
            if not data:
                if s is server:
                    self._send(client, rw.flush())
                return False
            if s is server:
                self._send(client, rw.feed(data))
            else:
                fwd = self._client_data(st, data)
                if fwd:
                    self._send(server, fwd)
            return True

        def on_round():
            # The proxy's own answers, between two server responses.
            if st.out and rw.literal == 0 and not rw.buf and not st.mid:
                out, st.out = b''.join(st.out), []
                self._send(client, out)
            if (self.q.idle_bye and st.authed and not st.idling and not st.inflight
                    and not st.out and time.monotonic() - st.last > self.q.idle_bye):
                self._count('idle_byes')
                self._send(client, GMAIL_IDLE_BYE)
                return False
            return True
        self._relay(client, server, on_data, on_round)

    # ----- server to client

    def _server_line(self, st, text):
        q = self.q
        st.mid = bool(imapproxy._LITERAL.search(text))
        m = _TAGGED.match(text)
        if m:
            st.inflight.discard(m.group(1))
        if q.caps_after_login:
            m2 = _TAGGED_OK_CAPS.match(text)
            if m2:
                text = (b'* CAPABILITY ' + m2.group(2) + b'\r\n' + m2.group(1) + b' OK '
                        + m2.group(3) + b'\r\n')
        if q.hide or q.literal_minus:
            text = _CAPS.sub(self._caps_sub, text)
        if q.size_skew and b'FETCH' in text.upper():
            text = _SIZE.sub(self._size_sub, text)
        if q.ok_throttled_every and m and m.group(2).upper() == b'OK' and st.authed:
            with self._lock:
                self._oks += 1
                mark = self._oks % q.ok_throttled_every == 0
                if mark:
                    self._stats['ok_throttled'] += 1
            if mark:
                text = text[:-2] + b' [THROTTLED]\r\n'
        return text

    def _caps_sub(self, m):
        out = []
        for w in m.group(2).split(b' '):
            name = w.upper().split(b'=')[0]
            if any(name == h.upper().encode() for h in self.q.hide):
                continue
            if self.q.literal_minus and w.upper() == b'LITERAL+':
                w = b'LITERAL-'
            out.append(w)
        return m.group(1) + b' '.join(out)

    def _size_sub(self, m):
        n = int(m.group(1))
        lie = skewed_size(n)
        if lie == n:
            return m.group(0)
        self._count('size_skews')
        return b'RFC822.SIZE %d' % lie

    # ----- client to server

    def _client_data(self, st, data):
        """Bytes from the client: returns what goes on to Dovecot; the
        proxy's own answers are queued in st.out."""
        st.buf += data
        fwd = []
        while st.buf:
            if st.literal:
                n = min(st.literal, len(st.buf))
                if st.cmd != 'swallow':
                    fwd.append(st.buf[:n])
                st.buf, st.literal = st.buf[n:], st.literal - n
                continue
            end = st.buf.find(b'\r\n')
            if end < 0:
                if len(st.buf) > imapproxy.MAX_LINE:
                    fwd.append(st.buf)
                    st.buf = b''
                break
            line, st.buf = st.buf[:end + 2], st.buf[end + 2:]
            lit = _CLIENT_LITERAL.search(line)
            if st.cmd is None:
                st.cmd = self._command(st, line, lit)
            elif lit and lit.group(2) and int(lit.group(1)) > 4096 and self.q.literal_minus:
                # A LITERAL- violation in the middle of a command already
                # passed on: RFC 7888 lets the server close the connection.
                self._count('toobig')
                raise OSError('LITERAL- violated mid-command')
            if st.cmd != 'swallow':
                fwd.append(line)
            if lit:
                n = int(lit.group(1))
                if st.cmd == 'swallow' and not lit.group(2):
                    st.cmd = None       # answered: the client sends no literal
                else:
                    st.literal = n
            else:
                st.cmd = None
        return b''.join(fwd)

    def _command(self, st, line, lit):
        """A command's first line: 'forward' or 'swallow' (answered here)."""
        m = _COMMAND.match(line)
        if not m or m.group(2).upper() not in COMMANDS:
            # A continuation line (AUTHENTICATE data, DONE) or garbage.
            if line.strip().upper() == b'DONE':
                st.idling = False
                st.last = time.monotonic()
            return 'forward'
        tag, name = m.group(1), m.group(2).upper()
        rest = line[len(tag) + 1:].rstrip(b'\r\n')
        st.last = time.monotonic()
        q = self.q
        if lit and lit.group(2) and int(lit.group(1)) > 4096 and q.literal_minus:
            self._count('toobig')
            return self._answer(st, tag, 'BAD [TOOBIG] Literal too big for LITERAL-')
        for pat, answer in q.refuse.items():
            if re.search(pat, rest, re.I):
                self._count('refused_commands')
                return self._answer(st, tag, answer)
        if name == b'COMPRESS':
            # Hidden, and never passed on: the proxy would lose the lines.
            self._count('refused_commands')
            return self._answer(st, tag, 'NO [CANNOT] Compression is not available')
        if name in (b'LOGIN', b'AUTHENTICATE'):
            with self._lock:
                full = (q.max_connections and q.cap_style == 'gmail'
                        and self.authed >= q.max_connections)
                if full:
                    self._stats['refused_connections'] += 1
                else:
                    self.authed += 1
                    st.counted = True
            if full:
                return self._answer(st, tag, GMAIL_TOO_MANY)
            st.authed = True
        elif st.authed and name not in NOT_THROTTLED and q.throttle_every:
            left = self._throttle(rest)
            if left:
                return self._answer(st, tag, EXCHANGE_THROTTLED % left)
        if name == b'IDLE':
            st.idling = True
        with self._lock:
            self._stats['commands'] += 1
        st.inflight.add(tag)
        return 'forward'

    def _throttle(self, line):
        """0, or the ms of back-off to announce for this command."""
        now = time.monotonic()
        with self._lock:
            if now < self._window_until:
                self._stats['in_window'] += 1
                if now - self._window_start > GRACE:
                    self._stats['ignored_backoff'] += 1
                    self.ignored.append('%.3f s into the window: %s'
                                        % (now - self._window_start, line[:80]))
                return max(1, int((self._window_until - now) * 1000))
            self._throttle_count += 1
            if self._throttle_count % self.q.throttle_every:
                return 0
            self._window_start = now
            self._window_until = now + self.q.backoff_ms / 1000.0
            self._stats['windows'] += 1
            return self.q.backoff_ms

    def _answer(self, st, tag, text):
        st.out.append(tag + b' ' + text.encode() + b'\r\n')
        return 'swallow'
