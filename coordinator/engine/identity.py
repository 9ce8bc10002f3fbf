"""Which machine a session belongs to: a host name is not an identity.

Two machines configured with one host name (a cloned image, a short-name
clash) would share every key named after it: the session, its routed
requests, its grants. The session record carries the machine id and the
boot id of the daemon that opened it; a daemon finding a live record of
another machine (or another boot of this one) under its name refuses it,
and never overwrites it.
"""
import fcntl
import os

from coordinator import errors

MACHINE_ID = '/etc/machine-id'
BOOT_ID = '/proc/sys/kernel/random/boot_id'


class NameTaken(errors.CoordError):
    """This host name has a live session of another machine."""

    code = 'host-name-taken'


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ''


def machine_id(configured=None):
    """[session] machine_id, else /etc/machine-id's content ('' if none)."""
    return (configured or '').strip() or _read(MACHINE_ID)


def boot_id():
    """This boot's id: a clone of this machine's image runs another boot."""
    return _read(BOOT_ID)


def fields(machine, state_dir=None):
    """What the session record says of who opened it."""
    return {'machine': machine, 'boot': boot_id(), 'state_dir': state_dir}


LOCK_FILE = 'lvmcoordd.lock'


def _daemon_in(state_dir):
    """True if a daemon holds ``state_dir``'s lock (coordinator/daemon/
    claim.py) now: same machine, same boot, another state dir, one host
    name is a second daemon of that name here."""
    if not state_dir:
        return False
    try:
        fd = os.open(os.path.join(state_dir, LOCK_FILE),
                     os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's own lock, if it got one
    return False


def conflict(record, host, machine, lease=0, state_dir=None):
    """Why the live session ``record`` of ``host`` is not ours to take
    over (None if it is: this machine's own, from a run that is gone, or
    the lease we resume). ``lease``: the one we resume, 0 for none;
    ``state_dir``: ours."""
    if not record:
        return None
    theirs = record.get('machine')
    ours = bool(lease) and record.get('lease') == lease
    session = f'live session {int(record.get("lease") or 0):x}, pid ' \
              f'{record.get("pid")}'
    if theirs is None:
        # A record from before machine ids: only our own resumed lease is
        # known to be ours.
        if ours:
            return None
        return (f'host name {host} has a {session} of an unknown machine; '
                f'another machine is configured with this host name')
    if theirs != machine:
        return (f'host name {host} is in use by machine {theirs} '
                f'({session}); this is machine {machine}: give one of '
                f'them another host name')
    boot = record.get('boot')
    if boot and boot != boot_id():
        return (f'host name {host} has a {session} of machine {theirs} '
                f'under another boot ({boot}): a clone of this machine\'s '
                f'image, or a reboot within the session TTL (then it '
                f'expires by itself)')
    theirs_dir = record.get('state_dir')
    if not ours and theirs_dir and _daemon_in(theirs_dir) and not (
            state_dir and os.path.realpath(theirs_dir) ==
            os.path.realpath(state_dir)):
        return (f'host name {host} is in use by another lvmcoordd on this '
                f'machine ({session}, state dir {theirs_dir})')
    return None
