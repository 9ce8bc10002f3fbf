"""Scenarios on real device-mapper, in priority order (one booted cluster).

Every assertion is on what the kernel shows (dm tables, `dmsetup info`,
data read back with O_DIRECT) and every timing comes from the daemons'
own timestamps (grant times in the lease ledger, fence lines in their
logs), on guest clocks set from this machine's and corrected by the
measured residual offset.
"""
import concurrent.futures
import json
import os
import re
import sys
import time

import pytest

from tests.realhost.cluster import FRACTION
from tests.realhost.cluster import GRACE
from tests.realhost.cluster import GUEST_DIR
from tests.realhost.cluster import TTL
from tests.realhost.cluster import VG
from tests.realhost.cluster import Background
from tests.realhost.cluster import MiB
from tests.realhost.vm import wait_for

# The fence-to-takeover margin as doc/design.md states it ("Fencing: the
# timing argument"): (1 - f) * TTL + g - i - D from the fence's end, i the
# fencer's 0.5 s tick, D the fence's own duration, which must stay well
# inside it (at most half of (1 - f) * TTL).
FENCE_TICK = 0.5
BOUND = (1 - FRACTION) * TTL + GRACE - FENCE_TICK
FENCE_BUDGET = (1 - FRACTION) * TTL / 2


def assert_margin(margin, record):
    """The documented bound, the fence's own time counted."""
    took = record['fence_took_s']
    assert took is not None and took <= FENCE_BUDGET, record
    assert margin >= BOUND - took, record
SECTOR = 512
SHARED = {}   # what one scenario leaves for the next (d -> e)


@pytest.fixture(autouse=True)
def heal_links(cluster):
    """A failed scenario leaves no guest cut off for the next one."""
    yield
    for host in cluster.hosts:
        if host.proxy.cut_event.is_set():
            host.proxy.heal()


def dev(lv):
    """The LV's device path in a guest."""
    return f'/dev/{VG}/{lv}'


def sectors(table):
    """Total length of a dm table."""
    return sum(t[1] for t in table)


def holder_since(host, lv, who):
    """When ``who`` was granted vg/lv (its ledger entry), on our clock."""
    show = host.ok('show', vg=VG, lv=lv)
    entry = next(h for h in show['holders'] if h['host'] == who)
    return host.cluster.host(who).to_host(entry['since']), entry


def fence_lines(host, after):
    """(time, line) of the daemon's fence log lines after ``after``."""
    return [(t, line) for t, line in host.log_lines(r'fencer: .*fenced')
            if t >= after]


@pytest.mark.timeout(900)  # the cluster's boot is counted in the first
def test_a_create_activate_refuse_extend_migrate(cluster, record):
    """Create; routed activate; refusal; extend + refresh; migration."""
    g1, g2, g3 = cluster.hosts
    g1.ok('create', vg=VG, lv='vol-a', size=64 * MiB)

    # Routed: asked on g1, the lease is taken and the LV activated on g2.
    start = time.time()
    act = g1.ok('activate', vg=VG, lv='vol-a', host='g2', instance='vm-1')
    record['routed_activate_s'] = round(time.time() - start, 1)
    assert act['host'] == 'g2' and act['path'] == dev('vol-a')
    table = g2.dm_table('vol-a')
    assert table and table[0][2] == 'linear', table
    assert sectors(table) * SECTOR == 64 * MiB
    assert not g2.dm_info('vol-a')['suspended']
    # Real dmsetup output, kept for the lvm backend's unit tests.
    with open(f'{cluster.dir}/captured-dmsetup.txt', 'w') as f:
        f.write(g2.guest.sh(
            "dmsetup info -c --noheadings --separator '|' -o "
            "name,uuid,blkdevname,open,suspended,attr; echo ---; "
            "dmsetup table; echo ---; dmsetup info -c -o help 2>&1 | "
            "tail -40", check=False))
    assert g1.dm_table('vol-a') is None and g3.dm_table('vol-a') is None

    # Another instance is refused, and nothing appears in g3's kernel.
    for mode in ('exclusive', 'migration'):
        reply = g3.api('activate', vg=VG, lv='vol-a', mode=mode,
                       instance='vm-2')
        assert reply.get('api_error', {}).get('code') == 'lease-conflict', \
            reply
    assert g3.dm_table('vol-a') is None

    # Extend: the holder's mapping grows (its dm table, not LVM's view).
    ext = g1.ok('extend', vg=VG, lv='vol-a', size=96 * MiB)
    assert 'g2' in ext['refreshed'], ext
    assert sectors(g2.dm_table('vol-a')) * SECTOR == 96 * MiB

    # Live migration g2 -> g3 (same instance): data written on g2 is
    # read back on g3, then the source lets go.
    written = g2.blockio('fill', dev('vol-a'), 'vm-1', 0, 2048).strip()
    start = time.time()
    act = g1.ok('activate', vg=VG, lv='vol-a', host='g3', mode='migration',
                instance='vm-1')
    record['migration_activate_s'] = round(time.time() - start, 1)
    assert act['mode'] == 'migration'
    assert g3.blockio('sha', dev('vol-a'), 0, 2048).strip() == written
    assert sectors(g3.dm_table('vol-a')) * SECTOR == 96 * MiB
    g1.ok('deactivate', vg=VG, lv='vol-a', host='g2')
    assert g2.dm_table('vol-a') is None
    leases = [{k.lower(): v for k, v in row.items()} for row in
              json.loads(cluster.cli('lease', 'list', '-f', 'json'))]
    mine = [row for row in leases if row.get('lv') in ('vol-a',
                                                       f'{VG}/vol-a')]
    assert [row['host'] for row in mine] == ['g3'], leases


@pytest.mark.timeout(600)
def test_b_partition_fence_takeover_heal(cluster, record):
    """Cut g1 from etcd while a writer has its LV open: suspend before
    takeover with the documented margin; on heal the stale device gets
    the error target, the queued writes never reach the disk, and the
    fencer lives on."""
    g1, g2, _ = cluster.hosts
    lv = 'vol-p'
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    g1.ok('activate', vg=VG, lv=lv, instance='vm-p')
    log = g1.guest.guest_path('writer-p.log')
    g1.guest.spawn('writer-p', argv=[
        *writer_argv(dev(lv), 'g1', 0, 256, 0.05, log)])
    wait_for('writer running', lambda: writes(g1, 'writer-p.log', 'ok'))

    cut = time.time()
    g1.proxy.cut()
    # g2 asks until granted (the contender that keeps asking).
    contender = Background(lambda: g2.ok('activate', vg=VG, lv=lv,
                                         instance='vm-p2', wait=90))
    # g1's own fence line, read from its share here: polling its kernel
    # meanwhile would take CPU from the fencer we are timing.
    wait_for('g1 fences', lambda: fence_lines(g1, cut - 1), timeout=90)
    assert g1.dm_info(lv)['suspended']
    granted = contender.result(180)
    assert granted['host'] == 'g2'
    margin, fence_at = takeover_margin(cluster, g1, g2, lv, cut, record)

    # What g1's writer had acknowledged before the fence; the write in
    # flight is stuck in the suspended device's queue.
    acked = writes(g1, 'writer-p.log', 'ok')
    assert all(float(w[1]) <= fence_at + 0.5 for w in acked[-1:]), acked[-3:]
    # The new holder overwrites the writer's blocks with its own stamps.
    g2.blockio('fill', dev(lv), 'g2', 0, 256)

    heal = time.time()
    g1.proxy.heal()
    table = wait_for('error target on g1', lambda: [
        t for t in (g1.dm_table(lv) or []) if t[2] == 'error'] or (
        g1.dm_table(lv) is None and 'gone'), timeout=180)
    record['error_target_after_heal_s'] = round(time.time() - heal, 1)
    # The write stuck in the fenced device returns once the error table
    # is in: EIO, or 'ok' when only its O_DSYNC flush was queued (its
    # data went down before the suspend took effect, before the fence
    # ended; the stamps below show nothing of g1's landed after g2's
    # fill). No write started after the fence succeeds.
    def at(t):  # a writer's (guest) time on our clock
        return float(t) + g1.offset
    stuck = wait_for('the write stuck in the fenced device returning',
                     lambda: [w for w in writes(g1, 'writer-p.log')
                              if at(w[1]) >= heal - 1], timeout=180)[0]
    record['stuck_write'] = stuck[4]
    late = [w for w in writes(g1, 'writer-p.log', 'ok')
            if at(w[0]) > fence_at]
    assert not late, (fence_at, late[:3])
    wait_for('writes after the heal failing', lambda: [
        w for w in writes(g1, 'writer-p.log')
        if at(w[0]) >= heal - 1 and w[4] in ('EIO', 'EPERM')], timeout=120)
    # Not one block of g1's landed after g2's grant.
    stamps = json.loads(g2.blockio('stamps', dev(lv), 0, 256))
    assert all(s.startswith('g2:') for s in stamps), \
        [s for s in stamps if not s.startswith('g2:')][:5]
    assert table != 'gone', 'device removed while the writer held it open'
    # The writer closes: the kernel removes the retired device.
    g1.guest.signal('writer-p', 9)
    wait_for('retired device removed', lambda: g1.dm_table(lv) is None,
             timeout=120)
    # The fencer survived: g1 fences and serves again.
    status = g1.ok('status')
    assert f'{VG}/{lv}' not in status['active']
    # No traceback of the fencer or its proofs since the cut (another
    # worker's, e.g. membership rejoining after the partition, is not
    # the fencer's).
    crashed = [line for t, line in g1.log_lines(
        r'coordinator\.daemon\.(fence|proof|grantwatch) Traceback')
        if t >= cut]
    assert not crashed, g1.log_tail()
    # Nothing left for the later scenarios (g2's reboot in e) to restore.
    g2.ok('deactivate', vg=VG, lv=lv)
    assert_margin(margin, record)


def takeover_margin(cluster, fenced_host, taker, lv, cut, record):
    """(margin, fence end): from the end of fenced_host's fence (its log
    line) to taker's grant of lv. The grant time is the ledger's 'since',
    taken before the grant's txn: the earliest the grant can be."""
    for host in (fenced_host, taker):
        host.offset = host.guest.clock_offset()
    since, _ = holder_since(taker, lv, taker.name)
    logged = [t for t, _ in taker.log_lines(
        f'granted {VG}/{lv} to {taker.name}') if t >= cut]
    fenced = fence_lines(fenced_host, cut - 1)
    assert fenced, fenced_host.log_tail()
    fence_at, line = fenced[0]
    took = re.search(r' in ([0-9.]+)s', line)
    record.update(fence_after_cut_s=round(fence_at - cut, 2),
                  fence_took_s=float(took.group(1)) if took else None,
                  margin_s=round(since - fence_at, 2),
                  margin_logged_grant_s=round(logged[0] - fence_at, 2)
                  if logged else None, bound_s=BOUND)
    assert fence_at < since, record
    return since - fence_at, fence_at


@pytest.mark.timeout(900)
def test_c_fence_time_50_active_lvs(cluster, record):
    """50 LVs active on g3; g3 cut off: all 50 suspended in the kernel,
    the fence's own duration and its margin to a takeover."""
    g1, g2, g3 = cluster.hosts
    names = [f'f{i:02d}' for i in range(50)]
    start = time.time()
    # Creates from all three hosts queue on the VG lock; each LV is
    # activated on g3 as soon as it exists, so g3's lvchange runs beside
    # the other hosts' lvcreate (activations never take the VG lock:
    # they read metadata that another host is committing meanwhile).
    # Two activations at a time: a 1-vCPU TCG guest running 8 lvchange
    # at once starves its own daemon's keepalives.
    created = {}
    with concurrent.futures.ThreadPoolExecutor(3) as creators, \
            concurrent.futures.ThreadPoolExecutor(2) as activators:
        for i, name in enumerate(names):
            created[name] = creators.submit(
                cluster.hosts[i % 3].ok, 'create', vg=VG, lv=name,
                size=4 * MiB)

        def activate(name):
            created[name].result()
            return g3.ok('activate', vg=VG, lv=name, instance=f'vm-{name}')
        done = activators.map(activate, names)
        concurrent.futures.wait(list(created.values()))
        record['create_50_s'] = round(time.time() - start, 1)
        list(done)
    record['create_activate_50_s'] = round(time.time() - start, 1)
    assert len(suspended_lvs(g3, names, False)) == 50

    cut = time.time()
    g3.proxy.cut()
    contender = Background(lambda: g2.ok('activate', vg=VG, lv=names[-1],
                                         instance='vm-taker', wait=120))
    wait_for('g3 fences', lambda: fence_lines(g3, cut - 1), timeout=90)
    assert len(suspended_lvs(g3, names, True)) == 50
    granted = contender.result(240)
    assert granted['host'] == 'g2'
    margin, _ = takeover_margin(cluster, g3, g2, names[-1], cut, record)
    line = fence_lines(g3, cut - 1)[0][1]
    assert len(re.findall(f'{VG}/f', line)) == 50, line
    heal = time.time()
    g3.proxy.heal()
    # On heal g3 retires the one g2 took and proves and resumes the 49 it
    # still holds (its own events; the kernel checked after).
    taken = f'{VG}/{names[-1]}'
    retired = cluster.wait_event('retired', host='g3', after=heal - 1,
                                 match=lambda ev: taken in ev['lvs'],
                                 timeout=420)
    record['retired_after_heal_s'] = round(retired['time'] - heal, 1)
    mine = {f'{VG}/{n}' for n in names[:-1]}

    def resumed():
        seen = set()
        for ev in cluster.events('resumed', 'g3'):
            if ev['time'] >= heal - 1:
                seen.update(ev['lvs'])
        return mine <= seen and seen
    wait_for('49 resumed on g3', resumed, timeout=420, interval=1)
    last = max(ev['time'] for ev in cluster.events('resumed', 'g3')
               if ev['time'] >= heal - 1)
    record['resumed_49_after_heal_s'] = round(last - heal, 1)
    assert not any(t[2] == 'linear' for t in g3.dm_table(names[-1]) or [])
    assert len(suspended_lvs(g3, names[:-1], False)) == 49
    g2.ok('deactivate', vg=VG, lv=names[-1])
    assert_margin(margin, record)


def suspended_lvs(host, names, suspended):
    """Which of ``names`` are active in host's kernel with that state."""
    out = host.guest.sh("dmsetup info -c --noheadings --separator '|' "
                        "-o name,suspended", check=False)
    want = {f'{VG}-{n}' for n in names}
    return [row.split('|')[0] for row in out.split()
            if row.split('|')[0] in want and
            (row.split('|')[1] == 'Suspended') == suspended]


@pytest.mark.timeout(600)
def test_d_watchdog_resets_a_host_whose_daemon_died(cluster, record):
    """kill -9 of g2's daemon (not restarted) with the watchdog armed:
    the guest resets before any other host is granted its LV."""
    g1, g2, _ = cluster.hosts
    start = time.time()
    try:
        watchdog_scenario(g1, g2, start, record)
    finally:
        # No reset (a failure): g2 goes on without the watchdog.
        g2.write_config()
        if not resets(g2, start):
            g2.stop_daemon()
            g2.start_daemon()


def resets(host, after):
    """Host times of QMP RESET events of host's guest after ``after``."""
    return [t for t, e in host.guest.qmp_events
            if e['event'] == 'RESET' and t >= after]


def watchdog_scenario(g1, g2, start, record):
    """g2 holds vol-w and vol-r with its watchdog armed; kill -9 of its
    daemon; the reset must come before g1's grant of vol-w."""
    g2.stop_daemon()
    g2.write_config(fence__watchdog_device='/dev/watchdog')
    g2.start_daemon()
    for lv in ('vol-w', 'vol-r'):
        g1.ok('create', vg=VG, lv=lv, size=8 * MiB)
        g2.ok('activate', vg=VG, lv=lv, instance=f'vm-{lv}')
    SHARED['vol_r_sha'] = g2.blockio('fill', dev('vol-r'), 'r', 0,
                                     64).strip()
    # The fencer armed the watchdog when it first petted with LVs active.
    kill = time.time()
    g2.kill_daemon()
    contender = Background(lambda: g1.ok('activate', vg=VG, lv='vol-w',
                                         instance='vm-w2', wait=120))
    reset_at, _ = g2.guest.wait_qmp_event('RESET', after=kill, timeout=90)
    granted = contender.result(240)
    assert granted['host'] == 'g1'
    grant_at, _ = holder_since(g1, 'vol-w', 'g1')
    watchdog = [e for t, e in g2.guest.qmp_events
                if e['event'] == 'WATCHDOG' and t >= kill]
    record.update(reset_after_kill_s=round(reset_at - kill, 2),
                  grant_after_reset_s=round(grant_at - reset_at, 2),
                  qmp_watchdog=bool(watchdog))
    assert watchdog, g2.guest.qmp_events[-5:]
    assert resets(g2, start)[0] >= kill, 'g2 was reset before the kill'
    assert reset_at < grant_at, (reset_at, grant_at)


@pytest.mark.timeout(600)
def test_e_host_reboot_restores_or_releases(cluster, record):
    """g2 comes back from the reset of scenario d (a host reboot): the LV
    it still holds (vol-r) is a device again, with its data; the one g1
    took meanwhile (vol-w) is not, and stays g1's."""
    g1, g2, _ = cluster.hosts
    reset_at = resets(g2, 0)[-1]
    g2.guest.wait_boot(count=len(g2.guest.boots) + (
        0 if g2.guest.boots[-1][1] > reset_at else 1))
    record['reboot_s'] = round(g2.guest.boots[-1][1] - reset_at, 1)
    g2.sync_clock()
    g2.write_config()
    start = time.time()
    g2.start_daemon()
    table = wait_for('vol-r restored on g2', lambda: g2.dm_table('vol-r'),
                     timeout=120)
    record['restored_after_start_s'] = round(time.time() - start, 1)
    assert table[0][2] == 'linear' and not g2.dm_info('vol-r')['suspended']
    assert g2.blockio('sha', dev('vol-r'), 0, 64).strip() == \
        SHARED['vol_r_sha']
    assert g2.dm_table('vol-w') is None
    holders = {lv: [h['host'] for h in g2.ok('show', vg=VG, lv=lv)[
        'holders'] if h.get('alive', True)] for lv in ('vol-w', 'vol-r')}
    assert holders == {'vol-w': ['g1'], 'vol-r': ['g2']}, holders


def writer_argv(device, tag, first, count, interval, log):
    """argv of the guest-side writer (guest/blockio.py writer)."""
    return [sys.executable, os.path.join(GUEST_DIR, 'blockio.py'),
            'writer', device, tag, str(first), str(count), str(interval),
            log]


def writes(host, name, result=None):
    """The writer's logged writes with ``result`` (ok, EIO...; None: all):
    [start, end, seq, block, result] as logged."""
    try:
        with open(host.guest.host_path(name)) as f:
            rows = [line.split() for line in f if not line.startswith('#')]
    except OSError:
        return []
    return [r for r in rows if len(r) == 5 and result in (None, r[4])]


@pytest.mark.timeout(600)
def test_f_snapshots_on_real_dm(cluster, record):
    """Snapshots on real device-mapper: created on the origin's holder
    (asked elsewhere), the snapshot keeps the data of its creation while
    the origin changes, a delete is routed to the holder, and a revert
    merges the snapshot into the detached origin at its next activation
    (on another host), which then reads what the snapshot held."""
    g1, g2, g3 = cluster.hosts
    lv, snap, gone = 'vol-s', 'vol-s-snap', 'vol-s-snap2'
    g1.ok('create', vg=VG, lv=lv, size=32 * MiB)
    g1.ok('activate', vg=VG, lv=lv, host='g2', instance='vm-s')
    sha_a = g2.blockio('fill', dev(lv), 'A', 0, 256).strip()

    # Asked on g3, the snapshot is taken on g2, where the origin is active.
    start = time.time()
    taken = g3.ok('snapshot', vg=VG, lv=lv, name=snap, size=16 * MiB)
    record['snapshot_routed_s'] = round(time.time() - start, 1)
    assert taken['taken_on'] == 'g2' and taken['origin'] == lv, taken
    assert [t[2] for t in g2.dm_table(lv)] == ['snapshot-origin']
    assert [t[2] for t in g2.dm_table(snap)] == ['snapshot']
    assert g1.dm_table(snap) is None and g3.dm_table(snap) is None
    assert not g2.dm_info(lv)['suspended']

    # The origin changes; the snapshot still reads what it held.
    sha_b = g2.blockio('fill', dev(lv), 'B', 0, 256).strip()
    assert sha_b != sha_a
    assert g2.blockio('sha', dev(lv), 0, 256).strip() == sha_b
    assert g2.blockio('sha', dev(snap), 0, 256).strip() == sha_a

    # A second snapshot, deleted from g1: routed to g2, gone from its
    # kernel and from the metadata.
    g1.ok('snapshot', vg=VG, lv=lv, name=gone, size=8 * MiB)
    assert [t[2] for t in g2.dm_table(gone)] == ['snapshot']
    start = time.time()
    deleted = g1.ok('snapshot_delete', vg=VG, lv=gone)
    record['snapshot_delete_routed_s'] = round(time.time() - start, 1)
    assert deleted['on'] == 'g2', deleted
    assert g2.dm_table(gone) is None
    assert gone not in {x['lv'] for x in g1.ok('list', vg=VG)}
    # The first snapshot is untouched by it.
    assert g2.blockio('sha', dev(snap), 0, 256).strip() == sha_a

    # Revert: refused while the origin is attached; once detached, the
    # merge waits for the origin's next activation, here on g3.
    reply = g1.api('revert', vg=VG, lv=lv, snapshot=snap)
    assert reply.get('api_error', {}).get('code') == 'lease-conflict', reply
    g1.ok('deactivate', vg=VG, lv=lv, host='g2')
    assert g2.dm_table(lv) is None and g2.dm_table(snap) is None
    reverted = g1.ok('revert', vg=VG, lv=lv, snapshot=snap)
    assert reverted['reverted_to'] == snap, reverted
    start = time.time()
    act = g1.ok('activate', vg=VG, lv=lv, host='g3', instance='vm-s2')
    record['revert_activate_s'] = round(time.time() - start, 1)
    assert act['host'] == 'g3'
    targets = [t[2] for t in g3.dm_table(lv)]
    record['origin_target_after_revert'] = targets[0]
    assert targets in (['snapshot-merge'], ['linear']), targets
    # The origin reads what the snapshot held, from the first read on.
    assert g3.blockio('sha', dev(lv), 0, 256).strip() == sha_a
    assert g3.dm_table(snap) is None
    g1.ok('deactivate', vg=VG, lv=lv, host='g3')
    SHARED['f_done'] = time.time()


@pytest.mark.timeout(300)
def test_f2_revert_writes_metadata_only_under_the_vg_lock(cluster, record):
    """After scenario f's revert, the next metadata change through the
    coordinator finds only changes it made: no host wrote the VG's
    metadata without the VG lock (the guard's 'changed outside lvmcoord'
    alert, in the changing daemon's own log)."""
    g1 = cluster.hosts[0]
    assert 'f_done' in SHARED, 'scenario f did not finish'
    start = time.time()
    g1.ok('delete', vg=VG, lv='vol-s')
    alerts = [line.strip() for t, line in g1.log_lines(
        'metadata changed outside lvmcoord') if t >= start - 1]
    record['out_of_band_writes'] = len(alerts)
    assert not alerts, f'{alerts}; writes: {metadata_writes(cluster)}'


def metadata_writes(cluster, last=4):
    """(seqno, host, LVM's description) of the last metadata copies left
    in the LU's metadata area: which command on which host wrote each."""
    with open(cluster.lu, 'rb') as f:
        area = f.read(1 << 20)
    out = set()
    for text in area.split(b'\0'):
        text = text.decode(errors='replace')
        seq = re.search(r'\bseqno = (\d+)', text)
        desc = re.search(r'description = "([^"]*)"', text)
        # The writer's is the last (each LV has one of its own too).
        host = re.findall(r'creation_host = "([^"]*)"', text)
        if seq and desc and host:
            out.add((int(seq.group(1)), host[-1], desc.group(1)))
    return sorted(out)[-last:]


@pytest.mark.timeout(900)
def test_g_multipath_path_loss(cluster, record):
    """The LU over iSCSI, two portals, dm-multipath in g1 and g2 (no
    udev); `lvmcoord doctor` passes on both; one path is lost while g1's
    writer writes O_DIRECT to an LV activated through lvmcoord on the
    multipath map: the writer sees no error, multipath shows one failed
    path, nothing is fenced; the path comes back active."""
    from tests.realhost import iscsi
    from tests.realhost.cluster import MP_VG
    from tests.realhost.cluster import ROOT
    g1, g2 = cluster.hosts[:2]
    start = time.monotonic()
    inis = cluster.multipath_lu(['g1', 'g2'])
    record['setup_s'] = round(time.monotonic() - start, 1)
    ini = inis['g1']
    record.update({f'g1_{k}': v for k, v in ini.timings.items()})
    bound = cluster.target.listening()
    assert bound and all(a == '127.0.0.1' for a, _ in bound), bound
    assert len(bound) == 2, bound
    for host in (g1, g2):
        paths = inis[host.name].paths()
        assert [p[1:] for p in paths] == [('active', 'ready')] * 2, \
            inis[host.name].multipath_ll()
        # LVM sees the map, never one of its paths.
        pvs = host.guest.sh('pvs --noheadings -o pv_name,vg_name')
        assert f'{iscsi.MAP} {MP_VG}' in ' '.join(pvs.split()), pvs
        assert '/dev/sd' not in pvs, pvs
        doctor = host.guest.run([
            sys.executable, '-m', 'coordinator.cli.app', '--config-file',
            '/rh/lvmcoord.conf', 'doctor', '-f', 'json'], cwd=ROOT,
            timeout=180, check=False)
        rows = json.loads(doctor['out'] or '[]')
        assert doctor['rc'] == 0 and rows, doctor
        checks = {r['Check']: r['Status'] for r in rows}
        assert checks.get(f'multipath {iscsi.MAP}') == 'ok', rows
        assert checks.get(f'VG {MP_VG}') == 'ok', rows
        assert 'fail' not in checks.values(), rows

    # Created on g2, activated on g1 through g2 (routed); the LV's
    # mapping sits on the multipath map.
    lv = 'vol-m'
    device = f'/dev/{MP_VG}/{lv}'
    g2.ok('create', vg=MP_VG, lv=lv, size=32 * MiB)
    act = g2.ok('activate', vg=MP_VG, lv=lv, host='g1', instance='vm-m')
    assert act['host'] == 'g1' and act['path'] == device, act
    deps = g1.guest.sh(f'dmsetup deps -o devname {MP_VG}-vol--m')
    assert f'({iscsi.ALIAS})' in deps, deps

    log = g1.guest.guest_path('writer-m.log')
    g1.guest.spawn('writer-m', argv=writer_argv(device, 'g1', 0, 256, 0.05,
                                                log))
    try:
        multipath_path_loss(cluster, g1, ini, record)
    finally:
        cluster.target.heal(1)
        g1.guest.signal('writer-m', 9)
    # Every block holds what the writer last wrote to it (none lost).
    last = {}
    for w in writes(g1, 'writer-m.log', 'ok'):
        last[int(w[3])] = f'g1:{w[3]}:{w[2]}'
    stamps = json.loads(g1.blockio('stamps', device, 0, 256))
    wrong = [(b, s, last[b]) for b, s in enumerate(stamps)
             if b in last and s != last[b]]
    assert not wrong, wrong[:5]
    g2.ok('deactivate', vg=MP_VG, lv=lv, host='g1')


def multipath_path_loss(cluster, g1, ini, record):
    """Cut portal 2 under g1's writer, check, heal, check."""
    wait_for('writer running', lambda: len(writes(g1, 'writer-m.log',
                                                  'ok')) >= 20)
    # I/O alternates over both paths (round-robin, one request each).
    assert [p[1] for p in ini.paths()] == ['active', 'active']
    mark = ini.log_size()
    g1.sync_clock()
    cut = time.time()
    cluster.target.cut(1)
    # multipathd's own word that the path went (its log on the share,
    # read here: polling the guest would take its CPU).
    wait_for('multipathd failing one path', lambda: re.search(
        r'remaining active paths: 1', ini.log_since(mark)), timeout=180)
    record['path_failed_after_cut_s'] = round(time.time() - cut, 1)
    paths = ini.paths()
    assert sorted(p[1] for p in paths) == ['active', 'failed'], \
        ini.multipath_ll()
    record['multipath_ll_cut'] = ' | '.join(
        ' '.join(p) for p in paths)
    # The writer goes on through the other path.
    failed_at = time.time()
    wait_for('writes completing after the path failed', lambda: [
        w for w in writes(g1, 'writer-m.log', 'ok')
        if float(w[0]) + g1.offset > failed_at], timeout=120)
    mark = ini.log_size()
    heal = time.time()
    cluster.target.heal(1)
    wait_for('path reinstated', lambda: re.search(
        r'remaining active paths: 2', ini.log_since(mark)), timeout=240)
    record['path_back_after_heal_s'] = round(time.time() - heal, 1)
    wait_for('both paths active', lambda: [p[1] for p in ini.paths()] == [
        'active', 'active'], timeout=60, interval=1)
    healed_at = time.time()
    wait_for('writes after the heal', lambda: [
        w for w in writes(g1, 'writer-m.log', 'ok')
        if float(w[0]) + g1.offset > healed_at], timeout=120)

    rows = writes(g1, 'writer-m.log')
    errors = [w for w in rows if w[4] != 'ok']
    assert not errors, errors[:5]
    around = [float(w[1]) - float(w[0]) for w in rows
              if float(w[1]) + g1.offset >= cut]
    record['writer_max_stall_s'] = round(max(around), 1)
    record['writes_during_test'] = len(rows)
    # No fence: no fencer line, no 'fenced' event, the lease still g1's
    # and its device not suspended.
    assert not fence_lines(g1, cut - 1), fence_lines(g1, cut - 1)
    assert not [ev for ev in cluster.events('fenced')
                if (ev.get('time') or 0) >= cut - 1]
    show = g1.ok('show', vg='mpvg', lv='vol-m')
    assert [h['host'] for h in show['holders']] == ['g1'], show
    info = g1.guest.sh("dmsetup info -c --noheadings --separator '|' -o "
                       "suspended mpvg-vol--m").strip()
    assert info == 'Active', info
