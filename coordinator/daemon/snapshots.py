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
    with origin_here(ops, vg, lv):
        ops._change(vg, f'lvcreate -s {vg}/{lv} {name}',
                    lambda: ops.lvm.create_snapshot(vg, lv, name, size))
    return dict(ops.op_show(vg, name), taken_on=ops.host)


def delete(ops, vg, snap, origin):
    """lvremove of a snapshot where its origin is active; with the origin
    active nowhere, reserved so that nobody activates it meanwhile."""
    hosts = _live(ops, vg, origin)
    if hosts and ops.host not in hosts:
        return ops.router.call(hosts[0], 'snapshot_delete',
                               {'vg': vg, 'lv': snap})
    # Active here: under our lease; active nowhere: reserved meanwhile.
    with contextlib.nullcontext() if hosts else \
            ops.leases.reserved(vg, origin, 'snapshot delete'):
        ops._change(vg, f'lvremove {vg}/{snap}',
                    lambda: ops.lvm.remove_lv(vg, snap))
    return {'vg': vg, 'lv': snap, 'deleted': True, 'on': ops.host}


def revert(ops, vg, origin, snap):
    """Merge ``snap`` back into its detached origin. With the origin
    inactive, LVM defers the merge to the origin's next activation, which
    then completes it in that host's device-mapper before any I/O."""
    info = ops.lvm.lv(vg, snap)
    if info.get('origin') != origin:
        raise errors.InvalidInput('snapshot', f'{vg}/{snap} is not a '
                                  f'snapshot of {origin}')
    hosts = _live(ops, vg, origin)
    if hosts:
        raise errors.LeaseConflict(
            f'{vg}/{origin} is attached on {", ".join(hosts)}: detach it '
            f'before reverting to {snap}')
    with ops.leases.reserved(vg, origin, 'revert'):
        ops._change(vg, f'lvconvert --merge {vg}/{snap}',
                    lambda: ops.lvm.merge_snapshot(vg, snap))
    return {'vg': vg, 'lv': origin, 'reverted_to': snap,
            'merge': 'on next activation'}


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
