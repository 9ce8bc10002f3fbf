"""etcd identity: user/password auth for the engine and tooz, per-host RBAC
as doc/security.md recommends it, on a real etcd with auth enabled."""
import base64
import threading
import uuid

import pytest
import requests

from coordinator import errors
from coordinator import etcd as etcdlib
from coordinator import keys as keyslib
from coordinator import routing
from coordinator import session as sessionlib
from coordinator.membership import Membership
from coordinator.sandbox.etcd import EtcdCluster

HOSTS = ('host-a', 'host-b')
CLUSTER = 'authn'


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _end(prefix):
    return etcdlib.prefix_end(prefix).decode()


def gateway(endpoint, path, body, token=None):
    """One call to etcd's v3 HTTP gateway; the parsed reply."""
    resp = requests.post(f'{endpoint}/v3/{path}', json=body, timeout=10,
                         headers={'Authorization': token} if token else {})
    assert resp.ok, (path, resp.text)
    return resp.json()


def host_permissions(keys, host):
    """The per-host role of doc/security.md: (key, range_end, type)."""
    root = keys.root
    group = 'tooz/groups/' + keys.tooz_group().decode() + '/'
    perms = [(root, _end(root), 'READ'),
             (keys.session(host), None, 'READWRITE'),
             (group, _end(group), 'READWRITE')]
    for sub in ('vg/', 'leases/', 'requests/', 'replies/', 'events/'):
        perms.append((root + sub, _end(root + sub), 'READWRITE'))
    return perms


def enable_auth(endpoint, keys):
    """Users root, host-a, host-b (password pw-<name>), per-host roles."""
    for user in ('root',) + HOSTS:
        gateway(endpoint, 'auth/user/add', {'name': user,
                                            'password': f'pw-{user}'})
    gateway(endpoint, 'auth/role/add', {'name': 'root'})
    gateway(endpoint, 'auth/user/grant', {'user': 'root', 'role': 'root'})
    for host in HOSTS:
        role = f'lvmcoord-{host}'
        gateway(endpoint, 'auth/role/add', {'name': role})
        for key, end, kind in host_permissions(keys, host):
            perm = {'key': _b64(key), 'permType': kind}
            if end:
                perm['range_end'] = _b64(end)
            gateway(endpoint, 'auth/role/grant', {'name': role,
                                                  'perm': perm})
        gateway(endpoint, 'auth/user/grant', {'user': host, 'role': role})
    gateway(endpoint, 'auth/enable', {})


@pytest.fixture(scope='module')
def auth_etcd():
    with EtcdCluster(1) as cluster:
        enable_auth(cluster.endpoints[0], keyslib.Keys('/lvmcoord', CLUSTER))
        yield cluster


def client(cluster, user, password=None):
    return etcdlib.Etcd(cluster.endpoints, timeout=2.0, retry_window=5.0,
                        username=user,
                        password=password or f'pw-{user}')


def test_engine_and_tooz_work_with_user_password(auth_etcd):
    keys = keyslib.Keys('/lvmcoord', CLUSTER)
    a, b = client(auth_etcd, 'host-a'), client(auth_etcd, 'host-b')
    sa = sessionlib.Session(a, keys, 'host-a', ttl=10).open()
    sb = sessionlib.Session(b, keys, 'host-b', ttl=10).open()
    server = routing.Router(b, keys, sb)
    calls = []
    thread = threading.Thread(
        target=server.serve,
        args=(lambda op, args: calls.append(op) or {'ran': op},),
        daemon=True)
    thread.start()
    member = Membership(a, keys, 'host-a', ttl=10)
    try:
        # A routed call: put, watch (token on the stream), claim, reply.
        got = routing.Router(a, keys, sa).call(
            'host-b', 'deactivate', {'vg': 'vg0', 'lv': 'lv0'}, timeout=30)
        assert got == {'ran': 'deactivate'} and calls == ['deactivate']
        # tooz through the same identity (its driver has no auth option).
        member.join({'ready': True})
        assert member.members()['host-a'] == {'ready': True}
        member.heartbeat()
        # An expired or unknown token is renewed transparently.
        a.auth._token = 'not-a-token'
        assert a.get(keys.session('host-a')).lease == sa.id
    finally:
        member.leave()
        server.stop()
        thread.join(30)
        sa.close(revoke=True)
        sb.close(revoke=True)


def test_wrong_or_missing_credentials_are_named(auth_etcd):
    keys = keyslib.Keys('/lvmcoord', CLUSTER)
    with pytest.raises(errors.EtcdDenied,
                       match="refused user 'host-a'.*authentication failed"):
        client(auth_etcd, 'host-a', 'wrong').get(keys.root)
    with pytest.raises(errors.EtcdDenied, match='user name is empty'):
        etcdlib.Etcd(auth_etcd.endpoints, timeout=2.0).get(keys.root)
    with pytest.raises(errors.InvalidInput, match='etcd.username'):
        etcdlib.Etcd(auth_etcd.endpoints, password='x')


def test_per_host_roles_keep_hosts_off_each_others_session(auth_etcd):
    keys = keyslib.Keys('/lvmcoord', CLUSTER)
    a, b = client(auth_etcd, 'host-a'), client(auth_etcd, 'host-b')
    sa = sessionlib.Session(a, keys, 'host-a', ttl=10).open()
    try:
        # host-b cannot overwrite or delete host-a's session marker...
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.put(keys.session('host-a'), {'host': 'host-b'})
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.delete(keys.session('host-a'))
        # ...nor revoke host-a's session lease...
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.lease_revoke(sa.id)
        # ...nor bind a plain put to it (a forged routed request).
        forged = keys.request('host-a', uuid.uuid4().hex)
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.put(forged, {'op': 'deactivate', 'from': 'host-a'},
                  lease=sa.id)
        # Measured limit of etcd 3.4 (doc/security.md): a put inside a txn
        # is not checked against the lease's keys, so a host CAN bind a
        # request to another host's lease that way.
        res = b.txn([], [etcdlib.op_put(forged, 'x', lease=sa.id)])
        assert res.succeeded and a.get(forged).lease == sa.id
        b.delete(forged)
        # Outside the cluster prefix a host may do nothing at all.
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.put('/elsewhere', 'x')
    finally:
        sa.close(revoke=True)
