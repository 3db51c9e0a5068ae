#!/usr/bin/env python3
r"""Real providers, emulated: a mount through the quirk proxy
(tests/harness/quirkproxy.py) that makes the harness Dovecot behave like
Exchange, Gmail or iCloud, one mode per class.

Each class mounts once (a fresh cache, -o timeout=10), then checks the
behaviours of the read-only, write and live tests: browse (every name the
server has, stat sizes), read byte-exact against what an independent client
(imaplib, straight to Dovecot) fetches, grep -r, rsync -a twice (the second
transfers nothing), rm / mv / cp in (checked on the server), and mail
appended by the independent client appears.  Every access to the mount runs
in a child process with a time bound, so a hung FUSE request fails the test
instead of hanging it.  Then what the mode is about:

ExchangeThrottle  Exchange without the wrong sizes: no CONDSTORE, QRESYNC,
                  COMPRESS; every 12th command opens a 2 s back-off window
                  ("NO Request is throttled. Suggested Backoff Time: N
                  milliseconds"); at most 3 connections (a 4th is greeted
                  with BYE).  Nothing fails, no command arrives in a window
                  later than quirkproxy.GRACE after it opened, the pool
                  shrinks, and each condition is logged once.
Exchange          all of Exchange, with RFC822.SIZE off by a few bytes on
                  some messages.  Reads through wrong sizes hang without the
                  fix of the size-correction hang (another branch): this
                  class needs it.
Gmail             no QRESYNC; LITERAL- (a literal over 4096 bytes must be
                  synchronising: cp of a 20 KB file); CAPABILITY untagged
                  after login; [THROTTLED] in some OKs; at most 2
                  connections ("NO [ALERT] Too many simultaneous
                  connections"); BYE after 4 s without a command: the mount
                  heals (a read, an rm after idle BYEs work).
ICloud            no MOVE (UID MOVE refused with BAD): mv and rm work with
                  COPY + expunge.

Environment as tests/test_live.py.  Exit status 77 when Dovecot or FUSE is
missing."""

import json
import os
import re
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
import quirkproxy  # noqa: E402

CLASS_TIMEOUT = 150.0   # one class, mount to unmount: then mailfs is killed
OP_TIMEOUT = 45.0       # one program run against the mount
APPEAR_SECONDS = 20.0   # new mail shows (IDLE, or a reconnecting watch)
UPLOAD_SECONDS = 20.0   # a file copied in reaches the server
LOG_LINES = int(os.environ.get('MAILFS_TEST_LOG_LINES', 40))
WORD = 'Quokkafeather'

USERS = {u: u + 'pw' for u in ('exthrottle', 'exchange', 'gmail', 'icloud')}

dc = None
TMP = None

# Reads every file under a directory in one child process: names, the size
# stat gives before the first read, the bytes, the size after.
READER = r'''
import base64, json, os, sys
out = {}
for d, _, files in os.walk(sys.argv[1]):
    for f in sorted(files):
        p = os.path.join(d, f)
        before = os.stat(p).st_size
        with open(p, 'rb') as fh:
            data = fh.read()
        out[os.path.relpath(p, sys.argv[1])] = [before, base64.b64encode(data).decode(),
                                                os.stat(p).st_size]
print(json.dumps(out))
'''


def message(tag, i, size=0):
    body = ''.join('%s line %d of %s %d\r\n' % (WORD if j == 3 else 'plain', j, tag, i)
                   for j in range(max(5, size // 30)))
    return ('From: Provider Test <p@example.org>\r\n'
            'To: someone@example.org\r\n'
            'Subject: %s %d\r\n'
            'Date: Mon, 04 Mar 2024 10:%02d:00 +0000\r\n'
            'Message-ID: <%s.%d@providers.example.org>\r\n'
            '\r\n%s' % (tag, i, i % 60, tag, i, body)).encode()


def run(argv, timeout=OP_TIMEOUT):
    env = dict(os.environ, LC_ALL='C')
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env,
                          timeout=timeout)


def read_tree(path):
    r = run([sys.executable, '-c', READER, path])
    if r.returncode != 0:
        raise AssertionError('reading %s failed: %s' % (path, r.stderr.decode()[-2000:]))
    import base64
    return {k: (v[0], base64.b64decode(v[1]), v[2]) for k, v in json.loads(r.stdout).items()}


def listing(path):
    r = run([sys.executable, '-c', 'import os,sys,json; print(json.dumps(os.listdir(sys.argv[1])))',
             path])
    if r.returncode != 0:
        raise AssertionError('listing %s failed: %s' % (path, r.stderr.decode()[-500:]))
    return set(json.loads(r.stdout))


class Provider(unittest.TestCase):
    """One mount of USER through a QuirkProxy(MODE, **QUIRKS)."""

    MODE = None
    QUIRKS = {}
    USER = None
    OPTIONS = ('timeout=10', 'connections=3')

    @classmethod
    def setUpClass(cls):
        if cls.MODE is None:
            raise unittest.SkipTest('base class')
        u = cls.USER
        cls.boxes = {'INBOX': [message('inbox', i) for i in range(6)],
                     'Archive': [message('archive', i, 200 + 97 * i) for i in range(30)]}
        cls.uids = {}
        for box, msgs in cls.boxes.items():
            cls.uids[box] = dc.append_many(u, box, msgs)
        dc.create(u, 'Trash', special_use='\\Trash')
        dc.create(u, 'Other')
        cls.proxy = quirkproxy.QuirkProxy(dc, cls.MODE, **cls.QUIRKS)
        base = tempfile.mkdtemp(prefix=u + '-', dir=TMP)
        cls.mnt = os.path.join(base, 'mnt')
        os.mkdir(cls.mnt)
        cls.m = mountutil.Mount(dc, cls.mnt, os.path.join(base, 'cache'), user=u,
                                mode=os.environ.get('MAILFS_TEST_MOUNT_MODE', 'foreground'),
                                options=list(cls.OPTIONS),
                                url=cls.proxy.url(u))
        cls.timer = threading.Timer(CLASS_TIMEOUT, cls._abort)
        cls.timer.daemon = True
        cls.timer.start()
        try:
            cls.m.start()
        except Exception:
            cls.proxy.stop()
            cls.timer.cancel()
            raise

    @classmethod
    def _abort(cls):
        print('\n%s: over %.0f s; killing mailfs' % (cls.__name__, CLASS_TIMEOUT),
              file=sys.stderr, flush=True)
        cls.m.kill()

    @classmethod
    def tearDownClass(cls):
        cls.m.unmount()
        cls.proxy.stop()
        cls.timer.cancel()

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            lines = self.m.log().splitlines()
            print('\n--- mailfs log (last %d lines); proxy %s:\n%s'
                  % (LOG_LINES, self.proxy.stats(), '\n'.join(lines[-LOG_LINES:])),
                  file=sys.stderr)
        return out

    # ----- helpers

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def assertMatchesServer(self, box, tree, prefix=''):
        server = dc.fetch_bodies(self.USER, box)
        want = {prefix + '%d.eml' % uid for uid in server}
        self.assertEqual(set(tree), want, 'names of %s' % box)
        for name, (before, data, after) in sorted(tree.items()):
            uid = int(os.path.basename(name).split('.')[0])
            self.assertEqual(data, server[uid], '%s: bytes differ from the server' % name)
            self.assertEqual(after, len(data), '%s: st_size after reading' % name)
            # Before its first read st_size is what the server announced,
            # or already the body's size when read-ahead fetched the body
            # with an earlier message (a lying server's size is corrected
            # once the body is in; after the read it is exact, above).
            announced = quirkproxy.skewed_size(len(data)) if self.proxy.q.size_skew else len(data)
            self.assertIn(before, (announced, len(data)), '%s: st_size before the first read' % name)

    def wait_for(self, fn, seconds):
        t0 = time.monotonic()
        while True:
            v = fn()
            if v or time.monotonic() - t0 > seconds:
                return v
            time.sleep(0.3)

    def log_count(self, pattern):
        return len(re.findall(pattern, self.m.log(), re.I | re.M))

    # ----- the behaviours every mode must keep

    def test_1_browse_read_grep(self):
        r = run(['ls', '-lR', self.mnt])
        self.assertEqual(r.returncode, 0, r.stderr)
        for box in ('INBOX', 'Archive'):
            self.assertMatchesServer(box, read_tree(self.path(box)))
        r = run(['grep', '-rl', WORD, self.mnt])
        self.assertEqual(r.returncode, 0, r.stderr)
        found = set(r.stdout.decode().split())
        want = {self.path(b, '%d.eml' % u) for b, us in self.uids.items() for u in us}
        self.assertEqual(found, want, 'grep -rl')

    def test_2_rsync_twice(self):
        dst = tempfile.mkdtemp(prefix='rsync-', dir=TMP)
        r = run(['rsync', '-a', self.path('Archive') + '/', dst + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        server = dc.fetch_bodies(self.USER, 'Archive')
        got = {}
        for f in os.listdir(dst):
            with open(os.path.join(dst, f), 'rb') as fh:
                got[f] = fh.read()
        self.assertEqual(got, {'%d.eml' % u: b for u, b in server.items()})
        r = run(['rsync', '-a', '--stats', self.path('Archive') + '/', dst + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.decode(), r'Number of regular files transferred: 0\b')

    def test_3_rm_mv_cp(self):
        u = self.USER
        inbox = dc.fetch_bodies(u, 'INBOX')
        uids = sorted(inbox)
        gone, moved = uids[0], uids[1]
        r = run(['rm', self.path('INBOX', '%d.eml' % gone)])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(['mv', self.path('INBOX', '%d.eml' % moved), self.path('Other') + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        now = dc.fetch_bodies(u, 'INBOX')
        self.assertNotIn(gone, now)
        self.assertNotIn(moved, now)
        self.assertIn(inbox[gone], dc.fetch_bodies(u, 'Trash').values())
        self.assertIn(inbox[moved], dc.fetch_bodies(u, 'Other').values())
        # Copied in: 20 KB, more than LITERAL- allows without a round trip.
        src = os.path.join(tempfile.mkdtemp(dir=TMP), 'new.eml')
        data = message('copied', 1, 20000)
        with open(src, 'wb') as f:
            f.write(data)
        r = run(['cp', src, self.path('Other') + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        ok = self.wait_for(lambda: data in dc.fetch_bodies(u, 'Other').values(),
                           UPLOAD_SECONDS)
        self.assertTrue(ok, 'the copied file did not reach the server')
        self.assertEqual(list(dc.fetch_bodies(u, 'Other').values()).count(data), 1)

    def test_4_new_mail_appears(self):
        u = self.USER
        time.sleep(self.IDLE_FIRST)
        data = message('arrived', 1)
        uid = dc.append(u, 'INBOX', data)
        ok = self.wait_for(lambda: '%d.eml' % uid in listing(self.path('INBOX')),
                           APPEAR_SECONDS)
        self.assertTrue(ok, 'new mail did not appear')
        tree = read_tree(self.path('INBOX'))
        self.assertEqual(tree['%d.eml' % uid][1], data)
        # A change after the connections sat idle.
        time.sleep(self.IDLE_FIRST)
        r = run(['rm', self.path('INBOX', '%d.eml' % uid)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(uid, dc.fetch_bodies(u, 'INBOX'))

    IDLE_FIRST = 0


class ExchangeThrottle(Provider):
    MODE = 'exchange'
    QUIRKS = {'size_skew': False}
    USER = 'exthrottle'

    def test_5_throttling_honoured(self):
        st = self.proxy.stats()
        self.assertGreater(st['windows'], 0, st)
        self.assertEqual(st['ignored_backoff'], 0,
                         'commands sent into back-off windows: %s %s'
                         % (st, self.proxy.ignored))
        self.assertEqual(self.log_count(r'throttling requests'), 1, 'logged once')

    def test_6_connection_cap(self):
        st = self.proxy.stats()
        self.assertGreater(st['refused_connections'], 0, st)
        self.assertLessEqual(st['max_simultaneous'], 3, st)
        self.assertEqual(self.log_count(r'the server refused another connection'), 1,
                         'logged once')


class Exchange(Provider):
    MODE = 'exchange'
    USER = 'exchange'

    def test_5_sizes_were_wrong(self):
        self.assertGreater(self.proxy.stats()['size_skews'], 0)


class Gmail(Provider):
    MODE = 'gmail'
    USER = 'gmail'
    IDLE_FIRST = quirkproxy.MODES['gmail']['idle_bye'] + 1.5

    def test_5_quirks_seen(self):
        st = self.proxy.stats()
        self.assertGreater(st['idle_byes'], 0, st)
        self.assertGreater(st['ok_throttled'], 0, st)
        self.assertGreater(st['refused_connections'], 0, st)
        self.assertEqual(st['toobig'], 0, 'a literal over 4096 bytes was sent with LITERAL-')
        self.assertEqual(st['refused_commands'], 0, 'mailfs used QRESYNC: %s' % st)
        self.assertEqual(self.log_count(r'the server refused another connection'), 1,
                         'logged once')
        self.assertLessEqual(self.log_count(r'slowed'), 1, 'logged once')


class ICloud(Provider):
    MODE = 'icloud'
    USER = 'icloud'

    def test_5_no_move_sent(self):
        self.assertEqual(self.proxy.stats()['refused_commands'], 0,
                         'mailfs sent MOVE to a server without it')


def setUpModule():
    global dc, TMP
    mailharness.require_dovecot()
    mountutil.require_fuse()
    mountutil.install_signal_handlers()
    TMP = mountutil.scratch_dir('mailfs-providers-test-')
    dc = mailharness.Dovecot(users=USERS)


def tearDownModule():
    mountutil.unmount_all()
    if dc is not None:
        dc.close()
    mountutil.remove_scratch(TMP)


if __name__ == '__main__':
    t0 = time.monotonic()
    prog = unittest.main(exit=False, verbosity=2)
    res = prog.result
    failed = len({t.id() for t, _ in res.failures + res.errors})
    print('%.0f s; %d run, %d failed' % (time.monotonic() - t0, res.testsRun, failed))
    sys.exit(1 if failed else 0)
