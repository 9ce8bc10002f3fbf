"""The loop backend, for kernels without device-mapper.

A linear LV is a byte range of its PV: from ``pe_start + first_pe *
extent_size`` for ``extents * extent_size`` bytes. A loop device over that
range of the shared PV is a real block device with exactly the LV's data,
so data written on one host is read back after activation on another.
Fencing sets the loop device read-only: the kernel then fails every write,
including writes through descriptors that were already open.
"""
import fcntl
import json
import os
import struct
import subprocess
import threading

from coordinator import errors
from coordinator.activation import base

_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_SET_CAPACITY = 0x4C07
_INFO64 = struct.Struct('5Q4I64s64s32s2Q')


def _run(*args):
    out = subprocess.run(list(args), capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode:
        raise errors.LVMError(f'{args[0]} {" ".join(args[1:])}: '
                              f'{out.stderr.strip()}', stderr=out.stderr)
    return out.stdout.strip()


def _sys(loop, name):
    with open(f'/sys/block/{os.path.basename(loop)}/{name}') as f:
        return f.read().strip()


class LoopBackend(base.Backend):
    """Loop devices over the LV's extents on the shared PV."""

    name = 'loop'

    def __init__(self, lvm, state_dir, dev_dir=None):
        self.lvm = lvm
        self.state_file = os.path.join(state_dir, 'loop-devices.json')
        self.dev_dir = dev_dir or '/run/lvmcoord/dev'
        self._mutex = threading.Lock()

    # -- state: which loop device serves which LV, kept across restarts --

    def _load(self):
        try:
            with open(self.state_file) as f:
                state = json.load(f)
        except FileNotFoundError:
            return {}
        # Keep only entries whose loop device still maps what we set up.
        return {k: v for k, v in state.items() if self._intact(v)}

    @staticmethod
    def _intact(entry):
        try:
            return int(_sys(entry['loop'], 'loop/offset')) == entry['offset']
        except OSError:
            return False

    def _save(self, state):
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        tmp = self.state_file + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    def _extent_range(self, vg, lv):
        info = self.lvm.lv(vg, lv)
        segs = info['pe_ranges']
        if len(segs) != 1:
            raise errors.LVMError(
                f'{vg}/{lv} has {len(segs)} segments; the loop backend maps '
                f'one contiguous range (use the lvm backend)',
                kind='failed')
        device, first, last = segs[0]
        vginfo = self.lvm.vg(vg)
        pv = next(p for p in self.lvm.pvs(vg) if p['name'] == device)
        ext = vginfo['extent_size']
        return device, pv['pe_start'] + first * ext, (last - first + 1) * ext

    def _link(self, vg, lv):
        return os.path.join(self.dev_dir, vg, lv)

    # -- backend --

    def activate(self, vg, lv, read_only=False):
        with self._mutex:
            state = self._load()
            key = f'{vg}/{lv}'
            if key in state:
                return state[key]['path']
            device, offset, size = self._extent_range(vg, lv)
            args = ['losetup', '-f', '--show', '--offset', str(offset),
                    '--sizelimit', str(size)]
            loop = _run(*(args + (['-r'] if read_only else []) + [device]))
            # The kernel keeps a minor's read-only flag across detach and
            # attach: set it explicitly, never inherit a past fence.
            _run('blockdev', '--setro' if read_only else '--setrw', loop)
            link = self._link(vg, lv)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(loop, link)
            state[key] = {'loop': loop, 'path': link, 'offset': offset,
                          'read_only': read_only}
            self._save(state)
            return link

    def deactivate(self, vg, lv):
        with self._mutex:
            state = self._load()
            entry = state.pop(f'{vg}/{lv}', None)
            if entry:
                _run('blockdev', '--setrw', entry['loop'])
                _run('losetup', '-d', entry['loop'])
                if os.path.lexists(entry['path']):
                    os.unlink(entry['path'])
            self._save(state)

    def refresh(self, vg, lv):
        with self._mutex:
            entry = self._load().get(f'{vg}/{lv}')
            _, offset, size = self._extent_range(vg, lv)
            if entry is None:
                return size
            if offset != entry['offset']:
                raise errors.LVMError(f'{vg}/{lv} moved on the PV; '
                                      f'deactivate and activate it again')
            fd = os.open(entry['loop'], os.O_RDONLY)
            try:
                # Grow the mapped range in place: no reopen, no I/O pause.
                buf = bytearray(_INFO64.size)
                fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
                info = list(_INFO64.unpack(buf))
                info[4] = size
                fcntl.ioctl(fd, _LOOP_SET_STATUS64, _INFO64.pack(*info))
                fcntl.ioctl(fd, _LOOP_SET_CAPACITY, 0)
            finally:
                os.close(fd)
            return int(_sys(entry['loop'], 'size')) * 512

    def suspend(self, vg, lv):
        entry = self._load().get(f'{vg}/{lv}')
        if entry:
            _run('blockdev', '--setro', entry['loop'])

    def resume(self, vg, lv):
        entry = self._load().get(f'{vg}/{lv}')
        if entry and not entry['read_only']:
            _run('blockdev', '--setrw', entry['loop'])

    def active(self):
        out = {}
        for key, entry in self._load().items():
            vg, lv = key.split('/')
            ro = _sys(entry['loop'], 'ro') == '1'
            out[(vg, lv)] = {'path': entry['path'], 'device': entry['loop'],
                             'open': base.open_by_others(entry['loop']),
                             'suspended': ro and not entry['read_only']}
        return out
