#!/usr/bin/env python3
"""Mounting mailfs from a test, and always unmounting it again.

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'harness'))
    import mountutil
    mountutil.require_fuse()                 # exit 77 (meson: skipped) if absent
    m = mountutil.Mount(dc, mountpoint, cache_dir, mode='debug')
    m.start()                                # returns once mounted (or raises)
    ...  m.log()  (stderr of a foreground mount) ...
    m.unmount()                              # fusermount3 -u, then -z

Modes: 'daemon' (no -f: mailfs forks and returns once mounted), 'foreground'
(-f) and 'debug' (-d: foreground with the debug log, which shows every IMAP
command sent as a line containing " C: ").  Foreground stderr goes to a file.

Every Mount is remembered until it is unmounted; unmount_all() (also run at
interpreter exit, and on SIGTERM/SIGHUP after install_signal_handlers())
unmounts what is left.  Processes are
only ever signalled by the pid we started (the daemon is the process whose
command line is exactly the one we ran), never by name.

Environment: MAILFS_BUILD, the build directory; the binary is
$MAILFS_BUILD/mailfs.
"""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import mailharness

SKIP = 77
BUILD = os.environ.get('MAILFS_BUILD', 'build')
MAILFS = os.path.join(BUILD, 'mailfs')

MOUNT_TIMEOUT = 30.0     # mailfs connects and lists before mounting
UNMOUNT_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0


def sanitized():
    """Is the mailfs under test built with a sanitizer (meson's b_sanitize)?
    Its memory use then says nothing about mailfs's own."""
    try:
        with open(os.path.join(BUILD, 'meson-info', 'intro-buildoptions.json')) as f:
            opts = json.load(f)
    except (OSError, ValueError):
        return False
    for o in opts:
        if o.get('name') == 'b_sanitize':
            return o.get('value') not in ('none', '', [], None)
    return False


def fusermount():
    return shutil.which('fusermount3') or shutil.which('fusermount')


def require_fuse():
    """Exit 77 when /dev/fuse or fusermount3 is missing; exit 1 (a failure,
    not a skip) when the mailfs binary was not built."""
    if not os.path.exists('/dev/fuse') or not fusermount():
        print('SKIP: FUSE is not available (/dev/fuse, fusermount3)', flush=True)
        sys.exit(SKIP)
    if not os.access(MAILFS, os.X_OK):
        print('FAIL: %s not found (set MAILFS_BUILD to the build directory)' % MAILFS,
              flush=True)
        sys.exit(1)


def _unescape_mount_field(s):
    # /proc/mounts escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(s):
        if s[i] == '\\' and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return ''.join(out)


def mounts():
    """{mount point: filesystem type} from /proc/mounts."""
    out = {}
    with open('/proc/mounts') as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out[_unescape_mount_field(fields[1])] = fields[2]
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounts()


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


def _find_daemon(argv):
    """Pid of the running process whose command line is exactly ARGV (the
    daemon that the mailfs we ran forked), or None."""
    want = b'\0'.join(a.encode() for a in argv) + b'\0'
    me = os.getpid()
    for name in os.listdir('/proc'):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                if f.read() == want:
                    return int(name)
        except OSError:
            continue
    return None


_active = []


class MountError(Exception):
    pass


class Mount:
    """One mailfs mount of a harness Dovecot account (or of any URL)."""

    def __init__(self, dc, mountpoint, cache_dir, user='alice', mode='daemon',
                 options=(), url=None, password=None, cafile=True, log_path=None,
                 credential=None):
        self.dc = dc
        self.mountpoint = os.path.realpath(mountpoint)
        self.cache_dir = cache_dir
        self.mode = mode
        self.url = url or dc.url('imaps', user)
        pw = dc.users[user] if password is None else password
        opts = []
        if cafile:
            opts.append('cafile=' + (dc.ca if cafile is True else cafile))
        # CREDENTIAL: the option that gives the secret instead of
        # "passcmd=echo PASSWORD", e.g. "oauth2_cmd=sh /path/token.sh".
        opts.append(credential or 'passcmd=echo ' + pw)
        if cache_dir is not None:
            opts.append('cache_dir=' + cache_dir)
        opts += list(options)
        self.argv = [MAILFS]
        if mode == 'foreground':
            self.argv.append('-f')
        elif mode == 'debug':
            self.argv.append('-d')
        self.argv += ['-o', ','.join(opts), self.url, self.mountpoint]
        self.log_path = log_path or (self.mountpoint.rstrip('/') + '.stderr')
        self.proc = None
        self.pid = None
        self.result = None       # CompletedProcess of a daemon-mode start
        self.mounted = False
        self._logf = None

    # ----- mounting

    def run(self, timeout=MOUNT_TIMEOUT):
        """Run mailfs in daemon mode and return its CompletedProcess (for
        mount-time errors).  If it did mount, the Mount is registered for
        unmounting."""
        assert self.mode == 'daemon'
        _active.append(self)
        try:
            self.result = subprocess.run(self.argv, stdin=subprocess.DEVNULL,
                                         capture_output=True, text=True, timeout=timeout)
        finally:
            self.mounted = is_mounted(self.mountpoint)
            if self.mounted:
                self.pid = _find_daemon(self.argv)
            else:
                _active.remove(self)
        return self.result

    def start(self, timeout=MOUNT_TIMEOUT):
        """Mount; return once the mount point is mounted.  Raises MountError
        (with mailfs's stderr) if it does not come up in time."""
        if self.mode == 'daemon':
            r = self.run(timeout)
            if r.returncode != 0 or not self.mounted:
                self.unmount()
                raise MountError('mailfs exited %d, mounted=%s: %s'
                                 % (r.returncode, self.mounted, r.stderr.strip()))
            return self
        self._logf = open(self.log_path, 'wb')
        _active.append(self)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=self._logf)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise MountError('mailfs (%s) did not mount within %.0f s (exit %s):\n%s'
                                 % (self.mode, timeout, self.proc.returncode,
                                    self.log()[-3000:]))
            time.sleep(0.05)
        self.mounted = True
        return self

    # ----- information

    def log(self):
        """What a foreground mailfs wrote to stderr so far (str)."""
        if self.mode == 'daemon':
            return self.result.stderr if self.result else ''
        return mailharness.read_text(self.log_path)

    def log_size(self):
        return mailharness.file_size(self.log_path)

    def log_since(self, offset):
        return mailharness.read_text(self.log_path, offset)

    def sent_commands(self, since=0):
        """The IMAP commands the debug log shows as sent (text after " C: ")."""
        text = self.log_since(since) if since else self.log()
        return [l.split(' C: ', 1)[1] for l in text.splitlines() if ' C: ' in l]

    # ----- unmounting

    def unmount(self):
        """Unmount (fusermount3 -u, retried while busy, then -z), wait for
        mailfs to exit, and signal it by pid only if it does not.  Returns
        True if a lazy unmount or a signal was needed."""
        forced = False
        fm = fusermount()
        if is_mounted(self.mountpoint):
            deadline = time.monotonic() + UNMOUNT_TIMEOUT
            while is_mounted(self.mountpoint):
                r = subprocess.run([fm, '-u', self.mountpoint], stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT)
                if r.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if is_mounted(self.mountpoint):
                forced = True
                subprocess.run([fm, '-u', '-z', self.mountpoint], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=UNMOUNT_TIMEOUT)
        self.mounted = False
        if self.pid is None and self.mode == 'daemon' and self.result is not None:
            self.pid = _find_daemon(self.argv)
        forced |= self._reap()
        if self._logf:
            self._logf.close()
            self._logf = None
        if self in _active:
            _active.remove(self)
        return forced

    def _reap(self):
        """Wait for our mailfs process to exit; SIGTERM, then SIGKILL, it by
        pid if it does not."""
        if self.proc is not None:
            try:
                self.proc.wait(EXIT_TIMEOUT)
                return False
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    self.proc.send_signal(sig)
                    try:
                        self.proc.wait(5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                return True
        if self.pid is not None:
            deadline = time.monotonic() + EXIT_TIMEOUT
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid) and _find_daemon(self.argv) == self.pid:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.kill(self.pid, sig)
                    except ProcessLookupError:
                        break
                    deadline = time.monotonic() + 5
                    while _alive(self.pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if not _alive(self.pid):
                        break
                return True
        return False

    def kill(self):
        """SIGKILL our mailfs process (by pid): the kernel then fails every
        request still pending on the mount.  unmount() cleans up after."""
        pid = self.proc.pid if self.proc is not None else self.pid
        if pid is None or (self.proc is None and _find_daemon(self.argv) != pid):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def exited(self):
        """True once the mailfs process is gone."""
        if self.proc is not None:
            return self.proc.poll() is not None
        return self.pid is None or not _alive(self.pid)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.unmount()


def unmount_all():
    for m in list(_active):
        try:
            m.unmount()
        except Exception as e:   # keep unmounting the others
            print('mountutil: unmount %s: %s' % (m.mountpoint, e), file=sys.stderr)


atexit.register(unmount_all)


_signal_hooks = []


def scratch_dir(prefix):
    """A directory for one test module's mount points and caches (0755, so
    that the mounts' users can reach them), removed by remove_scratch() at
    the end and when a signal ends the run."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    at_signal(lambda: remove_scratch(path))
    return path


def remove_scratch(path):
    """Remove a scratch_dir(), but never into a mount that could not be
    unmounted."""
    if path and not any(p.startswith(path + '/') for p in mounts()):
        shutil.rmtree(path, ignore_errors=True)


def at_signal(fn):
    """Also run FN (after unmounting) when SIGTERM/SIGHUP ends the test."""
    _signal_hooks.append(fn)


def _on_signal(signum, frame):
    # Meson's timeout: unmount everything now and exit.  (Raising an
    # exception instead could be caught by the code under test and let the
    # run go on.)  Dovecot instances of the harness are stopped by its
    # watchdog once we are gone.
    signal.signal(signum, signal.SIG_DFL)       # a second one kills at once
    print('\nmountutil: signal %d: unmounting and exiting' % signum,
          file=sys.stderr, flush=True)
    unmount_all()
    for fn in reversed(_signal_hooks):
        try:
            fn()
        except Exception as e:
            print('mountutil: cleanup: %s' % e, file=sys.stderr)
    os._exit(128 + signum)


def install_signal_handlers():
    """On SIGTERM/SIGHUP (meson's timeout): unmount all, run the at_signal
    hooks, exit 128 + signal."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def spoil_big_body(cache_dir):
    """Damage the one long body of the cache of an unmounted mount: its
    record in body_big becomes one byte of an unknown version, which the
    cache cannot decode (the bytes of its pieces stay).  Needs mdb_dump and
    mdb_load (lmdb-utils).  Returns the record's key (hex)."""
    out = subprocess.run(['mdb_dump', '-s', 'body_big', cache_dir],
                         capture_output=True, check=True, timeout=30).stdout
    body = out.split(b'HEADER=END\n', 1)[1].split(b'DATA=END', 1)[0]
    keys = [ln[1:] for ln in body.split(b'\n') if ln.startswith(b' ')][0::2]
    if len(keys) != 1:
        raise AssertionError('%d long bodies in %s, expected one' % (len(keys), cache_dir))
    key = keys[0].decode()
    dump = ('VERSION=3\nformat=bytevalue\ndatabase=body_big\ntype=btree\n'
            'HEADER=END\n %s\n ff\nDATA=END\n' % key).encode()
    subprocess.run(['mdb_load', '-s', 'body_big', cache_dir], input=dump,
                   check=True, timeout=30)
    return key
