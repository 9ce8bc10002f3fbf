"""Real daemons on loop-backed LVM: create through the socket vs plain
lvcreate, routed activate/deactivate minus the backend's own time, memory
per process and per host, and idle etcd requests per host.

Three hosts: compute-1 (the caller), compute-2 (the routed target) and
idle-1, whose etcd traffic goes through a counting proxy and which is
never asked anything (a proxy on the others would add its own latency).
"""
import collections
import os
import re
import select
import shutil
import socket
import statistics
import tempfile
import time
from urllib import parse

from bench import stats
from bench.report import fmt_ms
from bench.report import fmt_summary
from coordinator.activation.loop import LoopBackend
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.lvm import SharedVG
from coordinator.sandbox.proxy import Proxy

MiB = 1 << 20
TARGET_CREATE = 1.15
TARGET_ROUTED = 0.020
TARGET_PSS = 60 * MiB
TARGET_IDLE = 1.0
HOSTS = ('compute-1', 'compute-2', 'idle-1')


class CountingProxy(Proxy):
    """A Proxy that counts the HTTP requests a host sends to etcd (a watch
    stream counts once, when it is opened)."""

    _REQUEST = re.compile(rb'(?:^|\r\n)(?:POST|GET|PUT|DELETE) (/[^ ?]*)')

    def __init__(self, host, port):
        self.requests = 0
        self.paths = collections.Counter()
        super().__init__(host, port)

    def _serve(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self.mutex:
            self.conns.add(upstream)
        pair = {client: upstream, upstream: client}
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        found = self._REQUEST.findall(data)
                        self.requests += len(found)
                        self.paths.update(p.decode() for p in found)
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                s.close()
                with self.mutex:
                    self.conns.discard(s)


def _pids(pgid):
    out = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            if int(fields[2]) == pgid:
                out.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(out)


def _memory(pid):
    """(title, PSS bytes, RSS bytes) of one process."""
    vals = {}
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ('Pss:', 'Rss:'):
                vals[parts[0][:-1]] = int(parts[1]) * 1024
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        title = f.read().replace(b'\0', b' ').decode(errors='replace')
    return title.strip()[:60], vals.get('Pss', 0), vals.get('Rss', 0)


def memory(report, cluster):
    """PSS and RSS of every daemon process, summed per host."""
    per_host = {}
    for name in HOSTS:
        procs = [_memory(pid) for pid in _pids(cluster[name].proc.pid)]
        per_host[name] = procs
    report.data['memory'] = {
        h: [{'process': t, 'pss': p, 'rss': r} for t, p, r in procs]
        for h, procs in per_host.items()}
    worst = max(sum(p for _, p, _ in procs) for procs in per_host.values())
    sample = per_host[HOSTS[0]]
    for title, pss, rss in sample:
        report.row(f'  {title[:44]}', f'PSS {pss / MiB:.1f} MB, RSS '
                   f'{rss / MiB:.1f} MB')
    rss_host = max(sum(r for _, _, r in procs)
                   for procs in per_host.values())
    report.row('memory per host (master + workers, worst host)',
               f'PSS {worst / MiB:.1f} MB, RSS {rss_host / MiB:.1f} MB, '
               f'{len(sample)} processes', f'PSS <= {TARGET_PSS // MiB} MB',
               worst <= TARGET_PSS)


def _plain_vs_daemon(cluster, quick):
    vg = cluster.vg.vg
    client = cluster['compute-1'].client
    count = {'daemon': 0, 'plain': 0}
    with SharedVG(hosts=1) as plain:
        lvm = plain.hosts[0].lvm

        def daemon():
            count['daemon'] += 1
            client.call('create', vg=vg, lv=f'p3-{count["daemon"]}',
                        size=4 * MiB)

        def lvcreate():
            count['plain'] += 1
            lvm.create_lv(plain.vg, f'p3-{count["plain"]}', 4 * MiB)
        return stats.interleave({'daemon': daemon, 'plain': lvcreate},
                                3 if quick else 12, 3, warmup=2)


def _routed(cluster, quick):
    vg = cluster.vg.vg
    c1 = cluster['compute-1'].client
    c2 = cluster['compute-2'].client
    c2.call('create', vg=vg, lv='routed', size=4 * MiB)
    c2.call('create', vg=vg, lv='direct', size=4 * MiB)
    # The backend alone, as the daemon runs it (LV info at hand).
    lvm = cluster.vg.hosts[1].lvm
    info = _info_as_the_daemon_has_it(lvm, vg, 'direct')
    state = tempfile.mkdtemp(prefix='lvmcoord-bench-backend-')
    backend = LoopBackend(lvm, state, os.path.join(state, 'dev'))
    samples = {'activate': [], 'deactivate': [], 'backend_activate': [],
               'backend_deactivate': []}
    rounds = 8 if quick else 40
    try:
        _measure(c1, vg, backend, info, rounds, samples)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return samples


def _measure(c1, vg, backend, info, rounds, samples):
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        c1.call('activate', vg=vg, lv='routed', host='compute-2')
        t1 = time.perf_counter()
        c1.call('deactivate', vg=vg, lv='routed', host='compute-2')
        t2 = time.perf_counter()
        backend.activate(vg, 'direct', False, info)
        # What the daemon's activation also asks of it (code before the
        # split made it writable inside activate).
        if hasattr(backend, 'admit'):
            backend.admit(vg, 'direct')
        t3 = time.perf_counter()
        backend.deactivate(vg, 'direct')
        t4 = time.perf_counter()
        if i >= 2:  # warm-up
            for key, value in (('activate', t1 - t0),
                               ('deactivate', t2 - t1),
                               ('backend_activate', t3 - t2),
                               ('backend_deactivate', t4 - t3)):
                samples[key].append(value)


def _info_as_the_daemon_has_it(lvm, vg, lv):
    try:
        from coordinator.lvm.mda import read_vg
    except ImportError:  # code without the metadata reader (a before run)
        return lvm.lv(vg, lv)
    return read_vg(vg, [p['name'] for p in lvm.pvs(vg)]).lv(lv)


def _sum(samples, key):
    return fmt_summary(stats.Summary.of(samples[key]))


def _idle(proxy, seconds):
    """(requests per second, {URL path: requests per second})."""
    start, paths = proxy.requests, proxy.paths.copy()
    time.sleep(seconds)
    by_path = proxy.paths.copy()
    by_path.subtract(paths)
    return ((proxy.requests - start) / seconds,
            {p: round(n / seconds, 3) for p, n in by_path.most_common()
             if n > 0})


def run(report, quick):
    """Section 5 of the bench."""
    proxies = []

    def endpoints_for(host, eps):
        if host != 'idle-1':
            return eps
        url = parse.urlsplit(eps[0])
        proxies.append(CountingProxy(url.hostname, url.port))
        return [proxies[-1].url]

    report.section('5. daemons (3 hosts, loop backend, TTL 10 s)')
    try:
        with Cluster(hosts=HOSTS, endpoints_for=endpoints_for) as c:
            settle = time.monotonic()
            got = _plain_vs_daemon(c, quick)
            s = {k: stats.Summary.of(v) for k, v in got.items()}
            med = stats.ratio(s['daemon'].median, s['plain'].median)
            report.row('create through the socket', fmt_summary(s['daemon']))
            report.row('plain lvcreate', fmt_summary(s['plain']))
            report.row('daemon create / plain lvcreate', f'{med:.3f}x median',
                       f'<= {TARGET_CREATE}x', med <= TARGET_CREATE)
            routed = _routed(c, quick)
            r = {k: statistics.median(v) for k, v in routed.items()}
            act = r['activate'] - r['backend_activate']
            deact = r['deactivate'] - r['backend_deactivate']
            for op in ('activate', 'deactivate'):
                report.row(f'routed {op}', f'{_sum(routed, op)}; backend '
                           f'alone {fmt_ms(r["backend_" + op])}')
            report.row('routed activate minus backend (p50)', fmt_ms(act),
                       f'<= {TARGET_ROUTED * 1e3:.0f} ms',
                       act <= TARGET_ROUTED)
            report.row('routed deactivate minus backend (p50)',
                       fmt_ms(deact), f'<= {TARGET_ROUTED * 1e3:.0f} ms',
                       deact <= TARGET_ROUTED)
            # Idle: the other hosts' work is over; let the idle host settle.
            time.sleep(max(0.0, 15 - (time.monotonic() - settle)))
            window = 20 if quick else 60
            rate, by_path = _idle(proxies[0], window)
            report.row(f'idle etcd requests per host ({window} s window)',
                       f'{rate:.2f} req/s', f'<= {TARGET_IDLE:g} req/s',
                       rate <= TARGET_IDLE)
            report.row('  by URL path', ', '.join(
                f'{p} {n:.2f}' for p, n in by_path.items()) or 'none')
            memory(report, c)
            report.data['daemons'] = {
                'create': {k: v.ms() for k, v in s.items()},
                'create_ratio': round(med, 3),
                'routed_ms': {k: round(v * 1e3, 3) for k, v in r.items()},
                'idle_req_per_s': round(rate, 3),
                'idle_req_per_s_by_path': by_path}
    finally:
        for p in proxies:
            p.close()
