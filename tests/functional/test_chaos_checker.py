"""The chaos checker can fail: deliberate double-writable mappings (two
real loop devices over one LV's extents), unleased writable devices, and
stale writes and stamps are all reported; their legitimate look-alikes are
not. The SIMULATED watchdog resets a host that stops petting it, and a
grant elsewhere before that reset is reported."""
import errno
import json
import mmap
import os
import signal
import subprocess
import threading
import time

import pytest

from coordinator.activation import loop as looplib
from coordinator.daemon import grantbook
from coordinator.sandbox import watchdog
from coordinator.sandbox.chaos import history as historylib
from coordinator.sandbox.chaos import invariants
from coordinator.sandbox.chaos import writers as writerlib
from coordinator.sandbox.cluster import detach_stacked
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20


class FakeHistory:
    """The live lease table and grant log the checker would read."""

    def __init__(self, live=(), ledger=None):
        self.grants = []
        self.table = {}
        for vg, lv, host in live:
            entry = self.table.setdefault((vg, lv),
                                          {'ledger': {}, 'live': {}})
            entry['live'][host] = {}
            entry['ledger'][host] = (ledger or {}).get(host, {
                'mode': 'exclusive'})

    def leases(self):
        return self.table


class FakeWriter:
    """A writer's identity and log, without a process."""

    def __init__(self, host, uuid, token, instance, writes):
        self.host, self.uuid, self.token = host, uuid, token
        self.instance, self._writes = instance, writes

    def writes(self):
        return self._writes

    def describe(self):
        return {'host': self.host, 'token': self.token}


@pytest.fixture
def vg_with_lv(tmp_path):
    with SharedVG(hosts=1, size=256 * MiB) as shared:
        lvm = shared.hosts[0].lvm
        lvm.create_lv(shared.vg, 'vol', 8 * MiB)
        info = lvm.lv(shared.vg, 'vol')
        [pv] = lvm.pvs(shared.vg)
        ext = lvm.vg(shared.vg)['extent_size']
        _, first, last = info['pe_ranges'][0]
        offset = pv['pe_start'] + first * ext
        size = (last - first + 1) * ext
        try:
            yield shared, info['uuid'], offset, size, tmp_path
        finally:
            detach_stacked(shared.device)


def _map(shared, dev_dir, host, offset, size, read_only=False):
    """A loop device over the range, linked as ``host``'s vg/vol;
    ``read_only`` as the loop backend fences (blockdev --setro)."""
    loop = subprocess.run(
        ['losetup', '-f', '--show', '--offset', str(offset), '--sizelimit',
         str(size), shared.device],
        capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(['blockdev', '--setro' if read_only else '--setrw', loop],
                   check=True)
    link = os.path.join(dev_dir, host, shared.vg, 'vol')
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(loop, link)
    return loop


def _checker(shared, tmp_path, history, writers=()):
    dev_dirs = {h: str(tmp_path / h) for h in ('compute-1', 'compute-2')}
    return invariants.Checker(shared.device, shared.vg, dev_dirs, history,
                              invariants.NameBook(), lambda: list(writers))


def _kinds(checker):
    return sorted({v['kind'] for v in checker.violations()})


def test_two_writable_mappings_on_two_hosts_are_a_violation(vg_with_lv):
    shared, _, offset, size, tmp = vg_with_lv
    a = _map(shared, str(tmp), 'compute-1', offset, size)
    b = _map(shared, str(tmp), 'compute-2', offset + 4 * MiB, 4 * MiB)
    history = FakeHistory(live=[(shared.vg, 'vol', 'compute-1'),
                                (shared.vg, 'vol', 'compute-2')])
    checker = _checker(shared, tmp, history)
    checker.sample()
    [v] = checker.violations()
    assert v['kind'] == 'double-writable'
    assert sorted(v['loops']) == sorted([a, b])


def test_a_fenced_copy_or_a_migration_pair_is_not(vg_with_lv):
    shared, _, offset, size, tmp = vg_with_lv
    _map(shared, str(tmp), 'compute-1', offset, size)
    _map(shared, str(tmp), 'compute-2', offset, size, read_only=True)
    live = [(shared.vg, 'vol', 'compute-1'), (shared.vg, 'vol', 'compute-2')]
    checker = _checker(shared, tmp, FakeHistory(live=live))
    checker.sample()
    assert checker.violations() == []
    subprocess.run(['blockdev', '--setrw', os.path.realpath(
        tmp / 'compute-2' / shared.vg / 'vol')], check=True)
    pair = {h: {'mode': 'migration', 'instance': 'vm-1'}
            for h in ('compute-1', 'compute-2')}
    checker = _checker(shared, tmp, FakeHistory(live=live, ledger=pair))
    checker.sample()
    assert checker.violations() == []
    # Two instances in "migration" are no migration pair.
    pair['compute-2']['instance'] = 'vm-2'
    checker.sample()
    assert _kinds(checker) == ['double-writable']


def test_a_writable_device_without_a_live_lease_is_a_violation(vg_with_lv):
    shared, _, offset, size, tmp = vg_with_lv
    _map(shared, str(tmp), 'compute-1', offset, size)
    checker = _checker(shared, tmp, FakeHistory())
    checker.sample()
    assert checker.violations() == []  # one sample may be our own race
    checker.sample()
    assert _kinds(checker) == ['writable-without-lease']


def _history(shared, uuid, rows):
    """(FakeHistory with _grants(rows) as of now, now)."""
    now = time.time()
    history = FakeHistory()
    history.grants = _grants(shared, uuid, now, rows)
    return history, now


def _grants(shared, uuid, now, rows):
    """Grants of LV 'vol' from rows of (host, token, seconds ago, mode,
    instance)."""
    return [historylib.Grant(shared.vg, 'vol', host, token, now - ago, mode,
                             instance, uuid)
            for host, token, ago, mode, instance in rows]


def test_stale_writes_and_stamps_are_violations(vg_with_lv):
    shared, uuid, offset, size, tmp = vg_with_lv
    history, now = _history(shared, uuid, [
        ('compute-1', 10, 60, 'exclusive', 'vm-1'),
        ('compute-2', 20, 30, 'exclusive', 'vm-2')])
    old = FakeWriter('compute-1', uuid, 10, 'vm-1', [
        (1, now - 50, now - 50, 'ok'), (2, now - 29, now - 29, 'EROFS'),
        (3, now - 20, now - 20, 'ok')])
    new = FakeWriter('compute-2', uuid, 20, 'vm-2', [
        (1, now - 10, now - 10, 'ok')])
    checker = _checker(shared, tmp, history, [old, new])
    checker.check_writes()
    [v] = checker.violations()
    assert (v['kind'], v['writes']) == ('stale-write-acked', 1)
    # On disk: compute-1's stamp issued after compute-2's grant.
    buf = mmap.mmap(-1, writerlib.BLOCK)
    fd = os.open(shared.device, os.O_RDWR | os.O_DIRECT)
    try:
        buf[:] = writerlib.stamp('compute-2', uuid, 20, 1, now - 10)
        os.pwrite(fd, buf, offset)
        buf[:] = writerlib.stamp('compute-1', uuid, 10, 3, now - 20)
        os.pwrite(fd, buf, offset + writerlib.BLOCK)
    finally:
        os.close(fd)
    [pv] = shared.hosts[0].lvm.pvs(shared.vg)
    ext = shared.hosts[0].lvm.vg(shared.vg)['extent_size']
    checker.scan_disk(ext, pv['pe_start'], (offset - pv['pe_start']) //
                      ext + 1)
    stale = [v for v in checker.violations()
             if v['kind'] == 'stale-block-on-disk']
    assert [(v['stamp']['h'], v['at_byte']) for v in stale] == \
        [('compute-1', offset + writerlib.BLOCK)]


def test_a_grant_carried_over_to_a_new_session_is_not_a_new_grant(
        vg_with_lv):
    # compute-2 holds vm-1 (token 10), compute-1 its migration target
    # (token 12) writes; compute-2's daemon restarts and carries its grant
    # over (token 30, same holder, instance and since): compute-1's writes
    # are no stale writes. A grant to compute-2 for another instance is.
    shared, uuid, _, _, tmp = vg_with_lv
    history, now = _history(shared, uuid, [
        ('compute-2', 10, 60, 'exclusive', 'vm-1'),
        ('compute-1', 12, 59, 'migration', 'vm-1'),
        ('compute-2', 30, 60, 'exclusive', 'vm-1')])
    target = FakeWriter('compute-1', uuid, 12, 'vm-1', [
        (1, now - 50, now - 50, 'ok'), (2, now - 40, now - 40, 'ok')])
    checker = _checker(shared, tmp, history, [target])
    checker.check_writes()
    assert checker.violations() == []
    history.grants += _grants(shared, uuid, now, [
        ('compute-2', 40, 45, 'exclusive', 'vm-2')])
    checker.check_writes()
    [v] = checker.violations()
    assert (v['kind'], v['writes'], v['grant']['token']) == \
        ('stale-write-acked', 1, 40)


def test_a_grant_brought_back_after_a_takeover_is_a_new_grant(vg_with_lv):
    # compute-2 held vm-1 (token 10); compute-1 took the LV over (token
    # 20) and writes; compute-2's grant comes back (token 30, its old
    # holder, instance and since): a split brain, not a continuation.
    shared, uuid, _, _, tmp = vg_with_lv
    history, now = _history(shared, uuid, [
        ('compute-2', 10, 60, 'exclusive', 'vm-1'),
        ('compute-1', 20, 50, 'exclusive', 'vm-2'),
        ('compute-2', 30, 60, 'exclusive', 'vm-1')])
    taker = FakeWriter('compute-1', uuid, 20, 'vm-2', [
        (1, now - 40, now - 40, 'ok')])
    checker = _checker(shared, tmp, history, [taker])
    checker.check_writes()
    [v] = checker.violations()
    assert (v['kind'], v['grant']['token']) == ('stale-write-acked', 30)


class FakeDaemon:
    """What the SIMULATED watchdog needs of a sandbox daemon."""

    def __init__(self, root, host):
        self.host = host
        self.state_dir = str(root / 'state')
        self.dev_dir = str(root / 'dev' / host)
        os.makedirs(self.state_dir)
        self.watchdog_file = str(root / 'watchdog-SIMULATED')
        open(self.watchdog_file, 'ab').close()
        self.proc = subprocess.Popen(['sleep', '600'],
                                     start_new_session=True)


def _pet(daemon, byte=b'.'):
    with open(daemon.watchdog_file, 'ab') as f:
        f.write(byte)


def test_simulated_watchdog_resets_a_host_that_stops_petting(vg_with_lv):
    shared, uuid, offset, size, tmp = vg_with_lv
    daemon = FakeDaemon(tmp, 'compute-1')
    loop = _map(shared, str(tmp / 'dev'), 'compute-1', offset, size)
    looplib._status(loop, lambda info: info.__setitem__(
        looplib._FILE_NAME, b'lvmcoord:test'))
    with open(os.path.join(daemon.state_dir, 'loop-devices.json'), 'w') as f:
        json.dump({f'{shared.vg}/vol': {
            'loop': loop, 'offset': offset, 'tag': 'lvmcoord:test',
            'uuid': uuid}}, f)
    grantbook.GrantBook(daemon.state_dir, 'sandbox').put(shared.vg, 'vol',
                                                       token=10)
    vm = os.open(loop, os.O_RDWR | os.O_DIRECT)  # a VM's open descriptor
    buf = mmap.mmap(-1, writerlib.BLOCK)
    dog = watchdog.SimulatedWatchdog(daemon, timeout=1)
    killed, done = [], threading.Event()
    dog.on_reset.append(killed.append)
    dog.after_reset.append(lambda host: done.set())
    dog.start()
    try:
        # Petted, then disarmed by the magic close: no reset.
        for _ in range(6):
            _pet(daemon)
            time.sleep(0.3)  # the pet cadence, nothing to wait for
        _pet(daemon, b'V')
        assert not done.wait(1.5)
        assert daemon.proc.poll() is None
        os.pwrite(vm, buf, 0)
        # Armed, and no pet for longer than the timeout: reset.
        _pet(daemon)
        assert done.wait(10)
    finally:
        dog.stop()
    [r] = dog.resets
    assert killed == ['compute-1']
    assert r.at - r.last_pet > 1
    assert daemon.proc.poll() == -signal.SIGKILL
    with pytest.raises(OSError) as exc:
        os.pwrite(vm, buf, 0)
    assert exc.value.errno in (errno.EROFS, errno.EPERM, errno.EIO)
    os.close(vm)
    assert not os.path.lexists(os.path.join(daemon.dev_dir, shared.vg, 'vol'))
    assert [(d['loop'], d['writable'], d['token']) for d in r.devices] == \
        [(loop, True, 10)]
    # Granted elsewhere before the reset: the watchdog came too late.
    history = FakeHistory()
    history.grants = [
        historylib.Grant(shared.vg, 'vol', 'compute-1', 10, r.at - 30,
                         'exclusive', 'vm-1', uuid),
        historylib.Grant(shared.vg, 'vol', 'compute-2', 20, r.at + 1,
                         'exclusive', 'vm-2', uuid)]
    checker = _checker(shared, tmp, history)
    checker.check_resets([r])
    assert checker.violations() == []
    history.grants[1].since = r.at - 0.5
    checker.check_resets([r])
    [v] = checker.violations()
    assert (v['kind'], v['host'], v['token']) == \
        ('grant-before-reset', 'compute-1', 10)


def test_a_writable_device_of_an_unarmed_watchdog_is_a_violation(vg_with_lv):
    shared, _, offset, size, tmp = vg_with_lv
    _map(shared, str(tmp), 'compute-1', offset, size)
    dog = watchdog.SimulatedWatchdog.__new__(watchdog.SimulatedWatchdog)
    dog.armed, dog.timeout = True, 0
    history = FakeHistory(live=[(shared.vg, 'vol', 'compute-1')])
    checker = invariants.Checker(
        shared.device, shared.vg, {'compute-1': str(tmp / 'compute-1')},
        history, invariants.NameBook(), lambda: [], {'compute-1': dog})
    checker.sample()
    checker.sample()
    assert checker.violations() == []
    dog.armed = False
    checker.sample()
    checker.sample()
    assert _kinds(checker) == ['writable-unwatched']
