#!/usr/bin/env python3
r"""mailfs mounting a POP3 account (FUSE) over a private Dovecot.

A POP3 mount is an append-only MOUNTPOINT/INBOX/1.eml 2.eml ..., numbered in
download order; files never change and never disappear.  Every byte read
through the mount is compared with what Dovecot returns to an independent
client (Python's poplib, dc.pop3_messages(): RETR adds CRLF to a message
that does not end in a newline, and so does mailfs, which stores what RETR
served).  Every account below is its own Dovecot user, so that the
scenarios do not depend on each other; every mount has a fresh cache unless
it tests reuse, and is always unmounted (tests/harness/mountutil.py).

Browse        POP3S: the corpus in INBOX, byte-exact, numbered 1..N in
              download order, st_size, modes, ls, cat, grep -r, rsync -a,
              user.mail.* decoded (getfattr)
Stls          pop3:// with mandatory STLS: the same bytes; STLS before AUTH
NewMail       a message appended on the server shows up within poll (poll
              timer alone, without listing) as the next number; listing
              INBOX checks at once
ServerDeletes messages deleted on the server (POP3 DELE, doveadm expunge)
              stay with their bytes; nothing is downloaded again; numbers
              are never reused
Remount       same cache: nothing downloaded again (mailfs's RETR lines and
              Dovecot's retr= counter), same numbers and inodes; -o offline
              and a stopped server serve the cache; new mail once it is back
PopKeep       pop_keep=0 deletes only what is cached; crash (SIGKILL) right
              before DELE loses and duplicates nothing; the default and
              pop_keep=DAYS keep everything on the server
Stall         the server freezes during the first session: the first listing
              returns within the timeout; afterwards each message exactly once
CacheDir      a relative cache_dir is relative to the starting directory
Writes        create, write, truncate, rm, mv, mkdir, rmdir, touch, chmod,
              setfattr: EPERM at once
MountErrors   wrong password (the server's text quoted), unknown CA: one
              line, non-zero exit, no mount left
BigMessage    a 20 MB message: bounded peak memory while downloading it, reads
              at odd offsets across the cache's pieces, offline from the cache;
              its record in the cache damaged: EIO at once, not a hang

How downloads are counted: mailfs -d logs every POP3 command it sends as
"pop3 USER@HOST: C: RETR N"; independently Dovecot logs, when each POP3
session ends, "pop3(USER)...: Disconnected: ... retr=COUNT/BYTES,
del=COUNT/..." (its default pop3_logout_format), which the tests add up over
the sessions of one user since a log offset.

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import collections
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import b64word, inbox, mount_bytes, read, retr_sent, run, vm_hwm  # noqa: E402
from mounttest import with_env  # noqa: E402

TEST_TIMEOUT = 90.0     # a hung FUSE request fails the test instead of hanging it
OP_TIMEOUT = 15.0       # one file operation in a child process
ERROR_SECONDS = 5.0     # "at once": mount errors, refused writes
SESSION_SECONDS = 20.0  # a POP3 session of a few hundred small messages
POLL = 2                # poll= for the scenarios that wait for the timer

USERS = {'alice': 'alicepw', 'bob': 'bobpw', 'carol': 'carolpw', 'dave': 'davepw',
         'erin': 'erinpw', 'frank': 'frankpw', 'grace': 'gracepw', 'heidi': 'heidipw',
         'ivan': 'ivanpw', 'judy': 'judypw', 'kim': 'kimpw'}

dc = None
TMP = None
SERVED = {}             # alice's maildrop as poplib gets it: {uidl: bytes}, in order
SPECIAL = {}            # {what: uidl} of the messages appended by setUpModule

XATTR_SUBJECT = 'Grüße aus Zürich — 台北 ✓'
TOKEN = 'pop-mount-needle-7f3a9c'


# ------------------------------------------------------------------ helpers

def fresh(tag):
    return mounttest.fresh(TMP, tag)


def try_op(op, path, arg=None):
    return mounttest.try_op(op, path, arg, timeout=OP_TIMEOUT, xattr='user.mail.subject')


def wait_until(pred, seconds, step=0.1):
    return mounttest.wait_for(pred, seconds, step)


def new_mount(user, tag, cache=None, mode='daemon', options=(), scheme='pop3s',
              **kw):
    mnt, c = fresh(tag)
    return mountutil.Mount(dc, mnt, cache or c, user=user, mode=mode,
                           options=options, url=dc.url(scheme, user), **kw)


def names(n):
    return {'%d.eml' % i for i in range(1, n + 1)}


def numbered(files):
    """The bytes of {N.eml: bytes} in number order."""
    return [files['%d.eml' % i] for i in sorted(int(n.split('.')[0]) for n in files)]


def server_uidls(user):
    """UIDLs of USER's maildrop, in maildrop order (no RETR, so no \\Seen)."""
    p = dc.pop3(user)
    try:
        return [e.split()[1].decode() for e in p.uidl()[1]]
    finally:
        p.quit()


def dele_sent(log):
    return [int(n) for n in re.findall(r' C: DELE (\d+)', log)]


_LOGOUT = r'pop3\(%s\)<[^>]*><[^>]*>: Info: Disconnected: .*?retr=(\d+)/\d+, del=(\d+)/\d+'


def dovecot_mark(user):
    """A log offset after which only new POP3 sessions of USER end: waits
    (bounded) until Dovecot has logged the end of every session of USER
    that logged in (it logs a moment after the client's QUIT)."""
    def settled():
        log = dc.log()
        return (log.count('pop3-login: Info: Login: user=<%s>' % user) ==
                len(re.findall(r'pop3\(%s\)<[^>]*><[^>]*>: Info: Disconnected'
                               % re.escape(user), log)))
    wait_until(settled, 5)
    return dc.log_size()


def dovecot_sessions(user, since):
    """[(retr, del)] of USER's POP3 sessions that ended since log offset SINCE
    (call dovecot_mark() first, so that all of them are logged)."""
    dovecot_mark(user)
    return [(int(a), int(b)) for a, b in re.findall(_LOGOUT % re.escape(user), dc.log(since))]


class PopTest(mounttest.BoundedTest):
    TEST_TIMEOUT = TEST_TIMEOUT

    def mount(self, user, tag='m', env=None, **kw):
        return self.started(new_mount(user, tag, **kw), env)

    def assertSameMail(self, files, served, what=''):
        """{N.eml: bytes} holds every message of SERVED ({uidl: bytes})
        exactly once, numbered 1..N without gaps."""
        self.assertEqual(set(files), names(len(served)), what + 'names')
        want = collections.Counter(served.values())
        got = collections.Counter(files.values())
        self.assertEqual(len(got - want) + len(want - got), 0,
                         '%s%d messages differ from the server\'s (%d extra, %d missing)'
                         % (what, len(got - want) + len(want - got),
                            sum((got - want).values()), sum((want - got).values())))

    def wait_quits(self, m, since, count, seconds=SESSION_SECONDS):
        """Wait for COUNT completed sessions (C: QUIT + S: +OK) in m's log since SINCE."""
        ok = wait_until(lambda: len(re.findall(r' S: \+OK Logging out',
                                               m.log_since(since))) >= count, seconds)
        self.assertTrue(ok, 'fewer than %d POP3 sessions within %.0f s:\n%s'
                        % (count, seconds, m.log_since(since)[-2000:]))


# --------------------------------------------------------------- module set-up

def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-pop-test-', users=USERS)
    corpus = [b for msgs in mailharness.corpus_messages().values() for _, b in msgs]
    xattr_msg = ('From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.org>\r\n'
                 'To: alice@example.org\r\n'
                 'Subject: %s\r\n'
                 'Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n'
                 'Message-ID: <pop-xattr@example.org>\r\n'
                 'MIME-Version: 1.0\r\n'
                 'Content-Type: text/plain; charset=utf-8\r\n\r\n'
                 'Hallo, %s.\r\n' % (b64word(XATTR_SUBJECT), TOKEN)).encode()
    no_newline = b'Subject: no final newline\r\nMessage-ID: <pop-nonl@example.org>\r\n\r\nlast'
    # Lines that POP3 dot-stuffs: ".", "..", ".x" (RFC 1939).
    dots = (b'Subject: dots\r\nMessage-ID: <pop-dots@example.org>\r\n\r\n'
            b'.\r\n..\r\n.leading dot\r\n...three\r\n.\r\nend\r\n')
    dc.append_many('alice', 'INBOX', corpus + [xattr_msg, no_newline, dots])
    SERVED.update(dc.pop3_messages('alice'))
    assert len(SERVED) == len(corpus) + 3, (len(SERVED), len(corpus))
    for uidl, body in SERVED.items():
        if b'<pop-xattr@example.org>' in body:
            SPECIAL['xattr'] = uidl
        if b'<pop-nonl@example.org>' in body:
            SPECIAL['nonl'] = uidl
        if b'<pop-dots@example.org>' in body:
            SPECIAL['dots'] = uidl
    assert SERVED[SPECIAL['dots']] == dots
    # RETR adds the final CRLF (mailharness docstring).
    assert SERVED[SPECIAL['nonl']].endswith(b'\r\n\r\nlast\r\n')


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


# ------------------------------------------------------------ 1. POP3S browse

class Browse(PopTest):
    """alice's maildrop (the corpus and two special messages) over POP3S."""

    @classmethod
    def setUpClass(cls):
        cls.m = new_mount('alice', 'browse')
        cls.m.start()
        cls.mnt = cls.m.mountpoint
        cls.inbox = inbox(cls.m)
        # The first listing waits for the first session.
        cls.listing = sorted(os.listdir(cls.inbox))
        cls.files = mount_bytes(cls.m)

    @classmethod
    def tearDownClass(cls):
        cls.m.unmount()

    def name_of(self, uidl):
        hits = [n for n, b in self.files.items() if b == SERVED[uidl]]
        self.assertTrue(hits, 'message %s is not in the mount' % uidl)
        return hits[0]

    def test_every_message_byte_exact(self):
        self.assertEqual(os.listdir(self.mnt), ['INBOX'])
        self.assertGreater(len(SERVED), 300)
        self.assertEqual(set(self.listing), names(len(SERVED)))
        self.assertSameMail(self.files, SERVED)
        # One session downloaded the maildrop in its order: N.eml is the
        # Nth message.
        self.assertEqual(numbered(self.files), list(SERVED.values()))
        self.assertEqual(self.files[self.name_of(SPECIAL['nonl'])][-8:], b'\r\nlast\r\n')
        self.assertIn(b'\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\n.\r\nend\r\n',
                      self.files[self.name_of(SPECIAL['dots'])])

    def test_stat_size_and_mode(self):
        bad = []
        for n, body in sorted(self.files.items()):
            st = os.stat(os.path.join(self.inbox, n))
            if (st.st_size, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) != \
                    (len(body), stat.S_IFREG, 0o444):
                bad.append('%s: size %d (%d bytes), mode %o'
                           % (n, st.st_size, len(body), st.st_mode))
        self.assertEqual(bad, [])
        st = os.stat(self.inbox)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o555)

    def test_ls_cat_grep(self):
        r = run(['ls', '-l', self.inbox])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [l for l in r.stdout.decode().splitlines() if l.endswith('.eml')]
        self.assertEqual(len(lines), len(SERVED))
        for line in lines:
            f = line.split()
            self.assertEqual(f[0], '-r--r--r--', line)
            self.assertEqual(int(f[4]), len(self.files[f[-1]]), line)
        for uidl in (SPECIAL['xattr'], SPECIAL['nonl'], SPECIAL['dots'], next(iter(SERVED))):
            n = self.name_of(uidl)
            r = run(['cat', os.path.join(self.inbox, n)])
            self.assertEqual((r.returncode, r.stdout), (0, SERVED[uidl]), n)
        # grep -r over the whole mount finds exactly the files holding the text.
        for needle in (TOKEN, 'Content-Type: multipart/', 'X-Spam-Status:'):
            want = {os.path.join(self.inbox, n) for n, b in self.files.items()
                    if needle.encode() in b}
            self.assertTrue(want, needle)
            r = run(['grep', '-rlF', '--', needle, self.mnt])
            self.assertIn(r.returncode, (0,), r.stderr)
            self.assertEqual(set(r.stdout.decode().splitlines()), want, needle)

    @unittest.skipUnless(shutil.which('rsync'), 'rsync not installed')
    def test_rsync(self):
        backup = tempfile.mkdtemp(prefix='backup-', dir=TMP)
        r = run(['rsync', '-a', self.mnt + '/', backup + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = {n: read(os.path.join(backup, 'INBOX', n))
               for n in os.listdir(os.path.join(backup, 'INBOX'))}
        self.assertEqual(got, self.files)
        for n in got:
            st = os.stat(os.path.join(backup, 'INBOX', n))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o444, n)
            self.assertEqual(st.st_mtime, os.stat(os.path.join(self.inbox, n)).st_mtime)
        # A second run has nothing to transfer.
        r = run(['rsync', '-ai', self.mnt + '/', backup + '/'])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([l for l in r.stdout.decode().splitlines() if l.startswith('>f')], [])

    def test_xattrs_decoded(self):
        path = os.path.join(self.inbox, self.name_of(SPECIAL['xattr']))
        self.assertTrue({'user.mail.subject', 'user.mail.from', 'user.mail.message_id'}
                        <= set(os.listxattr(path)))
        self.assertEqual(os.getxattr(path, 'user.mail.subject').decode(), XATTR_SUBJECT)
        frm = os.getxattr(path, 'user.mail.from').decode()
        self.assertIn('Jürgen Müller', frm)
        self.assertIn('juergen@example.org', frm)
        self.assertEqual(os.getxattr(path, 'user.mail.message_id').decode(),
                         '<pop-xattr@example.org>')
        if not shutil.which('getfattr'):
            self.skipTest('getfattr not installed (Debian: attr)')
        r = run(['getfattr', '--only-values', '-n', 'user.mail.subject', path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.decode('utf-8'), XATTR_SUBJECT)
        path = os.path.join(self.inbox, self.name_of(SPECIAL['nonl']))
        self.assertEqual(os.getxattr(path, 'user.mail.subject').decode(), 'no final newline')


# ------------------------------------------------------------ 1b. POP3 + STLS

class Stls(PopTest):
    def test_stls_mount_byte_exact(self):
        m = self.mount('alice', 'stls', mode='debug', scheme='pop3')
        listing = os.listdir(inbox(m))
        self.assertEqual(set(listing), names(len(SERVED)))
        files = mount_bytes(m)
        self.assertSameMail(files, SERVED)
        self.assertEqual(numbered(files), list(SERVED.values()))
        # STLS came first; the password only after it.
        sent = m.sent_commands()
        self.assertIn('STLS', sent)
        i = sent.index('STLS')
        self.assertFalse([c for c in sent[:i] if c.split()[0] in ('USER', 'PASS', 'AUTH', 'APOP')],
                         sent[:i])
        self.assertTrue([c for c in sent[i:] if c.split()[0] in ('USER', 'PASS', 'AUTH')])
        self.assertNotIn(USERS['alice'], m.log())

    # An online mount once logged "offline: serving the cache ... read-only"
    # at every start (fs/main.c).
    def test_online_mount_does_not_claim_offline(self):
        m = self.mount('carol', 'online', mode='debug')
        os.listdir(inbox(m))
        self.assertEqual([l for l in m.log().splitlines() if 'offline' in l.lower()], [])


# -------------------------------------------------------------- 2. new mail

class NewMail(PopTest):
    @classmethod
    def setUpClass(cls):
        dc.generate('carol', 'INBOX', 5, seed=21)

    def new_message(self, tag):
        before = set(server_uidls('carol'))
        body = ('Subject: new %s\r\nMessage-ID: <pop-new-%s@example.org>\r\n\r\n'
                'arrived while mounted\r\n' % (tag, tag)).encode()
        dc.append('carol', 'INBOX', body)
        t = time.monotonic()
        served = dc.pop3_messages('carol')
        (uidl,) = set(served) - before
        return served, uidl, t

    def test_appended_appears_within_poll(self):
        m = self.mount('carol', 'poll', options=['poll=%d' % POLL])
        served = dc.pop3_messages('carol')
        files = mount_bytes(m)
        self.assertSameMail(files, served)
        n = len(files)
        served, uidl, t = self.new_message('poll')
        nxt = os.path.join(inbox(m), '%d.eml' % (n + 1))
        # No listing while waiting (listing INBOX would ask for a session):
        # only the poll timer can bring it.
        self.assertTrue(wait_until(lambda: os.path.exists(nxt), POLL + 3),
                        'not there %.1f s after it arrived (poll=%d)'
                        % (time.monotonic() - t, POLL))
        self.assertEqual(read(nxt), served[uidl])
        self.assertEqual(os.stat(nxt).st_size, len(served[uidl]))
        files = mount_bytes(m)
        self.assertSameMail(files, served)
        self.assertEqual(files['%d.eml' % (n + 1)], served[uidl])

    def test_listing_checks_at_once(self):
        m = self.mount('carol', 'listing', options=['poll=600'])
        n = len(os.listdir(inbox(m)))
        self.assertEqual(n, len(server_uidls('carol')))
        served, uidl, t = self.new_message('list')
        # Listing starts a session; a later listing shows its result.
        ok = wait_until(lambda: '%d.eml' % (n + 1) in os.listdir(inbox(m)), 5, step=0.3)
        self.assertTrue(ok, 'listing INBOX did not fetch new mail with poll=600')
        self.assertEqual(read(os.path.join(inbox(m), '%d.eml' % (n + 1))), served[uidl])
        self.assertEqual(set(os.listdir(inbox(m))), names(n + 1))


class BigMessage(PopTest):
    """A 20 MB message, longer than the cache's piece size (256 KiB): the
    download goes to the cache as it arrives, with a bounded peak memory;
    reads at odd offsets across the pieces; whole from the cache offline."""

    @classmethod
    def setUpClass(cls):
        body = (b'Subject: big pop\r\nMessage-ID: <pop-big@example.org>\r\n\r\n' +
                b''.join(b'.line %08d, dot-stuffed by the server\r\n' % i
                         for i in range(20 * 1024 * 1024 // 40)))
        dc.append('kim', 'INBOX', body)
        (cls.want,) = dc.pop3_messages('kim').values()

    def test_big_message(self):
        chunk = 256 * 1024
        want = self.want
        m = self.mount('kim', 'big')
        path = os.path.join(inbox(m), '1.eml')
        self.assertTrue(wait_until(lambda: os.path.exists(path), SESSION_SECONDS))
        self.assertEqual(os.stat(path).st_size, len(want))
        # Before: the message, grown by doubling, plus the write
        # transaction: over 50 MB; now a few MB over the start.
        hwm = vm_hwm(m.pid)
        if not mountutil.sanitized():   # its quarantine is not mailfs's
            self.assertLess(hwm, 32 << 20, 'peak resident set %d MB after '
                            'downloading a %d MB message'
                            % (hwm >> 20, len(want) >> 20))
        fd = os.open(path, os.O_RDONLY)
        try:
            for b in (1, 2, 3, len(want) // chunk):
                for d in (-4097, -1, 0, 1, 4095):
                    off = b * chunk + d
                    for n in (1, 4097, chunk + 1):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        self.assertEqual(os.pread(fd, n, off), want[off:off + n],
                                         (off, n))
        finally:
            os.close(fd)
        cache = m.cache_dir
        m.unmount()
        m2 = self.mount('kim', 'big-offline', cache=cache, options=['offline'])
        self.assertEqual(read(os.path.join(inbox(m2), '1.eml')), want)


    @unittest.skipUnless(shutil.which('mdb_dump') and shutil.which('mdb_load'),
                         'lmdb-utils (mdb_dump, mdb_load) missing')
    def test_damaged_cache_read_is_eio_not_a_hang(self):
        """The message's record in the cache cannot be decoded: a read of it
        fails with EIO at once (it used to get no answer at all, and the
        reader hung until mailfs was killed)."""
        m = self.mount('kim', 'big-damaged')
        path = os.path.join(inbox(m), '1.eml')
        self.assertTrue(wait_until(lambda: os.path.exists(path), SESSION_SECONDS))
        self.assertEqual(read(path), self.want)
        cache = m.cache_dir
        m.unmount()
        mountutil.spoil_big_body(cache)
        m2 = self.mount('kim', 'big-damaged2', cache=cache, mode='foreground',
                        options=['offline'])
        path = os.path.join(inbox(m2), '1.eml')
        self.assertEqual(os.stat(path).st_size, len(self.want))
        size = m2.log_size()
        res, took = try_op('read', path)
        self.assertEqual(res, 'EIO')
        self.assertLess(took, ERROR_SECONDS)
        time.sleep(0.2)
        self.assertRegex(m2.log_since(size), r'undecodable big body record')


# ------------------------------------------------------- 3. server deletions

class ServerDeletes(PopTest):
    def test_deleted_on_server_stay(self):
        dc.generate('dave', 'INBOX', 12, seed=31)
        served = dc.pop3_messages('dave')
        m = self.mount('dave', 'dele', mode='debug', options=['poll=%d' % POLL])
        files = mount_bytes(m)
        self.assertSameMail(files, served)
        inodes = {n: os.stat(os.path.join(inbox(m), n)).st_ino for n in files}
        # Three deleted over POP3 (DELE + QUIT), two expunged with doveadm.
        p = dc.pop3('dave')
        try:
            for num in (1, 5, 12):
                p.dele(num)
        finally:
            p.quit()
        uids = sorted(dc.flags('dave', 'INBOX'))
        for uid in uids[:2]:
            dc.doveadm('expunge', '-u', 'dave', 'mailbox', 'INBOX', 'uid', str(uid))
        self.assertEqual(len(server_uidls('dave')), 12 - 5)
        # Two complete mailfs sessions after the deletions (listing asks for one).
        since, dsince = m.log_size(), dovecot_mark('dave')
        os.listdir(inbox(m))
        self.wait_quits(m, since, 2)
        files2 = mount_bytes(m)
        self.assertEqual(files2, files)
        self.assertEqual({n: os.stat(os.path.join(inbox(m), n)).st_ino for n in files2},
                         inodes)
        # The renumbered maildrop is not downloaded again.
        self.assertEqual(retr_sent(m.log_since(since)), [])
        # A new message gets the next number, not a freed one.
        since = m.log_size()
        body = b'Subject: after deletions\r\nMessage-ID: <pop-after-dele@example.org>\r\n\r\nx\r\n'
        dc.append('dave', 'INBOX', body)
        nxt = os.path.join(inbox(m), '13.eml')
        self.assertTrue(wait_until(lambda: os.path.exists(nxt), POLL + 5))
        self.assertEqual(read(nxt), body)
        self.assertEqual(set(os.listdir(inbox(m))), names(13))
        self.assertEqual(len(retr_sent(m.log_since(since))), 1)
        m.unmount()
        sessions = dovecot_sessions('dave', dsince)
        self.assertTrue(sessions)
        self.assertEqual(sum(r for r, _ in sessions), 1, sessions)
        self.assertEqual(sum(d for _, d in sessions), 0, sessions)


# ----------------------------------------------------- 4. remount and offline

class Remount(PopTest):
    """erin: a first mount fills a cache; one message arrives afterwards."""

    @classmethod
    def setUpClass(cls):
        dc.generate('erin', 'INBOX', 20, seed=41)
        dc.append('erin', 'INBOX', b'Subject: no newline\r\n\r\nend')
        cls.served = dc.pop3_messages('erin')
        m = new_mount('erin', 'remount1', mode='debug')
        cls.cache = m.cache_dir
        m.start()
        try:
            cls.files = mount_bytes(m)
            cls.inodes = {n: os.stat(os.path.join(inbox(m), n)).st_ino for n in cls.files}
            cls.first_retr = len(retr_sent(m.log()))
        finally:
            m.unmount()
        before = set(cls.served)
        cls.late = b'Subject: late\r\nMessage-ID: <pop-late@example.org>\r\n\r\nlate\r\n'
        dc.append('erin', 'INBOX', cls.late)
        cls.served_after = dc.pop3_messages('erin')
        (cls.late_uidl,) = set(cls.served_after) - before
        cls.all_files = dict(cls.files)
        cls.all_files['%d.eml' % (len(cls.files) + 1)] = cls.served_after[cls.late_uidl]

    def test_0_first_mount(self):
        self.assertEqual(self.first_retr, 21)
        self.assertSameMail(self.files, self.served)

    def test_1_remount_downloads_only_what_is_new(self):
        dsince = dovecot_mark('erin')
        m = self.mount('erin', 'remount2', cache=self.cache, mode='debug')
        files = mount_bytes(m)
        # Same numbers for the cached messages, the new one next.
        self.assertEqual(files, self.all_files)
        self.assertEqual({n: os.stat(os.path.join(inbox(m), n)).st_ino
                          for n in self.files}, self.inodes)
        self.wait_quits(m, 0, 1)
        self.assertEqual(len(retr_sent(m.log())), 1, retr_sent(m.log()))
        m.unmount()
        sessions = dovecot_sessions('erin', dsince)
        self.assertTrue(sessions, dc.log(dsince)[-2000:])
        self.assertEqual(sum(r for r, _ in sessions), 1, sessions)

    def test_2_offline_option(self):
        dsince = dovecot_mark('erin')
        m = self.mount('erin', 'offline-opt', cache=self.cache, mode='debug',
                       options=['offline'])
        # Only what the cache holds: test_1 added the late message (if it ran).
        files = mount_bytes(m)
        self.assertIn(files, (self.files, self.all_files))
        self.assertEqual(m.sent_commands(), [])
        time.sleep(0.5)
        self.assertNotIn('pop3-login: Info: Login: user=<erin>', dc.log(dsince))

    def test_3_server_stopped(self):
        # Make sure the cache has the late message, then stop the server.
        m = self.mount('erin', 'fill', cache=self.cache)
        self.assertEqual(mount_bytes(m), self.all_files)
        m.unmount()
        dc.stop()
        try:
            t = time.monotonic()
            m = self.mount('erin', 'offline-down', cache=self.cache, mode='debug')
            self.assertLess(time.monotonic() - t, 10)
            self.assertRegex(m.log(), r'(?i)(offline|read-only|cannot reach|refused)')
            t = time.monotonic()
            self.assertEqual(mount_bytes(m), self.all_files)
            self.assertLess(time.monotonic() - t, ERROR_SECONDS)
            res, took = try_op('create', os.path.join(inbox(m), 'new.eml'))
            self.assertIn(res, ('EPERM', 'EROFS'))
            self.assertLess(took, ERROR_SECONDS)
            m.unmount()
        finally:
            dc.start()

    # A mount that came up from the cache because the server was down must
    # check for mail by itself once the server is back (DESIGN.md, "Cache
    # and offline": "mailfs reconnects by itself").
    def test_4_offline_mount_checks_mail_when_server_returns(self):
        dc.stop()
        try:
            m = self.mount('erin', 'offline-back', cache=self.cache, mode='debug',
                           options=['poll=1'])
            n = len(os.listdir(inbox(m)))
        finally:
            dc.start()
        dc.append('erin', 'INBOX', b'Subject: back\r\nMessage-ID: <pop-back@example.org>\r\n\r\n'
                                   b'server is back\r\n')
        nxt = '%d.eml' % (n + 1)
        ok = wait_until(lambda: nxt in os.listdir(inbox(m)), 8, step=0.5)
        self.assertTrue(ok, 'no new mail 8 s after the server came back (poll=1)')


# ---------------------------------------------------------------- 5, 6. pop_keep

class PopKeep(PopTest):
    def test_keep_0_deletes_only_after_caching(self):
        dc.generate('frank', 'INBOX', 25, seed=51)
        served = dc.pop3_messages('frank')
        dsince = dovecot_mark('frank')
        m = self.mount('frank', 'keep0', mode='debug', options=['pop_keep=0', 'poll=%d' % POLL])
        files = mount_bytes(m)
        self.assertSameMail(files, served)
        self.assertTrue(wait_until(lambda: server_uidls('frank') == [], SESSION_SECONDS),
                        'the maildrop is not empty')
        log = m.log()
        retr, dele = retr_sent(log), dele_sent(log)
        self.assertEqual(sorted(retr), list(range(1, 26)))
        self.assertEqual(sorted(dele), list(range(1, 26)))
        # Every DELE after the last RETR (by then every message was stored).
        self.assertLess(log.rindex(' C: RETR '), log.index(' C: DELE '))
        self.assertEqual(len(re.findall(r'stored as \d+\.eml', log[:log.index(' C: DELE ')])), 25)
        # The mount keeps everything, also after more sessions.
        since = m.log_size()
        os.listdir(inbox(m))
        self.wait_quits(m, since, 2)
        self.assertEqual(mount_bytes(m), files)
        m.unmount()
        sessions = dovecot_sessions('frank', dsince)
        self.assertEqual(sum(d for _, d in sessions), 25, sessions)
        self.assertEqual(sum(r for r, _ in sessions), 25, sessions)

    def test_keep_0_crash_before_dele(self):
        dc.generate('grace', 'INBOX', 30, seed=61)
        dc.append('grace', 'INBOX', b'Subject: no newline\r\n\r\nend')
        served = dc.pop3_messages('grace')
        m = new_mount('grace', 'crash', mode='foreground', options=['pop_keep=0'])
        self.addCleanup(m.unmount)
        with with_env({'MAILFS_TEST_PAUSE': 'pop_before_dele'}):
            m.start()
        self.assertTrue(wait_until(lambda: 'pausing at pop_before_dele' in m.log(),
                                   SESSION_SECONDS),
                        'no pause in the log:\n' + m.log()[-2000:])
        # Paused before DELE: every message is already in the cache (looked
        # up by name; a listing would wait for the unfinished session).
        paused = {n: read(os.path.join(inbox(m), n)) for n in sorted(names(len(served)))}
        self.assertSameMail(paused, served)
        m.kill()
        self.assertTrue(wait_until(m.exited, 10))
        m.unmount()
        self.assertFalse(mountutil.is_mounted(m.mountpoint))
        # No QUIT, so the server deleted nothing.
        self.assertEqual(dc.pop3_messages('grace'), served)
        # Remount without the pause: each message exactly once, nothing
        # downloaded again, then the maildrop is emptied.
        m2 = self.mount('grace', 'crash2', cache=m.cache_dir, mode='debug',
                        options=['pop_keep=0', 'poll=%d' % POLL])
        files = mount_bytes(m2)
        self.assertSameMail(files, served)
        self.assertEqual(files, paused)
        self.assertTrue(wait_until(lambda: server_uidls('grace') == [], SESSION_SECONDS),
                        'the maildrop is not empty after the remount')
        self.assertEqual(retr_sent(m2.log()), [])
        self.assertEqual(sorted(dele_sent(m2.log())), list(range(1, len(served) + 1)))
        self.assertEqual(mount_bytes(m2), files)

    def test_default_and_days_keep_everything(self):
        dc.generate('heidi', 'INBOX', 10, seed=71)
        uidls = server_uidls('heidi')
        served = dc.pop3_messages('heidi')
        dsince = dovecot_mark('heidi')
        for options in (['poll=1'], ['poll=1', 'pop_keep=forever'], ['poll=1', 'pop_keep=30']):
            with self.subTest(options=options):
                m = self.mount('heidi', 'keep', mode='debug', options=options)
                self.assertSameMail(mount_bytes(m), served)
                self.wait_quits(m, 0, 3)
                self.assertEqual(dele_sent(m.log()), [])
                self.assertEqual(server_uidls('heidi'), uidls)
                m.unmount()
        self.assertEqual(dc.pop3_messages('heidi'), served)
        sessions = dovecot_sessions('heidi', dsince)
        self.assertGreaterEqual(len(sessions), 9)
        self.assertEqual(sum(d for _, d in sessions), 0)


# ------------------------------------------------- a server stalls mid-session

class Stall(PopTest):
    def test_stall_during_first_session(self):
        # Big enough that the first session is still downloading when the
        # server freezes (if it is not, the test only gets weaker).
        dc.generate('ivan', 'INBOX', 400, seed=91)
        served = dc.pop3_messages('ivan')
        m = self.mount('ivan', 'stall', mode='debug', options=['timeout=2', 'poll=%d' % POLL])
        dc.freeze()
        try:
            # The first listing waits for a session, but not for ever.
            t = time.monotonic()
            r = run(['ls', inbox(m)], timeout=OP_TIMEOUT)
            took = time.monotonic() - t
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertLess(took, 3 * 2 + 3)
            partial = set(r.stdout.decode().split())
            self.assertLessEqual(partial, names(len(served)))
        finally:
            dc.thaw()
        # The interrupted session committed nothing twice, and the next ones
        # bring the rest: each message exactly once.
        ok = wait_until(lambda: len(os.listdir(inbox(m))) >= len(served), SESSION_SECONDS,
                        step=0.5)
        self.assertTrue(ok, '%d of %d after %.0f s' % (len(os.listdir(inbox(m))), len(served),
                                                      SESSION_SECONDS))
        self.assertSameMail(mount_bytes(m), served)


# -------------------------------------------------------- a relative cache_dir

class CacheDir(PopTest):
    # Regression: a relative cache_dir is relative to the directory mailfs
    # was started in (it was once opened after daemonizing, relative to /).
    def test_relative_cache_dir(self):
        dc.generate('judy', 'INBOX', 2, seed=101)
        rel = 'mailfs-pop-relcache-%d' % os.getpid()
        stray = os.path.join('/', rel)
        if not os.path.exists(stray):
            # Where the bug puts it: removed again, after the unmount.
            self.addCleanup(shutil.rmtree, stray, True)
        mnt, _ = fresh('relcache')
        base = os.path.dirname(mnt)
        m = mountutil.Mount(dc, mnt, rel, user='judy', url=dc.url('pop3s', 'judy'))
        self.addCleanup(m.unmount)
        cwd = os.getcwd()
        os.chdir(base)
        try:
            m.start()
        finally:
            os.chdir(cwd)
        self.assertTrue(os.listdir(inbox(m)))
        self.assertTrue(os.path.exists(os.path.join(base, rel, 'data.mdb')),
                        'cache_dir=%s is not in the starting directory (%s: %s)'
                        % (rel, stray, os.path.exists(stray)))


# ---------------------------------------------------------------- 7. writes

class Writes(PopTest):
    def test_changes_refused(self):
        dc.generate('bob', 'INBOX', 3, seed=81)
        uidls = server_uidls('bob')
        m = self.mount('bob', 'writes')
        d = inbox(m)
        before = mount_bytes(m)
        self.assertEqual(set(before), names(len(uidls)))
        # As root the kernel passes everything to mailfs (EPERM); another
        # user may get EACCES from the kernel first (modes 0444 and 0555).
        allowed = ('EPERM',) if os.geteuid() == 0 else ('EPERM', 'EACCES')
        ops = [('create', 'INBOX/new.eml', None), ('create', 'new.eml', None),
               ('write_trunc', 'INBOX/1.eml', None), ('rdwr', 'INBOX/1.eml', None),
               ('append', 'INBOX/1.eml', None), ('truncate', 'INBOX/1.eml', None),
               ('chmod', 'INBOX/1.eml', None), ('utime_now', 'INBOX/1.eml', None),
               ('unlink', 'INBOX/1.eml', None), ('rename', 'INBOX/1.eml', 'INBOX/99.eml'),
               ('rename', 'INBOX/1.eml', '1.eml'), ('rename', 'INBOX', 'Other'),
               ('mkdir', 'newdir', None), ('mkdir', 'INBOX/newdir', None),
               ('rmdir', 'INBOX', None), ('setxattr', 'INBOX/1.eml', 'x'),
               ('removexattr', 'INBOX/1.eml', None)]
        for op, rel, arg in ops:
            res, took = try_op(op, os.path.join(m.mountpoint, rel),
                               arg and os.path.join(m.mountpoint, arg))
            with self.subTest(op=op, path=rel, to=arg):
                self.assertIn(res, allowed)
                self.assertLess(took, ERROR_SECONDS)
        # The programs a user would run.
        for argv in (['touch', os.path.join(d, 'new.eml')],
                     ['touch', os.path.join(d, '1.eml')],
                     ['rm', '-f', os.path.join(d, '1.eml')],
                     ['mv', os.path.join(d, '1.eml'), os.path.join(d, '100.eml')],
                     ['mkdir', os.path.join(m.mountpoint, 'newdir')],
                     ['sh', '-c', 'echo x >> "$1"', 'sh', os.path.join(d, '2.eml')]):
            t = time.monotonic()
            r = run(argv, timeout=OP_TIMEOUT)
            with self.subTest(argv=argv[:2]):
                self.assertNotEqual(r.returncode, 0)
                self.assertIn('Operation not permitted' if allowed == ('EPERM',)
                              else 'ermi', r.stderr.decode())
                self.assertLess(time.monotonic() - t, ERROR_SECONDS)
        self.assertEqual(mount_bytes(m), before)
        self.assertEqual(os.listdir(m.mountpoint), ['INBOX'])
        self.assertEqual(server_uidls('bob'), uidls)


# ----------------------------------------------------------- 8. mount errors

class MountErrors(PopTest):
    def attempt(self, scheme, expect, password=None, cafile=True):
        m = new_mount('bob', 'err', scheme=scheme, password=password, cafile=cafile)
        self.addCleanup(m.unmount)
        t = time.monotonic()
        r = m.run()
        took = time.monotonic() - t
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(lines), 1, 'not one line: %r' % r.stderr)
        self.assertRegex(lines[0], expect)
        self.assertFalse(mountutil.is_mounted(m.mountpoint), 'a mount was left behind')
        self.assertNotIn(os.path.realpath(m.mountpoint), mountutil.mounts())
        self.assertLess(took, ERROR_SECONDS)
        return lines[0]

    def test_wrong_password(self):
        for scheme in ('pop3s', 'pop3'):
            with self.subTest(scheme=scheme):
                # Dovecot's text: "-ERR [AUTH] Authentication failed."
                line = self.attempt(scheme, r'Authentication failed', password='not-the-pw')
                self.assertNotIn('not-the-pw', line)

    def test_unknown_ca(self):
        for scheme in ('pop3s', 'pop3'):
            with self.subTest(scheme=scheme):
                self.attempt(scheme, r'(?i)issuer', cafile=False)


if __name__ == '__main__':
    mounttest.main()
