#!/usr/bin/env python3
"""The POP3 client (through tests/pop3cli) against a real Dovecot, and
against a scripted fake server for what Dovecot cannot do on demand.

Every byte the client retrieves is compared with what Dovecot returns to an
independent client (Python's poplib, in the harness's pop3_messages()).
The fake-server cases (no STLS offered, plaintext injected after the STLS
+OK, a server without UIDL, [IN-USE]) play transcripts with the fake server
of tests/fake/imapfake.py, which speaks any line protocol.

Environment: MAILFS_POP3CLI (the pop3cli program; else MAILFS_BUILD/tests/
pop3cli).  The Dovecot cases are skipped when dovecot is not installed; the
fake-server cases need only the openssl program.  Exit 0 when every test
passed, 1 otherwise; the last line says "N passed, N failed"."""

import base64
import os
import shutil
import ssl
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
sys.path.insert(0, os.path.join(HERE, 'fake'))
import imapfake  # noqa: E402
import mailharness  # noqa: E402

POP3CLI = mailharness.test_tool('pop3cli')

EXIT = mailharness.CLI_EXIT   # pop3cli's exit code for each error class
CLI_TIMEOUT = 120

HAVE_DOVECOT = all(mailharness.find_program(p) for p in ('dovecot', 'doveadm', 'openssl'))

dc = None


def setUpModule():
    global dc
    if HAVE_DOVECOT:
        dc = mailharness.Dovecot()


def tearDownModule():
    if dc is not None:
        dc.close()


def cli(url, *args, password, cafile, debug=False, timeout_ms=None, opts=()):
    cmd = [POP3CLI, '--password-stdin'] + list(opts)
    if cafile:
        cmd += ['--cafile', cafile]
    if debug:
        cmd += ['--debug']
    if timeout_ms:
        cmd += ['--timeout', str(timeout_ms)]
    cmd += [url] + list(args)
    return mailharness.run_tool(cmd, password, CLI_TIMEOUT)


def live(url, *args, user=None, password=None, cafile=True, **kw):
    user = user or url.split('://', 1)[1].split('@', 1)[0]
    pw = dc.users.get(user, '') if password is None else password
    return cli(url, *args, password=pw, cafile=dc.ca if cafile else None, **kw)


def sent_lines(stderr):
    """The commands of a --debug run, in order."""
    return [l.split(' C: ', 1)[1] for l in stderr.splitlines() if ' C: ' in l]


# ---------------------------------------------------------------- Dovecot

@unittest.skipUnless(HAVE_DOVECOT, 'dovecot not installed')
class Login(unittest.TestCase):
    def test_pop3s(self):
        r = live(dc.url('pop3s', 'alice'), 'stat')
        self.assertEqual(r.rc, 0, r)
        count, size = map(int, r.stdout.split())
        self.assertGreaterEqual(count, 0)
        r = live(dc.url('pop3s', 'alice'), 'caps')
        self.assertEqual(r.rc, 0, r)
        self.assertIn('UIDL', r.stdout.splitlines())
        self.assertIn('PIPELINING', r.stdout.splitlines())

    def test_stls(self):
        r = live(dc.url('pop3', 'alice'), 'stat', debug=True)
        self.assertEqual(r.rc, 0, r)
        sent = sent_lines(r.stderr)
        verbs = [s.split(' ')[0] for s in sent]
        # CAPA, STLS, CAPA again over TLS, then the login, then CAPA
        # once more (RFC 2449: it may change after login).
        self.assertEqual(verbs[:5], ['CAPA', 'STLS', 'CAPA', 'AUTH', 'CAPA'], r)
        self.assertEqual(sent[3], 'AUTH PLAIN <hidden>')
        self.assertIn('stls -> tls-handshake', r.stderr)
        self.assertEqual(verbs[-2:], ['STAT', 'QUIT'])

    def test_password_never_logged(self):
        secret = dc.users['alice']
        plain = base64.b64encode(b'\0alice\0' + secret.encode()).decode()
        for scheme in ('pop3s', 'pop3'):
            r = live(dc.url(scheme, 'alice'), 'stat', debug=True)
            self.assertEqual(r.rc, 0, r)
            self.assertIn('AUTH PLAIN <hidden>', r.stderr)  # debug was on
            self.assertNotIn(secret, r.stderr + r.stdout)
            self.assertNotIn(plain, r.stderr + r.stdout)

    def test_wrong_password(self):
        for scheme in ('pop3s', 'pop3'):
            r = live(dc.url(scheme, 'alice'), 'stat', password='not-the-password')
            self.assertEqual(r.rc, EXIT['AUTH'], r)
            self.assertIn('pop3cli: authentication: ', r.message)
            self.assertIn('refused the login for alice', r.message)
            # The server's own text, response code included.
            self.assertIn('[AUTH] Authentication failed', r.message)
            self.assertEqual(r.errno, 'EACCES')

    def test_unknown_ca(self):
        for scheme in ('pop3s', 'pop3'):
            r = live(dc.url(scheme, 'alice'), 'stat', cafile=False)
            self.assertEqual(r.rc, EXIT['TLS_VERIFY'], r)
            self.assertIn('issuer is unknown', r.message)

    def test_wrong_host(self):
        for scheme in ('pop3s', 'pop3'):
            url = dc.url(scheme, 'alice').replace('@localhost:', '@127.0.0.1:')
            r = live(url, 'stat')
            self.assertEqual(r.rc, EXIT['TLS_VERIFY'], r)
            self.assertIn('another host name', r.message)

    def test_expired(self):
        with dc.bad_cert_server('expired', greeting=b'+OK fake\r\n') as srv:
            r = live('pop3s://alice@localhost:%d' % srv.port, 'stat')
        self.assertEqual(r.rc, EXIT['TLS_VERIFY'], r)
        self.assertIn('expired', r.message)

    def test_connection_refused_is_quick(self):
        port = mailharness.free_ports(1)[0]
        r = live('pop3s://alice@127.0.0.1:%d' % port, 'stat')
        self.assertEqual(r.rc, EXIT['CONNECT'], r)
        self.assertIn('refused', r.message)
        self.assertLess(r.elapsed, 5)


# Messages that exercise the dot-stuffing and line ends, besides the corpus.
SPECIAL = [
    b'Subject: no final newline\r\n\r\nthe last line has no newline',
    b'Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.x\r\n. \r\n.\r\n\r\n.\r\nend\r\n',
    b'.starts with a dot: header\r\n\r\nbody\r\n',
    b'Subject: bare CR\r\n\r\na\rb\r\n.\rc\r\n\r.\r\n',
    b'Subject: LF only\n\nline\n.\n..\nlast\n',
    'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße, 8-bit: ü ß 台北\r\n'.encode(),
    b'Subject: empty body\r\n\r\n',
]


def big_message():
    lines = [b'Subject: big\r\nMessage-ID: <big@pop3.test>\r\n\r\n']
    for i in range(100000):
        lines.append(b'.%06d a line of the big message that starts with a dot\r\n' % i
                     if i % 7 == 0 else
                     b'line %06d of the big message, plain text to fill it up\r\n' % i)
    return b''.join(lines)


def retrieved_by_poplib(user):
    # poplib refuses lines over 2048 bytes; the corpus has longer ones.
    mailharness.poplib._MAXLINE = 1 << 24
    return dc.pop3_messages(user)


def uidl(user):
    r = live(dc.url('pop3s', user), 'uidl')
    assert r.rc == 0, str(r)
    out = []
    for line in r.stdout.splitlines():
        num, uid = line.split(' ')
        out.append((int(num), uid))
    return out


@unittest.skipUnless(HAVE_DOVECOT, 'dovecot not installed')
class Retrieve(unittest.TestCase):
    """The corpus (POP3 sees only INBOX, so it is appended there for a user
    of its own), a big message and SPECIAL, retrieved byte-exact."""

    USER = 'carol'

    @classmethod
    def setUpClass(cls):
        dc.add_user(cls.USER, 'carolpw')
        msgs = [m for box in mailharness.corpus_messages().values() for _, m in box if m]
        cls.ncorpus = len(msgs)
        msgs += SPECIAL + [big_message()]
        dc.append_many(cls.USER, 'INBOX', msgs)
        cls.server = retrieved_by_poplib(cls.USER)

    def test_uidl_equals_poplib(self):
        got = uidl(self.USER)
        self.assertEqual([n for n, _ in got], list(range(1, len(got) + 1)))
        self.assertEqual([u for _, u in got], list(self.server))
        self.assertGreater(len(got), 300)

    def test_list_matches_stat(self):
        r = live(dc.url('pop3s', self.USER), 'list')
        self.assertEqual(r.rc, 0, r)
        sizes = [int(l.split()[1]) for l in r.stdout.splitlines()]
        r = live(dc.url('pop3s', self.USER), 'stat')
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.stdout.split(), [str(len(sizes)), str(sum(sizes))])

    def test_every_message_byte_exact(self):
        nums = dict(uidl(self.USER))
        for scheme in ('pop3s', 'pop3'):
            with tempfile.TemporaryDirectory() as d:
                r = live(dc.url(scheme, self.USER), 'retr', d)
                self.assertEqual(r.rc, 0, r)
                self.assertIn('retrieved %d of %d' % (len(nums), len(nums)), r.stdout)
                # PIPELINING: several RETR were in flight at once.
                inflight = int(r.stderr.split('pop3cli: ')[1].split()[0])
                self.assertGreater(inflight, 1, r)
                self.assertEqual(len(os.listdir(d)), len(self.server))
                bad = []
                for num, uid in nums.items():
                    with open(os.path.join(d, '%d.eml' % num), 'rb') as f:
                        if f.read() != self.server[uid]:
                            bad.append(num)
                self.assertEqual(bad, [], '%s: messages differ from poplib\'s' % scheme)

    def test_special_messages(self):
        # Dovecot's quirk: RETR ends a message without a final newline
        # with CRLF (poplib's answer shows the same).
        nums = dict(uidl(self.USER))
        first = self.ncorpus + 1
        want = [mailharness.served_form(m) for m in SPECIAL]
        want[0] += b'\r\n'
        with tempfile.TemporaryDirectory() as d:
            wanted = [str(first + i) for i in range(len(SPECIAL) + 1)]
            r = live(dc.url('pop3s', self.USER), 'retr', d, *wanted)
            self.assertEqual(r.rc, 0, r)
            for i, m in enumerate(want):
                with open(os.path.join(d, '%d.eml' % (first + i)), 'rb') as f:
                    got = f.read()
                self.assertEqual(got, m, 'special message %d' % i)
                self.assertEqual(got, self.server[nums[first + i]])
            with open(os.path.join(d, '%d.eml' % (first + len(SPECIAL))), 'rb') as f:
                self.assertEqual(f.read(), big_message())

    def test_top_headers(self):
        nums = dict(uidl(self.USER))
        num = self.ncorpus + 3   # '.starts with a dot: header'
        r = live(dc.url('pop3s', self.USER), 'top', str(num))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.stdout, '.starts with a dot: header\r\n\r\n')
        self.assertTrue(self.server[nums[num]].startswith(r.stdout.encode()))

    def test_size_limit(self):
        big = str(self.ncorpus + len(SPECIAL) + 1)
        with tempfile.TemporaryDirectory() as d:
            r = live(dc.url('pop3s', self.USER), 'retr', d, big,
                     opts=['--max-size', '100000'])
        self.assertEqual(r.rc, EXIT['PROTOCOL'], r)
        self.assertIn('size limit', r.message)
        self.assertEqual(r.errno, 'EMSGSIZE')


@unittest.skipUnless(HAVE_DOVECOT, 'dovecot not installed')
class Delete(unittest.TestCase):
    def setUp(self):
        self.user = 'del%d' % int(time.monotonic() * 1000)
        dc.add_user(self.user, 'pw-' + self.user)
        dc.append_many(self.user, 'INBOX', [
            b'Subject: m%d\r\nMessage-ID: <%d@del>\r\n\r\nbody %d\r\n' % (i, i, i)
            for i in range(1, 4)])
        self.before = uidl(self.user)
        self.assertEqual(len(self.before), 3)

    def test_dele_without_quit_deletes_nothing(self):
        r = live(dc.url('pop3s', self.user), 'dele-drop', '2', debug=True)
        self.assertEqual(r.rc, 0, r)
        self.assertIn('dropped without QUIT', r.stdout)
        self.assertIn('DELE 2', sent_lines(r.stderr))
        self.assertNotIn('QUIT', sent_lines(r.stderr))
        self.assertEqual(uidl(self.user), self.before)
        self.assertEqual(len(retrieved_by_poplib(self.user)), 3)

    def test_dele_and_quit_deletes(self):
        r = live(dc.url('pop3', self.user), 'dele', '2', '3', debug=True)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sent_lines(r.stderr)[-3:], ['DELE 2', 'DELE 3', 'QUIT'])
        after = uidl(self.user)
        self.assertEqual([u for _, u in after], [self.before[0][1]])
        self.assertEqual(list(retrieved_by_poplib(self.user)), [self.before[0][1]])

    def test_dele_missing_message(self):
        r = live(dc.url('pop3s', self.user), 'dele', '9')
        self.assertEqual(r.rc, EXIT['NO'], r)
        self.assertEqual(r.errno, 'ENOENT')
        self.assertEqual(uidl(self.user), self.before)


# -------------------------------------------------------------- fake server

USER, PASSWORD = 'alice', 'secret'
SASL_PLAIN = base64.b64encode(b'\0alice\0secret').decode()  # AGFsaWNlAHNlY3JldA==
PKI = None
_pki_dir = None

GREETING_TO_TLS = """
S: +OK fake POP3 server ready
C: CAPA
S: +OK
S: STLS
S: USER
S: SASL PLAIN
S: .
C: STLS
S: +OK Begin TLS negotiation now.
TLS
C: CAPA
S: +OK
S: UIDL
S: RESP-CODES
S: SASL PLAIN
S: .
C: AUTH PLAIN %s
""" % SASL_PLAIN


def setUpFake():
    global PKI, _pki_dir
    if PKI is None:
        _pki_dir = tempfile.mkdtemp(prefix='mailfs-pop3-pki-')
        PKI = mailharness.make_pki(_pki_dir)


class FakeServer(imapfake.TranscriptChecks, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        setUpFake()

    @classmethod
    def tearDownClass(cls):
        if _pki_dir:
            shutil.rmtree(_pki_dir, ignore_errors=True)
        globals()['PKI'] = None

    def converse(self, text, command, *args):
        t = imapfake.Transcript.parse(text, source='pop3-' + self.id().split('.')[-1])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(PKI['server'], PKI['server.key'])
        with imapfake.FakeServer(t, tls_context=ctx) as srv:
            r = cli('pop3://%s@localhost:%d' % (USER, srv.port), command, *args,
                    password=PASSWORD, cafile=PKI['ca'], timeout_ms=5000)
        return srv, r

    def assertNoSecret(self, srv, r):
        self.assertNotIn(PASSWORD.encode(), srv.raw, self.explain(srv, r))
        self.assertNotIn(SASL_PLAIN.encode(), srv.raw, self.explain(srv, r))
        for line in srv.lines:
            self.assertNotRegex(line, rb'(?i)^(USER|PASS|AUTH|APOP)\b', self.explain(srv, r))

    def test_01_stls_not_offered(self):
        srv, r = self.converse("""
S: +OK fake POP3 server ready
C: CAPA
S: +OK
S: USER
S: SASL PLAIN
S: .
""", 'stat')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, EXIT['NOTLS'], self.explain(srv, r))
        self.assertIn('does not offer STLS', r.message)
        self.assertEqual(srv.lines, [b'CAPA'])
        self.assertEqual(srv.after, b'')
        self.assertFalse(srv.tls)
        self.assertNoSecret(srv, r)

    def test_02_stls_injection(self):
        # The +OK and forged plaintext arrive in one write: the client must
        # not start TLS with unread plaintext in its buffer.
        srv, r = self.converse("""
S: +OK fake POP3 server ready
C: CAPA
S: +OK
S: STLS
S: .
C: STLS
S: +OK Begin TLS negotiation now.
S: +OK injected
""", 'stat')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, EXIT['PROTOCOL'], self.explain(srv, r))
        self.assertIn('injection', r.message)
        # Not even a TLS ClientHello after the +OK.
        self.assertEqual(srv.raw, b'CAPA\r\nSTLS\r\n', self.explain(srv, r))
        self.assertNoSecret(srv, r)

    def test_03_stls_and_no_uidl(self):
        srv, r = self.converse(GREETING_TO_TLS + """
S: +OK Logged in.
C: CAPA
S: +OK
S: TOP
S: RESP-CODES
S: .
C: UIDL
S: -ERR Unknown command: UIDL
C: QUIT
S: +OK
""", 'uidl')
        self.assertPlayed(srv, r)
        self.assertTrue(srv.tls)
        self.assertEqual(r.rc, EXIT['NO'], self.explain(srv, r))
        self.assertEqual(r.errno, 'ENOTSUP')
        self.assertIn('does not support UIDL: Unknown command: UIDL', r.message)
        # The password went only inside TLS, after STLS and a new CAPA.
        self.assertEqual(srv.lines[:3], [b'CAPA', b'STLS', b'CAPA'])
        self.assertEqual(srv.after, b'')

    def test_04_top_fallback(self):
        srv, r = self.converse(GREETING_TO_TLS + """
S: +OK Logged in.
C: CAPA
S: -ERR no CAPA after login
C: TOP 2 0
S: +OK
S: Message-ID: <2@fake>
S: ..dotted: header
S:
S: .
C: QUIT
S: +OK bye
""", 'top', '2')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout, 'Message-ID: <2@fake>\r\n.dotted: header\r\n\r\n')

    def test_05_in_use(self):
        srv, r = self.converse(GREETING_TO_TLS + """
S: -ERR [IN-USE] Mailbox is locked by another POP3 session
""", 'stat')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, EXIT['NO'], self.explain(srv, r))
        self.assertEqual(r.errno, 'EBUSY')
        self.assertIn('locked by another client', r.message)
        self.assertIn('[IN-USE] Mailbox is locked by another POP3 session', r.message)
        self.assertEqual(srv.after, b'')

    def test_06_auth_failed_text(self):
        srv, r = self.converse(GREETING_TO_TLS + """
S: -ERR [AUTH] Authentication failed.
""", 'stat')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, EXIT['AUTH'], self.explain(srv, r))
        self.assertIn('[AUTH] Authentication failed.', r.message)

    def test_07_pipelined_retr(self):
        with tempfile.TemporaryDirectory() as d:
            srv, r = self.converse(GREETING_TO_TLS + """
S: +OK Logged in.
C: CAPA
S: +OK
S: PIPELINING
S: .
C: RETR 1
C: RETR 2
C: RETR 3
S: +OK
S: one
S: .
S: -ERR [SYS/TEMP] cannot open message 2
S: +OK
S: ..three
S: .
C: QUIT
S: +OK
""", 'retr', d, '1', '2', '3')
            self.assertPlayed(srv, r)
            self.assertEqual(r.rc, EXIT['NO'], self.explain(srv, r))
            self.assertEqual(r.errno, 'EAGAIN')
            self.assertIn('retrieved 2 of 3', r.stdout)
            self.assertIn('3 commands in flight', r.stderr)
            self.assertEqual(sorted(os.listdir(d)), ['1.eml', '3.eml'])
            with open(os.path.join(d, '3.eml'), 'rb') as f:
                self.assertEqual(f.read(), b'.three\r\n')


if __name__ == '__main__':
    mailharness.run_tests()
