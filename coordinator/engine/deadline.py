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
def bound(deadline):
    """Within this block, commands must be dead by ``deadline()`` (a
    monotonic time, re-read while they run)."""
    outer = getattr(_local, 'deadline', None)
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = outer


def current():
    """The deadline callable in force on this thread, or None."""
    return getattr(_local, 'deadline', None)
