"""The hot paths that do less: their results are the ones the longer
paths gave, counted in etcd requests where that is the point.

- LeaseTable: a grant of a free LV and a release of our own grant are one
  txn each; a lost compare decides again on the keys the txn read; the
  reads an activation needs ride along the grant (claim_with).
- LeaseTable.list (lean decode) equals read() of every LV.
- Routed replies: one stream per process; a reply written while it was
  down is found when it comes back. A deactivate's reply rides on its
  release; a caller gone by then costs the reply, never the release.
"""
import collections
import threading
import time
import uuid

import pytest

from coordinator import errors
from coordinator.daemon import replies
from coordinator.daemon import routing
from coordinator.engine import etcd as etcdlib
from coordinator.engine import etcdhttp
from coordinator.engine.core import Engine


class Counting(etcdlib.Etcd):
    """An Etcd that counts its requests by URL path."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.paths = collections.Counter()

    def _post(self, path, payload, window=None):
        self.paths[path] += 1
        return super()._post(path, payload, window)

    def txn(self, compare, success, failure=()):
        self.paths['/kv/txn'] += 1
        return super().txn(compare, success, failure)


def engine(endpoints, host, cluster):
    etcd = Counting(endpoints, timeout=2.0, retry_window=20.0)
    return Engine(etcd, host, cluster, ttl=10, grace=1.0).open()


def requests_of(eng, fn):
    eng.etcd.paths.clear()
    result = fn()
    return result, dict(eng.etcd.paths)


def test_grant_and_release_are_one_txn_each(etcd_server):
    cluster = f'hp{uuid.uuid4().hex[:6]}'
    a = engine(etcd_server.endpoints, 'host-a', cluster)
    b = engine(etcd_server.endpoints, 'host-b', cluster)
    try:
        # A process's first write grants its at-most-once lease; later
        # ones are renewed off the path.
        a.once.lease()
        (mine, new), n = requests_of(a, lambda: a.leases.claim('vg', 'lv1'))
        assert new and n == {'/kv/txn': 1}
        assert mine.token == a.leases.holders('vg', 'lv1')[0].token
        released, n = requests_of(a, lambda: a.leases.release('vg', 'lv1'))
        assert released and n == {'/kv/txn': 1}
        assert a.leases.holders('vg', 'lv1') == []
        # A re-grant reads first (this process knows the ledger), and
        # stays idempotent.
        a.leases.claim('vg', 'lv2')
        (again, new), n = requests_of(a, lambda: a.leases.claim('vg', 'lv2'))
        assert not new and n == {'/kv/range': 1}
        # Someone else wrote the ledger since our grant (a shared holder
        # joins and leaves): our release loses its compare, decides again
        # on the keys that txn read, and still releases only us.
        a.leases.claim('vg', 'lv3', mode='shared')
        b.leases.claim('vg', 'lv3', mode='shared')
        released, n = requests_of(a, lambda: a.leases.release('vg', 'lv3'))
        assert released and n == {'/kv/txn': 2}
        assert [h.host for h in b.leases.holders('vg', 'lv3')] == ['host-b']
        # A grant that finds a ledger (b holds lv3) loses its optimistic
        # compare and is refused on what that txn read: one request.
        a.etcd.paths.clear()
        with pytest.raises(errors.LeaseConflict):
            a.leases.claim('vg', 'lv3')
        assert dict(a.etcd.paths) == {'/kv/txn': 1}
    finally:
        a.close(revoke=True)
        b.close(revoke=True)


def test_claim_with_reads_in_the_grant_txn(etcd_server):
    cluster = f'hp{uuid.uuid4().hex[:6]}'
    a = engine(etcd_server.endpoints, 'host-a', cluster)
    try:
        a.once.lease()
        guard = a.guard(lambda vg, fresh: 0)
        a.etcd.put(a.keys.vg_seqno('vg'), {'seqno': 41})
        reads = guard.recorded_reads('vg')
        (mine, new, got), n = requests_of(
            a, lambda: a.leases.claim_with(reads, 'vg', 'lv'))
        assert new and n == {'/kv/txn': 1}
        assert guard.recorded_from(got) == (41, None)
        # Re-grant: the reads come with the LV's keys.
        a.etcd.put(a.keys.vg_seqno('vg'), {'seqno': 42})
        (again, new, got), n = requests_of(
            a, lambda: a.leases.claim_with(reads, 'vg', 'lv'))
        assert not new and n == {'/kv/txn': 1}
        assert guard.recorded_from(got) == (42, None)
        assert guard.recorded('vg') == (42, None)
    finally:
        a.close(revoke=True)


def test_list_equals_read_of_every_lv(etcd_server):
    cluster = f'hp{uuid.uuid4().hex[:6]}'
    a = engine(etcd_server.endpoints, 'host-a', cluster)
    b = engine(etcd_server.endpoints, 'host-b', cluster)
    try:
        a.leases.claim('vg', 'x1')
        a.leases.claim('vg', 'x2', mode='shared')
        b.leases.claim('vg', 'x2', mode='shared')
        b.leases.claim('vg2', 'y', instance='vm-1')
        a.leases.reserve('vg', 'reserved', 'delete')
        listed = a.leases.list()
        assert sorted(listed) == [('vg', 'x1'), ('vg', 'x2'), ('vg2', 'y')]
        for (vg, lv), holders in listed.items():
            assert holders == a.leases.holders(vg, lv)
    finally:
        a.close(revoke=True)
        b.close(revoke=True)


def test_reply_written_while_the_stream_was_down_is_found(etcd_server):
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    prefix = f'/lvmcoord/hp{uuid.uuid4().hex[:6]}/replies/host-a/'
    made = []   # this stream's watches (not other tests' leftovers)
    plain_watch = etcd.watch

    def recording_watch(*args, **kw):
        made.append(plain_watch(*args, **kw))
        return made[-1]
    etcd.watch = recording_watch
    stream = replies.Replies(etcd, prefix)
    first = stream.expect(prefix + 'one')
    etcd.put(prefix + 'one', {'ok': True, 'result': 1})
    got = next(e for e in first.until(time.monotonic() + 60, 1.0) if e)
    assert got[1].json() == {'ok': True, 'result': 1}
    # The stream dies; a reply is written before it is opened again.
    second = stream.expect(prefix + 'two')
    dead = threading.Event()
    real_watch = etcd.watch

    def slow_watch(*args, **kw):
        dead.wait(5)
        return real_watch(*args, **kw)
    etcd.watch = slow_watch
    live = [w._sock for w in made if not w.dead]
    assert live
    for sock in live:
        sock.shutdown(2)
    etcd.put(prefix + 'two', {'ok': True, 'result': 2})
    dead.set()
    got = next(e for e in second.until(time.monotonic() + 60, 1.0) if e)
    assert got[1].json() == {'ok': True, 'result': 2}



def _request_rider(eng, key):
    """The claim routing makes of request ``key`` sent by ``eng``'s host."""
    return routing.claim_rider(eng.keys, eng.etcd.get(key), eng.host,
                               lambda: None)


def test_a_rider_is_claimed_in_the_grant_txn(etcd_server):
    from coordinator.engine import rider as riderlib
    cluster = f'hp{uuid.uuid4().hex[:6]}'
    a = engine(etcd_server.endpoints, 'host-a', cluster)
    b = engine(etcd_server.endpoints, 'host-b', cluster)
    try:
        a.once.lease()
        lease = a.session.id
        # Granted with the claim: one txn, and the request is gone.
        a.etcd.put('/req/1', 'x', lease=lease)
        rider = _request_rider(a, '/req/1')
        (mine, new, _), n = requests_of(a, lambda: a.leases.claim_with(
            [], 'vg', 'lv1', rider=rider))
        assert new and rider.done and n == {'/kv/txn': 1}
        assert a.etcd.get('/req/1') is None
        # The request withdrawn before the grant: nothing granted.
        a.etcd.put('/req/2', 'x', lease=lease)
        rider = _request_rider(a, '/req/2')
        a.etcd.delete('/req/2')
        with pytest.raises(riderlib.RiderLost, match='withdrawn'):
            a.leases.claim_with([], 'vg', 'lv2', rider=rider)
        assert b.leases.holders('vg', 'lv2') == []
        # A lost race is decided again, the rider carried on the retry.
        b.leases.claim('vg', 'lv3', mode='shared')
        a.etcd.put('/req/3', 'x', lease=lease)
        rider = _request_rider(a, '/req/3')
        mine, new, _ = a.leases.claim_with([], 'vg', 'lv3', mode='shared',
                                           rider=rider)
        assert new and rider.done and a.etcd.get('/req/3') is None
        # A request not bound to its sender's session: nothing granted.
        a.etcd.put('/req/4', 'x', lease=b.session.id)
        rider = _request_rider(a, '/req/4')
        with pytest.raises(riderlib.RiderLost, match='not bound'):
            a.leases.claim_with([], 'vg', 'lv4', rider=rider)
        assert a.leases.holders('vg', 'lv4') == []
        # A re-grant writes nothing but still claims.
        a.etcd.put('/req/5', 'x', lease=lease)
        rider = _request_rider(a, '/req/5')
        (mine, new, _), n = requests_of(a, lambda: a.leases.claim_with(
            [], 'vg', 'lv1', rider=rider))
        assert not new and rider.done and a.etcd.get('/req/5') is None
    finally:
        a.close(revoke=True)
        b.close(revoke=True)


class _Releasing:
    """A target's handler that releases as op_deactivate does, its reply
    riding on the release (a gate holds it before); a copy deactivates its
    source on its way, as copy.py does."""

    def __init__(self, eng):
        self.eng, self.gate = eng, threading.Event()
        self.gate.set()
        self.released = []

    def __call__(self, op, args):
        if op == 'copy':
            self.deactivate(args['vg'], args['src'])
            return {'copied': args['dst']}
        return self.deactivate(args['vg'], args['lv'])

    def deactivate(self, vg, lv):
        self.gate.wait(60)
        result = {'lv': lv, 'released': True}
        result['released'] = self.eng.leases.release(
            vg, lv, rider=routing.reply_rider('deactivate', result))
        self.released.append((lv, result['released']))
        return result


@pytest.fixture
def routed_pair(etcd_server):
    """(caller engine, target engine, target's handler, target's router)
    with the target serving; all stopped after the test."""
    cluster = f'hp{uuid.uuid4().hex[:6]}'
    caller = engine(etcd_server.endpoints, 'host-a', cluster)
    target = engine(etcd_server.endpoints, 'host-b', cluster)
    handler = _Releasing(target)
    server = routing.Router(target.etcd, target.keys, target.session)
    serving = threading.Thread(target=server.serve, args=(handler, 2),
                               daemon=True)
    serving.start()
    try:
        yield caller, target, handler, server
    finally:
        handler.gate.set()
        server.stop()
        serving.join(30)
        caller.close(revoke=True)
        target.close(revoke=True)
    assert not serving.is_alive()


def test_a_routed_deactivate_replies_in_its_release_txn(routed_pair):
    caller, target, handler, _ = routed_pair
    target.once.lease()
    target.leases.claim('vg', 'lv1')
    client = routing.Router(caller.etcd, caller.keys, caller.session)
    # Warm: the reply stream and the replies' lease exist.
    assert client.call('host-b', 'deactivate',
                       {'vg': 'vg', 'lv': 'warm'}) == \
        {'lv': 'warm', 'released': False}
    target.etcd.paths.clear()
    got = client.call('host-b', 'deactivate', {'vg': 'vg', 'lv': 'lv1'})
    assert got == {'lv': 'lv1', 'released': True}
    # The claim and the release: no txn of the reply's own (it was
    # three before it rode on the release).
    assert target.etcd.paths['/kv/txn'] == 2, dict(target.etcd.paths)
    assert target.leases.holders('vg', 'lv1') == []
    # Not held: no release txn to ride on, the reply is put on its own.
    assert client.call('host-b', 'deactivate',
                       {'vg': 'vg', 'lv': 'lv1'}) == \
        {'lv': 'lv1', 'released': False}
    # A deactivate that a copy runs on its way is no reply to the copy.
    target.leases.claim('vg', 'src')
    assert client.call('host-b', 'copy', {'vg': 'vg', 'src': 'src',
                                          'dst': 'dst', 'size': 1 << 20}) \
        == {'copied': 'dst'}
    assert ('src', True) in handler.released


def test_a_caller_gone_before_the_release_costs_only_its_reply(
        routed_pair):
    caller, target, handler, server = routed_pair
    outcome = []
    target.leases.claim('vg', 'lv1')
    client = routing.Router(caller.etcd, caller.keys, caller.session)
    handler.gate.clear()

    def call():
        try:
            client.call('host-b', 'deactivate', {'vg': 'vg', 'lv': 'lv1'})
        except errors.CoordError as exc:
            outcome.append(exc)
    calling = threading.Thread(target=call, daemon=True)
    calling.start()
    # Claimed (the request is gone) and held at the gate; then the
    # caller's session ends.
    requests = target.keys.requests('host-b')
    deadline = time.monotonic() + 30
    while caller.etcd.range(requests, prefix=True)[0] or \
            server.scheduler.busy() == (0, 0):
        assert time.monotonic() < deadline, 'request never claimed'
        time.sleep(0.01)
    caller.close(revoke=True)
    calling.join(60)
    assert isinstance(outcome[0], errors.SessionLost), outcome
    handler.gate.set()
    deadline = time.monotonic() + 30
    while not handler.released:
        assert time.monotonic() < deadline, 'release never ran'
        time.sleep(0.01)
    # Released all the same; no reply was left for nobody.
    assert handler.released == [('lv1', True)]
    assert target.leases.holders('vg', 'lv1') == []
    assert target.etcd.range(target.keys.replies('host-a'),
                             prefix=True)[0] == []


def test_a_reply_lease_gone_costs_neither_the_release_nor_the_reply(
        routed_pair):
    # The lease the replies go on is gone (revoked by hand, etcd restored
    # from a backup): etcd refuses a txn that puts on it. The release it
    # rides on goes on without it, and the reply goes on a new lease.
    caller, target, _, server = routed_pair
    target.leases.claim('vg', 'lv1')
    client = routing.Router(caller.etcd, caller.keys, caller.session)
    assert client.call('host-b', 'deactivate',
                       {'vg': 'vg', 'lv': 'warm'})['released'] is False
    target.etcd.lease_revoke(server._reply_lease[0])
    got = client.call('host-b', 'deactivate', {'vg': 'vg', 'lv': 'lv1'},
                      timeout=20)
    assert got == {'lv': 'lv1', 'released': True}
    assert target.leases.holders('vg', 'lv1') == []


def test_a_release_goes_on_when_no_lease_can_be_had_for_its_reply(
        routed_pair):
    # etcd grants no lease (its space quota alarm refuses one, while it
    # still takes deletes): the reply cannot be put, the release goes on.
    caller, target, _, server = routed_pair
    target.leases.claim('vg', 'lv1')
    client = routing.Router(caller.etcd, caller.keys, caller.session)

    def refused(ttl):
        raise etcdhttp.EtcdError(None, 'etcdserver: mvcc: database space '
                                 'exceeded')
    server.etcd.lease_grant = refused
    server._reply_lease = (0, 0.0)
    with pytest.raises(errors.HostUnavailable, match='did not answer'):
        client.call('host-b', 'deactivate', {'vg': 'vg', 'lv': 'lv1'},
                    timeout=3)
    assert target.leases.holders('vg', 'lv1') == []


def test_the_first_reply_to_a_request_stands(routed_pair):
    # A txn retried after it applied (the client's own retry) answers
    # again: the reply the caller may have read already is not replaced.
    caller, target, _, server = routed_pair
    # Under a host nobody serves: the serving router must not claim it.
    key = target.keys.request('host-x', uuid.uuid4().hex)
    caller.etcd.put(key, {'op': 'refresh', 'from': 'host-a'},
                    lease=caller.session.id)
    kv = caller.etcd.get(key)
    job = routing._Job(key.rsplit('/', 1)[1], 'host-a', kv, 'refresh',
                       time.monotonic())
    server._reply(job, {'ok': True, 'result': 'first'})
    server._reply(job, {'ok': False, 'error': {'code': 'error'}})
    reply = target.etcd.get(target.keys.reply('host-a', job.rid))
    assert reply.json() == {'ok': True, 'result': 'first'}


def test_range_raw_reads_in_pages_at_one_revision(etcd_server, monkeypatch):
    # A long range is read in pages (one huge answer timed out at 50,000
    # leases), all at the first page's revision.
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    prefix = f'/paged-{uuid.uuid4().hex[:6]}/'
    for i in range(10):
        etcd.put(f'{prefix}k{i:02d}', str(i))
    posts, post = [], etcd._post

    def counted(path, req, *args):
        posts.append(path)
        resp = post(path, req, *args)
        if posts == ['/kv/range']:   # written after the first page
            etcd.put(f'{prefix}k05x', 'late')
        return resp
    monkeypatch.setattr(etcd, '_post', counted)
    kvs = etcd.range_raw(prefix, prefix=True, page=3)
    keys = [etcdlib.unb64(kv['key']).decode() for kv in kvs]
    assert keys == [f'{prefix}k{i:02d}' for i in range(10)]
    assert posts.count('/kv/range') == 4
    monkeypatch.setattr(etcdlib, 'RANGE_PAGE', 4)
    assert len(etcd.range_raw(prefix, prefix=True)) == 11
