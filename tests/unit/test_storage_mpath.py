"""Writes an older incarnation left queued in a multipath map never go
out under a new key: the map and its sysfs are fakes that behave as
dm-multipath does (queue_if_no_path holds a request while no path is
up; fail_if_no_path fails what it holds then; a path back sends it),
the LU is test_storage's FakeLU (tgtd's PR rules)."""
import types

import pytest

from coordinator.storage import base
from coordinator.storage import fence
from coordinator.storage import mpath
from coordinator.storage import scsi_pr
from tests.unit.test_storage import FakeLU

TABLE = '0 1048576 multipath {features} 0 1 1 round-robin 0 2 1 8:0 1 8:16 1'


class FakeMap:
    """/sys/block/dm-0 (uuid mpath-..., name mplu) over sda and sdb."""

    def __init__(self, root, lu, initiator, queue=True):
        self.root, self.lu, self.ini = root, lu, initiator
        self.queue = queue
        self.paths_up = False
        self.held = []          # writes queued, no path up
        self.landed, self.failed = [], []
        self.calls = []
        block = root / 'sys' / 'block'
        (block / 'dm-0' / 'slaves').mkdir(parents=True)
        (block / 'dm-0' / 'dm').mkdir()
        (block / 'dm-0' / 'dm' / 'uuid').write_text('mpath-36001405abc\n')
        (block / 'dm-0' / 'dm' / 'name').write_text('mplu\n')
        for s in ('sda', 'sdb'):
            (block / 'dm-0' / 'slaves' / s).touch()
        (root / 'dev').mkdir()
        (root / 'dev' / 'dm-0').touch()
        (root / 'dev' / 'mplu').symlink_to(root / 'dev' / 'dm-0')
        self.sys_root, self.device = str(root / 'sys'), str(root / 'dev' /
                                                              'mplu')
        self._inflight()

    def _inflight(self):
        (self.root / 'sys' / 'block' / 'dm-0' / 'inflight').write_text(
            f'       0 {len(self.held):8d}\n')

    def write(self, what):
        """A write through the map: sent if a path is up, else held
        (queueing) or failed."""
        if self.paths_up:
            self._send(what)
        elif self.queue:
            self.held.append(what)
        else:
            self.failed.append(what)
        self._inflight()

    def _send(self, what):
        ok = self.lu.write_ok(self.ini, '/dev/sda')
        (self.landed if ok else self.failed).append(what)

    def paths_back(self):
        """multipathd reinstates the paths: what is held goes out."""
        self.paths_up = True
        for what in self.held:
            self._send(what)
        self.held = []
        self._inflight()

    def runner(self):
        sg = self.lu.runner(self.ini)

        def run(argv):
            if argv[0] != 'dmsetup':
                return sg(argv)
            self.calls.append(argv[1:])
            if argv[1] == 'table':
                return 0, TABLE.format(features='1 queue_if_no_path'
                                       if self.queue else '0') + '\n', ''
            if argv[1:] == ['message', 'mplu', '0', 'fail_if_no_path']:
                self.queue = False
                if not self.paths_up:
                    self.failed += self.held
                    self.held = []
                    self._inflight()
                return 0, '', ''
            if argv[1:] == ['message', 'mplu', '0', 'queue_if_no_path']:
                self.queue = True
                return 0, '', ''
            raise AssertionError(argv)
        return run


@pytest.fixture
def lu():
    return FakeLU()


def storage_fence(m, session_id):
    conn = scsi_pr.ScsiPR([m.device], 'wero', m.runner(), m.sys_root)
    session = types.SimpleNamespace(id=session_id, host='g1')
    etcd = types.SimpleNamespace(put=lambda *a, **k: None)
    keys = types.SimpleNamespace(storage_key=lambda host: f'keys/{host}')
    return fence.StorageFence(conn, etcd, keys, session), conn


def test_queueing_is_read_from_the_table():
    assert mpath.queueing(TABLE.format(features='1 queue_if_no_path'))
    assert mpath.queueing(TABLE.format(
        features='2 pg_init_retries 50')) is False
    assert not mpath.queueing(TABLE.format(features='0'))
    assert not mpath.queueing('0 2048 linear 8:0 0')


def test_only_multipath_maps_are_drained(tmp_path, lu):
    m = FakeMap(tmp_path, lu, 'g1')
    (tmp_path / 'sys' / 'block' / 'dm-0' / 'dm' / 'uuid').write_text(
        'LVM-abc\n')
    assert mpath.maps([m.device], m.sys_root) == []
    assert mpath.maps(['/dev/sdz'], m.sys_root) == []


def test_a_write_queued_before_the_takeover_never_lands_under_the_new_key(
        tmp_path, lu):
    """g1's map holds a write (no path) when g2 preempts g1's key; g1's
    new incarnation registers while the paths are still down; the paths
    come back: the write fails. Without drain() it lands."""
    for drained in (True, False):
        lu = FakeLU()
        g2 = scsi_pr.ScsiPR(['/dev/sdx'], 'wero', lu.runner('g2'), '/none')
        m = FakeMap(tmp_path / str(drained), lu, 'g1')
        sf, conn = storage_fence(m, 0xa1)
        sf.register()
        m.paths_up = False
        m.write('vm write of the old incarnation')
        g2.register(0xb2)
        assert g2.preempt(0xb2, 0xa1)
        sf.session.id = 0xa2
        if not drained:
            conn.drain = lambda: []
        sf.register()           # registers through the paths' nexuses
        m.paths_back()
        if drained:
            assert m.landed == [] and m.failed == [
                'vm write of the old incarnation']
            assert m.calls[-1] == ['message', 'mplu', '0',
                                   'queue_if_no_path'], m.calls
            assert m.queue
        else:
            assert m.landed == ['vm write of the old incarnation']


def test_the_drain_comes_before_the_registration(tmp_path, lu):
    m = FakeMap(tmp_path, lu, 'g1')
    m.write('held')
    sf, conn = storage_fence(m, 0xa1)
    order = []
    run = conn._run

    def logged(argv):
        order.append(argv[1] if argv[0] == 'dmsetup' else argv[3])
        return run(argv)
    conn._run = logged
    sf.register()
    first = order.index('--register-ignore')
    assert order[:first] == ['table', 'message'], order
    assert order[-1] == 'message' and m.queue


def test_writes_still_in_flight_refuse_the_registration(tmp_path, lu):
    """A write that neither fails nor completes (stuck below the map):
    no key is registered, the error names the map, queueing stays off
    (the write fails once it can)."""
    m = FakeMap(tmp_path, lu, 'g1', queue=False)
    m.paths_up = False
    (tmp_path / 'sys' / 'block' / 'dm-0' / 'inflight').write_text(
        '       0        1\n')
    now = [0.0]

    def sleep(s):
        now[0] += s
    with pytest.raises(base.StorageError) as err:
        mpath.drain([m.device], m.runner(), m.sys_root, timeout=5,
                    clock=lambda: now[0], sleep=sleep)
    assert 'mplu (dm-0): 1 writes of an older incarnation' in str(err.value)
    sf, _ = storage_fence(m, 0xa1)
    sf.connector.drain = lambda: mpath.drain(
        [m.device], m.runner(), m.sys_root, timeout=1,
        clock=lambda: now[0], sleep=sleep)
    with pytest.raises(base.StorageError):
        sf.register()
    assert lu.regs == {}


def test_a_map_that_does_not_queue_is_left_alone(tmp_path, lu):
    m = FakeMap(tmp_path, lu, 'g1', queue=False)
    stopped = mpath.drain([m.device], m.runner(), m.sys_root)
    assert stopped == [] and m.calls == [['table', 'mplu']]
    mpath.requeue(stopped, m.runner())
    assert m.calls == [['table', 'mplu']] and not m.queue


def test_queueing_comes_back_after_a_drain_that_timed_out(tmp_path, lu):
    """A drain that gave up (a write stuck below the map) leaves queueing
    off; the attempt that registers gives it back."""
    m = FakeMap(tmp_path, lu, 'g1')
    m.paths_up = True
    inflight = tmp_path / 'sys' / 'block' / 'dm-0' / 'inflight'
    inflight.write_text('       0        1\n')
    now = [0.0]

    def sleep(s):
        now[0] += s
    sf, conn = storage_fence(m, 0xa1)
    conn.drain = lambda: mpath.drain(
        [m.device], conn._run, m.sys_root, timeout=1,
        clock=lambda: now[0], sleep=sleep, stopped=conn._unqueued)
    with pytest.raises(base.StorageError):
        sf.register()
    assert not m.queue and lu.regs == {}
    inflight.write_text('       0        0\n')
    sf.register()
    assert m.queue and set(lu.regs.values()) == {0xa1}
    assert m.calls.count(['message', 'mplu', '0', 'queue_if_no_path']) == 1
