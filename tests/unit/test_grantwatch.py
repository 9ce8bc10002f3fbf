"""GrantWatch: what counts as a revoked grant, and what a rescan asks."""
import types

from coordinator.daemon import grantwatch
from coordinator.engine import modes


class Leases:
    def __init__(self, holders, session_id=7):
        self.session = types.SimpleNamespace(host='h1', id=session_id)
        self._holders = holders
        self.asked = 0

    def holders(self, vg, lv):
        self.asked += 1
        return self._holders


class Book:
    def __init__(self, records):
        self.records = records

    def get(self, vg, lv):
        return self.records.get((vg, lv))

    def all(self):
        return dict(self.records)


class Fencer:
    def __init__(self, fenced=()):
        self.fenced = list(fenced)
        self.calls = []

    def fence_one(self, vg, lv, why, still=None):
        self.calls.append((vg, lv, why))


def watch(holder, record, fenced=()):
    leases = Leases([holder] if holder else [])
    fencer = Fencer(fenced)
    w = grantwatch.GrantWatch(None, None, leases,
                              Book({('vg', 'a'): record}), fencer)
    return w, leases, fencer


def holder(**kw):
    return modes.Holder(**dict(dict(host='h1', mode='exclusive', token=5,
                                    session=7, uuid='U'), **kw))


def test_own_carry_over_to_the_current_session_is_not_a_revocation():
    # The proof rebinds (a new token) before the book is told.
    w, _, _ = watch(holder(token=9), {'token': 5, 'uuid': 'U'})
    assert w.revoked('vg', 'a') is None


def test_token_changed_under_another_session_or_lv_is_a_revocation():
    for h in (holder(token=9, session=8), holder(token=9, uuid='V'),
              holder(token=9, alive=False)):
        w, _, _ = watch(h, {'token': 5, 'uuid': 'U'})
        assert 'token changed' in w.revoked('vg', 'a')


def test_rescan_skips_fenced_lvs_an_event_does_not():
    w, leases, fencer = watch(None, {'token': 5, 'uuid': 'U'},
                              fenced=[('vg', 'a')])
    w.check('vg', 'a', rescan=True)
    assert leases.asked == 0 and fencer.calls == []
    w.check('vg', 'a')
    assert leases.asked == 1
    assert fencer.calls == [('vg', 'a', 'grant revoked: our ledger entry '
                                        'was removed')]
