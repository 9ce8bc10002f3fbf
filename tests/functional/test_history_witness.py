"""The history witness against a real etcd: each write of a host stamps
its witness in the same txn; after `etcdctl snapshot restore`, writes
that bring etcd's revision back past the host's mark leave the older
witness alone, and the host's check names the restore
(coordinator.engine.history)."""
from coordinator.engine import etcd as etcdlib
from coordinator.engine import history
from coordinator.engine import keys as keyslib


def host_history(etcd_server, tmp_path, host='h1'):
    etcd = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0,
                        retry_window=20.0)
    keys = keyslib.Keys('/lvmcoord', 'witness')
    mark = history.History(etcd, keys, host, str(tmp_path / host),
                           'witness')
    etcd.witness = mark
    return etcd, keys, mark


def witness_at(etcd, keys, host='h1'):
    kv = etcd.get(keys.history_witness(host))
    return kv.mod_revision if kv else 0


def test_every_kind_of_write_stamps_the_witness(etcd_server, tmp_path):
    etcd, keys, mark = host_history(etcd_server, tmp_path)
    assert mark.check() is None
    for write in (lambda: etcd.put('/lvmcoord/witness/a', 'x'),
                  lambda: etcd.txn([], [etcdlib.op_put('/lvmcoord/witness/b',
                                                       'y')]).revision,
                  lambda: etcd.delete('/lvmcoord/witness/a')):
        before = witness_at(etcd, keys)
        write()
        after = witness_at(etcd, keys)
        assert after > before
        assert mark.mark()['witness'] == after
    # A read stamps nothing; a txn whose compare fails writes nothing.
    before = witness_at(etcd, keys)
    etcd.range('/lvmcoord/witness/', prefix=True)
    res = etcd.txn([etcdlib.cmp_create('/lvmcoord/witness/b', 0)],
                   [etcdlib.op_put('/lvmcoord/witness/b', 'z')])
    assert not res.succeeded
    assert witness_at(etcd, keys) == before
    # Another host's writes move their own witness, not this one.
    other, _, theirs = host_history(etcd_server, tmp_path, 'h2')
    assert theirs.check() is None
    other.put('/lvmcoord/witness/c', 'w')
    assert witness_at(etcd, keys) == before
    assert mark.check() is None


def test_a_restore_is_found_after_the_revision_caught_up(etcd_server,
                                                         tmp_path):
    etcd, keys, mark = host_history(etcd_server, tmp_path)
    assert mark.check() is None
    etcd.put('/lvmcoord/witness/grant', 'before')
    backup = etcd_server.snapshot(str(tmp_path / 'backup.db'))
    etcd.put('/lvmcoord/witness/grant', 'takeover')  # lost by the restore
    lost = mark.mark()['witness']
    etcd_server.restore(backup)

    # Writes of other hosts bring etcd past everything this host has seen;
    # this host writes too before it checks.
    plain = etcdlib.Etcd(etcd_server.endpoints, timeout=2.0)
    for i in range(2 * (lost - witness_at(plain, keys)) + 2):
        plain.put(f'/lvmcoord/witness/other/{i}', 'x')
    etcd.put('/lvmcoord/witness/grant', 'after the restore')
    _, revision = plain.range('/lvmcoord/witness/grant')
    assert revision > mark.mark()['revision']
    assert witness_at(plain, keys) < lost  # left alone by the stamp

    why = mark.check()
    assert why and f'write at revision {lost} is not in etcd' in why
    assert mark.rewound() == why
    # Every other host learns it from the epoch.
    _, _, theirs = host_history(etcd_server, tmp_path, 'h2')
    assert 'h1 found etcd\'s history rewound' in (theirs.check() or '')
