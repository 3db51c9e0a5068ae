#!/usr/bin/env python3
"""What the test modules that mount mailfs share: module set-up, a test
case bounded in time, file operations in a child process, and small
helpers.

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'harness'))
    import mounttest

    def setUpModule():
        global dc, TMP
        dc, TMP = mounttest.set_up_module('mailfs-xyz-test-', users=USERS)

    def tearDownModule():
        mounttest.tear_down_module(dc, TMP)

    class XyzTest(mounttest.BoundedTest):
        TEST_TIMEOUT = 120.0
        ...
            mnt, cache = mounttest.fresh(TMP, 'tag')
            m = self.started(mountutil.Mount(dc, mnt, cache))

    if __name__ == '__main__':
        mounttest.main()            # mailharness.run_tests()

set_up_module() skips the module (exit 77) when Dovecot or FUSE is
missing, installs mountutil's signal handlers and makes the scratch
directory; BoundedTest kills our mailfs processes (by pid) when a test
runs longer than its TEST_TIMEOUT, which makes the kernel fail the
requests still pending, and shows the end of its mounts' logs when a test
fails.  try_op() runs one file operation in a child process, so that a
hung request cannot hang the test.

Environment of the test modules: MAILFS_BUILD, the build directory (the
binary is $MAILFS_BUILD/mailfs); MAILFS_SOURCE, the source tree;
MAILFS_CORPUS, the test corpus (tests/corpus); MAILFS_TEST_LOG_LINES, how
many log lines a failing test shows (40).
"""

import base64
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import mailharness
import mountutil

LOG_LINES = int(os.environ.get('MAILFS_TEST_LOG_LINES', 40))
RUN_TIMEOUT = 120       # run(): one program, unless the caller says otherwise
OP_TIMEOUT = 15.0       # try_op(): one file operation, unless the caller says otherwise

# What a body fetch looks like among the IMAP commands sent (not
# RFC822.SIZE, not BODY.PEEK[HEADER.FIELDS ...]).
BODY_FETCH = re.compile(r'BODY(\.PEEK)?\[\]|BINARY(\.PEEK)?\[\]|\bRFC822(?![.\w])', re.I)


# ------------------------------------------------------------ module set-up

def set_up_module(prefix, dovecot=True, **dovecot_kw):
    """(Dovecot or None, scratch directory) for one test module: exits 77
    without Dovecot (when DOVECOT) or FUSE; DOVECOT_KW go to
    mailharness.Dovecot()."""
    if dovecot:
        mailharness.require_dovecot()
    mountutil.require_fuse()
    mountutil.install_signal_handlers()
    tmp = mountutil.scratch_dir(prefix)
    return (mailharness.Dovecot(**dovecot_kw) if dovecot else None), tmp


def tear_down_module(dc, tmp):
    """Unmount what is left, stop DC (if any), remove the scratch directory."""
    mountutil.unmount_all()
    if dc is not None:
        dc.close()
    mountutil.remove_scratch(tmp)


# The summary at the end, as every integration test module prints it.
main = mailharness.run_tests


# ------------------------------------------------------------ the test case

class BoundedTest(unittest.TestCase):
    """Bounds every test: if one runs longer than TEST_TIMEOUT (a FUSE
    request that never gets an answer), timed_out() runs and our mailfs
    processes are killed by pid, which makes the kernel fail the pending
    requests.  A failing test shows the last LOG_LINES lines of the logs of
    the mounts given to track() or started(): only mailfs's own lines and
    the commands it sent when OWN_LOG_LINES, else every line."""

    TEST_TIMEOUT = 120.0
    OWN_LOG_LINES = True

    def setUp(self):
        self._timer = threading.Timer(self.TEST_TIMEOUT, self._abort)
        self._timer.daemon = True
        self._timer.start()

    def tearDown(self):
        self._timer.cancel()

    def timed_out(self):
        """Called (on the timer's thread) before our mailfs is killed."""

    def _abort(self):
        print('\n%s: over %.0f s; killing mailfs' % (self.id(), self.TEST_TIMEOUT),
              file=sys.stderr, flush=True)
        self.timed_out()
        for m in list(mountutil._active):
            m.kill()

    def run(self, result=None):
        self._mounts = []
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            for m in self._mounts:
                lines = m.log().splitlines()
                if self.OWN_LOG_LINES:
                    # Without the FUSE request lines of -d: mailfs's own lines.
                    lines = [l for l in lines if l.startswith('mailfs') or ' C: ' in l]
                print('\n--- mailfs log of %s (last %d%s lines):\n%s'
                      % (os.path.basename(os.path.dirname(m.mountpoint)), LOG_LINES,
                         ' of its own' if self.OWN_LOG_LINES else '',
                         '\n'.join(lines[-LOG_LINES:])), file=sys.stderr)
        return out

    def track(self, m):
        """Show M's log if the test fails; M."""
        self._mounts.append(m)
        return m

    def started(self, m, env=None):
        """track(M), unmount it at the end of the test, start it (with ENV
        added to mailfs's environment); M."""
        self.track(m)
        self.addCleanup(m.unmount)
        with with_env(env):
            m.start()
        return m


@contextlib.contextmanager
def with_env(env):
    """Environment variables ENV ({name: value} or None) set for mailfs,
    which inherits ours, while the block runs."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------ files

def fresh(tmp, tag):
    """A new empty mount point and a cache path (not created) for a
    scenario, in a new directory below TMP: (mount point, cache)."""
    base = fresh_base(tmp, tag)
    return os.path.join(base, 'mnt'), os.path.join(base, 'cache')


def fresh_base(tmp, tag):
    """A new directory below TMP holding an empty mount point "mnt"."""
    base = tempfile.mkdtemp(prefix=tag + '-', dir=tmp)
    os.mkdir(os.path.join(base, 'mnt'))
    return base


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def names(path):
    return set(os.listdir(path))


def eml(uids):
    return {'%d.eml' % u for u in uids}


def inbox(m):
    return os.path.join(m.mountpoint, 'INBOX')


def mount_bytes(m):
    """{name: bytes} of every file in the mount's INBOX (one listing)."""
    d = inbox(m)
    return {n: read(os.path.join(d, n)) for n in os.listdir(d)}


def b64word(text):
    return '=?UTF-8?B?' + base64.b64encode(text.encode()).decode() + '?='


def vm_hwm(pid):
    """Peak resident set of process PID, bytes."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmHWM for %d' % pid)


def wait_for(fn, seconds, interval=0.1, errors=()):
    """Call FN until it returns something true or SECONDS pass; return the
    last value.  An exception of ERRORS counts as a false value."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            v = fn()
        except errors:
            v = None
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def run(argv, timeout=RUN_TIMEOUT, **kw):
    """subprocess.run of ARGV in the C locale, output captured, no stdin;
    env= replaces the environment (LC_ALL=C still set)."""
    env = dict(kw.pop('env', None) or os.environ, LC_ALL='C')
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env,
                          timeout=timeout, **kw)


# ------------------------------------------------- IMAP commands in the log

def body_fetches(commands):
    return [c for c in commands if BODY_FETCH.search(c)]


def fetched_uids(commands):
    """UIDs named by the body fetches among the commands sent (-1: a fetch
    whose UIDs cannot be told)."""
    uids = set()
    for c in body_fetches(commands):
        m = re.search(r'UID FETCH ([0-9:,*]+)', c)
        if not m:
            uids.add(-1)
            continue
        for part in m.group(1).split(','):
            a, _, b = part.partition(':')
            if '*' in (a, b):
                uids.add(-1)
            else:
                uids.update(range(int(a), int(b or a) + 1))
    return uids


def retr_sent(log):
    """Message numbers of the RETR commands in a mailfs -d log."""
    return [int(n) for n in re.findall(r' C: RETR (\d+)', log)]


# ------------------------------------------- one operation, in a child

# argv: OP PATH XATTR [ARG]; prints OK or the errno's name.
_OPS = r'''
import errno, os, sys
op, path, xattr = sys.argv[1], sys.argv[2], sys.argv[3]
arg = sys.argv[4] if len(sys.argv) > 4 else None
try:
    if op == 'read':
        with open(path, 'rb') as f:
            f.read()
    elif op == 'create':
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    elif op == 'create_msg':
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b'Subject: x\r\n\r\nx\r\n')
        os.close(fd)
    elif op == 'write':
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, b'x\n')
        os.close(fd)
    elif op == 'write_trunc':
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b'x\n')
        os.close(fd)
    elif op == 'rdwr':
        os.close(os.open(path, os.O_RDWR))
    elif op == 'append':
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b'x\n')
        os.close(fd)
    elif op == 'pwrite_rw':
        fd = os.open(path, os.O_RDWR)
        os.pwrite(fd, b'X', 0)
        os.close(fd)
    elif op == 'truncate':
        os.truncate(path, 0)
    elif op == 'chmod':
        os.chmod(path, 0o644)
    elif op == 'utime':
        os.utime(path, (0, 0))
    elif op == 'utime_now':
        os.utime(path, None)
    elif op == 'mkdir':
        os.mkdir(path)
    elif op == 'rmdir':
        os.rmdir(path)
    elif op == 'unlink':
        os.unlink(path)
    elif op == 'rename':
        os.rename(path, arg)
    elif op == 'setxattr':
        os.setxattr(path, xattr, arg.encode())
    elif op == 'removexattr':
        os.removexattr(path, xattr)
    else:
        sys.exit('unknown operation ' + op)
    print('OK')
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
'''


def try_op(op, path, arg=None, timeout=OP_TIMEOUT, xattr='user.mail.flags'):
    """Run one file operation in a child process (so that a hang cannot
    hang us): (errno name or 'OK' or 'TIMEOUT', seconds).  OP: read,
    create (empty), create_msg (with a small message), write (O_WRONLY),
    write_trunc, rdwr (open O_RDWR), append, pwrite_rw, truncate, chmod,
    utime (to 0), utime_now, mkdir, rmdir, unlink, rename (to ARG),
    setxattr (XATTR to ARG), removexattr (XATTR)."""
    argv = [sys.executable, '-c', _OPS, op, path, xattr] + ([arg] if arg is not None else [])
    t = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'TIMEOUT', time.monotonic() - t
    return (r.stdout.strip() or 'ERR ' + r.stderr.strip()[-200:]), time.monotonic() - t
