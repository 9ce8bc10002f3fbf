"""No LVM command makes a fenced or retired device writable again
(issue 22, items 2 and 10), on real device-mapper.

Runs after tests/realhost/test_realhost.py, on the same booted cluster.
"""
import time

import pytest

from tests.realhost.cluster import VG
from tests.realhost.cluster import MiB
from tests.realhost.vm import wait_for


def dev(lv):
    """The LV's device path in a guest."""
    return f'/dev/{VG}/{lv}'


def targets(host, lv):
    """The targets of the live dm table of vg/lv (None: no device)."""
    table = host.dm_table(lv)
    return None if table is None else [t[2] for t in table]


def inactive_targets(host, lv):
    """The targets of the inactive dm table of vg/lv."""
    out = host.guest.sh(f'dmsetup table --inactive '
                        f'{VG}-{lv.replace("-", "--")}')
    return [line.split()[2] for line in out.splitlines() if line.strip()]


def refused(reply, code):
    """The API refused with ``code``; the message, for the report."""
    assert reply.get('api_error', {}).get('code') == code, reply
    return reply['api_error']['message']


@pytest.mark.timeout(900)  # the cluster's boot when run alone
def test_r1_refresh_needs_the_lease(cluster, record):
    """A refresh, routed or local, on a host that does not hold the LV's
    lease is refused, naming the holder; nothing appears in its kernel.
    The holder's own goes through."""
    g1, g2, g3 = cluster.hosts
    lv = 'vol-rl'
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    g1.ok('activate', vg=VG, lv=lv, host='g2', instance='vm-rl')
    try:
        for reply in (g1.api('refresh', vg=VG, lv=lv, host='g3'),
                      g3.api('refresh', vg=VG, lv=lv)):
            message = refused(reply, 'lease-conflict')
            assert 'does not hold its lease (held by g2' in message, message
        assert targets(g3, lv) is None
        assert g1.ok('refresh', vg=VG, lv=lv, host='g2')['size'] == 16 * MiB
        assert targets(g2, lv) == ['linear']
    finally:
        g1.ok('deactivate', vg=VG, lv=lv, host='g2')
    g1.ok('delete', vg=VG, lv=lv)


@pytest.mark.timeout(900)
def test_r2_no_refresh_reloads_a_retired_device(cluster, record):
    """The old holder's device, retired by a forced break while still open
    (as a VM keeps it), stays `error` through a local and a routed
    refresh: both are refused (lvchange --refresh would load the linear
    table again, writable); an admin's lvchange --refresh by hand is
    undone by the fencer (retired again)."""
    g1, g2, g3 = cluster.hosts
    lv = 'vol-rg'
    g1.ok('create', vg=VG, lv=lv, size=16 * MiB)
    got = g1.ok('activate', vg=VG, lv=lv, host='g2', instance='vm-rg')
    g2.guest.spawn('open-rg', sh=f'exec 3<{dev(lv)}; exec sleep 900')
    try:
        wait_for('g2 holds the device open',
                 lambda: (g2.dm_info(lv) or {}).get('open'), timeout=60)
        start = time.time()
        cluster.cli('lease', 'break', f'{VG}/{lv}', '--host', 'g2',
                    '--token', str(got['token']), '--yes-i-really-mean-it',
                    '--force', timeout=120)
        record['break_acknowledged_s'] = round(time.time() - start, 1)
        assert targets(g2, lv) == ['error']
        replies = [g2.api('refresh', vg=VG, lv=lv),
                   g1.api('refresh', vg=VG, lv=lv, host='g2')]
        assert targets(g2, lv) == ['error']
        assert not g2.dm_info(lv)['suspended']
        for reply in replies:
            refused(reply, 'lease-conflict')
        # The admin, by hand: LVM loads the linear table into the open,
        # retired device; the fencer retires it again on a tick.
        before = time.time()
        g2.guest.run(['lvchange', '--refresh', f'{VG}/{lv}'], check=False)
        again = cluster.wait_event(
            'retired', host='g2', after=before - 1, timeout=60,
            match=lambda ev: 'reloaded' in str(ev.get('reason')))
        assert targets(g2, lv) == ['error']
        record['hand_refresh_retired_again_s'] = round(
            again['time'] - before, 1)
    finally:
        g2.guest.signal('open-rg', 9)
    wait_for('the retired device goes on its last close',
             lambda: g2.dm_table(lv) is None, timeout=60)
    g1.ok('delete', vg=VG, lv=lv)


def direct_write(host, lv):
    """rc of one O_DIRECT write to the device in the guest (0: written)."""
    return host.guest.run(sh=f'dd if=/dev/zero of={dev(lv)} bs=4096 '
                             f'count=1 oflag=direct,dsync', check=False,
                          timeout=60)['rc']


@pytest.mark.timeout(900)
def test_s_a_stopped_daemons_devices_come_back_only_by_proof(cluster,
                                                             record):
    """After an orderly stop, each device is suspended with the error
    target as its inactive table: lvchange -ay (what vgchange -ay does
    per LV) and lvchange --refresh by an admin while the daemon is down
    make the error table live, never the linear one: a write fails. The
    restart's proof then retires them (their table is not the LV's). An
    LV nobody touched is resumed, linear and writable, by the restart."""
    g1, g2, g3 = cluster.hosts
    touched, kept = ('vol-st', 'vol-st2'), 'vol-st3'
    for lv in (*touched, kept):
        g1.ok('create', vg=VG, lv=lv, size=8 * MiB)
        g2.ok('activate', vg=VG, lv=lv, instance=f'vm-{lv}')
        assert direct_write(g2, lv) == 0
    g2.stop_daemon()
    try:
        for lv in (*touched, kept):
            assert g2.dm_info(lv)['suspended'], lv
            assert targets(g2, lv) == ['linear'], lv
        # The admin, while the daemon is down.
        g2.guest.run(['lvchange', '-ay', f'{VG}/{touched[0]}'], check=False)
        g2.guest.run(['lvchange', '--refresh', f'{VG}/{touched[1]}'],
                     check=False)
        for lv in touched:
            assert not g2.dm_info(lv)['suspended'], lv
            assert targets(g2, lv) == ['error'], lv
            assert direct_write(g2, lv) != 0, lv
        # How: the untouched one waits with the error table inactive.
        assert g2.dm_info(kept)['suspended']
        assert inactive_targets(g2, kept) == ['error']
    finally:
        g2.start_daemon()
    wait_for('the touched devices are retired at the restart',
             lambda: all(g2.dm_table(lv) is None for lv in touched),
             timeout=120)
    for lv in touched:
        assert not g1.ok('show', vg=VG, lv=lv)['holders'], lv
    wait_for(f'{kept} resumed by proof',
             lambda: not (g2.dm_info(kept) or {}).get('suspended', True),
             timeout=120)
    assert targets(g2, kept) == ['linear']
    assert inactive_targets(g2, kept) == []
    assert direct_write(g2, kept) == 0
    g2.ok('deactivate', vg=VG, lv=kept)
    for lv in (*touched, kept):
        g1.ok('delete', vg=VG, lv=lv)
