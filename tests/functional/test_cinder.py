"""The Cinder driver against a sandbox cluster: private etcd, loop-backed
shared VG, one lvmcoordd per simulated host.

test_cinder_api drives Cinder's real API, scheduler and volume service
(Cinder's in-process harness) over REST. The harness needs eventlet's
monkey patching, which must not leak into this pytest session (the other
tests use real threads): it runs in a child process, this very module run
as a script. The other tests drive driver instances directly with Cinder's
objects, in this process, from threads.
"""
import concurrent.futures
import importlib
import json
import mmap
import os
import socket
import stat
import subprocess
import sys
import time
import types
import uuid

import pytest

from coordinator import errors
from coordinator.api.client import Client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SPEC_ENV = 'LVMCOORD_CINDER_SANDBOX'
NO_EVENTLET = 'OS_CINDER_DISABLE_EVENTLET_PATCHING'
HOSTS = ('volume-1', 'volume-2', 'compute-1', 'compute-2')
GiB = 1 << 30
BACKEND = 'lvmcoord'


# -- helpers shared by both processes --

def write_block(path, data, offset=0):
    """Write ``data`` unbuffered (another host reads it next)."""
    buf = mmap.mmap(-1, max(len(data), 4096))
    buf[:len(data)] = data
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
    try:
        os.pwritev(fd, [buf], offset)
    finally:
        os.close(fd)
        buf.close()


def read_block(path, size, offset=0):
    """Read ``size`` bytes unbuffered (this host's cache may be stale)."""
    buf = mmap.mmap(-1, max(size, 4096))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [buf], offset)
        return bytes(buf[:size])
    finally:
        os.close(fd)
        buf.close()


def is_block_device(path):
    """True if ``path`` leads to a block device."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def where_active(spec, lv):
    """Hosts whose device directory holds ``lv``."""
    return sorted(h for h, d in spec['hosts'].items()
                  if os.path.lexists(os.path.join(d['dev'], spec['vg'], lv)))


def disk_state(spec, lvm=None):
    """(seqno, LV names) of the VG as read from disk by host 0."""
    if lvm is None:
        from coordinator.lvm.executor import LVM
        lvm = LVM(system_dir=spec['system_dir'], activation=False)
    return lvm.vg(spec['vg'])['seqno'], sorted(
        lv['name'] for lv in lvm.lvs(spec['vg']))


def spec_of(cluster):
    """What a test needs to know of a sandbox cluster, as JSON data."""
    return {'vg': cluster.vg.vg,
            'backup_dir': os.path.join(cluster.dir, 'backups'),
            'system_dir': cluster.vg.hosts[0].system_dir,
            'hosts': {h: {'socket': d.socket,
                          'dev': os.path.join(d.dir, 'dev')}
                      for h, d in cluster.daemons.items()}}


def lvs_left(before, spec, expected=()):
    """LVs on disk now that were not in ``before`` and are not in
    ``expected``: what a test left in the VG."""
    return sorted(set(disk_state(spec)[1]) - set(before) - set(expected))


@pytest.fixture(scope='module')
def cluster():
    from coordinator.sandbox.cluster import Cluster
    # Sparse: 64 GiB of address space for 1 GiB volumes, little real disk.
    with Cluster(hosts=HOSTS, ttl=4, grace=1.0, vg_size=64 * GiB) as c:
        yield c


@pytest.fixture(autouse=True)
def vg_left_as_found(request):
    """Every test of a module on a shared cluster leaves the VG's LVs as
    it found them: none is an expected leftover (issue 22 item 14)."""
    if 'cluster' not in request.fixturenames:
        yield
        return
    spec = spec_of(request.getfixturevalue('cluster'))
    before = disk_state(spec)[1]
    yield
    left = lvs_left(before, spec)
    assert not left, f'{request.node.name} left LVs in the VG: {left}'


# -- through Cinder's API (child process) --

@pytest.mark.timeout(900)
def test_cinder_api(cluster):
    spec = spec_of(cluster)
    os.makedirs(spec['backup_dir'], exist_ok=True)
    env = dict(os.environ, **{SPEC_ENV: json.dumps(spec),
                              NO_EVENTLET: 'false'})
    proc = subprocess.run([sys.executable, '-m', 'tests.functional.'
                           'test_cinder'], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=850, check=False)
    report = proc.stdout[-30000:] + proc.stderr[-30000:]
    assert proc.returncode == 0, report
    assert 'OK' in proc.stderr, report


# Cinder's own volume tests (cinder.tests.functional.test_volumes) that
# leave their volume's LV in the VG, and why. Any other LV left is a leak.
NEVER_DELETES = ('creates a volume and never deletes it: the fake driver '
                 'and in-memory database it is written for need no cleanup')
CINDER_OWN_LEFTOVERS = {
    'test_create_volume_with_metadata': NEVER_DELETES,
    'test_create_volume_in_availability_zone': NEVER_DELETES,
    'test_create_and_update_volume': NEVER_DELETES,
    'test_create_volume_from_snapshot_inherits_voltype':
        'fails here (a snapshot needs device-mapper, which these machines '
        'lack) before it deletes its source volume',
}
# Cinder's own tests that cannot pass without device-mapper.
CINDER_OWN_FAILING = {
    'test_create_volume_from_snapshot_inherits_voltype':
        "Can't create snapshot without using device-mapper",
}


@pytest.mark.timeout(900)
def test_cinder_own_volume_tests(cluster, tmp_path):
    """Cinder's own functional volume tests pass with the driver, and the
    VG is left with one LV for each test that never deletes its volume,
    nothing else (removed after)."""
    spec = spec_of(cluster)
    before = disk_state(spec)[1]
    leftovers = tmp_path / 'leftovers.jsonl'
    env = dict(os.environ, **{SPEC_ENV: json.dumps(spec),
                              NO_EVENTLET: 'false'})
    proc = subprocess.run([sys.executable, '-m', 'tests.functional.'
                           'test_cinder', '--cinder-own', str(leftovers)],
                          cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=850, check=False)
    report = proc.stdout[-20000:] + proc.stderr[-20000:]
    runs = [json.loads(line) for line in leftovers.read_text().splitlines()]
    failed = [r['failed'] for r in runs if 'failed' in r]
    runs = [r for r in runs if 'test' in r]
    left = {r['test']: r['left'] for r in runs if r['left']}
    try:
        assert failed == [sorted(CINDER_OWN_FAILING)], report
        for why in CINDER_OWN_FAILING.values():
            assert why in report
        assert len(runs) > len(CINDER_OWN_LEFTOVERS), report
        assert sorted(left) == sorted(CINDER_OWN_LEFTOVERS), (left, report)
        # One LV each, the volume the test made (still in its database).
        for test, lvs in left.items():
            run = next(r for r in runs if r['test'] == test)
            assert lvs == ['volume-' + v for v in run['volumes']], run
        assert lvs_left(before, spec) == sorted(
            lv for lvs in left.values() for lv in lvs)
    finally:
        daemon = Client(spec['hosts']['volume-1']['socket'])
        for lv in lvs_left(before, spec):
            daemon.call('delete', vg=spec['vg'], lv=lv)


def api_case(spec):
    """Cinder's functional test base configured for the driver (built
    here so that pytest never collects it)."""
    from cinder import context as cinder_context
    from cinder.tests.functional import functional_helpers
    from cinder.tests.functional.api import client
    from cinder.volume import api as volume_api
    from cinder.volume import configuration
    from cinder.volume import driver as cinder_driver
    from cinder.volume import manager
    from oslo_config import cfg

    from driver import options

    vg, v1 = spec['vg'], spec['hosts']['volume-1']

    class CinderAPITest(functional_helpers._FunctionalTestBase):
        _osapi_version = '3.44'

        def _get_flags(self):
            # Options of a backend section exist once a Configuration
            # registered them; the manager's and the driver's.
            conf = configuration.Configuration(
                manager.volume_backend_opts + cinder_driver.volume_opts,
                config_group=BACKEND)
            options.register(conf)
            # Registers backup_posix_path.
            importlib.import_module('cinder.backup.drivers.posix')
            f = super()._get_flags()
            f['host'] = {'v': 'volume-1'}
            # The scheduler would wait up to a minute for a second report
            # of capabilities; the services share one heartbeat record
            # (Service.service_id is a class attribute): neither matters
            # here.
            f['scheduler_driver_init_wait_time'] = {'v': 1}
            f['service_down_time'] = {'v': 3600}
            # Cinder's backup service, for its host-side attaches.
            f['backup_driver'] = {
                'v': 'cinder.backup.drivers.posix.PosixBackupDriver'}
            f['backup_posix_path'] = {'v': spec['backup_dir']}
            for name, value in (
                    ('volume_driver', 'driver.volume.LvmcoordDriver'),
                    ('volume_backend_name', BACKEND),
                    ('lvmcoord_socket_path', v1['socket']),
                    ('volume_group', vg)):
                f[name] = {'v': value, 'g': BACKEND}
            return f

        def setUp(self):
            super().setUp()
            # Runs first among the cleanups, so it names this test (a
            # failed test's volumes stay: named here too).
            before = disk_state(spec)[1]
            self.addCleanup(self.check_left, before)
            # Attachments are deleted as Nova would (with its service
            # token): no Nova here to ask about them.
            self.mock_object(volume_api.API, 'is_service_request',
                             return_value=True)
            states = self.scheduler.manager.driver.host_manager.service_states
            deadline = time.monotonic() + 30
            while f'volume-1@{BACKEND}' not in states:
                self.assertLess(time.monotonic(), deadline,
                                'no capabilities from the volume service')
                time.sleep(0.1)

        def start_service(self, name, host=None, **kwargs):
            if name == 'volume':
                host, kwargs['service_name'] = f'volume-1@{BACKEND}', BACKEND
            return super().start_service(name, host=host, **kwargs)

        def _start_api_service(self):
            paste = os.path.join(sys.prefix, 'etc', 'cinder',
                                 'api-paste.ini')
            if not os.path.exists(paste):
                return super()._start_api_service()
            # pip puts Cinder's etc/ under the prefix, not where the
            # harness looks for it.
            cfg.CONF.api_paste_config = paste
            self.osapi = functional_helpers.service.WSGIService(
                'osapi_volume')
            self.osapi.start()
            self.auth_url = (f'http://{self.osapi.host}:{self.osapi.port}'
                             f'/v{self.osapi_version_major}')

        # -- helpers --

        # Where Cinder's own tests (run_cinder_own) record what each left.
        leftovers_file = None

        def check_left(self, before):
            """This test's own volumes are gone from the VG; for Cinder's
            own tests, what they left is recorded (test_cinder_own)."""
            if self.leftovers_file is None:
                self.assertEqual([], lvs_left(before, spec),
                                 f'{self.id()} left LVs in the VG')
                return
            # Cinder's tests end without waiting for their creates: let
            # the volume service finish before reading the disk.
            deadline = time.monotonic() + 120
            while any(v['status'] in ('creating', 'deleting')
                      for v in self.api.get_volumes()) and \
                    time.monotonic() < deadline:
                time.sleep(0.5)
            with open(self.leftovers_file, 'a') as f:
                f.write(json.dumps({
                    'test': self.id().rsplit('.', 1)[-1],
                    'left': lvs_left(before, spec),
                    'volumes': sorted(v['id'] for v in
                                      self.api.get_volumes())}) + '\n')

        def wait_volume(self, vid, want, timeout=180):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    vol = self.api.get_volume(vid)
                except client.OpenStackApiException404:
                    vol = {'status': 'deleted'}
                if vol['status'] == want:
                    return vol
                if vol['status'] in ('error', 'error_deleting',
                                     'error_extending') or \
                        time.monotonic() > deadline:
                    self.fail(f'volume {vid}: {vol["status"]}, not {want}')
                time.sleep(0.5)

        def wait_snapshot(self, sid, wanted, timeout=120):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    status = self.api.get_snapshot(sid)['status']
                except client.OpenStackApiException404:
                    status = 'deleted'
                if status in wanted:
                    return status
                if time.monotonic() > deadline:
                    self.fail(f'snapshot {sid}: {status}, not {wanted}')
                time.sleep(0.5)

        def create(self, size=1, **extra):
            vol = self.api.post_volume({'volume': dict(size=size, **extra)})
            return self.wait_volume(vol['id'], 'available')

        def lv(self, vid):
            return 'volume-' + vid

        def messages(self, vid):
            got = self.api.api_get('/messages')['messages']
            return [m for m in got if m['resource_uuid'] == vid]

        def attach(self, vid, instance, host):
            body = {'attachment': {
                'volume_uuid': vid, 'instance_uuid': instance,
                'connector': {'host': host, 'ip': '127.0.0.1',
                              'initiator': f'iqn.2024-01.test:{host}',
                              'platform': 'x86_64', 'os_type': 'linux',
                              'multipath': False, 'mountpoint': '/dev/vdb'}}}
            att = self.api.api_post('/attachments', body)['attachment']
            self.api.api_post(f'/attachments/{att["id"]}/action',
                              {'os-complete': {}},
                              check_response_status=[204])
            return att

        def detach(self, attachment_id):
            self.api.api_delete(f'/attachments/{attachment_id}')

        def holders(self, vid):
            shown = Client(v1['socket']).call('show', vg=vg,
                                              lv=self.lv(vid))
            return sorted((h['host'], h['mode']) for h in shown['holders'])

        def status_code(self, call, *args):
            with self.assertRaises(client.OpenStackApiException) as ctx:
                call(*args)
            return ctx.exception.response.status_code

        # -- tests --

        def test_lifecycle(self):
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            self.assertIn(lv, disk_state(spec)[1])
            # Extended before anything else is created: the LV stays one
            # range of the PV, as the loop activation backend needs.
            self.api.api_post(f'/volumes/{vid}/action',
                              {'os-extend': {'new_size': 2}})
            self.wait_volume(vid, 'available')
            self.assertEqual(2, self.api.get_volume(vid)['size'])
            info = Client(v1['socket']).call('show', vg=vg, lv=lv)
            self.assertEqual(2 * GiB, info['size'])
            # Data on it, through an attachment on compute-1.
            att = self.attach(vid, str(uuid.uuid4()), 'compute-1')
            payload = os.urandom(4096)
            write_block(att['connection_info']['device_path'], payload,
                        GiB + 8192)
            self.detach(att['id'])
            self.assertEqual([], where_active(spec, lv))
            # Clone: copied on volume-1, read back on compute-2.
            clone = self.create(size=2, source_volid=vid)
            clone_lv = self.lv(clone['id'])
            self.assertEqual([], where_active(spec, clone_lv))
            att = self.attach(clone['id'], str(uuid.uuid4()), 'compute-2')
            self.assertEqual(payload, read_block(
                att['connection_info']['device_path'], 4096, GiB + 8192))
            self.detach(att['id'])
            # Snapshots need device-mapper, which these machines lack:
            # the snapshot fails cleanly and changes nothing on disk.
            before = disk_state(spec)
            snap = self.api.post_snapshot({'snapshot': {'volume_id': vid}})
            self.assertEqual('error', self.wait_snapshot(
                snap['id'], ('available', 'error')))
            self.assertEqual(before, disk_state(spec))
            self.assertEqual(400, self.status_code(
                self.api.post_volume, {'volume': {
                    'size': 2, 'snapshot_id': snap['id']}}))
            self.api.delete_snapshot(snap['id'])
            self.wait_snapshot(snap['id'], ('deleted',))
            # Bad sizes: refused by the API; too big for the VG: no
            # backend fits. Nothing changes on disk.
            for size in (0, -1, 'x'):
                self.assertEqual(400, self.status_code(
                    self.api.post_volume, {'volume': {'size': size}}))
            big = self.api.post_volume({'volume': {'size': 900}})
            self.assertEqual('error', self._poll_volume_while(
                big['id'], ['creating'], max_retries=60)['status'])
            self.assertEqual(before, disk_state(spec))
            self.api.delete_volume(big['id'])
            self.wait_volume(big['id'], 'deleted')
            for v in (vid, clone['id']):
                self.api.delete_volume(v)
            for v in (vid, clone['id']):
                self.wait_volume(v, 'deleted')
            names = disk_state(spec)[1]
            self.assertNotIn(lv, names)
            self.assertNotIn(clone_lv, names)

        def test_clone_of_an_attached_volume(self):
            vol = self.create()
            vid = vol['id']
            att = self.attach(vid, str(uuid.uuid4()), 'compute-1')
            token = Client(v1['socket']).call(
                'show', vg=vg, lv=self.lv(vid))['holders'][0]['token']
            payload = os.urandom(4096)
            write_block(att['connection_info']['device_path'], payload,
                        8192)
            # Cloned while attached on compute-1: the volume host cannot
            # activate it; the daemons copy on compute-1 (no snapshot
            # without device-mapper: read live there).
            clone = self.create(source_volid=vid)
            clone_lv = self.lv(clone['id'])
            self.assertEqual('in-use', self.api.get_volume(vid)['status'])
            shown = Client(v1['socket']).call('show', vg=vg,
                                              lv=self.lv(vid))
            self.assertEqual([('compute-1', 'exclusive', token)],
                             [(h['host'], h['mode'], h['token'])
                              for h in shown['holders']])
            self.assertEqual([], self.holders(clone['id']))
            self.assertEqual([], where_active(spec, clone_lv))
            self.detach(att['id'])
            att = self.attach(clone['id'], str(uuid.uuid4()), 'compute-2')
            self.assertEqual(payload, read_block(
                att['connection_info']['device_path'], 4096, 8192))
            self.detach(att['id'])
            for v in (vid, clone['id']):
                self.api.delete_volume(v)
            for v in (vid, clone['id']):
                self.wait_volume(v, 'deleted')
            self.assertNotIn(clone_lv, disk_state(spec)[1])

        def test_revert_reaches_the_driver_without_a_backup_snapshot(self):
            from coordinator.lvm.executor import LVM
            from tests.functional import lvmmeta
            lvm = LVM(system_dir=spec['system_dir'], activation=False)
            daemon = Client(v1['socket'])
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            # No device-mapper here: LVM takes no snapshot (error), so its
            # LV is written into the metadata as a device-mapper host would
            # leave it, and the snapshot reset to available.
            snap = self.api.post_snapshot({'snapshot': {'volume_id': vid}})
            self.assertEqual('error', self.wait_snapshot(
                snap['id'], ('available', 'error')))
            snap_lv = '_snapshot-' + snap['id']
            daemon.call('create', vg=vg, lv=snap_lv, size=8 << 20)
            lvmmeta.make_snapshot(lvm, vg, lv, snap_lv)
            self.api.api_post(f'/snapshots/{snap["id"]}/action',
                              {'os-reset_status': {'status': 'available'}})
            self.wait_snapshot(snap['id'], ('available',))
            before = disk_state(spec)
            # Cinder calls the driver's revert, with no backup snapshot
            # first (the merge is deferred); the daemon's lvconvert
            # --merge needs device-mapper: the volume goes to error, and
            # nothing changed on disk.
            self.api.api_post(f'/volumes/{vid}/action',
                              {'revert': {'snapshot_id': snap['id']}},
                              check_response_status=[202])
            self._poll_volume_while(vid, ['reverting'], max_retries=120)
            self.assertEqual('error', self.api.get_volume(vid)['status'])
            self.assertEqual('available', self.wait_snapshot(
                snap['id'], ('available',)))
            self.assertEqual([snap['id']], [
                x['id'] for x in self.api.api_get(
                    '/snapshots/detail')['snapshots']
                if x['volume_id'] == vid])
            self.assertEqual(before, disk_state(spec))
            self.assertTrue(lvmmeta.all_lvs(lvm, vg)[snap_lv]
                            .startswith('s'))   # a snapshot, not merging
            # Back as it was: the snapshot's delete removes its LV.
            lvmmeta.drop_snapshots(lvm, vg, lv)
            self.api.api_post(f'/volumes/{vid}/action',
                              {'os-reset_status': {'status': 'available'}})
            self.wait_volume(vid, 'available')
            self.api.delete_snapshot(snap['id'])
            self.wait_snapshot(snap['id'], ('deleted',))
            self.assertNotIn(snap_lv, disk_state(spec)[1])
            self.api.delete_volume(vid)
            self.wait_volume(vid, 'deleted')

        def test_attach_and_live_migration(self):
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            inst = str(uuid.uuid4())
            src = self.attach(vid, inst, 'compute-1')
            path1 = src['connection_info']['device_path']
            self.assertEqual('local',
                             src['connection_info']['driver_volume_type'])
            self.assertTrue(is_block_device(path1), path1)
            self.assertTrue(path1.startswith(
                spec['hosts']['compute-1']['dev']))
            self.assertEqual(['compute-1'], where_active(spec, lv))
            self.assertEqual([('compute-1', 'exclusive')], self.holders(vid))
            payload = os.urandom(8192)
            write_block(path1, payload, 65536)
            # Another instance: the API refuses (not multiattach).
            self.assertEqual(400, self.status_code(
                self.attach, vid, str(uuid.uuid4()), 'compute-2'))
            # Live migration: the destination attaches, same instance.
            dst = self.attach(vid, inst, 'compute-2')
            path2 = dst['connection_info']['device_path']
            self.assertTrue(is_block_device(path2), path2)
            self.assertEqual(['compute-1', 'compute-2'],
                             where_active(spec, lv))
            self.assertEqual([('compute-1', 'migration'),
                              ('compute-2', 'migration')],
                             self.holders(vid))
            # A third host is refused, naming the holders.
            daemon = Client(v1['socket'])
            for mode, instance in (('exclusive', None),
                                   ('migration', inst)):
                with self.assertRaises(errors.LeaseConflict) as ctx:
                    daemon.call('activate', vg=vg, lv=lv, host='volume-1',
                                mode=mode, instance=instance)
                self.assertIn('compute-1', str(ctx.exception))
            self.assertEqual(['compute-1', 'compute-2'],
                             where_active(spec, lv))
            # The source detaches: the destination is exclusive.
            self.detach(src['id'])
            self.assertEqual([('compute-2', 'exclusive')], self.holders(vid))
            self.assertEqual(['compute-2'], where_active(spec, lv))
            self.assertEqual(payload, read_block(path2, 8192, 65536))
            # In use: the API refuses the delete, the LV stays.
            self.assertEqual(400, self.status_code(self.api.delete_volume,
                                                   vid))
            self.assertIn(lv, disk_state(spec)[1])
            self.detach(dst['id'])
            self.assertEqual([], self.holders(vid))
            self.assertEqual([], where_active(spec, lv))
            self.api.delete_volume(vid)
            self.wait_volume(vid, 'deleted')
            self.assertNotIn(lv, disk_state(spec)[1])

        def test_extend_attached_refused_detached_works(self):
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            att = self.attach(vid, str(uuid.uuid4()), 'compute-1')
            # The API takes it (3.42+), the scheduler refuses: the backend
            # reports online_extend_support False.
            self.api.api_post(f'/volumes/{vid}/action',
                              {'os-extend': {'new_size': 2}})
            self.wait_volume(vid, 'in-use')
            self.assertEqual(1, self.api.get_volume(vid)['size'])
            self.assertEqual(GiB, Client(v1['socket']).call(
                'show', vg=vg, lv=lv)['size'])
            self.assertIn('extend volume', [
                m['user_message'].split(':')[0] for m in self.messages(vid)])
            self.assertEqual([('compute-1', 'exclusive')], self.holders(vid))
            self.detach(att['id'])
            self.api.api_post(f'/volumes/{vid}/action',
                              {'os-extend': {'new_size': 2}})
            self.wait_volume(vid, 'available')
            self.assertEqual(2, self.api.get_volume(vid)['size'])
            self.assertEqual(2 * GiB, Client(v1['socket']).call(
                'show', vg=vg, lv=lv)['size'])
            self.api.delete_volume(vid)
            self.wait_volume(vid, 'deleted')

        def test_nova_host_names(self):
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            # Nova's CONF.host is the FQDN; the daemon is compute-1.
            att = self.attach(vid, str(uuid.uuid4()), 'compute-1.example.org')
            path = att['connection_info']['device_path']
            self.assertTrue(path.startswith(
                spec['hosts']['compute-1']['dev']), path)
            self.assertTrue(is_block_device(path), path)
            self.assertEqual([('compute-1', 'exclusive')], self.holders(vid))
            self.detach(att['id'])
            self.assertEqual([], self.holders(vid))
            self.assertEqual([], where_active(spec, lv))
            # A host lvmcoord does not know: refused, naming the known.
            with self.assertRaises(client.OpenStackApiException) as ctx:
                self.attach(vid, str(uuid.uuid4()), 'compute-9')
            text = ctx.exception.response.text
            self.assertIn("host 'compute-9' is not an lvmcoord host (known: "
                          "compute-1, compute-2, volume-1, volume-2)", text)
            self.assertEqual([], self.holders(vid))
            self.assertEqual([], where_active(spec, lv))
            # The failed attachment is deleted, as Nova would.
            for att in self.api.api_get(
                    f'/attachments?volume_id={vid}')['attachments']:
                self.detach(att['id'])
            self.api.delete_volume(vid)
            self.wait_volume(vid, 'deleted')

        def test_backup_attaches_under_the_lease(self):
            from cinder.backup import chunkeddriver
            from cinder.volume import volume_utils
            # The scheduler picks a backup service by its published state.
            svc = self.start_service('backup', host='volume-1',
                                     service_name='backup')
            svc.manager.publish_service_capabilities(
                cinder_context.get_admin_context())
            states = self.scheduler.manager.driver.host_manager
            deadline = time.monotonic() + 30
            while 'volume-1' not in states.backup_service_states:
                self.assertLess(time.monotonic(), deadline,
                                'no state from the backup service')
                time.sleep(0.1)
            vol = self.create()
            vid, lv = vol['id'], self.lv(vol['id'])
            # os-brick's connector properties, but for the iSCSI initiator
            # name, which the harness forbids reading (privsep): the host
            # is this machine's name, as Cinder's own attaches send it.
            self.mock_object(
                volume_utils, 'brick_get_connector_properties',
                return_value={'host': socket.gethostname(),
                              'ip': '127.0.0.1', 'multipath': False,
                              'platform': 'x86_64', 'os_type': 'linux'})
            during = []
            real = chunkeddriver.ChunkedBackupDriver.backup

            def backup(driver, backup, volume_file, *args, **kwargs):
                # What the cluster says while Cinder reads the device.
                during.append((self.holders(vid), where_active(spec, lv)))
                return real(driver, backup, volume_file, *args, **kwargs)
            self.mock_object(chunkeddriver.ChunkedBackupDriver, 'backup',
                             backup)
            bak = self.api.api_post('/backups', {'backup': {
                'volume_id': vid, 'name': 'b1'}})['backup']
            deadline = time.monotonic() + 180
            while True:
                status = self.api.api_get(
                    f'/backups/{bak["id"]}')['backup']['status']
                if status in ('available', 'error') or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            self.assertEqual('available', status)
            # Cinder's connector host is this machine's name: the volume
            # host's daemon took the lease, activated, and released after.
            self.assertEqual([([('volume-1', 'exclusive')], ['volume-1'])],
                             during)
            self.assertEqual([], self.holders(vid))
            self.assertEqual([], where_active(spec, lv))
            self.api.api_delete(f'/backups/{bak["id"]}')
            self.api.delete_volume(vid)
            self.wait_volume(vid, 'deleted')

    return CinderAPITest


def own_case(spec, leftovers_file):
    """Cinder's own volume tests (cinder.tests.functional.test_volumes)
    on the driver: our configuration first, their tests."""
    from cinder.tests.functional import test_volumes

    class CinderOwnVolumesTest(api_case(spec), test_volumes.VolumesTest):
        pass
    CinderOwnVolumesTest.leftovers_file = leftovers_file
    return CinderOwnVolumesTest, test_volumes.VolumesTest


def run_cinder_own(spec, leftovers_file):
    """Run Cinder's own volume tests; exit status 0 if all passed."""
    import unittest
    case, theirs = own_case(spec, leftovers_file)
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromNames(loader.getTestCaseNames(theirs), case)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    with open(leftovers_file, 'a') as f:
        f.write(json.dumps({'failed': sorted(
            t.id().rsplit('.', 1)[-1]
            for t, _ in result.failures + result.errors)}) + '\n')
    return 0 if result.wasSuccessful() else 1


def main():
    """Run the API tests of the spec in SPEC_ENV; exit status 0 if all
    passed."""
    import unittest
    if sys.argv[1:2] == ['--cinder-own']:
        return run_cinder_own(json.loads(os.environ[SPEC_ENV]),
                              sys.argv[2])
    case = api_case(json.loads(os.environ[SPEC_ENV]))
    loader = unittest.defaultTestLoader
    # Test names as arguments run only those (when debugging one).
    suite = loader.loadTestsFromNames(sys.argv[1:], case) if \
        sys.argv[1:] else loader.loadTestsFromTestCase(case)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


# -- driver instances in this process --

@pytest.fixture(scope='module')
def cinder():
    """Cinder's objects and test helpers, without eventlet patching."""
    os.environ.setdefault(NO_EVENTLET, 'true')
    # Cinder's test package picks eventlet or threads for the whole
    # process: it must come before any other Cinder module.
    importlib.import_module('cinder.tests.unit')
    from cinder import context
    from cinder import exception
    from cinder import objects
    from cinder.tests.unit import fake_volume
    from cinder.volume import configuration
    from cinder.volume import driver as cinder_driver
    from oslo_config import cfg

    from driver import options
    from driver import volume as driver_volume
    return types.SimpleNamespace(
        ctx=context.get_admin_context(), exception=exception,
        objects=objects, fake_volume=fake_volume,
        configuration=configuration, cfg=cfg, options=options,
        opts=cinder_driver.volume_opts + options.driver_opts,
        driver=driver_volume)


@pytest.fixture
def make_driver(cinder, cluster):
    """Factory: a set-up driver for a host's daemon, in its own backend
    section."""
    groups = []

    def make(host, **conf):
        group = f'lvmcoord-{uuid.uuid4().hex[:8]}'
        config = cinder.configuration.Configuration(cinder.opts,
                                                    config_group=group)
        cinder.options.register(config)
        conf = dict({'lvmcoord_socket_path': cluster[host].socket,
                     'volume_group': cluster.vg.vg}, **conf)
        for name, value in conf.items():
            cinder.cfg.CONF.set_override(name, value, group)
        groups.append((group, conf))
        drv = cinder.driver.LvmcoordDriver(configuration=config,
                                           host=f'{host}@{group}')
        # No Cinder database here: attachments are the volume object's.
        drv._attachments = lambda vol: list(vol.volume_attachment)
        drv.do_setup(cinder.ctx)
        drv.check_for_setup_error()
        return drv

    yield make
    for group, conf in groups:
        for name in conf:
            cinder.cfg.CONF.clear_override(name, group)


def new_volume(cinder, size=1, **fields):
    vol = cinder.fake_volume.fake_volume_obj(
        cinder.ctx, id=str(uuid.uuid4()), size=size, **fields)
    vol.volume_attachment = cinder.objects.VolumeAttachmentList(objects=[])
    return vol


def test_two_volume_services_create_concurrently(cinder, cluster,
                                                 make_driver):
    drivers = [make_driver(h, volume_clear='none')
               for h in ('volume-1', 'volume-2')]
    vols = [new_volume(cinder) for _ in range(30)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda i: drivers[i % 2].create_volume(vols[i]),
                      range(30)))
    spec = spec_of(cluster)
    for host in (0, 1):
        names = cluster.vg.lv_names(host)
        for vol in vols:
            assert names.count(vol.name) == 1
    # The daemons agree with the disk.
    listed = [x['lv'] for x in cluster['volume-2'].client.call(
        'list', vg=spec['vg'])]
    assert all(listed.count(v.name) == 1 for v in vols)
    stats = drivers[1].get_volume_stats(refresh=True)['pools'][0]
    assert stats['total_volumes'] >= 30 and stats['backend_state'] == 'up'
    assert stats['free_capacity_gb'] <= 64 - 30
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda i: drivers[i % 2].delete_volume(vols[i]),
                      range(30)))
    names = cluster.vg.lv_names(0)
    assert not {v.name for v in vols} & set(names)


def test_online_extend_refreshes_the_holder(cinder, cluster, make_driver):
    drv = make_driver('volume-1')
    vol = new_volume(cinder)
    drv.create_volume(vol)
    conn = drv.initialize_connection(vol, {'host': 'compute-1'})
    path = conn['data']['device_path']
    assert os.path.realpath(path).startswith('/dev/loop')
    drv.extend_volume(vol, 2)
    with open(path, 'rb') as dev:
        assert dev.seek(0, os.SEEK_END) == 2 * GiB
    drv.terminate_connection(vol, {'host': 'compute-1'})
    assert not os.path.lexists(path)
    drv.delete_volume(vol)
    assert vol.name not in cluster.vg.lv_names(0)


def test_bad_requests_change_nothing(cinder, cluster, make_driver):
    drv = make_driver('volume-1')
    spec = spec_of(cluster)
    lvm = cluster.vg.hosts[0].lvm
    busy = new_volume(cinder)
    drv.create_volume(busy)
    conn = drv.initialize_connection(busy, {'host': 'compute-1'})
    assert is_block_device(conn['data']['device_path'])
    before = disk_state(spec, lvm)
    exc = cinder.exception
    for size in (0, -1):
        with pytest.raises(exc.InvalidInput, match='size'):
            drv.create_volume(new_volume(cinder, size=size))
    with pytest.raises(exc.InvalidInput, match='free'):
        drv.create_volume(new_volume(cinder, size=100000))
    bad_name = new_volume(cinder)
    bad_name.name_id = 'bad name/../x'
    with pytest.raises(exc.InvalidInput, match='LV name'):
        drv.create_volume(bad_name)
    with pytest.raises(exc.VolumeIsBusy, match='compute-1'):
        drv.delete_volume(busy)
    # A second host for another instance is refused, naming the holder.
    with pytest.raises(exc.VolumeBackendAPIException, match='compute-1'):
        drv.initialize_connection(busy, {'host': 'compute-2'})
    assert before == disk_state(spec, lvm)
    assert where_active(spec, busy.name) == ['compute-1']
    drv.terminate_connection(busy, None)
    assert where_active(spec, busy.name) == []
    drv.delete_volume(busy)
    drv.delete_volume(busy)
    assert busy.name not in disk_state(spec, lvm)[1]


def test_create_adopts_its_own_lv_and_refuses_another(cinder, cluster,
                                                      make_driver):
    drv = make_driver('volume-1', volume_clear='none')
    daemon, spec = cluster['volume-1'].client, spec_of(cluster)
    vol = new_volume(cinder)
    # A create that committed but whose reply never came: on disk, tagged.
    daemon.call('create', vg=spec['vg'], lv=vol.name, size=GiB,
                tags=[f'lvmcoord_volume_{vol.id}'])
    drv.create_volume(vol)
    assert cluster.vg.lv_names(0).count(vol.name) == 1
    # Same name, another volume's tag: refused, saying what is on disk.
    other = new_volume(cinder)
    daemon.call('create', vg=spec['vg'], lv=other.name, size=GiB,
                tags=['lvmcoord_volume_someone-else'])
    before = disk_state(spec)
    with pytest.raises(cinder.exception.VolumeBackendAPIException,
                       match="already exists: .* is not this volume's "
                             "\\(tags: lvmcoord_volume_someone-else"):
        drv.create_volume(other)
    with pytest.raises(cinder.exception.VolumeBackendAPIException,
                       match='belongs to another volume'):
        drv.delete_volume(other)
    assert before == disk_state(spec)
    drv.delete_volume(vol)
    daemon.call('delete', vg=spec['vg'], lv=other.name)
    assert not {vol.name, other.name} & set(disk_state(spec)[1])


def test_create_with_the_daemon_gone_says_not_reachable(cinder, make_driver,
                                                        tmp_path):
    drv = make_driver('volume-1')
    drv.client.path = str(tmp_path / 'gone.sock')
    with pytest.raises(cinder.exception.VolumeBackendAPIException,
                       match='not reachable at .*gone.sock \\(nothing was '
                             'created\\)'):
        drv.create_volume(new_volume(cinder))


def test_setup_check_names_what_is_wrong(cinder, cluster, make_driver,
                                         tmp_path):
    exc = cinder.exception
    with pytest.raises(exc.VolumeBackendAPIException, match='not running'):
        make_driver('volume-1', lvmcoord_socket_path=str(tmp_path / 'no'))
    with pytest.raises(exc.VolumeBackendAPIException,
                       match='does not manage VG other'):
        make_driver('volume-1', volume_group='other')
    with pytest.raises(exc.InvalidConfigurationValue, match='thin'):
        make_driver('volume-1', lvm_type='thin')


if __name__ == '__main__':
    sys.exit(main())
