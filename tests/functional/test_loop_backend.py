"""The loop backend when its device went without it (a reboot, an admin,
or on a shared kernel another simulated host): a reused minor is never
taken for ours, and our name for it goes. Real LVM, real loop devices."""
import os
import subprocess

from coordinator.activation import loop as looplib
from coordinator.sandbox.cluster import detach_stacked
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20


def _attached(loop):
    return os.path.exists(f'/sys/block/{os.path.basename(loop)}/loop')


def test_a_lost_device_is_neither_detached_nor_linked_again(tmp_path):
    with SharedVG(hosts=1, size=64 * MiB) as shared:
        try:
            lvm = shared.hosts[0].lvm
            lvm.create_lv(shared.vg, 'vol', 8 * MiB)
            backend = looplib.LoopBackend(lvm, str(tmp_path / 'state'),
                                          str(tmp_path / 'dev'))
            path = backend.activate(shared.vg, 'vol')
            loop = os.readlink(path)
            # Detached behind our back, its minor reused by another owner.
            subprocess.run(['losetup', '-d', loop], check=True)
            subprocess.run(['losetup', '--sizelimit', str(MiB), loop,
                            shared.device], check=True)
            assert backend.active() == {}
            backend.deactivate(shared.vg, 'vol')
            assert not os.path.lexists(path)      # our name for it is gone
            assert _attached(loop)                # theirs is untouched
            # The same for a retire.
            path = backend.activate(shared.vg, 'vol')
            mine = os.readlink(path)
            subprocess.run(['losetup', '-d', mine], check=True)
            subprocess.run(['losetup', '--sizelimit', str(MiB), mine,
                            shared.device], check=True)
            backend.retire(shared.vg, 'vol')
            assert not os.path.lexists(path)
            assert _attached(mine)
            with open(f'/sys/block/{os.path.basename(mine)}/ro') as f:
                assert f.read().strip() == '0'    # not fenced by mistake
        finally:
            detach_stacked(shared.device)
