"""Concurrent lvcreate from 3 simulated hosts on one real shared VG: plain
LVM loses LVs (or the VG); under the VG lock none is lost and the seqno
recorded in etcd is the VG's."""
import contextlib

import pytest

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
from coordinator.lvm import mda
from coordinator.sandbox import race
from coordinator.sandbox.lvm import SharedVG


def test_plain_lvm_loses_lvs_under_concurrency():
    # Evidence that the mechanism is needed: the same race without the
    # lock. It is a race, so a few attempts are allowed to show it.
    outcomes = []
    for _ in range(5):
        with SharedVG(hosts=3, size=1 << 30) as shared:
            outcome = race.without_lock(shared, rounds=20).outcome()
        outcomes.append(outcome)
        if outcome['lost'] or outcome['unreadable']:
            break
    assert any(o['lost'] or o['unreadable'] for o in outcomes), outcomes


def test_vg_lock_loses_nothing_and_records_seqno(etcd_server):
    with SharedVG(hosts=3, size=1 << 30) as shared:
        engines = [Engine(etcdlib.Etcd(etcd_server.endpoints), f'host-{i}',
                          'race', ttl=10).open() for i in range(3)]
        try:
            result = race.with_lock(
                shared, 20, engines,
                lambda vg, fresh: mda.read(shared.device).seqno)
            outcome = result.outcome()
            assert result.failures == []
            assert outcome == {'expected': 60, 'present': 60, 'lost': 0,
                               'unreadable': None, 'failed_commands': 0}
            on_disk = shared.hosts[1].lvm.vg(shared.vg)['seqno']
            recorded, intent = engines[0].guard(None).recorded(shared.vg)
            assert recorded == on_disk
            assert intent is None
        finally:
            for e in engines:
                e.close(revoke=True)


@contextlib.contextmanager
def _guarded(etcd_server, shared, alerts=None):
    """An engine for one host and its MetadataGuard on ``shared``."""
    eng = Engine(etcdlib.Etcd(etcd_server.endpoints), 'host-0', 'seq',
                 ttl=10).open()
    guard = eng.guard(lambda vg, fresh: mda.read(shared.device).seqno,
                      on_alert=lambda vg, msg: alerts.append(msg)
                      if alerts is not None else None)
    guard.rescan_delay = 0.01
    try:
        yield eng, guard
    finally:
        eng.close(revoke=True)


def test_out_of_band_change_is_reported(etcd_server):
    alerts = []
    with SharedVG(hosts=2, size=256 << 20) as shared, \
            _guarded(etcd_server, shared, alerts) as (eng, guard):
        vg, lvm = shared.vg, shared.hosts[0].lvm
        guard.change(vg, 'a', lambda: lvm.create_lv(vg, 'a', 4 << 20))
        # Someone runs LVM by hand on another host, around lvmcoord.
        shared.hosts[1].lvm.create_lv(vg, 'by-hand', 4 << 20)
        guard.change(vg, 'b', lambda: lvm.create_lv(vg, 'b', 4 << 20))
        assert len(alerts) == 1
        assert 'changed outside lvmcoord' in alerts[0] and vg in alerts[0]
        assert guard.recorded(vg)[0] == lvm.vg(vg)['seqno']


def test_stale_view_refuses_to_act(etcd_server):
    with SharedVG(hosts=1, size=256 << 20) as shared, \
            _guarded(etcd_server, shared) as (eng, guard):
        vg, lvm = shared.vg, shared.hosts[0].lvm
        guard.change(vg, 'a', lambda: lvm.create_lv(vg, 'a', 4 << 20))
        recorded = guard.recorded(vg)[0]
        guard.read_seqno = lambda vg, fresh: recorded - 1
        ran = []
        with pytest.raises(errors.SeqnoBehind, match=f'{recorded - 1}'):
            guard.change(vg, 'b', lambda: ran.append(1))
        assert ran == []
        # The lock was released: the next holder gets in at once.
        assert eng.vglock(vg).queue() == []


def test_holder_dying_mid_change_is_adopted_not_alerted(etcd_server):
    alerts = []
    with SharedVG(hosts=1, size=256 << 20) as shared, \
            _guarded(etcd_server, shared, alerts) as (eng, guard):
        vg, lvm = shared.vg, shared.hosts[0].lvm
        guard.change(vg, 'a', lambda: lvm.create_lv(vg, 'a', 4 << 20))
        # A holder wrote its intent, ran lvcreate, and died before
        # recording the new seqno.
        eng.etcd.txn([], [etcdlib.op_put(eng.keys.vg_intent(vg),
                                         {'host': 'dead-host', 'op': 'x'})])
        lvm.create_lv(vg, 'x', 4 << 20)
        guard.change(vg, 'b', lambda: lvm.create_lv(vg, 'b', 4 << 20))
        assert alerts == []
        assert guard.recorded(vg) == (lvm.vg(vg)['seqno'], None)


def test_after_runs_on_the_change_and_fails_only_once_recorded(etcd_server):
    with SharedVG(hosts=1, size=256 << 20) as shared, \
            _guarded(etcd_server, shared) as (eng, guard):
        vg, lvm = shared.vg, shared.hosts[0].lvm
        seen = []
        guard.change(vg, 'a', lambda: lvm.create_lv(vg, 'a', 4 << 20),
                     after=lambda: seen.append(
                         [x['name'] for x in lvm.lvs(vg)]))
        assert seen == [['a']]

        def broken():
            raise errors.LVMError('reply not parsed')
        with pytest.raises(errors.LVMError, match='reply not parsed'):
            guard.change(vg, 'b', lambda: lvm.create_lv(vg, 'b', 4 << 20),
                         after=broken)
        # Its change is recorded and the lock released all the same.
        assert guard.recorded(vg) == (lvm.vg(vg)['seqno'], None)
        assert eng.vglock(vg).queue() == []

        # A command that failed has no "after".
        called = []
        with pytest.raises(errors.LVMError):
            guard.change(vg, 'a', lambda: lvm.create_lv(vg, 'a', 4 << 20),
                         after=lambda: called.append(1))
        assert called == []
        assert eng.vglock(vg).queue() == []
