"""The watchdog on real hardware (qemu's i6300esb), issue 22 items 3-4.

- The timeout asked for is read back from the driver at start: one the
  driver rejects refuses the start, naming the option and both values;
  the lvm backend without a watchdog (nor the opt-out) refuses it too.
- A host holding the VG lock, whose lvcreate hangs in D state (the PV's
  multipath map suspended under it), loses etcd: its watchdog is not
  petted while that command lives, and it is reset before another host
  takes the VG lock.
"""
import sys
import threading
import time

import pytest

from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from tests.realhost.cluster import MP_VG
from tests.realhost.cluster import ROOT
from tests.realhost.cluster import SOCKET
from tests.realhost.cluster import VG
from tests.realhost.cluster import Background
from tests.realhost.cluster import MiB
from tests.realhost.vm import wait_for

DAEMON = [sys.executable, '-m', 'coordinator.daemon.main', '--config-file',
          '/rh/lvmcoord.conf']


def check_config(host, **extra):
    """`lvmcoordd --check-config` in the guest with ``extra`` options:
    (rc, the refusal line or 'OK')."""
    host.write_config(**extra)
    try:
        reply = host.guest.run(DAEMON + ['--check-config'], cwd=ROOT,
                               timeout=180, check=False)
    finally:
        host.write_config()
    return reply['rc'], (reply['err'].strip().splitlines() or
                         reply['out'].strip().splitlines() or [''])[-1]


@pytest.mark.timeout(600)
def test_w1_watchdog_timeout_is_read_back(cluster, record):
    """i6300esb takes 1..2046 s: 2100 s (within a bound made wide by the
    grace) is rejected by the driver, and the start with it refused; 5 s
    is applied and read back; no watchdog, no opt-out: refused."""
    g3 = cluster.hosts[-1]
    rc, line = check_config(g3, fence__watchdog_device='/dev/watchdog',
                            fence__watchdog_timeout='2100',
                            lease__grace='3000')
    record['refusal'] = line
    assert rc == 1, line
    assert '[fence] watchdog_timeout: /dev/watchdog: the driver rejected ' \
           '2100 s' in line and ' s' in line.rsplit('applies', 1)[-1], line
    rc, line = check_config(g3, fence__watchdog_device='/dev/watchdog',
                            fence__watchdog_timeout='5')
    assert rc == 0, line
    rc, line = check_config(g3, fence__allow_no_watchdog='false')
    assert rc == 1 and '[fence] watchdog_device: the lvm backend needs a ' \
                       'watchdog' in line, line


STALL = '''#!/bin/sh
# lvcreate with the PV's path suspended under it: it blocks in D state.
if [ -e /tmp/wd-stall ]; then
    rm -f /tmp/wd-stall
    dmsetup suspend --nolockfs {alias} || exit 99
fi
exec {real} "$@"
'''


# x86_64: where an lvcreate waits for its reads of the suspended map with
# libaio (interruptible, but its exit then waits for them in D state).
IO_WAITS = {'208', '333'}  # io_getevents, io_pgetevents


def lvcreate_blocked(host, lv):
    """True once an lvcreate of ``lv`` in the guest waits on I/O that
    cannot complete: in D state, or in io_getevents."""
    out = host.guest.sh(
        f'ps -eo pid=,args= | grep "[l]vcreate .*{lv}" | while read p _; '
        f'do echo "$(cut -d" " -f3 /proc/$p/stat) '
        f'$(cut -d" " -f1 /proc/$p/syscall)"; done', check=False)
    for line in out.splitlines():
        state, _, call = line.partition(' ')
        # The wrapper's shell (its dmsetup) waits in wait4: not yet.
        if state == 'D' or call.strip() in IO_WAITS:
            return True
    return False


def lock_queue(etcd, keys):
    """Hosts queued for MP_VG's lock, holder first."""
    kvs, _ = etcd.range(keys.vg_lock(MP_VG), prefix=True,
                        first_created=True)
    return [kv.json().get('host') for kv in kvs]


@pytest.mark.timeout(900)
def test_w2_stuck_metadata_command_resets_before_the_lock_moves(cluster,
                                                                record):
    """g3 holds MP_VG's lock; its lvcreate is stuck in D state; g3 loses
    etcd. With no LV active there, its watchdog (armed for the hold) is
    not petted while the command lives: g3 resets, and only after that
    does g1 get the lock."""
    from tests.realhost import iscsi
    g1, g3 = cluster.hosts[0], cluster.hosts[-1]
    cluster.multipath_lu(['g1', 'g3'])
    real = g3.guest.sh('command -v lvcreate').strip()
    g3.guest.sh(f'''mkdir -p /tmp/wdbin && cat > /tmp/wdbin/lvcreate <<'EOF'
{STALL.format(alias=iscsi.ALIAS, real=real)}EOF
chmod +x /tmp/wdbin/lvcreate''')
    path = g3.guest.sh('echo $PATH').strip()
    g3.stop_daemon()
    g3.write_config(fence__watchdog_device='/dev/watchdog')
    g3.guest.spawn('lvmcoordd', argv=DAEMON, log='/rh/lvmcoordd.err',
                   cwd=ROOT, env={'LVM_SUPPRESS_FD_WARNINGS': '1',
                                  'PATH': f'/tmp/wdbin:{path}'})
    g3.wait_ready()
    g3.ok('drain')
    assert not g3.ok('status')['active'], 'g3 must hold no LV'
    etcd = etcdlib.Etcd(cluster.etcd.endpoints)
    keys = keyslib.Keys('/lvmcoord', 'realhost')
    start = time.time()
    try:
        g3.guest.sh('touch /tmp/wd-stall')
        stuck = Background(lambda: g3.api('create', vg=MP_VG, lv='wd-a',
                                          size=4 * MiB, timeout=200))
        wait_for('lvcreate stuck on the suspended map on g3',
                 lambda: lvcreate_blocked(g3, 'wd-a'), timeout=120)
        assert lock_queue(etcd, keys)[:1] == ['g3']
        cut = time.time()
        g3.proxy.cut()
        taker = Background(lambda: g1.ok('create', vg=MP_VG, lv='wd-b',
                                         size=4 * MiB))
        # When the lock leaves g3: the last moment g3 is seen holding it
        # bounds g1's acquisition from below.
        seen = {'g3_last': cut}
        done = threading.Event()

        def watch():
            while not done.is_set():
                queue = lock_queue(etcd, keys)
                if queue[:1] == ['g3']:
                    seen['g3_last'] = time.time()
                elif 'g1_first' not in seen and queue[:1] == ['g1']:
                    seen['g1_first'] = time.time()
                time.sleep(0.1)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        reset_at, _ = g3.guest.wait_qmp_event('RESET', after=cut,
                                              timeout=120)
        created = taker.result(240)
        done.set()
        watcher.join(10)
        assert created['lv'] == 'wd-b'
        dog = [e for t, e in g3.guest.qmp_events
               if e['event'] == 'WATCHDOG' and t >= cut]
        record.update(reset_after_cut_s=round(reset_at - cut, 2),
                      lock_moved_after_reset_s=round(
                          seen['g3_last'] - reset_at, 2),
                      qmp_watchdog=bool(dog))
        assert dog, g3.guest.qmp_events[-5:]
        assert reset_at <= seen['g3_last'], (reset_at, seen)
        # The stuck command's write never landed: the VG is consistent,
        # with g1's LV and without g3's.
        names = g1.guest.sh(f'lvs --noheadings -o lv_name {MP_VG}').split()
        assert 'wd-b' in names and 'wd-a' not in names, names
        g1.guest.sh(f'vgck {MP_VG}')
        stuck.join(1)
    finally:
        g3.proxy.heal()
        restore(cluster, g3, start)


def restore(cluster, host, start):
    """Bring ``host`` back as the next scenario expects it: rebooted if
    it was reset, its daemon on the shared VG only, no watchdog."""
    reset = [t for t, e in host.guest.qmp_events
             if e['event'] == 'RESET' and t >= start]
    if reset:
        host.guest.wait_boot(count=len(host.guest.boots) + (
            0 if host.guest.boots[-1][1] > reset[-1] else 1))
        host.sync_clock()
        # Its iSCSI sessions and multipathd went with the reset.
        cluster.initiators.pop(host.name, None)
        host.vgs = [VG]
    else:
        from tests.realhost import iscsi
        host.guest.sh(f'rm -rf /tmp/wdbin /tmp/wd-stall; dmsetup resume '
                      f'{iscsi.ALIAS}', check=False)
        host.stop_daemon()
    host.write_config()
    host.start_daemon()
    assert host.guest.call('api', root=ROOT, socket=SOCKET, call='status',
                           timeout=30).get('result')
