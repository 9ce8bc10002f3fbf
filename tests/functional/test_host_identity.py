"""Host identity (issue 22, item 5): a host name is not an identity. A
second machine configured with a host name whose session is live is
refused, naming the other machine, and never touches the first's session,
routed requests or grants; one daemon per state dir. Real etcd, real LVM
on loop devices, real daemons."""
import os
import time
from urllib import parse

import pytest

from coordinator.engine import etcd as etcdlib
from coordinator.engine import identity
from coordinator.engine import keys as keyslib
from coordinator.engine import session as sessionlib
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.daemons import Daemon
from coordinator.sandbox.etcd import EtcdCluster
from coordinator.sandbox.proxy import Proxy
from tests.functional.rowatch import ROWatch

MiB = 1 << 20
DEADLINE = 60.0
REFUSED = 'lvmcoordd: start refused: '


def refused_or_serving(daemon, timeout=DEADLINE):
    """The daemon's exit status, or None once its API answers (it was not
    refused: it serves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.proc.poll()
        if status is not None:
            return status
        try:
            daemon.client.call('status')
            return None
        except Exception:
            time.sleep(0.1)
    raise AssertionError(f'{daemon.host}: neither refused nor serving '
                         f'after {timeout:g} s\n{daemon.log_tail()}')


def refusal(daemon):
    with open(daemon.log + '.err') as f:
        lines = [x for x in f.read().splitlines() if x.startswith(REFUSED)]
    assert len(lines) == 1, daemon.log_tail()
    return lines[0][len(REFUSED):]


def read_only(path):
    loop = os.path.basename(os.path.realpath(path))
    with open(f'/sys/block/{loop}/ro') as f:
        return f.read().strip() == '1'


@pytest.fixture
def cluster():
    with Cluster(hosts=('volume-1', 'compute-1'), ttl=6, grace=1.0) as c:
        yield c


def test_second_machine_with_the_same_host_name_is_refused(cluster):
    vg = cluster.vg.vg
    volume, first = cluster['volume-1'].client, cluster['compute-1'].client
    volume.call('create', vg=vg, lv='vm-disk', size=4 * MiB)
    got = first.call('activate', vg=vg, lv='vm-disk', instance='vm-1')
    etcd = etcdlib.Etcd(cluster.etcd.endpoints)
    keys = keyslib.Keys('/lvmcoord', 'sandbox')
    before = etcd.get(keys.session('compute-1'))
    holders = volume.call('show', vg=vg, lv='vm-disk')['holders']
    assert [(h['host'], h['alive']) for h in holders] == \
        [('compute-1', True)]

    # Another machine (a cloned image) configured as compute-1.
    sim = cluster.vg._make_host('clone')
    clone = Daemon('compute-1', os.path.join(cluster.dir, 'clone'),
                   cluster.etcd.endpoints, vg, sim.system_dir, ttl=6,
                   grace=1.0, session__machine_id='cloned-machine')
    try:
        clone.start(wait=False)
        status = refused_or_serving(clone)
        assert status == 1, 'the clone was not refused: it serves'
    finally:
        clone.stop()
    line = refusal(clone)
    ours = identity.machine_id()
    assert line.startswith(f'host name compute-1 is in use by machine '
                           f'{ours}'), line
    assert 'cloned-machine' in line

    # The first machine's session record, grant and device are untouched.
    after = etcd.get(keys.session('compute-1'))
    assert (after.mod_revision, after.lease) == \
        (before.mod_revision, before.lease)
    assert after.json()['machine'] == ours
    shown = volume.call('show', vg=vg, lv='vm-disk')['holders']
    assert [(h['host'], h['alive'], h['token']) for h in shown] == \
        [('compute-1', True, holders[0]['token'])]
    assert not read_only(got['path'])
    fd = os.open(got['path'], os.O_WRONLY)
    try:
        os.pwrite(fd, b'x' * 512, 0)
    finally:
        os.close(fd)
    # Its routed requests are still its own: a routed deactivate from the
    # volume host is run by the first machine's daemon.
    volume.call('deactivate', vg=vg, lv='vm-disk', host='compute-1')
    assert not os.path.exists(got['path'])
    assert cluster['compute-1'].proc.poll() is None


def test_second_daemon_on_one_state_dir_is_refused(cluster):
    first = cluster['compute-1']
    second = Daemon('compute-2', os.path.join(cluster.dir, 'second'),
                    cluster.etcd.endpoints, cluster.vg.vg,
                    session__state_dir=first.state_dir)
    try:
        second.start(wait=False)
        assert refused_or_serving(second) == 1, \
            'a second daemon serves on the same state dir'
    finally:
        second.stop()
    line = refusal(second)
    assert line.startswith(f'[session] state_dir {first.state_dir} is in '
                           f'use by another lvmcoordd (pid '), line
    # The first daemon's session file is still its own.
    assert first.client.call('status')['host'] == 'compute-1'
    assert first.proc.poll() is None


def test_second_daemon_of_a_host_name_on_one_machine_is_refused(cluster):
    first = cluster['compute-1']
    sim = cluster.vg._make_host('again')
    second = Daemon('compute-1', os.path.join(cluster.dir, 'again'),
                    cluster.etcd.endpoints, cluster.vg.vg, sim.system_dir)
    try:
        second.start(wait=False)
        assert refused_or_serving(second) == 1, \
            'a second daemon of compute-1 serves on this machine'
    finally:
        second.stop()
    line = refusal(second)
    assert line.startswith('host name compute-1 is in use by another '
                           'lvmcoordd on this machine'), line
    assert first.state_dir in line
    assert first.client.call('status')['host'] == 'compute-1'


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


def test_a_name_taken_during_a_partition_is_not_taken_back(tmp_path):
    proxies = {}

    def endpoints_for(host, eps):
        url = parse.urlsplit(eps[0])
        proxies[host] = Proxy(url.hostname, url.port)
        return [proxies[host].url] if host == 'compute-1' else eps

    try:
        with Cluster(hosts=('volume-1', 'compute-1'), ttl=6, grace=1.0,
                     endpoints_for=endpoints_for) as cluster:
            _name_taken_during_a_partition(cluster, proxies['compute-1'])
    finally:
        for p in proxies.values():
            p.close()


def _name_taken_during_a_partition(cluster, proxy):
    vg = cluster.vg.vg
    volume, first = cluster['volume-1'].client, cluster['compute-1'].client
    volume.call('create', vg=vg, lv='vm-disk', size=4 * MiB)
    got = first.call('activate', vg=vg, lv='vm-disk', instance='vm-1')
    etcd = etcdlib.Etcd(cluster.etcd.endpoints)
    key = keyslib.Keys('/lvmcoord', 'sandbox').session('compute-1')
    watch = ROWatch(got['path'])
    sim = cluster.vg._make_host('clone')
    other = Daemon('compute-1', os.path.join(cluster.dir, 'other'),
                   cluster.etcd.endpoints, vg, sim.system_dir, ttl=6,
                   grace=1.0, session__machine_id='other-machine')
    try:
        # compute-1 is cut off; its session expires; another machine is
        # started as compute-1 meanwhile (the name is free): it may.
        proxy.cut()
        wait_for(lambda: etcd.get(key) is None, 60,
                 'the cut-off session to expire')
        assert watch.fenced.is_set()
        other.start()
        taken = etcd.get(key)
        # The partition heals: the first machine must not take the name
        # back; it stays fenced.
        proxy.heal()
        log = cluster['compute-1'].log

        def refused():
            with open(log) as f:
                return 'session: not reopened: host name compute-1 is ' \
                    'in use by machine other-machine' in f.read()
        wait_for(lambda: refused() or etcd.get(key).lease != taken.lease,
                 60, 'compute-1 to try to reopen its session')
        now = etcd.get(key)
        assert (now.mod_revision, now.lease) == \
            (taken.mod_revision, taken.lease), \
            'the first machine overwrote the other\'s session'
        assert now.json()['machine'] == 'other-machine'
        assert refused()
        assert not watch.unfenced.is_set()
        assert read_only(got['path'])
    finally:
        watch.close()
        other.stop()


# -- the session's own check, where it opens or reopens (no daemon) --

def session(etcd, keys, machine, state_file):
    s = sessionlib.Session(etcd, keys, 'h1', ttl=10, state_file=state_file)
    s.machine = machine  # [session] machine_id
    return s


@pytest.fixture(scope='module')
def etcd_server():
    with EtcdCluster(1) as c:
        yield c


def test_session_refuses_a_name_live_on_another_machine(etcd_server,
                                                         tmp_path):
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', 'identity')
    a = session(etcd, keys, 'machine-a', str(tmp_path / 'a.json')).open()
    b = session(etcd, keys, 'machine-b', str(tmp_path / 'b.json'))
    try:
        record = etcd.get(keys.session('h1'))
        with pytest.raises(identity.NameTaken,
                           match='h1 is in use by machine machine-a'):
            b.open()
        again = etcd.get(keys.session('h1'))
        assert (again.mod_revision, again.lease) == \
            (record.mod_revision, a.id)
        assert not os.path.exists(tmp_path / 'b.json')
    finally:
        a.close(revoke=True)
        b.close(revoke=True)


def test_reopen_after_the_name_was_taken_meanwhile_is_refused(
        etcd_server, tmp_path):
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', 'identity-reopen')
    a = session(etcd, keys, 'machine-a', str(tmp_path / 'a.json')).open()
    b = session(etcd, keys, 'machine-b', str(tmp_path / 'b.json'))
    try:
        # A partition: a's session expires (revoked here), machine-b is
        # started with the same name and opens one.
        a.close()
        etcd.lease_revoke(a.id)
        b.open()
        record = etcd.get(keys.session('h1'))
        # The partition heals: a must not take the name back.
        with pytest.raises(identity.NameTaken,
                           match='h1 is in use by machine machine-b'):
            a.reopen()
        again = etcd.get(keys.session('h1'))
        assert (again.mod_revision, again.lease) == \
            (record.mod_revision, b.id)
    finally:
        a.close()
        b.close(revoke=True)


def test_a_cloned_state_dir_does_not_resume_the_original_session(
        etcd_server, tmp_path):
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', 'identity-clone')
    a = session(etcd, keys, 'machine-a', str(tmp_path / 'a.json')).open()
    # The clone's image carries a copy of the original's state dir.
    with open(tmp_path / 'a.json') as f:
        (tmp_path / 'b.json').write_text(f.read())
    b = session(etcd, keys, 'machine-b', str(tmp_path / 'b.json'))
    try:
        record = etcd.get(keys.session('h1'))
        with pytest.raises(identity.NameTaken,
                           match='h1 is in use by machine machine-a'):
            b.open()
        assert b.id == 0 and not b.resumed
        again = etcd.get(keys.session('h1'))
        assert (again.mod_revision, again.lease) == \
            (record.mod_revision, a.id)
    finally:
        a.close(revoke=True)
        b.close()
