#!/usr/bin/env python3
r"""A live mount: changes made on the server by another client, connection
loss, a server that breaks CONDSTORE, over a real mailfs mount (FUSE) and a
private Dovecot.

A second, independent client (Python's imaplib, in tests/harness) changes
the mailboxes while mailfs has them mounted; what the mount shows is
compared with what that client reads back from the server.  Each scenario
uses an account of its own (so one cannot disturb another), mounts with a
fresh cache directory and always unmounts, even when it fails.  The debug
log of a mount (-d) shows every IMAP command sent as a line with " C: ";
the tests read it to tell what mailfs asked the server for.

IdleInbox      default poll (60 s), so only IDLE explains a change: a message
               appended elsewhere appears in INBOX within 5 s, byte-exact;
               flags set elsewhere show in user.mail.flags within 5 s; an
               expunged message vanishes within 5 s (listdir and stat: the
               kernel's entry is invalidated); after a BYE (doveadm kick) and
               after a network drop (proxy) IDLE resumes by itself
PollOther      poll=2, another mailbox: within poll the view comes from the
               cache (listings do not each send a SELECT/EXAMINE); once older
               than poll, the very next listing shows an append, a flag
               change and an expunge
Mailboxes      poll=2: mailboxes created, renamed (also nested) and deleted
               elsewhere appear, move and vanish at the next listing of
               their parent; stat of the old names gives ENOENT
NoRefetch      every body cached; 10 flag changes and 2 expunges elsewhere:
               the resync uses CHANGEDSINCE or QRESYNC, fetches no body, and
               the names and flags equal the server's
BrokenCondstore
               a TLS proxy (tests/harness/imapproxy.py) rewrites every
               MODSEQ and HIGHESTMODSEQ to 1: mailfs notices, says so in its
               log, and still shows flag changes (HIGHESTMODSEQ, UIDNEXT and
               EXISTS unchanged) and new mail at the next listing
ServerRestart  Dovecot killed during grep -r: grep ends (matches or EIO)
               within a bound, never hangs; cached mail is still served;
               once Dovecot is back, a second grep finds exactly the matches
UidValidity    UIDVALIDITY changed while mounted: names follow the new UIDs
               at the next listing, every body reads byte-exact, and no
               cached body is fetched again (re-matched by Message-ID, size)
Stalled        a frozen server: ls of a mailbox whose view is older than
               poll answers from the cache within timeout + 3 s; thawed, the
               mount follows the server again

Environment: as tests/harness/mounttest.py says.  Exit status 77 when
Dovecot or FUSE is missing."""

import base64
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'harness'))
import imapproxy  # noqa: E402
import mailharness  # noqa: E402
import mounttest  # noqa: E402
import mountutil  # noqa: E402
from mounttest import body_fetches, eml, fetched_uids, names, read  # noqa: E402

TEST_TIMEOUT = 90.0     # a hung FUSE request fails the test instead of hanging it
LIVE_SECONDS = 5.0      # INBOX: a change elsewhere shows within this (IDLE)
LIVE_INTERVAL = 0.25    # how often the tests look meanwhile
RESUME_SECONDS = 15.0   # INBOX after a BYE or a dropped connection: back-off + IDLE
POLL = 2                # -o poll= for the scenarios of other mailboxes
STALE = POLL + 0.7      # sleep this long and a view is older than poll
OP_TIMEOUT = 30.0       # one program run against the mount
GREP_TIMEOUT = 5        # -o timeout= while the server goes away during grep
GREP_BOUND = 60.0       # grep must end within this after the server stopped
RECOVER_SECONDS = 75.0  # back-off grows to 60 s: a later grep works within this
STALL_TIMEOUT = 3       # -o timeout= against a frozen server

WORD = 'Wombatxylophon'

USERS = {u: u + 'pw' for u in ('idle', 'poller', 'boxes', 'resync', 'broken',
                               'grepper', 'uidv', 'stall', 'condstore', 'plainflags',
                               'background')}

dc = None
TMP = None

# How mailfs's log says it stopped trusting a server's CONDSTORE.
BROKEN_CONDSTORE = re.compile(r'condstore.*(broken|ignor|not (be )?trust|untrust)', re.I)


# ------------------------------------------------------------------ helpers

def message(tag, i=0, extra=''):
    return ('From: Other Client <other@example.org>\r\n'
            'To: someone@example.org\r\n'
            'Subject: %s %d\r\n'
            'Date: Mon, 04 Mar 2024 10:%02d:00 +0000\r\n'
            'Message-ID: <%s.%d@live.example.org>\r\n'
            '\r\n'
            'Body of %s number %d.\r\n%s' % (tag, i, i % 60, tag, i, tag, i, extra)).encode()


def fresh(tag):
    return mounttest.fresh(TMP, tag)


def flags_of(path):
    return set(os.getxattr(path, 'user.mail.flags').decode('utf-8').split())


def gone(path):
    """True if stat(path) says ENOENT."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


def wait_for(fn, seconds, interval=LIVE_INTERVAL):
    """Call fn until it returns something true or seconds pass; return
    (last value, seconds waited)."""
    t0 = time.monotonic()
    v = mounttest.wait_for(fn, seconds, interval)
    return v, time.monotonic() - t0


def run(argv, timeout=OP_TIMEOUT):
    return mounttest.run(argv, timeout)


def uidset(uids):
    return ','.join(str(u) for u in sorted(uids))


class Other:
    """The independent client: one imaplib connection of USER, with the
    mailbox BOX selected read-write."""

    def __init__(self, user, box):
        self.m = dc.imap(user)
        typ, data = self.m.select(mailharness.imap_quote(mailharness.utf7_encode(box)))
        if typ != 'OK':
            self.m.logout()
            raise mailharness.HarnessError('SELECT %s: %r' % (box, data))

    def uid(self, *args):
        typ, data = self.m.uid(*args)
        if typ != 'OK':
            raise mailharness.HarnessError('UID %s: %r' % (' '.join(args), data))
        return data

    def store(self, uids, op, flags):
        return self.uid('STORE', uidset(uids), op, '(%s)' % ' '.join(flags))

    def expunge(self, uids):
        self.store(uids, '+FLAGS', ['\\Deleted'])
        return self.uid('EXPUNGE', uidset(uids))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.m.logout()
        except Exception:
            pass


def mailbox_command(user, command, *args):
    """CREATE / DELETE / RENAME by the independent client."""
    m = dc.imap(user)
    try:
        quoted = [mailharness.imap_quote(mailharness.utf7_encode(a)) for a in args]
        typ, data = getattr(m, command)(*quoted)
        if typ != 'OK':
            raise mailharness.HarnessError('%s %s: %r' % (command, args, data))
    finally:
        m.logout()


def opened(commands, box):
    """The SELECT / EXAMINE commands of mailbox BOX among COMMANDS."""
    pat = re.compile(r'^\S+ (SELECT|EXAMINE) "?%s"?(\s|$)' % re.escape(box), re.I)
    return [c for c in commands if pat.search(c)]


# ------------------------------------------------------------------ base

class LiveTest(mounttest.BoundedTest):
    TEST_TIMEOUT = TEST_TIMEOUT
    USER = None

    def mount(self, tag, mode='debug', options=(), url=None):
        mnt, cache = fresh(tag)
        return self.started(mountutil.Mount(dc, mnt, cache, user=self.USER, mode=mode,
                                            options=list(options), url=url))

    def server_uids(self, box):
        return set(dc.flags(self.USER, box))

    def assertListing(self, path, box, what=''):
        """The directory lists exactly the server's UIDs."""
        want = eml(self.server_uids(box))
        got = names(path)
        self.assertEqual(got, want, '%slisting of %s: missing %s, extra %s'
                         % (what, box, sorted(want - got), sorted(got - want)))

    def assertFlags(self, mnt_box, box, uids=None, what=''):
        server = dc.flags(self.USER, box)
        bad = {}
        for uid in sorted(server if uids is None else uids):
            got = flags_of(os.path.join(mnt_box, '%d.eml' % uid))
            if got != server[uid]:
                bad[uid] = 'mount %s, server %s' % (sorted(got), sorted(server[uid]))
        self.assertEqual(bad, {}, what + 'user.mail.flags differ from the server\'s')


# --------------------------------------------------------------- module set-up

def setUpModule():
    global dc, TMP
    dc, TMP = mounttest.set_up_module('mailfs-live-test-', users=USERS)


def tearDownModule():
    mounttest.tear_down_module(dc, TMP)


# ------------------------------------------------------- 1. INBOX with IDLE

class IdleInbox(LiveTest):
    """Mounted with the default poll (60 s): within the few seconds each
    test takes, no listing is old enough to be refreshed for its age, so a
    change that shows must have come through IDLE."""

    USER = 'idle'
    NO_POLL_BEFORE = 50.0   # a test must end this soon after its mount

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.append_many(cls.USER, 'INBOX',
                                    [message('idle-seed', i) for i in range(6)])

    def listed(self, m):
        """Mount M's INBOX, listed once; returns its path."""
        inbox = os.path.join(m.mountpoint, 'INBOX')
        self.assertListing(inbox, 'INBOX', 'first ')
        self.t_mounted = time.monotonic()
        return inbox

    def tearDown(self):
        super().tearDown()
        if hasattr(self, 't_mounted'):
            # Otherwise poll=60 could explain what the test saw.
            self.assertLess(time.monotonic() - self.t_mounted, self.NO_POLL_BEFORE)

    def wait_appears(self, inbox, data, seconds=LIVE_SECONDS):
        uid = dc.append(self.USER, 'INBOX', data)
        name = '%d.eml' % uid
        shown, took = wait_for(lambda: name in names(inbox), seconds)
        self.assertTrue(shown, '%s not listed %.1f s after the APPEND (listing: %s)'
                        % (name, took, sorted(names(inbox))))
        self.assertEqual(read(os.path.join(inbox, name)),
                         dc.fetch_bodies(self.USER, 'INBOX')[uid])
        return uid

    def test_1_append_appears_within_5s(self):
        m = self.mount('idle-append')
        inbox = self.listed(m)
        uid = self.wait_appears(inbox, message('idle-new', 1))
        st = os.stat(os.path.join(inbox, '%d.eml' % uid))
        self.assertEqual(st.st_size, len(dc.fetch_bodies(self.USER, 'INBOX')[uid]))
        self.assertListing(inbox, 'INBOX')
        idle = [c for c in m.sent_commands() if re.search(r'^\S+ IDLE$', c.strip(), re.I)]
        self.assertTrue(idle, 'no IDLE command in the debug log')

    def test_2_flags_appear_within_5s(self):
        m = self.mount('idle-flags')
        inbox = self.listed(m)
        uid = self.seeded[0]
        path = os.path.join(inbox, '%d.eml' % uid)
        self.assertEqual(flags_of(path), dc.flags(self.USER, 'INBOX')[uid])
        with Other(self.USER, 'INBOX') as o:
            o.store([uid], '+FLAGS', ['\\Flagged', '$Work'])
        want = dc.flags(self.USER, 'INBOX')[uid]
        self.assertTrue({'\\Flagged', '$Work'} <= want)
        got, took = wait_for(lambda: flags_of(path) == want, LIVE_SECONDS)
        self.assertTrue(got, 'user.mail.flags is %s %.1f s after the STORE; server: %s'
                        % (sorted(flags_of(path)), took, sorted(want)))
        # Taking a flag away shows too.
        with Other(self.USER, 'INBOX') as o:
            o.store([uid], '-FLAGS', ['$Work'])
        want = dc.flags(self.USER, 'INBOX')[uid]
        got, took = wait_for(lambda: flags_of(path) == want, LIVE_SECONDS)
        self.assertTrue(got, 'user.mail.flags is %s %.1f s after -FLAGS; server: %s'
                        % (sorted(flags_of(path)), took, sorted(want)))

    def test_3_expunge_vanishes_within_5s(self):
        m = self.mount('idle-expunge')
        inbox = self.listed(m)
        uid = self.seeded[1]
        name = '%d.eml' % uid
        path = os.path.join(inbox, name)
        # The kernel now holds the name (and the page cache its bytes).
        self.assertEqual(read(path), dc.fetch_bodies(self.USER, 'INBOX')[uid])
        os.stat(path)
        with Other(self.USER, 'INBOX') as o:
            o.expunge([uid])
        self.assertNotIn(uid, self.server_uids('INBOX'))
        vanished, took = wait_for(lambda: name not in names(inbox), LIVE_SECONDS)
        self.assertTrue(vanished, '%s still listed %.1f s after the expunge' % (name, took))
        self.assertTrue(gone(path), 'stat %s still succeeds: the kernel\'s entry was '
                        'not invalidated' % name)
        self.assertListing(inbox, 'INBOX')

    def test_4_idle_resumes_after_bye(self):
        # doveadm kick ends every session of the user (Dovecot says BYE),
        # the IDLE one included: mailfs reconnects and IDLEs again.
        m = self.mount('idle-bye')
        inbox = self.listed(m)
        time.sleep(1)           # the IDLE session is up
        since = m.log_size()
        r = dc.doveadm('kick', self.USER, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        time.sleep(0.5)
        self.wait_appears(inbox, message('idle-after-bye', 1), RESUME_SECONDS)
        self.assertTrue([c for c in m.sent_commands(since) if 'AUTHENTICATE' in c
                         or re.search(r'^\S+ LOGIN ', c)],
                        'no new login after the kick: was the session really ended?')
        # Then live again, within the usual bound.
        self.wait_appears(inbox, message('idle-after-bye', 2))

    def test_5_idle_resumes_after_network_drop(self):
        with imapproxy.TLSProxy(dc) as proxy:
            m = self.mount('idle-drop', url=proxy.url(self.USER))
            inbox = self.listed(m)
            time.sleep(1)
            self.assertGreater(proxy.drop(), 0, 'no connection through the proxy')
            time.sleep(0.5)
            self.wait_appears(inbox, message('idle-after-drop', 1), RESUME_SECONDS)
            self.wait_appears(inbox, message('idle-after-drop', 2))
            m.unmount()


# ------------------------------------------- 2. other mailboxes: poll=2

class PollOther(LiveTest):
    USER = 'poller'
    BOX = 'Work'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.append_many(cls.USER, cls.BOX,
                                    [message('poll-seed', i) for i in range(8)])

    def test_1_within_poll_served_from_cache(self):
        # Listings younger than poll are answered from the cache.  mailfs
        # also resynchronises in the background (about once per poll), so
        # the test does not ask for silence in a window but counts: some
        # 40 listings over 2 * poll may open the mailbox on the server a
        # few times, not once each.
        m = self.mount('poll-cache', options=['poll=%d' % POLL])
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        since = m.log_size()
        t0 = time.monotonic()
        listings, slowest = 0, 0.0
        while time.monotonic() - t0 < 2 * POLL + 0.5:
            t = time.monotonic()
            self.assertEqual(names(box), eml(self.seeded))
            slowest = max(slowest, time.monotonic() - t)
            listings += 1
            time.sleep(0.1)
        took = time.monotonic() - t0
        time.sleep(0.3)
        sent = opened(m.sent_commands(since), self.BOX)
        self.assertGreaterEqual(listings, 20, 'the machine is too slow for this test')
        # At most one resync per poll from listings, one from the
        # background: a few, where one per listing would be 20 or more.
        most = 2 * (int(took / POLL) + 1)
        print('\n  %d listings in %.1f s (the slowest %.3f s) opened %s %d times'
              % (listings, took, slowest, self.BOX, len(sent)), file=sys.stderr)
        self.assertLessEqual(len(sent), most, '%d listings in %.1f s opened %s on the '
                             'server %d times (poll=%d): %s'
                             % (listings, took, self.BOX, len(sent), POLL, sent))
        self.assertFlags(box, self.BOX, self.seeded[:2])

    def test_2_changes_shown_at_next_listing(self):
        m = self.mount('poll-change', options=['poll=%d' % POLL])
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        flag_uid, gone_uid = self.seeded[2], self.seeded[3]
        gone_path = os.path.join(box, '%d.eml' % gone_uid)
        os.stat(gone_path)      # the kernel holds the name
        self.assertEqual(flags_of(os.path.join(box, '%d.eml' % flag_uid)),
                         dc.flags(self.USER, self.BOX)[flag_uid])
        time.sleep(STALE)
        names(box)              # resynchronised: the changes below come after
        new_uid = dc.append(self.USER, self.BOX, message('poll-new', 1))
        with Other(self.USER, self.BOX) as o:
            o.store([flag_uid], '+FLAGS', ['\\Answered', '$Label1'])
            o.expunge([gone_uid])
        time.sleep(STALE)
        # One listing, no retries: opening a directory whose view is older
        # than poll waits for the resync.  The flags are read right after
        # it, before anything else could give a late resync time to finish.
        got = names(box)
        shown = {n: flags_of(os.path.join(box, n)) for n in sorted(got)}
        want = eml(self.server_uids(self.BOX))
        server = dc.flags(self.USER, self.BOX)
        with self.subTest(what='append'):
            self.assertIn('%d.eml' % new_uid, got)
            self.assertEqual(read(os.path.join(box, '%d.eml' % new_uid)),
                             dc.fetch_bodies(self.USER, self.BOX)[new_uid])
        with self.subTest(what='expunge'):
            self.assertNotIn('%d.eml' % gone_uid, got)
            self.assertTrue(gone(gone_path), 'stat of the expunged message succeeds')
        with self.subTest(what='whole listing'):
            self.assertEqual(got, want)
        with self.subTest(what='flags'):
            self.assertTrue({'\\Answered', '$Label1'} <= server[flag_uid])
            self.assertEqual(shown.get('%d.eml' % flag_uid), server[flag_uid])
            self.assertEqual({n: f for n, f in shown.items() if n in want},
                             {'%d.eml' % u: f for u, f in server.items()})


# ---------------------------------------- 3. mailboxes changed elsewhere

class Mailboxes(LiveTest):
    USER = 'boxes'

    @classmethod
    def setUpClass(cls):
        for box, n in (('Old', 2), ('Doomed', 1), ('Keep', 1), ('Parent/Child', 2)):
            dc.append_many(cls.USER, box, [message('box-' + box, i) for i in range(n)])

    def test_create_rename_delete_elsewhere(self):
        m = self.mount('boxes', options=['poll=%d' % POLL])
        mnt = m.mountpoint
        self.assertTrue({'Old', 'Doomed', 'Keep', 'Parent'} <= names(mnt))
        self.assertEqual(names(os.path.join(mnt, 'Parent')), {'Child'})
        for rel in ('Old', 'Doomed', 'Parent/Child'):
            self.assertListing(os.path.join(mnt, rel), rel, 'first ')
        # Cache the bodies of the mailboxes about to be renamed.
        for rel in ('Old', 'Parent/Child'):
            for name in names(os.path.join(mnt, rel)):
                read(os.path.join(mnt, rel, name))
        mailbox_command(self.USER, 'create', 'Fresh')
        mailbox_command(self.USER, 'create', 'Nest/Inner')
        mailbox_command(self.USER, 'rename', 'Old', 'Renamed')
        mailbox_command(self.USER, 'delete', 'Doomed')
        mailbox_command(self.USER, 'rename', 'Parent/Child', 'Parent/Kid')
        server = dc.list_mailboxes(self.USER)
        self.assertTrue({'Fresh', 'Nest/Inner', 'Renamed', 'Parent/Kid'} <= set(server))
        self.assertFalse({'Old', 'Doomed', 'Parent/Child'} & set(server))
        time.sleep(STALE)
        since = m.log_size()
        # A parent that is not the root first, then the root.
        with self.subTest(parent='Parent'):
            self.assertEqual(names(os.path.join(mnt, 'Parent')), {'Kid'})
            self.assertTrue(gone(os.path.join(mnt, 'Parent', 'Child')))
        with self.subTest(parent='root'):
            top = names(mnt)
            self.assertTrue({'Fresh', 'Nest', 'Renamed', 'Keep', 'Parent'} <= top, top)
            self.assertFalse({'Old', 'Doomed'} & top, top)
            self.assertTrue(gone(os.path.join(mnt, 'Old')))
            self.assertTrue(gone(os.path.join(mnt, 'Doomed')))
        with self.subTest(parent='Nest'):
            self.assertEqual(names(os.path.join(mnt, 'Nest')), {'Inner'})
            self.assertEqual(names(os.path.join(mnt, 'Nest', 'Inner')), set())
        for box in ('Renamed', 'Parent/Kid'):
            with self.subTest(moved=box):
                path = os.path.join(mnt, box)
                self.assertListing(path, box)
                for uid, body in dc.fetch_bodies(self.USER, box).items():
                    self.assertEqual(read(os.path.join(path, '%d.eml' % uid)), body)
        with self.subTest(what='renamed mailboxes keep their cached bodies'):
            sent = [l for l in m.log_since(since).splitlines()
                    if ' C: ' in l and 'BODY.PEEK[]' in l]
            self.assertEqual(sent, [])
        with self.subTest(what='empty'):
            self.assertEqual(names(os.path.join(mnt, 'Fresh')), set())


# ------------------------------------------- 4. resync fetches no body

class NoRefetch(LiveTest):
    USER = 'resync'
    BOX = 'Archive'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.generate(cls.USER, cls.BOX, 30, seed=11)

    def test_resync_uses_condstore_and_fetches_no_body(self):
        m = self.mount('norefetch', options=['poll=%d' % POLL])
        sent = self.changes_resync(m)
        cheap = [c for c in sent if re.search(r'CHANGEDSINCE|QRESYNC', c, re.I)
                 and not re.search(r'^\S+ ENABLE ', c, re.I)]
        self.assertTrue(cheap, 'the resync used neither CHANGEDSINCE nor QRESYNC: %s'
                        % [c for c in sent if 'AUTHENTICATE' not in c][:10])

    def changes_resync(self, m):
        """Another client changes flags and expunges; after poll the
        listing and the flags equal the server's, no body is fetched.
        Returns the commands sent meanwhile."""
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        bodies = dc.fetch_bodies(self.USER, self.BOX)
        for uid, body in bodies.items():
            self.assertEqual(read(os.path.join(box, '%d.eml' % uid)), body)
        self.assertFlags(box, self.BOX)
        time.sleep(0.3)
        since = m.log_size()
        u = self.seeded
        expunged = [u[7], u[20]]
        for uid in expunged:
            os.stat(os.path.join(box, '%d.eml' % uid))
        with Other(self.USER, self.BOX) as o:
            o.store(u[0:4], '+FLAGS', ['\\Seen', '$Done'])
            o.store(u[4:8], '+FLAGS', ['\\Flagged'])
            o.store(u[10:12], '+FLAGS', ['\\Answered', '\\Draft', '$Label2'])
            o.expunge(expunged)
        time.sleep(STALE)
        self.assertListing(box, self.BOX)
        for uid in expunged:
            self.assertTrue(gone(os.path.join(box, '%d.eml' % uid)))
        self.assertFlags(box, self.BOX)
        # The bodies are still the cached ones.
        for uid, body in bodies.items():
            if uid not in expunged:
                self.assertEqual(read(os.path.join(box, '%d.eml' % uid)), body)
        time.sleep(0.3)
        sent = m.sent_commands(since)
        self.assertEqual(body_fetches(sent), [], 'bodies fetched again by the resync')
        return sent


class NoQresync(NoRefetch):
    """The same changes through a proxy that hides QRESYNC: CHANGEDSINCE
    for the flags, and the expunges found although nothing reports them
    (the message count disagrees, all flags are fetched)."""
    USER = 'condstore'

    def test_resync_uses_condstore_and_fetches_no_body(self):
        with imapproxy.TLSProxy(dc, rewrite=imapproxy.hide_caps('QRESYNC')) as proxy:
            m = self.mount('noqresync', options=['poll=%d' % POLL],
                           url=proxy.url(self.USER))
            sent = self.changes_resync(m)
            m.unmount()
        self.assertGreater(proxy.rewrites, 0)
        self.assertFalse([c for c in sent if re.search(r'QRESYNC', c, re.I)], sent[:10])
        self.assertTrue([c for c in sent if re.search(r'CHANGEDSINCE', c, re.I)],
                        [c for c in sent if 'AUTHENTICATE' not in c][:10])


class NoCondstore(NoRefetch):
    """Neither QRESYNC nor CONDSTORE: all flags, never a body."""
    USER = 'plainflags'

    def test_resync_uses_condstore_and_fetches_no_body(self):
        hide = imapproxy.hide_caps('QRESYNC', 'CONDSTORE')
        with imapproxy.TLSProxy(dc, rewrite=hide) as proxy:
            m = self.mount('nocondstore', options=['poll=%d' % POLL],
                           url=proxy.url(self.USER))
            sent = self.changes_resync(m)
            m.unmount()
        self.assertFalse([c for c in sent if re.search(r'QRESYNC|CHANGEDSINCE|CONDSTORE',
                                                        c, re.I)], sent[:10])
        self.assertTrue([c for c in sent if re.search(r'UID FETCH 1:\d+ \(UID FLAGS\)', c)],
                        [c for c in sent if 'AUTHENTICATE' not in c][:10])


class Background(LiveTest):
    """A mailbox nobody looks at is resynchronised every poll seconds:
    user.mail.flags (no directory opened) shows another client's change."""
    USER = 'background'
    BOX = 'Quiet'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.generate(cls.USER, cls.BOX, 5, seed=12)

    def test_flags_change_without_listing(self):
        m = self.mount('background', options=['poll=%d' % POLL])
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        path = os.path.join(box, '%d.eml' % self.seeded[2])
        os.stat(path)               # the kernel holds the entry from now on
        with Other(self.USER, self.BOX) as o:
            o.store([self.seeded[2]], '+FLAGS', ['$Background'])
        want = dc.flags(self.USER, self.BOX)[self.seeded[2]]
        self.assertIn('$Background', want)
        self.assertTrue(wait_for(lambda: flags_of(path) == want, 3 * POLL + 2)[0],
                        'flags not updated in the background: %s' % sorted(flags_of(path)))


# --------------------------------------------- 5. a server that breaks CONDSTORE

class BrokenCondstore(LiveTest):
    USER = 'broken'
    BOX = 'Box'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.append_many(cls.USER, cls.BOX,
                                    [message('broken-seed', i) for i in range(8)])

    def flag_and_check(self, box, uid, flags):
        """Another client adds FLAGS to UID; once the view is older than
        poll, the next listing and user.mail.flags show them."""
        with Other(self.USER, self.BOX) as o:
            o.store([uid], '+FLAGS', flags)
        want = dc.flags(self.USER, self.BOX)[uid]
        self.assertTrue(set(flags) <= want)
        time.sleep(STALE)
        self.assertListing(box, self.BOX)
        self.assertEqual(flags_of(os.path.join(box, '%d.eml' % uid)), want,
                         'a flag change on a server whose MODSEQ never moves')

    def test_constant_modseq_detected_and_flags_still_resync(self):
        with imapproxy.TLSProxy(dc, rewrite=imapproxy.constant_modseq) as proxy:
            m = self.mount('broken', options=['poll=%d' % POLL],
                           url=proxy.url(self.USER))
            box = os.path.join(m.mountpoint, self.BOX)
            self.assertListing(box, self.BOX, 'first ')
            for uid, body in dc.fetch_bodies(self.USER, self.BOX).items():
                self.assertEqual(read(os.path.join(box, '%d.eml' % uid)), body)
            self.assertGreater(proxy.rewrites, 0, 'the proxy changed nothing: did mailfs '
                               'use CONDSTORE at all?')
            # The flags of the most recent message change; HIGHESTMODSEQ,
            # UIDNEXT and EXISTS do not: a mount that trusted HIGHESTMODSEQ
            # would call the mailbox unchanged.
            self.flag_and_check(box, self.seeded[-1], ['\\Flagged', '$Urgent'])
            # A new message while HIGHESTMODSEQ stays 1 (a server that
            # honoured CONDSTORE could not say that) shows, and so does a
            # change of its flags.
            new_uid = dc.append(self.USER, self.BOX, message('broken-new', 1))
            time.sleep(STALE)
            self.assertListing(box, self.BOX, 'after an append: ')
            self.assertEqual(read(os.path.join(box, '%d.eml' % new_uid)),
                             dc.fetch_bodies(self.USER, self.BOX)[new_uid])
            self.flag_and_check(box, new_uid, ['\\Answered', '$Later'])
            self.assertFlags(box, self.BOX)
            m.unmount()
        said = [l for l in m.log().splitlines() if BROKEN_CONDSTORE.search(l)]
        self.assertTrue(said, 'no log line says that CONDSTORE is broken')


# ---------------------------------------- 6. Dovecot restarted during grep -r

def with_word(data, i):
    """Every 7th message gets WORD at its very end (grep must read it all)."""
    return data + b'\r\nThe word is %s.\r\n' % WORD.encode() if i % 7 == 3 else data


def with_blob(data, i):
    """Every 3rd message gets a base64 blob of about 400 KB at the end of
    its body, so that fetching everything takes a while (some 50 MB)."""
    if i % 3 != 1:
        return data
    blob = base64.encodebytes(bytes(range(256)) * 1200 + b'%d' % i).replace(b'\n', b'\r\n')
    return data + b'\r\n' + blob


class ServerRestart(LiveTest):
    USER = 'grepper'
    BOXES = ('Alpha', 'Beta', 'Gamma')
    TEST_TIMEOUT = GREP_BOUND + RECOVER_SECONDS + 60

    @classmethod
    def setUpClass(cls):
        for n, box in enumerate(cls.BOXES):
            msgs = mailharness.generate_messages(120, seed=40 + n)
            dc.append_many(cls.USER, box, [(with_word(with_blob(b, i), i), (), d)
                                           for i, (b, d) in enumerate(msgs)])
        cls.bodies = {box: dc.fetch_bodies(cls.USER, box) for box in cls.BOXES}
        cls.expected = {'%s/%d.eml' % (box, uid) for box in cls.BOXES
                        for uid, b in cls.bodies[box].items() if WORD.encode() in b}
        assert len(cls.expected) > 30

    def grep_hits(self, mnt, stdout):
        return {os.path.relpath(p, mnt) for p in os.fsdecode(stdout).splitlines()}

    def test_dovecot_stopped_during_grep(self):
        m = self.mount('restart', mode='foreground',
                       options=['timeout=%d' % GREP_TIMEOUT])
        mnt = m.mountpoint
        cached = []
        for box in self.BOXES:
            self.assertListing(os.path.join(mnt, box), box, 'first ')
        # Half of Alpha is cached before; the rest is fetched by grep.
        for uid in sorted(self.bodies['Alpha'])[:60]:
            rel = 'Alpha/%d.eml' % uid
            self.assertEqual(read(os.path.join(mnt, rel)), self.bodies['Alpha'][uid])
            cached.append(rel)
        grep = subprocess.Popen(['grep', '-rl', WORD, mnt], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, LC_ALL='C'))
        try:
            time.sleep(0.15)
            self.assertIsNone(grep.poll(), 'grep was done before the server stopped: '
                              'the test needs more mail')
            # Abruptly (SIGKILL): a graceful stop takes Dovecot a second,
            # time enough for the whole grep.  Fetches in flight break.
            t_stop = time.monotonic()
            self.addCleanup(dc.start)       # whatever fails below
            dc.stop(kill=True)
            try:
                out, err = grep.communicate(timeout=GREP_BOUND)
            except subprocess.TimeoutExpired:
                self.fail('grep -r still running %.0f s after the server stopped'
                          % GREP_BOUND)
            took = time.monotonic() - t_stop
        finally:
            if grep.poll() is None:
                grep.kill()         # our child, by its pid
                grep.wait(10)
        err_lines = os.fsdecode(err).splitlines()
        self.assertIn(grep.returncode, (0, 1, 2), err_lines[-5:])
        if grep.returncode == 2:
            self.assertEqual([l for l in err_lines if 'Input/output error' not in l], [],
                             'grep failed other than with EIO')
        self.assertLessEqual(self.grep_hits(mnt, out), self.expected, 'grep found '
                             'files without the word')
        print('\n  grep after the server stopped: exit %d in %.1f s, %d matches, '
              '%d EIO' % (grep.returncode, took, len(self.grep_hits(mnt, out)),
                          len(err_lines)), file=sys.stderr)
        try:
            # While the server is down: still mounted, cached mail served.
            self.assertTrue(mountutil.is_mounted(mnt) and not m.exited(), 'mailfs died')
            for rel in cached[:10]:
                box, name = rel.split('/')
                self.assertEqual(read(os.path.join(mnt, rel)),
                                 self.bodies[box][int(name[:-4])])
        finally:
            dc.start()
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < RECOVER_SECONDS:
            r = run(['grep', '-rl', WORD, mnt], timeout=GREP_BOUND)
            last = r
            if r.returncode == 0 and self.grep_hits(mnt, r.stdout) == self.expected:
                break
            time.sleep(2)
        self.assertEqual(last.returncode, 0, 'no clean grep %.0f s after the server came '
                         'back: %s' % (RECOVER_SECONDS,
                                       os.fsdecode(last.stderr).splitlines()[-3:]))
        self.assertEqual(self.grep_hits(mnt, last.stdout), self.expected)
        print('  a clean grep %.1f s after the server came back'
              % (time.monotonic() - t0), file=sys.stderr)


# ---------------------------------------------- 7. UIDVALIDITY while mounted

class UidValidity(LiveTest):
    USER = 'uidv'
    BOX = 'Shift'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.generate(cls.USER, cls.BOX, 10, seed=17)

    def test_uidvalidity_changed_while_mounted(self):
        m = self.mount('uidv', options=['poll=%d' % POLL])
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        old = dc.fetch_bodies(self.USER, self.BOX)
        old_uv = dc.status(self.USER, self.BOX)['UIDVALIDITY']
        for uid, body in old.items():
            self.assertEqual(read(os.path.join(box, '%d.eml' % uid)), body)
        # The server is "restored": the mailbox re-created, the same
        # messages in reverse order after a new one, a new UIDVALIDITY
        # (as tests/test_mount.py's UidValidity does between mounts).
        mailbox_command(self.USER, 'delete', self.BOX)
        fresh_msg = message('uidv-fresh', 1)
        uids = dc.append_many(self.USER, self.BOX,
                              [fresh_msg] + [old[u] for u in sorted(old, reverse=True)])
        fresh_uid = uids[0]
        dc.doveadm('mailbox', 'update', '-u', self.USER, '--uid-validity',
                   str(old_uv + 1000), self.BOX)
        new = dc.fetch_bodies(self.USER, self.BOX)
        self.assertNotEqual(dc.status(self.USER, self.BOX)['UIDVALIDITY'], old_uv)
        # The re-created mailbox numbers from 1 again: most names stay, but
        # each now stands for another message (the kernel has the old ones'
        # pages cached under the old inodes).
        self.assertNotEqual({u: new[u] for u in set(new) & set(old)},
                            {u: old[u] for u in set(new) & set(old)})
        since = m.log_size()
        time.sleep(STALE)
        self.assertEqual(names(box), eml(new), 'the next listing does not follow the '
                         'new UIDs')
        for uid in set(old) - set(new):
            self.assertTrue(gone(os.path.join(box, '%d.eml' % uid)),
                            'old name %d.eml still there' % uid)
        bad = {u: len(read(os.path.join(box, '%d.eml' % u))) for u, b in new.items()
               if read(os.path.join(box, '%d.eml' % u)) != b}
        self.assertEqual(bad, {}, 'bodies differ from the server\'s')
        time.sleep(0.3)
        fetched = fetched_uids(m.sent_commands(since))
        self.assertLessEqual(fetched, {fresh_uid}, 'cached bodies fetched again: %s'
                             % sorted(fetched - {fresh_uid}))
        self.assertTrue([l for l in m.log_since(since).splitlines()
                         if 'UIDVALIDITY' in l.upper() and self.BOX in l and ' C: ' not in l],
                        'no log line about the UIDVALIDITY change of %s' % self.BOX)


# -------------------------------------------------- 8. a stalled server

_LS = r'''
import os, sys, json
path, name = sys.argv[1], sys.argv[2]
out = {'names': sorted(os.listdir(path))}
out['flags'] = os.getxattr(os.path.join(path, name), 'user.mail.flags').decode()
print(json.dumps(out))
'''


class Stalled(LiveTest):
    USER = 'stall'
    BOX = 'Still'

    @classmethod
    def setUpClass(cls):
        cls.seeded = dc.append_many(cls.USER, cls.BOX,
                                    [message('stall-seed', i) for i in range(5)])
        with Other(cls.USER, cls.BOX) as o:
            o.store(cls.seeded[:1], '+FLAGS', ['\\Seen', '$Kept'])

    def test_ls_of_stale_view_answers_from_cache(self):
        m = self.mount('stall', options=['poll=%d' % POLL, 'timeout=%d' % STALL_TIMEOUT])
        box = os.path.join(m.mountpoint, self.BOX)
        self.assertListing(box, self.BOX, 'first ')
        want_names = sorted(eml(self.seeded))
        name = '%d.eml' % self.seeded[0]
        want_flags = dc.flags(self.USER, self.BOX)[self.seeded[0]]
        time.sleep(STALE)
        dc.freeze()
        try:
            t0 = time.monotonic()
            try:
                r = run([sys.executable, '-c', _LS, box, name],
                        timeout=STALL_TIMEOUT + 20)
                took = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.fail('ls of %s hung (> %d s) while the server is frozen'
                          % (self.BOX, STALL_TIMEOUT + 20))
            r2 = run(['ls', box], timeout=STALL_TIMEOUT + 20)
            took2 = time.monotonic() - t0 - took
        finally:
            dc.thaw()
        self.assertEqual(r.returncode, 0, r.stderr.decode()[-500:])
        self.assertLess(took, STALL_TIMEOUT + 3, 'listing took %.1f s' % took)
        got = json.loads(r.stdout)
        self.assertEqual(got['names'], want_names)
        self.assertEqual(set(got['flags'].split()), want_flags)
        self.assertEqual(r2.returncode, 0, r2.stderr.decode()[-500:])
        self.assertLess(took2, STALL_TIMEOUT + 3, 'a second ls took %.1f s' % took2)
        self.assertEqual(sorted(os.fsdecode(r2.stdout).split()), want_names)
        # Thawed: the mount follows the server again.
        new_uid = dc.append(self.USER, self.BOX, message('stall-after', 1))
        shown, took = wait_for(lambda: '%d.eml' % new_uid in names(box), 30, 1)
        self.assertTrue(shown, 'a message appended after the thaw is not listed '
                        'within %.0f s' % took)


if __name__ == '__main__':
    mounttest.main()
