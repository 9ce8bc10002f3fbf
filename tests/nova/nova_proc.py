"""Nova 34's own functional harness (API, conductor, scheduler, placement,
libvirt computes compute-1 and compute-2 over fakelibvirt) with no Cinder
fixture: Nova's real cinder client calls the Cinder API at argv[1]. Runs
in the Nova virtualenv; reads one JSON command a line on stdin, answers
one JSON line on stdout (events of a paused flow too)."""
import json
import logging
import mmap
import os
import select
import sys
import time
from unittest import mock
from xml.etree import ElementTree

import fixtures
from keystoneauth1 import loading as ks_loading
from nova import context as nova_context
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base
from nova.virt.libvirt import utils as libvirt_utils
from oslo_utils import fileutils

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


class CinderHeaders:
    """Nova's API app as Cinder calls it: the harness's stubbed keystone
    context reads the user, project and roles from the headers its own
    client sets; Cinder's novaclient sends only a token, here
    ``<user>:<project>`` (noauth's form). Mapped onto those headers, with
    the admin role Nova's swap policy asks for (``service_or_admin``; a
    real Cinder brings a service token)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        user, _, project = environ.get('HTTP_X_AUTH_TOKEN', '').partition(
            ':')
        environ.update({'HTTP_X_AUTH_USER': user, 'HTTP_X_USER_ID': user,
                        'HTTP_X_AUTH_PROJECT_ID': project,
                        'HTTP_X_ROLES': 'reader,member,admin'})
        return self.app(environ, start_response)


def serve_http(app):
    """Serve ``app`` on a port of 127.0.0.1 in a green thread of Nova's
    eventlet hub (as nova-api under eventlet): its URL."""
    import eventlet
    from eventlet import wsgi
    sock = eventlet.listen(('127.0.0.1', 0))
    eventlet.spawn(wsgi.server, sock, CinderHeaders(app),
                   log=logging.getLogger('nova-http'), log_output=True)
    return sock, f'http://127.0.0.1:{sock.getsockname()[1]}/v2.1'


def copy_device(src, dst):
    """What qemu's block copy does: every byte of ``src`` onto ``dst``,
    unbuffered (the test side writes and reads unbuffered too), synced
    at the end."""
    chunk = 16 << 20
    buf = mmap.mmap(-1, chunk)
    fin = os.open(src, os.O_RDONLY | os.O_DIRECT)
    fout = os.open(dst, os.O_WRONLY | os.O_DIRECT)
    try:
        size = os.lseek(fin, 0, os.SEEK_END)
        for offset in range(0, size, chunk):
            n = os.preadv(fin, [buf], offset)
            os.pwritev(fout, [memoryview(buf)[:n]], offset)
        os.fsync(fout)
        return size
    finally:
        os.close(fin)
        os.close(fout)


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
            # The harness keeps its log to show on failure: stderr (the
            # tier's nova.log) gets it as it goes.
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter(
                '%(asctime)s %(levelname)s [%(name)s] %(message)s'))
            logging.getLogger().addHandler(handler)

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
            # fakelibvirt sends no device-removed event: Nova waits this
            # long for it, then finds the disk gone from the live domain
            # (as Nova's own test_pci_sriov_servers sets it).
            self.flags(device_detach_timeout=1, group='libvirt')
            self.flags(api_paste_config=os.path.join(
                sys.prefix, 'etc', 'nova', 'api-paste.ini'), group='wsgi')
            super()._setup_services()

        def start_host(self, host):
            """A compute whose connector names ``host``."""
            self.start_compute(hostname=host)
            self._name_connector(host)

        def _name_connector(self, host):
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
            # The harness mocks the image backend's _create_image away,
            # and with it the instance directory it makes: a cold
            # migration renames that directory (shared instances path:
            # both computes have this process's) before copying the
            # (here: no) local disks. Made as the real one makes it;
            # nothing of the volumes is touched.
            self.stub_out('nova.virt.libvirt.LibvirtDriver._create_image',
                          self._create_image)
            # fakelibvirt's block copy copies nothing and never pivots:
            # the swap's copy and pivot as libvirt does them.
            self.stub_out('nova.tests.fixtures.libvirt.Domain.blockCopy',
                          self._block_copy)
            self.stub_out('nova.tests.fixtures.libvirt.Domain.blockJobAbort',
                          self._block_job_abort)
            # Cinder calls Nova's API over HTTP (swap volume): the
            # harness's app, also on a real port.
            sock, url = serve_http(self.api_fixture.app())
            self.addCleanup(sock.close)
            say({'ready': True, 'url': url})
            while True:
                cmd = hear()
                if cmd is None or cmd['op'] == 'quit':
                    return
                try:
                    say({'ok': getattr(self, 'op_' + cmd.pop('op'))(**cmd)})
                except Exception as e:  # reported to the test side
                    say({'error': f'{type(e).__name__}: {e}'})

        @staticmethod
        def _create_image(driver, context, instance, *args, **kwargs):
            fileutils.ensure_tree(libvirt_utils.get_instance_path(instance))
            return False, False

        # -- block copy (swap volume) in fakelibvirt --

        copies = {}

        @staticmethod
        def _disk(domain, dev):
            return next(d for d in domain._def['devices']['disks']
                        if d['target_dev'] == dev)

        def _block_copy(self, domain, disk, destxml, flags=0):
            """Copy the disk's device onto the destination's, as the
            mirror job does before it is ready to pivot."""
            source = ElementTree.fromstring(destxml).find('./source')
            dest = source.get('dev') or source.get('file')
            src = self._disk(domain, disk)['source']
            size = copy_device(src, dest)
            logging.getLogger(__name__).info(
                'block copy of %s: %s to %s, %d bytes', disk, src, dest, size)
            self.copies[(domain.UUIDString(), disk)] = dest
            return 0

        def _block_job_abort(self, domain, disk, flags=0):
            """With pivot: the disk's source is the copy's destination."""
            dest = self.copies.pop((domain.UUIDString(), disk), None)
            if dest and flags & fakelibvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT:
                self._disk(domain, disk)['source'] = dest

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
                    'host': server.get('OS-EXT-SRV-ATTR:host'),
                    'flavor': server['flavor'].get('original_name')}

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
            return self._view(self._state(server, state))

        def _migration(self, server, statuses, timeout=180):
            """The server's newest migration once its status is one of
            ``statuses`` (fails on error/failed)."""
            deadline = time.monotonic() + timeout
            while True:
                got = [m for m in self.api.api_get('/os-migrations').body[
                    'migrations'] if m['instance_uuid'] == server]
                last = max(got, key=lambda m: m['id']) if got else None
                if last and last['status'] in statuses:
                    return last
                if last and last['status'] in ('error', 'failed') or \
                        time.monotonic() > deadline:
                    raise AssertionError(f'migration of {server}: {last}')
                time.sleep(0.2)

        def _state(self, server, status, timeout=180):
            """The server once its status is ``status`` (fails on
            ERROR)."""
            deadline = time.monotonic() + timeout
            while True:
                srv = self.api.get_server(server)
                if srv['status'] == status and not srv.get(
                        'OS-EXT-STS:task_state'):
                    return srv
                if srv['status'] == 'ERROR' or time.monotonic() > deadline:
                    raise AssertionError(
                        f'server {server}: {srv["status"]} '
                        f'{srv.get("fault")}, not {status}')
                time.sleep(0.2)

        def op_flavor(self, name, memory_mb=1024, vcpu=1):
            """A new flavor (no local root or ephemeral disk): its id."""
            return self._create_flavor(name=name, memory_mb=memory_mb,
                                       vcpu=vcpu, disk=0, ephemeral=0)

        def op_delete_flavor(self, flavor):
            self.api.delete_flavor(flavor)
            return True

        def op_migrate(self, server, body, state='VERIFY_RESIZE'):
            """A cold migration or resize (``body``: the action); waits
            for the migration to be finished and the server's
            ``state``."""
            self.api.post_server_action(server, body)
            migration = self._migration(server, ['finished', 'done'])
            return dict(self._view(self._state(server, state)),
                        migration=migration['status'],
                        source=migration['source_compute'],
                        dest=migration['dest_compute'])

        def op_evacuate(self, server, host):
            """Evacuate ``server`` from its dead host (its nova-compute
            stopped and forced down, as Nova's own evacuate tests do) to
            ``host``."""
            src = self._host_of(server)
            self.computes[src].stop()
            self._force_down(src, True)
            self.api.post_server_action(server, {'evacuate': {'host': host}})
            migration = self._migration(server, ['done'])
            # Since 2.95 an evacuated server is left stopped.
            return dict(self._view(self._state(server, 'SHUTOFF')),
                        migration=migration['status'],
                        source=migration['source_compute'])

        def _force_down(self, host, down):
            # PUT /os-services/{id} (2.53+), as the API asks.
            service = self.api.get_services(
                host=host, binary='nova-compute')[0]
            self.api.put_service_force_down(service['id'], down)

        def op_revive(self, host):
            """Start ``host``'s nova-compute again (it destroys what was
            evacuated from it) and lift its forced down."""
            self.restart_compute_service(host)
            self._name_connector(host)
            self._force_down(host, False)
            return True

        def op_swap(self, server, old, new):
            """Nova's swap volume API (PUT os-volume_attachments/{old})."""
            self.api.put_server_volume(server, old, new)
            return True

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
