#!/usr/bin/env python3
"""The IMAP client (through imapcli) against a scripted fake server.

Only the cases a real server cannot produce on demand: no STARTTLS, PREAUTH
in plaintext, STARTTLS injection, malformed and truncated literals, stalls,
BYE mid-command, refused logins, pipelining checked from the server's side.
Each test plays a transcript from tests/fake/ (format: tests/fake/imapfake.py)
and checks the exact client dialogue and imapcli's exit class and message.

Environment: MAILFS_IMAPCLI (the imapcli program; else MAILFS_BUILD/tests/
imapcli).  Needs the openssl program for the test PKI.  Exit 0 when every
test passed, 1 otherwise; the last line says "N passed, N failed".
"""

import base64
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import resource
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'fake'))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import imapfake  # noqa: E402
import mailharness  # noqa: E402

IMAPCLI = mailharness.test_tool('imapcli')

EXIT = mailharness.CLI_EXIT   # imapcli's exit code for each error class

USER, PASSWORD = 'alice', 'secret'
SASL_PLAIN = base64.b64encode(b'\0alice\0secret').decode()  # AGFsaWNlAHNlY3JldA==
CLI_TIMEOUT = 20.0    # seconds; no imapcli run may take longer
CLIENT_WAIT_MS = 5000  # imapcli --timeout unless a test says otherwise

PKI = None  # {name: path} from mailharness.make_pki()
_pki_dir = None


def setUpModule():
    global PKI, _pki_dir
    _pki_dir = tempfile.mkdtemp(prefix='mailfs-fake-pki-')
    PKI = mailharness.make_pki(_pki_dir)


def tearDownModule():
    if _pki_dir:
        shutil.rmtree(_pki_dir, ignore_errors=True)


def server_context(cert='server'):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(PKI[cert], PKI[cert + '.key'])
    return ctx


def run_cli(port, command, *args, notls=False, timeout_ms=CLIENT_WAIT_MS,
            password=PASSWORD, host='localhost', options=()):
    argv = [IMAPCLI, '--password-stdin', '--cafile', PKI['ca'],
            '--timeout', str(timeout_ms)] + list(options)
    if notls:
        argv.append('--notls')
    argv += ['imap://%s@%s:%d' % (USER, host, port), command] + list(args)
    return mailharness.run_tool(argv, password, CLI_TIMEOUT, last=True)


class TranscriptFormatTest(unittest.TestCase):
    """The fake server's own transcript language (tests/fake/imapfake.py)."""

    TEXT = r"""
# comment
DATA body a\\0b\r\n\0\xff{x}
S: * OK hi
C: A1 NOOP
S. {tag} OK {99} \\x41\x41\x20
S: {literal:body}
C~ (?P<word>[a-z]+)
S: {word}
"""

    def test_00_escapes_substitutions_and_single_write(self):
        t = imapfake.Transcript.parse(self.TEXT)
        self.assertEqual(t.data['body'], b'a\\0b\r\n\0\xff{x}')
        with imapfake.FakeServer(t, step_timeout=5) as srv:
            with socket.create_connection(('127.0.0.1', srv.port), timeout=5) as s:
                with s.makefile('rb') as f:
                    self.assertEqual(f.readline(), b'* OK hi\r\n')
                    s.sendall(b'A1 NOOP\r\n')
                    want = b'A1 OK {99} \\x41A {11}\r\na\\0b\r\n\0\xff{x}\r\n'
                    self.assertEqual(f.read(len(want)), want)
                    s.sendall(b'echo\r\n')
                    self.assertEqual(f.readline(), b'echo\r\n')
            srv.wait(5)
        self.assertIsNone(srv.failure, srv.dialogue())
        self.assertTrue(srv.done)
        self.assertEqual(srv.lines, [b'A1 NOOP', b'echo'])
        self.assertEqual(srv.captures, {'tag': 'A1', 'word': 'echo'})
        sends = [d for who, d in srv.log if who == 'S']
        self.assertEqual(len(sends), 3, 'consecutive S lines go in one write')

    def test_00b_mismatch_is_reported(self):
        t = imapfake.Transcript.parse('S: * OK hi\nC: A1 NOOP\nS: {tag} OK\n')
        with imapfake.FakeServer(t, step_timeout=5) as srv:
            with socket.create_connection(('127.0.0.1', srv.port), timeout=5) as s:
                s.sendall(b'A1 LOGOUT\r\n')
                with s.makefile('rb') as f:
                    self.assertEqual(f.read(), b'* OK hi\r\n')
            srv.wait(5)
        self.assertIn("expected 'A1 NOOP', got 'A1 LOGOUT'", srv.failure)
        self.assertFalse(srv.done)


class FakeServerTest(imapfake.TranscriptChecks, unittest.TestCase):
    maxDiff = None

    def converse(self, transcript, command, *args, data=None, cert='server',
                 drip=0.0, **cli):
        """Play TRANSCRIPT to one imapcli run; return (server, result)."""
        t = imapfake.Transcript.load(transcript, data)
        with imapfake.FakeServer(t, tls_context=server_context(cert), drip=drip) as srv:
            r = run_cli(srv.port, command, *args, **cli)
        return srv, r

    def assertFails(self, srv, r, *classes):
        """imapcli failed with one of CLASSES, quickly, in one line."""
        codes = [EXIT[c] for c in classes]
        self.assertIn(r.rc, codes, self.explain(srv, r))
        self.assertRegex(r.message, r'^imapcli: [^\n]+: .+', self.explain(srv, r))

    def assertNoSecret(self, srv, r):
        """Neither the password nor a login command went over the wire."""
        self.assertNotIn(PASSWORD.encode(), srv.raw, self.explain(srv, r))
        self.assertNotIn(SASL_PLAIN.encode(), srv.raw, self.explain(srv, r))
        for line in srv.lines:
            self.assertNotRegex(line, rb'(?i)^\S+ (LOGIN|AUTHENTICATE)\b',
                                self.explain(srv, r))

    # ------------------------------------------------------------- STARTTLS

    def test_01_starttls_not_offered(self):
        srv, r = self.converse('notls_no_starttls.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'NOTLS')
        self.assertIn('does not offer STARTTLS', r.message)
        self.assertEqual(srv.lines, [b'A1 CAPABILITY'])
        self.assertEqual(srv.after, b'')
        self.assertNoSecret(srv, r)

    def test_01b_starttls_not_in_greeting_caps(self):
        srv, r = self.converse('notls_greeting_caps.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'NOTLS')
        self.assertEqual(srv.raw, b'', 'the client had nothing to ask' + self.explain(srv, r))

    def test_02_preauth_in_plaintext(self):
        srv, r = self.converse('notls_preauth.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'NOTLS')
        self.assertIn('PREAUTH', r.message)
        self.assertEqual(srv.raw, b'', self.explain(srv, r))

    def test_03_starttls_injection(self):
        srv, r = self.converse('starttls_injection.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('injection', r.message)
        self.assertEqual(srv.lines, [b'A1 STARTTLS'])
        # Not even a TLS ClientHello (0x16 0x03 ...) after the OK.
        self.assertEqual(srv.raw, b'A1 STARTTLS\r\n', self.explain(srv, r))
        self.assertNoSecret(srv, r)

    def check_starttls_login(self, transcript):
        srv, r = self.converse(transcript, 'list')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertTrue(srv.tls)
        # The capabilities are asked for again over TLS, before login.
        self.assertEqual(srv.lines[1], b'A2 CAPABILITY')
        self.assertEqual(base64.b64decode(srv.captures['ir'], validate=True),
                         b'\0alice\0secret')
        # The password only ever crossed the wire inside TLS: the first
        # plaintext line was STARTTLS and nothing else preceded the handshake.
        self.assertEqual(srv.lines[0], b'A1 STARTTLS')
        self.assertEqual(srv.after, b'')
        return srv, r

    def test_04_starttls_good_path_sasl_ir(self):
        srv, r = self.check_starttls_login('starttls_ok.imap')
        self.assertEqual(r.stdout.splitlines(), [
            '8\t/\tINBOX\tINBOX',
            '200008\t/\tSent\tSent',
            '4\t/\t&AMk-t&AOk-\tÉté',
            '400008\t/\tPapierkorb\tPapierkorb',
        ])

    def test_04b_starttls_good_path_continuation(self):
        srv, r = self.check_starttls_login('starttls_ok_no_sasl_ir.imap')
        self.assertEqual(r.stdout.splitlines(), ['8\t.\tINBOX\tINBOX'])
        self.assertIn(b'A3 AUTHENTICATE PLAIN', srv.lines)

    def test_04c_starttls_caps_from_before_tls_forgotten(self):
        srv, r = self.converse('starttls_caps_replaced.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'AUTH')
        self.assertEqual(srv.lines, [b'A1 STARTTLS', b'A2 CAPABILITY'])
        self.assertEqual(srv.after, b'')
        self.assertNoSecret(srv, r)

    def test_04d_starttls_wrong_certificate(self):
        srv, r = self.converse('starttls_wronghost.imap', 'caps', cert='wronghost')
        self.assertFails(srv, r, 'TLS_VERIFY')
        self.assertIn('wrong host', r.message)
        self.assertIsNotNone(srv.tls_error, self.explain(srv, r))
        self.assertEqual(srv.lines, [b'A1 STARTTLS'])
        self.assertNoSecret(srv, r)

    def test_04e_starttls_refused(self):
        srv, r = self.converse('starttls_refused.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'NO', 'NOTLS')
        self.assertIn('TLS is not available right now', r.message)
        self.assertEqual(srv.after, b'')
        self.assertNoSecret(srv, r)

    def test_04f_starttls_hangup_instead_of_handshake(self):
        srv, r = self.converse('starttls_close.imap', 'caps')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'TLS', 'CONNECT')
        self.assertLess(r.elapsed, 3, self.explain(srv, r))
        self.assertNoSecret(srv, r)

    # ------------------------------------------------------------- literals

    def check_fails_fast(self, transcript, classes, data=None, command='fetch'):
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse(transcript, command, 'INBOX', out, data=data,
                                   notls=True)
            self.assertEqual(os.listdir(out), [], 'no partial message file')
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, *classes)
        # Well inside the client's 5 s timeout: it did not wait for more.
        self.assertLess(r.elapsed, 3, self.explain(srv, r))
        self.assertEqual(srv.after, b'', self.explain(srv, r))
        return srv, r

    def test_05_literal_size_overflow(self):
        srv, r = self.check_fails_fast('literal_overflow.imap', ['PROTOCOL'])
        self.assertIn('malformed response', r.message)

    def test_05b_literal_over_limit(self):
        srv, r = self.check_fails_fast('literal_too_big.imap', ['PROTOCOL'])
        self.assertIn('limit', r.message)

    def test_05c_disconnect_mid_literal(self):
        srv, r = self.check_fails_fast('literal_short_close.imap',
                                       ['CONNECT', 'PROTOCOL'])
        self.assertIn('closed the connection', r.message)

    def test_05d_disconnect_mid_streamed_literal(self):
        part = (b'Subject: big\r\n\r\n' + bytes(range(256)) * 40)[:10000]
        srv, r = self.check_fails_fast('literal_streamed_short_close.imap',
                                       ['CONNECT', 'PROTOCOL'],
                                       data={'part': part})
        self.assertIn('closed the connection', r.message)

    # ------------------------------------------------------------- timeouts

    def check_timeout(self, transcript, *args, lines=None, notls=True,
                      text='did not answer within 2 s'):
        srv, r = self.converse(transcript, *args, timeout_ms=2000, notls=notls)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'TIMEOUT')
        self.assertIn(text, r.message)
        self.assertGreaterEqual(r.elapsed, 1.9, self.explain(srv, r))
        self.assertLess(r.elapsed, 5, self.explain(srv, r))
        if lines is not None:
            self.assertEqual(srv.lines, lines)
        return srv, r

    def test_06_stall_after_greeting(self):
        self.check_timeout('stall_after_greeting.imap', 'caps',
                           lines=[b'A1 CAPABILITY'])

    def test_06b_stall_before_greeting(self):
        self.check_timeout('stall_no_greeting.imap', 'caps', lines=[])

    def test_06c_stall_mid_line(self):
        self.check_timeout('stall_mid_line.imap', 'caps',
                           lines=[b'A1 CAPABILITY'])

    def test_06d_stall_mid_literal(self):
        with tempfile.TemporaryDirectory() as out:
            self.check_timeout('stall_mid_literal.imap', 'fetch', 'INBOX', out)

    def test_06e_stall_instead_of_tls_handshake(self):
        srv, r = self.check_timeout('starttls_stall_handshake.imap', 'caps',
                                    notls=False, text='TLS handshake with localhost timed out')
        self.assertNoSecret(srv, r)

    # ------------------------------------------------------------ pipelining

    def check_pipelined_fetch(self, drip=0.0):
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse('fetch_pipelined.imap', 'fetch', 'INBOX', out, '2',
                                   notls=True, drip=drip)
            self.assertPlayed(srv, r)
            self.assertEqual(r.rc, 0, self.explain(srv, r))
            self.assertIn('fetched 6 of 6', r.stdout)
            self.assertIn('3 commands in flight', r.stderr)
            files = {}
            for name in os.listdir(out):
                with open(os.path.join(out, name), 'rb') as f:
                    files[name] = f.read()
        data = srv.transcript.data
        want = {'%d.eml' % uid: data['m%d' % uid] for uid in (3, 4, 7, 8, 9, 12)}
        self.assertEqual(files, want)
        # The three body fetches reached the server before any answer.
        fetches = [i for i, (who, line) in enumerate(srv.log)
                   if who == 'C' and b'BODY.PEEK[]' in line]
        first_answer = next(i for i, (who, d) in enumerate(srv.log)
                            if who == 'S' and b'BODY[] {' in d)
        self.assertEqual(len(fetches), 3)
        self.assertLess(max(fetches), first_answer)
        self.assertEqual(srv.after, b'')

    def test_07_pipelined_fetch(self):
        self.check_pipelined_fetch()

    def test_07b_pipelined_fetch_one_byte_per_write(self):
        # Every response split at every byte, literals included.
        self.check_pipelined_fetch(drip=0.0002)

    def test_07c_streamed_literal_refetched(self):
        small = b'Subject: small\r\n\r\nhi\r\n'
        big = (b'Subject: big\r\n\r\n' +
               (bytes(range(256)) + b'\r\n\n\r\0') * 1200)[:300000]
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse('fetch_streamed.imap', 'fetch', 'INBOX', out,
                                   data={'small': small, 'big': big}, notls=True)
            self.assertPlayed(srv, r)
            self.assertEqual(r.rc, 0, self.explain(srv, r))
            with open(os.path.join(out, '1.eml'), 'rb') as f:
                self.assertEqual(f.read(), small)
            with open(os.path.join(out, '2.eml'), 'rb') as f:
                self.assertTrue(f.read() == big, '2.eml differs from what was sent')

    def test_07d_bodies_streamed_as_they_arrive(self):
        small = b'Subject: small\r\n\r\nhi\r\n'
        big = (b'Subject: big\r\n\r\n' +
               (bytes(range(256)) + b'\r\n\n\r\0') * 1200)[:300000]
        big2 = (b'Subject: big2\r\n\r\n' + bytes(range(255, -1, -1)) * 2000)[:400001]
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse('fetch_stream.imap', 'fetchstream', 'INBOX', out,
                                   data={'small': small, 'big': big, 'big2': big2},
                                   notls=True)
            self.assertPlayed(srv, r)
            self.assertEqual(r.rc, 0, self.explain(srv, r))
            events = [l for l in r.stdout.splitlines()
                      if l.split()[0] in ('begin', 'done', 'abort')]
            self.assertEqual(events[0:2], ['begin 1 %d' % len(small), 'done 1 1'])
            # The UID comes after the body: begin does not know it yet.
            self.assertEqual(events[2], 'begin 0 %d' % len(big))
            self.assertRegex(events[3], r'^done 2 \d+$')
            self.assertEqual(events[4], 'begin 4 %d' % len(big2))
            self.assertRegex(events[5], r'^done 4 \d+$')
            self.assertEqual(events[6:], ['begin 0 %d' % len(big2), 'abort'])
            # Long bodies came in pieces, never whole.
            self.assertGreater(int(events[3].split()[2]), 1)
            largest = int(re.search(r'largest piece (\d+)', r.stdout).group(1))
            self.assertLess(largest, len(big))
            self.assertEqual(sorted(os.listdir(out)), ['1.eml', '2.eml', '4.eml'])
            for name, want in (('1.eml', small), ('2.eml', big), ('4.eml', big2)):
                with open(os.path.join(out, name), 'rb') as f:
                    self.assertTrue(f.read() == want, name + ' differs from what was sent')

    def test_07e_streamed_body_cut_short(self):
        big = (b'Subject: big\r\n\r\n' + bytes(range(256)) * 1200)[:300000]
        part = (b'Subject: cut\r\n\r\n' + bytes(range(256)) * 400)[:100000]
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse('fetch_stream_cut.imap', 'fetchstream', 'INBOX', out,
                                   data={'big': big, 'part': part}, notls=True)
            self.assertIsNone(srv.failure, self.explain(srv, r))
            self.assertFails(srv, r, 'CONNECT', 'PROTOCOL')
            self.assertLess(r.elapsed, 5, self.explain(srv, r))
            events = [l for l in r.stdout.splitlines()
                      if l.split()[0] in ('begin', 'done', 'abort')]
            self.assertEqual(len(events), 4, self.explain(srv, r))
            self.assertRegex(events[1], r'^done 1 \d+$')
            self.assertEqual(events[2:], ['begin 2 300000', 'abort'])
            self.assertEqual(os.listdir(out), ['1.eml'])
            with open(os.path.join(out, '1.eml'), 'rb') as f:
                self.assertTrue(f.read() == big)

    # -------------------------------------------------------------------- BYE

    def test_08_bye_mid_command(self):
        srv, r = self.converse('bye_mid_command.imap', 'select', 'INBOX', notls=True)
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'BYE', 'CONNECT')
        self.assertIn('Server shutting down for maintenance', r.message)

    def test_08b_bye_then_connection_kept_open(self):
        srv, r = self.converse('bye_then_stall.imap', 'select', 'INBOX', notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'BYE')
        self.assertIn('Server shutting down for maintenance', r.message)
        self.assertLess(r.elapsed, 3, 'waited after BYE' + self.explain(srv, r))
        self.assertEqual(srv.after, b'', self.explain(srv, r))

    def test_08c_bye_greeting(self):
        srv, r = self.converse('greeting_bye.imap', 'caps', notls=True)
        # "Too many connections": the server is busy, not broken.
        self.assertFails(srv, r, 'BUSY')
        self.assertIn('Too many connections from your address', r.message)
        self.assertEqual(srv.raw, b'', self.explain(srv, r))

    def test_08d_bye_with_pipelined_commands_in_flight(self):
        with tempfile.TemporaryDirectory() as out:
            srv, r = self.converse('bye_pipelined.imap', 'fetch', 'INBOX', out, '2',
                                   notls=True)
            self.assertIsNone(srv.failure, self.explain(srv, r))
            self.assertFails(srv, r, 'BYE')
            self.assertIn('Going down now', r.message)
            self.assertIn('3 commands in flight', r.stderr)
            self.assertLess(r.elapsed, 3, self.explain(srv, r))
            self.assertEqual(srv.after, b'', self.explain(srv, r))

    # ----------------------------------------------------------- login refused

    def test_09_logindisabled_without_auth_plain(self):
        srv, r = self.converse('logindisabled.imap', 'caps', notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'AUTH')
        self.assertIn('LOGINDISABLED', r.message)
        self.assertEqual(srv.raw, b'', self.explain(srv, r))

    def test_10_authenticate_refused(self):
        srv, r = self.converse('auth_no.imap', 'caps', notls=True)
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'AUTH')
        self.assertIn('Authentication failed (code 4711).', r.message)
        self.assertIn('alice', r.message)
        self.assertNotIn(PASSWORD, r.stdout + r.stderr)
        self.assertEqual(srv.after, b'')

    def test_10b_login_refused(self):
        srv, r = self.converse('login_no.imap', 'caps', notls=True,
                               password='se"cr\\et')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'AUTH')
        self.assertIn('Invalid credentials (try again).', r.message)
        self.assertEqual(srv.after, b'')

    def test_10c_login_literal_refused_before_password(self):
        srv, r = self.converse('login_literal_refused.imap', 'caps', notls=True,
                               password='pässwörd')
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'AUTH')
        self.assertNotIn('pässwörd'.encode(), srv.raw, self.explain(srv, r))
        self.assertEqual(srv.after, b'', self.explain(srv, r))

    # Regression: a NO before the continuation of a synchronising literal
    # must keep the server's text (it was lost once).
    def test_10e_login_literal_refused_text_quoted(self):
        srv, r = self.converse('login_literal_refused.imap', 'caps', notls=True,
                               password='pässwörd')
        self.assertFails(srv, r, 'AUTH')
        self.assertIn('no literals here', r.message)

    def test_10d_login_literal_after_continuation(self):
        srv, r = self.converse('login_literal.imap', 'list', notls=True,
                               password='pässwörd')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(), ['0\t/\tINBOX\tINBOX'])

    # ------------------------------------------------------- malformed input

    def test_11_line_over_parser_limit(self):
        long = b'X' * (2 * 1024 * 1024)
        srv, r = self.converse('line_too_long.imap', 'caps', data={'long': long},
                               notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11b_nesting_too_deep(self):
        srv, r = self.converse('nesting_too_deep.imap', 'caps',
                               data={'deep': b'(' * 100 + b')' * 100}, notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('nested', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11c_nul_outside_literal(self):
        srv, r = self.converse('nul_outside_literal.imap', 'caps', notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('NUL', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11d_answer_to_unsent_tag(self):
        srv, r = self.converse('unknown_tag.imap', 'select', 'INBOX', notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('A99', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11e_unsolicited_continuation(self):
        srv, r = self.converse('unsolicited_continuation.imap', 'select', 'INBOX',
                               notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('continuation', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11f_not_an_imap_server(self):
        srv, r = self.converse('greeting_garbage.imap', 'caps', notls=True)
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertEqual(srv.raw, b'', self.explain(srv, r))
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_11g_hangup_before_greeting(self):
        srv, r = self.converse('no_greeting_close.imap', 'caps', notls=True)
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'CONNECT')
        self.assertIn('closed the connection', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    # ------------------------------------------------------- capabilities

    # Regression: capabilities are read again after login when the tagged
    # OK carries none (post-login extensions were once ignored).
    def test_12_capabilities_read_again_after_login(self):
        srv, r = self.converse('caps_after_login.imap', 'select', 'INBOX', notls=True)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertIn('highestmodseq 715', r.stdout)

    # ------------------------------------------------------------------ IDLE
    # imap_idle() through "imapcli idle MBOX SECONDS".

    def idle(self, transcript, seconds, **cli):
        return self.converse(transcript, 'idle', 'INBOX', str(seconds),
                             notls=True, **cli)

    def assertNoDone(self, srv, r):
        self.assertNotIn(b'DONE', srv.lines, self.explain(srv, r))

    def test_13_idle_woken_by_exists(self):
        srv, r = self.idle('idle_exists.imap', 30)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(), [
            'exists 6', 'seen: OK', 'woke: EXISTS 7', 'woke: RECENT 1',
            'idle: woken'])
        # Woken by the EXISTS after the 1 s stall, not by the keep-alive
        # and not by the 30 s running out.
        self.assertGreaterEqual(r.elapsed, 0.9, self.explain(srv, r))
        self.assertLess(r.elapsed, 4, self.explain(srv, r))
        self.assertEqual(srv.lines[2:], [b'A3 IDLE', b'DONE', b'A4 LOGOUT'])

    def test_13b_idle_news_in_the_same_write(self):
        srv, r = self.idle('idle_exists_same_write.imap', 30)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(),
                         ['exists 6', 'woke: EXISTS 7', 'idle: woken'])
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def check_idle_refused(self, transcript, cls, text):
        srv, r = self.idle(transcript, 30)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, cls)
        self.assertIn(text, r.message)
        self.assertNoDone(srv, r)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_13c_idle_refused_no(self):
        self.check_idle_refused('idle_refused_no.imap', 'NO',
                                'Too many idling sessions')

    def test_13d_idle_refused_bad(self):
        self.check_idle_refused('idle_refused_bad.imap', 'BAD',
                                'Unknown command IDLE')

    def test_13e_idle_bye(self):
        srv, r = self.idle('idle_bye.imap', 30)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'BYE')
        self.assertIn('Server shutting down for maintenance', r.message)
        self.assertIn('seen: BYE', r.stdout)
        self.assertNoDone(srv, r)
        self.assertLess(r.elapsed, 3, 'waited after BYE' + self.explain(srv, r))

    def test_13f_idle_time_up(self):
        srv, r = self.idle('idle_time_up.imap', 1.5)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(), ['exists 6', 'idle: time up'])
        self.assertGreaterEqual(r.elapsed, 1.4, self.explain(srv, r))
        self.assertLess(r.elapsed, 4, self.explain(srv, r))

    def test_13g_idle_stall_after_done(self):
        srv, r = self.check_timeout('idle_stall_after_done.imap', 'idle',
                                    'INBOX', '30')
        self.assertEqual(srv.lines[2:], [b'A3 IDLE', b'DONE'])
        self.assertIn('woke: EXISTS 7', r.stdout)

    def test_13h_idle_no_continuation(self):
        srv, r = self.check_timeout('idle_no_continuation.imap', 'idle',
                                    'INBOX', '30')
        self.assertEqual(srv.lines[2:], [b'A3 IDLE'])

    # ---------------------------------------------------------------- resync
    # imap_resync() through "imapcli resync MBOX UIDVALIDITY MODSEQ UIDNEXT".

    def resync(self, transcript, *args, **cli):
        return self.converse(transcript, 'resync', 'INBOX', *args,
                             notls=True, **cli)

    def test_14_resync_qresync_pipelined(self):
        srv, r = self.resync('resync_qresync.imap', '42', '100', '10',
                             'check=5:9')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(), [
            'vanished 3 5',
            'vanished 9 9',
            'flags 7 120 (\\Seen)',
            'new 11 42 (\\Flagged $Work)',
            'flags 7 120 (\\Seen)',
            'flags 8 3 ()',
            'uidvalidity 42',
            'uidnext 12',
            'exists 5',
            'highestmodseq 130',
            'qresync on',
        ])
        # The three commands reached the server before any answer to them.
        sent = [i for i, (who, line) in enumerate(srv.log)
                if who == 'C' and (b'EXAMINE' in line or b'UID FETCH' in line)]
        first_answer = next(i for i, (who, d) in enumerate(srv.log)
                            if who == 'S' and b'VANISHED' in d)
        self.assertEqual(len(sent), 3, self.explain(srv, r))
        self.assertLess(max(sent), first_answer, self.explain(srv, r))
        self.assertEqual(srv.after, b'')

    def test_14b_resync_malformed_vanished_ignored(self):
        srv, r = self.resync('resync_vanished_malformed.imap', '42', '100', '0')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        # Only the well-formed set; nothing of the malformed ones, not
        # even the ranges before the error.
        self.assertEqual([l for l in r.stdout.splitlines()
                          if l.startswith('vanished')], ['vanished 12 12'],
                         self.explain(srv, r))
        self.assertIn('exists 5', r.stdout)

    def test_14c_resync_huge_vanished_range(self):
        srv, r = self.resync('resync_vanished_huge.imap', '42', '100', '0')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual([l for l in r.stdout.splitlines()
                          if l.startswith('vanished')],
                         ['vanished 1 4294967295', 'vanished 2 4294967295',
                          'vanished 7 7'])
        self.assertIn('exists 0', r.stdout.splitlines(), self.explain(srv, r))
        self.assertLess(r.elapsed, 3, 'expanded?' + self.explain(srv, r))

    def test_14d_resync_changedsince_refused(self):
        srv, r = self.resync('resync_changedsince_bad.imap', '42', '100', '10')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'BAD')
        self.assertIn('CHANGEDSINCE not supported here', r.message)
        out = r.stdout.splitlines()
        self.assertEqual(out[:2], ['new 11 42 ()', 'noop ok'],
                         self.explain(srv, r))
        self.assertEqual(srv.lines[-1], b'A5 NOOP')
        self.assertEqual(srv.after, b'', self.explain(srv, r))

    def test_14f_resync_select_refused(self):
        srv, r = self.resync('resync_select_no.imap', '42', '100', '10')
        self.assertPlayed(srv, r)
        self.assertFails(srv, r, 'NO')
        self.assertIn("[NONEXISTENT] Mailbox doesn't exist: INBOX", r.message)
        self.assertEqual(r.stdout.splitlines()[0], 'noop ok',
                         self.explain(srv, r))
        self.assertEqual(srv.after, b'', self.explain(srv, r))

    def test_14e_resync_plain(self):
        srv, r = self.resync('resync_plain.imap', '42', '100', '10', 'plain')
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines(), [
            'new 10 7 (\\Draft)',
            'flags 2 0 (\\Seen)',
            'flags 6 0 (\\Answered \\Seen)',
            'uidvalidity 42',
            'uidnext 11',
            'exists 2',
            'highestmodseq 0',
            'qresync off',
        ])

    # ---------------------------------------------------- COMPRESS=DEFLATE

    def test_15_compress_accepted(self):
        # Byte by byte too: the compressed stream split at every byte.
        for drip in (0.0, 0.001):
            srv, r = self.converse('compress_ok.imap', 'compressed', notls=True,
                                   drip=drip)
            # Dripping, the client has the LOGOUT's answer before the last
            # bytes of its flush, and may close while they are sent.
            self.assertIsNone(srv.failure, self.explain(srv, r))
            self.assertEqual(r.rc, 0, self.explain(srv, r))
            self.assertEqual(r.stdout.splitlines()[0], 'compressed yes')
            self.assertEqual(srv.lines[-2:], [b'A3 NOOP', b'A4 LOGOUT'])

    def test_15b_compress_data_with_the_ok(self):
        srv, r = self.converse('compress_same_write.imap', 'compressed', notls=True)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines()[0], 'compressed yes')

    def test_15c_compress_refused_goes_on_plain(self):
        srv, r = self.converse('compress_refused.imap', 'compressed', notls=True)
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines()[0], 'compressed no')
        # Plain text on the wire after the refusal.
        self.assertIn(b'A3 NOOP\r\nA4 LOGOUT\r\n', srv.raw)

    def test_15d_compress_off(self):
        srv, r = self.converse('compress_off.imap', 'compressed', notls=True,
                               options=['--no-compress'])
        self.assertPlayed(srv, r)
        self.assertEqual(r.rc, 0, self.explain(srv, r))
        self.assertEqual(r.stdout.splitlines()[0], 'compressed no')

    def test_15e_compress_corrupt_stream(self):
        srv, r = self.converse('compress_corrupt.imap', 'compressed', notls=True)
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertIn('bad compressed data', r.message)
        self.assertLess(r.elapsed, 3, self.explain(srv, r))

    def test_15f_compress_bomb(self):
        # About 1 MB on the wire; 1 GB once inflated, in one line.
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        chunk = b'a' * (1 << 20)
        bomb = [z.compress(b'* OK ')] + [z.compress(chunk) for _ in range(1024)]
        bomb = b''.join(bomb) + z.flush(zlib.Z_SYNC_FLUSH)
        self.assertLess(len(bomb), 1100 * 1024)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        srv, r = self.converse('compress_bomb.imap', 'compressed', notls=True,
                               data={'bomb': bomb})
        self.assertIsNone(srv.failure, self.explain(srv, r))
        self.assertFails(srv, r, 'PROTOCOL')
        self.assertLess(r.elapsed, 3, self.explain(srv, r))
        # imapcli's peak memory (KB); the bomb would be 1 GB.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak > before:
            self.assertLess(peak, 100 * 1024)


def main():
    if not os.access(IMAPCLI, os.X_OK):
        print('imapcli not found: set MAILFS_IMAPCLI (or MAILFS_BUILD)', file=sys.stderr)
        print('0 passed, 1 failed')
        return 1
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = (len(result.failures) + len(result.errors) +
              len(result.unexpectedSuccesses))
    passed = result.testsRun - failed - len(result.skipped)
    if result.expectedFailures:
        print('(%d of the passed are expected failures: known bugs)' %
              len(result.expectedFailures))
    print('%d passed, %d failed' % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
