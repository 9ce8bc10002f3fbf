"""etcd identity: user/password auth for the engine and tooz, per-host RBAC
as doc/security.md recommends it, on a real etcd with auth enabled."""
import base64
import os
import subprocess
import threading
import time
from unittest import mock
import uuid

import pytest
import requests

from coordinator import errors
from coordinator.daemon import routing
from coordinator.engine import etcd as etcdlib
from coordinator.engine import history
from coordinator.engine import keys as keyslib
from coordinator.engine import session as sessionlib
from coordinator.engine.membership import Membership
from coordinator.sandbox import etcd as sandbox_etcd
from coordinator.sandbox.etcd import EtcdCluster

HOSTS = ('host-a', 'host-b')
CLUSTER = 'authn'


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _end(prefix):
    return etcdlib.prefix_end(prefix).decode()


def gateway(endpoint, path, body, tls=None):
    """One call to etcd's v3 HTTP gateway; the parsed reply."""
    resp = requests.post(f'{endpoint}/v3/{path}', json=body, timeout=10,
                         **(tls or {}))
    assert resp.ok, (path, resp.text)
    return resp.json()


def host_permissions(keys, host):
    """The per-host role of doc/security.md: (key, range_end, type)."""
    root = keys.root
    group = 'tooz/groups/' + keys.tooz_group().decode() + '/'
    perms = [(root, _end(root), 'READ'),
             (keys.session(host), None, 'READWRITE'),
             (keys.epoch(), None, 'READWRITE'),
             (keys.schema(), None, 'READWRITE'),
             (keys.history_witness(host), None, 'READWRITE'),
             (group, _end(group), 'READWRITE')]
    for sub in ('vg/', 'leases/', 'requests/', 'replies/', 'events/',
                'once/'):
        perms.append((root + sub, _end(root + sub), 'READWRITE'))
    return perms


def enable_auth(endpoint, keys, tls=None):
    """Users root, host-a, host-b (password pw-<name>), per-host roles."""
    def call(path, body):
        return gateway(endpoint, path, body, tls)
    for user in ('root',) + HOSTS:
        call('auth/user/add', {'name': user, 'password': f'pw-{user}'})
    call('auth/role/add', {'name': 'root'})
    call('auth/user/grant', {'user': 'root', 'role': 'root'})
    for host in HOSTS:
        role = f'lvmcoord-{host}'
        call('auth/role/add', {'name': role})
        for key, end, kind in host_permissions(keys, host):
            perm = {'key': _b64(key), 'permType': kind}
            if end:
                perm['range_end'] = _b64(end)
            call('auth/role/grant', {'name': role, 'perm': perm})
        call('auth/user/grant', {'user': host, 'role': role})
    call('auth/enable', {})


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


def test_writes_stamp_the_hosts_own_witness_under_its_role(auth_etcd,
                                                          tmp_path):
    keys = keyslib.Keys('/lvmcoord', CLUSTER)
    a, b = client(auth_etcd, 'host-a'), client(auth_etcd, 'host-b')
    a.witness = history.History(a, keys, 'host-a', str(tmp_path), CLUSTER)
    assert a.witness.check() is None
    wrote = a.put(keys.root + 'events/host-a-1', 'x')
    assert a.get(keys.history_witness('host-a')).mod_revision == wrote
    assert a.witness.mark()['witness'] == wrote
    a.delete(keys.root + 'events/host-a-1')
    # A host cannot move (nor hide) another host's witness.
    with pytest.raises(errors.EtcdDenied, match='permission denied'):
        b.put(keys.history_witness('host-a'), '')


# -- TLS: per-host client certificates (etcd --client-cert-auth) --

def _openssl(*args, cwd):
    subprocess.run(['openssl', *args], cwd=cwd, check=True,
                   capture_output=True)


def make_pki(path, clients):
    """A CA, a server certificate for 127.0.0.1, a client cert per name:
    ``<name>.pem`` with CN=<name>, ``<name>-nocn.pem`` with the name in
    O/OU only (etcd 3.4's gateway refuses a client CN once auth is on)."""
    _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout',
             'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=test-ca',
             cwd=path)
    # etcd 3.4's HTTP gateway dials etcd's own gRPC port with the server
    # certificate: with --client-cert-auth it needs clientAuth too.
    exts = {'server': 'subjectAltName=IP:127.0.0.1\n'
                      'extendedKeyUsage=serverAuth,clientAuth\n',
            'client': 'extendedKeyUsage=clientAuth\n'}
    for kind, text in exts.items():
        with open(os.path.join(path, f'{kind}.ext'), 'w') as f:
            f.write(text)
    certs = [('server', 'server', '/CN=etcd')]
    for c in clients:
        certs += [(c, 'client', f'/CN={c}'),
                  (f'{c}-nocn', 'client', f'/O=lvmcoord/OU={c}')]
    for name, kind, subject in certs:
        _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout',
                 f'{name}.key', '-out', f'{name}.csr', '-subj', subject,
                 cwd=path)
        _openssl('x509', '-req', '-in', f'{name}.csr', '-CA', 'ca.pem',
                 '-CAkey', 'ca.key', '-CAcreateserial', '-out', f'{name}.pem',
                 '-days', '2', '-extfile', f'{kind}.ext', cwd=path)


class TLSMember(sandbox_etcd.Member):
    """An etcd member serving https only to clients with a CA-signed
    certificate (--client-cert-auth)."""

    pki = None

    @property
    def url(self):
        return f'https://127.0.0.1:{self.client_port}'

    def start(self, initial_cluster, state='new'):
        extra = ['--client-cert-auth',
                 '--trusted-ca-file', os.path.join(self.pki, 'ca.pem'),
                 '--cert-file', os.path.join(self.pki, 'server.pem'),
                 '--key-file', os.path.join(self.pki, 'server.key')]
        # Member.start builds the command line; add the TLS flags to it.
        with mock.patch.object(sandbox_etcd.subprocess, 'Popen',
                               side_effect=lambda args, **kw: _popen(
                                   args + extra, **kw)):
            return super().start(initial_cluster, state)

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + '/health', timeout=1,
                                verify=os.path.join(self.pki, 'ca.pem'),
                                cert=(os.path.join(self.pki, 'root.pem'),
                                      os.path.join(self.pki, 'root.key'))
                                ).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f'etcd not ready: {self.log_tail()}')


_popen = subprocess.Popen


@pytest.fixture(scope='module')
def tls_etcd(tmp_path_factory):
    pki = str(tmp_path_factory.mktemp('pki'))
    make_pki(pki, ('root',) + HOSTS)
    cluster = EtcdCluster(1)
    TLSMember.pki = pki
    cluster.members = [TLSMember(m.name, m.data_dir, m.token)
                       for m in cluster.members]
    cluster.initial = ','.join(f'{m.name}={m.peer_url}'
                               for m in cluster.members)
    with cluster:
        yield cluster, pki


def tls_client(cluster, pki, cert, user=None):
    return etcdlib.Etcd(
        cluster.endpoints, ca_file=os.path.join(pki, 'ca.pem'),
        cert_file=os.path.join(pki, f'{cert}.pem'),
        key_file=os.path.join(pki, f'{cert}.key'), timeout=2.0,
        retry_window=3.0, username=user,
        password=f'pw-{user}' if user else None)


def test_client_certificates_with_per_host_users(tls_etcd):
    cluster, pki = tls_etcd
    keys = keyslib.Keys('/lvmcoord', CLUSTER)
    root = tls_client(cluster, pki, 'root')
    # Before auth is on, a certificate alone is enough.
    root.put(keys.root + 'probe', 'x')
    # Without a CA-signed certificate etcd does not even talk to us.
    with pytest.raises(errors.EtcdUnavailable):
        etcdlib.Etcd(cluster.endpoints, ca_file=os.path.join(pki, 'ca.pem'),
                     timeout=1.0, retry_window=0.5).get(keys.root)
    enable_auth(cluster.endpoints[0], keys,
                {'verify': os.path.join(pki, 'ca.pem'),
                 'cert': (os.path.join(pki, 'root.pem'),
                          os.path.join(pki, 'root.key'))})
    # etcd 3.4's HTTP gateway never takes the certificate's CN as the
    # etcd user, and once auth is on it refuses any client certificate
    # with a CN (measured; doc/security.md): said clearly, with or
    # without a password...
    with pytest.raises(errors.EtcdDenied, match='CommonName'):
        tls_client(cluster, pki, 'host-a').get(keys.root)
    with pytest.raises(errors.EtcdDenied, match='CommonName'):
        tls_client(cluster, pki, 'host-a', 'host-a').get(keys.root)
    # ...so: a CN-less per-host certificate (transport) + the host's own
    # etcd user (RBAC) works, engine and tooz alike.
    a = tls_client(cluster, pki, 'host-a-nocn', 'host-a')
    sa = sessionlib.Session(a, keys, 'host-a', ttl=10).open()
    member = Membership(a, keys, 'host-a', ttl=10)
    try:
        assert a.get(keys.session('host-a')).lease == sa.id
        member.join({'tls': True})
        assert member.members()['host-a'] == {'tls': True}
        b = tls_client(cluster, pki, 'host-b-nocn', 'host-b')
        with pytest.raises(errors.EtcdDenied, match='permission denied'):
            b.put(keys.session('host-a'), 'x')
    finally:
        member.leave()
        sa.close(revoke=True)
