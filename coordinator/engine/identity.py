"""Which machine a session belongs to: a host name is not an identity.

Two machines configured with one host name (a cloned image, a short-name
clash) would share every key named after it: the session, its routed
requests, its grants. The session record carries the machine id and the
boot id of the daemon that opened it; a daemon finding a live record of
another machine (or another boot of this one) under its name refuses it,
and never overwrites it.
"""
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


def fields(machine):
    """What the session record says of who opened it."""
    return {'machine': machine, 'boot': boot_id()}


def _daemon_alive(pid):
    # Same machine, same boot: a pid that is alive and an lvmcoordd is a
    # second daemon of this host name here (another state dir).
    if not pid or pid == os.getpid():
        return False
    try:
        with open(f'/proc/{int(pid)}/cmdline', 'rb') as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return False
    return b'coordinator.daemon.main' in cmdline or b'lvmcoordd' in cmdline


def conflict(record, host, machine, lease=0):
    """Why the live session ``record`` of ``host`` is not ours to take
    over (None if it is: this machine's own, from a run that is gone, or
    the lease we resume). ``lease``: the one we resume, 0 for none."""
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
    if not ours and _daemon_alive(record.get('pid')):
        return (f'host name {host} is in use by another lvmcoordd on this '
                f'machine ({session})')
    return None
