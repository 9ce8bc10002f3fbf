# ruff: noqa: F811 (pytest fixtures imported from test_cinder)
"""Copies from where the source is active, and reverts, with the Cinder
driver against real daemons, real etcd and real LVM on loop devices.

These machines have no device-mapper: LVM refuses to create snapshots
(and lvconvert --merge) here. A snapshot, or the pending merge that
``lvconvert --merge`` leaves on an inactive origin on a device-mapper
host, is written into the VG's metadata with LVM's own vgcfgbackup /
vgcfgrestore: the state a device-mapper host of the cluster would leave,
seen by every daemon here. What a snapshot's device would read needs
device-mapper (the real-kernel tier): the loop backend refuses to map a
snapshot (its extents are the COW store), so here the tests check the
routing, the refusals and the cleanup of snapshot paths, and the data of
the clone of an in-use volume (read live on its holder: no snapshot
without device-mapper).
"""
import logging
import os
import uuid

import pytest

from coordinator import errors
from coordinator.api.client import Client
from tests.functional import lvmmeta

# The driver fixtures of the Cinder tests (Cinder's objects, and drivers
# on a sandbox cluster's daemons) and their helpers.
from tests.functional.test_cinder import GiB
from tests.functional.test_cinder import cinder  # noqa: F401
from tests.functional.test_cinder import disk_state
from tests.functional.test_cinder import make_driver  # noqa: F401
from tests.functional.test_cinder import new_volume
from tests.functional.test_cinder import read_block
from tests.functional.test_cinder import spec_of
from tests.functional.test_cinder import vg_left_as_found  # noqa: F401
from tests.functional.test_cinder import where_active
from tests.functional.test_cinder import write_block

HOSTS = ('volume-1', 'compute-1', 'compute-2')


@pytest.fixture(scope='module')
def cluster():
    from coordinator.sandbox.cluster import Cluster
    with Cluster(hosts=HOSTS, ttl=4, grace=1.0, vg_size=64 * GiB) as c:
        yield c


# -- the VG metadata a device-mapper host would leave (lvmmeta) --

def make_snapshot(cluster, origin, cow, tmp_path, merging=False):
    lvmmeta.make_snapshot(cluster.vg.hosts[0].lvm, cluster.vg.vg, origin,
                          cow, merging, tmp_path)


def drop_snapshots(cluster, origin, tmp_path):
    lvmmeta.drop_snapshots(cluster.vg.hosts[0].lvm, cluster.vg.vg, origin,
                           tmp_path)


def all_lvs(cluster):
    return lvmmeta.all_lvs(cluster.vg.hosts[0].lvm, cluster.vg.vg)


def holders(cluster, lv):
    shown = Client(cluster['volume-1'].socket).call(
        'show', vg=cluster.vg.vg, lv=lv)
    return sorted((h['host'], h['mode']) for h in shown['holders'])


def snapshot_of(cinder, vol):
    from cinder.tests.unit import fake_snapshot
    snap = fake_snapshot.fake_snapshot_obj(
        cinder.ctx, id=str(uuid.uuid4()), volume_size=vol.size,
        volume_id=vol.id)
    snap.volume = vol
    return snap


@pytest.fixture
def volumes(cluster, make_driver):
    """A driver on volume-1; every volume made through ``create`` is
    detached and deleted at the end, whatever happened."""
    drv = make_driver('volume-1', volume_clear='none')
    made = []

    def create(cinder_ns, size=1):
        vol = new_volume(cinder_ns, size=size)
        drv.create_volume(vol)
        made.append(vol)
        return vol
    yield drv, create, made
    for vol in made:
        try:
            drv.terminate_connection(vol, None)
        except Exception:  # noqa: BLE001 - cleanup goes on
            logging.exception('detaching %s', vol.name)
        try:
            drv.delete_volume(vol)
        except Exception:  # noqa: BLE001
            logging.exception('deleting %s', vol.name)


# -- clone of an in-use volume --

def test_clone_of_a_volume_in_use_elsewhere_is_copied_on_its_holder(
        cinder, cluster, volumes, caplog):
    drv, create, made = volumes
    spec = spec_of(cluster)
    src = create(cinder, size=2)
    conn = drv.initialize_connection(src, {'host': 'compute-1'})
    path = conn['data']['device_path']
    token = conn['data']['token']
    payload = [os.urandom(4096) for _ in range(3)]
    offsets = (0, GiB + 12288, 2 * GiB - 4096)
    for data, offset in zip(payload, offsets, strict=True):
        write_block(path, data, offset)
    clone = new_volume(cinder, size=2)
    made.append(clone)
    caplog.set_level(logging.INFO, 'driver.volume')
    drv.create_cloned_volume(clone, src)
    # Copied on compute-1, where the guest has it (the volume host could
    # not activate it); no snapshot there: read live, and said so.
    assert 'copied on compute-1 (live)' in caplog.text
    assert 'not crash-consistent' in caplog.text
    # The source is still the guest's: same grant, same device; the
    # clone's short lease there is gone with its device.
    assert holders(cluster, src.name) == [('compute-1', 'exclusive')]
    shown = Client(cluster['volume-1'].socket).call(
        'show', vg=spec['vg'], lv=src.name)
    assert shown['holders'][0]['token'] == token
    assert where_active(spec, src.name) == ['compute-1']
    assert holders(cluster, clone.name) == []
    assert where_active(spec, clone.name) == []
    # The data, read on another host.
    got = drv.initialize_connection(clone, {'host': 'compute-2'})
    for data, offset in zip(payload, offsets, strict=True):
        assert read_block(got['data']['device_path'], 4096, offset) == data
    drv.terminate_connection(clone, {'host': 'compute-2'})
    drv.terminate_connection(src, {'host': 'compute-1'})


def test_daemon_copy_runs_on_the_holder_and_checks_its_arguments(
        cinder, cluster, volumes):
    drv, create, _ = volumes
    vg = cluster.vg.vg
    src, dst = create(cinder), create(cinder)
    drv.initialize_connection(src, {'host': 'compute-2'})
    daemon = Client(cluster['volume-1'].socket)
    out = daemon.call('copy', vg=vg, src=src.name, dst=dst.name,
                      size=8 << 20, snapshot=dst.name + '-src')
    assert (out['on'], out['consistency']) == ('compute-2', 'live')
    before = disk_state(spec_of(cluster))
    for args, match in (
            ({'size': 2 * GiB}, 'size'),
            ({'dst': src.name}, 'three LVs'),
            ({'src': '../x'}, 'LV name'),
            ({'snapshot': 'snapshot1'}, 'reserved'),
            ({'dst': 'nope'}, 'Failed to find')):
        call = dict({'vg': vg, 'src': src.name, 'dst': dst.name,
                     'size': 8 << 20}, **args)
        with pytest.raises(errors.CoordError, match=match):
            daemon.call('copy', **call)
    # The destination held by another host: refused there, unchanged.
    drv.initialize_connection(dst, {'host': 'compute-1'})
    with pytest.raises(errors.LeaseConflict,
                       match='on compute-2: .* held by compute-1'):
        daemon.call('copy', vg=vg, src=src.name, dst=dst.name,
                    size=8 << 20)
    assert before == disk_state(spec_of(cluster))
    assert holders(cluster, dst.name) == [('compute-1', 'exclusive')]


def test_failed_copies_leave_nothing_behind(cinder, cluster, volumes,
                                            tmp_path):
    drv, create, made = volumes
    spec = spec_of(cluster)
    src = create(cinder)
    inst = str(uuid.uuid4())
    # Live migration: two holders; a copy waits for one.
    src.volume_attachment = cinder.objects.VolumeAttachmentList(objects=[
        cinder.objects.VolumeAttachment(
            cinder.ctx, id=str(uuid.uuid4()), instance_uuid=inst,
            attach_status='attached', attached_host=h,
            connector={'host': h}) for h in ('compute-1', 'compute-2')])
    drv.initialize_connection(src, {'host': 'compute-1'})
    drv.initialize_connection(src, {'host': 'compute-2'})
    assert holders(cluster, src.name) == [('compute-1', 'migration'),
                                          ('compute-2', 'migration')]
    before = disk_state(spec)
    clone = new_volume(cinder)
    with pytest.raises(cinder.exception.VolumeBackendAPIException,
                       match='live migration'):
        drv.create_cloned_volume(clone, src)
    assert before[1] == disk_state(spec)[1]
    drv.terminate_connection(src, {'host': 'compute-2'})
    src.volume_attachment = cinder.objects.VolumeAttachmentList(objects=[])
    # A snapshot of the in-use volume, as a device-mapper host would take
    # it: the copy goes to compute-1, whose loop backend cannot read a
    # snapshot; the new volume is removed again.
    snap = snapshot_of(cinder, src)
    snap_lv = '_' + snap.name
    Client(cluster['volume-1'].socket).call(
        'create', vg=spec['vg'], lv=snap_lv, size=8 << 20)
    make_snapshot(cluster, src.name, snap_lv, tmp_path)
    before = disk_state(spec)
    new = new_volume(cinder)
    with pytest.raises(cinder.exception.VolumeBackendAPIException,
                       match='on compute-1 .*on compute-1: .*cannot read '
                             'snapshots'):
        drv.create_volume_from_snapshot(new, snap)
    assert before[1] == disk_state(spec)[1]
    assert new.name not in before[1] and holders(cluster, snap_lv) == []
    assert where_active(spec, src.name) == ['compute-1']
    # The snapshot's delete goes to compute-1 too, and removes it there.
    drv.delete_snapshot(snap)
    assert snap_lv not in all_lvs(cluster)
    drv.terminate_connection(src, {'host': 'compute-1'})
    assert where_active(spec, src.name) == []


# -- revert --

def test_revert_refusals_and_lvm_without_device_mapper(
        cinder, cluster, volumes, tmp_path):
    drv, create, _ = volumes
    spec = spec_of(cluster)
    vol, other = create(cinder), create(cinder)
    snap = snapshot_of(cinder, vol)
    snap_lv = '_' + snap.name
    Client(cluster['volume-1'].socket).call(
        'create', vg=spec['vg'], lv=snap_lv, size=8 << 20)
    make_snapshot(cluster, vol.name, snap_lv, tmp_path)
    exc = cinder.exception
    try:
        # Attached (read-only: the loop backend writes no origin with
        # snapshots): refused by the driver and the daemon, naming it.
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='has snapshots: writes through a loop '
                                 'device would bypass'):
            drv.initialize_connection(vol, {'host': 'compute-1'})
        drv.initialize_connection(vol, {'host': 'compute-1', 'mode': 'ro'})
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='attached on compute-1'):
            drv.revert_to_snapshot(cinder.ctx, vol, snap)
        with pytest.raises(errors.LeaseConflict,
                           match='attached on compute-1: detach'):
            Client(cluster['volume-1'].socket).call(
                'revert', vg=spec['vg'], lv=vol.name, snapshot=snap_lv)
        drv.terminate_connection(vol, {'host': 'compute-1'})
        # Not this volume's snapshot.
        with pytest.raises(exc.InvalidSnapshot,
                           match=f'not a snapshot of {other.name}'):
            drv.revert_to_snapshot(cinder.ctx, other, snap)
        # Detached: the daemon runs lvconvert --merge, which needs
        # device-mapper; LVM's reason, nothing changed.
        before = disk_state(spec)
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='Missing support in kernel'):
            drv.revert_to_snapshot(cinder.ctx, vol, snap)
        assert disk_state(spec)[1] == before[1]
        assert all_lvs(cluster)[snap_lv].startswith('s')  # not merging
    finally:
        drop_snapshots(cluster, vol.name, tmp_path)
        Client(cluster['volume-1'].socket).call('delete', vg=spec['vg'],
                                                lv=snap_lv)


def test_pending_merge_after_a_revert(cinder, cluster, volumes, tmp_path,
                                      caplog):
    drv, create, _ = volumes
    spec = spec_of(cluster)
    daemon = Client(cluster['volume-1'].socket)
    vol = create(cinder)
    snap, backup = snapshot_of(cinder, vol), snapshot_of(cinder, vol)
    snap_lv, backup_lv = '_' + snap.name, '_' + backup.name
    for lv in (snap_lv, backup_lv):
        daemon.call('create', vg=spec['vg'], lv=lv, size=8 << 20)
    # What lvconvert --merge leaves on a device-mapper host: the snapshot
    # hidden, merging into its inactive origin; another snapshot beside.
    make_snapshot(cluster, vol.name, snap_lv, tmp_path, merging=True)
    make_snapshot(cluster, vol.name, backup_lv, tmp_path)
    exc = cinder.exception
    try:
        lvs = all_lvs(cluster)
        assert lvs[vol.name].startswith('O') and \
            lvs[f'[{snap_lv}]'].startswith('S')
        assert daemon.call('show', vg=spec['vg'],
                           lv=vol.name)['merging'] == snap_lv
        # The loop backend cannot merge: an attach is refused, saying
        # why, rather than showing the data from before the revert.
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='pending merge of snapshot ' + snap_lv):
            drv.initialize_connection(vol, {'host': 'compute-1'})
        assert holders(cluster, vol.name) == []
        assert where_active(spec, vol.name) == []
        # Reverting again to it: already pending, nothing to do.
        drv.revert_to_snapshot(cinder.ctx, vol, snap)
        # A volume from it, or a new snapshot: refused with the reason.
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='merged into .* by a revert'):
            drv.create_volume_from_snapshot(new_volume(cinder), snap)
        with pytest.raises(exc.VolumeBackendAPIException,
                           match='pending revert'):
            drv.create_snapshot(snapshot_of(cinder, vol))
        # Cinder deletes the other snapshot: removed; and the reverted-to
        # one: a success that leaves it to the merge (an lvremove now
        # would cancel the revert: LVM allows it on an inactive origin).
        drv.delete_snapshot(backup)
        assert backup_lv not in all_lvs(cluster)
        caplog.set_level(logging.INFO, 'driver.volume')
        drv.delete_snapshot(snap)
        assert 'would cancel the revert' in caplog.text
        assert all_lvs(cluster)[f'[{snap_lv}]'].startswith('S')
        assert all_lvs(cluster)[vol.name].startswith('O')
    finally:
        drop_snapshots(cluster, vol.name, tmp_path)
        for lv in (snap_lv, backup_lv):
            if lv in all_lvs(cluster):
                daemon.call('delete', vg=spec['vg'], lv=lv)
