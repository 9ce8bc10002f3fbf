"""Activation backends: how an LV becomes a block device on this host.

``lvm`` (lvchange + dmsetup) is the production path. ``loop`` serves
kernels without device-mapper: a linear LV's data is a byte range of the
PV, so a loop device over that range is a real block device with exactly
the LV's data.
"""
import os

from coordinator import errors


def has_device_mapper():
    """True when the kernel offers device-mapper."""
    # /dev/mapper/control may exist (packaged) while the kernel has no
    # driver behind it: only opening it tells.
    try:
        fd = os.open('/dev/mapper/control', os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def load(name, lvm, state_dir, dev_dir=None, vgs=None):
    """The backend called ``name`` ('auto' picks by kernel support); ``vgs``
    are the shared VGs it manages."""
    if name == 'auto':
        name = 'lvm' if has_device_mapper() else 'loop'
    if name == 'lvm':
        from coordinator.activation import lvm as backend
        return backend.LVMBackend(lvm, vgs=vgs)
    if name == 'loop':
        from coordinator.activation import loop as backend
        return backend.LoopBackend(lvm, state_dir, dev_dir)
    raise errors.InvalidInput('lvm.activation_backend',
                              f'unknown backend {name!r}')
