"""lvmcoordd processes for simulated hosts, each in its own process group
so a test can kill a whole daemon (-9) the way a crash would."""
import atexit
import os
import signal
import subprocess
import sys
import time

from coordinator import errors
from coordinator.api.client import Client

_LIVE = set()


class Daemon:
    """One simulated host's lvmcoordd, configured in its own directory."""

    def __init__(self, host, workdir, endpoints, vg, system_dir=None,
                 cluster='sandbox', ttl=10, grace=3.0, backend='loop',
                 simulated_watchdog=None, tree=None, **extra):
        self.host = host
        # A source tree to run the daemon from (another release's, for
        # the upgrade test); None: this one.
        self.tree = tree
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, 'api.sock')
        self.conf_file = os.path.join(workdir, 'lvmcoord.conf')
        self.log = os.path.join(workdir, 'lvmcoordd.log')
        self.state_dir = os.path.join(workdir, 'state')
        self.dev_dir = os.path.join(workdir, 'dev')
        sections = {
            'DEFAULT': {'host': host, 'cluster': cluster,
                        'log_file': self.log, 'debug': 'false'},
            'etcd': {'endpoints': ','.join(endpoints), 'timeout': '2'},
            'session': {'ttl': ttl, 'state_dir': self.state_dir},
            'lease': {'grace': grace},
            'lvm': {'volume_groups': vg, 'activation_backend': backend,
                    'loop_dev_dir': self.dev_dir},
            'api': {'socket_path': self.socket},
        }
        if system_dir:
            sections['lvm']['system_dir'] = system_dir
        # SIMULATED watchdog (sandbox only): a regular file the fencer
        # appends its pets to; coordinator/sandbox/watchdog.py watches it.
        self.watchdog_file = None
        if simulated_watchdog:
            self.watchdog_file = os.path.join(workdir,
                                              'watchdog-SIMULATED')
            open(self.watchdog_file, 'ab').close()
            sections['fence'] = {'watchdog_device': self.watchdog_file,
                                 'watchdog_simulated': 'true',
                                 'watchdog_timeout': simulated_watchdog}
        for key, value in extra.items():
            group, opt = key.split('__')
            sections.setdefault(group, {})[opt] = value
        with open(self.conf_file, 'w') as f:
            for name, opts in sections.items():
                f.write(f'[{name}]\n')
                f.writelines(f'{k} = {v}\n' for k, v in opts.items())
        self.proc = None

    @property
    def client(self):
        return Client(self.socket, timeout=120)

    def start(self, wait=True):
        """Start the daemon; with ``wait``, return once its API answers."""
        env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1')
        if self.tree:
            env['PYTHONPATH'] = self.tree
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'coordinator.daemon.main',
             '--config-file', self.conf_file],
            stdout=subprocess.DEVNULL, stderr=open(self.log + '.err', 'ab'),
            start_new_session=True, env=env, cwd=self.tree)
        _LIVE.add(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.client.call('status')
            except errors.CoordError as exc:
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    raise RuntimeError(f'{self.host} daemon not ready: '
                                       f'{exc}\n{self.log_tail()}') from exc
                time.sleep(0.1)

    def log_tail(self, size=3000):
        out = ''
        for path in (self.log, self.log + '.err'):
            try:
                with open(path, 'rb') as f:
                    out += f.read()[-size:].decode(errors='replace')
            except OSError:
                pass
        return out

    def kill(self, sig=signal.SIGKILL):
        """Signal every process of the daemon (master and workers)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=20):
        """Stop gracefully; kill what is left after ``timeout``."""
        if self.proc is None:
            return
        self.kill(signal.SIGCONT)
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()
        # Workers may outlive the master by a moment.
        self.kill(signal.SIGKILL)
        _LIVE.discard(self)


@atexit.register
def _reap():
    for d in list(_LIVE):
        d.kill(signal.SIGKILL)
