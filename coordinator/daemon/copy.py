"""Copies into a new LV on the host where the source is active.

A volume attached to a guest is active on its compute host only, and a
snapshot reads right only where its origin is active (its exceptions live
in that host's device-mapper). So a copy from either runs on that host
(routed there), under the leases that host holds or takes: the source is
read through the holder's own device (or a short read-only lease when it
is active nowhere), the destination gets a short exclusive lease there
for the copy and is deactivated and released after. A copy of an in-use
volume reads a temporary snapshot taken on the holder (crash-consistent),
removed after, whatever happened.

Without device-mapper (the loop backend) there are no snapshots: the
in-use source is read live, and the reply says so (``consistency``).
"""
import contextlib
import logging
import uuid

from coordinator import blockio
from coordinator import errors
from coordinator.daemon import snapshots

LOG = logging.getLogger(__name__)

CHUNK = blockio.CHUNK
# A routed copy's caller waits this long at least, plus the time the data
# takes at COPY_RATE bytes a second, up to routing.OP_MAX_TIMEOUT['copy'].
BASE_TIMEOUT = 60.0
COPY_RATE = 20 << 20


def timeout_for(size):
    """Seconds a caller waits for a copy of ``size`` bytes."""
    return BASE_TIMEOUT + size / COPY_RATE


def run(ops, vg, src, dst, size, snapshot=None):
    """Copy the first ``size`` bytes of ``src`` (a volume or a snapshot)
    into ``dst`` on the host where the source (its origin) is active;
    ``snapshot`` names the temporary snapshot of a volume source."""
    if dst == src or snapshot in (src, dst):
        raise errors.InvalidInput('dst', 'source, destination and '
                                  'temporary snapshot must be three LVs')
    sinfo, dinfo = ops._lv_info(vg, src), ops._lv_info(vg, dst)
    if dinfo.get('origin') or dinfo.get('has_snapshots'):
        raise errors.InvalidInput('dst', f'{vg}/{dst} is a snapshot or has '
                                  f'snapshots: not a copy destination')
    origin = sinfo.get('origin') or src
    if snapshot and origin != src:
        raise errors.InvalidInput('snapshot', f'{vg}/{src} is a snapshot '
                                  f'already: no temporary snapshot of it')
    # A snapshot reads as its origin does (its own extents are the COW
    # store, of any size).
    src_size = sinfo['size'] if origin == src else \
        ops._lv_info(vg, origin)['size']
    if size > min(src_size, dinfo['size']):
        raise errors.InvalidInput('size', f'{size} bytes; {vg}/{src} has '
                                  f'{src_size}, {vg}/{dst} '
                                  f'{dinfo["size"]}')
    hosts = snapshots._live(ops, vg, origin)
    if len(hosts) > 1:
        raise errors.LeaseConflict(
            f'{vg}/{origin} is active on {", ".join(hosts)} (live '
            f'migration): copy it once it is on one host')
    if hosts and hosts[0] != ops.host:
        args = {'vg': vg, 'src': src, 'dst': dst, 'size': size}
        if snapshot:
            args['snapshot'] = snapshot
        return ops.router.call(hosts[0], 'copy', args, timeout_for(size))
    held = ops.leases.holders(vg, dst)
    if held:
        raise errors.LeaseConflict(
            f'{vg}/{dst} is held by '
            f'{", ".join(h.describe() for h in held)}: not a copy '
            f'destination', held)
    instance = f'lvmcoord-copy-{uuid.uuid4().hex[:8]}'
    with contextlib.ExitStack() as stack:
        path, consistency = stack.enter_context(
            _source(ops, vg, src, origin, snapshot, bool(hosts), instance,
                    src_size))
        out = stack.enter_context(_activated(ops, vg, dst, instance))
        written = copy_data(path, out, size)
    LOG.info('copied %d bytes of %s/%s into %s (%s)', size, vg, src, dst,
             consistency)
    return {'vg': vg, 'src': src, 'dst': dst, 'size': size, 'on': ops.host,
            'written': written, 'consistency': consistency}


@contextlib.contextmanager
def _activated(ops, vg, lv, instance, read_only=False):
    """``lv`` active here under a short lease for the block."""
    got = ops.op_activate(vg, lv, instance=instance, read_only=read_only)
    try:
        yield got['path']
    finally:
        ops.op_deactivate(vg, lv)


@contextlib.contextmanager
def _source(ops, vg, src, origin, snapshot, held, instance, src_size):
    """(device path, consistency) of the data to read."""
    if origin != src:
        # A snapshot: read where its origin is active (held here, or a
        # short lease here for the copy).
        if not ops.backend.snapshots:
            raise errors.LVMError(
                f'{vg}/{src} is a snapshot: the {ops.backend.name} backend '
                f'on {ops.host} cannot read snapshots (device-mapper '
                f'needed)', kind='failed')
        with snapshots.origin_here(ops, vg, origin):
            # Its device is the origin's, here: not a fenced one.
            ops.devguard.verify(vg, origin, 'copy')
            with _snapshot_device(ops, vg, src, instance) as path:
                yield path, 'snapshot'
        return
    if not held:
        # Active nowhere: nobody writes it while we read.
        with _activated(ops, vg, src, instance, read_only=True) as path:
            yield path, 'detached'
        return
    # In use here (a guest writes it): a snapshot of this moment.
    if snapshot and ops.backend.snapshots:
        snapshots.create(ops, vg, src, snapshot, src_size)
        try:
            with _snapshot_device(ops, vg, snapshot, instance) as path:
                yield path, 'snapshot'
        finally:
            _remove_quietly(ops, vg, snapshot, src)
        return
    # Read live through the holder's device: under our lease, not a
    # fenced (reads hang) or retired one.
    ops.devguard.verify(vg, src, 'copy')
    path = ops.backend.path(vg, src)
    if not path:
        raise errors.LVMError(f'{vg}/{src} is held by {ops.host} but has '
                              f'no device here', kind='failed')
    yield path, 'live'


@contextlib.contextmanager
def _snapshot_device(ops, vg, snap, instance):
    # LVM makes a snapshot's device with its origin's: use it as it is
    # (its origin's lease covers it); otherwise a short lease.
    path = ops.backend.path(vg, snap)
    if path:
        yield path
        return
    with _activated(ops, vg, snap, instance, read_only=True) as path:
        yield path


def _remove_quietly(ops, vg, snap, origin):
    try:
        snapshots.delete(ops, vg, snap, origin)
    except errors.CoordError as exc:
        LOG.error('temporary snapshot %s/%s not removed: %s', vg, snap, exc)
        ops.events('copy-snapshot-left', vg=vg, lv=snap, error=str(exc))


# -- the data --

def copy_data(src, dst, size):
    """Copy ``size`` bytes from ``src`` to ``dst`` (blockio.copy). The
    bytes written; LVMError on an I/O error."""
    try:
        return blockio.copy(src, dst, size)
    except OSError as exc:
        raise errors.LVMError(f'copying {src} to {dst}: {exc}',
                              kind='failed') from exc
