"""The real `lvmcoord` CLI, run as a process, against a real etcd with
three simulated hosts built in-process."""
import json
import os
import queue
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine.core import Engine
from coordinator.engine.membership import Membership
from coordinator.sandbox.etcd import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
CLUSTER = 'clitest'
ME = 'cli-host'


def write_conf(path, endpoints, state_dir, socket_path, **extra):
    lines = ['[DEFAULT]', f'host = {ME}', f'cluster = {CLUSTER}',
             '[etcd]', f'endpoints = {",".join(endpoints)}', 'timeout = 2',
             'retry_window = 3', '[session]', f'state_dir = {state_dir}',
             '[lease]', 'grace = 1.0', '[api]', f'socket_path = {socket_path}',
             '[lvm]']
    lines += [f'{k} = {v}' for k, v in extra.items()]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@pytest.fixture
def conf(tmp_path, etcd_server):
    # An LVM that sees no device at all: the CLI never scans real disks.
    lvm_dir = tmp_path / 'lvm'
    (lvm_dir / 'lock').mkdir(parents=True)
    (lvm_dir / 'lvm.conf').write_text(
        'devices {\n  filter = [ "r|.*|" ]\n  global_filter = [ "r|.*|" ]\n'
        '  use_devicesfile = 0\n}\n'
        f'global {{\n  locking_dir = "{lvm_dir / "lock"}"\n}}\n')
    return write_conf(tmp_path / 'lvmcoord.conf', etcd_server.endpoints,
                      tmp_path / 'state', tmp_path / 'lvmcoord.sock',
                      system_dir=lvm_dir)


def cli(conf, *args):
    """Run `lvmcoord --config-file conf args...`."""
    return subprocess.run(
        [sys.executable, '-m', 'coordinator.cli.app', '--config-file', conf,
         *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def cli_json(conf, *args):
    res = cli(conf, *args, '-f', 'json')
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def view(vgs=None, problems=None):
    """A readiness view as daemons publish it."""
    return {'vgs': vgs or {}, 'problems': problems or {},
            'versions': {'lvm': '2.03.16', 'etcd': '3.4.23'}}


def vg_entry(uuid, seqno, devices):
    return {'uuid': uuid, 'seqno': seqno, 'autoactivation': '',
            'system_id': '', 'pvs': [{'device': d, 'multipath': m}
                                     for d, m in devices]}


class Cluster:
    """Simulated hosts: engines with sessions, membership, leases, locks."""

    def __init__(self, endpoints):
        self.endpoints = endpoints
        self.engines = {}
        self.members = []
        self.threads = []

    def host(self, name, readiness=None, ttl=5):
        etcd = etcdlib.Etcd(self.endpoints, timeout=2.0, retry_window=5.0)
        eng = Engine(etcd, name, CLUSTER, ttl=ttl, grace=1.0).open()
        self.engines[name] = eng
        if readiness is not None:
            self.join(name, readiness)
        return eng

    def join(self, name, readiness):
        etcd = etcdlib.Etcd(self.endpoints, timeout=2.0)
        member = Membership(etcd, keyslib.Keys(cluster=CLUSTER), name,
                            ttl=30).join(readiness)
        self.members.append(member)
        return member

    def queue_on_lock(self, name, vg, op):
        """Block a thread of host ``name`` waiting for the VG lock."""
        def wait():
            try:
                self.engines[name].vglock(vg).acquire(op, timeout=60)
            except Exception:
                # Expected at teardown: the session is revoked.
                pass
        t = threading.Thread(target=wait, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self):
        # tooz takes a second to stop each member: stop them together.
        leaving = [threading.Thread(target=m.leave) for m in self.members]
        for t in leaving:
            t.start()
        for t in leaving:
            t.join(30)
        for eng in self.engines.values():
            if eng.session.id:
                eng.close(revoke=True)
        for t in self.threads:
            t.join(10)


@pytest.fixture
def cluster(etcd_server):
    c = Cluster(etcd_server.endpoints)
    yield c
    c.close()


def wait_for(predicate, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


@pytest.fixture
def three(cluster):
    """volume-1, compute-1, compute-2 with leases and a queued VG lock."""
    mp = '/dev/mapper/mpatha'
    vol = cluster.host('volume-1', view(
        {'vg0': vg_entry('UUID-0', 7, [(mp, True)])}))
    c1 = cluster.host('compute-1', view(
        {'vg0': vg_entry('UUID-0', 7, [('/dev/sdc', False)])}))
    c2 = cluster.host('compute-2', view(
        problems={'vg0': 'VG not visible: Volume group "vg0" not found'}))
    grants = {
        'lv-a': vol.leases.grant('vg0', 'lv-a'),
        'lv-b1': c1.leases.grant('vg0', 'lv-b', 'exclusive', 'inst-1'),
        'lv-b2': c2.leases.grant('vg0', 'lv-b', 'migration', 'inst-1'),
        'lv-m1': c1.leases.grant('vg1', 'lv-m', 'shared'),
        'lv-m2': c2.leases.grant('vg1', 'lv-m', 'shared'),
    }
    # A coordinated change records seqno 7, then volume-1 holds the lock
    # with both compute hosts queued behind it, in this order.
    vol.guard(lambda vg, fresh: 7).change('vg0', 'lvcreate vg0/lv-a',
                                          lambda: None)
    hold = vol.vglock('vg0').acquire('lvcreate vg0/lv-new')
    lock = vol.vglock('vg0')
    cluster.queue_on_lock('compute-1', 'vg0', 'lvextend vg0/lv-a')
    wait_for(lambda: len(lock.queue()) == 2, 'compute-1 to queue')
    cluster.queue_on_lock('compute-2', 'vg0', 'lvremove vg0/lv-old')
    wait_for(lambda: len(lock.queue()) == 3, 'compute-2 to queue')
    yield {'engines': cluster.engines, 'grants': grants, 'hold': hold}


def rows_by(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


# -- host list --

def test_host_list_joins_sessions_and_readiness(conf, cluster, three):
    # A member whose daemon lost its session shows up with that problem.
    cluster.join('compute-9', view())
    rows = rows_by(cli_json(conf, 'host', 'list'), 'Host')
    assert set(rows) == {('volume-1',), ('compute-1',), ('compute-2',),
                         ('compute-9',)}
    vol = rows[('volume-1',)]
    assert vol['Session'] == f'{three["engines"]["volume-1"].session.id:x}'
    assert vol['Alive since'] == pytest.approx(time.time(), abs=120)
    assert vol['VGs seen'] == {'vg0': {'uuid': 'UUID-0', 'seqno': 7}}
    assert vol['PV devices'] == ['/dev/mapper/mpatha']
    assert vol['Multipath'] == {'/dev/mapper/mpatha': True}
    assert vol['Problems'] == {}
    assert rows[('compute-1',)]['Multipath'] == {'/dev/sdc': False}
    assert rows[('compute-2',)]['Problems'] == {
        'vg0': 'VG not visible: Volume group "vg0" not found'}
    ghost = rows[('compute-9',)]
    assert ghost['Session'] is None
    assert 'no live session' in ghost['Problems']['session']


def test_host_list_table(conf, three):
    res = cli(conf, 'host', 'list')
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    vol = next(x for x in lines if 'volume-1' in x)
    assert 'vg0 (seqno 7)' in vol and '/dev/mapper/mpatha' in vol
    assert any('compute-2' in x and 'VG not visible' in x for x in lines)


# -- lease list / show --

def test_lease_list(conf, three):
    grants = three['grants']
    rows = rows_by(cli_json(conf, 'lease', 'list'), 'VG', 'LV', 'Host')
    assert set(rows) == {('vg0', 'lv-a', 'volume-1'),
                         ('vg0', 'lv-b', 'compute-1'),
                         ('vg0', 'lv-b', 'compute-2'),
                         ('vg1', 'lv-m', 'compute-1'),
                         ('vg1', 'lv-m', 'compute-2')}
    a = rows[('vg0', 'lv-a', 'volume-1')]
    assert (a['Mode'], a['Instance'], a['Alive']) == ('exclusive', None, True)
    assert a['Token'] == grants['lv-a'].token
    assert a['Since'] == pytest.approx(grants['lv-a'].since)
    for host in ('compute-1', 'compute-2'):
        b = rows[('vg0', 'lv-b', host)]
        assert (b['Mode'], b['Instance']) == ('migration', 'inst-1')
    assert rows[('vg0', 'lv-b', 'compute-2')]['Token'] == \
        grants['lv-b2'].token
    only = cli_json(conf, 'lease', 'list', '--vg', 'vg1')
    assert {(r['LV'], r['Mode']) for r in only} == {('lv-m', 'shared')}


def test_lease_list_table(conf, three):
    res = cli(conf, 'lease', 'list')
    assert res.returncode == 0, res.stderr
    row = next(x for x in res.stdout.splitlines() if 'lv-a' in x)
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[:4] == ['vg0', 'lv-a', 'volume-1', 'exclusive']
    assert cells[5] == str(three['grants']['lv-a'].token)
    assert cells[-1] == 'yes'


def test_lease_show_holders_and_reservation(conf, three):
    got = cli_json(conf, 'lease', 'show', 'vg0/lv-b')
    assert (got['VG'], got['LV'], got['Reserved']) == ('vg0', 'lv-b', None)
    assert [(h['host'], h['mode'], h['instance'], h['alive'])
            for h in got['Holders']] == [
        ('compute-1', 'migration', 'inst-1', True),
        ('compute-2', 'migration', 'inst-1', True)]
    vol = three['engines']['volume-1']
    vol.leases.reserve('vg0', 'lv-gone', 'delete')
    got = cli_json(conf, 'lease', 'show', 'vg0/lv-gone')
    assert got['Holders'] == []
    assert got['Reserved'] == {'host': 'volume-1', 'op': 'delete'}
    res = cli(conf, 'lease', 'show', 'vg0/lv-gone')
    assert 'by volume-1 for delete' in res.stdout


def test_lease_show_rejects_bad_name(conf):
    res = cli(conf, 'lease', 'show', 'vg0')
    assert res.returncode == 2
    assert "expected VG/LV, got 'vg0'" in res.stderr


# -- lease break --

def test_lease_break_refusals(conf, three):
    token = str(three['grants']['lv-a'].token)
    base = ('lease', 'break', 'vg0/lv-a', '--host', 'volume-1')
    res = cli(conf, *base, '--token', token)
    assert res.returncode == 1
    assert 'without --yes-i-really-mean-it' in res.stderr
    res = cli(conf, *base, '--token', str(int(token) + 1000),
              '--yes-i-really-mean-it')
    assert res.returncode == 1
    assert 'is not the current token' in res.stderr
    res = cli(conf, *base, '--token', token, '--yes-i-really-mean-it')
    assert res.returncode == 1
    assert 'the session of volume-1' in res.stderr and 'is alive' in \
        res.stderr
    res = cli(conf, 'lease', 'break', 'vg0/lv-a', '--host', 'compute-1',
              '--token', token, '--yes-i-really-mean-it')
    assert res.returncode == 1
    assert 'compute-1 holds no lease on vg0/lv-a' in res.stderr
    # Every refusal left the lease as it was.
    holders = three['engines']['volume-1'].leases.holders('vg0', 'lv-a')
    assert [(h.host, h.alive) for h in holders] == [('volume-1', True)]


def test_lease_break_dead_holder(conf, cluster, three):
    dead = cluster.host('compute-3')
    dead.leases.grant('vg0', 'lv-d')
    dead.close(revoke=True)
    rows = rows_by(cli_json(conf, 'lease', 'list'), 'LV', 'Host')
    row = rows[('lv-d', 'compute-3')]
    assert row['Alive'] is False
    # A holder that died right after its grant still has its token (the
    # revision of that grant) to be broken by.
    assert isinstance(row['Token'], int) and row['Token'] > 0
    token = str(row['Token'])
    got = cli_json(conf, 'lease', 'break', 'vg0/lv-d', '--host',
                   'compute-3', '--token', token, '--yes-i-really-mean-it')
    assert (got['VG'], got['LV'], got['Host'], got['Mode']) == \
        ('vg0', 'lv-d', 'compute-3', 'exclusive')
    assert got['Session was alive'] is False and got['Forced'] is False
    rows = rows_by(cli_json(conf, 'lease', 'list'), 'LV', 'Host')
    assert ('lv-d', 'compute-3') not in rows
    assert ('lv-a', 'volume-1') in rows
    events = [json.loads(x) for x in
              cli(conf, 'events', '-f', 'json').stdout.splitlines()]
    broken = [e for e in events if e['kind'] == 'lease-broken']
    assert [(e['host'], e['lv'], e['by']) for e in broken] == [
        ('compute-3', 'lv-d', f'{ME} (lvmcoord CLI)')]


def test_lease_break_force_alive_holder(conf, three):
    token = str(three['grants']['lv-a'].token)
    res = cli(conf, 'lease', 'break', 'vg0/lv-a', '--host', 'volume-1',
              '--token', token, '--yes-i-really-mean-it', '--force')
    assert res.returncode == 0, res.stderr
    assert 'volume-1' in res.stdout
    # No daemon (no fencer) behind this holder: nobody acknowledges, and
    # the entry stays, broken, so nobody is granted the LV before TTL +
    # grace from the break.
    assert 'did not acknowledge' in res.stdout
    [held] = three['engines']['volume-1'].leases.holders('vg0', 'lv-a')
    assert held.broken and not held.alive


# -- vg show --

def test_vg_show_lock_queue_and_seqno(conf, three):
    got = cli_json(conf, 'vg', 'show', 'vg0')
    assert got['VG'] == 'vg0'
    holder = got['Lock holder']
    assert (holder['host'], holder['op'], holder['pid']) == \
        ('volume-1', 'lvcreate vg0/lv-new', os.getpid())
    assert holder['since'] == pytest.approx(time.time(), abs=120)
    assert [(e['host'], e['op']) for e in got['Queue']] == [
        ('compute-1', 'lvextend vg0/lv-a'),
        ('compute-2', 'lvremove vg0/lv-old')]
    assert got['Seqno recorded'] == 7
    assert got['Recorded by']['host'] == 'volume-1'
    assert got['Recorded by']['op'] == 'lvcreate vg0/lv-a'
    assert got['Change in flight'] is None
    assert got['Seen from'] == ME
    # This host's LVM sees no VG vg0: the on-disk side is unknown, and why.
    assert got['Seqno on disk'] == 'unknown'
    assert got['Verdict'].startswith('unknown: VG vg0 not readable here')
    assert 'not found' in got['Verdict']


def test_vg_show_table_and_empty_vg(conf, three):
    res = cli(conf, 'vg', 'show', 'vg0')
    assert res.returncode == 0, res.stderr
    assert 'volume-1 pid' in res.stdout
    assert '1. compute-1 pid' in res.stdout
    assert '2. compute-2 pid' in res.stdout
    got = cli_json(conf, 'vg', 'show', 'vg-none')
    assert got['Lock holder'] is None and got['Queue'] == []
    assert got['Seqno recorded'] is None


# -- events --

def test_events_lists_current_grants_and_hosts(conf, three):
    res = cli(conf, 'events', '-f', 'json')
    assert res.returncode == 0, res.stderr
    events = [json.loads(x) for x in res.stdout.splitlines()]
    grants = {(e['host'], e['lv']): e for e in events if e['kind'] == 'grant'}
    a = grants[('volume-1', 'vg0/lv-a')]
    assert (a['mode'], a['token']) == ('exclusive',
                                       three['grants']['lv-a'].token)
    assert grants[('compute-2', 'vg0/lv-b')]['instance'] == 'inst-1'
    ups = {e['host'] for e in events if e['kind'] == 'host-up'}
    assert ups == {'volume-1', 'compute-1', 'compute-2'}
    text = cli(conf, 'events').stdout
    assert any('grant' in x and 'volume-1' in x and 'vg0/lv-a' in x
               for x in text.splitlines())


class Follower:
    """`lvmcoord events --follow -f json` in the background."""

    def __init__(self, conf):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'coordinator.cli.app', '--config-file',
             conf, 'events', '--follow', '-f', 'json'], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def expect(self, kind, host, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f'no {kind} event for {host}'
            try:
                ev = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if ev['kind'] == kind and ev['host'] == host:
                return ev

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def test_events_follow(conf, cluster):
    h1 = cluster.host('compute-1')
    follower = Follower(conf)
    try:
        follower.expect('host-up', 'compute-1')
        grant = h1.leases.grant('vg0', 'lv-f')
        ev = follower.expect('grant', 'compute-1')
        assert (ev['lv'], ev['token']) == ('vg0/lv-f', grant.token)
        h1.leases.release('vg0', 'lv-f')
        assert follower.expect('release', 'compute-1')['lv'] == 'vg0/lv-f'
        h2 = cluster.host('compute-2')
        assert follower.expect('host-up', 'compute-2')['session'] == \
            f'{h2.session.id:x}'
        h2.leases.grant('vg0', 'lv-g')
        follower.expect('grant', 'compute-2')
        # A holder whose session ends is not a release: it may still
        # have the LV active until its fencer acts.
        h2.close(revoke=True)
        ended = follower.expect('session-ended', 'compute-2')
        assert ended['lv'] == 'vg0/lv-g' and ended['time']
        follower.expect('host-down', 'compute-2')
    finally:
        rc = follower.stop()
    assert rc == 0, follower.proc.stderr.read()


def test_events_since_revision_replays_history(conf, cluster):
    h1 = cluster.host('compute-1')
    _, start = h1.etcd.range(h1.keys.root, prefix=True, limit=1)
    h1.leases.grant('vg0', 'lv-h')
    h1.leases.release('vg0', 'lv-h')
    res = cli(conf, 'events', '--since-revision', str(start + 1), '-f',
              'json')
    assert res.returncode == 0, res.stderr
    kinds = [(e['kind'], e.get('lv')) for e in
             map(json.loads, res.stdout.splitlines())]
    assert kinds == [('grant', 'vg0/lv-h'), ('release', 'vg0/lv-h')]


# -- doctor and drain --

class FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the local API's JSON lines with canned results."""

    daemon_threads = True

    def __init__(self, path, results):
        self.results = results
        super().__init__(path, _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(socketserver.StreamRequestHandler):

    def handle(self):
        for line in self.rfile:
            op = json.loads(line)['op']
            body = {'ok': True, 'result': self.server.results[op]}
            self.wfile.write(json.dumps(body).encode() + b'\n')


@pytest.fixture
def daemon(tmp_path):
    servers = []

    def start(results):
        server = FakeDaemon(str(tmp_path / 'lvmcoord.sock'), results)
        servers.append(server)
        return server
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def doctor(conf):
    res = cli(conf, 'doctor', '-f', 'json')
    return res, {r['Check']: r for r in json.loads(res.stdout)}


def test_doctor_without_daemon(conf, etcd_server):
    res, checks = doctor(conf)
    assert res.returncode == 1
    etcd = checks[f'etcd {etcd_server.endpoints[0]}']
    assert etcd['Status'] in ('ok', 'warn'), etcd
    assert etcd['Detail'].startswith('put+get ')
    assert checks['clock']['Status'] == 'ok', checks['clock']
    daemon = checks['daemon']
    assert daemon['Status'] == 'fail'
    assert 'lvmcoord.sock' in daemon['Detail']
    assert checks['session']['Status'] == 'fail'
    assert checks['volume groups']['Status'] == 'warn'
    # The scratch key is gone again.
    e = etcdlib.Etcd(etcd_server.endpoints)
    assert e.range(f'/lvmcoord/{CLUSTER}/doctor/', prefix=True)[0] == []


def test_doctor_all_etcd_endpoints_session_and_daemon(tmp_path, etcd_server,
                                                      cluster, daemon):
    dead = f'http://127.0.0.1:{free_port()}'
    conf = write_conf(tmp_path / 'two.conf', etcd_server.endpoints + [dead],
                      tmp_path / 'state', tmp_path / 'lvmcoord.sock')
    # This host's daemon session, as the daemon persists it.
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    me = Engine(etcd, ME, CLUSTER, ttl=5,
                state_file=str(tmp_path / 'state' /
                               f'session-{CLUSTER}.json')).open()
    cluster.engines[ME] = me
    daemon({'status': {'host': ME, 'session': f'{me.session.id:x}',
                       'backend': 'loop', 'active': ['vg0/lv-a']}})
    res, checks = doctor(conf)
    assert res.returncode == 1
    assert checks[f'etcd {etcd_server.endpoints[0]}']['Status'] in (
        'ok', 'warn')
    assert checks[f'etcd {dead}']['Status'] == 'fail'
    assert checks[f'etcd {dead}']['Detail'].startswith('unreachable')
    assert checks['session']['Status'] == 'ok', checks['session']
    assert f'{me.session.id:x} alive' in checks['session']['Detail']
    assert checks['daemon']['Status'] == 'ok'
    assert '1 LV(s) active' in checks['daemon']['Detail']


def test_drain_exit_status(conf, daemon):
    server = daemon({'drain': {'released': ['vg0/lv-a', 'vg0/lv-b'],
                               'kept_open': ['vg0/lv-c']}})
    res = cli(conf, 'drain', '-f', 'json')
    assert res.returncode == 1
    assert json.loads(res.stdout) == [
        {'LV': 'vg0/lv-a', 'Result': 'released'},
        {'LV': 'vg0/lv-b', 'Result': 'released'},
        {'LV': 'vg0/lv-c', 'Result': 'kept open'}]
    assert 'vg0/lv-c' in res.stderr
    server.results['drain'] = {'released': ['vg0/lv-c'], 'kept_open': []}
    res = cli(conf, 'drain')
    assert res.returncode == 0, res.stderr
    assert 'vg0/lv-c' in res.stdout and 'released' in res.stdout


def test_drain_without_daemon(conf):
    res = cli(conf, 'drain')
    assert res.returncode == 1
    assert 'lvmcoordd not reachable' in res.stderr


# -- with a real loop-backed VG --

needs_lvm = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which('losetup')
    or not shutil.which('lvcreate')
    or not os.path.exists('/dev/loop-control'),
    reason='needs root, losetup, lvm2 and loop devices')


@pytest.fixture
def shared():
    from coordinator.sandbox.lvm import SharedVG
    with SharedVG(hosts=2) as vg:
        yield vg


def lvm_conf(tmp_path, etcd_server, shared):
    return write_conf(tmp_path / 'lvm.conf', etcd_server.endpoints,
                      tmp_path / 'state', tmp_path / 'lvmcoord.sock',
                      volume_groups=shared.vg,
                      system_dir=shared.hosts[0].system_dir)


@needs_lvm
def test_vg_show_on_disk_verdicts(tmp_path, etcd_server, cluster, shared):
    conf = lvm_conf(tmp_path, etcd_server, shared)
    here, other = shared.hosts[0].lvm, shared.hosts[1].lvm
    eng = cluster.host('volume-1')
    guard = eng.guard(lambda vg, fresh: here.vg(vg)['seqno'])
    guard.change(shared.vg, 'lvcreate lv1',
                 lambda: here.create_lv(shared.vg, 'lv1', 8 * 2 ** 20))
    seqno = here.vg(shared.vg)['seqno']
    got = cli_json(conf, 'vg', 'show', shared.vg)
    assert got['Seqno recorded'] == got['Seqno on disk'] == seqno
    assert got['Verdict'] == 'in sync'
    # Another host changes the VG without lvmcoord.
    other.create_lv(shared.vg, 'rogue', 8 * 2 ** 20)
    got = cli_json(conf, 'vg', 'show', shared.vg)
    assert got['Seqno on disk'] == seqno + 1
    assert got['Verdict'].startswith('AHEAD: changed outside lvmcoord')
    # etcd says more changes happened than this host can see.
    eng.etcd.put(eng.keys.vg_seqno(shared.vg), {'seqno': seqno + 3})
    got = cli_json(conf, 'vg', 'show', shared.vg)
    assert got['Verdict'].startswith('behind: 2 change(s) not seen here')


@needs_lvm
def test_doctor_checks_a_real_vg(tmp_path, etcd_server, shared):
    conf = lvm_conf(tmp_path, etcd_server, shared)
    res, checks = doctor(conf)
    uuid = shared.hosts[0].lvm.vg(shared.vg)['uuid']
    vg = checks[f'VG {shared.vg}']
    assert vg['Status'] == 'ok' and uuid in vg['Detail']
    assert 'not recorded in etcd yet' in vg['Detail']
    # A loop device is no multipath map: a warning, not a failure.
    assert checks[f'multipath {shared.device}']['Status'] == 'warn'
    assert checks[f'autoactivation {shared.vg}']['Status'] == 'ok'
    assert checks[f'system ID {shared.vg}']['Status'] == 'ok'
    devices = checks['devices filter']
    assert devices['Status'] == 'ok' and shared.device in devices['Detail']
    # The cluster recorded another VG under this name.
    e = etcdlib.Etcd(etcd_server.endpoints)
    e.put(f'/lvmcoord/{CLUSTER}/vg/{shared.vg}/uuid', 'other-uuid')
    res, checks = doctor(conf)
    assert res.returncode == 1
    vg = checks[f'VG {shared.vg}']
    assert vg['Status'] == 'fail' and 'other-uuid' in vg['Detail']
