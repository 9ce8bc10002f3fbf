"""Copies on real device-mapper (issue 10): a clone of an in-use volume
and a volume from a snapshot, each asked on a host where the source is not
active, run on the host that holds it and read what they must.

Runs after tests/realhost/test_realhost.py, on the same booted cluster.
"""
import time

import pytest

from tests.realhost.cluster import VG
from tests.realhost.cluster import MiB


def dev(lv):
    """The LV's device path in a guest."""
    return f'/dev/{VG}/{lv}'


def sha(host, lv, blocks):
    return host.blockio('sha', dev(lv), 0, blocks).strip()


@pytest.mark.timeout(900)  # the cluster's boot when run alone
def test_h_clone_in_use_and_volume_from_snapshot(cluster, record):
    """g2 holds vol-c (a guest writes it). A clone asked on g3 runs on g2
    through a temporary snapshot, removed after; the clone reads what the
    volume held then, not what was written after. A volume from a
    snapshot asked on g1 runs on g2 too and reads the snapshot's data,
    not the origin's newer data."""
    g1, g2, g3 = cluster.hosts
    blocks = 1024  # 4 MiB stamped
    size = 16 * MiB
    src, clone, snap, from_snap, tmp = ('vol-c', 'vol-c-clone', 'vol-c-snap',
                                        'vol-c-fs', 'vol-c-tmp')
    for lv in (src, clone, from_snap):
        g1.ok('create', vg=VG, lv=lv, size=size)
    g1.ok('activate', vg=VG, lv=src, host='g2', instance='vm-c')
    sha_c = g2.blockio('fill', dev(src), 'C', 0, blocks).strip()

    # Clone of the in-use volume, asked on g3.
    start = time.time()
    out = g3.ok('copy', vg=VG, src=src, dst=clone, size=size, snapshot=tmp)
    record['clone_in_use_s'] = round(time.time() - start, 1)
    assert out['on'] == 'g2' and out['consistency'] == 'snapshot', out
    # The temporary snapshot is gone from g2's kernel and from the VG; the
    # origin is a plain linear device again, never suspended for good.
    assert g2.dm_table(tmp) is None
    assert [t[2] for t in g2.dm_table(src)] == ['linear']
    assert not g2.dm_info(src)['suspended']
    assert tmp not in {x['lv'] for x in g1.ok('list', vg=VG)}
    # The clone is not active anywhere after the copy.
    assert all(h.dm_table(clone) is None for h in (g1, g2, g3))

    # The guest writes on; a snapshot keeps what was there before.
    g1.ok('snapshot', vg=VG, lv=src, name=snap, size=8 * MiB)
    sha_d = g2.blockio('fill', dev(src), 'D', 0, blocks).strip()
    assert sha_d != sha_c

    # Volume from the snapshot, asked on g1: runs on g2.
    start = time.time()
    out = g1.ok('copy', vg=VG, src=snap, dst=from_snap, size=size)
    record['volume_from_snapshot_s'] = round(time.time() - start, 1)
    assert out['on'] == 'g2', out
    assert all(h.dm_table(from_snap) is None for h in (g1, g2, g3))

    # Read back where nothing else holds them.
    g1.ok('activate', vg=VG, lv=clone, host='g3', instance='vm-clone')
    g1.ok('activate', vg=VG, lv=from_snap, host='g1', instance='vm-fs')
    assert sha(g3, clone, blocks) == sha_c
    assert sha(g1, from_snap, blocks) == sha_c
    assert sha(g2, src, blocks) == sha_d

    g1.ok('deactivate', vg=VG, lv=clone, host='g3')
    g1.ok('deactivate', vg=VG, lv=from_snap, host='g1')
    g1.ok('snapshot_delete', vg=VG, lv=snap)
    g1.ok('deactivate', vg=VG, lv=src, host='g2')
    for lv in (clone, from_snap, src):
        g1.ok('delete', vg=VG, lv=lv)


@pytest.mark.timeout(900)
def test_i_read_only_activation_of_a_reverted_origin(cluster, record):
    """A revert is pending on vol-ro (detached); its next activation is
    read-only, on g2: the merge runs (under the VG lock), the origin reads
    what the snapshot held, and its device refuses writes, also after
    lvpoll reloads its table linear at the merge's end (before the fix it
    came back writable). No VG metadata is written outside the VG lock."""
    g1, g2, _ = cluster.hosts
    lv, snap = 'vol-ro', 'vol-ro-snap'
    blocks = 256
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    g1.ok('activate', vg=VG, lv=lv, host='g2', instance='vm-ro')
    sha_a = g2.blockio('fill', dev(lv), 'A', 0, blocks).strip()
    g1.ok('snapshot', vg=VG, lv=lv, name=snap, size=8 * MiB)
    sha_b = g2.blockio('fill', dev(lv), 'B', 0, blocks).strip()
    assert sha_b != sha_a
    g1.ok('deactivate', vg=VG, lv=lv, host='g2')
    g1.ok('revert', vg=VG, lv=lv, snapshot=snap)

    start = time.time()
    g1.ok('activate', vg=VG, lv=lv, host='g2', instance='vm-ro',
          read_only=True)
    record['ro_activate_s'] = round(time.time() - start, 1)
    assert [t[2] for t in g2.dm_table(lv)] == ['linear']
    assert g2.guest.sh(f'blockdev --getro {dev(lv)}').strip() == '1'
    assert sha(g2, lv, blocks) == sha_a
    assert snap not in {x['lv'] for x in g1.ok('list', vg=VG)}
    g1.ok('deactivate', vg=VG, lv=lv, host='g2')
    start = time.time()
    g1.ok('delete', vg=VG, lv=lv)
    alerts = [line for t, line in g1.log_lines(
        'metadata changed outside lvmcoord') if t >= start - 1]
    assert not alerts, alerts
