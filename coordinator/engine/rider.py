"""Rider: compares and ops that ride along the first txn of an action.

A routed request is claimed by a txn that deletes it and proves its lease
is its sender's live session (coordinator/daemon/routing.py). An activation
writes anyway (its grant): the claim rides along that write instead of
costing a round trip of its own, and a request whose caller is gone by
then is never acted on: the grant fails with it. A deactivation's reply
rides along its release the same way; it has no compares, so it never
fails the txn it rides on.
"""
from coordinator import errors


class RiderLost(errors.CoordError):
    """A carrying txn failed on the rider's compares: what the rider
    guards must not happen (nothing of that txn was applied)."""


class Rider:
    """Added to each txn that carries it until one succeeds (``done``)."""

    def __init__(self, compare, ops, reads, check):
        self.compare = list(compare)
        self.ops = list(ops)  # writes only: no range results of their own
        # Ranges read in a carrying txn's failure branch (at least one if
        # there are compares), and check(their results) -> why the
        # compares fail, or None.
        self.reads = list(reads)
        assert self.reads or not self.compare, \
            'a rider with compares reads what tells its failure'
        self.check = check
        self.done = False

    def carry(self, compare, success, failure=()):
        """The txn with the rider on it (as it is, once done)."""
        if self.done:
            return list(compare), list(success), list(failure)
        return (list(compare) + self.compare, list(success) + self.ops,
                list(failure) + self.reads)

    def outcome(self, res):
        """``res.ranges`` of a txn built by carry(), less the rider's own;
        RiderLost if the rider is why it failed."""
        if self.done:
            return res.ranges
        if res.succeeded:
            self.done = True
            return res.ranges
        if not self.reads:
            return res.ranges  # no compares: not why it failed
        why = self.check(res.ranges[-len(self.reads):])
        if why:
            raise RiderLost(why)
        return res.ranges[:-len(self.reads)]
