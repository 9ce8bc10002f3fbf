"""The fencer against LVM commands under the book's lock (devguard) and
an orderly stop racing proofs (issue 22, items 2 and 10)."""
import threading

from coordinator.daemon import fence
from coordinator.daemon import grantbook
from tests.unit.test_fence import Dog
from tests.unit.test_fence import make

A, B = ('vg', 'a'), ('vg', 'b')


def booked(tmp_path, keys=(A, B)):
    book = grantbook.GrantBook(str(tmp_path))
    for vg, lv in keys:
        book.put(vg, lv, state=grantbook.ACTIVE, token=7, uuid=lv)
    return book


def test_a_stop_cancels_the_resume_of_a_proof_in_flight(tmp_path):
    proving, verdict = threading.Event(), threading.Event()

    def prove(vg, lv):
        proving.set()
        verdict.wait(30)
        return fence.RESUME
    f, backend, w, _ = make(prove=prove, book=booked(tmp_path))
    f.background = True
    w.now = 106
    assert f.tick() == fence.FENCED
    w.beat = 106
    assert f.tick() == fence.OK          # proofs start, in the background
    assert proving.wait(30)
    # The stop lands while they are out: nothing resumes after it.
    f.close([A, B], 'stopping')
    verdict.set()
    f.wait_proofs()
    assert not f._settler.is_alive()
    stopped = len(backend.calls)
    assert not any(c[0] == 'resume' for c in backend.calls), backend.calls
    assert sorted(f.fenced) == [A, B]
    # And no later tick proves (and resumes) anything.
    f.background = False
    assert f.tick() == fence.OK
    assert not any(c[0] == 'resume' for c in backend.calls[stopped:])


def test_a_stop_fences_again_what_is_fenced_already(tmp_path):
    # A resume whose dmsetup timed out after the kernel resumed leaves
    # the key in the fenced set, its device live: the stop fences it too.
    f, backend, w, _ = make(prove=lambda vg, lv: fence.KEEP,
                            book=booked(tmp_path))
    w.now = 106
    f.tick()
    backend.calls.clear()
    f.close([A, B], 'stopping')
    assert sorted(backend.calls) == [('suspend', 'vg', 'a'),
                                     ('suspend', 'vg', 'b')]
    assert sorted(f.fenced) == [A, B]


def test_a_command_that_ran_during_the_fence_is_fenced_again(tmp_path):
    # An LVM command under the book's lock (lvchange --refresh) was
    # running when the fence landed and resumed the device after it; it
    # counts itself in the record when done (devguard), so the fencer
    # stops that device again once it has the lock.
    book = booked(tmp_path)
    f, backend, w, _ = make(book=book)
    suspend = backend.suspend

    def suspend_during_a_command(vg, lv):
        suspend(vg, lv)
        if lv == 'a' and backend.calls.count(('suspend', vg, lv)) == 1:
            book.put(vg, lv, durable=False, commands=1)
    backend.suspend = suspend_during_a_command
    w.now = 106
    assert f.tick() == fence.FENCED
    assert backend.calls.count(('suspend', 'vg', 'a')) == 2
    assert backend.calls.count(('suspend', 'vg', 'b')) == 1
    assert sorted(f.fenced) == [A, B]


def test_a_busy_book_never_holds_up_the_fencer(tmp_path):
    # I/O is stopped first; the mark waits MARK_WAIT at most. Unmarked,
    # the LVs are fenced again on every tick, and no pet meanwhile.
    book = booked(tmp_path)
    dog = Dog()
    f, backend, w, _ = make(book=book, watchdog=dog)
    assert f.tick() == fence.OK and dog.pets
    pets = dog.pets
    held, done = threading.Event(), threading.Event()

    def command():
        with book.locked():
            held.set()
            done.wait(60)
    t = threading.Thread(target=command)
    t.start()
    try:
        assert held.wait(30)
        w.now = 106
        ticked = threading.Thread(target=f.tick)
        ticked.start()
        ticked.join(30)
        assert not ticked.is_alive()
        assert ('suspend', 'vg', 'a') in backend.calls
        assert f.fenced == [] and dog.pets == pets
        before = len(backend.calls)
        ticked = threading.Thread(target=f.tick)
        ticked.start()
        ticked.join(30)
        assert len(backend.calls) > before   # fenced again
        assert dog.pets == pets
    finally:
        done.set()
        t.join()
    assert f.tick() == fence.FENCED
    assert sorted(f.fenced) == [A, B] and dog.pets > pets
    assert all(r.get('fenced') for r in book.all().values())


def test_a_stop_waits_out_a_busy_book_to_mark(tmp_path):
    # No tick follows a stop: what a busy book left unmarked is fenced and
    # marked before close() returns (then the watchdog may be disarmed).
    book = booked(tmp_path)
    f, backend, w, _ = make(book=book)
    held, done = threading.Event(), threading.Event()

    def command():
        with book.locked():
            held.set()
            done.wait(60)
    t = threading.Thread(target=command)
    t.start()
    assert held.wait(30)
    closing = threading.Thread(target=f.close, args=([A, B], 'stopping'))
    closing.start()
    # It finds the book busy, and keeps trying.
    found = threading.Event()
    while not (f._unmarked or found.wait(0.01)):
        pass
    assert f._unmarked == {A, B}
    done.set()
    t.join()
    closing.join(60)
    assert not closing.is_alive()
    assert sorted(f.fenced) == [A, B]
    assert all(r.get('fenced') for r in book.all().values())
