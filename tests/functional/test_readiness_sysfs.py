"""readiness finds a block device's sysfs entry by its device number, so
a node not named after the kernel's device (no udev links: made by hand,
as on the real-kernel tier's multipath map) is classified right."""
import os
import stat
import subprocess

import pytest

from coordinator.daemon import readiness


@pytest.fixture
def loop(tmp_path):
    backing = tmp_path / 'disk'
    backing.write_bytes(b'\0' * (1 << 20))
    dev = subprocess.run(['losetup', '-f', '--show', str(backing)],
                         check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '-d', dev], check=False)


def test_a_node_named_otherwise_is_found_by_its_number(loop, tmp_path):
    rdev = os.stat(loop).st_rdev
    node = tmp_path / 'mplu'
    os.mknod(node, stat.S_IFBLK | 0o600, rdev)
    kernel = os.path.realpath(f'/sys/class/block/{os.path.basename(loop)}')
    assert os.path.realpath(readiness._sys_block(str(node))) == kernel
    assert readiness.multipath_of(str(node)) == (None, None)
