"""A waiter's watch on its predecessor: etcd registers a watch "from now"
at the revision it read just before, so a delete landing in between is
held back (the watch is "unsynced", up to 100 ms). The waiter must see
that delete by a read once its watch exists, whatever revision the watch
reports."""
import contextlib
import time

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import vglock


class _Session:
    id = 0x2a
    host = 'h1'

    def check(self):
        pass


class _HeldBackWatch:
    """A watch whose events etcd holds back: waiting on it is the bug."""

    created_revision = 10   # the revision of the waiter's own read
    dead = False

    def until(self, deadline, tick):
        raise AssertionError('waited for an event etcd held back')

    def cancel(self):
        pass


class _Etcd:
    """The holder's key is deleted while the waiter's watch is made."""

    def __init__(self, prefix):
        self.ours = etcdlib.KV(f'{prefix}002a-1-b', '', 12, 12, 1, 0x2a)
        self.holder = etcdlib.KV(f'{prefix}0001-1-a', '', 11, 11, 1, 1)
        self.deleted = False

    def range(self, key, **kw):
        kvs = [self.ours] + ([] if self.deleted else [self.holder])
        return kvs, 10

    @contextlib.contextmanager
    def watch(self, key, start_revision):
        assert key == self.holder.key and start_revision == 0
        self.deleted = True   # the release lands as the watch registers
        yield _HeldBackWatch()

    def get(self, key):
        return None if self.deleted else self.holder


def test_a_delete_during_the_watch_creation_is_seen_by_a_read():
    keys = keyslib.Keys('/t', 'c')
    etcd = _Etcd(keys.vg_lock('vg0'))
    lock = vglock.VGLock(etcd, keys, _Session(), 'vg0', once=object())
    lock._wait_predecessors(etcd.ours.key, etcd.ours.create_revision,
                            time.monotonic() + 5)
    assert etcd.deleted
