"""Data copies the driver makes on the volume host (clone, image, wipe):
unbuffered block copies, and the activations they share."""
import contextlib
import os
import threading

from cinder import exception

from coordinator import blockio

CHUNK = blockio.CHUNK


def copy_data(src, dst, size, pause=None):
    """Copy ``size`` bytes from ``src`` to ``dst`` in this process.

    Zero chunks are written only where the destination is not zero
    already, so a copy onto a fresh LV leaves unwritten space unwritten.
    """
    blockio.copy(src, dst, size, pause)


def zero_data(path, size, pause=None):
    """Zero the first ``size`` bytes of ``path``, skipping zero chunks."""
    with blockio.buffer() as buf, blockio.buffer() as zeros, \
            blockio.opened(path, os.O_RDWR) as fd:
        for offset, length in blockio.chunks(size):
            if blockio.read(fd, buf, offset, length) != \
                    blockio.ZERO[:length]:
                blockio.write(fd, zeros, offset, length)
                if pause:
                    pause()
        os.fsync(fd)


def accessible(path, write=False):
    """True if this process may read (and write) ``path`` itself."""
    return os.access(path, os.R_OK | (os.W_OK if write else 0))


class LocalActivations:
    """The driver's own activations on this volume host, counted per LV:
    concurrent copies share one activation, the last one out ends it."""

    def __init__(self, owner):
        self._owner = owner
        # Held across the daemon calls (quick: local, never waiting), so
        # an activation and a deactivation of one LV never interleave.
        self._mutex = threading.Lock()
        self._held = {}

    @contextlib.contextmanager
    def hold(self, vg, lv, purpose, read_only=False):
        """Context manager: the LV's device path on this host."""
        key = (vg, lv)
        with self._mutex:
            entry = self._held.get(key)
            if entry is None:
                entry = self._owner.activate_here(lv, purpose, read_only)
                self._held[key] = entry
            elif entry['read_only'] and not read_only:
                raise exception.VolumeBackendAPIException(
                    data=f'{purpose}: {vg}/{lv} is active read-only here '
                         f'for another copy; retry once it is done')
            entry['count'] += 1
        try:
            yield entry['path']
        finally:
            with self._mutex:
                entry['count'] -= 1
                if not entry['count']:
                    del self._held[key]
                    if not entry['keep']:
                        self._owner.deactivate_here(lv)
