"""Watchdog: the host resets unless the fencer keeps proving it is alive.

A daemon that is dead or hung cannot fence itself; like sanlock's wdmd, the
fencer pets a watchdog device (``/dev/watchdog``: softdog, i6300esb, a
board's timer) only while the host has LVs active and nothing here can
write without a valid grant. Stop petting and the kernel resets the host
within ``timeout`` seconds, before another host can be granted its LVs.
"""
import fcntl
import logging
import os
import struct

LOG = logging.getLogger(__name__)

_WDIOC_SETTIMEOUT = 0xC0045706


class Watchdog:
    """One open watchdog device: armed on the first pet, disarmed by the
    magic close."""

    def __init__(self, device, timeout):
        self.device = device
        self.timeout = int(timeout)
        self._fd = None

    @property
    def armed(self):
        return self._fd is not None

    def pet(self):
        """Arm if needed, and restart the countdown."""
        if self._fd is None:
            # O_APPEND: harmless on a device, and a simulated watchdog (a
            # file a test supervisor reads) keeps every pet.
            self._fd = os.open(self.device,
                               os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                fcntl.ioctl(self._fd, _WDIOC_SETTIMEOUT,
                            struct.pack('i', self.timeout))
            except OSError as exc:
                # Not every device takes a timeout; then the driver's
                # own must already meet the bound (doc/design.md).
                LOG.warning('watchdog %s: timeout not set: %s',
                            self.device, exc)
            LOG.info('watchdog %s armed (%ss)', self.device, self.timeout)
        os.write(self._fd, b'.')

    def disarm(self):
        """Magic close: the driver stops the countdown."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, b'V')
        finally:
            os.close(self._fd)
            self._fd = None
        LOG.info('watchdog %s disarmed', self.device)
