"""Section "scale": 100, 300 and 1,000 hosts on a 3-member etcd.

Per point, a fresh 3-member etcd (127.0.0.1). The hosts' sessions are the
engine's own (Session keepalive threads at TTL/6, a request watch per host
as the daemon's routing loop has), spread over PROCS bench.sessions
processes; the bench process grants LEASES_PER_HOST leases per host,
round-robin, from GRANTERS threads (one LeaseTable per session), then
releases a sample. Measured: grant/release p50/p99, the real CLI's
``lvmcoord lease list -f json``, etcd CPU (/proc of the members) and DB
size, and idle requests/s of the whole cluster over an idle window, from
the members' grpc_server_handled_total. One more point runs each host's
grant watch as well (GrantWatch watches the whole leases prefix).
"""
import concurrent.futures
import json
import os
import re
import tempfile
import time
import urllib.request

from bench import clients
from bench import stats
from bench.peer import Peer
from bench.report import fmt_summary
from bench.scale import _cli
from bench.scale import _Held
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import lease
from coordinator.sandbox.etcd import EtcdCluster

MB = 1 << 20
POINTS = (100, 300, 1000)
LEASES_PER_HOST = 50
PROCS = 5
GRANTERS = 4
IDLE_WINDOW = 20.0
TARGET_GRANT_P99 = 0.050
TARGET_IDLE = 1.0
TARGET_LIST = 5.0
VG = 'scalevg'
# Hosts of the one point run with the grant watches too (0: none).
GRANT_WATCH_POINT = 300


def _handled(endpoints):
    """Sum of grpc_server_handled_total over every member."""
    total = 0.0
    for ep in endpoints:
        with urllib.request.urlopen(f'{ep}/metrics', timeout=10) as r:
            text = r.read().decode()
        total += sum(float(v) for v in re.findall(
            r'^grpc_server_handled_total\{[^}]*\} (\S+)$', text, re.M))
    return total


def _cpu(cluster):
    """CPU seconds (user + system) of the etcd member processes."""
    tick = os.sysconf('SC_CLK_TCK')
    total = 0.0
    for m in cluster.members:
        with open(f'/proc/{m.proc.pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _point(hosts, per_host, tmp, quick, grant_watch=False):
    leases = hosts * per_host
    out = {'hosts': hosts, 'leases': leases, 'grant_watch': grant_watch}
    with EtcdCluster(3) as cluster:
        eps = cluster.endpoints
        procs = []
        try:
            per = -(-hosts // PROCS)
            for p in range(PROCS):
                n = min(per, hosts - p * per)
                if n > 0:
                    procs.append(Peer('bench.sessions', [
                        '--endpoint', ','.join(eps), '--count', str(n),
                        '--name', f'h{p}', '--watch'] +
                        (['--grant-watch'] if grant_watch else []),
                        os.path.join(tmp, f'sessions-{hosts}-{p}.err')))
            held = {}
            for peer in procs:
                held.update(peer.recv('ready', timeout=600)['sessions'])
            etcd = etcdlib.Etcd(eps, timeout=5.0, retry_window=10.0)
            keys = keyslib.Keys(cluster=clients.CLUSTER)
            tables = [lease.LeaseTable(etcd, keys, _Held(h, i))
                      for h, i in sorted(held.items())]
            cpu0, t0 = _cpu(cluster), time.monotonic()

            def grant(i):
                s = time.perf_counter()
                tables[i % hosts].grant(VG, f'lv-{i:05d}', instance=f'vm{i}')
                return time.perf_counter() - s
            with concurrent.futures.ThreadPoolExecutor(GRANTERS) as pool:
                times = list(pool.map(grant, range(leases)))
            took = time.monotonic() - t0
            out['grant'] = stats.Summary.of(times)
            out['grant_tail'] = stats.Summary.of(times[int(leases * .8):])
            out['grants_per_s'] = leases / took
            out['etcd_cpu_per_grant'] = (_cpu(cluster) - cpu0) / leases
            rel = []
            for i in range(0, leases, max(1, leases // 200)):
                s = time.perf_counter()
                tables[i % hosts].release(VG, f'lv-{i:05d}')
                rel.append(time.perf_counter() - s)
                tables[i % hosts].grant(VG, f'lv-{i:05d}', instance=f'vm{i}')
            out['release'] = stats.Summary.of(rel)
            with tempfile.NamedTemporaryFile('w', suffix='.conf') as conf:
                conf.write(f'[DEFAULT]\nhost = bench-cli\ncluster = '
                           f'{clients.CLUSTER}\n[etcd]\nendpoints = '
                           f'{",".join(eps)}\n')
                conf.flush()
                cli = [_cli('--config-file', conf.name, 'lease', 'list',
                            '-f', 'json') for _ in range(1 if quick else 2)]
            assert all(len(json.loads(o)) == leases for _, _, o in cli)
            out['cli'] = min(t for t, _, _ in cli)
            out['cli_cpu'] = min(c for _, c, _ in cli)
            # Idle: nothing but the hosts' keepalives and watches.
            window = 5.0 if quick else IDLE_WINDOW
            time.sleep(2.0)
            h0, c0 = _handled(eps), _cpu(cluster)
            time.sleep(window)
            out['idle_rps'] = (_handled(eps) - h0) / window
            out['idle_cpu'] = (_cpu(cluster) - c0) / window
            out['db'] = max(int(etcdlib.Etcd([ep], timeout=5.0).status()
                                .get('dbSize', 0)) for ep in eps)
            lost = []
            for peer in procs:
                peer.send('lost?')
                lost += peer.recv('lost', timeout=60)['hosts']
            out['lost'] = len(lost)
        finally:
            for peer in procs:
                peer.close()
    return out


def knee(res):
    """The first host count whose grant p99 is over twice the first
    point's (or p50 over 1.5x), with the ratios at each point."""
    base = res[0]['grant']
    ratios = [(r['hosts'], r['grant'].median / base.median,
               r['grant'].p99 / base.p99) for r in res]
    at = next((n for n, m, p in ratios if p > 2 or m > 1.5), None)
    text = ', '.join(f'{n}: {m:.2f}x/{p:.2f}x' for n, m, p in ratios)
    return (f'at {at} hosts' if at else f'none up to {res[-1]["hosts"]} '
            f'hosts') + f' (p50/p99 ratios {text})'


def run(report, quick):
    """The scale section: the curve and its knee."""
    points = (20, 60) if quick else POINTS
    per_host = 10 if quick else LEASES_PER_HOST
    report.section(f'scale: hosts on a 3-member etcd, {per_host} leases '
                   f'per host, {PROCS} session processes, {GRANTERS} '
                   f'granting threads, TTL 10 s')
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for hosts in points:
            print(f'  scale: {hosts} hosts ...', flush=True)
            res.append(_point(hosts, per_host, tmp, quick))
        if GRANT_WATCH_POINT:
            # The daemon's grant watch is on the whole leases prefix:
            # every grant is an event for every host. Shown at one point.
            n = points[0] if quick else GRANT_WATCH_POINT
            print(f'  scale: {n} hosts with grant watches ...', flush=True)
            gw = _point(n, per_host, tmp, quick, grant_watch=True)
    top = max(points)
    for r in res:
        n, last = r['hosts'], r['hosts'] == top
        report.row(f'{n} hosts: grant ({r["leases"]} leases)',
                   f'{fmt_summary(r["grant"])}, {r["grants_per_s"]:.0f}/s')
        report.row(f'{n} hosts: grant, last 20% of leases',
                   fmt_summary(r['grant_tail']),
                   f'p99 <= {TARGET_GRANT_P99 * 1e3:.0f} ms' if last else '',
                   r['grant_tail'].p99 <= TARGET_GRANT_P99 if last else None)
        report.row(f'{n} hosts: release (sample)', fmt_summary(r['release']))
        report.row(f'{n} hosts: lvmcoord lease list -f json, '
                   f'{r["leases"]} leases', f'{r["cli"]:.2f} s wall, '
                   f'{r["cli_cpu"]:.2f} s CPU',
                   f'<= {TARGET_LIST:g} s' if last else '',
                   r['cli'] <= TARGET_LIST if last else None)
        per = r['idle_rps'] / n
        report.row(f'{n} hosts: idle etcd requests (3 members)',
                   f'{r["idle_rps"]:.0f}/s, {per:.2f}/s per host; etcd CPU '
                   f'{r["idle_cpu"] * 100:.0f}% of a core',
                   f'<= {TARGET_IDLE:g}/s per host', per <= TARGET_IDLE)
        report.row(f'{n} hosts: etcd CPU per grant; DB size',
                   f'{r["etcd_cpu_per_grant"] * 1e3:.2f} ms (3 members); '
                   f'{r["db"] / MB:.1f} MB')
        if r['lost']:
            report.note(f'scale {n}: {r["lost"]} sessions lost')
    report.row('knee of the curve (grant p50 and p99 vs the first point)',
               knee(res))
    if GRANT_WATCH_POINT:
        report.row(f'{gw["hosts"]} hosts + each host\'s grant watch '
                   f'(leases/ prefix): grant', f'{fmt_summary(gw["grant"])}, '
                   f'{gw["grants_per_s"]:.0f}/s; etcd CPU per grant '
                   f'{gw["etcd_cpu_per_grant"] * 1e3:.2f} ms')
        res.append(gw)
    report.data['hosts'] = [
        {k: (v.ms() if isinstance(v, stats.Summary) else v)
         for k, v in r.items()} for r in res]
