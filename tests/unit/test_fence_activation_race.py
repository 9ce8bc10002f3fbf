"""A fence that lands while a grant is being turned into a device: the
device made after the fence never stays writable, and the grant is not
released from under the activation. Real grant book, fake backend."""
import os
import types

import pytest

from coordinator import errors
from coordinator.daemon import fence
from coordinator.daemon import grantbook
from coordinator.daemon import ops
from coordinator.daemon import proof

KEY = ('vg', 'a')


class Backend:
    """Devices by key; ``made_after_suspend`` makes one right after the
    first suspend, as an activation racing the fence would."""

    def __init__(self):
        self.devices_ = {}
        self.calls = []
        self.made_after_suspend = None

    def suspend(self, vg, lv):
        self.calls.append(('suspend', lv, (vg, lv) in self.devices_))
        if (vg, lv) in self.devices_:
            self.devices_[(vg, lv)] = 'ro'
        if self.made_after_suspend:
            hook, self.made_after_suspend = self.made_after_suspend, None
            hook()

    def resume(self, vg, lv):
        self.calls.append(('resume', lv))
        self.devices_[(vg, lv)] = 'rw'

    def admit(self, vg, lv):
        self.calls.append(('admit', lv))
        self.devices_[(vg, lv)] = 'rw'

    def retire(self, vg, lv):
        self.calls.append(('retire', lv))
        self.devices_.pop((vg, lv), None)

    def devices(self):
        return list(self.devices_)

    def identity(self, vg, lv):
        return {'uuid': 'U'} if (vg, lv) in self.devices_ else None


@pytest.fixture
def book(tmp_path):
    return grantbook.GrantBook(str(tmp_path))


def fencer(backend, book, prove=None):
    return fence.Fencer(lambda: 100.0, lambda lease: 10, backend, ttl=10,
                        clock=lambda: 200.0, book=book, background=False,
                        prove=prove or (lambda vg, lv: fence.KEEP))


def activating(book, pid=None):
    book.put(*KEY, state=grantbook.ACTIVATING, token=7, uuid='U',
             pid=pid or os.getpid())


def made(backend, book):
    """What op_activate does once the backend made the device (born
    read-only)."""
    backend.devices_.setdefault(KEY, 'ro')
    stub = types.SimpleNamespace(book=book, backend=backend, host='h1')
    ops.Operations._made(stub, *KEY, '/dev/x')


def test_device_made_after_the_fence_stops_itself(book):
    backend = Backend()
    activating(book)
    f = fencer(backend, book)
    assert f.tick() == fence.FENCED
    # The fence found no device to stop, and marked the record.
    assert backend.calls == [('suspend', 'a', False)]
    assert book.get(*KEY)['fenced'] is True
    made(backend, book)
    assert backend.devices_[KEY] == 'ro'
    assert book.get(*KEY)['state'] == grantbook.ACTIVE


def test_device_made_between_suspend_and_mark_is_stopped_again(book):
    backend = Backend()
    activating(book)
    # The activation finishes (device made, recorded active) after the
    # fencer's suspend of nothing and before its mark.
    backend.made_after_suspend = lambda: made(backend, book)
    f = fencer(backend, book)
    f.tick()
    assert backend.devices_[KEY] == 'ro'
    assert backend.calls[-1] == ('suspend', 'a', True)


def test_resume_by_proof_unmarks_so_a_later_call_leaves_it_writable(book):
    backend = Backend()
    activating(book)
    verdicts = iter([fence.KEEP, fence.RESUME])
    f = fencer(backend, book, prove=lambda vg, lv: next(verdicts))
    f.tick()
    made(backend, book)
    f.last_keepalive = lambda: 199.0      # the session is fresh again
    f.probe = lambda lease: 10
    for _ in range(3):
        f.tick()
    assert f.fenced == []
    assert backend.devices_[KEY] == 'rw'
    assert 'fenced' not in book.get(*KEY)
    made(backend, book)                   # an idempotent re-activation
    assert backend.devices_[KEY] == 'rw'


def test_proof_keeps_a_grant_whose_device_is_being_made(book):
    backend = Backend()
    prover = proof.Prover(None, None, backend, book)
    activating(book)
    assert prover(*KEY) == fence.KEEP
    # The activation's process died: nothing will make the device.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    activating(book, pid=pid)
    assert prover(*KEY) == fence.GONE


def test_activation_whose_record_was_retired_retires_its_device(book):
    backend = Backend()
    with pytest.raises(errors.HostUnavailable, match='retired'):
        made(backend, book)
    assert KEY not in backend.devices_


def test_a_grant_not_marked_fenced_is_fenced_again(book):
    # Unmarked, an activation in flight would not stop its device: the
    # key does not count as fenced until its mark is written.
    backend = Backend()
    activating(book)
    mark, failures = book.mark_fenced, []

    def failing_once(keys):
        if not failures:
            failures.append(keys)
            raise OSError('disk full')
        mark(keys)
    book.mark_fenced = failing_once
    f = fencer(backend, book)
    assert f.tick() == fence.FENCED
    assert f.fenced == [] and 'fenced' not in book.get(*KEY)
    f.tick()
    assert f.fenced == [KEY] and book.get(*KEY)['fenced'] is True


def test_a_fence_marks_the_book_once(book):
    # One mark for the whole batch: the fence's time is the margin's.
    backend = Backend()
    for lv in ('a', 'b', 'c'):
        book.put('vg', lv, state=grantbook.ACTIVE, token=7, uuid='U')
    mark, calls = book.mark_fenced, []
    book.mark_fenced = lambda keys: (calls.append(keys), mark(keys))
    f = fencer(backend, book)
    assert f.tick() == fence.FENCED
    assert len(calls) == 1 and sorted(calls[0]) == \
        [('vg', 'a'), ('vg', 'b'), ('vg', 'c')]
