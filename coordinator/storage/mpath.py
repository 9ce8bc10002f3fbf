"""The writes an older incarnation left queued in the LU's multipath maps.

With `queue_if_no_path`, a dm-multipath map keeps every request it could
not send while no path was up, and sends it when a path comes back --
through whatever key its I_T nexus carries by then. Were a new key
registered first, a write the old incarnation queued before another host
took its LVs would land. So before each registration the maps stop
queueing (what they hold fails now, or goes out under the old key, which
the target refuses once it was preempted) and must hold no write; their
queueing is given back once the attempt is over. dmsetup runs with
argument lists, never a shell."""
import logging
import os
import time

from coordinator.storage import base

LOG = logging.getLogger(__name__)

# A request that failed on one path is requeued (idle, not counted) for
# up to 100 ms before it is sent on another: this long at zero is empty.
QUIET = 0.5
STEP = 0.1
TIMEOUT = 30.0


class Map:
    """One dm-multipath map under a configured device."""

    def __init__(self, name, node, sys_root):
        self.name, self.node, self.sys_root = name, node, sys_root

    def writes_in_flight(self):
        """Writes submitted to the map and not completed (sysfs)."""
        path = os.path.join(self.sys_root, 'block', self.node, 'inflight')
        with open(path) as f:
            return int(f.read().split()[1])

    def __repr__(self):
        return f'{self.name} ({self.node})'


def maps(devices, sys_root='/sys'):
    """The dm-multipath maps among ``devices`` (others have no queue of
    their own: a SCSI disk's commands fail at the target)."""
    found = []
    for device in devices:
        node = os.path.basename(os.path.realpath(device))
        dm = os.path.join(sys_root, 'block', node, 'dm')
        try:
            with open(os.path.join(dm, 'uuid')) as f:
                uuid = f.read().strip()
            with open(os.path.join(dm, 'name')) as f:
                name = f.read().strip()
        except OSError:
            continue
        if uuid.startswith('mpath-'):
            found.append(Map(name, node, sys_root))
    return found


def queueing(table):
    """Whether a multipath table line has queue_if_no_path on."""
    fields = table.split()
    if len(fields) < 4 or fields[2] != 'multipath':
        return False
    count = int(fields[3])
    return 'queue_if_no_path' in fields[4:4 + count]


def _dmsetup(run, *args):
    rc, out, err = run(['dmsetup', *args])
    if rc:
        raise base.StorageError(f'dmsetup {" ".join(args)} failed (rc '
                                f'{rc}): {(err or out).strip()[:300]}')
    return out


def drain(devices, run, sys_root='/sys', timeout=TIMEOUT,
          clock=time.monotonic, sleep=time.sleep, stopped=None):
    """Stop queueing on every map and wait until none holds a write; the
    maps whose queueing was stopped, added to ``stopped`` (for requeue(),
    also after a failure). StorageError, naming the map, if writes are
    still in flight at ``timeout`` (queueing stays off: they fail once
    they can)."""
    stopped = [] if stopped is None else stopped
    found = maps(devices, sys_root)
    for m in found:
        if queueing(_dmsetup(run, 'table', m.name)):
            _dmsetup(run, 'message', m.name, '0', 'fail_if_no_path')
            stopped.append(m)
    if stopped:
        LOG.warning('storage: queueing stopped on %s until the new key is '
                    'registered: writes left queued there fail', stopped)
    end = clock() + timeout
    for m in found:
        quiet_since = None
        while True:
            now = clock()
            if m.writes_in_flight():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if quiet_since is not None and now - quiet_since >= QUIET:
                break
            if now > end:
                raise base.StorageError(
                    f'{m}: {m.writes_in_flight()} writes of an older '
                    f'incarnation still in flight after {timeout:.0f}s; '
                    f'no new key is registered before they end')
            sleep(STEP)
    return stopped


def requeue(stopped, run):
    """Give queue_if_no_path back to the maps drain() stopped (the list
    is emptied)."""
    while stopped:
        m = stopped.pop()
        try:
            _dmsetup(run, 'message', m.name, '0', 'queue_if_no_path')
        except base.StorageError as exc:
            LOG.error('storage: %s: queueing not restored: %s', m, exc)
