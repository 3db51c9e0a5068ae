#!/usr/bin/env python3
r"""Logins that go stale while mounted: an OAuth2 token that expires, a
password changed on the server, over a real mailfs mount (FUSE) and a
private Dovecot.

A mount logs in again whenever a connection is lost (a network drop here,
tests/harness/imapproxy.py's drop()).  By then the secret it logged in with
may be worthless: access tokens live an hour, and passwords change.  Each
scenario checks that the mount keeps following the server (mail that
arrived after the drop appears and reads byte-exact, compared with what an
independent client, Python's imaplib or poplib, reads from the server),
that the credential command ran again, and how often.  The commands count
their own runs in a file.

OAuth2Refresh  oauth2_cmd prints tok-N on its N-th run; the proxy plays an
               OAuth2 server (imapproxy.OAuth2Gate) that accepts only the
               newest token and can expire every token issued so far.
               Expired and dropped: the mount runs the command again and
               recovers, and no refused token is ever presented again.
               Dropped again more than FRESH seconds after the last run,
               nothing expired: the new logins run the command again
               (a token is never kept past FRESH seconds), none is refused
PasscmdChanged the password changed in passcmd's store and on the server,
               then the connections drop: the mount recovers, the log says
               passcmd gave a new password that was tried once, and
               passcmd ran again exactly once, not once per connection
PasscmdWrong   the password changed on the server only: the mount backs
               off (logins counted at the proxy stay few, no tight loop),
               logs the refusal once, keeps serving the cache; once the
               store has the new password the mount picks it up by itself
PopPasscmd     POP3: the password changed on the server and in passcmd's
               store: the next poll's login is refused, passcmd runs again
               and the new mail arrives byte-exact

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import os
import re
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import imapproxy  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import read  # noqa: E402

TEST_TIMEOUT = 120.0    # a hung FUSE request fails the test instead of hanging it
FRESH = 5.0             # README: logins this close to a run share its token
RESUME_SECONDS = 20.0   # after a drop: back-off (1, 2, 4 s ...) and a new login
POLL = 2                # -o poll=
WRONG_WINDOW = 12.0     # PasscmdWrong: how long the refusals are watched
WRONG_MAX_LOGINS = 16   # ... and how many logins may reach the server meanwhile
RECOVER_SECONDS = 75.0  # back-off grows to 60 s: a fixed password works within this

USERS = {u: u + 'pw' for u in ('oauth', 'changed', 'wrong', 'popchanged')}

# How mailfs logs a login retried with a new secret, and a refusal it
# backs off from (logged once).
RETRIED = re.compile(r'gave a new (password|token).*trying it once')
REFUSED_ONCE = re.compile(r'refused the login.*not logged again')

dc = None
TMP = None


# ------------------------------------------------------------------ helpers

def message(tag, i=0):
    return ('From: Other Client <other@example.org>\r\n'
            'To: someone@example.org\r\n'
            'Subject: %s %d\r\n'
            'Date: Mon, 04 Mar 2024 10:%02d:00 +0000\r\n'
            'Message-ID: <%s.%d@login.example.org>\r\n'
            '\r\n'
            'Body of %s number %d.\r\n' % (tag, i, i % 60, tag, i, tag, i)).encode()


def fresh(tag):
    base = mounttest.fresh_base(TMP, tag)
    return base, os.path.join(base, 'mnt'), os.path.join(base, 'cache')


def write(path, text):
    with open(path + '.new', 'w') as f:
        f.write(text)
    os.replace(path + '.new', path)


def wait_for(fn, seconds, interval=0.25):
    return mounttest.wait_for(fn, seconds, interval, errors=OSError)


class Command:
    """A credential command in DIR that counts its runs (DIR/count): with
    kind 'token' it prints tok-N on its N-th run; with 'password' it prints
    the first line of DIR/password."""

    def __init__(self, base, kind, password=None):
        self.dir = base
        self.count_path = os.path.join(base, 'count')
        self.password_path = os.path.join(base, 'password')
        self.script = os.path.join(base, kind + '.sh')
        out = 'echo "tok-$n"' if kind == 'token' else 'head -n 1 "$d/password"'
        with open(self.script, 'w') as f:
            f.write('#!/bin/sh\n'
                    'd=%s\n'
                    'exec 9>>"$d/lock"\n'
                    'flock 9\n'
                    'n=$(cat "$d/count" 2>/dev/null || echo 0)\n'
                    'n=$((n + 1))\n'
                    'echo "$n" > "$d/count.new" && mv "$d/count.new" "$d/count"\n'
                    '%s\n' % (base, out))
        if password is not None:
            self.set_password(password)

    def set_password(self, pw):
        write(self.password_path, pw + '\n')

    def runs(self):
        try:
            return int(read(self.count_path).decode().strip() or 0)
        except FileNotFoundError:
            return 0

    def option(self, name):
        return '%s=sh %s' % (name, self.script)


class AuthCounter:
    """rewrite_client for a TLSProxy that counts the login commands."""

    def __init__(self):
        self.times = []
        self._lock = threading.Lock()

    def __call__(self, text):
        if re.match(rb'\S+ (AUTHENTICATE|LOGIN) ', text, re.I):
            with self._lock:
                self.times.append(time.monotonic())
        return text

    def since(self, t):
        with self._lock:
            return len([x for x in self.times if x >= t])


# ------------------------------------------------------------------ base

class LoginTest(mounttest.BoundedTest):
    TEST_TIMEOUT = TEST_TIMEOUT
    USER = None

    def mount(self, mnt, cache, credential, url=None, options=('poll=%d' % POLL,)):
        return self.started(mountutil.Mount(dc, mnt, cache, user=self.USER, mode='debug',
                                            options=list(options), url=url,
                                            credential=credential))

    def assertInboxExact(self, m, what=''):
        """Every file of the mount's INBOX reads as the server serves it, and
        the listing is the server's."""
        served = dc.fetch_bodies(self.USER, 'INBOX')
        inbox = os.path.join(m.mountpoint, 'INBOX')
        self.assertEqual(set(os.listdir(inbox)), {'%d.eml' % u for u in served},
                         what + 'INBOX listing differs from the server')
        for uid, data in served.items():
            self.assertEqual(read(os.path.join(inbox, '%d.eml' % uid)), data,
                             '%s%d.eml differs from the server' % (what, uid))

    def wait_arrives(self, m, uid, seconds=RESUME_SECONDS):
        path = os.path.join(m.mountpoint, 'INBOX', '%d.eml' % uid)
        ok = wait_for(lambda: '%d.eml' % uid in os.listdir(os.path.dirname(path)),
                      seconds)
        self.assertTrue(ok, '%d.eml did not appear within %.0f s' % (uid, seconds))
        self.assertEqual(read(path), dc.fetch_bodies(self.USER, 'INBOX')[uid])


def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-login-test-', users=USERS)
    for u in USERS:
        dc.append_many(u, 'INBOX', [message(u + '-seed', i) for i in range(4)])


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


# ----------------------------------------------------- 1. OAuth2 tokens expire

class OAuth2Refresh(LoginTest):
    USER = 'oauth'

    def test_token_run_again_for_new_logins(self):
        base, mnt, cache = fresh('oauth2')
        cmd = Command(base, 'token')
        gate = imapproxy.OAuth2Gate(self.USER, dc.users[self.USER], newest=cmd.runs)
        with imapproxy.TLSProxy(dc, rewrite=gate.server,
                                rewrite_client=gate.client) as proxy:
            m = self.mount(mnt, cache, cmd.option('oauth2_cmd'), url=proxy.url(self.USER))
            self.assertInboxExact(m, 'mounted: ')
            self.assertTrue(any(ok for _, _, ok in gate.presented), 'no token accepted')

            # An hour later: every token issued so far has expired, and the
            # network drops.
            runs = cmd.runs()
            gate.expire()
            self.assertGreater(proxy.drop(), 0, 'no connection through the proxy')
            uid = dc.append(self.USER, 'INBOX', message('after-expiry'))
            self.wait_arrives(m, uid)
            self.assertInboxExact(m, 'after expiry: ')
            self.assertGreater(cmd.runs(), runs, 'oauth2_cmd did not run again')

            # A token the server refused is never presented again (the
            # margin covers the logins that took it before the refusal
            # came back).
            refused = {}
            for t, token, ok in gate.presented:
                if not ok and token not in refused:
                    refused[token] = t
                elif token in refused:
                    self.assertLess(t - refused[token], 1.5,
                                    'refused token %s presented again %.1f s later'
                                    % (token, t - refused[token]))

            # Nothing expires now; a login more than FRESH seconds after
            # the last run gets a token of its own.
            time.sleep(FRESH + 1)
            runs = cmd.runs()
            n = len(gate.presented)
            self.assertGreater(proxy.drop(), 0, 'no connection through the proxy')
            uid = dc.append(self.USER, 'INBOX', message('after-second-drop'))
            self.wait_arrives(m, uid)
            self.assertInboxExact(m, 'after the second drop: ')
            self.assertGreater(cmd.runs(), runs, 'oauth2_cmd did not run for the new logins')
            later = gate.presented[n:]
            self.assertTrue(later, 'no login after the second drop')
            self.assertEqual([tok for _, tok, ok in later if not ok], [],
                             'logins after the second drop presented old tokens')
            m.unmount()


# --------------------------------------------- 2. passwords change: passcmd

class PasscmdChanged(LoginTest):
    USER = 'changed'

    def test_new_password_tried_once(self):
        base, mnt, cache = fresh('changed')
        cmd = Command(base, 'password', dc.users[self.USER])
        with imapproxy.TLSProxy(dc) as proxy:
            m = self.mount(mnt, cache, cmd.option('passcmd'), url=proxy.url(self.USER))
            self.assertInboxExact(m, 'mounted: ')
            self.assertEqual(cmd.runs(), 1)

            # The store first, then the server: a login that comes in
            # between is still accepted, so passcmd has no reason to run
            # before the server has the new password.
            cmd.set_password('changed-new-pw')
            dc.add_user(self.USER, 'changed-new-pw')
            self.assertGreater(proxy.drop(), 0, 'no connection through the proxy')
            uid = dc.append(self.USER, 'INBOX', message('after-change'))
            self.wait_arrives(m, uid)
            self.assertInboxExact(m, 'after the change: ')
            log = m.log()
            self.assertTrue(RETRIED.search(log), 'the log does not say the login was retried')
            # Once for the mount, once after the first refusal: not once
            # per connection.
            self.assertEqual(cmd.runs(), 2, 'passcmd ran %d times' % cmd.runs())
            m.unmount()


class PasscmdWrong(LoginTest):
    USER = 'wrong'

    def test_backs_off_logs_once_and_recovers(self):
        base, mnt, cache = fresh('wrong')
        cmd = Command(base, 'password', dc.users[self.USER])
        logins = AuthCounter()
        with imapproxy.TLSProxy(dc, rewrite_client=logins) as proxy:
            m = self.mount(mnt, cache, cmd.option('passcmd'), url=proxy.url(self.USER))
            self.assertInboxExact(m, 'mounted: ')
            cached = dc.fetch_bodies(self.USER, 'INBOX')

            # From the change on (the mount's own workers may still be
            # logging in for the first time) ...
            t0 = time.monotonic()
            since = m.log_size()
            dc.add_user(self.USER, 'wrong-new-pw')     # passcmd still says the old one
            self.assertGreater(proxy.drop(), 0, 'no connection through the proxy')
            uid = dc.append(self.USER, 'INBOX', message('while-refused'))
            # Ask for the server meanwhile: listings, a name not seen yet.
            deadline = t0 + WRONG_WINDOW
            while time.monotonic() < deadline:
                os.listdir(os.path.join(m.mountpoint, 'INBOX'))
                try:
                    os.stat(os.path.join(m.mountpoint, 'INBOX', '%d.eml' % uid))
                except OSError:
                    pass
                time.sleep(0.5)
            n = logins.since(t0)
            self.assertGreater(n, 0, 'no login tried after the drop')
            self.assertLessEqual(n, WRONG_MAX_LOGINS,
                                 '%d logins in %.0f s: no back-off' % (n, WRONG_WINDOW))
            self.assertLessEqual(cmd.runs() - 1, n, 'passcmd ran more often than logins')
            log = m.log_since(since)
            self.assertEqual(len(REFUSED_ONCE.findall(log)), 1,
                             'the refusal is not logged exactly once:\n' +
                             '\n'.join(l for l in log.splitlines() if 'refused' in l))
            for secret in ('wrongpw', 'wrong-new-pw'):
                self.assertNotIn(secret, m.log(), 'a password is in the log')
            # The cache is still served, byte-exact.
            inbox = os.path.join(m.mountpoint, 'INBOX')
            for u, data in cached.items():
                self.assertEqual(read(os.path.join(inbox, '%d.eml' % u)), data)

            # The store gets the new password: the mount picks it up.
            cmd.set_password('wrong-new-pw')
            self.wait_arrives(m, uid, RECOVER_SECONDS)
            self.assertInboxExact(m, 'recovered: ')
            m.unmount()


# --------------------------------------------------------------- 3. POP3

class PopPasscmd(LoginTest):
    USER = 'popchanged'

    def test_pop3_new_password_tried_once(self):
        base, mnt, cache = fresh('pop')
        cmd = Command(base, 'password', dc.users[self.USER])
        m = self.mount(mnt, cache, cmd.option('passcmd'),
                       url=dc.url('pop3s', self.USER), options=['poll=1'])
        inbox = os.path.join(m.mountpoint, 'INBOX')
        served = dc.pop3_messages(self.USER)
        files = sorted(os.listdir(inbox), key=lambda n: int(n.split('.')[0]))
        self.assertEqual(sorted(read(os.path.join(inbox, f)) for f in files),
                         sorted(served.values()))

        cmd.set_password('pop-new-pw')
        dc.add_user(self.USER, 'pop-new-pw')
        before = set(served)
        dc.append(self.USER, 'INBOX', message('pop-after-change'))
        served = dc.pop3_messages(self.USER)
        (uidl,) = set(served) - before
        nxt = os.path.join(inbox, '%d.eml' % (len(files) + 1))
        self.assertTrue(wait_for(lambda: os.path.exists(nxt), RESUME_SECONDS),
                        'new mail did not arrive after the password change')
        self.assertEqual(read(nxt), served[uidl])
        self.assertTrue(RETRIED.search(m.log()), 'the log does not say the login was retried')
        self.assertEqual(cmd.runs(), 2, 'passcmd ran %d times' % cmd.runs())
        m.unmount()


if __name__ == '__main__':
    unittest.main(verbosity=2)
