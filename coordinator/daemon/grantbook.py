"""GrantBook: this host's own record of the grants it has turned into
devices, kept on local disk.

The fencer acts from it before asking anything of LVM or etcd (fence first,
enumerate later), and proves a grant against it before undoing a fence: the
LV's identity (UUID and extents, never its name) and the grant's token as
they were when the device was made. Every process of the daemon shares the
book; a flock serializes writers.

The book is two slot files written in turn, each a header (generation,
length, CRC-32) and the JSON body; a reader takes the valid slot of the
highest generation. A write overwrites the older slot in place: no rename,
which on ext4 (auto_da_alloc) costs a flush of the new file per write, and
a torn write (power loss, a reader in between) leaves the other slot whole.
"""
import contextlib
import fcntl
import json
import os
import threading
import time
import zlib

ACTIVATING, ACTIVE = 'activating', 'active'

_MAGIC = b'lvmcoord-grants'
# A lock-free reader that catches a slot mid-write reads again, this many
# times, then under the lock, waiting this long for it at most: the fencer
# reads the book and must not wait on a frozen writer (SIGSTOP, D state).
_READ_ATTEMPTS = 5
_READ_LOCK_WAIT = 0.25


class GrantBook:
    """{(vg, lv): record} in ``<state_dir>/grants-<cluster>.json.{0,1}``."""

    def __init__(self, state_dir, cluster='default'):
        # The single file of earlier releases, read until the first write.
        self.path = os.path.join(state_dir, f'grants-{cluster}.json')
        self.slots = (self.path + '.0', self.path + '.1')
        self._lock_path = self.path + '.lock'
        self._held = threading.local()

    @contextlib.contextmanager
    def locked(self, wait=None):
        """The book's lock, across the daemon's processes (re-entrant in
        one thread): what is decided under it sees no write in between.
        Yields False, lock not taken, if ``wait`` seconds pass first."""
        if getattr(self._held, 'depth', 0):
            self._held.depth += 1
            try:
                yield True
            finally:
                self._held.depth -= 1
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            if not _flock(fd, wait):
                yield False
                return
            self._held.depth = 1
            yield True
        finally:
            self._held.depth = 0
            os.close(fd)

    def _read(self):
        return self._read_gen()[0]

    def _read_gen(self):
        """(data, generation, slot index holding it)."""
        held = getattr(self._held, 'depth', 0)
        for _ in range(_READ_ATTEMPTS):
            found = [_slot(path) for path in self.slots]
            if all(gen is None for _, gen in found):
                return _legacy(self.path), 0, 1  # no slot written yet
            # Lock-free, a slot caught mid-write means the other one may
            # be older than the book was when we began (two writes can
            # pass between our two reads): read again. Under the lock no
            # write is in flight, and a torn slot is one for good.
            if not held and any(body is None and gen is not None
                                for body, gen in found):
                continue
            # Newest first; only the one taken is decoded.
            for gen, index in sorted(((f[1], i) for i, f in enumerate(found)
                                      if f[0] is not None), reverse=True):
                data = _decode(found[index][0])
                if data is not None:
                    return data, gen, index
            break
        else:
            # Writes kept passing by (or one slot is torn for good): read
            # once no write is in flight, if that comes soon.
            with self.locked(wait=_READ_LOCK_WAIT) as taken:
                if taken:
                    return self._read_gen()
            # The writer is stuck holding the lock: the newest whole slot,
            # as the last write left it.
            whole = [(f[1], i) for i, f in enumerate(found)
                     if f[0] is not None and _decode(f[0]) is not None]
            if whole:
                gen, index = max(whole)
                return _decode(found[index][0]), gen, index
        # Both torn or edited: must not stop the fencer; the backend's own
        # enumeration still finds every device.
        return {}, max((gen or 0) for _, gen in found), 1

    def _write(self, data, gen, index, durable=True):
        # Into the slot not holding ``gen``: the one read stays whole.
        body = json.dumps(data).encode()
        head = b'%s %d %d %d\n' % (_MAGIC, gen + 1, len(body),
                                    zlib.crc32(body))
        fd = os.open(self.slots[1 - index], os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, head + body, 0)
            if durable or not gen:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if not gen:
            # The first slot is on disk: the old single file is read no more.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _update(self, change, durable=True):
        with self.locked():
            data, gen, index = self._read_gen()
            if change(data):
                self._write(data, gen, index, durable)

    def all(self):
        """{(vg, lv): record} of every grant recorded here."""
        return {tuple(k.split('/', 1)): v for k, v in self._read().items()}

    def get(self, vg, lv):
        """The record of vg/lv, or None."""
        return self._read().get(f'{vg}/{lv}')

    def put(self, vg, lv, durable=True, **record):
        """Record (or update) the grant of vg/lv; ``durable=False``: not
        synced to disk (what a power loss may undo)."""
        key = f'{vg}/{lv}'

        def change(data):
            data[key] = dict(data.get(key, {}), **record)
            return True
        self._update(change, durable)

    def mark_fenced(self, keys):
        """Mark the records of ``keys`` fenced: an activation still making
        its device sees the mark and stops that device's I/O itself."""
        def change(data):
            hit = [f'{vg}/{lv}' for vg, lv in keys if f'{vg}/{lv}' in data]
            for key in hit:
                data[key]['fenced'] = True
            return hit
        self._update(change)

    def unmark_fenced(self, vg, lv):
        """The fence of vg/lv was undone by proof."""
        def change(data):
            record = data.get(f'{vg}/{lv}')
            return record and record.pop('fenced', None)
        self._update(change)

    def drop(self, vg, lv):
        """Forget vg/lv (its device is gone)."""
        self._update(lambda data: data.pop(f'{vg}/{lv}', None) is not None)


def _flock(fd, wait):
    """Take the flock on ``fd``; with ``wait``, give up after that long."""
    if wait is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline, pause = time.monotonic() + wait, 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _slot(path):
    """(body or None, generation or None if the slot was never written)
    of one slot file; body None when torn or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    try:
        raw = b''.join(iter(lambda: os.read(fd, 1 << 16), b''))
    finally:
        os.close(fd)
    head, sep, rest = raw.partition(b'\n')
    fields = head.split(b' ')
    if not sep or len(fields) != 4 or fields[0] != _MAGIC:
        return None, 0
    try:
        gen, length, crc = (int(x) for x in fields[1:])
    except ValueError:
        return None, 0
    body = rest[:length]
    if len(body) != length or zlib.crc32(body) != crc:
        return None, gen
    return body, gen


def _decode(body):
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _legacy(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
