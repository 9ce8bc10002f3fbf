"""Fencer state machine with a fake clock, probe and backend."""
from coordinator import errors
from coordinator import fence


class FakeBackend:
    def __init__(self, lvs):
        self.lvs = {lv: {'open': True, 'suspended': False} for lv in lvs}
        self.calls = []

    def active(self):
        return dict(self.lvs)

    def suspend(self, vg, lv):
        self.calls.append(('suspend', vg, lv))
        self.lvs[(vg, lv)]['suspended'] = True

    def resume(self, vg, lv):
        self.calls.append(('resume', vg, lv))
        self.lvs[(vg, lv)]['suspended'] = False

    def deactivate(self, vg, lv):
        self.calls.append(('deactivate', vg, lv))
        del self.lvs[(vg, lv)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(answers, lvs=(('vg', 'a'), ('vg', 'b')), **kw):
    clock = Clock()
    backend = FakeBackend(lvs)

    def probe(lease):
        asked.append(lease)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    events, asked = [], []
    f = fence.Fencer(probe, backend, ttl=10, fraction=0.5, clock=clock,
                     on_event=lambda kind, **kw: events.append(kind),
                     lease=7, **kw)
    f.asked = asked
    return f, backend, clock, events


def down():
    return errors.EtcdUnavailable('down')


def test_healthy_session_never_fences():
    f, backend, clock, _ = make([10, 9, 10, 8])
    for _ in range(4):
        assert f.tick() == fence.OK
        clock.now += 1
    assert backend.calls == []


def test_partition_fences_at_fraction_of_ttl_then_resumes():
    f, backend, clock, events = make([10, down(), down(), down(), 10])
    assert f.tick() == fence.OK          # t=100, deadline 105
    clock.now = 104.9
    assert f.tick() == fence.OK          # unreachable, before deadline
    clock.now = 105.0
    assert f.tick() == fence.FENCED      # deadline: margin of 5s left
    assert ('suspend', 'vg', 'a') in backend.calls
    clock.now = 106
    assert f.tick() == fence.FENCED
    clock.now = 107
    assert f.tick() == fence.OK          # lease confirmed again: resume
    assert backend.calls[-2:] == [('resume', 'vg', 'a'),
                                  ('resume', 'vg', 'b')]
    assert events == ['fenced', 'resumed']


def test_dying_keepalive_fences_even_with_etcd_reachable():
    # etcd answers, but nobody refreshes the lease: time left shrinks.
    f, backend, clock, _ = make([9, 7, 5])
    assert f.tick() == fence.OK
    clock.now += 2
    assert f.tick() == fence.OK
    clock.now += 2
    assert f.tick() == fence.FENCED      # 5s left == margin
    assert len(backend.calls) == 2


def test_expired_session_stays_fenced_until_rearmed():
    checked = []
    f, backend, clock, events = make(
        [10, -1, 10], resume=lambda vg, lv: checked.append((vg, lv)))
    f.tick()
    assert f.tick() == fence.LOST
    assert f.tick() == fence.LOST        # no probe: the lease is gone
    assert [c[0] for c in backend.calls] == ['suspend', 'suspend']
    assert events == ['fenced', 'session-lost']
    # A new session never resumes by itself: resume() decides per LV.
    f.rearm(8)
    assert f.state == fence.FENCED
    assert f.tick() == fence.OK
    assert f.asked == [7, 7, 8]
    assert checked == [('vg', 'a'), ('vg', 'b')]
    assert ('resume', 'vg', 'a') not in backend.calls


def test_deactivate_action_spares_open_devices():
    f, backend, clock, _ = make([down()], action='deactivate')
    backend.lvs[('vg', 'b')]['open'] = False
    f.tick()
    assert sorted(backend.calls) == [('deactivate', 'vg', 'b'),
                                     ('suspend', 'vg', 'a')]


def test_unknown_deadline_fences_at_once():
    f, backend, clock, _ = make([down()])
    assert f.tick() == fence.FENCED
