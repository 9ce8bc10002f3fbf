"""Data copies the driver makes on the volume host (clone, image, wipe):
unbuffered block copies, and the activations they share."""
import contextlib
import errno
import mmap
import os
import threading

from cinder import exception
from oslo_utils import units

CHUNK = 4 * units.Mi
_ZERO = bytes(CHUNK)


@contextlib.contextmanager
def _opened(path, flags):
    """A file descriptor of ``path``, unbuffered where the FS allows."""
    try:
        # Unbuffered: another host may have written the LV since our page
        # cache last saw it.
        fd = os.open(path, flags | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # tmpfs and a few others refuse O_DIRECT.
        fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _buffer():
    """A page-aligned chunk buffer, as O_DIRECT needs."""
    buf = mmap.mmap(-1, CHUNK)
    try:
        yield buf
    finally:
        buf.close()


def _chunks(size):
    for offset in range(0, size, CHUNK):
        yield offset, min(CHUNK, size - offset)


def _read(fd, buf, offset, length):
    got = os.preadv(fd, [memoryview(buf)[:length]], offset)
    if got != length:
        raise OSError(errno.EIO, f'short read: {got} of {length} bytes at '
                                 f'offset {offset}')
    return buf[:length]


def _write(fd, buf, offset, length):
    done = os.pwritev(fd, [memoryview(buf)[:length]], offset)
    if done != length:
        raise OSError(errno.EIO, f'short write: {done} of {length} bytes at '
                                 f'offset {offset}')


def copy_data(src, dst, size, pause=None):
    """Copy ``size`` bytes from ``src`` to ``dst`` in this process.

    Zero chunks are written only where the destination is not zero
    already, so a copy onto a fresh LV leaves unwritten space unwritten.
    """
    with _buffer() as sbuf, _buffer() as dbuf, \
            _opened(src, os.O_RDONLY) as fin, \
            _opened(dst, os.O_RDWR) as fout:
        for offset, length in _chunks(size):
            data = _read(fin, sbuf, offset, length)
            if data == _ZERO[:length] and \
                    _read(fout, dbuf, offset, length) == data:
                continue
            _write(fout, sbuf, offset, length)
            if pause:
                pause()
        os.fsync(fout)


def zero_data(path, size, pause=None):
    """Zero the first ``size`` bytes of ``path``, skipping zero chunks."""
    with _buffer() as buf, _buffer() as zeros, \
            _opened(path, os.O_RDWR) as fd:
        for offset, length in _chunks(size):
            if _read(fd, buf, offset, length) != _ZERO[:length]:
                _write(fd, zeros, offset, length)
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
