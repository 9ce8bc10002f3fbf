"""Private etcd servers: 127.0.0.1 only, random ports, temp dirs.

Every process started here is stopped by ``close()`` (and by atexit as a
last resort), whatever happened in the test.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import requests

ETCD = os.environ.get('ETCD_BINARY', 'etcd')
ETCDCTL = os.environ.get('ETCDCTL_BINARY', 'etcdctl')
_LIVE = set()


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count):
    """``count`` distinct such ports: held open together while chosen (one
    at a time, the kernel can hand out the port just closed again: two
    members were given one peer URL, and etcd refused the cluster)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            socks.append(s)
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    """One etcd member process."""

    def __init__(self, name, data_dir, cluster_token, ports=None):
        self.name = name
        self.data_dir = data_dir
        self.client_port, self.peer_port = ports or free_ports(2)
        self.token = cluster_token
        self.proc = None

    @property
    def url(self):
        return f'http://127.0.0.1:{self.client_port}'

    @property
    def peer_url(self):
        return f'http://127.0.0.1:{self.peer_port}'

    def start(self, initial_cluster, state='new'):
        """Start (or restart) the member; returns once it is serving."""
        log = open(os.path.join(self.data_dir + '.log'), 'ab')
        args = [ETCD, '--name', self.name, '--data-dir', self.data_dir,
                '--listen-client-urls', self.url,
                '--advertise-client-urls', self.url,
                '--listen-peer-urls', self.peer_url,
                '--initial-advertise-peer-urls', self.peer_url,
                '--initial-cluster', initial_cluster,
                '--initial-cluster-state', state,
                '--initial-cluster-token', self.token,
                '--heartbeat-interval', '100', '--election-timeout', '1000',
                '--log-level', 'warn', '--logger', 'zap']
        self.proc = subprocess.Popen(args, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        _LIVE.add(self)
        return self

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'etcd {self.name} exited: '
                                   f'{self.log_tail()}')
            try:
                if requests.get(self.url + '/health', timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f'etcd {self.name} not ready: {self.log_tail()}')

    def log_tail(self):
        try:
            with open(self.data_dir + '.log', 'rb') as f:
                return f.read()[-2000:].decode(errors='replace')
        except OSError:
            return ''

    def send(self, sig):
        """Send ``sig`` to the member."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM):
        """Stop the process (SIGKILL with ``sig``) and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE.discard(self)

    def is_leader(self):
        """True if this member is the raft leader now."""
        st = requests.post(self.url + '/v3/maintenance/status', json={},
                           timeout=2).json()
        return st.get('leader') == st['header']['member_id']


class EtcdCluster:
    """N etcd members on loopback (1 for most tests, 3 for fault tests)."""

    def __init__(self, size=1):
        self.dir = tempfile.mkdtemp(prefix='lvmcoord-etcd-')
        token = os.path.basename(self.dir)
        ports = free_ports(2 * size)
        self.members = [Member(f'm{i}', os.path.join(self.dir, f'm{i}'),
                               token, ports[2 * i:2 * i + 2])
                        for i in range(size)]
        self.initial = ','.join(f'{m.name}={m.peer_url}'
                                for m in self.members)

    def start(self):
        try:
            for m in self.members:
                m.start(self.initial)
            for m in self.members:
                m.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def endpoints(self):
        return [m.url for m in self.members]

    def leader(self):
        """The member that is raft leader now."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for m in self.members:
                try:
                    if m.proc.poll() is None and m.is_leader():
                        return m
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise RuntimeError('no etcd leader')

    def restart(self, member):
        """Start a stopped member again with its old data."""
        member.start(self.initial, state='existing')
        return member.wait_ready()

    def snapshot(self, path):
        """`etcdctl snapshot save` of the leader's data into ``path``."""
        _etcdctl('--endpoints', self.leader().url, 'snapshot', 'save', path)
        return path

    def restore(self, path):
        """Stop every member, restore each from the snapshot ``path`` into
        a fresh data dir (`etcdctl snapshot restore`) and start them on it:
        an operator's restore from a backup."""
        for m in self.members:
            m.stop()
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)
            _etcdctl('snapshot', 'restore', path, '--data-dir', m.data_dir,
                     '--name', m.name, '--initial-cluster', self.initial,
                     '--initial-cluster-token', m.token,
                     '--initial-advertise-peer-urls', m.peer_url)
        for m in self.members:
            m.start(self.initial, state='existing')
        for m in self.members:
            m.wait_ready()
        return self

    def close(self):
        for m in self.members:
            m.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _etcdctl(*args):
    if not shutil.which(ETCDCTL):
        raise RuntimeError(f'{ETCDCTL} not found: install etcd-client '
                           f'(make setup does)')
    res = subprocess.run([ETCDCTL, *args], capture_output=True, text=True,
                         env=dict(os.environ, ETCDCTL_API='3'), timeout=60)
    if res.returncode:
        raise RuntimeError(f'etcdctl {" ".join(args[:3])} failed: '
                           f'{res.stderr[-500:]}')
    return res.stdout


@atexit.register
def _reap():
    for m in list(_LIVE):
        m.stop(signal.SIGKILL)
