"""Proof that a fenced device may be resumed: the same grant of the same
LV is still this host's.

The LV is found by its UUID, never by its name: renamed, deleted, or with
its extents changed under us, the device maps what it must not, and goes.
The grant is found by its token in the LV's ledger: still there means
nobody was granted the LV since (a takeover drops it); it is then carried
over to the current session if that is a new one.
"""
import logging
import os

from coordinator import errors
from coordinator.daemon import fence
from coordinator.daemon import grantbook
from coordinator.lvm import mda

LOG = logging.getLogger(__name__)


def covers(lv_extents, device_extents):
    """True if the device maps a prefix of the LV's extents (an extend
    since the device was made only adds extents after it)."""
    lv_extents = [list(x) for x in lv_extents]
    device_extents = [list(x) for x in device_extents]
    if not device_extents or len(device_extents) > len(lv_extents):
        return False
    *whole, last = device_extents
    if whole != lv_extents[:len(whole)]:
        return False
    pv, first, end = lv_extents[len(whole)]
    return last[0] == pv and last[1] == first and last[2] <= end


class Prover:
    """prove(vg, lv) for the Fencer, from the grant book, LVM and etcd."""

    def __init__(self, leases, lvm, backend, book, metadata=None,
                 history=None):
        self.leases = leases
        self.lvm = lvm
        self.backend = backend
        self.book = book
        # metadata(vg) -> mda.VGInfo or None (then lvs answers).
        self.metadata = metadata or (lambda vg: None)
        # coordinator.engine.history.History: a restored etcd's old
        # ledger proves nothing.
        self.history = history
        self.reasons = {}

    def __call__(self, vg, lv):
        try:
            verdict, why = self._verdict(vg, lv)
        except (errors.EtcdUnavailable, errors.SessionLost,
                errors.LockTimeout) as exc:
            # Cannot tell yet: stay fenced, ask again on the next tick.
            LOG.info('proof of %s/%s deferred: %s', vg, lv, exc)
            return fence.KEEP
        self.reasons[(vg, lv)] = why
        if verdict == fence.RETIRE:
            LOG.error('%s/%s will not be resumed: %s', vg, lv, why)
        return verdict

    def _verdict(self, vg, lv):
        record = self.book.get(vg, lv)
        if self.history is not None:
            # Read fresh: a host cut off since before a backup has seen
            # nothing newer than it, and learns of the restore here
            # (another host told etcd's epoch) before anything resumes.
            rewound, floor = self.history.floor()
            if rewound:
                return fence.KEEP, f'etcd history rewound: {rewound}'
            if record and record.get('token') and \
                    record['token'] < floor:
                return fence.RETIRE, (
                    f'granted (token {record["token"]}) before etcd\'s '
                    f'restored history was accepted (floor {floor})')
        ident = self.backend.identity(vg, lv)
        if ident is None:
            if record and record.get('state') == grantbook.ACTIVATING and \
                    _alive(record.get('pid')):
                # Still being made: the activation stops it (the record is
                # marked) and the next proof judges the device.
                return fence.KEEP, 'device being made'
            return fence.GONE, 'no device'
        if record is None or not record.get('uuid'):
            return fence.RETIRE, 'no record of a grant for this device'
        uuid = record['uuid']
        if ident.get('uuid') and ident['uuid'] != uuid:
            return fence.RETIRE, 'the device maps another LV'
        # One O_DIRECT read of the committed metadata, not an lvs per LV:
        # a fence of many LVs is proven LV by LV.
        now = mda.lv_by_uuid(self.metadata(vg), self.lvm, vg, uuid)
        if now is None:
            return fence.RETIRE, 'the LV was deleted'
        if now['name'] != lv:
            return fence.RETIRE, f'the LV was renamed to {now["name"]}'
        if not covers(now['pe_ranges'], ident['extents']):
            return fence.RETIRE, 'the LV no longer owns the mapped extents'
        holder = self.leases.rebind(vg, lv, record['token'], uuid)
        if holder is None:
            return fence.RETIRE, ('the grant is no longer ours (taken over, '
                                  'broken or released)')
        if holder.token != record['token']:
            self.book.put(vg, lv, token=holder.token,
                          session=holder.session)
        return fence.RESUME, 'same grant, same LV'


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
