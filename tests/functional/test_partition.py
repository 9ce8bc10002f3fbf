"""A daemon cut from etcd by a fault-injecting proxy: it must fence before
any other host is granted its LV, every time; and resume when the link
heals while its session is still valid."""
import os
import time

from tests.functional.rowatch import ROWatch

MiB = 1 << 20


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def test_fences_before_takeover_every_time(partitioned):
    cluster, proxy = partitioned
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    margins = []
    for i in range(3):
        lv = f'vol-p{i}'
        c2.call('create', vg=vg, lv=lv, size=4 * MiB)
        got = c1.call('activate', vg=vg, lv=lv, instance='i1')
        watch = ROWatch(got['path'])
        proxy.cut()
        taken = c2.call('activate', vg=vg, lv=lv, instance='i2', wait=60)
        took_at = time.monotonic()
        watch.close()
        assert taken['host'] == 'compute-2'
        assert watch.fenced_at is not None, 'compute-1 never fenced'
        assert watch.fenced_at < took_at
        margins.append(took_at - watch.fenced_at)
        proxy.heal()
        # compute-1 opens a new session, sees the LV taken over and drops
        # its stale device.
        path = got['path']
        wait_for(lambda p=path: not os.path.exists(p), 60,
                 'compute-1 to drop its stale device')
        wait_for(lambda: c1.call('status')['session'] != '0', 30,
                 'a new session')
        c2.call('deactivate', vg=vg, lv=lv)
    print(f'fence-to-takeover margins: {[round(m, 2) for m in margins]}')


def test_short_partition_fences_then_resumes(partitioned):
    cluster, proxy = partitioned
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv='vol-short', size=4 * MiB)
    got = c1.call('activate', vg=vg, lv='vol-short', instance='i1')
    session = c1.call('status')['session']
    watch = ROWatch(got['path'])
    proxy.cut()
    wait_for(lambda: watch.fenced_at is not None, 10, 'fencing')
    proxy.heal()
    wait_for(lambda: watch.unfenced_at is not None, 10, 'resume')
    watch.close()
    # Same session, same lease: nobody else was ever granted the LV.
    assert c1.call('status')['session'] == session
    shown = c2.call('show', vg=vg, lv='vol-short')
    assert [(h['host'], h['alive']) for h in shown['holders']] == \
        [('compute-1', True)]
    fd = os.open(got['path'], os.O_WRONLY)
    try:
        os.pwrite(fd, b'x' * 512, 0)
    finally:
        os.close(fd)
    c1.call('deactivate', vg=vg, lv='vol-short')
