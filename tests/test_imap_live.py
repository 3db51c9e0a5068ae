#!/usr/bin/env python3
"""The IMAP client (through tests/imapcli) against a real Dovecot.

Every byte the client fetches is compared with what Dovecot returns to an
independent client (Python's imaplib, in the harness)."""

import os
import select
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'harness'))
import mailharness  # noqa: E402

IMAPCLI = mailharness.test_tool('imapcli')

EXIT_TLS_VERIFY = mailharness.CLI_EXIT['TLS_VERIFY']
EXIT_AUTH = mailharness.CLI_EXIT['AUTH']

dc = None


def setUpModule():
    global dc
    mailharness.require_dovecot()
    dc = mailharness.Dovecot()


def tearDownModule():
    if dc is not None:
        dc.close()


def cli(url, *args, password=None, cafile=True, debug=False, timeout=60):
    user = url.split('://', 1)[1].split('@', 1)[0]
    cmd = [IMAPCLI, '--password-stdin']
    if cafile:
        cmd += ['--cafile', dc.ca]
    if debug:
        cmd += ['--debug']
    cmd += [url] + list(args)
    pw = dc.users.get(user, '') if password is None else password
    return subprocess.run(cmd, input=pw + '\n', capture_output=True,
                          text=True, timeout=timeout)


class Login(unittest.TestCase):
    def test_imaps(self):
        r = cli(dc.url('imaps', 'alice'), 'caps')
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('IMAP4rev1', r.stdout.split())

    def test_starttls(self):
        r = cli(dc.url('imap', 'alice'), 'caps', debug=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('IMAP4rev1', r.stdout.split())
        # STARTTLS came before any credentials, and CAPABILITY was asked
        # again after the handshake.
        sent = [l for l in r.stderr.splitlines() if ' C: ' in l]
        verbs = [l.split(' C: ', 1)[1].split(' ')[1] for l in sent]
        self.assertIn('STARTTLS', verbs)
        i = verbs.index('STARTTLS')
        self.assertEqual(verbs[i + 1], 'CAPABILITY')
        self.assertTrue(any(v in ('AUTHENTICATE', 'LOGIN') for v in verbs[i:]))
        self.assertFalse(any(v in ('AUTHENTICATE', 'LOGIN') for v in verbs[:i]))

    def test_enable_and_id(self):
        r = cli(dc.url('imaps', 'alice'), 'enable', 'CONDSTORE', debug=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip(), 'enabled CONDSTORE')
        r = cli(dc.url('imaps', 'alice'), 'id', debug=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('name=Dovecot', r.stdout)
        # Only mailfs's own name and version were sent.
        sent = [l for l in r.stderr.splitlines() if ' C: ' in l and ' ID ' in l]
        self.assertEqual(len(sent), 1)
        self.assertIn('"name" "mailfs"', sent[0])
        self.assertNotIn('alice', sent[0].split(' C: ', 1)[1])

    def test_password_never_logged(self):
        secret = dc.users['alice']
        r = cli(dc.url('imaps', 'alice'), 'caps', debug=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('AUTHENTICATE', r.stderr)  # debug log was on
        import base64
        plain = base64.b64encode(b'\0alice\0' + secret.encode()).decode()
        self.assertNotIn(secret, r.stderr + r.stdout)
        self.assertNotIn(plain, r.stderr + r.stdout)

    def test_wrong_password(self):
        for scheme in ('imaps', 'imap'):
            r = cli(dc.url(scheme, 'alice'), 'caps', password='not-the-password')
            self.assertEqual(r.returncode, EXIT_AUTH, r.stdout + r.stderr)
            self.assertIn('authentication', r.stdout)
            # The server's own text is quoted.
            self.assertIn('Authentication failed', r.stdout)

    def test_unknown_ca(self):
        r = cli(dc.url('imaps', 'alice'), 'caps', cafile=False)
        self.assertEqual(r.returncode, EXIT_TLS_VERIFY, r.stdout + r.stderr)
        self.assertIn('issuer is unknown', r.stdout)
        r = cli(dc.url('imap', 'alice'), 'caps', cafile=False)
        self.assertEqual(r.returncode, EXIT_TLS_VERIFY, r.stdout + r.stderr)

    def test_wrong_host(self):
        url = dc.url('imaps', 'alice').replace('@localhost:', '@127.0.0.1:')
        r = cli(url, 'caps')
        self.assertEqual(r.returncode, EXIT_TLS_VERIFY, r.stdout + r.stderr)
        self.assertIn('another host name', r.stdout)

    def test_expired(self):
        with dc.bad_cert_server('expired') as srv:
            url = 'imaps://alice@localhost:%d' % srv.port
            r = cli(url, 'caps')
        self.assertEqual(r.returncode, EXIT_TLS_VERIFY, r.stdout + r.stderr)
        self.assertIn('expired', r.stdout)

    def test_connection_refused_is_quick(self):
        port = mailharness.free_ports(1)[0]
        t = time.monotonic()
        r = cli('imaps://alice@127.0.0.1:%d' % port, 'caps')
        self.assertEqual(r.returncode, 12, r.stdout + r.stderr)
        self.assertIn('refused', r.stdout)
        self.assertLess(time.monotonic() - t, 5)


def listing(url):
    r = cli(url, 'list')
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        attrs, delim, raw, decoded = line.split('\t')
        out[decoded] = (int(attrs, 16), delim, raw)
    return out


class List(unittest.TestCase):
    def test_nested_and_non_ascii(self):
        names = ['Work/Projects/2026', 'Entwürfe', '台北/日本語', 'A & B',
                 'with space', 'émoji 📧']
        for n in names:
            dc.create('alice', n)
        got = listing(dc.url('imaps', 'alice'))
        for n in names:
            self.assertIn(n, got)
            self.assertEqual(got[n][1], '/')
            self.assertEqual(got[n][2], mailharness.utf7_encode(n))
        self.assertIn('Work/Projects', got)
        self.assertEqual(got['Entwürfe'][2], 'Entw&APw-rfe')
        self.assertEqual(got['A & B'][2], 'A &- B')
        # SPECIAL-USE attributes arrive (\Trash is bit 22).
        self.assertTrue(got['Trash'][0] & (1 << 22))
        self.assertIn('INBOX', got)

    def test_dot_separator(self):
        with mailharness.Dovecot(separator='.') as dot:
            dot.create('alice', 'Lists.a/b')
            global dc
            saved, dc = dc, dot
            try:
                got = listing(dot.url('imaps', 'alice'))
            finally:
                dc = saved
        self.assertIn('Lists.a/b', got)
        self.assertEqual(got['Lists.a/b'][1], '.')


class Fetch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.boxes = dc.load_corpus('alice')

    def fetch_and_compare(self, mailbox, batch='7'):
        with tempfile.TemporaryDirectory() as d:
            r = cli(dc.url('imaps', 'alice'), 'fetch', mailbox, d, batch,
                    timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            server = dc.fetch_bodies('alice', mailbox)
            self.assertGreater(len(server), 0)
            files = sorted(os.listdir(d))
            self.assertEqual(sorted('%d.eml' % u for u in server), files)
            for uid, body in server.items():
                with open(os.path.join(d, '%d.eml' % uid), 'rb') as f:
                    self.assertEqual(f.read(), body, '%s UID %d' % (mailbox, uid))
            return r, server

    def test_corpus_byte_exact(self):
        total = 0
        for mailbox in self.boxes:
            r, server = self.fetch_and_compare(mailbox)
            total += len(server)
            # Pipelining: several UID FETCH commands were in flight.
            if len(server) > 14:
                n = int(r.stderr.split('imapcli: ')[1].split()[0])
                self.assertGreater(n, 1)
        self.assertGreater(total, 300)

    def test_big_message_streamed(self):
        # 20 MB: over the client's streaming threshold.
        body = (b'Subject: big\r\nMessage-ID: <big@test>\r\n\r\n' +
                b''.join(b'line %08d with some text to fill the message\r\n' % i
                         for i in range(20 * 1024 * 1024 // 48)))
        dc.append('alice', 'Big', body)
        r, server = self.fetch_and_compare('Big', batch='1')
        self.assertEqual(len(next(iter(server.values()))), len(body))

    def test_meta_and_no_seen(self):
        date = 1700000000
        uid = dc.append('alice', 'Meta', b'Subject: m\r\n\r\nbody\r\n',
                        flags=('$Work',), date=date)
        with tempfile.TemporaryDirectory() as d:
            r = cli(dc.url('imaps', 'alice'), 'fetch', 'Meta', d)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = cli(dc.url('imaps', 'alice'), 'meta', 'Meta')
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        fields = r.stdout.split()
        self.assertEqual(int(fields[0]), uid)
        body = dc.fetch_bodies('alice', 'Meta')[uid]
        self.assertEqual(int(fields[1]), len(body))
        self.assertEqual(int(fields[2]), date)
        self.assertIn('$Work', fields[4:])
        # Fetching bodies never set \Seen.
        self.assertNotIn('\\Seen', dc.flags('alice', 'Meta')[uid])

    def test_empty_mailbox(self):
        dc.create('alice', 'Empty')
        r = cli(dc.url('imaps', 'alice'), 'select', 'Empty')
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('exists 0', r.stdout)
        self.assertRegex(r.stdout, r'uidvalidity [1-9]')



def vanished_uids(lines):
    """The UIDs of the "vanished LO HI" lines (small ranges only)."""
    out = set()
    for l in lines:
        if l.startswith('vanished '):
            lo, hi = map(int, l.split()[1:])
            assert hi - lo < 100000, l
            out.update(range(lo, hi + 1))
    return out


def flag_lines(lines):
    """{uid: (modseq, flags)} of the "flags UID MODSEQ (FLAGS)" lines,
    \\Recent left out (it depends on the session)."""
    out = {}
    for l in lines:
        if l.startswith('flags '):
            _, uid, modseq, rest = l.split(' ', 3)
            flags = set(rest.strip('()').split()) - {'\\Recent'}
            out.setdefault(int(uid), []).append((int(modseq), flags))
    return out


def new_lines(lines):
    """[(uid, size)] of the "new UID SIZE (FLAGS)" lines."""
    return [tuple(map(int, l.split()[1:3])) for l in lines if l.startswith('new ')]


def select_info(lines):
    """{'UIDVALIDITY', 'UIDNEXT', 'MESSAGES', 'HIGHESTMODSEQ'} from the
    lines of imapcli's select (or resync) output."""
    keys = {'uidvalidity': 'UIDVALIDITY', 'uidnext': 'UIDNEXT',
            'exists': 'MESSAGES', 'highestmodseq': 'HIGHESTMODSEQ'}
    out = {}
    for l in lines:
        k, _, v = l.partition(' ')
        if k in keys:
            out[keys[k]] = int(v)
    return out


def select_state(mailbox):
    r = cli(dc.url('imaps', 'alice'), 'select', mailbox)
    assert r.returncode == 0, r.stdout + r.stderr
    return select_info(r.stdout.splitlines())


class ResyncIdle(unittest.TestCase):
    """imap_resync() and imap_idle() against Dovecot, the changes made by
    an independent client (imaplib)."""

    def test_resync_qresync(self):
        box = 'Resync'
        uids = dc.append_many('alice', box, [
            b'Subject: r%d\r\nMessage-ID: <r%d@test>\r\n\r\nbody %d\r\n' % (i, i, i)
            for i in range(1, 6)])
        # The state the way the mount learns it: EXAMINE (CONDSTORE), which
        # is also what makes Dovecot start counting MODSEQs for the mailbox
        # (before that, every message reports the same one).
        before = select_state(box)
        # Another client: one flag changed, one message expunged, one new.
        m = dc.imap('alice')
        try:
            typ, _ = m.select(mailharness.imap_quote(box))
            self.assertEqual(typ, 'OK')
            typ, _ = m.uid('STORE', str(uids[1]), '+FLAGS.SILENT', '(\\Flagged)')
            self.assertEqual(typ, 'OK')
            typ, _ = m.uid('STORE', str(uids[3]), '+FLAGS.SILENT', '(\\Deleted)')
            self.assertEqual(typ, 'OK')
            typ, _ = m.uid('EXPUNGE', str(uids[3]))
            self.assertEqual(typ, 'OK')
        finally:
            m.logout()
        new_body = b'Subject: new\r\n\r\nnew message\r\n'
        new_uid = dc.append('alice', box, new_body)
        after = select_state(box)

        r = cli(dc.url('imaps', 'alice'), 'resync', box,
                str(before['UIDVALIDITY']), str(before['HIGHESTMODSEQ']),
                str(before['UIDNEXT']))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn('qresync on', lines)
        # Exactly the flag change among the old messages, with a MODSEQ
        # past the one we knew (the QRESYNC answer may also show the new
        # message: its MODSEQ is past it too)...
        changed = flag_lines(lines)
        self.assertLessEqual(set(changed) - {uids[1]}, {new_uid}, r.stdout)
        changed.pop(new_uid, None)
        self.assertEqual(set(changed), {uids[1]}, r.stdout)
        for modseq, flags in changed[uids[1]]:
            self.assertEqual(flags, {'\\Flagged'}, r.stdout)
            self.assertGreater(modseq, before['HIGHESTMODSEQ'], r.stdout)
            self.assertLessEqual(modseq, after['HIGHESTMODSEQ'], r.stdout)
        # ... exactly the expunged UID ...
        self.assertEqual(vanished_uids(lines), {uids[3]}, r.stdout)
        # ... and the new message with its size.
        self.assertEqual(new_lines(lines), [(new_uid, len(new_body))], r.stdout)
        self.assertEqual(select_info(lines), after)

        # From the state now: nothing at all to report.
        r = cli(dc.url('imaps', 'alice'), 'resync', box,
                str(after['UIDVALIDITY']), str(after['HIGHESTMODSEQ']),
                str(after['UIDNEXT']))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(flag_lines(lines), {}, r.stdout)
        self.assertEqual(vanished_uids(lines), set(), r.stdout)
        # "UIDNEXT:*" always matches the last message (RFC 9051 6.4.8).
        self.assertEqual(new_lines(lines), [(new_uid, len(new_body))], r.stdout)

    def test_idle_wakes_on_append(self):
        box = 'Idle'
        dc.append('alice', box, b'Subject: first\r\n\r\nfirst\r\n')
        cmd = [IMAPCLI, '--password-stdin', '--cafile', dc.ca,
               dc.url('imaps', 'alice'), 'idle', box, '30']
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            p.stdin.write((dc.users['alice'] + '\n').encode())
            p.stdin.close()
            ready, _, _ = select.select([p.stdout], [], [], 20)
            self.assertTrue(ready, 'no EXAMINE answer within 20 s')
            self.assertEqual(p.stdout.readline(), b'exists 1\n')
            time.sleep(1)  # the IDLE is under way by now
            self.assertIsNone(p.poll(), 'imapcli ended before anything happened')
            dc.append('alice', box, b'Subject: second\r\n\r\nsecond\r\n')
            appended = time.monotonic()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.fail('IDLE not woken within 10 s of the APPEND')
            woke_after = time.monotonic() - appended
            out = p.stdout.read().decode()
            err = p.stderr.read().decode()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            p.stdout.close()
            p.stderr.close()
        self.assertEqual(p.returncode, 0, out + err)
        self.assertIn('woke: EXISTS 2', out.splitlines(), out + err)
        self.assertIn('idle: woken', out.splitlines(), out + err)
        self.assertLess(woke_after, 2, out + err)


if __name__ == '__main__':
    mailharness.run_tests()
