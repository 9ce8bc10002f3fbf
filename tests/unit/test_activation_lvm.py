"""The lvm activation backend's parsing and decisions, on dmsetup output
captured in a real-kernel guest (stock Debian 6.1, dmsetup 1.02.185)."""
import errno

import pytest

from coordinator import errors
from coordinator.activation import lvm as lvmb

# The uuids and the first line are verbatim from a guest.
VGU = 'mNk4HeBwqGbCXm2tLC2oAzl56s6993Zu'
LVU = 'wGGkw1MmHz69AAuSF7mocjmZUy01Cas8'
# dmsetup info -c --noheadings --separator '|' \
#     -o name,uuid,blkdevname,open,suspended,attr
INFO = f"""\
rhvg-vol--a|LVM-{VGU}{LVU}|dm-0|0|Active|L--w
rhvg-vol--p|LVM-{VGU}{LVU[::-1]}|dm-1|0|Suspended|L-sw
rhvg-snap|LVM-{VGU}{'S' * 32}|dm-4|0|Active|L--w
rhvg-snap-cow|LVM-{VGU}{'S' * 32}-cow|dm-3|1|Active|L--w
rhvg-orig-real|LVM-{VGU}{'O' * 32}-real|dm-2|2|Active|L--w
rootvg-root|LVM-{'R' * 32}{'T' * 32}|dm-5|1|Active|L--w
mpatha|mpath-3600140512345|dm-6|3|Active|L--w
"""
TABLE = """\
0 131072 linear 254:0 2048
131072 65536 linear 254:0 133120
"""


def test_dm_name_round_trip():
    for vg, lv in [('rhvg', 'vol-a'), ('a-b', 'c--d'), ('v', 'x-')]:
        assert lvmb.split_dm_name(lvmb.dm_name(vg, lv)) == (vg, lv, '')
    assert lvmb.split_dm_name('rhvg-orig-real') == ('rhvg', 'orig', 'real')
    assert lvmb.split_dm_name('mpatha') is None


def test_parse_info_and_top_level():
    rows = lvmb.parse_info(INFO)
    assert len(rows) == 7
    top = lvmb.top_level_lvs(rows, {'rhvg'})
    # Layers (-cow, -real), other VGs and non-LVM devices are not ours.
    assert sorted(top) == [('rhvg', 'snap'), ('rhvg', 'vol-a'),
                           ('rhvg', 'vol-p')]
    assert top[('rhvg', 'vol-p')]['suspended']
    assert top[('rhvg', 'vol-a')]['open'] == 0
    assert lvmb.lvm_uuid(top[('rhvg', 'vol-a')]['uuid'][36:]) == \
        'wGGkw1-MmHz-69AA-uSF7-mocj-mZUy-01Cas8'


def test_parse_info_empty_and_garbage():
    assert lvmb.parse_info('No devices found\n') == []
    with pytest.raises(errors.LVMError):
        lvmb.parse_info('just|three|cols\n')


def test_table_extents_merges_contiguous_segments():
    table = lvmb.parse_table(TABLE)
    pvs = {'254:0': ('/dev/vda', 1 << 20)}
    ext = 4 << 20
    # 2048 s = 1 MiB = pe_start: extents 0-15; then 133120 s: 16-23.
    assert lvmb.table_extents(table, pvs, ext) == [['/dev/vda', 0, 23]]
    gap = lvmb.parse_table('0 8192 linear 254:0 2048\n'
                           '8192 8192 linear 254:0 526336\n')
    assert lvmb.table_extents(gap, pvs, ext) == [['/dev/vda', 0, 0],
                                                 ['/dev/vda', 64, 64]]
    assert lvmb.table_extents(lvmb.parse_table('0 8192 error\n'), pvs,
                              ext) == []
    with pytest.raises(errors.LVMError):
        lvmb.table_extents(lvmb.parse_table('0 8 linear 8:0 0\n'), pvs, ext)


class FakeDM(lvmb.LVMBackend):
    """The backend with dmsetup answered from a dict (no kernel)."""

    def __init__(self, outputs):
        super().__init__(lvm=None, vgs=['rhvg'])
        self.outputs, self.calls = outputs, []

    def _dmsetup(self, *args, kill_on_timeout=True):
        self.calls.append(args)
        key = ' '.join(a for a in args if a != '--noheadings')
        for prefix, out in self.outputs.items():
            if key.startswith(prefix):
                if isinstance(out, Exception):
                    raise out
                return out
        return ''


def test_active_is_one_dmsetup_call():
    be = FakeDM({'info': INFO})
    active = be.active()
    assert sorted(active) == [('rhvg', 'snap'), ('rhvg', 'vol-a'),
                              ('rhvg', 'vol-p')]
    assert active[('rhvg', 'vol-a')] == {
        'path': '/dev/rhvg/vol-a', 'device': '/dev/dm-0', 'open': False,
        'suspended': False,
        'uuid': 'wGGkw1-MmHz-69AA-uSF7-mocj-mZUy-01Cas8'}
    assert len(be.calls) == 1


def test_active_leaves_out_retired_devices():
    info = f'rhvg-gone|LVM-{VGU}{LVU}|dm-0|1|Active|L--r\n'
    be = FakeDM({'info': info, 'table rhvg-gone': '0 2048 error\n'})
    assert be.active() == {}


def test_fenced_device_is_never_activated_or_refreshed_over():
    row = f'rhvg-vol--p|LVM-{VGU}{LVU}|dm-1|1|Suspended|L-sw\n'
    be = FakeDM({'info': row})
    for call in (lambda: be.activate('rhvg', 'vol-p'),
                 lambda: be.refresh('rhvg', 'vol-p')):
        with pytest.raises(errors.LVMError) as exc:
            call()
        assert exc.value.kind == 'fenced'


def test_deactivate_refuses_an_open_device():
    row = f'rhvg-vol--a|LVM-{VGU}{LVU}|dm-0|1|Active|L--w\n'
    with pytest.raises(errors.LVMError) as exc:
        FakeDM({'info': row}).deactivate('rhvg', 'vol-a')
    assert exc.value.kind == 'busy'


def test_retire_loads_error_then_resumes_then_deferred_remove():
    be = FakeDM({'table': TABLE})
    be.retire('rhvg', 'vol-a')
    assert be.calls[1:] == [
        ('load', '--readonly', 'rhvg-vol--a', '--table', '0 196608 error'),
        ('resume', 'rhvg-vol--a'),
        ('remove', '--deferred', 'rhvg-vol--a')]


def test_retire_of_a_missing_device_is_a_no_op():
    gone = errors.LVMError('No such device', kind='not-found')
    be = FakeDM({'table': gone})
    be.retire('rhvg', 'vol-a')
    assert len(be.calls) == 1


def test_identity_from_dm_uuid_and_table(monkeypatch):
    be = FakeDM({'table': TABLE})
    monkeypatch.setattr(lvmb, 'dm_status', lambda cmd, name, flags=0,
                        uuid=None: (0, 'rhvg-vol--a', f'LVM-{VGU}{LVU}'))
    monkeypatch.setattr(be, '_geometry', lambda vg: (
        {'254:0': ('/dev/vda', 1 << 20)}, 4 << 20))
    assert be.identity('rhvg', 'vol-a') == {
        'uuid': 'wGGkw1-MmHz-69AA-uSF7-mocj-mZUy-01Cas8',
        'extents': [['/dev/vda', 0, 23]]}

    def gone(cmd, name, flags=0, uuid=None):
        raise OSError(errno.ENXIO, 'No such device or address')
    monkeypatch.setattr(lvmb, 'dm_status', gone)
    assert be.identity('rhvg', 'vol-a') is None


def test_errors_are_coord_errors(monkeypatch):
    be = lvmb.LVMBackend(lvm=None, vgs=['rhvg'], timeout=5)
    monkeypatch.setenv('PATH', '/nonexistent')
    with pytest.raises(errors.LVMError):
        be.active()


def test_dm_ioctl_layout():
    # struct dm_ioctl is 312 bytes: _IOWR(0xfd, 6, 312) is DM_DEV_SUSPEND.
    assert lvmb._DM_IOCTL.size == 312
    assert lvmb.DM_DEV_SUSPEND == 0xC138FD06
    assert lvmb.DM_DEV_STATUS == 0xC138FD07


def test_suspend_waits_for_an_activation_in_flight(monkeypatch):
    # ENXIO while lvchange has created the device but not loaded its
    # table (seen on a guest): the suspend is retried once a table is live.
    calls = []

    def fake(cmd, name, flags=0, uuid=None):
        calls.append(cmd)
        if cmd == lvmb.DM_DEV_SUSPEND and calls.count(cmd) < 3:
            raise OSError(errno.ENXIO, 'No such device or address')
        return lvmb.DM_ACTIVE_PRESENT_FLAG if calls.count(cmd) > 1 else 0
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    lvmb.LVMBackend(lvm=None, vgs=['rhvg']).suspend('rhvg', 'f12')
    assert calls == [lvmb.DM_DEV_SUSPEND, lvmb.DM_DEV_STATUS] * 2 + \
        [lvmb.DM_DEV_SUSPEND]


def test_suspend_of_a_vanished_device_is_done(monkeypatch):
    def fake(cmd, name, flags=0, uuid=None):
        raise OSError(errno.ENXIO, 'No such device or address')
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    lvmb.LVMBackend(lvm=None, vgs=['rhvg']).suspend('rhvg', 'gone')


def test_suspend_errors_are_lvm_errors(monkeypatch):
    def fake(cmd, name, flags=0, uuid=None):
        raise OSError(errno.EINVAL, 'Invalid argument')
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    with pytest.raises(errors.LVMError):
        lvmb.LVMBackend(lvm=None, vgs=['rhvg']).suspend('rhvg', 'x')


def test_dm_ioctl_by_uuid_leaves_the_name_empty(monkeypatch):
    # The kernel refuses a name and a uuid together; it writes the name
    # of the device it found back.
    sent = []

    def ioctl(fd, cmd, buf):
        fields = list(lvmb._DM_IOCTL.unpack(bytes(buf)))
        sent.append((fields[10].rstrip(b'\0'), fields[11].rstrip(b'\0'),
                     fields[7]))
        fields[10] = b'rhvg-renamed'
        buf[:] = lvmb._DM_IOCTL.pack(*fields)
    monkeypatch.setattr(lvmb.fcntl, 'ioctl', ioctl)
    monkeypatch.setattr(lvmb.os, 'open', lambda *a: 99)
    monkeypatch.setattr(lvmb.os, 'close', lambda fd: None)
    got = lvmb.dm_status(lvmb.DM_DEV_STATUS, 'rhvg-vol--a',
                         uuid=f'LVM-{VGU}{LVU}')
    assert sent == [(b'', f'LVM-{VGU}{LVU}'.encode(), 0)]
    assert got[1] == 'rhvg-renamed'
    lvmb.dm_ioctl(lvmb.DM_DEV_SUSPEND, 'rhvg-vol--a', lvmb.FENCE_SUSPEND)
    assert sent[-1] == (b'rhvg-vol--a', b'', lvmb.FENCE_SUSPEND)


def test_fence_suspends_noflush_skip_lockfs_by_uuid(monkeypatch):
    calls = []

    def fake(cmd, name, flags=0, uuid=None):
        calls.append((cmd, name, flags, uuid))
        return 0
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    lvmb.LVMBackend(lvm=None, vgs=['rhvg']).suspend('rhvg', 'vol-a',
                                                    dm_uuid='LVM-x')
    assert calls == [(lvmb.DM_DEV_SUSPEND, 'rhvg-vol--a',
                      lvmb.DM_SUSPEND_FLAG | lvmb.DM_NOFLUSH_FLAG |
                      lvmb.DM_SKIP_LOCKFS_FLAG, 'LVM-x')]


def test_a_suspend_stuck_on_queued_io_returns_and_is_not_doubled(
        monkeypatch):
    import threading
    let_go = threading.Event()
    calls = []

    def fake(cmd, name, flags=0, uuid=None):
        calls.append(cmd)
        if cmd == lvmb.DM_DEV_SUSPEND:
            let_go.wait(10)
        return 0
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    be = lvmb.LVMBackend(lvm=None, vgs=['rhvg'], fence_wait=0.05)
    for _ in range(2):
        with pytest.raises(errors.LVMError) as exc:
            be.suspend('rhvg', 'vol-a')
        assert exc.value.kind == 'timeout'
    assert calls == [lvmb.DM_DEV_SUSPEND]    # one ioctl, still running
    let_go.set()
    be.suspend('rhvg', 'vol-a')              # that one, done now
    assert calls == [lvmb.DM_DEV_SUSPEND]
    assert be._suspending == {}


def test_stopped_reads_the_kernel(monkeypatch):
    flags = {}

    def fake(cmd, name, flags_=0, uuid=None):
        if name not in flags:
            raise OSError(errno.ENXIO, 'No such device or address')
        return flags[name]
    monkeypatch.setattr(lvmb, 'dm_ioctl', fake)
    be = lvmb.LVMBackend(lvm=None, vgs=['rhvg'])
    live = lvmb.DM_ACTIVE_PRESENT_FLAG
    flags.update({'rhvg-a': live, 'rhvg-s': live | lvmb.DM_SUSPEND_FLAG,
                  'rhvg-r': live | lvmb.DM_READONLY_FLAG, 'rhvg-n': 0})
    assert [be.stopped('rhvg', lv) for lv in ('a', 's', 'r', 'n', 'x')] \
        == [False, True, True, True, True]


def test_identity_of_a_snapshot_names_its_origin(monkeypatch):
    be = FakeDM({'table': '0 2048 snapshot 254:3 254:4 P 8\n'})
    monkeypatch.setattr(lvmb, 'dm_status', lambda cmd, name, flags=0,
                        uuid=None: (0, 'rhvg-snap', f'LVM-{VGU}{LVU}'))
    monkeypatch.setattr(lvmb, '_origin_of', lambda args: 'vol-a')
    assert be.identity('rhvg', 'snap')['origin'] == 'vol-a'


def test_retire_of_an_origin_retires_its_snapshots_then_layers(
        monkeypatch):
    tree = {('rhvg-vol--a', True): ['rhvg-vol--a-real'],
            ('rhvg-vol--a-real', False): ['rhvg-vol--a', 'rhvg-snap'],
            ('rhvg-snap', True): ['rhvg-vol--a-real', 'rhvg-snap-cow']}
    monkeypatch.setattr(lvmb, '_sys_holders_of',
                        lambda name, below: tree.get((name, below), []))
    be = FakeDM({'table': TABLE})
    be.retire('rhvg', 'vol-a')
    loads = [c[2] for c in be.calls if c[0] == 'load']
    assert loads == ['rhvg-snap', 'rhvg-vol--a', 'rhvg-vol--a-real',
                     'rhvg-snap-cow']

def test_a_retired_device_is_never_refreshed():
    # lvchange --refresh would load its linear table again: writable.
    row = f'rhvg-vol--a|LVM-{VGU}{LVU}|dm-0|1|Active|L--r\n'
    be = FakeDM({'info': row, 'table rhvg-vol--a': '0 2048 error\n'})
    with pytest.raises(errors.LVMError, match='retired') as exc:
        be.refresh('rhvg', 'vol-a')
    assert exc.value.kind == 'fenced'
    assert be.device_state('rhvg', 'vol-a') == 'retired'


def test_device_state_from_the_kernel():
    live = f'rhvg-vol--a|LVM-{VGU}{LVU}|dm-0|1|Active|L--w\n'
    held = f'rhvg-vol--a|LVM-{VGU}{LVU}|dm-0|1|Suspended|L-sw\n'
    assert FakeDM({'info': live, 'table': TABLE}).device_state(
        'rhvg', 'vol-a') == 'live'
    assert FakeDM({'info': held, 'table': TABLE}).device_state(
        'rhvg', 'vol-a') == 'suspended'
    gone = errors.LVMError('No such device', kind='not-found')
    assert FakeDM({'info': gone}).device_state('rhvg', 'vol-a') is None


def test_park_loads_the_error_table_inactive_on_a_suspended_device(
        monkeypatch):
    # Live table untouched (I/O stays queued); whatever resumes it
    # without a proof makes the error table live.
    monkeypatch.setattr(lvmb, 'dm_ioctl',
                        lambda cmd, name, flags=0: lvmb.DM_SUSPEND_FLAG |
                        lvmb.DM_ACTIVE_PRESENT_FLAG)
    be = FakeDM({'table': TABLE})
    be.park('rhvg', 'vol-a')
    assert be.calls == [('table', 'rhvg-vol--a'),
                        ('load', 'rhvg-vol--a', '--table',
                         '0 196608 error')]


def test_park_refuses_a_live_device(monkeypatch):
    monkeypatch.setattr(lvmb, 'dm_ioctl', lambda cmd, name, flags=0:
                        lvmb.DM_ACTIVE_PRESENT_FLAG)
    be = FakeDM({'table': TABLE})
    with pytest.raises(errors.LVMError, match='not suspended'):
        be.park('rhvg', 'vol-a')
    assert be.calls == []


def test_resume_clears_a_parked_inactive_table_first(monkeypatch):
    flags = {'f': lvmb.DM_SUSPEND_FLAG | lvmb.DM_INACTIVE_PRESENT_FLAG}
    monkeypatch.setattr(lvmb, 'dm_ioctl', lambda cmd, name, f=0: flags['f'])
    be = FakeDM({})
    be.resume('rhvg', 'vol-a')
    assert be.calls == [('clear', 'rhvg-vol--a'), ('resume', 'rhvg-vol--a')]
    flags['f'] = lvmb.DM_SUSPEND_FLAG
    be.calls.clear()
    be.resume('rhvg', 'vol-a')
    assert be.calls == [('resume', 'rhvg-vol--a')]
