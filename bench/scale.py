"""Scale: 200 host sessions and 5,000 activation leases on one etcd.

A private etcd of its own (the key count and DB size are this section's
only). 200 Engine sessions, each kept alive at TTL/6 like a daemon's (120
keepalives/s on etcd all through), are held by a helper process
(bench/sessions.py), as a daemon's session worker holds its host's; here,
one LeaseTable per session grants 5,000 LVs round-robin, one at a time;
then the whole table is listed by LeaseTable.list and by the CLI
(`lvmcoord lease list -f json`, a new process each time, as an admin runs
it).
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import clients
from bench import stats
from bench.peer import Peer
from bench.report import fmt_ms
from bench.report import fmt_summary
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import lease
from coordinator.sandbox.etcd import EtcdCluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20
TARGET_GRANT_P99 = 0.050   # at 4,000-5,000 leases
TARGET_LIST = 1.0          # LeaseTable.list of 5,000 leases
TARGET_CLI = 2.0           # the CLI, interpreter start included
TARGET_DB = 100 * MB
VG = 'scalevg'
BASELINE_KEY = '/bench-baseline/put'


def _count(etcd, prefix=None):
    """Keys in etcd (all, or under ``prefix``), by a count-only range."""
    if prefix is None:
        req = {'key': etcdlib.b64('\0'), 'range_end': etcdlib.b64('\0')}
    else:
        req = etcdlib.op_range(prefix, prefix=True)['request_range']
    req['count_only'] = True
    return int(etcd._post('/kv/range', req).get('count', 0))


def _metric(endpoint, name):
    with urllib.request.urlopen(f'{endpoint}/metrics', timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^{name} (\S+)$', text, re.M)
    return float(m.group(1)) if m else float('nan')


def _cli(*args):
    """(wall seconds, CPU seconds, stdout) of one CLI process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, '-m', 'coordinator.cli.app', *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + \
        (after.ru_stime - before.ru_stime)
    return took, cpu, out.stdout


class _Held:
    """A session kept alive by the bench.sessions process: its host and
    lease id, as a daemon's workers see the session worker's."""

    ttl = 10
    lost = False

    def __init__(self, host, lease_id):
        self.host, self.id = host, lease_id

    def check(self):
        """The helper process keeps it alive (and reports any loss)."""


def _load():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def run(report, quick):
    """Section 6 of the bench."""
    sessions, leases = (20, 500) if quick else (200, 5000)
    report.section(f'6. scale ({sessions} sessions, {leases} leases, one '
                   f'etcd, TTL 10 s)')
    with EtcdCluster(1) as cluster, tempfile.TemporaryDirectory() as tmp:
        endpoint = cluster.endpoints[0]
        holder = Peer('bench.sessions', ['--endpoint', endpoint, '--count',
                                         str(sessions)],
                      os.path.join(tmp, 'sessions.err'))
        try:
            held = holder.recv('ready', timeout=300)['sessions']
            etcd = etcdlib.Etcd([endpoint], timeout=5.0, retry_window=10.0)
            keys = keyslib.Keys(cluster=clients.CLUSTER)
            tables = [lease.LeaseTable(etcd, keys, _Held(host, lease_id))
                      for host, lease_id in sorted(held.items())]
            loads = [_load()]
            times, puts = [], []
            cpu0 = time.process_time()
            for i in range(leases):
                leases_of = tables[i % sessions]
                t0 = time.perf_counter()
                leases_of.grant(VG, f'lv-{i:05d}', instance=f'vm-{i}')
                times.append(time.perf_counter() - t0)
                if i % 10 == 5:
                    # Baseline: one write through the same kind of client
                    # (a grant is a read and a txn writing two keys).
                    t0 = time.perf_counter()
                    etcd.put(BASELINE_KEY, {'i': i})
                    puts.append(time.perf_counter() - t0)
            # This process's CPU per grant (puts included: a tenth of them).
            grant_cpu = (time.process_time() - cpu0) / leases
            loads.append(_load())
            table = tables[0]
            listed, ranged, list_cpu = [], [], []
            for _ in range(3 if quick else 5):
                t0, c0 = time.perf_counter(), time.process_time()
                got = table.list()
                listed.append(time.perf_counter() - t0)
                list_cpu.append(time.process_time() - c0)
                t0 = time.perf_counter()
                etcd.range(keys.leases(), prefix=True)
                ranged.append(time.perf_counter() - t0)
            assert len(got) == leases, len(got)
            with tempfile.NamedTemporaryFile('w', suffix='.conf') as conf:
                conf.write(f'[DEFAULT]\nhost = bench-cli\ncluster = '
                           f'{clients.CLUSTER}\n[etcd]\nendpoints = '
                           f'{endpoint}\n')
                conf.flush()
                cli, bare = [], []
                for _ in range(3):
                    cli.append(_cli('--config-file', conf.name, 'lease',
                                    'list', '-f', 'json'))
                    bare.append(_cli('--version'))
            assert all(len(json.loads(out)) == leases
                       for _, _, out in cli), 'CLI rows'
            loads.append(_load())
            keys_all = _count(etcd)
            keys_ours = _count(etcd, keys.root)
            keys_once = _count(etcd, keys.once())
            db_status = int(etcd.status().get('dbSize', 0))
            db_metric = _metric(endpoint, 'etcd_mvcc_db_total_size_in_bytes')
            in_use = _metric(endpoint,
                             'etcd_mvcc_db_total_size_in_use_in_bytes')
            holder.send('lost?')
            lost = holder.recv('lost', timeout=60)['hosts']
        finally:
            holder.close()
    if lost:
        report.note(f'scale: {len(lost)} of {sessions} sessions were lost '
                    f'during the section: {", ".join(lost[:5])}...')
    every = stats.Summary.of(times)
    put = stats.Summary.of(puts)
    tail = stats.Summary.of(times[int(leases * 0.8):])
    report.row('lease grant, all', fmt_summary(every))
    report.row(f'lease grant at {int(leases * 0.8)}-{leases} leases',
               fmt_summary(tail),
               f'p99 <= {TARGET_GRANT_P99 * 1e3:.0f} ms',
               tail.p99 <= TARGET_GRANT_P99)
    report.row('  baseline: one put, same run (every 10th grant)',
               f'{fmt_summary(put)}; grant/put '
               f'{stats.ratio(every.median, put.median):.2f}x median')
    report.row('  CPU of this process per grant (mean)', fmt_ms(grant_cpu))
    lst = statistics.median(listed)
    report.row(f'LeaseTable.list of {leases} leases (median of '
               f'{len(listed)})', f'{fmt_ms(lst)} wall, '
               f'{fmt_ms(statistics.median(list_cpu))} CPU',
               f'<= {TARGET_LIST:g} s', lst <= TARGET_LIST)
    report.row('  baseline: the same range by Etcd.range (ledger unparsed)',
               fmt_ms(statistics.median(ranged)))
    cli_s = statistics.median(t for t, _, _ in cli)
    report.row('lvmcoord lease list -f json (new process, median of 3)',
               f'{cli_s:.2f} s wall, '
               f'{statistics.median(c for _, c, _ in cli):.2f} s CPU',
               f'<= {TARGET_CLI:g} s', cli_s <= TARGET_CLI)
    report.row('  baseline: lvmcoord --version (start-up alone)',
               f'{statistics.median(t for t, _, _ in bare):.2f} s wall, '
               f'{statistics.median(c for _, c, _ in bare):.2f} s CPU')
    report.row('  machine load (1-min average: start, after grants, end)',
               ', '.join(f'{x:.1f}' for x in loads))
    expected = 2 * leases + sessions
    durable = keys_ours - keys_once
    report.row('etcd keys (all; ours: ledger + holder per lease, session '
               'per host)', f'{keys_all} ({durable} ours)',
               f'ours = {expected}', durable == expected)
    # One per first grant (coordinator/engine/once.py), on 120 s leases.
    report.row('  at-most-once markers (gone with their lease in 120 s)',
               f'{keys_once}', f'<= {leases}', keys_once <= leases)
    report.row('etcd DB size (status dbSize; metrics total, in use)',
               f'{db_status / MB:.1f} MB; {db_metric / MB:.1f} MB, '
               f'{in_use / MB:.1f} MB in use',
               f'<= {TARGET_DB // MB} MB', db_status <= TARGET_DB)
    report.data['scale'] = {
        'sessions': sessions, 'leases': leases, 'grant': every.ms(),
        'grant_tail': tail.ms(), 'put_baseline': put.ms(),
        'list_s': listed, 'list_cpu_s': list_cpu, 'range_s': ranged,
        'grant_cpu_s': grant_cpu,
        'cli_s': [t for t, _, _ in cli], 'cli_cpu_s': [c for _, c, _ in cli],
        'cli_version_s': [t for t, _, _ in bare], 'load': loads,
        'keys_all': keys_all,
        'keys_ours': durable, 'keys_once': keys_once, 'db_size': db_status,
        'db_total_metric': db_metric, 'db_in_use_metric': in_use}
