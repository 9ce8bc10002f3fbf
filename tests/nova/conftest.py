"""The Nova tier's processes: one sandbox cluster, one Cinder process and
one Nova process for the whole module (doc/nova.md)."""
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.functional import test_cinder

ROOT = test_cinder.ROOT
HOSTS = ('volume-1', 'compute-1', 'compute-2')
# Nova's harness project (nova.tests.fixtures.nova.PROJECT_ID).
PROJECT = '6f70656e737461636b20342065766572'
VENV = os.environ.get('LVMCOORD_NOVA_VENV', '/opt/lvmcoord-nova-venv')
GiB = 1 << 30


class Child:
    """A child process speaking JSON lines on stdout, its stderr kept in
    a file (shown when it fails)."""

    def __init__(self, argv, env, log):
        self.log = log
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=open(log, 'w'), text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def tail(self):
        with open(self.log) as f:
            return f.read()[-8000:]

    def receive(self, timeout):
        """The next JSON line; fails after ``timeout`` s or at exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(
                    0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f'{self.log}: no answer in {timeout} s\n'
                            + self.tail())
            if line is None:
                pytest.fail(f'{self.log}: exited {self.proc.wait()}\n'
                            + self.tail())
            if line.startswith('{'):
                return json.loads(line)

    def send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + '\n')
        self.proc.stdin.flush()

    def stop(self, timeout=120):
        """Close its input, wait; killed if it does not end."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Cinder:
    """Cinder's REST API as the test side sees it (admin of Nova's
    project, through noauth)."""

    def __init__(self, url):
        self.url = f'{url}/v3/{PROJECT}'

    def call(self, method, path, body=None, version='3.44'):
        req = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={'X-Auth-Token': f'admin:{PROJECT}',
                     'Content-Type': 'application/json',
                     'OpenStack-API-Version': f'volume {version}'})
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def volume(self, vid):
        """The volume, or None once deleted."""
        try:
            return self.call('GET', f'/volumes/{vid}')['volume']
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def wait(self, vid, status, timeout=180):
        """Poll until the volume's status is ``status`` ('deleted': gone)."""
        deadline = time.monotonic() + timeout
        while True:
            vol = self.volume(vid)
            got = 'deleted' if vol is None else vol['status']
            if got == status:
                return vol
            assert time.monotonic() < deadline and not got.startswith(
                'error'), f'volume {vid}: {got}, not {status}'
            time.sleep(0.3)

    def create(self, size=1, **extra):
        """A new available volume."""
        vol = self.call('POST', '/volumes', {'volume': dict(size=size,
                                                            **extra)})
        return self.wait(vol['volume']['id'], 'available')

    def delete(self, vid):
        self.call('DELETE', f'/volumes/{vid}')
        self.wait(vid, 'deleted')

    def attached_hosts(self, vid):
        """(server, host) of each attachment Cinder records."""
        return sorted((a['server_id'], a['host_name'])
                      for a in self.volume(vid)['attachments'])


class Nova:
    """The Nova process's commands (tests/nova/nova_proc.py)."""

    def __init__(self, child):
        self.child = child

    def __call__(self, op, on_event=None, timeout=300, **args):
        reply = self.reply(op, on_event, timeout, **args)
        assert 'error' not in reply, reply['error']
        return reply['ok']

    def reply(self, op, on_event=None, timeout=300, **args):
        """The process's answer, an error too."""
        self.child.send(dict(args, op=op))
        while True:
            reply = self.child.receive(timeout)
            if 'event' in reply:
                if on_event:
                    on_event(reply)
                self.child.send({})
                continue
            return reply


@pytest.fixture(scope='module')
def cluster():
    """The sandbox cluster: etcd, a shared VG on loop devices, daemons
    for volume-1, compute-1, compute-2 (short TTLs)."""
    from coordinator.sandbox.cluster import Cluster
    with Cluster(hosts=HOSTS, ttl=4, grace=1.0, vg_size=64 * GiB) as c:
        yield c


@pytest.fixture(scope='module')
def spec(cluster):
    return test_cinder.spec_of(cluster)


@pytest.fixture(scope='module')
def cinder(spec, tmp_path_factory):
    """Cinder's API, scheduler and volume service (LvmcoordDriver) in a
    child process."""
    os.makedirs(spec['backup_dir'], exist_ok=True)
    env = dict(os.environ, **{test_cinder.SPEC_ENV: json.dumps(spec),
                              test_cinder.NO_EVENTLET: 'false'})
    log = str(tmp_path_factory.mktemp('cinder') / 'cinder.log')
    child = Child([sys.executable, '-m', 'tests.nova.cinder_proc'], env, log)
    try:
        url = child.receive(240)['url']
        yield Cinder(url), child
    finally:
        child.stop()


@pytest.fixture(scope='module')
def nova(cinder, tmp_path_factory):
    """Nova's functional harness with two libvirt computes, in the Nova
    virtualenv, calling the Cinder process over HTTP."""
    python = os.path.join(VENV, 'bin', 'python')
    if not os.path.exists(python):
        pytest.fail(f'no Nova virtualenv at {VENV}: make setup-nova')
    env = dict(os.environ, PYTHONPATH=ROOT)
    log = str(tmp_path_factory.mktemp('nova') / 'nova.log')
    child = Child([python, '-m', 'tests.nova.nova_proc',
                   cinder[0].url.rsplit('/v3/', 1)[0], PROJECT], env, log)
    try:
        ready = child.receive(300)
        # Cinder calls Nova's API (swap volume) at the port the Nova
        # process serves it on, as the admin of Nova's project.
        cinder[1].send({'nova': ready['url'], 'token': f'admin:{PROJECT}'})
        assert cinder[1].receive(30) == {'ok': True}
        yield Nova(child)
        child.send({'op': 'quit'})
    finally:
        child.stop()
