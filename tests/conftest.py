"""Shared pytest fixtures: real etcd servers on 127.0.0.1; and the leak
check (tests/leakcheck.py): a session keepalive thread or a child process
that outlives the fixture or module that started it fails the run."""
import pytest

from coordinator.sandbox.etcd import EtcdCluster
from tests import leakcheck

_TRACKER = None


def _tracker():
    global _TRACKER
    if _TRACKER is None:
        _TRACKER = leakcheck.Tracker()
    return _TRACKER


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Attribute what a fixture starts to it, and to its scope."""
    tracker = _tracker()
    tracker.snapshot(request.node.nodeid, 'module')
    try:
        return (yield)
    finally:
        tracker.snapshot(f'fixture {fixturedef.argname} '
                         f'({fixturedef.scope} scope)', fixturedef.scope)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Attribute what the test body starts to the test (checked at its
    module's end: a module fixture may own and stop it)."""
    try:
        return (yield)
    finally:
        _tracker().snapshot(item.nodeid, 'module')


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the fixtures of every ended scope are torn down: fail on
    what those scopes (or their tests) left running."""
    tracker = _tracker()
    tracker.snapshot(item.nodeid, 'module')
    try:
        result = yield
    finally:
        # Even after a failed teardown: what it left is stopped.
        leaks = tracker.collect(leakcheck.ended_scopes(item, nextitem))
    if leaks:
        raise AssertionError('left running (now stopped): ' +
                             '; '.join(leaks))
    return result


@pytest.fixture
def etcd_server():
    """A private single-member etcd, stopped after the test."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster3():
    """A private 3-member etcd cluster, stopped after the test."""
    with EtcdCluster(3) as cluster:
        yield cluster
