"""Nova in the loop: Nova 34's own API, conductor, scheduler and libvirt
computes (fakelibvirt) drive volume flows against real Cinder, real
daemons, real etcd and a real shared VG; each flow is checked from
outside (doc/nova.md)."""
import os
import uuid

import pytest

from coordinator.api.client import Client
from tests.functional.test_cinder import read_block
from tests.functional.test_cinder import where_active
from tests.functional.test_cinder import write_block

pytestmark = pytest.mark.timeout(900)


def lv(vid):
    return 'volume-' + vid


def device(spec, host, vid):
    """The LV's device path on ``host``."""
    return os.path.join(spec['hosts'][host]['dev'], spec['vg'], lv(vid))


def holders(spec, vid):
    """(host, mode) of each lease holder, as the daemons record them."""
    shown = Client(spec['hosts']['volume-1']['socket']).call(
        'show', vg=spec['vg'], lv=lv(vid))
    return sorted((h['host'], h['mode']) for h in shown['holders'])


def put(spec, host, vid):
    """Fresh data written through the device on ``host``."""
    data = os.urandom(4096)
    write_block(device(spec, host, vid), data, 8192)
    return data


def got(spec, host, vid):
    return read_block(device(spec, host, vid), 4096, 8192)


def read_via_attachment(cinder, spec, vid, host):
    """Data read on ``host`` through a Cinder attachment of its own."""
    att = cinder.call('POST', '/attachments', {'attachment': {
        'volume_uuid': vid, 'instance_uuid': str(uuid.uuid4()),
        'connector': {'host': host, 'ip': '127.0.0.1', 'multipath': False,
                      'platform': 'x86_64', 'os_type': 'linux'}}})
    att = att['attachment']
    try:
        return read_block(att['connection_info']['device_path'], 4096, 8192)
    finally:
        cinder.call('DELETE', f'/attachments/{att["id"]}')


@pytest.fixture
def api(cinder, nova, spec):
    return cinder[0], nova, spec


def assert_on(cinder, nova, spec, server, vid, host):
    """Only ``host`` has the LV; Cinder and Nova agree."""
    assert where_active(spec, lv(vid)) == [host]
    assert holders(spec, vid) == [(host, 'exclusive')]
    assert cinder.attached_hosts(vid) == [(server, host)]
    # Nova's mapping: Cinder's attachment, the device on ``host``.
    attachments = [a['attachment_id'] for a in cinder.volume(vid)[
        'attachments']]
    assert [(b['volume'], b['attachment'], b['device_path'])
            for b in nova('bdms', server=server)] == [
        (vid, attachments[0], device(spec, host, vid))]
    assert nova('server', server=server)['host'] == host


def assert_free(cinder, spec, vid):
    assert where_active(spec, lv(vid)) == []
    assert holders(spec, vid) == []
    assert cinder.volume(vid)['status'] == 'available'
    assert cinder.attached_hosts(vid) == []


def bootable(cinder):
    """A new bootable volume's id."""
    vid = cinder.create()['id']
    cinder.call('POST', f'/volumes/{vid}/action',
                {'os-set_bootable': {'bootable': True}})
    return vid


def boot(api, host):
    cinder, nova, spec = api
    vid = bootable(cinder)
    server = nova('boot', volume=vid, host=host)['id']
    assert_on(cinder, nova, spec, server, vid, host)
    return server, vid


def test_boot_from_volume_and_delete_keeps_volume(api):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    nova('delete', server=server)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    assert read_via_attachment(cinder, spec, vid, 'compute-2') == data
    assert_free(cinder, spec, vid)
    cinder.delete(vid)


def test_attach_and_detach(api):
    cinder, nova, spec = api
    server, root = boot(api, 'compute-2')
    vid = cinder.create()['id']
    nova('attach', server=server, volume=vid)
    cinder.wait(vid, 'in-use')
    assert where_active(spec, lv(vid)) == ['compute-2']
    assert holders(spec, vid) == [('compute-2', 'exclusive')]
    assert cinder.attached_hosts(vid) == [(server, 'compute-2')]
    assert [b['volume'] for b in nova('bdms', server=server)] == sorted(
        [root, vid])
    data = put(spec, 'compute-2', vid)
    nova('detach', server=server, volume=vid)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    assert [b['volume'] for b in nova('bdms', server=server)] == [root]
    assert read_via_attachment(cinder, spec, vid, 'compute-1') == data
    nova('delete', server=server)
    for v in (root, vid):
        cinder.wait(v, 'available')
        cinder.delete(v)


def test_live_migration(api):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    seen = []
    nova('live_migrate', server=server, host='compute-2',
         on_event=lambda e: seen.append(
             (where_active(spec, lv(vid)), holders(spec, vid))))
    # While the guest ran on both: the LV active and leased on both.
    assert len(seen) == 1
    assert seen[0][0] == ['compute-1', 'compute-2']
    assert [h for h, _ in seen[0][1]] == ['compute-1', 'compute-2']
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    assert got(spec, 'compute-2', vid) == data
    nova('delete', server=server)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    cinder.delete(vid)


def test_live_migration_failing_half_way(api):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    seen = []
    nova('live_migrate', server=server, host='compute-2', fail=True,
         on_event=lambda e: seen.append(where_active(spec, lv(vid))))
    assert seen == [['compute-1', 'compute-2']]
    # The destination cleaned up, the source intact.
    assert_on(cinder, nova, spec, server, vid, 'compute-1')
    assert got(spec, 'compute-1', vid) == data
    nova('delete', server=server)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    cinder.delete(vid)


def finish(api, server, *vids):
    """Delete the server, then its volumes, each found free first."""
    cinder, nova, spec = api
    nova('delete', server=server)
    for vid in vids:
        cinder.wait(vid, 'available')
        assert_free(cinder, spec, vid)
        cinder.delete(vid)


def test_delete_on_termination_deletes_the_lv(api):
    cinder, nova, spec = api
    vid = bootable(cinder)
    server = nova('boot', volume=vid, host='compute-2', delete=True)['id']
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    nova('delete', server=server)
    cinder.wait(vid, 'deleted')
    # The LV itself is gone.
    assert not any(lv(vid) in n for n in os.listdir(
        os.path.join(spec['hosts']['compute-2']['dev'], spec['vg'])))


@pytest.mark.parametrize('kind', ['SOFT', 'HARD'])
def test_reboot(api, kind):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    nova('action', server=server, body={'reboot': {'type': kind}},
         state='ACTIVE')
    assert_on(cinder, nova, spec, server, vid, 'compute-1')
    assert got(spec, 'compute-1', vid) == data
    finish(api, server, vid)


def test_shelve_offload_and_unshelve(api):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    nova('action', server=server, body={'shelve': None},
         state='SHELVED_OFFLOADED')
    # Offloaded: no host has it; Cinder keeps a reserved attachment.
    assert where_active(spec, lv(vid)) == []
    assert holders(spec, vid) == []
    assert cinder.volume(vid)['status'] in ('reserved', 'in-use')
    nova('action', server=server, body={'unshelve': {'host': 'compute-2'}},
         state='ACTIVE')
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    assert got(spec, 'compute-2', vid) == data
    finish(api, server, vid)


def test_second_attach_of_one_volume_is_refused(api):
    cinder, nova, spec = api
    one, root1 = boot(api, 'compute-1')
    two, root2 = boot(api, 'compute-2')
    vid = cinder.create()['id']
    nova('attach', server=one, volume=vid)
    cinder.wait(vid, 'in-use')
    reply = nova.reply('attach', server=two, volume=vid)
    assert 'error' in reply and '400' in reply['error'], reply
    assert where_active(spec, lv(vid)) == ['compute-1']
    assert holders(spec, vid) == [('compute-1', 'exclusive')]
    assert cinder.attached_hosts(vid) == [(one, 'compute-1')]
    assert [b['volume'] for b in nova('bdms', server=two)] == [root2]
    nova('detach', server=one, volume=vid)
    cinder.wait(vid, 'available')
    cinder.delete(vid)
    finish(api, one, root1)
    finish(api, two, root2)


def test_many_servers_boot_from_volume_at_once(api):
    cinder, nova, spec = api
    vids = [bootable(cinder) for _ in range(6)]
    servers = nova('boot_many', volumes=vids,
                   hosts=['compute-1', 'compute-2'])
    for server, vid in zip(servers, vids, strict=True):
        assert_on(cinder, nova, spec, server['id'], vid, server['host'])
    assert sorted(s['host'] for s in servers) == ['compute-1'] * 3 + [
        'compute-2'] * 3
    for server in servers:
        nova('delete', server=server['id'])
    for vid in vids:
        cinder.wait(vid, 'deleted')
