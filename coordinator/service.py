"""lvmcoordd's workers: one process per job, as cotyledon runs them.

- SessionWorker keeps the session alive and publishes readiness.
- RequestWorker runs requests other hosts address to this one.
- APIWorker serves the local Unix socket.
- FenceWorker stops I/O on active LVs when the session may be lost.
Business logic lives in ops, fence and routing; here are only loops and
signals.
"""
import logging
import os
import threading

import cotyledon

from coordinator import errors
from coordinator import etcd as etcdlib
from coordinator import fence
from coordinator import metrics
from coordinator import supervise
from coordinator.api.server import APIServer
from coordinator.host import HostContext

LOG = logging.getLogger(__name__)


class _Worker(cotyledon.Service):

    attached = True

    def __init__(self, worker_id, conf):
        super().__init__(worker_id)
        self.conf = conf
        self.stopping = threading.Event()
        self.ctx = None

    def run(self):
        self.ctx = HostContext(self.conf, attached=self.attached)
        if self.attached:
            self.ctx.engine.session.wait_open()
        self.work()

    def terminate(self):
        self.stopping.set()


class SessionWorker(_Worker):
    """Opens or resumes the session, keeps it alive, publishes readiness."""

    name = 'session'
    attached = False

    def work(self):
        eng = self.ctx.engine
        eng.open()
        self.ctx.emit('session', resumed=eng.session.resumed,
                      session=f'{eng.session.id:x}')
        view = self.ctx.readiness(fresh=True)
        self.ctx.record_uuids(view)
        self.ctx.membership.join(view)
        if self.conf.metrics.port:
            metrics.serve(self.conf.metrics.port, self.conf.metrics.address)
        ticks = 0
        while not self.stopping.wait(1.0):
            ticks += 1
            if eng.session.lost:
                # The fencer has stopped our I/O; start over with a new
                # session so this host can be granted LVs again.
                eng.session.reopen()
                self.ctx.emit('session-reopened',
                              session=f'{eng.session.id:x}')
            metrics.KEEPALIVE.set(eng.session.keepalive_rtt)
            for vg in self.conf.lvm.volume_groups:
                try:
                    depth = len(eng.vglock(vg).queue())
                except errors.CoordError:
                    continue
                metrics.QUEUE_DEPTH.labels(vg=vg).set(depth)
            self.ctx.membership.heartbeat()
            if ticks % 15 == 0:
                self.ctx.membership.update(self.ctx.readiness(fresh=True))

    def terminate(self):
        super().terminate()
        if self.ctx:
            # No revoke: a restarted daemon resumes this very session.
            self.ctx.engine.session.close(revoke=False)


class RequestWorker(_Worker):
    """Runs what other hosts ask of this one (requests through etcd)."""

    name = 'requests'

    def work(self):
        self.ctx.router.serve(self.ctx.ops.handle,
                              self.conf.api.request_workers)

    def terminate(self):
        super().terminate()
        if self.ctx:
            self.ctx.router.stop()


class APIWorker(_Worker):
    """Serves the local API on the Unix socket."""

    name = 'api'

    def work(self):
        self.server = APIServer(self.conf.api.socket_path,
                                self.ctx.ops.handle,
                                self.conf.api.socket_group,
                                max_connections=self.conf.api.max_connections,
                                idle_timeout=self.conf.api.idle_timeout)
        thread = threading.Thread(target=self.server.serve_forever,
                                  daemon=True)
        thread.start()
        self.stopping.wait()
        self.server.shutdown()


class FenceWorker(_Worker):
    """Fences active LVs before the session can expire."""

    name = 'fencer'

    def work(self):
        ctx = self.ctx
        session = ctx.engine.session
        # Its own client: one short attempt per tick, so a partition can
        # never hold the fencer past its deadline.
        e = self.conf.etcd
        quick = etcdlib.Etcd(e.endpoints, e.ca_file, e.cert_file, e.key_file,
                             timeout=min(e.timeout, self.conf.fence.interval),
                             retry_window=0)

        def on_event(kind, **fields):
            if kind == 'fenced':
                metrics.FENCES.inc(len(fields.get('lvs', [])))
            ctx.emit(kind, **{k: [f'{v}/{lv}' for v, lv in val]
                              if k == 'lvs' else val
                              for k, val in fields.items()})

        fencer = fence.Fencer(
            lambda: session.last_ok,
            lambda lease: quick.lease_ttl(lease) if lease else -1,
            ctx.backend, self.conf.session.ttl, self.conf.fence.fraction,
            self.conf.fence.action, on_event, lease=session.id,
            resume=self._resume_if_ours)
        # LVs a previous run fenced (on stop, or before a crash) stay
        # fenced until their leases are proven ours again.
        fencer.fenced = [k for k, v in ctx.backend.active().items()
                         if v.get('suspended')]
        fencer.rearm(session.id)
        while not self.stopping.wait(self.conf.fence.interval):
            if fencer.tick() == fence.LOST and \
                    session.id not in (0, fencer.lease):
                fencer.rearm(session.id)

    def _resume_if_ours(self, vg, lv):
        """Resume a fenced LV only under a lease held by our current
        session; re-take it if nobody else did, else drop the device."""
        ctx = self.ctx
        me = ctx.engine.session
        holders = ctx.engine.leases.holders(vg, lv)
        mine = next((h for h in holders if h.host == me.host), None)
        if not (mine and mine.alive and mine.session == me.id):
            try:
                ctx.engine.leases.grant(vg, lv, mine.mode if mine else
                                        'exclusive',
                                        mine.instance if mine else None)
            except errors.LeaseConflict as exc:
                LOG.error('%s/%s was taken over (%s); removing the stale '
                          'device here', vg, lv, exc)
                ctx.backend.deactivate(vg, lv)
                ctx.emit('stale-device-removed', vg=vg, lv=lv)
                return
        ctx.backend.resume(vg, lv)
        LOG.warning('resumed %s/%s under session %x', vg, lv, me.id)

    def terminate(self):
        super().terminate()
        if not (self.ctx and self.conf.fence.on_stop):
            return
        # A daemon that is down cannot fence: stop I/O now; a restart
        # within the TTL resumes it.
        active = list(self.ctx.backend.active())
        for vg, lv in active:
            try:
                self.ctx.backend.suspend(vg, lv)
            except errors.CoordError:
                LOG.exception('could not fence %s/%s on stop', vg, lv)
        if active:
            LOG.warning('stopping: fenced %s', active)


def build(conf):
    """The ServiceManager with every worker of lvmcoordd."""
    if conf.metrics.port and not os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
        raise errors.InvalidInput('metrics.port', 'PROMETHEUS_MULTIPROC_DIR '
                                  'must be set before the daemon starts')
    manager = supervise.Manager()  # a worker that keeps dying stops all
    for worker in (SessionWorker, FenceWorker, RequestWorker, APIWorker):
        manager.add(worker, workers=1, args=(conf,))
    return manager
