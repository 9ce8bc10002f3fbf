"""DeviceGuard: an LVM command that can resume or reload an active LV runs
only while this host holds the LV's lease, never on a fenced or retired
device, and under the grant book's lock, which the fencer marks under.

lvm2 resumes an already-suspended device at the end of any command that
refreshes, snapshots or polls its LV, and gives a retired device (the
``error`` table under the LV's dm uuid) its linear, writable table back.
So such a command (``lvchange --refresh``, ``lvcreate -s`` or ``lvremove``
of a snapshot whose origin is active here) runs in ``command()``:

1. the lease is read from etcd first, outside any lock (etcd is slow
   exactly when the fencer must act, and the fencer waits for this lock):
   this host's entry, alive, under the current session;
2. under the book's lock: the book's record is that grant (same token),
   active and not marked fenced; the fencer runs and is not fenced; the
   kernel shows the device neither suspended nor retired;
3. the command runs, still under the lock; after it (failed or not) the
   record's ``commands`` count is bumped.

The fencer never waits for this lock to fence: it stops I/O first and
takes the lock only to mark what it fenced, waiting ``fence.MARK_WAIT`` at
most. A command already running when the fence landed may undo it; it
ends before the fencer gets the lock, and the bumped count makes the
fencer stop that device again under the lock (``fence._catch_up``). A
fencer that cannot get the lock in time marks nothing: those devices are
fenced again on its next tick and the watchdog is not petted meanwhile
(an LVM command that can resume them is running). A command that starts
after the fence finds the device suspended or marked, and is refused.
"""
import contextlib
import logging

from coordinator import errors
from coordinator.daemon import grantbook

LOG = logging.getLogger(__name__)

# Seconds a command waits for the book's lock (held by activations and
# the fencer for a few writes, by another command for its own).
LOCK_WAIT = 30.0
LIVE, SUSPENDED, RETIRED = 'live', 'suspended', 'retired'


class DeviceGuard:
    """Lease, fence and retire checks around device-touching commands."""

    def __init__(self, host, leases, session, backend, book,
                 fencer_problem=None, lock_wait=LOCK_WAIT):
        self.host = host
        self.leases = leases
        self.session = session
        self.backend = backend
        self.book = book
        # fencer_problem() -> why this host serves no grant now, or None.
        self.fencer_problem = fencer_problem or (lambda: None)
        self.lock_wait = lock_wait

    def held(self, vg, lv, what):
        """This host's live grant of vg/lv under the current session;
        LeaseConflict naming who holds it otherwise."""
        holders = self.leases.holders(vg, lv)
        mine = next((h for h in holders if h.host == self.host), None)
        why = _not_held(mine, self.session.id)
        if why:
            others = [h for h in holders if h.host != self.host]
            held_by = ', '.join(h.describe() for h in others) or 'nobody'
            raise errors.LeaseConflict(
                f'{what} {vg}/{lv} refused on {self.host}: {why} (held by '
                f'{held_by})', others)
        return mine

    def check(self, vg, lv, what, grant=None):
        """The local half (call under the book's lock): the book records
        ``grant`` active and unfenced, the fencer is fine, the kernel's
        device is neither suspended nor retired. Raises otherwise."""
        record = self.book.get(vg, lv) if self.book is not None else None
        state = self.backend.device_state(vg, lv)
        if record is None:
            if state is None:
                return  # nothing here to resume or reload
            raise errors.LVMError(
                f'{what} {vg}/{lv} refused on {self.host}: its device here '
                f'({state}) is not one this host made under a grant',
                kind='fenced')
        if grant is not None and record.get('token') != grant.token:
            raise errors.LeaseConflict(
                f'{what} {vg}/{lv} refused on {self.host}: its device was '
                f'made under token {record.get("token")}, the lease is now '
                f'token {grant.token}')
        if record.get('fenced') or record.get('state') != grantbook.ACTIVE:
            why = 'fenced' if record.get('fenced') else \
                f'still {record.get("state")}'
            raise errors.LVMError(f'{what} {vg}/{lv} refused on '
                                  f'{self.host}: its grant is {why} here',
                                  kind='fenced')
        problem = self.fencer_problem()
        if problem:
            raise errors.HostUnavailable(f'{what} {vg}/{lv} refused on '
                                         f'{self.host}: {problem}')
        if state in (SUSPENDED, RETIRED):
            how = 'fenced (suspended)' if state == SUSPENDED else \
                'retired (error target)'
            raise errors.LVMError(
                f'{what} {vg}/{lv} refused on {self.host}: its device is '
                f'{how}; an LVM command would make it writable again',
                kind='fenced')

    @contextlib.contextmanager
    def command(self, vg, lv, what):
        """The block runs an LVM command that can resume or reload vg/lv's
        device: only under our lease, on a live device, under the lock."""
        grant = self.held(vg, lv, what)
        if self.book is None:
            self.check(vg, lv, what, grant)
            yield grant
            return
        with self.book.locked(wait=self.lock_wait) as got:
            if not got:
                raise errors.Busy(f'{what} {vg}/{lv}: the grant book of '
                                  f'{self.host} stayed locked for '
                                  f'{self.lock_wait:.0f}s')
            self.check(vg, lv, what, grant)
            try:
                yield grant
            finally:
                self._bump(vg, lv)

    def verify(self, vg, lv, what):
        """Lease and device checks of command(), for an op that reads or
        writes the device itself (no LVM command on it)."""
        grant = self.held(vg, lv, what)
        if self.book is None:
            self.check(vg, lv, what, grant)
            return grant
        with self.book.locked(wait=self.lock_wait):
            self.check(vg, lv, what, grant)
        return grant

    def check_making(self, vg, lv, what):
        """For an activation that runs one more LVM command on the device
        it is making (the merge's lvpoll): refused once the fencer marked
        its record, or once the kernel shows the device stopped. What that
        command may undo after this is stopped again when the activation
        records its device (``grantbook.made``)."""
        if self.book is None:
            return
        with self.book.locked(wait=self.lock_wait):
            record = self.book.get(vg, lv) or {}
            state = self.backend.device_state(vg, lv)
            if record.get('fenced') or state in (SUSPENDED, RETIRED):
                raise errors.LVMError(
                    f'{what} {vg}/{lv} refused on {self.host}: fenced '
                    f'while its device was being made', kind='fenced')

    def absent(self, vg, lv, what):
        """Refuse if vg/lv has a device here (an LVM command on an LV
        active nowhere would treat it as active, and reload it)."""
        state = self.backend.device_state(vg, lv)
        if state is not None:
            raise errors.LVMError(
                f'{what} refused on {self.host}: {vg}/{lv} is active '
                f'nowhere, yet a device of it is here ({state})',
                kind='fenced')

    def _bump(self, vg, lv):
        # After the command: a fence that landed while it ran sees the
        # record changed and stops the device again (fence._catch_up).
        try:
            record = self.book.get(vg, lv)
            if record is not None:
                self.book.put(vg, lv, durable=False,
                              commands=int(record.get('commands') or 0) + 1)
        except Exception:
            LOG.exception('%s/%s: command count not recorded', vg, lv)


def _not_held(mine, session):
    """Why ``mine`` (our Holder or None) is not a grant to act under."""
    if mine is None:
        return 'this host does not hold its lease'
    if mine.broken:
        return 'its grant here was broken by an admin'
    if not mine.alive:
        return 'its grant here belongs to an ended session'
    if mine.session != session:
        return f'its grant here is bound to session {mine.session:x}, not ' \
               f'the current {session:x}'
    return ''
