"""Engine: the lease core for one host, wired from configuration."""
import os

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import lease
from coordinator.engine import metadata
from coordinator.engine import once as oncelib
from coordinator.engine import session as sessionlib
from coordinator.engine import vglock
from coordinator.storage import fence as storagelib


class Engine:
    """etcd access, session, VG locks, activation leases for one host."""

    def __init__(self, etcd, host, cluster='default', prefix='/lvmcoord',
                 ttl=10, keepalive_interval=None, state_file=None, grace=3.0,
                 lock_timeout=60.0, session=None, keepalive_etcd=None,
                 machine=None, storage=None):
        self.etcd = etcd
        self.host = host
        self.keys = keyslib.Keys(prefix, cluster)
        # Worker processes pass an AttachedSession kept alive elsewhere.
        self.session = session or sessionlib.Session(
            etcd, self.keys, host, ttl, keepalive_interval, state_file,
            keepalive_etcd, machine)
        # One per process: its lease is granted once and shared.
        self.once = oncelib.Once(etcd, self.keys.once())
        # The storage fence (coordinator.storage.fence), or None.
        self.storage = storage(self) if storage else None
        fence = self.storage.fence_lv if self.storage and \
            self.storage.active else None
        self.leases = lease.LeaseTable(etcd, self.keys, self.session, grace,
                                       self.once, fence)
        self.lock_timeout = lock_timeout

    @staticmethod
    def state_file(conf):
        """Where the session id of this host and cluster is kept."""
        return os.path.join(conf.session.state_dir,
                            f'session-{conf.cluster}.json')

    @classmethod
    def from_conf(cls, conf, attached=False):
        """Build from oslo.config options (see coordinator.conf)."""
        state = cls.state_file(conf)
        session = sessionlib.AttachedSession(
            conf.host, conf.session.ttl, state) if attached else None
        interval = conf.session.keepalive_interval or conf.session.ttl / 6
        quick = None if attached else etcdlib.Etcd.from_conf(
            conf, timeout=max(0.2, min(conf.etcd.timeout, interval / 2)),
            retry_window=interval / 2)
        return cls(etcdlib.Etcd.from_conf(conf), conf.host, conf.cluster,
                   conf.etcd.prefix, conf.session.ttl,
                   conf.session.keepalive_interval or None, state,
                   conf.lease.grace, conf.lock.acquire_timeout, session,
                   quick, conf.session.machine_id, lambda eng: storagelib.load(
                       conf, eng.etcd, eng.keys, eng.session))

    def open(self):
        """Open or resume the session; drop lock entries that a process of
        this session which is gone left queued (it can no longer be
        waiting)."""
        self.session.open()
        if self.session.resumed:
            kvs, _ = self.etcd.range(self.keys.vgs(), prefix=True)
            for kv in kvs:
                if '/lock/' in kv.key and vglock.left_behind(
                        kv.key.rsplit('/', 1)[1], self.session.id):
                    self.etcd.delete(kv.key)
        return self

    def vglock(self, vg):
        """The metadata mutex of ``vg``."""
        return vglock.VGLock(self.etcd, self.keys, self.session, vg,
                             self.once)

    def guard(self, read_seqno, on_alert=None):
        """A MetadataGuard using ``read_seqno(vg, fresh)``."""
        fence = self.storage.fence_lv if self.storage and \
            self.storage.active else None
        return metadata.MetadataGuard(self.etcd, self.keys, self.session,
                                      read_seqno, self.lock_timeout,
                                      on_alert=on_alert, once=self.once,
                                      grace=self.leases.grace,
                                      storage=fence)

    def close(self, revoke=False):
        self.session.close(revoke=revoke)
