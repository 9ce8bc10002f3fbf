"""Daemons of the previous landed release (built from git history,
etc/previous-release) and of this tree in one cluster: one real etcd, one
shared VG on loop devices. Grants, routing, fencing and the VG lock work
between them; a rolling upgrade keeps every LV on one host; a schema this
release cannot run in is refused at start, naming both versions."""
import glob
import json
import os
import shutil
import threading
import time

import pytest

from coordinator import errors
from coordinator import release
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.daemons import Daemon
from coordinator.sandbox.proxy import Partition
from tests.functional import previous
from tests.functional.clicall import cli

ROOT = previous.ROOT
MiB = 1 << 20
TTL, GRACE = 5, 1.0
OLD, NEW = ('old-1', 'old-2'), ('new-1', 'new-2')


class Writers:
    """Polls every host's LV devices: an LV writable on two hosts at once
    is a double activation, the one thing that must never happen."""

    def __init__(self, cluster):
        self.cluster, self.seen = cluster, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def writable(self):
        """{lv: [hosts with a writable device]}."""
        out = {}
        for host, d in self.cluster.daemons.items():
            for path in glob.glob(os.path.join(d.dev_dir, '*', '*')):
                loop = os.path.basename(os.path.realpath(path))
                try:
                    with open(f'/sys/block/{loop}/ro') as f:
                        ro = f.read().strip() == '1'
                except OSError:
                    continue
                if not ro:
                    out.setdefault(os.path.basename(path), []).append(host)
        return out

    def _run(self):
        while not self.stop.is_set():
            for lv, hosts in self.writable().items():
                if len(hosts) > 1:
                    self.seen.append((lv, sorted(hosts)))
            time.sleep(0.02)

    def close(self):
        self.stop.set()
        self.thread.join()
        assert not self.seen, f'LVs writable on two hosts: {self.seen[:5]}'


@pytest.fixture(scope='module')
def mixed():
    tree = previous.extract()
    # It is the previous release: it predates the schema.
    assert not os.path.exists(os.path.join(tree, 'coordinator',
                                           'release.py'))
    cuts = {h: Partition(h) for h in ('old-1', 'new-1')}

    def endpoints_for(host, eps):
        return cuts[host].endpoints_for(host, eps) if host in cuts else eps
    cluster = Cluster(hosts=OLD + NEW, ttl=TTL, grace=GRACE,
                      endpoints_for=endpoints_for,
                      trees={h: tree for h in OLD})
    try:
        with cluster:
            cluster.cuts = cuts
            yield cluster
    finally:
        for p in cuts.values():
            p.close()
        shutil.rmtree(tree, ignore_errors=True)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def hosts_of(cluster, lv):
    shown = cluster['new-2'].client.call('show', vg=cluster.vg.vg, lv=lv)
    return [h['host'] for h in shown['holders']]


def test_schema_one_and_releases_listed(mixed):
    rows = {r['Host']: r for r in json.loads(
        cli(mixed['new-1'], 'host', 'list', '-f', 'json').stdout)}
    assert set(rows) == set(OLD + NEW)
    for h in OLD:
        assert 'schema 1' in rows[h]['Release'], rows[h]
    for h in NEW:
        assert rows[h]['Release'].startswith(release.RELEASE), rows[h]
    status = json.loads(cli(mixed['new-1'], 'upgrade', 'status', '-f',
                            'json').stdout)
    assert status['Schema'] == 1
    assert set(status['Behind'].split(', ')) == set(OLD)
    assert status['Written by'] == release.RELEASE
    # Not while the old hosts run: they cannot speak schema 2.
    out = cli(mixed['new-1'], 'upgrade', 'finalize', check=False)
    assert out.returncode and 'old-1 runs' in out.stderr, out.stderr
    # The previous release starts in a cluster with the key (it never
    # reads it) and resumes its session.
    session = mixed['old-2'].client.call('status')['session']
    mixed['old-2'].stop()
    mixed['old-2'].start()
    assert mixed['old-2'].client.call('status')['session'] == session


def test_grants_old_and_new_refuse_each_other(mixed):
    vg, o1, n1 = mixed.vg.vg, mixed['old-1'].client, mixed['new-1'].client
    n1.call('create', vg=vg, lv='g-old', size=4 * MiB)
    o1.call('create', vg=vg, lv='g-new', size=4 * MiB)
    o1.call('activate', vg=vg, lv='g-old', instance='vm-a')
    with pytest.raises(errors.CoordError, match='held by old-1'):
        n1.call('activate', vg=vg, lv='g-old', instance='vm-b')
    n1.call('activate', vg=vg, lv='g-new', instance='vm-c')
    with pytest.raises(errors.CoordError, match='held by new-1'):
        o1.call('activate', vg=vg, lv='g-new', instance='vm-d')
    o1.call('deactivate', vg=vg, lv='g-old')
    n1.call('deactivate', vg=vg, lv='g-new')
    # Released by one release, granted by the other.
    n1.call('activate', vg=vg, lv='g-old', instance='vm-b')
    assert hosts_of(mixed, 'g-old') == ['new-1']
    n1.call('deactivate', vg=vg, lv='g-old')


def test_routing_both_ways(mixed):
    vg, o1, n1 = mixed.vg.vg, mixed['old-1'].client, mixed['new-1'].client
    n1.call('create', vg=vg, lv='r-1', size=4 * MiB)
    n1.call('create', vg=vg, lv='r-2', size=4 * MiB)
    got = n1.call('activate', vg=vg, lv='r-1', host='old-2',
                  instance='vm-r1')
    assert got['host'] == 'old-2' and hosts_of(mixed, 'r-1') == ['old-2']
    got = o1.call('activate', vg=vg, lv='r-2', host='new-2',
                  instance='vm-r2')
    assert got['host'] == 'new-2' and hosts_of(mixed, 'r-2') == ['new-2']
    o1.call('deactivate', vg=vg, lv='r-1', host='old-2')
    n1.call('deactivate', vg=vg, lv='r-2', host='new-2')
    assert hosts_of(mixed, 'r-1') == [] and hosts_of(mixed, 'r-2') == []


def test_vg_lock_concurrent_creates_lose_nothing(mixed):
    vg, names, failed = mixed.vg.vg, [], []

    def create(host, n):
        for i in range(n):
            lv = f'c-{host}-{i}'
            try:
                mixed[host].client.call('create', vg=vg, lv=lv,
                                        size=4 * MiB)
                names.append(lv)
            except errors.CoordError as exc:
                failed.append((lv, exc))
    threads = [threading.Thread(target=create, args=(h, 4))
               for h in OLD + NEW]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed
    on_disk = {x['lv'] for x in mixed['old-2'].client.call('list', vg=vg)}
    assert set(names) <= on_disk and len(names) == 16


@pytest.mark.parametrize('holder,taker', [('old-1', 'new-2'),
                                          ('new-1', 'old-2')])
def test_fencing_cut_holder_taken_over_after_ttl_grace(mixed, holder,
                                                       taker):
    vg = mixed.vg.vg
    lv = f'f-{holder}'
    mixed[taker].client.call('create', vg=vg, lv=lv, size=4 * MiB)
    got = mixed[holder].client.call('activate', vg=vg, lv=lv,
                                    instance='vm-f')
    loop = os.path.basename(os.path.realpath(got['path']))
    writers = Writers(mixed)
    cut = time.monotonic()
    mixed.cuts[holder].cut()
    try:
        taken = mixed[taker].client.call('activate', vg=vg, lv=lv,
                                         instance='vm-g', wait=60)
        took = time.monotonic() - cut
        with open(f'/sys/block/{loop}/ro') as f:
            assert f.read().strip() == '1', f'{holder} never fenced'
    finally:
        mixed.cuts[holder].heal()
    writers.close()
    assert taken['host'] == taker
    # The session had to expire (TTL, less the time since the last
    # keepalive) and the grace pass.
    assert took >= TTL - TTL / 3 + GRACE - 0.5, took
    print(f'{holder} -> {taker}: taken over {took:.1f}s after the cut')
    wait_for(lambda: not os.path.exists(got['path']), 60,
             f'{holder} to drop its stale device')
    wait_for(lambda: mixed[holder].client.call('status')['session'] != '0',
             30, f'a new session on {holder}')
    mixed[taker].client.call('deactivate', vg=vg, lv=lv)


def test_refused_when_cluster_schema_is_newer(mixed):
    etcd = etcdlib.Etcd(mixed.etcd.endpoints)
    key = keyslib.Keys(cluster='sandbox').schema()
    saved = etcd.get(key).json()
    future = {'version': release.SCHEMA + 1,
              'min_compatible': release.SCHEMA + 1, 'written_by': '9.0.0'}
    etcd.put(key, future)
    d = Daemon('new-x', os.path.join(mixed.dir, 'new-x'),
               mixed.etcd.endpoints, mixed.vg.vg,
               mixed.vg.hosts[0].system_dir, ttl=TTL, grace=GRACE)
    try:
        d.start(wait=False)
        assert d.proc.wait(60) == 1
    finally:
        d.stop()
        etcd.put(key, saved)
    err = d.log_tail()
    assert f'this daemon is release {release.RELEASE} (schema 1..' \
        f'{release.SCHEMA}); the cluster runs schema ' \
        f'{release.SCHEMA + 1} (min_compatible {release.SCHEMA + 1}, ' \
        f'written by release 9.0.0)' in err, err
    print(err.strip().splitlines()[-1])


def test_rolling_upgrade_with_volumes_attached(mixed):
    vg = mixed.vg.vg
    for h in OLD:
        mixed['new-2'].client.call('create', vg=vg, lv=f'u-{h}',
                                   size=4 * MiB)
        mixed[h].client.call('activate', vg=vg, lv=f'u-{h}',
                             instance=f'vm-{h}')
    writers = Writers(mixed)
    stop = threading.Event()
    wrongly = []

    def contend():
        # Another host asks for the attached LVs all along: refused.
        while not stop.is_set():
            for h in OLD:
                try:
                    mixed['new-1'].client.call('activate', vg=vg,
                                               lv=f'u-{h}', instance='x')
                    wrongly.append(h)
                except errors.CoordError:
                    pass
            time.sleep(0.1)
    t = threading.Thread(target=contend, daemon=True)
    t.start()
    try:
        for h in OLD:
            d = mixed[h]
            session = d.client.call('status')['session']
            d.stop()
            d.tree = None  # this release now
            d.start()
            assert d.client.call('status')['session'] == session, \
                f'{h} did not resume its session across the upgrade'
            assert hosts_of(mixed, f'u-{h}') == [h]
            wait_for(lambda h=h: h in writers.writable().get(f'u-{h}', []),
                     30, f'u-{h} writable again on {h}')
    finally:
        stop.set()
        t.join()
        writers.close()
    assert not wrongly, f'granted elsewhere while attached: {wrongly}'
    rows = {r['Host']: r for r in json.loads(
        cli(mixed['new-1'], 'host', 'list', '-f', 'json').stdout)}
    assert all(r['Release'].startswith(release.RELEASE)
               for r in rows.values()), rows
    out = json.loads(cli(mixed['new-1'], 'upgrade', 'finalize', '-f',
                         'json').stdout)
    assert (out['Schema'], out['Min compatible']) == (release.SCHEMA,
                                                      release.SCHEMA)
    for h in OLD:
        mixed[h].client.call('deactivate', vg=vg, lv=f'u-{h}')
