"""The interface every activation backend implements."""
import abc
import os


class Backend(abc.ABC):
    """Activate, deactivate, refresh and fence LVs on this host."""

    name = 'base'
    # Whether a consistent COW snapshot can be taken (device-mapper).
    snapshots = True

    @abc.abstractmethod
    def activate(self, vg, lv, read_only=False, info=None, poll=True):
        """Make vg/lv a block device here; returns its path. ``info`` is
        the LV as LVM.lv() reports it, when the caller has read it.
        ``poll`` False: LVM leaves no background transformation running
        (a pending merge is then finished under the VG lock)."""

    def admit(self, vg, lv):
        """Let the device activate() just made take writes: called once
        its grant is recorded and not fenced (under the grant book's
        lock). Nothing to do where the device is writable as made and a
        fence is undone by resume() only (device-mapper)."""
        return None

    @abc.abstractmethod
    def deactivate(self, vg, lv):
        """Remove the block device (no-op when not active); refuses with
        LVMError kind 'busy' while another process has it open."""

    @abc.abstractmethod
    def refresh(self, vg, lv):
        """Pick up a new size after an extend; returns the size in bytes."""

    @abc.abstractmethod
    def suspend(self, vg, lv):
        """Fence: no write from this host reaches the LV any more."""

    @abc.abstractmethod
    def resume(self, vg, lv):
        """Undo suspend()."""

    @abc.abstractmethod
    def retire(self, vg, lv):
        """Remove a device that may still be open without it ever being
        writable again: the grant behind it is gone."""

    @abc.abstractmethod
    def active(self):
        """{(vg, lv): {'path', 'device', 'suspended', 'open'}} active on
        this host, from the backend's own record."""

    @abc.abstractmethod
    def identity(self, vg, lv):
        """What the device maps now: {'uuid': LV uuid or None,
        'extents': [[pv, first_pe, last_pe], ...]}; None if not active."""

    def device_state(self, vg, lv):
        """What the kernel shows of vg/lv's device: None (no device),
        'live', 'suspended' (fenced) or 'retired'."""
        info = self.active().get((vg, lv))
        if info is None:
            return None
        return 'suspended' if info.get('suspended') else 'live'

    def park(self, vg, lv):
        """Leave the fenced device of vg/lv for a daemon that stops: no
        command run while it is down may make it writable (see the lvm
        backend). Nothing to do where only resume() unfences (loop)."""
        return None

    def tidy(self):
        """Undo what this backend's past devices left on the host for
        others (called at start)."""
        return None

    def stopped(self, vg, lv):
        """True if no write from this host reaches vg/lv now, as the
        kernel tells it (not as our own list says): the fencer checks
        every fenced device with it on every tick."""
        row = self.active().get((vg, lv))
        return row is None or row['suspended']

    def dm_uuid(self, vg, lv):
        """What the device of vg/lv is addressed by whatever its name
        (device-mapper's uuid), or None where names are all there is."""
        return None

    def devices(self):
        """[(vg, lv)] with a device here, as cheaply as the backend can
        tell (the fencer enumerates with it)."""
        return list(self.active())

    def path(self, vg, lv):
        """Where the block device of an active LV appears."""
        return self.active().get((vg, lv), {}).get('path')


def open_by_others(device):
    """True if a process other than us has ``device`` open."""
    real = os.path.realpath(device)
    me = str(os.getpid())
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or pid == me:
            continue
        fd_dir = f'/proc/{pid}/fd'
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f'{fd_dir}/{fd}') == real:
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False
