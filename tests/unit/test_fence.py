"""Fencer state machine with a fake clock, keepalive record, probe and
backend."""
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

    def resume(self, vg, lv):
        self.calls.append(('resume', vg, lv))

    def deactivate(self, vg, lv):
        self.calls.append(('deactivate', vg, lv))
        del self.lvs[(vg, lv)]


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


def make(lvs=(('vg', 'a'), ('vg', 'b')), **kw):
    w = World()
    backend = FakeBackend(lvs)
    events = []
    f = fence.Fencer(lambda: w.beat, w.probe, backend, ttl=10,
                     fraction=0.5, clock=lambda: w.now,
                     on_event=lambda kind, **_: events.append(kind),
                     lease=7, **kw)
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
    assert backend.calls[-2:] == [('resume', 'vg', 'a'),
                                  ('resume', 'vg', 'b')]
    assert events == ['fenced', 'resumed']


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


def test_expired_session_stays_fenced_until_rearmed():
    checked = []
    f, backend, w, events = make(
        resume=lambda vg, lv: checked.append((vg, lv)))
    w.lease_alive = False
    assert f.tick() == fence.LOST
    assert f.tick() == fence.LOST   # no more probes of a dead lease
    assert events == ['fenced', 'session-lost']
    # A new session never resumes by itself: resume() decides per LV.
    w.lease_alive, w.beat, w.now = True, 120, 120
    f.rearm(8)
    assert f.state == fence.FENCED
    assert f.tick() == fence.OK
    assert w.asked == [7, 8]
    assert checked == [('vg', 'a'), ('vg', 'b')]
    assert ('resume', 'vg', 'a') not in backend.calls


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
