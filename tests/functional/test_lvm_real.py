"""Real LVM on loop devices: the executor, the metadata reader, the
shared-VG fixture, and the race that makes the coordinator necessary."""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from coordinator.activation import has_device_mapper
from coordinator.errors import InvalidInput
from coordinator.errors import LVMError
from coordinator.lvm import executor
from coordinator.lvm import mda
from coordinator.sandbox import lvm as lvm_fixture
from coordinator.sandbox.lvm import SharedVG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
MiB = 2 ** 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which('losetup')
    or not shutil.which('lvcreate') or not os.path.exists(
        '/dev/loop-control'),
    reason='needs root, losetup, lvm2 and loop devices')


@pytest.fixture
def shared():
    """A shared VG seen by 3 simulated hosts."""
    with SharedVG(hosts=3) as vg:
        yield vg


def _attached(backing):
    out = subprocess.run(['losetup', '-a'], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if backing in line]


def _gone(vg):
    """The fixture left nothing behind."""
    return not lvm_fixture.loop_attached(vg.backing) and \
        not _attached(vg.backing) and not os.path.exists(vg.tmpdir)


# -- the fixture --

def test_each_host_sees_the_vg(shared):
    uuids = set()
    for host in shared.hosts:
        vg = host.lvm.vg(shared.vg)
        assert vg['name'] == shared.vg and vg['pv_count'] == 1
        assert vg['lv_count'] == 0 and vg['free'] > 1900 * MiB
        uuids.add(vg['uuid'])
        pvs = host.lvm.pvs(shared.vg)
        assert [p['name'] for p in pvs] == [shared.device]
        # The filter hides every other device from the simulated host.
        assert [p['name'] for p in host.lvm.pvs()] == [shared.device]
        assert [v['name'] for v in host.lvm.vgs()] == [shared.vg]
    assert len(uuids) == 1
    dirs = {h.system_dir for h in shared.hosts}
    assert len(dirs) == 3
    assert shared.hosts[0].lvm.version().startswith('2.')


def test_fixture_cleans_up_when_the_test_fails():
    with pytest.raises(RuntimeError):
        with SharedVG(hosts=1) as vg:
            assert lvm_fixture.loop_attached(vg.backing) == [vg.device]
            raise RuntimeError('test failed')
    assert _gone(vg)


def _child_holding_a_vg(tmp_path, action):
    out = tmp_path / 'vg'
    code = ('import os, signal, sys, time\n'
            'from coordinator.sandbox.lvm import SharedVG\n'
            'vg = SharedVG(hosts=1, size=64 * 2 ** 20).__enter__()\n'
            f'open({str(out)!r}, "w").write(vg.backing + "\\n" + '
            'vg.tmpdir)\n'
            f'{action}\n')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not out.exists() or '\n' not in out.read_text():
        assert proc.poll() is None or out.exists(), 'child failed'
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, out.read_text().split('\n')


def test_fixture_cleans_up_at_interpreter_exit(tmp_path):
    # Never closed: the atexit fallback cleans up.
    proc, (backing, tmpdir) = _child_holding_a_vg(tmp_path, 'sys.exit(3)')
    assert proc.wait(60) == 3
    assert not lvm_fixture.loop_attached(backing)
    assert not os.path.exists(tmpdir)


def test_loop_device_detached_even_if_killed(tmp_path):
    # SIGKILL skips every handler: the kernel's auto-clear detaches.
    proc, (backing, tmpdir) = _child_holding_a_vg(tmp_path,
                                                  'time.sleep(120)')
    assert lvm_fixture.loop_attached(backing)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    deadline = time.monotonic() + 10
    while lvm_fixture.loop_attached(backing) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not lvm_fixture.loop_attached(backing)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _ro(device):
    with open(f'/sys/block/{os.path.basename(device)}/ro') as f:
        return f.read().strip() == '1'


def test_fixture_wipes_and_detaches_a_fenced_vg():
    with SharedVG(hosts=1, size=64 * MiB) as vg:
        vg.hosts[0].lvm.create_lv(vg.vg, 'lv0', '8M')
        # Fenced: vgremove will fail, the wipe must still happen.
        subprocess.run(['blockdev', '--setro', vg.device], check=True)
        assert _ro(vg.device)
        keep = open(vg.backing, 'rb')  # the inode outlives the unlink
    try:
        head = os.pread(keep.fileno(), lvm_fixture.WIPE_BYTES, 0)
    finally:
        keep.close()
    assert head == bytes(len(head)), 'LVM label left on the device'
    assert _gone(vg)
    # The read-only flag would otherwise outlive the detach.
    assert not _ro(vg.device)


def test_fixture_survives_a_read_only_leftover(monkeypatch):
    # A loop number left read-only by an earlier fence (BLKROSET sticks
    # across detach) comes up read-only when attached again: simulated
    # on our own device, so no other test can pick up a read-only one.
    attach = lvm_fixture.attach

    def attach_read_only(backing):
        device = attach(backing)
        subprocess.run(['blockdev', '--setro', device], check=True)
        return device

    monkeypatch.setattr(lvm_fixture, 'attach', attach_read_only)
    with SharedVG(hosts=1, size=64 * MiB) as vg:
        assert not _ro(vg.device)
        vg.hosts[0].lvm.create_lv(vg.vg, 'lv0', '8M')
    assert _gone(vg)


# -- the executor on real LVM --

def test_lv_lifecycle_across_hosts(shared):
    h0, h1, h2 = (h.lvm for h in shared.hosts)
    seq = h0.vg(shared.vg)['seqno']
    h0.create_lv(shared.vg, 'vol1', '100M', tags=['cinder', 'id=1'])
    lv = h1.lv(shared.vg, 'vol1')
    assert lv['size'] == 100 * MiB and lv['tags'] == ['cinder', 'id=1']
    assert lv['segtype'] == 'linear' and lv['origin'] == ''
    assert lv['active'] in (None, False)
    extent = h1.vg(shared.vg)['extent_size']
    [(device, first, last)] = lv['pe_ranges']
    assert device == shared.device
    assert (last - first + 1) * extent == lv['size']

    h2.extend_lv(shared.vg, 'vol1', '200M')
    assert h0.lv(shared.vg, 'vol1')['size'] == 200 * MiB
    h1.rename_lv(shared.vg, 'vol1', 'vol2')
    assert shared.lv_names(2) == ['vol2']
    h2.add_tags(shared.vg, 'vol2', ['attached:host2'])
    h0.del_tags(shared.vg, 'vol2', ['cinder'])
    assert h1.lv(shared.vg, 'vol2')['tags'] == ['attached:host2', 'id=1']
    # Odd sizes round up to whole extents.
    h0.create_lv(shared.vg, 'odd', 1000)
    assert h2.lv(shared.vg, 'odd')['size'] == extent
    h0.remove_lv(shared.vg, 'odd')
    h2.remove_lv(shared.vg, 'vol2')
    assert shared.lv_names(1) == []
    assert h0.vg(shared.vg)['seqno'] == seq + 8


def _kind(call, *args):
    with pytest.raises(LVMError) as exc:
        call(*args)
    return exc.value


def test_real_failures_are_classified(shared):
    lvm, vg = shared.hosts[0].lvm, shared.vg
    lvm.create_lv(vg, 'lv0', '8M')
    err = _kind(lvm.create_lv, vg, 'lv0', '8M')
    assert err.kind == 'exists' and f'{vg}/lv0' in str(err)
    assert 'already exists' in err.stderr and err.cmd[0] == 'lvcreate'
    err = _kind(shared.hosts[1].lvm.remove_lv, vg, 'missing')
    assert err.kind == 'not-found' and f'{vg}/missing' in str(err)
    err = _kind(lvm.create_lv, vg, 'big', '64G')
    assert err.kind == 'no-space' and f'{vg}/big' in str(err)
    assert _kind(lvm.extend_lv, vg, 'lv0', '64G').kind == 'no-space'
    assert _kind(lvm.extend_lv, vg, 'missing', '1G').kind == 'not-found'
    assert _kind(lvm.rename_lv, vg, 'missing', 'x').kind == 'not-found'
    lvm.create_lv(vg, 'lv1', '8M')
    assert _kind(lvm.rename_lv, vg, 'lv1', 'lv0').kind == 'exists'
    assert _kind(lvm.lv, vg, 'missing').kind == 'not-found'
    assert _kind(lvm.vg, 'lvmc_nosuchvg').kind == 'not-found'
    assert _kind(lvm.create_lv, 'lvmc_nosuchvg', 'x', '8M').kind == \
        'not-found'
    assert _kind(lvm.add_tags, vg, 'missing', ['t']).kind == 'not-found'
    assert _kind(lvm.extend_lv, vg, 'lv0', '4M').kind == 'failed'
    assert shared.lv_names() == ['lv0', 'lv1']


def test_snapshot_needs_device_mapper(shared):
    lvm, vg = shared.hosts[0].lvm, shared.vg
    lvm.create_lv(vg, 'origin', '16M')
    if has_device_mapper():
        pytest.skip('device-mapper present: snapshots work here')
    err = _kind(lvm.create_snapshot, vg, 'origin', 'snap', '8M')
    assert err.kind == 'failed' and 'device-mapper' in str(err)
    assert shared.lv_names() == ['origin']
    # LVM would exit 0 without creating a device: refused up front.
    assert 'disabled' in str(_kind(lvm.activate, vg, 'origin'))


def test_invalid_names_run_no_command(shared):
    calls = []

    def spy(argv, env, timeout):
        calls.append(argv)
        return executor.run_process(argv, env, timeout)

    host = shared.hosts[0]
    lvm = executor.LVM(system_dir=host.system_dir, activation=False,
                       runner=spy)
    bad = [(lvm.create_lv, shared.vg, 'snapshot0', '8M'),
           (lvm.create_lv, shared.vg, 'x', '8X'),
           (lvm.create_lv, shared.vg, 'x', '8M', ['no spaces']),
           (lvm.create_lv, '../etc', 'x', '8M'),
           (lvm.remove_lv, shared.vg, '-rf'),
           (lvm.rename_lv, shared.vg, 'x', 'a/b'),
           (lvm.extend_lv, shared.vg, 'x', -1),
           (lvm.add_tags, shared.vg, 'x', ['$(reboot)']),
           (lvm.lvs, shared.vg + '\n')]
    for call, *args in bad:
        with pytest.raises(InvalidInput):
            call(*args)
    assert calls == []
    lvm.create_lv(shared.vg, 'fine', '8M')
    assert len(calls) == 1 and shared.lv_names() == ['fine']


# -- the metadata reader --

def _check_seqno(shared):
    want = shared.hosts[0].lvm.vg(shared.vg)
    got = mda.read(shared.device)
    assert got == mda.Metadata(shared.vg, want['uuid'], want['seqno'])
    return got


def test_mda_seqno_matches_vgs(shared):
    lvm = shared.hosts[1].lvm
    first = _check_seqno(shared)
    for i in range(10):
        lvm.create_lv(shared.vg, f'v{i}', '4M', tags=[f't{i}'])
        _check_seqno(shared)
        lvm.extend_lv(shared.vg, f'v{i}', '8M')
        _check_seqno(shared)
    for i in range(10):
        lvm.remove_lv(shared.vg, f'v{i}')
        assert _check_seqno(shared).seqno == first.seqno + 21 + i


def test_mda_seqno_across_wraparound():
    # A 32 KiB metadata area: the circular buffer wraps every few writes.
    with SharedVG(hosts=2, size=256 * MiB, metadata_size='32k') as shared:
        loc, _ = mda.read_text(shared.device)
        assert loc.area_size <= 64 * 1024
        lvms = [h.lvm for h in shared.hosts]
        wrapped, present = 0, set()
        for i in range(70):
            lvm = lvms[i % 2]
            name = f'w{i % 12}'
            if name in present:
                lvm.remove_lv(shared.vg, name)
                present.remove(name)
            else:
                lvm.create_lv(shared.vg, name, '4M', tags=[f'n{i}'])
                present.add(name)
            _check_seqno(shared)
            loc, text = mda.read_text(shared.device)
            wrapped += loc.wrapped
            assert text.endswith(b'\0')
        assert wrapped >= 3, 'the metadata text never wrapped'
        assert set(shared.lv_names()) == present


def test_mda_is_fast(shared):
    started = time.perf_counter()
    for _ in range(50):
        mda.read(shared.device)
    per_read = (time.perf_counter() - started) / 50
    assert per_read < 0.01, f'{per_read * 1000:.1f} ms per read'


def test_mda_errors(shared, tmp_path):
    # Regular files work as devices for the reader: copy the PV's head.
    shared.hosts[0].lvm.create_lv(shared.vg, 'lv0', '4M')
    with open(shared.device, 'rb') as f:
        head = f.read(MiB)
    copy = tmp_path / 'pv-head'
    copy.write_bytes(head)
    assert mda.read(str(copy)) == _check_seqno(shared)

    loc, text = mda.read_text(str(copy))
    damaged = bytearray(head)
    damaged[loc.area_start + loc.offset + 10] ^= 0xff
    copy.write_bytes(bytes(damaged))
    err = _kind(mda.read, str(copy))
    assert err.kind == 'failed' and 'checksum' in str(err)

    blank = tmp_path / 'blank'
    blank.write_bytes(bytes(MiB))
    err = _kind(mda.read, str(blank))
    assert err.kind == 'failed' and 'no LVM label' in str(err)
    assert _kind(mda.read, str(tmp_path / 'none')).kind == 'failed'
    assert 'too small' in str(_kind(mda.read, '/dev/null'))

    # A PV whose label is intact but that is in no VG.
    orphan = bytearray(head)
    raw = loc.area_start + 40
    orphan[raw:raw + 24] = bytes(24)
    header = orphan[loc.area_start:loc.area_start + 512]
    orphan[loc.area_start:loc.area_start + 4] = \
        mda.crc(bytes(header[4:])).to_bytes(4, 'little')
    copy.write_bytes(bytes(orphan))
    assert 'not in a VG' in str(_kind(mda.read, str(copy)))


def test_mda_damaged_pv_only_raises_lvm_error(shared, tmp_path):
    shared.hosts[0].lvm.create_lv(shared.vg, 'lv0', '4M')
    with open(shared.device, 'rb') as f:
        head = f.read(MiB)
    loc, _ = mda.read_text(shared.device)
    hot = [(0, 1024), (loc.area_start, loc.area_start + 512),
           (loc.area_start + loc.offset,
            loc.area_start + loc.offset + loc.size)]
    rng = random.Random(1234)
    copy = tmp_path / 'pv'
    for _ in range(300):
        damaged = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            lo, hi = rng.choice(hot)
            pos = rng.randrange(lo, hi)
            damaged[pos:pos + 8] = rng.randbytes(8)
        copy.write_bytes(bytes(damaged))
        try:
            got = mda.read(str(copy))
        except LVMError as exc:
            assert exc.kind == 'failed'
        else:
            assert isinstance(got, mda.Metadata)


# -- the race the coordinator exists to prevent --

def _race(shared, rounds):
    """3 hosts run lvcreate at the same moment, ``rounds`` times, with no
    coordination; the LV names each host was told it created."""
    created = []
    barrier = threading.Barrier(len(shared.hosts))

    def host_loop(index, host):
        for r in range(rounds):
            name = f'r{r}_h{index}'
            barrier.wait()
            try:
                host.lvm.create_lv(shared.vg, name, '4M')
                created.append(name)
            except LVMError:
                pass

    threads = [threading.Thread(target=host_loop, args=(i, h))
               for i, h in enumerate(shared.hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return created


def test_unguarded_concurrent_lvcreate_loses_lvs():
    evidence = []
    for _attempt in range(5):
        with SharedVG(hosts=3) as shared:
            created = _race(shared, rounds=10)
            try:
                seen = set(shared.lv_names())
            except LVMError as exc:
                # What the coordinator sees when it meets a damaged VG.
                assert exc.kind == 'metadata-changed', exc.stderr
                evidence.append(f'VG unreadable after the race: {exc}')
            else:
                lost = set(created) - seen
                if lost or len(seen) < 30:
                    evidence.append(f'{len(created)} lvcreate succeeded, '
                                    f'{len(seen)} LVs in the VG; lost: '
                                    f'{sorted(lost)}')
        # Even after corruption, nothing is left behind.
        assert _gone(shared)
        if evidence:
            break
    assert evidence, 'five races of 3x10 unguarded lvcreate lost nothing'
    print(evidence[0])
