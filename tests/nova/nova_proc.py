"""Nova 34's own functional harness (API, conductor, scheduler, placement,
libvirt computes compute-1 and compute-2 over fakelibvirt) with no Cinder
fixture: Nova's real cinder client calls the Cinder API at argv[1]. Runs
in the Nova virtualenv; reads one JSON command a line on stdin, answers
one JSON line on stdout (events of a paused flow too)."""
import json
import os
import select
import sys
import time
from unittest import mock

import fixtures
from keystoneauth1 import loading as ks_loading
from nova import context as nova_context
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional.libvirt import base

HOSTS = ('compute-1', 'compute-2')
OUT = sys.stdout


def say(obj):
    """One JSON line to the test side."""
    OUT.write(json.dumps(obj) + '\n')
    OUT.flush()


def hear():
    """One JSON line from the test side (None at end of input)."""
    # Waited on without blocking eventlet's hub, if Nova runs one.
    while not select.select([sys.stdin], [], [], 0)[0]:
        time.sleep(0.05)
    line = sys.stdin.readline()
    return json.loads(line) if line else None


class NoCinder(fixtures.Fixture):
    """In place of the harness's CinderFixture: nothing."""

    def __init__(self, test):
        super().__init__()


def serve_case(cinder_url, project):
    """The harness configured for the real Cinder at ``cinder_url``."""

    class NovaServe(base.ServersTestBase):
        ADMIN_API = True
        microversion = 'latest'

        def setUp(self):
            p = mock.patch.object(nova_fixtures, 'CinderFixture', NoCinder)
            p.start()
            self.addCleanup(p.stop)
            super().setUp()

        def _setup_services(self):
            loader = ks_loading.get_plugin_loader('admin_token')
            opts = [o._to_oslo_opt() for o in loader.get_options()]
            from nova import conf
            conf.CONF.register_opts(
                [o for o in opts if o.dest not in conf.CONF.cinder],
                group='cinder')
            self.flags(endpoint_template=cinder_url + '/v3/%(project_id)s',
                       auth_type='admin_token', token=f'admin:{project}',
                       endpoint=cinder_url, group='cinder')
            self.flags(api_paste_config=os.path.join(
                sys.prefix, 'etc', 'nova', 'api-paste.ini'), group='wsgi')
            super()._setup_services()

        def start_host(self, host):
            """A compute whose connector names ``host``."""
            self.start_compute(hostname=host)
            drv = self.computes[host].driver
            own = drv.get_volume_connector
            drv.get_volume_connector = (
                lambda instance: dict(own(instance), host=host))

        def test_serve(self):
            for host in HOSTS:
                self.start_host(host)
            self.migrate_mode = 'complete'
            self.stub_out('nova.tests.fixtures.libvirt.Domain.migrateToURI3',
                          self._migrate)
            say({'ready': True})
            while True:
                cmd = hear()
                if cmd is None or cmd['op'] == 'quit':
                    return
                try:
                    say({'ok': getattr(self, 'op_' + cmd.pop('op'))(**cmd)})
                except Exception as e:  # reported to the test side
                    say({'error': f'{type(e).__name__}: {e}'})

        # -- live migration in fakelibvirt --

        def _migrate(self, domain, destination, params, flags):
            """The guest runs on both hosts: the test side looks, then the
            job completes or fails (migrate_mode)."""
            server = domain.UUIDString()
            say({'event': 'migrating', 'server': server})
            hear()
            if self.migrate_mode == 'fail':
                domain.fail_job()
                return
            dest = next(h for h in HOSTS if h != self._host_of(server))
            self.computes[dest].driver._host.get_connection().createXML(
                params['destination_xml'], 'fake')
            domain.complete_job()

        def _host_of(self, server):
            return self.api.get_server(server)['OS-EXT-SRV-ATTR:host']

        # -- operations --

        def _view(self, server):
            return {'id': server['id'], 'status': server['status'],
                    'host': server.get('OS-EXT-SRV-ATTR:host')}

        def op_boot(self, volume, host=None, name='vm', delete=False):
            """Boot a server from ``volume`` (on ``host``; the volume
            deleted with it if ``delete``)."""
            body = self._build_server(name=name, image_uuid='',
                                      networks='none', host=host)
            body['block_device_mapping_v2'] = [{
                'boot_index': 0, 'uuid': volume, 'source_type': 'volume',
                'destination_type': 'volume',
                'delete_on_termination': delete}]
            server = self._wait_for_state_change(
                self.api.post_server({'server': body}), 'ACTIVE')
            return self._view(server)

        def op_attach(self, server, volume):
            """Attach ``volume`` to ``server`` (no wait: casts are calls)."""
            self.api.post_server_volume(server, {'volumeAttachment': {
                'volumeId': volume}})
            return True

        def op_detach(self, server, volume):
            """Detach ``volume`` from ``server``."""
            self.api.delete_server_volume(server, volume)
            return True

        def op_live_migrate(self, server, host, fail=False):
            """Live migrate ``server`` to ``host``."""
            self.migrate_mode = 'fail' if fail else 'complete'
            srv = self.api.get_server(server)
            srv = self._live_migrate(
                srv, 'failed' if fail else 'completed', host=host)
            return self._view(srv)

        def op_delete(self, server):
            """Delete ``server`` and wait until it is gone."""
            self._delete_server({'id': server})
            return True

        def op_action(self, server, body, state, migration=None):
            """A server action; waits for ``migration``'s status and the
            server's ``state``."""
            srv = self.api.get_server(server)
            self.api.post_server_action(server, body)
            if migration:
                self._wait_for_migration_status(srv, [migration])
            return self._view(self._wait_for_state_change(srv, state))

        def op_boot_many(self, volumes, hosts):
            """Boot one server from each volume at once, round the hosts."""
            servers = []
            for i, volume in enumerate(volumes):
                body = self._build_server(name=f'many-{i}', image_uuid='',
                                          networks='none',
                                          host=hosts[i % len(hosts)])
                body['block_device_mapping_v2'] = [{
                    'boot_index': 0, 'uuid': volume, 'source_type': 'volume',
                    'destination_type': 'volume',
                    'delete_on_termination': True}]
                servers.append(self.api.post_server({'server': body}))
            return [self._view(self._wait_for_state_change(s, 'ACTIVE'))
                    for s in servers]

        def op_server(self, server):
            """The server as the API shows it."""
            return self._view(self.api.get_server(server))

        def op_bdms(self, server):
            """Nova's block device mappings of ``server``."""
            ctx = nova_context.get_admin_context()
            bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
                ctx, server)
            return sorted(
                [{'volume': b.volume_id, 'attachment': b.attachment_id,
                  'device_path': json.loads(b.connection_info or '{}').get(
                      'data', {}).get('device_path'),
                  'delete_on_termination': b.delete_on_termination}
                 for b in bdms if b.volume_id], key=lambda b: b['volume'])

    return NovaServe


def main():
    """Serve until the test side says quit."""
    import unittest
    global OUT
    # The harness and its services log to stdout: the protocol gets its
    # own descriptor.
    OUT = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    started = time.monotonic()
    case = serve_case(sys.argv[1], sys.argv[2])
    result = unittest.TextTestRunner(verbosity=2).run(case('test_serve'))
    print(f'nova process ran {time.monotonic() - started:.1f} s',
          file=sys.stderr)
    return 0 if result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main())
