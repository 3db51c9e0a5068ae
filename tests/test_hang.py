#!/usr/bin/env python3
r"""Never hang: servers that get a message's size wrong or stop in the middle
of one, over a real mailfs mount (FUSE) and a private Dovecot behind a TLS
proxy (tests/harness/imapproxy.py) that misbehaves on demand.

SizeLie     the proxy announces RFC822.SIZE a few bytes off for some messages
            (larger and smaller than the body, small ones, one across a page
            boundary, a big one), as Exchange Online, hMailServer and WildDuck
            do.  The first read of each is a cat, an mmap reader or a grep -r
            over the mailbox (read-ahead fetches many bodies at once): it gets
            exactly the server's BODY.PEEK[] bytes, never blocks, a later stat
            gives the true size, and the mount unmounts normally
Stall       -o timeout=5, the proxy stalls in the middle of a body literal:
            the cat fails with EIO within timeout + 1 s; once the server
            behaves, the mount reads every message byte-exact.  The same
            bound when the fetch needs a new connection to a frozen server,
            and for a request queued behind a stalled fetch (connections=1)

Every reader runs in a child process with a time bound; a reader that hangs
fails its test, and the mount's FUSE connection is aborted (through the
fusectl file system) so that nothing is left blocked.

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import imapproxy  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402

TEST_TIMEOUT = 120.0    # then our mailfs is killed and the connection aborted
READ_TIMEOUT = 20.0     # one reader (child process); far above what it needs
STALL_TIMEOUT = 5       # -o timeout= against the stalling server
STALL_SLACK = 1.0       # scheduling slack over the timeout
UNMOUNT_SECONDS = 10.0  # fusermount3 -u must succeed within this
FUSECTL = '/sys/fs/fuse/connections'

USERS = {u: u + 'pw' for u in ('sizes', 'staller')}

dc = None
TMP = None

# The bodies whose RFC822.SIZE the proxy gets wrong: (name, true size,
# delta of RFC822.SIZE).  "page" crosses a 4 KiB page boundary: the kernel
# would read one page where there are two, or two where there is one.
LIES = [
    ('small-more', 700, +3),        # the server says more than it sends
    ('small-less', 701, -3),        # ... less than it sends
    ('page-more', 4093, +6),
    ('page-less', 4099, -6),
    ('big-more', 300001, +3),
    ('big-less', 300002, -3),
]
HONEST = 3                          # between the liars, sizes right

# Reads the files given, first touching each through a memory map of the
# size fstat reports (the first access is a page fault, not a read), then
# reads the size again and copies that much from a map.  Writes each file's
# bytes to OUT/<basename> and prints the sizes seen, as JSON.
_MMAP_READER = r'''
import json, mmap, os, sys
out, paths = sys.argv[1], sys.argv[2:]
sizes = {}
for p in paths:
    fd = os.open(p, os.O_RDONLY)
    before = os.fstat(fd).st_size
    m = mmap.mmap(fd, before, prot=mmap.PROT_READ)
    m[0]
    after = os.fstat(fd).st_size
    if after > len(m):
        m.close()
        m = mmap.mmap(fd, after, prot=mmap.PROT_READ)
    with open(os.path.join(out, os.path.basename(p)), 'wb') as f:
        f.write(m[:after])
    m.close()
    os.close(fd)
    sizes[os.path.basename(p)] = [before, after]
print(json.dumps(sizes))
'''


def body_of(name, size, uid_hint=''):
    """A message of exactly SIZE bytes, CRLF line ends, ending in a line
    "ZZEND-<name>" (so a reader that stops short or reads past the end is
    seen by grep as well)."""
    head = ('From: Size Test <sizes@example.org>\r\n'
            'To: someone@example.org\r\n'
            'Subject: size %s\r\n'
            'Date: Mon, 04 Mar 2024 10:00:00 +0000\r\n'
            'Message-ID: <%s@hang.example.org>\r\n'
            '\r\n' % (name, name)).encode()
    tail = ('ZZEND-%s\r\n' % name).encode()
    fill = size - len(head) - len(tail)
    assert fill >= 2
    line = b'The quick brown fox jumps over the lazy dog %s.\r\n' % name.encode()
    body = (line * (fill // len(line) + 1))[:fill - 2] + b'\r\n'
    data = head + body + tail
    assert len(data) == size
    return data


def fuse_connection(path):
    """The FUSE connection number of the mount at PATH (its device minor)."""
    return os.minor(os.stat(path).st_dev)


def abort_connection(conn):
    """Abort FUSE connection CONN: every request pending on it fails and the
    mount can be unmounted.  Mounts fusectl first if it is not."""
    if not os.path.isdir(os.path.join(FUSECTL, str(conn))):
        subprocess.run(['mount', '-t', 'fusectl', 'fusectl', FUSECTL],
                       capture_output=True, timeout=10)
    try:
        with open(os.path.join(FUSECTL, str(conn), 'abort'), 'w') as f:
            f.write('1')
        return True
    except OSError as e:
        print('cannot abort FUSE connection %s: %s' % (conn, e), file=sys.stderr)
        return False


class HangTest(mounttest.BoundedTest):
    """Bounds every test: past TEST_TIMEOUT our mailfs is killed by pid and
    its FUSE connection aborted.  A test's mounts are unmounted at its end
    (the connection aborted first if a reader hung)."""

    TEST_TIMEOUT = TEST_TIMEOUT
    USER = None

    def setUp(self):
        self.hung = False
        self.conns = []
        super().setUp()

    def timed_out(self):
        self.hung = True
        for c in self.conns:
            abort_connection(c)

    def mount(self, tag, url, options=()):
        mnt, cache = mounttest.fresh(TMP, tag)
        m = self.track(mountutil.Mount(dc, mnt, cache, user=self.USER,
                                       mode='debug', options=list(options), url=url))
        m.start()
        self.conns.append(fuse_connection(m.mountpoint))
        self.addCleanup(self._unmount, m, self.conns[-1])
        return m

    def _unmount(self, m, conn):
        if self.hung:
            abort_connection(conn)
        m.unmount()

    def unmount_cleanly(self, m):
        """fusermount3 -u works at once (nothing holds the mount)."""
        t0 = time.monotonic()
        r = subprocess.run([mountutil.fusermount(), '-u', m.mountpoint],
                           capture_output=True, text=True, timeout=UNMOUNT_SECONDS)
        self.assertEqual(r.returncode, 0, 'fusermount3 -u: %s' % r.stderr)
        self.assertLess(time.monotonic() - t0, UNMOUNT_SECONDS)
        m.unmount()            # reaps mailfs

    def bounded(self, argv, timeout=READ_TIMEOUT):
        """Run ARGV (a reader of the mount); (returncode, stdout, stderr,
        seconds).  A reader still running after TIMEOUT fails the test: it
        is killed, and the mount's connection aborted if it does not die."""
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
            return p.returncode, out, err, time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.hung = True
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                for c in self.conns:
                    abort_connection(c)
                p.wait(10)
            self.fail('%s did not return within %.0f s (hung)' % (' '.join(argv), timeout))


# ------------------------------------------------------------------ SizeLie

class SizeLie(HangTest):
    USER = 'sizes'

    @classmethod
    def setUpClass(cls):
        cls.boxes = {}          # kind -> (mailbox, {name: uid}, {uid: delta})
        for kind in ('cat', 'mmap', 'grep'):
            box = 'Lie-' + kind
            msgs, order = [], []
            for i, (name, size, _) in enumerate(LIES):
                msgs.append(body_of('%s-%s' % (kind, name), size))
                order.append(name)
                if i % 2 and len(order) < len(LIES) + HONEST:
                    msgs.append(body_of('%s-honest%d' % (kind, i), 900 + i))
                    order.append('honest%d' % i)
            uids = dc.append_many(cls.USER, box, msgs)
            names = dict(zip(order, uids))
            deltas = {names[n]: d for n, _, d in LIES}
            cls.boxes[kind] = (box, names, deltas)
        cls.deltas = {}
        for kind in cls.boxes:
            # One proxy for all mailboxes: the UIDs of different mailboxes
            # may be equal, and so are their deltas (same order).
            cls.deltas.update(cls.boxes[kind][2])
        cls.proxy = imapproxy.TLSProxy(dc, rewrite=imapproxy.size_lie(cls.deltas))

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def prepare(self, kind):
        """Mount through the proxy; list the mailbox (the kernel learns the
        sizes the server announced) and check they are the lies."""
        box, names, deltas = self.boxes[kind]
        m = self.mount('lie-' + kind, self.proxy.url(self.USER))
        path = os.path.join(m.mountpoint, box)
        bodies = dc.fetch_bodies(self.USER, box)
        listed = sorted(os.listdir(path))
        self.assertEqual(listed, sorted('%d.eml' % u for u in bodies))
        for uid, d in deltas.items():
            st = os.stat(os.path.join(path, '%d.eml' % uid))
            self.assertEqual(st.st_size, len(bodies[uid]) + d,
                             'the proxy did not change RFC822.SIZE of UID %d' % uid)
        return m, path, bodies, deltas

    def check_sizes(self, path, bodies):
        """stat (in a child: it must not hang either) gives the true size."""
        files = [os.path.join(path, '%d.eml' % u) for u in sorted(bodies)]
        rc, out, err, _ = self.bounded(['stat', '-c', '%n %s', *files])
        self.assertEqual(rc, 0, err)
        got = {os.path.basename(l.rsplit(' ', 1)[0]): int(l.rsplit(' ', 1)[1])
               for l in out.decode().splitlines()}
        want = {'%d.eml' % u: len(b) for u, b in bodies.items()}
        self.assertEqual(got, want, 'st_size after the first read')

    def test_cat(self):
        m, path, bodies, deltas = self.prepare('cat')
        for uid in sorted(deltas):
            rc, out, err, _ = self.bounded(['cat', os.path.join(path, '%d.eml' % uid)])
            self.assertEqual(rc, 0, err)
            self.assertEqual(len(out), len(bodies[uid]),
                             'cat of UID %d (RFC822.SIZE off by %+d)' % (uid, deltas[uid]))
            self.assertEqual(out, bodies[uid])
        self.check_sizes(path, bodies)
        self.assertIn('size corrected', m.log())
        self.unmount_cleanly(m)

    def test_mmap(self):
        m, path, bodies, deltas = self.prepare('mmap')
        with tempfile.TemporaryDirectory(dir=TMP) as out:
            files = [os.path.join(path, '%d.eml' % u) for u in sorted(deltas)]
            rc, so, err, _ = self.bounded([sys.executable, '-c', _MMAP_READER, out, *files])
            self.assertEqual(rc, 0, err.decode()[-2000:])
            seen = json.loads(so)
            for uid in sorted(deltas):
                name = '%d.eml' % uid
                # Before the first fault: the size announced, unless
                # read-ahead for an earlier file brought this body.
                self.assertIn(seen[name][0], (len(bodies[uid]) + deltas[uid],
                                              len(bodies[uid])))
                self.assertEqual(seen[name][1], len(bodies[uid]),
                                 'st_size after the first page fault of UID %d' % uid)
                with open(os.path.join(out, name), 'rb') as f:
                    self.assertEqual(f.read(), bodies[uid], 'mmap of UID %d' % uid)
        self.check_sizes(path, bodies)
        self.unmount_cleanly(m)

    def test_grep_r(self):
        m, path, bodies, deltas = self.prepare('grep')
        # -o -b: each match with its byte offset; a body cut short loses
        # (part of) its last line, one read past its end shows NULs.
        rc, out, err, _ = self.bounded(['grep', '-r', '-a', '-o', '-b', '-P',
                                        'ZZEND-[a-z0-9-]+|\\x00+', path])
        self.assertEqual(rc, 0, err)
        got = {}
        for line in out.decode('latin-1').splitlines():
            f, off, match = line.split(':', 2)
            got.setdefault(os.path.basename(f), []).append((int(off), match))
        want = {}
        for uid, b in bodies.items():
            end = b.rstrip(b'\r\n').rsplit(b'\r\n', 1)[1].decode()
            want['%d.eml' % uid] = [(len(b) - len(end) - 2, end)]
        self.assertEqual(got, want)
        # And every byte, now from the cache.
        for uid in sorted(bodies):
            rc, out, err, _ = self.bounded(['cat', os.path.join(path, '%d.eml' % uid)])
            self.assertEqual((rc, out), (0, bodies[uid]), 'UID %d' % uid)
        self.check_sizes(path, bodies)
        self.unmount_cleanly(m)


# ------------------------------------------------------------------ Stall

class Stall(HangTest):
    USER = 'staller'
    BOX = 'Slow'

    @classmethod
    def setUpClass(cls):
        cls.uids = dc.append_many(cls.USER, cls.BOX,
                                  [body_of('stall%d' % i, 2000 + i) for i in range(3)])
        # The last message: nothing follows it in a read-ahead batch.
        cls.proxy = imapproxy.TLSProxy(dc, rewrite=imapproxy.stall_literal([cls.uids[-1]]))

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def test_stall_mid_literal_fails_within_timeout(self):
        self.proxy.rewrite.active = True
        m = self.mount('stall', self.proxy.url(self.USER),
                       options=['timeout=%d' % STALL_TIMEOUT])
        path = os.path.join(m.mountpoint, self.BOX)
        bodies = dc.fetch_bodies(self.USER, self.BOX)
        self.assertEqual(sorted(os.listdir(path)), sorted('%d.eml' % u for u in bodies))
        stalled = os.path.join(path, '%d.eml' % self.uids[-1])
        os.stat(stalled)
        rc, out, err, took = self.bounded(['cat', stalled])
        self.assertNotEqual(rc, 0, 'cat of a message the server never finished '
                            'sending succeeded')
        self.assertIn(b'Input/output error', err)
        self.assertLess(took, STALL_TIMEOUT + STALL_SLACK,
                        'cat failed only after %.1f s (-o timeout=%d)' % (took, STALL_TIMEOUT))
        self.assertGreater(self.proxy.rewrites, 0, 'the proxy stalled nothing')
        # The server behaves again: every message reads byte-exact (the
        # one that failed, once half a second has passed: until then a
        # read of it fails at once, as the kernel's retry does).
        self.proxy.rewrite.active = False
        time.sleep(0.6)
        for uid in [self.uids[0], self.uids[-1], self.uids[1]]:
            rc, out, err, _ = self.bounded(['cat', os.path.join(path, '%d.eml' % uid)])
            self.assertEqual(rc, 0, err)
            self.assertEqual(out, bodies[uid], 'UID %d' % uid)
        self.unmount_cleanly(m)

    def test_queued_behind_a_stall_fails_within_timeout(self):
        # One connection: a cat waits in the queue behind a fetch that
        # stalls, then for a new connection to a frozen server.  The queue,
        # the reconnect and the fetch are one wait of that request.
        self.proxy.rewrite.active = True
        m = self.mount('queued', self.proxy.url(self.USER),
                       options=['timeout=%d' % STALL_TIMEOUT, 'connections=1'])
        path = os.path.join(m.mountpoint, self.BOX)
        bodies = dc.fetch_bodies(self.USER, self.BOX)
        self.assertEqual(sorted(os.listdir(path)), sorted('%d.eml' % u for u in bodies))
        stalled = os.path.join(path, '%d.eml' % self.uids[-1])
        target = os.path.join(path, '%d.eml' % self.uids[0])
        os.stat(stalled)
        os.stat(target)
        first = subprocess.Popen(['cat', stalled], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            dc.freeze()
            try:
                rc, out, err, took = self.bounded(['cat', target])
            finally:
                dc.thaw()
        finally:
            try:
                first.wait(READ_TIMEOUT)
            except subprocess.TimeoutExpired:
                first.kill()
                first.wait(5)
                self.fail('the cat of the stalled message hung')
        self.assertNotEqual(rc, 0, 'cat succeeded against a frozen server')
        self.assertIn(b'Input/output error', err)
        self.assertLess(took, STALL_TIMEOUT + STALL_SLACK,
                        'cat failed only after %.1f s (-o timeout=%d)' % (took, STALL_TIMEOUT))
        self.proxy.rewrite.active = False
        self.assertEqual(self.read_eventually(target), bodies[self.uids[0]])
        self.unmount_cleanly(m)

    def read_eventually(self, path, seconds=30):
        """The bytes of PATH once a cat succeeds (the pool may be backing
        off after the failures)."""
        time.sleep(0.6)
        deadline = time.monotonic() + seconds
        while True:
            rc, out, err, _ = self.bounded(['cat', path])
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(rc, 0, err)
        return out

    def test_reconnect_to_frozen_server_fails_within_timeout(self):
        # The connections drop, then the server freezes: the fetch needs a
        # new connection, whose greeting never comes.  Connecting, the
        # greeting and the fetch are one wait of the request.
        m = self.mount('frozen', self.proxy.url(self.USER),
                       options=['timeout=%d' % STALL_TIMEOUT])
        path = os.path.join(m.mountpoint, self.BOX)
        bodies = dc.fetch_bodies(self.USER, self.BOX)
        self.assertEqual(sorted(os.listdir(path)), sorted('%d.eml' % u for u in bodies))
        target = os.path.join(path, '%d.eml' % self.uids[0])
        os.stat(target)
        self.proxy.drop()
        dc.freeze()
        try:
            rc, out, err, took = self.bounded(['cat', target])
        finally:
            dc.thaw()
        self.assertNotEqual(rc, 0, 'cat succeeded against a frozen server')
        self.assertIn(b'Input/output error', err)
        self.assertLess(took, STALL_TIMEOUT + STALL_SLACK,
                        'cat failed only after %.1f s (-o timeout=%d)' % (took, STALL_TIMEOUT))
        # Thawed: it reads byte-exact.
        self.assertEqual(self.read_eventually(target), bodies[self.uids[0]])
        self.unmount_cleanly(m)


# --------------------------------------------------------------- module set-up

def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-hang-test-', users=USERS)


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


if __name__ == '__main__':
    unittest.main()
