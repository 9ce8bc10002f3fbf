"""Membership after a failed rejoin (etcd unreachable through a partition):
the next heartbeat joins again instead of failing on a missing client."""
from coordinator.engine import membership


def test_heartbeat_after_a_failed_join_joins_again():
    m = object.__new__(membership.Membership)
    m._coord, m.capabilities = None, {'ready': True}
    joined = []
    m.join = joined.append
    m.heartbeat()
    assert joined == [{'ready': True}]
    m._close()                      # nothing to stop: no error
    assert m._coord is None
