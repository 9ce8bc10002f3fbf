"""The copy operation's rules: where it runs, what it reads, what it
leaves (files stand in for devices; the functional tests run it on real
daemons)."""
import contextlib
import os

import pytest

from coordinator import errors
from coordinator.api import schema
from coordinator.daemon import copy
from coordinator.engine import modes
from tests.unit.fakes import NoGuard

MiB = 1 << 20



class FakeOps:
    """Operations as copy.run uses them, recording what it does."""

    def __init__(self, tmp, holders=None, host='compute-1', snapshots=True):
        self.host, self.tmp = host, tmp
        self.calls = []
        self.lvs = {}
        self.held = {lv: [modes.Holder(host=h, mode=m) for h, m in hs]
                     for lv, hs in (holders or {}).items()}
        self.devices = {}
        self.devguard = NoGuard()
        # The metadata area always has room here (tests/unit/test_mdaroom).
        self.check_room = lambda vg, op, what, extra=0: None
        ops = self

        class Leases:
            def holders(self, vg, lv):
                return list(ops.held.get(lv, []))

            @contextlib.contextmanager
            def reserved(self, vg, lv, op):
                ops.calls.append(('reserve', lv))
                yield

        class Router:
            def call(self, host, op, args, timeout=None):
                ops.calls.append(('route', host, op, dict(args)))
                return {'routed': host, 'timeout': timeout}

        class LVM:
            def create_snapshot(self, vg, lv, name, size):
                ops.calls.append(('lvcreate -s', lv, name))
                ops.add(name, ops.lvs[lv]['size'], origin=lv)
                # LVM makes its device with the origin's.
                ops.devices[name] = ops.data(name)

            def remove_lv(self, vg, lv):
                ops.calls.append(('lvremove', lv))
                del ops.lvs[lv]

            remove_snapshot = remove_lv

            def lv(self, vg, lv):
                return ops._lv_info(vg, lv)

            def lvs(self, vg):
                return list(ops.lvs.values())

        class Backend:
            name = 'lvm' if snapshots else 'loop'

            def path(self, vg, lv):
                return ops.devices.get(lv)

        Backend.snapshots = snapshots
        self.leases, self.router, self.lvm = Leases(), Router(), LVM()
        self.backend = Backend()

    def events(self, kind, **kw):
        self.calls.append(('event', kind))

    def data(self, lv):
        return os.path.join(self.tmp, lv)

    def add(self, lv, size, origin='', content=b''):
        self.lvs[lv] = {'name': lv, 'size': size, 'origin': origin,
                        'merging': '', 'has_snapshots': False}
        if origin:
            self.lvs[origin]['has_snapshots'] = True
        with open(self.data(lv), 'wb') as f:
            f.write(content)
            f.truncate(size)

    def _lv_info(self, vg, lv, reread=True):
        if lv not in self.lvs:
            raise errors.LVMError(f'LV {vg}/{lv} not found',
                                  kind='not-found')
        return dict(self.lvs[lv])

    def op_activate(self, vg, lv, instance=None, read_only=False):
        self.calls.append(('activate', lv, 'ro' if read_only else 'rw'))
        self.held.setdefault(lv, []).append(
            modes.Holder(host=self.host, mode=modes.EXCLUSIVE,
                         instance=instance))
        self.devices[lv] = self.data(lv)
        return {'path': self.data(lv)}

    def op_deactivate(self, vg, lv):
        self.calls.append(('deactivate', lv))
        self.held.pop(lv, None)
        self.devices.pop(lv, None)

    def _change(self, vg, op, action):
        action()
        return True

    def op_show(self, vg, lv):
        return {'lv': lv}


def read(path, size):
    with open(path, 'rb') as f:
        return f.read(size)


def test_copy_is_validated_like_every_request():
    args = {'vg': 'vg', 'src': 'a', 'dst': 'b', 'size': 8 * MiB}
    assert schema.validate({'op': 'copy', 'args': args}) == ('copy', args)
    for bad in ({'src': '../x'}, {'dst': '-rf'}, {'size': -1},
                {'snapshot': 'snapshot0'}, {'size': 'x'}, {'lv': 'a'},
                {'dst': 'x' * 200}):
        with pytest.raises(errors.InvalidInput):
            schema.validate({'op': 'copy', 'args': dict(args, **bad)})


def test_source_active_elsewhere_is_copied_there(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-2', 'exclusive')]},
                  host='volume-1')
    ops.add('vol', 8 * MiB)
    ops.add('new', 8 * MiB)
    out = copy.run(ops, 'vg', 'vol', 'new', 8 * MiB, 'new-src')
    assert out['routed'] == 'compute-2'
    assert out['timeout'] == copy.timeout_for(8 * MiB)
    assert ops.calls == [('route', 'compute-2', 'copy', {
        'vg': 'vg', 'src': 'vol', 'dst': 'new', 'size': 8 * MiB,
        'snapshot': 'new-src'})]


def test_snapshot_source_goes_to_its_origins_holder(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-2', 'exclusive')]},
                  host='volume-1')
    ops.add('vol', 8 * MiB)
    ops.add('snap', 8 * MiB, origin='vol')
    ops.add('new', 8 * MiB)
    copy.run(ops, 'vg', 'snap', 'new', 8 * MiB)
    assert ops.calls[0][:3] == ('route', 'compute-2', 'copy')


def test_in_use_here_reads_a_temporary_snapshot_removed_after(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-1', 'exclusive')]})
    ops.add('vol', 8 * MiB, content=b'guest data')
    ops.devices['vol'] = ops.data('vol')
    ops.add('new', 8 * MiB)
    out = copy.run(ops, 'vg', 'vol', 'new', 8 * MiB, 'new-src')
    assert out['consistency'] == 'snapshot' and out['on'] == 'compute-1'
    assert ops.calls == [('lvcreate -s', 'vol', 'new-src'),
                         ('activate', 'new', 'rw'), ('deactivate', 'new'),
                         ('lvremove', 'new-src')]
    # The snapshot file was made empty of data here: what was read is
    # the snapshot's, not the origin's.
    assert read(ops.data('new'), 10) == bytes(10)
    assert 'new-src' not in ops.lvs and not ops.held.get('new')


def test_failed_copy_still_removes_the_snapshot_and_releases(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-1', 'exclusive')]})
    ops.add('vol', 8 * MiB)
    ops.devices['vol'] = ops.data('vol')
    ops.add('new', 8 * MiB)
    os.truncate(ops.data('new'), 4 * MiB)   # a short device: I/O error
    with pytest.raises(errors.LVMError, match='short read'):
        copy.run(ops, 'vg', 'vol', 'new', 8 * MiB, 'new-src')
    assert ('lvremove', 'new-src') in ops.calls
    assert ops.calls[-2:] == [('deactivate', 'new'), ('lvremove', 'new-src')]
    assert 'new-src' not in ops.lvs and not ops.held.get('new')


def test_without_device_mapper_an_in_use_source_is_read_live(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-1', 'exclusive')]},
                  snapshots=False)
    ops.add('vol', 8 * MiB, content=b'guest data')
    ops.devices['vol'] = ops.data('vol')
    ops.add('new', 8 * MiB)
    out = copy.run(ops, 'vg', 'vol', 'new', 8 * MiB, 'new-src')
    assert out['consistency'] == 'live'
    assert read(ops.data('new'), 10) == b'guest data'
    assert ops.calls == [('activate', 'new', 'rw'), ('deactivate', 'new')]


def test_detached_source_gets_a_short_read_only_lease(tmp_path):
    ops = FakeOps(str(tmp_path))
    ops.add('vol', 8 * MiB, content=b'x' * 5)
    ops.add('new', 8 * MiB)
    out = copy.run(ops, 'vg', 'vol', 'new', 4 * MiB)
    assert out['consistency'] == 'detached' and out['written'] == 4 * MiB
    assert ops.calls == [('activate', 'vol', 'ro'), ('activate', 'new', 'rw'),
                         ('deactivate', 'new'), ('deactivate', 'vol')]
    assert read(ops.data('new'), 5) == b'xxxxx'


def test_loop_backend_refuses_a_snapshot_source_before_activating(tmp_path):
    ops = FakeOps(str(tmp_path), {'vol': [('compute-1', 'exclusive')]},
                  snapshots=False)
    ops.add('vol', 8 * MiB)
    ops.add('snap', 8 * MiB, origin='vol')
    ops.add('new', 8 * MiB)
    with pytest.raises(errors.LVMError, match='cannot read snapshots'):
        copy.run(ops, 'vg', 'snap', 'new', 8 * MiB)
    assert ops.calls == []


@pytest.mark.parametrize('args, match', [
    (('vol', 'vol', MiB), 'three LVs'),
    (('vol', 'new', MiB, 'vol'), 'three LVs'),
    (('vol', 'new', 16 * MiB), 'size'),
    (('snap', 'new', MiB, 'tmp'), 'snapshot already'),
    (('vol', 'snap', MiB), 'not a copy destination'),
    (('vol', 'gone', MiB), 'not found'),
])
def test_bad_copies_are_refused_before_anything_runs(tmp_path, args, match):
    ops = FakeOps(str(tmp_path))
    ops.add('vol', 8 * MiB)
    ops.add('snap', 8 * MiB, origin='vol')
    ops.add('new', 8 * MiB)
    with pytest.raises(errors.CoordError, match=match):
        copy.run(ops, 'vg', *args)
    assert ops.calls == []


def test_migrating_or_shared_source_and_held_destination_are_refused(
        tmp_path):
    for holders, match in (
            ({'vol': [('compute-1', 'migration'),
                      ('compute-2', 'migration')]}, 'live migration'),
            ({'vol': [('compute-1', 'shared')]}, 'shared'),
            ({'new': [('compute-2', 'exclusive')]}, 'held by compute-2')):
        ops = FakeOps(str(tmp_path), holders)
        ops.add('vol', 8 * MiB)
        ops.add('new', 8 * MiB)
        with pytest.raises(errors.LeaseConflict, match=match):
            copy.run(ops, 'vg', 'vol', 'new', MiB)
        assert ops.calls == []
