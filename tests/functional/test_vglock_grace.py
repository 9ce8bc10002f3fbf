"""The VG lock of a holder whose session expired mid-change is taken by
another host only after the grace period, as a grant is (issue 22 item
3): the expired holder's watchdog resets it first, so a queued write of
its command cannot land after the next holder's change."""
import threading
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
from coordinator.lvm import mda
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20
GRACE = 5.0


def test_vg_lock_of_an_expired_holder_waits_out_the_grace(etcd_server):
    with SharedVG(hosts=2, size=256 * MiB) as shared:
        seqno = lambda vg, fresh: mda.read(shared.device).seqno  # noqa
        a = Engine(etcdlib.Etcd(etcd_server.endpoints), 'host-a', 'gr',
                   ttl=3, grace=GRACE).open()
        b = Engine(etcdlib.Etcd(etcd_server.endpoints), 'host-b', 'gr',
                   ttl=3, grace=GRACE).open()
        watcher = etcdlib.Etcd(etcd_server.endpoints)
        lvm_b = shared.hosts[1].lvm
        holding, finish = threading.Event(), threading.Event()
        started = {}

        def stuck():
            # A's command hangs (its paths queue I/O): the lock is held.
            holding.set()
            finish.wait(120)

        def holder():
            try:
                a.guard(seqno).change(shared.vg, 'lvcreate a1', stuck)
            except errors.CoordError:
                pass  # its session is gone by the time it finishes

        def changer():
            def create():
                started['at'] = time.monotonic()
                lvm_b.create_lv(shared.vg, 'b1', 4 * MiB)
            b.guard(seqno).change(shared.vg, 'lvcreate b1', create)

        ta = threading.Thread(target=holder)
        tb = threading.Thread(target=changer)
        try:
            ta.start()
            assert holding.wait(60), 'A never held the lock'
            tb.start()
            # A's host loses etcd: no more keepalives, its lease runs out.
            lease = a.session.id
            a.session.close(revoke=False)
            alive_at = time.monotonic()
            deadline = alive_at + 60
            while watcher.lease_ttl(lease) > 0:
                alive_at = time.monotonic()
                assert alive_at < deadline, 'A\'s lease never expired'
                time.sleep(0.05)
            tb.join(120)
            assert not tb.is_alive()
            # B ran its command no sooner than the grace after A's lease
            # was last seen alive (so after it expired, plus the grace).
            assert started['at'] >= alive_at + GRACE, \
                (started['at'] - alive_at)
            assert 'b1' in shared.lv_names(host=1)
        finally:
            finish.set()
            ta.join(60)
            tb.join(60)
            b.close(revoke=True)
