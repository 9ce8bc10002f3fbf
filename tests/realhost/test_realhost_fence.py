"""The fencer against the host's own LVM, on real device-mapper (issue 22,
items 1, 8, 9, 11): a device resumed behind the fencer is fenced again, a
device renamed by hand is fenced by its dm uuid, snapshots follow their
origin through a heal, and the fence's suspend under queued I/O.
"""
import json
import os
import sys
import time

import pytest

from tests.realhost.cluster import GUEST_DIR
from tests.realhost.cluster import VG
from tests.realhost.cluster import Background
from tests.realhost.cluster import MiB
from tests.realhost.vm import wait_for


def dev(lv):
    """The LV's device path in a guest."""
    return f'/dev/{VG}/{lv}'


def fenced_after(host, after):
    """Host times of the daemon's fence lines after ``after``."""
    return [t for t, _ in host.log_lines(r'fencer: .*fenced')
            if t >= after]


def cut_and_fence(host, lv):
    """Cut ``host`` from etcd and wait for its fence of ``lv``."""
    cut = time.time()
    host.proxy.cut()
    wait_for(f'{host.name} fences', lambda: fenced_after(host, cut - 1),
             timeout=90)
    wait_for(f'{lv} suspended on {host.name}',
             lambda: (host.dm_info(lv) or {}).get('suspended'), timeout=30)
    return cut


def guest_now(host):
    """The guest's clock now, on ours (for its log lines)."""
    return float(host.guest.sh('date +%s.%N')) + host.offset


@pytest.mark.timeout(600)
def test_j_resumed_behind_the_fencer_is_fenced_again(cluster, record):
    """Item 1: on a fenced holder, an admin's `vgchange -ay` and
    `lvchange --refresh` resume the LV's device; the fencer sees it live
    in the kernel and suspends it again, and does not pet the watchdog
    (a simulated one: pets are logged) while it is live."""
    g1 = cluster.hosts[0]
    lv = 'vol-j'
    g1.stop_daemon()
    g1.guest.sh('touch /rh/dog-g1')
    g1.write_config(fence__watchdog_device='/rh/dog-g1',
                    fence__watchdog_simulated='true')
    g1.start_daemon()
    try:
        g1.ok('create', vg=VG, lv=lv, size=8 * MiB)
        g1.ok('activate', vg=VG, lv=lv, instance='vm-j')
        cut_and_fence(g1, lv)
        # volume_list: the admin's vgchange -ay, but only on this LV (the
        # VG's other LVs are other hosts').
        only = f'activation {{ volume_list = [ "{VG}/{lv}" ] }}'
        for name, command in (
                ('vgchange', f"vgchange -ay --config '{only}' {VG}"),
                ('refresh', f'lvchange --refresh {VG}/{lv}')):
            start = guest_now(g1)
            g1.guest.sh(command, check=False)
            done = guest_now(g1)
            wait_for(f'{lv} fenced again after {name}',
                     lambda: g1.dm_info(lv)['suspended'], timeout=60)
            again = wait_for('the fencer saw it live', lambda start=start: [
                t for t, _ in g1.log_lines(r'writable in the kernel though '
                                           r'fenced.*fenced again')
                if t >= start], timeout=30)
            record[f'{name}_refenced'] = len(again)
            # The device was live from (at the latest) the command's end
            # until the fencer's next look: no pet in between.
            first = min([t for t in again if t >= done] or [done])
            pets = [t for t, _ in g1.log_lines(r'watchdog petted')
                    if done < t < first]
            assert not pets, (name, done, first, pets)
        assert g1.log_lines(r'watchdog petted'), 'no pet was observable'
    finally:
        g1.proxy.heal()
        wait_for(f'{lv} proven and resumed', lambda: not (
            g1.dm_info(lv) or {}).get('suspended', True), timeout=120)
        g1.ok('deactivate', vg=VG, lv=lv)
        g1.stop_daemon()
        g1.write_config()
        g1.start_daemon()


@pytest.mark.timeout(600)
def test_k_renamed_by_hand_is_fenced_by_dm_uuid(cluster, record):
    """Item 8: `lvrename` by hand on the holder renames its device; a
    forced lease break makes the holder fence the LV it was granted: the
    device is found by its dm uuid under its new name, and retired (the
    LV is not the name that was granted any more), never left writable."""
    g1 = cluster.hosts[0]
    lv, renamed = 'vol-k', 'vol-kr'
    g1.ok('create', vg=VG, lv=lv, size=8 * MiB)
    token = g1.ok('activate', vg=VG, lv=lv, instance='vm-k')['token']
    g1.guest.sh(f'lvrename {VG} {lv} {renamed}')
    assert g1.dm_table(lv) is None and g1.dm_table(renamed)
    cluster.cli('lease', 'break', f'{VG}/{lv}', '--host', 'g1', '--token',
                str(token), '--yes-i-really-mean-it', '--force',
                timeout=120)
    # g1 lets go of its grant: its device of the renamed LV is retired
    # (error target, then removed on close), never left writable.
    def retired():
        table = g1.dm_table(renamed)
        if table is None or all(t[2] == 'error' for t in table):
            return 'gone' if table is None else 'error'
        return None
    record['renamed_after_break'] = wait_for(
        'the renamed device retired', retired, timeout=90)
    g1.guest.sh(f'lvremove -f {VG}/{renamed}', check=False)


@pytest.mark.timeout(600)
def test_l_snapshot_resumed_with_its_origin(cluster, record):
    """Item 9: origin and snapshot active on g1; g1 is cut (both fenced),
    then healed with nobody having taken the origin: the proof resumes
    the origin, and the snapshot with it (never left suspended)."""
    g1 = cluster.hosts[0]
    lv, snap = 'vol-l', 'vol-l-snap'
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    g1.ok('activate', vg=VG, lv=lv, instance='vm-l')
    g1.ok('snapshot', vg=VG, lv=lv, name=snap, size=8 * MiB)
    cut_and_fence(g1, lv)
    wait_for(f'{snap} suspended', lambda: g1.dm_info(snap)['suspended'],
             timeout=60)
    heal = time.time()
    g1.proxy.heal()
    for name in (lv, snap):
        wait_for(f'{name} resumed', lambda name=name: not g1.dm_info(
            name)['suspended'], timeout=120)
    record['both_resumed_after_heal_s'] = round(time.time() - heal, 1)
    assert [t[2] for t in g1.dm_table(snap)] == ['snapshot']
    g1.ok('snapshot_delete', vg=VG, lv=snap)
    g1.ok('deactivate', vg=VG, lv=lv)


@pytest.mark.timeout(600)
def test_l2_snapshot_retired_with_its_taken_origin(cluster, record):
    """Item 9: origin and snapshot active on g1; g1 is cut and g2 takes
    the origin over: on heal, g1's proof retires the origin, and the
    snapshot and the layers under them with it; none is left suspended
    (readers hung) or mapping the origin's extents or the COW."""
    g1, g2 = cluster.hosts[:2]
    lv, snap = 'vol-l2', 'vol-l2-snap'
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    g1.ok('activate', vg=VG, lv=lv, instance='vm-l2')
    g1.ok('snapshot', vg=VG, lv=lv, name=snap, size=8 * MiB)
    cut_and_fence(g1, lv)
    taken = Background(lambda: g2.ok('activate', vg=VG, lv=lv,
                                     instance='vm-l2b', wait=120))
    assert taken.result(240)['host'] == 'g2'
    g1.proxy.heal()
    names = [f'{VG}-{n.replace("-", "--")}' for n in (lv, snap)]
    names += [names[0] + '-real', names[1] + '-cow']

    def settled():
        out = {}
        for name in names:
            reply = g1.guest.run(['dmsetup', 'table', name], check=False)
            if reply['rc'] != 0:
                out[name] = 'gone'
            elif reply['out'].split()[2:3] == ['error']:
                out[name] = 'error'
            else:
                return None
        return out
    record.update(wait_for('origin, snapshot and layers retired on g1',
                           settled, timeout=120))
    for name in (lv, snap):
        assert not (g1.dm_info(name) or {}).get('suspended'), name
    g2.ok('snapshot_delete', vg=VG, lv=snap)
    g2.ok('deactivate', vg=VG, lv=lv)


@pytest.mark.timeout(300)
def test_m_fence_returns_under_queued_io(cluster, record):
    """Item 11: with a writer's I/O queued below the device (the device
    under it suspended), the old suspend (flush, lockfs) does not return
    until that I/O is let go; the fence returns while it is still held
    (new I/O held from its start, the ioctl left to finish)."""
    g3 = cluster.hosts[-1]
    hold, scratch = 8, 'vol-m'
    g3.ok('create', vg=VG, lv=scratch, size=64 * MiB)
    g3.ok('activate', vg=VG, lv=scratch, instance='vm-m')
    try:
        out = g3.guest.run([sys.executable,
                            os.path.join(GUEST_DIR, 'fence_suspend.py'),
                            dev(scratch), 'rhm', str(hold)],
                           timeout=240)['out']
    finally:
        g3.ok('deactivate', vg=VG, lv=scratch)
        g3.ok('delete', vg=VG, lv=scratch)
    figures = json.loads(out.strip().splitlines()[-1])
    record.update(old_s=figures['old_flush_lockfs']['s'],
                  fence_s=figures['fence']['s'])
    with open(f'{cluster.dir}/fence-suspend-figures.json', 'w') as f:
        json.dump(figures, f, indent=1)
    assert not figures['old_flush_lockfs']['returned_while_io_held'], \
        figures
    assert figures['fence']['returned_while_io_held'], figures
