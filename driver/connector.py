"""LvmcoordConnector: the compute side, as an os-brick connector.

connect_volume asks the LOCAL lvmcoordd for the lease and activation of
the LV named in the connection properties (the ``data`` of the driver's
initialize_connection); disconnect_volume deactivates and releases.
Nova's stock 'local' volume type needs none of this (the driver already had
the LV activated here); the connector serves callers that attach by
themselves (tools, backups, a custom volume driver on the compute side).
"""
import os
import stat
import time

from os_brick import exception
from os_brick import initiator
from os_brick import utils
from os_brick.initiator import initiator_connector
from oslo_log import log as logging

from coordinator import errors
from coordinator.api.client import Client
from coordinator.engine import modes
from driver import options

LOG = logging.getLogger(__name__)

# Where the production (lvm) backend puts devices: /dev/VG/LV.
DEFAULT_DEVICE_DIR = '/dev'


def is_block_device(path):
    """True if ``path`` leads to a block device."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class LvmcoordConnector(initiator_connector.InitiatorConnector):
    """Attach LVs of the shared VG through the local lvmcoordd."""

    platform = initiator.PLATFORM_ALL
    os_type = initiator.OS_TYPE_LINUX

    def __init__(self, root_helper, driver=None, execute=None,
                 device_scan_attempts=initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
                 *, socket_path=options.DEFAULT_SOCKET,
                 device_dir=DEFAULT_DEVICE_DIR, **kwargs):
        super().__init__(root_helper, driver=driver, execute=execute,
                         device_scan_attempts=device_scan_attempts, **kwargs)
        self.client = Client(socket_path)
        self.device_dir = device_dir

    @staticmethod
    def get_connector_properties(root_helper, *args, **kwargs):
        """Nothing beyond os-brick's host and IP: the daemon knows the
        rest."""
        return {}

    def _call(self, what, op, **args):
        try:
            return self.client.call(op, **{k: v for k, v in args.items()
                                           if v is not None})
        except errors.CoordError as exc:
            raise exception.BrickException(
                message=f'lvmcoord: {what}: {exc}') from exc

    @staticmethod
    def _target(props):
        try:
            return props['vg'], props['lv']
        except (KeyError, TypeError):
            raise exception.BrickException(
                message='lvmcoord: connection properties need "vg" and '
                        '"lv"') from None

    def _wait_for(self, path):
        # The daemon replies once the device exists; udev may still be
        # renaming it.
        for attempt in range(max(1, self.device_scan_attempts)):
            if is_block_device(path):
                return
            time.sleep(0.1 * (attempt + 1))
        raise exception.VolumeDeviceNotFound(device=path)

    def connect_volume(self, connection_properties):
        """Take the lease here and activate; {'type': 'block', 'path'}."""
        vg, lv = self._target(connection_properties)
        mode = connection_properties.get('mode') or modes.EXCLUSIVE
        got = self._call(
            f'activating {vg}/{lv}', 'activate', vg=vg, lv=lv, mode=mode,
            instance=connection_properties.get('instance'),
            read_only=connection_properties.get('access_mode') == 'ro'
            or None)
        self._wait_for(got['path'])
        return {'type': 'block', 'path': got['path']}

    def disconnect_volume(self, connection_properties, device_info,
                          force=False, ignore_errors=False):
        """Deactivate here and release the lease (idempotent)."""
        vg, lv = self._target(connection_properties)
        try:
            self._call(f'deactivating {vg}/{lv}', 'deactivate', vg=vg, lv=lv)
        except exception.BrickException:
            if force and ignore_errors:
                LOG.warning('ignored: could not deactivate %s/%s', vg, lv,
                            exc_info=True)
                return
            raise

    def extend_volume(self, connection_properties):
        """Pick up the new size here (refresh); the size in bytes."""
        vg, lv = self._target(connection_properties)
        return self._call(f'refreshing {vg}/{lv}', 'refresh', vg=vg,
                          lv=lv)['size']

    def get_volume_paths(self, connection_properties):
        """The device path, if it is present on this host."""
        path = connection_properties.get('device_path')
        if not path:
            vg, lv = self._target(connection_properties)
            path = os.path.join(self.device_dir, vg, lv)
        return [path] if os.path.exists(path) else []

    def get_search_path(self):
        """The directory holding the VG directories of active LVs."""
        return self.device_dir

    def get_all_available_volumes(self, connection_properties=None):
        """Paths of every LV active on this host (per the daemon)."""
        status = self._call('reading status', 'status')
        return sorted(status.get('devices', {}).values())

    def check_valid_device(self, path, run_as_root=True):
        """True if the first block of ``path`` can be read."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except PermissionError:
            if run_as_root:
                return utils.check_valid_device(self, path)
            return False
        except OSError:
            return False
        try:
            os.read(fd, 512)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
