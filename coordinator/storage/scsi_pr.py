"""`[fence] storage = scsi-pr`: SCSI-3 persistent reservations.

Each host registers its incarnation's key on every path of the shared LU
(REGISTER AND IGNORE EXISTING KEY: a path whose nexus carried an older
key of ours gets the new one); one registrant reserves the LU Write
Exclusive, Registrants Only (or All Registrants), so only registered
nexuses can write; preempting the holder's key hands the reservation to
the preempter. A takeover PREEMPTs AND ABORTs the old incarnation's
key (its queued commands are aborted at the target too) and proves it
gone with READ KEYS. sg_persist runs with argument lists, never a shell;
its output is read by coordinator.storage.parse."""
import logging
import os
import subprocess

from coordinator.storage import base
from coordinator.storage import mpath
from coordinator.storage import parse

LOG = logging.getLogger(__name__)

SG_PERSIST = 'sg_persist'
TIMEOUT = 20.0
# sg3_utils' exit statuses (SG_LIB_CAT_*): ILLEGAL REQUEST, UNIT
# ATTENTION, RESERVATION CONFLICT.
ILLEGAL_REQUEST = 5
UNIT_ATTENTION = 6
RES_CONFLICT = 24
TYPES = {'wear': parse.WE_ALL_REGISTRANTS, 'wero': parse.WE_REGISTRANTS_ONLY}


def paths_of(device, sys_root='/sys'):
    """The SCSI paths (/dev/sdX) under ``device``: a dm-multipath map's
    slaves, or the device itself."""
    real = os.path.realpath(device)
    name = os.path.basename(real)
    slaves = os.path.join(sys_root, 'block', name, 'slaves')
    try:
        below = sorted(os.listdir(slaves))
    except OSError:
        below = []
    return [f'/dev/{s}' for s in below] or [real]


class ScsiPR(base.Connector):
    """Registration, reservation and preemption through sg_persist."""

    name = 'scsi-pr'
    fences = True

    def __init__(self, devices, rtype='wero', runner=None, sys_root='/sys'):
        if not devices:
            raise base.StorageError('[fence] storage = scsi-pr needs the '
                                    'shared LU in [fence] storage_devices')
        self.devices = list(devices)
        self.rtype = TYPES[rtype]
        self._run = runner or _run
        self.sys_root = sys_root
        # False once the LU refused PREEMPT AND ABORT (PREEMPT used).
        self.aborts = True
        # The multipath maps drain() stopped queueing on (mpath.Map).
        self._unqueued = []

    def paths(self):
        """Every SCSI path of every configured device."""
        return [p for d in self.devices for p in paths_of(d, self.sys_root)]

    def _sg(self, path, *args):
        """stdout of sg_persist on ``path``; StorageError naming it."""
        argv = [SG_PERSIST, '--no_inquiry', *args, path]
        rc, out, err = self._run(argv)
        if rc == UNIT_ATTENTION:
            # The first command on a nexus after another host changed the
            # registrations (tgtd: "Reservations preempted") reports that
            # instead of running: once more.
            rc, out, err = self._run(argv)
        if rc:
            exc = base.StorageError(
                f'{path}: {" ".join(argv[1:-1])} failed (rc {rc}): '
                f'{(err or out).strip()[:300]}')
            exc.rc = rc
            raise exc
        return out

    def check(self):
        report = {}
        for device in self.devices:
            for path in paths_of(device, self.sys_root):
                try:
                    flags, types = parse.capabilities(
                        self._sg(path, '--in', '--report-capabilities'))
                except (base.StorageError, ValueError) as exc:
                    raise base.StorageError(
                        f'{device} ({path}) does not support SCSI-3 '
                        f'persistent reservations (PERSISTENT RESERVE IN, '
                        f'REPORT CAPABILITIES): {exc}') from None
                if flags.get('TMV') and self.rtype not in types:
                    raise base.StorageError(
                        f'{device} ({path}) does not offer reservation type '
                        f'{self.rtype} (offers {sorted(types)})')
                report[path] = f'PR supported, types {sorted(types)}'
        return report

    def register(self, key):
        done = {}
        for path in self.paths():
            try:
                self._sg(path, '--out', '--register-ignore',
                         f'--param-sark={parse.key_hex(key)}')
                done[path] = 'ok'
            except base.StorageError as exc:
                done[path] = str(exc)
        if not any(v == 'ok' for v in done.values()):
            raise base.StorageError(f'key {parse.key_hex(key)} registered '
                                    f'on no path: {done}')
        held = self.reservation()
        if held is None:
            path = next(p for p, v in done.items() if v == 'ok')
            try:
                self._sg(path, '--out', '--reserve',
                         f'--param-rk={parse.key_hex(key)}',
                         f'--prout-type={self.rtype}')
            except base.StorageError as exc:
                # Another host reserved in between: fine if it fences.
                LOG.info('reserve: %s', exc)
            held = self.reservation()
        if held is None or held[1] not in parse.FENCING_TYPES:
            raise base.StorageError(
                f'{self.devices[0]}: no fencing reservation held after '
                f'registering (reservation type '
                f'{held[1] if held else None}, key '
                f'{parse.key_hex(held[0]) if held else None}); an operator '
                f'must clear it (sg_persist --out --clear) while no host '
                f'writes')
        return done

    def drain(self):
        # Kept across attempts: a drain that timed out leaves queueing
        # off; the attempt that registers gives it back.
        return mpath.drain(self.devices, self._run, self.sys_root,
                           stopped=self._unqueued)

    def requeue(self, drained):
        mpath.requeue(drained, self._run)

    def unregistered(self, key):
        out = []
        for path in self.paths():
            # REGISTER with our key as both keys changes nothing on a
            # nexus that carries it and is refused (RESERVATION CONFLICT)
            # on one that does not: tgtd has no READ FULL STATUS to ask.
            try:
                self._sg(path, '--out', '--register',
                         f'--param-rk={parse.key_hex(key)}',
                         f'--param-sark={parse.key_hex(key)}')
            except base.StorageError as exc:
                if getattr(exc, 'rc', None) == RES_CONFLICT:
                    out.append(path)
                else:
                    LOG.info('%s: cannot tell its registration: %s', path,
                             exc)
        return out

    def register_paths(self, key, paths):
        done = {}
        for path in paths:
            try:
                self._sg(path, '--out', '--register-ignore',
                         f'--param-sark={parse.key_hex(key)}')
                done[path] = 'ok'
            except base.StorageError as exc:
                done[path] = str(exc)
        return done

    def _first(self, fn):
        """fn(path) on the first path that answers; StorageError if none
        does."""
        errs = []
        for path in self.paths():
            try:
                return fn(path)
            except (base.StorageError, ValueError) as exc:
                errs.append(str(exc))
        raise base.StorageError('no path answered: ' + '; '.join(errs))

    def keys(self):
        return self._first(lambda p: parse.read_keys(
            self._sg(p, '--in', '--read-keys'))[1])

    def reservation(self):
        return self._first(lambda p: parse.read_reservation(
            self._sg(p, '--in', '--read-reservation'))[1])

    def path_keys(self):
        out = {}
        for path in self.paths():
            try:
                out[path] = parse.read_keys(
                    self._sg(path, '--in', '--read-keys'))[1]
            except (base.StorageError, ValueError) as exc:
                out[path] = str(exc)
        return out

    def preempt(self, own, victim):
        if victim in (0, own):
            raise ValueError(f'refusing to preempt key {victim:#x} with '
                             f'{own:#x}')

        def one(path):
            argv = [f'--param-rk={parse.key_hex(own)}',
                    f'--param-sark={parse.key_hex(victim)}',
                    f'--prout-type={self.rtype}']
            try:
                if self.aborts:
                    try:
                        self._sg(path, '--out', '--preempt-abort', *argv)
                        return True
                    except base.StorageError as exc:
                        # tgtd implements PREEMPT but not PREEMPT AND
                        # ABORT (ILLEGAL REQUEST): the key goes all the
                        # same; only the victim's commands already queued
                        # at the target are not aborted.
                        if getattr(exc, 'rc', None) != ILLEGAL_REQUEST:
                            raise
                        LOG.warning('%s: no PREEMPT AND ABORT (%s); '
                                    'PREEMPT from now on', path,
                                    str(exc).splitlines()[0])
                        self.aborts = False
                self._sg(path, '--out', '--preempt', *argv)
            except base.StorageError as exc:
                # Another host preempted it first: no registration has
                # that key any more (RESERVATION CONFLICT); READ KEYS
                # tells. Any other failure: the next path.
                if getattr(exc, 'rc', None) != RES_CONFLICT:
                    raise
                LOG.info('preempt of %#x: %s', victim, exc)
            return True
        self._first(one)
        keys = self.keys()
        held = self.reservation()
        if own not in keys:
            raise base.StorageError(f'our key {own:#x} is not registered: '
                                    f'cannot fence {victim:#x}')
        return victim not in keys and held is not None and \
            held[1] in parse.FENCING_TYPES


def _run(argv):
    """(rc, stdout, stderr) of ``argv``; rc -1 on a timeout."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return -1, '', f'{argv[0]} timed out after {TIMEOUT:.0f}s'
    except OSError as exc:
        return -1, '', str(exc)
    return p.returncode, p.stdout, p.stderr
