# ruff: noqa: E402
"""LvmcoordDriver on Cinder's own objects, with an in-memory daemon that
checks every request against the daemon's schema and grants leases with
the daemon's own mode rules."""
import importlib
import inspect
import os

# Cinder's test package picks eventlet or real threads for the whole
# process when first imported, before any other Cinder module: this
# session uses real threads.
os.environ.setdefault('OS_CINDER_DISABLE_EVENTLET_PATCHING', 'true')
importlib.import_module('cinder.tests.unit')

import threading
from unittest import mock
import uuid

from cinder import context
from cinder import exception
from cinder import interface
from cinder import objects
from cinder.interface import util as interface_util
from cinder.interface import volume_driver as core_interface
from cinder.interface import volume_manageable_driver
from cinder.interface import volume_snapshot_revert
from cinder.tests.unit import fake_constants as fake
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg
import pytest

from coordinator import blockio
from coordinator import errors
from coordinator.api import schema
from coordinator.engine import modes
from driver import connector as connector_mod
from driver import datacopy
from driver import options
from driver import volume as lvmcoord

MiB = 1 << 20
# A Cinder "GiB" is 8 MiB here: two copy chunks, small sparse files.
GiB = 8 * MiB
VG = 'shared-vg'
HERE = 'volume-1'
CTX = context.get_admin_context()
OTHER_INSTANCE = str(uuid.uuid4())


class FakeDaemon:
    """lvmcoordd in memory: LVs, leases (modes.decide), and device files
    for the LVs active on this host."""

    def __init__(self, devdir, host=HERE, vg_bytes=100 * GiB):
        self.devdir = devdir
        self.host = host
        self.vg_bytes = vg_bytes
        self.lvs = {}
        self.holders = {}
        self.calls = []
        self.fail = {}
        self.token = 100
        # The membership as the daemon's 'hosts' op reports it.
        self.members = [host, 'volume-2', 'compute-1', 'compute-2']

    def call(self, op, **args):
        self.calls.append((op, dict(args)))
        op, args = schema.validate({'op': op, 'args': args})
        if op in self.fail:
            raise self.fail.pop(op)
        return getattr(self, 'op_' + op)(**args)

    def ops(self, *names):
        """The calls made, those of ``names`` only if given."""
        return [(op, a) for op, a in self.calls if not names or op in names]

    # -- state helpers --

    def data(self, lv):
        return os.path.join(self.devdir, lv)

    def add(self, lv, size=GiB, tags=(), origin=None):
        self.lvs[lv] = {'size': size, 'tags': list(tags), 'origin': origin,
                        'merging': None}
        with open(self.data(lv), 'wb') as f:
            f.truncate(size)

    def hold(self, lv, host, mode=modes.EXCLUSIVE, instance=None,
             alive=True):
        self.token += 1
        self.holders.setdefault(lv, []).append(modes.Holder(
            host, mode, instance, self.token, alive=alive))

    def _lv(self, vg, lv):
        if lv not in self.lvs:
            raise errors.LVMError(f'LV {vg}/{lv} not found',
                                  kind='not-found')
        return self.lvs[lv]

    def _free(self):
        return self.vg_bytes - sum(x['size'] for x in self.lvs.values())

    # -- operations --

    def op_status(self):
        return {'host': self.host, 'session': '1', 'backend': 'fake',
                'vgs': [VG],
                'active': [f'{VG}/{lv}' for lv, hs in self.holders.items()
                           if any(h.host == self.host for h in hs)],
                'readiness': {'vgs': {VG: {'uuid': 'u', 'pvs': [
                    {'device': '/dev/fake-pv', 'multipath': False}]}},
                    'problems': {}}}

    def op_hosts(self):
        return {'host': self.host, 'hosts': sorted(self.members)}

    def op_tag(self, vg, lv, add=(), remove=()):
        x = self._lv(vg, lv)
        x['tags'] = [t for t in x['tags'] if t not in (remove or ())] + \
            [t for t in add or () if t not in x['tags']]
        return self.op_show(vg, lv)

    def op_vg_stats(self, vg):
        return {'vg': vg, 'uuid': 'u', 'size': self.vg_bytes,
                'free': self._free(), 'extent_size': 4 << 20,
                'lv_count': len(self.lvs), 'seqno': 1}

    def op_list(self, vg=None):
        return [{'vg': VG, 'lv': lv, 'size': x['size'], 'tags': x['tags'],
                 'holders': [h.host for h in self.holders.get(lv, [])]}
                for lv, x in sorted(self.lvs.items())]

    def op_show(self, vg, lv):
        x = self._lv(vg, lv)
        return {'vg': vg, 'lv': lv, 'size': x['size'], 'tags': x['tags'],
                'origin': x['origin'], 'merging': x['merging'],
                'multiattach': 'lvmcoord_multiattach' in x['tags'],
                'holders': [dict(h.ledger_entry(), host=h.host,
                                 alive=h.alive)
                            for h in self.holders.get(lv, [])]}

    def op_create(self, vg, lv, size, tags=(), multiattach=False):
        if lv in self.lvs:
            raise errors.LVMError(f'LV {lv} already exists', kind='exists')
        if size > self._free():
            raise errors.InvalidInput('size', f'{size} bytes requested, '
                                      f'{self._free()} free in {vg}')
        self.add(lv, size, list(tags) + (['lvmcoord_multiattach']
                                         if multiattach else []))
        return self.op_show(vg, lv)

    def op_delete(self, vg, lv):
        self._lv(vg, lv)
        origin = self.lvs[lv]['origin']
        if origin and self.lvs[origin]['merging'] == lv:
            return {'vg': vg, 'lv': lv, 'deleted': False,
                    'merging_into': origin, 'message': 'merging'}
        if self.holders.get(lv):
            held = ', '.join(h.describe() for h in self.holders[lv])
            raise errors.LeaseConflict(f'{vg}/{lv} is in use: held by '
                                       f'{held}', self.holders[lv])
        del self.lvs[lv]
        os.unlink(self.data(lv))
        return {'vg': vg, 'lv': lv, 'deleted': True}

    def op_extend(self, vg, lv, size):
        x = self._lv(vg, lv)
        x['size'] = size
        os.truncate(self.data(lv), size)
        return dict(self.op_show(vg, lv), refreshed={
            h.host: {'host': h.host, 'size': size}
            for h in self.holders.get(lv, [])})

    def op_rename(self, vg, lv, new_name):
        if self.holders.get(lv):
            raise errors.LeaseConflict(f'{vg}/{lv} is in use')
        self._lv(vg, lv)
        self.lvs[new_name] = self.lvs.pop(lv)
        os.rename(self.data(lv), self.data(new_name))
        return self.op_show(vg, new_name)

    def op_snapshot(self, vg, lv, name, size):
        self._lv(vg, lv)
        self.add(name, size, origin=lv)
        return self.op_show(vg, name)

    def op_revert(self, vg, lv, snapshot):
        if self.holders.get(lv):
            raise errors.LeaseConflict(f'{vg}/{lv} is attached')
        self.lvs[lv]['merging'] = snapshot
        return {'vg': vg, 'lv': lv, 'reverted_to': snapshot,
                'merge': 'on next activation'}

    def op_copy(self, vg, src, dst, size, snapshot=None):
        origin = self._lv(vg, src)['origin'] or src
        self._lv(vg, dst)
        hosts = [h.host for h in self.holders.get(origin, [])]
        on = hosts[0] if hosts else self.host
        if snapshot and hosts:
            self.add(snapshot, self.lvs[src]['size'], origin=src)
            with open(self.data(src), 'rb') as f, \
                    open(self.data(snapshot), 'r+b') as g:
                g.write(f.read())
            src = snapshot
        try:
            if dst in self.holders:
                raise errors.LeaseConflict(f'{vg}/{dst} is held')
            with open(self.data(src), 'rb') as f, \
                    open(self.data(dst), 'r+b') as g:
                g.write(f.read(size))
        finally:
            if src == snapshot:
                del self.lvs[snapshot]
                os.unlink(self.data(snapshot))
        return {'vg': vg, 'src': src, 'dst': dst, 'size': size, 'on': on,
                'consistency': 'snapshot' if snapshot and hosts
                else 'detached'}

    def op_activate(self, vg, lv, host=None, mode=modes.EXCLUSIVE,
                    instance=None, wait=0.0, read_only=False):
        host = host or self.host
        self._lv(vg, lv)
        self.token += 1
        want = modes.Holder(host, mode, instance, self.token)
        new, _ = modes.decide(self.holders.get(lv, []), want,
                              lambda h: 0.0)
        self.holders[lv] = new
        mine = next(h for h in new if h.host == host)
        path = self.data(lv) if host == self.host else \
            f'/dev/{host}/{vg}/{lv}'
        return {'vg': vg, 'lv': lv, 'host': host, 'path': path,
                'mode': mine.mode, 'token': mine.token,
                'instance': mine.instance}

    def op_deactivate(self, vg, lv, host=None):
        host = host or self.host
        before = self.holders.get(lv, [])
        rest = modes.after_release(before, host)
        if rest:
            self.holders[lv] = rest
        else:
            self.holders.pop(lv, None)
        return {'vg': vg, 'lv': lv, 'host': host,
                'released': len(rest) < len(before)}

    def op_refresh(self, vg, lv, host=None):
        return {'host': host or self.host, 'size': self._lv(vg, lv)['size']}


# -- fixtures --

@pytest.fixture(autouse=True)
def small_gib(monkeypatch):
    monkeypatch.setattr(lvmcoord, 'GiB', GiB)
    # The fake daemon's devices are sparse files.
    monkeypatch.setattr(connector_mod, 'is_block_device', os.path.isfile)


@pytest.fixture
def attachments(monkeypatch):
    """volume id -> attachments, as Cinder's database would give them."""
    table = {}
    monkeypatch.setattr(
        objects.VolumeAttachmentList, 'get_all_by_volume_id',
        classmethod(lambda cls, ctx, vid: list(table.get(vid, []))))
    return table


@pytest.fixture
def daemon(tmp_path):
    return FakeDaemon(str(tmp_path))


@pytest.fixture
def make_driver(daemon, attachments):
    groups = []

    def make(**conf):
        group = f'lvmcoord-unit-{uuid.uuid4().hex[:8]}'
        config = configuration.Configuration(
            cinder_driver.volume_opts + options.driver_opts,
            config_group=group)
        options.register(config)
        conf = dict({'volume_group': VG, 'volume_clear': 'none'}, **conf)
        for name, value in conf.items():
            cfg.CONF.set_override(name, value, group)
        groups.append((group, conf))
        drv = lvmcoord.LvmcoordDriver(configuration=config,
                                      host=f'{HERE}@{group}')
        drv.client = daemon
        drv.do_setup(CTX)
        return drv

    yield make
    for group, conf in groups:
        for name in conf:
            cfg.CONF.clear_override(name, group)


@pytest.fixture
def drv(make_driver):
    return make_driver()


def volume(size=1, **fields):
    return fake_volume.fake_volume_obj(CTX, id=str(uuid.uuid4()), size=size,
                                       **fields)


def snapshot_of(vol):
    snap = fake_snapshot.fake_snapshot_obj(CTX, id=str(uuid.uuid4()),
                                           volume_size=vol.size,
                                           volume_id=vol.id)
    snap.volume = vol
    return snap


def attachment(instance=fake.INSTANCE_ID, host=None, status='attached'):
    return objects.VolumeAttachment(
        CTX, id=str(uuid.uuid4()), instance_uuid=instance,
        attach_status='reserved' if host is None else status,
        attached_host=host, connector={'host': host} if host else None)


def fill(path, data, offset=0):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def read(path, size, offset=0):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(size)


# -- interface compliance --

def test_registered_and_compliant_with_cinder_interfaces():
    info = next(d for d in interface_util.get_volume_drivers()
                if d.cls is lvmcoord.LvmcoordDriver)
    assert info.class_fqn == 'driver.volume.LvmcoordDriver'
    assert info.version and info.ci_wiki_name and info.supported
    assert info.desc
    for iface in (core_interface.VolumeDriverCore,
                  volume_snapshot_revert.VolumeSnapshotRevertDriver,
                  volume_manageable_driver.VolumeListManageableDriver):
        # Cinder's own check (tests/compliance) ...
        assert issubclass(lvmcoord.LvmcoordDriver, iface), iface
        # ... sees classmethods only: check every method and its arity.
        for name, member in vars(iface).items():
            if name.startswith('_') or not callable(member):
                continue
            if isinstance(inspect.getattr_static(
                    lvmcoord.LvmcoordDriver, name), property):
                continue
            mine = getattr(lvmcoord.LvmcoordDriver, name)
            want = member.__code__.co_argcount
            code = mine.__code__
            assert code.co_argcount >= want or code.co_flags & 0x04, name


def test_declares_active_active_and_registers_with_interface():
    assert lvmcoord.LvmcoordDriver.SUPPORTS_ACTIVE_ACTIVE is True
    assert lvmcoord.LvmcoordDriver in interface._volume_register


def test_options_listed_for_the_generator_and_the_driver():
    [(group, opts)] = options.list_opts()
    names = {o.name for o in opts}
    assert {'lvmcoord_socket_path', 'lvmcoord_enable_multiattach',
            'lvmcoord_attach_timeout', 'lvmcoord_host_map',
            'volume_group', 'lvm_type'} == names
    listed = {o.name for o in lvmcoord.LvmcoordDriver.get_driver_options()}
    assert names | {'volume_clear', 'volume_dd_blocksize'} <= listed


def test_backend_section_options_read_back(make_driver):
    drv = make_driver(lvmcoord_socket_path='/run/x.sock',
                      lvmcoord_attach_timeout=5)
    assert drv.vg == VG
    assert drv.configuration.lvmcoord_socket_path == '/run/x.sock'
    assert drv.configuration.lvmcoord_enable_multiattach is False
    assert drv.configuration.lvm_type == 'default'


# -- set-up --

@pytest.mark.parametrize('lvm_type', ['default', 'thick', 'auto'])
def test_thick_lvm_types_accepted(make_driver, lvm_type):
    make_driver(lvm_type=lvm_type)


def test_thin_refused_with_the_reason(make_driver):
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='thin pool cannot be active on several'):
        make_driver(lvm_type='thin')


def test_bad_vg_name_and_replication_refused(make_driver):
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='volume_group'):
        make_driver(volume_group='bad vg')
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='replication_device'):
        make_driver(replication_device=[{'backend_id': 'x'}])


def test_setup_check_passes_and_learns_the_daemon_host(drv, daemon):
    drv.check_for_setup_error()
    assert drv.daemon_host == HERE
    assert [op for op, _ in daemon.calls] == ['status', 'list']


@pytest.mark.parametrize('breakage, message', [
    (lambda d: d.fail.update(status=errors.HostUnavailable('refused')),
     'not running or not reachable'),
    (lambda d: setattr(d, 'op_status', lambda: dict(
        FakeDaemon.op_status(d), vgs=['other'])),
     'does not manage VG shared-vg'),
    (lambda d: setattr(d, 'op_status', lambda: dict(
        FakeDaemon.op_status(d), readiness={
            'vgs': {}, 'problems': {VG: 'auto-activation is on'}})),
     'cannot use VG shared-vg: auto-activation is on'),
    (lambda d: setattr(d, 'op_status', lambda: dict(
        FakeDaemon.op_status(d), readiness={'vgs': {}, 'problems': {}})),
     'not visible'),
    (lambda d: d.fail.update(list=errors.EtcdUnavailable('no endpoint')),
     'etcd'),
])
def test_setup_check_names_what_is_wrong(drv, daemon, breakage, message):
    breakage(daemon)
    with pytest.raises(exception.VolumeBackendAPIException, match=message):
        drv.check_for_setup_error()


# -- create / delete / extend --

def test_create_sends_a_thick_lv_and_activates_nothing(drv, daemon):
    vol = volume(size=3)
    assert drv.create_volume(vol) is None
    assert daemon.ops() == [('create', {
        'vg': VG, 'lv': vol.name, 'size': 3 * GiB,
        'tags': [f'lvmcoord_volume_{vol.id}']})]
    assert not daemon.holders


def test_create_multiattach_needs_the_option(make_driver, daemon):
    vol = volume(multiattach=True)
    with pytest.raises(exception.VolumeDriverException,
                       match='lvmcoord_enable_multiattach'):
        make_driver().create_volume(vol)
    make_driver(lvmcoord_enable_multiattach=True).create_volume(vol)
    assert daemon.ops('create')[-1][1]['multiattach'] is True
    assert 'lvmcoord_multiattach' in daemon.lvs[vol.name]['tags']


@pytest.mark.parametrize('size', [0, -1])
def test_create_bad_size_refused_before_the_daemon(drv, daemon, size):
    with pytest.raises(exception.InvalidInput, match='size'):
        drv.create_volume(volume(size=size))
    assert daemon.ops() == []


def test_create_errors_from_the_daemon(drv, daemon):
    with pytest.raises(exception.InvalidInput, match='free'):
        drv.create_volume(volume(size=1000))
    daemon.fail['create'] = errors.LVMError('lvcreate: VG is damaged',
                                            kind='failed')
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='VG is damaged'):
        drv.create_volume(volume())
    bad = volume()
    bad.name_id = 'no good/../name'
    with pytest.raises(exception.InvalidInput, match='lv'):
        drv.create_volume(bad)


def lost_reply(daemon, cause):
    """The daemon runs the create, then the client fails with ``cause``
    (a timeout: the reply never came)."""
    real = daemon.op_create

    def create(**args):
        real(**args)
        raise errors.HostUnavailable(f'lvmcoordd not reachable at /s: '
                                     f'{cause}') from cause
    return create


def test_create_whose_reply_timed_out_is_adopted(drv, daemon, caplog):
    vol = volume(size=2)
    daemon.op_create = lost_reply(daemon, TimeoutError('timed out'))
    drv.create_volume(vol)
    assert daemon.lvs[vol.name]['tags'] == [f'lvmcoord_volume_{vol.id}']
    assert [op for op, _ in daemon.ops()] == ['create', 'show']
    assert 'state unknown' in caplog.text and 'adopted' in caplog.text


def test_create_retried_after_it_committed_is_adopted(drv, daemon):
    vol = volume(size=2)
    daemon.add(vol.name, 2 * GiB, tags=[f'lvmcoord_volume_{vol.id}'])
    drv.create_volume(vol)
    assert list(daemon.lvs) == [vol.name]


def test_create_timed_out_and_not_on_disk_says_state_unknown(drv, daemon):
    vol = volume()

    def create(**args):
        raise errors.HostUnavailable('timed out') from TimeoutError()
    daemon.op_create = create
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='state unknown.*not on disk now.*retry '
                             'adopts it'):
        drv.create_volume(vol)


def test_create_with_the_daemon_not_reachable_says_so(drv, daemon):
    def create(**args):
        raise errors.HostUnavailable('lvmcoordd not reachable at /s') \
            from FileNotFoundError(2, 'No such file')
    daemon.op_create = create
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='not reachable.*nothing was created'):
        drv.create_volume(volume())
    assert daemon.ops('show') == []


@pytest.mark.parametrize('tags, size, message', [
    (['lvmcoord_volume_someone-else'], GiB,
     "not this volume's \\(tags: lvmcoord_volume_someone-else; expected "
     "lvmcoord_volume_"),
    ([], GiB, 'no lvmcoord volume tag'),
    (None, 2 * GiB, 'but 16777216 bytes, not 8388608'),
])
def test_create_over_an_lv_that_is_not_this_one_is_refused(
        drv, daemon, tags, size, message):
    vol = volume(size=1)
    daemon.add(vol.name, size, tags=[f'lvmcoord_volume_{vol.id}']
               if tags is None else tags)
    before = dict(daemon.lvs[vol.name])
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='already exists: .*' + message):
        drv.create_volume(vol)
    assert daemon.lvs[vol.name] == before


def test_delete_of_another_volumes_lv_is_refused(drv, daemon):
    vol = volume()
    daemon.add(vol.name, tags=['lvmcoord_volume_other'])
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='belongs to another volume.*lvmcoord_volume_'
                             'other'):
        drv.delete_volume(vol)
    assert vol.name in daemon.lvs
    # Untagged (made before tags, or by hand): deleted as before.
    daemon.lvs[vol.name]['tags'] = []
    drv.delete_volume(vol)
    assert vol.name not in daemon.lvs


def test_delete_of_a_missing_volume_succeeds(drv, daemon):
    drv.delete_volume(volume())
    assert daemon.ops('delete') == []


def test_delete_refused_while_leased_naming_the_host(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1')
    with pytest.raises(exception.VolumeIsBusy, match='compute-1'):
        drv.delete_volume(vol)
    assert vol.name in daemon.lvs
    assert daemon.ops('delete', 'activate') == []


def test_delete_race_with_a_grant_is_busy(make_driver, daemon):
    vol = volume()
    drv = make_driver()
    drv.create_volume(vol)
    daemon.fail['delete'] = errors.LeaseConflict('held by compute-2')
    with pytest.raises(exception.VolumeIsBusy, match='compute-2'):
        drv.delete_volume(vol)
    # Granted between the check and the wipe here.
    drv = make_driver(volume_clear='zero')
    daemon.fail['activate'] = errors.LeaseConflict('held by compute-3')
    with pytest.raises(exception.VolumeIsBusy, match='compute-3'):
        drv.delete_volume(vol)
    assert vol.name in daemon.lvs


def test_delete_wipes_the_data_here_first(make_driver, daemon):
    drv = make_driver(volume_clear='zero')
    vol = volume(size=2)
    drv.create_volume(vol)
    path = daemon.data(vol.name)
    fill(path, b'secret' * 100, GiB + 4096)
    seen = []
    real_delete = daemon.op_delete
    daemon.op_delete = lambda vg, lv: (
        seen.append(read(path, 2 * GiB)), real_delete(vg, lv))[1]
    drv.delete_volume(vol)
    assert seen == [bytes(2 * GiB)]
    assert [op for op, _ in daemon.ops('activate', 'deactivate',
                                       'delete')] == \
        ['activate', 'deactivate', 'delete']
    assert vol.name not in daemon.lvs and not daemon.holders


def test_delete_wipe_without_access_uses_the_root_helper(make_driver,
                                                         daemon):
    drv = make_driver(volume_clear='zero', volume_clear_size=4)
    vol = volume()
    drv.create_volume(vol)
    with mock.patch.object(datacopy, 'accessible', return_value=False), \
            mock.patch.object(lvmcoord.volume_utils,
                              'clear_volume') as clear:
        drv.delete_volume(vol)
    clear.assert_called_once_with(
        4, daemon.data(vol.name), volume_clear='zero',
        volume_clear_size=4, volume_clear_ionice=None)
    assert vol.name not in daemon.lvs


def test_extend_asks_the_daemon_which_refreshes_holders(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1')
    drv.extend_volume(vol, 3)
    assert daemon.ops('extend') == [('extend', {'vg': VG, 'lv': vol.name,
                                                'size': 3 * GiB})]


# -- snapshots, clones --

def test_snapshot_create_and_delete(drv, daemon):
    vol = volume(size=2)
    drv.create_volume(vol)
    snap = snapshot_of(vol)
    drv.create_snapshot(snap)
    lv = '_' + snap.name
    assert snap.name.startswith('snapshot-')
    assert daemon.ops('snapshot') == [('snapshot', {
        'vg': VG, 'lv': vol.name, 'name': lv, 'size': 2 * GiB})]
    daemon.hold(lv, HERE)
    with pytest.raises(exception.SnapshotIsBusy):
        drv.delete_snapshot(snap)
    daemon.holders.clear()
    drv.delete_snapshot(snap)
    drv.delete_snapshot(snap)
    assert lv not in daemon.lvs


def test_snapshot_failure_is_a_backend_error(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.fail['snapshot'] = errors.LVMError(
        "Can't create snapshot without using device-mapper kernel driver")
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='device-mapper'):
        drv.create_snapshot(snapshot_of(vol))


def test_clone_copies_here_and_deactivates_both(drv, daemon):
    src, dst = volume(size=1), volume(size=2)
    drv.create_volume(src)
    fill(daemon.data(src.name), b'data' * 1024, 4 * MiB + 512)
    drv.create_cloned_volume(dst, src)
    assert read(daemon.data(dst.name), GiB) == read(daemon.data(src.name),
                                                    GiB)
    assert daemon.lvs[dst.name]['size'] == 2 * GiB
    activations = daemon.ops('activate')
    # Through the lvmcoord connector, on this host (no host field).
    assert activations[0][1] == {'vg': VG, 'lv': src.name,
                                 'mode': 'exclusive', 'read_only': True}
    assert activations[1][1] == {'vg': VG, 'lv': dst.name,
                                 'mode': 'exclusive'}
    assert not daemon.holders


def test_clone_overwrites_stale_data_under_source_zeros(drv, daemon):
    src, dst = volume(), volume()
    drv.create_volume(src)
    # Extents of the new LV may still hold an older LV's data.
    real_create = daemon.op_create

    def create(vg, lv, size, **kw):
        out = real_create(vg, lv, size, **kw)
        fill(daemon.data(lv), b'stale' * 1000, 6 * MiB)
        return out
    daemon.op_create = create
    drv.create_cloned_volume(dst, src)
    assert read(daemon.data(dst.name), GiB) == bytes(GiB)


def test_clone_of_a_volume_attached_elsewhere_is_copied_there(drv, daemon):
    src, dst = volume(), volume(size=2)
    drv.create_volume(src)
    fill(daemon.data(src.name), b'guest' * 100, 3 * MiB)
    daemon.hold(src.name, 'compute-1', instance=fake.INSTANCE_ID)
    drv.create_cloned_volume(dst, src)
    # One request: the daemon routes it to compute-1, which reads a
    # temporary snapshot of the source taken there.
    assert daemon.ops('copy') == [('copy', {
        'vg': VG, 'src': src.name, 'dst': dst.name, 'size': GiB,
        'snapshot': dst.name + '-src'})]
    assert read(daemon.data(dst.name), 500, 3 * MiB) == b'guest' * 100
    assert not daemon.ops('activate')
    assert [h.host for h in daemon.holders[src.name]] == ['compute-1']
    assert dst.name + '-src' not in daemon.lvs


def test_failed_copy_elsewhere_removes_the_new_volume(drv, daemon):
    src, dst = volume(), volume()
    drv.create_volume(src)
    daemon.hold(src.name, 'compute-1', instance=fake.INSTANCE_ID)
    daemon.fail['copy'] = errors.LVMError('copying: short read')
    with pytest.raises(exception.VolumeBackendAPIException,
                       match=r'cloning .* on compute-1 \(exclusive\): '
                             r'copying: short read'):
        drv.create_cloned_volume(dst, src)
    assert dst.name not in daemon.lvs


def test_clone_of_a_volume_held_here_or_nowhere_copies_here(drv, daemon):
    src, dst = volume(), volume()
    drv.create_volume(src)
    daemon.hold(src.name, HERE, instance=fake.INSTANCE_ID)
    drv.create_cloned_volume(dst, src)
    assert not daemon.ops('copy') and dst.name in daemon.lvs
    # Still held here as it was.
    assert [h.host for h in daemon.holders[src.name]] == [HERE]


def test_failed_copy_removes_the_new_volume(drv, daemon):
    src, dst = volume(), volume()
    drv.create_volume(src)
    with mock.patch.object(datacopy, 'copy_data',
                           side_effect=OSError(5, 'I/O error')):
        with pytest.raises(OSError):
            drv.create_cloned_volume(dst, src)
    assert dst.name not in daemon.lvs and not daemon.holders


def test_failed_copy_wipes_what_it_wrote_before_removing(make_driver,
                                                       daemon):
    drv = make_driver(volume_clear='zero')
    src, dst = volume(size=1), volume(size=1)
    drv.create_volume(src)
    fill(daemon.data(src.name), b'secret' * 100, 0)
    seen = []

    def copy_then_fail(sp, dp, size, *args):
        with open(dp, 'r+b') as f:
            f.write(b'secret' * 100)
        raise OSError(5, 'I/O error')
    real_delete = daemon.op_delete
    daemon.op_delete = lambda vg, lv: (
        seen.append(read(daemon.data(lv), 4096)), real_delete(vg, lv))[1]
    with mock.patch.object(datacopy, 'copy_data',
                           side_effect=copy_then_fail):
        with pytest.raises(OSError):
            drv.create_cloned_volume(dst, src)
    assert seen == [bytes(4096)]
    assert dst.name not in daemon.lvs and not daemon.holders


def test_copy_without_access_goes_through_the_root_helper(drv, daemon):
    src, dst = volume(), volume()
    drv.create_volume(src)
    with mock.patch.object(datacopy, 'accessible', return_value=False), \
            mock.patch.object(lvmcoord.volume_utils,
                              'copy_volume') as copy:
        drv.create_cloned_volume(dst, src)
    copy.assert_called_once_with(
        daemon.data(src.name), daemon.data(dst.name), GiB // MiB,
        drv.configuration.volume_dd_blocksize, execute=drv._execute)


def test_volume_from_snapshot_is_copied_by_the_daemon(drv, daemon):
    vol, new = volume(), volume()
    drv.create_volume(vol)
    snap = snapshot_of(vol)
    drv.create_snapshot(snap)
    fill(daemon.data('_' + snap.name), b'old', 0)
    drv.create_volume_from_snapshot(new, snap)
    assert read(daemon.data(new.name), 3) == b'old'
    assert daemon.ops('copy') == [('copy', {
        'vg': VG, 'src': '_' + snap.name, 'dst': new.name, 'size': GiB})]
    assert not daemon.holders


def test_volume_from_snapshot_of_an_origin_active_elsewhere(drv, daemon):
    vol, new = volume(), volume()
    drv.create_volume(vol)
    snap = snapshot_of(vol)
    drv.create_snapshot(snap)
    fill(daemon.data('_' + snap.name), b'then', 0)
    daemon.hold(vol.name, 'compute-2')
    drv.create_volume_from_snapshot(new, snap)
    assert read(daemon.data(new.name), 4) == b'then'
    assert [h.host for h in daemon.holders[vol.name]] == ['compute-2']
    daemon.fail['copy'] = errors.LVMError(
        'the loop backend on compute-2 cannot read snapshots')
    other = volume()
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='on compute-2 .*cannot read snapshots'):
        drv.create_volume_from_snapshot(other, snap)
    assert other.name not in daemon.lvs


def test_revert_merges_into_the_detached_origin(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    snap = snapshot_of(vol)
    drv.create_snapshot(snap)
    assert drv.snapshot_revert_use_temp_snapshot() is False
    drv.revert_to_snapshot(CTX, vol, snap)
    assert daemon.ops('revert') == [('revert', {
        'vg': VG, 'lv': vol.name, 'snapshot': '_' + snap.name})]
    # Pending until the origin's next activation: again is a no-op ...
    drv.revert_to_snapshot(CTX, vol, snap)
    assert len(daemon.ops('revert')) == 1
    # ... a volume from it is refused, saying why ...
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='merged into .* by a revert'):
        drv.create_volume_from_snapshot(volume(), snap)
    # ... so is a new snapshot of the volume ...
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='pending revert'):
        drv.create_snapshot(snapshot_of(vol))
    # ... and Cinder's delete of the snapshot succeeds without removing
    # it (that would cancel the revert).
    drv.delete_snapshot(snap)
    assert '_' + snap.name in daemon.lvs


def test_revert_refusals_name_the_reason(drv, daemon):
    vol, other = volume(), volume()
    drv.create_volume(vol)
    drv.create_volume(other)
    snap = snapshot_of(vol)
    drv.create_snapshot(snap)
    daemon.hold(vol.name, 'compute-1', instance=fake.INSTANCE_ID)
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='attached on compute-1 .*detach it first'):
        drv.revert_to_snapshot(CTX, vol, snap)
    daemon.holders.clear()
    with pytest.raises(exception.InvalidSnapshot,
                       match=f'not a snapshot of {other.name}'):
        drv.revert_to_snapshot(CTX, other, snap)
    gone = snapshot_of(vol)
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='does not exist'):
        drv.revert_to_snapshot(CTX, vol, gone)
    daemon.fail['revert'] = errors.LVMError(
        "Can't initialize snapshot merge. Missing support in kernel?")
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='Missing support in kernel'):
        drv.revert_to_snapshot(CTX, vol, snap)
    assert daemon.lvs[vol.name]['merging'] is None


# -- images --

def test_image_to_volume_writes_on_this_host(drv, daemon):
    vol = volume(size=2)
    drv.create_volume(vol)
    service = mock.sentinel.image_service
    with mock.patch.object(lvmcoord.image_utils, 'fetch_to_raw') as fetch:
        fetch.side_effect = lambda *a, **k: daemon.holders[vol.name]
        drv.copy_image_to_volume(CTX, vol, service, 'image-1')
    fetch.assert_called_once_with(
        CTX, service, 'image-1', daemon.data(vol.name),
        drv.configuration.volume_dd_blocksize, size=2, run_as_root=False,
        disable_sparse=False)
    assert not daemon.holders


def test_volume_to_image_reads_on_this_host(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    with mock.patch.object(lvmcoord.volume_utils, 'upload_volume') as up:
        drv.copy_volume_to_image(CTX, vol, mock.sentinel.svc, {'id': 'i'})
    up.assert_called_once_with(CTX, mock.sentinel.svc, {'id': 'i'},
                               daemon.data(vol.name), vol,
                               run_as_root=False)
    assert daemon.ops('activate')[0][1]['read_only'] is True
    assert not daemon.holders


def test_image_copy_of_an_attached_volume_is_refused(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1')
    with pytest.raises(exception.VolumeIsBusy, match='compute-1'):
        drv.copy_volume_to_image(CTX, vol, None, {})


# -- exports and connections --

def test_exports_never_touch_the_daemon(drv, daemon):
    vol = volume()
    assert drv.create_export(CTX, vol, {'host': 'compute-1'}) is None
    assert drv.ensure_export(CTX, vol) is None
    assert drv.remove_export(CTX, vol) is None
    assert daemon.calls == []


def test_attach_activates_on_the_connector_host(drv, daemon, attachments):
    vol = volume()
    drv.create_volume(vol)
    attachments[vol.id] = [attachment()]
    info = drv.initialize_connection(vol, {'host': 'compute-1'})
    assert info['driver_volume_type'] == 'local'
    data = info['data']
    assert data['device_path'] == f'/dev/compute-1/{VG}/{vol.name}'
    assert (data['vg'], data['lv'], data['host'], data['mode']) == \
        (VG, vol.name, 'compute-1', 'exclusive')
    assert data['token'] and data['instance'] == fake.INSTANCE_ID
    assert daemon.ops('activate')[-1][1] == {
        'vg': VG, 'lv': vol.name, 'host': 'compute-1', 'mode': 'exclusive',
        'instance': fake.INSTANCE_ID}


@pytest.mark.parametrize('nova_host, members, host_map, expected', [
    ('compute-1', None, {}, 'compute-1'),
    # Nova's CONF.host is the FQDN, lvmcoord's the short name...
    ('compute-1.example.org', None, {}, 'compute-1'),
    # ...or the other way round.
    ('compute-3', ['volume-1', 'compute-3.example.org'], {},
     'compute-3.example.org'),
    # An inventory name, mapped explicitly.
    ('rack4-node17', None, {'rack4-node17': 'compute-2'}, 'compute-2'),
])
def test_attach_maps_nova_host_names(make_driver, daemon, nova_host,
                                     members, host_map, expected):
    if members:
        daemon.members = members
    drv = make_driver(lvmcoord_host_map=host_map)
    vol = volume()
    drv.create_volume(vol)
    info = drv.initialize_connection(vol, {'host': nova_host})
    assert info['data']['host'] == expected
    assert daemon.ops('activate')[-1][1]['host'] == expected
    drv.terminate_connection(vol, {'host': nova_host})
    assert daemon.ops('deactivate')[-1][1]['host'] == expected
    assert not daemon.holders


def test_this_machines_own_name_is_the_local_daemon(drv, daemon,
                                                    monkeypatch):
    # Cinder's own attaches (backup, migration copies) name the host by
    # socket.gethostname().
    monkeypatch.setattr(lvmcoord.hosts, 'local_names',
                        lambda: {'cinder-box', 'cinder-box.example.org'})
    vol = volume()
    drv.create_volume(vol)
    info = drv.initialize_connection(vol, {'host': 'cinder-box'})
    assert info['data']['host'] == HERE


@pytest.mark.parametrize('nova_host, members, message', [
    ('compute-9', None, "host 'compute-9' is not an lvmcoord host "
                        "\\(known: compute-1, compute-2, volume-1, "
                        "volume-2\\)"),
    # Two FQDNs of different domains are different hosts.
    ('compute-1.b.org', ['volume-1', 'compute-1.a.org'],
     'not an lvmcoord host'),
    ('compute-1', ['volume-1', 'compute-1.a.org', 'compute-1.b.org'],
     'several lvmcoord hosts by short name'),
])
def test_unknown_host_is_refused_naming_the_known_ones(
        drv, daemon, nova_host, members, message):
    if members:
        daemon.members = members
    vol = volume()
    drv.create_volume(vol)
    with pytest.raises(exception.InvalidConnectorException, match=message):
        drv.validate_connector({'host': nova_host})
    with pytest.raises(exception.InvalidConnectorException, match=message):
        drv.initialize_connection(vol, {'host': nova_host})
    assert daemon.ops('activate') == [] and not daemon.holders


def test_host_names_used_as_given_when_the_daemon_cannot_list(drv, daemon):
    daemon.op_hosts = mock.Mock(side_effect=errors.EtcdUnavailable('down'))
    vol = volume()
    drv.create_volume(vol)
    drv.initialize_connection(vol, {'host': 'compute-1'})
    assert daemon.ops('activate')[-1][1]['host'] == 'compute-1'


def test_detach_matches_a_holder_gone_from_the_membership(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-3', alive=False)
    drv.terminate_connection(vol, {'host': 'compute-3.example.org'})
    assert daemon.ops('deactivate')[-1][1]['host'] == 'compute-3'


def test_attach_with_an_empty_connector_is_a_no_op(drv, daemon):
    assert drv.initialize_connection(volume(), {}) == {
        'driver_volume_type': 'local', 'data': {}}
    assert daemon.calls == []


def test_attach_without_a_host_is_refused(drv):
    with pytest.raises(exception.InvalidConnectorException, match='host'):
        drv.validate_connector({'ip': '10.0.0.1'})
    drv.validate_connector({})


def test_live_migration_gets_migration_mode(drv, daemon, attachments):
    vol = volume()
    drv.create_volume(vol)
    src = attachment()
    attachments[vol.id] = [src]
    drv.initialize_connection(vol, {'host': 'compute-1'})
    src.attached_host, src.connector = 'compute-1', {'host': 'compute-1'}
    attachments[vol.id] = [src, attachment()]
    info = drv.initialize_connection(vol, {'host': 'compute-2'})
    assert info['data']['mode'] == 'migration'
    assert sorted((h.host, h.mode) for h in daemon.holders[vol.name]) == \
        [('compute-1', 'migration'), ('compute-2', 'migration')]
    # The source detaches: the destination is exclusive.
    assert drv.terminate_connection(vol, {'host': 'compute-1'}) is False
    assert [(h.host, h.mode) for h in daemon.holders[vol.name]] == \
        [('compute-2', 'exclusive')]


def test_another_host_is_refused_naming_the_holder(drv, daemon,
                                                   attachments):
    vol = volume()
    drv.create_volume(vol)
    attachments[vol.id] = [attachment(host='compute-1')]
    daemon.hold(vol.name, 'compute-1', instance=fake.INSTANCE_ID)
    attachments[vol.id].append(attachment(instance=OTHER_INSTANCE))
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='held by compute-1'):
        drv.initialize_connection(vol, {'host': 'compute-2'})


def test_multiattach_is_shared_when_enabled(make_driver, daemon):
    drv = make_driver(lvmcoord_enable_multiattach=True)
    vol = volume(multiattach=True)
    drv.create_volume(vol)
    for host in ('compute-1', 'compute-2'):
        assert drv.initialize_connection(vol, {'host': host})['data'][
            'mode'] == 'shared'


def test_read_only_attach(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    info = drv.initialize_connection(vol, {'host': 'compute-1',
                                           'mode': 'ro'})
    assert info['data']['access_mode'] == 'ro'
    assert daemon.ops('activate')[-1][1]['read_only'] is True


def test_attach_waits_only_for_a_fenced_holder(make_driver, daemon):
    drv = make_driver(lvmcoord_attach_timeout=20)
    vol = volume()
    drv.create_volume(vol)
    daemon.fail['activate'] = errors.LeaseFenceWait('grantable in 2.0s')
    drv.initialize_connection(vol, {'host': 'compute-2'})
    first, second = daemon.ops('activate')
    assert 'wait' not in first[1] and second[1]['wait'] == 20.0


def test_detach_releases_on_the_host_and_is_idempotent(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    drv.initialize_connection(vol, {'host': 'compute-1'})
    for _ in range(2):
        assert drv.terminate_connection(vol, {'host': 'compute-1'}) is False
    assert daemon.ops('deactivate')[0][1] == {'vg': VG, 'lv': vol.name,
                                              'host': 'compute-1'}
    assert not daemon.holders


def test_force_detach_releases_everywhere(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1', modes.MIGRATION, 'i')
    daemon.hold(vol.name, 'compute-2', modes.MIGRATION, 'i')
    assert drv.terminate_connection(vol, None, force=True) is False
    assert not daemon.holders
    drv.terminate_connection(volume(), None)


def test_detach_keeps_a_device_another_attachment_uses(drv, daemon,
                                                       attachments):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1', modes.SHARED)
    attachments[vol.id] = [attachment(fake.INSTANCE_ID, 'compute-1'),
                           attachment(OTHER_INSTANCE, 'compute-1')]
    assert drv.terminate_connection(vol, {'host': 'compute-1'}) is True
    assert daemon.ops('deactivate') == []


def test_detach_from_a_dead_host(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, 'compute-1', alive=False)
    daemon.fail['deactivate'] = errors.HostUnavailable(
        'host compute-1 has no live lvmcoord session')
    drv.terminate_connection(vol, {'host': 'compute-1'})
    daemon.holders[vol.name][0].alive = True
    daemon.fail['deactivate'] = errors.HostUnavailable('did not answer')
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='did not answer'):
        drv.terminate_connection(vol, {'host': 'compute-1'})


@pytest.mark.parametrize('atts, host, expected', [
    ([], 'c1', (None, False)),
    ([{'instance_uuid': 'a'}], 'c1', ('a', False)),
    ([{'instance_uuid': 'a', 'connector': {'host': 'c1'}}], 'c1',
     ('a', False)),
    ([{'instance_uuid': 'a', 'attached_host': 'c1'},
      {'instance_uuid': 'a'}], 'c2', ('a', True)),
    ([{'instance_uuid': 'a', 'connector': {'host': 'c1'}},
      {'instance_uuid': 'b'}], 'c2', ('b', False)),
    ([{'instance_uuid': 'a', 'connector': {'host': 'c1'},
       'attach_status': 'detached'}, {'instance_uuid': 'a'}], 'c2',
     ('a', False)),
    ([{'instance_uuid': 'a'}, {'instance_uuid': 'b'}], 'c1',
     (None, False)),
])
def test_attach_instance(atts, host, expected):
    assert lvmcoord.attach_instance(atts, host) == expected


def test_attachments_come_fresh_from_the_database(drv, attachments):
    vol = volume()
    att = attachment()
    attachments[vol.id] = [att]
    assert drv._attachments(vol) == [att]


# -- manage --

def test_manage_existing_renames(drv, daemon):
    daemon.add('legacy-lv', 3 * GiB - MiB,
               tags=['lvmcoord_volume_unmanaged-one', 'keep-me'])
    vol = volume()
    ref = {'source-name': 'legacy-lv'}
    assert drv.manage_existing_get_size(vol, ref) == 3
    with mock.patch.object(lvmcoord.volume_utils,
                           'check_already_managed_volume',
                           return_value=False):
        drv.manage_existing(vol, ref)
    assert vol.name in daemon.lvs and 'legacy-lv' not in daemon.lvs
    # Now this volume's LV: its tag replaces the previous volume's.
    assert sorted(daemon.lvs[vol.name]['tags']) == [
        'keep-me', f'lvmcoord_volume_{vol.id}']
    drv.unmanage(vol)
    assert vol.name in daemon.lvs


def test_manage_existing_refusals(drv, daemon):
    vol = volume()
    for ref in ({}, {'source-name': 'nope'}):
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing_get_size(vol, ref)
    daemon.add('busy-lv')
    daemon.hold('busy-lv', 'compute-1')
    with mock.patch.object(lvmcoord.volume_utils,
                           'check_already_managed_volume',
                           return_value=False):
        with pytest.raises(exception.ManageExistingInvalidReference,
                           match='compute-1'):
            drv.manage_existing(vol, {'source-name': 'busy-lv'})
    known = volume()
    daemon.add(known.name)
    with mock.patch.object(lvmcoord.volume_utils,
                           'check_already_managed_volume',
                           return_value=True):
        with pytest.raises(exception.ManageExistingAlreadyManaged):
            drv.manage_existing(vol, {'source-name': known.name})


def test_manageable_volumes(drv, daemon):
    known = volume()
    daemon.add(known.name)
    daemon.add('free-lv', 2 * GiB)
    daemon.add('busy-lv')
    daemon.hold('busy-lv', 'compute-1')
    daemon.add('_snapshot-x')
    got = drv.get_manageable_volumes([known], None, 10, 0, ['size'],
                                     ['desc'])
    by_name = {e['reference']['source-name']: e for e in got}
    assert set(by_name) == {known.name, 'free-lv', 'busy-lv'}
    assert by_name['free-lv']['safe_to_manage'] is True
    assert by_name['free-lv']['size'] == 2
    assert by_name[known.name]['reason_not_safe'] == 'already managed'
    assert by_name[known.name]['cinder_id'] == known.id
    assert 'compute-1' in by_name['busy-lv']['reason_not_safe']


def test_retype_in_place_unless_multiattach_changes(drv):
    vol = volume()
    assert drv.retype(CTX, vol, {}, {'extra_specs': {}}, {}) is True
    assert drv.retype(CTX, vol, {}, {'extra_specs': {
        'multiattach': ('<is> True', None)}}, {}) is False


# -- stats --

def test_stats_from_the_daemons_vg_view(drv, daemon):
    drv.create_volume(volume(size=10))
    stats = drv.get_volume_stats(refresh=True)
    assert stats['storage_protocol'] == 'local'
    assert stats['volume_backend_name'] == 'lvmcoord'
    [pool] = stats['pools']
    assert (pool['total_capacity_gb'], pool['free_capacity_gb'],
            pool['provisioned_capacity_gb']) == \
        (100, 90, 10)
    assert pool['thick_provisioning_support'] is True
    assert pool['thin_provisioning_support'] is False
    assert pool['multiattach'] is False and pool['total_volumes'] == 1
    assert pool['backend_state'] == 'up'
    # Nova's 'local' type cannot resize an attached disk: Cinder's
    # scheduler then refuses extends of attached volumes.
    assert pool['online_extend_support'] is False
    assert drv.get_pool(volume()) == 'lvmcoord'


def test_stats_multiattach_when_enabled(make_driver, daemon):
    drv = make_driver(lvmcoord_enable_multiattach=True)
    daemon.op_vg_stats = lambda vg: {'size': 50 * GiB, 'free': 20 * GiB,
                                     'lv_count': 7}
    [pool] = drv.get_volume_stats(refresh=True)['pools']
    assert (pool['total_capacity_gb'], pool['free_capacity_gb'],
            pool['total_volumes'], pool['multiattach']) == (50, 20, 7, True)


def test_stats_when_the_daemon_is_down(drv, daemon):
    daemon.fail['vg_stats'] = errors.HostUnavailable('not reachable')
    [pool] = drv.get_volume_stats(refresh=True)['pools']
    assert pool['backend_state'] == 'down'
    assert pool['free_capacity_gb'] == 0


def test_failover_is_refused(drv):
    with pytest.raises(exception.UnableToFailOver, match='same VG'):
        drv.failover_host(CTX, [])
    with pytest.raises(exception.UnableToFailOver):
        drv.failover_completed(CTX)


# -- the data path --

def test_copy_data_writes_only_what_differs(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    for path in (src, dst):
        with open(path, 'wb') as f:
            f.truncate(3 * datacopy.CHUNK + 4096)
    fill(src, b'a' * 4096, datacopy.CHUNK)
    fill(dst, b'b' * 4096, 2 * datacopy.CHUNK)
    writes = []
    real = blockio.write
    with mock.patch.object(blockio, 'write', side_effect=lambda fd, buf,
                           off, n: (writes.append(off),
                                    real(fd, buf, off, n))):
        datacopy.copy_data(str(src), str(dst), 3 * datacopy.CHUNK + 4096)
    assert read(dst, 4 * datacopy.CHUNK) == read(src, 4 * datacopy.CHUNK)
    assert writes == [datacopy.CHUNK, 2 * datacopy.CHUNK]


def test_zero_data_skips_zero_chunks(tmp_path):
    path = tmp_path / 'dev'
    with open(path, 'wb') as f:
        f.truncate(2 * datacopy.CHUNK)
    fill(path, b'x', datacopy.CHUNK + 7)
    with mock.patch.object(blockio, 'write',
                           wraps=blockio.write) as write:
        datacopy.zero_data(str(path), 2 * datacopy.CHUNK)
    assert read(path, 2 * datacopy.CHUNK) == bytes(2 * datacopy.CHUNK)
    assert [c.args[2] for c in write.call_args_list] == [datacopy.CHUNK]


def test_local_activations_are_shared_and_counted(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    local = drv._local
    with local.hold(VG, vol.name, 'a', read_only=True) as p1:
        with local.hold(VG, vol.name, 'b', read_only=True) as p2:
            assert p1 == p2
        assert daemon.holders[vol.name]
        with pytest.raises(exception.VolumeBackendAPIException,
                           match='read-only'):
            with local.hold(VG, vol.name, 'c'):
                pass
    assert len(daemon.ops('activate')) == 1
    assert len(daemon.ops('deactivate')) == 1
    assert not daemon.holders


def test_local_activation_of_a_volume_attached_here_is_kept(drv, daemon):
    vol = volume()
    drv.create_volume(vol)
    daemon.hold(vol.name, HERE, instance='inst')
    with drv._local.hold(VG, vol.name, 'copy') as path:
        assert path == daemon.data(vol.name)
    assert daemon.ops('activate')[0][1]['instance'] == 'inst'
    assert daemon.ops('deactivate') == []
    assert [h.instance for h in daemon.holders[vol.name]] == ['inst']


def test_concurrent_copies_from_threads(drv, daemon):
    src = volume()
    drv.create_volume(src)
    fill(daemon.data(src.name), b'z' * 512, 0)
    clones = [volume() for _ in range(6)]
    threads = [threading.Thread(target=drv.create_cloned_volume,
                                args=(c, src)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clones:
        assert read(daemon.data(c.name), 512) == b'z' * 512
    assert not daemon.holders
