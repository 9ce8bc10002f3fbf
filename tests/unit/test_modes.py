"""Activation mode rules, no etcd needed."""
import pytest

from coordinator import errors
from coordinator.engine import modes
from coordinator.engine.modes import Holder


def want(host, mode='exclusive', instance=None, session=1):
    return Holder(host=host, mode=mode, instance=instance, session=session)


def no_grace(h):
    return 0.0


def test_first_grant_is_what_was_asked():
    new, changed = modes.decide([], want('a', 'exclusive', 'i'), no_grace)
    assert changed and [(h.host, h.mode) for h in new] == [('a', 'exclusive')]


def test_exclusive_refused_names_holder():
    held = [Holder('a', 'exclusive', 'i1', token=7, session=9)]
    with pytest.raises(errors.LeaseConflict) as exc:
        modes.decide(held, want('b', 'exclusive', 'i2'), no_grace)
    assert 'a (exclusive, instance i1, token 7)' in str(exc.value)
    assert exc.value.holders == held


def test_migration_pairs_same_instance_only():
    held = [Holder('a', 'exclusive', 'i1', session=9)]
    new, _ = modes.decide(held, want('b', 'migration', 'i1'), no_grace)
    assert {(h.host, h.mode) for h in new} == {('a', 'migration'),
                                              ('b', 'migration')}
    with pytest.raises(errors.LeaseConflict, match='same instance'):
        modes.decide(held, want('b', 'migration', 'i2'), no_grace)
    with pytest.raises(errors.LeaseConflict, match='exactly two'):
        modes.decide(new, want('c', 'migration', 'i1'), no_grace)


def test_migration_without_source_is_exclusive():
    new, _ = modes.decide([], want('b', 'migration', 'i1'), no_grace)
    assert new[0].mode == 'exclusive'


def test_shared_only_with_shared():
    held = [Holder('a', 'shared', session=9)]
    new, _ = modes.decide(held, want('b', 'shared'), no_grace)
    assert len(new) == 2
    with pytest.raises(errors.LeaseConflict, match='every holder'):
        modes.decide([Holder('a', 'exclusive')], want('b', 'shared'),
                     no_grace)
    with pytest.raises(errors.LeaseConflict):
        modes.decide(held, want('b', 'exclusive'), no_grace)


def test_regrant_same_session_is_idempotent_other_session_is_not():
    held = [Holder('a', 'exclusive', 'i1', token=5, session=1)]
    assert modes.decide(held, want('a', 'exclusive', 'i1'), no_grace) == \
        (held, False)
    _, changed = modes.decide(held, want('a', 'exclusive', 'i1', session=2),
                              no_grace)
    assert changed


def test_vanished_holder_blocks_until_grace_then_is_dropped():
    held = [Holder('a', 'exclusive', session=9, alive=False)]
    with pytest.raises(errors.LeaseFenceWait, match='grantable in 2.5s'):
        modes.decide(held, want('b'), lambda h: 2.5)
    new, _ = modes.decide(held, want('b'), no_grace)
    assert [h.host for h in new] == ['b']


def test_release_ends_migration():
    pair = [Holder('a', 'migration', 'i'), Holder('b', 'migration', 'i')]
    assert [(h.host, h.mode) for h in modes.after_release(pair, 'a')] == \
        [('b', 'exclusive')]


@pytest.mark.parametrize('mode,instance,field', [
    ('bogus', None, 'mode'), ('migration', None, 'instance')])
def test_bad_requests(mode, instance, field):
    with pytest.raises(errors.InvalidInput) as exc:
        modes.validate(mode, instance)
    assert exc.value.field == field
