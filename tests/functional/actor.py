"""A simulated host in its own process, for multi-process engine tests.

Each command appends JSON lines to --log; the test reads them. Times are
CLOCK_MONOTONIC, which is shared by every process on the machine.
"""
import argparse
import json
import os
import sys
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine


def log(path, **fields):
    fields.setdefault('t', time.monotonic())
    fields.setdefault('pid', os.getpid())
    with open(path, 'a') as f:
        f.write(json.dumps(fields) + '\n')
        f.flush()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--endpoints', required=True)
    p.add_argument('--host', required=True)
    p.add_argument('--cluster', default='test')
    p.add_argument('--ttl', type=int, default=3)
    p.add_argument('--grace', type=float, default=1.0)
    p.add_argument('--state-file')
    p.add_argument('--log', required=True)
    sub = p.add_subparsers(dest='cmd', required=True)
    lk = sub.add_parser('lock')
    lk.add_argument('--vg', required=True)
    lk.add_argument('--rounds', type=int, default=1)
    lk.add_argument('--hold', type=float, default=0.0)
    lk.add_argument('--until-file')
    ls = sub.add_parser('lease')
    ls.add_argument('--vg', required=True)
    ls.add_argument('--lv', required=True)
    ls.add_argument('--mode', default='exclusive')
    ls.add_argument('--instance')
    ls.add_argument('--wait', type=float, default=0.0)
    ls.add_argument('--hold', type=float, default=3600.0)
    a = p.parse_args(argv)

    etcd = etcdlib.Etcd(a.endpoints.split(','), timeout=2.0,
                        retry_window=20.0)
    eng = Engine(etcd, a.host, a.cluster, ttl=a.ttl, grace=a.grace,
                 state_file=a.state_file, lock_timeout=120)
    eng.session.on_lost(lambda s: log(a.log, ev='lost', session=s.id))
    eng.open()
    log(a.log, ev='session', session=eng.session.id,
        resumed=eng.session.resumed)
    if a.cmd == 'lock':
        lock = eng.vglock(a.vg)
        for i in range(a.rounds):
            log(a.log, ev='queue', round=i)
            with lock.acquire(f'round {i}', timeout=120):
                log(a.log, ev='enter', round=i)
                if a.until_file:
                    while not os.path.exists(a.until_file):
                        time.sleep(0.01)
                time.sleep(a.hold)
                log(a.log, ev='exit', round=i)
        log(a.log, ev='done')
    else:
        try:
            h = eng.leases.grant(a.vg, a.lv, a.mode, a.instance, wait=a.wait)
        except errors.CoordError as exc:
            log(a.log, ev='refused', error=str(exc), code=exc.code)
            return 3
        log(a.log, ev='granted', token=h.token, mode=h.mode)
        deadline = time.monotonic() + a.hold
        while time.monotonic() < deadline and not eng.session.lost:
            time.sleep(0.05)
        if not eng.session.lost:
            eng.leases.release(a.vg, a.lv)
            log(a.log, ev='released')
    eng.close(revoke=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
