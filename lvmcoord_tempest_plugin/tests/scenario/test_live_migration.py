"""Live migration of servers whose disks are lvmcoord volumes."""
from tempest import config
from tempest.common import utils
from tempest.lib import decorators
import testtools

from lvmcoord_tempest_plugin.tests.scenario import manager

CONF = config.CONF


class TestLiveMigrationSharedVG(manager.LvmcoordMultinodeTest):
    """The volume stays on the shared VG; only its activation moves.

    While nova migrates, the LV is active on both hosts under a migration
    lease bound to the instance; afterwards only on the destination.
    """

    # block_migration='auto' lets nova copy local disks and hand over
    # volumes, whatever the cloud's instance storage is.
    compute_min_microversion = '2.25'

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.compute_feature_enabled.live_migration:
            raise cls.skipException('Live migration is not available')

    @decorators.idempotent_id('daaa045f-c04d-48a4-93da-74db8ea95d9e')
    @decorators.attr(type='multinode')
    @testtools.skipUnless(
        CONF.compute_feature_enabled.volume_backed_live_migration,
        'Volume-backed live migration is not available')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_volume_backed_live_migration_data_intact(self):
        volume = self.create_lvmcoord_volume(
            imageRef=CONF.compute.image_ref,
            size=max(CONF.lvmcoord.volume_size, CONF.volume.volume_size))
        server = self.boot_instance_from_resource(
            source_id=volume['id'], source_type='volume',
            keypair=self.keypair, security_group=self.security_group)
        source = self.get_host_for_server(server['id'])
        written = self.write_file(self.ssh(server), '/lvmcoord-before')

        self.live_migrate(server, self.other_host(source))
        ssh = self.ssh(server)
        self.assertEqual(written, self.read_file(ssh, '/lvmcoord-before'),
                         'root disk data changed across the live migration')
        written_dest = self.write_file(ssh, '/lvmcoord-after')

        self.live_migrate(server, source)
        ssh = self.ssh(server)
        self.assertEqual(written_dest,
                         self.read_file(ssh, '/lvmcoord-after'))
        self.assertEqual(written, self.read_file(ssh, '/lvmcoord-before'))

    @decorators.idempotent_id('a55ab34c-8762-4573-a14d-390e2ab8cc7c')
    @decorators.attr(type='multinode')
    @utils.services('compute', 'volume', 'network', 'image')
    def test_live_migration_with_attached_volume_data_intact(self):
        server = self.boot_server()
        ssh = self.ssh(server)
        volume = self.create_lvmcoord_volume()
        disk = self.attach_and_find_disk(server, ssh, volume)
        written = self.write_pattern(ssh, disk)
        source = self.get_host_for_server(server['id'])

        self.live_migrate(server, self.other_host(source))
        ssh = self.ssh(server)
        self.assertEqual(written, self.read_pattern(ssh, disk),
                         'attached volume data changed across the live '
                         'migration')
        offset = CONF.lvmcoord.data_size_mb
        written_dest = self.write_pattern(ssh, disk, offset_mb=offset)
        self.assertEqual(written_dest,
                         self.read_pattern(ssh, disk, offset_mb=offset))

        # The source released the volume: it can go back and detach cleanly.
        self.live_migrate(server, source)
        ssh = self.ssh(server)
        self.assertEqual(written_dest,
                         self.read_pattern(ssh, disk, offset_mb=offset))
        self.detach(server, volume)
