"""A real Prometheus scrapes a sandbox cluster's daemons with the alert
rules of etc/prometheus loaded (their ``for:`` shortened, expressions as
shipped) while faults are injected: the matching alerts fire, and those
that track a state clear when it heals."""
import os
import time

import pytest
import requests

from coordinator import errors
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.etcd import free_port
from coordinator.sandbox.prometheus import Prometheus
from coordinator.sandbox.prometheus import scraped_names
from coordinator.sandbox.prometheus import short_for
from tests.functional.conftest import proxied
from tests.unit.test_prometheus_rules import exported

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RULES = os.path.join(ROOT, 'etc', 'prometheus', 'lvmcoord-alerts.yml')
MiB = 1 << 20
# Sized for a loaded 2-core machine: ttl 4 s, a scrape and an evaluation
# every second, membership exported every 5 s, for: 2 s.
DEADLINE = 45


def wait_for(predicate, what, timeout=DEADLINE, prom=None):
    """Poll ``predicate`` until true; its time, or fail at the deadline
    (saying what Prometheus had then)."""
    start = time.monotonic()
    while True:
        got = predicate()
        if got:
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            seen = ''
            if prom:
                seen = f'; alerts {prom.alerts()}; series ' + str([
                    (r['metric'], r['value'][1]) for r in prom.query(
                        '{__name__=~"lvmcoord_(session_up|events_total|'
                        'membership_member|grant_failures_total)"}')])
            raise AssertionError(f'timed out: {what}{seen}')
        time.sleep(0.25)


@pytest.fixture
def cluster():
    proxies = {}
    ports = {'compute-1': free_port(), 'compute-2': free_port()}
    endpoints_for = proxied(proxies)
    c = Cluster(hosts=('compute-1', 'compute-2'), ttl=4, grace=1.0,
                endpoints_for=endpoints_for,
                opts_for=lambda host: {'metrics__port': ports[host]})
    try:
        with c:
            yield c, proxies['compute-1'], ports
    finally:
        for p in proxies.values():
            p.close()


def wait_alerts(prom, wanted, step, timeout=DEADLINE):
    """Wait until every (alert, host) of ``wanted`` fired; the seconds
    each took."""
    start, took = time.monotonic(), {}

    def all_fired():
        firing = prom.firing()
        for alert in wanted - set(took):
            if alert in firing:
                took[alert] = time.monotonic() - start
        return len(took) == len(wanted)
    wait_for(all_fired, f'{step}: {wanted - set(took)} firing', timeout,
             prom)
    return {f'{step}: {a} {h} fired': t for (a, h), t in took.items()}


def test_alerts_fire_and_clear_on_a_live_cluster(cluster):
    started = time.monotonic()
    c, proxy, ports = cluster
    vg = c.vg.vg
    c1, c2 = c['compute-1'].client, c['compute-2'].client
    targets = {h: f'127.0.0.1:{p}' for h, p in ports.items()}
    timings = {}
    with open(RULES) as f:
        rules = short_for(f.read())
    with Prometheus(targets, rules) as prom:
        # What a daemon serves is what metrics.py defines.
        page = requests.get(f'http://{targets["compute-1"]}/metrics',
                            timeout=5).text
        served = {n for n in scraped_names(page)
                  if n.startswith('lvmcoord_')}
        assert served and served <= exported(), served - exported()

        timings['both up, none firing'] = wait_for(
            lambda: len(prom.query('up{job="lvmcoord"} == 1')) == 2
            and len(prom.query('lvmcoord_membership_member == 1')) == 4
            and not prom.firing(),
            'both targets up, seeing each other, nothing firing', prom=prom)

        # compute-1 holds an LV; compute-2 asks for it in vain.
        c2.call('create', vg=vg, lv='vol-a', size=4 * MiB)
        c1.call('activate', vg=vg, lv='vol-a', instance='i1')
        for _ in range(8):
            with pytest.raises(errors.LeaseConflict):
                c2.call('activate', vg=vg, lv='vol-a', instance='i9')
        timings.update(wait_alerts(
            prom, {('LvmcoordGrantFailures', 'compute-2')}, 'grant'))

        # compute-1 is cut from etcd.
        proxy.cut()
        timings.update(wait_alerts(
            prom, {('LvmcoordFenced', 'compute-1'),
                   ('LvmcoordSessionLost', 'compute-1'),
                   ('LvmcoordHostMissingFromMembership', 'compute-1')},
            'cut', timeout=60))

        proxy.heal()
        timings['heal: session and membership cleared'] = wait_for(
            lambda: not {('LvmcoordSessionLost', 'compute-1'),
                         ('LvmcoordHostMissingFromMembership',
                          'compute-1')} & prom.firing(),
            'session and membership alerts cleared', timeout=60, prom=prom)

        # Plain LVM run by hand around lvmcoord, then a change through it.
        c.vg.hosts[1].lvm.create_lv(vg, 'by-hand', 4 * MiB)
        c2.call('create', vg=vg, lv='vol-b', size=4 * MiB)
        timings.update(wait_alerts(
            prom, {('LvmcoordOutOfBandMetadataChange', 'compute-2')},
            'by hand'))

        # A daemon killed: its target goes down, its peer loses it.
        c['compute-2'].kill()
        timings.update(wait_alerts(
            prom, {('LvmcoordDaemonDown', 'compute-2'),
                   ('LvmcoordHostMissingFromMembership', 'compute-2')},
            'kill', timeout=60))
        # Nothing fired that no fault called for.
        fired = {name for name, _ in prom.firing()}
        assert fired <= {'LvmcoordFenced', 'LvmcoordGrantFailures',
                         'LvmcoordOutOfBandMetadataChange',
                         'LvmcoordDaemonDown', 'LvmcoordSessionFlapping',
                         'LvmcoordHostMissingFromMembership'}, fired
    timings['wall'] = time.monotonic() - started
    print('prometheus live run:',
          ', '.join(f'{k} {v:.1f}s' for k, v in timings.items()))
