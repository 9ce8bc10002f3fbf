"""Membership through tooz's etcd3gw driver on a real etcd."""
import time

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine.membership import Membership
from coordinator.sandbox.etcd import free_port


def member(endpoints, host):
    etcd = etcdlib.Etcd(endpoints, timeout=2.0)
    return Membership(etcd, keyslib.Keys(cluster='mtest'), host, ttl=3)


def test_join_capabilities_and_leave_events(etcd_server):
    eps = etcd_server.endpoints
    a = member(eps, 'volume-1').join({'vg_seen': True, 'pvs': ['/dev/sdb']})
    events = []
    a.on_change(lambda kind, host: events.append((kind, host)))
    a.poll()
    b = member(eps, 'compute-1').join({'vg_seen': False})
    got = a.members()
    assert got == {'volume-1': {'vg_seen': True, 'pvs': ['/dev/sdb']},
                   'compute-1': {'vg_seen': False}}
    b.update({'vg_seen': True})
    assert a.members()['compute-1'] == {'vg_seen': True}
    deadline = time.monotonic() + 10
    while ('join', 'compute-1') not in events:
        assert time.monotonic() < deadline
        a.poll()
        time.sleep(0.1)
    b.leave()
    while ('leave', 'compute-1') not in events:
        assert time.monotonic() < deadline
        a.poll()
        time.sleep(0.1)
    assert set(a.members()) == {'volume-1'}
    a.leave()


def test_member_vanishes_when_heartbeats_stop(etcd_server):
    eps = etcd_server.endpoints
    a = member(eps, 'volume-1').join({})
    b = member(eps, 'compute-9').join({})
    # compute-9 never heartbeats: its membership lease (3s) runs out.
    deadline = time.monotonic() + 15
    while 'compute-9' in a.members():
        assert time.monotonic() < deadline, 'dead member never left'
        a.heartbeat()
        time.sleep(0.2)
    assert 'volume-1' in a.members()
    a.leave()
    b._close()


def test_join_fails_over_past_a_dead_endpoint(etcd_server):
    dead = f'http://127.0.0.1:{free_port()}'
    etcd = etcdlib.Etcd([dead] + etcd_server.endpoints, timeout=1.0)
    m = Membership(etcd, keyslib.Keys(cluster='mtest'), 'volume-1', ttl=3)
    m.join({'ok': True})
    assert m.members() == {'volume-1': {'ok': True}}
    assert f':{etcd.endpoint().port}' in etcd_server.endpoints[0]
    m.leave()
