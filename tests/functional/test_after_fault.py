"""Never two writers, after the fault too (issue 8): real daemons, real
etcd, real LVM on loop devices. Each fault is followed by what happens when
it ends; a fence is proven by I/O through a descriptor opened before it."""
import errno
import os
import subprocess
import sys
import time

import pytest

from coordinator.daemon import grantbook
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine.core import Engine
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.proxy import Partition

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


_OPEN = []


@pytest.fixture(autouse=True)
def _close_writers():
    # An open stacked device keeps the sandbox's PV from detaching.
    yield
    while _OPEN:
        _OPEN.pop().close()


class Writer:
    """A VM's view of a device: opened once, written again and again."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_SYNC)
        _OPEN.append(self)

    def write(self, data=b'w' * 4096, offset=0):
        """None if the write landed, else its errno."""
        try:
            os.pwrite(self.fd, data, offset)
            return None
        except OSError as exc:
            return exc.errno

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def events(cluster, kind=None, host=None):
    etcd = etcdlib.Etcd(cluster.etcd.endpoints)
    keys = keyslib.Keys('/lvmcoord', 'sandbox')
    kvs, _ = etcd.range(keys.events(), prefix=True)
    out = [kv.json() for kv in kvs]
    return [e for e in out if (kind is None or e['kind'] == kind)
            and (host is None or e['host'] == host)]


def loop_of(path):
    return os.path.basename(os.path.realpath(path))


def read_only(loop):
    with open(f'/sys/block/{loop}/ro') as f:
        return f.read().strip() == '1'


def cli(daemon, *args):
    return subprocess.run([sys.executable, '-m', 'coordinator.cli.app',
                           '--config-file', daemon.conf_file, *args],
                          capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


@pytest.fixture
def cut_cluster():
    part = Partition('compute-1')
    try:
        with Cluster(hosts=('compute-1', 'compute-2'), ttl=6, grace=1.0,
                     endpoints_for=part.endpoints_for) as cluster:
            yield cluster, part
    finally:
        part.close()


def _take_over(cluster, part, lv):
    """compute-1 holds ``lv`` with a writer; it is cut off and compute-2
    takes the LV over. Returns (compute-1's grant, its writer)."""
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv=lv, size=4 * MiB)
    got = c1.call('activate', vg=vg, lv=lv, instance='vm-1')
    writer = Writer(got['path'])
    assert writer.write() is None
    part.cut()
    taken = c2.call('activate', vg=vg, lv=lv, instance='vm-2', wait=60)
    assert taken['host'] == 'compute-2'
    # Fenced before the takeover: the old writer already fails.
    assert writer.write() in (errno.EPERM, errno.EROFS, errno.EIO)
    return got, writer


def test_healed_partition_never_unfences_a_taken_over_lv(cut_cluster):
    cluster, part = cut_cluster
    vg = cluster.vg.vg
    got, writer = _take_over(cluster, part, 'vol-x')
    loop = loop_of(got['path'])
    part.heal()
    wait_for(lambda: events(cluster, 'retired', 'compute-1'), 60,
             'compute-1 to retire its stale device')
    # The device is still open here: detached only on last close, and
    # read-only until then. The VM's writes never land.
    assert read_only(loop)
    for _ in range(20):
        assert writer.write() in (errno.EPERM, errno.EROFS, errno.EIO)
    writer.close()
    c1 = cluster['compute-1'].client
    wait_for(lambda: c1.call('status')['fencer'] == 'ok', 30,
             'compute-1 serving again')
    assert 'vol-x' not in str(c1.call('status')['active'])
    holders = cluster['compute-2'].client.call('show', vg=vg,
                                               lv='vol-x')['holders']
    assert [h['host'] for h in holders] == ['compute-2']


@pytest.mark.parametrize('change', ['rename', 'delete'])
def test_lv_renamed_or_deleted_after_takeover_is_not_retaken(cut_cluster,
                                                             change):
    cluster, part = cut_cluster
    vg = cluster.vg.vg
    c2 = cluster['compute-2'].client
    got, writer = _take_over(cluster, part, 'vol-x')
    loop = loop_of(got['path'])
    c2.call('deactivate', vg=vg, lv='vol-x')
    if change == 'rename':
        c2.call('rename', vg=vg, lv='vol-x', new_name='vol-y')
        c2.call('activate', vg=vg, lv='vol-y', instance='vm-2')
    else:
        c2.call('delete', vg=vg, lv='vol-x')
    part.heal()
    wait_for(lambda: events(cluster, 'retired', 'compute-1'), 60,
             'compute-1 to retire its stale device')
    assert read_only(loop)
    assert writer.write() in (errno.EPERM, errno.EROFS, errno.EIO)
    writer.close()
    by_lv = {x['lv']: x['holders'] for x in c2.call('list')}
    assert 'compute-1' not in str(by_lv)
    if change == 'rename':
        assert by_lv['vol-y'] == ['compute-2'] and 'vol-x' not in by_lv
    else:
        assert 'vol-x' not in by_lv and 'vol-y' not in by_lv
    etcd = etcdlib.Etcd(cluster.etcd.endpoints)
    kvs, _ = etcd.range(keyslib.Keys('/lvmcoord', 'sandbox').lease(
        vg, 'vol-x'), prefix=True)
    assert 'compute-1' not in str([kv.value for kv in kvs]), \
        'a lease on the old name was re-granted to compute-1'


def test_forced_break_fences_the_holder_before_it_is_reported(cut_cluster):
    cluster, _ = cut_cluster
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv='vol-b', size=4 * MiB)
    got = c1.call('activate', vg=vg, lv='vol-b', instance='vm-1')
    writer = Writer(got['path'])
    assert writer.write() is None
    out = cli(cluster['compute-2'], 'lease', 'break', f'{vg}/vol-b',
              '--host', 'compute-1', '--token', str(got['token']),
              '--yes-i-really-mean-it', '--force')
    assert out.returncode == 0, out.stderr
    assert 'acknowledged' in out.stdout, out.stdout
    # By the time the break is reported, the old holder cannot write.
    assert writer.write() in (errno.EPERM, errno.EROFS, errno.EIO)
    taken = c2.call('activate', vg=vg, lv='vol-b', instance='vm-2')
    assert taken['host'] == 'compute-2'
    assert writer.write() in (errno.EPERM, errno.EROFS, errno.EIO)
    writer.close()


@pytest.mark.parametrize('recorded', [True, False])
def test_grant_without_device_is_released_at_restart(recorded):
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=8, grace=1.0) as c:
        vg = c.vg.vg
        d1 = c['compute-1']
        c['compute-2'].client.call('create', vg=vg, lv='vol-k', size=4 * MiB)
        uuid = c['compute-2'].client.call('show', vg=vg, lv='vol-k')['uuid']
        d1.kill()
        d1.proc.wait()
        # What a daemon killed between grant and device leaves behind: the
        # grant (under its session, resumed here) and its 'activating'
        # record, no device; killed between grant and record: no record.
        state_dir = os.path.join(d1.dir, 'state')
        eng = Engine(etcdlib.Etcd(c.etcd.endpoints), 'compute-1', 'sandbox',
                     ttl=8, state_file=os.path.join(
                         state_dir, 'session-sandbox.json'))
        eng.open()
        grant = eng.leases.grant(vg, 'vol-k', instance='vm-1')
        if recorded:
            grantbook.GrantBook(state_dir, 'sandbox').put(
                vg, 'vol-k', state=grantbook.ACTIVATING, token=grant.token,
                uuid=uuid, session=eng.session.id, mode='exclusive',
                instance='vm-1')
        eng.session.close(revoke=False)
        c.restart('compute-1')
        wait_for(lambda: events(c, 'reconciled', 'compute-1'), 30,
                 'the reconcile\n' + d1.log_tail())
        # Not blocked forever: compute-2 gets it at once.
        taken = c['compute-2'].client.call('activate', vg=vg, lv='vol-k',
                                           instance='vm-2')
        assert taken['host'] == 'compute-2'


@pytest.mark.parametrize('taken_meanwhile', [False, True])
def test_reboot_restores_grants_unless_taken(taken_meanwhile):
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=4, grace=1.0) as c:
        vg = c.vg.vg
        d1, c2 = c['compute-1'], c['compute-2'].client
        c2.call('create', vg=vg, lv='vol-r', size=4 * MiB)
        got = d1.client.call('activate', vg=vg, lv='vol-r', instance='vm-1')
        session = d1.client.call('status')['session']
        d1.kill()
        d1.proc.wait()
        # The reboot: the device is gone, and so is the session.
        subprocess.run(['losetup', '-d', os.path.realpath(got['path'])],
                       check=True)
        os.unlink(got['path'])
        if taken_meanwhile:
            c2.call('activate', vg=vg, lv='vol-r', instance='vm-2', wait=30)
        else:
            wait_for(lambda: not cluster_sessions(c).get('compute-1'), 30,
                     'the old session to expire')
        c.restart('compute-1')
        # `lvmcoord wait-ready`'s condition, what consumers start after.
        status = wait_for(lambda: (lambda s: s['fencer'] == 'ok' and s)(
            d1.client.call('status')), 30, 'the daemon ready')
        assert status['session'] != session
        if taken_meanwhile:
            wait_for(lambda: events(c, 'restore-refused', 'compute-1'), 30,
                     'the refusal')
            assert 'vol-r' not in str(d1.client.call('status')['devices'])
            assert 'compute-2' in events(c, 'restore-refused',
                                         'compute-1')[0]['reason']
        else:
            # Restored before the daemon is ready: consumers started after
            # it find their device.
            assert f'{vg}/vol-r' in status['devices']
            shown = c2.call('show', vg=vg, lv='vol-r')['holders']
            assert [(h['host'], h['instance'], h['alive'])
                    for h in shown] == [('compute-1', 'vm-1', True)]
            path = status['devices'][f'{vg}/vol-r']
            w = Writer(path)
            assert w.write() is None
            w.close()


def cluster_sessions(c):
    etcd = etcdlib.Etcd(c.etcd.endpoints)
    kvs, _ = etcd.range(keyslib.Keys('/lvmcoord', 'sandbox').sessions(),
                        prefix=True)
    return {kv.key.rsplit('/', 1)[1]: kv for kv in kvs}


def test_etcd_leader_change_fences_no_healthy_host():
    # Default TTL, grace and fence fraction: an election must not reach
    # anyone's fence deadline.
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=10, grace=3.0,
                 etcd_members=3) as c:
        vg = c.vg.vg
        for i, host in enumerate(('compute-1', 'compute-2')):
            c[host].client.call('create', vg=vg, lv=f'vol-e{i}',
                                size=4 * MiB)
            c[host].client.call('activate', vg=vg, lv=f'vol-e{i}',
                                instance=f'vm-{i}')
        for fault in ('kill', 'stop'):
            leader = c.etcd.leader()
            if fault == 'kill':
                leader.stop(sig=9)
            else:
                leader.send(19)            # SIGSTOP
            others = [m for m in c.etcd.members if m is not leader]
            wait_for(lambda o=others: any(_leads(m) for m in o), 30,
                     'a new leader')
            # Past every fence deadline the old leader could have caused.
            time.sleep(10 * 0.6 + 1)
            if fault == 'kill':
                c.etcd.restart(leader)
            else:
                leader.send(18)            # SIGCONT
        assert events(c, 'fenced') == []
        for host in ('compute-1', 'compute-2'):
            assert c[host].client.call('status')['fencer'] == 'ok'


def _leads(member):
    try:
        return member.is_leader()
    except Exception:
        return False


def test_session_expiry_crashes_no_worker():
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=4, grace=1.0) as c:
        d1 = c['compute-1']
        session = d1.client.call('status')['session']
        d1.kill(19)                        # SIGSTOP the whole daemon
        wait_for(lambda: 'compute-1' not in cluster_sessions(c), 30,
                 'the session to expire')
        d1.kill(18)
        wait_for(lambda: d1.client.call('status')['session'] != session,
                 30, 'a new session')
        wait_for(lambda: d1.client.call('status')['fencer'] == 'ok', 30,
                 'the fencer')
        # Several membership heartbeats after the new session.
        time.sleep(3)
        assert d1.proc.poll() is None
        with open(d1.log) as f:
            log = f.read()
        assert 'Traceback' not in log, log[-3000:]


def test_fifty_active_lvs_all_fenced_before_any_takeover(cut_cluster):
    cluster, part = cut_cluster
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    paths = []
    for i in range(50):
        c2.call('create', vg=vg, lv=f'vol-f{i}', size=4 * MiB)
        paths.append(c1.call('activate', vg=vg, lv=f'vol-f{i}',
                             instance=f'vm-{i}')['path'])
    loops = [loop_of(p) for p in paths]
    part.cut()
    taken = c2.call('activate', vg=vg, lv='vol-f49', instance='vm-x',
                    wait=60)
    # Every device, not only the one taken, was fenced by then.
    assert [x for x in loops if not read_only(x)] == []
    part.heal()
    # Its events were held while etcd was out of reach.
    fenced = wait_for(lambda: events(cluster, 'fenced', 'compute-1'), 60,
                      "compute-1's fence event")
    assert len(fenced[0]['lvs']) == 50, fenced
    grant = c2.call('show', vg=vg, lv='vol-f49')['holders'][0]
    assert grant['host'] == 'compute-2' and grant['token'] == taken['token']
    # Ordered by the grant's own time, not by when the call returned.
    assert fenced[0]["at"] < grant["since"]
    print(f'50 LVs fenced in {fenced[0]["took"]:.3f}s; fence-to-grant '
          f'margin {grant["since"] - fenced[0]["at"]:.2f}s')


def test_extend_that_committed_is_reported_as_done(cut_cluster):
    cluster, _ = cut_cluster
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv='vol-g', size=4 * MiB)
    c2.call('create', vg=vg, lv='vol-h', size=4 * MiB)   # right after it
    c1.call('activate', vg=vg, lv='vol-g', instance='vm-1')
    # The new extents land after vol-h: two segments, which the holder's
    # loop backend cannot map. The extend itself committed all the same.
    out = c2.call('extend', vg=vg, lv='vol-g', size=8 * MiB)
    assert out['size'] == 8 * MiB
    assert list(out['refresh_failed']) == ['compute-1']
    assert 'segments' in out['refresh_failed']['compute-1']
    assert c2.call('show', vg=vg, lv='vol-g')['size'] == 8 * MiB


def test_daemon_killed_right_after_activation_is_reset_before_takeover():
    # SIMULATED watchdog (a file the sandbox supervises; softdog on real
    # kernels, see tests/realhost). fraction*TTL + 2 + 1 <= TTL + grace.
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=6, grace=1.0,
                 simulated_watchdog=2) as c:
        vg = c.vg.vg
        d1, c2 = c['compute-1'], c['compute-2'].client
        c2.call('create', vg=vg, lv='vol-w', size=4 * MiB)
        got = d1.client.call('activate', vg=vg, lv='vol-w', instance='vm-1')
        # No device without an armed watchdog: it was petted already.
        with open(d1.watchdog_file, 'rb') as f:
            assert f.read()[-1:] == b'.'
        writer = Writer(got['path'])
        try:
            assert writer.write() is None
            d1.kill()                      # at once, no tick in between
            taken = c2.call('activate', vg=vg, lv='vol-w',
                            instance='vm-2', wait=60)
            resets = c.watchdogs['compute-1'].resets
            assert resets, 'compute-1 was never reset'
            grant = c2.call('show', vg=vg, lv='vol-w')['holders'][0]
            assert grant['token'] == taken['token']
            # The host was reset (its I/O stopped) before the grant.
            assert resets[0].at < grant['since'], (resets[0], grant)
            assert writer.write() is not None
        finally:
            writer.close()


@pytest.mark.parametrize('heal', ['within the session', 'after it expired'])
def test_deactivate_whose_release_failed_is_released_later(cut_cluster,
                                                           heal):
    """compute-1 deactivates vol-r while cut from etcd: its device goes,
    its release fails. Once etcd answers again -- the same session, or a
    new one after the old expired -- the grant is released by the daemon
    itself: no holder is left behind a device that is gone (the chaos
    run's dead-lease-after-settle, seed 8)."""
    cluster, part = cut_cluster
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv='vol-r', size=4 * MiB)
    got = c1.call('activate', vg=vg, lv='vol-r', instance='vm-1')
    session = c1.call('status')['session']
    part.cut()
    try:
        with pytest.raises(Exception) as err:
            c1.call('deactivate', vg=vg, lv='vol-r')
        assert 'etcd' in str(err.value), err.value
        assert not os.path.exists(got['path']), 'the device is still there'
        book = grantbook.GrantBook(cluster['compute-1'].state_dir, 'sandbox')
        assert book.get(vg, 'vol-r')['state'] == grantbook.RELEASING
        if heal == 'after it expired':
            wait_for(lambda: [h for h in c2.call(
                'show', vg=vg, lv='vol-r')['holders'] if not h['alive']],
                60, "compute-1's session to expire")
    finally:
        part.heal()
    wait_for(lambda: c2.call('show', vg=vg, lv='vol-r')['holders'] == [],
             60, "compute-1's grant released")
    wait_for(lambda: book.get(vg, 'vol-r') is None, 30,
             'the finished release dropped from the book')
    if heal == 'within the session':
        assert c1.call('status')['session'] == session
    c2.call('delete', vg=vg, lv='vol-r')
