#!/usr/bin/env python3
"""What a mount tells about itself: df (statfs), mailfs status and the
status attributes, mailfs fetch, -o prefetch=all, against a private
Dovecot with the quota plugin (QUOTA, RFC 9208).

Df          statfs gives the quota an independent client reads with
            GETQUOTAROOT (storage and messages), and plain `df` lists the
            mount; without a quota, the known size of the account (the sum
            of RFC822.SIZE) and the number of messages
Status      `mailfs status --json` and the attributes of each directory
            (getfattr -n) give, per mailbox, the messages the server has
            (STATUS by an independent client), their bytes, and what is
            cached, checked against the cache itself: after the unmount an
            -o offline mount reads exactly the messages said to be cached,
            byte for byte as the server serves them; an upload the server
            refuses (over quota) counts as a failed upload; the connection
            state ("connected", "offline"); the table form
Fetch       `mailfs fetch MAILBOX` caches every body of it (the attribute
            user.mailfs.cached and an offline mount that reads them all);
            interrupted with SIGINT it stops cleanly (exit 130) and a second
            run fetches exactly what is left; -o prefetch=all caches the
            whole account in the background
Blocks      st_blocks matches st_size for cached and uncached messages
            alike (du, tar --sparse and cp see no holes), and cachedness is
            the attribute user.mailfs.cached

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))

import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402

QUOTA_MB = 20
QUOTA_MSGS = 3000
USERS = {'alice': 'alicepw', 'bob': 'bobpw', 'carol': 'carolpw', 'dave': 'davepw',
         'erin': 'erinpw', 'grace': 'gracepw', 'heidi': 'heidipw'}


def setUpModule():
    global dc, TMP, MAILFS
    dc, TMP = mounttest.set_up_module('mailfs-status-test-', users=USERS,
                                      quota='storage=%dM:messages=%d' % (QUOTA_MB, QUOTA_MSGS))
    MAILFS = mountutil.MAILFS


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


def quota(user):
    """(storage used KiB, limit KiB, messages used, limit) from GETQUOTAROOT."""
    m = dc.imap(user)
    try:
        typ, data = m.getquotaroot('INBOX')
    finally:
        m.logout()
    text = b' '.join(x for part in data for x in part if isinstance(x, bytes))
    st = re.search(rb'STORAGE (\d+) (\d+)', text)
    ms = re.search(rb'MESSAGE (\d+) (\d+)', text)
    return int(st.group(1)), int(st.group(2)), int(ms.group(1)), int(ms.group(2))


def status_json(mnt, timeout=60):
    r = sh([MAILFS, 'status', '--json', mnt], timeout=timeout)
    if r.returncode != 0:
        raise AssertionError('mailfs status failed (%d): %s' % (r.returncode, r.stderr))
    return json.loads(r.stdout)


def sh(argv, timeout=120, env=None):
    """mounttest.run with text output."""
    return mounttest.run(argv, timeout=timeout, text=True, env=env)


def settled(mnt):
    """The status once the mount has no job left (the read-ahead of a
    read goes on after the read's answer)."""
    st = mounttest.wait_for(lambda: (lambda s: s['jobs'] == 0 and s)(status_json(mnt)), 60)
    if not st:
        raise AssertionError('jobs still running: %r' % status_json(mnt))
    return st


def boxes(st):
    return {b['path']: b for b in st['mailboxes']}


def xattr(path, name):
    return os.getxattr(path, name).decode()


def fill(user, spec, seed=0):
    """SPEC {mailbox: n}: generated mail; {mailbox: {uid: bytes}}."""
    out = {}
    for i, (box, n) in enumerate(spec.items()):
        if box != 'INBOX':
            dc.create(user, box)
        dc.generate(user, box, n, seed=seed + i)
        out[box] = dc.fetch_bodies(user, box)
    return out


class StatusBase(mounttest.BoundedTest):
    TEST_TIMEOUT = 240.0

    def mount(self, user, tag, cache=None, options=(), mode='foreground'):
        mnt, fresh_cache = mounttest.fresh(TMP, tag)
        m = mountutil.Mount(dc, mnt, cache or fresh_cache, user=user, mode=mode,
                            options=list(options))
        return self.started(m)

    def offline_readable(self, user, cache, expect):
        """Mount CACHE offline: {path below the mount: bytes} of the
        messages it can read; checks each against EXPECT {box: {uid: bytes}}."""
        m = self.mount(user, 'offline', cache=cache, options=['offline'])
        got = {}
        for box, bodies in expect.items():
            for uid, body in bodies.items():
                p = os.path.join(m.mountpoint, box, '%d.eml' % uid)
                res, _ = mounttest.try_op('read', p, timeout=30)
                if res == 'OK':
                    self.assertEqual(mounttest.read(p), body, p)
                    got['%s/%d.eml' % (box, uid)] = body
                else:
                    self.assertEqual(res, 'EIO', p)
        self.assertEqual(xattr(m.mountpoint, 'user.mailfs.connection'), 'offline')
        m.unmount()
        return got


class Df(StatusBase):
    def test_df_shows_the_quota(self):
        fill('alice', {'INBOX': 40, 'Archive': 25})
        m = self.mount('alice', 'df')
        used, limit, nused, nlimit = quota('alice')
        self.assertEqual((limit, nlimit), (QUOTA_MB * 1024, QUOTA_MSGS))

        def figures():
            s = os.statvfs(m.mountpoint)
            return (s.f_blocks * s.f_frsize // 1024, s.f_bfree * s.f_frsize // 1024,
                    s.f_files, s.f_ffree)
        # GETQUOTAROOT is asked right after the mount.
        got = mounttest.wait_for(lambda: figures()[0] == limit and figures(), 20)
        self.assertEqual(got, (limit, limit - used, nlimit, nlimit - nused), got)
        self.assertEqual(nused, 65)
        r = sh(['df', '-k'])
        line = [l for l in r.stdout.splitlines() if l.endswith(' ' + m.mountpoint)]
        self.assertEqual(len(line), 1, r.stdout)
        self.assertEqual(line[0].split()[1:4], [str(limit), str(used), str(limit - used)])

    def test_df_without_quota_shows_the_known_size(self):
        plain = mailharness.Dovecot(users={'frank': 'frankpw'})
        self.addCleanup(plain.close)
        plain.generate('frank', 'INBOX', 30)
        plain.create('frank', 'Lists')
        plain.generate('frank', 'Lists', 12, seed=5)
        sizes = [s for box in ('INBOX', 'Lists') for s, _ in plain.meta('frank', box).values()]
        mnt, cache = mounttest.fresh(TMP, 'df-plain')
        m = self.started(mountutil.Mount(plain, mnt, cache, user='frank', mode='foreground'))
        os.listdir(os.path.join(m.mountpoint, 'Lists'))       # list both mailboxes
        os.listdir(os.path.join(m.mountpoint, 'INBOX'))
        time.sleep(2.1)                                        # statfs keeps a figure 2 s
        s = os.statvfs(m.mountpoint)
        self.assertEqual(s.f_blocks * s.f_frsize, (sum(sizes) + 1023) // 1024 * 1024)
        self.assertEqual((s.f_bfree, s.f_bavail), (0, 0))
        self.assertEqual((s.f_files, s.f_ffree), (42, 0))
        r = sh(['df'])
        self.assertIn(' ' + m.mountpoint, r.stdout)


class Status(StatusBase):
    def test_status_against_the_server_and_the_cache(self):
        bodies = fill('bob', {'INBOX': 30, 'Archive': 20, 'Lists': 10})
        m = self.mount('bob', 'status')
        mnt = m.mountpoint
        # Read one message of Archive: it and its read-ahead get cached.
        mounttest.read(os.path.join(mnt, 'Archive', '%d.eml' % min(bodies['Archive'])))
        os.listdir(os.path.join(mnt, 'Lists'))
        st = settled(mnt)
        self.assertEqual(st['connection'], 'connected')
        self.assertEqual(st['account'], m.url)
        used, limit, nused, nlimit = quota('bob')
        self.assertEqual(st['quota'], {'storage_used': used * 1024,
                                       'storage_limit': limit * 1024,
                                       'messages_used': nused,
                                       'messages_limit': nlimit})
        per = boxes(st)
        for box, b in bodies.items():
            server = dc.status('bob', box)
            sizes = sum(s for s, _ in dc.meta('bob', box).values())
            self.assertEqual(per[box]['messages'], server['MESSAGES'], box)
            self.assertEqual(per[box]['bytes'], sizes, box)
            self.assertEqual(per[box]['uploads'], 0)
            self.assertGreater(per[box]['last_sync'], time.time() - 120)
            # The attributes of the directory say the same.
            d = os.path.join(mnt, box)
            for k in ('messages', 'bytes', 'cached', 'cached_bytes', 'uploads',
                      'failed_uploads', 'last_sync'):
                self.assertEqual(int(xattr(d, 'user.mailfs.' + k)), per[box][k], (box, k))
            self.assertEqual(json.loads(xattr(d, 'user.mailfs.status'))['mailbox'],
                             per[box])
        self.assertEqual(per['INBOX']['cached'], 0)
        self.assertGreaterEqual(per['Archive']['cached'], 1)
        for k in ('messages', 'bytes', 'cached', 'cached_bytes'):
            self.assertEqual(st['total'][k], sum(b[k] for b in st['mailboxes']), k)
            self.assertEqual(int(xattr(mnt, 'user.mailfs.' + k)), st['total'][k], k)
        # Not listed: backups and getfattr -d do not copy numbers that change.
        self.assertEqual([n for n in os.listxattr(os.path.join(mnt, 'INBOX'))], [])
        # The table.
        r = sh([MAILFS, 'status', mnt])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('connection: connected', r.stdout)
        row = [l for l in r.stdout.splitlines() if l.startswith('Archive ')][0].split()
        self.assertEqual(row[1:3], [str(per['Archive']['messages']),
                                    str(per['Archive']['cached'])])
        # Every mount when no mount point is given; a path inside a mount
        # stands for it.
        r = sh([MAILFS, 'status', '--json'])
        self.assertIn(mnt, [x['mountpoint'] for x in json.loads(r.stdout)])
        r = sh([MAILFS, 'status', '--json', os.path.join(mnt, 'Lists')])
        self.assertEqual(json.loads(r.stdout)['mountpoint'], mnt)
        # An account of the configuration file stands for its mount point.
        xdg = os.path.join(TMP, 'xdg-status')
        os.makedirs(os.path.join(xdg, 'mailfs'), exist_ok=True)
        conf = os.path.join(xdg, 'mailfs', 'config')
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
            f.write('[bobs]\nurl = %s\nmountpoint = %s\n' % (dc.url('imaps', 'bob'), mnt))
        r = sh([MAILFS, 'status', '--json', 'bobs'],
               env=dict(os.environ, XDG_CONFIG_HOME=xdg))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)['mountpoint'], mnt)
        r = sh([MAILFS, 'status', 'nosuchaccount'],
               env=dict(os.environ, XDG_CONFIG_HOME=xdg))
        self.assertEqual(r.returncode, 1)
        self.assertIn('neither a directory nor an account', r.stderr)
        cache = m.cache_dir
        m.unmount()
        # What the cache really holds: exactly the messages said cached.
        readable = self.offline_readable('bob', cache, bodies)
        for box in bodies:
            n = sum(1 for p in readable if p.startswith(box + '/'))
            self.assertEqual(n, per[box]['cached'], box)
            self.assertEqual(sum(len(v) for p, v in readable.items()
                                 if p.startswith(box + '/')),
                             per[box]['cached_bytes'], box)

    def test_refused_upload_counts_as_failed(self):
        fill('carol', {'INBOX': 3})
        m = self.mount('carol', 'upload')
        box = os.path.join(m.mountpoint, 'INBOX')
        big = b'Subject: too big\r\n\r\n' + b'x' * (QUOTA_MB + 1) * 1024 * 1024
        with open(os.path.join(box, 'big.eml'), 'wb') as f:
            f.write(big)
        got = mounttest.wait_for(lambda: int(xattr(box, 'user.mailfs.failed_uploads')), 60)
        self.assertEqual(got, 1)
        st = status_json(m.mountpoint)
        self.assertEqual(boxes(st)['INBOX']['failed_uploads'], 1)
        self.assertEqual(st['total']['failed_uploads'], 1)
        self.assertEqual(dc.status('carol', 'INBOX')['MESSAGES'], 3)

    def test_not_a_mount(self):
        r = sh([MAILFS, 'status', TMP])
        self.assertEqual(r.returncode, 1)
        self.assertIn('not in a mailfs mount', r.stderr)


class Fetch(StatusBase):
    def test_fetch_a_mailbox(self):
        bodies = fill('dave', {'INBOX': 10, 'Archive': 120})
        m = self.mount('dave', 'fetch')
        arch = os.path.join(m.mountpoint, 'Archive')
        self.assertEqual(int(xattr(arch, 'user.mailfs.cached')), 0)
        r = sh([MAILFS, 'fetch', arch], timeout=180)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('120 messages', r.stdout)
        # Not a terminal: plain lines, no bar.
        self.assertNotIn('\r', r.stderr)
        for uid in bodies['Archive']:
            self.assertEqual(xattr(os.path.join(arch, '%d.eml' % uid), 'user.mailfs.cached'),
                             '1', uid)
        self.assertEqual(int(xattr(arch, 'user.mailfs.cached')), 120)
        self.assertEqual(int(xattr(os.path.join(m.mountpoint, 'INBOX'),
                                   'user.mailfs.cached')), 0)
        r = sh([MAILFS, 'fetch', arch])
        self.assertEqual(r.returncode, 0)
        self.assertIn('every message is cached (120)', r.stdout)
        cache = m.cache_dir
        m.unmount()
        readable = self.offline_readable('dave', cache, {'Archive': bodies['Archive']})
        self.assertEqual(len(readable), 120)

    def test_interrupt_and_resume(self):
        bodies = fill('erin', {'Archive': 600})
        m = self.mount('erin', 'resume')
        arch = os.path.join(m.mountpoint, 'Archive')
        os.listdir(arch)
        p = subprocess.Popen([MAILFS, 'fetch', '-j', '1', arch], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, LC_ALL='C'))
        try:
            # Once a first batch is in, the server stops answering: the
            # read on its way waits, and the signal comes meanwhile.
            mounttest.wait_for(lambda: int(xattr(arch, 'user.mailfs.cached')) > 0, 60,
                               interval=0.02)
            dc.freeze()
            try:
                time.sleep(0.5)
                p.send_signal(signal.SIGINT)
                time.sleep(0.5)
            finally:
                dc.thaw()
            out, err = p.communicate(timeout=90)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 130, out + err)
        self.assertIn('interrupted', out)
        done = int(re.search(r'interrupted: (\d+) of 600', out).group(1))
        self.assertLess(done, 600)
        # The batch on its way when the server froze still comes in.
        cached = boxes(settled(m.mountpoint))['Archive']['cached']
        self.assertGreaterEqual(cached, done)
        left = 600 - cached
        r = sh([MAILFS, 'fetch', arch], timeout=180)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        if left:
            self.assertIn('%d messages' % left, r.stderr.splitlines()[0])
        self.assertEqual(int(xattr(arch, 'user.mailfs.cached')), 600)
        for uid, body in list(bodies['Archive'].items())[::50]:
            self.assertEqual(mounttest.read(os.path.join(arch, '%d.eml' % uid)), body)

    def test_prefetch_all(self):
        bodies = fill('grace', {'INBOX': 15, 'Lists': 40}, seed=9)
        m = self.mount('grace', 'prefetch', options=['prefetch=all'])
        want = 55
        got = mounttest.wait_for(
            lambda: int(xattr(m.mountpoint, 'user.mailfs.cached')) == want, 90)
        self.assertTrue(got, 'cached %s of %d' % (xattr(m.mountpoint, 'user.mailfs.cached'),
                                                   want))
        cache = m.cache_dir
        m.unmount()
        readable = self.offline_readable('grace', cache, bodies)
        self.assertEqual(len(readable), 55)


class Blocks(StatusBase):
    def test_blocks_match_the_size(self):
        fill('heidi', {'Lists': 5}, seed=11)
        m = self.mount('heidi', 'blocks')
        d = os.path.join(m.mountpoint, 'Lists')
        names = sorted(os.listdir(d), key=lambda n: int(n.split('.')[0]))
        mounttest.read(os.path.join(d, names[0]))
        seen = set()
        for n in names:
            p = os.path.join(d, n)
            s = os.stat(p)
            self.assertEqual(s.st_blocks, (s.st_size + 511) // 512, n)
            seen.add(xattr(p, 'user.mailfs.cached'))
        self.assertIn('1', seen)


if __name__ == '__main__':
    mounttest.main()
