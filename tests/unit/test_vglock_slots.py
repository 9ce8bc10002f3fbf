"""The VG lock's queue-key slots (coordinator.engine.vglock._Slots)."""
from coordinator.engine import vglock


def test_a_slot_given_back_twice_goes_to_one_taker():
    slots = vglock._Slots()
    first = slots.take()
    slots.give(first)
    slots.give(first)  # a second release of the same hold
    assert slots.take() != slots.take()


def test_slots_are_reused_and_leaked_ones_skipped():
    slots = vglock._Slots()
    a, b, c = slots.take(), slots.take(), slots.take()
    assert (a, b, c) == (1, 2, 3)
    slots.give(b)
    assert slots.take() == b
    # a and c never given back (a txn that may still apply): never reused.
    slots.give(b)
    assert {slots.take(), slots.take()} == {b, 4}
