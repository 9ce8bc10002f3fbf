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

    def __init__(self, device, timeout, state_file=None):
        self.device = device
        self.timeout = int(timeout)
        # Whether it is armed, for the workers that make devices: none is
        # made here unless it is (see armed_in).
        self.state_file = state_file
        self._fd = None
        # A previous run's note is stale: nothing is armed by us yet.
        self._note(False)

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
            self._note(True)
        os.write(self._fd, b'.')

    def disarm(self):
        """Magic close: the driver stops the countdown."""
        if self._fd is None:
            return
        self._note(False)
        try:
            os.write(self._fd, b'V')
        finally:
            os.close(self._fd)
            self._fd = None
        LOG.info('watchdog %s disarmed', self.device)

    def _note(self, armed):
        if self.state_file:
            tmp = self.state_file + '.tmp'
            with open(tmp, 'w') as f:
                f.write('1' if armed else '0')
            os.replace(tmp, self.state_file)


def armed_in(state_file):
    """True if the watchdog behind ``state_file`` is armed now."""
    try:
        with open(state_file) as f:
            return f.read().strip() == '1'
    except OSError:
        return False
