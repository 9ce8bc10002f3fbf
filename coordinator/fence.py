"""Fencer: stop this host's I/O on shared LVs before its session can expire.

The fencer does not trust the keepalive worker: it asks etcd itself how
long the session lease has left. Etcd cannot expire the lease before
``sent + remaining`` (``sent`` being when the question left), so fencing at
``sent + remaining - margin`` leaves ``margin`` seconds ((1 - fraction) of
the TTL) between our I/O stopping and the lease expiring; other hosts wait
a further grace period on top. If etcd cannot be reached, the last answer's
deadline still stands.
"""
import logging
import time

from coordinator import errors

LOG = logging.getLogger(__name__)

OK, FENCED, LOST = 'ok', 'fenced', 'lost'


class Fencer:
    """Watches the session deadline and fences active LVs in time."""

    def __init__(self, probe, backend, ttl, fraction=0.5, action='suspend',
                 on_event=None, clock=time.monotonic):
        # probe() -> seconds left on our session lease (-1: it is gone);
        # raises EtcdUnavailable when etcd cannot be asked.
        self.probe = probe
        self.backend = backend
        self.margin = (1.0 - fraction) * ttl
        self.action = action
        self.on_event = on_event or (lambda kind, **kw: None)
        self.clock = clock
        self.state = OK
        self.deadline = None
        self.fenced = []

    def tick(self):
        """Probe once and act; returns the state."""
        sent = self.clock()
        try:
            left = self.probe()
        except errors.EtcdUnavailable as exc:
            LOG.warning('fencer: etcd unreachable (%s)', exc)
            left = None
        if left is not None and left < 0:
            if self.state != LOST:
                self._fence('session expired')
                self.state = LOST
                self.on_event('session-lost', lvs=self.fenced)
            return self.state
        if left is not None:
            self.deadline = sent + left - self.margin
        if self.deadline is None:
            self.deadline = sent
        if self.clock() >= self.deadline:
            if self.state == OK:
                self._fence('session deadline reached')
                self.state = FENCED
        elif self.state == FENCED:
            self._unfence()
            self.state = OK
        return self.state

    def adopt(self, lvs):
        """After a loss, LVs taken care of elsewhere are no longer ours."""
        self.fenced = [x for x in self.fenced if x not in lvs]

    def reset(self):
        """A new session is open: start watching it afresh."""
        self.state, self.deadline = OK, None

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
                self.backend.resume(vg, lv)
        LOG.warning('fencer: session confirmed valid again; resumed %s',
                    self.fenced)
        self.on_event('resumed', lvs=list(self.fenced))
        self.fenced = []
