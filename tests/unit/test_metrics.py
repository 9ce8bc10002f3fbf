"""Where the daemon records its metrics: each event moves its metric."""
import queue
import threading
import types

import pytest

from coordinator import errors
from coordinator.daemon import host
from coordinator.daemon import metrics
from coordinator.daemon import ops
from coordinator.daemon import service
from tests.unit.test_fence import Book
from tests.unit.test_fence import Dog
from tests.unit.test_fence import make


class Recorder:
    """A metric that remembers what it was told, per label set."""

    def __init__(self):
        self.values, self._labels = {}, ()

    def labels(self, **kw):
        child = Recorder()
        child.values, child._labels = self.values, tuple(sorted(kw.items()))
        return child

    def inc(self, amount=1):
        self.values[self._labels] = self.values.get(self._labels, 0) + amount

    def set(self, value):
        self.values[self._labels] = value


@pytest.fixture
def rec(monkeypatch):
    made = {}
    for name in ('EVENTS', 'GRANT_FAILURES', 'WATCHDOG_ARMED',
                 'PETS_WITHHELD', 'MEMBER', 'MEMBERS'):
        made[name] = Recorder()
        monkeypatch.setattr(metrics, name, made[name])
    return made


def test_every_event_counted_by_kind(rec):
    ctx = types.SimpleNamespace(_events=queue.Queue(), _mutex=threading.Lock(),
                                _publisher=object(),
                                conf=types.SimpleNamespace(host='h1'))
    host.HostContext.emit(ctx, 'fenced', lvs=[])
    host.HostContext.emit(ctx, 'fenced', lvs=[])
    host.HostContext.emit(ctx, 'out-of-band-change', vg='vg')
    assert rec['EVENTS'].values == {(('kind', 'fenced'),): 2,
                                    (('kind', 'out-of-band-change'),): 1}


def test_grant_failure_counted_by_error_and_raised(rec):
    def refuse(*args):
        raise errors.LeaseConflict('vg/lv held by h2')
    fake = types.SimpleNamespace(host='h1', _activate=refuse)
    with pytest.raises(errors.LeaseConflict):
        ops.Operations.op_activate(fake, 'vg', 'lv')
    assert rec['GRANT_FAILURES'].values == {
        (('reason', 'LeaseConflict'),): 1}


def test_withheld_pets_counted_while_armed(rec):
    dog = Dog()
    f, backend, w, _ = make(watchdog=dog)
    f.book = Book([('vg', 'a'), ('vg', 'b')])
    w.now = 101
    f.tick()
    assert rec['PETS_WITHHELD'].values == {}      # valid: petted
    assert rec['WATCHDOG_ARMED'].values == {(): 1}

    def stuck(vg, lv):
        if lv == 'b':
            raise errors.LVMError('timeout', kind='timeout')
    backend.suspend = stuck
    w.etcd_up, w.now = False, 106
    f.tick()
    assert rec['PETS_WITHHELD'].values[()] >= 1   # b not fenced


def test_membership_member_goes_to_zero_once_gone(rec):
    seen = [{'h1': {}, 'h2': {}}]
    worker = types.SimpleNamespace(ctx=types.SimpleNamespace(
        membership=types.SimpleNamespace(
            members=lambda max_age=0: seen[0])))
    service.SessionWorker._members_seen(worker)
    seen[0] = {'h1': {}}
    service.SessionWorker._members_seen(worker)
    assert rec['MEMBER'].values == {(('member', 'h1'),): 1,
                                    (('member', 'h2'),): 0}
    assert rec['MEMBERS'].values == {(): 1}


def test_session_up_follows_the_fencer(monkeypatch):
    up = Recorder()
    monkeypatch.setattr(metrics, 'SESSION_UP', up)
    f, backend, w, _ = make()
    w.now = 101
    f.tick()
    assert up.values == {(): 1}
    w.etcd_up, w.now = False, 106          # deadline passed: fenced
    f.tick()
    assert up.values == {(): 0}
