"""The storage fence's takeover against a real etcd: a holder whose
session expired is fenced at the storage (its key preempted, proven
gone, recorded) and the LV granted without waiting the grace. The LU is
tests.unit.test_storage.FakeLU (tgtd's PR rules; this machine has no
iSCSI initiator): the real target is the real-kernel tier's
(tests/realhost/test_realhost_storage.py)."""
import threading
import time

import pytest

from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
from coordinator.storage import fence as storagelib
from coordinator.storage import scsi_pr
from tests.unit.test_storage import FakeLU

GRACE = 60.0  # longer than any wait below: a grant proves the fence


@pytest.fixture
def lu(tmp_path):
    return FakeLU(), str(tmp_path)


def engine(endpoints, host, lu, vgs=('vg0',)):
    fake, root = lu
    etcd = etcdlib.Etcd(endpoints, timeout=2.0, retry_window=20.0)
    conn = scsi_pr.ScsiPR([f'/dev/{host}-sda'], 'wero', fake.runner(host),
                          sys_root=root)
    eng = Engine(etcd, host, 'test', ttl=3, grace=GRACE,
                 storage=lambda e: storagelib.StorageFence(
                     conn, e.etcd, e.keys, e.session, vgs=vgs)).open()
    eng.storage.register()
    return eng


def expire(eng, wait=False):
    """The host stops (SIGSTOP, a paused VM): no keepalive, no release;
    ``wait``: until etcd has let its session lease expire."""
    lease = eng.session.id
    eng.session.close(revoke=False)
    deadline = time.monotonic() + 30
    while wait and eng.etcd.lease_ttl(lease) > 0:
        assert time.monotonic() < deadline, 'session never expired'
        time.sleep(0.2)   # etcd's lessor: no event to wait on


def test_takeover_fences_at_the_storage_instead_of_waiting(etcd_server, lu):
    eps = etcd_server.endpoints
    alpha, beta = engine(eps, 'alpha', lu), engine(eps, 'beta', lu)
    fake = lu[0]
    alpha.leases.grant('vg0', 'lv0', instance='vm-a')
    assert fake.write_ok('alpha', '/dev/alpha-sda')
    victim = alpha.session.id
    expire(alpha)
    start = time.monotonic()
    # Without the storage fence this waits GRACE (> wait): LeaseFenceWait.
    mine = beta.leases.grant('vg0', 'lv0', instance='vm-b', wait=30)
    assert mine.host == 'beta'
    assert time.monotonic() - start < GRACE
    assert not fake.write_ok('alpha', '/dev/alpha-sda')
    assert victim not in fake.regs.values()
    record = beta.etcd.get(beta.keys.storage_fence('alpha', victim)).json()
    assert record['host'] == 'alpha' and record['by'] == 'beta'
    assert record['key'] == f'{victim:#x}'
    beta.close(revoke=True)


def test_racing_preempts_of_one_key(etcd_server, lu):
    eps = etcd_server.endpoints
    alpha = engine(eps, 'alpha', lu)
    takers = [engine(eps, h, lu) for h in ('beta', 'gamma', 'delta')]
    victim = alpha.session.id
    expire(alpha, wait=True)
    results = {}

    def fence(eng):
        results[eng.host] = eng.storage.fence('alpha', victim, 'race')
    threads = [threading.Thread(target=fence, args=(e,)) for e in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {'beta': True, 'gamma': True, 'delta': True}
    assert victim not in lu[0].regs.values()
    assert all(lu[0].write_ok(h, f'/dev/{h}-sda')
               for h in ('beta', 'gamma', 'delta'))
    for e in takers:
        e.close(revoke=True)


def test_vg_outside_the_lu_still_waits_the_grace(etcd_server, lu):
    eps = etcd_server.endpoints
    alpha = engine(eps, 'alpha', lu, vgs=('vg1',))
    beta = engine(eps, 'beta', lu, vgs=('vg1',))
    alpha.leases.grant('vg0', 'lv0')
    victim = alpha.session.id
    expire(alpha)
    time.sleep(4)  # past alpha's TTL: its session is gone
    from coordinator import errors
    with pytest.raises(errors.LeaseFenceWait):
        beta.leases.grant('vg0', 'lv0', wait=2)
    assert victim in lu[0].regs.values()
    beta.close(revoke=True)


def test_cluster_mode_mismatch_is_refused_naming_both(etcd_server, lu):
    eps = etcd_server.endpoints
    alpha = engine(eps, 'alpha', lu)
    assert alpha.storage.check_mode()['mode'] == 'scsi-pr'
    etcd = etcdlib.Etcd(eps, timeout=2.0)
    other = Engine(etcd, 'beta', 'test', ttl=3)
    from coordinator import errors
    from coordinator.storage import base
    plain = storagelib.StorageFence(base.NoStorageFence(), etcd, other.keys,
                                    other.session)
    with pytest.raises(errors.InvalidInput) as exc:
        plain.check_mode()
    assert 'storage = none' in str(exc.value) and \
        'storage = scsi-pr' in str(exc.value)
    alpha.close(revoke=True)


def test_vg_lock_after_a_holder_that_died_mid_command(etcd_server, lu):
    """alpha dies holding the VG lock during lvcreate (its intent stays,
    its lock key goes with its session); beta takes the lock and, before
    its own command runs, alpha's key is preempted and the fence
    recorded: alpha's metadata write still queued below LVM cannot land."""
    eps = etcd_server.endpoints
    alpha, beta = engine(eps, 'alpha', lu), engine(eps, 'beta', lu)
    fake = lu[0]
    victim = alpha.session.id
    started, release = threading.Event(), threading.Event()

    def stuck():
        started.set()
        release.wait(30)   # the command in D state
    guard = alpha.guard(lambda vg, fresh: 1)
    t = threading.Thread(target=lambda: _quiet(guard.change, 'vg0',
                                               'lvcreate', stuck))
    t.start()
    assert started.wait(10)
    expire(alpha)
    seen = {}

    def action():
        seen['keys'] = list(fake.regs.values())
        seen['fence'] = beta.etcd.get(beta.keys.storage_fence('alpha',
                                                              victim))
    beta.guard(lambda vg, fresh: 1).change('vg0', 'lvcreate', action,
                                           timeout=30)
    release.set()
    t.join(30)
    assert victim not in seen['keys']
    assert seen['fence'] and seen['fence'].json()['by'] == 'beta'
    assert 'VG vg0' in seen['fence'].json()['why']
    beta.close(revoke=True)


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:   # alpha's lock is lost: what the test is about
        pass


def test_a_live_session_is_never_preempted(etcd_server, lu):
    eps = etcd_server.endpoints
    alpha, beta = engine(eps, 'alpha', lu), engine(eps, 'beta', lu)
    assert beta.storage.fence('alpha', alpha.session.id, 'test') is False
    assert alpha.session.id in lu[0].regs.values()
    alpha.close(revoke=True)
    beta.close(revoke=True)
