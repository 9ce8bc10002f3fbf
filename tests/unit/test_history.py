"""The etcd history mark: what counts as a rewound history, and how a
host adopts an operator's accept (coordinator.engine.history)."""
import json

from coordinator.engine import etcd as etcdlib
from coordinator.engine import history
from coordinator.engine import keys as keyslib

MARK = {'epoch': 'e1', 'generation': 0, 'revision': 40}


def test_a_host_without_a_mark_judges_nothing():
    assert history.judge({}, None, 1) is None


def test_each_sign_of_a_rewound_history_is_named():
    epoch = {'id': 'e1', 'generation': 0}
    assert history.judge(MARK, epoch, 40) is None
    assert history.judge(MARK, epoch, 41) is None
    assert 'no cluster epoch' in history.judge(MARK, None, 50)
    assert 'another etcd' in history.judge(MARK, dict(epoch, id='e2'), 50)
    assert 'revision 39, this host has seen revision 40' in \
        history.judge(MARK, epoch, 39)
    assert 'older than the generation 5' in history.judge(
        dict(MARK, generation=5), dict(epoch, generation=4), 50)
    flagged = dict(epoch, rewound={'by': 'h2', 'reason': 'x'})
    assert history.judge(MARK, flagged, 50) == \
        "h2 found etcd's history rewound: x"
    # A newer generation is an accepted restore: adopted, not judged.
    assert history.judge(MARK, dict(epoch, generation=1), 1) is None


def test_header_revision_of_every_answer_shape():
    assert history.header_revision({'header': {'revision': '7'}}) == 7
    assert history.header_revision(
        {'result': {'header': {'revision': '8'}}}) == 8
    assert history.header_revision(object()) == 0
    assert history.header_revision({}) == 0


class FakeEtcd:
    """Just the range and txn the history uses, on one revision counter."""

    def __init__(self):
        self.kv, self.revision = {}, 1

    def range(self, key):
        if key not in self.kv:
            return [], self.revision
        value, mod = self.kv[key]
        return [etcdlib.KV(key, value, mod, mod, 1, 0)], self.revision

    def put(self, key, value, lease=0):
        self.revision += 1
        self.kv[key] = (json.dumps(value), self.revision)
        return self.revision

    def txn(self, compare, success, failure=()):
        puts = []
        res = self._apply(compare, success, failure, puts)
        if puts:
            self.revision += 1
            for key, value in puts:
                self.kv[key] = (value, self.revision)
        return etcdlib.TxnResult(res.succeeded, self.revision, res.ranges,
                                 res.txns)

    def _apply(self, compare, success, failure, puts):
        ok = all(self._holds(cmp) for cmp in compare)
        ranges, txns = [], []
        for op in success if ok else failure:
            if 'request_range' in op:
                key = etcdlib.unb64(op['request_range']['key']).decode()
                ranges.append(self.range(key)[0])
            elif 'request_put' in op:
                put = op['request_put']
                puts.append((etcdlib.unb64(put['key']).decode(),
                             etcdlib.unb64(put['value']).decode()))
            elif 'request_txn' in op:
                t = op['request_txn']
                txns.append(self._apply(t['compare'], t['success'],
                                        t['failure'], puts))
        return etcdlib.TxnResult(ok, 0, ranges, txns)

    def _holds(self, cmp):
        key = etcdlib.unb64(cmp['key']).decode()
        have = self.kv.get(key, (None, 0))[1]
        want = cmp.get('mod_revision', cmp.get('create_revision'))
        return have < want if cmp['result'] == 'LESS' else have == want


def test_rewound_until_accepted_then_the_floor_holds(tmp_path):
    etcd, keys = FakeEtcd(), keyslib.Keys('/t', 'c')
    a = history.History(etcd, keys, 'h1', str(tmp_path / 'a'), 'c')
    b = history.History(etcd, keys, 'h2', str(tmp_path / 'b'), 'c')
    assert a.check() is None and b.check() is None  # the epoch is made
    etcd.revision += 10
    assert a.check() is None
    assert a.mark()['revision'] == etcd.revision
    # A restore: etcd's revision goes back below what h1 has seen.
    etcd.revision -= 5
    why = a.check()
    assert 'older backup' in why and a.rewound() == why
    # h2 has seen nothing newer: it learns it from the epoch h1 flagged.
    assert 'h1 found etcd\'s history rewound' in b.check()
    assert a.floor() == (why, 0)
    # The operator accepts: both adopt, grants before the floor are void.
    accepted = history.accept(etcd, keys, 'admin')
    assert a.check() is None and b.check() is None
    assert a.rewound() is None and b.rewound() is None
    assert a.floor() == (None, accepted['floor'])
    epoch = json.loads(etcd.kv[keys.epoch()][0])
    assert epoch['accepted']['rewound']['by'] == 'h1'
    assert 'rewound' not in epoch


class StaleRead(FakeEtcd):
    """A read answered below what was committed (seen around an etcd
    leader change); writes are where etcd really is."""

    stale = 0

    def range(self, key):
        kvs, revision = super().range(key)
        return kvs, revision - self.stale

    def txn(self, compare, success, failure=()):
        res = super().txn(compare, success, failure)
        if any('request_put' in op or 'request_txn' in op for op in success):
            return res  # a write: where etcd really is
        return etcdlib.TxnResult(res.succeeded, res.revision - self.stale,
                                 res.ranges, res.txns)


def test_a_stale_read_below_the_mark_is_no_restore(tmp_path):
    etcd, keys = StaleRead(), keyslib.Keys('/t', 'c')
    a = history.History(etcd, keys, 'h1', str(tmp_path / 'a'), 'c')
    assert a.check() is None
    etcd.revision += 10
    assert a.check() is None
    seen = a.mark()['revision']
    etcd.stale = 3
    assert a.check() is None and a.rewound() is None
    assert a.mark()['revision'] > seen  # the probe's write, committed
    # A real restore: the write too lands below the mark.
    etcd.stale, etcd.revision = 0, seen - 6
    assert 'older backup' in a.check()


def test_a_restore_is_found_after_etcd_has_moved_past_the_mark(tmp_path):
    # After a restore the other hosts' writes bring etcd's revision back
    # above this host's mark within seconds, and this host's own writes
    # come before its next check: the witness they left alone tells.
    etcd, keys = FakeEtcd(), keyslib.Keys('/t', 'c')
    a = history.History(etcd, keys, 'h1', str(tmp_path / 'a'), 'c')
    assert a.check() is None
    backup = (dict(etcd.kv), etcd.revision)
    stamped = etcd.txn([], [etcdlib.op_put('/t/c/grant', 'g'), a.stamp()])
    a.wrote(stamped.revision, below=stamped.txns[0].succeeded)
    assert a.mark()['witness'] == stamped.revision
    assert a.check() is None
    seen = a.mark()['revision']
    etcd.kv, etcd.revision = backup[0], backup[1] + 20  # restored, busy
    assert etcd.revision > seen
    again = etcd.txn([], [etcdlib.op_put('/t/c/grant', 'h'), a.stamp()])
    a.wrote(again.revision, below=again.txns[0].succeeded)
    assert again.txns[0].succeeded and a.suspect  # the evidence stays
    assert keys.history_witness('h1') not in etcd.kv
    why = a.check()
    assert why and 'its witness is at revision 0' in why
    assert a.rewound() == why


def test_a_stale_witness_read_is_no_restore(tmp_path):
    class StaleWitness(FakeEtcd):
        old = None

        def range(self, key):
            if self.old and key.endswith('history/h1'):
                return [etcdlib.KV(key, '', self.old, self.old, 1, 0)], \
                    self.revision
            return super().range(key)

        def _holds(self, cmp):
            old, self.old = self.old, None  # a write sees what is committed
            try:
                return super()._holds(cmp)
            finally:
                self.old = old

    etcd, keys = StaleWitness(), keyslib.Keys('/t', 'c')
    a = history.History(etcd, keys, 'h1', str(tmp_path / 'a'), 'c')
    assert a.check() is None
    for _ in range(2):
        res = etcd.txn([], [etcdlib.op_put('/t/c/x', 'x'), a.stamp()])
        a.wrote(res.revision, below=res.txns[0].succeeded)
    etcd.old = a.mark()['witness'] - 1  # a read answers the earlier write
    assert a.check() is None and a.rewound() is None


def test_a_stamp_in_one_process_makes_the_check_due_in_another(tmp_path):
    # The routing worker's write finds the witness older; the session
    # worker (its own History on the same mark) is the one that checks.
    etcd, keys = FakeEtcd(), keyslib.Keys('/t', 'c')
    session = history.History(etcd, keys, 'h1', str(tmp_path), 'c')
    routing = history.History(etcd, keys, 'h1', str(tmp_path), 'c')
    assert session.check() is None
    res = etcd.txn([], [etcdlib.op_put('/t/c/x', 'x'), routing.stamp()])
    routing.wrote(res.revision, below=res.txns[0].succeeded)
    assert not session.suspect
    backup = dict(etcd.kv)
    res = etcd.txn([], [etcdlib.op_put('/t/c/x', 'y'), routing.stamp()])
    routing.wrote(res.revision, below=res.txns[0].succeeded)
    etcd.kv = backup  # restored; the revision did not go back
    res = etcd.txn([], [etcdlib.op_put('/t/c/x', 'z'), routing.stamp()])
    routing.wrote(res.revision, below=res.txns[0].succeeded)
    assert res.txns[0].succeeded and session.suspect
    assert 'is not in etcd' in session.check()
    assert not session.suspect and not routing.suspect
