"""Failover at default settings: a holder's death to the LV's takeover by
another host, and the fence-to-takeover margin when the holder is cut from
etcd (real daemons, real etcd, loop-backed LVM)."""
import os
import random
import signal
import threading
import time
from urllib import parse

from bench.report import fmt_ms
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.proxy import Proxy

MiB = 1 << 20


def _fenced_at(path, stop, out):
    # The loop backend fences by making the device read-only.
    ro = f'/sys/block/{os.path.basename(os.path.realpath(path))}/ro'
    while not stop.is_set():
        with open(ro) as f:
            if f.read().strip() == '1':
                out.append(time.monotonic())
                return
        time.sleep(0.005)


def deaths(ttl, grace, rounds):
    """Seconds from kill -9 of the holder's daemon to the takeover."""
    out = []
    with Cluster(hosts=('compute-1', 'compute-2'), ttl=ttl,
                 grace=grace) as c:
        vg, c2 = c.vg.vg, c['compute-2'].client
        for i in range(rounds):
            c2.call('create', vg=vg, lv=f'death-{i}', size=4 * MiB)
            c['compute-1'].client.call('activate', vg=vg, lv=f'death-{i}')
            # Die anywhere in the keepalive cycle.
            time.sleep(random.uniform(0, ttl / 3))
            c['compute-1'].kill(signal.SIGKILL)
            killed = time.monotonic()
            c2.call('activate', vg=vg, lv=f'death-{i}',
                    wait=ttl + grace + 30)
            out.append(time.monotonic() - killed)
            c['compute-1'].proc.wait()
            c.restart('compute-1')
    return out


def partitions(ttl, grace, rounds):
    """Seconds between the cut-off holder's fence and the takeover."""
    proxies = []

    def endpoints_for(host, eps):
        if host != 'compute-1':
            return eps
        url = parse.urlsplit(eps[0])
        proxies.append(Proxy(url.hostname, url.port))
        return [proxies[0].url]

    out = []
    try:
        with Cluster(hosts=('compute-1', 'compute-2'), ttl=ttl, grace=grace,
                     endpoints_for=endpoints_for) as c:
            vg = c.vg.vg
            c1, c2 = c['compute-1'].client, c['compute-2'].client
            for i in range(rounds):
                lv = f'cut-{i}'
                c2.call('create', vg=vg, lv=lv, size=4 * MiB)
                path = c1.call('activate', vg=vg, lv=lv)['path']
                time.sleep(random.uniform(0, ttl / 3))
                stop, fenced = threading.Event(), []
                watcher = threading.Thread(target=_fenced_at,
                                           args=(path, stop, fenced))
                watcher.start()
                proxies[0].cut()
                c2.call('activate', vg=vg, lv=lv, wait=ttl + grace + 30)
                took = time.monotonic()
                stop.set()
                watcher.join()
                out.append(took - fenced[0] if fenced else float('-inf'))
                proxies[0].heal()
                deadline = time.monotonic() + 60
                while os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.1)
                c2.call('deactivate', vg=vg, lv=lv)
    finally:
        for p in proxies:
            p.close()
    return out


def run(report, quick, ttl=10, grace=3.0, fraction=0.5, interval=0.5):
    """Section 4 of the bench."""
    rounds = 1 if quick else 3
    report.section(f'4. failover at default settings (TTL {ttl}s, grace '
                   f'{grace:g}s, fence at {fraction:g} x TTL)')
    died = deaths(ttl, grace, rounds)
    bound = ttl + grace
    report.row('holder killed (-9) -> LV granted to another host',
               ', '.join(f'{d:.1f} s' for d in died),
               f'<= {bound:g} s', max(died) <= bound + 0.5)
    margins = partitions(ttl, grace, rounds)
    # The fencer acts on its next tick after the deadline.
    design = (1 - fraction) * ttl + grace - interval
    report.row('holder cut from etcd: its fence -> takeover margin',
               ', '.join(fmt_ms(m) if m < 1 else f'{m:.1f} s'
                         for m in margins),
               f'> 0 (design >= {design:g} s)', min(margins) > 0)
    report.data['failover'] = {'death_to_takeover_s': died,
                               'fence_to_takeover_margin_s': margins,
                               'ttl': ttl, 'grace': grace}
