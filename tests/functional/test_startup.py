"""lvmcoordd refuses a bad configuration at start with one line naming the
option, and stops (non-zero) when its fencer dies instead of serving
without one."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.daemons import Daemon

DEADLINE = 60.0
REFUSED = 'lvmcoordd: configuration refused: '


def closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def exit_status(daemon, timeout=DEADLINE):
    try:
        return daemon.proc.wait(timeout)
    finally:
        daemon.stop()


def refusal(daemon):
    with open(daemon.log + '.err') as f:
        lines = [x for x in f.read().splitlines() if x.startswith(REFUSED)]
    assert len(lines) == 1, daemon.log_tail()
    return lines[0][len(REFUSED):]


@pytest.mark.parametrize('host, extra, line', [
    ('h1', {'session__ttl': '0'}, '[session] ttl: Should be greater'),
    ('h1', {'lease__grace': '-1'}, '[lease] grace: Should be greater'),
    ('h1', {'fence__fraction': '1.0'}, '[fence] fraction: Should be less'),
    ('h1', {'session__keepalive_interval': '10'},
     '[session] keepalive_interval: 10 s must be less than half the TTL'),
    ('a/b', {}, "[DEFAULT] host: host name 'a/b' may contain only"),
    ('h1', {'api__socket_group': 'no-such-group-xyz'},
     "[api] socket_group: no group 'no-such-group-xyz'"),
    ('h1', {'session__state_dir': '/proc/sys/lvmcoord/state'},
     '[session] state_dir: /proc/sys is not writable'),
])
def test_bad_option_stops_the_daemon_at_once(tmp_path, host, extra, line):
    d = Daemon(host, str(tmp_path / 'd'), ['http://127.0.0.1:1'], 'vg0',
               **extra)
    d.start(wait=False)
    assert exit_status(d) == 1
    assert refusal(d).startswith(line), refusal(d)
    # Refused before any worker ran: no socket, no crash loop in the log.
    assert not os.path.exists(d.socket)
    with open(d.log) as f:
        assert len(f.read().splitlines()) <= 2


def test_unreachable_etcd_is_logged_then_refused(tmp_path):
    endpoint = f'http://127.0.0.1:{closed_port()}'
    d = Daemon('h1', str(tmp_path / 'd'), [endpoint], 'vg0',
               etcd__startup_timeout='2', etcd__timeout='0.5')
    start = time.monotonic()
    d.start(wait=False)
    assert exit_status(d) == 1
    assert time.monotonic() - start < DEADLINE
    assert refusal(d).startswith('[etcd] endpoints: no endpoint answered '
                                 'within 2 s')
    with open(d.log) as f:
        retries = [x for x in f if 'does not answer' in x]
    assert len(retries) >= 2
    assert all(endpoint in x for x in retries)


def check_config(daemon):
    return subprocess.run(
        [sys.executable, '-m', 'coordinator.daemon.main', '--config-file',
         daemon.conf_file, '--check-config'], capture_output=True,
        text=True, timeout=DEADLINE)


def test_check_config_exits_0_on_good_config(tmp_path, etcd_server):
    d = Daemon('h1', str(tmp_path / 'd'), etcd_server.endpoints, 'vg0')
    done = check_config(d)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'lvmcoordd: configuration OK' in done.stdout
    assert not os.path.exists(d.socket)         # checked, not started


def test_check_config_exits_1_on_bad_config(tmp_path):
    d = Daemon('h1', str(tmp_path / 'd'), ['http://127.0.0.1:1'], 'vg0',
               fence__interval='3')
    done = check_config(d)
    assert done.returncode == 1
    assert (REFUSED + '[fence] interval: 3 s must be less than a quarter'
            in done.stderr)


def _children(pid):
    # Workers are forked by a thread: /proc/PID/task/*/children, not PID's.
    found = []
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
            found += [int(p) for p in f.read().split()]
    return found


def _title(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().decode(errors='replace')
    except OSError:
        return ''


def test_fencer_death_stops_the_daemon():
    with Cluster(hosts=('compute-1',), ttl=4, grace=1.0) as c:
        d = c['compute-1']
        fencers = [p for p in _children(d.proc.pid)
                   if 'fencer' in _title(p)]
        assert len(fencers) == 1, [_title(p) for p in _children(d.proc.pid)]
        os.kill(fencers[0], signal.SIGKILL)
        # Not respawned behind an API that keeps answering: the whole
        # daemon stops, and says why.
        assert d.proc.wait(DEADLINE) == 1
        assert 'worker fencer died (signal 9)' in d.log_tail()


def _policies(daemon):
    out = {}
    for pid in _children(daemon.proc.pid):
        name = next((w for w in ('fencer', 'session', 'ops')
                     if w in _title(pid)), _title(pid))
        try:
            out[name] = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
        except ProcessLookupError:
            pass
    return out


def test_fencer_and_session_worker_run_real_time():
    with Cluster(hosts=('compute-1',), ttl=4, grace=1.0) as c:
        d = c['compute-1']
        deadline = time.monotonic() + DEADLINE
        while True:
            seen = _policies(d)
            if seen.get('fencer') == seen.get('session') == os.SCHED_RR:
                break
            assert time.monotonic() < deadline, (seen, d.log_tail())
            time.sleep(0.1)
        # Only those two: the ops worker stays normal, and an LVM command
        # a real-time worker spawns does not inherit it.
        assert seen['ops'] == os.SCHED_OTHER, seen
        assert os.sched_getscheduler(d.proc.pid) == os.SCHED_OTHER
