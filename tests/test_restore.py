#!/usr/bin/env python3
r"""Backups that can be restored: round trips between two accounts through
real mailfs mounts (FUSE) over a private Dovecot, with the programs a user
runs (rsync -aX, cp -a, tar --xattrs), checked with an independent client
(Python's imaplib, tests/harness/mailharness.py).

RoundTrip   an account with a part of the real corpus in nested and
            non-ASCII folders, Trash, Sent, Drafts and an empty mailbox,
            flags and keywords on most messages, known INTERNALDATEs:
            backed up and restored into an empty account with rsync -aX,
            with cp -a, with tar --xattrs; per folder, the multiset of
            (body, flags, INTERNALDATE) is the same on both servers, and
            every program exits 0.  A second rsync -aXi of the unchanged
            mount prints nothing, also after a remount.
Pop         a POP3 mount backed up with rsync -aX and restored into an
            IMAP mount: every message, its download date as INTERNALDATE.
NewFile     user.mail.flags on a file being written: before and after its
            close, after its upload, persisted across a crash (SIGKILL
            before the upload); header attributes of a new file: set
            succeeds and changes nothing; of a message: the same value
            succeeds, another is EPERM.
DirTimes    directory mtimes: never 1970 (empty mailboxes, parents, new
            mailboxes); an arrival, an expunge and a move made by another
            client each move the mtime of the directories they change,
            a flag change and a resync do not; a mailbox created elsewhere
            moves its parent's.

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import collections
import email.utils
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import run, try_op, wait_for  # noqa: E402

RESTORE_SECONDS = 120.0  # every upload of a restore reached the server
CHANGE_SECONDS = 15.0    # a change made elsewhere shows in a directory's mtime
POLL = 2                 # -o poll for the directory time tests

USERS = {u: u + 'pw' for u in ('source', 'rsyncdst', 'cpdst', 'tardst', 'popsrc',
                               'popdst', 'newfile', 'times', 'keywords')}
dc = None
TMP = None

# Folders of the source account (UTF-8 names; the corpus is spread over
# them), and one that stays empty.
FOLDERS = ['INBOX', 'Archive/2020', 'Ärger/Überfällig', 'Trash', 'Sent', 'Drafts']
EMPTY = 'Leer/Nichts'
FLAGSETS = [(), ('\\Seen',), ('\\Seen', '\\Answered'), ('\\Flagged', '$Work'),
            ('\\Draft',), ('\\Seen', '$Work', '$Later'), ('\\Answered', '$Label1'),
            ('\\Seen', '\\Flagged', '\\Answered', '$Project-X')]
BASE_DATE = 1262304000  # 2010-01-01 00:00:00 UTC


def corpus_subset():
    """About 60 messages of the corpus, each kind represented."""
    c = mailharness.corpus_messages()
    take = {'corpus/spamassassin-nice': 14, 'corpus/spamassassin-spam': 8,
            'corpus/imaptest': 30, 'corpus/postal-mime': 5}
    out = []
    for box, n in take.items():
        out += [b for _, b in c[box] if b.strip()][:n]
    return out


def seed_source(user):
    """The source account: {folder: [(bytes, flags, date)]}."""
    msgs = corpus_subset()
    plan = collections.defaultdict(list)
    for i, data in enumerate(msgs):
        plan[FOLDERS[i % len(FOLDERS)]].append(
            (data, FLAGSETS[i % len(FLAGSETS)], BASE_DATE + i * 86400 + 3600 * (i % 24)))
    for box, items in plan.items():
        dc.append_many(user, box, items, pipelined=False)
    dc.create(user, EMPTY)
    return plan


def account(user):
    """{folder: Counter of (served body, frozenset of flags, INTERNALDATE)}
    for every folder of USER, read with imaplib."""
    out = {}
    for box, attrs in dc.list_mailboxes(user).items():
        if '\\Noselect' in attrs or '\\NonExistent' in attrs:
            continue
        bodies = dc.fetch_bodies(user, box)
        flags = dc.flags(user, box)
        meta = dc.meta(user, box)
        out[box] = collections.Counter(
            (bodies[u], frozenset(flags.get(u, ())), meta[u][1]) for u in bodies)
    return out


def describe(a, b):
    """What differs between two account() results, briefly."""
    lines = []
    for box in sorted(set(a) | set(b)):
        x, y = a.get(box, collections.Counter()), b.get(box, collections.Counter())
        if x != y:
            miss, extra = x - y, y - x
            lines.append('%s: %d missing, %d extra; e.g. missing %r, extra %r' % (
                box, sum(miss.values()), sum(extra.values()),
                [(len(k[0]), sorted(k[1]), k[2]) for k in list(miss)[:2]],
                [(len(k[0]), sorted(k[1]), k[2]) for k in list(extra)[:2]]))
    return '\n'.join(lines)


def non_empty(acct):
    return {k: v for k, v in acct.items() if v}


def check_run(test, argv, timeout=300, **kw):
    r = run(argv, timeout=timeout, **kw)
    test.assertEqual(r.returncode, 0, '%s exited %d:\n%s' % (
        ' '.join(argv), r.returncode, (r.stderr or b'').decode(errors='replace')[-3000:]))
    return r


def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-restore-test-', users=USERS)
    for u in USERS:      # the special-use mailboxes appear at the first login
        dc.list_mailboxes(u)


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


class RestoreTest(mounttest.BoundedTest):
    TEST_TIMEOUT = 400.0

    def mount(self, user, tag, cache=None, options=(), scheme='imaps'):
        mnt, c = mounttest.fresh(TMP, tag)
        m = mountutil.Mount(dc, mnt, cache or c, user=user, options=options,
                            url=dc.url(scheme, user))
        return self.started(m)

    def wait_same(self, want, user, what):
        got = wait_for(lambda: non_empty(account(user)) == want and want, RESTORE_SECONDS,
                       interval=1.0)
        if not got:
            self.fail('%s: the restored account differs:\n%s'
                      % (what, describe(want, non_empty(account(user)))))


# ------------------------------------------------------------ round trips

class RoundTrip(RestoreTest):
    @classmethod
    def setUpClass(cls):
        seed_source('source')
        cls.want = non_empty(account('source'))

    def test_01_rsync_round_trip_and_second_run_prints_nothing(self):
        src = self.mount('source', 'rsync-src')
        dst = self.mount('rsyncdst', 'rsync-dst')
        backup = os.path.join(TMP, 'rsync-backup')
        check_run(self, ['rsync', '-aX', src.mountpoint + '/', backup + '/'])
        # The backup has the flags, the restore carries them.
        d = os.path.join(backup, 'INBOX')
        kept = [os.getxattr(os.path.join(d, n), 'user.mail.flags').decode()
                for n in os.listdir(d)]
        self.assertTrue(any('$' in f for f in kept) and any('\\Seen' in f for f in kept),
                        kept)
        # Nothing changed: a second run has nothing to say.
        r = check_run(self, ['rsync', '-aXi', src.mountpoint + '/', backup + '/'])
        self.assertEqual(r.stdout.decode(), '', 'second rsync -aXi of an unchanged mount')
        check_run(self, ['rsync', '-aX', backup + '/', dst.mountpoint + '/'])
        self.wait_same(self.want, 'rsyncdst', 'rsync -aX')
        self.assertEqual(set(dc.list_mailboxes('rsyncdst')) >= {EMPTY, 'Ärger/Überfällig'},
                         True, 'empty and nested non-ASCII mailboxes are created')
        # Across a remount on the same cache: still nothing.
        cache = src.cache_dir
        src.unmount()
        src2 = self.mount('source', 'rsync-src2', cache=cache)
        r = check_run(self, ['rsync', '-aXi', src2.mountpoint + '/', backup + '/'])
        self.assertEqual(r.stdout.decode(), '', 'rsync -aXi after a remount')

    def test_02_cp_a_round_trip(self):
        src = self.mount('source', 'cp-src')
        dst = self.mount('cpdst', 'cp-dst')
        backup = os.path.join(TMP, 'cp-backup')
        check_run(self, ['cp', '-a', src.mountpoint, backup])
        r = run(['sh', '-c', 'cd "$1" && cp -a . "$2"', 'sh', backup, dst.mountpoint], timeout=300)
        self.assertEqual(r.returncode, 0, 'cp -a into the mount: %s' % r.stderr.decode()[-3000:])
        self.wait_same(self.want, 'cpdst', 'cp -a')

    def test_03_tar_xattrs_round_trip(self):
        src = self.mount('source', 'tar-src')
        dst = self.mount('tardst', 'tar-dst')
        archive = os.path.join(TMP, 'backup.tar')
        check_run(self, ['tar', '--xattrs', '-C', src.mountpoint, '-cf', archive, '.'])
        check_run(self, ['tar', '--xattrs', '--xattrs-include=user.*', '-C', dst.mountpoint,
                         '-xf', archive])
        self.wait_same(self.want, 'tardst', 'tar --xattrs')


class Pop(RestoreTest):
    def test_pop3_backup_restored_into_imap(self):
        msgs = corpus_subset()[:12]
        dc.append_many('popsrc', 'INBOX', msgs, pipelined=False)
        pop = self.mount('popsrc', 'pop-src', scheme='pop3s')
        backup = os.path.join(TMP, 'pop-backup')
        check_run(self, ['rsync', '-aX', pop.mountpoint + '/', backup + '/'])
        files = sorted(os.listdir(os.path.join(backup, 'INBOX')))
        self.assertEqual(len(files), len(msgs))
        want = collections.Counter()
        for n in files:
            p = os.path.join(backup, 'INBOX', n)
            with open(p, 'rb') as f:
                want[(mailharness.served_form(f.read()), int(os.stat(p).st_mtime))] += 1
        before = dc.meta('popdst', 'INBOX')
        dst = self.mount('popdst', 'pop-dst')
        check_run(self, ['rsync', '-aX', backup + '/', dst.mountpoint + '/'])

        def restored():
            bodies = dc.fetch_bodies('popdst', 'INBOX')
            meta = dc.meta('popdst', 'INBOX')
            got = collections.Counter((bodies[u], meta[u][1]) for u in bodies if u not in before)
            return got if got == want else None

        self.assertTrue(wait_for(restored, RESTORE_SECONDS, interval=1.0),
                        'every POP3 message restored with its download date')


# ------------------------------------------------------- files being written

def msg(tag, n=0):
    return ('From: a@example.org\r\nTo: b@example.org\r\nSubject: %s %d\r\n'
            'Date: Mon, 04 Mar 2019 05:06:07 +0000\r\nMessage-ID: <%s.%d@restore.example>\r\n'
            '\r\nBody of %s %d.\r\n' % (tag, n, tag, n, tag, n)).encode()


def server_flags(user, box, data):
    """The flags of the message with these bytes in BOX, or None."""
    bodies = dc.fetch_bodies(user, box)
    flags = dc.flags(user, box)
    for u, b in bodies.items():
        if b == mailharness.served_form(data):
            return flags.get(u, set())
    return None


class NewFile(RestoreTest):
    TEST_TIMEOUT = 120.0

    def test_01_flags_before_and_after_close(self):
        m = self.mount('newfile', 'nf-flags')
        box = os.path.join(m.mountpoint, 'INBOX')
        # Set while open (cp -a does it so), and after close (rsync).
        a, b = msg('open'), msg('closed')
        pa, pb = os.path.join(box, 'a.eml'), os.path.join(box, 'b.eml')
        with open(pa, 'wb') as f:
            f.write(a)
            f.flush()
            os.setxattr(pa, 'user.mail.flags', b'\\Flagged $Work')
            self.assertEqual(os.getxattr(pa, 'user.mail.flags'), b'\\Flagged $Work')
        with open(pb, 'wb') as f:
            f.write(b)
        os.setxattr(pb, 'user.mail.flags', b'\\Seen \\Answered $Later')
        # Header attributes of a new file: what its bytes say; setting
        # them succeeds and changes nothing.
        self.assertEqual(os.getxattr(pb, 'user.mail.subject'), b'closed 0')
        os.setxattr(pb, 'user.mail.subject', b'something else')
        os.setxattr(pb, 'user.mail.message_id', b'<x@y>')
        self.assertTrue(wait_for(lambda: server_flags('newfile', 'INBOX', a), 15, 0.5))
        self.assertEqual(server_flags('newfile', 'INBOX', a), {'\\Flagged', '$Work'})
        self.assertTrue(wait_for(lambda: server_flags('newfile', 'INBOX', b), 15, 0.5))
        self.assertEqual(server_flags('newfile', 'INBOX', b), {'\\Seen', '\\Answered', '$Later'})
        # The name still resolves for a while after the upload: setting
        # the flags again acts on the message it became.
        self.assertEqual(try_op('setxattr', pb, '\\Draft')[0], 'OK')
        self.assertTrue(wait_for(lambda: server_flags('newfile', 'INBOX', b) == {'\\Draft'},
                                 15, 0.5), 'flags set again after the upload')

    def test_02_flags_kept_across_a_crash(self):
        m = self.mount('newfile', 'nf-crash', options=('delete=trash',))
        cache = m.cache_dir
        data = msg('crash')
        p = os.path.join(m.mountpoint, 'INBOX', 'crash.eml')
        dc.freeze()             # the upload cannot happen before the kill
        try:
            with open(p, 'wb') as f:
                f.write(data)
            os.setxattr(p, 'user.mail.flags', b'\\Seen $Kept')
            time.sleep(0.5)
            m.kill()
        finally:
            dc.thaw()
        m.unmount()
        m2 = self.mount('newfile', 'nf-crash2', cache=cache)
        self.assertTrue(wait_for(lambda: server_flags('newfile', 'INBOX', data), 30, 0.5),
                        'the upload left in the cache arrives')
        self.assertEqual(server_flags('newfile', 'INBOX', data), {'\\Seen', '$Kept'})
        self.assertIsNotNone(m2)

    def test_03_header_attributes_of_a_message(self):
        dc.append('newfile', 'Hdr', msg('hdr'))
        m = self.mount('newfile', 'nf-hdr')
        box = os.path.join(m.mountpoint, 'Hdr')
        p = os.path.join(box, os.listdir(box)[0])
        cur = os.getxattr(p, 'user.mail.subject')
        self.assertEqual(cur, b'hdr 0')
        os.setxattr(p, 'user.mail.subject', cur)         # the same: fine
        self.assertEqual(try_op('setxattr', p, 'other', xattr='user.mail.subject')[0], 'EPERM')
        self.assertEqual(try_op('setxattr', p, 'x', xattr='user.mail.date')[0], 'EPERM')


# -------------------------------------------------------- directory times

def mtime(path):
    return os.stat(path).st_mtime


class DirTimes(RestoreTest):
    TEST_TIMEOUT = 200.0

    def test_directory_mtimes_follow_their_entries(self):
        u = 'times'
        dc.append_many(u, 'INBOX', [msg('t', i) for i in range(3)])
        dc.append_many(u, 'Box/Sub', [msg('s', i) for i in range(2)])
        dc.create(u, 'EmptyBox')
        m = self.mount(u, 'times', options=('poll=%d' % POLL,))
        root = m.mountpoint
        inbox, box, sub, empty = (os.path.join(root, p) for p in
                                  ('INBOX', 'Box', 'Box/Sub', 'EmptyBox'))
        # Never 1970: before and after a listing, empty or not.
        for d in (root, inbox, box, sub, empty):
            self.assertGreater(mtime(d), 1e9, d)
        run(['ls', '-lR', root])
        t0 = {d: mtime(d) for d in (root, inbox, box, sub, empty)}
        for d in t0:
            self.assertGreater(t0[d], 1e9, d)
        # A resync that finds nothing changes nothing.
        time.sleep(POLL + 1)
        run(['ls', '-lR', root])
        self.assertEqual({d: mtime(d) for d in t0}, t0, 'unchanged mailboxes, same mtimes')

        # Arrival (IDLE).
        dc.append(u, 'INBOX', msg('arrival'))
        self.assertTrue(wait_for(lambda: mtime(inbox) > t0[inbox], CHANGE_SECONDS, 0.2),
                        'an arrival moves INBOX\'s mtime')
        self.assertEqual(mtime(root), t0[root], 'the root\'s entries did not change')
        t1 = mtime(inbox)
        # A flag change is no change of the directory's entries.
        imap = dc.imap(u)
        imap.select('INBOX')
        imap.store('1', '+FLAGS', '\\Flagged')
        path1 = os.path.join(inbox, sorted(os.listdir(inbox), key=lambda n: int(n[:-4]))[0])
        self.assertTrue(wait_for(lambda: b'\\Flagged' in os.getxattr(path1, 'user.mail.flags'),
                                 CHANGE_SECONDS, 0.2))
        self.assertEqual(mtime(inbox), t1, 'a flag change does not move the mtime')
        # Expunge.
        imap.store('1', '+FLAGS', '\\Deleted')
        imap.expunge()
        self.assertTrue(wait_for(lambda: mtime(inbox) > t1, CHANGE_SECONDS, 0.2),
                        'an expunge moves INBOX\'s mtime')
        t2 = mtime(inbox)
        # Move to Box/Sub by another client: both change (Box/Sub at its
        # next look, its view older than poll).
        typ, _ = imap.uid('MOVE', '1:*', 'Box/Sub')
        self.assertEqual(typ, 'OK')
        imap.logout()
        self.assertTrue(wait_for(lambda: mtime(inbox) > t2, CHANGE_SECONDS, 0.2),
                        'a move out moves INBOX\'s mtime')

        def sub_moved():
            os.listdir(sub)
            return mtime(sub) > t0[sub]
        self.assertTrue(wait_for(sub_moved, CHANGE_SECONDS, 0.5),
                        'a move in moves Box/Sub\'s mtime')
        self.assertEqual(mtime(box), t0[box], 'Box\'s entries did not change')
        # A mailbox created elsewhere: its parent's mtime moves, and it
        # never shows 1970.
        dc.create(u, 'Box/New')

        def new_shows():
            return 'New' in os.listdir(box)
        self.assertTrue(wait_for(new_shows, CHANGE_SECONDS, 0.5))
        self.assertTrue(wait_for(lambda: mtime(box) > t0[box], CHANGE_SECONDS, 0.2),
                        'a new subdirectory moves its parent\'s mtime')
        self.assertGreater(mtime(os.path.join(box, 'New')), 1e9)
        self.assertEqual(mtime(root), t0[root], 'the root\'s entries did not change')
        # Across a remount nothing moves.
        now = {d: mtime(d) for d in t0}
        cache = m.cache_dir
        m.unmount()
        m2 = self.mount(u, 'times2', cache=cache, options=('poll=%d' % POLL,))
        again = {d.replace(root, m2.mountpoint): v for d, v in now.items()}
        run(['ls', '-lR', m2.mountpoint])
        self.assertEqual({d: mtime(d) for d in again}, again, 'same mtimes after a remount')


if __name__ == '__main__':
    mounttest.main()
