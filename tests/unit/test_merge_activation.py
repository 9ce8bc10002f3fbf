"""Activating an origin with a pending merge (a revert) is a metadata
change: under the VG lock, `lvchange -aey --poll n` (no background poller
outliving the command) then the merge polled to its end in the foreground
(`lvm lvpoll --polloperation merge`), so that no LVM process writes the
VG metadata outside the lock. A normal activation is unchanged. Fake
command runner, fake dmsetup, fake leases (no kernel, no etcd)."""
import types

import pytest

from coordinator import errors
from coordinator.activation import lvm as lvmb
from coordinator.daemon import ops as opsmod
from coordinator.lvm import executor
from tests.unit.fakes import NoGuard


class Runner:
    """Records every LVM argv, and whether the VG lock was held then."""

    def __init__(self, ops):
        self.ops, self.calls, self.fail = ops, [], None

    def __call__(self, argv, env, timeout, **kw):
        self.calls.append((argv, self.ops.locked))
        if self.fail and self.fail in argv:
            return 5, '', f'  {self.fail} failed.\n'
        return 0, '', ''


class Backend(lvmb.LVMBackend):
    """The lvm backend, dmsetup answering 'no such device'."""

    def _dmsetup(self, *args, kill_on_timeout=True):
        raise errors.LVMError('dmsetup: Device does not exist',
                              kind='not-found')



class Ops(opsmod.Operations):
    """Operations with the grant, the checks and the guard faked."""

    def __init__(self, info):
        self.host, self.vgs, self.book = 'g3', {'vg'}, None
        self.locked, self.changes, self.released = False, [], []
        self.info = info
        self.runner = Runner(self)
        self.lvm = executor.LVM(runner=self.runner, activation=True)
        self.backend = Backend(self.lvm, vgs=['vg'])
        grant = types.SimpleNamespace(mode='exclusive', token=7,
                                      instance='vm')
        self.leases = types.SimpleNamespace(
            claim_with=lambda reads, vg, lv, mode, inst, wait, rider=None:
                (grant, True, None),
            release=lambda vg, lv: self.released.append(lv))
        self.guard = types.SimpleNamespace(
            recorded_reads=lambda vg: [],
            recorded_from=lambda recorded: (None, None))
        self.events = lambda kind, **kw: None
        self.fencer_alive = self.fencer_id = lambda: None
        self.readiness = lambda: {}
        self.devguard = NoGuard()

    def _lv_info(self, vg, lv, reread=True):
        return dict(self.info)

    def _change(self, vg, op, action, also=(), into=None):
        self.locked = True
        try:
            self.changes.append(op)
            action()
        finally:
            self.locked = False
        return True


PLAIN = {'name': 'vol', 'uuid': 'U', 'origin': '', 'tags': [],
         'has_snapshots': False, 'merging': ''}


def test_a_merging_origin_is_activated_and_merged_under_the_vg_lock():
    ops = Ops(dict(PLAIN, has_snapshots=True, merging='snap'))
    out = ops.op_activate('vg', 'vol', instance='vm')
    assert out['path'] == '/dev/vg/vol'
    assert ops.runner.calls == [
        (['lvchange', '-aey', '--poll', 'n', 'vg/vol'], True),
        (['lvm', 'lvpoll', '--polloperation', 'merge', '--interval', '1',
          'vg/vol'], True)]
    assert len(ops.changes) == 1 and 'vg/vol' in ops.changes[0]


def test_a_normal_activation_is_unchanged():
    ops = Ops(PLAIN)
    ops.op_activate('vg', 'vol', instance='vm')
    assert ops.runner.calls == [(['lvchange', '-aey', 'vg/vol'], False)]
    assert ops.changes == []
    # An origin with snapshots but no merge pending: the same.
    ops = Ops(dict(PLAIN, has_snapshots=True))
    ops.op_activate('vg', 'vol', instance='vm')
    assert ops.runner.calls == [(['lvchange', '-aey', 'vg/vol'], False)]


def test_a_merge_that_cannot_be_finished_leaves_no_device_nor_grant():
    ops = Ops(dict(PLAIN, has_snapshots=True, merging='snap'))
    ops.runner.fail = 'lvpoll'
    # The device is gone only if dmsetup sees one: say it does.
    rows = iter(['', 'vg-vol|LVM-' + 'x' * 64 + '|dm-0|0|Active|L--w'])
    ops.backend._dmsetup = lambda *a, **kw: next(rows, '')
    with pytest.raises(errors.LVMError, match='lvpoll'):
        ops.op_activate('vg', 'vol', instance='vm')
    argvs = [(c[0][:2], c[1]) for c in ops.runner.calls]
    assert argvs == [(['lvchange', '-aey'], True), (['lvm', 'lvpoll'], True),
                     (['lvchange', '-an'], True)]
    assert ops.released == ['vol']


def test_the_loop_backend_still_refuses_a_pending_merge(tmp_path):
    from coordinator.activation import loop
    ops = Ops(dict(PLAIN, has_snapshots=True, merging='snap'))
    ops.backend = loop.LoopBackend(ops.lvm, str(tmp_path), str(tmp_path))
    with pytest.raises(errors.LVMError, match='pending merge'):
        ops.op_activate('vg', 'vol', instance='vm')
    assert ops.runner.calls == [] and ops.released == ['vol']


def test_lvpoll_argv_and_refusal_without_activation():
    runner = Runner(types.SimpleNamespace(locked=None))
    lvm = executor.LVM(runner=runner, activation=True)
    lvm.finish_merge('vg0', 'lv0', interval=2)
    assert runner.calls[-1][0] == ['lvm', 'lvpoll', '--polloperation',
                                   'merge', '--interval', '2', 'vg0/lv0']
    # A read-only activation's table stays read-only when lvpoll reloads
    # it linear at the merge's end (found on real device-mapper, tier i).
    lvm.finish_merge('vg0', 'lv0', read_only=True)
    assert any('read_only_volume_list=["vg0/lv0"]' in a
               for a in runner.calls[-1][0]), runner.calls[-1][0]
    with pytest.raises(errors.InvalidInput):
        lvm.finish_merge('vg0', 'lv0; rm -rf /')
    lvm = executor.LVM(runner=runner, activation=False)
    with pytest.raises(errors.LVMError, match='disabled'):
        lvm.finish_merge('vg0', 'lv0')


def test_a_restore_after_a_restart_never_polls_a_pending_merge(tmp_path):
    from coordinator.daemon import grantbook
    from coordinator.daemon import reconcile
    book = grantbook.GrantBook(str(tmp_path))
    calls = []

    class Backend:
        def active(self):
            return {}

        def activate(self, vg, lv, read_only, info, **kw):
            calls.append((lv, kw))
            return f'/dev/{vg}/{lv}'

        def admit(self, vg, lv):
            calls.append((lv, 'admit'))

        def tidy(self):
            pass

    holder = types.SimpleNamespace(token=5, session='s2', instance='vm',
                                   host='h1')
    leases = types.SimpleNamespace(
        session=types.SimpleNamespace(host='h1'),
        rebind=lambda vg, lv, token, uuid: holder,
        holders=lambda vg, lv: [holder], release=lambda vg, lv: None,
        mine=lambda: [])
    fencer = types.SimpleNamespace(arm=lambda: True,
                                   fence_existing=lambda keys, why: None)
    for name, uuid in (('m', 'U1'), ('p', 'U2')):
        book.put('vg', name, state=grantbook.ACTIVE, token=5, uuid=uuid)
    lvs = [{'uuid': 'U1', 'name': 'm', 'merging': 'snap'},
           {'uuid': 'U2', 'name': 'p', 'merging': ''}]
    lvm = types.SimpleNamespace(lvs=lambda vg: lvs)
    reconcile.at_start(leases, lvm, Backend(), book, fencer,
                       lambda kind, **kw: None)
    # In either order of the LVs; each one activated, then admitted.
    per_lv = {}
    for lv, what in calls:
        per_lv.setdefault(lv, []).append(what)
    assert per_lv == {'m': [{'poll': False}, 'admit'], 'p': [{}, 'admit']}
