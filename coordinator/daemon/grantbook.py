"""GrantBook: this host's own record of the grants it has turned into
devices, kept on local disk.

The fencer acts from it before asking anything of LVM or etcd (fence first,
enumerate later), and proves a grant against it before undoing a fence: the
LV's identity (UUID and extents, never its name) and the grant's token as
they were when the device was made. Every process of the daemon shares the
book; a flock serializes writers.

The book is three slot files, each a header (generation, length, CRC-32,
the last synced generation) and the JSON body; a reader takes the valid
slot of the highest generation. A write overwrites a slot in place: no
rename, which on ext4 (auto_da_alloc) costs a flush of the new file per
write. It never overwrites the newest slot (a write torn by a kill would
lose what that held) nor the one of the last synced generation (a power
loss would): a power loss undoes at most the writes not synced.
"""
import contextlib
import errno
import fcntl
import json
import os
import threading
import time
import zlib

ACTIVATING, ACTIVE = 'activating', 'active'
# A deactivated LV whose release did not reach etcd: no device any more,
# its grant still there until the release lands.
RELEASING = 'releasing'

_MAGIC = b'lvmcoord-grants'
# A lock-free reader that finds a slot being written waits this long at
# most for the writer to finish.
_READ_WAIT = 0.25


class GrantBook:
    """{(vg, lv): record} in ``<state_dir>/grants-<cluster>.json.{0,1,2}``."""

    def __init__(self, state_dir, cluster='default'):
        # The single file of earlier releases, read until the first write.
        self.path = os.path.join(state_dir, f'grants-{cluster}.json')
        self.slots = tuple(f'{self.path}.{i}' for i in range(3))
        self._lock_path = self.path + '.lock'
        self._gate_path = self.path + '.gate'
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

    @contextlib.contextmanager
    def activating(self):
        """Held (shared) by an activation from its grant until its device
        is made: quiesce() waits for every one in flight."""
        fd = self._open_gate()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def quiesce(self, wait):
        """Wait until no activation holds the gate (activating()), at most
        ``wait`` seconds; False if one still does. Those that take it after
        find what the caller changed first (the fencer's beat)."""
        fd = self._open_gate()
        try:
            return _flock(fd, wait)
        finally:
            os.close(fd)  # a barrier: let go at once

    def _open_gate(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return os.open(self._gate_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                       0o600)

    def _read(self):
        return self._read_gen()[0]

    def _read_gen(self):
        """(data, generation, slot index holding it, last synced
        generation when it was written)."""
        held = getattr(self._held, 'depth', 0)
        deadline, pause = None, 0.001
        while True:
            found = [_slot(path) for path in self.slots]
            # No slot written yet; or the first write died before its
            # slot was whole (the single file goes only once it is).
            if all(gen is None for _, gen, _ in found) or (
                    all(body is None for body, _, _ in found) and
                    os.path.exists(self.path)):
                return _legacy(self.path), 0, 1, 0
            torn = any(body is None and gen is not None
                       for body, gen, _ in found)
            if held or not torn:
                break
            # Lock-free, a torn slot may be one being written, and the
            # other then older than the book (overwritten in place): with
            # the lock free, no write is in flight and it is torn for good.
            with self.locked(wait=0) as free:
                if free:
                    return self._read_gen()
            # A writer is at it: read again once it is done; one stuck
            # (SIGSTOP, D state) must not stop the fencer, which reads the
            # book before it fences: the newest whole slot then.
            now = time.monotonic()
            deadline = deadline or now + _READ_WAIT
            if now >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        taken = _newest(found)
        if taken:
            return taken
        # Both torn or edited: must not stop the fencer; the backend's own
        # enumeration still finds every device.
        gen = max((gen or 0) for _, gen, _ in found)
        return {}, gen, 1, gen

    def _write(self, data, gen, index, synced, durable=True):
        found = [_slot(path) for path in self.slots]
        keep = {index} | {i for i, f in enumerate(found)
                          if f[0] is not None and f[1] == synced}
        if len(keep) == 1 and synced != gen:
            durable = True  # no synced generation left to fall back to
        durable = durable or not gen
        target = min((i for i in range(len(self.slots)) if i not in keep),
                     key=lambda i: found[i][1] or 0)
        body = json.dumps(data).encode()
        head = b'%s %d %d %d %d\n' % (_MAGIC, gen + 1, len(body),
                                       zlib.crc32(body),
                                       gen + 1 if durable else synced)
        fd = os.open(self.slots[target], os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.pwrite(fd, head + body, 0) != len(head) + len(body):
                raise OSError(errno.EIO, f'short write to '
                                         f'{self.slots[target]}')
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if not gen:
            # The first slot is on disk: the old single file is read no more.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _update(self, change, durable=True):
        with self.locked():
            data, gen, index, synced = self._read_gen()
            if change(data):
                self._write(data, gen, index, synced, durable)

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


def made(book, backend, vg, lv, path):
    """Record the device just made for vg/lv active and let it take
    writes, unless the fencer marked its grant fenced meanwhile: then it
    stays stopped, for the fence's proof to resume or retire. False when
    the record is gone (the grant retired while the device was made): the
    device is retired. Under the book's lock, which the fencer marks
    under: a device is never writable behind a mark."""
    with book.locked():
        record = book.get(vg, lv)
        if record is None:
            backend.retire(vg, lv)
            return False
        if record.get('fenced'):
            backend.suspend(vg, lv)
        else:
            # Before the record says active: a fencer whose lock-free look
            # found it active stops it after this, and one that found it
            # activating stops it again once it sees it active.
            backend.admit(vg, lv)
        # The device's dm uuid: the fencer finds it by that, whatever it
        # is renamed to by hand (lvrename, vgrename).
        address = getattr(backend, 'dm_uuid', lambda vg, lv: None)(vg, lv)
        book.put(vg, lv, state=ACTIVE, path=path,
                 **({'dm_uuid': address} if address else {}))
        return True


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
    """(body or None, generation or None if the slot was never written,
    last synced generation when it was written) of one slot file; body
    None when torn or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None, None
    try:
        raw = b''.join(iter(lambda: os.read(fd, 1 << 16), b''))
    finally:
        os.close(fd)
    head, sep, rest = raw.partition(b'\n')
    fields = head.split(b' ')
    # Four fields: written before the last synced generation was kept
    # (every write was synced then).
    if not sep or len(fields) not in (4, 5) or fields[0] != _MAGIC:
        return None, 0, 0
    try:
        gen, length, crc, *synced = (int(x) for x in fields[1:])
    except ValueError:
        return None, 0, 0
    synced = synced[0] if synced else gen
    body = rest[:length]
    if len(body) != length or zlib.crc32(body) != crc:
        return None, gen, synced
    return body, gen, synced


def _newest(found):
    """(data, gen, index, synced) of the newest whole slot, or None."""
    for gen, index in sorted(((f[1], i) for i, f in enumerate(found)
                              if f[0] is not None), reverse=True):
        data = _decode(found[index][0])
        if data is not None:
            return data, gen, index, found[index][2]
    return None


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
