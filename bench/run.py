"""Entry point: ``python -m bench.run [--json PATH] [--quick]``.

Starts a private etcd and loop-device LVM, measures the VG lock, its
hand-off and coordinated lvcreate against baselines taken in the same run,
failover and the daemons with real daemons at default settings, and leases
at scale (200 sessions, 5,000 leases) on an etcd of their own; with
``--section scale`` 100-1,000 host sessions and 50,000 leases on a
3-member etcd and as many real daemons on one VG as the machine holds,
with ``--section bigvg`` VGs of 10-5,000 LVs, daemon vs plain LVM;
prints a table with the targets, and stops and detaches everything it
started, also on failure or Ctrl-C.
"""
import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

import bench  # noqa: F401  (quiets the eventlet warning)
from bench import clients
from bench import handoff
from bench import lockbench
from bench.report import Report
from coordinator.sandbox.etcd import EtcdCluster


def parse_args(argv):
    """Command-line options."""
    p = argparse.ArgumentParser(prog='python -m bench.run',
                                description=__doc__.splitlines()[0])
    p.add_argument('--json', metavar='PATH',
                   help='also write the figures as JSON to PATH')
    p.add_argument('--quick', action='store_true',
                   help='fewer samples (a smoke run, not for figures)')
    p.add_argument('--skip-lvm', action='store_true',
                   help='etcd sections only')
    p.add_argument('--strict', action='store_true',
                   help='kept for compatibility: a missed target always '
                        'makes the run exit 1')
    p.add_argument('--only', metavar='N,N', default='',
                   help='run only these sections (numbers)')
    p.add_argument('--section', metavar='NAME,NAME', default='',
                   help='run only these sections by name: scale (1,000 '
                        'hosts, 3-member etcd), bigvg (VGs of 5,000 LVs)')
    return p.parse_args(argv)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def measure(args, report, stack, workdir):
    """Run every section (cleanups go on ``stack``); names of failures."""
    quick = args.quick
    print('starting etcd ...', flush=True)
    cluster = stack.enter_context(EtcdCluster(1))
    endpoint = cluster.endpoints[0]
    eng = clients.engine([endpoint], 'bench-holder')
    stack.callback(eng.close, revoke=True)
    coord = clients.tooz(endpoint, 'bench-holder')
    stack.callback(coord.stop)
    sections = [
        ('1. uncontended lock', lambda: lockbench.run(
            report, endpoint, eng, coord, batches=12 if quick else 120,
            per_batch=5)),
        ('2. hand-off', lambda: handoff.run(
            report, endpoint, eng, coord, workdir,
            samples=20 if quick else 100, tooz_samples=3 if quick else 10)),
    ]
    if not args.skip_lvm:
        sections.append(('3. lvcreate on a shared VG', lambda: _lvm(
            report, endpoint, stack, quick)))
        sections.append(('4. failover', lambda: _failover(report, quick)))
        sections.append(('5. daemons', lambda: _daemons(report, quick)))
    sections.append(('6. scale', lambda: _scale(report, quick)))
    sections.append(('7. hosts', lambda: _hosts(report, quick)))
    if not args.skip_lvm:
        sections.append(('8. bigvg', lambda: _bigvg(report, quick)))
        sections.append(('9. daemons-max', lambda: _many(report, quick)))
    only = {n.strip() for n in args.only.split(',') if n.strip()}
    # --section names: 'scale' is the 1,000-host curve (section 7).
    named = {_NAMES.get(n.strip(), n.strip())
             for n in args.section.split(',') if n.strip()}
    if 'hosts' in named:
        named.add('daemons-max')   # the scale bullet's real daemons
    if only or named:
        sections = [s for s in sections if s[0].split('.')[0] in only
                    or s[0].split('. ')[1] in named]
    failed = []
    for name, section in sections:
        print(f'{name} ...', flush=True)
        try:
            section()
        except Exception:
            traceback.print_exc()
            report.note(f'section "{name}" FAILED (traceback above)')
            failed.append(name)
    return failed


_NAMES = {'scale': 'hosts', 'daemons': 'daemons-max'}


def _many(report, quick):
    from bench import manydaemons  # real daemons on one loop VG (root)
    report.section('9. real daemons on one VG (the sandbox\'s lvmcoordd)')
    manydaemons.run(report, quick)


def _hosts(report, quick):
    from bench import hosts  # 3-member etcds, 100-1,000 host sessions
    hosts.run(report, quick)


def _bigvg(report, quick):
    from bench import bigvg  # loop-device LVM and daemons (root)
    bigvg.run(report, quick)


def _failover(report, quick):
    from bench import failover  # daemons on loop-device LVM (root)
    failover.run(report, quick)


def _scale(report, quick):
    from bench import scale  # an etcd of its own, 200 sessions
    scale.run(report, quick)


def _daemons(report, quick):
    from bench import daemonbench  # daemons on loop-device LVM (root)
    daemonbench.run(report, quick)


def _lvm(report, endpoint, stack, quick):
    from bench import lvmbench  # needs LVM and loop devices (root)
    lvmbench.run(report, [endpoint], stack, quick)


def _loadavg():
    with open('/proc/loadavg') as f:
        return f.read().split()[:3]


def main(argv=None):
    """Run the bench; 0, 2 if a section failed, 1 if a target was missed."""
    args = parse_args(argv)
    handlers = {sig: signal.getsignal(sig)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _terminate)
    report = Report()
    started = time.monotonic()
    load_start = _loadavg()
    stack = contextlib.ExitStack()
    try:
        workdir = tempfile.mkdtemp(prefix='lvmcoord-bench-')
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        failed = measure(args, report, stack, workdir)
    finally:
        # Cleanup must not be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    report.data['wall_seconds'] = round(time.monotonic() - started, 1)
    load_end = _loadavg()
    report.data['loadavg'] = {'start': load_start, 'end': load_end}
    report.note(f'machine load average (1, 5, 15 min; {os.cpu_count()} '
                f'CPUs) at the start: {" ".join(load_start)}, at the end: '
                f'{" ".join(load_end)}')
    print(f'\nlvmcoord bench ({report.data["wall_seconds"]} s)')
    print(report.table())
    if args.json:
        report.write_json(args.json)
        print(f'figures written to {args.json}')
    if failed:
        return 2
    return 1 if report.misses() else 0


if __name__ == '__main__':
    sys.exit(main())
