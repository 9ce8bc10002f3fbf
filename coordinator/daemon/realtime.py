"""Keep the timing-critical workers on a CPU and in memory.

The fencer must act and pet the watchdog within seconds, and the session
worker must keep its keepalives flowing, however loaded the host is. Like
sanlock (``high_priority``, ``mlockall``), both run under SCHED_RR and lock
the pages they touch; children they spawn (LVM commands) go back to the
normal policy. Refused (no CAP_SYS_NICE, a container), it is logged and
the worker runs as before.
"""
import ctypes
import ctypes.util
import logging
import os

LOG = logging.getLogger(__name__)

# Below the kernel's own RT threads (50 and up), above every normal task.
PRIORITY = 10
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4


def elevate(name, priority=PRIORITY):
    """SCHED_RR at ``priority`` and locked pages for this process; returns
    what could not be done (empty when all was)."""
    problems = []
    # The policy is per thread: every thread running now, and those made
    # later inherit it from their creator.
    for tid in os.listdir('/proc/self/task'):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_RR |
                                  os.SCHED_RESET_ON_FORK,
                                  os.sched_param(priority))
        except ProcessLookupError:
            pass  # that thread ended meanwhile
        except OSError as exc:
            problems.append(f'SCHED_RR: {exc.strerror}')
            break
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    # ONFAULT: lock what is touched, never populate whole thread stacks.
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) != 0:
        problems.append(f'mlockall: {os.strerror(ctypes.get_errno())}')
    if problems:
        LOG.warning('%s: runs without real-time protection (%s)', name,
                    '; '.join(problems))
    else:
        LOG.info('%s: SCHED_RR priority %d, pages locked', name, priority)
    return problems
