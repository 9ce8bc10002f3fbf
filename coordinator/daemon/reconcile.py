"""Reconcile at (re)start: every grant this host recorded against every
device it has.

- A device is fenced first and resumed only by the Fencer's proof.
- A grant recorded while its device was being made ('activating': the
  daemon died in between) is released: nobody was told it worked.
- A grant whose device is gone (the host rebooted) is restored under the
  current session, with its instance and mode, unless another host holds
  the LV now; then it is dropped and the holder named.

No activation runs meanwhile: ops serves none until this fencer has beaten
after reconcile ('starting' till then, host.fencer_problem), and one that
was granted before that beat waits for nothing but is refused when it
reaches the book (ops._gate). Reconcile first waits for the activations
already past that gate (GrantBook.quiesce), then decides each LV under the
book's lock on its record as it is then. No clock decides a release.
"""
import logging
import os
import time

from coordinator import errors
from coordinator.daemon import grantbook

LOG = logging.getLogger(__name__)

# Seconds to wait for activations past the gate, besides one LVM command:
# the watchdog's arming (which waits for a fencer tick, none during
# reconcile: ops.WATCHDOG_ARM_WAIT) and a margin.
QUIESCE_MARGIN = 10.0
QUIESCE_WAIT = 120.0 + QUIESCE_MARGIN
# Test hook, unset in production: set to a path, reconcile creates
# '<path>.reached' once it has its snapshot, then waits while the path
# exists (tests/functional/test_reconcile_restart.py holds it there).
HOLD_ENV = 'LVMCOORD_TEST_RECONCILE_HOLD'


def at_start(leases, lvm, backend, book, fencer, emit,
             quiesce_wait=QUIESCE_WAIT):
    """Bring the book, the devices and etcd into agreement (the caller
    beat 'starting' first: no activation passes the gate from then on)."""
    if not book.quiesce(quiesce_wait):
        # Stuck (a D-state LVM command): go on, the fence matters more;
        # each LV is still decided on its record as it is then.
        LOG.error('reconcile: an activation is still making its device '
                  'after %.0fs; reconciling anyway', quiesce_wait)
    # Fence marks are the fencer's word to activations in flight; those
    # in the book now are from before this start (the fencer ticks once
    # reconcile is done). Kept, a mark would stop the device a restore or
    # a later activation makes, with no fence of this daemon's to prove
    # it; what has a device is fenced and marked again just below.
    for vg, lv in [k for k, r in book.all().items() if r.get('fenced')]:
        book.unmark_fenced(vg, lv)
    devices = backend.active()
    fencer.fence_existing(list(devices), 'daemon start: proving grants')
    try:
        backend.tidy()
    except errors.CoordError as exc:
        LOG.warning('backend: %s', exc)
    _orphans(leases, book, emit)
    records = book.all()
    _test_hold()
    for (vg, lv), record in records.items():
        if (vg, lv) in devices:
            continue
        try:
            # Under the book's lock, on the record as it is now: what an
            # activation wrote since the walk began is not the walk's.
            with book.locked():
                if book.get(vg, lv) != record:
                    LOG.warning('%s/%s: changed while reconciling; left '
                                'as it is', vg, lv)
                    continue
                if record.get('state') in (grantbook.ACTIVATING,
                                           grantbook.RELEASING):
                    _release(leases, book, vg, lv, record, emit)
                else:
                    _restore(leases, lvm, backend, book, vg, lv, record,
                             emit, fencer)
        except errors.CoordError as exc:
            LOG.error('reconcile %s/%s: %s', vg, lv, exc)
            emit('reconcile-failed', vg=vg, lv=lv, error=str(exc))


def quiesce_wait(conf):
    """How long reconcile waits for activations past the gate: one LVM
    command's timeout and QUIESCE_MARGIN."""
    return conf.lvm.command_timeout + QUIESCE_MARGIN


def _test_hold():
    path = os.environ.get(HOLD_ENV)
    if not path or not os.path.exists(path):
        return
    open(path + '.reached', 'w').close()
    while os.path.exists(path):
        time.sleep(0.05)


def _orphans(leases, book, emit):
    # A grant of ours with no record here: the daemon died between the
    # grant and its record, which comes before any device and any reply,
    # so nobody was told it worked. One of this daemon's, still on its
    # way to the book, is refused there (it started before this fencer's
    # beat): nobody is told it worked either. No start time is compared:
    # a wall-clock step would move the line.
    booked = set(book.all())
    try:
        mine = leases.mine()
    except errors.CoordError as exc:
        LOG.error('reconcile: cannot list our grants: %s', exc)
        return
    for vg, lv, holder in mine:
        if (vg, lv) in booked:
            continue
        try:
            leases.release(vg, lv)
        except errors.CoordError as exc:
            LOG.error('reconcile %s/%s: %s', vg, lv, exc)
            continue
        LOG.warning('%s/%s: granted (token %s) but never recorded; '
                    'released', vg, lv, holder.token)
        emit('reconciled', vg=vg, lv=lv, action='released',
             reason='granted, never recorded')


def _release(leases, book, vg, lv, record, emit):
    mine = _mine(leases, vg, lv)
    if mine is not None and mine.token == record.get('token'):
        leases.release(vg, lv)
    book.drop(vg, lv)
    why = 'deactivated, release pending' if record.get('state') == \
        grantbook.RELEASING else 'granted, device never made'
    LOG.warning('%s/%s: %s; released', vg, lv, why)
    emit('reconciled', vg=vg, lv=lv, action='released', reason=why)


def _restore(leases, lvm, backend, book, vg, lv, record, emit, fencer):
    holder = leases.rebind(vg, lv, record.get('token'), record.get('uuid'))
    info = next((x for x in lvm.lvs(vg) if x['uuid'] == record.get('uuid')),
                None)
    if holder is None or info is None or info['name'] != lv:
        book.drop(vg, lv)
        others = [h for h in _holders(leases, vg, lv)
                  if h.host != leases.session.host]
        held = ', '.join(h.describe() for h in others)
        why = f'held by {held}' if held else \
            ('LV renamed or deleted' if holder else 'grant no longer ours')
        LOG.error('%s/%s not restored: %s', vg, lv, why)
        emit('restore-refused', vg=vg, lv=lv, reason=why)
        # Our own entry, if any is left, has no device behind it: drop it
        # rather than block the LV.
        if _mine(leases, vg, lv) is not None:
            leases.release(vg, lv)
        return
    book.put(vg, lv, token=holder.token, session=holder.session)
    try:
        # Recorded first, then watched: no device is made unwatched.
        if not fencer.arm():
            raise errors.HostUnavailable('the watchdog could not be armed')
        # A merge left pending (a restart during the merging activation):
        # --poll n, no background poller writing the metadata outside the
        # VG lock; device-mapper merges, and the next coordinated
        # activation polls it to its end under the lock.
        poll = {'poll': False} if info.get('merging') else {}
        path = backend.activate(vg, lv, record.get('read_only', False),
                                info, **poll)
        # Writable once recorded active, unless fenced meanwhile.
        if not grantbook.made(book, backend, vg, lv, path):
            raise errors.HostUnavailable('its device was retired while '
                                         'being made (grant gone)')
    except errors.CoordError as exc:
        book.drop(vg, lv)
        leases.release(vg, lv)
        LOG.error('%s/%s not restored: %s; grant released', vg, lv, exc)
        emit('restore-failed', vg=vg, lv=lv, error=str(exc))
        return
    LOG.warning('%s/%s restored at %s (token %s)', vg, lv, path,
                holder.token)
    emit('restored', vg=vg, lv=lv, path=path, token=holder.token,
         instance=holder.instance)


def _holders(leases, vg, lv):
    try:
        return leases.holders(vg, lv)
    except errors.LeaseConflict:
        return []


def _mine(leases, vg, lv):
    return next((h for h in _holders(leases, vg, lv)
                 if h.host == leases.session.host), None)
