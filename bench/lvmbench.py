"""Section 3: real lvcreate on a loop-backed shared VG, 3 simulated hosts.

Lost LVs: 20 rounds in which 3 hosts (each its own LVM_SYSTEM_DIR and
locking dir) run lvcreate at the same moment, without and with the VG
lock, on a fresh VG each run. Cost: serial lvcreate under
MetadataGuard.change vs plain lvcreate, interleaved, each on its own fresh
VG so both grow through the same metadata sizes.
"""
import contextlib

from bench import clients
from bench import seqno
from bench import serial
from bench import stats
from bench.report import fmt_ms
from bench.report import fmt_summary
from coordinator import errors
from coordinator.sandbox import race
from coordinator.sandbox.lvm import SharedVG
from coordinator.sandbox.lvm import loop_attached

HOSTS = 3
ROUNDS = 20
TARGET_SERIAL = 1.10


def _open_vg(hosts, attempts=3):
    # Other tests on this machine attach and detach loop devices too: a
    # VG whose creation failed is torn down and made again on a new one.
    for attempt in range(1, attempts + 1):
        shared = SharedVG(hosts=hosts)
        try:
            return shared.open()
        except BaseException as exc:
            shared.close()
            if not isinstance(exc, errors.LVMError) or attempt == attempts:
                raise
            print(f'  (VG creation failed, retrying: {exc})', flush=True)


@contextlib.contextmanager
def _fresh_vg(hosts):
    """A new SharedVG; once closed, check its loop device is detached."""
    shared = _open_vg(hosts)
    try:
        yield shared
    finally:
        shared.close()
        left = loop_attached(shared.backing)
        if left:
            raise RuntimeError(f'loop device(s) {left} still attached')


def _race_runs(endpoints, stack, runs):
    engines = []
    for h in range(HOSTS):
        eng = clients.engine(endpoints, f'bench-host{h}')
        stack.callback(eng.close, revoke=True)
        engines.append(eng)
    out = {'without_lock': [], 'with_lock': []}
    for _ in range(runs):
        with _fresh_vg(HOSTS) as shared:
            res = race.without_lock(shared, ROUNDS)
            out['without_lock'].append(dict(res.outcome(),
                                            errors=res.failures[:3]))
        with _fresh_vg(HOSTS) as shared:
            _, read = seqno.reader(shared)
            res = race.with_lock(shared, ROUNDS, engines, read)
            out['with_lock'].append(dict(res.outcome(),
                                         errors=res.failures[:3]))
    return engines, out


def _lost(outcomes):
    parts = []
    for o in outcomes:
        text = f'{o["lost"]}/{o["expected"]}'
        if o['unreadable']:
            text += ' (VG unreadable)'
        parts.append(text)
    failed = sum(o['failed_commands'] for o in outcomes)
    return f'{", ".join(parts)}; {failed} lvcreate errors'


def _serial(engine, batches, per_batch):
    with contextlib.ExitStack() as vgs:
        plain = vgs.enter_context(_fresh_vg(1))
        guarded = vgs.enter_context(_fresh_vg(1))
        name, read = seqno.reader(guarded)
        creators = {'plain': serial.Creator(plain),
                    'guarded': serial.Creator(guarded, engine, read)}
        daemon_vg = vgs.enter_context(_fresh_vg(1))
        creators['daemon_reader'] = serial.Creator(
            daemon_vg, engine, seqno.daemon_reader(daemon_vg))
        samples = serial.run(creators, batches, per_batch)
        parts = {k: c.breakdown() for k, c in creators.items()
                 if k != 'plain'}
    return name, samples, parts


def run(report, endpoints, stack, quick):
    """Measure and add the section-3 rows to ``report``."""
    runs = 1 if quick else 3
    engines, races = _race_runs(endpoints, stack, runs)
    name, samples, parts = _serial(engines[0], 4 if quick else 20,
                                   3)
    s = {k: stats.Summary.of(v) for k, v in samples.items()}
    report.data['lvm'] = {
        'race': races, 'serial': {k: v.ms() for k, v in s.items()},
        'serial_breakdown_ms': {
            k: {p: round(t * 1e3, 3) for p, t in v.items()}
            for k, v in parts.items()},
        'read_seqno': name}
    report.section(f'3. lvcreate on a shared VG: {HOSTS} hosts x {ROUNDS} '
                   f'rounds of {HOSTS} concurrent lvcreate, {runs} run(s) '
                   f'each, fresh VG per run')
    report.row('LVs lost without the lock', _lost(races['without_lock']))
    lost = sum(o['lost'] for o in races['with_lock'])
    report.row('LVs lost with the lock', _lost(races['with_lock']), '0',
               lost == 0)
    report.row('serial lvcreate, plain', fmt_summary(s['plain']))
    report.row(f'serial lvcreate, MetadataGuard.change ({name} seqno)',
               fmt_summary(s['guarded']))
    med = stats.ratio(s['guarded'].median, s['plain'].median)
    p99 = stats.ratio(s['guarded'].p99, s['plain'].p99)
    report.row('guarded / plain lvcreate',
               f'{med:.3f}x median, {p99:.3f}x p99',
               f'<= {TARGET_SERIAL:.2f}x', med <= TARGET_SERIAL)
    report.data['lvm']['ratio'] = {'median': round(med, 3),
                                   'p99': round(p99, 3),
                                   'target': TARGET_SERIAL}
    b = parts['guarded']
    report.row('  per guarded change (medians)',
               f'lvcreate {fmt_ms(b["lvcreate"])}, read_seqno x2 '
               f'{fmt_ms(b["read_seqno"])}, etcd+engine '
               f'{fmt_ms(b["etcd_and_engine"])}')
    if 'daemon_reader' in s:
        d = s['daemon_reader']
        report.row('serial lvcreate, change w/ HostContext.read_seqno',
                   f'{fmt_summary(d)}, '
                   f'{stats.ratio(d.median, s["plain"].median):.2f}x plain')
        report.data['lvm']['ratio_daemon_reader'] = round(
            stats.ratio(d.median, s['plain'].median), 3)
    report.note('LVs lost = expected - present after the run; a VG left '
                'unreadable counts as all its LVs lost.')
