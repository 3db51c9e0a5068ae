#!/usr/bin/env python3
r"""Changing the mailbox through a real mailfs mount (FUSE) over a private
Dovecot.

Every change is made with the programs a user runs (rm, mv, cp, sh, rsync,
mkdir, rmdir, setfattr) and then checked on the server with an independent
client (Python's imaplib, in tests/harness/mailharness.py): what DESIGN.md's
table of IMAP operations promises is what the server holds afterwards.
Each test seeds mailboxes of its own, mounts with a fresh cache directory
(unless it tests reuse) and always unmounts, even when it fails
(tests/harness/mountutil.py).

Remove      rm with delete=trash (moved to Trash byte-exact; rm in Trash
            expunges), delete=expunge (only that UID: another message flagged
            \Deleted survives), delete=refuse (EPERM, nothing changes)
Move        mv MSG OTHERDIR/: UID MOVE, NEWUID.eml at once, same bytes;
            mv to a new name in the same directory: EPERM
CopyIn      cp, shell redirection, rsync -r, rsync -t, rsync -a, cp -p:
            APPENDed exactly once, bytes unchanged, then shown as UID.eml;
            cp -p's time becomes the INTERNALDATE; a rename before the
            upload (also into another mailbox) decides where it goes; a
            message read first does not stop uploads; bare LF messages
            read back as the server serves them; a file held open is
            not uploaded before it is closed
Restore     rsync -a out of the mount, mkdir, rsync -r back in (in the same
            mount, and in a later one): every message exactly once (as a
            multiset of bodies)
Durability  cp while the server is down, SIGKILL, remount: each message
            arrives exactly once; SIGKILL right after close with the server
            up: at most once and at least once; the server coming back
            while still mounted
Crash       a writer SIGKILLed together with mailfs: nothing is sent, its
            files show as NAME.incomplete with the bytes written, the log
            says so; rm discards one, mv sends the other as it is
SlowWriter  a writer pausing 3 s mid-file (in a mailbox made after the
            mount; through a pipe after a message was read), a rewrite
            with O_TRUNC and an append before the upload: one message,
            the final bytes
Unmount     25 mounts, ls, fusermount3 -u: every first unmount succeeds
Mailboxes   mkdir (nested, non-ASCII: modified UTF-7 on the server), rmdir
            (ENOTEMPTY for children, for messages, and for messages only the
            server knows of), mv DIR NEW (children follow, mail stays cached)
Flags       setfattr user.mail.flags: exactly those flags; -x clears them;
            invalid lists: EINVAL and nothing changes; getfattr at once
Refused     writing into a message, truncating, chmod: EPERM (also for a
            message just uploaded); -o ro: every change above gives EROFS

A comment starting "Regression" names a mailfs bug these tests found (and
how it showed); it is fixed, and the test keeps it fixed.  REPORT lines at
the end are findings that are not failures (races allowed for, bonuses).

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import collections
import os
import re
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import eml, fetched_uids, names, read, run, wait_for  # noqa: E402

TEST_TIMEOUT = 120.0    # a hung FUSE request fails the test instead of hanging it
OP_TIMEOUT = 15.0       # one file operation or program
ERROR_SECONDS = 5.0     # "at once": refusals
UPLOAD_SECONDS = 8.0    # a message written into the mount reaches the server
DURABLE_SECONDS = 15.0  # after a remount, uploads left in the cache arrive
SETTLE_SECONDS = 1.0    # then nothing more arrives (no second APPEND)
RECONNECT_SECONDS = 15  # the server was gone for a second: backoff 1, 2, 4 s

USER = 'alice'
dc = None
TMP = None
REPORTS = []            # findings that are not failures, printed at the end

# cp -p and rsync -t: these times must become the INTERNALDATE.
CP_P_TIME = 1551675967  # 2019-03-04 05:06:07 UTC


def report(line):
    REPORTS.append(line)
    print('\nREPORT: ' + line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ helpers

def message(tag, n=0, lf=False, lines=12):
    """A small message with a unique Message-ID (tag, n); CRLF line ends
    unless lf."""
    head = ['From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.org>',
            'To: alice@example.org',
            'Subject: %s %d' % (tag, n),
            'Date: Mon, 04 Mar 2019 05:06:07 +0000',
            'Message-ID: <%s.%d@write-test.example.org>' % (tag, n),
            'MIME-Version: 1.0',
            'Content-Type: text/plain; charset=utf-8',
            'Content-Transfer-Encoding: 8bit']
    body = ['Line %d of %s %d: Grüße über Straße, 台北.' % (i, tag, n)
            for i in range(lines)]
    body.insert(3, 'From the start of a line, and a dot:')
    body.insert(4, '.')
    eol = '\n' if lf else '\r\n'
    return (eol.join(head + [''] + body) + eol).encode('utf-8')


def served(data):
    """What Dovecot serves (BODY[]) for a message appended as data."""
    return mailharness.served_form(data)


def write_file(path, data, mtime=None):
    with open(path, 'wb') as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def fresh(tag):
    return mounttest.fresh(TMP, tag)


def local_dir(tag):
    return tempfile.mkdtemp(prefix=tag + '-', dir=TMP)


def try_op(op, path, arg=None):
    return mounttest.try_op(op, path, arg, timeout=OP_TIMEOUT)


# ------------------------------------------- the independent side (server)

def bodies(box):
    return dc.fetch_bodies(USER, box)


def count(box, data):
    """How many messages in box the server serves as data (appended as)."""
    want = served(data)
    return sum(1 for b in bodies(box).values() if b == want)


def uids_of(box, data):
    want = served(data)
    return sorted(u for u, b in bodies(box).items() if b == want)


def selectable_boxes():
    return [n for n, a in dc.list_mailboxes(USER).items()
            if '\\Noselect' not in a and '\\NonExistent' not in a]


def everywhere(data):
    """[(mailbox, uid)] of every copy of data on the server."""
    want = served(data)
    return [(box, uid) for box in selectable_boxes()
            for uid, b in bodies(box).items() if b == want]


def internaldates(box):
    """{uid: INTERNALDATE as epoch seconds}."""
    return {uid: date for uid, (_, date) in dc.meta(USER, box).items()}


def raw_list():
    """The mailbox names exactly as LIST sends them (modified UTF-7)."""
    m = dc.imap(USER)
    try:
        typ, data = m.list('""', '*')
    finally:
        m.logout()
    out = set()
    for item in data:
        if item is None or item == b')':
            continue
        out.add(mailharness._parse_list_item(item)[2].decode('ascii'))
    return out


def server_state(*boxes):
    """Everything a refused change must leave alone."""
    return (sorted(dc.list_mailboxes(USER)),
            {b: (bodies(b), dc.flags(USER, b)) for b in boxes})


# ------------------------------------------------------------------ base

class MountTest(mounttest.BoundedTest):
    """When a test fails, it shows every line its mounts logged last."""

    TEST_TIMEOUT = TEST_TIMEOUT
    OWN_LOG_LINES = False

    def mount(self, tag='m', cache=None, mode='foreground', options=()):
        mnt, c = fresh(tag)
        return self.started(mountutil.Mount(dc, mnt, cache or c, user=USER, mode=mode,
                                            options=options))

    def assertRuns(self, argv, what=None):
        r = run(argv, timeout=OP_TIMEOUT * 4)
        self.assertEqual(r.returncode, 0, '%s: exit %d: %s'
                         % (what or ' '.join(argv[:2]), r.returncode,
                            r.stderr.decode('utf-8', 'replace').strip()[-500:]))
        return r

    def assertRefused(self, err, op, path, arg=None):
        res, took = try_op(op, path, arg)
        self.assertEqual(res, err, '%s %s' % (op, path))
        self.assertLess(took, ERROR_SECONDS, '%s %s took %.1f s' % (op, path, took))

    def rsync_in(self, argv):
        """Run rsync into the mount: exit 0, or 23 only for the
        rename-after-upload race (CopyIn.test_11), which is reported."""
        r = run(argv, timeout=OP_TIMEOUT * 4)
        if r.returncode == 0:
            return r
        race, other = self.rsync_errors(argv, r)
        if r.returncode == 23 and not other:
            return r
        self.fail('%s: exit %d: %s' % (' '.join(argv[:2]), r.returncode,
                                       '\n'.join(race + other)))

    @staticmethod
    def rsync_errors(argv, r):
        """rsync's error lines: (those of the rename-after-upload race,
        reported; the others)."""
        lines = r.stderr.decode('utf-8', 'replace').strip().splitlines()
        # The failed rename, and what rsync then tries on its temporary
        # name (.NAME.XXXXXX), e.g. "failed to set permissions on".
        race = [l for l in lines
                if re.search(r'rename ".*" -> ".*": No such file or directory', l)
                or re.search(r'"[^"]*/\.[^/"]+\.[A-Za-z0-9]{6}": No such file or directory',
                             l)]
        other = [l for l in lines if l not in race and
                 not l.startswith('rsync error: some files/attrs were not transferred')]
        if race:
            report('%s exited %d: %d rename(s) after the upload failed with ENOENT '
                   '(the race of CopyIn.test_11), e.g. %s'
                   % (' '.join(argv[:2]), r.returncode, len(race), race[0]))
        return race, other

    def wait_uploaded(self, box, msgs, seconds=UPLOAD_SECONDS):
        """Wait until the server has every message of msgs in box, then a
        little longer; assert each is there exactly once.  Returns
        {index: uid}."""
        want = collections.Counter(served(d) for d in msgs)

        def arrived():
            have = collections.Counter(bodies(box).values())
            return all(have[b] >= n for b, n in want.items())
        wait_for(arrived, seconds, 0.2)
        time.sleep(SETTLE_SECONDS)
        have = bodies(box)
        got = collections.Counter(have.values())
        bad = ['message %d: %d times' % (i, got[served(d)])
               for i, d in enumerate(msgs) if got[served(d)] != want[served(d)]]
        self.assertEqual(bad, [], 'in %s on the server (each must be there exactly once)'
                         % box)
        out, used = {}, set()
        for i, d in enumerate(msgs):
            uid = min(u for u, b in have.items() if b == served(d) and u not in used)
            used.add(uid)
            out[i] = uid
        return out

    def wait_listed(self, path, want, seconds=ERROR_SECONDS):
        got = wait_for(lambda: names(path) == want and names(path), seconds, 0.1)
        self.assertEqual(names(path), want, '%s lists %s' % (path, sorted(got or names(path))))


# --------------------------------------------------------------- module set-up

def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-write-test-')
    # The special-use mailboxes (Trash) are created at the first login.
    assert 'Trash' in dc.list_mailboxes(USER)


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


# ------------------------------------------------------------------ 1. rm

class Remove(MountTest):
    def test_01_rm_moves_to_trash_then_rm_in_trash_expunges(self):
        msgs = [message('rm-trash', i) for i in range(3)]
        uids = dc.append_many(USER, 'RmTrash', msgs)
        trash_before = bodies('Trash')
        m = self.mount('rm-trash')
        box = os.path.join(m.mountpoint, 'RmTrash')
        trash = os.path.join(m.mountpoint, 'Trash')
        self.assertEqual(names(box), eml(uids))
        self.assertEqual(names(trash), eml(trash_before))
        victim = uids[1]
        self.assertRuns(['rm', os.path.join(box, '%d.eml' % victim)])
        # The mount at once, without a re-list.
        self.assertEqual(names(box), eml(uids) - eml([victim]))
        # The server: out of the mailbox, in Trash, byte-exact.
        self.assertEqual(sorted(bodies('RmTrash')), sorted(set(uids) - {victim}))
        trash_now = bodies('Trash')
        new = {u: b for u, b in trash_now.items() if u not in trash_before}
        self.assertEqual(list(new.values()), [served(msgs[1])])
        tuid = list(new)[0]
        self.assertEqual(names(trash), eml(trash_now))
        self.assertEqual(read(os.path.join(trash, '%d.eml' % tuid)), trash_now[tuid])
        # rm in Trash itself: expunged, gone from the server entirely.
        self.assertRuns(['rm', os.path.join(trash, '%d.eml' % tuid)])
        self.assertNotIn('%d.eml' % tuid, names(trash))
        self.assertNotIn(tuid, bodies('Trash'))
        self.assertEqual(everywhere(msgs[1]), [])
        # The others are untouched.
        self.assertEqual(everywhere(msgs[0]), [('RmTrash', uids[0])])
        self.assertEqual(everywhere(msgs[2]), [('RmTrash', uids[2])])

    def test_02_delete_expunge_expunges_that_uid_only(self):
        msgs = [message('rm-expunge', i) for i in range(3)]
        uids = dc.append_many(USER, 'RmExpunge', [
            msgs[0], (msgs[1], ('\\Deleted',), None), msgs[2]])
        self.assertIn('\\Deleted', dc.flags(USER, 'RmExpunge')[uids[1]])
        trash_before = bodies('Trash')
        m = self.mount('rm-expunge', options=['delete=expunge'])
        box = os.path.join(m.mountpoint, 'RmExpunge')
        self.assertEqual(names(box), eml(uids))
        self.assertRuns(['rm', os.path.join(box, '%d.eml' % uids[0])])
        self.assertEqual(names(box), eml(uids[1:]))
        # Only that UID went; the other \Deleted message survived.
        self.assertEqual(sorted(bodies('RmExpunge')), uids[1:])
        self.assertEqual(everywhere(msgs[0]), [])
        flags = dc.flags(USER, 'RmExpunge')
        self.assertIn('\\Deleted', flags[uids[1]])
        self.assertNotIn('\\Deleted', flags[uids[2]])
        self.assertEqual(bodies('Trash'), trash_before)

    def test_03_delete_refuse(self):
        msgs = [message('rm-refuse', i) for i in range(2)]
        uids = dc.append_many(USER, 'RmRefuse', msgs)
        before = server_state('RmRefuse', 'Trash')
        m = self.mount('rm-refuse', options=['delete=refuse'])
        box = os.path.join(m.mountpoint, 'RmRefuse')
        self.assertEqual(names(box), eml(uids))
        self.assertRefused('EPERM', 'unlink', os.path.join(box, '%d.eml' % uids[0]))
        r = run(['rm', '-f', os.path.join(box, '%d.eml' % uids[0])], timeout=OP_TIMEOUT)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(names(box), eml(uids))
        self.assertEqual(read(os.path.join(box, '%d.eml' % uids[0])), served(msgs[0]))
        self.assertEqual(server_state('RmRefuse', 'Trash'), before)


# ------------------------------------------------------------------ 2. mv

class Move(MountTest):
    def test_mv_to_other_mailbox(self):
        src_msgs = [message('mv-src', i) for i in range(2)]
        dst_msgs = [message('mv-dst', i) for i in range(5)]
        src = dc.append_many(USER, 'MvSrc', src_msgs)
        dst = dc.append_many(USER, 'MvDst', dst_msgs)
        # A long poll: only the move itself can make NEWUID.eml appear.
        m = self.mount('mv', options=['poll=3600'])
        srcdir = os.path.join(m.mountpoint, 'MvSrc')
        dstdir = os.path.join(m.mountpoint, 'MvDst')
        self.assertEqual(names(srcdir), eml(src))
        self.assertEqual(names(dstdir), eml(dst))
        self.assertRuns(['mv', os.path.join(srcdir, '%d.eml' % src[1]), dstdir + '/'])
        # The server: moved, not copied.
        self.assertEqual(sorted(bodies('MvSrc')), [src[0]])
        dst_now = bodies('MvDst')
        new = sorted(set(dst_now) - set(dst))
        self.assertEqual(len(new), 1, 'new UIDs in MvDst: %s' % new)
        new = new[0]
        self.assertEqual(dst_now[new], served(src_msgs[1]))
        self.assertEqual(everywhere(src_msgs[1]), [('MvDst', new)])
        # The mount, at once: NEWUID.eml in MvDst, the name mv gave is not.
        self.assertEqual(names(dstdir), eml(dst + [new]))
        self.assertEqual(names(srcdir), eml(src[:1]))
        self.assertEqual(read(os.path.join(dstdir, '%d.eml' % new)), dst_now[new])
        self.assertEqual(os.stat(os.path.join(dstdir, '%d.eml' % new)).st_size,
                         len(dst_now[new]))

    def test_mv_to_new_name_in_same_mailbox_eperm(self):
        msgs = [message('mv-same', i) for i in range(2)]
        uids = dc.append_many(USER, 'MvSame', msgs)
        before = server_state('MvSame')
        m = self.mount('mv-same')
        box = os.path.join(m.mountpoint, 'MvSame')
        self.assertEqual(names(box), eml(uids))
        path = os.path.join(box, '%d.eml' % uids[0])
        for newname in ('renamed.eml', '%d.eml' % (uids[-1] + 100)):
            with self.subTest(newname=newname):
                self.assertRefused('EPERM', 'rename', path, os.path.join(box, newname))
        r = run(['mv', path, os.path.join(box, 'other.eml')], timeout=OP_TIMEOUT)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(names(box), eml(uids))
        self.assertEqual(server_state('MvSame'), before)


# --------------------------------------------------------------- 3. cp in

class CopyIn(MountTest):
    """Nothing in these mounts is read before it is written to (see
    test_7_upload_after_a_message_was_read for why)."""

    def check_shown_as_uids(self, boxdir, box, written):
        """After the uploads the mount lists exactly the server's UIDs: the
        names written are gone, and each UID.eml reads as the server
        serves it."""
        have = bodies(box)
        want = eml(have)
        got = wait_for(lambda: names(boxdir) == want, ERROR_SECONDS)
        self.assertTrue(got, '%s lists %s; the server has %s (written as %s)'
                        % (box, sorted(names(boxdir)), sorted(want), sorted(written)))
        bad = [u for u, b in have.items()
               if read(os.path.join(boxdir, '%d.eml' % u)) != b]
        self.assertEqual(bad, [], 'UID.eml differs from the server')

    def test_01_cp(self):
        dc.create(USER, 'CpIn')
        src = local_dir('cp-src')
        a = message('cp-in', 1)
        b = message('cp-in', 2, lines=3000)           # ~200 KB: many writes
        m = self.mount('cp')
        boxdir = os.path.join(m.mountpoint, 'CpIn')
        self.assertEqual(names(boxdir), set())
        self.assertRuns(['cp', write_file(os.path.join(src, 'a.eml'), a), boxdir + '/'])
        self.wait_uploaded('CpIn', [a])
        self.assertRuns(['cp', write_file(os.path.join(src, 'b.eml'), b),
                         os.path.join(boxdir, 'other name')])
        uid = self.wait_uploaded('CpIn', [a, b])
        self.check_shown_as_uids(boxdir, 'CpIn', ['a.eml', 'other name'])
        # INTERNALDATE chosen by the server (no -p): now, and st_mtime shows it.
        dates = internaldates('CpIn')
        for i in uid:
            self.assertLess(abs(dates[uid[i]] - time.time()), 120)
            mt = int(os.stat(os.path.join(boxdir, '%d.eml' % uid[i])).st_mtime)
            if mt != dates[uid[i]]:
                report('cp without -p: st_mtime %d of the uploaded %d.eml is not its '
                       'INTERNALDATE %d (mailfs caches its own clock, not the server\'s)'
                       % (mt, uid[i], dates[uid[i]]))

    def test_02_shell_redirection(self):
        # Regression (fixed; was a bug): `cat FILE > DIR/x` fails with EPERM ("cat: write error:
        # Operation not permitted") and nothing arrives.  The shell opens
        # the file, dup2()s it to fd 1 and closes the original descriptor
        # before cat writes: that close() sends FLUSH, fs_newfile_flush()
        # commits the still empty file and sets NF_STORED, and every later
        # write() is refused by fs_newfile_write() (state != NF_WRITING)
        # although the file is still open.  At the last close the 0-byte
        # file is uploaded, Dovecot refuses it ("Can't save a zero byte
        # message") and "x" stays listed as a failed upload.  A FLUSH is
        # not the last close; a write on a descriptor still open must
        # work (the pending upload re-committed at the next flush).
        dc.create(USER, 'Redirect')
        src = local_dir('redirect')
        data = message('redirect', 1)
        m = self.mount('redirect')
        boxdir = os.path.join(m.mountpoint, 'Redirect')
        self.assertEqual(names(boxdir), set())
        self.assertRuns(['sh', '-c', 'cat "$1" > "$2"', 'sh',
                         write_file(os.path.join(src, 'r.eml'), data),
                         os.path.join(boxdir, 'redirected')], 'cat > file')
        self.wait_uploaded('Redirect', [data])
        self.check_shown_as_uids(boxdir, 'Redirect', ['redirected'])

    def test_03_lf_message_reads_as_served(self):
        # Regression (fixed; was a bug): after uploading a message with bare LF line ends, mailfs
        # caches the bytes it sent (store_done() in fs/imap/newfile.c stores
        # s->data/s->len as the body and size of UID.eml), but Dovecot
        # stores and serves it with CRLF (BODY.PEEK[], RFC822.SIZE).  The
        # mount shows UID.eml with other bytes and another size than the
        # server (DESIGN.md: "a message file holds the raw message exactly
        # as the server stores it (BODY.PEEK[])"), and a mount with a
        # fresh cache shows the CRLF form: two mounts disagree.
        dc.create(USER, 'CpLF')
        src = local_dir('cp-lf')
        data = message('cp-lf', 1, lf=True)
        m = self.mount('cp-lf')
        boxdir = os.path.join(m.mountpoint, 'CpLF')
        self.assertEqual(names(boxdir), set())
        self.assertRuns(['cp', write_file(os.path.join(src, 'lf.eml'), data), boxdir + '/'])
        uid = self.wait_uploaded('CpLF', [data])[0]
        self.assertNotEqual(served(data), data)
        self.wait_listed(boxdir, eml([uid]))
        path = os.path.join(boxdir, '%d.eml' % uid)
        self.assertEqual((os.stat(path).st_size, read(path)),
                         (len(served(data)), bodies('CpLF')[uid]))

    def test_04_cp_p_time_becomes_internaldate(self):
        dc.create(USER, 'CpP')
        src = local_dir('cp-p')
        data = message('cp-p', 1)
        m = self.mount('cp-p')
        boxdir = os.path.join(m.mountpoint, 'CpP')
        self.assertEqual(names(boxdir), set())
        self.assertRuns(['cp', '-p', write_file(os.path.join(src, 'dated.eml'), data,
                                                mtime=CP_P_TIME), boxdir + '/'])
        uid = self.wait_uploaded('CpP', [data])[0]
        self.assertEqual(internaldates('CpP')[uid], CP_P_TIME)
        self.wait_listed(boxdir, eml([uid]))
        self.assertEqual(int(os.stat(os.path.join(boxdir, '%d.eml' % uid)).st_mtime),
                         CP_P_TIME)

    def test_05_rsync_r(self):
        # rsync writes a temporary name (.NAME.XXXXXX) and renames it.
        dc.create(USER, 'RsyncIn')
        m = self.mount('rsync')
        boxdir = os.path.join(m.mountpoint, 'RsyncIn')
        self.assertEqual(names(boxdir), set())
        src = local_dir('rsync-r')
        msgs = [message('rsync-r', i) for i in range(8)]
        for i, d in enumerate(msgs):
            write_file(os.path.join(src, 'msg-%d.eml' % i), d)
        self.rsync_in(['rsync', '-r', src + '/', boxdir + '/'])
        self.wait_uploaded('RsyncIn', msgs)
        self.check_shown_as_uids(boxdir, 'RsyncIn', os.listdir(src))

    def test_06_rsync_t(self):
        # rsync -t FILES DIR/: the time is set on the temporary file after
        # it was closed, when its upload may have started: reported only.
        dc.create(USER, 'RsyncT')
        m = self.mount('rsync-t')
        boxdir = os.path.join(m.mountpoint, 'RsyncT')
        self.assertEqual(names(boxdir), set())
        src = local_dir('rsync-t')
        msgs = [message('rsync-t', i) for i in range(4)]
        files = [write_file(os.path.join(src, 'timed-%d.eml' % i), d,
                            mtime=CP_P_TIME + 3600 * i) for i, d in enumerate(msgs)]
        self.rsync_in(['rsync', '-t'] + files + [boxdir + '/'])
        uid = self.wait_uploaded('RsyncT', msgs)
        self.check_shown_as_uids(boxdir, 'RsyncT', os.listdir(src))
        dates = internaldates('RsyncT')
        off = ['timed-%d.eml: INTERNALDATE %d, mtime %d'
               % (i, dates[uid[i]], CP_P_TIME + 3600 * i)
               for i in range(len(msgs)) if dates[uid[i]] != CP_P_TIME + 3600 * i]
        if off:
            report('rsync -t: %d of %d times did not become the INTERNALDATE (the '
                   'upload starts at close, before rsync sets the time): %s'
                   % (len(off), len(msgs), '; '.join(off)))
        else:
            report('rsync -t: all %d times became the INTERNALDATE' % len(msgs))

    def test_07_upload_after_a_message_was_read(self):
        # Regression (fixed; was a bug): once any message has been read through the mount, files
        # written afterwards are never uploaded.  The first open of a
        # message answers ENOSYS (op_open in fs/imap/ops.c, "no open"
        # support); from then on the kernel sends no OPEN and no RELEASE
        # for regular files, also not RELEASE for files made by CREATE.
        # The upload only starts in fs_newfile_release() (fs/imap/newfile.c),
        # so it never starts: the data waits in the cache, listed under
        # the name it was written as, until the next mount resumes it.
        # (The FLUSH still comes, so nothing is lost.)  In practice: cat
        # or grep one message, then cp/rsync into the mount: nothing
        # arrives.
        msgs = [message('after-read', i) for i in range(2)]
        uids = dc.append_many(USER, 'AfterRead', msgs[:1])
        src = local_dir('after-read')
        m = self.mount('after-read')
        boxdir = os.path.join(m.mountpoint, 'AfterRead')
        self.assertEqual(read(os.path.join(boxdir, '%d.eml' % uids[0])), served(msgs[0]))
        self.assertRuns(['cp', write_file(os.path.join(src, 'n.eml'), msgs[1]), boxdir + '/'])
        self.wait_uploaded('AfterRead', msgs, UPLOAD_SECONDS)
        self.check_shown_as_uids(boxdir, 'AfterRead', ['n.eml'])

    def test_08_rsync_a_into_a_mailbox_exits_0(self):
        # Regression (fixed; was a bug): `rsync -a SRC/ MOUNT/Box/` (and -rt) uploads every message
        # but exits 23: "failed to set times on MOUNT/Box/.: Operation
        # not permitted".  op_setattr() (fs/imap/ops.c) refuses every setattr
        # of a mailbox directory with EPERM, while times, modes and
        # owners of new files are accepted and ignored.  A restore with
        # the usual rsync -a reports failure although it succeeded; as a
        # user of sshfs would expect, a mailbox directory's times and
        # mode should be accepted (and ignored), like a new file's.
        dc.create(USER, 'RsyncA')
        m = self.mount('rsync-a')
        boxdir = os.path.join(m.mountpoint, 'RsyncA')
        self.assertEqual(names(boxdir), set())
        src = local_dir('rsync-a')
        msgs = [message('rsync-a', i) for i in range(3)]
        for i, d in enumerate(msgs):
            write_file(os.path.join(src, 'a-%d.eml' % i), d)
        argv = ['rsync', '-a', src + '/', boxdir + '/']
        r = run(argv, timeout=OP_TIMEOUT * 4)
        self.wait_uploaded('RsyncA', msgs)
        self.check_shown_as_uids(boxdir, 'RsyncA', os.listdir(src))
        self.assertEqual(self.rsync_errors(argv, r)[1], [])
        self.assertIn(r.returncode, (0, 23))

    def test_09_rename_before_upload(self):
        # While the file is open nothing is uploaded; a rename then only
        # changes the name.
        dc.create(USER, 'RenNew')
        m = self.mount('rename-new')
        boxdir = os.path.join(m.mountpoint, 'RenNew')
        self.assertEqual(names(boxdir), set())
        data = message('rename-new', 0)
        fd = os.open(os.path.join(boxdir, '.tmp-0'), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        try:
            os.write(fd, data[:100])
            os.write(fd, data[100:])
            os.rename(os.path.join(boxdir, '.tmp-0'), os.path.join(boxdir, 'final-0.eml'))
            self.assertEqual(names(boxdir), {'final-0.eml'})
            time.sleep(0.5)
            self.assertEqual(bodies('RenNew'), {})
        finally:
            os.close(fd)
        uid = self.wait_uploaded('RenNew', [data])[0]
        self.assertEqual(everywhere(data), [('RenNew', uid)])
        self.wait_listed(boxdir, eml([uid]))

    def test_10_rename_open_file_into_other_mailbox(self):
        # Regression (fixed; was a bug): a new file renamed into another mailbox while it is still
        # open is never uploaded, not even kept in the cache, and stays
        # listed in the new mailbox for as long as the mount lives.  The
        # inode number of a new file is computed from its mailbox
        # (nf_ino(): fs_ino_msg(f->id, FS_INO_MAX_GEN, num)), and
        # fs_newfile_rename() changes f->id; the kernel keeps the old
        # inode number, so the FLUSH and RELEASE of the close find no
        # file (find_ino()), nothing is committed, nothing is sent.
        # close() returns 0: the message is lost at unmount.
        dc.create(USER, 'RenOpenA')
        dc.create(USER, 'RenOpenB')
        m = self.mount('rename-open')
        a = os.path.join(m.mountpoint, 'RenOpenA')
        b = os.path.join(m.mountpoint, 'RenOpenB')
        self.assertEqual((names(a), names(b)), (set(), set()))
        data = message('rename-open', 1)
        fd = os.open(os.path.join(a, 'draft'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.rename(os.path.join(a, 'draft'), os.path.join(b, 'moved.eml'))
            self.assertEqual((names(a), names(b)), (set(), {'moved.eml'}))
        finally:
            os.close(fd)
        uid = self.wait_uploaded('RenOpenB', [data])[0]
        self.assertEqual(everywhere(data), [('RenOpenB', uid)])
        self.wait_listed(b, eml([uid]))

    def test_11_rename_after_upload(self):
        # Regression (fixed; was a bug): fs/imap/newfile.h promises that a rename after the upload
        # succeeded "changes nothing" (rsync renames its temporary file
        # after closing it, when the upload may be done), and
        # fs_newfile_rename() has a branch for it.  But when the upload is
        # done, upload_fn() invalidates the written name in the kernel
        # (fuse_lowlevel_notify_inval_entry) and lookup no longer finds it
        # (find_name() skips NF_DONE), so the kernel's own LOOKUP before
        # RENAME fails and rename() returns ENOENT without reaching
        # mailfs.  rsync then exits 23 ("rename ".x.eml.AbCdEf" ->
        # "x.eml": No such file or directory") although the message
        # arrived once; how often depends on timing.
        dc.create(USER, 'RenLate')
        m = self.mount('rename-late')
        boxdir = os.path.join(m.mountpoint, 'RenLate')
        self.assertEqual(names(boxdir), set())
        data = message('rename-late', 1)
        with open(os.path.join(boxdir, '.late.eml.XyZ123'), 'wb') as f:
            f.write(data)
        uid = self.wait_uploaded('RenLate', [data])[0]
        self.wait_listed(boxdir, eml([uid]))
        res, _ = try_op('rename', os.path.join(boxdir, '.late.eml.XyZ123'),
                        os.path.join(boxdir, 'late.eml'))
        self.assertEqual(res, 'OK')
        self.assertEqual(names(boxdir), eml([uid]))
        self.assertEqual(count('RenLate', data), 1)

    def test_12_rsync_onto_the_name_of_a_message(self):
        # Regression (two) (fixed; was a bug): rsync -r of a file called 1.eml into a mailbox that
        # holds UID 1 (restoring a backup, whose names are UIDs, into a
        # mailbox that hands out the same UIDs).
        # 1. rsync's receiver opens the existing 1.eml as the basis file:
        #    that OPEN of a message gets ENOSYS ("no open", fs/imap/ops.c) and
        #    from then on the kernel sends no RELEASE for new files, so
        #    neither this upload nor any later one of the mount starts
        #    (the bug of test_7, triggered by rsync itself).
        # 2. While the new file waits, readdir lists "1.eml" twice (the
        #    message and the new file renamed onto its name;
        #    fs_newfile_list() does not skip names that are messages).
        have = message('onto-name', 0)
        uid = dc.append(USER, 'OntoName', have)
        self.assertEqual(uid, 1)
        src = local_dir('onto-name')
        # Another size: rsync's quick check (size and mtime) must not
        # take it for the message already there.
        new = message('onto-name', 1, lines=20)
        write_file(os.path.join(src, '1.eml'), new)
        m = self.mount('onto-name')
        boxdir = os.path.join(m.mountpoint, 'OntoName')
        self.assertEqual(names(boxdir), {'1.eml'})
        self.rsync_in(['rsync', '-r', src + '/', boxdir + '/'])
        listed = os.listdir(boxdir)
        self.assertEqual(len(listed), len(set(listed)), 'names listed twice: %s' % listed)
        self.wait_uploaded('OntoName', [have, new])
        self.check_shown_as_uids(boxdir, 'OntoName', ['1.eml'])

    def test_13_held_open_not_uploaded_until_closed(self):
        # Regression (fixed; was a bug): a file held open is uploaded
        # half-written when its writer pauses for more than a second after
        # any program started by it: the child's copy of the descriptor is
        # closed at exec, that close() sent a FLUSH, fs_newfile_flush()
        # took the file as written, the upload started a second later and
        # the writer's next write() got EPERM.  Closing a file now sends
        # mailfs no request at all (no FLUSH; no RELEASE once files need no
        # open); it sees the last close through inotify (fs/imap/closes.h).
        dc.create(USER, 'HeldOpen')
        m = self.mount('held-open')
        boxdir = os.path.join(m.mountpoint, 'HeldOpen')
        self.assertEqual(names(boxdir), set())
        time.sleep(0.5)     # mailfs watches its directories once mounted
        data = message('held-open', 0)
        fd = os.open(os.path.join(boxdir, 'slow.eml'), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        try:
            os.write(fd, data[:50])
            subprocess.run(['true'], check=True)
            time.sleep(2.5)
            self.assertEqual(bodies('HeldOpen'), {}, 'uploaded while still open')
            os.write(fd, data[50:])
        finally:
            os.close(fd)
        uid = self.wait_uploaded('HeldOpen', [data])[0]
        self.assertEqual(everywhere(data), [('HeldOpen', uid)])


# -------------------------------------------------------------- 4. restore

class Restore(MountTest):
    def seed(self, box, tag, first_uid=1):
        msgs = [d for d, _ in mailharness.generate_messages(12, seed=len(tag))]
        msgs.append(msgs[3])                 # the same message twice
        msgs.append(message(tag, 1))
        if first_uid > 1:
            filler = dc.append_many(USER, box, [message(tag + '-filler', i)
                                                for i in range(first_uid - 1)])
            dc.doveadm('expunge', '-u', USER, 'mailbox', box,
                       'uid', '%d:%d' % (filler[0], filler[-1]))
            self.assertEqual(bodies(box), {})
        uids = dc.append_many(USER, box, msgs)
        self.assertEqual(uids[0], first_uid)
        orig = bodies(box)
        self.assertEqual(sorted(orig), sorted(uids))
        return orig

    def backup(self, m, box, orig):
        backup = local_dir('backup')
        self.assertRuns(['rsync', '-a', os.path.join(m.mountpoint, box) + '/', backup + '/'])
        self.assertEqual({n: read(os.path.join(backup, n)) for n in os.listdir(backup)},
                         {'%d.eml' % u: b for u, b in orig.items()})
        return backup

    def restore(self, m, backup, box, orig):
        self.assertRuns(['mkdir', os.path.join(m.mountpoint, box)])
        self.assertIn(box, dc.list_mailboxes(USER))
        self.rsync_in(['rsync', '-r', backup + '/', os.path.join(m.mountpoint, box) + '/'])
        want = collections.Counter(orig.values())
        wait_for(lambda: collections.Counter(bodies(box).values()) == want,
                 UPLOAD_SECONDS, 0.3)
        time.sleep(SETTLE_SECONDS)
        got = collections.Counter(bodies(box).values())
        self.assertTrue(got == want, 'in %s on the server: %d of %d messages; missing %d, '
                        'extra %d' % (box, sum(got.values()), sum(want.values()),
                                      sum((want - got).values()), sum((got - want).values())))
        self.wait_listed(os.path.join(m.mountpoint, box), eml(bodies(box)))

    def test_01_backup_and_restore_in_one_mount(self):
        # Regression (fixed; was a bug): nothing is uploaded -- the bug of
        # CopyIn.test_7_upload_after_a_message_was_read: the backup read
        # messages, so the kernel sends no RELEASE for the files rsync
        # writes and their uploads never start (until a remount).  The
        # backup's names (1.eml ...) are also the UIDs Restored hands out:
        # see CopyIn.test_12.
        orig = self.seed('Orig', 'restore-one')
        m = self.mount('restore')
        backup = self.backup(m, 'Orig', orig)
        self.restore(m, backup, 'Restored', orig)

    def test_02_backup_then_restore_in_a_later_mount(self):
        # The restore in a mount that has read nothing, from a backup whose
        # names (UIDs from 21 on) are not UIDs the new mailbox hands out
        # (1 to 14): neither bug of test_1 is in the way.
        orig = self.seed('Orig2', 'restore-two', first_uid=21)
        m = self.mount('backup')
        backup = self.backup(m, 'Orig2', orig)
        m.unmount()
        m = self.mount('restore2')
        self.restore(m, backup, 'Restored2', orig)


# ------------------------------------------------------------ 5. durability

class Durability(MountTest):
    def test_01_server_down_then_sigkill_then_remount(self):
        box = 'Durable'
        dc.create(USER, box)
        src = local_dir('durable')
        msgs = [message('durable', i) for i in range(4)]
        files = [write_file(os.path.join(src, 'dur-%d.eml' % i), d)
                 for i, d in enumerate(msgs)]
        m = self.mount('durable-1')
        cache = m.cache_dir
        boxdir = os.path.join(m.mountpoint, box)
        self.assertEqual(names(boxdir), set())
        dc.stop()
        try:
            for f in files[:2]:
                self.assertRuns(['cp', f, boxdir + '/'])
            self.assertRuns(['cp'] + files[2:] + [boxdir + '/'])
            # Nothing is lost: the names show and read back.
            self.assertEqual(names(boxdir), {os.path.basename(f) for f in files})
            self.assertEqual(read(os.path.join(boxdir, 'dur-0.eml')), msgs[0])
            m.kill()
            m.unmount()
        finally:
            dc.start()
        self.assertEqual(bodies(box), {})
        m2 = self.mount('durable-2', cache=cache)
        uid = self.wait_uploaded(box, msgs, DURABLE_SECONDS)
        self.wait_listed(os.path.join(m2.mountpoint, box), eml(uid.values()))

    def test_02_sigkill_right_after_close(self):
        box = 'Racy'
        dc.create(USER, box)
        src = local_dir('racy')
        all_msgs, early, incomplete = [], [], []
        for rnd, delay in enumerate((0, 0, 0.003, 0.01, 0.03)):
            msgs = [message('racy-%d' % rnd, i, lines=40 * (i + 1)) for i in range(4)]
            files = [write_file(os.path.join(src, 'r%d-%d.eml' % (rnd, i)), d)
                     for i, d in enumerate(msgs)]
            all_msgs += msgs
            m = self.mount('racy-%d' % rnd)
            boxdir = os.path.join(m.mountpoint, box)
            self.assertTrue(os.path.isdir(boxdir))
            self.assertRuns(['cp'] + files + [boxdir + '/'])
            if delay:
                time.sleep(delay)
            m.kill()
            m.unmount()
            before = collections.Counter(bodies(box).values())
            over = [i for i, d in enumerate(msgs) if before[served(d)] > 1]
            self.assertEqual(over, [], 'round %d: sent twice before the remount' % rnd)
            early.append('%d/%d' % (sum(before[served(d)] for d in msgs), len(msgs)))
            m2 = self.mount('racy-%d-again' % rnd, cache=m.cache_dir)
            boxdir2 = os.path.join(m2.mountpoint, box)
            # A file whose close mailfs had not seen yet when it was
            # killed is not sent: it is shown as NAME.incomplete (see
            # Crash), with every byte cp wrote; renaming it sends it.
            sent = [d for d in msgs if before[served(d)] == 0]
            wait_for(lambda: all(count(box, d) == 1 or
                                 'r%d-%d.eml.incomplete' % (rnd, msgs.index(d))
                                 in names(boxdir2) for d in sent),
                     DURABLE_SECONDS, 0.3)
            kept = sorted(n for n in names(boxdir2) if n.endswith('.incomplete'))
            for name in kept:
                i = int(re.match(r'r\d+-(\d+)\.eml\.incomplete$', name).group(1))
                self.assertEqual(read(os.path.join(boxdir2, name)), msgs[i], name)
                self.assertEqual(count(box, msgs[i]), 0, name + ' was sent')
                os.rename(os.path.join(boxdir2, name),
                          os.path.join(boxdir2, name[:-len('.incomplete')]))
            incomplete.append(len(kept))
            with self.subTest(round=rnd, delay=delay,
                              before_remount=sum(before[served(d)] for d in msgs)):
                self.wait_uploaded(box, all_msgs, DURABLE_SECONDS)
            m2.unmount()
        report('SIGKILL right after cp, server up: on the server before the remount, '
               'per round: %s; kept as NAME.incomplete (close not seen yet): %s; '
               'after the remount (and renaming those), each exactly once'
               % (', '.join(early), incomplete))

    def test_03_server_back_while_mounted(self):
        # Regression (fixed; was a bug): an upload that failed because the server was down is only
        # retried at the next mount.  fs/imap/newfile.h promises "at mount time
        # and whenever the server comes back, the cache's pending uploads
        # are sent", but fs_newfile_resume() is called only from main()
        # (fs/main.c), never when a worker reconnects (fs/net/sync.c): a
        # message copied in while the server is down stays in the cache,
        # shown under the name it was written as, until remounted -- even
        # after mailfs has reconnected (it shows mail that arrived since).
        box = 'BackAgain'
        dc.create(USER, box)
        src = local_dir('back')
        data = message('back-again', 1)
        m = self.mount('back', options=['poll=1'])
        boxdir = os.path.join(m.mountpoint, box)
        self.assertEqual(names(boxdir), set())
        dc.stop()
        try:
            self.assertRuns(['cp', write_file(os.path.join(src, 'back.eml'), data),
                             boxdir + '/'])
            time.sleep(1)
        finally:
            dc.start()

        canary = dc.append(USER, box, message('back-canary', 1))

        def reconnected():
            return '%d.eml' % canary in names(boxdir)  # poll=1: lists again
        self.assertTrue(wait_for(reconnected, RECONNECT_SECONDS, 0.5),
                        'mailfs did not reconnect within %d s' % RECONNECT_SECONDS)
        wait_for(lambda: count(box, data) > 0, 3, 0.3)
        self.assertEqual(count(box, data), 1,
                         'not on the server, although mailfs is connected again')


# --------------------------------------------------- 5b. closes and crashes

_WRITER = r"""
import os, sys, time
paths = sys.argv[1:]
fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) for p in paths]
data = sys.stdin.buffer.read()
for fd in fds:
    os.write(fd, data)
print('written', flush=True)
time.sleep(300)
"""


class Crash(MountTest):
    """A writer cut off together with mailfs: what it wrote is kept, never
    sent, and shown as NAME.incomplete until the user decides."""

    def test_01_writer_killed_with_mailfs(self):
        # Regression (fixed; was a bug): the prefix written before the
        # crash was uploaded as a message at the next mount.  The cache
        # record of a file being written said "stored, not sent yet"
        # (CACHE_PENDING_NEW) like that of a closed file, and
        # fs_newfile_resume() sent every such record.
        box = 'CutOff'
        dc.create(USER, box)
        whole = [message('cut-off', i, lines=400) for i in range(2)]
        half = [d[:len(d) // 2] for d in whole]
        other = dc.append(USER, box, message('cut-off-read', 0))
        m = self.mount('cut-off')
        cache = m.cache_dir
        boxdir = os.path.join(m.mountpoint, box)
        # A message read first: the kernel then skips opens, and sends no
        # RELEASE of the files it creates either.
        self.assertEqual(read(os.path.join(boxdir, '%d.eml' % other)),
                         served(message('cut-off-read', 0)))
        writer = subprocess.Popen(
            [sys.executable, '-c', _WRITER, os.path.join(boxdir, 'a.eml'),
             os.path.join(boxdir, 'b.eml')],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            writer.stdin.write(half[0])
            writer.stdin.close()
            line = wait_for(lambda: writer.stdout.readline(), OP_TIMEOUT)
            self.assertEqual(line, b'written\n')
            time.sleep(1.5)     # longer than any "left alone" rule
            self.assertEqual(count(box, half[0]), 0, 'uploaded while being written')
            m.kill()            # mailfs first: it sees no close
        finally:
            writer.kill()
            writer.wait(OP_TIMEOUT)
            writer.stdout.close()
        m.unmount()
        self.assertEqual(sorted(bodies(box)), [other])

        m2 = self.mount('cut-off-2', cache=cache)
        boxdir = os.path.join(m2.mountpoint, box)
        shown = {'%d.eml' % other, 'a.eml.incomplete', 'b.eml.incomplete'}
        time.sleep(DURABLE_SECONDS / 3)
        self.assertEqual(sorted(bodies(box)), [other], 'a cut-off file was sent')
        self.wait_listed(boxdir, shown)
        for n in ('a.eml.incomplete', 'b.eml.incomplete'):
            self.assertEqual(read(os.path.join(boxdir, n)), half[0], n)
            self.assertEqual(os.stat(os.path.join(boxdir, n)).st_size, len(half[0]))
        log = m2.log()
        for n in ('a.eml.incomplete', 'b.eml.incomplete'):
            self.assertRegex(log, r'%s/%s: %d bytes written before mailfs stopped, but '
                                  r'never closed' % (box, re.escape(n), len(half[0])))

        # What the user does: rm discards one, the copy is made again;
        # renaming the other sends it as it is.
        os.unlink(os.path.join(boxdir, 'a.eml.incomplete'))
        src = local_dir('cut-off')
        self.assertRuns(['cp', write_file(os.path.join(src, 'a.eml'), whole[0]),
                         boxdir + '/'])
        os.rename(os.path.join(boxdir, 'b.eml.incomplete'), os.path.join(boxdir, 'b.eml'))
        self.wait_uploaded(box, [whole[0], half[0]])
        self.assertEqual(len(bodies(box)), 3)
        m2.unmount()
        # Nothing comes back at the next mount.
        m3 = self.mount('cut-off-3', cache=cache)
        self.wait_listed(os.path.join(m3.mountpoint, box), eml(bodies(box)))
        time.sleep(SETTLE_SECONDS)
        self.assertEqual(len(bodies(box)), 3)


class SlowWriter(MountTest):
    """A writer that pauses mid-file gets its file uploaded once, whole."""

    def slow_write(self, path, data, pause, box):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data[:len(data) // 3])
            time.sleep(pause)
            self.assertEqual(count(box, data[:len(data) // 3]), 0,
                             'uploaded while its writer paused')
            os.write(fd, data[len(data) // 3:])
        finally:
            os.close(fd)

    def test_01_pause_in_a_new_mailbox(self):
        # Regression (fixed; was a bug): a file written into a mailbox
        # that mailfs did not watch yet (made after the mount) was taken
        # as written once left alone for a second: the first third was
        # uploaded, and the writer's next write() failed with EPERM.
        m = self.mount('slow')
        os.mkdir(os.path.join(m.mountpoint, 'SlowNew'))
        data = message('slow-new', 0, lines=200)
        self.slow_write(os.path.join(m.mountpoint, 'SlowNew', 'slow.eml'), data, 3,
                        'SlowNew')
        uid = self.wait_uploaded('SlowNew', [data])[0]
        self.assertEqual(everywhere(data), [('SlowNew', uid)])

    def test_02_pause_after_a_message_was_read(self):
        # The kernel skips opens once a message was read, and sends no
        # RELEASE of created files: only inotify sees the close.
        box = 'SlowRead'
        dc.create(USER, box)
        first = dc.append(USER, box, message('slow-read-first', 0))
        m = self.mount('slow-read')
        boxdir = os.path.join(m.mountpoint, box)
        self.assertEqual(read(os.path.join(boxdir, '%d.eml' % first)),
                         served(message('slow-read-first', 0)))
        data = message('slow-read', 0, lines=200)
        src = write_file(os.path.join(local_dir('slow'), 's.eml'), data)
        t = time.monotonic()
        proc = subprocess.Popen(['sh', '-c', '(head -c 3000 "$1"; sleep 3; '
                                 'tail -c +3001 "$1") > "$2"', 'sh', src,
                                 os.path.join(boxdir, 'piped.eml')],
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(2)
        self.assertEqual(count(box, data[:3000]), 0, 'uploaded while its writer paused')
        try:
            self.assertEqual(proc.wait(OP_TIMEOUT), 0, proc.stderr.read())
        finally:
            proc.stderr.close()
        self.assertGreater(time.monotonic() - t, 3)
        uid = self.wait_uploaded(box, [data])[0]
        self.assertEqual(everywhere(data), [(box, uid)])

    def test_03_written_again_before_the_upload(self):
        # Regression (fixed; was a bug): `cat new > FILE` over a file not
        # uploaded yet, once the kernel skips opens, kept the old bytes
        # past the new end: O_TRUNC was a flag of an OPEN the kernel no
        # longer sends (FUSE_CAP_ATOMIC_O_TRUNC), so mailfs never saw it.
        box = 'Rewrite'
        dc.create(USER, box)
        first = dc.append(USER, box, message('rewrite-first', 0))
        m = self.mount('rewrite')
        boxdir = os.path.join(m.mountpoint, box)
        self.assertEqual(read(os.path.join(boxdir, '%d.eml' % first)),
                         served(message('rewrite-first', 0)))
        long_, short = message('rewrite', 1, lines=100), message('rewrite', 2)
        path = os.path.join(boxdir, 'again.eml')
        write_file(path, long_)
        write_file(path, short)             # within the second before the upload
        self.assertEqual(read(path), short)
        # Appended to (a descriptor mailfs is not told of), with a pause.
        more = b'More text.\r\n'
        with open(path, 'ab', buffering=0) as f:
            f.write(more[:5])
            time.sleep(2)
            self.assertEqual(count(box, short + more[:5]), 0, 'uploaded while open')
            f.write(more[5:])
        uid = self.wait_uploaded(box, [short + more])
        self.assertEqual(count(box, long_), 0)
        self.assertEqual(count(box, short), 0)
        self.assertEqual(len(bodies(box)), 2, uid)


class Unmount(MountTest):
    ROUNDS = 25

    def test_01_idle_mount_unmounts_the_first_time(self):
        # Regression (fixed; was a bug): fusermount3 -u failed with EBUSY
        # about one time in seven right after a mount and an ls: mailfs
        # watched (inotify) every mailbox directory through its own mount
        # point at mount time, and while that walk was under way the mount
        # was busy.  Now a mailbox is watched only when a file is created
        # in it.
        box = 'Unmount'
        dc.create(USER, box)
        # Mailboxes enough for a walk through all of them to take a while.
        for i in range(30):
            dc.create(USER, 'Unmount/%02d' % i)
        first = dc.append(USER, box, message('unmount', 0))
        cache = fresh('unmount-cache')[1]
        src = local_dir('unmount')
        failed, sent = [], []
        for i in range(self.ROUNDS):
            m = self.mount('unmount-%d' % i, cache=cache, mode='daemon')
            boxdir = os.path.join(m.mountpoint, box)
            names(m.mountpoint)
            self.assertIn('%d.eml' % first, names(boxdir))
            if i % 5 == 4:
                # After a write and its upload the mount is idle again.
                data = message('unmount', i)
                self.assertRuns(['cp', write_file(os.path.join(src, '%d.eml' % i), data),
                                 boxdir + '/'])
                sent.append(data)
                self.wait_uploaded(box, sent)
                names(boxdir)
            r = subprocess.run([mountutil.fusermount(), '-u', m.mountpoint],
                               capture_output=True, text=True, timeout=OP_TIMEOUT)
            if r.returncode != 0:
                failed.append('%d: %s' % (i, r.stderr.strip()))
            m.unmount()
        self.assertEqual(failed, [], '%d of %d first unmounts failed'
                         % (len(failed), self.ROUNDS))


# -------------------------------------------------------------- 6. mailboxes

class Mailboxes(MountTest):
    NAME = 'Größe 台北 & Co'
    CHILD = 'Unterordner ✓'

    def test_01_mkdir_nested_non_ascii_then_rmdir(self):
        dc.append(USER, 'FullBox', message('full', 1))
        m = self.mount('mkdir')
        top = os.path.join(m.mountpoint, self.NAME)
        child = os.path.join(top, self.CHILD)
        self.assertRuns(['mkdir', top])
        self.assertTrue(os.path.isdir(top))
        self.assertIn(self.NAME, names(m.mountpoint))
        self.assertIn(self.NAME, dc.list_mailboxes(USER))
        self.assertIn(mailharness.utf7_encode(self.NAME), raw_list())
        self.assertRuns(['mkdir', child])
        self.assertEqual(names(top), {self.CHILD})
        full = self.NAME + '/' + self.CHILD
        self.assertIn(full, dc.list_mailboxes(USER))
        self.assertIn(mailharness.utf7_encode(full), raw_list())
        self.assertEqual(os.stat(top).st_nlink, 3)
        # A mailbox with children, or with messages: ENOTEMPTY, nothing goes.
        before = server_state(full, 'FullBox')
        self.assertRefused('ENOTEMPTY', 'rmdir', top)
        self.assertRefused('ENOTEMPTY', 'rmdir', os.path.join(m.mountpoint, 'FullBox'))
        self.assertEqual(server_state(full, 'FullBox'), before)
        self.assertEqual(names(top), {self.CHILD})
        # Empty: DELETE.
        self.assertRuns(['rmdir', child])
        self.assertNotIn(full, dc.list_mailboxes(USER))
        self.assertEqual(names(top), set())
        self.assertRuns(['rmdir', top])
        self.assertNotIn(self.NAME, dc.list_mailboxes(USER))
        self.assertNotIn(self.NAME, names(m.mountpoint))

    def test_02_rmdir_asks_the_server(self):
        # Empty when listed, but another client put a message in since.
        dc.create(USER, 'Sneaky')
        dc.create(USER, 'Leer')
        m = self.mount('sneaky')
        sneaky = os.path.join(m.mountpoint, 'Sneaky')
        self.assertEqual(names(sneaky), set())
        self.assertEqual(names(os.path.join(m.mountpoint, 'Leer')), set())
        data = message('sneaky', 1)
        uid = dc.append(USER, 'Sneaky', data)
        self.assertRefused('ENOTEMPTY', 'rmdir', sneaky)
        self.assertIn('Sneaky', dc.list_mailboxes(USER))
        self.assertEqual(bodies('Sneaky'), {uid: served(data)})
        self.assertRuns(['rmdir', os.path.join(m.mountpoint, 'Leer')])
        self.assertNotIn('Leer', dc.list_mailboxes(USER))
        self.assertNotIn('Leer', names(m.mountpoint))

    def test_03_mv_dir(self):
        msgs = [message('ren-dir', i) for i in range(3)]
        uids = dc.append_many(USER, 'RenSrc', msgs)
        kid = dc.append(USER, 'RenSrc/Kind', message('ren-dir-kid', 1))
        new = 'Umbenannt — ✓ & Ärger'
        m = self.mount('mv-dir', mode='debug')
        old = os.path.join(m.mountpoint, 'RenSrc')
        self.assertEqual(names(old), eml(uids) | {'Kind'})
        for u in uids:
            self.assertEqual(read(os.path.join(old, '%d.eml' % u)), served(msgs[uids.index(u)]))
        self.assertRuns(['mv', old, os.path.join(m.mountpoint, new)])
        boxes = dc.list_mailboxes(USER)
        self.assertNotIn('RenSrc', boxes)
        self.assertNotIn('RenSrc/Kind', boxes)
        self.assertIn(new, boxes)
        self.assertIn(new + '/Kind', boxes)
        self.assertIn(mailharness.utf7_encode(new), raw_list())
        server = bodies(new)
        self.assertEqual(sorted(server.values()), sorted(served(d) for d in msgs))
        self.assertEqual(sorted(bodies(new + '/Kind')), [kid])
        # The mount, at once.
        top = names(m.mountpoint)
        self.assertIn(new, top)
        self.assertNotIn('RenSrc', top)
        newdir = os.path.join(m.mountpoint, new)
        self.assertEqual(names(newdir), eml(server) | {'Kind'})
        self.assertEqual(names(os.path.join(newdir, 'Kind')), eml([kid]))
        since = m.log_size()
        self.assertEqual({u: read(os.path.join(newdir, '%d.eml' % u)) for u in server}, server)
        time.sleep(0.2)
        again = fetched_uids(m.sent_commands(since))
        if again:
            report('mv DIR NEW: the cached messages were fetched again after the '
                   'rename (UIDs %s)' % sorted(again))
        else:
            report('mv DIR NEW: the cached messages read without being fetched again '
                   '(bonus met)')


# ------------------------------------------------------------------ 7. flags

class Flags(MountTest):
    def getfattr(self, path):
        r = run(['getfattr', '--only-values', '-n', 'user.mail.flags', path],
                timeout=OP_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr)
        return set(r.stdout.decode().split())

    def test_setfattr_flags(self):
        msgs = [message('flags', i) for i in range(2)]
        uids = dc.append_many(USER, 'FlagBox', [(msgs[0], ('\\Answered',), None), msgs[1]])
        m = self.mount('flags')
        path = os.path.join(m.mountpoint, 'FlagBox', '%d.eml' % uids[0])
        self.assertEqual(self.getfattr(path), {'\\Answered'})
        want = {'\\Seen', '\\Flagged', '$Work'}
        self.assertRuns(['setfattr', '-n', 'user.mail.flags', '-v', '\\Seen \\Flagged $Work',
                         path])
        self.assertEqual(dc.flags(USER, 'FlagBox'), {uids[0]: want, uids[1]: set()})
        self.assertEqual(self.getfattr(path), want)
        # Invalid lists: EINVAL, nothing changes.
        for bad in ('(bad', '\\Recent', '\\Bogus', '\\Seen (bad', 'a"b'):
            with self.subTest(value=bad):
                self.assertRefused('EINVAL', 'setxattr', path, bad)
                self.assertEqual(dc.flags(USER, 'FlagBox')[uids[0]], want)
                self.assertEqual(self.getfattr(path), want)
        r = run(['setfattr', '-n', 'user.mail.flags', '-v', '\\Recent', path],
                timeout=OP_TIMEOUT)
        self.assertNotEqual(r.returncode, 0)
        # Replacing, not adding.
        self.assertRuns(['setfattr', '-n', 'user.mail.flags', '-v', '\\Draft', path])
        self.assertEqual(dc.flags(USER, 'FlagBox')[uids[0]], {'\\Draft'})
        self.assertEqual(self.getfattr(path), {'\\Draft'})
        # -x clears them.
        self.assertRuns(['setfattr', '-x', 'user.mail.flags', path])
        self.assertEqual(dc.flags(USER, 'FlagBox'), {uids[0]: set(), uids[1]: set()})
        self.assertEqual(self.getfattr(path), set())
        self.assertEqual(bodies('FlagBox'), {u: served(d) for u, d in zip(uids, msgs)})


# ---------------------------------------------------------------- 8. refused

class Refused(MountTest):
    def test_01_existing_messages_eperm(self):
        msgs = [message('immutable', i) for i in range(2)]
        uids = dc.append_many(USER, 'Immutable', msgs)
        src = local_dir('immutable')
        up = message('immutable-up', 1)
        m = self.mount('immutable')
        box = os.path.join(m.mountpoint, 'Immutable')
        self.assertEqual(names(box), eml(uids))
        # One more, written through the mount: once uploaded it is a
        # message like the others.
        self.assertRuns(['cp', write_file(os.path.join(src, 'up.eml'), up), box + '/'])
        new = self.wait_uploaded('Immutable', [up])[0]
        self.wait_listed(box, eml(uids + [new]))
        before = server_state('Immutable')
        for uid in (uids[0], new):
            path = os.path.join(box, '%d.eml' % uid)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o444)
            for op in ('write', 'write_trunc', 'append', 'pwrite_rw', 'truncate', 'chmod'):
                with self.subTest(uid=uid, op=op):
                    self.assertRefused('EPERM', op, path)
            for argv in (['sh', '-c', 'echo x > "$1"', 'sh', path],
                         ['sh', '-c', 'echo x >> "$1"', 'sh', path],
                         ['truncate', '-s', '0', path]):
                r = run(argv, timeout=OP_TIMEOUT)
                with self.subTest(uid=uid, argv=argv[:3]):
                    self.assertNotEqual(r.returncode, 0)
                    self.assertIn(b'Operation not permitted', r.stderr)
        self.assertEqual(read(os.path.join(box, '%d.eml' % uids[0])), served(msgs[0]))
        self.assertEqual(read(os.path.join(box, '%d.eml' % new)), served(up))
        self.assertEqual(server_state('Immutable'), before)

    def test_02_read_only_mount_erofs(self):
        msgs = [message('ro', i) for i in range(2)]
        uids = dc.append_many(USER, 'RoBox', [(msgs[0], ('\\Seen',), None), msgs[1]])
        dc.create(USER, 'RoOther')
        dc.create(USER, 'RoEmpty')
        before = server_state('RoBox', 'RoOther', 'RoEmpty', 'Trash')
        m = self.mount('ro', options=['ro'])
        mnt = m.mountpoint
        msg = os.path.join(mnt, 'RoBox', '%d.eml' % uids[0])
        self.assertEqual(names(os.path.join(mnt, 'RoBox')), eml(uids))
        src = write_file(os.path.join(local_dir('ro'), 'new.eml'), message('ro-new', 1))
        for op, path, arg in [
                ('unlink', msg, None),
                ('rename', msg, os.path.join(mnt, 'RoOther') + '/%d.eml' % uids[0]),
                ('rename', msg, os.path.join(mnt, 'RoBox', 'renamed.eml')),
                ('create_msg', os.path.join(mnt, 'RoBox', 'new.eml'), None),
                ('write', msg, None),
                ('write_trunc', msg, None),
                ('truncate', msg, None),
                ('chmod', msg, None),
                ('setxattr', msg, '\\Flagged'),
                ('removexattr', msg, None),
                ('mkdir', os.path.join(mnt, 'RoNew'), None),
                ('rmdir', os.path.join(mnt, 'RoEmpty'), None),
                ('rename', os.path.join(mnt, 'RoEmpty'), os.path.join(mnt, 'RoRenamed'))]:
            with self.subTest(op=op, path=os.path.relpath(path, mnt)):
                self.assertRefused('EROFS', op, path, arg)
        for argv in (['cp', src, os.path.join(mnt, 'RoBox') + '/'],
                     ['rsync', '-r', os.path.dirname(src) + '/', os.path.join(mnt, 'RoBox') + '/'],
                     ['sh', '-c', 'cat "$1" > "$2"', 'sh', src, os.path.join(mnt, 'RoBox', 'x')],
                     ['rm', '-f', msg],
                     ['mv', msg, os.path.join(mnt, 'RoOther') + '/'],
                     ['setfattr', '-n', 'user.mail.flags', '-v', '\\Flagged', msg],
                     ['setfattr', '-x', 'user.mail.flags', msg]):
            r = run(argv, timeout=OP_TIMEOUT * 2)
            with self.subTest(argv=argv[0]):
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(b'Read-only file system', r.stderr)
        self.assertEqual(read(msg), served(msgs[0]))
        time.sleep(0.3)
        self.assertEqual(server_state('RoBox', 'RoOther', 'RoEmpty', 'Trash'), before)


if __name__ == '__main__':
    mounttest.main(REPORTS)
