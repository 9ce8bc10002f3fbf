"""StorageFence: the connector plus what etcd records about it.

- `storage/mode`: the cluster's `[fence] storage` (first host writes it;
  a host configured otherwise is refused at start, naming both);
- `storage/keys/<host>`: the key this host registered, its session, when
  (no lease: another host must read it after the session is gone);
- `storage/fences/<host>-<key>`: a proven storage fence (who, which key,
  when, by whom, why).
"""
import logging
import threading
import time

from coordinator import errors
from coordinator.daemon import metrics
from coordinator.engine import etcd as etcdlib
from coordinator.storage import base
from coordinator.storage import parse

LOG = logging.getLogger(__name__)


class StorageFence:
    """Register this incarnation, and fence another at the storage."""

    def __init__(self, connector, etcd, keys, session, emit=None,
                 vgs=None):
        self.connector = connector
        # The VGs on the fenced LU (None: every VG): a takeover elsewhere
        # proves nothing by removing a key from this LU.
        self.vgs = set(vgs) if vgs else None
        self.etcd, self.keys, self.session = etcd, keys, session
        self.emit = emit or (lambda kind, **fields: None)
        # (host, session) proven fenced by this process: a key once
        # removed never comes back (a new incarnation has a new key).
        self._proven = set()
        self._mutex = threading.Lock()

    @property
    def mode(self):
        return self.connector.name

    @property
    def active(self):
        """Whether a removed key stops writes (scsi-pr)."""
        return self.connector.fences

    def check_mode(self):
        """Record the cluster's mode, or refuse ours if it differs."""
        key = self.keys.storage_mode()
        mine = {'mode': self.mode, 'host': self.session.host,
                'at': time.time()}
        res = self.etcd.txn([etcdlib.cmp_create(key, 0)],
                            [etcdlib.op_put(key, mine)],
                            [etcdlib.op_range(key)])
        if res.succeeded:
            return mine
        recorded = res.ranges[0][0].json()
        if recorded.get('mode') != self.mode:
            raise errors.InvalidInput(
                'fence.storage',
                f'this host is configured with storage = {self.mode}, the '
                f'cluster runs storage = {recorded.get("mode")} (recorded '
                f'by {recorded.get("host")} in {self.keys.storage_mode()})')
        return recorded

    def register(self):
        """Register the current session's key on every path; record it."""
        if not self.active:
            return {}
        key = base.key_for(self.session.id)
        # Under the new key, a write an older incarnation left queued
        # below (a multipath map with no path) would land once sent.
        drained = self.connector.drain()
        try:
            paths = self.connector.register(key)
        finally:
            # Also when REGISTER failed: nothing of ours writes before the
            # key is on the LU, and the next attempt drains again.
            self.connector.requeue(drained)
        self.etcd.put(self.keys.storage_key(self.session.host), {
            'key': parse.key_hex(key), 'session': self.session.id,
            'paths': paths, 'at': time.time()})
        LOG.info('storage: key %s registered (%s)', parse.key_hex(key),
                 ', '.join(f'{p}: {v}' for p, v in paths.items()))
        self.emit('storage-registered', key=parse.key_hex(key), paths=paths)
        return paths

    def repair(self, fresh):
        """Register the current key on paths whose nexus lacks it, if it
        is still on the LU and ``fresh()`` (our session provably alive)
        holds just before; the paths registered, or {}."""
        if not self.active or not self.session.id:
            return {}
        key = base.key_for(self.session.id)
        missing = self.connector.unregistered(key)
        if not missing:
            return {}
        if key not in self.connector.keys():
            # Preempted (every registration with it went at once): another
            # host may hold our LVs now; this key never comes back.
            LOG.error('storage: our key %s is gone from the LU (preempted);'
                      ' not registering it again', parse.key_hex(key))
            return {}
        if not fresh():
            return {}
        done = self.connector.register_paths(key, missing)
        LOG.warning('storage: key %s registered again on %s',
                    parse.key_hex(key), done)
        return done

    def registered(self):
        """Whether the current session's key is on the LU."""
        return self.active and self.session.id and \
            base.key_for(self.session.id) in self.connector.keys()

    def covers(self, vg):
        """Whether ``vg``'s PVs are on the fenced LU."""
        return self.active and (self.vgs is None or vg in self.vgs)

    def fence_lv(self, vg, host, session, why):
        """fence() for a takeover in ``vg``; None outside the LU."""
        return self.fence(host, session, why) if self.covers(vg) else None

    def fence(self, host, session, why):
        """True once ``host``'s incarnation ``session`` is proven unable to
        write the LU: its key preempted (with abort) and gone from READ
        KEYS, under a fencing reservation, and the fence recorded. False
        (logged) when it cannot be proven: the caller falls back to the
        host-side fence and its grace."""
        if not self.active or not session or host == self.session.host:
            # Our own older incarnation shares our nexuses: removing its
            # key proves nothing about devices on this host.
            return False
        with self._mutex:
            if (host, session) in self._proven:
                return True
        started = time.monotonic()
        try:
            if self.etcd.lease_ttl(session) > 0:
                # Its holder key is gone but the session lives (an entry
                # out of step): removing the key would cut a live host
                # off the LU. The grace decides, as without a fence.
                LOG.warning('storage: not fencing %s: session %x is alive',
                            host, session)
                return False
            victim = base.key_for(session)
            own = base.key_for(self.session.id)
            proven = self.connector.preempt(own, victim)
        except (base.StorageError, ValueError, errors.CoordError) as exc:
            LOG.error('storage: cannot fence %s (session %x): %s', host,
                      session, exc)
            metrics.PREEMPTS.labels(result='failed').inc()
            return False
        if not proven:
            LOG.error('storage: key %s of %s still registered after '
                      'PREEMPT AND ABORT', parse.key_hex(victim), host)
            metrics.PREEMPTS.labels(result='unproven').inc()
            return False
        took = time.monotonic() - started
        record = {'host': host, 'key': parse.key_hex(victim),
                  'session': session, 'by': self.session.host,
                  'at': time.time(), 'why': why, 'took': round(took, 3),
                  'aborted': getattr(self.connector, 'aborts', True)}
        try:
            self.etcd.put(self.keys.storage_fence(host, victim), record)
        except errors.CoordError as exc:
            LOG.error('storage: fence of %s not recorded: %s', host, exc)
            return False
        metrics.PREEMPTS.labels(result='proven').inc()
        with self._mutex:
            self._proven.add((host, session))
        LOG.warning('storage: fenced %s (key %s) for %s in %.3fs', host,
                    parse.key_hex(victim), why, took)
        self.emit('storage-fenced', victim=host, key=parse.key_hex(victim),
                  why=why, took=round(took, 3))
        return True


def load(conf, etcd, keys, session, emit=None, runner=None):
    """The StorageFence `[fence] storage` asks for."""
    fence = getattr(conf, 'fence', None)
    mode = getattr(fence, 'storage', 'none') if fence else 'none'
    if mode == 'scsi-pr':
        from coordinator.storage import scsi_pr
        connector = scsi_pr.ScsiPR(fence.storage_devices,
                                   fence.storage_reservation, runner)
    else:
        connector = base.NoStorageFence()
    vgs = (list(fence.storage_volume_groups) or
           list(conf.lvm.volume_groups)) if mode == 'scsi-pr' else None
    return StorageFence(connector, etcd, keys, session, emit, vgs)


class _Host:
    """Who we are, for the records written before a session exists."""

    def __init__(self, host):
        self.host, self.id = host, 0


def check_at_start(conf, runner=None):
    """Refuse a start whose storage fence cannot work: a mode other than
    the cluster's (naming both), an LU without PR support (naming it).
    The first host records the cluster's mode."""
    from coordinator.engine import etcd as etcdlib_
    from coordinator.engine import keys as keyslib
    keys = keyslib.Keys(conf.etcd.prefix, conf.cluster)
    etcd = etcdlib_.Etcd.from_conf(conf)
    fence = load(conf, etcd, keys, _Host(conf.host), runner=runner)
    report = fence.connector.check()
    fence.check_mode()
    return report
