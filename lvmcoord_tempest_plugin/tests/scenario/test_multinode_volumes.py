"""Volumes on the shared VG moving between compute hosts."""
from tempest import config
from tempest.common import utils
from tempest.common import waiters
from tempest.lib import decorators
import testtools

from lvmcoord_tempest_plugin.tests.scenario import manager

CONF = config.CONF


class TestVolumeAcrossHosts(manager.LvmcoordMultinodeTest):
    """Data written on one host is read on the other.

    Each host activates the LV only while it holds its lease; the guest on
    the second host must see exactly what the guest on the first wrote.
    """

    @decorators.idempotent_id('9af406a5-985c-4ba4-8e49-3ee6cba1f168')
    @decorators.attr(type='multinode')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_attach_write_detach_attach_other_host(self):
        first, second = self.boot_servers_on_two_hosts()
        ssh_first, ssh_second = self.ssh(first), self.ssh(second)
        volume = self.create_lvmcoord_volume()

        disk = self.attach_and_find_disk(first, ssh_first, volume)
        written = self.write_pattern(ssh_first, disk)
        self.detach(first, volume)

        disk = self.attach_and_find_disk(second, ssh_second, volume)
        self.assertEqual(written, self.read_pattern(ssh_second, disk),
                         'data written on the first host is not what the '
                         'second host reads')
        # And back: the first host must see what the second one wrote.
        offset = CONF.lvmcoord.data_size_mb
        written_back = self.write_pattern(ssh_second, disk, offset_mb=offset)
        self.detach(second, volume)
        disk = self.attach_and_find_disk(first, ssh_first, volume)
        self.assertEqual(written_back,
                         self.read_pattern(ssh_first, disk, offset_mb=offset))
        self.assertEqual(written, self.read_pattern(ssh_first, disk))

    @decorators.idempotent_id('3da3ac1c-15a3-4045-8a67-819869df7031')
    @decorators.attr(type='multinode')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_extend_detached_volume_attach_other_host(self):
        first, second = self.boot_servers_on_two_hosts()
        ssh_first, ssh_second = self.ssh(first), self.ssh(second)
        volume = self.create_lvmcoord_volume()

        disk = self.attach_and_find_disk(first, ssh_first, volume)
        written = self.write_pattern(ssh_first, disk)
        self.detach(first, volume)

        new_size = volume['size'] + 1
        self.volumes_client.extend_volume(volume['id'], new_size=new_size)
        waiters.wait_for_volume_resource_status(self.volumes_client,
                                                volume['id'], 'available')
        volume = self.volumes_client.show_volume(volume['id'])['volume']
        self.assertEqual(new_size, volume['size'])

        disk = self.attach_and_find_disk(second, ssh_second, volume)
        self.assertEqual(new_size * 1024 ** 3,
                         self.disk_size_bytes(ssh_second, disk),
                         'the guest on the other host does not see the '
                         'extended size')
        self.assertEqual(written, self.read_pattern(ssh_second, disk))
        # The new space is usable too.
        tail = new_size * 1024 - CONF.lvmcoord.data_size_mb
        written_tail = self.write_pattern(ssh_second, disk, offset_mb=tail)
        self.assertEqual(written_tail,
                         self.read_pattern(ssh_second, disk, offset_mb=tail))

    @decorators.idempotent_id('012f1c46-aafc-4cb2-95f3-b1c8926b4610')
    @decorators.attr(type='multinode')
    @testtools.skipUnless(CONF.volume_feature_enabled.snapshot,
                          'Cinder volume snapshots are disabled')
    @testtools.skipUnless(CONF.lvmcoord.snapshot_in_use,
                          'Snapshots of in-use lvmcoord volumes are disabled')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_snapshot_in_use_volume_restore_other_host(self):
        first, second = self.boot_servers_on_two_hosts()
        ssh_first, ssh_second = self.ssh(first), self.ssh(second)
        volume = self.create_lvmcoord_volume()

        disk = self.attach_and_find_disk(first, ssh_first, volume)
        written = self.write_pattern(ssh_first, disk)
        # The LV is active on the first host: the snapshot is taken there.
        snapshot = self.create_volume_snapshot(volume['id'], force=True)
        # Writes after the snapshot must not leak into it.
        self.write_pattern(ssh_first, disk)

        # Whichever host the first server landed on: the daemons copy the
        # snapshot there (its exceptions live in that host's
        # device-mapper), not on the volume host.
        restored = self.create_lvmcoord_volume(snapshot_id=snapshot['id'],
                                               size=volume['size'])
        disk = self.attach_and_find_disk(second, ssh_second, restored)
        self.assertEqual(written, self.read_pattern(ssh_second, disk),
                         'the volume made from the snapshot does not hold '
                         'the data of the moment of the snapshot')

    @decorators.idempotent_id('9fadbc00-7cfd-415b-9b49-4dd6624721e6')
    @decorators.attr(type='multinode')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_clone_in_use_volume_read_other_host(self):
        first, second = self.boot_servers_on_two_hosts()
        ssh_first, ssh_second = self.ssh(first), self.ssh(second)
        volume = self.create_lvmcoord_volume()

        disk = self.attach_and_find_disk(first, ssh_first, volume)
        written = self.write_pattern(ssh_first, disk)
        # Attached on the first host: the daemons copy there, from a
        # temporary snapshot taken there; the guest keeps its disk.
        clone = self.create_lvmcoord_volume(source_volid=volume['id'],
                                            size=volume['size'])
        self.assertEqual(written, self.read_pattern(ssh_first, disk),
                         'the guest lost its disk while it was cloned')

        disk = self.attach_and_find_disk(second, ssh_second, clone)
        self.assertEqual(written, self.read_pattern(ssh_second, disk),
                         'the clone of the in-use volume does not hold what '
                         'the guest had written')

    @decorators.idempotent_id('39e18348-7e96-41f2-b3f8-ed9076d86b08')
    @decorators.attr(type='multinode')
    @testtools.skipUnless(CONF.volume_feature_enabled.snapshot,
                          'Cinder volume snapshots are disabled')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_revert_to_snapshot_read_other_host(self):
        first, second = self.boot_servers_on_two_hosts()
        ssh_first, ssh_second = self.ssh(first), self.ssh(second)
        volume = self.create_lvmcoord_volume()

        disk = self.attach_and_find_disk(first, ssh_first, volume)
        written = self.write_pattern(ssh_first, disk)
        self.detach(first, volume)
        snapshot = self.create_volume_snapshot(volume['id'])
        disk = self.attach_and_find_disk(first, ssh_first, volume)
        self.write_pattern(ssh_first, disk)
        self.detach(first, volume)

        # A detached volume: the merge is marked now and performed by the
        # next activation, here on the other host, before any guest I/O.
        self.revert_to_snapshot(volume, snapshot)
        disk = self.attach_and_find_disk(second, ssh_second, volume)
        self.assertEqual(written, self.read_pattern(ssh_second, disk),
                         'the reverted volume does not hold the data of the '
                         'moment of the snapshot')
