"""Reconcile at start: a grant restored after a reboot is made into a
device only once the watchdog is armed for it. Real grant book, fakes for
etcd, LVM and the backend."""
import types

from coordinator import errors
from coordinator.daemon import grantbook
from coordinator.daemon import reconcile

KEY = ('vg', 'a')


class Fencer:
    def __init__(self, can_arm):
        self.can_arm = can_arm
        self.fenced = []

    def fence_existing(self, keys, why):
        self.fenced += keys

    def arm(self):
        return self.can_arm


class Backend:
    def __init__(self):
        self.made, self.admitted, self.suspended = [], [], []

    def active(self):
        return {}

    def activate(self, vg, lv, read_only, info):
        self.made.append(lv)
        return f'/dev/{vg}/{lv}'

    def admit(self, vg, lv):
        assert self.made[-1] == lv   # what was just made, nothing else
        self.admitted.append(lv)

    def suspend(self, vg, lv):
        self.suspended.append(lv)

    def tidy(self):
        pass


class Leases:
    session = types.SimpleNamespace(host='h1')

    def __init__(self):
        self.released = []

    def rebind(self, vg, lv, token, uuid):
        return types.SimpleNamespace(token=token, session='s2',
                                     instance='vm-1', host='h1')

    def holders(self, vg, lv):
        return [self.rebind(vg, lv, 5, 'U')] if not self.released else []

    def release(self, vg, lv):
        self.released.append(lv)


def run(tmp_path, can_arm, **record):
    book = grantbook.GrantBook(str(tmp_path))
    book.put(*KEY, state=grantbook.ACTIVE, token=5, uuid='U', **record)
    lvm = types.SimpleNamespace(lvs=lambda vg: [{'uuid': 'U', 'name': 'a'}])
    backend, leases, events = Backend(), Leases(), []
    reconcile.at_start(leases, lvm, backend, book, Fencer(can_arm),
                       lambda kind, **kw: events.append(kind))
    return book, backend, leases, events


def test_restored_once_the_watchdog_is_armed(tmp_path):
    book, backend, leases, events = run(tmp_path, can_arm=True)
    assert backend.made == ['a']
    assert events == ['restored']
    assert book.get(*KEY)['state'] == grantbook.ACTIVE


def test_a_fence_mark_from_before_the_restart_does_not_stop_a_restore(
        tmp_path):
    # Fenced, then rebooted: the grant proven ours again (rebind), the
    # restored device takes writes; nothing is left to prove the mark.
    book, backend, leases, events = run(tmp_path, can_arm=True,
                                        fenced=True)
    assert events == ['restored']
    assert backend.admitted == ['a'] and backend.suspended == []
    assert 'fenced' not in book.get(*KEY)


def test_a_failed_restore_leaves_no_fence_mark_behind(tmp_path):
    # Not restored now (etcd not reachable yet): a later activation makes
    # the device, and a mark kept from before would stop it for good.
    book = grantbook.GrantBook(str(tmp_path))
    book.put(*KEY, state=grantbook.ACTIVE, token=5, uuid='U', fenced=True)
    leases, events = Leases(), []

    def unreachable(*args):
        raise errors.EtcdUnavailable('no answer')
    leases.rebind = unreachable
    lvm = types.SimpleNamespace(lvs=lambda vg: [{'uuid': 'U', 'name': 'a'}])
    reconcile.at_start(leases, lvm, Backend(), book, Fencer(True),
                       lambda kind, **kw: events.append(kind))
    assert events == ['reconcile-failed']
    assert 'fenced' not in book.get(*KEY)


def test_not_restored_unwatched(tmp_path):
    book, backend, leases, events = run(tmp_path, can_arm=False)
    assert backend.made == []
    assert events == ['restore-failed']
    assert book.get(*KEY) is None
    assert leases.released == ['a']


def holder(token, since):
    return types.SimpleNamespace(token=token, since=since, host='h1',
                                 session='s1', instance=None, alive=True)


def test_grant_never_recorded_before_start_is_released(tmp_path):
    # Killed between the grant and its record: nobody was told it worked.
    book = grantbook.GrantBook(str(tmp_path))
    book.put('vg', 'kept', state=grantbook.ACTIVE, token=1, uuid='K')
    leases, events = Leases(), []
    leases.mine = lambda: [('vg', 'orphan', holder(2, since=90.0)),
                           ('vg', 'kept', holder(1, since=80.0)),
                           ('vg', 'new', holder(3, since=100.5))]
    leases.rebind = lambda vg, lv, token, uuid: holder(token, 80.0)
    lvm = types.SimpleNamespace(lvs=lambda vg: [{'uuid': 'K',
                                                 'name': 'kept'}])
    reconcile.at_start(leases, lvm, Backend(), book, Fencer(True),
                       lambda kind, **kw: events.append((kind, kw['lv'])),
                       started=100.0)
    # The orphan goes; the recorded one is restored; one granted after
    # this start belongs to an activation still recording itself.
    assert leases.released == ['orphan']
    assert ('reconciled', 'orphan') in events
    assert ('restored', 'kept') in events
