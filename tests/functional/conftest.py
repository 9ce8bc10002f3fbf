"""Fixtures for functional tests: actor processes, always reaped."""
import json
import os
import signal
import subprocess
import sys
import time
from urllib import parse

import pytest

from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.proxy import Proxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


class Actor:
    """One simulated host process running tests.functional.actor."""

    def __init__(self, endpoints, host, log, args, ttl=3, grace=1.0,
                 state_file=None, cluster='test'):
        self.host, self.log = host, log
        cmd = [sys.executable, '-m', 'tests.functional.actor',
               '--endpoints', ','.join(endpoints), '--host', host,
               '--cluster', cluster, '--ttl', str(ttl),
               '--grace', str(grace), '--log', log]
        if state_file:
            cmd += ['--state-file', state_file]
        self.proc = subprocess.Popen(cmd + list(args), cwd=ROOT,
                                     stderr=open(log + '.err', 'ab'))

    def events(self, ev=None):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            lines = [json.loads(x) for x in f if x.strip()]
        return [x for x in lines if ev is None or x['ev'] == ev]

    def wait_event(self, ev, timeout=30, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.events(ev)
            if len(got) >= count:
                return got[count - 1]
            if self.proc.poll() is not None and len(self.events(ev)) < count:
                raise AssertionError(
                    f'{self.host} exited ({self.proc.returncode}) before '
                    f'{ev!r}: {self.stderr()}')
            time.sleep(0.02)
        raise AssertionError(f'{self.host}: no {ev!r} in {timeout}s; '
                             f'{self.events()} {self.stderr()}')

    def stderr(self):
        with open(self.log + '.err', 'rb') as f:
            return f.read()[-3000:].decode(errors='replace')

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def actors(tmp_path):
    """Factory for actor processes; every one is killed at teardown."""
    started = []

    def start(endpoints, host, *args, log=None, **kw):
        log = log or str(tmp_path / f'{host}-{len(started)}.log')
        actor = Actor(endpoints, host, log, args, **kw)
        started.append(actor)
        return actor

    yield start
    for a in started:
        a.stop()


def proxied(proxies, host='compute-1'):
    """endpoints_for(): ``host`` reaches etcd through a cuttable Proxy,
    recorded in ``proxies``; the others directly."""
    def endpoints_for(name, eps):
        if name != host:
            return eps
        url = parse.urlsplit(eps[0])
        proxies[name] = Proxy(url.hostname, url.port)
        return [proxies[name].url]
    return endpoints_for


@pytest.fixture
def partitioned():
    """Two sandbox hosts (TTL 6 s); compute-1 reaches etcd through a
    Proxy the test cuts: yields (cluster, proxy)."""
    proxies = {}
    endpoints_for = proxied(proxies)
    cluster = Cluster(hosts=('compute-1', 'compute-2'), ttl=6, grace=1.0,
                      endpoints_for=endpoints_for)
    try:
        with cluster:
            yield cluster, proxies['compute-1']
    finally:
        for p in proxies.values():
            p.close()
