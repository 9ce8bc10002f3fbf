"""As many real daemons on one VG as this machine holds.

The sandbox's own daemons (coordinator.sandbox.daemons: lvmcoordd,
master and workers, loop backend) on one etcd and one loop-backed VG,
started in steps. After each step and a settle window: every daemon
answers ``status`` (timed), one ``create`` runs through a new daemon,
and the CPU and memory are read (the CPU of the daemons' own process
groups: the machine is shared). The ramp stops at the first step that
is not healthy, which names the limit.
"""
import os
import statistics
import tempfile
import time

from bench import stats
from bench.report import fmt_summary
from coordinator.sandbox.daemons import Daemon
from coordinator.sandbox.etcd import EtcdCluster
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20
STEPS = (8, 32, 64, 128, 192)
SETTLE = 15.0
# Healthy: status answers within this, and the machine's CPU has room.
STATUS_P99 = 1.0
CPU_BUSY = 0.90
MEM_FLOOR = 2048 * MiB


def _daemon_cpu(groups):
    """CPU seconds of every process in the daemons' process groups (the
    machine is shared: its own /proc/stat counts others' work too)."""
    tick, total = os.sysconf('SC_CLK_TCK'), 0
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:
            # utime, stime, and the reaped children's (LVM commands).
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def _mem_available():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return 0


def _step(daemons, vg, n):
    groups = {d.proc.pid for d in daemons}
    c0, t0 = _daemon_cpu(groups), time.monotonic()
    time.sleep(SETTLE)
    busy = (_daemon_cpu(groups) - c0) / (time.monotonic() - t0) / \
        os.cpu_count()
    lat = []
    for d in daemons:
        s = time.perf_counter()
        d.client.call('status')
        lat.append(time.perf_counter() - s)
    s = time.perf_counter()
    daemons[-1].client.call('create', vg=vg, lv=f'many{n:03d}', size=4 * MiB)
    create = time.perf_counter() - s
    return {'n': n, 'busy': busy, 'status': stats.Summary.of(lat),
            'create': create, 'mem_available': _mem_available()}


def _limit(r):
    """Why step ``r`` is not healthy, or None."""
    if r['status'].p99 > STATUS_P99:
        return f'status p99 {r["status"].p99:.2f} s > {STATUS_P99:g} s'
    if r['busy'] > CPU_BUSY:
        return (f'the idle daemons\' own CPU is {r["busy"] * 100:.0f}% '
                f'of the {os.cpu_count()} cores')
    if r['mem_available'] < MEM_FLOOR:
        return 'memory'
    return None


def run(report, quick):
    """The many-daemons rows (part of the scale section)."""
    steps = (2, 4) if quick else STEPS
    res, limit = [], None
    with EtcdCluster(1) as etcd, SharedVG(hosts=max(steps),
                                          size=8 << 30) as shared, \
            tempfile.TemporaryDirectory(prefix='lvmcoord-many-') as tmp:
        daemons = []
        try:
            for n in steps:
                print(f'  daemons: {n} ...', flush=True)
                new = []
                for i in range(len(daemons), n):
                    d = Daemon(f'many-{i:03d}', os.path.join(tmp, str(i)),
                               etcd.endpoints, shared.vg,
                               shared.hosts[i].system_dir, ttl=10,
                               grace=3.0)
                    daemons.append(d)
                    new.append(d.start(wait=False))
                try:
                    for d in new:
                        d.wait_ready(timeout=180)
                except RuntimeError as exc:
                    limit = f'{n} daemons: a daemon did not start: ' + \
                        str(exc).splitlines()[0]
                    break
                r = _step(daemons, shared.vg, n)
                res.append(r)
                why = _limit(r)
                if why:
                    limit = f'at {n} daemons: {why}'
                    break
        finally:
            for d in daemons:
                d.stop()
    healthy = [r for r in res if not _limit(r)]
    for r in res:
        report.row(f'{r["n"]} real daemons, one VG, idle: status; CPU',
                   f'{fmt_summary(r["status"])}; create '
                   f'{r["create"] * 1e3:.0f} ms; daemons\' CPU '
                   f'{r["busy"] * 100:.1f}% of the cores '
                   f'({r["busy"] * os.cpu_count() * 100 / r["n"]:.1f}% of '
                   f'a core each); {r["mem_available"] / MiB:.0f} MiB free')
    top = healthy[-1]['n'] if healthy else 0
    report.row('most real daemons this machine holds on one VG',
               f'{top} (limit: {limit or "not reached: the ramp ended"})')
    report.data['many_daemons'] = {
        'max': top, 'limit': limit,
        'steps': [dict(r, status=r['status'].ms()) for r in res],
        'busy_median': statistics.median(r['busy'] for r in res)
        if res else None}
