"""Fencer state machine with a fake clock, keepalive record, probe and
backend."""
from coordinator import errors
from coordinator.daemon import fence


class FakeBackend:
    def __init__(self, lvs):
        self.lvs = {lv: {'open': True, 'suspended': False} for lv in lvs}
        self.calls = []

    def active(self):
        return dict(self.lvs)

    def devices(self):
        return list(self.lvs)

    def suspend(self, vg, lv):
        self.calls.append(('suspend', vg, lv))

    def resume(self, vg, lv):
        self.calls.append(('resume', vg, lv))

    def deactivate(self, vg, lv):
        if self.lvs[(vg, lv)]['open']:
            raise errors.LVMError('busy', kind='busy')
        self.calls.append(('deactivate', vg, lv))
        del self.lvs[(vg, lv)]

    def retire(self, vg, lv):
        self.calls.append(('retire', vg, lv))
        self.lvs.pop((vg, lv), None)


class World:
    """Clock, last keepalive and etcd's answers, moved by the test."""

    def __init__(self):
        self.now = 100.0
        self.beat = 100.0
        self.etcd_up = True
        self.lease_alive = True
        self.asked = []

    def probe(self, lease):
        self.asked.append(lease)
        if not self.etcd_up:
            raise errors.EtcdUnavailable('down')
        return 10 if self.lease_alive else -1


def make(lvs=(("vg", "a"), ("vg", "b")), **kw):
    w = World()
    backend = FakeBackend(lvs)
    events = []
    f = fence.Fencer(lambda: w.beat, w.probe, backend, ttl=10,
                     fraction=0.5, clock=lambda: w.now,
                     on_event=lambda kind, **_: events.append(kind),
                     lease=7, background=False, **kw)
    return f, backend, w, events


def test_healthy_session_never_fences():
    f, backend, w, _ = make()
    for _ in range(20):
        w.now += 1
        if w.now - w.beat >= 3.3:   # keepalives every TTL/3
            w.beat = w.now
        assert f.tick() == fence.OK
    assert backend.calls == []


def test_partition_fences_at_fraction_of_ttl_then_resumes():
    f, backend, w, events = make()
    w.etcd_up = False               # last keepalive sent at t=100
    w.now = 104.9
    assert f.tick() == fence.OK
    w.now = 105.0                   # 100 + 0.5 * TTL: 5s before expiry
    assert f.tick() == fence.FENCED
    assert sorted(backend.calls) == [('suspend', 'vg', 'a'),
                                     ('suspend', 'vg', 'b')]
    w.now = 107
    assert f.tick() == fence.FENCED
    w.etcd_up, w.beat = True, 107   # healed within the TTL
    assert f.tick() == fence.OK
    assert sorted(backend.calls[-2:]) == [('resume', 'vg', 'a'),
                                          ('resume', 'vg', 'b')]
    assert events == ['fenced', 'resumed', 'resumed']


def test_stuck_keepalive_fences_even_with_etcd_reachable():
    f, backend, w, _ = make()
    w.now = 105.1                   # etcd answers, but nobody refreshes
    assert f.tick() == fence.FENCED
    assert len(backend.calls) == 2


def test_fresh_keepalive_without_etcd_answer_does_not_resume():
    f, backend, w, _ = make()
    w.etcd_up, w.now = False, 106
    assert f.tick() == fence.FENCED
    w.beat = 106                    # cannot happen without etcd, but if
    assert f.tick() == fence.FENCED  # etcd is silent we stay fenced
    assert ('resume', 'vg', 'a') not in backend.calls


def test_expired_session_stays_fenced_until_proven():
    checked = []

    def prove(vg, lv):
        checked.append((vg, lv))
        return fence.KEEP
    f, backend, w, events = make(prove=prove)
    # Fenced at the deadline, then etcd says the lease is gone.
    w.lease_alive, w.now = False, 106
    assert f.tick() == fence.LOST
    assert f.tick() == fence.LOST   # no more probes of a dead lease
    assert events == ['fenced', 'session-lost']
    # A new session never resumes by itself: prove() decides per LV.
    w.lease_alive, w.beat, w.now = True, 120, 120
    f.rearm(8)
    assert f.tick() == fence.OK
    assert checked == [('vg', 'a'), ('vg', 'b')]
    assert ('resume', 'vg', 'a') not in backend.calls
    assert sorted(f.fenced) == [('vg', 'a'), ('vg', 'b')]


def test_deactivate_action_spares_open_devices():
    f, backend, w, _ = make(action='deactivate')
    backend.lvs[('vg', 'b')]['open'] = False
    w.now = 106
    f.tick()
    assert sorted(backend.calls) == [('deactivate', 'vg', 'b'),
                                     ('suspend', 'vg', 'a')]


def test_no_keepalive_ever_fences_at_once():
    f, backend, w, _ = make()
    w.beat = 0.0
    assert f.tick() == fence.FENCED


class Book:
    def __init__(self, keys):
        self.keys = list(keys)

    def all(self):
        return {k: {} for k in self.keys}

    def locked(self, wait=None):
        import contextlib
        return contextlib.nullcontext(True)

    def mark_fenced(self, keys):
        pass


class Dog:
    def __init__(self):
        self.pets = 0
        self.armed = False

    def pet(self):
        self.pets += 1
        self.armed = True

    def disarm(self):
        self.armed = False


def test_retire_verdict_removes_device_never_resumes_it():
    retired = []
    f, backend, w, events = make(
        prove=lambda vg, lv: fence.RETIRE if lv == 'a' else fence.RESUME,
        on_retired=lambda vg, lv: retired.append(lv))
    w.now = 106
    assert f.tick() == fence.FENCED
    w.beat = 106
    assert f.tick() == fence.OK
    assert ('retire', 'vg', 'a') in backend.calls
    assert ('resume', 'vg', 'a') not in backend.calls
    assert ('resume', 'vg', 'b') in backend.calls
    assert retired == ['a']
    assert f.fenced == []


def test_nothing_on_the_fence_path_kills_the_fencer():
    def boom(vg, lv):
        raise RuntimeError('proof exploded')
    f, backend, w, _ = make(prove=boom)

    def bad_suspend(vg, lv):
        raise errors.LVMError('in use', kind='busy')
    backend.suspend = bad_suspend
    f.book = Book([('vg', 'a'), ('vg', 'b')])
    w.now = 106
    assert f.tick() == fence.FENCED        # logged, not raised
    assert f.fenced == []                  # nothing fenced yet...
    backend.suspend = lambda vg, lv: backend.calls.append(('suspend', vg,
                                                           lv))
    assert f.tick() == fence.FENCED        # ...retried on the next tick
    assert sorted(f.fenced) == [('vg', 'a'), ('vg', 'b')]
    w.beat = 106
    assert f.tick() == fence.OK            # proof raises: stays fenced
    assert sorted(f.fenced) == [('vg', 'a'), ('vg', 'b')]


def test_book_is_fenced_before_the_backend_is_enumerated():
    f, backend, w, _ = make(lvs=(('vg', 'a'), ('vg', 'x')))
    order = []
    backend.suspend = lambda vg, lv: order.append(('suspend', lv))
    enumerate_ = backend.devices
    backend.devices = lambda: (order.append(('enumerate',)),
                               enumerate_())[1]
    f.book = Book([('vg', 'a')])
    w.now = 106
    f.tick()
    assert order == [('suspend', 'a'), ('enumerate',), ('suspend', 'x')]


def test_fence_one_is_called_off_when_still_says_no():
    f, backend, w, _ = make()
    f.fence_one('vg', 'a', 'grant revoked', still=lambda: False)
    assert backend.calls == []
    f.fence_one('vg', 'a', 'grant revoked', still=lambda: True)
    assert backend.calls == [('suspend', 'vg', 'a')]
    assert f.fenced == [('vg', 'a')]


def test_idle_host_with_fresh_keepalive_does_not_ask_etcd():
    f, backend, w, _ = make()
    for _ in range(10):
        w.now += 0.5
        w.beat = w.now
        f.tick()
    assert w.asked == []


def test_watchdog_petted_only_while_valid_or_all_fenced():
    dog = Dog()
    f, backend, w, _ = make(watchdog=dog)
    f.book = Book([('vg', 'a'), ('vg', 'b')])
    w.now = 101
    f.tick()
    assert dog.pets >= 1                   # valid session, LVs active
    before = dog.pets

    def stuck(vg, lv):
        if lv == 'b':
            raise errors.LVMError('timeout', kind='timeout')
    backend.suspend = stuck
    w.etcd_up, w.now = False, 106          # deadline passed
    f.tick()
    assert f.fenced == [('vg', 'a')]
    assert dog.pets == before              # b not fenced: let it reset
    backend.suspend = lambda vg, lv: None
    f.tick()
    assert dog.pets > before               # every device fenced: safe
    f.book = Book([])
    f.fenced = []
    f.tick()
    assert not dog.armed                   # nothing active: disarmed


def test_watchdog_not_petted_when_fencing_disabled_and_deadline_passed():
    dog = Dog()
    f, backend, w, _ = make(watchdog=dog, action='none')
    f.book = Book([('vg', 'a')])
    w.etcd_up, w.now = False, 106
    f.tick()
    assert dog.pets == 0


def test_a_slow_proof_never_delays_a_deadline_fence():
    import threading
    release = threading.Event()
    asked = threading.Event()

    def slow(vg, lv):
        asked.set()
        release.wait(10)
        return fence.RESUME
    f, backend, w, _ = make(prove=slow)
    f.background = True
    f.fence_one('vg', 'a', 'grant revoked')
    f.tick()                               # starts the proof beside us
    assert asked.wait(5)
    w.etcd_up, w.now = False, 106          # deadline passes meanwhile
    assert f.tick() == fence.FENCED        # not blocked by the proof
    assert ('suspend', 'vg', 'b') in backend.calls
    release.set()
    f._settler.join(5)
    # The proof predates the session doubt: it resumes nothing.
    assert ('resume', 'vg', 'a') not in backend.calls
    assert sorted(f.fenced) == [('vg', 'a'), ('vg', 'b')]


def test_next_tick_wakes_at_the_deadline_not_an_interval_late():
    f, _, w, _ = make()             # deadline: beat 100 + 0.5 * TTL
    w.now = 101.0
    assert f.next_tick(0.5) == 0.5
    w.now = 104.8
    assert abs(f.next_tick(0.5) - 0.2) < 1e-9
    w.now = 105.3                   # overdue: tick at once
    assert f.next_tick(0.5) == 0.005
    assert f.tick() == fence.FENCED
    assert f.next_tick(0.5) == 0.5  # fenced: the probe's pace


def test_a_retire_never_holds_the_lock_the_ticks_wait_for():
    # Its device I/O and the etcd calls after it can be slow; a tick (and
    # so the watchdog's pet) must not wait for them.
    import threading
    f, backend, w, _ = make(prove=lambda vg, lv: fence.RETIRE)
    free = []

    def try_lock(got):
        got.append(f._mutex.acquire(timeout=5))
        if got[-1]:
            f._mutex.release()

    def retire(vg, lv):
        got = []
        t = threading.Thread(target=try_lock, args=(got,))
        t.start()
        t.join()
        free.append(got[0])
    backend.retire = retire
    w.now = 106
    assert f.tick() == fence.FENCED
    w.beat = 106
    f.tick()
    assert free == [True, True]
    assert f.fenced == []


# -- the kernel is the truth (issue 22 items 1, 8, 9) --

class KernelBackend(FakeBackend):
    """FakeBackend with a kernel: what stopped() reads is what suspend()
    and resume() set, or what an admin's command did behind our back."""

    def __init__(self, lvs):
        super().__init__(lvs)
        self.kernel = {k: 'live' for k in lvs}
        self.stuck = set()

    def suspend(self, vg, lv, **at):
        self.calls.append(('suspend', vg, lv, *at.values()))
        if (vg, lv) in self.stuck:
            raise errors.LVMError('timeout', kind='timeout')
        self.kernel[(vg, lv)] = 'suspended'

    def resume(self, vg, lv, **at):
        self.calls.append(('resume', vg, lv, *at.values()))
        self.kernel[(vg, lv)] = 'live'

    def retire(self, vg, lv, **at):
        self.calls.append(('retire', vg, lv, *at.values()))
        self.kernel.pop((vg, lv), None)

    def stopped(self, vg, lv, **at):
        return self.kernel.get((vg, lv)) != 'live'


class RecordBook(Book):
    """A book whose records say something (their dm uuid)."""

    def __init__(self, records):
        super().__init__(records)
        self.records = records

    def all(self):
        return {k: dict(v) for k, v in self.records.items()}

    def unmark_fenced(self, vg, lv):
        pass


def test_device_resumed_behind_the_fencer_is_fenced_again_unpetted():
    dog = Dog()
    f, _, w, events = make(watchdog=dog)
    backend = f.backend = KernelBackend([('vg', 'a'), ('vg', 'b')])
    f.book = Book([('vg', 'a'), ('vg', 'b')])
    w.etcd_up, w.now = False, 106
    assert f.tick() == fence.FENCED
    assert dog.pets >= 1                     # every device fenced
    # An admin's vgchange -ay resumes a; suspending it again hangs.
    backend.kernel[('vg', 'a')] = 'live'
    backend.stuck = {('vg', 'a')}
    before = dog.pets
    for _ in range(3):
        w.now += 0.5
        f.tick()
    assert backend.calls.count(('suspend', 'vg', 'a')) == 4
    assert dog.pets == before                # live in the kernel: no pet
    assert ('vg', 'a') in f.fenced           # still checked every tick
    backend.stuck = set()
    w.now += 0.5
    f.tick()
    assert backend.kernel[('vg', 'a')] == 'suspended'
    assert dog.pets > before                 # the kernel shows it fenced
    assert events.count('fenced') == 5


def test_a_proof_in_flight_before_a_refence_resumes_nothing():
    f, _, w, _ = make(prove=lambda vg, lv: fence.RESUME)
    backend = f.backend = KernelBackend([('vg', 'a')])
    f.fence_one('vg', 'a', 'grant revoked')
    gen = f._gen[('vg', 'a')]
    backend.kernel[('vg', 'a')] = 'live'     # resumed behind the fencer
    f._recheck()
    assert backend.kernel[('vg', 'a')] == 'suspended'
    assert f._gen[('vg', 'a')] != gen        # an older proof is void


def test_booked_devices_are_fenced_resumed_and_retired_by_dm_uuid():
    verdicts = {'a': fence.RESUME, 'b': fence.RETIRE}
    f, _, w, _ = make(prove=lambda vg, lv: verdicts[lv])
    backend = f.backend = KernelBackend([('vg', 'a'), ('vg', 'b')])
    f.book = RecordBook({('vg', 'a'): {'dm_uuid': 'LVM-ua'},
                         ('vg', 'b'): {'dm_uuid': 'LVM-ub'}})
    w.now = 106
    assert f.tick() == fence.FENCED
    assert sorted(c for c in backend.calls if c[0] == 'suspend') == [
        ('suspend', 'vg', 'a', 'LVM-ua'), ('suspend', 'vg', 'b', 'LVM-ub')]
    w.beat = 106
    assert f.tick() == fence.OK
    assert ('resume', 'vg', 'a', 'LVM-ua') in backend.calls
    assert ('retire', 'vg', 'b', 'LVM-ub') in backend.calls


def test_the_kernel_is_asked_by_dm_uuid_too():
    f, _, w, _ = make()
    asked = []
    backend = f.backend = KernelBackend([('vg', 'a')])
    backend.stopped = lambda vg, lv, **at: asked.append(at) or True
    f.book = RecordBook({('vg', 'a'): {'dm_uuid': 'LVM-ua'}})
    w.now = 106
    f.tick()
    assert asked and all(at == {'dm_uuid': 'LVM-ua'} for at in asked)


class ProofBook:
    def __init__(self, records):
        self.records = records

    def get(self, vg, lv):
        return self.records.get((vg, lv))


class SnapBackend:
    def identity(self, vg, lv, **at):
        return {'uuid': 'S', 'extents': None, 'origin': 'o'}


class SnapLVM:
    def lvs(self, vg):
        return [{'uuid': 'S', 'name': 's', 'origin': 'o'}]


def test_a_snapshot_is_proven_with_its_origin():
    from coordinator.daemon import proof

    def verdict(origin_record):
        book = ProofBook({('vg', 'o'): origin_record} if origin_record
                         else {})
        return proof.Prover(None, SnapLVM(), SnapBackend(), book)('vg', 's')
    # The origin not proven yet: the snapshot waits for it.
    assert verdict({'uuid': 'O', 'token': 1, 'fenced': True}) == fence.KEEP
    # Proven (unmarked before its resume): the snapshot is resumed too.
    assert verdict({'uuid': 'O', 'token': 1}) == fence.RESUME
    # The origin's grant went (retired, dropped): the snapshot goes too.
    assert verdict(None) == fence.RETIRE


class RetiringKernel(KernelBackend):
    """KernelBackend whose retired devices stay while open ('error'), as
    device-mapper's deferred remove leaves them."""

    def retire(self, vg, lv, **at):
        self.calls.append(('retire', vg, lv, *at.values()))
        self.kernel[(vg, lv)] = 'error'

    def stopped(self, vg, lv, **at):
        return self.kernel.get((vg, lv)) != 'live'

    def retired(self, vg, lv, **at):
        state = self.kernel.get((vg, lv))
        return None if state is None else state == 'error'


def test_retired_device_reloaded_by_hand_is_retired_again_unpetted():
    dog = Dog()
    f, _, w, events = make(prove=lambda vg, lv: fence.RETIRE, watchdog=dog)
    backend = f.backend = RetiringKernel([('vg', 'a')])
    f.retirees.backend = backend
    records = {('vg', 'a'): {'dm_uuid': 'LVM-ua'}}
    f.book = RecordBook(records)
    f.on_retired = lambda vg, lv: records.pop((vg, lv))
    w.now = 106
    assert f.tick() == fence.FENCED
    w.beat = 106
    assert f.tick() == fence.OK
    assert backend.kernel[('vg', 'a')] == 'error' and not records
    # The admin's lvchange --refresh loads the linear table again.
    backend.kernel[('vg', 'a')] = 'live'
    backend.retire = lambda vg, lv, **at: (_ for _ in ()).throw(
        errors.LVMError('busy'))
    before, calls = dog.pets, len(backend.calls)
    w.now, w.beat = 107, 107
    f.tick()
    assert dog.pets == before              # writable, not retired: no pet
    del backend.retire                     # the class's retire again
    w.now, w.beat = 108, 108
    f.tick()
    assert backend.kernel[('vg', 'a')] == 'error'
    assert backend.calls[calls:] == [('retire', 'vg', 'a', 'LVM-ua')]
    assert events.count('retired') == 2
    # Gone on its last close: no longer watched.
    del backend.kernel[('vg', 'a')]
    f.tick()
    assert len(f.retirees) == 0


def test_a_new_grant_of_a_retired_lv_is_not_retired():
    f, _, w, _ = make(prove=lambda vg, lv: fence.RETIRE)
    backend = f.backend = RetiringKernel([('vg', 'a')])
    f.retirees.backend = backend
    records = {('vg', 'a'): {}}
    f.book = RecordBook(records)
    f.on_retired = lambda vg, lv: records.pop((vg, lv))
    w.now = 106
    f.tick()
    w.beat = 106
    f.tick()
    # Activated here again once the old device went: a new device.
    records[('vg', 'a')] = {'state': 'activating'}
    backend.kernel[('vg', 'a')] = 'live'
    w.now, w.beat = 107, 107
    f.tick()
    records[('vg', 'a')] = {'state': 'active'}
    f.tick()
    assert backend.kernel[('vg', 'a')] == 'live'
    assert len(f.retirees) == 0


def test_disarm_never_waits_unbounded_on_the_book_lock():
    import contextlib
    dog = Dog()
    f, _, w, _ = make(watchdog=dog)
    waits = []

    class Busy(Book):
        def locked(self, wait=None):
            waits.append(wait)   # held by a command: not taken in time
            return contextlib.nullcontext(False)
    f.book = Busy([])
    dog.armed = True
    f.tick()
    assert waits and None not in waits
    assert dog.armed                       # disarmed on a later tick
    f.book = Book([])
    f.tick()
    assert not dog.armed
