"""Unbuffered block copies in page-aligned chunks: the one copy loop of the
daemon's routed copy and the driver's host-side copies and wipes."""
import contextlib
import errno
import mmap
import os
import stat

CHUNK = 4 << 20
ZERO = bytes(CHUNK)


@contextlib.contextmanager
def opened(path, flags):
    """A descriptor of ``path`` with O_DIRECT: another host may have
    written the LV since our page cache saw it. Only a file that is not a
    block device (tests' files on tmpfs) falls back to buffered I/O."""
    try:
        fd = os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL or _is_block(path):
            raise
        fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def buffer():
    """A page-aligned chunk buffer, as O_DIRECT needs."""
    with contextlib.closing(mmap.mmap(-1, CHUNK)) as buf:
        yield buf


def chunks(size):
    """(offset, length) of every chunk of ``size`` bytes."""
    for offset in range(0, size, CHUNK):
        yield offset, min(CHUNK, size - offset)


def read(fd, buf, offset, length):
    """Exactly ``length`` bytes at ``offset`` into ``buf``; EIO if short."""
    got = os.preadv(fd, [memoryview(buf)[:length]], offset)
    if got != length:
        raise OSError(errno.EIO, f'short read: {got} of {length} bytes at '
                                 f'offset {offset}')
    return buf[:length]


def write(fd, buf, offset, length):
    """Exactly ``length`` bytes of ``buf`` at ``offset``; EIO if short."""
    done = os.pwritev(fd, [memoryview(buf)[:length]], offset)
    if done != length:
        raise OSError(errno.EIO, f'short write: {done} of {length} bytes at '
                                 f'offset {offset}')


def copy(src, dst, size, pause=None):
    """Copy ``size`` bytes from ``src`` to ``dst``; zero chunks are written
    only where ``dst`` is not zero already (a fresh LV stays unwritten).
    ``pause()`` runs after each written chunk. The bytes written."""
    written = 0
    with buffer() as sbuf, buffer() as dbuf, \
            opened(src, os.O_RDONLY) as fin, opened(dst, os.O_RDWR) as fout:
        for offset, length in chunks(size):
            data = read(fin, sbuf, offset, length)
            if data == ZERO[:length] and \
                    read(fout, dbuf, offset, length) == data:
                continue
            write(fout, sbuf, offset, length)
            written += length
            if pause:
                pause()
        os.fsync(fout)
    return written


def _is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
