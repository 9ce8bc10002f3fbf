"""A routed request answered while etcd is away: a warning, not a crash."""
import logging
import types

from coordinator import errors
from coordinator.daemon import routing
from coordinator.engine import keys as keyslib


class AwayEtcd:
    """etcd that does not answer."""

    retry_window = 0.1
    timeout = 0.1

    def txn(self, *args, **kwargs):
        raise errors.EtcdUnavailable('etcd unreachable (fake)')


def test_an_answer_etcd_does_not_take_is_logged_not_raised(caplog):
    session = types.SimpleNamespace(host='compute-1', id=0x10)
    router = routing.Router(AwayEtcd(), keyslib.Keys(), session)
    kv = types.SimpleNamespace(key='/lvmcoord/default/requests/x', lease=7,
                               mod_revision=3)
    job = routing._Job('x', 'volume-1', kv, 'activate', claimed=1e12)
    # A grant that did not apply: its rider did not claim the request, so
    # the answer must claim it, in a txn etcd does not take.
    job.rider = types.SimpleNamespace(done=False)

    def handler(op, args):
        raise errors.EtcdUnavailable('no grant (fake)')
    with caplog.at_level(logging.WARNING, logger=routing.LOG.name):
        router._run(handler, job)
    [record] = [r for r in caplog.records if 'not answered' in r.message]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert 'activate from volume-1' in record.message
