#!/usr/bin/env python3
"""A throwaway Dovecot for the mailfs integration tests, benchmark and demo.

Python 3 standard library only, plus the `dovecot`, `doveadm` and `openssl`
programs.  Import it from a test with

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'harness'))
    import mailharness
    mailharness.require_dovecot()          # exit 77 (meson: skipped) if absent
    with mailharness.Dovecot() as dc:
        dc.append('alice', 'INBOX', b'Subject: hi\\r\\n\\r\\nhello\\r\\n')
        url = dc.url('imaps', 'alice')     # imaps://alice@localhost:PORT
        ...                                # mailfs ... -o cafile=<dc.ca>

or run it as a program:

    mailharness.py serve --dir DIR [--corpus] [--generate N] [--mailbox INBOX]
                         [--users alice:secret[,bob:pw]] [--separator /|.] [--detach]
    mailharness.py stop --dir DIR

`serve` starts Dovecot in DIR (new or empty), loads the mail into the first
user, writes DIR/harness.json (ports, ca, users, urls, pid of the serve
process, dovecot_pid, mailboxes loaded) and prints the same JSON, then stays in
the foreground until SIGTERM/SIGINT, stops Dovecot and removes harness.json.
With --detach it returns once harness.json exists (output in DIR/serve.log,
its pid at once in DIR/serve.pid); `stop` (or `kill <pid>`) ends it.

API (users and mailbox names are str, UTF-8; message data is bytes)
-------------------------------------------------------------------
Dovecot(directory=None, users=None, separator='/', ipv6=None, start=True,
        compress=True)
  .start() .stop(kill=False) .restart() .freeze() .thaw() .close()
  .imap(user[, pw]) -> logged-in IMAP4_SSL   .imap_starttls([user]) -> IMAP4
  .pop3(user[, pw]) -> logged-in POP3_SSL     .pop3_stls([user]) -> POP3
  .create(user, mailbox)   .add_user(name, pw)
  .append(user, mailbox, data, flags=(), date=None) -> uid
  .append_many(user, mailbox, [bytes | (bytes, flags, date)]) -> [uid]
  .generate(user, mailbox, n, seed=0) -> [uid]
  .load_corpus(user) -> {mailbox: [uid]}
  .fetch_bodies(user, mailbox) -> {uid: bytes}   .flags(user, mailbox) -> {uid: set}
  .meta(user, mailbox) -> {uid: (RFC822.SIZE, INTERNALDATE as epoch seconds)}
  .fetch_items(user, mailbox, '(UID ...)') -> {uid: bytes of the FETCH response}
  .list_mailboxes(user) -> {name: set(attributes)}   .status(user, mailbox) -> {}
  .pop3_messages(user) -> {uidl: bytes}   .doveadm(*args) -> CompletedProcess
  .bad_cert_server(kind) -> TLSFakeServer   .ssl_context()   .url(scheme, user)
  .log(since=0) .log_size() .log_tail(n)   .info() -> dict
utf7_encode(str) utf7_decode(str) served_form(bytes) generate_messages(n, seed)
read_text(path, since=0) file_size(path)
corpus_messages() -> {mailbox: [(label, bytes)]}  split_mbox(bytes)
corpus_dir() require_dovecot() make_pki(dir) TLSFakeServer(cert, key, greeting)
run_tests(reports=()): unittest.main with a summary, for the test modules
PERR, CLI_EXIT: the error classes of proto/error.h, imapcli's and pop3cli's exit codes
test_tool('imapcli') -> the path of that test tool
run_tool(argv, password, timeout) -> ToolResult: rc, stdout, message, elapsed

What a Dovecot instance is
--------------------------
Everything lives in one directory (a fresh temporary one unless given):
dovecot.conf, passwd, run/ (base_dir), state/, log/dovecot.log (log_path and
info_log_path), home/USER/Maildir, pki/.  Nothing in /etc/dovecot is read or
touched.  `dovecot -F -c dovecot.conf` runs as our child in its own process
group; stop() sends SIGTERM to it, waits (bounded), then SIGKILLs whatever is
left of that group.  Instances still running at interpreter exit are stopped
by an atexit hook; if this process dies without running it (SIGTERM from a
meson timeout, SIGKILL), a small watchdog process stops Dovecot by its pid and
removes the temporary directory.

Listeners, all on 127.0.0.1 (and ::1 when the machine has IPv6 loopback), on
free ports chosen at construction and kept across stop()/start():
imap (STARTTLS), imaps, pop3 (STLS), pop3s.  TLS is required for every login.

PKI (pki/, made with the openssl CLI, EC P-256):
  ca.pem              the test CA; trust it (`cafile=`), host name `localhost`
  server.pem/.key     what Dovecot presents: SAN DNS:localhost, and
                      imap.mail.test and pop.mail.test (one provider under two
                      names, for tests that map them to 127.0.0.1); no IP SAN,
                      so connecting to host 127.0.0.1 fails the host-name check
  expired.pem/.key    signed by the CA, valid 2020-01-01..2020-02-01
  wronghost.pem/.key  signed by the CA, SAN DNS:wrong.example
  unknown-ca.pem      an unrelated self-signed CA, and unknown.pem/.key, a
                      localhost certificate it signed ("unknown issuer")
  selfsigned.pem/.key a self-signed localhost certificate
bad_cert_server(kind) starts a tiny TLS server presenting one of these.

Dovecot quirks found (2.3.19), and what the harness does about them
--------------------------------------------------------------------
* Line ends.  Dovecot stores a message with LF line ends (maildir,
  mail_save_crlf = no: every CRLF becomes LF) and serves BODY[],
  RFC822.SIZE and POP3 RETR with every LF turned into CRLF unless a CR is
  already before it.  So bare LF -> CRLF, CRLF stays, a bare CR stays, and
  CR CR LF comes back as CR LF.  served_form(data) computes this.  A message
  that does not end in a newline is served without one by IMAP; POP3 RETR
  adds CRLF before the final "." (so pop3_messages() returns 2 bytes more).
  Compare a mount with fetch_bodies(), never with the file that was appended.
* imaplib.IMAP4.append() rewrites every CR, LF and CRLF to CRLF before sending.
  The harness therefore APPENDs with its own literal, so the server gets the
  bytes exactly as given.
* Dovecot treats a connection whose remote IP equals its local IP (127.0.0.1
  to 127.0.0.1) as "secured": ssl=required and disable_plaintext_auth are not
  enforced there, so before STARTTLS it advertises AUTH=PLAIN and no
  LOGINDISABLED.  A deny passdb keyed on %{secured} rejects every login that
  is not over TLS; the client sees "NO [AUTHENTICATIONFAILED]" (IMAP) or
  "-ERR [AUTH]" (POP3), as with a wrong password.
* Dovecot refuses to access mail as root ("Mail access not allowed for
  root"), and passwd-file refuses uid 0.  Run as root, mail belongs to the
  user `nobody` (mail_uid/mail_gid), and the instance directory and its
  parents must be searchable by others (0755); the auth process runs as the
  `dovecot` user and reads the passwd file.  Run as another user, everything
  runs as that user.
* POP3 RETR sets \\Seen (pop3_no_flag_updates = no, the default); POP3
  CAPA lists USER and SASL only before login.
* Stopping takes about a second (the master waits for its children).
* After a failed login, Dovecot's auth penalty (anvil) delays every later
  login from the same IP by 2..15 s; disabled here (anvil-auth-penalty
  listener mode 0).  auth_failure_delay is 0 (default 2 s); a failed login
  still takes about 0.5 s.  mail_max_userip_connections is 100 (default 10).
* passwd-file is re-read when its mtime changes, checked at most once a
  second; add_user() bumps the mtime and waits until the user can log in.
* The mailbox hierarchy is maildir LAYOUT=fs for separator "/" (names may
  contain "."), LAYOUT=index for separator "." (names may contain "/").
* COMPRESS=DEFLATE needs the imap_zlib plugin for imap, which needs the
  zlib plugin in mail_plugins; it is announced only after login (not in
  the greeting's capabilities).  Dovecot's "Disconnected: ... in=N out=N"
  log line counts the uncompressed bytes.
"""

import argparse
import atexit
import base64
import datetime
import email.utils
import imaplib
import json
import os
import poplib
import grp
import pwd
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get('MAILFS_SOURCE') or os.path.dirname(os.path.dirname(HERE))
DEFAULT_USERS = {'alice': 'alicepw', 'bob': 'bobpw'}
SPECIAL_USE = (('Trash', '\\Trash'), ('Sent', '\\Sent'),
               ('Drafts', '\\Drafts'), ('Junk', '\\Junk'))
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 30.0
SKIP = 77


class HarnessError(Exception):
    pass


# ----------------------------------------------------------------- helpers

# enum proto_err_class (proto/error.h); the test tools imapcli and pop3cli
# exit with CLI_EXIT[class], 10 + the class.
PERR = dict(RESOLVE=1, CONNECT=2, TIMEOUT=3, TLS=4, TLS_VERIFY=5, NOTLS=6,
            PROTOCOL=7, NO=8, BAD=9, AUTH=10, BYE=11, LOCAL=12, BUSY=13)
CLI_EXIT = {name: 10 + n for name, n in PERR.items()}


def test_tool(name):
    """The path of the test tool NAME (imapcli, pop3cli): $MAILFS_<NAME>,
    else $MAILFS_BUILD/tests/NAME (MAILFS_BUILD: "build")."""
    return os.environ.get('MAILFS_' + name.upper()) or os.path.join(
        os.environ.get('MAILFS_BUILD', 'build'), 'tests', name)


class ToolResult:
    """One run of imapcli or pop3cli: rc, stdout and stderr (str), elapsed
    (seconds); message, its line "TOOL: CLASS: TEXT" on standard output
    (the first or, with LAST, the last line starting "TOOL: "); errno, the
    NAME of a second such line "TOOL: errno NAME" (pop3cli), else ''."""

    def __init__(self, proc, elapsed, tool, last=False):
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode('utf-8', errors='replace')
        self.stderr = proc.stderr.decode('utf-8', errors='replace')
        self.elapsed = elapsed
        lines = [l for l in self.stdout.splitlines() if l.startswith(tool + ': ')]
        self.message = (lines[-1] if last else lines[0]) if lines else ''
        self.errno = lines[1].split()[-1] if len(lines) > 1 else ''

    def __str__(self):
        return 'exit %s after %.2f s\nstdout:\n%s\nstderr:\n%s' % (
            self.rc, self.elapsed, self.stdout[-3000:], self.stderr[-6000:])


def run_tool(argv, password, timeout, last=False):
    """Run the test tool ARGV (imapcli or pop3cli, given --password-stdin)
    with PASSWORD on its standard input, for at most TIMEOUT seconds: a
    ToolResult."""
    start = time.monotonic()
    proc = subprocess.run(argv, input=(password + '\n').encode('utf-8'),
                          capture_output=True, timeout=timeout)
    return ToolResult(proc, time.monotonic() - start, os.path.basename(argv[0]), last)


def run_tests(reports=()):
    """unittest.main, then a summary (a test with failing subtests counts
    once; REPORTS: findings that are not failures); exits 1 on a failure."""
    t0 = time.monotonic()
    prog = unittest.main(exit=False, verbosity=2)
    res = prog.result
    failed = len({getattr(t, 'test_case', t).id() for t, _ in res.failures + res.errors}
                 | {t.id() for t in res.unexpectedSuccesses})
    passed = res.testsRun - failed - len(res.skipped) - len(res.expectedFailures)
    for line in reports:
        print('REPORT: ' + line)
    print('%d expected failures, %d skipped, %.0f s'
          % (len(res.expectedFailures), len(res.skipped), time.monotonic() - t0))
    print('%d passed, %d failed' % (passed, failed))
    sys.exit(1 if failed else 0)


def find_program(name):
    """Path of NAME: $MAILFS_DOVECOT / $MAILFS_DOVEADM / $MAILFS_OPENSSL if
    set, else from $PATH plus the sbin directories (dovecot lives in sbin,
    which a non-root PATH lacks); None if absent."""
    env = os.environ.get('MAILFS_' + name.upper())
    if env:
        return env if os.access(env, os.X_OK) else None
    path = os.environ.get('PATH', os.defpath)
    return shutil.which(name, path=path + ':/usr/local/sbin:/usr/sbin:/sbin')


def require_dovecot():
    """Exit 77 (meson's "skipped") when dovecot, doveadm or openssl is missing."""
    missing = [p for p in ('dovecot', 'doveadm', 'openssl') if not find_program(p)]
    if missing:
        print('SKIP: %s not installed (Debian: dovecot-imapd dovecot-pop3d openssl)'
              % ', '.join(missing), flush=True)
        sys.exit(SKIP)


def corpus_dir():
    """$MAILFS_CORPUS, else the corpus committed in tests/corpus."""
    return os.environ.get('MAILFS_CORPUS') or os.path.join(
        SOURCE, 'tests', 'corpus')


def have_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(('::1', 0))
        return True
    except OSError:
        return False


def free_ports(n, ipv6=False):
    """N distinct ports free on 127.0.0.1 (and ::1).  Held open together so
    they differ; a race with another program is still possible, and start()
    reports it with Dovecot's log."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
            if ipv6:
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                socks.append(s6)
                try:
                    s6.bind(('::1', port))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def served_form(data):
    """The bytes Dovecot serves (BODY[]) for a message appended as DATA."""
    return re.sub(rb'(?<!\r)\n', b'\r\n', data.replace(b'\r\n', b'\n'))


def read_text(path, since=0):
    """The text of file PATH (UTF-8, errors replaced) from byte offset
    SINCE; '' when there is no such file."""
    try:
        with open(path, 'rb') as f:
            f.seek(since)
            return f.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''


def file_size(path):
    """The size of file PATH; 0 when there is no such file."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def imap_quote(s):
    """An IMAP quoted string (no CR, LF or NUL)."""
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'


# --------------------------------------------------- modified UTF-7 (RFC 3501)

def _b64_mutf7(chunk):
    raw = ''.join(chunk).encode('utf-16-be')
    return '&' + base64.b64encode(raw).decode('ascii').rstrip('=').replace('/', ',') + '-'


def utf7_encode(name):
    """UTF-8 (str) mailbox name -> IMAP modified UTF-7 (str, ASCII)."""
    out, pending = [], []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            if pending:
                out.append(_b64_mutf7(pending))
                pending = []
            out.append('&-' if ch == '&' else ch)
        else:
            pending.append(ch)
    if pending:
        out.append(_b64_mutf7(pending))
    return ''.join(out)


def utf7_decode(name):
    """IMAP modified UTF-7 -> str.  Raises ValueError on malformed input."""
    if isinstance(name, bytes):
        name = name.decode('ascii')
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch != '&':
            out.append(ch)
            i += 1
            continue
        end = name.find('-', i + 1)
        if end < 0:
            raise ValueError('unterminated &-sequence in %r' % name)
        if end == i + 1:
            out.append('&')
        else:
            b64 = name[i + 1:end].replace(',', '/')
            raw = base64.b64decode(b64 + '=' * (-len(b64) % 4), validate=True)
            out.append(raw.decode('utf-16-be'))
        i = end + 1
    return ''.join(out)


# ------------------------------------------------------------------ PKI

def _openssl(*args, cwd):
    r = subprocess.run([find_program('openssl')] + list(args), cwd=cwd,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError('openssl %s failed: %s' % (
            ' '.join(args), r.stderr.decode(errors='replace')))


_CA_CNF = """\
[ca]
default_ca = harness
[harness]
database = db/index.txt
new_certs_dir = db
rand_serial = yes
policy = anything
default_md = sha256
copy_extensions = none
unique_subject = no
[anything]
commonName = supplied
[server]
subjectAltName = DNS:localhost, DNS:imap.mail.test, DNS:pop.mail.test
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
[wronghost]
subjectAltName = DNS:wrong.example
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
"""


def make_pki(pki):
    """Create the certificates described in the module docstring in PKI
    (a directory); returns {name: path}."""
    os.makedirs(os.path.join(pki, 'db'), exist_ok=True)
    with open(os.path.join(pki, 'db', 'index.txt'), 'w'):
        pass
    with open(os.path.join(pki, 'ca.cnf'), 'w') as f:
        f.write(_CA_CNF)
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    ca_ext = ['-addext', 'basicConstraints=critical,CA:TRUE',
              '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
    leaf_ext = ['-addext', 'subjectAltName=DNS:localhost',
                '-addext', 'basicConstraints=CA:FALSE',
                '-addext', 'extendedKeyUsage=serverAuth']
    _openssl('req', '-x509', *ec, '-keyout', 'ca.key', '-out', 'ca.pem',
             '-days', '3650', '-subj', '/O=mailfs tests/CN=mailfs test CA',
             *ca_ext, cwd=pki)
    _openssl('req', '-x509', *ec, '-keyout', 'unknown-ca.key', '-out', 'unknown-ca.pem',
             '-days', '3650', '-subj', '/O=elsewhere/CN=unrelated test CA',
             *ca_ext, cwd=pki)
    _openssl('req', '-x509', *ec, '-keyout', 'selfsigned.key', '-out', 'selfsigned.pem',
             '-days', '3650', '-subj', '/CN=localhost', *leaf_ext, cwd=pki)

    def leaf(name, ext, ca='ca', dates=('-days', '3650')):
        _openssl('req', '-new', *ec, '-keyout', name + '.key', '-out', name + '.csr',
                 '-subj', '/CN=localhost', cwd=pki)
        _openssl('ca', '-batch', '-notext', '-config', 'ca.cnf', '-extensions', ext,
                 '-cert', ca + '.pem', '-keyfile', ca + '.key',
                 '-in', name + '.csr', '-out', name + '.pem', *dates, cwd=pki)

    leaf('server', 'server')
    leaf('expired', 'server',
         dates=('-startdate', '20200101000000Z', '-enddate', '20200201000000Z'))
    leaf('wronghost', 'wronghost')
    leaf('unknown', 'server', ca='unknown-ca')
    names = ['ca', 'server', 'expired', 'wronghost', 'unknown-ca', 'unknown', 'selfsigned']
    paths = {}
    for n in names:
        paths[n] = os.path.join(pki, n + '.pem')
        paths[n + '.key'] = os.path.join(pki, n + '.key')
        os.chmod(paths[n + '.key'], 0o600)
    return paths


class TLSFakeServer:
    """A TLS server on 127.0.0.1 (free port) that completes the handshake if
    the client lets it, sends GREETING, then reads and discards until the
    client closes (or 10 s pass).  For certificate-failure tests.

        with TLSFakeServer(cert, key) as srv:  ...  srv.port ...
    """

    def __init__(self, certfile, keyfile, greeting=b'* OK fake\r\n'):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.greeting = greeting
        self.host, self.address = 'localhost', '127.0.0.1'
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.address, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0          # completed server-side handshakes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                tls.sendall(self.greeting)
                while not self._stop.is_set() and tls.recv(4096):
                    pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------ generated mail

_FIRST = ['Anna', 'Bernd', 'Chloé', 'David', 'Emma', 'François', 'Greta', 'Hiro',
          'Ines', 'Jürgen', 'Kim', 'Lars', 'María', 'Noah', 'Olga', 'Pedro', 'Quinn',
          'Rosa', 'Sven', 'Tomás', 'Ute', 'Viktor', 'Wen', 'Yusuf', 'Zoë']
_LAST = ['Meier', 'Smith', 'Dubois', 'García', 'Nakamura', 'Kowalski', 'Rossi',
         'Jensen', 'Öztürk', 'Nguyen', 'Müller', 'Brown', 'Lefèvre', 'Silva']
_DOMAINS = ['example.com', 'example.net', 'example.org', 'mail.example.de',
            'lists.example.io']
_WORDS = ('the project meeting report budget review draft schedule release server '
          'backup invoice holiday train ticket weather garden kitchen update notes '
          'deadline customer feedback design test results question answer coffee '
          'tomorrow morning afternoon week month quarter please thanks regards '
          'attached file version change issue fix build mirror network storage '
          'Grüße über Straße naïve café déjà vu señor smörgåsbord').split()
_SUBJECTS = ['Meeting on {d}', 'Re: {w} {w}', 'Fwd: {w} report', '{W} for {d}',
             'Invoice #{n}', 'Your {w} is ready', 'Question about the {w}',
             '[list] {W} {w} {w}', 'Grüße aus {W}', 'Re: Re: {w}?', '{W} — {w} ✓']


def _words(rng, n):
    return ' '.join(rng.choice(_WORDS) for _ in range(n))


def _paragraphs(rng, size):
    lines, total = [], 0
    while total < size:
        for _ in range(rng.randint(2, 6)):
            line = _words(rng, rng.randint(6, 12))
            line = line[0].upper() + line[1:] + '.'
            lines.append(line)
            total += len(line) + 2
        lines.append('')
    return '\r\n'.join(lines) + '\r\n'


def _encoded_word(s):
    try:
        s.encode('ascii')
        return s
    except UnicodeEncodeError:
        return '=?UTF-8?B?' + base64.b64encode(s.encode()).decode() + '?='


def _address(rng):
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    addr = '%s.%s@%s' % (first.lower(), last.lower(), rng.choice(_DOMAINS))
    addr = unicodedata.normalize('NFKD', addr).encode('ascii', 'ignore').decode()
    return '%s <%s>' % (_encoded_word('%s %s' % (first, last)), addr)


def generate_messages(n, seed=0, to='alice@example.org'):
    """N realistic messages (bytes, CRLF line ends) with their dates:
    [(bytes, datetime)].  Deterministic for a given seed.  About 10 % carry a
    base64 attachment (2-40 KB), 20 % are multipart/alternative; most are a
    few KB."""
    rng = random.Random(seed)
    base = datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)
    out, ids = [], []
    for i in range(n):
        date = base + datetime.timedelta(seconds=rng.randint(0, 3 * 365 * 86400))
        date = date.astimezone(datetime.timezone(datetime.timedelta(
            hours=rng.choice([-5, 0, 1, 2, 9]))))
        msgid = '<%d.%d.%08x@%s>' % (seed, i, rng.getrandbits(32), rng.choice(_DOMAINS))
        subject = rng.choice(_SUBJECTS).format(
            d=date.strftime('%d %b'), w=rng.choice(_WORDS), W=rng.choice(_WORDS).title(),
            n=rng.randint(1000, 99999))
        h = ['Return-Path: <bounce-%d@example.net>' % i,
             'Received: from mx%d.example.net (mx%d.example.net [192.0.2.%d])\r\n'
             '\tby mail.example.org (Postfix) with ESMTPS id %X\r\n\tfor <%s>; %s'
             % (i % 7, i % 7, i % 250 + 1, rng.getrandbits(40), to,
                email.utils.format_datetime(date)),
             'From: ' + _address(rng),
             'To: ' + to]
        if rng.random() < 0.3:
            h.append('Cc: ' + ', '.join(_address(rng) for _ in range(rng.randint(1, 3))))
        h += ['Subject: ' + _encoded_word(subject),
              'Date: ' + email.utils.format_datetime(date),
              'Message-ID: ' + msgid]
        if ids and rng.random() < 0.25:
            parent = rng.choice(ids)
            h += ['In-Reply-To: ' + parent, 'References: ' + parent]
        ids.append(msgid)
        h.append('MIME-Version: 1.0')
        text = _paragraphs(rng, rng.choice([300, 800, 1500, 3000, 6000]))
        kind = rng.random()
        boundary = '=_%d_%08x' % (i, rng.getrandbits(32))
        if kind < 0.1:
            blob = rng.randbytes(rng.randint(2000, 40000))
            b64 = base64.b64encode(blob).decode()
            b64 = '\r\n'.join(b64[j:j + 76] for j in range(0, len(b64), 76))
            fname = rng.choice(['report.pdf', 'photo.jpg', 'data.bin', 'scan.png',
                                'Übersicht.pdf'])
            h.append('Content-Type: multipart/mixed; boundary="%s"' % boundary)
            body = ('This is a multi-part message in MIME format.\r\n\r\n'
                    '--%s\r\nContent-Type: text/plain; charset=utf-8\r\n'
                    'Content-Transfer-Encoding: 8bit\r\n\r\n%s\r\n'
                    '--%s\r\nContent-Type: application/octet-stream; name="%s"\r\n'
                    'Content-Transfer-Encoding: base64\r\n'
                    'Content-Disposition: attachment; filename="%s"\r\n\r\n%s\r\n'
                    '--%s--\r\n' % (boundary, text, boundary, _encoded_word(fname),
                                    _encoded_word(fname), b64, boundary))
        elif kind < 0.3:
            html = ''.join('<p>%s</p>\r\n' % p for p in text.split('\r\n\r\n') if p)
            h.append('Content-Type: multipart/alternative; boundary="%s"' % boundary)
            body = ('--%s\r\nContent-Type: text/plain; charset=utf-8\r\n'
                    'Content-Transfer-Encoding: 8bit\r\n\r\n%s\r\n'
                    '--%s\r\nContent-Type: text/html; charset=utf-8\r\n'
                    'Content-Transfer-Encoding: 8bit\r\n\r\n<html><body>\r\n%s'
                    '</body></html>\r\n--%s--\r\n' % (boundary, text, boundary, html,
                                                      boundary))
        else:
            h += ['Content-Type: text/plain; charset=utf-8; format=flowed',
                  'Content-Transfer-Encoding: 8bit']
            body = text
        out.append((('\r\n'.join(h) + '\r\n\r\n' + body).encode('utf-8'), date))
    return out


# ----------------------------------------------------------------- corpus

def split_mbox(data):
    """Messages of an mbox (bytes): split before each line starting with
    'From ', drop that line, change nothing else (no >From unquoting; the
    blank line before the next 'From ' stays with the message)."""
    msgs, cur = [], None
    for line in data.splitlines(keepends=True):
        if line.startswith(b'From '):
            if cur is not None:
                msgs.append(b''.join(cur))
            cur = []
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        msgs.append(b''.join(cur))
    return msgs


def corpus_messages(root=None):
    """{mailbox: [(label, bytes)]} for the corpus, in load order:
    corpus/spamassassin-nice, corpus/spamassassin-spam (every file below
    spamassassin/nice and /spam, one message each), corpus/imaptest
    (imaptest/*.mbox split with split_mbox, label FILE#N), corpus/postal-mime
    (postal-mime/*.eml)."""
    root = root or corpus_dir()
    if not os.path.isdir(root):
        raise HarnessError('corpus not found at %s (set MAILFS_CORPUS)' % root)
    out = {}

    def read(path):
        with open(path, 'rb') as f:
            return f.read()

    for kind in ('nice', 'spam'):
        top = os.path.join(root, 'spamassassin', kind)
        files = []
        for d, _, names in os.walk(top):
            files += [os.path.join(d, n) for n in names]
        out['corpus/spamassassin-' + kind] = [
            (os.path.relpath(p, root), read(p)) for p in sorted(files)]
    msgs = []
    for name in sorted(os.listdir(os.path.join(root, 'imaptest'))):
        if name.endswith('.mbox'):
            for i, m in enumerate(split_mbox(read(os.path.join(root, 'imaptest', name)))):
                msgs.append(('imaptest/%s#%d' % (name, i + 1), m))
    out['corpus/imaptest'] = msgs
    pm = os.path.join(root, 'postal-mime')
    out['corpus/postal-mime'] = [('postal-mime/' + n, read(os.path.join(pm, n)))
                                 for n in sorted(os.listdir(pm)) if n.endswith('.eml')]
    return out


def _header_date(msg):
    """The Date: header as an aware datetime, or None."""
    m = re.search(rb'^Date:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)', msg.split(b'\n\n')[0],
                  re.M | re.I)
    if not m:
        return None
    try:
        d = email.utils.parsedate_to_datetime(m.group(1).decode('ascii', 'replace'))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if d is None or not 1971 <= d.year <= 2099:
        return None
    return d if d.tzinfo else d.replace(tzinfo=datetime.timezone.utc)


# ------------------------------------------------------------- IMAP parsing

_ATOM_OR_QUOTED = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|(NIL)|([^\s()]+))', re.I)


def _parse_list_item(item):
    """One imaplib LIST entry -> (attributes set, delimiter or None, raw name)."""
    literal = None
    if isinstance(item, tuple):
        item, literal = item
    m = re.match(rb'\(([^)]*)\)\s*', item)
    if not m:
        raise HarnessError('bad LIST response %r' % (item,))
    attrs = set(a.decode() for a in m.group(1).split())
    rest = item[m.end():]
    m = _ATOM_OR_QUOTED.match(rest)
    delim = None if m.group(2) else re.sub(rb'\\(.)', rb'\1', m.group(1) or m.group(3))
    rest = rest[m.end():].strip()
    if literal is not None:
        name = literal
    elif rest.startswith(b'"'):
        name = re.sub(rb'\\(.)', rb'\1', rest[1:-1])
    else:
        name = rest
    return attrs, (delim.decode() if delim is not None else None), name


def _uidset(s):
    out = []
    for part in s.split(','):
        a, _, b = part.partition(':')
        out += range(int(a), int(b or a) + 1)
    return out


# ------------------------------------------------------------------ Dovecot

_instances = []


def _cleanup_all():
    for dc in list(_instances):
        try:
            dc.close()
        except Exception as e:  # keep stopping the others
            print('mailharness: cleanup: %s' % e, file=sys.stderr)


atexit.register(_cleanup_all)


_WATCHDOG = r"""
import os, shutil, signal, sys, time
match, tmpdir, pid = sys.argv[1], sys.argv[2], 0
for line in sys.stdin:
    if line.startswith('closed'):
        sys.exit(0)
    pid = int(line.split()[1])

def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
    except OSError:
        return True

if pid and alive(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            ours = match.encode() in f.read()
    except OSError:
        ours = True
    if ours:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
if tmpdir:
    shutil.rmtree(tmpdir, ignore_errors=True)
"""


class Watchdog:
    """A small process, in its own session, that cleans up after us if we
    die (SIGKILL, meson's timeout, a crash) before close(): it SIGTERMs the
    process last given to watch() -- only if that pid's command line contains
    MATCH, so a reused pid is safe -- waits for it (<= 15 s), SIGKILLs what is
    left of its process group, and removes TMPDIR if given.  It learns about
    our death from EOF on a pipe only we hold."""

    def __init__(self, match, tmpdir=''):
        # stdout/stderr to /dev/null: holding a caller's pipe open would make
        # whoever reads it to EOF wait for us.
        self.proc = subprocess.Popen([sys.executable, '-c', _WATCHDOG, match, tmpdir],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def _say(self, line):
        self.proc.stdin.write(line.encode() + b'\n')
        self.proc.stdin.flush()

    def watch(self, pid):
        """The process to stop if we die (a process group leader); 0: none."""
        self._say('pid %d' % pid)

    def close(self):
        """We cleaned up ourselves: the watchdog exits doing nothing."""
        if self.proc is None:
            return
        try:
            self._say('closed')
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


_CONF = """\
# Generated by mailharness.py: a private, throwaway Dovecot.
instance_name = {name}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/log/dovecot.log
info_log_path = {dir}/log/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
protocols = imap pop3
listen = {listen}
shutdown_clients = yes
{users_conf}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:~/Maildir:LAYOUT={layout}
mail_fsync = never
mailbox_list_index = yes
{zlib_conf}
{quota_conf}
ssl = required
ssl_cert = <{pki}/server.pem
ssl_key = <{pki}/server.key
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = no

# Refuse any login that is not over TLS: Dovecot itself lets 127.0.0.1 log in
# in plaintext (see the module docstring).  %{{secured}} is "" or "secured"
# without TLS, "TLS" with it.
passdb {{
  driver = passwd-file
  args = username_format=notls%{{secured}} {dir}/notls
  deny = yes
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
  default_fields = home={dir}/home/%u
}}

namespace inbox {{
  inbox = yes
  separator = {sep}
  prefix =
{special}
}}

protocol imap {{
  mail_max_userip_connections = 100
{imap_zlib_conf}{imap_plugins}
}}
protocol pop3 {{
  mail_max_userip_connections = 100
}}

# No auth penalty: anvil would delay every later login from 127.0.0.1 by
# 2..15 s after a failed one (mode 0 = no listener = penalty disabled).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
"""


class Dovecot:
    """One private Dovecot.  Constructing it prepares the directory (config,
    PKI, users) and starts the server; close() (or the context manager, or
    interpreter exit) stops it and removes a temporary directory.

    directory   where everything lives; None: a new temporary directory,
                removed by close().  A given directory is kept.
    users       {name: password}; default alice/alicepw, bob/bobpw.
    separator   hierarchy separator, "/" (default) or ".".
    ipv6        also listen on ::1; default: if the machine has it.
    start       start the server now (default True).
    compress    offer COMPRESS=DEFLATE after login (RFC 4978: the zlib and
                imap_zlib plugins); default True, so that every test of a
                client that uses it by default (mailfs, imapcli) runs over
                the compressed path, as against Gmail; False for the plain
                path (most servers, and whatever proxy rewrites lines).
    quota       None, or the quota plugin's rule for every user (QUOTA,
                RFC 9208, in IMAP): e.g. 'storage=100M' or
                'storage=10M:messages=50' (Dovecot's quota_rule after "*:")

    Attributes: dir, host ("localhost"), address ("127.0.0.1"), ipv6 (bool),
    ports {"imap", "imaps", "pop3", "pop3s": int}, ca (path of the CA
    certificate to trust), pki {name: path}, users, separator, config,
    log_path, pid (the master's, None when stopped).
    """

    def __init__(self, directory=None, users=None, separator='/', ipv6=None, start=True,
                 compress=True, quota=None):
        if separator not in ('/', '.'):
            raise ValueError('separator must be "/" or "."')
        for p in ('dovecot', 'doveadm', 'openssl'):
            if not find_program(p):
                raise HarnessError('%s not found' % p)
        self._tmp = directory is None
        self.dir = os.path.abspath(directory or tempfile.mkdtemp(prefix='mailfs-dovecot-'))
        os.makedirs(self.dir, exist_ok=True)
        self.users = dict(users or DEFAULT_USERS)
        self.separator = separator
        self.compress = compress
        self.quota = quota
        self.ipv6 = have_ipv6_loopback() if ipv6 is None else ipv6
        self.host, self.address = 'localhost', '127.0.0.1'
        self.config = os.path.join(self.dir, 'dovecot.conf')
        self.log_path = os.path.join(self.dir, 'log', 'dovecot.log')
        self.proc = None
        self._started = False
        self._watchdog = None
        self._stderr = None
        self._tag = 0
        _instances.append(self)
        try:
            # From now on the directory and server are cleaned up even if we die.
            self._watchdog = Watchdog(self.config, self.dir if self._tmp else '')
            self._prepare()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # ----- setup

    def _prepare(self):
        if len(os.path.join(self.dir, 'run', 'token-login', 'tokenlogin')) > 100:
            raise HarnessError('directory path too long for unix sockets: %s' % self.dir)
        if os.geteuid() == 0:       # login/auth: the default dovenull/dovecot users
            nobody = pwd.getpwnam('nobody')
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            os.chmod(self.dir, 0o755)
            d = os.path.dirname(self.dir)
            while d != os.path.dirname(d):
                if not os.stat(d).st_mode & 0o001:
                    raise HarnessError('%s is not searchable by others; Dovecot runs '
                                       'mail as nobody and auth as dovecot' % d)
                d = os.path.dirname(d)
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
        for sub in ('run', 'state', 'log', 'home'):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        os.chmod(os.path.join(self.dir, 'run'), 0o755)
        os.chown(os.path.join(self.dir, 'home'), self.mail_uid, self.mail_gid)
        pki = os.path.join(self.dir, 'pki')
        if os.path.exists(os.path.join(pki, 'selfsigned.pem')):
            self.pki = {}
            for n in os.listdir(pki):
                if n.endswith('.pem'):
                    self.pki[n[:-4]] = os.path.join(pki, n)
                    self.pki[n[:-4] + '.key'] = os.path.join(pki, n[:-4] + '.key')
        else:
            self.pki = make_pki(pki)
        os.chmod(pki, 0o755)         # keys stay 0600; Dovecot's config process reads them
        self.ca = self.pki['ca']
        with open(os.path.join(self.dir, 'notls'), 'w') as f:
            f.write('notls:::::\nnotlssecured:::::\n')
        self._write_passwd()
        self.ports = dict(zip(('imap', 'imaps', 'pop3', 'pop3s'), free_ports(4, self.ipv6)))
        self._write_config()

    def _write_passwd(self):
        for u, p in self.users.items():
            if not re.fullmatch(r'[A-Za-z0-9._@+-]+', u) or ':' in p or '\n' in p:
                raise ValueError('bad user or password %r' % u)
        path = os.path.join(self.dir, 'passwd')
        try:
            old = int(os.stat(path).st_mtime)
        except FileNotFoundError:
            old = 0
        with open(path + '.new', 'w') as f:
            for u, p in self.users.items():
                f.write('%s:{PLAIN}%s:::::\n' % (u, p))
        os.chmod(path + '.new', 0o644)   # read by the auth process (user dovecot)
        # Dovecot re-reads the file when its mtime (seconds) changes.
        stamp = max(int(time.time()), old + 1)
        os.utime(path + '.new', (stamp, stamp))
        os.replace(path + '.new', path)

    def _write_config(self):
        special = '\n'.join('  mailbox %s {\n    special_use = %s\n    auto = subscribe\n  }'
                            % (n, su) for n, su in SPECIAL_USE)
        users_conf = ''
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            users_conf = ('default_login_user = %s\ndefault_internal_user = %s\n'
                          'default_internal_group = %s\n'
                          'service anvil {\n  chroot =\n}\n'
                          'service imap-login {\n  chroot =\n}\n'
                          'service pop3-login {\n  chroot =\n}\n' % (me, me, group))
        imap_plugins = quota_conf = ''
        if self.quota:
            imap_plugins = '  mail_plugins = $mail_plugins imap_quota'
            quota_conf = ('mail_plugins = $mail_plugins quota\n'
                          'plugin {\n  quota = count:User quota\n'
                          '  quota_rule = *:%s\n  quota_vsizes = yes\n}\n' % self.quota)
        conf = _CONF.format(imap_plugins=imap_plugins, quota_conf=quota_conf,
            name='mailfs-test-' + os.path.basename(self.dir), dir=self.dir,
            listen='127.0.0.1, ::1' if self.ipv6 else '127.0.0.1',
            users_conf=users_conf, uid=self.mail_uid, gid=self.mail_gid,
            layout='fs' if self.separator == '/' else 'index',
            pki=os.path.dirname(self.ca), sep=self.separator, special=special,
            zlib_conf='mail_plugins = $mail_plugins zlib\n' if self.compress else '',
            imap_zlib_conf=('  mail_plugins = $mail_plugins imap_zlib\n'
                            if self.compress else ''),
            **self.ports)
        with open(self.config, 'w') as f:
            f.write(conf)

    def add_user(self, name, password):
        """Add (or change) a user.  Dovecot re-reads the passwd file at most
        once a second, so when running this waits (<= 5 s) until the user can
        log in."""
        self.users[name] = password
        self._write_passwd()
        deadline = time.monotonic() + 5
        while self.pid:
            try:
                self.imap(name).logout()
                return
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise HarnessError('new user %s cannot log in' % name)
                time.sleep(0.2)

    # ----- life cycle

    @property
    def pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self):
        """Start Dovecot and wait (at most 15 s) until every listener greets.
        On failure, raise HarnessError with the tail of Dovecot's log.  The
        first start picks new ports (up to 3 times) if one was taken meanwhile."""
        if self.pid:
            return
        for attempt in range(3):
            try:
                self._start_once()
                self._started = True
                return
            except HarnessError as e:
                if self._started or 'Address already in use' not in str(e) or attempt == 2:
                    raise
                self.ports = dict(zip(('imap', 'imaps', 'pop3', 'pop3s'),
                                      free_ports(4, self.ipv6)))
                self._write_config()

    def _start_once(self):
        self._stderr = open(os.path.join(self.dir, 'log', 'stderr.log'), 'ab')
        log_start = self.log_size()
        self.proc = subprocess.Popen([find_program('dovecot'), '-F', '-c', self.config],
                                     stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, start_new_session=True)
        self._watchdog.watch(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        pending = dict(self.ports)
        while pending:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                self.stop()
                raise HarnessError('dovecot exited with status %s at start:\n%s'
                                   % (status, self.log_tail(since=log_start)))
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise HarnessError('dovecot did not accept connections within %.0f s:\n%s'
                                   % (START_TIMEOUT, self.log_tail(since=log_start)))
            for proto, port in list(pending.items()):
                if self._probe(proto, port, deadline):
                    del pending[proto]
            if pending:
                time.sleep(0.05)

    def _probe(self, proto, port, deadline):
        """True when PORT accepts; the plaintext ports must also greet (then
        the login and auth processes are up)."""
        try:
            with socket.create_connection((self.address, port), timeout=1) as s:
                if proto in ('imaps', 'pop3s'):
                    return True
                s.settimeout(max(0.1, min(5, deadline - time.monotonic())))
                return s.recv(64)[:3] in (b'* O', b'+OK')
        except OSError:
            return False

    def stop(self, kill=False, timeout=STOP_TIMEOUT):
        """Stop the server: SIGTERM (SIGKILL if KILL) to the master, wait at
        most TIMEOUT s, then SIGKILL whatever remains of its process group.
        The mail, config and ports are kept; start() brings it back."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(pgid, signal.SIGCONT)        # in case it was frozen
                except ProcessLookupError:
                    pass
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            try:
                os.killpg(pgid, signal.SIGKILL)             # leftover children
            except ProcessLookupError:
                pass
        finally:
            self.proc = None
            self._watchdog.watch(0)
            if self._stderr:
                self._stderr.close()
                self._stderr = None

    def restart(self):
        self.stop()
        self.start()

    def freeze(self):
        """SIGSTOP every Dovecot process: connections hang (a stalled server)."""
        if not self.pid:
            raise HarnessError('not running')
        os.killpg(self.pid, signal.SIGSTOP)

    def thaw(self):
        """SIGCONT: undo freeze()."""
        if self.pid:
            os.killpg(self.pid, signal.SIGCONT)

    def close(self):
        """Stop; remove the directory if it was a temporary one."""
        try:
            self.stop()
        finally:
            if self in _instances:
                _instances.remove(self)
            if self._tmp and os.path.isdir(self.dir):
                shutil.rmtree(self.dir, ignore_errors=True)
            if self._watchdog:
                self._watchdog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----- information

    def log(self, since=0):
        """Dovecot's log (str) from byte offset SINCE."""
        return read_text(self.log_path, since)

    def log_size(self):
        """Current size of the log, to pass as SINCE to log() later."""
        return file_size(self.log_path)

    def log_tail(self, lines=30, since=0):
        text = self.log(since)
        try:
            with open(os.path.join(self.dir, 'log', 'stderr.log'), 'rb') as f:
                text += f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            pass
        return '\n'.join(text.splitlines()[-lines:])

    def url(self, scheme, user):
        """e.g. url('imaps', 'alice') -> 'imaps://alice@localhost:PORT'."""
        return '%s://%s@%s:%d' % (scheme, user, self.host, self.ports[scheme])

    def info(self):
        """What harness.json holds."""
        return {'dir': self.dir, 'dovecot_pid': self.pid, 'host': self.host,
                'address': self.address, 'ipv6': self.ipv6, 'ports': self.ports,
                'ca': self.ca, 'pki': self.pki, 'users': self.users,
                'separator': self.separator, 'config': self.config,
                'log': self.log_path,
                'urls': {s: self.url(s, u) for u in list(self.users)[:1]
                         for s in self.ports}}

    # ----- clients

    def ssl_context(self):
        """A client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=self.ca)

    def _secret(self, user, password):
        return self.users[user] if password is None else password

    def imap(self, user, password=None):
        """A logged-in imaplib.IMAP4_SSL on the imaps port (host localhost,
        certificate verified)."""
        m = imaplib.IMAP4_SSL(self.host, self.ports['imaps'], ssl_context=self.ssl_context(),
                              timeout=IO_TIMEOUT)
        return _set_up(m, m.shutdown, lambda: m.login(user, self._secret(user, password)))

    def imap_starttls(self, user=None, password=None):
        """imaplib.IMAP4 on the imap port after STARTTLS; logged in if USER."""
        m = imaplib.IMAP4(self.host, self.ports['imap'], timeout=IO_TIMEOUT)

        def steps():
            m.starttls(ssl_context=self.ssl_context())
            if user:
                m.login(user, self._secret(user, password))
        return _set_up(m, m.shutdown, steps)

    def _pop3_login(self, p, user, password):
        p.user(user)
        p.pass_(self._secret(user, password))

    def pop3(self, user, password=None):
        """A logged-in poplib.POP3_SSL on the pop3s port."""
        p = poplib.POP3_SSL(self.host, self.ports['pop3s'], context=self.ssl_context(),
                            timeout=IO_TIMEOUT)
        return _set_up(p, p.close, lambda: self._pop3_login(p, user, password))

    def pop3_stls(self, user=None, password=None):
        """poplib.POP3 on the pop3 port after STLS; logged in if USER."""
        p = poplib.POP3(self.host, self.ports['pop3'], timeout=IO_TIMEOUT)

        def steps():
            p.stls(context=self.ssl_context())
            if user:
                self._pop3_login(p, user, password)
        return _set_up(p, p.close, steps)

    def bad_cert_server(self, kind='expired', greeting=b'* OK fake\r\n'):
        """A TLSFakeServer presenting a bad certificate: kind 'expired'
        (Python: "certificate has expired"), 'unknown' (leaf from an unrelated
        CA: "unable to get local issuer certificate"), 'selfsigned'
        ("self-signed certificate"), 'wronghost' (SAN wrong.example: "Hostname
        mismatch").  Use as a context manager; .host, .address, .port."""
        return TLSFakeServer(self.pki[kind], self.pki[kind + '.key'], greeting)

    # ----- raw IMAP (imaplib cannot send bytes unchanged or pipeline)

    def _command(self, m, parts):
        """Send PARTS (bytes, joined) as one command on imaplib connection M,
        after a fresh tag; return the tagged response line.  Non-OK raises."""
        self._tag += 1
        tag = b'H%d' % self._tag
        m.send(b''.join([tag, b' '] + parts))
        return self._tagged(m, tag, parts[0][:60])

    @staticmethod
    def _tagged(m, tag, what):
        while True:
            line = m.readline()
            if not line:
                raise HarnessError('connection closed, no answer to %r' % what)
            if line.startswith(tag + b' '):
                if not line[len(tag) + 1:].upper().startswith(b'OK'):
                    raise HarnessError('%r -> %r' % (what, line))
                return line

    def _append_sync(self, m, head, data):
        """APPEND with a synchronizing literal: wait for '+' before the data."""
        self._tag += 1
        tag = b'H%d' % self._tag
        m.send(b'%s %s{%d}\r\n' % (tag, head, len(data)))
        while True:
            line = m.readline()
            if not line:
                raise HarnessError('connection closed during APPEND')
            if line.startswith(b'+'):
                break
            if line.startswith(tag + b' '):
                raise HarnessError('APPEND refused: %r' % line)
        m.send(data + b'\r\n')
        return self._tagged(m, tag, head[:60])

    @staticmethod
    def _append_args(flags, date):
        out = b''
        if flags:
            out += b'(' + ' '.join(flags).encode() + b') '
        if date is not None:
            out += imaplib.Time2Internaldate(date).encode() + b' '
        return out

    def _mbox_arg(self, mailbox):
        return imap_quote(utf7_encode(mailbox)).encode()

    def create(self, user, mailbox, special_use=None):
        """CREATE MAILBOX (UTF-8 str, encoded to modified UTF-7 here; parents
        appear as needed).  Already existing is fine."""
        m = self.imap(user)
        try:
            typ, data = m.create(imap_quote(utf7_encode(mailbox)))
            if typ != 'OK' and b'ALREADYEXISTS' not in b' '.join(data):
                raise HarnessError('CREATE %s: %r' % (mailbox, data))
        finally:
            m.logout()

    def append(self, user, mailbox, data, flags=(), date=None):
        """APPEND DATA (bytes, sent unchanged) to MAILBOX, creating it if
        needed.  FLAGS: e.g. ('\\\\Seen', '$Work').  DATE: datetime (aware),
        epoch seconds or time tuple, for INTERNALDATE.  Returns the new UID."""
        return self.append_many(user, mailbox, [(data, flags, date)], pipelined=False)[0]

    def append_many(self, user, mailbox, messages, pipelined=True):
        """APPEND many messages fast: MULTIAPPEND with LITERAL+ (no round
        trip per message), in batches of <= 500 messages / 8 MB, on one
        connection.  MESSAGES: iterable of bytes or (bytes, flags, date).
        Creates MAILBOX if needed.  Returns the new UIDs, in order."""
        m = self.imap(user)
        try:
            m.create(imap_quote(utf7_encode(mailbox)))   # NO if it exists: fine
            head = b'APPEND ' + self._mbox_arg(mailbox) + b' '
            uids, batch, size = [], [], 0

            def flush():
                if not batch:
                    return
                if pipelined:       # MULTIAPPEND: args {n+} data SP args {n+} data
                    parts = [head]
                    for i, (args, data) in enumerate(batch):
                        parts += [b' ' if i else b'', args, b'{%d+}\r\n' % len(data), data]
                    uids.extend(_appenduids(self._command(m, parts + [b'\r\n'])))
                else:
                    for args, data in batch:
                        uids.extend(_appenduids(self._append_sync(m, head + args, data)))
                batch.clear()

            for msg in messages:
                data, flags, date = (msg, (), None) if isinstance(msg, bytes) else msg
                if not data:
                    raise ValueError('IMAP cannot store an empty message')
                batch.append((self._append_args(flags, date), data))
                size += len(data)
                if len(batch) >= 500 or size > 8 << 20:
                    flush()
                    size = 0
            flush()
            return uids
        finally:
            m.logout()

    def generate(self, user, mailbox, n, seed=0):
        """Append N generate_messages(n, seed) to MAILBOX (INTERNALDATE = their
        Date:); returns the UIDs."""
        msgs = generate_messages(n, seed, to='%s@example.org' % user)
        return self.append_many(user, mailbox, [(b, (), d) for b, d in msgs])

    def load_corpus(self, user, root=None):
        """Append the corpus (corpus_messages()) to USER, bytes unchanged,
        INTERNALDATE from the Date: header when it parses.  Returns
        {mailbox: [uid, ...]} aligned with corpus_messages()[mailbox]."""
        out = {}
        for box, msgs in corpus_messages(root).items():
            out[box] = self.append_many(user, box, [(b, (), _header_date(b)) for _, b in msgs])
        return out

    # ----- reading back (an independent client)

    def list_mailboxes(self, user):
        """{decoded name: set of attributes} from LIST "" "*" (attributes
        include special-use ones, e.g. {'\\\\HasNoChildren', '\\\\Trash'})."""
        m = self.imap(user)
        try:
            typ, data = m.list('""', '*')
        finally:
            m.logout()
        out = {}
        for item in data:
            if item is None or item == b')':
                continue
            attrs, _, name = _parse_list_item(item)
            out[utf7_decode(name)] = attrs
        return out

    def status(self, user, mailbox):
        """{'MESSAGES', 'UIDNEXT', 'UIDVALIDITY', 'UNSEEN', 'HIGHESTMODSEQ': int}."""
        m = self.imap(user)
        try:
            typ, data = m.status(imap_quote(utf7_encode(mailbox)),
                                 '(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)')
        finally:
            m.logout()
        if typ != 'OK':
            raise HarnessError('STATUS %s: %r' % (mailbox, data))
        items = re.search(rb'\(([^)]*)\)\s*$', data[-1]).group(1).split()
        return {items[i].decode(): int(items[i + 1]) for i in range(0, len(items), 2)}

    def _examine(self, user, mailbox):
        m = self.imap(user)
        typ, data = m.select(imap_quote(utf7_encode(mailbox)), readonly=True)
        if typ != 'OK':
            m.logout()
            raise HarnessError('EXAMINE %s: %r' % (mailbox, data))
        return m

    def fetch_bodies(self, user, mailbox):
        """{uid: bytes} from UID FETCH 1:* (UID BODY.PEEK[]) -- exactly what
        the server serves (CRLF line ends, see the module docstring); does not
        set \\Seen."""
        m = self._examine(user, mailbox)
        try:
            typ, data = m.uid('FETCH', '1:*', '(UID BODY.PEEK[])')
        finally:
            m.logout()
        if typ != 'OK':
            raise HarnessError('FETCH: %r' % data)
        # imaplib gives (b'N (UID u BODY[] {len}', body) then b')' (or
        # b' UID u)' when UID comes after the literal); FLAGS-only
        # unsolicited FETCHes are plain bytes.
        out = {}
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            head, body = item
            if b'BODY[]' not in head.upper():
                continue
            uid = re.search(rb'UID (\d+)', head)
            if not uid and i + 1 < len(data) and isinstance(data[i + 1], bytes):
                uid = re.search(rb'UID (\d+)', data[i + 1])
            if not uid:
                raise HarnessError('FETCH response without UID: %r' % head)
            out[int(uid.group(1))] = body
        return out

    def fetch_items(self, user, mailbox, items):
        """{uid: the FETCH response (bytes)} of UID FETCH 1:* ITEMS in an
        EXAMINEd MAILBOX; ITEMS, e.g. '(UID FLAGS)', must not ask for a
        literal."""
        m = self._examine(user, mailbox)
        try:
            typ, data = m.uid('FETCH', '1:*', items)
        finally:
            m.logout()
        out = {}
        for item in data:
            if isinstance(item, tuple):
                item = item[0]
            if not item:
                continue
            uid = re.search(rb'UID (\d+)', item)
            if uid:
                out[int(uid.group(1))] = item
        return out

    def flags(self, user, mailbox):
        """{uid: set of flags} (e.g. {'\\\\Seen', '$Work'}); \\Recent, which
        depends on the session, is left out."""
        out = {}
        for uid, item in self.fetch_items(user, mailbox, '(UID FLAGS)').items():
            fl = re.search(rb'FLAGS \(([^)]*)\)', item)
            if fl:
                out[uid] = set(f.decode() for f in fl.group(1).split()
                               if f.upper() != b'\\RECENT')
        return out

    def meta(self, user, mailbox):
        """{uid: (RFC822.SIZE, INTERNALDATE as epoch seconds)}."""
        out = {}
        for uid, item in self.fetch_items(user, mailbox,
                                          '(UID RFC822.SIZE INTERNALDATE)').items():
            size = re.search(rb'RFC822\.SIZE (\d+)', item)
            date = re.search(rb'INTERNALDATE "([^"]+)"', item)
            if size and date:
                when = datetime.datetime.strptime(date.group(1).decode().strip(),
                                                  '%d-%b-%Y %H:%M:%S %z')
                out[uid] = (int(size.group(1)), int(when.timestamp()))
        return out

    def pop3_messages(self, user):
        """{uidl: bytes} over POP3S with UIDL and RETR.  poplib hands back
        lines with their CRLF removed and a leading '..' un-stuffed to '.';
        each line gets CRLF back here.  So the result equals BODY[] for a
        message that ends in a newline, and has an extra CRLF for one that
        does not (Dovecot terminates the last line before the final '.').
        RETR sets \\Seen on the messages (Dovecot's default)."""
        p = self.pop3(user)
        try:
            out = {}
            for entry in p.uidl()[1]:
                num, uidl = entry.split()
                out[uidl.decode()] = b''.join(line + b'\r\n' for line in p.retr(int(num))[1])
            return out
        finally:
            p.quit()

    def doveadm(self, *args, check=True, timeout=60):
        """Run doveadm -c <this config> ARGS; returns CompletedProcess (text).
        E.g. doveadm('mailbox', 'update', '-u', 'alice', '--uid-validity',
        '123', 'INBOX'), doveadm('expunge', '-u', 'alice', 'mailbox', 'INBOX',
        'uid', '3').  Mailbox names on the doveadm command line are UTF-8."""
        r = subprocess.run([find_program('doveadm'), '-c', self.config] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise HarnessError('doveadm %s: exit %d: %s' % (' '.join(args), r.returncode,
                                                            r.stderr.strip()))
        return r


def _set_up(conn, close, steps):
    """CONN once STEPS() ran; if they fail, CLOSE() and raise."""
    try:
        steps()
    except BaseException:
        close()
        raise
    return conn


def _appenduids(line):
    m = re.search(rb'\[APPENDUID \d+ ([0-9:,]+)\]', line)
    if not m:
        raise HarnessError('no APPENDUID in %r' % line)
    return _uidset(m.group(1).decode())


# ---------------------------------------------------------------------- CLI

def _serve(args):
    users = {}
    for spec in args.users or []:
        for item in spec.split(','):
            name, sep, pw = item.partition(':')
            if not sep:
                sys.exit('--users wants NAME:PASSWORD, got %r' % item)
            users[name] = pw
    directory = os.path.abspath(args.dir)
    if os.path.isdir(directory) and set(os.listdir(directory)) - {'serve.log', 'serve.pid'}:
        sys.exit('%s is not empty' % directory)
    stop = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stop.append(signum))
    dc = Dovecot(directory, users or None, separator=args.separator)
    try:
        first = next(iter(dc.users))
        loaded = {}
        if args.corpus:
            loaded.update({k: len(v) for k, v in dc.load_corpus(first).items()})
        if args.generate:
            loaded[args.mailbox] = len(dc.generate(first, args.mailbox, args.generate,
                                                   args.seed))
        info = dc.info()
        info.update(pid=os.getpid(), mailboxes=loaded)
        path = os.path.join(directory, 'harness.json')
        with open(path + '.new', 'w') as f:
            json.dump(info, f, indent=2)
        os.replace(path + '.new', path)
        print(json.dumps(info, indent=2), flush=True)
        while not stop:
            if dc.pid is None:
                print('dovecot died:\n' + dc.log_tail(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        dc.close()
        try:
            os.unlink(os.path.join(directory, 'harness.json'))
        except FileNotFoundError:
            pass


def _detach(args, argv):
    """Run `serve` (without --detach) in the background; wait for
    harness.json, print it, exit."""
    if os.path.isdir(args.dir) and os.listdir(args.dir):
        sys.exit('%s is not empty' % args.dir)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, 'harness.json')
    argv = [a for a in argv if a != '--detach']
    with open(os.path.join(args.dir, 'serve.log'), 'ab') as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    with open(os.path.join(args.dir, 'serve.pid.new'), 'w') as f:
        f.write('%d\n' % proc.pid)
    os.replace(os.path.join(args.dir, 'serve.pid.new'), os.path.join(args.dir, 'serve.pid'))
    deadline = time.monotonic() + 60 + (args.generate or 0) / 50 + (100 if args.corpus else 0)
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            with open(os.path.join(args.dir, 'serve.log')) as f:
                sys.exit('serve failed:\n' + f.read()[-3000:])
        time.sleep(0.1)
    with open(path) as f:
        print(f.read(), flush=True)
    return 0


def _stop(args):
    path = os.path.join(args.dir, 'harness.json')
    try:
        with open(path) as f:
            pid = json.load(f)['pid']
    except FileNotFoundError:
        sys.exit('no %s: not running' % path)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists(path):
        sys.exit('pid %d did not stop within 30 s' % pid)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog='mailharness.py', description='A throwaway Dovecot for mailfs tests and demos.',
        epilog='Example: mailharness.py serve --dir /tmp/dc --corpus --generate 1000 '
               '--detach; ...; mailharness.py stop --dir /tmp/dc')
    sub = ap.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('serve', help='start Dovecot in DIR, load mail, write DIR/harness.json '
                       'and run until SIGTERM/SIGINT')
    s.add_argument('--dir', required=True, help='empty or new directory for everything')
    s.add_argument('--users', action='append', metavar='NAME:PW[,NAME:PW]',
                   help='users (default alice:alicepw,bob:bobpw); mail goes to the first')
    s.add_argument('--corpus', action='store_true', help='load the corpus into corpus/*')
    s.add_argument('--generate', type=int, metavar='N', help='append N generated messages')
    s.add_argument('--mailbox', default='INBOX', help='mailbox for --generate (INBOX)')
    s.add_argument('--seed', type=int, default=0, help='seed for --generate (0)')
    s.add_argument('--separator', default='/', choices=['/', '.'])
    s.add_argument('--detach', action='store_true',
                   help='run in the background; return once harness.json is written')
    t = sub.add_parser('stop', help='stop the server started with serve --dir DIR')
    t.add_argument('--dir', required=True)
    args = ap.parse_args(argv)
    require_dovecot()
    if args.cmd == 'stop':
        return _stop(args)
    if args.detach:
        return _detach(args, argv)
    return _serve(args)


if __name__ == '__main__':
    sys.exit(main())
