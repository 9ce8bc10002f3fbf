"""Snapshots under the origin's lease.

A COW snapshot shares the origin's device-mapper state: its exceptions are
written by the host where the origin is active. So a snapshot is created,
removed and merged only where the origin is active, under the origin's
lease; an origin that is active nowhere gets a short lease on this host
for the operation and is deactivated after. A snapshot is activated only
by the holder of its origin's lease (LVM activates the origin with it).
"""
import contextlib
import uuid

from coordinator import errors
from coordinator.engine import modes


def _live(ops, vg, lv):
    holders = [h for h in ops.leases.holders(vg, lv) if h.alive]
    if any(h.mode == modes.SHARED for h in holders):
        raise errors.LeaseConflict(
            f'{vg}/{lv} is attached in shared mode (multiattach): its '
            f'snapshots cannot be handled while it is', holders)
    return [h.host for h in holders]


@contextlib.contextmanager
def origin_here(ops, vg, lv):
    """The origin active on this host under our lease for the block: the
    grant we hold, or a short one, released (and the origin deactivated)
    after."""
    hosts = _live(ops, vg, lv)
    if ops.host in hosts:
        yield
        return
    ops.op_activate(vg, lv, instance=f'lvmcoord-op-{uuid.uuid4().hex[:8]}')
    try:
        yield
    finally:
        # Deactivating the origin deactivates its snapshots with it.
        ops.op_deactivate(vg, lv)


def create(ops, vg, lv, name, size):
    """lvcreate --snapshot where the origin is active."""
    hosts = _live(ops, vg, lv)
    if hosts and ops.host not in hosts:
        return ops.router.call(hosts[0], 'snapshot',
                               {'vg': vg, 'lv': lv, 'name': name,
                                'size': size})
    ops.check_room(vg, 'snapshot', name, 2 * len(name))

    def take():
        # lvcreate -s suspends and resumes the active origin: not on a
        # fenced or retired one, only under our lease.
        with ops.devguard.command(vg, lv, 'snapshot'):
            ops.lvm.create_snapshot(vg, lv, name, size)
    with origin_here(ops, vg, lv):
        ops._change(vg, f'lvcreate -s {vg}/{lv} {name}', take)
    return dict(ops.op_show(vg, name), taken_on=ops.host)


class _Merging(Exception):
    """The snapshot is merging into its origin (seen under the VG lock)."""


def origin_of(ops, vg, lv):
    """The origin of snapshot ``lv`` ('' for a plain LV); a snapshot
    merging into its origin (hidden by LVM) counts as one; LVMError
    'not-found' when there is no such LV."""
    try:
        return ops.lvm.lv(vg, lv).get('origin') or ''
    except errors.LVMError as exc:
        if exc.kind != 'not-found':
            raise
        origin = merging_into(ops, vg, lv)
        if not origin:
            raise
        return origin


def merging_into(ops, vg, snap):
    """The origin ``snap`` is merging into (a revert whose merge is
    pending), or ''."""
    return next((x['name'] for x in ops.lvm.lvs(vg)
                 if x.get('merging') == snap), '')


def _merging_reply(vg, snap, origin):
    return {'vg': vg, 'lv': snap, 'deleted': False, 'merging_into': origin,
            'message': f'{vg}/{snap} is merging into {origin} (a revert): '
                       f'LVM removes it when the merge completes, on '
                       f'{origin}\'s next activation; not removed, which '
                       f'would cancel the revert'}


def delete(ops, vg, snap, origin):
    """lvremove of a snapshot where its origin is active; with the origin
    active nowhere, reserved so that nobody activates it meanwhile. A
    snapshot merging into its origin is left to the merge."""
    if merging_into(ops, vg, snap) == origin:
        return _merging_reply(vg, snap, origin)
    hosts = _live(ops, vg, origin)
    if hosts and ops.host not in hosts:
        return ops.router.call(hosts[0], 'snapshot_delete',
                               {'vg': vg, 'lv': snap})

    def remove():
        # Under the VG lock: a revert may have started the merge since.
        if ops.lvm.lv(vg, origin).get('merging') == snap:
            raise _Merging()
        if not hosts:
            # Active nowhere: a device of the origin left here (retired,
            # still open) would be reloaded by lvremove.
            ops.devguard.absent(vg, origin, f'lvremove {vg}/{snap}')
            ops.lvm.remove_lv(vg, snap)
            return
        # The origin's device is suspended and resumed: under our lease,
        # not on a fenced or retired one.
        with ops.devguard.command(vg, origin, 'snapshot delete'):
            if ops.backend.path(vg, snap):
                # LVM made its device with the origin's, here.
                ops.lvm.remove_snapshot(vg, snap)
            else:
                ops.lvm.remove_lv(vg, snap)
    # Active here: under our lease; active nowhere: reserved meanwhile.
    try:
        with contextlib.nullcontext() if hosts else \
                ops.leases.reserved(vg, origin, 'snapshot delete'):
            ops._change(vg, f'lvremove {vg}/{snap}', remove)
    except _Merging:
        return _merging_reply(vg, snap, origin)
    return {'vg': vg, 'lv': snap, 'deleted': True, 'on': ops.host}


def revert(ops, vg, origin, snap):
    """Merge ``snap`` back into its detached origin. With the origin
    inactive, LVM defers the merge to the origin's next activation, which
    then completes it in that host's device-mapper before any I/O. A
    revert to the snapshot already merging is done already."""
    if merging_into(ops, vg, snap) == origin:
        return {'vg': vg, 'lv': origin, 'reverted_to': snap,
                'merge': 'on next activation', 'already': True}
    info = ops.lvm.lv(vg, snap)
    if info.get('origin') != origin:
        raise errors.InvalidInput('snapshot', f'{vg}/{snap} is not a '
                                  f'snapshot of {origin}')
    hosts = _live(ops, vg, origin)
    if hosts:
        raise errors.LeaseConflict(
            f'{vg}/{origin} is attached on {", ".join(hosts)}: detach it '
            f'before reverting to {snap}')
    def merge():
        # A device of the origin left here (retired, still open) would
        # be taken for active, and reloaded to start the merge.
        ops.devguard.absent(vg, origin, f'revert {vg}/{origin}')
        ops.lvm.merge_snapshot(vg, snap)
    with ops.leases.reserved(vg, origin, 'revert'):
        ops._change(vg, f'lvconvert --merge {vg}/{snap}', merge)
    return {'vg': vg, 'lv': origin, 'reverted_to': snap,
            'merge': 'on next activation'}


def activate_merging(ops, vg, lv, read_only, info):
    """Activate origin ``lv`` whose revert is pending: a metadata change,
    under the VG lock. LVM starts the merge on activation and removes the
    merged snapshot from the metadata when it ends; left to LVM, that
    write comes from a background poller outliving the command (and any
    lock). So: --poll n (nothing polls in the background), then the merge
    polled to its end in the foreground (lvpoll), both under the lock; the
    seqno the merge leaves is recorded by the change. The device's path."""
    made = []

    def merge():
        made.append(ops.backend.activate(vg, lv, read_only, info,
                                         poll=False))
        try:
            # lvpoll resumes the origin when the merge ends: not once the
            # fencer has stopped it.
            ops.devguard.check_making(vg, lv, 'merge')
            ops.lvm.finish_merge(vg, lv, read_only=read_only)
        except errors.CoordError:
            # Not left active unmerged without its lease: the merge goes
            # on at the next activation (where it stopped).
            with contextlib.suppress(errors.CoordError):
                ops.backend.deactivate(vg, lv)
            raise
    ops._change(vg, f'lvchange -aey --poll n {vg}/{lv}; lvpoll merge '
                    f'{info["merging"]}', merge)
    return made[0]


def check_activation(ops, vg, info):
    """A snapshot is activated only by the holder of its origin's lease."""
    origin = info.get('origin')
    if not origin:
        return
    hosts = _live(ops, vg, origin)
    if ops.host not in hosts:
        where = f'active on {", ".join(hosts)}' if hosts else 'not active'
        raise errors.LeaseConflict(
            f'{vg}/{info["name"]} is a snapshot of {origin}, which is '
            f'{where}: activate the origin here first (LVM activates it '
            f'with the snapshot)')
