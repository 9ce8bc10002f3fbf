"""Cluster: private etcd + loop-backed shared VG + one daemon per host."""
import contextlib
import json
import os
import subprocess
import tempfile

from coordinator.activation import loop as looplib
from coordinator.sandbox.daemons import Daemon
from coordinator.sandbox.etcd import EtcdCluster
from coordinator.sandbox.lvm import SharedVG
from coordinator.sandbox.watchdog import SimulatedWatchdog


class Cluster:
    """Everything started here is stopped by close(), whatever happened."""

    def __init__(self, hosts=('volume-1', 'compute-1', 'compute-2'),
                 ttl=10, grace=3.0, vg_size=2 << 30, etcd_members=1,
                 endpoints_for=None, simulated_watchdog=None,
                 trees=None, metadata_size=None, opts_for=None,
                 **daemon_opts):
        self.names = list(hosts)
        self.ttl, self.grace = ttl, grace
        self.vg_size = vg_size
        # pvcreate --metadatasize (e.g. '64k'), or LVM's default.
        self.metadata_size = metadata_size
        self.etcd_members = etcd_members
        # endpoints_for(host, endpoints) lets a test put a proxy between
        # one daemon and etcd.
        self.endpoints_for = endpoints_for or (lambda host, eps: eps)
        self.daemon_opts = daemon_opts
        # {host: source tree} of daemons run from another release's tree.
        self.trees = dict(trees or {})
        # opts_for(host) -> options of that daemon alone (a metrics port).
        self.opts_for = opts_for or (lambda host: {})
        # Seconds: each host gets a SIMULATED watchdog with this timeout
        # (coordinator/sandbox/watchdog.py); None: no watchdog.
        self.simulated_watchdog = simulated_watchdog
        self.watchdogs = {}
        self.stack = contextlib.ExitStack()
        self.dir = None
        self.daemons = {}

    def start(self):
        try:
            self.dir = tempfile.mkdtemp(prefix='lvmcoord-cluster-')
            self.stack.callback(_rmtree, self.dir)
            self.etcd = self.stack.enter_context(
                EtcdCluster(self.etcd_members))
            self.vg = self.stack.enter_context(
                SharedVG(hosts=len(self.names), size=self.vg_size,
                         metadata_size=self.metadata_size))
            # Runs last: minors the daemons detached while open, read-only
            # until their last close, keep the flag once free.
            self.stack.callback(_release_retired, self.dir)
            # Runs after the daemons stop: LV devices they left active
            # (a stopped daemon keeps them, on purpose) sit on our PV.
            self.stack.callback(detach_stacked, self.vg.device)
            for name, sim in zip(self.names, self.vg.hosts, strict=True):
                d = Daemon(name, os.path.join(self.dir, name),
                           self.endpoints_for(name, self.etcd.endpoints),
                           self.vg.vg, sim.system_dir, ttl=self.ttl,
                           grace=self.grace,
                           simulated_watchdog=self.simulated_watchdog,
                           tree=self.trees.get(name),
                           **{**self.daemon_opts, **self.opts_for(name)})
                self.stack.callback(d.stop)
                if self.simulated_watchdog:
                    # Stopped before the daemons are: no reset at teardown.
                    dog = SimulatedWatchdog(d, self.simulated_watchdog)
                    self.watchdogs[name] = dog.start()
                    self.stack.callback(dog.stop)
                self.daemons[name] = d.start(wait=False)
            for d in self.daemons.values():
                d.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __getitem__(self, host):
        return self.daemons[host]

    def restart(self, host):
        """Start a stopped or killed daemon again (same state dir)."""
        d = self.daemons[host]
        return d.start()

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def detach_stacked(device):
    """Detach every loop device whose backing device is ``device``."""
    out = subprocess.run(['losetup', '-j', device, '-O', 'NAME', '-n'],
                         capture_output=True, text=True, check=False)
    for loop in out.stdout.split():
        subprocess.run(['losetup', '-d', loop], check=False)
        looplib.release_ro(loop)  # a fenced one's flag outlives it


def _release_retired(root):
    """release_ro every minor a daemon under ``root`` left pending."""
    for top, _, files in os.walk(root):
        if 'loop-retired.json' in files:
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(top, 'loop-retired.json')) as f:
                    for loop, tag in json.load(f).items():
                        looplib.release_ro(loop, tag)


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)
