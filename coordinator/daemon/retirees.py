"""Devices this host retired, watched until the kernel removes them.

A retired device that is still open stays in the kernel (error target,
deferred remove) after its grant record is dropped. An admin's
``lvchange -ay`` or ``lvchange --refresh`` of that LV would load a
writable table into it again, on a host that holds no lease any more: the
fencer asks the kernel about each of them on every tick and retires one
found writable again at once.
"""
import logging
import threading

from coordinator.daemon import grantbook

LOG = logging.getLogger(__name__)


class Retirees:
    """Retired devices still in the kernel, checked on each tick."""

    def __init__(self, backend, on_event=None):
        # backend.retired(vg, lv, dm_uuid=) -> None (gone), True (error
        # target only) or False (another table loaded since).
        self.backend = backend
        self.on_event = on_event or (lambda kind, **kw: None)
        self._at = {}
        # add() comes from the proofs' thread, check() from the ticks'.
        self._lock = threading.Lock()
        # Found writable and not retired again: no watchdog pet.
        self.unsafe = set()

    def add(self, key, at):
        """Watch ``key`` (vg, lv), found by ``at`` ({'dm_uuid': ...})."""
        if getattr(self.backend, 'retired', None) is not None:
            with self._lock:
                self._at[key] = dict(at or {})

    def __len__(self):
        return len(self._at)

    def check(self, booked=None):
        """Retire again any the kernel shows writable; forget the gone
        ones. ``booked`` ({key: record}, the grant book): one being
        activated here again is left alone meanwhile, one made active
        again is forgotten (activate() refuses over a retired device, so
        that device is a new one, the new grant's)."""
        booked = booked or {}
        with self._lock:
            watched = list(self._at.items())
        again = []
        for key, at in watched:
            if key in booked:
                if booked[key].get('state') == grantbook.ACTIVE:
                    self._forget(key)
                continue
            try:
                state = self.backend.retired(*key, **at)
            except Exception:
                LOG.exception('fencer: retired %s/%s unreadable', *key)
                self.unsafe.add(key)
                continue
            if state is None:
                self._forget(key)
            elif state:
                self.unsafe.discard(key)
            else:
                again.append((key, at))
        for key, at in again:
            self._retire(key, at)
        return [key for key, _ in again]

    def _retire(self, key, at):
        try:
            self.backend.retire(*key, **at)
        except Exception:
            LOG.exception('fencer: %s/%s reloaded behind the fencer and '
                          'not retired again', *key)
            self.unsafe.add(key)
            return
        self.unsafe.discard(key)
        LOG.error('fencer: %s/%s was retired, yet the kernel showed a '
                  'writable table (LVM run by hand?); retired again', *key)
        self.on_event('retired', reason='reloaded behind the fencer',
                      lvs=[key])

    def _forget(self, key):
        with self._lock:
            self._at.pop(key, None)
        self.unsafe.discard(key)
