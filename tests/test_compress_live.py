#!/usr/bin/env python3
r"""COMPRESS=DEFLATE (RFC 4978) over a real mount and a private Dovecot.

Dovecot offers COMPRESS=DEFLATE after login when its imap_zlib plugin is
loaded (the harness default).  mailfs connects through a plain TCP proxy
on 127.0.0.1 that counts the bytes on the wire, so a test can tell that
compression really is on: the bytes that crossed are far fewer than the
mail that was read.  The debug log (-d) shows every "COMPRESS DEFLATE" sent
and mailfs's "compression on" line; every login of the mount (fetching
connections and the INBOX watch) must have it.  An independent client
(imaplib) checks what the server holds.

Compressed      reads byte-exact (two mailboxes, a big text message),
                grep -rl finds exactly the messages with the word, with
                fewer than 0.6x their bytes on the wire; a message appended
                elsewhere appears through IDLE within 5 s, byte-exact; a
                file copied in is uploaded byte-exact
CompressOff     -o compress=no against the same server: no COMPRESS
                command, bytes on the wire about the mail's size, reads
                byte-exact
NotOffered      a Dovecot without imap_zlib: no COMPRESS command, the mount
                works as before

Environment: MAILFS_BUILD, MAILFS_SOURCE.  Exit status 77 when Dovecot or
FUSE is missing."""

import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness  # noqa: E402
import mountutil  # noqa: E402

TEST_TIMEOUT = 120.0    # a hung FUSE request fails the test instead of hanging it
LIVE_SECONDS = 5.0      # INBOX: a message appended elsewhere shows within this
OP_TIMEOUT = 60.0
WORD = 'Zebrafinchquartet'
USERS = {'zip': 'zippw', 'plain': 'plainpw', 'nozlib': 'nozlibpw'}

dc = None           # Dovecot with COMPRESS=DEFLATE
dc_plain = None     # Dovecot without it
TMP = None

COMPRESS_CMD = re.compile(r'^\S+ COMPRESS DEFLATE$', re.I)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of PORT that counts the bytes it
    moves each way (TLS records: what would cross a network)."""

    def __init__(self, port):
        self.target = port
        self.down = self.up = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            try:
                s = socket.create_connection(('127.0.0.1', self.target), timeout=10)
            except OSError:
                c.close()
                continue
            for a, b, way in ((c, s, 'up'), (s, c, 'down')):
                t = threading.Thread(target=self._pump, args=(a, b, way), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, a, b, way):
        a.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    data = a.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            a.close()   # each socket is A of exactly one pump

    def counts(self):
        with self._lock:
            return self.down, self.up

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.sock.close()


def text_message(tag, i, size, word=False, seed=0):
    """A plain-text message of about SIZE bytes that compresses like mail."""
    rng = random.Random('%s-%d-%d' % (tag, i, seed))
    vocab = ('the meeting budget report tomorrow please review attached thanks '
             'regards schedule project update server mailbox folder quarter '
             'numbers customer contract invoice draft final version').split()
    lines = []
    n = 0
    while n < size:
        line = ' '.join(rng.choice(vocab) for _ in range(rng.randint(6, 14)))
        lines.append(line)
        n += len(line) + 2
    if word:
        lines.append('The word is %s.' % WORD)
    head = ('From: Sender %d <s%d@example.org>\r\nTo: zip@example.org\r\n'
            'Subject: %s %d\r\nDate: Mon, 04 Mar 2024 10:%02d:00 +0000\r\n'
            'Message-ID: <%s.%d@compress.example.org>\r\n\r\n'
            % (i, i, tag, i, i % 60, tag, i))
    return (head + '\r\n'.join(lines) + '\r\n').encode()


def fresh(tag):
    base = tempfile.mkdtemp(prefix=tag + '-', dir=TMP)
    os.mkdir(os.path.join(base, 'mnt'))
    return os.path.join(base, 'mnt'), os.path.join(base, 'cache')


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def run(argv, timeout=OP_TIMEOUT):
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, LC_ALL='C'), timeout=timeout)


def wait_for(fn, seconds, interval=0.25):
    t0 = time.monotonic()
    while True:
        v = fn()
        if v or time.monotonic() - t0 > seconds:
            return v, time.monotonic() - t0
        time.sleep(interval)


class CompressTest(unittest.TestCase):
    """Bounds every test (a hung request: our mailfs is killed by pid)."""

    DC = None
    USER = None

    def setUp(self):
        self._timer = threading.Timer(TEST_TIMEOUT, self._abort)
        self._timer.daemon = True
        self._timer.start()
        self.addCleanup(self._timer.cancel)

    def _abort(self):
        print('\n%s: over %.0f s; killing mailfs' % (self.id(), TEST_TIMEOUT),
              file=sys.stderr, flush=True)
        for m in list(mountutil._active):
            m.kill()

    def mount(self, tag, proxy, options=()):
        mnt, cache = fresh(tag)
        url = 'imaps://%s@localhost:%d' % (self.USER, proxy.port)
        m = mountutil.Mount(self.dc(), mnt, cache, user=self.USER, mode='debug',
                            options=list(options), url=url)
        m.start()
        self.addCleanup(m.unmount)
        return m

    @classmethod
    def dc(cls):
        return dc_plain if cls.DC == 'plain' else dc

    def proxy(self):
        p = CountingProxy(self.dc().ports['imaps'])
        self.addCleanup(p.close)
        return p

    def assertReadsExact(self, mnt, box):
        want = self.dc().fetch_bodies(self.USER, box)
        path = os.path.join(mnt, box)
        self.assertEqual(set(os.listdir(path)), {'%d.eml' % u for u in want})
        bad = [u for u, b in want.items() if read(os.path.join(path, '%d.eml' % u)) != b]
        self.assertEqual(bad, [], 'bodies differ from the server\'s in %s' % box)
        return sum(len(b) for b in want.values())

    def logins(self, m):
        return len(re.findall(r'authenticating -> authenticated', m.log()))

    def compressed_logins(self, m):
        return len(re.findall(r'COMPRESS DEFLATE OK: compression on', m.log()))

    def compress_commands(self, m):
        return [c for c in m.sent_commands() if COMPRESS_CMD.match(c.strip())]

    def assertAllCompressed(self, m, at_least):
        """At least AT_LEAST logins, and every one followed by COMPRESS
        and its OK (a login in progress gets 10 s to finish)."""
        def settled():
            n = self.logins(m)
            return (n >= at_least and self.compressed_logins(m) == n
                    and len(self.compress_commands(m)) == n)
        ok, _ = wait_for(settled, 10)
        self.assertTrue(ok, '%d logins, %d COMPRESS sent, %d compressed:\n%s'
                        % (self.logins(m), len(self.compress_commands(m)),
                           self.compressed_logins(m),
                           '\n'.join(l for l in m.log().splitlines()
                                     if l.startswith('mailfs'))[-3000:]))


def fill(dcx, user):
    """INBOX and Archive with text mail, some holding WORD, and one big
    message; returns the UIDs with WORD per mailbox."""
    dcx.create(user, 'Archive')
    hits = {}
    for box, n in (('INBOX', 20), ('Archive', 15)):
        msgs = [text_message(box, i, 3000 + 500 * i, word=(i % 4 == 0)) for i in range(n)]
        uids = dcx.append_many(user, box, msgs)
        hits[box] = {u for u, i in zip(uids, range(n)) if i % 4 == 0}
    big = dcx.append(user, 'Archive', text_message('big', 0, 2 * 1024 * 1024, word=True))
    hits['Archive'].add(big)
    return hits


class Compressed(CompressTest):
    USER = 'zip'

    @classmethod
    def setUpClass(cls):
        cls.hits = fill(dc, cls.USER)

    def test_1_read_grep_byte_exact_and_compressed(self):
        proxy = self.proxy()
        m = self.mount('zip-read', proxy)
        total = 0
        for box in ('INBOX', 'Archive'):
            total += self.assertReadsExact(m.mountpoint, box)
        r = run(['grep', '-rl', WORD, m.mountpoint])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = set(r.stdout.decode().split())
        want = {os.path.join(m.mountpoint, box, '%d.eml' % u)
                for box, uids in self.hits.items() for u in uids}
        self.assertEqual(got, want)
        # Every login of the mount (fetching and the INBOX watch, which
        # may log in later) compressed.
        self.assertAllCompressed(m, 2)
        down, up = proxy.counts()
        self.assertLess(down, 0.6 * total,
                        '%d bytes on the wire for %d bytes of mail: not compressed?'
                        % (down, total))

    def test_2_idle_brings_new_mail(self):
        m = self.mount('zip-idle', self.proxy())
        inbox = os.path.join(m.mountpoint, 'INBOX')
        before = set(os.listdir(inbox))
        data = text_message('idle', 99, 5000)
        uid = dc.append(self.USER, 'INBOX', data)
        name = '%d.eml' % uid
        shown, took = wait_for(lambda: name in os.listdir(inbox), LIVE_SECONDS)
        self.assertTrue(shown, '%s not listed %.1f s after the APPEND' % (name, took))
        self.assertEqual(read(os.path.join(inbox, name)),
                         dc.fetch_bodies(self.USER, 'INBOX')[uid])
        self.assertEqual(set(os.listdir(inbox)) - before, {name})
        idle = [c for c in m.sent_commands() if re.search(r'^\S+ IDLE$', c.strip(), re.I)]
        self.assertTrue(idle, 'no IDLE in the debug log')
        self.assertAllCompressed(m, 2)

    def test_3_upload(self):
        dc.create(self.USER, 'Uploads')
        m = self.mount('zip-upload', self.proxy())
        data = text_message('upload', 1, 300 * 1000)
        src = os.path.join(os.path.dirname(m.mountpoint), 'src.eml')
        with open(src, 'wb') as f:
            f.write(data)
        r = run(['cp', src, os.path.join(m.mountpoint, 'Uploads') + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        served = mailharness.served_form(data)
        done, took = wait_for(
            lambda: list(dc.fetch_bodies(self.USER, 'Uploads').values()) == [served], 30)
        self.assertTrue(done, 'the upload did not reach the server byte-exact in %.0f s' % took)
        self.assertTrue(any(re.match(r'^\S+ APPEND ', c) for c in m.sent_commands()))
        self.assertAllCompressed(m, 1)


class CompressOff(CompressTest):
    """-o compress=no against a server that offers it."""

    USER = 'plain'

    @classmethod
    def setUpClass(cls):
        cls.hits = fill(dc, cls.USER)

    def test_compress_no(self):
        proxy = self.proxy()
        m = self.mount('plain-read', proxy, options=['compress=no'])
        total = self.assertReadsExact(m.mountpoint, 'Archive')
        self.assertGreaterEqual(self.logins(m), 1)
        self.assertEqual(self.compress_commands(m), [])
        self.assertEqual(self.compressed_logins(m), 0)
        down, up = proxy.counts()
        self.assertGreater(down, total, 'fewer bytes on the wire than the mail read')


class NotOffered(CompressTest):
    """A Dovecot without imap_zlib: nothing changes."""

    DC = 'plain'
    USER = 'nozlib'

    @classmethod
    def setUpClass(cls):
        cls.hits = fill(dc_plain, cls.USER)

    def test_not_offered(self):
        m = self.mount('nozlib-read', self.proxy())
        for box in ('INBOX', 'Archive'):
            self.assertReadsExact(m.mountpoint, box)
        r = run(['grep', '-rl', WORD, m.mountpoint])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.split()), sum(len(v) for v in self.hits.values()))
        self.assertEqual(self.compress_commands(m), [])
        self.assertEqual(self.compressed_logins(m), 0)


def setUpModule():
    global dc, dc_plain, TMP
    mailharness.require_dovecot()
    mountutil.require_fuse()
    mountutil.install_signal_handlers()
    TMP = mountutil.scratch_dir('mailfs-compress-test-')
    dc = mailharness.Dovecot(users=USERS, compress=True)
    dc_plain = mailharness.Dovecot(users=USERS, compress=False)


def tearDownModule():
    mountutil.unmount_all()
    for d in (dc, dc_plain):
        if d is not None:
            d.close()
    mountutil.remove_scratch(TMP)


if __name__ == '__main__':
    unittest.main(verbosity=2)
