"""Fencer: stop this host's I/O on shared LVs before its session can expire.

etcd cannot expire the session lease before ``sent + TTL``, ``sent`` being
when the last successful keepalive left this host. Fencing at ``sent +
fraction * TTL`` leaves ``(1 - fraction) * TTL`` between our I/O stopping
and the lease expiring; other hosts wait a further grace period on top.
The deadline needs no etcd answer, so a partition cannot delay it; etcd is
asked only whether the lease still exists, to tell a lost session (stay
fenced) from a recovered one (resume).
"""
import logging
import time

from coordinator import errors

LOG = logging.getLogger(__name__)

OK, FENCED, LOST = 'ok', 'fenced', 'lost'


class Fencer:
    """Watches the session deadline and fences active LVs in time."""

    def __init__(self, last_keepalive, probe, backend, ttl, fraction=0.5,
                 action='suspend', on_event=None, clock=time.monotonic,
                 lease=0, resume=None):
        # last_keepalive() -> when the last good keepalive was sent, on
        # ``clock`` (0: never); probe(lease) -> seconds left on that lease,
        # -1 if it is gone; raises EtcdUnavailable when etcd is unreachable.
        self.last_keepalive = last_keepalive
        self.probe = probe
        self.lease = lease
        self.window = fraction * ttl
        self.backend = backend
        # resume(vg, lv) must prove the LV is still ours before undoing
        # the fence (see FenceWorker); by default it just resumes.
        self.resume = resume or backend.resume
        self.action = action
        self.on_event = on_event or (lambda kind, **kw: None)
        self.clock = clock
        self.state = OK
        self.fenced = []

    def tick(self):
        """Probe once and act; returns the state."""
        if self.state == LOST:
            return self.state
        try:
            left = self.probe(self.lease)
        except errors.EtcdUnavailable as exc:
            LOG.warning('fencer: etcd unreachable (%s)', exc)
            left = None
        if left is not None and left < 0:
            self._fence('session expired')
            self.state = LOST
            self.on_event('session-lost', lvs=list(self.fenced))
            return self.state
        deadline = self.last_keepalive() + self.window
        if self.clock() >= deadline:
            if self.state == OK:
                self._fence('session deadline reached')
                self.state = FENCED
        elif self.state == FENCED and left is not None:
            self._unfence()
            self.state = OK
        return self.state

    def rearm(self, lease):
        """After a loss: watch the new session; LVs fenced so far stay
        fenced until it is confirmed and ``resume`` accepts them."""
        self.lease = lease
        self.state = FENCED if self.fenced else OK

    def _fence(self, why):
        if self.action == 'none':
            LOG.error('fencer: %s but fencing is disabled', why)
            return
        for (vg, lv), info in self.backend.active().items():
            if (vg, lv) in self.fenced:
                continue
            try:
                if self.action == 'deactivate' and not info.get('open'):
                    self.backend.deactivate(vg, lv)
                else:
                    self.backend.suspend(vg, lv)
            except errors.CoordError:
                LOG.exception('fencer: could not fence %s/%s', vg, lv)
                continue
            self.fenced.append((vg, lv))
        LOG.error('fencer: %s; fenced %s', why,
                  ', '.join(f'{v}/{lv}' for v, lv in self.fenced) or 'none')
        self.on_event('fenced', reason=why, lvs=list(self.fenced))

    def _unfence(self):
        active = self.backend.active()
        for vg, lv in self.fenced:
            if (vg, lv) in active:
                self.resume(vg, lv)
        LOG.warning('fencer: session confirmed valid again; resumed %s',
                    self.fenced)
        self.on_event('resumed', lvs=list(self.fenced))
        self.fenced = []
