#!/usr/bin/env python3
"""Checks that tests/harness/mailharness.py does what it claims, against the
real Dovecot it starts.  Exit 0 all passed, 1 a failure, 77 no dovecot."""

import datetime
import imaplib
import json
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness as mh  # noqa: E402

# What Dovecot's certificate names: localhost, and one provider under two
# names (tests/test_everyday.py maps them to 127.0.0.1).
SERVER_SAN = (('DNS', 'localhost'), ('DNS', 'imap.mail.test'), ('DNS', 'pop.mail.test'))


def served(data):
    """What Dovecot serves for appended DATA: every CRLF stored as LF, every
    LF served as CRLF (a CR already before the LF is not doubled)."""
    return re.sub(rb'(?<!\r)\n', b'\r\n', data.replace(b'\r\n', b'\n'))


def verify_error(port, host='localhost', addr='127.0.0.1', ctx=None):
    """Connect with TLS and return the SSLCertVerificationError, or None."""
    try:
        with socket.create_connection((addr, port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as e:
        return e


class HarnessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dc = mh.Dovecot()

    @classmethod
    def tearDownClass(cls):
        cls.dc.close()

    # ----- TLS and login

    def test_imaps_login_and_certificate(self):
        m = self.dc.imap('alice')
        try:
            cert = m.sock.getpeercert()
            self.assertEqual(cert['subjectAltName'], SERVER_SAN)
            typ, caps = m.capability()
            caps = set(caps[0].decode().upper().split())
            for cap in ('CONDSTORE', 'QRESYNC', 'IDLE', 'UIDPLUS', 'MOVE', 'SPECIAL-USE',
                        'LIST-EXTENDED', 'ENABLE', 'ID', 'SASL-IR', 'MULTIAPPEND',
                        'LITERAL+', 'NAMESPACE'):
                self.assertIn(cap, caps)
            typ, ns = m.namespace()
            self.assertIn(b'(("" "/"))', ns[0])
        finally:
            m.logout()

    def test_pre_login_capabilities(self):
        m = imaplib.IMAP4(self.dc.host, self.dc.ports['imap'], timeout=10)
        try:
            self.assertIn('STARTTLS', m.capabilities)
            m.starttls(ssl_context=self.dc.ssl_context())
            typ, caps = m.capability()
            self.assertIn(b'AUTH=PLAIN', caps[0])
            self.assertIn(b'AUTH=LOGIN', caps[0])
            self.assertNotIn(b'STARTTLS', caps[0])
        finally:
            m.shutdown()

    def test_starttls_and_plaintext_login_refused(self):
        m = imaplib.IMAP4(self.dc.host, self.dc.ports['imap'], timeout=10)
        try:
            with self.assertRaisesRegex(imaplib.IMAP4.error, 'AUTHENTICATIONFAILED'):
                m.login('alice', 'alicepw')
        finally:
            m.shutdown()
        m = imaplib.IMAP4(self.dc.host, self.dc.ports['imap'], timeout=10)
        try:
            with self.assertRaises(imaplib.IMAP4.error):
                m.authenticate('PLAIN', lambda _: b'\0alice\0alicepw')
        finally:
            m.shutdown()
        m = self.dc.imap_starttls('alice')
        try:
            self.assertEqual(m.sock.getpeercert()['subjectAltName'], SERVER_SAN)
            self.assertEqual(m.noop()[0], 'OK')
        finally:
            m.logout()

    def test_wrong_password_refused(self):
        with self.assertRaisesRegex(imaplib.IMAP4.error, 'AUTHENTICATIONFAILED'):
            self.dc.imap('alice', 'wrong')
        with self.assertRaisesRegex(imaplib.IMAP4.error, 'AUTHENTICATIONFAILED'):
            self.dc.imap('nosuchuser', 'x')
        with self.assertRaisesRegex(poplib.error_proto, r'-ERR \[AUTH\]'):
            self.dc.pop3('bob', 'wrong')
        m = self.dc.imap('bob')          # and the right one still works
        m.logout()

    def test_pop3s_and_stls(self):
        p = poplib.POP3_SSL(self.dc.host, self.dc.ports['pop3s'],
                            context=self.dc.ssl_context(), timeout=10)
        try:
            capa = p.capa()
            for c in ('UIDL', 'USER', 'SASL', 'TOP', 'PIPELINING'):
                self.assertIn(c, capa)
            self.assertIn('PLAIN', capa['SASL'])
            self.assertNotIn('STLS', capa)
            self.assertEqual(p.getwelcome()[:3], b'+OK')
            self.assertEqual(p.sock.getpeercert()['subjectAltName'], SERVER_SAN)
            p.user('bob')
            self.assertEqual(p.pass_('bobpw')[:3], b'+OK')
        finally:
            p.quit()
        p = poplib.POP3(self.dc.host, self.dc.ports['pop3'], timeout=10)
        try:
            capa = p.capa()
            self.assertIn('STLS', capa)
            self.assertIn('USER', capa)     # 127.0.0.1 counts as secured, see mailharness
            p.user('bob')
            with self.assertRaisesRegex(poplib.error_proto, r'-ERR \[AUTH\]'):
                p.pass_('bobpw')
        finally:
            p.close()
        p = self.dc.pop3_stls('bob')
        try:
            self.assertEqual(p.stat()[0], len(self.dc.pop3_messages('bob')))
        finally:
            p.quit()

    def test_ipv6_listeners(self):
        if not self.dc.ipv6:
            self.skipTest('no IPv6 loopback')
        for proto in ('imaps', 'pop3s'):
            with socket.create_connection(('::1', self.dc.ports[proto]), timeout=10) as s:
                with self.dc.ssl_context().wrap_socket(s, server_hostname='localhost') as t:
                    self.assertIn(t.recv(100)[:3], (b'* O', b'+OK'))

    # ----- certificates

    def test_ip_host_name_mismatch(self):
        e = verify_error(self.dc.ports['imaps'], host='127.0.0.1', ctx=self.dc.ssl_context())
        self.assertIsNotNone(e)
        self.assertEqual(e.verify_code, 64)      # X509_V_ERR_IP_ADDRESS_MISMATCH
        self.assertIn("mismatch, certificate is not valid for '127.0.0.1'", e.verify_message)
        self.assertIsNone(verify_error(self.dc.ports['imaps'], ctx=self.dc.ssl_context()))

    def test_bad_certificates(self):
        cases = {'expired': (10, 'certificate has expired'),
                 'unknown': (20, 'unable to get local issuer certificate'),
                 'selfsigned': (18, 'self-signed certificate'),
                 'wronghost': (62, "Hostname mismatch, certificate is not valid for "
                                   "'localhost'.")}
        for kind, (code, msg) in cases.items():
            with self.subTest(kind=kind), self.dc.bad_cert_server(kind) as srv:
                e = verify_error(srv.port, ctx=self.dc.ssl_context())
                self.assertIsNotNone(e)
                self.assertEqual((e.verify_code, e.verify_message), (code, msg))
        # Without verification the fake server completes the handshake and greets.
        with self.dc.bad_cert_server('expired') as srv:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with socket.create_connection((srv.address, srv.port), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname='localhost') as t:
                    self.assertEqual(t.recv(100), b'* OK fake\r\n')

    # ----- mailboxes

    def test_utf7(self):
        vectors = {'INBOX': 'INBOX', '&': '&-', 'a&b': 'a&-b', 'Entwürfe': 'Entw&APw-rfe',
                   '~peter/mail/台北/日本語': '~peter/mail/&U,BTFw-/&ZeVnLIqe-',
                   'Ünïcødé ✓': '&ANw-n&AO8-c&APg-d&AOk- &JxM-', '😀': '&2D3eAA-'}
        for plain, enc in vectors.items():
            self.assertEqual(mh.utf7_encode(plain), enc)
            self.assertEqual(mh.utf7_decode(enc), plain)

    def test_non_ascii_and_nested_mailboxes(self):
        for name in ('Entwürfe', '台北/日本語', 'Work/Projects/2024', 'a.b & c'):
            self.dc.create('bob', name)
        boxes = self.dc.list_mailboxes('bob')
        for name in ('Entwürfe', '台北', '台北/日本語', 'Work', 'Work/Projects',
                     'Work/Projects/2024', 'a.b & c', 'INBOX'):
            self.assertIn(name, boxes)
        self.assertIn('\\HasChildren', boxes['Work/Projects'])
        self.assertIn('\\HasNoChildren', boxes['Work/Projects/2024'])
        for name, flag in mh.SPECIAL_USE:
            self.assertIn(flag, boxes[name])
        m = self.dc.imap('bob')
        try:
            typ, data = m.list('""', '"Entw*"')
            self.assertEqual(data, [b'(\\HasNoChildren) "/" Entw&APw-rfe'])
        finally:
            m.logout()
        msg = b'Subject: t\r\n\r\nx\r\n'
        uid = self.dc.append('bob', '台北/日本語', msg)
        self.assertEqual(self.dc.fetch_bodies('bob', '台北/日本語'), {uid: msg})

    def test_dot_separator(self):
        with mh.Dovecot(separator='.', users={'carol': 'carolpw'}, ipv6=False) as dc:
            dc.create('carol', 'a/b')
            dc.create('carol', 'x.y')
            boxes = dc.list_mailboxes('carol')
            self.assertIn('a/b', boxes)
            self.assertIn('x', boxes)
            self.assertIn('x.y', boxes)
            m = dc.imap('carol')
            try:
                self.assertIn(b'"." a/b', b' '.join(m.list('""', '*')[1]))
            finally:
                m.logout()

    # ----- messages

    def test_append_roundtrip(self):
        msgs = [b'Subject: crlf\r\n\r\nline one\r\nline two\r\n',
                b'Subject: lf\n\nline one\nline two\n',
                b'Subject: no final newline\n\nlast',
                b'Subject: mixed\r\n\nbare lf\ncr only\rcr cr lf\r\r\nend\r\n',
                b'Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n',
                'Subject: 8bit\r\n\r\nGrüße, 台北 ✓\r\n'.encode('utf-8'),
                b'\n']
        date = datetime.datetime(2021, 5, 4, 3, 2, 1, tzinfo=datetime.timezone.utc)
        uids = [self.dc.append('alice', 'Roundtrip', d, flags=('\\Flagged', '$Work'),
                               date=date) for d in msgs]
        self.assertEqual(uids, list(range(uids[0], uids[0] + len(msgs))))
        bodies = self.dc.fetch_bodies('alice', 'Roundtrip')
        for uid, data in zip(uids, msgs):
            self.assertEqual(bodies[uid], served(data))
        self.assertEqual(bodies[uids[3]],
                         b'Subject: mixed\r\n\r\nbare lf\r\ncr only\rcr cr lf\r\nend\r\n')
        self.assertEqual(bodies[uids[2]], b'Subject: no final newline\r\n\r\nlast')
        flags = self.dc.flags('alice', 'Roundtrip')
        self.assertEqual(flags[uids[0]], {'\\Flagged', '$Work'})
        m = self.dc.imap('alice')
        try:
            m.select('Roundtrip', readonly=True)
            typ, data = m.uid('FETCH', str(uids[0]), '(INTERNALDATE RFC822.SIZE)')
            self.assertIn(b'INTERNALDATE "04-May-2021 03:02:01 +0000"', data[0])
            size = int(re.search(rb'RFC822.SIZE (\d+)', data[0]).group(1))
            self.assertEqual(size, len(bodies[uids[0]]))
        finally:
            m.logout()
        self.assertEqual(self.dc.status('alice', 'Roundtrip')['MESSAGES'], len(msgs))

    def test_pop3_retr_matches_imap(self):
        self.dc.add_user('dave', 'davepw')
        msgs = [b'Subject: one\r\n\r\nhello\r\n.\r\n..dots\r\n',
                b'Subject: two\n\nbare lf\n',
                b'Subject: three\r\n\r\nno newline at end']
        for d in msgs:
            self.dc.append('dave', 'INBOX', d)
        imap = self.dc.fetch_bodies('dave', 'INBOX')
        pop = self.dc.pop3_messages('dave')
        self.assertEqual(len(pop), 3)
        got = sorted(pop.values())
        want = sorted(b if b.endswith(b'\r\n') else b + b'\r\n' for b in imap.values())
        self.assertEqual(got, want)
        self.assertIn(b'Subject: one\r\n\r\nhello\r\n.\r\n..dots\r\n', got)
        # Dovecot's POP3 RETR sets \Seen (pop3_no_flag_updates = no).
        self.assertEqual(self.dc.flags('dave', 'INBOX'), {u: {'\\Seen'} for u in (1, 2, 3)})

    def test_corpus(self):
        root = mh.corpus_dir()
        if not os.path.isdir(root):
            self.skipTest('no corpus at %s' % root)
        expect = {}
        for kind in ('nice', 'spam'):
            expect['corpus/spamassassin-' + kind] = sum(
                len(files) for _, _, files in os.walk(os.path.join(root, 'spamassassin', kind)))
        n = 0
        for name in os.listdir(os.path.join(root, 'imaptest')):
            if name.endswith('.mbox'):
                with open(os.path.join(root, 'imaptest', name), 'rb') as f:
                    n += sum(1 for line in f if line.startswith(b'From '))
        expect['corpus/imaptest'] = n
        expect['corpus/postal-mime'] = len(
            [n for n in os.listdir(os.path.join(root, 'postal-mime')) if n.endswith('.eml')])
        self.assertTrue(all(expect.values()), expect)

        self.dc.add_user('corpus', 'corpuspw')
        t = time.monotonic()
        loaded = self.dc.load_corpus('corpus')
        print('  corpus: %d messages in %.1f s' % (sum(map(len, loaded.values())),
                                                   time.monotonic() - t), file=sys.stderr)
        self.assertEqual({k: len(v) for k, v in loaded.items()}, expect)
        originals = mh.corpus_messages(root)
        for box, uids in loaded.items():
            self.assertEqual(self.dc.status('corpus', box)['MESSAGES'], expect[box])
            bodies = self.dc.fetch_bodies('corpus', box)
            self.assertEqual(sorted(bodies), sorted(uids))
            for uid, (label, data) in zip(uids, originals[box]):
                self.assertEqual(bodies[uid], served(data), label)
        boxes = self.dc.list_mailboxes('corpus')
        self.assertIn('\\HasChildren', boxes['corpus'])

    def test_generate(self):
        a = mh.generate_messages(50, seed=7)
        self.assertEqual(a, mh.generate_messages(50, seed=7))
        self.assertNotEqual(a, mh.generate_messages(50, seed=8))
        sizes = sorted(len(b) for b, _ in a)
        self.assertLess(sizes[len(sizes) // 2], 10000)
        self.assertTrue(any(b'Content-Transfer-Encoding: base64' in b for b, _ in
                            mh.generate_messages(200, seed=1)))
        t = time.monotonic()
        uids = self.dc.generate('bob', 'Generated', 300, seed=3)
        print('  generate: 300 messages in %.1f s' % (time.monotonic() - t), file=sys.stderr)
        self.assertEqual(len(uids), 300)
        bodies = self.dc.fetch_bodies('bob', 'Generated')
        want = mh.generate_messages(300, seed=3, to='bob@example.org')
        self.assertEqual([bodies[u] for u in uids], [b for b, _ in want])

    # ----- server control

    def test_stop_start_keeps_mail(self):
        uid = self.dc.append('alice', 'Persist', b'Subject: keep me\r\n\r\nbody\r\n')
        before = self.dc.fetch_bodies('alice', 'Persist')
        validity = self.dc.status('alice', 'Persist')['UIDVALIDITY']
        m = self.dc.imap('alice')
        t = time.monotonic()
        self.dc.stop()
        stop_time = time.monotonic() - t
        self.assertIsNone(self.dc.pid)
        with self.assertRaises(OSError):
            socket.create_connection((self.dc.address, self.dc.ports['imaps']), timeout=2).close()
        try:
            with self.assertRaises((imaplib.IMAP4.abort, OSError)):
                m.noop()
                m.noop()
        finally:
            m.shutdown()
        t = time.monotonic()
        self.dc.start()
        print('  stop %.1f s, start %.1f s' % (stop_time, time.monotonic() - t), file=sys.stderr)
        self.assertEqual(self.dc.fetch_bodies('alice', 'Persist'), before)
        self.assertIn(uid, before)
        self.assertEqual(self.dc.status('alice', 'Persist')['UIDVALIDITY'], validity)

    def test_port_taken_and_start_failure(self):
        dc = mh.Dovecot(users={'gina': 'ginapw'}, ipv6=False, start=False)
        try:
            blocker = socket.socket()
            blocker.bind(('127.0.0.1', dc.ports['imaps']))
            blocker.listen(1)
            taken = dc.ports['imaps']
            try:
                dc.start()               # first start: new ports are picked
            finally:
                blocker.close()
            self.assertNotEqual(dc.ports['imaps'], taken)
            dc.imap('gina').logout()
            dc.stop()
            with open(dc.config, 'a') as f:
                f.write('no_such_setting = 1\n')
            with self.assertRaisesRegex(mh.HarnessError, 'no_such_setting'):
                dc.start()
            self.assertIsNone(dc.pid)
        finally:
            dc.close()
        self.assertFalse(os.path.exists(dc.dir))

    def test_freeze_thaw(self):
        self.dc.freeze()
        try:
            with socket.create_connection((self.dc.address, self.dc.ports['imap']),
                                          timeout=5) as s:
                s.settimeout(0.5)
                with self.assertRaises(socket.timeout):
                    s.recv(10)
                self.dc.thaw()
                s.settimeout(10)
                self.assertEqual(s.recv(4), b'* OK')
        finally:
            self.dc.thaw()

    def test_doveadm_and_log(self):
        self.dc.append('bob', 'Admin', b'Subject: a\r\n\r\na\r\n')
        self.dc.append('bob', 'Admin', b'Subject: b\r\n\r\nb\r\n')
        out = self.dc.doveadm('mailbox', 'status', '-u', 'bob', 'messages uidvalidity',
                              'Admin').stdout
        self.assertIn('messages=2', out)
        self.dc.doveadm('mailbox', 'update', '-u', 'bob', '--uid-validity', '12345', 'Admin')
        self.assertEqual(self.dc.status('bob', 'Admin')['UIDVALIDITY'], 12345)
        self.dc.doveadm('expunge', '-u', 'bob', 'mailbox', 'Admin', 'uid', '1')
        self.assertEqual(list(self.dc.fetch_bodies('bob', 'Admin')), [2])
        self.assertRegex(self.dc.log(), r'imap-login: Info: Login: user=<bob>.*TLS')
        self.assertIn('Dovecot', self.dc.log_tail(5) + self.dc.log())


class CliTest(unittest.TestCase):
    def test_serve_detach_and_stop(self):
        d = tempfile.mkdtemp(prefix='mailfs-cli-')
        os.chmod(d, 0o755)
        script = os.path.join(HERE, 'harness', 'mailharness.py')
        watchdog = mh.Watchdog(d, d)
        try:
            p = subprocess.Popen([sys.executable, script, 'serve', '--dir', d,
                                  '--generate', '20', '--users', 'erin:erinpw,frank:frankpw',
                                  '--detach'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            pidfile = os.path.join(d, 'serve.pid')
            deadline = time.monotonic() + 30
            while not os.path.exists(pidfile) and p.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            if os.path.exists(pidfile):      # stop serve even if this test is killed
                with open(pidfile) as f:
                    watchdog.watch(int(f.read()))
            out, err = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0, err)
            info = json.loads(out)
            with open(os.path.join(d, 'harness.json')) as f:
                self.assertEqual(json.load(f), info)
            self.assertEqual(info['users'], {'erin': 'erinpw', 'frank': 'frankpw'})
            self.assertEqual(info['mailboxes'], {'INBOX': 20})
            self.assertEqual(info['urls']['imaps'], 'imaps://erin@localhost:%d'
                             % info['ports']['imaps'])
            ctx = ssl.create_default_context(cafile=info['ca'])
            m = imaplib.IMAP4_SSL('localhost', info['ports']['imaps'], ssl_context=ctx,
                                  timeout=10)
            m.login('erin', 'erinpw')
            self.assertEqual(m.select('INBOX', readonly=True), ('OK', [b'20']))
            m.logout()
            os.kill(info['pid'], 0)
            r = subprocess.run([sys.executable, script, 'stop', '--dir', d],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, 'harness.json')))
            with self.assertRaises(OSError):
                socket.create_connection(('127.0.0.1', info['ports']['imaps']),
                                         timeout=2).close()
        finally:
            try:                         # a failed test must not leave it running
                with open(os.path.join(d, 'harness.json')) as f:
                    subprocess.run([sys.executable, script, 'stop', '--dir', d], timeout=60)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            watchdog.close()
            shutil.rmtree(d, ignore_errors=True)


def main():
    mh.require_dovecot()
    t = time.monotonic()
    load = unittest.defaultTestLoader.loadTestsFromTestCase
    suite = unittest.TestSuite([load(HarnessTest), load(CliTest)])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print('%d passed, %d failed (%d skipped) in %.1f s'
          % (passed, failed, len(result.skipped), time.monotonic() - t), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
