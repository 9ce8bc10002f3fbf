"""Waiting on a watch: etcd registers a watch "from now" at the revision it
read just before, so a write landing in between is held back (the watch
is "unsynced", up to 100 ms), and a watch from an older revision is held
back whenever anything was written since. A VG lock waiter and a lease
waiter must see such a write by a read once their watch exists."""
import contextlib
import time

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import lease as leaselib
from coordinator.engine import modes
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


class _HeldBackLeaseWatch(_HeldBackWatch):

    def get(self, timeout):
        raise AssertionError('waited for an event etcd held back')


class _LeaseEtcd:
    """The holder goes while the waiter's watch is made."""

    def __init__(self):
        self.released = False

    @contextlib.contextmanager
    def watch(self, key, start_revision, prefix=False):
        # From now or from the read's revision: either way etcd holds the
        # release's event back.
        self.released = True
        yield _HeldBackLeaseWatch()


def test_a_release_during_the_lease_watch_creation_is_seen_by_a_read():
    etcd = _LeaseEtcd()
    table = leaselib.LeaseTable(etcd, keyslib.Keys('/t', 'c'), _Session(),
                                once=object())
    other = modes.Holder(host='h2', mode=modes.EXCLUSIVE, token=5)
    table.read = lambda vg, lv: (([], 7, 12) if etcd.released
                                 else ([other], 6, 10))
    # A broken holder's acknowledgement, awaited as a grant waits.
    assert table.wait_gone('vg0', 'lv0', 'h2', 5.0)
    assert etcd.released
