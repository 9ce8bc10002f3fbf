"""The admin CLI against three running daemons (real etcd, real LVM)."""
import json
import os

import pytest

from coordinator.sandbox.cluster import Cluster
from tests.functional.clicall import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope='module')
def cluster():
    with Cluster(ttl=6, grace=1.0) as c:
        yield c


def test_host_list_json_and_table(cluster):
    hosts = json.loads(cli(cluster['volume-1'], 'host', 'list', '-f',
                           'json').stdout)
    by_host = {h['Host']: h for h in hosts}
    assert set(by_host) == {'volume-1', 'compute-1', 'compute-2'}
    for h in by_host.values():
        assert cluster.vg.vg in json.dumps(h['VGs seen'])
        assert not h['Problems']
    table = cli(cluster['compute-2'], 'host', 'list').stdout
    assert 'compute-1' in table and cluster.vg.device in table


def test_lease_list_and_show_follow_the_daemons(cluster):
    vg = cluster.vg.vg
    v1 = cluster['volume-1'].client
    v1.call('create', vg=vg, lv='cli-a', size=4 << 20)
    got = v1.call('activate', vg=vg, lv='cli-a', host='compute-1',
                  instance='vm-9')
    rows = json.loads(cli(cluster['compute-2'], 'lease', 'list', '-f',
                          'json').stdout)
    mine = [r for r in rows if r['LV'] == 'cli-a']
    assert [(r['Host'], r['Mode'], r['Instance'], r['Token'], r['Alive'])
            for r in mine] == [('compute-1', 'exclusive', 'vm-9',
                                got['token'], True)]
    shown = cli(cluster['volume-1'], 'lease', 'show', f'{vg}/cli-a').stdout
    assert 'compute-1' in shown and 'vm-9' in shown
    # Breaking a live holder's lease needs --force, as documented.
    out = cli(cluster['volume-1'], 'lease', 'break', f'{vg}/cli-a',
              '--host', 'compute-1', '--token', str(got['token']),
              '--yes-i-really-mean-it', check=False)
    assert out.returncode != 0 and 'alive' in out.stderr
    cluster['compute-1'].client.call('deactivate', vg=vg, lv='cli-a')
    rows = json.loads(cli(cluster['volume-1'], 'lease', 'list', '-f',
                          'json').stdout)
    assert [r for r in rows if r['LV'] == 'cli-a'] == []


def test_vg_show_in_sync_after_coordinated_changes(cluster):
    vg = cluster.vg.vg
    cluster['compute-2'].client.call('create', vg=vg, lv='cli-b',
                                     size=4 << 20)
    got = json.loads(cli(cluster['compute-2'], 'vg', 'show', vg, '-f',
                         'json').stdout)
    text = json.dumps(got)
    assert 'in sync' in text, got


def test_doctor_on_a_daemon_host(cluster):
    out = cli(cluster['compute-1'], 'doctor', '-f', 'json', check=False)
    checks = {c['Check']: c for c in json.loads(out.stdout)}
    assert out.returncode == 0, checks
    assert checks['daemon']['Status'] == 'ok'
