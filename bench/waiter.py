"""The queued waiter of the hand-off bench, run in its own process.

Commands arrive one per line on stdin; every answer is one JSON line on
stdout. ``go``: say ``trying``, block in acquire, note CLOCK_MONOTONIC
the moment it returns, release, and report that time. ``quit``: leave.
"""
import argparse
import json
import sys
import time

import bench  # noqa: F401  (quiets the eventlet warning)
from bench import clients

VG = 'bench-handoff-vg'
TOOZ_LOCK = b'bench-handoff'


def _say(**fields):
    sys.stdout.write(json.dumps(fields) + '\n')
    sys.stdout.flush()


def _cycle(kind, eng, tooz_lock):
    if kind == 'engine':
        hold = eng.vglock(VG).acquire('handoff', timeout=30)
        t1 = time.monotonic()
        hold.release()
    else:
        if not tooz_lock.acquire(blocking=True):
            raise RuntimeError('tooz lock not acquired')
        t1 = time.monotonic()
        tooz_lock.release()
    return t1


def main(argv=None):
    """Serve ``go`` commands until ``quit`` or end of input."""
    p = argparse.ArgumentParser()
    p.add_argument('--endpoint', required=True)
    p.add_argument('--kind', choices=('engine', 'tooz'), required=True)
    a = p.parse_args(argv)
    eng = coord = tooz_lock = None
    try:
        if a.kind == 'engine':
            eng = clients.engine([a.endpoint], 'bench-waiter')
        else:
            coord = clients.tooz(a.endpoint, 'bench-waiter')
            tooz_lock = coord.get_lock(TOOZ_LOCK)
        _say(ev='ready')
        for line in sys.stdin:
            if line.strip() != 'go':
                break
            _say(ev='trying')
            _say(ev='acquired', t1=_cycle(a.kind, eng, tooz_lock))
    finally:
        if eng is not None:
            eng.close(revoke=True)
        if coord is not None:
            coord.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
