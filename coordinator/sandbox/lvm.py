"""A shared VG on a loop device, seen by simulated hosts.

Each simulated host has its own LVM_SYSTEM_DIR: its own locking dir (so
hosts race on the metadata exactly as separate machines would) and a
devices filter that accepts only this test's loop device (so a test can
never touch another disk). Cleanup runs on exit, on failure, at
interpreter exit (atexit), and the kernel detaches the loop device on its
own if the process dies: it is set to auto-clear and held open by us.
"""
import atexit
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from typing import NamedTuple

from coordinator import activation
from coordinator import errors
from coordinator.activation import loop as looplib
from coordinator.lvm.executor import LVM

GiB = 2 ** 30
LOOP_MAJOR = 7
WIPE_BYTES = 4 * 2 ** 20

_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_AUTOCLEAR = 4
_BLKROSET = 0x125D
_INFO64 = struct.Struct('5Q4I64s64s32s2Q')

LVM_CONF = '''\
devices {{
    filter = [ "a|^{device}$|", "r|.*|" ]
    global_filter = [ "a|^{device}$|", "r|.*|" ]
    use_devicesfile = 0
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    hints = "none"
}}
global {{
    locking_dir = "{locking_dir}"
    use_lvmlockd = 0
    activation = {activation}
}}
activation {{
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}}
backup {{
    backup = 0
    archive = 0
}}
'''


class SimHost(NamedTuple):
    """One simulated host: its LVM config dir and an executor using it."""

    name: str
    system_dir: str
    lvm: LVM


def _backing_file(device):
    try:
        with open(f'/sys/block/{os.path.basename(device)}/loop/'
                  f'backing_file') as f:
            return f.read().strip()
    except OSError:
        return None


def _is_ours(device, backing):
    # The kernel appends " (deleted)" once the file is unlinked.
    found = _backing_file(device)
    return found is not None and \
        found.removesuffix(' (deleted)') == os.path.realpath(backing)


def _ensure_node(number):
    # Containers may lack /dev/loopN for a device loop-control created.
    path = f'/dev/loop{number}'
    if not os.path.exists(path):
        with contextlib.suppress(FileExistsError):
            os.mknod(path, 0o660 | stat.S_IFBLK,
                     os.makedev(LOOP_MAJOR, number))
    return path


def _free_loop():
    fd = os.open('/dev/loop-control', os.O_RDWR)
    try:
        return fcntl.ioctl(fd, _LOOP_CTL_GET_FREE)
    finally:
        os.close(fd)


def attach(backing, attempts=8):
    """Attach ``backing`` to a free loop device; its path."""
    err = ''
    for attempt in range(attempts):
        out = subprocess.run(['losetup', '-f', '--show', backing],
                             capture_output=True, text=True, timeout=60,
                             check=False)
        device = out.stdout.strip()
        if out.returncode == 0 and _is_ours(device, backing):
            # A minor keeps a read-only flag set before (a fence) that
            # was not cleared: the LU is written to.
            looplib.release_ro(device)
            return device
        err = out.stderr.strip() or f'{device} is not backed by {backing}'
        # A missing node for the free device: make it, then retry; a
        # device taken by a concurrent losetup: just retry.
        missing = re.search(r'(/dev/loop(\d+))', err)
        if missing and not os.path.exists(missing.group(1)):
            _ensure_node(int(missing.group(2)))
        elif 'unused loop device' in err or 'No such file' in err:
            with contextlib.suppress(OSError):
                _ensure_node(_free_loop())
        time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f'cannot attach {backing} to a loop device: {err}')


def _read_only(device):
    with open(f'/sys/block/{os.path.basename(device)}/ro') as f:
        return f.read().strip() == '1'


def _set_writable(fd):
    # `blockdev --setro` (a fenced loop device) outlives the detach: the
    # next attach of that loop number would come up read-only.
    fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 0))


def _set_autoclear(fd):
    buf = bytearray(_INFO64.size)
    fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
    info = list(_INFO64.unpack(buf))
    info[8] |= _LO_FLAGS_AUTOCLEAR
    fcntl.ioctl(fd, _LOOP_SET_STATUS64, _INFO64.pack(*info))


_LIVE = set()
_LIVE_MUTEX = threading.Lock()


@atexit.register
def _close_all():
    with _LIVE_MUTEX:
        live = list(_LIVE)
    for shared in live:
        shared.close()


class SharedVG:
    """Context manager: a loop-backed VG and ``hosts`` simulated hosts."""

    def __init__(self, hosts=3, size=2 * GiB, metadata_size=None, vg=None,
                 timeout=60.0):
        self.n_hosts = hosts
        self.size = size
        self.metadata_size = metadata_size
        self.vg = vg or 'lvmc_' + secrets.token_hex(4)
        self.timeout = timeout
        self.dm = activation.has_device_mapper()
        self.tmpdir = self.backing = self.device = None
        self.hosts = []
        self._hold = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def open(self):
        """Create the backing file, loop device, host configs and VG."""
        with _LIVE_MUTEX:
            _LIVE.add(self)
        stack = self._stack
        self.tmpdir = tempfile.mkdtemp(prefix='lvmcoord-vg-')
        stack.callback(shutil.rmtree, self.tmpdir, ignore_errors=True)
        self.backing = os.path.join(self.tmpdir, 'shared-lu.img')
        with open(self.backing, 'wb') as f:
            f.truncate(self.size)
        self.device = attach(self.backing)
        stack.callback(self._detach)
        # Held open with auto-clear set: if this process dies, the last
        # close detaches the loop device.
        self._hold = os.open(self.device, os.O_RDONLY)
        _set_autoclear(self._hold)
        if _read_only(self.device):
            _set_writable(self._hold)
        if _read_only(self.device):
            raise RuntimeError(f'{self.device} is read-only')
        for i in range(self.n_hosts):
            self.hosts.append(self._make_host(f'host{i}'))
        stack.callback(self._remove_vg)
        self._create_vg()
        return self

    def _make_host(self, name):
        system_dir = os.path.join(self.tmpdir, name)
        locking_dir = os.path.join(system_dir, 'lock')
        os.makedirs(locking_dir)
        with open(os.path.join(system_dir, 'lvm.conf'), 'w') as f:
            f.write(LVM_CONF.format(device=re.escape(self.device),
                                    locking_dir=locking_dir,
                                    activation=int(self.dm)))
        return SimHost(name, system_dir,
                       LVM(system_dir=system_dir, timeout=self.timeout,
                           activation=self.dm))

    def _create_vg(self):
        lvm = self.hosts[0].lvm
        args = ['pvcreate']
        if self.metadata_size:
            # Without a small data alignment the area grows to the 1 MiB
            # boundary of the first extent, whatever --metadatasize says.
            args += ['--metadatasize', self.metadata_size,
                     '--dataalignment', '4k']
        lvm.run(args + [self.device], self.device)
        lvm.run(['vgcreate', '--setautoactivation', 'n', self.vg,
                 self.device], self.vg)

    def _remove_vg(self):
        with contextlib.suppress(errors.LVMError):
            self.hosts[0].lvm.run(['vgremove', '-ff', self.vg], self.vg)

    def _detach(self):
        if self._hold is not None:
            # A test may have fenced (set read-only) the device.
            with contextlib.suppress(OSError):
                _set_writable(self._hold)
        if _is_ours(self.device, self.backing):
            # Even a VG too damaged for vgremove leaves no label behind.
            with contextlib.suppress(OSError):
                fd = os.open(self.device, os.O_WRONLY)
                try:
                    os.pwrite(fd, bytes(min(WIPE_BYTES, self.size)), 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None
        for _ in range(50):
            if not _is_ours(self.device, self.backing):
                return
            subprocess.run(['losetup', '-d', self.device],
                           capture_output=True, timeout=60, check=False)
            time.sleep(0.1)
        raise RuntimeError(f'{self.device} could not be detached')

    def close(self):
        """Remove the VG, wipe and detach the loop device, delete files."""
        with _LIVE_MUTEX:
            _LIVE.discard(self)
        self._stack.close()

    def lv_names(self, host=0):
        """Sorted LV names of the VG as ``hosts[host]`` sees them."""
        return sorted(lv['name'] for lv in self.hosts[host].lvm.lvs(self.vg))


def loop_attached(backing):
    """Loop devices still backed by ``backing``."""
    out = []
    for name in os.listdir('/sys/block'):
        if name.startswith('loop') and _is_ours(f'/dev/{name}', backing):
            out.append(f'/dev/{name}')
    return out

