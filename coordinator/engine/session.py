"""Session: one etcd lease per host, kept alive, resumable after a restart.

Everything a host holds in etcd (lock queue entries, activation leases) is
attached to its session lease, so a dead host's claims vanish on their own.
The lease id is kept in a state file: a daemon restarted within the TTL
resumes the *same* lease, so a restart never opens a window in which
another host could take an LV that is in use here.
"""
import json
import logging
import os
import threading
import time

from coordinator import errors
from coordinator import release
from coordinator.engine import etcd as etcdlib
from coordinator.engine import identity

LOG = logging.getLogger(__name__)


class Session:
    """This host's etcd lease, its keepalive, and its loss detection."""

    def __init__(self, etcd, keys, host, ttl=10, keepalive_interval=None,
                 state_file=None, keepalive_etcd=None, machine=None):
        self.etcd = etcd
        # Keepalives go through a client with short timeouts, so a hung
        # member (a stopped leader) costs a fraction of a second before the
        # next one is tried, not a whole request timeout.
        self.keepalive_etcd = keepalive_etcd or etcd
        self.keys = keys
        self.host = host
        self.ttl = int(ttl)
        # Six per TTL: a keepalive lost to an etcd election still leaves
        # most of the fence window (fraction * TTL) to recover in.
        self.interval = keepalive_interval or self.ttl / 6.0
        self.state_file = state_file
        # Recorded with the session: a host name is not an identity.
        self.machine = identity.machine_id(machine)
        # Extra fields other parts put in the session record (e.g. a
        # storage-fence key): {name: value}, merged as they are.
        # Which release opened it: `host list` and `upgrade finalize`.
        self.record_fields = release.fields()
        self.id = 0
        self.resumed = False
        self.lost = False
        # Monotonic time the last successful keepalive was *sent*: etcd's
        # deadline is at least this plus the TTL, which fencing relies on.
        self.last_ok = 0.0
        self.keepalive_rtt = 0.0
        self._on_lost = []
        self._stop = threading.Event()
        self._thread = None

    def on_lost(self, callback):
        """Call ``callback(session)`` once when the lease is found expired."""
        self._on_lost.append(callback)

    def open(self):
        """Resume the persisted lease if still alive, else grant a new one;
        NameTaken (nothing written) if another machine's session is live
        under this host name."""
        sent = time.monotonic()
        lease_id = self._resume()
        if lease_id:
            self.resumed = True
        else:
            self.resumed = False
            lease_id = self.etcd.lease_grant(self.ttl)
        try:
            self._claim(lease_id)
        except identity.NameTaken:
            if not self.resumed:
                self.etcd.lease_revoke(lease_id)
            raise
        if self.resumed:
            LOG.info('resumed session %x for %s', lease_id, self.host)
        else:
            LOG.info('opened session %x for %s (ttl %ss)', lease_id,
                     self.host, self.ttl)
        self.id, self.lost, self.last_ok = lease_id, False, sent
        self._save()
        self._beat(sent)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._keepalive_loop,
                                            name='session-keepalive',
                                            daemon=True)
            self._thread.start()
        return self

    def record(self, lease_id):
        """The session record (JSON: other fields may join it)."""
        return dict(self.record_fields, host=self.host, lease=lease_id,
                    pid=os.getpid(), ttl=self.ttl, since=time.time(),
                    **identity.fields(self.machine, self._state_dir()))

    def _state_dir(self):
        return os.path.dirname(os.path.abspath(self.state_file)) \
            if self.state_file else None

    def _claim(self, lease_id):
        # Read, judge, then write guarded by what was read: a record
        # written meanwhile (another machine's) is judged in turn, never
        # overwritten.
        key = self.keys.session(self.host)
        while True:
            kv = self.etcd.get(key)
            why = identity.conflict(kv.json() if kv else None, self.host,
                                    self.machine,
                                    lease_id if self.resumed else 0,
                                    self._state_dir())
            if why:
                raise identity.NameTaken(why)
            res = self.etcd.txn(
                [etcdlib.cmp_mod(key, kv.mod_revision if kv else 0)],
                [etcdlib.op_put(key, self.record(lease_id),
                                lease=lease_id)])
            if res.succeeded:
                return

    def reopen(self):
        """After a loss: drop the persisted id and open a fresh session."""
        self._forget()
        self.resumed = False
        return self.open()

    def _resume(self):
        if not self.state_file or not os.path.exists(self.state_file):
            return 0
        try:
            with open(self.state_file) as f:
                state = json.load(f)
            if state.get('host') != self.host:
                return 0
            lease_id = int(state['lease'])
        except (OSError, ValueError, KeyError) as exc:
            LOG.warning('ignoring unreadable session state %s: %s',
                        self.state_file, exc)
            return 0
        # Not another machine's (a cloned state dir): its lease is not
        # ours to keep alive.
        kv = self.etcd.get(self.keys.session(self.host))
        if identity.conflict(kv.json() if kv else None, self.host,
                             self.machine, lease_id, self._state_dir()):
            return 0
        # A keepalive both checks the lease exists and restarts its TTL.
        if self.etcd.lease_keepalive(lease_id) > 0:
            return lease_id
        return 0

    def _save(self):
        if not self.state_file:
            return
        tmp = self.state_file + '.tmp'
        os.makedirs(os.path.dirname(self.state_file) or '.', exist_ok=True)
        with open(tmp, 'w') as f:
            # 'daemon': the process that started this daemon's workers, so
            # they can tell this run's session from a dead run's.
            json.dump({'host': self.host, 'lease': self.id, 'ttl': self.ttl,
                       'daemon': os.getppid()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    def _beat(self, sent):
        # Other processes of the daemon (the fencer above all) read when
        # the last good keepalive was sent: CLOCK_MONOTONIC is one clock
        # for every process of the host.
        if self.state_file:
            # A name per thread: open() and the keepalive thread both beat.
            tmp = f'{self.state_file}.beat.{threading.get_ident()}.tmp'
            with open(tmp, 'w') as f:
                f.write(repr(sent))
            os.replace(tmp, self.state_file + '.beat')

    def _forget(self):
        if self.state_file:
            try:
                os.unlink(self.state_file)
            except FileNotFoundError:
                pass

    def _keepalive_loop(self):
        # Nothing may end this thread but close(): a dead keepalive is a
        # session that expires while everything else looks fine.
        while not self._stop.is_set():
            try:
                self._keepalive_once()
            except Exception:
                LOG.exception('session %x: keepalive step failed', self.id)
                self._stop.wait(0.1)

    def _keepalive_once(self):
        sent = time.monotonic()
        try:
            # One short attempt: a failing keepalive is retried soon
            # rather than blocking past the fencing deadline.
            ttl = self.keepalive_etcd.lease_keepalive(
                self.id, window=self.interval / 2)
        except errors.SessionLost:
            ttl = -1
        except errors.EtcdUnavailable as exc:
            LOG.warning('session %x keepalive failed (%.1fs silent): %s',
                        self.id, time.monotonic() - self.last_ok, exc)
            # Straight on to the next endpoint: the fence deadline runs.
            self._stop.wait(0.1)
            return
        if ttl <= 0:
            self._mark_lost()
            # Wait for reopen() instead of hammering a dead lease.
            while self.lost and not self._stop.wait(0.2):
                pass
            return
        self.last_ok = sent
        self.keepalive_rtt = time.monotonic() - sent
        self._beat(sent)
        self._stop.wait(self.interval)

    def _mark_lost(self):
        if self.lost:
            return
        self.lost = True
        LOG.error('session %x of %s has expired', self.id, self.host)
        for cb in list(self._on_lost):
            try:
                cb(self)
            except Exception:
                LOG.exception('session-lost callback failed')

    def silent_for(self):
        """Seconds since the last keepalive known to have reached etcd."""
        return time.monotonic() - self.last_ok

    def check(self):
        """Raise SessionLost unless the session is believed alive."""
        if self.lost or not self.id:
            raise errors.SessionLost(f'session of {self.host} has expired')
        if self.silent_for() >= self.ttl:
            raise errors.SessionLost(
                f'session of {self.host} silent for {self.silent_for():.1f}s '
                f'(ttl {self.ttl}s): treated as lost')

    def close(self, revoke=False):
        """Stop keepalives; ``revoke`` also releases everything held."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval + 1)
            self._thread = None
        if revoke and self.id:
            self.etcd.lease_revoke(self.id)
            self._forget()
            self.id = 0


class AttachedSession:
    """The session another process of this daemon keeps alive.

    Worker processes share the keepalive worker's lease: they read its id
    from the state file (it changes if the session is ever re-opened) and
    its health from the file's mtime, refreshed on every keepalive.
    """

    def __init__(self, host, ttl, state_file):
        self.host = host
        self.ttl = int(ttl)
        self.state_file = state_file
        self.resumed = False
        self._cache = {}

    def _read(self, path, parse):
        """``parse(text)`` of a file, re-read only when it was replaced or
        changed (the writers replace it: a new inode), None if unreadable."""
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(path, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._cache.get(path)
        if hit and hit[0] == stamp:
            return hit[1]
        try:
            with open(path) as f:
                value = parse(f.read())
        except (OSError, ValueError):
            return None
        self._cache[path] = (stamp, value)
        return value

    def _state(self):
        return self._read(self.state_file, json.loads)

    @property
    def id(self):
        state = self._state()
        return int(state['lease']) if state else 0

    @property
    def lost(self):
        return self.id == 0

    @property
    def last_ok(self):
        """Monotonic time the last good keepalive was sent (0: unknown)."""
        return self._read(self.state_file + '.beat', float) or 0.0

    def wait_open(self, timeout=60.0):
        """Block until the keepalive worker has opened the session."""
        deadline = time.monotonic() + timeout
        while not self.id or (self._state() or {}).get('daemon') != \
                os.getppid():
            if time.monotonic() > deadline:
                raise errors.SessionLost(f'no session opened for {self.host}'
                                         f' in {timeout:.0f}s')
            time.sleep(0.05)
        return self

    def silent_for(self):
        """Seconds since the keepalive worker last reached etcd."""
        last = self.last_ok
        return time.monotonic() - last if last else float('inf')

    def check(self):
        """Raise SessionLost unless the session is believed alive."""
        if not self.id or self.silent_for() >= self.ttl:
            raise errors.SessionLost(f'session of {self.host} is not alive '
                                     f'(silent {self.silent_for():.1f}s)')
