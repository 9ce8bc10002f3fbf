"""DeviceGuard: an LVM command that can resume or reload a device runs
only under this host's lease, on a live device, under the book's lock."""
import threading

import pytest

from coordinator import errors
from coordinator.daemon import devguard
from coordinator.daemon import grantbook
from coordinator.engine import modes

SESSION = 0x51


class Leases:
    def __init__(self, holders=()):
        self.list = list(holders)

    def holders(self, vg, lv):
        return list(self.list)


class Session:
    id = SESSION


class Backend:
    def __init__(self, state='live'):
        self.state = state

    def device_state(self, vg, lv):
        return self.state


def mine(**kw):
    return modes.Holder(**dict(dict(host='g2', mode='exclusive', token=7,
                                    session=SESSION), **kw))


def guard(tmp_path, holders=None, state='live', record=True,
          problem=None, rec_state=grantbook.ACTIVE, **rec):
    holders = (mine(),) if holders is None else holders
    book = grantbook.GrantBook(str(tmp_path))
    if record:
        book.put('vg', 'vol', **dict(dict(state=rec_state, token=7,
                                          uuid='u'), **rec))
    return devguard.DeviceGuard('g2', Leases(holders), Session(),
                                Backend(state), book, lambda: problem)


def run(g, what='refresh'):
    ran = []
    with g.command('vg', 'vol', what):
        ran.append(True)
    return ran


@pytest.mark.parametrize('holders,match', [
    ((), 'does not hold its lease'),
    ((modes.Holder(host='g3', mode='exclusive', token=9),),
     r'does not hold its lease \(held by g3'),
    ((mine(alive=False),), 'ended session'),
    ((mine(broken=True, alive=False),), 'broken'),
    ((mine(session=0x40),), 'bound to session 40'),
])
def test_no_command_without_this_hosts_lease(tmp_path, holders, match):
    g = guard(tmp_path, holders)
    with pytest.raises(errors.LeaseConflict, match=match):
        run(g)


@pytest.mark.parametrize('state,rec,match', [
    ('suspended', {}, r'fenced \(suspended\)'),
    ('retired', {}, r'retired \(error target\)'),
    ('live', {'fenced': True}, 'its grant is fenced'),
    ('live', {'rec_state': grantbook.ACTIVATING}, 'still activating'),
])
def test_no_command_on_a_fenced_or_retired_device(tmp_path, state, rec,
                                                  match):
    g = guard(tmp_path, state=state, **rec)
    with pytest.raises(errors.LVMError, match=match) as exc:
        run(g)
    assert exc.value.kind == 'fenced'


def test_no_command_on_a_device_of_another_grant(tmp_path):
    g = guard(tmp_path, token=5)
    with pytest.raises(errors.LeaseConflict, match='token 5'):
        run(g)


def test_no_command_while_the_fencer_is_not_fine(tmp_path):
    g = guard(tmp_path, problem='its fencer has fenced (state fenced)')
    with pytest.raises(errors.HostUnavailable, match='fencer has fenced'):
        run(g)


def test_a_device_here_without_a_record_is_refused(tmp_path):
    # e.g. a retired device still open, left from an earlier grant.
    g = guard(tmp_path, record=False, state='retired')
    with pytest.raises(errors.LVMError, match='not one this host made'):
        run(g)
    # No device and no record: nothing to resume; the command may run.
    assert run(guard(tmp_path / 'x', record=False, state=None)) == [True]


def test_the_command_runs_under_the_books_lock_and_bumps_its_count(
        tmp_path):
    g = guard(tmp_path)
    seen = []

    def fencer_look():
        # What the fencer's mark would do meanwhile: wait MARK_WAIT.
        with g.book.locked(wait=0) as got:
            seen.append(got)
    with g.command('vg', 'vol', 'refresh'):
        t = threading.Thread(target=fencer_look)
        t.start()
        t.join()
    assert seen == [False]
    assert g.book.get('vg', 'vol')['commands'] == 1
    # A failed command is counted too: it may have resumed the device.
    with pytest.raises(RuntimeError):
        with g.command('vg', 'vol', 'refresh'):
            raise RuntimeError('lvchange failed')
    assert g.book.get('vg', 'vol')['commands'] == 2


def test_the_lease_is_read_before_the_lock(tmp_path):
    # etcd may be slow when the fencer must act: never under its lock.
    g = guard(tmp_path)
    locked = []
    real = g.leases.holders

    def holders(vg, lv):
        with g.book.locked(wait=0) as got:
            locked.append(not got)
        return real(vg, lv)
    g.leases.holders = holders
    run(g)
    assert locked == [False]


def test_a_busy_book_is_a_clear_error(tmp_path):
    g = guard(tmp_path)
    g.lock_wait = 0.05
    held, done = threading.Event(), threading.Event()

    def hold():
        with g.book.locked():
            held.set()
            done.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(errors.Busy, match='stayed locked'):
            run(g)
    finally:
        done.set()
        t.join()


def test_absent_and_check_making(tmp_path):
    g = guard(tmp_path, state='retired')
    with pytest.raises(errors.LVMError, match='active nowhere'):
        g.absent('vg', 'vol', 'lvremove vg/snap')
    with pytest.raises(errors.LVMError, match='being made'):
        g.check_making('vg', 'vol', 'merge')
    g = guard(tmp_path / 'm', state='live', fenced=True)
    with pytest.raises(errors.LVMError, match='being made'):
        g.check_making('vg', 'vol', 'merge')
    guard(tmp_path / 'n', state=None).absent('vg', 'vol', 'x')
