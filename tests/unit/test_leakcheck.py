"""The leak check of tests/conftest.py (tests/leakcheck.py): a session
keepalive thread or a child process that outlives its owner's scope is
named with its owner, and stopped."""
import subprocess
import sys
import threading

from coordinator.engine import session as sessionlib
from tests import leakcheck


class _Etcd:
    """Just enough of an etcd client for a Session's keepalives."""

    def lease_keepalive(self, lease_id, window=None):
        return 10


def _session(host):
    s = sessionlib.Session(_Etcd(), None, host, ttl=10)
    s.id = 0x2a
    s._thread = threading.Thread(target=s._keepalive_loop,
                                 name=leakcheck.KEEPALIVE, daemon=True)
    s._thread.start()
    return s


def test_an_unclosed_session_is_a_leak_of_its_owner():
    """Opened by a module fixture, never closed: named at the module's end
    with its session and owner, then closed."""
    tracker = leakcheck.Tracker()
    s = _session('host-x')
    tracker.snapshot('fixture daemon (module scope)', 'module')
    assert tracker.collect(['function'], grace=0) == []
    leaks = tracker.collect(['function', 'module'], grace=0)
    assert leaks == ['session 2a of host-x, started by fixture daemon '
                     '(module scope)']
    assert s._thread is None    # closed by the check


def test_a_closed_session_is_no_leak():
    """Closed by its owner: nothing reported."""
    tracker = leakcheck.Tracker()
    s = _session('host-y')
    tracker.snapshot('t::test', 'module')
    s.close()
    assert tracker.collect(['function', 'module'], grace=0) == []


def test_a_child_process_left_running_is_a_leak():
    """A child still running when its fixture's scope ends: named with
    its command line and killed; a waited-for one is no leak."""
    tracker = leakcheck.Tracker()
    done = subprocess.Popen([sys.executable, '-c', 'pass'])
    done.wait()
    left = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(120)'])
    try:
        tracker.snapshot('fixture etcd_server (function scope)', 'function')
        leaks = tracker.collect(['function'], grace=0)
        assert len(leaks) == 1, leaks
        assert leaks[0].startswith(f'process {left.pid} (')
        assert 'time.sleep(120)' in leaks[0]
        assert leaks[0].endswith('started by fixture etcd_server '
                                 '(function scope)')
        assert left.wait(30) == -9
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()


def test_scopes_end_with_the_last_item_of_each():
    """Which scopes pytest tears down after an item, given the next."""
    class Item:
        def __init__(self, nodeid, module, path):
            self.nodeid, self.module, self.fspath = nodeid, module, path
            self.cls = None
    a1 = Item('a.py::t1', 'A', '/r/tests/unit/a.py')
    a2 = Item('a.py::t2', 'A', '/r/tests/unit/a.py')
    b1 = Item('b.py::t1', 'B', '/r/tests/unit/b.py')
    c1 = Item('c.py::t1', 'C', '/r/tests/functional/c.py')
    assert leakcheck.ended_scopes(a1, a2) == ['function']
    assert leakcheck.ended_scopes(a2, b1) == ['function', 'class', 'module']
    assert leakcheck.ended_scopes(b1, c1) == ['function', 'class', 'module',
                                              'package']
    assert leakcheck.ended_scopes(c1, None) == list(leakcheck.SCOPES)


def test_an_adopted_process_belongs_to_the_session():
    """Started inside a test for the whole run (the tier's tgtd): no leak
    when that test's scopes end, one when the session's does."""
    tracker = leakcheck.Tracker()
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(120)'])
    try:
        leakcheck.adopt(proc.pid, 'the cluster')
        tracker.snapshot('tests/x.py::test_g', 'module')
        assert tracker.collect(['function', 'module'], grace=0) == []
        assert proc.poll() is None
        leaks = tracker.collect(['session'], grace=0)
        assert len(leaks) == 1 and leaks[0].endswith('started by the cluster')
    finally:
        leakcheck.ADOPTED.pop(proc.pid, None)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
