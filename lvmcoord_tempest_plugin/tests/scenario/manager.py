"""Base class of the lvmcoord multi-node scenario tests.

Every test puts servers on two different compute hosts (an anti-affinity
server group, so the primary user needs no admin rights to boot them),
moves an lvmcoord volume between them, and checks inside the guests, over
ssh, that the bytes written on one host are read back on the other.
"""
import json

from oslo_log import log as logging
from tempest import config
from tempest.common import waiters
from tempest.lib import exceptions as lib_exc
from tempest.lib.common import api_version_request
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils import test_utils
from tempest.scenario import manager

CONF = config.CONF
LOG = logging.getLogger(__name__)


class LvmcoordMultinodeTest(manager.ScenarioTest):
    """Servers on two compute hosts sharing the lvmcoord VG."""

    credentials = ['primary', 'admin']

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.service_available.lvmcoord:
            raise cls.skipException('lvmcoord is not deployed')
        if not (CONF.service_available.cinder and
                CONF.service_available.nova):
            raise cls.skipException('Cinder and Nova are required')
        if not CONF.lvmcoord.run_multinode_tests:
            raise cls.skipException(
                '[lvmcoord] run_multinode_tests is False')
        if CONF.compute.min_compute_nodes < 2:
            raise cls.skipException(
                'Less than 2 compute nodes, skipping multinode tests.')

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.admin_servers_client = cls.os_admin.servers_client
        cls.admin_volumes_client = cls.os_admin.volumes_client_latest
        cls.server_groups_client = cls.os_primary.server_groups_client

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        # The configuration may promise two hosts the cloud does not have.
        cls.compute_hosts = cls._usable_compute_hosts()
        if len(cls.compute_hosts) < 2:
            raise cls.skipException(
                'The cloud has %d usable compute host(s) (%s); these tests '
                'need two.' % (len(cls.compute_hosts),
                               ', '.join(cls.compute_hosts) or 'none'))

    @classmethod
    def _usable_compute_hosts(cls):
        services = cls.os_admin.services_client.list_services(
            binary='nova-compute')['services']
        avoid = CONF.compute.target_hosts_to_avoid
        zone = CONF.compute.compute_volume_common_az
        return sorted(
            svc['host'] for svc in services
            if svc['state'] == 'up' and svc['status'] == 'enabled'
            and not (avoid and avoid in svc['host'])
            and not (zone and svc['zone'] != zone))

    # Servers

    def setUp(self):
        super().setUp()
        self.keypair = self.create_keypair()
        self.security_group = self.create_security_group()

    def create_anti_affinity_group(self):
        name = data_utils.rand_name(
            prefix=CONF.resource_name_prefix,
            name=self.__class__.__name__ + '-group')
        version = api_version_request.APIVersionRequest(
            self.compute_request_microversion)
        if version >= api_version_request.APIVersionRequest('2.64'):
            kwargs = {'policy': 'anti-affinity'}
        else:
            kwargs = {'policies': ['anti-affinity']}
        group = self.server_groups_client.create_server_group(
            name=name, **kwargs)['server_group']
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.server_groups_client.delete_server_group,
                        group['id'])
        return group

    def boot_server(self, group=None, **kwargs):
        """An ACTIVE server (in ``group`` if given) we can ssh to."""
        if group is not None:
            kwargs['scheduler_hints'] = {'group': group['id']}
        return self.create_server(
            key_name=self.keypair['name'],
            security_groups=[{'name': self.security_group['name']}],
            **kwargs)

    def boot_servers_on_two_hosts(self):
        group = self.create_anti_affinity_group()
        first = self.boot_server(group)
        second = self.boot_server(group)
        hosts = (self.get_host_for_server(first['id']),
                 self.get_host_for_server(second['id']))
        self.assertNotEqual(hosts[0], hosts[1],
                            'anti-affinity put both servers on %s' % hosts[0])
        return first, second

    def ssh(self, server):
        ip = self.get_server_ip(server)
        return self.get_remote_client(
            ip, private_key=self.keypair['private_key'], server=server)

    def live_migrate(self, server, dest_host):
        """Live migrate to ``dest_host``; nova picks block migration for
        local disks ('auto', microversion 2.25), volumes are handed over.
        """
        self.admin_servers_client.live_migrate_server(
            server['id'], host=dest_host, block_migration='auto')
        waiters.wait_for_server_status(self.servers_client, server['id'],
                                       'ACTIVE')
        self.assertEqual(dest_host, self.get_host_for_server(server['id']),
                         'live migration of %s did not reach %s'
                         % (server['id'], dest_host))

    def other_host(self, host):
        return next(h for h in self.compute_hosts if h != host)

    # Volumes

    def create_lvmcoord_volume(self, **kwargs):
        kwargs.setdefault('size', CONF.lvmcoord.volume_size)
        return self.create_volume(volume_type=CONF.lvmcoord.volume_type,
                                  **kwargs)

    def attach_and_find_disk(self, server, ssh, volume):
        """Attach ``volume``; return the guest's name for it (e.g. vdb)."""
        before = set(ssh.list_disks())
        self.nova_volume_attach(server, volume)

        def new_disks():
            return set(ssh.list_disks()) - before

        if not test_utils.call_until_true(
                lambda: bool(new_disks()), CONF.compute.build_timeout,
                CONF.compute.build_interval):
            raise lib_exc.TimeoutException(
                'volume %s never showed up in server %s'
                % (volume['id'], server['id']))
        disks = sorted(new_disks())
        # virtio-blk exposes the first 20 characters of the volume id.
        for disk in disks:
            serial = ssh.exec_command(
                'cat /sys/block/%s/serial 2>/dev/null || true' % disk)
            if serial.strip() and volume['id'].startswith(serial.strip()):
                return disk
        self.assertEqual(1, len(disks),
                         'cannot tell which of %s is volume %s'
                         % (disks, volume['id']))
        return disks[0]

    def detach(self, server, volume):
        self.nova_volume_detach(server, volume)
        waiters.wait_for_volume_resource_status(self.volumes_client,
                                                volume['id'], 'available')

    def revert_to_snapshot(self, volume, snapshot):
        """Cinder's revert (API 3.40; tempest has no client call for it):
        the volume is back to available once the driver has marked the
        merge, which the volume's next activation performs."""
        resp, _ = self.volumes_client.post(
            'volumes/%s/action' % volume['id'],
            json.dumps({'revert': {'snapshot_id': snapshot['id']}}),
            headers={'OpenStack-API-Version': 'volume 3.40'},
            extra_headers=True)
        self.volumes_client.expected_success(202, resp.status)
        waiters.wait_for_volume_resource_status(self.volumes_client,
                                                volume['id'], 'available')

    # Data in the guest

    def write_pattern(self, ssh, disk, offset_mb=0):
        """Write random data to the raw disk; return its md5 as read back
        from the device (guest page cache dropped)."""
        size = CONF.lvmcoord.data_size_mb
        ssh.exec_command(
            'sudo dd if=/dev/urandom of=/dev/%s bs=1M count=%d seek=%d '
            '2>/dev/null && sync' % (disk, size, offset_mb))
        return self.read_pattern(ssh, disk, offset_mb)

    def read_pattern(self, ssh, disk, offset_mb=0):
        size = CONF.lvmcoord.data_size_mb
        out = ssh.exec_command(
            "sudo sh -c 'echo 3 > /proc/sys/vm/drop_caches'; "
            'sudo dd if=/dev/%s bs=1M count=%d skip=%d 2>/dev/null '
            '| md5sum' % (disk, size, offset_mb))
        return out.split()[0]

    def write_file(self, ssh, path):
        """Random data in a file of the guest's root filesystem."""
        ssh.exec_command(
            'sudo dd if=/dev/urandom of=%s bs=1M count=%d 2>/dev/null '
            '&& sync' % (path, CONF.lvmcoord.data_size_mb))
        return self.read_file(ssh, path)

    def read_file(self, ssh, path):
        out = ssh.exec_command(
            "sudo sh -c 'echo 3 > /proc/sys/vm/drop_caches'; "
            'sudo md5sum %s' % path)
        return out.split()[0]

    def disk_size_bytes(self, ssh, disk):
        return int(ssh.exec_command('cat /sys/block/%s/size' % disk)) * 512
