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
from coordinator import fence
from coordinator import metrics
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
                                self.conf.api.socket_group)
        thread = threading.Thread(target=self.server.serve_forever,
                                  daemon=True)
        thread.start()
        self.stopping.wait()
        self.server.shutdown()

    def terminate(self):
        super().terminate()


class FenceWorker(_Worker):
    """Fences active LVs before the session can expire."""

    name = 'fencer'

    def work(self):
        ctx = self.ctx
        session = ctx.engine.session

        def probe():
            lease = session.id
            return ctx.etcd.lease_ttl(lease) if lease else -1

        def on_event(kind, **fields):
            if kind == 'fenced':
                metrics.FENCES.inc(len(fields.get('lvs', [])))
            ctx.emit(kind, **{k: [f'{v}/{lv}' for v, lv in val]
                              if k == 'lvs' else val
                              for k, val in fields.items()})

        self.fencer = fence.Fencer(
            probe, ctx.backend, self.conf.session.ttl,
            self.conf.fence.fraction, self.conf.fence.action, on_event)
        # LVs a previous run fenced on stop stay fenced until the session
        # is confirmed alive again.
        stale = [k for k, v in ctx.backend.active().items()
                 if v.get('suspended')]
        if stale:
            self.fencer.fenced, self.fencer.state = stale, fence.FENCED
        lease = session.id
        while not self.stopping.wait(self.conf.fence.interval):
            state = self.fencer.tick()
            if state == fence.LOST and session.id not in (0, lease):
                self._recover()
                lease = session.id

    def _recover(self):
        """After a new session: take back fenced LVs nobody else took;
        deactivate the ones another host now holds."""
        ops = self.ctx.ops
        for vg, lv in list(self.fencer.fenced):
            try:
                ops.leases.grant(vg, lv)
                self.ctx.backend.resume(vg, lv)
                LOG.warning('recovered %s/%s under the new session', vg, lv)
            except errors.LeaseConflict as exc:
                LOG.error('%s/%s was taken over (%s); deactivating the '
                          'stale device here', vg, lv, exc)
                self.ctx.backend.deactivate(vg, lv)
        self.fencer.adopt(self.fencer.fenced)
        self.fencer.reset()

    def terminate(self):
        super().terminate()
        if self.ctx and self.conf.fence.on_stop and \
                self.ctx.backend.active():
            # A daemon that is down cannot fence: stop I/O now; a restart
            # within the TTL resumes it.
            for vg, lv in self.ctx.backend.active():
                try:
                    self.ctx.backend.suspend(vg, lv)
                except errors.CoordError:
                    LOG.exception('could not fence %s/%s on stop', vg, lv)
            LOG.warning('stopping: fenced %s', list(self.ctx.backend.active()))


def build(conf):
    """The ServiceManager with every worker of lvmcoordd."""
    if conf.metrics.port and not os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
        raise errors.InvalidInput('metrics.port', 'PROMETHEUS_MULTIPROC_DIR '
                                  'must be set before the daemon starts')
    manager = cotyledon.ServiceManager()
    for worker in (SessionWorker, FenceWorker, RequestWorker, APIWorker):
        manager.add(worker, workers=1, args=(conf,))
    return manager
