"""Which run of a process this is, without a clock: the boot, the pid and
the process's start (clock ticks after boot) name one process of one boot,
and no wall-clock step changes them.

The fencer's beat carries its daemon's (the master's) incarnation and its
own: a worker of a new daemon never takes an older run's beat for its own
fencer's (host.fencer_problem), and an activation sees a fencer restarted
between its grant and its device (ops.op_activate).
"""
import functools
import os

_BOOT_ID = '/proc/sys/kernel/random/boot_id'


@functools.lru_cache(maxsize=1)
def _boot():
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return 'unknown-boot'


def of(pid):
    """'<boot>:<pid>:<start ticks>' of process ``pid``, or None if there is
    no such process."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22, after the parenthesised command name (which may hold
    # spaces).
    ticks = stat.rsplit(')', 1)[1].split()[19]
    return f'{_boot()}:{pid}:{ticks}'


@functools.lru_cache(maxsize=4)
def _cached(pid):
    return of(pid)


def daemon():
    """The incarnation of this daemon: its master's, the parent of every
    worker. An orphaned worker (its master gone) has another parent, so
    another incarnation: it serves on no beat of the run it belonged to."""
    return _cached(os.getppid())


def own():
    """This process's incarnation."""
    return _cached(os.getpid())
