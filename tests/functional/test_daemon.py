"""lvmcoordd processes on a real etcd and a real loop-backed shared VG."""
import concurrent.futures
import os
import stat
import threading
import time

import pytest

from coordinator import errors
from coordinator.activation import has_device_mapper
from coordinator.sandbox.cluster import Cluster

MiB = 1 << 20


@pytest.fixture(scope='module')
def cluster():
    with Cluster(ttl=4, grace=1.0) as c:
        yield c


def write_block(path, data, offset=0):
    fd = os.open(path, os.O_WRONLY | os.O_SYNC)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_block(path, size, offset=0):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, max(size, 4096))
        os.preadv(fd, [buf], offset)
        return bytes(buf[:size])
    finally:
        os.close(fd)


def test_concurrent_creates_from_two_hosts_lose_nothing(cluster):
    vg = cluster.vg.vg
    jobs = [(host, f'cc-{host}-{i}') for i in range(10)
            for host in ('volume-1', 'compute-1')]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda j: cluster[j[0]].client.call(
            'create', vg=vg, lv=j[1], size=4 * MiB), jobs))
    names = {x['lv'] for x in cluster['compute-2'].client.call('list',
                                                               vg=vg)}
    assert {lv for _, lv in jobs} <= names
    # volume-1 publishes the very VG (by UUID) another host sees on disk.
    lvm = cluster.vg.hosts[2].lvm
    out = cluster['volume-1'].client.call('status')
    assert out['readiness']['vgs'][vg]['uuid'] == lvm.vg(vg)['uuid']


def test_attach_refuse_migrate_and_read_back(cluster):
    vg = cluster.vg.vg
    v1, c1, c2 = (cluster[h].client for h in
                  ('volume-1', 'compute-1', 'compute-2'))
    v1.call('create', vg=vg, lv='vol-a', size=8 * MiB)
    # The volume host asks compute-1's daemon to take the lease.
    got = v1.call('activate', vg=vg, lv='vol-a', host='compute-1',
                  instance='inst-1')
    assert got['host'] == 'compute-1' and got['mode'] == 'exclusive'
    assert stat.S_ISBLK(os.stat(got['path']).st_mode)
    payload = os.urandom(4096)
    write_block(got['path'], payload, 4096)
    with pytest.raises(errors.LeaseConflict, match='held by compute-1'):
        c2.call('activate', vg=vg, lv='vol-a', instance='inst-2')
    # Live migration: same instance on the destination.
    dst = v1.call('activate', vg=vg, lv='vol-a', host='compute-2',
                  mode='migration', instance='inst-1')
    assert dst['mode'] == 'migration'
    shown = v1.call('show', vg=vg, lv='vol-a')
    assert {(h['host'], h['mode']) for h in shown['holders']} == \
        {('compute-1', 'migration'), ('compute-2', 'migration')}
    with pytest.raises(errors.LeaseConflict):
        v1.call('activate', vg=vg, lv='vol-a', host='volume-1',
                mode='migration', instance='inst-1')
    c1.call('deactivate', vg=vg, lv='vol-a')
    assert not os.path.exists(got['path'])
    shown = v1.call('show', vg=vg, lv='vol-a')
    assert [(h['host'], h['mode']) for h in shown['holders']] == \
        [('compute-2', 'exclusive')]
    assert read_block(dst['path'], 4096, 4096) == payload
    # Deleting a leased volume is refused, naming the holder.
    with pytest.raises(errors.LeaseConflict, match='compute-2'):
        v1.call('delete', vg=vg, lv='vol-a')
    c2.call('deactivate', vg=vg, lv='vol-a')
    v1.call('delete', vg=vg, lv='vol-a')
    assert 'vol-a' not in {x['lv'] for x in v1.call('list', vg=vg)}


def test_request_to_unknown_host_fails_at_once(cluster):
    vg = cluster.vg.vg
    v1 = cluster['volume-1'].client
    v1.call('create', vg=vg, lv='vol-x', size=4 * MiB)
    t0 = time.monotonic()
    with pytest.raises(errors.HostUnavailable, match='compute-9'):
        v1.call('activate', vg=vg, lv='vol-x', host='compute-9')
    assert time.monotonic() - t0 < 5


def test_extend_refreshes_holder(cluster):
    vg = cluster.vg.vg
    v1, c1 = cluster['volume-1'].client, cluster['compute-1'].client
    # Last LV in the VG: the loop backend can grow it in place.
    v1.call('create', vg=vg, lv='vol-grow', size=4 * MiB)
    got = c1.call('activate', vg=vg, lv='vol-grow')
    out = v1.call('extend', vg=vg, lv='vol-grow', size=12 * MiB)
    assert out['size'] == 12 * MiB
    assert out['refreshed']['compute-1']['size'] == 12 * MiB
    fd = os.open(got['path'], os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == 12 * MiB
    finally:
        os.close(fd)
    c1.call('deactivate', vg=vg, lv='vol-grow')


def test_refresh_needs_the_lease(cluster):
    """A refresh, routed or local, on a host that does not hold the LV's
    lease is refused naming the holder (it could reload a device that
    host must not write); the holder's own goes through."""
    vg = cluster.vg.vg
    v1, c1, c2 = (cluster[h].client for h in
                  ('volume-1', 'compute-1', 'compute-2'))
    v1.call('create', vg=vg, lv='vol-rf', size=4 * MiB)
    c1.call('activate', vg=vg, lv='vol-rf', instance='vm-rf')
    try:
        for call in (lambda: v1.call('refresh', vg=vg, lv='vol-rf',
                                     host='compute-2'),
                     lambda: c2.call('refresh', vg=vg, lv='vol-rf')):
            with pytest.raises(errors.LeaseConflict,
                               match='compute-2: this host does not hold '
                                     'its lease .held by compute-1'):
                call()
        assert v1.call('refresh', vg=vg, lv='vol-rf',
                       host='compute-1')['host'] == 'compute-1'
    finally:
        c1.call('deactivate', vg=vg, lv='vol-rf')
    # Released: not even the former holder refreshes it.
    with pytest.raises(errors.LeaseConflict, match='held by nobody'):
        c1.call('refresh', vg=vg, lv='vol-rf')
    v1.call('delete', vg=vg, lv='vol-rf')


def test_snapshot_is_taken_on_the_holder_host(cluster):
    vg = cluster.vg.vg
    v1, c2 = cluster['volume-1'].client, cluster['compute-2'].client
    v1.call('create', vg=vg, lv='vol-snap', size=4 * MiB)
    c2.call('activate', vg=vg, lv='vol-snap')
    try:
        if has_device_mapper():
            snap = v1.call('snapshot', vg=vg, lv='vol-snap',
                           name='vol-snap-s1', size=4 * MiB)
            assert snap['taken_on'] == 'compute-2'
            assert snap['origin'] == 'vol-snap'
        else:
            # LVM creates no snapshot, not even in metadata, without
            # device-mapper; the request still went to the holder host.
            with pytest.raises(errors.LVMError) as exc:
                v1.call('snapshot', vg=vg, lv='vol-snap',
                        name='vol-snap-s1', size=4 * MiB)
            assert str(exc.value).startswith('on compute-2: ')
            assert 'device-mapper' in str(exc.value)
    finally:
        c2.call('deactivate', vg=vg, lv='vol-snap')


def test_bad_input_is_refused_and_changes_nothing(cluster):
    vg = cluster.vg.vg
    v1 = cluster['volume-1'].client
    before = cluster.vg.hosts[0].lvm.vg(vg)['seqno']
    cases = [
        ({'vg': vg, 'lv': '../etc', 'size': MiB}, 'lv'),
        ({'vg': vg, 'lv': '-rf', 'size': MiB}, 'lv'),
        ({'vg': vg, 'lv': 'ok', 'size': -5}, 'size'),
        ({'vg': vg, 'lv': 'ok', 'size': 1 << 50}, 'size'),
        ({'vg': 'other_vg', 'lv': 'ok', 'size': MiB}, 'vg'),
        ({'vg': vg, 'lv': 'ok', 'size': MiB, 'bogus': 1}, "'bogus'"),
    ]
    for args, field in cases:
        with pytest.raises(errors.InvalidInput) as exc:
            v1.call('create', **args)
        assert exc.value.field == field, (args, str(exc.value))
    assert cluster.vg.hosts[0].lvm.vg(vg)['seqno'] == before


def test_killed_daemon_restarts_into_same_session(tmp_path):
    # TTL 10: a restart on a loaded 2-core machine takes several seconds.
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=10, grace=1.0) as c:
        vg = c.vg.vg
        c1, c2 = c['compute-1'], c['compute-2']
        c1.client.call('create', vg=vg, lv='vol-r', size=4 * MiB)
        got = c1.client.call('activate', vg=vg, lv='vol-r',
                             instance='i1')
        session = c1.client.call('status')['session']
        result = {}

        def contend():
            try:
                result['got'] = c2.client.call(
                    'activate', vg=vg, lv='vol-r', instance='i2', wait=12)
            except errors.CoordError as exc:
                result['error'] = exc

        t = threading.Thread(target=contend)
        t.start()
        time.sleep(0.5)
        c1.kill()                  # -9, every process of the daemon
        c1.proc.wait()
        time.sleep(1.0)
        c.restart('compute-1')
        assert c1.client.call('status')['session'] == session
        again = c1.client.call('activate', vg=vg, lv='vol-r',
                               instance='i1')
        assert again['token'] == got['token']
        t.join()
        assert 'got' not in result, 'contender got in during the restart'
        assert isinstance(result['error'], errors.LeaseConflict)
        assert 'compute-1' in str(result['error'])


def test_metrics_and_drain(tmp_path):
    import requests

    from coordinator.sandbox.etcd import free_port
    port = free_port()
    with Cluster(hosts=('compute-1',), ttl=4, metrics__port=port) as c:
        vg, d = c.vg.vg, c['compute-1']
        paths = {}
        for lv in ('open-one', 'idle-one'):
            d.client.call('create', vg=vg, lv=lv, size=4 * MiB)
            paths[lv] = d.client.call('activate', vg=vg, lv=lv)['path']
        # A VM has open-one open: drain must keep it.
        held_open = os.open(paths['open-one'], os.O_RDONLY)
        try:
            out = d.client.call('drain')
            assert out['released'] == [f'{vg}/idle-one']
            assert out['kept_open'] == [f'{vg}/open-one']
        finally:
            os.close(held_open)
        text = requests.get(f'http://127.0.0.1:{port}/metrics',
                            timeout=5).text
        assert 'lvmcoord_grants_total{mode="exclusive"} 2.0' in text
        assert 'lvmcoord_releases_total 1.0' in text
        assert 'lvmcoord_vg_lock_seconds_count' in text


def test_grant_to_host_that_cannot_see_the_vg_fails_fast(tmp_path):
    with Cluster(hosts=('volume-1', 'compute-1'), ttl=4) as c:
        vg = c.vg.vg
        # A third host whose LVM filter hides the shared LU.
        blind_dir = tmp_path / 'blind-lvm'
        blind_dir.mkdir()
        (blind_dir / 'lvm.conf').write_text(
            'devices { filter = [ "r|.*|" ] global_filter = [ "r|.*|" ] '
            'use_devicesfile = 0 obtain_device_list_from_udev = 0 }\n'
            f'global {{ locking_dir = "{blind_dir}" }}\n')
        from coordinator.sandbox.daemons import Daemon
        blind = Daemon('compute-9', str(tmp_path / 'compute-9'),
                       c.etcd.endpoints, vg, str(blind_dir),
                       cluster='sandbox', ttl=4)
        try:
            blind.start()
            v1 = c['volume-1'].client
            v1.call('create', vg=vg, lv='vol-blind', size=4 * MiB)
            with pytest.raises(errors.HostUnavailable) as exc:
                v1.call('activate', vg=vg, lv='vol-blind', host='compute-9')
            assert 'compute-9 cannot use VG' in str(exc.value)
            assert 'not visible' in str(exc.value)
            assert v1.call('show', vg=vg, lv='vol-blind')['holders'] == []
        finally:
            blind.stop()


def test_stop_fences_and_restart_resumes():
    # TTL 10: the restart must come back within it on a loaded machine.
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=10, grace=1.0) as c:
        vg = c.vg.vg
        c1, c2 = c['compute-1'], c['compute-2']
        c1.client.call('create', vg=vg, lv='vol-stop', size=4 * MiB)
        got = c1.client.call('activate', vg=vg, lv='vol-stop',
                             instance='vm-1')
        loop = os.path.basename(os.path.realpath(got['path']))

        def read_only():
            with open(f'/sys/block/{loop}/ro') as f:
                return f.read().strip() == '1'

        assert not read_only()
        c1.stop()                       # SIGTERM: an orderly stop
        # A stopped daemon cannot fence later: its LVs are fenced now.
        assert read_only()
        with pytest.raises(errors.LeaseConflict, match='compute-1'):
            c2.client.call('activate', vg=vg, lv='vol-stop', instance='vm-2')
        c.restart('compute-1')
        deadline = time.monotonic() + 30
        while read_only():
            assert time.monotonic() < deadline, 'never resumed'
            time.sleep(0.1)
        shown = c2.client.call('show', vg=vg, lv='vol-stop')
        assert [(h['host'], h['alive'], h['token']) for h in
                shown['holders']] == [('compute-1', True, got['token'])]
        write_block(got['path'], b'still ours' + bytes(4086))
