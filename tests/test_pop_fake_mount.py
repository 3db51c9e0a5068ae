#!/usr/bin/env python3
r"""mailfs mounting a POP3 account served by a fake server that misbehaves
on demand: what a real Dovecot does not do when asked.

The server is tests/fake/imapfake.py, which plays one transcript on one
connection; a mount opens one connection per session (the login at mount
time carries the first session, then one every poll seconds and when INBOX
is listed).  SessionServer below listens on one port and hands connection
number i to a new imapfake.FakeServer playing the i-th transcript of a list
(the last one for every later connection), pumping the bytes both ways.
So every session must follow its transcript exactly: a message retrieved
twice, a command too many or one missing fails the conversation, and the
tests check all of them before unmounting (SessionServer.problems()).  The
transcripts are tests/fake/popmount_*.pop (the login in
popmount_login.inc); the messages are given by the tests as blobs:
{m1} the dot-stuffed message, {size_m1} its size, {head_m1} its header for
TOP n 0.  All sessions are plaintext (pop3://, -o notls; mailfs warns), on
127.0.0.1, as alice with password "secret" (AUTH PLAIN).

NoUidl        UIDL -> -ERR, TOP works: every message once, byte-exact; later
              sessions (poll=1) retrieve nothing again, also after the
              maildrop is renumbered; identical headers and size (same
              hash): both kept, also when the first one leaves the
              maildrop before the second could be retrieved; the hash is
              logged once
DuplicateUidl two messages under one UIDL: both kept, byte-exact, warned,
              told apart by TOP n 0; also when the second one arrives in a
              later session, when the first one leaves the maildrop before
              the second could be retrieved, with and without pop_keep=0
              (nothing is deleted before it was retrieved), when the two
              also have the same header and size (compared by their
              bytes), and when TOP does not give the header RETR gives
Changed       a cached message listed with another size: retrieved and
              compared; really changed: kept as a new file next to the
              old one, logged; only Status: and the like added by the
              server: no new file, and not retrieved again; with
              pop_keep=0, DELEted only after its new content is cached
LongUidl      UIDLs longer than a cache name (the same first 300
              characters): each downloaded once, across sessions
InUse         [IN-USE] at the login of a session: logged, retried after a
              back-off, then every message once; [IN-USE] to UIDL is not
              taken for "no UIDL"; [IN-USE] at the login at mount time,
              with and without a cache (expected failures: mailfs refuses
              to mount)
RetrDrop      the connection drops in the middle of RETR: nothing
              truncated is stored; the next session retrieves it whole
PopKeepWarn   pop_keep not forever and the IMAP cache of the same account
              next to the POP3 one (default cache location under
              XDG_CACHE_HOME, or -o cache_dir): a warning on stderr; none
              without that cache or with pop_keep=forever

Environment: as tests/harness/mounttest.py says; needs no Dovecot.  Exit
status 77 when FUSE is missing.
The last line says "N passed, N failed"."""

import os
import re
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
sys.path.insert(0, os.path.join(HERE, 'fake'))
import imapfake  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import inbox, mount_bytes, read, retr_sent, with_env  # noqa: E402

USER, PASSWORD = 'alice', 'secret'   # popmount_login.inc: AUTH PLAIN of these
TEST_TIMEOUT = 60.0     # a hung FUSE request fails the test instead of hanging it
SESSION_SECONDS = 10.0  # a few sessions of a few messages with poll=1
GATE_TIMEOUT = 20.0     # longest a held connection waits for the test
STOP_TIMEOUT = 15.0     # the conversations still under way when the server stops

TMP = None


# ------------------------------------------------------------------ messages

M1 = (b'From: Ann Example <ann@example.org>\r\n'
      b'To: alice@example.org\r\n'
      b'Subject: first\r\n'
      b'Message-ID: <m1@fake.test>\r\n'
      b'\r\n'
      b'Hello, this is the first message.\r\n')
# Lines that POP3 dot-stuffs (RFC 1939): ".", "..", ".x".
M2 = (b'From: Bob Example <bob@example.org>\r\n'
      b'To: alice@example.org\r\n'
      b'Subject: dots\r\n'
      b'Message-ID: <m2@fake.test>\r\n'
      b'\r\n'
      b'.\r\n..\r\n.leading dot\r\n...three\r\n.\r\n\r\nend\r\n')
M3 = ('From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.org>\r\n'
      'To: alice@example.org\r\n'
      'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n'
      'Message-ID: <m3@fake.test>\r\n'
      'Content-Type: text/plain; charset=utf-8\r\n'
      '\r\n'
      'Grüße aus Zürich, 台北 ✓\r\n\tindented\r\n').encode()
M4 = (b'From: Carol Example <carol@example.org>\r\n'
      b'To: alice@example.org\r\n'
      b'Subject: fourth, arrived later\r\n'
      b'Message-ID: <m4@fake.test>\r\n'
      b'\r\n'
      b'new mail\r\n')
# M1's twin: the same header and size, another body (the same hash).
TWIN = M1.replace(b'first message.', b'other message.')
# M1 changed on the server under its UIDL: another body, another size.
M1_CHANGED = M1.replace(b'first message.', b'first message, edited on the server.')
# M1 as an mbox-based server shows it once it was read: a Status: and
# X-UID: line added to the header, nothing else.
M1_READ = M1.replace(b'\r\n\r\n', b'\r\nStatus: RO\r\nX-UID: 7\r\n\r\n', 1)


def big_message(lines=6000):
    out = [b'From: Dave Example <dave@example.org>\r\nSubject: big\r\n'
           b'Message-ID: <big@fake.test>\r\n\r\n']
    for i in range(lines):
        out.append(b'.%05d a line of the big message that starts with a dot\r\n' % i
                   if i % 9 == 0 else
                   b'line %05d of the big message, plain text to fill it up\r\n' % i)
    return b''.join(out)


def stuff(msg):
    """MSG as RETR sends it, without the terminator: dot-stuffed."""
    return re.sub(rb'(?m)^\.', b'..', msg)


def header(msg):
    return msg[:msg.index(b'\r\n\r\n') + 4]


def blobs(**msgs):
    """The transcript data for messages m1=..., m2=...: {mN} (dot-stuffed),
    {size_mN}, {head_mN} (for TOP n 0) and {size_all}."""
    data = {}
    for name, msg in msgs.items():
        assert msg.endswith(b'\r\n'), name
        data[name] = stuff(msg)
        data['size_' + name] = str(len(msg)).encode()
        data['head_' + name] = stuff(header(msg))
    data['size_all'] = str(sum(len(m) for m in msgs.values())).encode()
    return data


# ------------------------------------------------------- the session server

class Conversation:
    """One connection from mailfs, played by one imapfake.FakeServer."""

    def __init__(self, index, name, transcript):
        self.index = index
        self.name = name
        self.transcript = transcript
        self.accepted = time.monotonic()
        self.fake = None
        self.note = None        # why it was not played, if it was not
        self.ended = threading.Event()

    @property
    def ok(self):
        return (self.ended.is_set() and self.fake is not None and
                self.fake.failure is None and self.fake.done)

    def describe(self):
        head = 'connection %d (%s)' % (self.index, self.name)
        if self.fake is None:
            return '%s: %s' % (head, self.note or 'not played')
        if not self.ended.is_set():
            return '%s: still under way\n%s' % (head, self.fake.dialogue())
        return '%s:\n%s' % (head, self.fake.dialogue())


class SessionServer:
    """Plays NAMES[i] (transcript files in tests/fake) on the i-th connection
    to 127.0.0.1:port, NAMES[-1] on every later one.  GATES: {i: Event}
    holds connection i (accepted, nothing sent) until the test sets it."""

    def __init__(self, names, data, gates=None):
        loaded = {}
        for n in names:
            if n not in loaded:
                loaded[n] = imapfake.Transcript.load(n, data=data)
        self.plan = [(n, loaded[n]) for n in names]
        self.gates = dict(gates or {})
        self.conversations = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._socks = []
        self._threads = []
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(('127.0.0.1', 0))
        self._lsock.listen(16)
        self._lsock.settimeout(0.1)
        self.port = self._lsock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def url(self):
        return 'pop3://%s@127.0.0.1:%d' % (USER, self.port)

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                i = len(self.conversations)
                name, t = self.plan[min(i, len(self.plan) - 1)]
                conv = Conversation(i, name, t)
                self.conversations.append(conv)
                self._socks.append(conn)
            th = threading.Thread(target=self._serve, args=(conv, conn), daemon=True)
            th.start()
            self._threads.append(th)
        self._lsock.close()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _serve(self, conv, conn):
        back = None
        try:
            gate = self.gates.get(conv.index)
            if gate is not None:
                deadline = time.monotonic() + GATE_TIMEOUT
                while (not gate.is_set() and not self._stopping.is_set() and
                       time.monotonic() < deadline):
                    gate.wait(0.05)
                if not gate.is_set():
                    conv.note = 'held, and the gate was never opened'
                    return
            conv.fake = imapfake.FakeServer(conv.transcript)
            try:
                back = socket.create_connection(('127.0.0.1', conv.fake.port), timeout=5)
            except OSError as e:
                conv.note = 'cannot reach the fake server: %s' % e
                return
            back.settimeout(None)
            with self._lock:
                self._socks.append(back)
            pumps = [threading.Thread(target=self._pump, args=(conn, back), daemon=True),
                     threading.Thread(target=self._pump, args=(back, conn), daemon=True)]
            for p in pumps:
                p.start()
            # The fake server ends once the client closed after the last
            # step, or a step timed out (both bounded).
            conv.fake.wait(4 * imapfake.STEP_TIMEOUT)
            for p in pumps:
                p.join(2)
        finally:
            for s in (conn, back):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()
            if conv.fake is not None:
                conv.fake.close()
            conv.ended.set()

    # ----- for the tests

    def ended(self):
        """Conversations that are over."""
        with self._lock:
            return [c for c in self.conversations if c.ended.is_set()]

    def wait_ended(self, count, seconds=SESSION_SECONDS):
        """Wait (bounded) until COUNT conversations are over; True if so."""
        return wait_until(lambda: len(self.ended()) >= count, seconds)

    def stop(self):
        """Accept no more connections; let those under way finish (bounded)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._acceptor.join(5)
        deadline = time.monotonic() + STOP_TIMEOUT
        for th in list(self._threads):
            th.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            socks = list(self._socks)
        for s in socks:       # whatever is still open after the bound
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for th in list(self._threads):
            th.join(2)

    def problems(self):
        """Descriptions of the conversations that did not follow their
        transcript to the end."""
        with self._lock:
            convs = list(self.conversations)
        return [c.describe() for c in convs if not c.ok]

    def snapshot(self):
        """The conversations so far, in connection order."""
        with self._lock:
            return list(self.conversations)

    def played(self):
        """Names of the transcripts played, in connection order."""
        with self._lock:
            return [c.name for c in self.conversations]


# ------------------------------------------------------------------ helpers

def wait_until(pred, seconds, step=0.05):
    return mounttest.wait_for(pred, seconds, step)


def numbered(*msgs):
    return {'%d.eml' % i: msg for i, msg in enumerate(msgs, 1)}


class FakeMountTest(mounttest.BoundedTest):
    maxDiff = None
    TEST_TIMEOUT = TEST_TIMEOUT

    def server(self, names, data, gates=None):
        srv = SessionServer(names, data, gates)
        self.addCleanup(srv.stop)
        return srv

    def new_mount(self, srv, tag, options=(), mode='debug', cache_dir=True):
        base = mounttest.fresh_base(TMP, tag)
        cache = os.path.join(base, 'cache') if cache_dir is True else cache_dir
        m = mountutil.Mount(None, os.path.join(base, 'mnt'), cache, url=srv.url,
                            password=PASSWORD, cafile=False, mode=mode,
                            options=['notls', 'timeout=5'] + list(options))
        self.addCleanup(m.unmount)      # runs before srv.stop
        return m

    def mount(self, srv, tag, options=('poll=1',), env=None, **kw):
        m = self.new_mount(srv, tag, options, **kw)
        with with_env(env):
            m.start()
        return m

    def explain(self, srv, m):
        return '\n--- transcripts played: %s\n--- mailfs log (end):\n%s' % (
            ' '.join(srv.played()), m.log()[-4000:])

    def finish(self, srv, m):
        """Stop the server, check that every conversation followed its
        transcript, unmount."""
        srv.stop()
        self.assertEqual(srv.problems(), [], self.explain(srv, m))
        self.assertFalse(m.unmount(), 'mailfs needed a lazy unmount or a signal')

    def assertFirst(self, srv, m, *msgs):
        """After the first session, while the second one is held at its
        gate: INBOX holds MSGS as 1.eml ..., nothing more.  Lookups only: a
        first listing could wait for the held session."""
        want = numbered(*msgs)
        self.assertTrue(srv.wait_ended(1), self.explain(srv, m))
        self.assertTrue(self.wait_files(m, want), self.explain(srv, m))
        for n, body in want.items():
            self.assertEqual(read(os.path.join(inbox(m), n)), body, n)
        self.assertFalse(os.path.exists(os.path.join(inbox(m), '%d.eml' % (len(msgs) + 1))))

    def sessions(self, names, data, tag, want, retr, options=('poll=1',)):
        """Mount, let the transcripts NAMES play one session each, check
        that INBOX holds WANT ({name: bytes}) and that RETR was sent for
        the message numbers RETR, in order (None: not checked); (srv, m)."""
        srv = self.server(names, data)
        m = self.mount(srv, tag, options=options)
        self.assertTrue(self.wait_files(m, list(want)), self.explain(srv, m))
        self.assertTrue(srv.wait_ended(len(names)), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), want, self.explain(srv, m))
        if retr is not None:
            self.assertEqual(retr_sent(m.log()), retr, self.explain(srv, m))
        return srv, m

    def wait_files(self, m, names, seconds=SESSION_SECONDS):
        """Wait until every name exists in INBOX, by lookups only (a listing
        would ask for a session at once, bypassing the back-off)."""
        d = inbox(m)
        return wait_until(lambda: all(os.path.exists(os.path.join(d, n)) for n in names),
                          seconds)


# --------------------------------------------------------- 1. without UIDL

class NoUidl(FakeMountTest):
    HASH_LOG = ('the POP3 server has no UIDL: messages are told apart by a hash '
                'of their size and headers')

    def test_every_message_once(self):
        srv = self.server(['popmount_nouidl_first.pop', 'popmount_nouidl_again.pop'],
                          blobs(m1=M1, m2=M2, m3=M3))
        m = self.mount(srv, 'nouidl')
        want = numbered(M1, M2, M3)
        self.assertEqual(mount_bytes(m), want, self.explain(srv, m))
        for n, body in want.items():
            self.assertEqual(os.stat(os.path.join(inbox(m), n)).st_size, len(body), n)
        # Two more sessions (poll=1), then a listing asks for one more:
        # the transcripts allow no RETR there.
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        os.listdir(inbox(m))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), want)
        log = m.log()
        self.assertEqual(sorted(retr_sent(log)), [1, 2, 3], self.explain(srv, m))
        self.assertEqual(log.count(self.HASH_LOG), 1, self.explain(srv, m))
        self.assertEqual(srv.played()[0], 'popmount_nouidl_first.pop')
        self.finish(srv, m)

    def test_renumbered_maildrop(self):
        # Another client deleted message 1 and a new one arrived: the
        # numbers changed, the hashes did not; only the new one comes.
        data = blobs(m1=M1, m2=M2, m3=M3, m4=M4)
        data['size_later'] = str(len(M2) + len(M3) + len(M4)).encode()
        gate = threading.Event()
        srv = self.server(['popmount_nouidl_first.pop', 'popmount_nouidl_renumbered.pop',
                           'popmount_nouidl_renumbered_again.pop'], data, gates={1: gate})
        m = self.mount(srv, 'nouidl-renum')
        self.addCleanup(gate.set)
        self.assertFirst(srv, m, M1, M2, M3)
        gate.set()
        self.assertTrue(self.wait_files(m, ['4.eml']), self.explain(srv, m))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M3, M4))
        self.assertEqual(retr_sent(m.log()), [1, 2, 3, 3], self.explain(srv, m))
        self.finish(srv, m)

    def test_same_headers_and_size(self):
        # Two messages with the same header and the same size have the same
        # hash: both must still be kept.
        self.assertEqual((len(TWIN), header(TWIN)), (len(M1), header(M1)))
        self.assertNotEqual(TWIN, M1)
        srv = self.server(['popmount_nouidl_first.pop', 'popmount_nouidl_again.pop'],
                          blobs(m1=M1, m2=TWIN, m3=M3))
        m = self.mount(srv, 'nouidl-twin')
        self.assertEqual(mount_bytes(m), numbered(M1, TWIN, M3), self.explain(srv, m))
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, TWIN, M3))
        log = m.log()
        self.assertEqual(sorted(retr_sent(log)), [1, 2, 3], self.explain(srv, m))
        self.assertIn('lists 2 messages of the same size and headers (sha256:', log)
        self.finish(srv, m)

    def test_twin_retrieved_after_first_is_gone(self):
        # Two messages of the same header and size (one hash); the second
        # cannot be read at first ([SYS/TEMP]); then another client deletes
        # the first.  The one listed then could be either: it is retrieved
        # and compared with the cached one, and kept since it differs.
        srv, m = self.sessions(['popmount_nouidl_twin_first.pop',
                                'popmount_nouidl_twin_second.pop',
                                'popmount_nouidl_twin_again.pop'], blobs(m1=M1, m2=TWIN),
                               'nouidl-twin-gone', numbered(M1, TWIN), [1, 2, 1])
        self.finish(srv, m)


# ----------------------------------------------------- 2. duplicate UIDLs

class DuplicateUidl(FakeMountTest):
    def test_both_kept(self):
        srv = self.server(['popmount_dup_first.pop', 'popmount_dup_again.pop'],
                          blobs(m1=M1, m2=M2, m3=M3))
        m = self.mount(srv, 'dup')
        want = numbered(M1, M2, M3)
        self.assertEqual(mount_bytes(m), want, self.explain(srv, m))
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        os.listdir(inbox(m))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), want)
        log = m.log()
        self.assertEqual(sorted(retr_sent(log)), [1, 2, 3], self.explain(srv, m))
        self.assertIn('the POP3 server lists UIDL dup-uidl for more than one message: '
                      'its messages are told apart by a hash of their size and headers',
                      log)
        self.assertEqual(log.count('for more than one message'), 1, self.explain(srv, m))
        self.finish(srv, m)

    def test_second_arrives_later(self):
        gate = threading.Event()
        srv = self.server(['popmount_dup_late_first.pop', 'popmount_dup_late_second.pop',
                           'popmount_dup_late_again.pop'], blobs(m1=M1, m2=M2),
                          gates={1: gate})
        m = self.mount(srv, 'dup-late')
        self.addCleanup(gate.set)
        self.assertFirst(srv, m, M1)
        gate.set()
        self.assertTrue(self.wait_files(m, ['2.eml']), self.explain(srv, m))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2))
        self.assertEqual(retr_sent(m.log()), [1, 2], self.explain(srv, m))
        self.assertIn('lists UIDL dup-uidl for more than one message', m.log())
        self.finish(srv, m)

    # Regression (this test and the next): the copies of a duplicated UIDL
    # were named by their position in the listing ("U", "U#1"...), so when
    # the first copy left the maildrop before the second was stored, the
    # second, listed alone, took the first one's name: it was never
    # retrieved (and, until reused UIDLs were kept from pop_keep, it was
    # deleted unread).  A reused UIDL now identifies its messages with a
    # hash of their size and header.
    def test_second_retrieved_after_first_is_gone(self):
        # Both listed under one UIDL; the second cannot be read at first
        # ([SYS/TEMP]); then another client deletes the first.  The second,
        # now alone under that UIDL, was never retrieved: it must be now.
        srv, m = self.sessions(['popmount_dup_temp_first.pop', 'popmount_dup_temp_second.pop',
                                'popmount_dup_temp_again.pop'], blobs(m1=M1, m2=M2),
                               'dup-gone', numbered(M1, M2), [1, 2, 1])
        self.finish(srv, m)

    def test_pop_keep_never_deletes_what_was_not_retrieved(self):
        # The same with pop_keep=0: mailfs itself deletes the first copy
        # (cached); the second must be retrieved before it is deleted.
        # Each DELE below is of the message retrieved, and committed to the
        # cache, in the same session (message numbers do not change within
        # a session), so no message is deleted unread: this is the ideal
        # sequence, not merely an allowed one.
        srv, m = self.sessions(['popmount_dup_keep_first.pop', 'popmount_dup_keep_second.pop',
                                'popmount_empty.pop'], blobs(m1=M1, m2=M2),
                               'dup-keep', numbered(M1, M2), None,
                               options=['poll=1', 'pop_keep=0'])
        self.assertEqual(re.findall(r' C: (RETR|DELE) (\d+)', m.log()),
                         [('RETR', '1'), ('RETR', '2'), ('DELE', '1'), ('RETR', '1'),
                          ('DELE', '1')], self.explain(srv, m))
        self.finish(srv, m)

    def test_same_header_compared_by_bytes(self):
        # Two messages under one UIDL with the same header and size: TOP
        # cannot tell them apart.  The second cannot be read at first; in
        # the next session both are retrieved and compared with the cached
        # one: the first is found cached (not stored again), the second is
        # stored.  Then both are cached.
        srv, m = self.sessions(['popmount_dup_twin_first.pop', 'popmount_dup_twin_second.pop',
                                'popmount_dup_twin_again.pop'], blobs(m1=M1, m2=TWIN),
                               'dup-twin', numbered(M1, TWIN), [1, 2, 1, 2])
        log = m.log()
        self.assertIn('POP3 message 1 (dup-uidl sha256:', log)
        self.assertIn(') is 1.eml, already cached', log)
        self.assertFalse(os.path.exists(os.path.join(inbox(m), '3.eml')))
        self.finish(srv, m)

    def test_top_header_differs_from_retr(self):
        # Message 1 is cached under its bare UIDL; then the UIDL is reused.
        # This server's TOP adds a header line that RETR does not have, so
        # the cached header does not give message 1's hash: both messages
        # are retrieved, message 1 is found cached by its bytes (and filed
        # under its new identity: the next session retrieves nothing).
        data = blobs(m1=M1, m2=M2)
        for name, msg in (('m1', M1), ('m2', M2)):
            data['top_' + name] = stuff(header(msg)[:-2] + b'X-Top: yes\r\n\r\n')
        srv, m = self.sessions(['popmount_dup_late_first.pop', 'popmount_dup_oddtop_second.pop',
                                'popmount_dup_oddtop_again.pop'], data,
                               'dup-oddtop', numbered(M1, M2), [1, 1, 2])
        self.assertIn(') is 1.eml, already cached', m.log())
        self.finish(srv, m)


# -------------------------------------- 3. a message changed on the server

class Changed(FakeMountTest):
    CHANGE = ('changed on the server; both versions kept as %d.eml and %d.eml')

    def test_changed_kept_as_new_file(self):
        # Session 2 lists uid-1 with another size: it is retrieved, and
        # since its content differs from the cached one it becomes 3.eml;
        # 1.eml stays as it was.  Session 3 retrieves nothing.
        data = blobs(m1=M1, m2=M2, new=M1_CHANGED)
        self.assertNotEqual(len(M1_CHANGED), len(M1))
        srv, m = self.sessions(['popmount_change_first.pop', 'popmount_change_retr.pop',
                                'popmount_change_again.pop'], data, 'changed',
                               numbered(M1, M2, M1_CHANGED), [1, 2, 1])
        log = m.log()
        self.assertEqual(log.count('POP3 message UIDL uid-1 ' + self.CHANGE % (1, 3)), 1,
                         self.explain(srv, m))
        self.assertIn('POP3 message 1 (uid-1, 1.eml) is listed with %d bytes, %d before'
                      % (len(M1_CHANGED), len(M1)), log)
        self.assertEqual(os.stat(os.path.join(inbox(m), '3.eml')).st_size, len(M1_CHANGED))
        # One more session (a listing asks for it): still nothing retrieved.
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M1_CHANGED))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(retr_sent(m.log()), [1, 2, 1], self.explain(srv, m))
        self.finish(srv, m)

    def test_status_added_is_no_change(self):
        # An mbox-based server adds Status: and X-UID: after the first
        # download: the size changes, the message does not.  It is
        # retrieved once to compare, nothing is stored, and its new size
        # is remembered: the next sessions do not retrieve it again.
        data = blobs(m1=M1, m2=M2, new=M1_READ)
        srv, m = self.sessions(['popmount_change_first.pop', 'popmount_change_retr.pop',
                                'popmount_change_again.pop'], data, 'status',
                               numbered(M1, M2), [1, 2, 1])
        self.assertFalse(os.path.exists(os.path.join(inbox(m), '3.eml')))
        log = m.log()
        self.assertIn('POP3 message 1 (uid-1) is 1.eml: only header fields that the '
                      'server rewrites', log)
        self.assertNotIn('changed on the server', log)
        self.assertEqual(mount_bytes(m), numbered(M1, M2))
        self.assertTrue(srv.wait_ended(4), self.explain(srv, m))
        self.assertEqual(retr_sent(m.log()), [1, 2, 1], self.explain(srv, m))
        self.finish(srv, m)

    def test_pop_keep_deletes_only_after_new_content_is_cached(self):
        # pop_keep=0; the first session's DELE is not committed (the
        # connection drops at QUIT), and the message is then changed on
        # the server.  Its new content must be retrieved and committed
        # before the next DELE: a DELE without it would lose it.
        srv, m = self.sessions(['popmount_change_keep_first.pop',
                                'popmount_change_keep_second.pop', 'popmount_empty.pop'],
                               blobs(m1=M1, new=M1_CHANGED), 'changed-keep',
                               numbered(M1, M1_CHANGED), None,
                               options=['poll=1', 'pop_keep=0'])
        log = m.log()
        self.assertEqual(re.findall(r' C: (RETR|DELE) (\d+)', log),
                         [('RETR', '1'), ('DELE', '1'), ('RETR', '1'), ('DELE', '1')],
                         self.explain(srv, m))
        # The new version was committed (and logged) before the DELE.
        stored = log.index('POP3 message UIDL uid-1 ' + self.CHANGE % (1, 2))
        self.assertLess(stored, log.rindex(' C: DELE 1'), self.explain(srv, m))
        self.assertIn('POP3 QUIT failed', log)
        self.finish(srv, m)


# ----------------------------------------------------------- 4. long UIDLs

class LongUidl(FakeMountTest):
    def test_long_uidls_across_sessions(self):
        # POP3 allows UIDLs of up to 512 characters here; cache names are
        # shorter.  Two UIDLs that share their first 300 characters must
        # still be two messages, each downloaded once.
        head = ''.join('%03d-' % i for i in range(75))
        data = blobs(m1=M1, m2=M2)
        data['long1'] = (head + 'first').encode()
        data['long2'] = (head + 'second').encode()
        self.assertEqual(len(head), 300)
        srv, m = self.sessions(['popmount_long_uidl.pop', 'popmount_long_uidl_again.pop'],
                               data, 'long-uidl', numbered(M1, M2), None)
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2))
        log = m.log()
        self.assertEqual(retr_sent(log), [1, 2], self.explain(srv, m))
        self.assertNotIn('cannot store', log)
        self.finish(srv, m)


# ------------------------------------------------------------- 5. [IN-USE]

class InUse(FakeMountTest):
    LOCKED = 'the maildrop of alice is locked by another client'

    def test_in_use_then_retried(self):
        # Session 1 (on the connection of the mount) finds an empty
        # maildrop; the next two logins are refused with [IN-USE]; then
        # three messages are there.
        srv = self.server(['popmount_empty.pop', 'popmount_in_use.pop', 'popmount_in_use.pop',
                           'popmount_three.pop', 'popmount_three_again.pop'],
                          blobs(m1=M1, m2=M2, m3=M3))
        m = self.mount(srv, 'inuse')
        self.assertTrue(self.wait_files(m, ['1.eml', '2.eml', '3.eml']),
                        self.explain(srv, m))
        self.assertTrue(srv.wait_ended(5), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M3))
        self.assertTrue(srv.wait_ended(6), self.explain(srv, m))
        log = m.log()
        self.assertEqual(retr_sent(log), [1, 2, 3], self.explain(srv, m))
        # Two sessions were refused (the server's conversations below say
        # so), and the repeated failure is logged once, not once per
        # attempt (its count comes later).
        failed = [l for l in log.splitlines() if 'POP3 check failed' in l]
        self.assertEqual(len(failed), 1, self.explain(srv, m))
        for line in failed:
            self.assertIn(self.LOCKED, line)
            self.assertIn('[IN-USE] maildrop locked', line)
        self.assertNotIn(PASSWORD, log)
        convs = srv.snapshot()
        self.assertEqual([c.name for c in convs[:4]],
                         ['popmount_empty.pop', 'popmount_in_use.pop',
                          'popmount_in_use.pop', 'popmount_three.pop'])
        # Retried after a back-off (poll=1 caps it at 1 s), not in a loop.
        gaps = [round(b.accepted - a.accepted, 2) for a, b in zip(convs[1:3], convs[2:4])]
        self.assertTrue(all(g >= 0.7 for g in gaps), gaps)
        self.finish(srv, m)

    def test_uidl_in_use_is_not_missing_uidl(self):
        # [IN-USE] to UIDL means "later", not "this server has no UIDL":
        # no STAT/TOP fallback, no hash identities (the transcript of the
        # next session expects UIDL again and RETR by it).
        srv = self.server(['popmount_uidl_in_use.pop', 'popmount_three.pop',
                           'popmount_three_again.pop'], blobs(m1=M1, m2=M2, m3=M3))
        m = self.mount(srv, 'uidl-inuse')
        self.assertTrue(self.wait_files(m, ['1.eml', '2.eml', '3.eml']),
                        self.explain(srv, m))
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M3))
        log = m.log()
        self.assertEqual(retr_sent(log), [1, 2, 3], self.explain(srv, m))
        self.assertNotIn('has no UIDL', log)
        self.assertNotRegex(log, r' C: (STAT|TOP)\b')
        self.assertRegex(log, r'POP3 check failed: .*locked by another client.*\[IN-USE\]')
        self.finish(srv, m)

    # Regression: a login answered [IN-USE] at mount time (another client
    # is checking mail right then) mounts and retries, like any later
    # session (it once failed the mount).
    def test_in_use_at_mount(self):
        # The login at mount time is refused with [IN-USE] (another client
        # is checking mail right then).  The lock is temporary: the mount
        # should come up, say so, and retry like any later session.
        srv = self.server(['popmount_in_use.pop', 'popmount_three.pop',
                           'popmount_three_again.pop'], blobs(m1=M1, m2=M2, m3=M3))
        self.assert_mounts_despite_in_use(srv, self.new_mount(srv, 'inuse-mount', ['poll=1']),
                                          [1, 2, 3])

    # Regression: the same as test_in_use_at_mount, with a full cache.
    def test_in_use_at_mount_with_cache(self):
        data = blobs(m1=M1, m2=M2, m3=M3)
        srv = self.server(['popmount_three.pop', 'popmount_three_again.pop'], data)
        m = self.mount(srv, 'inuse-cache')
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M3), self.explain(srv, m))
        self.finish(srv, m)
        # The same cache, and the login at mount time finds the lock.
        srv = self.server(['popmount_in_use.pop', 'popmount_three_again.pop'], data)
        mnt2 = os.path.join(mounttest.fresh_base(TMP, 'inuse-cache2'), 'mnt')
        m2 = mountutil.Mount(None, mnt2, m.cache_dir,
                             url=srv.url, password=PASSWORD, cafile=False, mode='debug',
                             options=['notls', 'timeout=5', 'poll=1'])
        self.addCleanup(m2.unmount)
        self.assert_mounts_despite_in_use(srv, m2, [])

    def assert_mounts_despite_in_use(self, srv, m, retr):
        try:
            m.start()
        except mountutil.MountError as e:
            self.fail('the mount failed on a temporary [IN-USE]: %s' % str(e)[-600:])
        self.assertIn(self.LOCKED, m.log())
        self.assertTrue(self.wait_files(m, ['1.eml', '2.eml', '3.eml']),
                        self.explain(srv, m))
        self.assertEqual(mount_bytes(m), numbered(M1, M2, M3))
        self.assertEqual(retr_sent(m.log()), retr)
        self.finish(srv, m)


# ------------------------------------------------ 6. dropped in mid-RETR

class RetrDrop(FakeMountTest):
    def test_nothing_truncated_then_whole(self):
        big = big_message()
        wire = stuff(big)
        cut = wire.index(b'\r\n', len(wire) // 2) + 2   # a line end mid-message
        data = blobs(m1=M1, m2=big, m3=M3)
        data['part_m2'] = wire[:cut]
        self.assertGreater(len(wire) - cut, 100000)
        gate = threading.Event()
        srv = self.server(['popmount_retr_drop.pop', 'popmount_retr_rest.pop',
                           'popmount_three_again.pop'], data, gates={1: gate})
        m = self.mount(srv, 'drop')
        self.addCleanup(gate.set)
        # Session 1 ends with the connection drop; the next one is held.
        self.assertTrue(srv.wait_ended(1), self.explain(srv, m))
        self.assertTrue(wait_until(lambda: 'POP3 check failed' in m.log(), SESSION_SECONDS),
                        self.explain(srv, m))
        time.sleep(0.3)    # the session is over: listings answer from the cache
        log = m.log()
        self.assertIn('cannot download POP3 message 2 (uid-2)', log)
        self.assertEqual(os.listdir(inbox(m)), ['1.eml'], self.explain(srv, m))
        self.assertEqual(read(os.path.join(inbox(m), '1.eml')), M1)
        self.assertFalse(os.path.exists(os.path.join(inbox(m), '2.eml')))
        self.assertNotRegex(log, r'stored as 2\.eml')
        # The next session retrieves message 2 whole, and 3.
        gate.set()
        self.assertTrue(self.wait_files(m, ['2.eml', '3.eml']), self.explain(srv, m))
        self.assertTrue(srv.wait_ended(3), self.explain(srv, m))
        files = mount_bytes(m)
        self.assertEqual(set(files), {'1.eml', '2.eml', '3.eml'})
        self.assertEqual(files['2.eml'], big, 'message 2 is not the whole message '
                         '(%d of %d bytes)' % (len(files['2.eml']), len(big)))
        self.assertEqual(files, numbered(M1, big, M3))
        self.assertEqual(os.stat(os.path.join(inbox(m), '2.eml')).st_size, len(big))
        self.assertEqual(retr_sent(m.log()), [1, 2, 2, 3], self.explain(srv, m))
        self.finish(srv, m)


# ------------------------------------------------ 7. the pop_keep warning

class PopKeepWarn(FakeMountTest):
    WARNING = re.compile(r'mailfs: warning: alice@127\.0\.0\.1 is also cached over IMAP '
                         r'\((?P<path>[^)]*)\); with pop_keep=(?P<days>\d+), messages '
                         r'deleted from the POP3 maildrop vanish for IMAP clients too')

    @classmethod
    def setUpClass(cls):
        cls.srv = SessionServer(['popmount_empty.pop'], {})

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def stderr_of(self, options, xdg=None, cache_dir=None):
        """Mount (daemon mode: stderr is what the user sees before mailfs
        goes to the background), list INBOX, unmount; mailfs's stderr."""
        m = self.new_mount(self.srv, 'keepwarn', options, mode='daemon',
                           cache_dir=cache_dir)
        with with_env({'XDG_CACHE_HOME': xdg} if xdg else None):
            m.start()
        self.assertEqual(os.listdir(inbox(m)), [])
        self.assertFalse(m.unmount())
        self.assertIn('plaintext connection (notls)', m.result.stderr)
        return m.result.stderr

    def xdg(self, imap_cache):
        xdg = tempfile.mkdtemp(prefix='xdg-', dir=TMP)
        imap = os.path.join(xdg, 'mailfs', 'alice@127.0.0.1')
        if imap_cache:
            os.makedirs(imap)
        return xdg, imap

    def test_warning_with_imap_cache(self):
        for keep in ('0', '30'):
            with self.subTest(pop_keep=keep):
                xdg, imap = self.xdg(True)
                err = self.stderr_of(['pop_keep=' + keep], xdg=xdg)
                hits = [self.WARNING.search(l) for l in err.splitlines()]
                hits = [h for h in hits if h]
                self.assertEqual(len(hits), 1, err)
                self.assertEqual(hits[0].group('path'), imap)
                self.assertEqual(hits[0].group('days'), keep)
                # The POP3 cache went to the default place, next to it.
                pop = os.path.join(xdg, 'mailfs', 'alice@127.0.0.1:%d+pop3' % self.srv.port)
                self.assertTrue(os.path.exists(os.path.join(pop, 'data.mdb')),
                                os.listdir(os.path.join(xdg, 'mailfs')))

    def test_no_warning_without_imap_cache(self):
        xdg, imap = self.xdg(False)
        err = self.stderr_of(['pop_keep=0'], xdg=xdg)
        self.assertNotIn('also cached over IMAP', err)
        self.assertFalse(os.path.exists(imap))

    def test_no_warning_when_kept_forever(self):
        for options in ([], ['pop_keep=forever']):
            with self.subTest(options=options):
                xdg, _ = self.xdg(True)
                err = self.stderr_of(options, xdg=xdg)
                self.assertNotIn('also cached over IMAP', err)

    def test_warning_next_to_cache_dir(self):
        base = tempfile.mkdtemp(prefix='keepdir-', dir=TMP)
        os.mkdir(os.path.join(base, 'alice@127.0.0.1'))
        err = self.stderr_of(['pop_keep=0'], cache_dir=os.path.join(base, 'pop'))
        self.assertRegex(err, self.WARNING)
        self.assertEqual(self.WARNING.search(err).group('path'),
                         os.path.join(base, 'alice@127.0.0.1'))
        # and nothing when the neighbour is another account's
        base2 = tempfile.mkdtemp(prefix='keepdir-', dir=TMP)
        os.mkdir(os.path.join(base2, 'bob@127.0.0.1'))
        err = self.stderr_of(['pop_keep=0'], cache_dir=os.path.join(base2, 'pop'))
        self.assertNotIn('also cached over IMAP', err)


# ------------------------------------------------------------------ module

def setUpModule():
    global TMP
    _, TMP = mounttest.set_up_module('mailfs-pop-fake-', dovecot=False)


def tearDownModule():
    mounttest.tear_down_module(None, TMP)


if __name__ == '__main__':
    mounttest.main()
