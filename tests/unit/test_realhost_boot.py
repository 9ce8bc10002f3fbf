"""The real-kernel tier's guest boot sees the checkout wherever it lives
(issue 22 item 12: a clone under /tmp was hidden by the guest's tmpfs).

The mount step runs here in a private mount namespace (unshare -m), on
this machine's root, as the guest runs it on this machine's root over 9p.
"""
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.realhost import vm

MOUNTS = os.path.join(vm.HERE, 'guest', 'mounts.sh')


def _can_unshare():
    try:
        return subprocess.run(['unshare', '-m', 'true'],
                              capture_output=True).returncode == 0
    except OSError:
        return False


needs_unshare = pytest.mark.skipif(
    not _can_unshare(), reason='needs unshare -m (root): the guest mount '
                               'step is not run, not passed')


@needs_unshare
@pytest.mark.parametrize('parent', ['/tmp', '/var/tmp', '/dev/shm', '/run'])
def test_checkout_visible_after_guest_mounts(parent):
    """A checkout under a directory the guest mounts a tmpfs on (or not),
    with a space in its path, is still there after the guest's mounts."""
    base = tempfile.mkdtemp(prefix='rh-boot-', dir=parent)
    try:
        co = os.path.join(base, 'a clone')
        os.makedirs(os.path.join(co, 'tests'))
        with open(os.path.join(co, 'tests', 'marker'), 'w') as f:
            f.write('checkout\n')
        out = subprocess.run(
            ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
             'sh "$0" "$1" && cat "$1/tests/marker" && '
             'findmnt -n -o FSTYPE /tmp', MOUNTS, co],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        # The checkout is visible and /tmp is the guest's own tmpfs.
        assert out.stdout.split() == ['checkout', 'tmpfs'], out.stdout
    finally:
        shutil.rmtree(base)


@needs_unshare
def test_missing_checkout_named():
    """A checkout path that does not exist is refused by name, before any
    mount is made."""
    out = subprocess.run(
        ['unshare', '-m', '--propagation', 'private', 'sh', MOUNTS,
         '/nonexistent/clone'], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert '/nonexistent/clone' in out.stderr


def test_boot_reads_no_path_from_kernel_cmdline(tmp_path):
    """The kernel command line carries no path of this machine (its
    parameters end at a space); the share holds the boot scripts and the
    checkout's and Python's paths instead."""
    kernel = type('K', (), {'vmlinuz': '/k', 'modules': '/m'})()
    guest = vm.Guest('g1', str(tmp_path / 'g 1'), kernel, '/i', '/lu')
    argv = guest.argv()
    cmdline = argv[argv.index('-append') + 1]
    assert vm.CHECKOUT not in cmdline
    assert 'rh.stage2=/rh/stage2.sh' in cmdline.split()
    guest.stage_boot()
    share = os.listdir(guest.share)
    assert set(share) >= {'stage2.sh', 'mounts.sh', 'checkout', 'python'}
    with open(guest.host_path('checkout')) as f:
        assert f.read() == vm.CHECKOUT
    assert os.path.isfile(os.path.join(vm.CHECKOUT, 'tests', 'realhost',
                                       'guest', 'agent.py'))
