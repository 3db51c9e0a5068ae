#!/usr/bin/env python3
r"""Mailbox names that once hid a mailbox, a directory or the whole account,
over a real mailfs mount (FUSE) and a private Dovecot.

Every mailbox must show, and every byte read through the mount is compared
with what Dovecot returns to an independent client (imaplib, in the
harness).  Names Dovecot refuses to create (empty components) are made by a
TLS proxy (tests/harness/imapproxy.py) that renames mailboxes both ways:
the server stores "Odd/ZZE", mailfs is told "Odd/" and asks for "Odd/".

LongNames      a nested name of 6 levels of 100 characters (605 bytes, over
               LMDB's 511-byte key); components whose file names are over
               NAME_MAX (255 bytes: 100 "%", 90 CJK characters) are shown
               cut, with a hash ending, the same on every mount; INBOX and
               everything else show on a fresh mount and on a remount of the
               same cache; the messages read byte-exact
EmptyParts     "Odd/", "Mid//c" and "/x" (and the name "", which the log
               says is ignored): the parents list, the odd mailboxes show
               as "Odd/%", "Mid/%/c" and "%2Fx" with their messages; mkdir,
               rename and rmdir of normal names inside "%" work; mkdir of
               "%" is refused
Damaged        one mailbox record damaged in the cache: a remount shows
               every other mailbox, and the log says which one is left out

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import imapproxy  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import names, read  # noqa: E402

TEST_TIMEOUT = 120.0    # a hung FUSE request fails the test instead of hanging it
NAME_MAX = 255

# Six levels of 100 characters: 605 bytes.
LONG = '/'.join(('L%d-' % i) + chr(ord('a') + i) * 97 for i in range(6))
# Components whose file names are over NAME_MAX; the two CJK ones are alike
# in every byte a cut name keeps.
WIDE = ['Wide/' + '%' * 100, 'Wide/' + '日' * 90, 'Wide/' + '日' * 89 + '月',
        'Wide/' + '日' * 84]
# Through the proxy: the server's name -> the name mailfs is told.
ODD = {'Odd/ZZE': 'Odd/', 'Mid/ZZE/c': 'Mid//c', 'ZZL/x': '/x'}
PLAIN = ['Keep', 'Keep/Inner', 'Damaged']

dc = None
TMP = None


# ------------------------------------------------------------------ helpers

def shorten(file):
    """The documented rule (fs/imap/tree.h) for a file name over NAME_MAX: cut
    to whole characters and escapes, then "%~" and 16 hex digits of the
    SHA-256 of the whole name."""
    b = file.encode()
    if len(b) <= NAME_MAX:
        return file
    k = NAME_MAX - 18
    while b[k] & 0xC0 == 0x80:
        k -= 1
    if b[k - 1] == ord('%'):
        k -= 1
    elif b[k - 2] == ord('%'):
        k -= 2
    return (b[:k] + b'%~' + hashlib.sha256(b).hexdigest()[:16].encode()).decode()


def component(c):
    if c == '':
        return '%'
    if c in ('.', '..'):
        return '%2E' + c[1:]
    return shorten(c.replace('%', '%25').replace('/', '%2F'))


def path_of(name):
    """Where mailbox NAME (as mailfs is told it, delimiter "/") shows."""
    if name.startswith('/') and name.count('/') == 1:
        return shorten('%2F' + component(name[1:]))
    return '/'.join(component(c) for c in name.split('/'))


def walk(mnt):
    """{relative directory: set of entries} of the whole mount."""
    out = {}
    for root, dirs, files in os.walk(mnt):
        out[os.path.relpath(root, mnt)] = set(dirs) | set(files)
    return out


def inodes(mnt, rels):
    return {rel: os.stat(os.path.join(mnt, rel)).st_ino for rel in rels}


# The proxy's renaming.  Server to client: in LIST replies, drop the
# markers ("Odd/ZZE" -> "Odd/", "ZZL" -> "").  Client to server: put them
# back into every quoted string ("Odd/" -> "Odd/ZZE", "/x" -> "ZZL/x").
_LIST = re.compile(rb'^(\* LIST \([^)]*\) (?:"(?:[^"\\]|\\.)"|NIL) )(.*?)(\r\n)$', re.S)
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def to_client(piece):
    m = _LIST.match(piece)
    if not m or b'ZZ' not in m.group(2):
        return piece
    name = m.group(2)
    if name.startswith(b'"'):
        name = name[1:-1]
    name = name.replace(b'ZZL', b'').replace(b'ZZE', b'')
    return m.group(1) + b'"' + name + b'"' + m.group(3)


def to_server(piece):
    def fix(m):
        n = m.group(1)
        if n.startswith(b'/'):
            n = b'ZZL' + n
        while b'//' in n:
            n = n.replace(b'//', b'/ZZE/')
        if n.endswith(b'/'):
            n += b'ZZE'
        return b'"' + n + b'"'
    return _QUOTED.sub(fix, piece)


class NamesTest(mounttest.BoundedTest):
    TEST_TIMEOUT = TEST_TIMEOUT

    def mount(self, tag, cache=None, url=None):
        mnt, c = mounttest.fresh(TMP, tag)
        return self.started(mountutil.Mount(dc, mnt, cache or c, mode='foreground', url=url))

    def assertMailbox(self, mnt, rel, server_name):
        """Directory REL lists exactly the server's messages of
        SERVER_NAME, each byte-exact."""
        path = os.path.join(mnt, rel)
        bodies = dc.fetch_bodies('alice', server_name)
        self.assertTrue(bodies, server_name)
        self.assertEqual({n for n in names(path) if n.endswith('.eml')},
                         {'%d.eml' % u for u in bodies}, rel)
        for uid, body in bodies.items():
            self.assertEqual(read(os.path.join(path, '%d.eml' % uid)), body,
                             '%s/%d.eml' % (rel, uid))


def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-names-test-')
    dc.append('alice', 'INBOX', b'Subject: inbox\r\n\r\nin the inbox\r\n')
    for i, box in enumerate([LONG] + WIDE + list(ODD) + PLAIN):
        dc.append_many('alice', box, [
            ('Subject: %d in %s\r\nMessage-ID: <n%d.%d@example.org>\r\n\r\n'
             'body %d of %s\r\n' % (j, box, i, j, j, box)).encode()
            for j in range(2)])


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


class LongNames(NamesTest):
    def check(self, m):
        mnt = m.mountpoint
        top = names(mnt)
        for want in ('INBOX', 'Keep', 'Damaged', 'Wide', 'L0-' + 'a' * 97):
            self.assertIn(want, top)
        self.assertMailbox(mnt, 'INBOX', 'INBOX')
        self.assertMailbox(mnt, 'Keep/Inner', 'Keep/Inner')
        self.assertEqual(len(LONG.encode()), 605)
        self.assertMailbox(mnt, path_of(LONG), LONG)
        wide = names(os.path.join(mnt, 'Wide'))
        self.assertEqual(wide, {path_of(n)[len('Wide/'):] for n in WIDE})
        for n in wide:
            self.assertLessEqual(len(n.encode()), NAME_MAX, n)
        self.assertEqual(sum(1 for n in wide if '%~' in n), 3, wide)
        for n in WIDE:
            self.assertMailbox(mnt, path_of(n), n)

    def test_long_names_fresh_and_remount(self):
        m = self.mount('long')
        self.check(m)
        before = walk(m.mountpoint)
        ino = inodes(m.mountpoint, [path_of(LONG)] + [path_of(n) for n in WIDE])
        m.unmount()
        m2 = self.mount('long2', cache=m.cache_dir)
        self.check(m2)
        self.assertEqual(walk(m2.mountpoint), before)
        self.assertEqual(inodes(m2.mountpoint, list(ino)), ino)
        self.assertNotIn('cannot store', m.log() + m2.log())


class EmptyParts(NamesTest):
    def check(self, m):
        mnt = m.mountpoint
        top = names(mnt)
        for want in ('INBOX', 'Keep', 'Odd', 'Mid', 'Wide'):
            self.assertIn(want, top)
        self.assertMailbox(mnt, 'INBOX', 'INBOX')
        self.assertEqual(names(os.path.join(mnt, 'Odd')), {'%'})
        self.assertEqual(names(os.path.join(mnt, 'Mid')), {'%'})
        self.assertIn('%2Fx', top)
        self.assertNotIn('x', top)
        self.assertIn('c', names(os.path.join(mnt, 'Mid', '%')))
        self.assertEqual(path_of('Odd/'), 'Odd/%')
        self.assertEqual(path_of('Mid//c'), 'Mid/%/c')
        self.assertEqual(path_of('/x'), '%2Fx')
        for server, told in ODD.items():
            self.assertMailbox(mnt, path_of(told), server)
        # The name "" (the server's "ZZL") cannot be shown; the log says so.
        self.assertRegex(m.log(), r'ignoring a LIST response with an unusable name')

    def test_empty_components(self):
        with imapproxy.TLSProxy(dc, rewrite=to_client, rewrite_client=to_server) as proxy:
            m = self.mount('empty', url=proxy.url('alice'))
            self.check(m)
            self.assertGreater(proxy.rewrites, 0)
            before = walk(m.mountpoint)
            m.unmount()
            m2 = self.mount('empty2', cache=m.cache_dir, url=proxy.url('alice'))
            self.check(m2)
            self.assertEqual(walk(m2.mountpoint), before)

            # Normal names inside an empty-named directory round-trip.
            odd = os.path.join(m2.mountpoint, 'Odd', '%')
            os.mkdir(os.path.join(odd, 'sub'))
            self.assertIn('Odd/ZZE/sub', dc.list_mailboxes('alice'))
            self.assertIn('sub', names(odd))
            os.rename(os.path.join(odd, 'sub'), os.path.join(odd, 'moved'))
            server = dc.list_mailboxes('alice')
            self.assertIn('Odd/ZZE/moved', server)
            self.assertNotIn('Odd/ZZE/sub', server)
            self.assertEqual(names(odd) & {'sub', 'moved'}, {'moved'})
            os.rmdir(os.path.join(odd, 'moved'))
            self.assertNotIn('Odd/ZZE/moved', dc.list_mailboxes('alice'))
            self.assertNotIn('moved', names(odd))
            # The empty name cannot be made, and the existing one is there.
            with self.assertRaises(OSError) as e:
                os.mkdir(os.path.join(m2.mountpoint, 'Keep', '%'))
            self.assertEqual(e.exception.errno, errno.EINVAL)
            with self.assertRaises(OSError) as e:
                os.mkdir(os.path.join(m2.mountpoint, 'Odd', '%'))
            self.assertEqual(e.exception.errno, errno.EEXIST)
            self.assertMailbox(m2.mountpoint, 'Odd/%', 'Odd/ZZE')


def mdb_unescape(s):
    return re.sub(rb'\\([0-9a-fA-F]{2}|\\)',
                  lambda m: b'\\' if m.group(1) == b'\\' else bytes([int(m.group(1), 16)]),
                  s)


def mdb_pairs(cache, db):
    """{key: value} of database DB, read with mdb_dump."""
    out = subprocess.run(['mdb_dump', '-p', '-s', db, cache], capture_output=True,
                         check=True, timeout=30).stdout
    body = out.split(b'HEADER=END\n', 1)[1].split(b'DATA=END', 1)[0]
    lines = [ln[1:] for ln in body.split(b'\n') if ln.startswith(b' ')]
    return {mdb_unescape(lines[i]): mdb_unescape(lines[i + 1])
            for i in range(0, len(lines), 2)}


class Damaged(NamesTest):
    @unittest.skipUnless(shutil.which('mdb_dump') and shutil.which('mdb_load'),
                         'lmdb-utils (mdb_dump, mdb_load) missing')
    def test_damaged_record_hides_only_itself(self):
        m = self.mount('damaged')
        self.assertIn('Damaged', names(m.mountpoint))
        before = walk(m.mountpoint)
        m.unmount()
        ids = mdb_pairs(m.cache_dir, 'mbox_name')
        key = ids[b'Damaged']
        self.assertEqual(len(key), 4)
        # A record of an unknown version: undecodable.
        dump = ('VERSION=3\nformat=bytevalue\ndatabase=mbox\ntype=btree\n'
                'HEADER=END\n %s\n ff\nDATA=END\n' % key.hex()).encode()
        subprocess.run(['mdb_load', '-s', 'mbox', m.cache_dir], input=dump,
                       check=True, timeout=30)
        m2 = self.mount('damaged2', cache=m.cache_dir)
        after = walk(m2.mountpoint)
        self.assertNotIn('Damaged', after['.'])
        want = {rel: ents for rel, ents in before.items()
                if rel != 'Damaged' and not rel.startswith('Damaged/')}
        want['.'] = before['.'] - {'Damaged'}
        self.assertEqual(after, want)
        self.assertMailbox(m2.mountpoint, 'INBOX', 'INBOX')
        self.assertMailbox(m2.mountpoint, path_of(LONG), LONG)
        log = m2.log()
        self.assertRegex(log, r'undecodable mailbox record \d+')
        self.assertRegex(log, r'mailbox Damaged cannot be stored in the cache.*left out')


if __name__ == '__main__':
    unittest.main()
