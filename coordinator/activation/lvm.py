"""The production backend: lvchange for activation, dmsetup to fence."""
import subprocess

from coordinator import errors
from coordinator.activation import base


def dm_name(vg, lv):
    """device-mapper name of vg/lv (dashes doubled, as LVM does)."""
    return f'{vg.replace("-", "--")}-{lv.replace("-", "--")}'


class LVMBackend(base.Backend):
    """lvchange -aey / -an / --refresh; dmsetup suspend / resume."""

    name = 'lvm'

    def __init__(self, lvm, timeout=30):
        self.lvm = lvm
        self.timeout = timeout

    def _dmsetup(self, *args):
        try:
            out = subprocess.run(['dmsetup', *args], capture_output=True,
                                 text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise errors.LVMError(f'dmsetup {args[0]} timed out',
                                  kind='timeout') from exc
        if out.returncode:
            raise errors.LVMError(f'dmsetup {" ".join(args)}: '
                                  f'{out.stderr.strip()}', stderr=out.stderr)
        return out.stdout

    def activate(self, vg, lv, read_only=False):
        self.lvm.activate(vg, lv, exclusive=True, read_only=read_only)
        return f'/dev/{vg}/{lv}'

    def deactivate(self, vg, lv):
        self.lvm.deactivate(vg, lv)

    def refresh(self, vg, lv):
        self.lvm.refresh(vg, lv)
        return self.lvm.lv(vg, lv)['size']

    def suspend(self, vg, lv):
        # I/O queues in the kernel: the VM pauses, nothing is lost.
        self._dmsetup('suspend', dm_name(vg, lv))

    def resume(self, vg, lv):
        self._dmsetup('resume', dm_name(vg, lv))

    def active(self):
        out = {}
        for vg in self.lvm.vgs():
            for lv in self.lvm.lvs(vg['name']):
                if not lv.get('active'):
                    continue
                info = self._dmsetup('info', '-c', '--noheadings',
                                     '--separator', ':', '-o',
                                     'open,suspended',
                                     dm_name(vg['name'], lv['name']))
                opened, suspended = info.strip().split(':')
                out[(vg['name'], lv['name'])] = {
                    'path': f'/dev/{vg["name"]}/{lv["name"]}',
                    'open': int(opened) > 0,
                    'suspended': suspended.lower().startswith('suspend')}
        return out
