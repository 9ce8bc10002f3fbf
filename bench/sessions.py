"""The hosts' sessions of the scale bench, kept alive in their own process.

Opens ``--count`` Engine sessions (``scale-000`` ...) on ``--endpoint``,
each kept alive at TTL/6 by its own thread as a daemon's session worker
does, says ``ready`` with {host: lease id}, and revokes them all on
``quit`` or end of input. The bench's timed grants and lists run in
another process, so these keepalive threads take none of its GIL.
"""
import argparse
import concurrent.futures
import json
import sys

import bench  # noqa: F401  (quiets the eventlet warning)
from bench import clients


def _say(**fields):
    sys.stdout.write(json.dumps(fields) + '\n')
    sys.stdout.flush()


def main(argv=None):
    """Hold the sessions until ``quit``."""
    p = argparse.ArgumentParser()
    p.add_argument('--endpoint', required=True)
    p.add_argument('--count', type=int, required=True)
    a = p.parse_args(argv)
    engines = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        try:
            futures = [pool.submit(clients.engine, [a.endpoint],
                                   f'scale-{n:03d}') for n in range(a.count)]
            engines = [f.result() for f in futures]
            _say(ev='ready', sessions={e.host: e.session.id
                                       for e in engines})
            for line in sys.stdin:
                if line.strip() == 'lost?':
                    _say(ev='lost', hosts=[e.host for e in engines
                                           if e.session.lost])
                    continue
                break
        finally:
            list(pool.map(lambda e: e.close(revoke=True), engines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
