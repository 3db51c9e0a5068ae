#!/usr/bin/env python3
"""Everyday use: named accounts, mount identity, logs, friendlier errors,
the POP3/IMAP mixing warning, the systemd unit.  Real mounts over a
private Dovecot; bytes read through a mount are compared with what Dovecot
serves to an independent client.

Accounts      mailfs NAME, mailfs NAME MOUNTPOINT, mailfs --list,
              mailfs --unmount NAME; a config file readable by others is
              refused; a malformed one names its line; an fstab line naming
              the account (mount --fstab, through mount.fuse3)
Identity      the mount source in /proc/self/mountinfo: the account name,
              the URL, or -o fsname=
Logs          -o log=FILE: mount and unmount, with time stamps
Errors        a TLS port spoken to in plain IMAP or POP3: a hint within
              seconds; numbers out of range; a failing passcmd or
              oauth2_cmd named
Mixing        the warning when one login is used over POP3 with pop_keep
              and over IMAP, with the two on different host names of one
              domain (pop.mail.test and imap.mail.test)
Unit          contrib/systemd/mailfs@.service passes systemd-analyze verify

Mixing needs pop.mail.test and imap.mail.test to reach the harness on
127.0.0.1 (its certificate names both).  Run as root, the module runs
itself in a private mount namespace (unshare) in which a copy of
/etc/hosts with those two names is bind-mounted over /etc/hosts: nothing
outside the namespace sees it, and nothing is left behind, whatever
happens to the test.  Without root or unshare those tests are skipped.

Environment: MAILFS_BUILD, MAILFS_SOURCE.  Exit 77 when Dovecot or FUSE is
missing."""

import os
import re
import shutil
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

TEST_TIMEOUT = 120.0
RUN_TIMEOUT = 40.0
HINT_SECONDS = 5.0
NAMES = ('imap.mail.test', 'pop.mail.test')
NS_ENV = 'MAILFS_TEST_HOSTS_NS'

dc = None
TMP = None


def names_resolve():
    import socket
    try:
        return all(socket.gethostbyname(n) == '127.0.0.1' for n in NAMES)
    except OSError:
        return False


def enter_namespace():
    """Re-run this module in a private mount namespace with NAMES in its
    /etc/hosts (see the docstring), when we can."""
    if os.environ.get(NS_ENV) or names_resolve():
        return
    if os.geteuid() != 0 or not shutil.which('unshare') or not shutil.which('mount'):
        return
    hosts = tempfile.NamedTemporaryFile('w', prefix='mailfs-hosts-', delete=False)
    with open('/etc/hosts') as f:
        hosts.write(f.read())
    hosts.write('\n127.0.0.1 %s\n' % ' '.join(NAMES))
    hosts.close()
    os.chmod(hosts.name, 0o644)
    env = dict(os.environ, **{NS_ENV: hosts.name})
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    try:
        r = subprocess.run(['unshare', '--mount', '--propagation', 'private', '--',
                            'sh', '-c', script, hosts.name, sys.executable,
                            os.path.abspath(__file__)] + sys.argv[1:], env=env)
    finally:
        os.unlink(hosts.name)
    sys.exit(r.returncode)


def fresh(tag):
    base = tempfile.mkdtemp(prefix=tag + '-', dir=TMP)
    os.chmod(base, 0o755)
    os.mkdir(os.path.join(base, 'mnt'))
    return os.path.join(base, 'mnt'), os.path.join(base, 'cache')


def mountinfo():
    """{mount point: (fstype, source)} from /proc/self/mountinfo."""
    out = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, right = line.rstrip('\n').split(' - ', 1)
            point = mountutil._unescape_mount_field(left.split()[4])
            fstype, source = right.split()[:2]
            out[point] = (fstype, mountutil._unescape_mount_field(source))
    return out


def inbox_bytes(mnt):
    d = os.path.join(mnt, 'INBOX')
    out = {}
    for n in os.listdir(d):
        with open(os.path.join(d, n), 'rb') as f:
            out[n] = f.read()
    return out


def server_inbox(user='alice'):
    return {'%d.eml' % uid: b for uid, b in dc.fetch_bodies(user, 'INBOX').items()}


class Test(unittest.TestCase):
    def setUp(self):
        self._timer = threading.Timer(TEST_TIMEOUT, self._abort)
        self._timer.daemon = True
        self._timer.start()

    def tearDown(self):
        self._timer.cancel()

    def _abort(self):
        print('test ran over %.0f s: unmounting' % TEST_TIMEOUT, file=sys.stderr)
        mountutil.unmount_all()

    def config(self, text, mode=0o600):
        """A new XDG_CONFIG_HOME holding mailfs/config with TEXT."""
        xdg = tempfile.mkdtemp(prefix='xdg-', dir=TMP)
        os.makedirs(os.path.join(xdg, 'mailfs'))
        path = os.path.join(xdg, 'mailfs', 'config')
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, mode)
        return xdg

    def account(self, name='work', scheme='imaps', user='alice', mnt=None, cache=None,
                extra=''):
        return ('# test account\n[%s]\nurl = %s\npasscmd = echo %s\ncafile = %s\n'
                '%s%s%s' % (name, dc.url(scheme, user), dc.users[user], dc.ca,
                            'mountpoint = %s\n' % mnt if mnt else '',
                            'cache_dir = %s\n' % cache if cache else '', extra))

    def mailfs(self, *args, xdg=None, env=None, timeout=RUN_TIMEOUT):
        e = dict(os.environ)
        if xdg is not None:
            e['XDG_CONFIG_HOME'] = xdg
        e.update(env or {})
        return subprocess.run([mountutil.MAILFS] + list(args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, env=e)

    def unmount_later(self, mnt):
        def undo():
            if mountutil.is_mounted(mnt):
                subprocess.run([mountutil.fusermount(), '-u', '-z', mnt], timeout=30)
        self.addCleanup(undo)

    def wait_unmounted(self, mnt, seconds=10):
        deadline = time.monotonic() + seconds
        while mountutil.is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not mountutil.is_mounted(mnt)


# ---------------------------------------------------------------- accounts

class Accounts(Test):
    def test_mount_by_name(self):
        mnt, cache = fresh('byname')
        xdg = self.config(self.account(mnt=mnt, cache=cache))
        self.unmount_later(mnt)
        r = self.mailfs('work', xdg=xdg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(mountutil.is_mounted(mnt))
        self.assertEqual(inbox_bytes(mnt), server_inbox())
        self.assertEqual(mountinfo()[mnt], ('fuse.mailfs', 'work'))
        listed = self.mailfs('--list', xdg=xdg)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r'(?m)^work +%s +%s +\(mounted\)$'
                         % (re.escape(dc.url('imaps', 'alice')), re.escape(mnt)))
        r = self.mailfs('--unmount', 'work', xdg=xdg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(self.wait_unmounted(mnt))
        listed = self.mailfs('--list', xdg=xdg)
        self.assertNotIn('(mounted)', listed.stdout)

    def test_name_and_mountpoint(self):
        mnt, cache = fresh('byname2')
        other, _ = fresh('other')
        xdg = self.config(self.account(mnt=mnt, cache=cache))
        self.unmount_later(other)
        r = self.mailfs('-o', 'fsname=mail-of-alice', 'work', other, xdg=xdg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(mountutil.is_mounted(mnt))
        self.assertEqual(mountinfo()[other], ('fuse.mailfs', 'mail-of-alice'))
        self.assertEqual(inbox_bytes(other), server_inbox())
        r = self.mailfs('--unmount', other, xdg=xdg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(self.wait_unmounted(other))

    def test_options_from_config_and_command_line(self):
        # The config says ro and timeout=-1 would be refused; the command
        # line's timeout wins over the config's.
        mnt, cache = fresh('opts')
        xdg = self.config(self.account(mnt=mnt, cache=cache,
                                       extra='ro = yes\ntimeout = 4000\n'))
        self.unmount_later(mnt)
        r = self.mailfs('work', xdg=xdg)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('timeout=4000: expected a number from 1 to 3600', r.stderr)
        r = self.mailfs('-o', 'timeout=20', 'work', xdg=xdg)
        self.assertEqual(r.returncode, 0, r.stderr)
        with self.assertRaises(OSError) as e:
            open(os.path.join(mnt, 'INBOX', 'new.eml'), 'wb')
        self.assertEqual(e.exception.errno, 30)   # EROFS
        subprocess.run([mountutil.fusermount(), '-u', mnt], timeout=30)

    def test_world_readable_config_refused(self):
        mnt, cache = fresh('worldread')
        for mode in (0o644, 0o640, 0o604, 0o660):
            with self.subTest(mode=oct(mode)):
                xdg = self.config(self.account(mnt=mnt, cache=cache), mode=mode)
                self.unmount_later(mnt)
                r = self.mailfs('work', xdg=xdg)
                self.assertNotEqual(r.returncode, 0)
                self.assertRegex(r.stderr, r'config is accessible by others \(mode 0%o\)'
                                 r'.*chmod 600' % mode)
                self.assertFalse(mountutil.is_mounted(mnt))
                self.assertFalse(os.path.exists(cache))

    def test_malformed_config_names_the_line(self):
        mnt, cache = fresh('malformed')
        text = self.account(mnt=mnt, cache=cache) + 'pasword = x\n'
        r = self.mailfs('work', xdg=self.config(text))
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r'config: line 8: unknown key "pasword"')
        self.assertFalse(mountutil.is_mounted(mnt))

    def test_unknown_account(self):
        mnt, cache = fresh('unknown')
        r = self.mailfs('nosuch', mnt, xdg=self.config(self.account(cache=cache)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('nosuch: not an account URL, and no account of that name', r.stderr)
        r = self.mailfs('work', xdg=self.config(self.account(cache=cache)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('account work has no mountpoint', r.stderr)

    def test_fstab_line_naming_the_account(self):
        """The fstab line "NAME MNT fuse.mailfs OPTIONS 0 0": mount(8) runs
        mount.fuse3 NAME MNT -t fuse.mailfs -o OPTIONS, which runs mailfs
        from PATH (mount(8) resets PATH, so that step is run here with the
        build directory in PATH); and the whole of mount(8) with the line
        in the form that names the program, "PATH/mailfs#NAME ... fuse"."""
        helper = shutil.which('mount.fuse3') or '/sbin/mount.fuse3'
        if os.geteuid() != 0 or not shutil.which('mount') or not os.path.exists(helper):
            self.skipTest('needs root, mount(8) and mount.fuse3')
        mnt, cache = fresh('fstab')
        xdg = self.config(self.account(name='fstabacct', mnt=mnt, cache=cache))
        build = os.path.dirname(os.path.abspath(mountutil.MAILFS))
        env = dict(os.environ, XDG_CONFIG_HOME=xdg,
                   PATH=build + ':' + os.environ.get('PATH', '/usr/bin:/bin'))
        fstab = os.path.join(os.path.dirname(mnt), 'fstab')
        with open(fstab, 'w') as f:
            f.write('%s/mailfs#fstabacct %s fuse noauto,_netdev,nofail,user 0 0\n'
                    % (build, mnt))
        self.unmount_later(mnt)
        for argv in ([helper, 'fstabacct', mnt, '-t', 'fuse.mailfs', '-o',
                      'rw,noauto,_netdev,nofail,user'],
                     ['mount', '--fstab', fstab, mnt]):
            with self.subTest(argv=argv[0]):
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=RUN_TIMEOUT, env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(mountinfo()[mnt][1], 'fstabacct')
                self.assertEqual(inbox_bytes(mnt), server_inbox())
                subprocess.run([mountutil.fusermount(), '-u', mnt], timeout=30)
                self.assertTrue(self.wait_unmounted(mnt))


# ---------------------------------------------------------- identity, logs

class IdentityAndLogs(Test):
    def test_url_is_the_source_and_log_file(self):
        mnt, cache = fresh('logfile')
        log = os.path.join(os.path.dirname(mnt), 'logs', 'mailfs.log')
        m = mountutil.Mount(dc, mnt, cache, options=['log=' + log])
        self.addCleanup(m.unmount)
        m.start()
        self.assertEqual(mountinfo()[m.mountpoint],
                         ('fuse.mailfs', dc.url('imaps', 'alice')))
        self.assertEqual(inbox_bytes(m.mountpoint), server_inbox())
        self.assertFalse(m.unmount())
        deadline = time.monotonic() + 10
        text = ''
        while time.monotonic() < deadline and 'unmounted' not in text:
            time.sleep(0.1)
            with open(log) as f:
                text = f.read()
        stamp = r'(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d mailfs\[\d+\]: info: '
        url = re.escape(dc.url('imaps', 'alice'))
        self.assertRegex(text, stamp + r'mounted %s \(%s\) on %s$'
                         % (url, url, re.escape(m.mountpoint)))
        self.assertRegex(text, stamp + r'unmounted %s from %s$'
                         % (url, re.escape(m.mountpoint)))
        self.assertEqual(os.stat(log).st_mode & 0o777, 0o600)

    def test_journal_stream(self):
        """Under systemd (JOURNAL_STREAM names standard error), the
        background process keeps logging there, "<PRIORITY>text"."""
        mnt, cache = fresh('journal')
        m = mountutil.Mount(dc, mnt, cache)
        self.addCleanup(m.unmount)
        err_path = os.path.join(os.path.dirname(mnt), 'journal')
        with open(err_path, 'wb') as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ, JOURNAL_STREAM='%d:%d' % (st.st_dev, st.st_ino))
            r = subprocess.run(m.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=err, timeout=RUN_TIMEOUT, env=env)
        self.assertEqual(r.returncode, 0)
        m.mounted = mountutil.is_mounted(mnt)
        self.assertTrue(m.mounted)
        mountutil._active.append(m)
        os.listdir(os.path.join(mnt, 'INBOX'))
        m.unmount()
        deadline = time.monotonic() + 10
        text = ''
        while time.monotonic() < deadline and 'unmounted' not in text:
            time.sleep(0.1)
            with open(err_path) as f:
                text = f.read()
        self.assertRegex(text, r'(?m)^<6>mounted %s \(%s\) on %s$' % (
            re.escape(m.url), re.escape(m.url), re.escape(m.mountpoint)))
        self.assertRegex(text, r'(?m)^<6>unmounted %s from %s$' % (
            re.escape(m.url), re.escape(m.mountpoint)))
        self.assertNotIn('no syslog', text)

    def test_log_stderr_in_foreground_and_bad_log_file(self):
        mnt, cache = fresh('badlog')
        m = mountutil.Mount(dc, mnt, cache, options=['log=/proc/nonexistent/x.log'])
        self.addCleanup(m.unmount)
        r = m.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('log=/proc/nonexistent/x.log:', r.stderr)
        self.assertFalse(mountutil.is_mounted(mnt))


# ------------------------------------------------------------------ errors

class Errors(Test):
    def attempt(self, url, options, expect):
        mnt, cache = fresh('err')
        m = mountutil.Mount(dc, mnt, cache, url=url, options=options)
        self.addCleanup(m.unmount)
        t = time.monotonic()
        r = m.run()
        took = time.monotonic() - t
        self.assertNotEqual(r.returncode, 0, r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], expect)
        self.assertFalse(mountutil.is_mounted(mnt))
        return took

    def test_tls_port_in_plain_imap(self):
        url = 'imap://alice@localhost:%d' % dc.ports['imaps']
        took = self.attempt(url, [], r'^mailfs: cannot mount .*: localhost port %d '
                            r'expects TLS from the first byte, not plain IMAP: use imaps://'
                            % dc.ports['imaps'])
        self.assertLess(took, HINT_SECONDS)

    def test_tls_port_in_plain_pop3(self):
        url = 'pop3://alice@localhost:%d' % dc.ports['pop3s']
        took = self.attempt(url, [], r'localhost port %d expects TLS from the first '
                            r'byte, not plain POP3: use pop3s://' % dc.ports['pop3s'])
        self.assertLess(took, HINT_SECONDS)

    def test_starttls_port_still_works(self):
        mnt, cache = fresh('starttls')
        m = mountutil.Mount(dc, mnt, cache, url=dc.url('imap', 'alice'))
        self.addCleanup(m.unmount)
        m.start()
        self.assertEqual(inbox_bytes(m.mountpoint), server_inbox())

    def test_numbers_out_of_range(self):
        for opt, want in (('timeout=-1', 'from 1 to 3600'), ('timeout=0', 'from 1 to 3600'),
                          ('timeout=99999999999', 'from 1 to 3600'),
                          ('poll=0', 'from 1 to 86400'), ('poll=1x', 'from 1 to 86400'),
                          ('connections=17', 'from 1 to 16'),
                          ('connections=+3', 'from 1 to 16')):
            with self.subTest(opt=opt):
                self.attempt(dc.url('imaps', 'alice'), [opt],
                             r'^mailfs: %s: expected a number %s$' % (re.escape(opt), want))

    def test_credential_commands_named(self):
        for cred, name in (('passcmd=exit 3', 'passcmd'),
                           ('oauth2_cmd=exit 4', 'oauth2_cmd')):
            with self.subTest(option=name):
                mnt, cache = fresh('cred')
                m = mountutil.Mount(dc, mnt, cache, credential=cred)
                self.addCleanup(m.unmount)
                r = m.run()
                self.assertNotEqual(r.returncode, 0)
                self.assertEqual(r.stderr.strip(), 'mailfs: %s: exited with status %s'
                                 % (name, cred[-1]))


# ------------------------------------------------------------------ mixing

MIX_POP = re.compile(r'mailfs: warning: alice@pop\.mail\.test is also (mounted|cached) '
                     r'over IMAP \((?P<what>[^)]*)\); with pop_keep=(?P<days>\d+), messages '
                     r'deleted from the POP3 maildrop vanish for IMAP clients too')
MIX_IMAP = re.compile(r'mailfs: warning: alice@imap\.mail\.test is also mounted over POP3 '
                      r'\((?P<url>\S+) on (?P<mnt>\S+)\) with pop_keep=(?P<days>\d+): every '
                      r'message it downloads is deleted from the server \d+ days later, and '
                      r'then vanishes from this IMAP mount and its cache too')


class Mixing(Test):
    """One login over POP3 (pop.mail.test) and IMAP (imap.mail.test)."""

    def setUp(self):
        super().setUp()
        if not names_resolve():
            self.skipTest('%s do not resolve to 127.0.0.1 (needs root and unshare)'
                          % ' and '.join(NAMES))
        self.run_dir = tempfile.mkdtemp(prefix='run-', dir=TMP)
        os.chmod(self.run_dir, 0o700)
        self.cache_home = tempfile.mkdtemp(prefix='cachehome-', dir=TMP)

    def mount(self, scheme, host, options=(), user='alice', mode='daemon'):
        mnt, _ = fresh('mix-' + scheme)
        url = '%s://%s@%s:%d' % (scheme, user, host, dc.ports[scheme])
        m = mountutil.Mount(dc, mnt, None, url=url, options=list(options), user=user,
                            mode=mode)
        self.addCleanup(m.unmount)
        env = {'XDG_RUNTIME_DIR': self.run_dir, 'XDG_CACHE_HOME': self.cache_home}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            m.start()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return m

    def hits(self, m, pattern):
        return [h for h in map(pattern.search, m.log().splitlines()) if h]

    def test_imap_after_deleting_pop3(self):
        pop = self.mount('pop3s', 'pop.mail.test', ['pop_keep=7'])
        imap = self.mount('imaps', 'imap.mail.test')
        hits = self.hits(imap, MIX_IMAP)
        self.assertEqual(len(hits), 1, imap.log())
        self.assertEqual(hits[0].group('mnt'), pop.mountpoint)
        self.assertEqual(hits[0].group('url'), pop.url)
        self.assertEqual(hits[0].group('days'), '7')
        self.assertEqual(inbox_bytes(imap.mountpoint), server_inbox())
        # Gone with the POP3 mount: no warning.
        self.assertFalse(pop.unmount())
        imap.unmount()
        again = self.mount('imaps', 'imap.mail.test')
        self.assertEqual(self.hits(again, MIX_IMAP), [], again.log())

    def test_pop3_with_pop_keep_after_imap(self):
        imap = self.mount('imaps', 'imap.mail.test')
        pop = self.mount('pop3s', 'pop.mail.test', ['pop_keep=3'])
        hits = self.hits(pop, MIX_POP)
        self.assertEqual(len(hits), 1, pop.log())
        self.assertEqual(hits[0].group(1), 'mounted')
        self.assertEqual(hits[0].group('what'), '%s on %s' % (imap.url, imap.mountpoint))
        self.assertEqual(hits[0].group('days'), '3')
        pop.unmount()
        imap.unmount()
        # Not mounted now, but cached (next to the POP3 cache, by default).
        pop = self.mount('pop3s', 'pop.mail.test', ['pop_keep=3'])
        hits = self.hits(pop, MIX_POP)
        self.assertEqual(len(hits), 1, pop.log())
        self.assertEqual(hits[0].group(1), 'cached')
        self.assertEqual(hits[0].group('what'), os.path.join(
            self.cache_home, 'mailfs', 'alice@imap.mail.test:%d' % dc.ports['imaps']))

    def test_no_warning(self):
        imap = self.mount('imaps', 'imap.mail.test')
        # pop_keep forever deletes nothing; bob is another login.
        for options, user in (([], 'alice'), (['pop_keep=forever'], 'alice'),
                              (['pop_keep=0'], 'bob')):
            with self.subTest(options=options, user=user):
                pop = self.mount('pop3s', 'pop.mail.test', options, user=user)
                self.assertNotIn('also mounted', pop.log())
                self.assertNotIn('also cached', pop.log())
                pop.unmount()
        self.assertNotIn('also mounted', imap.log())


# -------------------------------------------------------------------- unit

class Unit(Test):
    def test_systemd_analyze_verify(self):
        analyze = shutil.which('systemd-analyze')
        if not analyze:
            self.skipTest('systemd-analyze is not installed')
        unit = os.path.join(os.environ.get('MAILFS_BUILD', 'build'), 'mailfs@.service')
        with open(unit) as f:
            text = f.read()
        self.assertRegex(text, r'(?m)^ExecStart=/\S*/mailfs %i$')
        self.assertRegex(text, r'(?m)^ExecStop=/\S*/mailfs --unmount %i$')
        self.assertRegex(text, r'(?m)^Restart=on-failure$')
        self.assertRegex(text, r'(?m)^After=network-online\.target$')
        # The installed path does not exist here: point it at the build.
        build = os.path.dirname(os.path.abspath(mountutil.MAILFS))
        text = re.sub(r'(?m)^(Exec\w+=)/\S*/mailfs', r'\1' + build + '/mailfs', text)
        d = tempfile.mkdtemp(prefix='unit-', dir=TMP)
        rt = os.path.join(d, 'run')
        os.mkdir(rt, 0o700)
        path = os.path.join(d, 'mailfs@work.service')
        with open(path, 'w') as f:
            f.write(text)
        for mode in (['--user'], []):
            with self.subTest(mode=mode):
                r = subprocess.run([analyze, 'verify', '--man=no'] + mode + [path],
                                   stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=60,
                                   env=dict(os.environ, XDG_RUNTIME_DIR=rt))
                if 'Failed to initialize manager' in r.stderr:
                    self.skipTest('systemd-analyze cannot run here: ' + r.stderr.strip())
                self.assertEqual((r.returncode, r.stderr.strip()), (0, ''))
        # The check is real: a typo in the unit is reported.
        with open(path, 'w') as f:
            f.write(text.replace('Type=forking', 'Type=forkin'))
        r = subprocess.run([analyze, 'verify', '--man=no', path], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, XDG_RUNTIME_DIR=rt))
        self.assertIn('Failed to parse service type', r.stderr)


def setUpModule():
    global dc, TMP
    mailharness.require_dovecot()
    mountutil.require_fuse()
    mountutil.install_signal_handlers()
    TMP = mountutil.scratch_dir('mailfs-everyday-test-')
    dc = mailharness.Dovecot()
    dc.generate('alice', 'INBOX', 5, seed=7)


def tearDownModule():
    mountutil.unmount_all()
    if dc is not None:
        dc.close()
    mountutil.remove_scratch(TMP)


if __name__ == '__main__':
    enter_namespace()
    unittest.main(verbosity=2)
