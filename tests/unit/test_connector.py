"""LvmcoordConnector with a fake local daemon."""
from unittest import mock

from os_brick import exception
from os_brick.initiator import initiator_connector
import pytest

from coordinator import errors
from coordinator.api import schema
from driver import connector as connector_mod

VG, LV = 'shared-vg', 'volume-1234'


class FakeClient:
    """Records requests (checked against the daemon's schema) and answers
    from ``replies`` (a value, an exception, or a callable)."""

    def __init__(self, **replies):
        self.replies = replies
        self.calls = []

    def call(self, op, **args):
        schema.validate({'op': op, 'args': args})
        self.calls.append((op, args))
        reply = self.replies.get(op)
        if isinstance(reply, Exception):
            raise reply
        return reply(**args) if callable(reply) else reply


@pytest.fixture
def conn(tmp_path):
    c = connector_mod.LvmcoordConnector(None, device_dir=str(tmp_path),
                                        device_scan_attempts=2)
    c.client = FakeClient()
    return c


def props(**extra):
    return dict({'vg': VG, 'lv': LV, 'device_path': f'/dev/{VG}/{LV}',
                 'mode': 'exclusive', 'instance': 'inst-1',
                 'access_mode': 'rw'}, **extra)


def test_is_a_complete_os_brick_connector():
    assert issubclass(connector_mod.LvmcoordConnector,
                      initiator_connector.InitiatorConnector)
    # Instantiable: every abstract method is implemented.
    connector_mod.LvmcoordConnector('sudo')
    assert connector_mod.LvmcoordConnector.get_connector_properties(
        'sudo', host='compute-1') == {}


def test_connect_takes_the_lease_here(conn, monkeypatch):
    conn.client.replies['activate'] = {'path': '/dev/loop7', 'token': 9}
    monkeypatch.setattr(connector_mod, 'is_block_device',
                        lambda p: p == '/dev/loop7')
    assert conn.connect_volume(props()) == {'type': 'block',
                                            'path': '/dev/loop7'}
    # No host: the local daemon activates for its own host.
    assert conn.client.calls == [('activate', {
        'vg': VG, 'lv': LV, 'mode': 'exclusive', 'instance': 'inst-1'})]


def test_connect_read_only_and_migration(conn, monkeypatch):
    conn.client.replies['activate'] = {'path': '/dev/loop7'}
    monkeypatch.setattr(connector_mod, 'is_block_device', lambda p: True)
    conn.connect_volume(props(mode='migration', access_mode='ro'))
    assert conn.client.calls[0][1] == {
        'vg': VG, 'lv': LV, 'mode': 'migration', 'instance': 'inst-1',
        'read_only': True}


def test_connect_refused_names_the_holder(conn):
    conn.client.replies['activate'] = errors.LeaseConflict(
        'exclusive lease for compute-2 refused: held by compute-1')
    with pytest.raises(exception.BrickException, match='held by compute-1'):
        conn.connect_volume(props())


def test_connect_needs_vg_and_lv(conn):
    with pytest.raises(exception.BrickException, match='"vg" and "lv"'):
        conn.connect_volume({'device_path': '/dev/x'})
    assert conn.client.calls == []


def test_connect_fails_when_no_device_appears(conn, monkeypatch):
    conn.client.replies['activate'] = {'path': '/nonexistent/dev'}
    monkeypatch.setattr(connector_mod.time, 'sleep', lambda s: None)
    with pytest.raises(exception.VolumeDeviceNotFound):
        conn.connect_volume(props())


def test_disconnect_releases_and_is_idempotent(conn):
    conn.client.replies['deactivate'] = {'released': False}
    for _ in range(2):
        conn.disconnect_volume(props(), {'type': 'block'})
    assert conn.client.calls == [('deactivate', {'vg': VG, 'lv': LV})] * 2


def test_disconnect_errors(conn):
    conn.client.replies['deactivate'] = errors.HostUnavailable('down')
    with pytest.raises(exception.BrickException, match='down'):
        conn.disconnect_volume(props(), None)
    with pytest.raises(exception.BrickException):
        conn.disconnect_volume(props(), None, force=True)
    conn.disconnect_volume(props(), None, force=True, ignore_errors=True)


def test_extend_refreshes_and_returns_the_size(conn):
    conn.client.replies['refresh'] = {'host': 'compute-1', 'size': 3 << 30}
    assert conn.extend_volume(props()) == 3 << 30
    assert conn.client.calls == [('refresh', {'vg': VG, 'lv': LV})]


def test_volume_paths_only_when_present(conn, tmp_path):
    path = tmp_path / VG / LV
    assert conn.get_volume_paths(props(device_path=str(path))) == []
    path.parent.mkdir()
    path.write_bytes(b'')
    assert conn.get_volume_paths(props(device_path=str(path))) == \
        [str(path)]
    # Without device_path: the LV's path under the device directory.
    assert conn.get_volume_paths({'vg': VG, 'lv': LV}) == [str(path)]


def test_search_path_and_available_volumes(conn, tmp_path):
    assert conn.get_search_path() == str(tmp_path)
    conn.client.replies['status'] = {'devices': {
        f'{VG}/{LV}': f'/dev/{VG}/{LV}', f'{VG}/b': '/run/x/b'}}
    assert conn.get_all_available_volumes() == ['/dev/' + f'{VG}/{LV}',
                                                '/run/x/b']


def test_check_valid_device(conn, tmp_path):
    dev = tmp_path / 'dev'
    dev.write_bytes(b'x' * 1024)
    assert conn.check_valid_device(str(dev)) is True
    assert conn.check_valid_device(str(tmp_path / 'missing')) is False
    with mock.patch.object(connector_mod.os, 'open',
                           side_effect=PermissionError), \
            mock.patch.object(connector_mod.utils, 'check_valid_device',
                              return_value=True) as helper:
        assert conn.check_valid_device(str(dev)) is True
        assert conn.check_valid_device(str(dev), run_as_root=False) is False
    helper.assert_called_once_with(conn, str(dev))


def test_is_block_device(tmp_path):
    assert connector_mod.is_block_device(str(tmp_path)) is False
    assert connector_mod.is_block_device(str(tmp_path / 'missing')) is False
