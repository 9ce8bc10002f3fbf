"""Snapshots go where their origin is active, under its lease (rules only;
the real-kernel tier runs them on device-mapper)."""
import contextlib

import pytest

from coordinator import errors
from coordinator.daemon import snapshots
from coordinator.engine import modes
from coordinator.lvm import mdaroom
from tests.unit.fakes import NoGuard


class FakeOps:
    def check_room(self, vg, op, what, extra=0):
        mdaroom.check(self.room, op, f'{vg}/{what}', extra)

    def __init__(self, holders=(), host='volume-1'):
        self.host = host
        self.calls = []
        self.devguard = NoGuard()
        self.holders = [modes.Holder(host=h, mode=m) for h, m in holders]
        self.room = None   # an mdaroom.Room, or None: LVM decides
        ops = self

        class Leases:
            def holders(self, vg, lv):
                return ops.holders

            def reserve(self, vg, lv, op):
                ops.calls.append(('reserve', lv, op))

            def unreserve(self, vg, lv):
                ops.calls.append(('unreserve', lv))

            @contextlib.contextmanager
            def reserved(self, vg, lv, op):
                self.reserve(vg, lv, op)
                try:
                    yield
                finally:
                    self.unreserve(vg, lv)

        class Router:
            def call(self, host, op, args):
                ops.calls.append(('route', host, op, args['lv']))
                return {'routed': host}

        class LVM:
            def create_snapshot(self, vg, lv, name, size):
                ops.calls.append(('lvcreate -s', lv, name))

            def remove_lv(self, vg, lv):
                ops.calls.append(('lvremove', lv))

            def merge_snapshot(self, vg, snap):
                ops.calls.append(('merge', snap))

            def lv(self, vg, lv):
                if lv in (ops.merging_snapshot, 'gone'):
                    raise errors.LVMError(f'LV {vg}/{lv} not found',
                                          kind='not-found')
                if lv == 'vol':
                    return {'name': lv, 'origin': '',
                            'merging': ops.merging_snapshot}
                return {'name': lv, 'origin': 'vol', 'merging': ''}

            def lvs(self, vg):
                return [self.lv(vg, 'vol')]

        class Backend:
            snapshots = True

            def path(self, vg, lv):
                return None

        self.merging_snapshot = ''
        self.leases, self.router, self.lvm = Leases(), Router(), LVM()
        self.backend = Backend()

    def op_activate(self, vg, lv, instance=None):
        self.calls.append(('activate', lv))

    def op_deactivate(self, vg, lv):
        self.calls.append(('deactivate', lv))

    def _change(self, vg, op, action):
        action()
        return True

    def op_show(self, vg, lv):
        return {'lv': lv}


def test_snapshot_is_taken_where_the_origin_is_active():
    ops = FakeOps([('compute-2', 'exclusive')])
    assert snapshots.create(ops, 'vg', 'vol', 'snap', 1) == \
        {'routed': 'compute-2'}
    assert ops.calls == [('route', 'compute-2', 'snapshot', 'vol')]


def test_detached_origin_gets_a_short_lease_here():
    ops = FakeOps()
    out = snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    assert out['taken_on'] == 'volume-1'
    assert ops.calls == [('activate', 'vol'), ('lvcreate -s', 'vol', 'snap'),
                         ('deactivate', 'vol')]


def test_origin_held_here_is_used_as_is():
    ops = FakeOps([('volume-1', 'exclusive')])
    snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    assert ops.calls == [('lvcreate -s', 'vol', 'snap')]


def test_shared_origin_is_refused():
    ops = FakeOps([('compute-1', 'shared'), ('compute-2', 'shared')])
    with pytest.raises(errors.LeaseConflict, match='shared'):
        snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    assert ops.calls == []


def test_snapshot_delete_goes_to_the_origin_holder():
    ops = FakeOps([('compute-2', 'exclusive')])
    snapshots.delete(ops, 'vg', 'snap', 'vol')
    assert ops.calls == [('route', 'compute-2', 'snapshot_delete', 'snap')]


def test_snapshot_delete_of_detached_origin_keeps_it_unactivated():
    ops = FakeOps()
    snapshots.delete(ops, 'vg', 'snap', 'vol')
    assert ops.calls == [('reserve', 'vol', 'snapshot delete'),
                         ('lvremove', 'snap'), ('unreserve', 'vol')]


def test_revert_needs_a_detached_origin():
    ops = FakeOps([('compute-2', 'exclusive')])
    with pytest.raises(errors.LeaseConflict, match='compute-2'):
        snapshots.revert(ops, 'vg', 'vol', 'snap')
    assert ops.calls == []
    ops = FakeOps()
    out = snapshots.revert(ops, 'vg', 'vol', 'snap')
    assert out['merge'] == 'on next activation'
    assert ops.calls == [('reserve', 'vol', 'revert'), ('merge', 'snap'),
                         ('unreserve', 'vol')]


def test_revert_refuses_a_snapshot_of_another_origin():
    ops = FakeOps()
    with pytest.raises(errors.InvalidInput, match='not a snapshot of'):
        snapshots.revert(ops, 'vg', 'other', 'snap')


def test_snapshot_activates_only_with_its_origin_here():
    info = {'name': 'snap', 'origin': 'vol'}
    with pytest.raises(errors.LeaseConflict, match='active on compute-2'):
        snapshots.check_activation(
            FakeOps([('compute-2', 'exclusive')]), 'vg', info)
    with pytest.raises(errors.LeaseConflict, match='not active'):
        snapshots.check_activation(FakeOps(), 'vg', info)
    snapshots.check_activation(FakeOps([('volume-1', 'exclusive')]), 'vg',
                               info)
    snapshots.check_activation(FakeOps(), 'vg', {'name': 'vol',
                                                 'origin': ''})


def test_a_merging_snapshot_is_left_to_its_merge():
    ops = FakeOps()
    ops.merging_snapshot = 'snap'
    # Hidden by LVM once merging: still known as vol's snapshot.
    assert snapshots.origin_of(ops, 'vg', 'snap') == 'vol'
    out = snapshots.delete(ops, 'vg', 'snap', 'vol')
    assert out['deleted'] is False and out['merging_into'] == 'vol'
    assert 'cancel the revert' in out['message']
    assert ops.calls == []
    with pytest.raises(errors.LVMError, match='not found'):
        snapshots.origin_of(ops, 'vg', 'gone')


def test_revert_to_the_snapshot_already_merging_is_done():
    ops = FakeOps()
    ops.merging_snapshot = 'snap'
    out = snapshots.revert(ops, 'vg', 'vol', 'snap')
    assert out['already'] is True and ops.calls == []


class RecordingGuard(NoGuard):
    """Records which LV each LVM command ran under, and refuses some."""

    def __init__(self, ops, refuse=()):
        self.ops, self.refuse = ops, set(refuse)

    @contextlib.contextmanager
    def command(self, vg, lv, what):
        if lv in self.refuse:
            raise errors.LVMError(f'{what} {vg}/{lv} refused: fenced',
                                  kind='fenced')
        self.ops.calls.append(('guarded', lv, what))
        yield None


def test_snapshot_create_and_delete_on_the_holder_are_guarded():
    # lvcreate -s and lvremove suspend and resume the active origin: under
    # our lease, never on a fenced or retired origin (devguard).
    ops = FakeOps([('volume-1', 'exclusive')])
    ops.devguard = RecordingGuard(ops)
    snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    snapshots.delete(ops, 'vg', 'snap', 'vol')
    assert ops.calls == [('guarded', 'vol', 'snapshot'),
                         ('lvcreate -s', 'vol', 'snap'),
                         ('guarded', 'vol', 'snapshot delete'),
                         ('lvremove', 'snap')]
    ops = FakeOps([('volume-1', 'exclusive')])
    ops.devguard = RecordingGuard(ops, refuse={'vol'})
    for call in (lambda: snapshots.create(ops, 'vg', 'vol', 'snap', 1),
                 lambda: snapshots.delete(ops, 'vg', 'snap', 'vol')):
        with pytest.raises(errors.LVMError, match='fenced'):
            call()
    assert ops.calls == []


def test_snapshot_refused_when_the_metadata_area_is_nearly_full():
    # A snapshot adds two LV sections: refused before lvcreate -s runs.
    ops = FakeOps([('volume-1', 'exclusive')])
    ops.room = mdaroom.Room('vg', 65536, 31000, 450)
    with pytest.raises(errors.MetadataFull, match='VG vg is nearly full'):
        snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    assert ops.calls == []
    ops.room = mdaroom.Room('vg', 65536, 20000, 450)
    snapshots.create(ops, 'vg', 'vol', 'snap', 1)
    assert ('lvcreate -s', 'vol', 'snap') in ops.calls
