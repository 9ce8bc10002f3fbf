"""Load-independent cost of the daemon's hot paths: etcd requests, LVM
commands and CPU time per operation, and a timeline of one routed call.

``python -m bench.trips [--rounds N]`` starts two daemons (compute-1 calls,
compute-2 is the routed target), each behind a proxy that records every
HTTP request it sends to etcd (a watch stream counts once, when opened),
with LVM commands logged by wrappers put first on the daemons' PATH. For
``create``, routed ``activate`` and routed ``deactivate`` it prints, per
operation: etcd requests of each host by URL path, LVM commands by name,
and the CPU time (user + system, children included) of each daemon's
processes; then the request timeline of one routed activate. Wall times
are shown too, but on a loaded machine only the counts and CPU times are
comparable between runs.
"""
import argparse
import collections
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from urllib import parse

from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.proxy import Proxy

MiB = 1 << 20
HOSTS = ('compute-1', 'compute-2')
_LVM_TOOLS = ('lvm', 'lvcreate', 'lvremove', 'lvextend', 'lvrename',
              'lvchange', 'lvs', 'vgs', 'pvs', 'lvconvert', 'vgchange')


class RecordingProxy(Proxy):
    """Records (monotonic time, direction, URL path) of the HTTP requests
    through it, and when the first bytes of each answer come back."""

    _REQUEST = re.compile(rb'(?:^|\r\n)(?:POST|GET|PUT|DELETE) (/[^ ?]*)')

    def __init__(self, host, port):
        self.log = []
        super().__init__(host, port)

    def _serve(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = {client: upstream, upstream: client}
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    now = time.monotonic()
                    if s is client:
                        for p in self._REQUEST.findall(data):
                            self.log.append((now, '>', p.decode()))
                    else:
                        self.log.append((now, '<', ''))
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                s.close()


def _wrappers(directory, log):
    """Shell wrappers logging every LVM command the daemons run."""
    os.makedirs(directory, exist_ok=True)
    for tool in _LVM_TOOLS:
        real = shutil.which(tool)
        if not real:
            continue
        path = os.path.join(directory, tool)
        with open(path, 'w') as f:
            f.write(f'#!/bin/sh\necho "{tool}" >> {log}\n'
                    f'exec {real} "$@"\n')
        os.chmod(path, 0o755)


def _cpu(pgid):
    """Seconds of CPU (user + system, reaped children too) of a process
    group."""
    tick = os.sysconf('SC_CLK_TCK')
    total = 0
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / tick


class Meter:
    """Counts of one batch of operations."""

    def __init__(self, cluster, proxies, lvm_log):
        self.cluster, self.proxies, self.lvm_log = cluster, proxies, lvm_log

    def _lvm_lines(self):
        try:
            with open(self.lvm_log) as f:
                return f.read().split()
        except OSError:
            return []

    def measure(self, fn, rounds):
        marks = {h: len(p.log) for h, p in self.proxies.items()}
        lvm0 = len(self._lvm_lines())
        cpu0 = {h: _cpu(self.cluster[h].proc.pid) for h in HOSTS}
        wall = []
        for i in range(rounds):
            t0 = time.perf_counter()
            fn(i)
            wall.append(time.perf_counter() - t0)
        time.sleep(0.3)  # let trailing requests land in the logs
        cpu = {h: _cpu(self.cluster[h].proc.pid) - cpu0[h] for h in HOSTS}
        reqs = {h: collections.Counter(
            path for _, d, path in p.log[marks[h]:] if d == '>')
            for h, p in self.proxies.items()}
        lvm = collections.Counter(self._lvm_lines()[lvm0:])
        return {'wall': sorted(wall), 'cpu': cpu, 'reqs': reqs, 'lvm': lvm}


def _show(name, got, rounds):
    wall = got['wall']
    print(f'\n== {name} x{rounds}: wall p50 {wall[len(wall) // 2] * 1e3:.1f}'
          f' ms (min {wall[0] * 1e3:.1f})')
    for h in HOSTS:
        reqs = got['reqs'].get(h, {})
        total = sum(reqs.values())
        detail = ', '.join(f'{p} {n / rounds:.2f}'
                           for p, n in reqs.most_common())
        print(f'  {h}: etcd {total / rounds:.2f} req/op ({detail}); '
              f'CPU {got["cpu"][h] / rounds * 1e3:.1f} ms/op')
    lvm = got['lvm']
    print(f'  LVM commands: {sum(lvm.values()) / rounds:.2f}/op ' +
          ', '.join(f'{k} {v / rounds:.2f}' for k, v in lvm.most_common()))


def _timeline(proxies, fn, what):
    marks = {h: len(p.log) for h, p in proxies.items()}
    t0 = time.monotonic()
    fn()
    t1 = time.monotonic()
    time.sleep(0.3)
    rows = []
    for h, p in proxies.items():
        rows += [(t, h, d, path) for t, d, path in p.log[marks[h]:]]
    print(f'\n== timeline of one {what} ({(t1 - t0) * 1e3:.1f} ms)')
    last = None
    for t, h, d, path in sorted(rows):
        if d == '<' and last == (h, '<'):
            continue  # one line per answer
        last = (h, d)
        print(f'  {(t - t0) * 1e3:7.1f} ms  {h:10} {d} {path}')
    print(f'  {(t1 - t0) * 1e3:7.1f} ms  caller returned')


def _memory(cluster):
    from bench.daemonbench import _memory as mem
    from bench.daemonbench import _pids
    print()
    for h in HOSTS:
        procs = [mem(pid) for pid in _pids(cluster[h].proc.pid)]
        print(f'== memory {h}: PSS {sum(p for _, p, _ in procs) / MiB:.1f} '
              f'MB (' + ', '.join(f'{t.split()[-1] if t else "?"} '
                                  f'{p / MiB:.1f}' for t, p, _ in procs)
              + ')')


def _spy(cluster, directory):
    os.makedirs(directory, exist_ok=True)
    procs = []
    for h in HOSTS:
        pgid = cluster[h].proc.pid
        for name in os.listdir('/proc'):
            if not name.isdigit():
                continue
            try:
                with open(f'/proc/{name}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                with open(f'/proc/{name}/cmdline', 'rb') as f:
                    title = f.read().split(b'\0')[0].decode()
            except OSError:
                continue
            if int(fields[2]) != pgid:
                continue
            tag = re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')[-30:]
            procs.append(subprocess.Popen(
                ['py-spy', 'record', '--pid', name, '--rate', '500',
                 '--format', 'raw', '--nonblocking', '-o',
                 os.path.join(directory, f'{h}-{name}-{tag}.txt')],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    return procs


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.trips')
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--spy', metavar='DIR',
                   help='py-spy record every daemon process during the '
                        'routed calls (collapsed stacks in DIR)')
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix='lvmcoord-trips-')
    lvm_log = os.path.join(work, 'lvm.log')
    _wrappers(os.path.join(work, 'bin'), lvm_log)
    proxies = {}

    def endpoints_for(host, eps):
        url = parse.urlsplit(eps[0])
        proxies[host] = RecordingProxy(url.hostname, url.port)
        return [proxies[host].url]

    old_path = os.environ['PATH']
    os.environ['PATH'] = os.path.join(work, 'bin') + ':' + old_path
    try:
        with Cluster(hosts=HOSTS, endpoints_for=endpoints_for) as c:
            os.environ['PATH'] = old_path  # the bench's own LVM: unlogged
            vg = c.vg.vg
            c1 = c['compute-1'].client
            meter = Meter(c, proxies, lvm_log)
            rounds = args.rounds
            for i in range(3):  # warm-up
                c1.call('create', vg=vg, lv=f'warm-{i}', size=4 * MiB)
            spies = _spy(c, args.spy + '-create') if args.spy else []
            _show('create (compute-1)', meter.measure(
                lambda i: c1.call('create', vg=vg, lv=f'c-{i}',
                                  size=4 * MiB), rounds), rounds)
            for proc in spies:
                proc.send_signal(signal.SIGINT)
                proc.wait()
            c['compute-2'].client.call('create', vg=vg, lv='routed',
                                       size=4 * MiB)
            for _ in range(2):
                c1.call('activate', vg=vg, lv='routed', host='compute-2')
                c1.call('deactivate', vg=vg, lv='routed', host='compute-2')
            act, deact = [], []

            def both(_):
                t0 = time.perf_counter()
                c1.call('activate', vg=vg, lv='routed', host='compute-2')
                act.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                c1.call('deactivate', vg=vg, lv='routed', host='compute-2')
                deact.append(time.perf_counter() - t0)
            spies = _spy(c, args.spy) if args.spy else []
            got = meter.measure(both, rounds)
            for proc in spies:
                proc.send_signal(signal.SIGINT)
                proc.wait()
            _show('routed activate + deactivate (compute-1 -> compute-2)',
                  got, rounds)
            act.sort()
            deact.sort()
            print(f'  activate p50 {act[len(act) // 2] * 1e3:.1f} ms, '
                  f'deactivate p50 {deact[len(deact) // 2] * 1e3:.1f} ms')
            _memory(c)
            _timeline(proxies, lambda: c1.call(
                'activate', vg=vg, lv='routed', host='compute-2'),
                'routed activate')
            _timeline(proxies, lambda: c1.call(
                'deactivate', vg=vg, lv='routed', host='compute-2'),
                'routed deactivate')
    finally:
        os.environ['PATH'] = old_path
        for proxy in proxies.values():
            proxy.close()
        shutil.rmtree(work, ignore_errors=True)
    with open('/proc/loadavg') as f:
        print('\nload', ' '.join(f.read().split()[:3]))


if __name__ == '__main__':
    threading.current_thread().name = 'trips'
    main()
