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
_WDIOC_GETTIMEOUT = 0x80045707
_ioctl = fcntl.ioctl
# The legacy /dev/watchdog (misc 10:130) is the first watchdog's.
_LEGACY = (10, 130)


class TimeoutRefused(Exception):
    """The driver did not apply a timeout that meets the bound; str() is
    the one line shown to the operator."""


def apply_timeout(fd, timeout, limit=None, ioctl=None):
    """Ask the driver for ``timeout`` seconds and read back what it
    applied; TimeoutRefused if it rejected the value or applied more than
    ``limit`` (the bound). Returns the applied timeout."""
    ioctl = ioctl or _ioctl
    try:
        ioctl(fd, _WDIOC_SETTIMEOUT, struct.pack('i', timeout))
        rejected = None
    except OSError as exc:
        rejected = exc.strerror or str(exc)
    try:
        applied = struct.unpack(
            'i', ioctl(fd, _WDIOC_GETTIMEOUT, struct.pack('i', 0)))[0]
    except OSError as exc:
        raise TimeoutRefused(
            f'{timeout} s asked, the applied timeout cannot be read back '
            f'({exc.strerror or exc}): the bound cannot be checked') from exc
    if rejected:
        raise TimeoutRefused(f'the driver rejected {timeout} s '
                             f'({rejected}); it applies {applied} s')
    if limit is not None and applied > limit:
        raise TimeoutRefused(f'{timeout} s asked, the driver applied '
                             f'{applied} s, more than the bound allows '
                             f'({limit:g} s)')
    return applied


def nowayout(device):
    """True if the driver of ``device`` cannot be stopped once opened
    (sysfs says so); False if it can or sysfs does not tell."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return False
    major, minor = os.major(rdev), os.minor(rdev)
    base = '/sys/class/watchdog/watchdog0' if (major, minor) == _LEGACY \
        else f'/sys/dev/char/{major}:{minor}'
    try:
        with open(f'{base}/nowayout') as f:
            return f.read().strip() == '1'
    except OSError:
        return False


def check_timeout(device, timeout, limit):
    """At start: open ``device``, apply and read back ``timeout``, stop
    it again (magic close). The applied value; TimeoutRefused as above.
    Not probed (None) on a driver that cannot be stopped once opened: its
    first arm checks the same."""
    if nowayout(device):
        LOG.warning('watchdog %s cannot be stopped once opened (nowayout): '
                    'its timeout is checked when it is first armed', device)
        return None
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        return apply_timeout(fd, timeout, limit)
    finally:
        try:
            os.write(fd, b'V')
        finally:
            os.close(fd)


class Watchdog:
    """One open watchdog device: armed on the first pet, disarmed by the
    magic close."""

    def __init__(self, device, timeout, state_file=None, limit=None,
                 simulated=False):
        self.device = device
        self.timeout = int(timeout)
        # The longest timeout the bound allows (checkconf); a simulated
        # watchdog (a regular file) takes no ioctl.
        self.limit = limit
        self.simulated = simulated
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
            applied = self.timeout
            if not self.simulated:
                try:
                    applied = apply_timeout(self._fd, self.timeout,
                                            self.limit)
                except TimeoutRefused:
                    # Checked at start already: a driver that changed
                    # its mind since arms nothing here.
                    os.write(self._fd, b'V')
                    os.close(self._fd)
                    self._fd = None
                    raise
            LOG.info('watchdog %s armed (%ss)', self.device, applied)
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
