"""GrantBook: this host's own record of the grants it has turned into
devices, kept on local disk.

The fencer acts from it before asking anything of LVM or etcd (fence first,
enumerate later), and proves a grant against it before undoing a fence: the
LV's identity (UUID and extents, never its name) and the grant's token as
they were when the device was made. Every process of the daemon shares the
file; a flock serializes writers.
"""
import contextlib
import fcntl
import json
import os
import threading

ACTIVATING, ACTIVE = 'activating', 'active'


class GrantBook:
    """{(vg, lv): record} in ``<state_dir>/grants-<cluster>.json``."""

    def __init__(self, state_dir, cluster='default'):
        self.path = os.path.join(state_dir, f'grants-{cluster}.json')
        self._lock_path = self.path + '.lock'
        self._held = threading.local()

    @contextlib.contextmanager
    def locked(self):
        """The book's lock, across the daemon's processes (re-entrant in
        one thread): what is decided under it sees no write in between."""
        if getattr(self._held, 'depth', 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.depth = 1
            yield
        finally:
            self._held.depth = 0
            os.close(fd)

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError:
            # A torn file cannot happen (atomic replace); an edited one
            # must not stop the fencer: treat it as empty, the backend's
            # own enumeration still finds every device.
            return {}

    def _write(self, data, durable=True):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(data, f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def all(self):
        """{(vg, lv): record} of every grant recorded here."""
        return {tuple(k.split('/', 1)): v for k, v in self._read().items()}

    def get(self, vg, lv):
        """The record of vg/lv, or None."""
        return self._read().get(f'{vg}/{lv}')

    def put(self, vg, lv, durable=True, **record):
        """Record (or update) the grant of vg/lv; ``durable=False``: not
        synced to disk (what a power loss may undo)."""
        with self.locked():
            data = self._read()
            data[f'{vg}/{lv}'] = dict(data.get(f'{vg}/{lv}', {}), **record)
            self._write(data, durable)

    def mark_fenced(self, keys):
        """Mark the records of ``keys`` fenced: an activation still making
        its device sees the mark and stops that device's I/O itself."""
        with self.locked():
            data = self._read()
            hit = [f'{vg}/{lv}' for vg, lv in keys if f'{vg}/{lv}' in data]
            for key in hit:
                data[key]['fenced'] = True
            if hit:
                self._write(data)

    def unmark_fenced(self, vg, lv):
        """The fence of vg/lv was undone by proof."""
        with self.locked():
            data = self._read()
            record = data.get(f'{vg}/{lv}')
            if record and record.pop('fenced', None):
                self._write(data)

    def drop(self, vg, lv):
        """Forget vg/lv (its device is gone)."""
        with self.locked():
            data = self._read()
            if data.pop(f'{vg}/{lv}', None) is not None:
                self._write(data)
