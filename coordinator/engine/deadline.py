"""Deadlines that bound a command by something other than a fixed timeout.

A metadata command runs under the VG lock, and the lock lives only as long
as the session: the MetadataGuard binds every LVM command it runs to the
session's expiry, and the executor kills a command that is still running
when that comes near. A command that cannot be killed in time (D state) is
what the watchdog is for.
"""
import contextlib
import threading

_local = threading.local()


@contextlib.contextmanager
def bound(deadline, track=None):
    """Within this block, commands must be dead by ``deadline()`` (a
    monotonic time, re-read while they run); ``track`` (an
    inflight.Hold) is told of each command's start and end."""
    outer = getattr(_local, 'deadline', None), getattr(_local, 'track',
                                                        None)
    _local.deadline, _local.track = deadline, track
    try:
        yield
    finally:
        _local.deadline, _local.track = outer


def current():
    """The deadline callable in force on this thread, or None."""
    return getattr(_local, 'deadline', None)


def tracker():
    """The inflight.Hold commands report to on this thread, or None."""
    return getattr(_local, 'track', None)
