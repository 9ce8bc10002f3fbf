"""LvmcoordDriver: Cinder volumes as thick LVs of a shared VG.

Every LVM action goes through the local lvmcoordd (its Unix socket): VG
metadata changes run under the cluster-wide VG lock, and an LV is a block
device on a host only while that host holds its activation lease. The
driver runs no LVM command and needs no root helper for it. It activates
nothing on the volume host except for its own data copies (clone, image,
wipe), which take the lease there like any other host.
"""
import math

from cinder import context as cinder_context
from cinder import exception
from cinder import interface
from cinder import objects
from cinder import utils as cinder_utils
from cinder.image import image_utils
from cinder.volume import driver as cinder_driver
from cinder.volume import volume_utils
from os_brick import exception as brick_exception
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from coordinator import errors
from coordinator.api.client import Client
from coordinator.daemon import copy as daemon_copy
from coordinator.engine import modes
from coordinator.lvm import names
from driver import connector as lvmcoord_connector
from driver import datacopy
from driver import hosts
from driver import options

LOG = logging.getLogger(__name__)

GiB = units.Gi
PROTOCOL = 'local'
# LVM reserves LV names starting with "snapshot"; escaped as the stock LVM
# driver does, so LVs it created can be managed and vice versa.
RESERVED_PREFIX = 'snapshot'
# Tag of the LV made for a volume: tells a create whose reply was lost (the
# LV is ours: adopt it) from an LV of the same name made by anyone else.
VOLUME_TAG = 'lvmcoord_volume_'
# Client failures where the request never reached the daemon.
NOT_SENT = (FileNotFoundError, ConnectionRefusedError, PermissionError)


def snapshot_lv(snapshot):
    """The LV name of a Cinder snapshot."""
    name = snapshot.name
    return '_' + name if name.startswith(RESERVED_PREFIX) else name


def volume_tag(volume):
    """The tag of the LV holding ``volume`` (its name's id)."""
    return VOLUME_TAG + volume.name_id


def volume_tags(tags):
    """The lvmcoord volume tags among ``tags``."""
    return [t for t in tags or () if t.startswith(VOLUME_TAG)]


def may_have_run(exc):
    """False if a HostUnavailable from the client means the request never
    reached the daemon; True if it may have run (timeout, reply lost)."""
    return not isinstance(exc.__cause__, NOT_SENT)


def describe_holders(holders):
    """'compute-1 (exclusive), ...' from the holders of a ``show`` reply."""
    return ', '.join(
        f"{h['host']} ({h['mode']}"
        f"{'' if h.get('alive', True) else ', session ended'})"
        for h in holders)


def attachment_host(attachment):
    """The host an attachment is connected on, None while reserved."""
    connector = attachment.get('connector', None) or {}
    return connector.get('host') or attachment.get('attached_host', None)


def attach_instance(attachments, host):
    """(instance, migrating) for an attach of the volume on ``host``.

    The attachment being connected has no host yet, or this one. The same
    instance attached on another host means Nova live migration: the
    destination connects while the source still is.
    """
    here, there = set(), set()
    for att in attachments:
        instance = att.get('instance_uuid', None)
        if not instance or att.get('attach_status', None) == 'detached':
            continue
        where = attachment_host(att)
        (here if where in (None, host) else there).add(instance)
    moving = here & there
    if moving:
        return sorted(moving)[0], True
    if len(here) == 1:
        return next(iter(here)), False
    return None, False


@interface.volumedriver
class LvmcoordDriver(cinder_driver.VolumeDriver):
    """Thick LVs of a shared VG; leases and metadata through lvmcoordd."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'lvmcoord_CI'
    # VG metadata changes are serialized cluster-wide by the daemons, so
    # several cinder-volume services may drive one VG at once.
    SUPPORTS_ACTIVE_ACTIVE = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options.register(self.configuration)
        self.backend_name = self.configuration.safe_get(
            'volume_backend_name') or 'lvmcoord'
        timeout = self.configuration.lvmcoord_attach_timeout + 120.0
        self.client = Client(self.configuration.lvmcoord_socket_path,
                             timeout=timeout)
        self.daemon_host = None
        self._local = datacopy.LocalActivations(self)

    @classmethod
    def get_driver_options(cls):
        """The options this driver reads from its backend section."""
        return options.backend_opts + cls._get_oslo_driver_opts(
            'volume_backend_name', 'reserved_percentage',
            'max_over_subscription_ratio', 'volume_dd_blocksize',
            'volume_clear', 'volume_clear_size', 'volume_clear_ionice')

    @property
    def vg(self):
        """The shared VG's name."""
        return self.configuration.volume_group

    # -- talking to the daemon --

    def _rpc(self, op, **args):
        return self.client.call(op, **{k: v for k, v in args.items()
                                       if v is not None})

    def _call(self, action, op, **args):
        """_rpc, with daemon errors as Cinder exceptions naming
        ``action``."""
        try:
            return self._rpc(op, **args)
        except errors.InvalidInput as exc:
            raise exception.InvalidInput(reason=f'{action}: {exc}') from exc
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {exc}') from exc

    def _show(self, lv):
        """The daemon's view of an LV, or None if it does not exist."""
        try:
            return self._rpc('show', vg=self.vg, lv=lv)
        except errors.LVMError as exc:
            if exc.kind == 'not-found':
                return None
            raise exception.VolumeBackendAPIException(
                data=f'reading {self.vg}/{lv}: {exc}') from exc
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'reading {self.vg}/{lv}: {exc}') from exc

    def _here(self):
        if self.daemon_host is None:
            self.daemon_host = self._call('asking lvmcoordd its host name',
                                          'status')['host']
        return self.daemon_host

    # -- set-up --

    def do_setup(self, context):
        """Refuse configurations lvmcoord cannot serve."""
        try:
            lvm_type = self.configuration.safe_get('lvm_type') or 'default'
        except (cfg.Error, ValueError) as exc:
            raise exception.InvalidConfigurationValue(
                message=f'lvm_type: {exc}; lvmcoord uses thick LVs only: '
                        f'set lvm_type = default') from exc
        if lvm_type not in options.THICK_TYPES:
            raise exception.InvalidConfigurationValue(
                message=f'lvm_type = {lvm_type} is not supported by '
                        f'lvmcoord: a thin pool cannot be active on several '
                        f'hosts; set lvm_type = default (thick LVs)')
        try:
            names.vg_name(self.vg, 'volume_group')
        except errors.InvalidInput as exc:
            raise exception.InvalidConfigurationValue(
                message=str(exc)) from exc
        if self.configuration.safe_get('lvm_mirrors'):
            raise exception.InvalidConfigurationValue(
                message='lvm_mirrors is not supported by lvmcoord: LVs are '
                        'linear; mirror on the SAN array instead')
        if self.configuration.safe_get('replication_device'):
            raise exception.InvalidConfigurationValue(
                message='replication_device is not supported by lvmcoord: '
                        'every host of the cluster sees the same VG')

    def check_for_setup_error(self):
        """Fail clearly unless the daemon runs, sees the VG and reaches
        etcd."""
        path = self.configuration.lvmcoord_socket_path
        try:
            status = self._rpc('status')
        except errors.HostUnavailable as exc:
            raise exception.VolumeBackendAPIException(
                data=f'lvmcoordd is not running or not reachable at {path}: '
                     f'{exc}') from exc
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'lvmcoordd at {path} failed its status: {exc}') from exc
        host, vg = status['host'], self.vg
        self.daemon_host = host
        managed = status.get('vgs') or []
        if vg not in managed:
            raise exception.VolumeBackendAPIException(
                data=f'lvmcoordd on {host} does not manage VG {vg} (it '
                     f'manages: {", ".join(managed) or "none"}); add it to '
                     f'[lvm] volume_groups in lvmcoord.conf')
        ready = status.get('readiness') or {}
        problem = (ready.get('problems') or {}).get(vg)
        if problem:
            raise exception.VolumeBackendAPIException(
                data=f'host {host} cannot use VG {vg}: {problem}')
        if vg not in (ready.get('vgs') or {}):
            raise exception.VolumeBackendAPIException(
                data=f'VG {vg} is not visible on {host}')
        try:
            # Reads the lease table: proves etcd answers.
            self._rpc('list', vg=vg)
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'lvmcoordd on {host} cannot serve VG {vg} (is etcd '
                     f'reachable?): {exc}') from exc

    # -- volumes --

    def _multiattach(self, volume):
        return bool(volume.get('multiattach', None)) and \
            self.configuration.lvmcoord_enable_multiattach

    @staticmethod
    def _bytes(gib, what):
        if isinstance(gib, bool) or not isinstance(gib, int) or gib <= 0:
            raise exception.InvalidInput(
                reason=f'{what}: size {gib!r} GiB is not a positive whole '
                       f'number of GiB')
        return gib * GiB

    def create_volume(self, volume):
        """Create a thick LV tagged with the volume's id; nothing is
        activated anywhere. The volume's own LV, left by a create whose
        reply was lost, is adopted."""
        lv = volume.name
        action = f'creating volume {lv}'
        if volume.get('multiattach', None) and \
                not self.configuration.lvmcoord_enable_multiattach:
            raise exception.VolumeDriverException(
                message=f'{action}: multiattach volumes need '
                        f'lvmcoord_enable_multiattach = True')
        size = self._bytes(volume.size, action)
        try:
            self._rpc('create', vg=self.vg, lv=lv, size=size,
                      tags=[volume_tag(volume)],
                      multiattach=self._multiattach(volume) or None)
            return
        except errors.LVMError as exc:
            if exc.kind != 'exists':
                raise exception.VolumeBackendAPIException(
                    data=f'{action}: {exc}') from exc
            why = 'it already exists'
        except errors.HostUnavailable as exc:
            path = getattr(self.client, 'path',
                           self.configuration.lvmcoord_socket_path)
            if not may_have_run(exc):
                raise exception.VolumeBackendAPIException(
                    data=f'{action}: lvmcoordd is not reachable at {path} '
                         f'(nothing was created): {exc}') from exc
            why = (f'lvmcoordd timed out or its reply was lost, state '
                   f'unknown ({exc})')
            LOG.warning('%s: %s; reading what is on disk', action, why)
        except errors.InvalidInput as exc:
            raise exception.InvalidInput(reason=f'{action}: {exc}') from exc
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {exc}') from exc
        self._adopt(volume, size, why, action)

    def _adopt(self, volume, size, why, action):
        """Accept the volume's own LV found on disk after ``why``; refuse
        anything else, saying what was found."""
        lv, tag = volume.name, volume_tag(volume)
        try:
            found = self._rpc('show', vg=self.vg, lv=lv)
        except errors.LVMError as exc:
            if exc.kind != 'not-found':
                raise exception.VolumeBackendAPIException(
                    data=f'{action}: {why}; then reading {self.vg}/{lv} '
                         f'failed: {exc}') from exc
            found = None
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {why}; then reading {self.vg}/{lv} '
                     f'failed: {exc}') from exc
        if found is None:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {why}; {self.vg}/{lv} is not on disk '
                     f'now; the daemon may still create it: a retry '
                     f'adopts it then')
        tags = found.get('tags') or []
        if tag not in tags:
            owner = ', '.join(volume_tags(tags)) or 'no lvmcoord volume tag'
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {why}: {self.vg}/{lv} on disk is not this '
                     f'volume\'s (tags: {owner}; expected {tag}); left as '
                     f'it is')
        if found['size'] != size:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {why}: {self.vg}/{lv} on disk is this '
                     f'volume\'s ({tag}) but {found["size"]} bytes, not '
                     f'{size}; left as it is')
        LOG.warning('%s: %s; %s/%s found on disk with tag %s and %d bytes: '
                    'adopted', action, why, self.vg, lv, tag, size)

    def delete_volume(self, volume):
        """Remove the LV; refused while any host holds it, a success if
        it is already gone."""
        lv = volume.name
        info = self._show(lv)
        if info is None:
            LOG.info('%s/%s is already gone', self.vg, lv)
            return
        if info['holders']:
            raise self._busy(volume, describe_holders(info['holders']))
        others = [t for t in volume_tags(info.get('tags'))
                  if t != volume_tag(volume)]
        if others:
            # Another volume's LV under this name: never wipe or remove it.
            raise exception.VolumeBackendAPIException(
                data=f'deleting volume {lv}: {self.vg}/{lv} belongs to '
                     f'another volume (tags: {", ".join(others)}; expected '
                     f'{volume_tag(volume)}); not deleted')
        self._wipe(lv, info['size'])
        try:
            self._rpc('delete', vg=self.vg, lv=lv)
        except errors.LeaseConflict as exc:
            raise self._busy(volume, exc) from exc
        except errors.LVMError as exc:
            if exc.kind == 'not-found':
                return
            if exc.kind == 'in-use':
                raise self._busy(volume, exc) from exc
            raise exception.VolumeBackendAPIException(
                data=f'deleting {lv}: {exc}') from exc
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'deleting {lv}: {exc}') from exc

    @staticmethod
    def _busy(volume, why):
        return exception.VolumeIsBusy(
            message=f'volume {volume.name} is in use, not deleted: held by '
                    f'{why}', volume_name=volume.name)

    def _wipe(self, lv, size):
        # Data must not leak into the next tenant's LV: LVs are created
        # without zeroing (zeroing needs activation on the volume host).
        method = self.configuration.safe_get('volume_clear') or 'zero'
        if method == 'none':
            return
        limit = (self.configuration.safe_get('volume_clear_size') or 0) * \
            units.Mi
        size = min(size, limit) if limit else size
        purpose = f'wiping {lv} before delete'
        with self._local.hold(self.vg, lv, purpose) as path:
            if datacopy.accessible(path, write=True):
                datacopy.zero_data(path, size, cinder_utils.cooperative_yield)
            else:
                # Devices only root may open: dd through the root helper.
                volume_utils.clear_volume(
                    size // units.Mi, path, volume_clear=method,
                    volume_clear_size=size // units.Mi,
                    volume_clear_ionice=self.configuration.safe_get(
                        'volume_clear_ionice'))

    def extend_volume(self, volume, new_size):
        """lvextend under the VG lock (detached volumes: the driver reports
        online_extend_support False); the daemon refreshes any host that
        has the LV active (the driver's own copies)."""
        action = f'extending {volume.name} to {new_size} GiB'
        out = self._call(action, 'extend', vg=self.vg, lv=volume.name,
                         size=self._bytes(new_size, action))
        LOG.info('%s extended; refreshed on %s', volume.name,
                 ', '.join(sorted(out.get('refreshed') or {})) or 'no host')

    # -- snapshots --

    def create_snapshot(self, snapshot):
        """The daemon takes it on the host where the origin is active."""
        action = f'creating snapshot {snapshot.name}'
        merging = (self._show(snapshot.volume_name) or {}).get('merging')
        if merging:
            # LVM refuses a snapshot of an origin with a merging one.
            raise exception.VolumeBackendAPIException(
                data=f'{action}: volume {snapshot.volume_name} has a '
                     f'pending revert (merge of {merging}), completed on '
                     f'its next activation; attach it once, then snapshot')
        self._call(action, 'snapshot', vg=self.vg, lv=snapshot.volume_name,
                   name=snapshot_lv(snapshot),
                   size=self._bytes(snapshot.volume_size, action))

    def delete_snapshot(self, snapshot):
        """Remove the snapshot LV; a success if it is already gone."""
        lv = snapshot_lv(snapshot)
        try:
            out = self._rpc('delete', vg=self.vg, lv=lv)
            if out and out.get('merging_into'):
                # Consumed by a revert: LVM drops it when the merge
                # completes; removing it now would cancel the revert.
                LOG.info('snapshot %s: %s', lv, out.get('message'))
        except errors.LeaseConflict as exc:
            raise exception.SnapshotIsBusy(
                message=f'snapshot {lv} is in use: {exc}',
                snapshot_name=lv) from exc
        except errors.LVMError as exc:
            if exc.kind != 'not-found':
                raise exception.VolumeBackendAPIException(
                    data=f'deleting snapshot {lv}: {exc}') from exc
            LOG.info('%s/%s is already gone', self.vg, lv)
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'deleting snapshot {lv}: {exc}') from exc

    def create_volume_from_snapshot(self, volume, snapshot):
        """New LV with the snapshot's data, copied by the daemon where
        the origin is active (its holder, or here under a short lease): a
        snapshot's exceptions live in that host's device-mapper, and a
        snapshot activates only with its origin."""
        origin, src = snapshot.volume_name, snapshot_lv(snapshot)
        purpose = f'creating {volume.name} from snapshot {src}'
        info = self._show(origin) or {}
        if info.get('merging') == src:
            raise exception.VolumeBackendAPIException(
                data=f'{purpose}: {src} was merged into {origin} by a '
                     f'revert (completed on {origin}\'s next activation): '
                     f'the snapshot no longer exists; clone {origin} '
                     f'instead')
        self._copy_by_daemon(volume, src, snapshot.volume_size, purpose,
                             self._held_elsewhere(info))

    def create_cloned_volume(self, volume, src_vref):
        """New LV with the source's data: copied on this volume host, or,
        when the source is attached on another host, by the daemon there
        from a temporary snapshot taken there."""
        src = src_vref.name
        purpose = f'cloning {src} into {volume.name}'
        away = self._held_elsewhere(self._show(src) or {})
        if away:
            self._copy_by_daemon(volume, src, src_vref.size, purpose, away,
                                 snapshot=f'{volume.name}-src')
            return
        self._copy_into(volume, src, src_vref.size, purpose)

    def _held_elsewhere(self, info):
        """The live holders of a ``show`` reply on other hosts."""
        here = self._here()
        return [h for h in info.get('holders', [])
                if h['host'] != here and h.get('alive', True)]

    def _copy_by_daemon(self, volume, src, src_gib, purpose, away,
                        snapshot=None):
        """Create the volume, then have the daemons fill it where the
        source is active; removed again if the copy fails."""
        where = describe_holders(away) if away else self._here()
        self.create_volume(volume)
        size = min(src_gib, volume.size) * GiB
        try:
            try:
                out = self._long_client(size).call(
                    'copy', vg=self.vg, src=src, dst=volume.name, size=size,
                    **({'snapshot': snapshot} if snapshot else {}))
            except errors.CoordError as exc:
                raise exception.VolumeBackendAPIException(
                    data=f'{purpose} on {where}: {exc}') from exc
        except Exception:
            with excutils.save_and_reraise_exception():
                self._remove_quietly(volume.name)
        if out.get('consistency') == 'live':
            LOG.warning('%s: copied on %s while attached there, without a '
                        'snapshot (no device-mapper there): not '
                        'crash-consistent if the guest wrote meanwhile',
                        purpose, out.get('on'))
        LOG.info('%s: copied on %s (%s)', purpose, out.get('on'),
                 out.get('consistency'))

    def _long_client(self, size):
        """The daemon client, waiting as long as a copy of ``size`` bytes
        may take."""
        timeout = daemon_copy.timeout_for(size) + 120.0
        client = self.client
        if isinstance(client, Client) and client.timeout < timeout:
            return Client(client.path, timeout=timeout)
        return client

    def _copy_into(self, volume, src, src_gib, purpose):
        # The source is held (read-only) first: a busy source fails before
        # anything is created.
        with self._local.hold(self.vg, src, purpose, read_only=True) as sp:
            self.create_volume(volume)
            try:
                with self._local.hold(self.vg, volume.name, purpose) as dp:
                    self._copy(sp, dp, min(src_gib, volume.size) * GiB)
            except Exception:
                with excutils.save_and_reraise_exception():
                    self._remove_quietly(volume.name)

    def _copy(self, src, dst, size):
        if datacopy.accessible(src) and datacopy.accessible(dst, write=True):
            datacopy.copy_data(src, dst, size, cinder_utils.cooperative_yield)
        else:
            # Devices only root may open: dd through the root helper.
            volume_utils.copy_volume(
                src, dst, size // units.Mi,
                self.configuration.volume_dd_blocksize,
                execute=self._execute)

    def _remove_quietly(self, lv):
        """Remove the LV a failed copy made, wiped first as any delete is:
        what the copy wrote must not reach the next LV on its extents. Left
        in place (its volume in error, whose delete wipes) if either
        fails."""
        try:
            info = self._show(lv)
            if info is not None:
                self._wipe(lv, info['size'])
            self._rpc('delete', vg=self.vg, lv=lv)
        except Exception as exc:  # the copy's own error is what is raised
            LOG.error('could not wipe and remove %s/%s after a failed copy: '
                      '%s', self.vg, lv, exc)

    def snapshot_revert_use_temp_snapshot(self):
        """No backup snapshot around a revert: the merge is deferred to
        the origin's next activation, so Cinder's backup snapshot would be
        taken and deleted before any data changed (and cost a COW LV the
        size of the volume)."""
        return False

    def revert_to_snapshot(self, context, volume, snapshot):
        """lvconvert --merge of the snapshot into its detached origin
        (the daemon's revert); LVM completes the merge on the origin's
        next activation, before any I/O. The snapshot is consumed."""
        lv, snap = volume.name, snapshot_lv(snapshot)
        action = f'reverting {lv} to snapshot {snap}'
        info = self._show(lv)
        if info is None:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {self.vg}/{lv} does not exist')
        if info.get('merging') == snap:
            LOG.info('%s: already pending (merged on its next activation)',
                     action)
            return
        if info.get('merging'):
            raise exception.VolumeBackendAPIException(
                data=f'{action}: a revert to {info["merging"]} is pending '
                     f'(merged on {lv}\'s next activation)')
        held = [h for h in info['holders'] if h.get('alive', True)]
        if held:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {lv} is attached on '
                     f'{describe_holders(held)}; detach it first')
        found = self._show(snap)
        if found is None:
            raise exception.VolumeBackendAPIException(
                data=f'{action}: {self.vg}/{snap} does not exist')
        if found.get('origin') != lv:
            raise exception.InvalidSnapshot(
                reason=f'{action}: {self.vg}/{snap} is not a snapshot of '
                       f'{lv} (its origin: {found.get("origin") or "none"})')
        out = self._call(action, 'revert', vg=self.vg, lv=lv, snapshot=snap)
        LOG.info('%s: merge %s', action, out.get('merge'))

    # -- local activations for copies (through the lvmcoord connector) --

    def connector(self):
        """The lvmcoord os-brick connector on this volume host (its local
        daemon): the driver's own host-side attaches go through it."""
        conn = lvmcoord_connector.LvmcoordConnector(
            None, socket_path=self.configuration.lvmcoord_socket_path)
        conn.client = self.client
        return conn

    def activate_here(self, lv, purpose, read_only=False):
        """Take the lease and activate ``lv`` on this volume host."""
        here = self._here()
        info = self._show(lv)
        if info is None:
            raise exception.VolumeBackendAPIException(
                data=f'{purpose}: {self.vg}/{lv} does not exist')
        mine = next((h for h in info['holders']
                     if h['host'] == here and h.get('alive', True)), None)
        if mine:
            # Already attached here: reuse it as granted, leave it on.
            props = {'mode': mine['mode'], 'instance': mine['instance']}
        else:
            props = {'access_mode': 'ro' if read_only else 'rw'}
        try:
            got = self.connector().connect_volume(
                dict(props, vg=self.vg, lv=lv))
        except brick_exception.BrickException as exc:
            if isinstance(exc.__cause__, errors.LeaseConflict):
                raise exception.VolumeIsBusy(
                    message=f'{purpose}: {self.vg}/{lv} is in use: '
                            f'{exc.__cause__}', volume_name=lv) from exc
            raise exception.VolumeBackendAPIException(
                data=f'{purpose}: cannot activate {self.vg}/{lv} on '
                     f'{here}: {exc}') from exc
        return {'path': got['path'], 'count': 0, 'keep': mine is not None,
                'read_only': read_only and mine is None}

    def deactivate_here(self, lv):
        """Deactivate ``lv`` on this volume host and release its lease."""
        try:
            self.connector().disconnect_volume({'vg': self.vg, 'lv': lv},
                                               None)
        except brick_exception.BrickException as exc:
            LOG.error('could not deactivate %s/%s on %s: %s', self.vg, lv,
                      self.daemon_host, exc)

    # -- images --

    def copy_image_to_volume(self, context, volume, image_service, image_id,
                             disable_sparse=False):
        """Write an image onto the LV, active on this volume host."""
        purpose = f'writing image {image_id} to {volume.name}'
        with self._local.hold(self.vg, volume.name, purpose) as path:
            image_utils.fetch_to_raw(
                context, image_service, image_id, path,
                self.configuration.volume_dd_blocksize, size=volume.size,
                run_as_root=not datacopy.accessible(path, write=True),
                disable_sparse=disable_sparse)

    def copy_volume_to_image(self, context, volume, image_service,
                             image_meta):
        """Upload the LV, active read-only on this volume host."""
        purpose = f'uploading {volume.name} to an image'
        with self._local.hold(self.vg, volume.name, purpose,
                              read_only=True) as path:
            volume_utils.upload_volume(context, image_service, image_meta,
                                       path, volume,
                                       run_as_root=not
                                       datacopy.accessible(path))

    # -- exports and connections --

    def create_export(self, context, volume, connector):
        """Nothing to export: compute hosts see the LU themselves."""

    def ensure_export(self, context, volume):
        """Nothing to do (the stock LVM driver activates here; never
        this one)."""

    def remove_export(self, context, volume):
        """Nothing to do."""

    def validate_connector(self, connector):
        """A non-empty connector must name a host lvmcoord knows."""
        if connector:
            self._connector_host(connector)

    def _connector_host(self, connector):
        """The lvmcoord host of a connector, or InvalidConnectorException
        naming the known hosts."""
        if not connector.get('host'):
            raise exception.InvalidConnectorException(missing='host')
        try:
            return self._lvmcoord_host(connector['host'])
        except hosts.UnknownHost as exc:
            raise exception.InvalidConnectorException(
                missing=f'a host lvmcoord knows: {exc}') from exc

    def _known_hosts(self):
        """The cluster's host names per the local daemon; None if it
        cannot say (the names are then used as given)."""
        try:
            return self._rpc('hosts')['hosts']
        except errors.CoordError as exc:
            LOG.warning('lvmcoordd cannot list the cluster\'s hosts (%s); '
                        'connector host names are used as given', exc)
            return None

    def _lvmcoord_host(self, name, also=()):
        """The lvmcoord host Nova's host ``name`` means, among the known
        hosts and ``also`` (UnknownHost if none)."""
        aliases = self.configuration.lvmcoord_host_map or {}
        if name in aliases:
            return aliases[name]
        known = self._known_hosts()
        if known is not None:
            known = set(known) | set(also)
        host, rule = hosts.resolve(name, known, self._here(), aliases,
                                   hosts.local_names())
        if host != name:
            LOG.debug('connector host %s is lvmcoord host %s (%s)', name,
                      host, rule)
        return host

    def initialize_connection(self, volume, connector, initiator_data=None):
        """The daemon on connector['host'] takes the lease and activates;
        Nova's 'local' volume type uses data.device_path as the disk."""
        if not connector:
            return {'driver_volume_type': PROTOCOL, 'data': {}}
        lv, host = volume.name, self._connector_host(connector)
        if self._multiattach(volume):
            mode, instance = modes.SHARED, None
        else:
            # Attachments name hosts as Nova does: compared in its names.
            instance, moving = attach_instance(self._attachments(volume),
                                               connector['host'])
            mode = modes.MIGRATION if moving else modes.EXCLUSIVE
        read_only = connector.get('mode') == 'ro'
        args = {'vg': self.vg, 'lv': lv, 'host': host, 'mode': mode,
                'instance': instance, 'read_only': read_only or None}
        try:
            try:
                got = self._rpc('activate', **args)
            except errors.LeaseFenceWait as exc:
                # The holder's session ended: it is fenced within TTL +
                # grace, then the LV is ours.
                LOG.warning('%s: waiting for the fence: %s', lv, exc)
                got = self._rpc('activate', wait=float(
                    self.configuration.lvmcoord_attach_timeout), **args)
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'attaching {lv} on {host} ({mode}): {exc}') from exc
        LOG.info('%s active on %s (%s, token %s)', lv, got['host'],
                 got['mode'], got['token'])
        return {'driver_volume_type': PROTOCOL,
                'data': {'device_path': got['path'], 'vg': self.vg,
                         'lv': lv, 'token': got['token'],
                         'host': got['host'], 'mode': got['mode'],
                         'instance': got.get('instance'),
                         'access_mode': 'ro' if read_only else 'rw'}}

    @staticmethod
    def _attachments(volume):
        """The volume's attachments as the database has them now: the
        volume object Cinder hands over was loaded before the attachment
        being connected was reserved."""
        ctx = cinder_context.get_admin_context()
        return list(objects.VolumeAttachmentList.get_all_by_volume_id(
            ctx, volume.id))

    def terminate_connection(self, volume, connector, **kwargs):
        """Deactivate and release on the connector's host (idempotent);
        without a connector, on every host (force detach). True when the
        device stays for another attachment on that host."""
        if not connector or not connector.get('host'):
            info = self._show(volume.name) or {'holders': []}
            for holder in info['holders']:
                self._deactivate(volume.name, holder['host'])
            return False
        same = [a for a in self._attachments(volume)
                if attachment_host(a) == connector['host']
                and a.get('attach_status', None) != 'detached']
        if len(same) > 1 and not kwargs.get('force'):
            LOG.info('%s stays active on %s: %d attachments there',
                     volume.name, connector['host'], len(same))
            return True
        info = self._show(volume.name) or {'holders': []}
        try:
            # A holder may have left the membership (its daemon died):
            # still a name to match.
            host = self._lvmcoord_host(
                connector['host'], [h['host'] for h in info['holders']])
        except hosts.UnknownHost as exc:
            LOG.warning('detaching %s: %s; no holder there, nothing to '
                        'release', volume.name, exc)
            return False
        self._deactivate(volume.name, host)
        return False

    def _deactivate(self, lv, host):
        try:
            self._rpc('deactivate', vg=self.vg, lv=lv, host=host)
        except errors.HostUnavailable as exc:
            info = self._show(lv) or {'holders': []}
            if any(h['host'] == host and h.get('alive', True)
                   for h in info['holders']):
                raise exception.VolumeBackendAPIException(
                    data=f'detaching {lv} from {host}: {exc}') from exc
            # No live session there: its lease ends with it (fenced).
            LOG.warning('%s: %s; its lease ends with its session', lv, exc)
        except errors.CoordError as exc:
            raise exception.VolumeBackendAPIException(
                data=f'detaching {lv} from {host}: {exc}') from exc

    # -- manage / unmanage --

    def _existing(self, existing_ref):
        name = (existing_ref or {}).get('source-name')
        if not name:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason='the reference must contain source-name')
        info = self._show(name)
        if info is None:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=f'no LV {name} in VG {self.vg}')
        return name, info

    def manage_existing(self, volume, existing_ref):
        """Rename an existing LV to the volume's name."""
        name, info = self._existing(existing_ref)
        vol_id = volume_utils.extract_id_from_volume_name(name)
        if volume_utils.check_already_managed_volume(vol_id):
            raise exception.ManageExistingAlreadyManaged(volume_ref=name)
        if info['holders']:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=f'{name} is in use: held by '
                       f'{describe_holders(info["holders"])}')
        self._call(f'renaming {name} to {volume.name}', 'rename',
                   vg=self.vg, lv=name, new_name=volume.name)
        # Now this volume's: its tag, and no other volume's.
        stale = [t for t in volume_tags(info.get('tags'))
                 if t != volume_tag(volume)]
        self._call(f'tagging {volume.name}', 'tag', vg=self.vg,
                   lv=volume.name, add=[volume_tag(volume)],
                   remove=stale or None)

    def manage_existing_get_size(self, volume, existing_ref):
        """The LV's size in whole GiB, rounded up."""
        _, info = self._existing(existing_ref)
        return int(math.ceil(info['size'] / GiB))

    def unmanage(self, volume):
        """Leave the LV as it is."""
        LOG.info('%s/%s is no longer managed by Cinder', self.vg,
                 volume.name)

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        """LVs of the VG that could become Cinder volumes."""
        known = {v['id'] for v in cinder_volumes}
        entries = []
        for lv in self._call(f'listing VG {self.vg}', 'list', vg=self.vg):
            name = lv['lv']
            if name.startswith('_' + RESERVED_PREFIX):
                continue
            cinder_id = volume_utils.extract_id_from_volume_name(name)
            entry = {'reference': {'source-name': name},
                     'size': int(math.ceil(lv['size'] / GiB)),
                     'cinder_id': None, 'extra_info': None,
                     'safe_to_manage': True, 'reason_not_safe': None}
            if cinder_id in known:
                entry.update(cinder_id=cinder_id, safe_to_manage=False,
                             reason_not_safe='already managed')
            elif lv['holders']:
                entry.update(safe_to_manage=False,
                             reason_not_safe='volume in use on ' +
                             ', '.join(lv['holders']))
            entries.append(entry)
        return volume_utils.paginate_entries_list(entries, marker, limit,
                                                  offset, sort_keys,
                                                  sort_dirs)

    def retype(self, context, volume, new_type, diff, host):
        """In place unless multiattach changes (then Cinder migrates)."""
        extra = (diff or {}).get('extra_specs') or {}
        return 'multiattach' not in extra

    # -- stats --

    def _capacity(self):
        """(total, free, count) bytes of the VG, from the daemon."""
        got = self._rpc('vg_stats', vg=self.vg)
        return got['size'], got['free'], got['lv_count']

    def _update_volume_stats(self):
        conf = self.configuration
        try:
            total, free, count = self._capacity()
            state = 'up'
        except (errors.CoordError, KeyError, OSError, ValueError) as exc:
            LOG.error('capacity of VG %s unknown: %s', self.vg, exc)
            total = free = count = 0
            state = 'down'
        pool = {
            'pool_name': self.backend_name,
            'total_capacity_gb': round(total / GiB, 2),
            'free_capacity_gb': math.floor(free / GiB * 100) / 100,
            'provisioned_capacity_gb': round((total - free) / GiB, 2),
            'reserved_percentage': conf.safe_get('reserved_percentage') or 0,
            'max_over_subscription_ratio': conf.safe_get(
                'max_over_subscription_ratio') or 1.0,
            'thin_provisioning_support': False,
            'thick_provisioning_support': True,
            'total_volumes': count,
            'multiattach': bool(conf.lvmcoord_enable_multiattach),
            # The LV would grow and the holder refresh, but Nova's 'local'
            # volume type cannot resize the guest's disk: Cinder's
            # scheduler refuses an extend of an attached volume.
            'online_extend_support': False,
            'QoS_support': False,
            'location_info': f'LvmcoordDriver:{self.vg}',
            'backend_state': state,
            'filter_function': self.get_filter_function(),
            'goodness_function': self.get_goodness_function(),
        }
        self._stats = {'volume_backend_name': self.backend_name,
                       'vendor_name': 'Open Source',
                       'driver_version': self.VERSION,
                       'storage_protocol': PROTOCOL,
                       'sparse_copy_volume': False,
                       'shared_targets': False,
                       'pools': [pool]}

    def get_pool(self, volume):
        """One pool: the backend."""
        return self.backend_name

    # -- replication (none: every host sees the same VG) --

    def failover_host(self, context, volumes, secondary_id=None,
                      groups=None):
        """Refused: there is no replication target to fail over to."""
        raise exception.UnableToFailOver(
            reason='lvmcoord has no replication target: every host sees '
                   'the same VG; run more cinder-volume services in the '
                   'cluster instead')

    def failover_completed(self, context, active_backend_id=None):
        """Refused, as failover_host."""
        self.failover_host(context, [])
