"""Reconcile at start: a grant restored after a reboot is made into a
device only once the watchdog is armed for it; an activation in flight
while it runs keeps its grant, whatever the wall clock does. Real grant
book, fakes for etcd, LVM and the backend."""
import inspect
import threading
import time
import types

import pytest

from coordinator import errors
from coordinator.daemon import grantbook
from coordinator.daemon import ops as opsmod
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

    def mine(self):
        return []


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
                                 session='s1', instance=None, alive=True,
                                 mode='exclusive')


def test_grant_never_recorded_is_released(tmp_path):
    # Killed between the grant and its record: nobody was told it worked.
    book = grantbook.GrantBook(str(tmp_path))
    book.put('vg', 'kept', state=grantbook.ACTIVE, token=1, uuid='K')
    leases, events = Leases(), []
    leases.mine = lambda: [('vg', 'orphan', holder(2, since=90.0)),
                           ('vg', 'kept', holder(1, since=80.0))]
    leases.rebind = lambda vg, lv, token, uuid: holder(token, 80.0)
    lvm = types.SimpleNamespace(lvs=lambda vg: [{'uuid': 'K',
                                                 'name': 'kept'}])
    reconcile.at_start(leases, lvm, Backend(), book, Fencer(True),
                       lambda kind, **kw: events.append((kind, kw['lv'])))
    # The orphan goes; the recorded one is restored.
    assert leases.released == ['orphan']
    assert ('reconciled', 'orphan') in events
    assert ('restored', 'kept') in events


# -- activations in flight while reconcile runs (issue 22 item 6) --

PLAIN = {'name': 'b', 'uuid': 'UB', 'origin': '', 'tags': [],
         'has_snapshots': False, 'merging': ''}


class Ledger:
    """etcd's grants of this host, as leases (claim_with) and reconcile
    (mine, holders, release) see them; ``since``: the wall clock a grant
    is stamped with (stepped back in a test)."""

    session = types.SimpleNamespace(host='h1')

    def __init__(self, since):
        self.granted, self.since = {}, since
        self.reads = []             # hooks, called on every read

    def claim_with(self, reads, vg, lv, mode, instance, wait, rider=None):
        self.granted[(vg, lv)] = holder(9, since=self.since)
        return self.granted[(vg, lv)], True, None

    def _read(self):
        for hook in self.reads:
            hook()

    def mine(self):
        self._read()
        return [(vg, lv, h) for (vg, lv), h in self.granted.items()]

    def holders(self, vg, lv):
        self._read()
        return [self.granted[(vg, lv)]] if (vg, lv) in self.granted else []

    def release(self, vg, lv, **kw):
        return self.granted.pop((vg, lv), None) is not None

    def rebind(self, vg, lv, token, uuid):
        mine = self.granted.get((vg, lv))
        return mine if mine and mine.token == token else None


class Devices(Backend):
    """Devices made by the activation, writable once admitted."""

    def __init__(self, pause=lambda point: None):
        super().__init__()
        self.devices, self.pause = {}, pause

    def active(self):
        return dict(self.devices)

    def activate(self, vg, lv, read_only, info, **kw):
        # Recorded, its device not made yet: where it may wait.
        self.pause('recorded')
        self.devices[(vg, lv)] = {'path': f'/dev/{vg}/{lv}'}
        return super().activate(vg, lv, read_only, info)

    def retire(self, vg, lv):
        self.devices.pop((vg, lv), None)


class Ops(opsmod.Operations):
    """op_activate on the real book; etcd, LVM and checks faked."""

    def __init__(self, book, leases, backend, pause):
        self.host, self.vgs, self.book = 'h1', {'vg'}, book
        self.leases, self.backend, self.pause = leases, backend, pause
        self.guard = types.SimpleNamespace(
            recorded_reads=lambda vg: [],
            recorded_from=lambda recorded: (None, None))
        self.events = lambda kind, **kw: None
        self.fencer_alive = self.readiness = lambda: None
        self.fencer_id = lambda: 'fencer-1'
        self.readiness = lambda: {}
        self.watchdog_armed = None

    def _lv_info(self, vg, lv, reread=True):
        # Past the grant, before the record: where it waits.
        self.pause('granted')
        return dict(PLAIN)


def race(tmp_path, where, since=None, started=None):
    """An activation of vg/b granted before reconcile began (served on an
    earlier beat), held at ``where`` ('granted': before its record,
    'recorded': before its device) until reconcile has taken its look: at
    the gate if it waits for it, else once it reads etcd.
    Returns (book, ledger, devices, activation's outcome)."""
    book = grantbook.GrantBook(str(tmp_path))
    leases = Ledger(since if since is not None else time.time())
    go, waiting, outcome = threading.Event(), threading.Event(), {}

    def pause(point):
        if point == where:
            waiting.set()
            assert go.wait(30), 'reconcile never looked'
    backend = Devices(pause)

    def activate():
        try:
            outcome['got'] = Ops(book, leases, backend, pause).op_activate(
                'vg', 'b', instance='vm-1')
        except errors.CoordError as exc:
            outcome['error'] = exc
    t = threading.Thread(target=activate)
    t.start()
    assert waiting.wait(30)

    def looked():
        # Reconcile has read what it decides on: the activation goes on,
        # and ends before reconcile acts on that read.
        if not go.is_set():
            go.set()
            t.join(30)
    leases.reads.append(looked)
    gate = getattr(book, 'quiesce', None)
    if gate:
        def quiesce(wait):
            go.set()
            return gate(wait)
        book.quiesce = quiesce
    lvm = types.SimpleNamespace(lvs=lambda vg: [dict(PLAIN)])
    # ``started``: the daemon's wall-clock start, which today's main
    # compared with grant times (passed where at_start still takes it).
    kw = {'started': started} if 'started' in inspect.signature(
        reconcile.at_start).parameters else {}
    reconcile.at_start(leases, lvm, backend, book, Fencer(True),
                       lambda kind, **kw: None, **kw)
    go.set()
    t.join(30)
    return book, leases, backend, outcome


def consistent(book, leases, backend, outcome):
    """Never a device without a grant: either the activation worked and
    keeps its grant, record and device, or it failed and left none."""
    key = ('vg', 'b')
    if 'got' in outcome:
        assert key in leases.granted, 'the activation lost its grant'
        assert book.get(*key)['state'] == grantbook.ACTIVE
        assert key in backend.devices
    else:
        assert key not in backend.devices, 'a device without its grant'
        assert key not in leases.granted


def test_an_activation_completing_during_reconcile_keeps_its_grant(
        tmp_path):
    # Recorded 'activating' when reconcile looked, made right after.
    book, leases, backend, outcome = race(tmp_path, 'recorded')
    consistent(book, leases, backend, outcome)
    assert 'got' in outcome


def test_a_backward_clock_step_releases_no_grant_in_flight(tmp_path):
    # Granted after this daemon started, the wall clock stepped back an
    # hour in between: its grant time is before the start.
    now = time.time()
    book, leases, backend, outcome = race(tmp_path, 'granted',
                                          since=now - 3600, started=now)
    consistent(book, leases, backend, outcome)
    assert 'got' in outcome


def test_a_fencer_restarted_since_the_grant_refuses_the_device(tmp_path):
    # The fencer was restarted (and reconciled) between the grant and its
    # record: the grant may be gone; no device is made on it.
    book, leases, backend = grantbook.GrantBook(str(tmp_path)), \
        Ledger(time.time()), Devices()
    fencers = iter(['fencer-1', 'fencer-2'])
    ops = Ops(book, leases, backend, lambda point: None)
    ops.fencer_id = lambda: next(fencers, 'fencer-2')
    with pytest.raises(errors.HostUnavailable, match='fencer restarted'):
        ops.op_activate('vg', 'b', instance='vm-1')
    assert backend.devices == {} and leases.granted == {}
    assert book.get('vg', 'b') is None


def test_an_activation_at_start_waits_for_the_fencers_reconcile(tmp_path):
    # Asked of a daemon just started: served once its own fencer has
    # beaten after reconcile, not refused before, not served on the
    # previous run's beat.
    book, leases, backend = grantbook.GrantBook(str(tmp_path)), \
        Ledger(time.time()), Devices()
    problems = iter([opsmod.FENCER_STARTING] * 3)
    ops = Ops(book, leases, backend, lambda point: None)
    ops.fencer_alive = lambda: next(problems, None)
    got = ops.op_activate('vg', 'b', instance='vm-1')
    assert got['path'] == '/dev/vg/b'
    assert next(problems, 'done') == 'done'    # it asked until served
