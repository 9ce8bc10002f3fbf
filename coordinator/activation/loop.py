"""The loop backend, for kernels without device-mapper.

A linear LV is a byte range of its PV: from ``pe_start + first_pe *
extent_size`` for ``extents * extent_size`` bytes. A loop device over that
range of the shared PV is a real block device with exactly the LV's data,
so data written on one host is read back after activation on another.
Fencing sets the loop device read-only: the kernel then fails every write,
including writes through descriptors that were already open. A device is
never made writable on its way out: a detach of an open loop device is
only deferred by the kernel, so it stays read-only until really gone.
The flag outlives the binding, though: once the minor is free again it is
cleared (at the daemon's start and each change of ours), or the next user
of that minor would get a read-only disk; one who attached it in between
gets it cleared then.
"""
import contextlib
import errno
import fcntl
import json
import os
import struct
import subprocess
import threading
import uuid as uuidlib

from coordinator import errors
from coordinator.activation import base
from coordinator.lvm import mda

_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_SET_CAPACITY = 0x4C07
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_BLKROSET = 0x125D
_BLKROGET = 0x125E
_INFO64 = struct.Struct('5Q4I64s64s32s2Q')
# struct loop_config: fd, block_size, loop_info64, 8 reserved u64.
_CONFIG = struct.Struct('II5Q4I64s64s32s2Q8Q')
_ATTACH_ATTEMPTS = 16


def _run(*args):
    out = subprocess.run(list(args), capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode:
        raise errors.LVMError(f'{args[0]} {" ".join(args[1:])}: '
                              f'{out.stderr.strip()}', stderr=out.stderr)
    return out.stdout.strip()


def _attach(device, offset, size, tag, read_only):
    """A free loop device over ``size`` bytes of ``device`` from
    ``offset``, stamped with ``tag``, born read-only (made writable by
    admit() once its grant is recorded and not fenced)."""
    for _ in range(_ATTACH_ATTEMPTS):
        ctl = os.open('/dev/loop-control', os.O_RDWR | os.O_CLOEXEC)
        try:
            loop = f'/dev/loop{fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)}'
        finally:
            os.close(ctl)
        try:
            # Exclusive: nobody else can attach this minor while we hold
            # it, so the read-only flag set below is on our device only.
            fd = os.open(loop, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOENT):
                continue  # taken, or not made yet: another minor
            raise
        try:
            if _bound(fd):
                continue  # attached before our claim
            was = _ro_flag(fd)
            # Read-only before it maps anything: a daemon killed before
            # the device is recorded leaves nothing writable behind.
            fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 1))
            try:
                backing = os.open(device, (os.O_RDONLY if read_only else
                                           os.O_RDWR) | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, _LOOP_CONFIGURE, _CONFIG.pack(
                        backing, 0, 0, 0, 0, offset, size, 0, 0, 0,
                        _LO_FLAGS_READ_ONLY if read_only else 0,
                        tag.encode(), b'', b'', 0, 0, *([0] * 8)))
                finally:
                    os.close(backing)
            except BaseException:
                # Not attached by us (EBUSY: by another since our look):
                # the minor's flag as we found it.
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, _BLKROSET, struct.pack('i', was))
                raise
            try:
                # Kernels before 5.12 keep one flag for both and reset it
                # on configure: set it again (a no-op on later kernels).
                fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 1))
            except OSError:
                fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
                raise
            return loop
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise errors.LVMError(f'cannot attach {loop} over {device}: '
                                      f'{exc}', kind='failed') from exc
        finally:
            os.close(fd)
    raise errors.LVMError(f'no free loop device over {device} after '
                          f'{_ATTACH_ATTEMPTS} attempts', kind='failed')


def release_ro(loop, tag=None):
    """Clear the read-only flag left on ``loop`` once our device (``tag``)
    is no longer bound to it; False while it still is (a deferred detach:
    the device is open). The flag outlives the binding: whoever detaches a
    loop device it made read-only calls this."""
    try:
        fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # the minor is gone
    try:
        info = _info(fd)
        if info is not None:
            owner = _tag_of(info)
            if owner == tag:
                return False  # still ours, detached on last close
            if owner.startswith('lvmcoord:') or \
                    info[_FLAGS] & _LO_FLAGS_READ_ONLY:
                return True  # a daemon's (it sets the flag), or read-only
            # Attached by another since our device went: it got our flag.
            fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 0))
            return True
    except OSError:
        return True  # nothing more we can do for this minor
    finally:
        os.close(fd)
    try:
        # Free: exclusive, or an attach in progress (which holds it so and
        # sets the flag itself) could lose its flag to us.
        fd = os.open(loop, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError:
        return True  # being attached: its owner's business now
    try:
        if not _bound(fd):
            fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 0))
        return True
    except OSError:
        return True
    finally:
        os.close(fd)


def _ro_flag(fd):
    buf = bytearray(4)
    fcntl.ioctl(fd, _BLKROGET, buf)
    return struct.unpack('i', buf)[0]


def _info(fd):
    """The bound loop device's status fields, or None when unbound."""
    buf = bytearray(_INFO64.size)
    try:
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise
    return list(_INFO64.unpack(buf))


def _bound(fd):
    return _info(fd) is not None


def _sys(loop, name):
    with open(f'/sys/block/{os.path.basename(loop)}/{name}') as f:
        return f.read().strip()


def _status(loop, change=None):
    """The loop device's status (LOOP_GET_STATUS64) as a list of fields,
    after ``change(fields)`` was applied to it, if given."""
    fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(_INFO64.size)
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
        info = list(_INFO64.unpack(buf))
        if change:
            change(info)
            fcntl.ioctl(fd, _LOOP_SET_STATUS64, _INFO64.pack(*info))
        return info
    finally:
        os.close(fd)


_FLAGS = 8  # lo_flags
# lo_file_name: informational only (sysfs and losetup show the real
# backing file), so it can carry our owner tag; the kernel keeps it as set.
_FILE_NAME = 9


def _tag(loop):
    """The owner tag we stamped in the loop device's status."""
    try:
        return _tag_of(_status(loop))
    except (OSError, UnicodeDecodeError):
        return None


def _tag_of(info):
    return info[_FILE_NAME].rstrip(b'\0').decode(errors='replace')


def _set_ro(loop, read_only):
    """The minor's read-only flag, by ioctl: no process spawned on the
    fence path."""
    try:
        fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _BLKROSET, struct.pack('i', int(read_only)))
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.LVMError(f'cannot set {loop} read-'
                              f'{"only" if read_only else "write"}: {exc}',
                              kind='failed') from exc


def _check_mappable(vg, lv, info, read_only):
    """Refuse what a loop device over extents would show wrong: COW
    snapshots are device-mapper's (no exception is ever written here)."""
    if info.get('origin'):
        raise errors.LVMError(
            f'{vg}/{lv} is a snapshot of {info["origin"]}: its extents are '
            f'the COW exception store, not the snapshot\'s data; the loop '
            f'backend cannot read it (needs device-mapper: the lvm backend)',
            kind='failed')
    if info.get('merging'):
        raise errors.LVMError(
            f'{vg}/{lv} has a pending merge of snapshot {info["merging"]} '
            f'(a revert): only device-mapper performs it, on activation; '
            f'the loop backend would show the data from before the revert; '
            f'activate it first on a host with the lvm backend',
            kind='failed')
    if info.get('has_snapshots') and not read_only:
        raise errors.LVMError(
            f'{vg}/{lv} has snapshots: writes through a loop device would '
            f'bypass their copy-on-write and change them; read-only only '
            f'with the loop backend (or delete the snapshots)',
            kind='failed')


class LoopBackend(base.Backend):
    """Loop devices over the LV's extents on the shared PV."""

    name = 'loop'
    # No device-mapper: LVM refuses to create COW snapshots here.
    snapshots = False

    def __init__(self, lvm, state_dir, dev_dir=None):
        self.lvm = lvm
        self.state_file = os.path.join(state_dir, 'loop-devices.json')
        # {minor: tag} detached by us while open: read-only until freed.
        self.retired_file = os.path.join(state_dir, 'loop-retired.json')
        self.dev_dir = dev_dir or '/run/lvmcoord/dev'
        # metadata(vg) -> mda.VGInfo or None, set by the host context.
        self.metadata = None
        self._thread_mutex = threading.Lock()

    # -- state: which loop device serves which LV, kept across restarts --

    @contextlib.contextmanager
    def _mutex(self):
        """The state file's lock across threads and processes: the ops
        worker and the fencer both activate and deactivate, and a lost
        update would lose track of a device (which then cannot be
        fenced)."""
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        with self._thread_mutex:
            fd = os.open(self.state_file + '.lock',
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _raw(self):
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _load(self):
        # Keep only entries whose loop device is still the one we set up:
        # a minor is reused after a detach (a reboot, an admin), possibly
        # by another host's daemon for the same LV on a shared kernel.
        return {k: v for k, v in self._raw().items() if self._intact(v)}

    def _entry(self, vg, lv):
        """Our entry for vg/lv if its device is still ours: one LV's
        checks only, so fencing n LVs costs O(n)."""
        entry = self._raw().get(f'{vg}/{lv}')
        return entry if entry and self._intact(entry) else None

    @staticmethod
    def _intact(entry):
        try:
            return int(_sys(entry['loop'], 'loop/offset')) == \
                entry['offset'] and _tag(entry['loop']) == entry.get('tag')
        except OSError:
            return False

    def _save(self, state, path=None):
        path = path or self.state_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(state, f)
        os.replace(tmp, path)

    def tidy(self):
        with self._mutex():
            self._sweep()

    def _sweep(self, detached=None):
        """Clear the read-only flag of the minors our devices have left
        (``detached``: {minor: tag} just now); remember the ones still
        bound until a later call finds them free."""
        try:
            with open(self.retired_file) as f:
                stored = json.load(f)
        except FileNotFoundError:
            stored = {}
        pending = {loop: tag for loop, tag in
                   dict(stored, **(detached or {})).items()
                   if not release_ro(loop, tag)}
        if pending != stored:
            self._save(pending, self.retired_file)

    def _extent_range(self, vg, lv, info=None):
        info = info or self._lv(vg, lv)
        segs = info['pe_ranges']
        if len(segs) != 1:
            raise errors.LVMError(
                f'{vg}/{lv} has {len(segs)} segments; the loop backend maps '
                f'one contiguous range (use the lvm backend)',
                kind='failed')
        device, first, last = segs[0]
        if 'extent_size' in info and device in info.get('pe_start', {}):
            # From the committed metadata (mda.VGInfo): no LVM command.
            ext, pe_start = info['extent_size'], info['pe_start'][device]
        else:
            ext = self.lvm.vg(vg)['extent_size']
            pe_start = next(p for p in self.lvm.pvs(vg)
                            if p['name'] == device)['pe_start']
        return {'pv': device, 'pe_start': pe_start, 'extent_size': ext,
                'offset': pe_start + first * ext,
                'size': (last - first + 1) * ext}

    def _lv(self, vg, lv):
        """The LV from the committed metadata when it can be read (no LVM
        command), else from lvs."""
        return mda.lv_info(self.metadata(vg) if self.metadata else None,
                           self.lvm, vg, lv)

    def _link(self, vg, lv):
        return os.path.join(self.dev_dir, vg, lv)

    # -- backend --

    def activate(self, vg, lv, read_only=False, info=None, poll=True):
        # ``poll``: LVM's; nothing here polls (a pending merge is refused).
        with self._mutex():
            state = self._load()
            key = f'{vg}/{lv}'
            info = info or self._lv(vg, lv)
            if key in state:
                if state[key].get('uuid') == info['uuid']:
                    return state[key]['path']
                # The name now belongs to another LV: the old device maps
                # extents that are no longer this name's.
                _set_ro(state[key]['loop'], True)
                self._detach(state, vg, lv)
            _check_mappable(vg, lv, info, read_only)
            self._sweep()
            geo = self._extent_range(vg, lv, info)
            device, offset, size = geo['pv'], geo['offset'], geo['size']
            tag = f'lvmcoord:{uuidlib.uuid4().hex[:16]}'
            loop = _attach(device, offset, size, tag, read_only)
            link = self._link(vg, lv)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(loop, link)
            state[key] = dict(geo, loop=loop, path=link, tag=tag,
                              read_only=read_only, uuid=info['uuid'],
                              admitted=False)
            self._save(state)
            # Still read-only: the fencer may find and stop it from now on,
            # and only admit() (under the grant book's lock, the grant not
            # fenced) may undo that.
            return link

    def admit(self, vg, lv):
        # Once per device: an activation that finds it made already must
        # not lift a fence that stopped it since (only resume() does).
        with self._mutex():
            # This LV's checks only: admit is on every activation's path.
            state = self._raw()
            entry = state.get(f'{vg}/{lv}')
            if entry is None or not self._intact(entry):
                raise errors.LVMError(f'{vg}/{lv}: its device here is gone '
                                      f'(detached by hand?)',
                                      kind='not-found')
            if entry.get('admitted', True):
                return
            # Recorded first: killed in between, it stays read-only.
            entry['admitted'] = True
            self._save(state)
            # Under the mutex: a detach cannot hand the minor on meanwhile.
            if not entry['read_only']:
                _set_ro(entry['loop'], False)

    def _writable(self, vg, lv):
        """Clear the read-only flag of our device for vg/lv, unless its
        grant is read-only; False when we have no device for it."""
        entry = self._entry(vg, lv)
        if entry is None:
            return False
        if not entry['read_only']:
            _set_ro(entry['loop'], False)
        return True

    def deactivate(self, vg, lv):
        with self._mutex():
            state = self._load()
            entry = state.get(f'{vg}/{lv}')
            if entry is None:
                self._forget_lost(state, vg, lv)
                return
            if base.open_by_others(entry['loop']):
                raise errors.LVMError(
                    f'{vg}/{lv} is open on this host ({entry["loop"]}); '
                    f'close it first', kind='busy')
            # Read-only first: a process that opens it before the detach
            # completes gets a device that cannot write.
            _set_ro(entry['loop'], True)
            self._detach(state, vg, lv)

    def retire(self, vg, lv):
        with self._mutex():
            state = self._load()
            entry = state.get(f'{vg}/{lv}')
            if entry is None:
                self._forget_lost(state, vg, lv)
                return
            _set_ro(entry['loop'], True)
            # Open: the kernel only marks it to detach on last close; it
            # stays read-only until then.
            self._detach(state, vg, lv)

    def _forget_lost(self, state, vg, lv):
        # Our device for vg/lv went without us (detached by a reboot or an
        # admin; its minor may be reused): drop our link to that minor, so
        # nobody opens another device by this LV's name.
        lost = self._raw().get(f'{vg}/{lv}')
        if lost is None:
            return
        link = lost.get('path')
        if link and os.path.islink(link) and \
                os.readlink(link) == lost.get('loop'):
            os.unlink(link)
        self._save(state)

    def _detach(self, state, vg, lv):
        entry = state.pop(f'{vg}/{lv}')
        _run('losetup', '-d', entry['loop'])
        if os.path.lexists(entry['path']):
            os.unlink(entry['path'])
        self._save(state)
        self._sweep({entry['loop']: entry.get('tag')})

    def refresh(self, vg, lv):
        with self._mutex():
            entry = self._load().get(f'{vg}/{lv}')
            info = self.lvm.lv(vg, lv)
            geo = self._extent_range(vg, lv, info)
            offset, size = geo['offset'], geo['size']
            if entry is None:
                return size
            if offset != entry['offset']:
                raise errors.LVMError(f'{vg}/{lv} moved on the PV; '
                                      f'deactivate and activate it again')
            # Grow the mapped range in place: no reopen, no I/O pause.
            _status(entry['loop'], lambda info: info.__setitem__(4, size))
            fd = os.open(entry['loop'], os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, _LOOP_SET_CAPACITY, 0)
            finally:
                os.close(fd)
            state = self._load()
            state[f'{vg}/{lv}']['size'] = size
            self._save(state)
            return int(_sys(entry['loop'], 'size')) * 512

    def suspend(self, vg, lv):
        entry = self._entry(vg, lv)
        if entry:
            _set_ro(entry['loop'], True)

    def resume(self, vg, lv):
        self._writable(vg, lv)

    def stopped(self, vg, lv):
        """Read-only in the kernel (its ro flag), or no device of ours."""
        entry = self._entry(vg, lv)
        return entry is None or _sys(entry['loop'], 'ro') == '1'

    def identity(self, vg, lv):
        entry = self._entry(vg, lv)
        if entry is None:
            return None
        # What the kernel maps now, not what was asked for.
        offset = int(_sys(entry['loop'], 'loop/offset'))
        size = int(_sys(entry['loop'], 'loop/sizelimit')) or \
            int(_sys(entry['loop'], 'size')) * 512
        first = (offset - entry['pe_start']) // entry['extent_size']
        last = first + size // entry['extent_size'] - 1
        return {'uuid': entry.get('uuid'),
                'extents': [[entry['pv'], first, last]]}

    def devices(self):
        # No open-by-others scan of /proc: this is the fence path.
        return [tuple(key.split('/')) for key in self._load()]

    def active(self):
        out = {}
        for key, entry in self._load().items():
            vg, lv = key.split('/')
            ro = _sys(entry['loop'], 'ro') == '1'
            out[(vg, lv)] = {'path': entry['path'], 'device': entry['loop'],
                             'open': base.open_by_others(entry['loop']),
                             'suspended': ro and not entry['read_only']}
        return out
