"""A late second delivery of a write changes nothing (real etcd).

etcd can apply a request after its client gave up on it and sent it again
(a proposal that waited out an election). Here every txn an operation sent
is delivered once more after the operation is over, as such a straggler
would be: before the fix a VG lock key came back under a live session and
blocked the VG for good (chaos seed 8), and a released LV came back granted.
"""
import threading
import time

import pytest

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine import once as oncelib
from coordinator.engine.core import Engine


class Recording(etcdlib.Etcd):
    """An Etcd that keeps every txn it sent, to deliver them again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def txn(self, compare, success, failure=()):
        self.sent.append((list(compare), list(success), list(failure)))
        return super().txn(compare, success, failure)

    def redeliver(self):
        """Send every recorded txn again, as a straggler; their outcomes."""
        sent, self.sent = self.sent, []
        out = []
        for body in sent:
            try:
                out.append(etcdlib.Etcd.txn(self, *body))
            except errors.SessionLost as exc:  # the once-lease has expired
                out.append(exc)
        return out


@pytest.fixture
def engines(etcd_server):
    """engines(host, timeout, retry_window): an open Engine on a recording
    client; every one is closed (its session revoked) after the test."""
    made = []

    def make(host, timeout=2.0, retry_window=5.0):
        etcd = Recording(etcd_server.endpoints, timeout=timeout,
                         retry_window=retry_window)
        made.append(Engine(etcd, host, 'test', ttl=10, grace=1.0).open())
        return made[-1]
    yield make
    for eng in made:
        eng.close(revoke=True)


def under(eng, prefix):
    kvs, _ = eng.etcd.range(prefix, prefix=True)
    return [kv.key for kv in kvs]


def test_vg_lock_redelivered_after_release_stays_released(engines):
    eng = engines('h1')
    guard = eng.guard(lambda vg, fresh: 7)
    eng.etcd.sent.clear()
    assert guard.change('vg0', 'lvcreate', lambda: 'done') == 'done'
    assert eng.etcd.redeliver()
    assert under(eng, eng.keys.vg_lock('vg0')) == []
    assert eng.etcd.get(eng.keys.vg_intent('vg0')) is None
    # The VG is free: another host's change goes through at once.
    other = engines('h2')
    assert other.vglock('vg0').acquire('lvextend', timeout=5).immediate


def test_queued_acquire_redelivered_after_release(engines):
    first = engines('h1')
    second = engines('h2')
    hold = first.vglock('vg0').acquire('lvcreate')
    second.etcd.sent.clear()
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        second.vglock('vg0').acquire('lvremove', timeout=20)))
    waiter.start()
    deadline = time.monotonic() + 20
    while len(first.vglock('vg0').queue()) < 2:
        assert time.monotonic() < deadline, 'the waiter never queued'
        time.sleep(0.01)
    hold.release()
    waiter.join(30)
    assert got and not got[0].immediate
    got[0].release()
    second.etcd.redeliver()
    assert under(second, second.keys.vg_lock('vg0')) == []


def test_released_lease_redelivered_is_not_granted_again(engines):
    eng = engines('h1')
    eng.etcd.sent.clear()
    eng.leases.grant('vg0', 'lv1')
    eng.leases.release('vg0', 'lv1')
    eng.etcd.redeliver()
    assert under(eng, eng.keys.lease('vg0', 'lv1')) == []
    assert eng.leases.holders('vg0', 'lv1') == []


def test_reservation_redelivered_after_unreserve(engines):
    eng = engines('h1')
    eng.etcd.sent.clear()
    with eng.leases.reserved('vg0', 'lv1', 'delete'):
        pass
    first = eng.etcd.sent[:]
    eng.etcd.redeliver()
    assert eng.etcd.get(eng.keys.lease_ledger('vg0', 'lv1')) is None
    # A late unreserve must not drop a later reservation of ours.
    eng.leases.reserve('vg0', 'lv1', 'rename')
    eng.etcd.sent = [first[-1]]
    eng.etcd.redeliver()
    ledger = eng.etcd.get(eng.keys.lease_ledger('vg0', 'lv1'))
    assert ledger is not None and ledger.json()['reserved']['op'] == 'rename'


def test_redelivery_after_the_once_lease_expired_fails_whole(engines):
    # A short once-lease (at least 4 x (window + timeout)): the straggler
    # arrives after its marker has gone with it.
    eng = engines('h1', timeout=0.5, retry_window=0.5)
    eng.once = oncelib.Once(eng.etcd, eng.keys.once(), ttl=1)
    assert eng.once.ttl == 5
    eng.etcd.sent.clear()
    eng.vglock('vg0').acquire('lvcreate').release()
    deadline = time.monotonic() + 60
    while under(eng, eng.keys.once()):  # gone with its lease
        assert time.monotonic() < deadline, 'the once-lease never expired'
        time.sleep(0.2)
    outcomes = eng.etcd.redeliver()
    assert any(isinstance(o, errors.SessionLost) for o in outcomes), \
        (outcomes, eng.etcd.sent)
    assert under(eng, eng.keys.vg_lock('vg0')) == []


def test_own_retry_of_an_applied_acquire_holds_the_lock(engines):
    # The answer of the first delivery was lost; the client's retry is
    # the second: it must find its own key and hold the lock by it.
    eng = engines('h1')
    lock = eng.vglock('vg0')
    real = eng.etcd.txn
    calls = []

    def lose_first_answer(compare, success, failure=()):
        res = real(compare, success, failure)
        if not calls:
            calls.append(res)
            return real(compare, success, failure)
        return res
    eng.etcd.txn = lose_first_answer
    hold = lock.acquire('lvcreate', timeout=5)
    eng.etcd.txn = real
    assert [kv['key'] for kv in lock.queue()] == [hold.key]
    hold.check()
    hold.release()
    assert lock.queue() == []


def test_once_lease_outlives_any_retry(engines):
    # Defaults: a txn is retried for up to 15 + 5 s; a once-lease handed
    # out must outlive that twice over.
    eng = engines('h1', timeout=5.0, retry_window=15.0)
    assert eng.etcd.lease_ttl(eng.once.lease()) >= 2 * (15.0 + 5.0)


def test_once_lease_revoked_by_hand_costs_a_retry_not_an_error(engines):
    # "lease not found" from a guarded txn is the session's or the
    # once-lease's: a fresh once-lease tells which, nothing applied twice.
    eng = engines('h1')
    eng.leases.grant('vg0', 'lv1')
    eng.etcd.lease_revoke(eng.once.lease())
    eng.leases.grant('vg0', 'lv2')
    eng.vglock('vg0').acquire('lvcreate').release()
    assert sorted((vg, lv) for vg, lv, _ in eng.leases.mine()) == [
        ('vg0', 'lv1'), ('vg0', 'lv2')]
    # With the session itself gone, the error stays session-lost.
    eng.etcd.lease_revoke(eng.session.id)
    with pytest.raises(errors.SessionLost):
        eng.leases.grant('vg0', 'lv3')


def _given_up(eng, apply_first):
    """Make the next txn's caller give up unanswered (EtcdUnavailable);
    the txn applied already if ``apply_first``, else kept to deliver late.
    Returns the kept bodies."""
    real, kept = eng.etcd.txn, []

    def unanswered(compare, success, failure=()):
        eng.etcd.txn = real
        if apply_first:
            real(compare, success, failure)
        else:
            kept.append((list(compare), list(success), list(failure)))
        raise errors.EtcdUnavailable('no answer (injected)')
    eng.etcd.txn = unanswered
    return kept


def _settle(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_an_acquire_given_up_then_delivered_leaves_the_vg_free(engines):
    # The acquire gives up; its txn reaches etcd only afterwards (a
    # proposal that waited out an election): it must not queue a key
    # nobody will release under our live session.
    eng = engines('h1')
    kept = _given_up(eng, apply_first=False)
    with pytest.raises(errors.EtcdUnavailable):
        eng.vglock('vg0').acquire('lvcreate', timeout=5)
    for thread in threading.enumerate():     # the withdrawal, if any
        if thread.name == 'once-withdraw':
            thread.join(30)
    late = etcdlib.Etcd.txn(eng.etcd, *kept[0])
    assert not late.succeeded
    assert under(eng, eng.keys.vg_lock('vg0')) == []
    assert engines('h2').vglock('vg0').acquire('lvextend',
                                               timeout=5).immediate


def test_an_acquire_applied_but_unanswered_is_withdrawn(engines):
    eng = engines('h1')
    _given_up(eng, apply_first=True)
    with pytest.raises(errors.EtcdUnavailable):
        eng.vglock('vg0').acquire('lvcreate', timeout=5)
    _settle(lambda: under(eng, eng.keys.vg_lock('vg0')) == [],
            'the key of an acquire given up still holds the VG')
    assert engines('h2').vglock('vg0').acquire('lvextend',
                                               timeout=5).immediate


def test_a_change_applied_but_unanswered_leaves_no_intent(engines):
    # The acquire of a metadata change also marks the change in flight
    # (its intent); withdrawn, it takes the mark with it, or the next
    # holder would take an out-of-band change for a holder that died.
    eng = engines('h1')
    guard = eng.guard(lambda vg, fresh: 7)
    _given_up(eng, apply_first=True)
    with pytest.raises(errors.EtcdUnavailable):
        guard.change('vg0', 'lvcreate', lambda: 'never run')
    _settle(lambda: under(eng, eng.keys.vg_lock('vg0')) == [],
            'the key of an acquire given up still holds the VG')
    assert eng.etcd.get(eng.keys.vg_intent('vg0')) is None
