"""`lvmcoord wait-ready`, run as a process, against a real lvmcoordd
(sandbox: private etcd, loop-backed VG)."""
import os
import subprocess
import sys

import pytest

from coordinator.cli import ready

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def cluster():
    from coordinator.sandbox.cluster import Cluster
    with Cluster(hosts=('volume-1',), ttl=6, grace=1.0) as c:
        yield c


def wait_ready(daemon, timeout, **popen):
    return subprocess.Popen(
        [sys.executable, '-m', 'coordinator.cli.app', '--config-file',
         daemon.conf_file, 'wait-ready', '--timeout', str(timeout)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **popen)


@pytest.mark.timeout(240)
def test_wait_ready_returns_once_the_daemon_serves(cluster):
    daemon = cluster['volume-1']
    res = wait_ready(daemon, 30)
    assert res.wait(60) == 0, res.stderr.read()

    daemon.stop()
    # Down: refused after the timeout, naming the socket.
    res = wait_ready(daemon, 1)
    assert res.wait(60) == 1
    err = res.stderr.read()
    assert 'not ready after 1s' in err and daemon.socket in err, err

    # Started while the daemon is down: it returns only once the daemon
    # answers with a live session.
    waiter = wait_ready(daemon, 90)
    try:
        assert waiter.poll() is None, waiter.stderr.read()
        cluster.restart('volume-1')
        assert waiter.wait(90) == 0, waiter.stderr.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    status = daemon.client.call('status')
    assert ready.live_session(status) == status['session']


class FakeClient:
    path = '/run/lvmcoord/lvmcoord.sock'

    def __init__(self, replies):
        self.replies = list(replies)

    def call(self, op):
        assert op == 'status'
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_wait_ready_needs_a_live_session():
    from coordinator import errors
    ticks = iter(range(100))
    client = FakeClient([errors.HostUnavailable('not reachable'),
                         {'host': 'h', 'session': '0'},
                         {'host': 'h', 'session': '7f'}])
    status, reason = ready.wait_ready(client, 10, clock=lambda: next(ticks),
                                      pause=lambda s: None)
    assert status['session'] == '7f' and reason is None
    client = FakeClient([{'host': 'h', 'session': '0'}] * 3)
    status, reason = ready.wait_ready(client, 2, clock=lambda: next(ticks),
                                      pause=lambda s: None)
    assert status is None and reason == 'h: no live session yet'
