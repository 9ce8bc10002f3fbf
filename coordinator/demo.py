"""lvmcoord-demo: the whole system on one machine, as a story.

A private etcd on 127.0.0.1, a loop-backed shared VG and three daemons
(volume-1, compute-1, compute-2). Everything started is stopped at the end,
also on Ctrl-C.
"""
import argparse
import concurrent.futures
import os
import signal
import sys
import time

from coordinator import errors
from coordinator.sandbox import race
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20


class Story:
    """Prints a timeline and the lease table at each step."""

    def __init__(self, out=sys.stdout):
        self.t0 = time.monotonic()
        self.out = out

    def say(self, text):
        print(f'[{time.monotonic() - self.t0:6.1f}s] {text}', file=self.out,
              flush=True)

    def step(self, title):
        print(f'\n=== {title} ===', file=self.out, flush=True)

    def table(self, client, vg):
        rows = [client.call('show', vg=vg, lv=item['lv'])
                for item in client.call('list', vg=vg) if item['holders']]
        print('    LV            HOST        MODE       INSTANCE  TOKEN  '
              'ALIVE', file=self.out)
        for row in rows:
            for h in row['holders']:
                print(f'    {row["lv"]:<13} {h["host"]:<11} {h["mode"]:<10} '
                      f'{h["instance"] or "-":<9} {h["token"] or "-":<6} '
                      f'{"yes" if h["alive"] else "NO"}', file=self.out)
        if not rows:
            print('    (no leases)', file=self.out)
        self.out.flush()


def race_without_lock(story, rounds):
    story.step('1. Plain LVM: 3 hosts run lvcreate at the same time')
    with SharedVG(hosts=3, size=1 << 30) as scratch:
        story.say(f'scratch VG {scratch.vg} on {scratch.device}, seen by 3 '
                  f'simulated hosts (own LVM config and locking dir each)')
        outcome = race.without_lock(scratch, rounds).outcome()
    if outcome['unreadable']:
        story.say(f'{outcome["expected"]} lvcreate ran; the VG is now '
                  f'UNREADABLE: {outcome["unreadable"][:90]}')
    else:
        story.say(f'{outcome["expected"]} lvcreate ran, '
                  f'{outcome["present"]} LVs exist: {outcome["lost"]} '
                  f'silently LOST')
    return outcome


def story_with_lvmcoord(story, ttl, grace):
    story.step('2. With lvmcoord: three daemons coordinate through etcd')
    with Cluster(ttl=ttl, grace=grace) as cluster:
        vg = cluster.vg.vg
        v1, c1, c2 = (cluster[h].client for h in
                      ('volume-1', 'compute-1', 'compute-2'))
        story.say(f'etcd {cluster.etcd.endpoints[0]}, VG {vg}, daemons '
                  f'volume-1, compute-1, compute-2 (TTL {ttl}s, grace '
                  f'{grace}s)')

        jobs = [(h, f'vol-{h}-{i}') for i in range(10)
                for h in ('volume-1', 'compute-1')]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda j: cluster[j[0]].client.call(
                'create', vg=vg, lv=j[1], size=4 * MiB), jobs))
        present = {x['lv'] for x in v1.call('list', vg=vg)}
        lost = [lv for _, lv in jobs if lv not in present]
        story.say(f'20 concurrent creates from volume-1 and compute-1: '
                  f'{20 - len(lost)} exist, {len(lost)} lost')

        story.step('3. Attach vol-a on compute-1')
        v1.call('create', vg=vg, lv='vol-a', size=8 * MiB)
        got = v1.call('activate', vg=vg, lv='vol-a', host='compute-1',
                      instance='vm-1')
        story.say(f'compute-1 holds vol-a ({got["mode"]}, token '
                  f'{got["token"]}); device {got["path"]}')
        payload = os.urandom(4096)
        _write(got['path'], payload)
        story.say('compute-1 wrote 4 KiB of random data to vol-a')
        story.table(v1, vg)

        story.step('4. compute-2 tries to activate vol-a for another VM')
        try:
            c2.call('activate', vg=vg, lv='vol-a', instance='vm-2')
            story.say('!! compute-2 got it: this must never happen')
        except errors.LeaseConflict as exc:
            story.say(f'refused: {exc}')

        story.step('5. Live migration of vm-1: compute-1 -> compute-2')
        dst = v1.call('activate', vg=vg, lv='vol-a', host='compute-2',
                      mode='migration', instance='vm-1')
        story.say(f'destination attached in {dst["mode"]} mode')
        story.table(v1, vg)
        c1.call('deactivate', vg=vg, lv='vol-a')
        story.say('source detached: compute-2 holds vol-a alone')
        same = _read(dst['path'], len(payload)) == payload
        story.say(f'data written on compute-1 read back on compute-2: '
                  f'{"identical" if same else "DIFFERENT"}')
        story.table(v1, vg)

        story.step('6. compute-1 dies holding vol-b (kill -9)')
        v1.call('create', vg=vg, lv='vol-b', size=8 * MiB)
        v1.call('activate', vg=vg, lv='vol-b', host='compute-1',
                instance='vm-3')
        story.table(v1, vg)
        cluster['compute-1'].kill(signal.SIGKILL)
        killed = time.monotonic()
        story.say('compute-1 daemon killed with -9; compute-2 asks for '
                  'vol-b and waits')
        took = c2.call('activate', vg=vg, lv='vol-b', instance='vm-3',
                       wait=ttl + grace + 30)
        elapsed = time.monotonic() - killed
        story.say(f'compute-2 took vol-b over {elapsed:.1f}s after the kill '
                  f'(TTL {ttl}s + grace {grace}s bound: '
                  f'{ttl + grace:.0f}s), token {took["token"]}')
        story.table(v1, vg)
    story.step('Everything stopped: etcd, daemons, loop devices')
    return {'lost': len(lost), 'data_identical': same,
            'takeover_seconds': elapsed}


def _write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_SYNC)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def _read(path, size):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='lvmcoord-demo',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--ttl', type=int, default=10)
    parser.add_argument('--grace', type=float, default=3.0)
    parser.add_argument('--rounds', type=int, default=10)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('run as root: the demo attaches loop devices')
    # Ctrl-C and SIGTERM unwind through the context managers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    story = Story()
    try:
        race_without_lock(story, args.rounds)
        result = story_with_lvmcoord(story, args.ttl, args.grace)
    except KeyboardInterrupt:
        story.say('interrupted: everything started has been stopped')
        return 130
    ok = result['lost'] == 0 and result['data_identical']
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
