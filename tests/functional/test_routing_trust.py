"""Routed requests under attack: hostile keys written straight into etcd.

Design under test (coordinator/daemon/routing.py, doc/security.md):
- a request whose key, lease or ``from`` does not prove a live session of
  the sender (no lease, another host's lease, forged ``from``, malformed
  key or value) is deleted and never answered: nobody known sent it;
- a request bound to a live session but asking for something not allowed
  (unknown or non-routable op, bad args, huge wait, another host) gets an
  error reply naming the field, and nothing runs;
- in both cases the handler is never called.
"""
import json
import os
import threading
import time
import uuid

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from coordinator import errors
from coordinator.daemon import routing
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import session as sessionlib
from coordinator.engine import vglock
from coordinator.sandbox.cluster import Cluster
from coordinator.sandbox.etcd import EtcdCluster

MiB = 1 << 20
VG = 'vgx'
TARGET, CALLER, OTHER = 'target', 'caller', 'other'


def wait_for(condition, timeout=60.0, what='condition'):
    """Poll ``condition`` until true (generous deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.005)


# -- with real daemons --

@pytest.fixture(scope='module')
def cluster():
    with Cluster(hosts=('volume-1', 'compute-1', 'compute-2'), ttl=10,
                 grace=1.0) as c:
        yield c


def test_hostile_request_keys_run_nothing_on_daemons(cluster):
    vg = cluster.vg.vg
    v1, c1 = cluster['volume-1'].client, cluster['compute-1'].client
    v1.call('create', vg=vg, lv='victim', size=4 * MiB)
    v1.call('create', vg=vg, lv='spare', size=4 * MiB)
    held = v1.call('activate', vg=vg, lv='victim', host='compute-1',
                   instance='vm-1')
    before_lvs = sorted((x['lv'], tuple(x['holders']))
                        for x in c1.call('list', vg=vg))
    etcd = etcdlib.Etcd(cluster.etcd.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', 'sandbox')
    lease_of = {h: etcd.get(keys.session(h)).lease
                for h in ('volume-1', 'compute-1', 'compute-2')}
    deact = {'vg': vg, 'lv': 'victim'}
    # (name, value, lease, answered?, field named in the error)
    attacks = [
        ('no lease', {'op': 'deactivate', 'args': deact,
                      'from': 'volume-1'}, 0, False, None),
        ('lease of another host', {'op': 'deactivate', 'args': deact,
                                   'from': 'volume-1'},
         lease_of['compute-2'], False, None),
        ('forged from', {'op': 'deactivate', 'args': deact,
                         'from': 'compute-2'}, lease_of['volume-1'],
         False, None),
        # An activate is claimed by its grant (engine/rider.py): unbound,
        # its grant fails and it is deleted then, nothing granted.
        ('activate with the lease of another host',
         {'op': 'activate', 'args': {'vg': vg, 'lv': 'spare'},
          'from': 'volume-1'}, lease_of['compute-2'], False, None),
        ('from a host with no session', {'op': 'deactivate', 'args': deact,
                                         'from': 'ghost-1'},
         lease_of['volume-1'], False, None),
        ('from not a host name', {'op': 'deactivate', 'args': deact,
                                  'from': '../volume-1'},
         lease_of['volume-1'], False, None),
        ('unknown op', {'op': 'format_disk', 'args': {},
                        'from': 'volume-1'}, lease_of['volume-1'], True,
         'op'),
        ('non-routable delete', {'op': 'delete',
                                 'args': {'vg': vg, 'lv': 'spare'},
                                 'from': 'volume-1'},
         lease_of['volume-1'], True, 'op'),
        ('bad args', {'op': 'deactivate',
                      'args': {'vg': vg, 'lv': '--force'},
                      'from': 'volume-1'}, lease_of['volume-1'], True,
         'lv'),
        ('unknown arg', {'op': 'deactivate',
                         'args': dict(deact, force=True),
                         'from': 'volume-1'}, lease_of['volume-1'], True,
         "'force'"),
        ('huge wait', {'op': 'activate',
                       'args': {'vg': vg, 'lv': 'spare', 'wait': 1e9},
                       'from': 'volume-1'}, lease_of['volume-1'], True,
         'wait'),
        ('wait above the routed cap', {'op': 'activate',
                                       'args': {'vg': vg, 'lv': 'spare',
                                                'wait': 400},
                                       'from': 'volume-1'},
         lease_of['volume-1'], True, 'wait'),
        ('op for another host', {'op': 'deactivate',
                                 'args': dict(deact, host='compute-2'),
                                 'from': 'volume-1'},
         lease_of['volume-1'], True, 'host'),
    ]
    unanswered = []
    for name, value, lease, answered, field in attacks:
        rid = uuid.uuid4().hex
        key = keys.request('compute-1', rid)
        etcd.put(key, value, lease=lease)
        wait_for(lambda k=key: etcd.get(k) is None,
                 what=f'{name}: deleted')
        if answered:
            reply_key = keys.reply('volume-1', rid)
            reply = wait_for(lambda k=reply_key: etcd.get(k),
                             what=f'{name}: reply').json()
            assert reply['ok'] is False, name
            assert reply['error']['code'] == 'invalid', (name, reply)
            assert reply['error']['field'] == field, (name, reply)
        else:
            unanswered.append(rid)
    # Unbound requests were never answered (processing is sequential: the
    # later answered ones prove the earlier ones were handled).
    assert all(etcd.get(keys.reply('volume-1', rid)) is None
               for rid in unanswered)
    after_lvs = sorted((x['lv'], tuple(x['holders']))
                       for x in c1.call('list', vg=vg))
    assert after_lvs == before_lvs
    shown = c1.call('show', vg=vg, lv='victim')
    assert [(h['host'], h['token']) for h in shown['holders']] == \
        [('compute-1', held['token'])]
    # The legitimate path still works end to end.
    assert v1.call('deactivate', vg=vg, lv='victim',
                   host='compute-1')['released']


def test_activate_whose_caller_is_gone_before_its_grant_grants_nothing(
        cluster):
    # The request waits for the LV (held elsewhere); its caller's session
    # ends meanwhile, and the request with it. The grant that would have
    # claimed it finds it gone: nothing is granted for nobody.
    vg = cluster.vg.vg
    v1 = cluster['volume-1'].client
    v1.call('create', vg=vg, lv='contended', size=4 * MiB)
    v1.call('activate', vg=vg, lv='contended')
    etcd = etcdlib.Etcd(cluster.etcd.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', 'sandbox')
    ghost = sessionlib.Session(etcd, keys, 'ghost-1', 10)
    ghost.open()
    key = keys.request('compute-2', uuid.uuid4().hex)
    # Before the put: compute-2 may log the run before this test is
    # scheduled again.
    log = cluster['compute-2'].log
    before = os.path.getsize(log)
    etcd.put(key, {'op': 'activate', 'from': 'ghost-1',
                   'args': {'vg': vg, 'lv': 'contended', 'wait': 60}},
             lease=ghost.id)

    def logged(text):
        with open(log, errors='replace') as f:
            f.seek(before)
            return text in f.read()
    wait_for(lambda: logged('running activate from ghost-1'),
             what='compute-2 running the request')
    # Running and waiting for the LV, its request unclaimed: the caller
    # goes, then the LV is free.
    assert etcd.get(key) is not None
    ghost.close(revoke=True)
    v1.call('deactivate', vg=vg, lv='contended')
    wait_for(lambda: logged('activate from ghost-1 not run'),
             what='compute-2 giving the request up')
    assert c_holders(cluster, vg, 'contended') == []


def c_holders(cluster, vg, lv):
    shown = cluster['volume-1'].client.call('show', vg=vg, lv=lv)
    return [h['host'] for h in shown['holders']]


# -- in-process: a Router on real etcd with a recording handler --

class Recorder:
    """A handler that records calls; ``gate`` holds chosen callers. As
    ops.py does, what it does first is a txn that carries the claim the
    router left to it (an activate's grant): nothing is recorded for a
    request that fails it."""

    def __init__(self):
        self.calls = []
        self.mutex = threading.Lock()
        self.gates = {}
        self.etcd = None

    def __call__(self, op, args):
        rider = routing.current_rider()
        if rider is not None:
            rider.outcome(self.etcd.txn(*rider.carry([], [], [])))
        with self.mutex:
            self.calls.append((op, args))
        gate = self.gates.get(args.get('lv'))
        if gate is not None:
            gate.wait(60)
        return {'ran': op}


class Routed:
    """etcd, three live sessions and a serving target router."""

    def __init__(self, endpoints, reply_ttl=routing.REPLY_TTL, workers=4):
        self.etcd = etcdlib.Etcd(endpoints, timeout=2.0)
        self.keys = keyslib.Keys('/lvmcoord', f'r{uuid.uuid4().hex[:6]}')
        self.sessions = {h: sessionlib.Session(self.etcd, self.keys, h,
                                               ttl=20).open()
                         for h in (TARGET, CALLER, OTHER)}
        # A live lease that no session key is attached to.
        # Outlives the fuzz test even on a loaded machine (never kept
        # alive: bound to no session).
        self.free_lease = self.etcd.lease_grant(900)
        self.handler = Recorder()
        self.handler.etcd = self.etcd
        self.server = routing.Router(self.etcd, self.keys,
                                     self.sessions[TARGET],
                                     reply_ttl=reply_ttl)
        self.thread = threading.Thread(
            target=self.server.serve, args=(self.handler, workers),
            daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.scheduler is not None,
                 what='router serving')

    def router(self, host):
        return routing.Router(self.etcd, self.keys, self.sessions[host])

    def lease(self, host):
        return self.sessions[host].id

    def close(self):
        self.server.stop()
        self.thread.join(30)
        for s in self.sessions.values():
            s.close(revoke=True)
        self.etcd.lease_revoke(self.free_lease)


@pytest.fixture(scope='module')
def etcd_module():
    with EtcdCluster(1) as c:
        yield c


@pytest.fixture
def routed(etcd_module):
    r = Routed(etcd_module.endpoints)
    yield r
    r.close()


# Building blocks of hostile requests, each labelled valid or not by
# construction (never by the code under test).
GOOD_ARGS = {
    'activate': [{'vg': VG, 'lv': 'lv1'},
                 {'vg': VG, 'lv': 'lv-2', 'mode': 'exclusive',
                  'instance': 'i-1', 'wait': 0, 'read_only': False},
                 {'vg': VG, 'lv': 'x', 'mode': 'migration', 'wait': 300},
                 {'vg': VG, 'lv': 'x', 'host': TARGET}],
    'deactivate': [{'vg': VG, 'lv': 'a'}, {'vg': VG, 'lv': 'a',
                                           'host': TARGET}],
    'refresh': [{'vg': VG, 'lv': 'a'}],
    'snapshot': [{'vg': VG, 'lv': 'a', 'name': 's1', 'size': 4 * MiB}],
    'snapshot_delete': [{'vg': VG, 'lv': 's1'}],
    'copy': [{'vg': VG, 'src': 'a', 'dst': 'b', 'size': 4 * MiB},
             {'vg': VG, 'src': 'a', 'dst': 'b', 'size': 4 * MiB,
              'snapshot': 'a-src'}],
}
BAD_OPS = ['delete', 'create', 'rename', 'extend', 'tag', 'status', 'list',
           'drain', 'show', 'vg_stats', 'format', '', 'op_activate',
           '__init__', 'handle', 1, None, ['activate'], {'op': 'activate'}]
BAD_NAMES = ['', '-rf', '--force', '../x', 'a/b', 'a b', 'x' * 200, '.',
             '..', 'snapshot0', 'lv_tmeta', 'é', '\x00', 1, None, []]
BAD_WAITS = [1e9, 300.5, 301, 600, -1, 'x', True, None, [], float('nan'),
             float('inf')]
BAD_TIMEOUTS = [0, -1, 1e9, 'x', True, [], float('nan')]
BAD_FROM = ['', 'a/b', '../caller', 'caller/', 'é', '\n', 'x' * 300, 1,
            None, ['caller'], 'ghost']
BAD_RIDS = ['', 'x', 'A' * 32, 'a' * 31, 'a' * 33, 'g' * 32,
            'a' * 32 + '/x', 'a/' + 'b' * 32, '../' + 'a' * 32]


@st.composite
def bad_args(draw, op):
    good = dict(draw(st.sampled_from(GOOD_ARGS[op])))
    kind = draw(st.sampled_from(['extra', 'lv', 'vg', 'missing', 'wait',
                                 'host', 'not-a-dict', 'mode', 'read_only']))
    if kind == 'extra':
        good[draw(st.sampled_from(['force', 'cmd', 'args', '', 'lv ',
                                   'LV']))] = draw(st.sampled_from(
                                       [1, 'x', True, {}]))
    elif kind in ('lv', 'vg'):
        if kind == 'lv' and 'src' in good:
            kind = draw(st.sampled_from(['src', 'dst', 'snapshot']))
        # 'snapshot0' and 'lv_tmeta' are reserved for LVs, fine for VGs.
        good[kind] = draw(st.sampled_from(
            BAD_NAMES if kind != 'vg' else
            [n for n in BAD_NAMES if n not in ('snapshot0', 'lv_tmeta')]))
        if good[kind] is None:
            good[kind] = 5
    elif kind == 'missing':
        del good[draw(st.sampled_from([k for k in ('vg', 'lv', 'src', 'dst')
                                       if k in good]))]
    elif kind == 'wait':
        if op != 'activate':
            good['wait'] = 1  # not a field of this op
        else:
            good['wait'] = draw(st.sampled_from(BAD_WAITS))
            if good['wait'] is None:
                good['wait'] = 'none'
    elif kind == 'host':
        good['host'] = draw(st.sampled_from([OTHER, 'compute-9', 'a/b', '',
                                             7, '..x/']))
    elif kind == 'mode':
        if op != 'activate':
            good['mode'] = 'exclusive'
        else:
            good['mode'] = draw(st.sampled_from(['EXCLUSIVE', 'x', 1, '']))
    elif kind == 'read_only':
        good['read_only'] = 'yes' if op == 'activate' else False
    else:
        return draw(st.sampled_from([[], 'x', 1, True, [good]]))
    return good


@st.composite
def hostile(draw):
    """(rid, raw value, lease name, bound, valid) of one request."""
    op = draw(st.sampled_from(routing.ROUTABLE))
    req = {'op': op, 'args': draw(st.sampled_from(GOOD_ARGS[op])),
           'from': CALLER, 'timeout': 60}
    lease, valid, sound = CALLER, True, True
    rid = uuid.uuid4().hex
    for fault in draw(st.lists(st.sampled_from(
            ['op', 'args', 'timeout', 'extra', 'no-timeout', 'as-other',
             'lease', 'from', 'rid', 'value', 'huge']), max_size=3,
            unique=True)):
        if fault == 'op':
            req['op'] = draw(st.sampled_from(BAD_OPS))
            valid = False
        elif fault == 'args':
            req['args'] = draw(bad_args(op))
            valid = False
        elif fault == 'timeout':
            req['timeout'] = draw(st.sampled_from(BAD_TIMEOUTS))
            valid = False
        elif fault == 'extra':
            req[draw(st.sampled_from(['host', 'lease', 'run', 'x']))] = 1
            valid = False
        elif fault == 'no-timeout' and req.get('timeout') == 60:
            del req['timeout']  # allowed: the default applies
        elif fault == 'as-other':
            # A genuine request from another live host: still fine.
            if lease == CALLER and req['from'] == CALLER:
                req['from'], lease = OTHER, OTHER
        elif fault == 'lease':
            lease = draw(st.sampled_from([None, TARGET, 'free', OTHER
                                          if req['from'] != OTHER
                                          else CALLER]))
        elif fault == 'from':
            req['from'] = draw(st.sampled_from(
                BAD_FROM + [OTHER if lease != OTHER else CALLER, TARGET]))
        elif fault == 'rid':
            rid = draw(st.sampled_from(BAD_RIDS))
            sound = False
        elif fault == 'value':
            raw = draw(st.sampled_from(['not json{', '[1, 2]', '"str"', '7',
                                        'null', '', '[' * 5000 + ']' * 5000,
                                        '{"op": "activate"']))
            return rid, raw, lease, False, False, req
        elif fault == 'huge':
            req['pad'] = 'x' * (70 * 1024)
            sound = False
    # Bound: under the live session of the host it names as its sender
    # (a 'lease' and a 'from' fault may agree again: the target's own).
    bound = sound and lease in (CALLER, OTHER, TARGET) and \
        req['from'] == lease
    return rid, json.dumps(req), lease, bound, valid and bound, req


COUNTS = {'sent': 0, 'unbound': 0, 'refused': 0, 'ran': 0, 'crashes': 0}


def test_fuzz_hostile_routed_requests(etcd_module):
    r = Routed(etcd_module.endpoints)
    leases = {CALLER: r.lease(CALLER), OTHER: r.lease(OTHER),
              TARGET: r.lease(TARGET), 'free': r.free_lease, None: 0}
    answered = set()
    try:
        @settings(max_examples=1100, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(hostile())
        def one(case):
            rid, raw, lease, bound, valid, req = case
            key = r.keys.requests(TARGET) + rid
            calls = len(r.handler.calls)
            r.etcd.put(key, raw, lease=leases[lease])
            COUNTS['sent'] += 1
            wait_for(lambda: r.etcd.get(key) is None, what=f'{key} gone')
            if not bound:
                COUNTS['unbound'] += 1
                return
            reply_key = r.keys.reply(req['from'], rid)
            answered.add(reply_key)
            reply = wait_for(lambda: r.etcd.get(reply_key),
                             what='reply').json()
            if reply.get('error', {}).get('code') == 'error':
                COUNTS['crashes'] += 1
            if valid:
                assert reply == {'ok': True, 'result': {'ran': req['op']}}
                assert len(r.handler.calls) == calls + 1
                op, args = r.handler.calls[-1]
                assert op == req['op'] and op in routing.ROUTABLE
                COUNTS['ran'] += 1
            else:
                assert reply['ok'] is False
                assert reply['error']['code'] == 'invalid', reply
                assert reply['error']['message'].strip(), reply
                assert len(r.handler.calls) == calls
                COUNTS['refused'] += 1

        one()
        # Nothing is still queued or running; every unbound request went
        # unanswered (every reply key belongs to a bound request).
        assert r.server.scheduler.busy() == (0, 0)
        replies, _ = r.etcd.range(r.keys.root + 'replies/', prefix=True)
        assert {kv.key for kv in replies} <= answered
        assert r.thread.is_alive(), 'router crashed'
        assert len(r.handler.calls) == COUNTS['ran']
    finally:
        r.close()
    print(f'\nhostile routed requests: {COUNTS}')
    assert COUNTS['sent'] >= 1000
    assert COUNTS['unbound'] > 100 and COUNTS['refused'] > 100
    assert COUNTS['crashes'] == 0


def test_one_caller_cannot_take_every_worker(routed):
    gate = threading.Event()
    routed.handler.gates['hog'] = gate
    hog = routed.router(CALLER)
    results = []

    def hogging():
        try:
            results.append(hog.call(TARGET, 'deactivate',
                                    {'vg': VG, 'lv': 'hog'}, timeout=60))
        except errors.CoordError as exc:
            results.append(exc)

    threads = [threading.Thread(target=hogging, daemon=True)
               for _ in range(8)]
    for t in threads:
        t.start()
    try:
        # The hog's first requests run (and block), the rest queue.
        wait_for(lambda: len(routed.handler.calls) >= 2, what='hog running')
        started = time.monotonic()
        got = routed.router(OTHER).call(TARGET, 'deactivate',
                                        {'vg': VG, 'lv': 'other'},
                                        timeout=20)
        assert got == {'ran': 'deactivate'}
        assert time.monotonic() - started < 15
        # The reply is put before the worker that ran it is counted free:
        # a caller served without delay can look a moment too soon.
        wait_for(lambda: routed.server.scheduler.busy() == (2, 6),
                 timeout=10, what='hog: 2 running, 6 queued')
    finally:
        gate.set()
        for t in threads:
            t.join(60)
    assert all(x == {'ran': 'deactivate'} for x in results), results


def test_queue_full_for_one_caller_is_refused_clearly(routed):
    gate = threading.Event()
    routed.handler.gates['q'] = gate
    keys, etcd = routed.keys, routed.etcd
    rids = [uuid.uuid4().hex for _ in range(2 + routing.QUEUE_SIZE // 4 + 1)]
    try:
        for rid in rids:
            etcd.put(keys.request(TARGET, rid),
                     {'op': 'refresh', 'args': {'vg': VG, 'lv': 'q'},
                      'from': CALLER, 'timeout': 60},
                     lease=routed.lease(CALLER))
        # The last one finds the caller's share of the queue full.
        reply = wait_for(lambda: etcd.get(keys.reply(CALLER, rids[-1])),
                         what='refusal').json()
        assert reply['error']['code'] == 'busy'
        assert 'per caller' in reply['error']['message']
    finally:
        gate.set()


def held_call(routed, lv, timeout):
    """A deactivate of ``lv`` from CALLER to TARGET, its handler held:
    (thread, [its result or exception], the gate that lets it go)."""
    gate = threading.Event()
    routed.handler.gates[lv] = gate
    caller = routed.router(CALLER)
    outcome = []

    def call():
        try:
            outcome.append(caller.call(TARGET, 'deactivate',
                                       {'vg': VG, 'lv': lv},
                                       timeout=timeout))
        except Exception as exc:
            outcome.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t, outcome, gate


def test_routed_call_reports_session_lost(routed):
    t, outcome, gate = held_call(routed, 'slow', 30)
    try:
        wait_for(lambda: len(routed.handler.calls) == 1,
                 what='request running')
        started = time.monotonic()
        # The caller's session expires (revoked: as if etcd expired it).
        routed.etcd.lease_revoke(routed.lease(CALLER))
        t.join(25)
        assert outcome, 'call still waiting'
        exc = outcome[0]
        assert isinstance(exc, errors.SessionLost), repr(exc)
        assert exc.to_dict()['code'] == 'session-lost'
        assert 'session of caller ended while waiting for deactivate' in \
            str(exc)
        assert time.monotonic() - started < 15
    finally:
        gate.set()
    # Its reply is never written: the caller's session is gone.
    wait_for(lambda: routed.server.scheduler.busy() == (0, 0),
             what='request done')
    replies, _ = routed.etcd.range(routed.keys.root + 'replies/',
                                   prefix=True)
    assert replies == []


def test_routed_call_reports_the_target_gone(routed, monkeypatch):
    """The target's session ends while it runs the request (its daemon
    died): the call fails naming that, without waiting for the safety
    rescan nor the call's timeout (both put out of reach here)."""
    monkeypatch.setattr(routing, 'RESCAN', 3600.0)
    t, outcome, gate = held_call(routed, 'held', 300)
    try:
        wait_for(lambda: len(routed.handler.calls) == 1,
                 what='request running')
        routed.etcd.lease_revoke(routed.lease(TARGET))
        t.join(120)
        assert outcome, 'call still waiting'
        exc = outcome[0]
        assert isinstance(exc, errors.HostUnavailable), repr(exc)
        assert f'host {TARGET} lost its session while running deactivate' \
            in str(exc)
    finally:
        gate.set()


def test_reply_after_the_caller_gave_up_does_not_stay(etcd_module):
    r = Routed(etcd_module.endpoints, reply_ttl=2)
    gate = threading.Event()
    r.handler.gates['late'] = gate
    try:
        with pytest.raises(errors.HostUnavailable, match='did not answer'):
            r.router(CALLER).call(TARGET, 'refresh',
                                  {'vg': VG, 'lv': 'late'}, timeout=1.5)
        gate.set()
        prefix = r.keys.root + 'replies/'
        # The late reply is written (the caller's session lives)...
        wait_for(lambda: r.etcd.range(prefix, prefix=True)[0],
                 what='late reply')
        # ...and goes away on its own.
        wait_for(lambda: not r.etcd.range(prefix, prefix=True)[0],
                 timeout=30, what='late reply expired')
    finally:
        gate.set()
        r.close()


def test_an_activate_admitted_again_keeps_its_first_admission_time(
        etcd_module):
    # Its grant and its claim both fail (etcd away for this target's
    # writes): the request stays. Admitted again once its caller's timeout
    # has passed since its first admission, it is claimed, not run.
    away = threading.Event()

    class Away(etcdlib.Etcd):
        def txn(self, compare, success, failure=()):
            if away.is_set():
                raise errors.EtcdUnavailable('etcd away (test)')
            return super().txn(compare, success, failure)

    r = Routed(etcd_module.endpoints)
    runs = []

    def handler(op, args):
        runs.append(op)
        # As ops.py: the grant carries the claim, here etcd is away.
        rider = routing.current_rider()
        rider.outcome(server.etcd.txn(*rider.carry([], [], [])))
        return {'ran': op}
    server = routing.Router(
        Away([u.geturl() for u in r.etcd.endpoints], timeout=2.0), r.keys,
        r.sessions[OTHER])
    serving = threading.Thread(target=server.serve, args=(handler, 2),
                               daemon=True)
    serving.start()
    try:
        wait_for(lambda: server.scheduler is not None, what='serving')
        away.set()
        key = r.keys.requests(OTHER) + uuid.uuid4().hex
        r.etcd.put(key, {'op': 'activate', 'from': CALLER, 'timeout': 3,
                         'args': {'vg': VG, 'lv': 'late'}},
                   lease=r.lease(CALLER))
        wait_for(lambda: runs, what='first run')
        first = next(t for (k, _), t in server._first_admitted.items()
                     if k == key)
        # Its caller has given up (3 s after its first admission). Until
        # then it may have run again (the watch and the first read both
        # saw it: its grant is still to apply, and its caller waits); from
        # then on it never does.
        time.sleep(max(0.0, first + 3.1 - time.monotonic()))
        wait_for(lambda: server.scheduler.busy() == (0, 0), what='idle')
        ran = len(runs)
        assert r.etcd.get(key) is not None
        # etcd is back; the request is seen again.
        away.clear()
        server._admit(handler, r.etcd.get(key))
        wait_for(lambda: r.etcd.get(key) is None, what='claimed unrun')
        wait_for(lambda: server.scheduler.busy() == (0, 0), what='done')
        assert len(runs) == ran
        assert r.etcd.get(r.keys.reply(CALLER, key.rsplit('/', 1)[1])) \
            is None
    finally:
        away.clear()
        server.stop()
        serving.join(30)
        r.close()
    assert not serving.is_alive()


def test_etcd_refusing_an_expired_lease_is_session_lost(etcd_module):
    """Not "Not Found": a write on a lease etcd no longer has, and a VG
    lock taken by a session that just expired, say session-lost."""
    etcd = etcdlib.Etcd(etcd_module.endpoints, timeout=2.0)
    keys = keyslib.Keys('/lvmcoord', f's{uuid.uuid4().hex[:6]}')
    session = sessionlib.Session(etcd, keys, 'h1', ttl=20).open()
    try:
        etcd.lease_revoke(session.id)
        with pytest.raises(errors.SessionLost, match='lease not found'):
            etcd.put(keys.root + 'x', 'v', lease=session.id)
        # Said by etcd, or by the session's own keepalive if its first
        # one came after the revoke (it runs as the session opens).
        with pytest.raises(errors.SessionLost,
                           match='lease not found|has expired'):
            vglock.VGLock(etcd, keys, session, 'vg0').acquire('lvcreate')
    finally:
        session.close()


def test_routed_request_delivered_again_does_not_run_again(routed):
    # etcd can apply a put after its client gave up and sent it again:
    # a straggler arriving after the target claimed (deleted) the request
    # must not queue it anew (coordinator/engine/once.py).
    sent = []

    class Recording(etcdlib.Etcd):
        def txn(self, compare, success, failure=()):
            sent.append((list(compare), list(success), list(failure)))
            return super().txn(compare, success, failure)

    etcd = Recording([u.geturl() for u in routed.etcd.endpoints],
                     timeout=2.0)
    caller = routing.Router(etcd, routed.keys, routed.sessions[CALLER])
    got = caller.call(TARGET, 'deactivate', {'vg': VG, 'lv': 'once'})
    assert got == {'ran': 'deactivate'}
    put = [t for t in sent if any('request_put' in op and
                                  '/requests/' in etcdlib.unb64(
                                      op['request_put']['key']).decode()
                                  for op in t[1])]
    assert len(put) == 1
    again = etcdlib.Etcd.txn(etcd, *put[0])
    assert not again.succeeded
    kvs, _ = routed.etcd.range(routed.keys.requests(TARGET), prefix=True)
    assert kvs == []
    assert [c for c in routed.handler.calls if c[1].get('lv') == 'once'] \
        == [('deactivate', {'vg': VG, 'lv': 'once'})]
