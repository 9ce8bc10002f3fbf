"""The hosts' sessions of the scale bench, kept alive in their own process.

Opens ``--count`` Engine sessions (``scale-000`` ...) on ``--endpoint``,
each kept alive at TTL/6 by its own thread as a daemon's session worker
does, says ``ready`` with {host: lease id}, and revokes them all on
``quit`` or end of input. The bench's timed grants and lists run in
another process, so these keepalive threads take none of its GIL.
``--watch``: each host also runs its daemon's request watch (the
routing loop's shape: watch its requests prefix, read it, re-open every
RESCAN) in a thread; ``--grant-watch`` also its grant watch (the whole
leases prefix); ``--name`` sets the host names' prefix.
"""
import argparse
import concurrent.futures
import json
import sys
import threading
import time

import bench  # noqa: F401  (quiets the eventlet warning)
from bench import clients
from coordinator.daemon import routing


def _serve(eng, stop):
    """The request watch of eng's host, as RequestRouter._serve_once."""
    prefix = eng.keys.requests(eng.host)
    while not stop.is_set():
        try:
            with eng.etcd.watch(prefix, 0, prefix=True) as watch:
                eng.etcd.range(prefix, prefix=True)
                for _ in watch.until(time.monotonic() + routing.RESCAN,
                                     0.5):
                    if stop.is_set() or watch.dead:
                        break
        except Exception:  # etcd away: the daemon retries too
            stop.wait(1.0)


def _grants(eng, stop):
    """The grant watch of eng's host, as GrantWatch.run: the whole leases
    prefix, every event's key split, kept only if in its (empty) book."""
    root = eng.keys.leases()
    while not stop.is_set():
        try:
            _, rev = eng.etcd.range(root, prefix=True, limit=1)
            with eng.etcd.watch(root, rev + 1, prefix=True) as watch:
                for event in watch.until(time.monotonic() + routing.RESCAN,
                                         0.5):
                    if stop.is_set() or watch.dead:
                        break
                    if event is not None:
                        event[1].key[len(root):].split('/')[:2]
        except Exception:  # etcd away: the daemon retries too
            stop.wait(1.0)


def _say(**fields):
    sys.stdout.write(json.dumps(fields) + '\n')
    sys.stdout.flush()


def main(argv=None):
    """Hold the sessions until ``quit``."""
    p = argparse.ArgumentParser()
    p.add_argument('--endpoint', required=True)
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--name', default='scale')
    p.add_argument('--watch', action='store_true')
    p.add_argument('--grant-watch', action='store_true')
    a = p.parse_args(argv)
    engines, stop = [], threading.Event()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        try:
            eps = a.endpoint.split(',')
            # Hosts spread over the members, as clouds configure them.
            futures = [pool.submit(clients.engine,
                                   eps[n % len(eps):] + eps[:n % len(eps)],
                                   f'{a.name}-{n:03d}')
                       for n in range(a.count)]
            engines = [f.result() for f in futures]
            if a.watch:
                for e in engines:
                    threading.Thread(target=_serve, args=(e, stop),
                                     daemon=True).start()
            if a.grant_watch:
                for e in engines:
                    threading.Thread(target=_grants, args=(e, stop),
                                     daemon=True).start()
            _say(ev='ready', sessions={e.host: e.session.id
                                       for e in engines})
            for line in sys.stdin:
                if line.strip() == 'lost?':
                    _say(ev='lost', hosts=[e.host for e in engines
                                           if e.session.lost])
                    continue
                break
        finally:
            stop.set()
            list(pool.map(lambda e: e.close(revoke=True), engines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
