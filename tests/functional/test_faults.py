"""Engine behaviour when hosts die and etcd members fail."""
import signal
import threading
import time

import pytest

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.sandbox.etcd import free_port
from tests.functional.test_engine import assert_no_overlap
from tests.functional.test_engine import engine
from tests.functional.test_engine import intervals


def test_dead_holder_lv_granted_only_after_expiry_and_grace(etcd_server):
    eps = etcd_server.endpoints
    dying = engine(eps, 'compute-1', ttl=2)
    taker = engine(eps, 'compute-2', ttl=2, grace=1.5)
    dying.leases.grant('vg0', 'v1', 'exclusive', 'i1')
    # The holder stops keeping its session alive, as a crashed host would.
    dying.session.close()
    died = time.monotonic()
    with pytest.raises(errors.LeaseConflict, match='held by compute-1'):
        taker.leases.grant('vg0', 'v1', 'exclusive', 'i2')
    expired = []

    def watch_expiry():
        while any(h.alive for h in taker.leases.holders('vg0', 'v1')):
            time.sleep(0.02)
        expired.append(time.monotonic())

    t = threading.Thread(target=watch_expiry)
    t.start()
    got = taker.leases.grant('vg0', 'v1', 'exclusive', 'i2', wait=15)
    granted = time.monotonic()
    t.join()
    # Safety, not speed: the grant came after the session expired and the
    # full grace period had passed since.
    assert expired and granted - expired[0] >= 1.5 - 0.05
    assert granted - died >= 2.0
    assert [(h.host, h.alive) for h in taker.leases.holders('vg0', 'v1')] \
        == [('compute-2', True)]
    assert got.token > 0
    taker.close(revoke=True)


def test_fence_wait_error_names_the_vanished_holder(etcd_server):
    eps = etcd_server.endpoints
    dying = engine(eps, 'compute-1', ttl=2)
    taker = engine(eps, 'compute-2', grace=30)
    granted = dying.leases.grant('vg0', 'v1')
    dying.session.close()
    dying.etcd.lease_revoke(dying.session.id)
    # The dead holder still shows the token of its grant (lease break
    # needs it).
    [dead] = taker.leases.holders('vg0', 'v1')
    assert (dead.alive, dead.token) == (False, granted.token)
    with pytest.raises(errors.LeaseFenceWait) as exc:
        taker.leases.grant('vg0', 'v1')
    assert 'compute-1' in str(exc.value) and 'session ended' in str(exc.value)
    # The same host coming back (new session) is not kept waiting.
    back = engine(eps, 'compute-1')
    assert back.leases.grant('vg0', 'v1').host == 'compute-1'
    back.close(revoke=True)
    taker.close(revoke=True)


def test_endpoint_failover_to_next(etcd_server):
    dead = f'http://127.0.0.1:{free_port()}'
    etcd = etcdlib.Etcd([dead] + etcd_server.endpoints, timeout=1.0)
    etcd.put('/failover', 'ok')
    assert etcd.get('/failover').value == 'ok'
    assert etcd.endpoint().geturl() == etcd_server.endpoints[0]


def test_unreachable_etcd_is_a_clear_error():
    etcd = etcdlib.Etcd([f'http://127.0.0.1:{free_port()}'], timeout=0.5,
                        retry_window=1.0)
    with pytest.raises(errors.EtcdUnavailable, match='etcd unreachable'):
        etcd.get('/x')


def test_leader_killed_while_locks_and_leases_held(etcd_cluster3, actors):
    cluster = etcd_cluster3
    eps = cluster.endpoints
    # Each process lists the endpoints in its own order, so some of them
    # talk to the leader that is about to die and must fail over.
    lockers = [actors(eps[i:] + eps[:i], f'h{i}', 'lock', '--vg', 'vg0',
                      '--rounds', '40', '--hold', '0.02', ttl=5)
               for i in range(3)]
    holder = actors(eps, 'leaseholder', 'lease', '--vg', 'vg0', '--lv',
                    'v1', ttl=5)
    holder.wait_event('granted')
    for p in lockers:
        p.wait_event('enter', count=5)
    leader = cluster.leader()
    leader.stop(signal.SIGKILL)
    survivors = [m.url for m in cluster.members if m is not leader]
    for p in lockers:
        p.wait_event('done', timeout=120)
    sections = intervals(lockers)
    assert len(sections) == 120
    assert_no_overlap(sections)
    # The lease outlived the election: same holder, session never lost.
    check = etcdlib.Etcd(survivors, timeout=2.0)
    eng = engine(survivors, 'observer', ttl=5)
    holders = eng.leases.holders('vg0', 'v1')
    assert [(h.host, h.alive) for h in holders] == [('leaseholder', True)]
    assert holder.events('lost') == []
    with pytest.raises(errors.LeaseConflict, match='leaseholder'):
        eng.leases.grant('vg0', 'v1')
    assert check.get(eng.keys.session('leaseholder')) is not None
    eng.close(revoke=True)
