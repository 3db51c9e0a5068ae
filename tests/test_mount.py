#!/usr/bin/env python3
r"""mailfs mounted for real (FUSE) over a private Dovecot.

Every byte and attribute read through the mount is compared with what
Dovecot returns to an independent client (Python's imaplib, in the harness).
Each scenario mounts with a fresh cache directory unless it tests reuse, and
always unmounts, even when a test fails (tests/harness/mountutil.py).

Browse        ls, ls -lR, find, stat, cat, cp, grep -r, du, mmap; readdir d_type
              and d_ino; st_nlink; modes; ENOENT for names that are not there
FirstRead     st_size/st_blocks/st_mtime before any body is fetched, then the
              bytes; parallel first reads; reading never sets \Seen
Xattrs        user.mail.flags and the decoded headers; getfattr -d
Rsync         rsync -a, then rsync -ai transfers nothing; diff -r clean
Names         modified UTF-7, spaces, "&", nesting, \Noselect, empty, 20 MB,
              separator "." with "%2F" and "%25"
BigBody       a message longer than the cache's piece size: peak memory while
              fetching it, reads at odd offsets across the pieces, offline;
              its record in the cache damaged: EIO at once, not a hang
Large         a mailbox of 1000 messages
Remount       same cache: nothing fetched again, stable inodes; server down:
              served from the cache, EIO for a body never fetched
ServerGone    the server stops or stalls while mounted: EIO within bounds,
              then mailfs reconnects by itself
MountErrors   one-line errors, non-zero exit, no mount left, within seconds, for
              every start-up failure also after mailfs forked (cache_dir
              unusable, damaged or in use, mount refused, killed); relative
              path options; the default cache dir of a non-root user
UidValidity   a UIDVALIDITY change re-matches cached bodies, nothing re-fetched
Writes        writes, creates and mkdir fail at once (EPERM; -o ro: EROFS)

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import base64
import concurrent.futures
import ctypes
import datetime
import errno
import mmap
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import b64word, fetched_uids, read, run, vm_hwm  # noqa: E402

TEST_TIMEOUT = 120.0    # a hung FUSE request fails the test instead of hanging it
OP_TIMEOUT = 15.0       # one file operation in a child process
ERROR_SECONDS = 5.0     # "at once": mount errors, EIO while offline
CACHE_LOCK_WAIT = 5.0     # cache.h CACHE_LOCK_WAIT_MS: a busy cache is waited for
RECONNECT_SECONDS = 20  # the server was gone for seconds: backoff 1, 2, 4, 8 s

dc = None               # Dovecot, separator "/"
TMP = None
TREE = None             # expected tree of alice: Tree
BODIES = {}             # {mailbox: {uid: bytes}} as the server serves them
META = {}               # {mailbox: {uid: (size, internaldate)}}
SPECIAL = {}            # uids of messages appended by setUpModule

XATTR_SUBJECT = 'Grüße aus Zürich — 台北 ✓'
FOLDED_SUBJECT = 'Ein ziemlich langer Betreff, über zwei Zeilen gefaltet: 日本語のテキスト'
XATTR_DATE = 'Tue, 14 Nov 2023 22:13:20 +0000'
KNOWN_DATE = 1234567890
NAMED = ['Entwürfe', '台北/日本語', 'with space', 'A & B', 'Parent/Child']


# ------------------------------------------------------------------ helpers

def fresh(tag):
    return mounttest.fresh(TMP, tag)


def try_op(op, path, arg=None):
    return mounttest.try_op(op, path, arg, timeout=OP_TIMEOUT)


def component(name):
    """The file name of one mailbox-name component (DESIGN: '%' -> '%25',
    '/' -> '%2F')."""
    return name.replace('%', '%25').replace('/', '%2F')


def mailbox_path(name, delim):
    return '/'.join(component(c) for c in (name.split(delim) if delim else [name]))


class Tree:
    """What a mount of USER must show: dirs {relpath: mailbox name},
    files {relpath: (mailbox, uid)}, selectable mailboxes."""

    def __init__(self, dcx, user, skip=()):
        self.dirs, self.files, self.boxes = {}, {}, []
        delim = dcx.separator
        for name, attrs in dcx.list_mailboxes(user).items():
            if name in skip:
                continue
            path = mailbox_path(name, delim)
            self.dirs[path] = name
            parts = path.split('/')
            for i in range(1, len(parts)):
                self.dirs.setdefault('/'.join(parts[:i]), None)
            if '\\Noselect' in attrs or '\\NonExistent' in attrs:
                continue
            self.boxes.append(name)
            for uid in dcx.flags(user, name):
                self.files['%s/%d.eml' % (path, uid)] = (name, uid)

    def subdirs(self, rel):
        """Names of the direct subdirectories of rel ('' = root)."""
        pre = rel + '/' if rel else ''
        return {d[len(pre):] for d in self.dirs
                if d.startswith(pre) and '/' not in d[len(pre):]}

    def files_in(self, box):
        return {p: v for p, v in self.files.items() if v[0] == box}


def walk(root):
    """(set of directory relpaths, set of file relpaths) below root."""
    dirs, files = set(), set()
    for d, subdirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        for s in subdirs:
            dirs.add(os.path.normpath(os.path.join(rel, s)))
        for n in names:
            files.add(os.path.normpath(os.path.join(rel, n)))
    return dirs, files


def file_digest(path):
    import hashlib
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def user_gid(name):
    import pwd
    return pwd.getpwnam(name).pw_gid


def pwd_uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


def kill_pids(pids):
    """SIGKILL the processes PIDS() names (a callable: evaluated now)."""
    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def children_of(pid):
    """Pids of the processes whose parent is PID."""
    out = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/%s/stat' % name) as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def mountinfo_points():
    """Mount points in /proc/self/mountinfo (field 5, unescaped)."""
    with open('/proc/self/mountinfo') as f:
        return {mountutil._unescape_mount_field(l.split()[4]) for l in f if l.strip()}


class started_in:
    """Run a block in directory PATH (None: where we are)."""
    def __init__(self, path):
        self.path, self.old = path, None

    def __enter__(self):
        if self.path is not None:
            self.old = os.getcwd()
            os.chdir(self.path)

    def __exit__(self, *exc):
        if self.old is not None:
            os.chdir(self.old)


class environment:
    """Run a block with os.environ replaced by ENV (None: unchanged)."""
    def __init__(self, env):
        self.env, self.old = env, None

    def __enter__(self):
        if self.env is not None:
            self.old = dict(os.environ)
            os.environ.clear()
            os.environ.update(self.env)

    def __exit__(self, *exc):
        if self.old is not None:
            os.environ.clear()
            os.environ.update(self.old)


def body_of(rel):
    box, uid = TREE.files[rel]
    return BODIES[box][uid]


class _Dirent64(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64),
                ('d_reclen', ctypes.c_ushort), ('d_type', ctypes.c_ubyte),
                ('d_name', ctypes.c_char * 256)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent64)
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]
DT_DIR, DT_REG = 4, 8


def raw_readdir(path):
    """{name: (d_type, d_ino)} straight from readdir(3), no stat."""
    d = _libc.opendir(os.fsencode(path))
    if not d:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    out = {}
    try:
        while True:
            p = _libc.readdir64(d)
            if not p:
                break
            ent = p.contents
            out[os.fsdecode(ent.d_name)] = (ent.d_type, ent.d_ino)
    finally:
        _libc.closedir(d)
    return out


class MountTest(mounttest.BoundedTest):
    TEST_TIMEOUT = TEST_TIMEOUT

    def mount(self, tag='m', cache=None, mode='daemon', options=(), dcx=None, user='alice'):
        mnt, c = fresh(tag)
        return self.started(mountutil.Mount(dcx or dc, mnt, cache or c, user=user,
                                            mode=mode, options=options))

    def assertBytesEqual(self, mnt, files, what=''):
        """Every file rel in FILES reads through MNT as the server serves it."""
        bad = []
        for rel in sorted(files):
            got = read(os.path.join(mnt, rel))
            want = body_of(rel)
            if got != want:
                bad.append('%s: %d bytes, server %d' % (rel, len(got), len(want)))
        self.assertEqual(bad, [], '%s%d of %d differ' % (what, len(bad), len(files)))


class SharedMountTest(MountTest):
    """One mount of alice (daemon mode) for every test of the class:
    cls.m, mounted at cls.mnt; TAG names its directory."""

    TAG = None

    @classmethod
    def setUpClass(cls):
        mnt, cache = fresh(cls.TAG)
        cls.m = mountutil.Mount(dc, mnt, cache)
        cls.m.start()
        cls.mnt = cls.m.mountpoint

    @classmethod
    def tearDownClass(cls):
        cls.m.unmount()


# --------------------------------------------------------------- module set-up

def setUpModule():
    global dc, TMP, TREE
    dc, TMP = mounttest.set_up_module('mailfs-mount-test-')
    dc.load_corpus('alice')
    # Decoded headers and flags.
    xattr_msg = ('From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.org>\r\n'
                 'To: alice@example.org\r\n'
                 'Subject: %s\r\n'
                 'Date: %s\r\n'
                 'Message-ID: <xattr-test@example.org>\r\n'
                 'MIME-Version: 1.0\r\n'
                 'Content-Type: text/plain; charset=utf-8\r\n\r\n'
                 'Hallo.\r\n' % (b64word(XATTR_SUBJECT), XATTR_DATE)).encode()
    SPECIAL['xattr'] = dc.append('alice', 'INBOX', xattr_msg,
                                 flags=('\\Flagged', '\\Answered', '$Work'),
                                 date=1700000000)
    half = len(FOLDED_SUBJECT) // 2
    folded = ('From: plain@example.org\r\n'
              'Subject: %s\r\n %s\r\n'
              'Message-ID: <folded-test@example.org>\r\n\r\nbody\r\n'
              % (b64word(FOLDED_SUBJECT[:half]), b64word(FOLDED_SUBJECT[half:]))).encode()
    SPECIAL['folded'] = dc.append('alice', 'INBOX', folded, flags=('\\Seen',))
    SPECIAL['plain'] = dc.append('alice', 'INBOX', b'Subject: plain\r\n\r\nhello\r\n')
    SPECIAL['dated'] = dc.append('alice', 'Dated', b'Subject: dated\r\n\r\nx\r\n',
                                 date=KNOWN_DATE)
    dc.append('alice', 'Dated', b'Subject: dated tz\r\n\r\ny\r\n',
              date=datetime.datetime(2021, 6, 1, 12, 0, 0,
                                     tzinfo=datetime.timezone(datetime.timedelta(hours=2))))
    for i, name in enumerate(NAMED):
        dc.append('alice', name, ('Subject: in %s\r\nMessage-ID: <named%d@example.org>\r\n'
                                  '\r\nbody %d\r\n' % (name, i, i)).encode())
    dc.create('alice', 'Empty')
    dc.generate('alice', 'Unfetched', 3, seed=5)
    big = (b'Subject: big\r\nMessage-ID: <big@example.org>\r\n\r\n' +
           b''.join(b'line %08d with some text to fill the message\r\n' % i
                    for i in range(20 * 1024 * 1024 // 48)))
    SPECIAL['big'] = dc.append('alice', 'Big', big)
    TREE = Tree(dc, 'alice')
    for box in TREE.boxes:
        BODIES[box] = dc.fetch_bodies('alice', box)
        META[box] = dc.meta('alice', box)


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


# ----------------------------------------------------------------- 1. browse

class Browse(SharedMountTest):
    """ls, find, stat, cat, cp, grep, du and readdir on one mount."""

    TAG = 'browse'

    def p(self, rel=''):
        return os.path.join(self.mnt, rel) if rel else self.mnt

    def test_tree_matches_server(self):
        dirs, files = walk(self.mnt)
        self.assertEqual(dirs, set(TREE.dirs))
        self.assertEqual(files, set(TREE.files))
        # Every mailbox and every message of the server is there.
        self.assertGreater(len(files), 150)
        self.assertIn('corpus/imaptest', dirs)

    def test_readdir_d_type_and_ino(self):
        for rel in [''] + sorted(TREE.dirs):
            ents = raw_readdir(self.p(rel))
            self.assertEqual(ents['.'][0], DT_DIR, rel)
            self.assertEqual(ents['..'][0], DT_DIR, rel)
            subdirs = TREE.subdirs(rel)
            pre = rel + '/' if rel else ''
            files = {f[len(pre):] for f in TREE.files
                     if f.startswith(pre) and '/' not in f[len(pre):]}
            self.assertEqual(set(ents) - {'.', '..'}, subdirs | files, rel)
            for name, (dtype, ino) in ents.items():
                if name in ('.', '..'):
                    continue
                self.assertEqual(dtype, DT_DIR if name in subdirs else DT_REG,
                                 '%s/%s' % (rel, name))
                self.assertEqual(ino, os.stat(os.path.join(self.p(rel), name)).st_ino,
                                 'readdir d_ino vs stat of %s/%s' % (rel, name))
            # The same through os.scandir (is_dir/is_file from d_type).
            with os.scandir(self.p(rel)) as it:
                for e in it:
                    self.assertEqual(e.is_dir(follow_symlinks=False), e.name in subdirs)
                    self.assertEqual(e.is_file(follow_symlinks=False), e.name in files)

    def test_nlink_and_modes(self):
        for rel in [''] + sorted(TREE.dirs):
            st = os.stat(self.p(rel))
            self.assertTrue(stat.S_ISDIR(st.st_mode), rel)
            self.assertEqual(st.st_nlink, 2 + len(TREE.subdirs(rel)), repr(rel))
        for rel in TREE.files:
            st = os.stat(self.p(rel))
            self.assertEqual(st.st_mode, stat.S_IFREG | 0o444, rel)
            self.assertEqual(st.st_nlink, 1, rel)

    def test_ls_find_stat(self):
        r = run(['ls', '-1', self.mnt])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(set(os.fsdecode(r.stdout).splitlines()), TREE.subdirs(''))
        r = run(['ls', '-lR', self.mnt])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = os.fsdecode(r.stdout)
        self.assertEqual(len(re.findall(r'^-r--r--r-- ', out, re.M)), len(TREE.files))
        self.assertEqual(len(re.findall(r'^dr', out, re.M)), len(TREE.dirs))
        for kind, want in (('f', TREE.files), ('d', TREE.dirs)):
            r = run(['find', self.mnt, '-mindepth', '1', '-type', kind, '-printf', '%P\\n'])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(set(os.fsdecode(r.stdout).splitlines()), set(want))
        rel = sorted(TREE.files)[0]
        r = run(['stat', '-c', '%s %h %a %i %Y %F', self.p(rel)])
        self.assertEqual(r.returncode, 0, r.stderr)
        box, uid = TREE.files[rel]
        size, date = META[box][uid]
        st = os.stat(self.p(rel))
        self.assertEqual(r.stdout.decode().split(),
                         [str(len(body_of(rel))), '1', '444', str(st.st_ino), str(date),
                          'regular', 'file'])

    def test_cat_cp_grep_du(self):
        one = sorted(TREE.files_in('corpus/spamassassin-nice'))[0]
        r = run(['cat', self.p(one)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, body_of(one))
        # cp -r out of the mount.
        dest = tempfile.mkdtemp(prefix='cp-', dir=TMP)
        r = run(['cp', '-r', self.p('corpus/postal-mime'), dest])
        self.assertEqual(r.returncode, 0, r.stderr)
        for rel in TREE.files_in('corpus/postal-mime'):
            with open(os.path.join(dest, 'postal-mime', os.path.basename(rel)), 'rb') as f:
                self.assertEqual(f.read(), body_of(rel), rel)
        # grep -r: a file with a hole or a wrong size would be skipped as
        # binary or miss a match.
        r = run(['grep', '-rlF', '--binary-files=without-match', 'Message-I',
                 self.p('corpus')])
        self.assertIn(r.returncode, (0, 1), r.stderr)
        got = {os.path.relpath(p, self.mnt) for p in os.fsdecode(r.stdout).splitlines()}
        want = {rel for rel in TREE.files if rel.startswith('corpus/')
                and b'Message-I' in body_of(rel) and b'\0' not in body_of(rel)}
        self.assertEqual(got, want)
        # du: apparent size = st_size, disk usage = st_blocks.
        for flags, expect in ((['-ab'], lambda rel: len(body_of(rel))),
                              (['-a', '-B1'], lambda rel: os.stat(self.p(rel)).st_blocks * 512)):
            r = run(['du'] + flags + [self.p('corpus')])
            self.assertEqual(r.returncode, 0, r.stderr)
            seen = 0
            for line in os.fsdecode(r.stdout).splitlines():
                n, path = line.split('\t', 1)
                rel = os.path.relpath(path, self.mnt)
                if rel in TREE.files:
                    self.assertEqual(int(n), expect(rel), '%s %s' % (flags, rel))
                    seen += 1
            self.assertEqual(seen, len([f for f in TREE.files if f.startswith('corpus/')]))
        self.assertEqual(os.stat(self.p(one)).st_blocks, (len(body_of(one)) + 511) // 512)

    def test_mmap_and_pread(self):
        for rel in sorted(TREE.files_in('corpus/postal-mime'))[:5]:
            want = body_of(rel)
            with open(self.p(rel), 'rb') as f:
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    self.assertEqual(mm[:], want, rel)
                self.assertEqual(os.pread(f.fileno(), 100, len(want) - 50), want[-50:])
                self.assertEqual(os.pread(f.fileno(), 100, len(want) + 10), b'')

    def test_missing_names(self):
        for rel in ('INBOX/999999.eml', 'INBOX/abc', 'INBOX/0.eml', 'INBOX/01.eml',
                    'NoSuchBox', 'NoSuchBox/1.eml', 'Parent/1.eml'):
            res, took = try_op('read', self.p(rel))
            self.assertEqual(res, 'ENOENT', rel)
            self.assertLess(took, ERROR_SECONDS)

    def test_seek_data_hole(self):
        rel = sorted(TREE.files_in('corpus/imaptest'))[0]
        size = len(body_of(rel))
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            try:
                self.assertEqual(os.lseek(fd, 0, os.SEEK_DATA), 0)
                self.assertEqual(os.lseek(fd, 0, os.SEEK_HOLE), size)
            except OSError as e:   # not implemented: fine
                self.assertIn(e.errno, (errno.EINVAL, errno.EOPNOTSUPP, errno.ENXIO))
        finally:
            os.close(fd)


# ------------------------------------------- 2, 3. first read: sizes, \Seen

class FirstRead(MountTest):
    """Attributes before any body was fetched, then the bodies."""

    def test_attributes_before_first_read_then_bytes(self):
        m = self.mount('first')
        mnt = m.mountpoint
        dirs, files = walk(mnt)
        self.assertEqual(files, set(TREE.files))
        before = {rel: os.stat(os.path.join(mnt, rel)) for rel in sorted(files)}
        bad = []
        for rel, st in before.items():
            box, uid = TREE.files[rel]
            want = len(body_of(rel))
            if st.st_size != want:
                bad.append('%s: st_size %d, body %d (RFC822.SIZE %d)'
                           % (rel, st.st_size, want, META[box][uid][0]))
            if st.st_blocks != (st.st_size + 511) // 512:
                bad.append('%s: st_blocks %d for %d bytes' % (rel, st.st_blocks, st.st_size))
            if int(st.st_mtime) != META[box][uid][1]:
                bad.append('%s: st_mtime %d, INTERNALDATE %d'
                           % (rel, st.st_mtime, META[box][uid][1]))
        self.assertEqual(bad, [])
        inos = [st.st_ino for st in before.values()]
        self.assertEqual(len(set(inos)), len(inos), 'inode numbers not distinct')
        dir_inos = {os.stat(os.path.join(mnt, d)).st_ino for d in dirs}
        self.assertEqual(len(dir_inos), len(dirs))
        self.assertFalse(dir_inos & set(inos))
        self.assertBytesEqual(mnt, files)
        for rel, st in before.items():
            self.assertEqual(os.stat(os.path.join(mnt, rel)).st_size, st.st_size, rel)

    def test_parallel_reads_without_listing(self):
        # Paths opened directly (no readdir first) by 8 threads at once, in
        # an order that jumps between mailboxes: deferred lookups and body
        # fetches of the same mailbox overlap.
        m = self.mount('parallel')
        rels = sorted(f for f in TREE.files if not f.startswith('Big/'))
        random.Random(1).shuffle(rels)

        def one(rel):
            try:
                return rel, read(os.path.join(m.mountpoint, rel))
            except OSError as e:
                return rel, e
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            got = dict(ex.map(one, rels))
        bad = {rel: (b if isinstance(b, OSError) else len(b))
               for rel, b in got.items() if b != body_of(rel)}
        self.assertEqual(bad, {})

    def test_mtime_is_internaldate(self):
        m = self.mount('dated')
        st = os.stat(os.path.join(m.mountpoint, 'Dated', '%d.eml' % SPECIAL['dated']))
        self.assertEqual(st.st_mtime, KNOWN_DATE)
        for rel in TREE.files_in('Dated'):
            box, uid = TREE.files[rel]
            self.assertEqual(os.stat(os.path.join(m.mountpoint, rel)).st_mtime,
                             META[box][uid][1], rel)

    def test_reading_never_sets_seen(self):
        before = {box: dc.flags('alice', box) for box in TREE.boxes}
        m = self.mount('seen')
        for rel in sorted(TREE.files):
            read(os.path.join(m.mountpoint, rel))
        time.sleep(0.5)
        after = {box: dc.flags('alice', box) for box in TREE.boxes}
        self.assertEqual(after, before)
        # Nothing was appended with \Seen but the "folded" message: no
        # earlier test (or mailfs) set it anywhere.
        seen = {(b, u) for b, fl in after.items() for u, f in fl.items() if '\\Seen' in f}
        self.assertEqual(seen, {('INBOX', SPECIAL['folded'])})


# -------------------------------------------------------------- 4. xattrs

class Xattrs(SharedMountTest):
    TAG = 'xattr'

    def get(self, uid, attr, box='INBOX'):
        return os.getxattr(os.path.join(self.mnt, box, '%d.eml' % uid),
                           'user.mail.' + attr).decode('utf-8')

    def test_flags_match_server(self):
        for box in ('INBOX', 'corpus/imaptest'):
            server = dc.flags('alice', box)
            for uid, flags in server.items():
                got = self.get(uid, 'flags', box)
                self.assertNotIn('\\Recent', got)
                self.assertEqual(set(got.split()), flags, '%s %d: %r' % (box, uid, got))
        self.assertEqual(set(self.get(SPECIAL['xattr'], 'flags').split()),
                         {'\\Flagged', '\\Answered', '$Work'})

    def test_decoded_headers(self):
        uid = SPECIAL['xattr']
        self.assertEqual(self.get(uid, 'subject'), XATTR_SUBJECT)
        frm = self.get(uid, 'from')
        self.assertIn('Jürgen Müller', frm)
        self.assertIn('juergen@example.org', frm)
        self.assertEqual(self.get(uid, 'date'), XATTR_DATE)
        self.assertEqual(self.get(uid, 'message_id'), '<xattr-test@example.org>')
        # Adjacent encoded words over a folded line join without a space.
        self.assertEqual(self.get(SPECIAL['folded'], 'subject'), FOLDED_SUBJECT)
        self.assertEqual(self.get(SPECIAL['plain'], 'subject'), 'plain')

    def test_directory_has_no_mail_xattrs(self):
        d = os.path.join(self.mnt, 'INBOX')
        self.assertEqual([n for n in os.listxattr(d) if n.startswith('user.mail.')], [])
        with self.assertRaises(OSError) as cm:
            os.getxattr(d, 'user.mail.flags')
        self.assertEqual(cm.exception.errno, errno.ENODATA)

    def test_listxattr_and_getfattr(self):
        path = os.path.join(self.mnt, 'INBOX', '%d.eml' % SPECIAL['xattr'])
        names = set(os.listxattr(path))
        self.assertTrue({'user.mail.flags', 'user.mail.subject', 'user.mail.from',
                         'user.mail.date', 'user.mail.message_id'} <= names, names)
        if not shutil.which('getfattr'):
            self.skipTest('getfattr not installed (Debian: attr)')
        r = run(['getfattr', '-d', '--absolute-names', path])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout.decode('utf-8', 'replace')
        for n in ('flags', 'subject', 'from', 'date', 'message_id'):
            self.assertIn('user.mail.%s=' % n, out)
        self.assertIn('user.mail.message_id="<xattr-test@example.org>"', out)
        flags = re.search(r'^user\.mail\.flags="([^"]*)"', out, re.M).group(1)
        self.assertEqual(set(flags.replace('\\\\', '\\').split()),
                         {'\\Flagged', '\\Answered', '$Work'})


# ---------------------------------------------------------------- 5. rsync

class Rsync(MountTest):
    @unittest.skipUnless(shutil.which('rsync'), 'rsync not installed')
    def test_rsync_twice_then_diff(self):
        m = self.mount('rsync')
        backup = tempfile.mkdtemp(prefix='backup-', dir=TMP)
        r = run(['rsync', '-a', m.mountpoint + '/', backup + '/'], timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(['rsync', '-ai', m.mountpoint + '/', backup + '/'], timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = os.fsdecode(r.stdout).splitlines()
        if lines:
            print('\n  second rsync -ai itemized %d lines: %s'
                  % (len(lines), '; '.join(lines[:8])), file=sys.stderr)
        self.assertEqual([l for l in lines if l.startswith('>f')], [])
        # Once everything has been listed, attributes are stable: a third
        # run itemizes nothing at all.
        r = run(['rsync', '-ai', m.mountpoint + '/', backup + '/'], timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.fsdecode(r.stdout).splitlines(), [])
        r = run(['diff', '-r', m.mountpoint, backup], timeout=180)
        self.assertEqual((r.returncode, r.stdout), (0, b''), r.stderr)
        _, files = walk(backup)
        self.assertEqual(files, set(TREE.files))


# ---------------------------------------------------------------- 6. names

class Names(SharedMountTest):
    TAG = 'names'

    def test_utf7_spaces_ampersand_nested(self):
        top = set(os.listdir(self.mnt))
        for d in ('Entwürfe', '台北', 'with space', 'A & B', 'Parent'):
            self.assertIn(d, top)
        self.assertEqual(os.listdir(os.path.join(self.mnt, '台北')), ['日本語'])
        for name in NAMED:
            files = TREE.files_in(name)
            self.assertEqual(len(files), 1, name)
            self.assertEqual(set(os.listdir(os.path.join(self.mnt, name))),
                             {os.path.basename(f) for f in files})
            self.assertBytesEqual(self.mnt, files, name + ': ')

    def test_noselect_parent(self):
        self.assertIn('\\Noselect', dc.list_mailboxes('alice')['Parent'])
        p = os.path.join(self.mnt, 'Parent')
        self.assertEqual(os.listdir(p), ['Child'])
        self.assertEqual(os.stat(p).st_nlink, 3)

    def test_empty_mailbox(self):
        p = os.path.join(self.mnt, 'Empty')
        self.assertEqual(os.listdir(p), [])
        self.assertEqual(os.stat(p).st_nlink, 2)

    def test_big_message(self):
        rel = 'Big/%d.eml' % SPECIAL['big']
        want = body_of(rel)
        self.assertGreater(len(want), 20 * 1000 * 1000)
        self.assertEqual(os.stat(os.path.join(self.mnt, rel)).st_size, len(want))
        self.assertEqual(read(os.path.join(self.mnt, rel)), want)
        # Reads at odd offsets, as a pager or a seek would do.
        with open(os.path.join(self.mnt, rel), 'rb') as f:
            for off in (0, 1, 131071, 131072, 10 * 1024 * 1024 + 3, len(want) - 5):
                f.seek(off)
                self.assertEqual(f.read(70000), want[off:off + 70000], off)

    def test_dot_separator_escapes(self):
        with mailharness.Dovecot(separator='.') as dot:
            names = ['Lists.a/b', 'Lists.100%', 'Lists.x&y']
            for n in names:
                dot.append('alice', n, ('Subject: %s\r\n\r\nin %s\r\n' % (n, n)).encode())
            m = self.mount('dot', dcx=dot)
            lists = os.path.join(m.mountpoint, 'Lists')
            self.assertEqual(set(os.listdir(lists)), {'a%2Fb', '100%25', 'x&y'})
            self.assertEqual(os.stat(lists).st_nlink, 5)
            for n in names:
                bodies = dot.fetch_bodies('alice', n)
                path = os.path.join(m.mountpoint, mailbox_path(n, '.'))
                self.assertEqual(set(os.listdir(path)), {'%d.eml' % u for u in bodies})
                for uid, body in bodies.items():
                    self.assertEqual(read(os.path.join(path, '%d.eml' % uid)), body, n)
            m.unmount()


CHUNK = 256 * 1024      # the cache's piece size (CACHE_BODY_CHUNK, cache/cache.h)


class BigBody(MountTest):
    """The 20 MB message of Big, longer than the cache's piece size: fetched
    into the cache in pieces with bounded memory, read at odd offsets across
    the piece boundaries, whole from the cache after a remount offline."""

    def pread_uncached(self, fd, n, off):
        # Drop the kernel's copy so that the read reaches mailfs.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, n, off)

    def test_big_message_peak_memory_and_odd_offsets(self):
        rel = 'Big/%d.eml' % SPECIAL['big']
        want = body_of(rel)
        self.assertGreater(len(want), 20 * CHUNK)
        m = self.mount('bigbody')
        path = os.path.join(m.mountpoint, rel)
        self.assertEqual(os.stat(path).st_size, len(want))
        before = vm_hwm(m.pid)
        fd = os.open(path, os.O_RDONLY)
        try:
            # The first read, inside a piece and across the next boundary,
            # waits for the whole message.
            off = 3 * CHUNK + 7
            self.assertEqual(self.pread_uncached(fd, 300000, off),
                             want[off:off + 300000])
            grew = vm_hwm(m.pid) - before
            last = len(want) // CHUNK
            offs = set()
            for b in list(range(0, 6)) + [last - 1, last, last + 1]:
                for d in (-4097, -1, 0, 1, 4095, CHUNK // 2 + 3):
                    if 0 <= b * CHUNK + d:
                        offs.add(b * CHUNK + d)
            for off in sorted(offs):
                for n in (1, 4097, 131072, CHUNK + 1, 2 * CHUNK + 9):
                    self.assertEqual(self.pread_uncached(fd, n, off),
                                     want[off:off + n], (off, n))
        finally:
            os.close(fd)
        # Before: about three times the message (the literal, a copy in
        # the batch, the write transaction); now a few MB, whatever its size.
        # (A sanitizer's quarantine and shadow memory are not mailfs's.)
        if not mountutil.sanitized():
            self.assertLess(grew, 24 << 20, 'peak resident set grew by %d MB '
                            'while fetching a %d MB message'
                            % (grew >> 20, len(want) >> 20))
        cache = m.cache_dir
        m.unmount()
        # Its pieces are stored compressed (the message is text): the
        # whole cache takes less than half the message.
        used = sum(os.stat(os.path.join(d, f)).st_blocks * 512
                   for d, _, fs in os.walk(cache) for f in fs)
        self.assertLess(used, len(want) // 2,
                        'cache of %d bytes for a %d-byte message' % (used, len(want)))
        # Complete and committed: served whole from the cache alone, at
        # odd offsets across the boundaries of compressed pieces.
        m2 = self.mount('bigbody-offline', cache=cache, options=('offline',))
        path = os.path.join(m2.mountpoint, rel)
        self.assertEqual(read(path), want)
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in (CHUNK - 1, 7 * CHUNK + 12345, len(want) - CHUNK - 3):
                for n in (3, 131072, CHUNK + 5):
                    self.assertEqual(self.pread_uncached(fd, n, off),
                                     want[off:off + n], (off, n))
        finally:
            os.close(fd)


    @unittest.skipUnless(shutil.which('mdb_dump') and shutil.which('mdb_load'),
                         'lmdb-utils (mdb_dump, mdb_load) missing')
    def test_damaged_cache_read_is_eio_not_a_hang(self):
        """A body whose record in the cache cannot be decoded: a read of it
        fails with EIO at once (it used to get no answer at all, and the
        reader hung until mailfs was killed)."""
        rel = 'Big/%d.eml' % SPECIAL['big']
        want = body_of(rel)
        plain = 'INBOX/%d.eml' % SPECIAL['plain']
        m = self.mount('damagedbody')
        self.assertEqual(read(os.path.join(m.mountpoint, rel)), want)
        self.assertEqual(read(os.path.join(m.mountpoint, plain)), body_of(plain))
        cache = m.cache_dir
        m.unmount()
        mountutil.spoil_big_body(cache)
        m2 = self.mount('damagedbody2', cache=cache, mode='foreground',
                        options=('offline',))
        path = os.path.join(m2.mountpoint, rel)
        self.assertEqual(os.stat(path).st_size, len(want))
        size = m2.log_size()
        res, took = try_op('read', path)
        self.assertEqual(res, 'EIO')
        self.assertLess(took, ERROR_SECONDS)
        time.sleep(0.2)
        self.assertRegex(m2.log_since(size), r'undecodable big body record')
        # The rest of the mount still answers.
        self.assertEqual(read(os.path.join(m2.mountpoint, plain)), body_of(plain))


class Large(MountTest):
    def test_mailbox_with_1000_messages(self):
        uids = dc.generate('bob', 'Many', 1000, seed=3)
        bodies = dc.fetch_bodies('bob', 'Many')
        m = self.mount('many', user='bob')
        path = os.path.join(m.mountpoint, 'Many')
        names = os.listdir(path)
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(set(names), {'%d.eml' % u for u in uids})
        r = run(['ls', '-l', path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(re.findall(rb'^-r--r--r-- ', r.stdout, re.M)), 1000)
        bad = [u for u in uids if read(os.path.join(path, '%d.eml' % u)) != bodies[u]]
        self.assertEqual(bad, [])

    def test_big_listing_whole_and_memory_bounded(self):
        # More messages than several batches of a listing (stored as they
        # arrive, fs/net/listing.c): every one is listed with its size,
        # date and headers, and mailfs's own memory does not grow with
        # the mailbox (it held every record, and a copy per open
        # directory: about 45 MB here, over 100 MB at 100,000).
        n = 50000
        msgs = [(b'From: =?UTF-8?Q?S=C3=B8ren_?=%d <s%d@example.org>\r\n'
                 b'Subject: =?UTF-8?B?%s?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n'
                 b'Message-ID: <big-listing-%d@example.org>\r\n\r\n%s\r\n'
                 % (i, i, base64.b64encode(('Größe %d' % i).encode()), i,
                    b'x' * (i % 300)),
                 ('\\Seen',) if i % 3 else ('$Work',), 1500000000 + i * 60)
                for i in range(n)]
        uids = dc.append_many('bob', 'Batches', msgs)
        self.assertEqual(len(uids), n)
        meta = dc.meta('bob', 'Batches')
        m = self.mount('batches', user='bob')
        peak, done = [0], threading.Event()

        def sample():
            while not done.wait(0.005):
                try:
                    with open('/proc/%d/status' % m.pid) as f:
                        kb = int(re.search(r'^RssAnon:\s+(\d+)', f.read(), re.M).group(1))
                except (OSError, AttributeError):
                    return
                peak[0] = max(peak[0], kb)
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            path = os.path.join(m.mountpoint, 'Batches')
            r = run(['ls', '-l', '--time-style=+%s', path])
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            done.set()
            t.join(5)
        got = {int(name[:-4]): (int(size), int(when)) for size, when, name in
               re.findall(rb'^-r--r--r-- +\d+ +\S+ +\S+ +(\d+) +(\d+) +(\d+\.eml)$',
                          r.stdout, re.M)}
        self.assertEqual(got, {u: meta[u] for u in uids})
        # The headers of messages at the ends of batches and of the listing.
        for i in (0, 1, 4095, 4096, 4097, 8191, 8192, n - 2, n - 1):
            p = os.path.join(path, '%d.eml' % uids[i])
            self.assertEqual(os.getxattr(p, 'user.mail.subject').decode(), 'Größe %d' % i)
            self.assertEqual(os.getxattr(p, 'user.mail.from').decode(),
                             'Søren %d <s%d@example.org>' % (i, i))
            self.assertEqual(os.getxattr(p, 'user.mail.message_id').decode(),
                             '<big-listing-%d@example.org>' % i)
            self.assertEqual(os.getxattr(p, 'user.mail.flags').decode(),
                             '\\Seen' if i % 3 else '$Work')
        self.assertGreater(peak[0], 0)
        if not mountutil.sanitized():   # its quarantine is not mailfs's
            self.assertLess(peak[0], 24 * 1024,
                            'peak RssAnon %d KB listing %d messages' % (peak[0], n))

    def test_ls_l_sends_no_request_per_file(self):
        # ls -l asks every file for security.selinux and
        # system.posix_acl_access.  Answered "not supported", ls stops
        # asking; the attributes come with READDIRPLUS.  So a listing
        # costs mailfs a few requests, not two or three per message.
        n = 400
        uids = dc.generate('bob', 'Listed', n, seed=11)
        meta = dc.meta('bob', 'Listed')
        m = self.mount('listed', user='bob', mode='debug')
        path = os.path.join(m.mountpoint, 'Listed')
        for round_ in ('first', 'second'):
            since = m.log_size()
            r = run(['ls', '-l', '--time-style=+%s', path])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, b'')
            got = {int(name[:-4]): (int(size), int(when)) for size, when, name in
                   re.findall(rb'^-r--r--r-- +\d+ +\S+ +\S+ +(\d+) +(\d+) +(\d+\.eml)$',
                              r.stdout, re.M)}
            self.assertEqual(got, {u: meta[u] for u in uids}, round_)
            ops = re.findall(r'opcode: ([A-Z_]+)', m.log_since(since))
            per_file = {op: ops.count(op) for op in ('GETXATTR', 'LOOKUP', 'GETATTR')}
            self.assertTrue(all(c <= 4 for c in per_file.values()),
                            '%s ls -l of %d messages: %s' % (round_, n, per_file))
        # The namespace mailfs has still answers; the others say so.
        one = os.path.join(path, '%d.eml' % uids[0])
        self.assertEqual(set(os.getxattr(one, 'user.mail.flags').decode().split()),
                         dc.flags('bob', 'Listed')[uids[0]])
        for name, err in (('security.selinux', errno.EOPNOTSUPP),
                          ('system.posix_acl_access', errno.EOPNOTSUPP),
                          ('trusted.x', errno.EOPNOTSUPP), ('user.other', errno.ENODATA)):
            with self.assertRaises(OSError) as cm:
                os.getxattr(one, name)
            self.assertEqual(cm.exception.errno, err, name)


# ------------------------------------------------------ 2, 7. remount, offline

class Remount(MountTest):
    """One cache: filled by a first mount, then reused online and offline."""

    @classmethod
    def setUpClass(cls):
        mnt, cls.cache = fresh('remount')
        m = mountutil.Mount(dc, mnt, cls.cache)
        m.start()
        try:
            cls.read_files = {f for f in TREE.files if not f.startswith('Unfetched/')}
            cls.unfetched = sorted(TREE.files_in('Unfetched'))
            dirs, files = walk(m.mountpoint)        # lists Unfetched too
            assert files == set(TREE.files), files ^ set(TREE.files)
            cls.inodes = {rel: os.stat(os.path.join(m.mountpoint, rel)).st_ino
                          for rel in sorted(dirs | files)}
            for rel in sorted(cls.read_files):
                read(os.path.join(m.mountpoint, rel))
        finally:
            m.unmount()

    def test_1_remount_serves_cache_without_fetching(self):
        m = self.mount('remount-d', cache=self.cache, mode='debug')
        dirs, files = walk(m.mountpoint)
        self.assertEqual(files, set(TREE.files))
        inodes = {rel: os.stat(os.path.join(m.mountpoint, rel)).st_ino
                  for rel in sorted(dirs | files)}
        self.assertEqual(inodes, self.inodes)
        self.assertBytesEqual(m.mountpoint, self.read_files)
        sent = m.sent_commands()
        self.assertTrue(sent, 'no " C: " lines in the debug log')
        self.assertEqual([c for c in sent if 'BODY.PEEK[]' in c], [])

    def test_2_offline_when_server_down(self):
        dc.stop()
        try:
            t = time.monotonic()
            m = self.mount('offline', cache=self.cache, mode='debug')
            self.assertLess(time.monotonic() - t, 10)
            self.assertRegex(m.log(), r'(?i)(offline|read-only|cannot reach)')
            dirs, files = walk(m.mountpoint)
            self.assertEqual(dirs, set(TREE.dirs))
            self.assertEqual(files, set(TREE.files))
            self.assertBytesEqual(m.mountpoint, self.read_files)
            # A body never fetched: EIO, promptly, and a log line says why.
            rel = self.unfetched[0]
            size = m.log_size()
            res, took = try_op('read', os.path.join(m.mountpoint, rel))
            self.assertEqual(res, 'EIO')
            self.assertLess(took, ERROR_SECONDS)
            time.sleep(0.2)
            why = m.log_since(size)
            self.assertIn(os.path.basename(rel), why)
            self.assertRegex(why, r'(?i)cache|offline')
            # Offline is read-only.
            self.assertEqual(try_op('create', os.path.join(m.mountpoint, 'INBOX', 'new'))[0],
                             'EROFS')
            m.unmount()
        finally:
            dc.start()


    def test_3_offline_option(self):
        # -o offline with the server up: no connection at all.
        m = self.mount('offline-opt', cache=self.cache, mode='debug', options=['offline'])
        dirs, files = walk(m.mountpoint)
        self.assertEqual(files, set(TREE.files))
        self.assertBytesEqual(m.mountpoint, self.read_files)
        res, took = try_op('read', os.path.join(m.mountpoint, self.unfetched[0]))
        self.assertEqual(res, 'EIO')
        self.assertLess(took, ERROR_SECONDS)
        self.assertEqual(m.sent_commands(), [])


    # Regression: a mount that came up while the server could not be
    # reached reconnects by itself once it is back (DESIGN.md, "Cache and
    # offline"); it once stayed offline until remounted.
    def test_4_offline_mount_reconnects_when_server_returns(self):
        dc.stop()
        try:
            m = self.mount('offline-back', cache=self.cache, mode='debug')
            path = os.path.join(m.mountpoint, self.unfetched[0])
            self.assertEqual(try_op('read', path)[0], 'EIO')
        finally:
            dc.start()
        deadline = time.monotonic() + RECONNECT_SECONDS
        res = None
        while time.monotonic() < deadline:
            res, _ = try_op('read', path)
            if res == 'OK':
                break
            time.sleep(1)
        self.assertEqual(res, 'OK', 'still %s %d s after the server came back'
                         % (res, RECONNECT_SECONDS))
        self.assertEqual(read(path), body_of(self.unfetched[0]))


class ServerGone(MountTest):
    """The server goes away while mounted: errors come within a bounded time,
    and mailfs reconnects by itself."""

    def unfetched_path(self, m):
        path = os.path.join(m.mountpoint, 'Unfetched')
        self.assertEqual(set(os.listdir(path)),
                         {os.path.basename(f) for f in TREE.files_in('Unfetched')})
        return os.path.join(path, os.path.basename(sorted(TREE.files_in('Unfetched'))[0]))

    def wait_readable(self, path, rel, seconds):
        deadline = time.monotonic() + seconds
        while True:
            res, _ = try_op('read', path)
            if res == 'OK' or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(res, 'OK', 'no reconnection within %d s' % seconds)
        self.assertEqual(read(path), body_of(rel))

    def test_server_stopped_while_mounted(self):
        m = self.mount('gone', mode='debug', options=['timeout=3'])
        self.assertEqual(walk(m.mountpoint)[1], set(TREE.files))    # lists all
        path = self.unfetched_path(m)
        rel = os.path.relpath(path, m.mountpoint)
        dc.stop()
        try:
            size = m.log_size()
            res, took = try_op('read', path)
            self.assertEqual(res, 'EIO')
            self.assertLess(took, ERROR_SECONDS)
            time.sleep(0.2)
            self.assertRegex(m.log_since(size), r'(?i)reach|connect|refused')
            # The tree listed before is still served.
            self.assertEqual(walk(m.mountpoint)[1], set(TREE.files))
        finally:
            dc.start()
        self.wait_readable(path, rel, 70)

    def test_stalled_server_times_out(self):
        m = self.mount('stall', mode='debug', options=['timeout=2'])
        path = self.unfetched_path(m)
        rel = os.path.relpath(path, m.mountpoint)
        dc.freeze()
        try:
            res, took = try_op('read', path)
            self.assertEqual(res, 'EIO')
            self.assertLess(took, 2 * 2 + 3)
        finally:
            dc.thaw()
        self.wait_readable(path, rel, 70)


# ---------------------------------------------------------- 8. mount errors

class MountErrors(MountTest):
    def attempt(self, *, url=None, password=None, cafile=True, mountpoint=None,
                expect, cache=None, options=(), user=None, env=None, cwd=None,
                one_line=True, within=ERROR_SECONDS):
        """Run mailfs in daemon mode (no -f): it must fail within seconds
        with a non-zero exit, one line on stderr matching EXPECT, and no
        mount left.  CACHE: the cache_dir (False: none, the default one);
        USER: run it as that user (setpriv); ENV: its whole
        environment; CWD: the directory it is started in."""
        mnt, c = fresh('err')
        if mountpoint is not None:
            mnt = mountpoint
        if cache is None:
            cache = c
        m = mountutil.Mount(dc, mnt, cache or None, url=url, password=password,
                            cafile=cafile, options=options)
        if user is not None:
            m.argv[:0] = ['setpriv', '--reuid=' + user, '--regid=%d' % user_gid(user),
                          '--clear-groups', '--']
        self.addCleanup(m.unmount)
        t = time.monotonic()
        with started_in(cwd), environment(env):
            r = m.run()
        took = time.monotonic() - t
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertNotEqual(r.returncode, 0, r.stderr)
        if one_line:
            self.assertEqual(len(lines), 1, 'not one line: %r' % r.stderr)
        self.assertRegex(lines[-1] if lines else '', expect)
        self.assertFalse(mountutil.is_mounted(mnt), 'a mount was left behind')
        self.assertNotIn(os.path.realpath(mnt), mountutil.mounts())
        self.assertNotIn(os.path.realpath(mnt), mountinfo_points())
        self.assertLess(took, within)
        return lines[-1]

    def test_wrong_password(self):
        # Dovecot's text is "[AUTHENTICATIONFAILED] Authentication failed."
        self.attempt(password='not-the-password', expect=r'Authentication failed')

    def test_unknown_ca(self):
        self.attempt(cafile=False, expect=r'(?i)issuer')

    def test_wrong_host_name(self):
        url = dc.url('imaps', 'alice').replace('@localhost:', '@127.0.0.1:')
        self.attempt(url=url, expect=r'(?i)host')

    def test_expired_certificate(self):
        with dc.bad_cert_server('expired') as srv:
            self.attempt(url='imaps://alice@localhost:%d' % srv.port, expect=r'(?i)expired')

    def test_unreachable_no_cache(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        self.attempt(url='imaps://alice@localhost:%d' % port, expect=r'(?i)refused')

    def test_mountpoint_not_empty(self):
        mnt, _ = fresh('notempty')
        with open(os.path.join(mnt, 'file'), 'w') as f:
            f.write('x')
        self.attempt(mountpoint=mnt, expect=r'(?i)not empty')

    def test_mountpoint_missing(self):
        mnt, _ = fresh('missing')
        self.attempt(mountpoint=os.path.join(mnt, 'nonexistent'),
                     expect=r'(?i)(no such file|does not exist|missing)')

    # Regression: a relative cafile worked for the connection made at mount
    # time, then every connection made after mailfs went to the background
    # (its working directory is /) failed: a cold rsync gave thousands of
    # EIO.  Every path option is made absolute before that.
    def test_relative_cafile_after_daemonizing(self):
        base = tempfile.mkdtemp(prefix='relca-', dir=TMP)
        shutil.copy(dc.ca, os.path.join(base, 'ca.pem'))
        mnt, cache = fresh('relca')
        m = mountutil.Mount(dc, mnt, cache, cafile='ca.pem')
        self.addCleanup(m.unmount)
        with started_in(base):
            m.start()
        dest = tempfile.mkdtemp(prefix='relca-copy-', dir=TMP)
        r = subprocess.run(['rsync', '-a', m.mountpoint + '/', dest + '/'],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=90)
        self.assertEqual((r.returncode, r.stderr.count('\n')), (0, 0), r.stderr[-2000:])
        copied = {os.path.relpath(os.path.join(d, f), dest)
                  for d, _, fs in os.walk(dest) for f in fs}
        self.assertEqual(copied, set(TREE.files))
        bad = [rel for rel in sorted(TREE.files)
               if read(os.path.join(dest, rel)) != body_of(rel)]
        self.assertEqual(bad, [])

    # Regression: a cache_dir that cannot be created failed after mailfs
    # had gone to the background: exit status 0, no mount, the reason only
    # in syslog.
    def test_cache_dir_under_a_file(self):
        base = tempfile.mkdtemp(prefix='cachefile-', dir=TMP)
        with open(os.path.join(base, 'file'), 'w') as f:
            f.write('x')
        cache = os.path.join(base, 'file', 'cache')
        self.attempt(cache=cache, expect=r'(?i)cache.*%s.*not a directory' % re.escape(cache))

    def test_relative_cache_dir_under_a_file(self):
        base = tempfile.mkdtemp(prefix='cachefile-', dir=TMP)
        with open(os.path.join(base, 'file'), 'w') as f:
            f.write('x')
        self.attempt(cache='file/cache', cwd=base,
                     expect=r'(?i)cache.*%s.*not a directory'
                     % re.escape(os.path.join(base, 'file', 'cache')))

    def test_cache_dir_without_permission(self):
        # A directory the (non-root) user may not write into.
        base = self.nobody_dir()
        locked = os.path.join(base, 'locked')
        os.mkdir(locked, 0o700)
        cache = os.path.join(locked, 'cache')
        self.attempt(cache=cache, user='nobody', cafile=self.nobody_ca(base),
                     mountpoint=self.nobody_mnt(base),
                     expect=r'(?i)cache.*%s.*permission denied' % re.escape(cache))
        self.assertFalse(os.path.exists(cache))

    # Regression: the default cache directory came from $HOME, which a
    # user mount (fstab "user", sudo) may point at another user's home:
    # mailfs picked /root/.cache for a non-root user.  It is the calling
    # user's home from the password database.
    def test_default_cache_dir_is_the_users_home(self):
        import pwd
        home = pwd.getpwnam('nobody').pw_dir
        if os.path.isdir(home):
            self.skipTest('the home of nobody (%s) exists' % home)
        base = self.nobody_dir()
        fake_home = os.path.join(base, 'home')
        os.mkdir(fake_home, 0o777)
        env = {k: v for k, v in os.environ.items() if k != 'XDG_CACHE_HOME'}
        env['HOME'] = fake_home
        want = os.path.join(home, '.cache', 'mailfs', 'alice@localhost')
        self.attempt(cache=False, user='nobody', env=env, cafile=self.nobody_ca(base),
                     mountpoint=self.nobody_mnt(base),
                     expect=r'(?i)cache.*%s.*(permission denied|no such file)'
                     % re.escape(want))
        self.assertEqual(os.listdir(fake_home), [])

    # The mount itself fails after mailfs forked (here: a user who may not
    # open /dev/fuse): the reason on stderr, non-zero exit, no mount.
    def test_mount_refused_after_fork(self):
        base = self.nobody_dir()
        if subprocess.run(['setpriv', '--reuid=nobody', '--regid=%d' % user_gid('nobody'),
                           '--clear-groups', '--', 'sh', '-c', 'exec 3<>/dev/fuse'],
                          capture_output=True, timeout=10).returncode == 0:
            self.skipTest('nobody may open /dev/fuse here')
        cache = os.path.join(base, 'cache')
        os.mkdir(cache, 0o700)
        os.chown(cache, pwd_uid('nobody'), user_gid('nobody'))
        self.attempt(cache=cache, user='nobody', cafile=self.nobody_ca(base),
                     mountpoint=self.nobody_mnt(base), one_line=False,
                     expect=r'(?i)/dev/fuse|mount')
        # The cache was opened first, and closed again.
        self.assertTrue(os.path.exists(os.path.join(cache, 'data.mdb')))

    def test_cache_in_use_by_another_mount(self):
        first = self.mount('inuse')
        # A mailfs that holds the cache may be shutting down after its
        # unmount: the second waits CACHE_LOCK_WAIT_MS (5 s) for it first.
        self.attempt(cache=first.cache_dir, within=ERROR_SECONDS + CACHE_LOCK_WAIT,
                     expect=r'(?i)cache %s.* in use' % re.escape(first.cache_dir))
        # The first mount goes on serving.
        rel = sorted(TREE.files_in('INBOX'))[0]
        self.assertEqual(read(os.path.join(first.mountpoint, rel)), body_of(rel))

    # Regression: a data file truncated to half killed mailfs with SIGBUS
    # and left "Transport endpoint is not connected".  It is refused at
    # once, with one line naming the file, and left exactly as it was.
    def test_damaged_cache(self):
        m = self.mount('damaged')
        for rel in sorted(TREE.files):
            read(os.path.join(m.mountpoint, rel))
        self.assertFalse(m.unmount())
        data = os.path.join(m.cache_dir, 'data.mdb')
        size = os.path.getsize(data)
        # Every message is in it (compressed: the 20 MB message of TREE
        # shrinks to little), so half of the file holds pages in use.
        self.assertGreater(size, 1 << 20)
        os.truncate(data, size // 2)
        before = file_digest(data)
        line = self.attempt(cache=m.cache_dir,
                            expect=r'(?i)cache %s is damaged \(truncated: %d of \d+ bytes\)'
                            r'.*move it away' % (re.escape(data), size // 2))
        self.assertIn('backup', line)
        self.assertEqual(os.path.getsize(data), size // 2)
        self.assertEqual(file_digest(data), before)

    # The background process dies during start-up, after it mounted: the
    # waiting parent says so, exits non-zero and leaves no mount.
    def test_killed_during_start_up(self):
        mnt, cache = fresh('killed')
        real = os.path.realpath(mnt)
        m = mountutil.Mount(dc, mnt, cache)
        self.addCleanup(m.unmount)
        env = dict(os.environ, MAILFS_TEST_PAUSE='startup_mounted')
        p = subprocess.Popen(m.argv, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Whatever happens, no paused mailfs of ours stays behind (the
        # paused mount answers nothing: even a stat of it would hang).
        self.addCleanup(kill_pids, lambda: children_of(p.pid) + [p.pid])
        deadline = time.monotonic() + mountutil.MOUNT_TIMEOUT
        while real not in mountutil.mounts() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(real, mountutil.mounts(), 'no pause after mounting')
        child = children_of(p.pid)
        self.assertEqual(len(child), 1, child)
        os.kill(child[0], signal.SIGKILL)
        out, err = p.communicate(timeout=ERROR_SECONDS)
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertNotEqual(p.returncode, 0, err)
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], r'(?i)died during start-up.*killed')
        self.assertNotIn(real, mountutil.mounts(), 'a mount was left behind')
        self.assertNotIn(real, mountinfo_points())

    # ----- helpers for running mailfs as a user other than root

    def nobody_dir(self):
        if os.geteuid() != 0:
            self.skipTest('needs root to run mailfs as another user')
        if not shutil.which('setpriv'):
            self.skipTest('setpriv is missing')
        base = tempfile.mkdtemp(prefix='nobody-', dir=TMP)
        os.chmod(base, 0o755)
        return base

    def nobody_ca(self, base):
        ca = os.path.join(base, 'ca.pem')
        shutil.copy(dc.ca, ca)
        os.chmod(ca, 0o644)
        return ca

    def nobody_mnt(self, base):
        mnt = os.path.join(base, 'mnt')
        os.mkdir(mnt, 0o755)
        return mnt


# ----------------------------------------------------- 9. UIDVALIDITY change

class UidValidity(MountTest):
    """Bob's mailboxes: "Migrate" is deleted and re-created with the same
    messages in reverse order after a new one (new UIDs, new UIDVALIDITY);
    "Renumber" only gets a new UIDVALIDITY (same UIDs)."""

    @classmethod
    def setUpClass(cls):
        dc.generate('bob', 'Migrate', 12, seed=7)
        dc.generate('bob', 'Renumber', 8, seed=8)
        cls.old = {b: dc.fetch_bodies('bob', b) for b in ('Migrate', 'Renumber')}
        cls.old_uv = {b: dc.status('bob', b)['UIDVALIDITY'] for b in cls.old}
        mnt, cls.cache = fresh('uidv')
        m = mountutil.Mount(dc, mnt, cls.cache, user='bob')
        m.start()
        try:
            for box, bodies in cls.old.items():
                for uid, body in bodies.items():
                    assert read(os.path.join(m.mountpoint, box, '%d.eml' % uid)) == body
        finally:
            m.unmount()
        # The change on the server.
        im = dc.imap('bob')
        try:
            typ, data = im.delete('Migrate')
            assert typ == 'OK', data
        finally:
            im.logout()
        fresh_msg = (b'Subject: arrived after the migration\r\n'
                     b'Message-ID: <fresh-after-migration@example.org>\r\n\r\nnew\r\n')
        uids = dc.append_many('bob', 'Migrate',
                              [fresh_msg] + [cls.old['Migrate'][u]
                                             for u in sorted(cls.old['Migrate'], reverse=True)])
        cls.fresh_uid = uids[0]
        for box in cls.old:
            dc.doveadm('mailbox', 'update', '-u', 'bob', '--uid-validity',
                       str(cls.old_uv[box] + 1000), box)
        cls.new = {b: dc.fetch_bodies('bob', b) for b in cls.old}
        cls.new_uv = {b: dc.status('bob', b)['UIDVALIDITY'] for b in cls.old}
        assert all(cls.new_uv[b] != cls.old_uv[b] for b in cls.old)
        assert sorted(cls.new['Migrate']) != sorted(cls.old['Migrate'])
        time.sleep(1.1)     # the cached listings are now older than poll=1

    def test_remount_rematches_cached_bodies(self):
        m = self.mount('uidv-d', cache=self.cache, mode='debug', user='bob',
                       options=['poll=1'])
        # Renumber first, then Migrate, so that each one's fetches can be
        # told apart in the log.
        for box in ('Renumber', 'Migrate'):
            path = os.path.join(m.mountpoint, box)
            want = {'%d.eml' % u for u in self.new[box]}
            deadline = time.monotonic() + 15
            while set(os.listdir(path)) != want and time.monotonic() < deadline:
                time.sleep(0.2)
            with self.subTest(box=box, what='new UIDs listed'):
                self.assertEqual(set(os.listdir(path)), want)
            since = m.log_size()
            got = {}
            for uid in sorted(self.new[box]):
                try:
                    got[uid] = read(os.path.join(path, '%d.eml' % uid))
                except OSError as e:
                    got[uid] = e
            with self.subTest(box=box, what='bytes'):
                self.assertEqual({u: b for u, b in got.items() if b != self.new[box][u]}, {})
            time.sleep(0.2)
            fetched = fetched_uids(m.sent_commands(since))
            allowed = {self.fresh_uid} if box == 'Migrate' else set()
            with self.subTest(box=box, what='not fetched again'):
                self.assertLessEqual(fetched, allowed,
                                     'bodies fetched again: %s' % sorted(fetched - allowed))
        log = m.log()
        for box in self.old:
            with self.subTest(box=box, what='logged'):
                self.assertTrue([l for l in log.splitlines()
                                 if 'UIDVALIDITY' in l.upper() and box in l],
                                'no log line about the UIDVALIDITY change of %s' % box)


# ---------------------------------------------------------------- 10. writes

class Writes(MountTest):
    def check_refused(self, mnt, allowed, ops):
        for op, rel, arg in ops:
            path = os.path.join(mnt, rel)
            if arg is not None and op == 'rename':
                arg = os.path.join(mnt, arg)
            res, took = try_op(op, path, arg)
            with self.subTest(op=op, path=rel):
                self.assertIn(res, allowed)
                self.assertLess(took, ERROR_SECONDS)

    def server_state(self):
        return (dc.list_mailboxes('alice').keys(), dc.flags('alice', 'INBOX'),
                dc.fetch_bodies('alice', 'INBOX'))

    def test_existing_messages_immutable(self):
        # A message's content never changes: writing into it, truncating
        # it, chmod and utime are refused.  (Creating files and mailboxes
        # is allowed: tests/test_write.py covers those.)
        before = self.server_state()
        m = self.mount('writes')
        msg = 'INBOX/%d.eml' % SPECIAL['plain']
        self.check_refused(m.mountpoint, ('EPERM',), [
            ('write_trunc', msg, None),
            ('append', msg, None),
            ('truncate', msg, None),
            ('chmod', msg, None),
            ('utime', msg, None),
        ])
        # The same with the programs a user would run.
        for argv in (['sh', '-c', 'echo x > "$1"', 'sh', os.path.join(m.mountpoint, msg)],
                     ['sh', '-c', 'echo x >> "$1"', 'sh', os.path.join(m.mountpoint, msg)]):
            r = run(argv, timeout=OP_TIMEOUT)
            with self.subTest(argv=argv[:3]):
                self.assertNotEqual(r.returncode, 0)
                self.assertRegex(r.stderr.decode(), r'Operation not permitted')
        self.assertEqual(read(os.path.join(m.mountpoint, msg)), body_of(msg))
        self.assertEqual(self.server_state(), before)

    def test_ro_mount_erofs(self):
        before = self.server_state()
        m = self.mount('ro', options=['ro'])
        msg = 'INBOX/%d.eml' % SPECIAL['plain']
        self.check_refused(m.mountpoint, ('EROFS',), [
            ('create', 'INBOX/new', None),
            ('write_trunc', msg, None),
            ('truncate', msg, None),
            ('chmod', msg, None),
            ('utime', msg, None),
            ('mkdir', 'newdir', None),
            ('rmdir', 'Empty', None),
            ('unlink', msg, None),
            ('rename', msg, 'Empty/x.eml'),
            ('setxattr', msg, '\\Seen'),
        ])
        self.assertEqual(read(os.path.join(m.mountpoint, msg)), body_of(msg))
        self.assertEqual(self.server_state(), before)


if __name__ == '__main__':
    mounttest.main()
