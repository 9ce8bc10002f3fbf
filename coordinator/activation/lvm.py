"""The production backend: lvchange to activate, dmsetup to fence.

The backend's own record of what is active is device-mapper itself: one
``dmsetup info -c`` lists every device; those whose dm uuid is
``LVM-<vg uuid><lv uuid>`` (no layer suffix such as ``-real`` or ``-cow``)
and whose VG is managed here are this host's active LVs. No LVM command
runs on the fence path: LVM commands scan disks, take LVM's file locks and
can wait on a SAN that is in trouble exactly when fencing matters.

Never writable by mistake:
- ``suspend`` is never killed once started: the kernel blocks new I/O as
  soon as the suspend begins, but an interrupted suspend ioctl is undone.
- ``activate`` and ``refresh`` refuse a suspended (fenced) device, because
  ``lvchange -ay``/``--refresh`` would resume it; only ``resume`` unfences.
- ``retire`` loads the ``error`` target and then resumes: I/O queued while
  suspended is re-issued against the error table (EIO), never the disk.
"""
import concurrent.futures
import errno
import fcntl
import os
import re
import struct
import subprocess
import threading
import time

from coordinator import errors
from coordinator.activation import base

SECTOR = 512
# dm uuid of a top-level LV: 'LVM-' + 32 chars VG uuid + 32 chars LV uuid.
_UUID_LEN = 4 + 32 + 32
_INFO_FIELDS = 'name,uuid,blkdevname,open,suspended,attr'
_SEP = '|'


# <linux/dm-ioctl.h>: struct dm_ioctl, 312 bytes; _IOWR(0xfd, cmd, it).
_DM_IOCTL = struct.Struct('=3I6I4xQ128s129s7s')
DM_DEV_SUSPEND = 0xC0000000 | (_DM_IOCTL.size << 16) | (0xfd << 8) | 6
DM_DEV_STATUS = 0xC0000000 | (_DM_IOCTL.size << 16) | (0xfd << 8) | 7
DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_ACTIVE_PRESENT_FLAG = 1 << 5
DM_INACTIVE_PRESENT_FLAG = 1 << 6
DM_SKIP_LOCKFS_FLAG = 1 << 10
DM_NOFLUSH_FLAG = 1 << 11
# The fence's suspend (doc/design.md, "Fence: which suspend"): new I/O is
# held at once, with no filesystem freeze first (skip lockfs: a freeze
# writes dirty pages back, and with I/O queued below that never ends while
# new writes still pass); noflush lets a target that can (multipath with
# queue_if_no_path) push its in-flight I/O back instead of being waited for.
FENCE_SUSPEND = DM_SUSPEND_FLAG | DM_NOFLUSH_FLAG | DM_SKIP_LOCKFS_FLAG
_CONTROL = '/dev/mapper/control'


def dm_ioctl(cmd, name, flags=0, uuid=None):
    """One device-mapper ioctl on ``name``, or on the device of dm uuid
    ``uuid`` (then by uuid only: the kernel refuses both); the flags the
    kernel returns. Raises OSError (ENXIO: no such device, or no live
    table)."""
    return dm_status(cmd, name, flags, uuid)[0]


def dm_status(cmd, name, flags=0, uuid=None):
    """dm_ioctl, returning (flags, the device's current name, its dm
    uuid)."""
    buf = bytearray(_DM_IOCTL.pack(4, 0, 0, _DM_IOCTL.size, _DM_IOCTL.size,
                                   0, 0, flags, 0, 0,
                                   b'' if uuid else name.encode(),
                                   uuid.encode() if uuid else b'', b''))
    fd = os.open(_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, cmd, buf)
    finally:
        os.close(fd)
    fields = _DM_IOCTL.unpack(bytes(buf))
    # The kernel writes the name and uuid of the device it found back.
    return (fields[7], fields[10].split(b'\0', 1)[0].decode(),
            fields[11].split(b'\0', 1)[0].decode())


def _origin_of(snapshot_args):
    """The origin LV's name from a snapshot target's arguments (its first
    is the origin's -real layer, major:minor), or None."""
    try:
        with open(f'/sys/dev/block/{snapshot_args[0]}/dm/name') as f:
            split = split_dm_name(f.read().strip())
    except (OSError, IndexError):
        return None
    return split[1] if split and split[2] == 'real' else None


def _sys_holders_of(name, below):
    """dm names of the dm devices under (``below``) or over device-mapper
    device ``name``, from sysfs; [] if it has none or is gone."""
    try:
        # By device number: without udev, /dev/mapper holds nodes, not
        # links to /dev/dm-N.
        rdev = os.stat(f'/dev/mapper/{name}').st_rdev
        subs = os.listdir(f'/sys/dev/block/{os.major(rdev)}:'
                          f'{os.minor(rdev)}/'
                          f'{"slaves" if below else "holders"}')
    except OSError:
        return []
    out = []
    for sub in subs:
        try:
            with open(f'/sys/block/{sub}/dm/name') as f:
                out.append(f.read().strip())
        except OSError:
            continue  # not a dm device (a PV), or gone meanwhile
    return out


def writable(flags):
    """True if a device with these status flags passes writes on: a live
    table, not suspended, not read-only."""
    return bool(flags & DM_ACTIVE_PRESENT_FLAG) and not flags & (
        DM_SUSPEND_FLAG | DM_READONLY_FLAG)


def dm_name(vg, lv):
    """device-mapper name of vg/lv (dashes doubled, as LVM does)."""
    return f'{vg.replace("-", "--")}-{lv.replace("-", "--")}'


def split_dm_name(name):
    """(vg, lv, layer) from an LVM dm name; layer is '' for a top-level LV.

    A single dash separates the parts; a doubled dash is a dash in a name.
    """
    parts, cur, i = [], '', 0
    while i < len(name):
        if name[i] == '-':
            if name[i + 1:i + 2] == '-':
                cur += '-'
                i += 2
                continue
            parts.append(cur)
            cur = ''
        else:
            cur += name[i]
        i += 1
    parts.append(cur)
    if len(parts) < 2:
        return None
    return parts[0], parts[1], '-'.join(parts[2:])


def lvm_uuid(raw):
    """LVM's dashed uuid form (6-4-4-4-4-4-6) of a 32-char dm uuid part."""
    if len(raw) != 32:
        return None
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, at = [], 0
    for n in cuts:
        out.append(raw[at:at + n])
        at += n
    return '-'.join(out)


def parse_info(text):
    """Rows of ``dmsetup info -c --noheadings --separator '|' -o
    name,uuid,blkdevname,open,suspended,attr`` as dicts (pure)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == 'No devices found':
            continue
        cols = line.split(_SEP)
        if len(cols) != 6:
            raise errors.LVMError(f'unreadable dmsetup info line: {line!r}')
        name, uuid, blk, opened, suspended, attr = cols
        try:
            opened = int(opened)
        except ValueError as exc:
            raise errors.LVMError(
                f'unreadable dmsetup open count: {line!r}') from exc
        rows.append({'name': name, 'uuid': uuid, 'blkdevname': blk,
                     'open': opened,
                     'suspended': suspended.strip().lower() == 'suspended',
                     # attr: L live table, I inactive table, s suspended,
                     # r read-only or w writable, then more flags.
                     'attr': attr})
    return rows


def top_level_lvs(rows, vgs=None):
    """{(vg, lv): row} of top-level LVM devices among ``rows`` (pure);
    only VGs in ``vgs`` unless it is None."""
    out = {}
    for row in rows:
        uuid = row['uuid']
        if not uuid.startswith('LVM-') or len(uuid) != _UUID_LEN:
            continue
        split = split_dm_name(row['name'])
        if not split or split[2]:
            continue
        vg, lv, _ = split
        if vgs is not None and vg not in vgs:
            continue
        out[(vg, lv)] = row
    return out


def parse_table(text):
    """[(start, length, target, args)] of ``dmsetup table NAME`` (pure)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            start, length = int(parts[0]), int(parts[1])
        except ValueError as exc:
            raise errors.LVMError(f'unreadable dm table line: {line!r}') \
                from exc
        out.append((start, length, parts[2], parts[3:]))
    return out


def table_extents(table, pvs, extent_size):
    """[[pv, first_pe, last_pe], ...] a linear table maps (pure).

    ``pvs``: {'major:minor': (pv name, pe_start)}; sizes in bytes.
    Adjacent ranges on the same PV are merged, as LVM merges contiguous
    segments in its metadata.
    """
    out = []
    for _, length, target, args in table:
        if target == 'error':
            continue
        if target != 'linear' or len(args) != 2:
            raise errors.LVMError(f'cannot map a {target} segment to '
                                  f'extents (linear LVs only)')
        dev, offset = args[0], int(args[1])
        if dev not in pvs:
            raise errors.LVMError(f'dm table maps device {dev}, which is '
                                  f'not a PV of this VG')
        pv, pe_start = pvs[dev]
        first = (offset * SECTOR - pe_start) // extent_size
        last = first + (length * SECTOR) // extent_size - 1
        if out and out[-1][0] == pv and out[-1][2] + 1 == first:
            out[-1][2] = last
        else:
            out.append([pv, first, last])
    return out


# Seconds a fence waits for one suspend ioctl before it reports the device
# not yet fenced (and tries again, the watchdog unpetted): well inside the
# fence's share of the TTL, far above a suspend with nothing stuck (ms).
FENCE_WAIT = 2.0


class _Suspend:
    """One fence suspend ioctl, running in a thread of its own."""

    def __init__(self, name, dm_uuid):
        self.error = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(name, dm_uuid),
                         name=f'suspend-{name}', daemon=True).start()

    def _run(self, name, dm_uuid):
        try:
            dm_ioctl(DM_DEV_SUSPEND, name, FENCE_SUSPEND, uuid=dm_uuid)
        except BaseException as exc:  # noqa: B036 - told to the fencer
            self.error = exc
        finally:
            self.done.set()


class LVMBackend(base.Backend):
    """lvchange -aey / -an / --refresh; dmsetup suspend / resume /
    error-target retire."""

    name = 'lvm'

    def __init__(self, lvm, timeout=30, vgs=None, fence_workers=16,
                 fence_wait=FENCE_WAIT):
        self.lvm = lvm
        self.timeout = timeout
        # How long one fence waits for its suspend ioctl (see suspend()).
        self.fence_wait = fence_wait
        self._suspending = {}
        # None: every VG the executor (its devices filter) sees, read once.
        self._vgs = set(vgs) if vgs is not None else None
        self._vg_geometry = {}
        self._mutex = threading.Lock()
        self.fence_workers = fence_workers

    # -- running dmsetup --

    def _dmsetup(self, *args, kill_on_timeout=True):
        argv = ['dmsetup', *args]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, LC_ALL='C'))
        except OSError as exc:
            raise errors.LVMError(f'dmsetup {args[0]}: cannot run: {exc}',
                                  cmd=argv) from exc
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            if kill_on_timeout:
                proc.kill()
                proc.communicate()
            # else: left running on purpose (see suspend()); reaped by
            # the next Popen's cleanup of finished children.
            raise errors.LVMError(f'dmsetup {" ".join(args)}: timed out '
                                  f'after {self.timeout}s', kind='timeout',
                                  cmd=argv) from exc
        if proc.returncode:
            kind = 'not-found' if re.search(
                r'No such device|Device does not exist', err) else 'failed'
            raise errors.LVMError(f'dmsetup {" ".join(args)}: '
                                  f'{err.strip()}', kind=kind, cmd=argv,
                                  stderr=err)
        return out

    def _managed(self):
        if self._vgs is None:
            with self._mutex:
                if self._vgs is None:
                    self._vgs = {vg['name'] for vg in self.lvm.vgs()}
        return self._vgs

    def _info(self, vg=None, lv=None):
        args = ['info', '-c', '--noheadings', '--separator', _SEP,
                '-o', _INFO_FIELDS]
        if vg is not None:
            try:
                text = self._dmsetup(*args, dm_name(vg, lv))
            except errors.LVMError as exc:
                if exc.kind == 'not-found':
                    return None
                raise
            rows = top_level_lvs(parse_info(text))
            return rows.get((vg, lv))
        return top_level_lvs(parse_info(self._dmsetup(*args)),
                             self._managed())

    def _retired(self, vg, lv):
        try:
            table = parse_table(self._dmsetup('table', dm_name(vg, lv)))
        except errors.LVMError as exc:
            if exc.kind == 'not-found':
                return False
            raise
        return bool(table) and all(t[2] == 'error' for t in table)

    # -- backend --

    def activate(self, vg, lv, read_only=False, info=None, poll=True):
        """lvchange -aey; refuses a fenced or retired device of vg/lv, and
        retires a device the name maps that is another LV (by uuid).
        ``poll`` False: --poll n (LVM starts no background polling)."""
        row = self._info(vg, lv)
        if row is not None:
            if row['suspended']:
                # lvchange -ay would resume it: only resume() unfences.
                raise errors.LVMError(f'{vg}/{lv} is fenced (suspended) '
                                      f'here; not activating over it',
                                      kind='fenced')
            if self._retired(vg, lv):
                raise errors.LVMError(f'{vg}/{lv}: a retired device (error '
                                      f'target) is still open here',
                                      kind='busy')
            mapped = lvm_uuid(row['uuid'][36:])
            if info and info.get('uuid') and mapped != info['uuid']:
                # The name now belongs to another LV: the old device maps
                # extents that are no longer this name's.
                self.retire(vg, lv)
                if self._info(vg, lv) is not None:
                    raise errors.LVMError(
                        f'{vg}/{lv}: the device of a previous LV with this '
                        f'name (uuid {mapped}) is still open here',
                        kind='busy')
        if poll:
            self.lvm.activate(vg, lv, exclusive=True, read_only=read_only)
        else:
            self.lvm.activate(vg, lv, exclusive=True, read_only=read_only,
                              poll=False)
        return f'/dev/{vg}/{lv}'

    def deactivate(self, vg, lv):
        """lvchange -an; a fenced device goes through the error target."""
        row = self._info(vg, lv)
        if row is None:
            return
        if row['open']:
            raise errors.LVMError(f'{vg}/{lv} is open ({row["open"]}); '
                                  f'not deactivating', kind='busy')
        if row['suspended']:
            # LVM could resume it on the way out; never writable again.
            self.retire(vg, lv)
            return
        try:
            self.lvm.deactivate(vg, lv)
        except errors.LVMError as exc:
            if exc.kind == 'in-use':
                raise errors.LVMError(str(exc), kind='busy', cmd=exc.cmd,
                                      stderr=exc.stderr) from exc
            raise

    def refresh(self, vg, lv):
        """lvchange --refresh; returns the size the kernel now maps."""
        row = self._info(vg, lv)
        if row is not None and row['suspended']:
            # lvchange --refresh suspends and resumes: it would unfence.
            raise errors.LVMError(f'{vg}/{lv} is fenced (suspended) here; '
                                  f'not refreshing', kind='fenced')
        if row is not None and self._retired(vg, lv):
            # It would load the linear table again: writable.
            raise errors.LVMError(f'{vg}/{lv} is retired (error target) '
                                  f'here; not refreshing', kind='fenced')
        self.lvm.refresh(vg, lv)
        if row is None:
            return self.lvm.lv(vg, lv)['size']
        return self.mapped_size(vg, lv)

    def device_state(self, vg, lv):
        """None, 'live', 'suspended' or 'retired' (the error target), from
        device-mapper."""
        row = self._info(vg, lv)
        if row is None:
            return None
        if self._retired(vg, lv):
            return 'retired'
        return 'suspended' if row['suspended'] else 'live'

    def mapped_size(self, vg, lv):
        """Bytes the device of vg/lv maps now (its dm table)."""
        table = parse_table(self._dmsetup('table', dm_name(vg, lv)))
        return sum(t[1] for t in table) * SECTOR

    def suspend(self, vg, lv, dm_uuid=None):
        """Suspend the device: new I/O queues in the kernel.

        One ioctl on /dev/mapper/control, no dmsetup process: fencing 50
        LVs must not cost 50 fork+exec on a loaded host (measured: 18 s
        on a 1-vCPU guest). By ``dm_uuid`` when known: a device renamed
        by hand (lvrename, vgrename) is still ours to fence. Never
        interrupted (an interrupted suspend is undone by the kernel), but
        waited for ``fence_wait`` seconds at most: a suspend waits for the
        I/O in flight, which I/O queued below the LV holds back for ever;
        new I/O is held from its start, and the fencer tries again (the
        same ioctl, still running) without petting the watchdog.
        """
        name = dm_name(vg, lv)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._suspend_ioctl(name, dm_uuid)
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise errors.LVMError(f'suspend {name}: {exc}',
                                          kind='failed') from exc
            # ENXIO: no such device (nothing to fence), or a device whose
            # table an lvchange has not loaded yet: suspend it once it has.
            try:
                flags = dm_ioctl(DM_DEV_STATUS, name, uuid=dm_uuid)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                raise errors.LVMError(f'status {name}: {exc}') from exc
            if flags & DM_ACTIVE_PRESENT_FLAG and not flags & \
                    DM_SUSPEND_FLAG:
                continue  # a table appeared: suspend again at once
            if time.monotonic() > deadline:
                raise errors.LVMError(f'suspend {name}: no live table '
                                      f'after {self.timeout}s',
                                      kind='timeout')
            time.sleep(0.02)

    def _suspend_ioctl(self, name, dm_uuid):
        """The fence's suspend ioctl, in a thread of its own waited for
        ``fence_wait`` seconds; a second call while it runs waits for the
        same one (no second ioctl queues on the device's suspend lock)."""
        key = dm_uuid or name
        with self._mutex:
            run = self._suspending.get(key)
            if run is None:
                run = _Suspend(name, dm_uuid)
                self._suspending[key] = run
        if not run.done.wait(self.fence_wait):
            raise errors.LVMError(
                f'suspend {name}: not done after {self.fence_wait}s '
                f'(in-flight I/O not completing; new I/O is held)',
                kind='timeout')
        with self._mutex:
            if self._suspending.get(key) is run:
                del self._suspending[key]
        if run.error is not None:
            raise run.error

    def stopped(self, vg, lv, dm_uuid=None):
        """True if no write passes the device of vg/lv (by ``dm_uuid``
        when known): none, suspended, read-only or without a table. One
        status ioctl: the kernel's word, not our list's."""
        try:
            flags = dm_ioctl(DM_DEV_STATUS, dm_name(vg, lv), uuid=dm_uuid)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return True
            raise errors.LVMError(f'status {dm_name(vg, lv)}: {exc}') \
                from exc
        return not writable(flags)

    def dm_uuid(self, vg, lv):
        """The dm uuid of vg/lv's device (LVM-<vg uuid><lv uuid>), or
        None: what the fencer addresses it by from then on."""
        try:
            uuid = dm_status(DM_DEV_STATUS, dm_name(vg, lv))[2]
        except OSError:
            return None
        return uuid if uuid.startswith('LVM-') else None

    def retired(self, vg, lv, dm_uuid=None):
        """Of a device retire() left in the kernel (still open): None
        once it is gone, True while it maps only the error target, False
        if a table was loaded into it since (LVM run by hand)."""
        name = self._name(vg, lv, dm_uuid)
        if name is None:
            return None
        try:
            table = parse_table(self._dmsetup('table', name))
        except errors.LVMError as exc:
            if exc.kind == 'not-found':
                return None
            raise
        return bool(table) and all(t[2] == 'error' for t in table)

    def _name(self, vg, lv, dm_uuid):
        """The current dm name of vg/lv's device (found by ``dm_uuid``
        when known: it may have been renamed), or None if there is none."""
        if not dm_uuid:
            return dm_name(vg, lv)
        try:
            return dm_status(DM_DEV_STATUS, '', uuid=dm_uuid)[1]
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise errors.LVMError(f'status {dm_uuid}: {exc}') from exc

    def suspend_many(self, lvs):
        """Suspend every (vg, lv) in parallel; {(vg, lv): error} of those
        that failed."""
        lvs = list(lvs)
        failed = {}
        if not lvs:
            return failed
        workers = max(1, min(self.fence_workers, len(lvs)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(self.suspend, vg, lv): (vg, lv)
                       for vg, lv in lvs}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    fut.result()
                except errors.CoordError as exc:
                    failed[futures[fut]] = exc
        return failed

    def resume(self, vg, lv, dm_uuid=None):
        """dmsetup resume of the live table (by ``dm_uuid`` when known); an
        inactive one, the error table a stop parked the device with, is
        cleared first. Only this device: a snapshot of it is a fenced
        device of its own, resumed by its own proof (which follows the
        origin's, proof.py)."""
        name = self._name(vg, lv, dm_uuid)
        if name is None:
            raise errors.LVMError(f'resume {vg}/{lv}: no device under '
                                  f'{dm_uuid}', kind='not-found')
        try:
            flags = dm_ioctl(DM_DEV_STATUS, name)
        except OSError:
            flags = 0  # dmsetup resume names what is wrong
        if flags & DM_INACTIVE_PRESENT_FLAG:
            self._dmsetup('clear', name)
        self._dmsetup('resume', name)

    def park(self, vg, lv, dm_uuid=None):
        """An orderly stop leaves the fenced device suspended (I/O queued,
        the guest paused) with the error target as its inactive table:
        whatever resumes it while the daemon is down (lvm2's vgchange
        -ay, lvchange -ay or --refresh, a dmsetup resume) makes the error
        table live, so I/O fails and never reaches the disk. The restart's
        proof reads the live table: still linear, it clears the inactive
        one and resumes (resume()); error, it retires the device.
        Refused on a device that is not suspended."""
        name = self._name(vg, lv, dm_uuid)
        if name is None:
            return  # no device: nothing to park
        try:
            flags = dm_ioctl(DM_DEV_STATUS, name)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise errors.LVMError(f'status {name}: {exc}') from exc
        if not flags & DM_SUSPEND_FLAG:
            raise errors.LVMError(f'{vg}/{lv} is not suspended; not '
                                  f'parking it', kind='failed')
        table = parse_table(self._dmsetup('table', name))
        sectors = sum(t[1] for t in table)
        if sectors and not all(t[2] == 'error' for t in table):
            # Not read-only: lvm2 then takes the error table, once live,
            # for the LV's (vgchange -ay leaves it alone).
            self._dmsetup('load', name, '--table', f'0 {sectors} error')

    def retire(self, vg, lv, dm_uuid=None):
        """error target, resume (queued I/O fails), deferred remove; by
        ``dm_uuid`` when known (a renamed device goes too). An origin's
        snapshots and the layers under them go with it."""
        name = self._name(vg, lv, dm_uuid)
        if name is None:
            return
        snaps = self._snapshots_of(name)
        layers = self._layers(name)
        for snap in snaps:
            layers += [x for x in self._layers(snap) if x not in layers]
            self._retire_name(snap)
        if not self._retire_name(name):
            return
        # No longer mapped by anything above: removed now, never left a
        # writable way to the origin's extents or the COW.
        for layer in layers:
            self._retire_name(layer)
        # Nothing new should find it by name (LVM made this link itself
        # when udev rules are off; udev removes it otherwise).
        split = split_dm_name(name)
        link = f'/dev/{split[0]}/{split[1]}' if split else None
        try:
            if link and os.path.islink(link):
                os.unlink(link)
        except OSError:
            pass

    def _retire_name(self, name):
        """Retire the device called ``name``; False if there is none."""
        try:
            table = parse_table(self._dmsetup('table', name))
        except errors.LVMError as exc:
            if exc.kind == 'not-found':
                return False
            raise
        sectors = sum(t[1] for t in table)
        if sectors and not all(t[2] == 'error' for t in table):
            # Read-only too: active() tells retired devices by that flag
            # without reading every table.
            self._dmsetup('load', '--readonly', name, '--table',
                          f'0 {sectors} error')
        self._dmsetup('resume', name)
        # Removed now if closed, else by the kernel on the last close.
        self._dmsetup('remove', '--deferred', name)
        return True

    def _layers(self, name):
        """LVM's hidden layers under device ``name`` (-real, -cow...)."""
        out = []
        for dev in _sys_holders_of(name, below=True):
            split = split_dm_name(dev)
            if split and split[2]:
                out.append(dev)
        return out

    def _snapshots_of(self, name):
        """Names of the snapshot devices of origin ``name`` (those that
        map its -real layer)."""
        out = []
        for layer in self._layers(name):
            if not layer.endswith('-real'):
                continue
            for dev in _sys_holders_of(layer, below=False):
                if dev != name and not split_dm_name(dev)[2]:
                    out.append(dev)
        return out

    def active(self):
        """One dmsetup call: top-level LVs of managed VGs, except retired
        devices waiting for their last close."""
        out = {}
        for (vg, lv), row in self._info().items():
            # attr[3] is 'r' for read-only; only those can be retired ones.
            if row['attr'][3:4] == 'r' and self._retired(vg, lv):
                continue
            out[(vg, lv)] = {'path': f'/dev/{vg}/{lv}',
                             'device': f'/dev/{row["blkdevname"]}',
                             'open': row['open'] > 0,
                             'suspended': row['suspended'],
                             'uuid': lvm_uuid(row['uuid'][36:])}
        return out

    def identity(self, vg, lv, dm_uuid=None):
        """LV uuid from the dm uuid, extents from the dm table (of the
        device ``dm_uuid`` names, when known, whatever its name now); of a
        snapshot, instead of extents, 'origin': the LV it is a snapshot
        of (its fence is undone or made final with the origin's)."""
        name = self._name(vg, lv, dm_uuid)
        if name is None:
            return None
        try:
            _, name, uuid = dm_status(DM_DEV_STATUS, name)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise errors.LVMError(f'status {name}: {exc}') from exc
        if not uuid.startswith('LVM-') or len(uuid) != _UUID_LEN:
            return None  # not a top-level LV (a layer, or not LVM's)
        table = parse_table(self._dmsetup('table', name))
        if len(table) == 1 and table[0][2] == 'snapshot':
            origin = _origin_of(table[0][3])
            if origin:
                return {'uuid': lvm_uuid(uuid[36:]), 'extents': None,
                        'origin': origin}
        if len(table) == 1 and table[0][2] == 'snapshot-origin':
            # An origin with snapshots maps its -real layer.
            table = parse_table(self._dmsetup('table', name + '-real'))
        return {'uuid': lvm_uuid(uuid[36:]),
                'extents': table_extents(table, *self._geometry(vg))}

    def _geometry(self, vg):
        """({'major:minor': (pv, pe_start)}, extent_size) of vg's PVs."""
        cached = self._vg_geometry.get(vg)
        # PV paths can change (multipath, rescans): re-read on a mismatch.
        if cached is None or not all(self._devno(p[0]) == d
                                     for d, p in cached[0].items()):
            pvs = self.lvm.pvs(vg)
            devs = {self._devno(p['name']): (p['name'], p['pe_start'])
                    for p in pvs}
            cached = (devs, self.lvm.vg(vg)['extent_size'])
            self._vg_geometry[vg] = cached
        return cached

    @staticmethod
    def _devno(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f'{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}'
