"""Nova in the loop: Nova 34's own API, conductor, scheduler and libvirt
computes (fakelibvirt) drive volume flows against real Cinder, real
daemons, real etcd and a real shared VG; each flow is checked from
outside (doc/nova.md)."""
import base64
import json
import os
import time
import urllib.request
import uuid

import pytest

from coordinator.api.client import Client
from tests.functional.test_cinder import disk_state
from tests.functional.test_cinder import read_block
from tests.functional.test_cinder import where_active
from tests.functional.test_cinder import write_block

pytestmark = pytest.mark.timeout(900)
GiB = 1 << 30


def lv(vid):
    return 'volume-' + vid


def device(spec, host, vid, name=None):
    """The LV's device path on ``host`` (``name``: the LV's, if not the
    volume's own)."""
    return os.path.join(spec['hosts'][host]['dev'], spec['vg'],
                        name or lv(vid))


def holders(spec, vid, name=None):
    """(host, mode) of each lease holder, as the daemons record them."""
    shown = Client(spec['hosts']['volume-1']['socket']).call(
        'show', vg=spec['vg'], lv=name or lv(vid))
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


def attached(api, host):
    """A server booted from volume on ``host`` with a new volume attached:
    (server, its root volume, the attached volume)."""
    cinder, nova, _ = api
    server, root = boot(api, host)
    vid = cinder.create()['id']
    nova('attach', server=server, volume=vid)
    cinder.wait(vid, 'in-use')
    return server, root, vid


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
    server, root, vid = attached(api, 'compute-2')
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


def bdm_paths(nova, server):
    """(volume, device path) of each of the server's volume mappings."""
    return [(b['volume'], b['device_path'])
            for b in nova('bdms', server=server)]


def test_multiattach(api):
    cinder, nova, spec = api
    one, root1 = boot(api, 'compute-1')
    two, root2 = boot(api, 'compute-2')
    vtype = cinder.call('POST', '/types', {'volume_type': {
        'name': 'multiattach-' + uuid.uuid4().hex[:8],
        'extra_specs': {'multiattach': '<is> True'}}})['volume_type']['id']
    vid = cinder.create(volume_type=vtype)['id']
    assert cinder.volume(vid)['multiattach'] is True
    nova('attach', server=one, volume=vid)
    cinder.wait(vid, 'in-use')
    data = put(spec, 'compute-1', vid)
    nova('attach', server=two, volume=vid)
    # Both hosts hold a shared lease and have the device.
    assert where_active(spec, lv(vid)) == ['compute-1', 'compute-2']
    assert holders(spec, vid) == [('compute-1', 'shared'),
                                  ('compute-2', 'shared')]
    assert cinder.attached_hosts(vid) == sorted(
        [(one, 'compute-1'), (two, 'compute-2')])
    assert (vid, device(spec, 'compute-1', vid)) in bdm_paths(nova, one)
    assert (vid, device(spec, 'compute-2', vid)) in bdm_paths(nova, two)
    assert got(spec, 'compute-2', vid) == data
    # Detach one: the other keeps it.
    nova('detach', server=one, volume=vid)
    assert cinder.volume(vid)['status'] == 'in-use'
    assert where_active(spec, lv(vid)) == ['compute-2']
    assert holders(spec, vid) == [('compute-2', 'shared')]
    assert cinder.attached_hosts(vid) == [(two, 'compute-2')]
    assert [v for v, _ in bdm_paths(nova, one)] == [root1]
    assert got(spec, 'compute-2', vid) == data
    # Detach both: free.
    nova('detach', server=two, volume=vid)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    assert [v for v, _ in bdm_paths(nova, two)] == [root2]
    cinder.delete(vid)
    cinder.call('DELETE', f'/types/{vtype}')
    finish(api, one, root1)
    finish(api, two, root2)


def etcd_call(cluster, path, body):
    """One call to etcd's JSON gateway."""
    req = urllib.request.Request(
        cluster.etcd.endpoints[0] + path, data=json.dumps(body).encode(),
        headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def b64(text):
    return base64.b64encode(text.encode()).decode()


def session_end(cluster, host):
    """The earliest time ``host``'s etcd session can end unrefreshed: now
    plus its lease's remaining TTL (etcd's whole seconds, rounded down)."""
    now = time.time()
    kvs = etcd_call(cluster, '/v3/kv/range', {
        'key': b64('\0'), 'range_end': b64('\0')}).get('kvs', [])
    lease = [kv['lease'] for kv in kvs if base64.b64decode(
        kv['key']).decode().endswith(f'/sessions/{host}')]
    assert len(lease) == 1, f'no session key of {host}'
    ttl = etcd_call(cluster, '/v3/lease/timetolive', {'ID': lease[0]})
    assert int(ttl['TTL']) > 0, ttl
    return now + int(ttl['TTL'])


def show(spec, vid):
    return Client(spec['hosts']['volume-1']['socket']).call(
        'show', vg=spec['vg'], lv=lv(vid))


def test_evacuate_a_dead_host(api, cluster):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    cluster['compute-1'].kill()
    try:
        cluster['compute-1'].proc.wait()
        # Its session, nobody refreshing it, ends at this time or later.
        ended = session_end(cluster, 'compute-1')
        srv = nova('evacuate', server=server, host='compute-2')
        assert (srv['host'], srv['source'], srv['status']) == (
            'compute-2', 'compute-1', 'SHUTOFF')
        # compute-2 was granted the LV only once compute-1's session had
        # ended and the grace had passed.
        shown = show(spec, vid)
        assert [(h['host'], h['mode']) for h in shown['holders']] == [
            ('compute-2', 'exclusive')]
        assert shown['holders'][0]['since'] >= ended + cluster.grace, (
            shown, ended)
        assert got(spec, 'compute-2', vid) == data
    finally:
        # Later tests need compute-1: its daemon, then its nova-compute.
        cluster.restart('compute-1')
        revived = nova.reply('revive', host='compute-1')
    assert 'error' not in revived, revived
    # compute-1 back: what it had active of the evacuated server is gone.
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    nova('action', server=server, body={'os-start': None}, state='ACTIVE')
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    assert got(spec, 'compute-2', vid) == data
    finish(api, server, vid)


@pytest.mark.parametrize('action,end', [
    ('migrate', 'confirmResize'),
    ('resize', 'confirmResize'),
    ('resize', 'revertResize'),
])
def test_cold_migration_and_resize(api, action, end):
    cinder, nova, spec = api
    server, vid = boot(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    before = nova('server', server=server)['flavor']
    flavor, after = None, before
    if action == 'migrate':
        body = {'migrate': None}
    else:
        after = 'resized-' + uuid.uuid4().hex[:8]
        flavor = nova('flavor', name=after, memory_mb=1024, vcpu=2)
        body = {'resize': {'flavorRef': flavor}}
    srv = nova('migrate', server=server, body=body)
    assert (srv['source'], srv['dest'], srv['migration'],
            srv['flavor']) == ('compute-1', 'compute-2', 'finished', after)
    # Waiting for confirmation: the guest runs on compute-2, the volume
    # with it; the source powered off and let it go.
    assert_on(cinder, nova, spec, server, vid, 'compute-2')
    assert got(spec, 'compute-2', vid) == data
    data = put(spec, 'compute-2', vid)
    srv = nova('action', server=server, body={end: None}, state='ACTIVE')
    host = 'compute-1' if end == 'revertResize' else 'compute-2'
    assert srv['flavor'] == (before if end == 'revertResize' else after)
    assert_on(cinder, nova, spec, server, vid, host)
    assert got(spec, host, vid) == data
    finish(api, server, vid)
    if flavor:
        nova('delete_flavor', flavor=flavor)


def messages(cinder, vid):
    """Cinder's user messages about the volume."""
    return [m for m in cinder.call('GET', '/messages', version='3.3')[
        'messages'] if m['resource_uuid'] == vid]


def test_online_extend_is_refused_before_anything_changes(api):
    cinder, nova, spec = api
    server, root, vid = attached(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    bdms = nova('bdms', server=server)
    assert messages(cinder, vid) == []
    # The API takes it (202: 3.42+, in-use); the scheduler refuses it as
    # the backend reports online_extend_support False (Nova's 'local'
    # volume type cannot grow the guest's disk), records why and puts the
    # volume back in-use: the driver is never called.
    cinder.call('POST', f'/volumes/{vid}/action',
                {'os-extend': {'new_size': 2}}, version='3.42')
    deadline = time.monotonic() + 60
    while not messages(cinder, vid):
        assert time.monotonic() < deadline, 'no message about the extend'
        time.sleep(0.3)
    cinder.wait(vid, 'in-use')
    [msg] = messages(cinder, vid)
    assert msg['user_message'].startswith('extend volume:'), msg
    assert msg['message_level'] == 'ERROR', msg
    assert cinder.volume(vid)['size'] == 1
    assert show(spec, vid)['size'] == GiB
    assert where_active(spec, lv(vid)) == ['compute-1']
    assert holders(spec, vid) == [('compute-1', 'exclusive')]
    assert cinder.attached_hosts(vid) == [(server, 'compute-1')]
    assert nova('bdms', server=server) == bdms
    assert got(spec, 'compute-1', vid) == data
    nova('detach', server=server, volume=vid)
    cinder.wait(vid, 'available')
    assert_free(cinder, spec, vid)
    cinder.delete(vid)
    finish(api, server, root)


def test_direct_swap_volume_is_refused_by_nova(api):
    cinder, nova, spec = api
    server, root = boot(api, 'compute-2')
    old, new = cinder.create()['id'], cinder.create()['id']
    nova('attach', server=server, volume=old)
    cinder.wait(old, 'in-use')
    data = put(spec, 'compute-2', old)
    bdms = nova('bdms', server=server)
    # Nova 34 (bug 2112187) takes a swap only from Cinder, for a volume
    # Cinder is migrating (nova/api/openstack/compute/
    # volume_attachments.py, _update_volume_swap): nothing moves.
    reply = nova.reply('swap', server=server, old=old, new=new)
    assert 'error' in reply and 'should only be called by Cinder' in \
        reply['error'], reply
    assert where_active(spec, lv(old)) == ['compute-2']
    assert holders(spec, old) == [('compute-2', 'exclusive')]
    assert cinder.attached_hosts(old) == [(server, 'compute-2')]
    assert nova('bdms', server=server) == bdms
    assert got(spec, 'compute-2', old) == data
    assert_free(cinder, spec, new)
    nova('detach', server=server, volume=old)
    for vid in (old, new):
        cinder.wait(vid, 'available')
        assert_free(cinder, spec, vid)
        cinder.delete(vid)
    finish(api, server, root)


def migrated(cinder, vid, timeout=180):
    """The volume once Cinder's migration of it ended (fails on error)."""
    deadline = time.monotonic() + timeout
    while True:
        vol = cinder.volume(vid)
        status = vol['os-vol-mig-status-attr:migstat']
        if status == 'success' and vol['status'] == 'in-use':
            return vol
        assert status != 'error' and time.monotonic() < deadline, (
            f'migration of {vid}: {status}, volume {vol["status"]}')
        time.sleep(0.3)


@pytest.mark.parametrize('how', ['migrate', 'retype'])
def test_swap_volume_by_cinder_migration(api, how):
    cinder, nova, spec = api
    server, root, vid = attached(api, 'compute-1')
    data = put(spec, 'compute-1', vid)
    # The scheduler put it on either backend: it goes to the other.
    backends = ['volume-1@lvmcoord#lvmcoord', 'volume-1@lvmcoord2#lvmcoord2']
    source = cinder.volume(vid)['os-vol-host-attr:host']
    backends.remove(source)
    [dest] = backends
    # Cinder migrates the attached volume to the other backend (same VG,
    # same daemon), asked to (migrate) or for a type only that backend
    # has (retype, on-demand migration): it creates the destination
    # volume there, asks Nova to swap (PUT os-volume_attachments/{vid});
    # Nova attaches the destination on compute-1, block-copies, pivots,
    # drops the source's attachment and calls migrate_volume_completion;
    # Cinder gives the volume's id the destination's LV and deletes the
    # source's.
    vtype = None
    if how == 'migrate':
        action = {'os-migrate_volume': {
            'host': dest, 'force_host_copy': False, 'lock_volume': False}}
    else:
        vtype = cinder.call('POST', '/types', {'volume_type': {
            'name': 'on-' + uuid.uuid4().hex[:8], 'extra_specs': {
                'volume_backend_name': dest.rsplit('#', 1)[1]}}})[
            'volume_type']
        action = {'os-retype': {'new_type': vtype['id'],
                                'migration_policy': 'on-demand'}}
    cinder.call('POST', f'/volumes/{vid}/action', action)
    vol = migrated(cinder, vid)
    assert vol['os-vol-host-attr:host'] == dest
    if vtype:
        assert vol['volume_type'] == vtype['name']
    temp = vol['os-vol-mig-status-attr:name_id']
    assert temp not in (None, vid)
    new = lv(temp)
    # The migration's temporary record (now naming the source's LV) is
    # deleted, and the source's LV with it.
    cinder.wait(temp, 'deleted')
    assert lv(vid) not in disk_state(spec)[1]
    assert new in disk_state(spec)[1]
    assert where_active(spec, lv(vid)) == []
    # The destination's LV: active and leased on compute-1 only.
    assert where_active(spec, new) == ['compute-1']
    assert holders(spec, vid, new) == [('compute-1', 'exclusive')]
    # Cinder's attachment (Nova's new one, moved to the volume's id) and
    # Nova's mapping point at it.
    assert cinder.attached_hosts(vid) == [(server, 'compute-1')]
    [attachment] = [a['attachment_id'] for a in vol['attachments']]
    assert [(b['volume'], b['attachment'], b['device_path'])
            for b in nova('bdms', server=server)] == sorted(
        [(root, cinder.volume(root)['attachments'][0]['attachment_id'],
          device(spec, 'compute-1', root)),
         (vid, attachment, device(spec, 'compute-1', vid, new))])
    # The data written before, through the new device: the block copy
    # (doc/nova.md: Cinder copies nothing for an attached volume).
    assert read_block(device(spec, 'compute-1', vid, new), 4096, 8192) \
        == data
    nova('detach', server=server, volume=vid)
    cinder.wait(vid, 'available')
    assert where_active(spec, new) == []
    assert holders(spec, vid, new) == []
    assert cinder.attached_hosts(vid) == []
    cinder.delete(vid)
    assert new not in disk_state(spec)[1]
    if vtype:
        cinder.call('DELETE', f'/types/{vtype["id"]}')
    finish(api, server, root)
