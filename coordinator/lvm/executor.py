"""The LVM executor: runs LVM commands as argument lists, never a shell.

Every method validates its names and sizes (coordinator.lvm.names) before
anything runs. Reports are JSON with sizes in bytes; failures become LVMError
with a ``kind`` classified from LVM's stderr (see ``classify``).

Checked on LVM 2.03.16 with ``global/activation=0`` (no device-mapper):
linear ``lvcreate --activate n --zero n --wipesignatures n`` works, as do
lvremove, lvextend, lvrename, tag changes and every report. Snapshots,
thin, cache, mirror, raid (but raid0) and vdo LVs cannot be created
("Can't create snapshot without using device-mapper kernel driver"), and
``lvchange -a``/``--refresh`` succeed without doing anything, so this
class refuses activation calls when constructed with ``activation=False``.
"""
import contextlib
import json
import os
import re
import signal
import subprocess
import time

from coordinator import errors
from coordinator.engine import deadline as deadlines
from coordinator.lvm import names

KINDS = ('not-found', 'exists', 'in-use', 'no-space', 'metadata-changed',
         'timeout', 'failed')

# (kind, pattern) in order: the first match wins. Damaged or concurrently
# rewritten metadata often also ends in "not found": check it first.
_RULES = [
    ('metadata-changed', re.compile(
        r'checksum|crc does not match|inconsistent metadata|'
        r'(?:invalid|bad) metadata|metadata summary|invalid summary|'
        r'metadata (?:on .* )?(?:has )?changed|wrong vg name|'
        r'failed to read metadata|error reading metadata|'
        r'parse error|metadata (?:location|area) .* (?:invalid|beyond)',
        re.IGNORECASE)),
    ('no-space', re.compile(
        r'insufficient (?:free )?(?:space|extents)|'
        r'not enough (?:free )?(?:space|extents)|no space left|'
        r'too large for circular buffer', re.IGNORECASE)),
    ('exists', re.compile(r'already exists', re.IGNORECASE)),
    ('in-use', re.compile(
        r'in use|is open|is busy|device or resource busy|'
        r'used by another device|not removed|contains a filesystem in use',
        re.IGNORECASE)),
    ('not-found', re.compile(
        r'not found|failed to find|cannot process volume group|'
        r'no such (?:file|device|volume)|does not exist',
        re.IGNORECASE)),
]

# Lines that are noise in error messages (stderr keeps them all).
_NOISE = re.compile(
    r'^\s*(?:WARNING: (?:Activation disabled|This metadata update is NOT '
    r'backed up|Logical volume \S+ not zeroed|Skipping zeroing)|'
    r'Run `\S+ --help|File descriptor \d+ .* leaked)', re.IGNORECASE)

_INTS = {'vg_seqno', 'vg_size', 'vg_free', 'vg_extent_size', 'lv_count',
         'pv_count', 'lv_size', 'pe_start', 'pv_size', 'dev_size'}

_VG_FIELDS = {'vg_name': 'name', 'vg_uuid': 'uuid', 'vg_seqno': 'seqno',
              'vg_size': 'size', 'vg_free': 'free',
              'vg_extent_size': 'extent_size', 'lv_count': 'lv_count',
              'pv_count': 'pv_count', 'vg_tags': 'tags',
              'vg_systemid': 'systemid', 'vg_attr': 'attr',
              'vg_autoactivation': 'autoactivation'}
_LV_FIELDS = {'lv_name': 'name', 'lv_uuid': 'uuid', 'lv_size': 'size',
              'lv_attr': 'attr', 'lv_active': 'active', 'lv_tags': 'tags',
              'origin': 'origin', 'segtype': 'segtype',
              'seg_pe_ranges': 'pe_ranges'}
_PV_FIELDS = {'pv_name': 'name', 'vg_name': 'vg', 'pv_uuid': 'uuid',
              'pe_start': 'pe_start', 'pv_size': 'size',
              'dev_size': 'dev_size'}

SECTOR = 512


def classify(stderr):
    """The LVMError kind for an LVM command's stderr (pure)."""
    text = '\n'.join(line for line in (stderr or '').splitlines()
                     if not _NOISE.match(line))
    for kind, pattern in _RULES:
        if pattern.search(text):
            return kind
    return 'failed'


def _reason(stderr):
    lines = [line.strip() for line in (stderr or '').splitlines()
             if line.strip() and not _NOISE.match(line)]
    return '; '.join(lines[-3:]) or 'no error message'


class DeadlinePassed(TimeoutError):
    """The command was killed at its deadline (the VG lock could lapse)."""


def run_process(argv, env, timeout, deadline=None):
    """Run ``argv`` (no shell); (returncode, stdout, stderr) as text.

    Raises TimeoutError after killing the command's process group, at
    ``timeout`` seconds or, sooner, once monotonic ``deadline()`` passes
    (DeadlinePassed).
    """
    track = deadlines.tracker()
    if track is None:
        return _run(argv, env, timeout, deadline)
    # Recorded as starting before the deadline is looked at: the fencer
    # (which pets the watchdog) never misses a command started in time.
    track.starting()
    spawned = []
    try:
        if not track.may_start() or \
                deadline and deadline() <= time.monotonic():
            raise DeadlinePassed(f'{argv[0]} not started: the session is '
                                 f'not provably valid')
        return _run(argv, env, timeout, deadline,
                    started=lambda p: (spawned.append(p),
                                       track.started(p.pid)),
                    reaped=lambda p: track.ended(p.pid))
    finally:
        if not spawned:
            track.ended(None)


def _run(argv, env, timeout, deadline, started=None, reaped=None):
    # stdin from /dev/null: any LVM prompt reads EOF and answers "no".
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True, start_new_session=True)
    if started:
        started(proc)
    try:
        return _wait(proc, argv, timeout, deadline)
    finally:
        # A command that outlived its kill (D state) stays recorded: the
        # kernel says when it is gone (coordinator.engine.inflight).
        if reaped and proc.poll() is not None:
            reaped(proc)


def _wait(proc, argv, timeout, deadline):
    end = time.monotonic() + timeout
    while True:
        left = (min(end, deadline()) if deadline else end) - time.monotonic()
        if left <= 0:
            break
        try:
            # Short steps under a deadline: it moves with each keepalive.
            out, err = proc.communicate(
                timeout=min(left, 0.05) if deadline else left)
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    # Bounded: a daemon LVM forked could still hold the pipes.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)
    if time.monotonic() < end:
        raise DeadlinePassed(f'{argv[0]} killed at its deadline')
    raise TimeoutError(f'{argv[0]} timed out after {timeout}s')


def _split_list(value):
    return [v for v in (value or '').split(',') if v]


def _pe_ranges(value):
    out = []
    for part in (value or '').split():
        device, _, span = part.rpartition(':')
        first, _, last = span.partition('-')
        out.append((device, int(first), int(last or first)))
    return out


def _rows(stdout, key):
    try:
        return [{k: int(v) if k in _INTS and v != '' else v
                 for k, v in row.items()}
                for part in json.loads(stdout)['report']
                for row in part.get(key, [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise errors.LVMError(f'unreadable LVM JSON report: {exc}') from exc


def _rename(row, fields):
    return {new: row.get(old, '') for old, new in fields.items()}


def _tags(tags, field='tags'):
    if isinstance(tags, (str, bytes)) or not hasattr(tags, '__iter__'):
        raise errors.InvalidInput(field, 'must be a list of tags')
    return [names.tag(t, f'{field}[{i}]') for i, t in enumerate(tags)]


def _bytes_arg(size):
    # lvcreate/lvextend refuse sizes that are not whole sectors; LVM
    # rounds up to whole extents anyway.
    return f'{-(-size // SECTOR) * SECTOR}b'


class LVM:
    """Runs LVM commands for one host's LVM configuration."""

    def __init__(self, system_dir=None, timeout=60.0, activation=True,
                 config=None, runner=None):
        self.system_dir = system_dir
        self.timeout = timeout
        self.activation = activation
        self.config = config
        self.runner = runner or run_process

    # -- running --

    def _env(self):
        env = dict(os.environ)
        # English messages: classify() reads them.
        env.update(LC_ALL='C', LANG='C', LVM_SUPPRESS_FD_WARNINGS='1')
        if self.system_dir:
            env['LVM_SYSTEM_DIR'] = self.system_dir
        return env

    def _config(self, extra=()):
        parts = [] if self.activation else ['global/activation=0']
        parts += [self.config] if self.config else []
        return ' '.join(parts + list(extra))

    def argv(self, args, config=()):
        """The full argument list for an LVM command (no shell)."""
        args = [str(a) for a in args]
        conf = self._config(config)
        # Options go after the command: `lvm version --config ...`.
        cut = 2 if args[:1] == ['lvm'] else 1
        return args[:cut] + (['--config', conf] if conf else []) + args[cut:]

    def run(self, args, what=None, config=()):
        """Run one LVM command; its stdout, or LVMError."""
        argv = self.argv(args, config)
        what = what or ' '.join(argv[1:])
        bound = deadlines.current()
        try:
            rc, out, err = self.runner(argv, self._env(), self.timeout,
                                       **({'deadline': bound} if bound
                                          else {}))
        except DeadlinePassed as exc:
            raise errors.LVMError(
                f'{argv[0]} {what}: killed before the VG lock could lapse '
                f'(session silent); nothing is known to have been written',
                kind='timeout', cmd=argv) from exc
        except TimeoutError as exc:
            raise errors.LVMError(f'{argv[0]} {what}: timed out after '
                                  f'{self.timeout}s', kind='timeout',
                                  cmd=argv) from exc
        except OSError as exc:
            raise errors.LVMError(f'{argv[0]} {what}: cannot run: {exc}',
                                  cmd=argv) from exc
        if rc:
            raise errors.LVMError(f'{argv[0]} {what}: {_reason(err)}',
                                  kind=classify(err), cmd=argv, stderr=err)
        return out

    def _report(self, cmd, fields, key, target, what):
        args = [cmd, '--reportformat', 'json', '--units', 'b', '--nosuffix',
                '-o', ','.join(fields)] + ([target] if target else [])
        return _rows(self.run(args, what), key)

    # -- reports --

    def version(self):
        """The LVM version string, e.g. '2.03.16(2)'."""
        out = self.run(['lvm', 'version'], 'version')
        match = re.search(r'LVM version:\s*(\S+)', out)
        return match.group(1) if match else out.strip()

    def vgs(self):
        """Every VG this host sees, as vg() dicts."""
        rows = self._report('vgs', _VG_FIELDS, 'vg', None, 'all VGs')
        return [self._vg(r) for r in rows]

    def vg(self, vg):
        """One VG: name, uuid, seqno, size, free, extent_size, lv_count,
        pv_count, tags, systemid, attr, autoactivation."""
        vg = names.vg_name(vg)
        rows = self._report('vgs', _VG_FIELDS, 'vg', vg, vg)
        if not rows:
            raise errors.LVMError(f'VG {vg} not found', kind='not-found')
        return self._vg(rows[0])

    @staticmethod
    def _vg(row):
        out = _rename(row, _VG_FIELDS)
        out['tags'] = _split_list(out['tags'])
        return out

    def lvs(self, vg):
        """The VG's visible LVs: name, uuid, size, attr, active (None when
        unknown), tags, origin, segtype, pe_ranges [(pv, first, last)]."""
        vg = names.vg_name(vg)
        return self._lvs(vg, vg)

    def lv(self, vg, lv):
        """One LV as in lvs()."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        rows = self._lvs(f'{vg}/{lv}', f'{vg}/{lv}')
        if not rows:
            raise errors.LVMError(f'LV {vg}/{lv} not found',
                                  kind='not-found')
        return rows[0]

    def _lvs(self, target, what):
        # Segment fields give one row per segment: merge them per LV.
        merged = {}
        for row in self._report('lvs', _LV_FIELDS, 'lv', target, what):
            info = _rename(row, _LV_FIELDS)
            ranges = _pe_ranges(info['pe_ranges'])
            seen = merged.get(info['uuid'])
            if seen:
                seen['pe_ranges'] += ranges
                if info['segtype'] not in seen['segtype'].split(','):
                    seen['segtype'] += ',' + info['segtype']
                continue
            active = info['active']
            info.update(tags=_split_list(info['tags']), pe_ranges=ranges,
                        active=None if active == 'unknown' else bool(active))
            # lv_attr: 'o' origin, 'O' origin with a merging snapshot.
            info['has_snapshots'] = info['attr'][:1] in ('o', 'O')
            info['merging'] = self._merging(target.split('/')[0],
                                            info['name']) \
                if info['attr'][:1] == 'O' else ''
            merged[info['uuid']] = info
        return list(merged.values())

    def _merging(self, vg, origin):
        """The snapshot merging into ``origin`` (hidden once merging,
        so listed with -a)."""
        out = self.run(['lvs', '-a', '--reportformat', 'json', '-o',
                        'lv_name,origin,lv_attr', vg], f'{vg} snapshots')
        for row in _rows(out, 'lv'):
            if row.get('origin') == origin and \
                    row.get('lv_attr', '')[:1] == 'S':
                return row['lv_name'].strip('[]')
        return ''

    def pvs(self, vg=None):
        """PVs (of ``vg`` when given): name, vg, uuid, pe_start (bytes),
        size, dev_size."""
        vg = None if vg is None else names.vg_name(vg)
        rows = self._report('pvs', _PV_FIELDS, 'pv', None, vg or 'all PVs')
        out = [_rename(r, _PV_FIELDS) for r in rows]
        return [p for p in out if vg is None or p['vg'] == vg]

    # -- metadata changes --

    def create_lv(self, vg, lv, size, tags=()):
        """Create a linear LV, never activating, zeroing or wiping it."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        size, tags = names.size(size), _tags(tags)
        args = ['lvcreate', '--activate', 'n', '--zero', 'n',
                '--wipesignatures', 'n', '--size', _bytes_arg(size),
                '--name', lv]
        for t in tags:
            args += ['--addtag', t]
        self.run(args + [vg], f'{vg}/{lv}')

    def remove_lv(self, vg, lv):
        """Remove an LV; an active one is refused (kind 'in-use')."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        # No --yes: LVM's prompt for an active LV then reads EOF, says no.
        self.run(['lvremove', f'{vg}/{lv}'], f'{vg}/{lv}')

    def extend_lv(self, vg, lv, new_size):
        """Grow an LV to ``new_size`` bytes (filesystem untouched)."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        new_size = names.size(new_size, 'new_size')
        self.run(['lvextend', '--size', _bytes_arg(new_size), f'{vg}/{lv}'],
                 f'{vg}/{lv}')

    def rename_lv(self, vg, lv, new_name):
        """Rename an LV within its VG."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        new_name = names.lv_name(new_name, 'new_name')
        self.run(['lvrename', vg, lv, new_name], f'{vg}/{lv}')

    def add_tags(self, vg, lv, tags):
        """Add tags to an LV."""
        self._tag(vg, lv, tags, '--addtag')

    def del_tags(self, vg, lv, tags):
        """Remove tags from an LV (absent tags are ignored by LVM)."""
        self._tag(vg, lv, tags, '--deltag')

    def _tag(self, vg, lv, tags, option):
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        tags = _tags(tags)
        if not tags:
            return
        args = ['lvchange']
        for t in tags:
            args += [option, t]
        self.run(args + [f'{vg}/{lv}'], f'{vg}/{lv}')

    def create_snapshot(self, vg, origin, name, size):
        """Create a COW snapshot of ``origin`` with ``size`` bytes of COW.

        Needs device-mapper: LVM refuses snapshots with activation off.
        """
        vg, origin = names.vg_name(vg), names.lv_name(origin, 'origin')
        name, size = names.lv_name(name, 'name'), names.size(size)
        self.run(['lvcreate', '--snapshot', '--size', _bytes_arg(size),
                  '--name', name, f'{vg}/{origin}'], f'{vg}/{name}')

    def remove_snapshot(self, vg, snapshot):
        """Remove a snapshot whose origin is active on this host (LVM made
        the snapshot's device with it): --yes, since an active LV is
        otherwise refused."""
        vg, snapshot = names.vg_name(vg), names.lv_name(snapshot, 'lv')
        self.run(['lvremove', '--yes', f'{vg}/{snapshot}'],
                 f'{vg}/{snapshot}')

    def merge_snapshot(self, vg, snapshot):
        """lvconvert --merge: fold ``snapshot`` back into its origin (at
        the origin's next activation if it is inactive)."""
        vg, snapshot = names.vg_name(vg), names.lv_name(snapshot, 'snapshot')
        self.run(['lvconvert', '--merge', '--yes', f'{vg}/{snapshot}'],
                 f'{vg}/{snapshot}')

    # -- activation (production path: needs device-mapper) --

    def _activation(self, vg, lv, args, config=()):
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        if not self.activation:
            # LVM would "succeed" without creating any device.
            raise errors.LVMError(f'{args[-1]} {vg}/{lv}: activation is '
                                  f'disabled for this LVM executor',
                                  kind='failed')
        self.run(['lvchange'] + args + [f'{vg}/{lv}'], f'{vg}/{lv}',
                 config)

    def activate(self, vg, lv, exclusive=True, read_only=False, poll=True):
        """lvchange -aey (or -ay); read-only via read_only_volume_list.
        ``poll`` False: --poll n, no background transformation (a pending
        merge is started in device-mapper, not polled to its end: nothing
        writes the metadata after the command; see finish_merge())."""
        vg, lv = names.vg_name(vg), names.lv_name(lv)
        # Read-only without a metadata change (lvchange -p r would be one).
        config = [f'activation/read_only_volume_list=["{vg}/{lv}"]'] \
            if read_only else []
        args = ['-aey' if exclusive else '-ay']
        if not poll:
            args += ['--poll', 'n']
        self._activation(vg, lv, args, config)

    def finish_merge(self, vg, origin, interval=1, read_only=False):
        """lvpoll --polloperation merge, in the foreground: waits for the
        merge started by an activation with --poll n to end, then removes
        the merged snapshot from the metadata (a metadata change: run it
        under the VG lock). Nothing is left running after it returns.
        ``read_only``: the origin's table, reloaded linear at the end, stays
        read-only (as activate() made it)."""
        vg, origin = names.vg_name(vg), names.lv_name(origin, 'origin')
        if not self.activation:
            raise errors.LVMError(f'lvpoll {vg}/{origin}: activation is '
                                  f'disabled for this LVM executor',
                                  kind='failed')
        config = [f'activation/read_only_volume_list=["{vg}/{origin}"]'] \
            if read_only else []
        self.run(['lvm', 'lvpoll', '--polloperation', 'merge',
                  '--interval', str(int(interval)), f'{vg}/{origin}'],
                 f'merge into {vg}/{origin}', config)

    def deactivate(self, vg, lv):
        """lvchange -an."""
        self._activation(vg, lv, ['-an'])

    def refresh(self, vg, lv):
        """lvchange --refresh: reload the mapping (after an extend)."""
        self._activation(vg, lv, ['--refresh'])
