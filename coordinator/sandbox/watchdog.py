"""SIMULATED watchdog for sandbox hosts: test harness only, never a real
watchdog and never for production.

A daemon run with ``[fence] watchdog_simulated = true`` appends one byte to
a regular file per pet ('.') and 'V' on its magic close. One supervisor
thread per simulated host follows that file (inotify, no polling): armed
while the last byte is '.', disarmed after 'V' or while empty. Armed with
no new byte for more than ``timeout`` seconds, it "resets the host" the way
a hardware watchdog would: every loop device of the host read-only at once
(BLKROSET, as the loop backend fences), the daemon's whole process group
SIGKILLed, the host's other processes killed by the harness's callbacks
(its VMs die with it), then the devices detached and the host's device
links removed (a reboot clears /run). After a reset the watchdog is
disarmed until the restarted ("rebooted") daemon pets it again.

The pet times are the file's mtime, kept by the kernel at the write, and
every time here is wall-clock, comparable with a grant's ``since``.
"""
import ctypes
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time

from coordinator import errors
from coordinator.activation import loop as looplib
from coordinator.daemon import grantbook
from coordinator.sandbox import links as linkslib

LOG = logging.getLogger(__name__)

_IN_MODIFY = 0x2
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_libc = ctypes.CDLL(None, use_errno=True)

PET, MAGIC_CLOSE = b'.', b'V'


@dataclasses.dataclass
class Reset:
    """One simulated host reset."""

    host: str
    last_pet: float  # wall time of the last pet (file mtime)
    at: float  # wall time every device of the host was read-only
    done: float  # wall time devices were detached, processes killed
    devices: list  # [{vg, lv, uuid, loop, writable, token}] at the reset


class SimulatedWatchdog:
    """SIMULATED watchdog of one sandbox host (see the module docstring)."""

    def __init__(self, daemon, timeout, clock=time.time):
        self.daemon = daemon
        self.host = daemon.host
        self.path = daemon.watchdog_file
        self.timeout = timeout
        self.clock = clock
        self.resets = []
        # {minor: tag} a reset detached while open: read-only until its
        # last close, its flag cleared at stop().
        self._pending = {}
        # Called as fn(host) right after the devices went read-only and
        # the daemon was killed: the harness kills the host's VMs.
        self.on_reset = []
        # Called as fn(host) once the reset is complete (devices gone):
        # the harness may "reboot" the host (start its daemon again).
        self.after_reset = []
        self._resetting = threading.Lock()
        # Called as fn(host) -> [loop device path]: more devices the host
        # uses (the harness's VMs hold them open); a reset stops them too.
        self.also_devices = []
        self.armed = False
        self.last_pet = None
        self._offset = os.path.getsize(self.path)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = None
        self.error = None

    # -- thread --

    def start(self):
        self._thread = threading.Thread(
            target=self._run, name=f'simulated-watchdog-{self.host}',
            daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop supervising (no reset from now on); idempotent."""
        if self._stop_w is not None:
            os.write(self._stop_w, b'x')
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd is not None:
                os.close(fd)
        self._stop_r = self._stop_w = None
        for loop, tag in list(self._pending.items()):
            if looplib.release_ro(loop, tag):
                del self._pending[loop]

    def _run(self):
        ino = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if ino < 0:
            self.error = f'inotify_init1: {os.strerror(ctypes.get_errno())}'
            LOG.error('SIMULATED watchdog %s: %s', self.host, self.error)
            return
        try:
            if _libc.inotify_add_watch(ino, os.fsencode(self.path),
                                       _IN_MODIFY) < 0:
                self.error = (f'inotify_add_watch {self.path}: '
                              f'{os.strerror(ctypes.get_errno())}')
                LOG.error('SIMULATED watchdog %s: %s', self.host, self.error)
                return
            while True:
                self._read()
                wait = None
                if self.armed:
                    wait = max(0.0, self.last_pet + self.timeout -
                               self.clock())
                ready, _, _ = select.select([ino, self._stop_r], [], [],
                                            wait)
                if self._stop_r in ready:
                    return
                if ino in ready:
                    try:
                        os.read(ino, 65536)  # the events say only "written"
                    except BlockingIOError:
                        pass
                    continue
                # Timed out: a pet may have landed since; the file decides.
                self._read()
                if self.armed and \
                        self.clock() > self.last_pet + self.timeout:
                    self.reset()
        except Exception as exc:  # recorded: the harness reports it
            self.error = f'{type(exc).__name__}: {exc}'
            LOG.exception('SIMULATED watchdog %s failed', self.host)
        finally:
            os.close(ino)

    def _read(self):
        """Follow the file: new bytes decide armed/disarmed; mtime is the
        last pet's time."""
        st = os.stat(self.path)
        if st.st_size <= self._offset:
            self._offset = min(self._offset, st.st_size)
            return
        with open(self.path, 'rb') as f:
            f.seek(st.st_size - 1)
            last = f.read(1)
        self._offset = st.st_size
        self.armed = last == PET
        self.last_pet = st.st_mtime_ns / 1e9

    # -- the reset --

    def settled(self):
        """Return once no reset is in progress."""
        with self._resetting:
            pass

    def reset(self):
        """Reset the simulated host now; returns the Reset."""
        with self._resetting:
            r = self._reset()
        for fn in self.after_reset:
            try:
                fn(self.host)
            except Exception:  # one callback must not stop the supervisor
                LOG.exception('SIMULATED watchdog %s: after-reset callback',
                              self.host)
        return r

    def _reset(self):
        last_pet = self.last_pet
        devices = self._devices()
        for d in devices:
            d['writable'] = _writable(d['loop'])
            _read_only(d['loop'])
        self._kill_daemon()
        # The daemon may have made a device between our first look and
        # its death: look again, now that nothing changes them.
        known = {d['loop'] for d in devices}
        for d in self._devices():
            if d['loop'] not in known:
                d['writable'] = _writable(d['loop'])
                _read_only(d['loop'])
                devices.append(d)
        # Only now the grant book: a reader may wait on its lock, and a
        # reset does not wait before it stops writes.
        tokens = self._tokens()
        for d in devices:
            if 'token' not in d:
                d['token'] = tokens.get(f'{d["vg"]}/{d["lv"]}')
        at = self.clock()
        for fn in self.on_reset:
            try:
                fn(self.host)
            except Exception:  # one callback must not stop the reset
                LOG.exception('SIMULATED watchdog %s: reset callback',
                              self.host)
        for d in devices:
            # One kernel for every simulated host: a minor freed since our
            # look may be another host's device now (its tag differs).
            if looplib._tag(d['loop']) != d.get('tag'):
                continue
            subprocess.run(['losetup', '-d', d['loop']], check=False,
                           capture_output=True)
            # A reboot leaves no flag behind (an open one stays read-only
            # until its last close).
            if not looplib.release_ro(d['loop'], d.get('tag')):
                self._pending[d['loop']] = d.get('tag')
        self._clear_links()
        self.armed = False
        self._offset = os.path.getsize(self.path)
        r = Reset(self.host, last_pet, at, self.clock(), devices)
        self.resets.append(r)
        LOG.warning('SIMULATED watchdog: reset %s (%.1fs after its last '
                    'pet; %d devices)', self.host, at - last_pet,
                    len(devices))
        return r

    def _kill_daemon(self):
        proc = self.daemon.proc
        if proc is None:
            return
        try:
            # The whole group, even if the master is gone already.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _devices(self):
        """This host's loop devices: its backend's state (minors checked
        against their tag, as the backend does) and its device links."""
        out = {}
        try:
            with open(os.path.join(self.daemon.state_dir,
                                   'loop-devices.json')) as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = {}
        for key, entry in state.items():
            if looplib.LoopBackend._intact(entry):
                vg, lv = key.split('/', 1)
                out[entry['loop']] = dict(
                    vg=vg, lv=lv, uuid=entry.get('uuid'),
                    loop=entry['loop'])
        for vg, lv, target in self._links():
            if target not in out and _attached(target):
                out[target] = dict(vg=vg, lv=lv, uuid=None, loop=target)
        for fn in self.also_devices:
            for d in fn(self.host):
                if d['loop'] not in out and _attached(d['loop']):
                    out[d['loop']] = d
        for d in out.values():
            d['tag'] = looplib._tag(d['loop'])
        return list(out.values())

    def _tokens(self):
        """{'vg/lv': token} from the daemon's grant book."""
        out = {}
        clusters = {name[len('grants-'):].split('.json')[0]
                    for name in linkslib.listdir(self.daemon.state_dir)
                    if name.startswith('grants-') and '.json' in name}
        for cluster in clusters:
            try:
                book = grantbook.GrantBook(self.daemon.state_dir,
                                           cluster).all()
            except OSError:
                continue
            for (vg, lv), rec in book.items():
                if isinstance(rec, dict) and rec.get('token'):
                    out[f'{vg}/{lv}'] = rec['token']
        return out

    def _links(self):
        for vg, lv, target in linkslib.device_links(self.daemon.dev_dir):
            if target.startswith('/dev/loop'):
                yield vg, lv, target

    def _clear_links(self):
        root = self.daemon.dev_dir
        for vg in linkslib.listdir(root):
            for lv in linkslib.listdir(os.path.join(root, vg)):
                try:
                    os.unlink(os.path.join(root, vg, lv))
                except OSError:
                    pass


def _attached(loop):
    return os.path.exists(f'/sys/block/{os.path.basename(loop)}/loop')


def _writable(loop):
    try:
        with open(f'/sys/block/{os.path.basename(loop)}/ro') as f:
            return f.read().strip() == '0'
    except OSError:
        return False


def _read_only(loop):
    try:
        looplib._set_ro(loop, True)
    except errors.LVMError as exc:  # detached meanwhile: nothing to stop
        LOG.warning('SIMULATED watchdog: %s', exc)
