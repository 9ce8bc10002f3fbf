"""Once: txns given up unanswered are withdrawn by one thread, in turn."""
import threading
import time

import pytest

from coordinator import errors
from coordinator.engine import once as oncelib


class FakeEtcd:
    """Answers nothing while ``down``; refuses for good what ``bad`` names."""

    retry_window = 0.1
    timeout = 0.1

    def __init__(self):
        self.down = True
        self.bad = set()
        self.taken = []
        self.lock = threading.Lock()

    def lease_grant(self, ttl):
        return 7

    def txn(self, compare, success, failure=()):
        with self.lock:
            if self.down:
                raise errors.EtcdUnavailable('no answer (fake)')
            marker = success[0]['request_put']['key']
            if marker in self.bad:
                raise errors.EtcdDenied('refused (fake)')
            self.taken.append((compare, success, failure))


def _give_up(once, n):
    """n guarded txns given up; their markers."""
    markers = []

    def build(compare, put):
        markers.append(put['request_put']['key'])
        return [compare], [put], []
    for i in range(n):
        with pytest.raises(errors.EtcdUnavailable):
            once.txn(build, withdraw=([{'key': f'k{i}'}],
                                      [{'request_delete_range': i}]))
    return markers


def _withdrawers():
    return [t for t in threading.enumerate() if t.name == 'once-withdraw']


def test_many_txns_given_up_are_withdrawn_by_one_thread():
    etcd = FakeEtcd()
    once = oncelib.Once(etcd, '/once/')
    markers = _give_up(once, 20)
    assert len(_withdrawers()) == 1
    etcd.down = False
    for t in _withdrawers():
        t.join(30)
    assert not _withdrawers()
    # Each withdrawal once, its marker put whichever branch runs.
    sent = [s[0]['request_put']['key'] for _, s, _ in etcd.taken]
    assert sorted(sent) == sorted(markers)
    assert all(f[0]['request_put']['key'] == s[0]['request_put']['key']
               for _, s, f in etcd.taken)
    # A later give-up starts a thread again.
    etcd.down = True
    _give_up(once, 1)
    assert len(_withdrawers()) == 1
    etcd.down = False
    for t in _withdrawers():
        t.join(30)
    assert len(etcd.taken) == 21


def test_a_withdrawal_refused_does_not_hold_back_the_others():
    etcd = FakeEtcd()
    once = oncelib.Once(etcd, '/once/')
    markers = _give_up(once, 3)
    etcd.bad.add(markers[0])
    etcd.down = False
    deadline = time.monotonic() + 30
    while len(etcd.taken) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = {s[0]['request_put']['key'] for _, s, _ in etcd.taken}
    assert sent == set(markers[1:])
    assert len(_withdrawers()) == 1   # the refused one is still tried
    etcd.bad.clear()
    for t in _withdrawers():
        t.join(30)
    assert len(etcd.taken) == 3
