"""The cluster under test: 3 etcd members, daemons behind per-host proxies
(one per member, so a host can be cut from all of etcd), a shared VG, and
an admin CLI/LVM view of its own."""
import contextlib
import json
import os
import re
import subprocess
import sys
from urllib import parse

from coordinator.lvm.executor import LVM
from coordinator.sandbox import lvm as sandbox_lvm
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.proxy import Proxy

CLUSTER = 'sandbox'  # Daemon's default cluster name.
FRACTION = 0.6  # the daemon's default [fence] fraction


def watchdog_timeout(ttl, grace, fraction=FRACTION):
    """The longest SIMULATED watchdog timeout the daemon's start-up rule
    allows: fraction * TTL + timeout + 1 <= TTL + grace."""
    timeout = int(ttl + grace - fraction * ttl - 1)
    if timeout < 1:
        raise ValueError(f'TTL {ttl} s, grace {grace} s leave no room for '
                         f'a watchdog timeout of at least 1 s')
    return timeout


class Topology:
    """Context manager; everything started is stopped by close()."""

    def __init__(self, volumes=2, computes=2, ttl=6, grace=1.0,
                 vg_size=768 << 20, watchdog=True, **daemon_opts):
        self.volumes = [f'volume-{i + 1}' for i in range(volumes)]
        self.computes = [f'compute-{i + 1}' for i in range(computes)]
        self.hosts = self.volumes + self.computes
        self.ttl, self.grace = ttl, grace
        self.proxies = {}
        self.stack = contextlib.ExitStack()
        # Every host runs under a SIMULATED watchdog (sandbox/watchdog.py).
        self.watchdog_timeout = watchdog_timeout(ttl, grace) \
            if watchdog else None
        self.cluster = Cluster(hosts=self.hosts, ttl=ttl, grace=grace,
                               vg_size=vg_size, etcd_members=3,
                               endpoints_for=self._proxied,
                               simulated_watchdog=self.watchdog_timeout,
                               fence__fraction=FRACTION, **daemon_opts)

    def _proxied(self, host, endpoints):
        mine = []
        for ep in endpoints:
            url = parse.urlsplit(ep)
            proxy = Proxy(url.hostname, url.port)
            self.stack.callback(proxy.close)
            mine.append(proxy)
        self.proxies[host] = mine
        return [p.url for p in mine]

    def start(self):
        try:
            self.stack.enter_context(self.cluster)
            self.vg = self.cluster.vg.vg
            self.pv = self.cluster.vg.device
            self.admin_conf = self._admin_conf()
            self.lvm = self._own_lvm()
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- pieces --

    def daemon(self, host):
        return self.cluster[host]

    def client(self, host, timeout=120):
        c = self.cluster[host].client
        c.timeout = timeout
        return c

    @property
    def watchdogs(self):
        """{host: SimulatedWatchdog}; empty without watchdogs."""
        return self.cluster.watchdogs

    @property
    def etcd(self):
        return self.cluster.etcd

    def cut(self, host):
        """Partition ``host`` from every etcd member."""
        for p in self.proxies[host]:
            p.cut()

    def heal(self, host):
        for p in self.proxies[host]:
            p.heal()

    def _admin_conf(self):
        # The admin CLI talks to etcd directly, never through a proxy.
        path = os.path.join(self.cluster.dir, 'admin.conf')
        with open(path, 'w') as f:
            f.write(f'[DEFAULT]\nhost = chaos-admin\ncluster = {CLUSTER}\n'
                    f'[etcd]\nendpoints = {",".join(self.etcd.endpoints)}\n'
                    f'timeout = 2\n[lvm]\nvolume_groups = {self.vg}\n')
        return path

    def _own_lvm(self):
        # Its own locking dir: the checker's lvs never holds a daemon's
        # file lock.
        d = os.path.join(self.cluster.dir, 'checker-lvm')
        os.makedirs(os.path.join(d, 'lock'), exist_ok=True)
        with open(os.path.join(d, 'lvm.conf'), 'w') as f:
            f.write(sandbox_lvm.LVM_CONF.format(
                device=re.escape(self.pv), locking_dir=os.path.join(d, 'lock'),
                activation=0))
        self.lvm_system_dir = d
        return LVM(system_dir=d, timeout=60, activation=False)

    def cli(self, *args, timeout=60):
        """Run `lvmcoord` with the admin config; CompletedProcess."""
        return subprocess.run(
            [sys.executable, '-m', 'coordinator.cli.app', '--config-file',
             self.admin_conf, *args], capture_output=True, text=True,
            timeout=timeout, check=False)

    def lease_list(self):
        """`lvmcoord lease list -f json` rows."""
        out = self.cli('lease', 'list', '-f', 'json')
        if out.returncode:
            raise RuntimeError(f'lease list failed: {out.stderr.strip()}')
        return json.loads(out.stdout or '[]')

    def dev_dir(self, host):
        """Where ``host``'s loop backend makes its device links."""
        return os.path.join(self.cluster.dir, host, 'dev')
