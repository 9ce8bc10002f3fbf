"""python -m coordinator.sandbox.chaos --seed N --duration S [--hosts V,C]"""
import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import warnings

from coordinator.sandbox.chaos import faults as faultlib
from coordinator.sandbox.chaos import report

# etcd3gw imports futurist, which warns that eventlet is deprecated.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
from coordinator.sandbox.chaos import runner  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m coordinator.sandbox.chaos',
                                description=__doc__)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--duration', type=int, default=300,
                   help='seconds of workload and faults (settle and checks '
                        'come on top)')
    p.add_argument('--hosts', default='2,2', metavar='VOLUMES,COMPUTES',
                   help='how many volume and compute daemons (each >= 2)')
    # lvmcoordd's own defaults ([session] ttl, [lease] grace): what an
    # operator runs, and what doc/design.md argues rides out an election.
    p.add_argument('--ttl', type=int, default=10)
    p.add_argument('--grace', type=float, default=3.0)
    p.add_argument('--no-watchdog', action='store_true',
                   help='run the hosts without their SIMULATED watchdog')
    p.add_argument('--faults', metavar='KIND,...',
                   help='inject only these fault kinds (default: all)')
    p.add_argument('--out', default=os.path.join(
        tempfile.gettempdir(), 'lvmcoord-chaos'),
        help='directory for the JSON result (and logs when it fails)')
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error('run as root: the sandbox attaches loop devices')
    volumes, computes = (int(x) for x in args.hosts.split(','))
    if volumes < 2 or computes < 2:
        p.error('--hosts: at least 2 volume and 2 compute hosts')
    kinds = args.faults.split(',') if args.faults else None
    unknown = set(kinds or ()) - set(faultlib.KINDS)
    if unknown:
        p.error(f'--faults: unknown {", ".join(sorted(unknown))}; known: '
                f'{", ".join(faultlib.KINDS)}')
    seed = args.seed if args.seed is not None else int(time.time())
    # Ctrl-C and SIGTERM unwind through every context manager.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The checker's own etcd client fails over during leader faults: quiet.
    logging.basicConfig(level=logging.ERROR)
    say = lambda text: print(text, flush=True)  # noqa: E731
    try:
        result = runner.run(seed, args.duration, volumes, computes,
                            args.ttl, args.grace, keep_dir=args.out, say=say,
                            watchdog=not args.no_watchdog,
                            kinds=kinds)
    except KeyboardInterrupt:
        say('interrupted: everything started has been stopped')
        return 130
    path = report.save(result, os.path.join(args.out, f'seed-{seed}.json'))
    print(report.table(result))
    if not report.ok(result):
        print(report.details(result))
    print(f'result: {path}')
    return 0 if report.ok(result) else 1


if __name__ == '__main__':
    sys.exit(main())
