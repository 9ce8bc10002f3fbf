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
        key = etcdlib.unb64(compare[0]['key']).decode()
        have = self.kv.get(key, (None, 0))[1]
        want = compare[0].get('mod_revision', compare[0].get(
            'create_revision'))
        ok = have == want
        if ok:
            self.revision += 1
            put = success[0]['request_put']
            self.kv[key] = (etcdlib.unb64(put['value']).decode(),
                            self.revision)
        return etcdlib.TxnResult(ok, self.revision, [])


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
