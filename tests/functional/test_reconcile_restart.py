"""Reconcile at start races no activation (issue 22 item 6): real daemons,
real etcd, real LVM on loop devices. A quick restart's reconcile is held
where it has its snapshot (reconcile.HOLD_ENV, a test hook); activations
asked of the new daemon meanwhile must neither be served on the old
process's fencer beat nor lose their grant to that snapshot."""
import os

import pytest

from coordinator import errors
from coordinator.daemon import grantbook
from coordinator.daemon import reconcile
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
from coordinator.sandbox.cluster import Cluster
from tests.functional.test_after_fault import Writer
from tests.functional.test_after_fault import events
from tests.functional.test_after_fault import wait_for

MiB = 1 << 20


@pytest.fixture
def held(tmp_path, monkeypatch):
    """The hold file: reconcile of a daemon started now waits while it
    exists, once '<hold>.reached' is there."""
    hold = str(tmp_path / 'hold')
    monkeypatch.setenv(reconcile.HOLD_ENV, hold)
    yield hold
    if os.path.exists(hold):
        os.unlink(hold)


def cluster():
    # A fencer beat stays fresh for 8 ticks (12 s): a restart on a loaded
    # machine is served within that window on an earlier run's beat.
    return Cluster(hosts=('compute-1', 'compute-2'), ttl=12, grace=1.0,
                   fence__interval='1.5')


def restart_held(c, hold, host='compute-1'):
    d = c[host]
    d.kill()                       # -9, every process: a crash
    d.proc.wait()
    open(hold, 'w').close()
    c.restart(host)
    wait_for(lambda: os.path.exists(hold + '.reached'), 60,
             'reconcile to reach its hold\n' + d.log_tail())
    return d


def serve(daemon, **args):
    """The activation once the daemon serves it (it refuses until its
    fencer has beaten after reconcile)."""
    def attempt():
        try:
            return daemon.client.call('activate', **args)
        except errors.HostUnavailable as exc:
            assert 'fencer' in str(exc), exc
            return None
    return wait_for(attempt, 60, 'the activation to be served\n' +
                    daemon.log_tail())


def writable(path):
    # Closed at once: an open stacked device keeps the PV from detaching.
    writer = Writer(path)
    try:
        return writer.write() is None
    finally:
        writer.close()


def test_a_new_process_serves_nothing_before_its_own_fencer_beats(held):
    with cluster() as c:
        vg = c.vg.vg
        d1 = c['compute-1']
        d1.client.call('create', vg=vg, lv='vol-b', size=4 * MiB)
        d1.client.call('activate', vg=vg, lv='vol-b', instance='vm-1')
        restart_held(c, held)
        # The old process's beat is a moment old: still not this one's.
        with pytest.raises(errors.HostUnavailable, match='fencer'):
            d1.client.call('activate', vg=vg, lv='vol-b', instance='vm-1')
        os.unlink(held)
        got = serve(d1, vg=vg, lv='vol-b', instance='vm-1')
        assert writable(got['path'])


def test_an_activation_during_reconcile_keeps_its_grant_and_device(held):
    with cluster() as c:
        vg = c.vg.vg
        d1, d2 = c['compute-1'], c['compute-2']
        d2.client.call('create', vg=vg, lv='vol-k', size=4 * MiB)
        uuid = d2.client.call('show', vg=vg, lv='vol-k')['uuid']
        d1.kill()
        d1.proc.wait()
        # What a daemon killed between grant and device leaves behind:
        # the grant (under its session, resumed at restart) and its
        # 'activating' record, no device.
        state_dir = os.path.join(d1.dir, 'state')
        eng = Engine(etcdlib.Etcd(c.etcd.endpoints), 'compute-1', 'sandbox',
                     ttl=12, state_file=os.path.join(
                         state_dir, 'session-sandbox.json'))
        eng.open()
        grant = eng.leases.grant(vg, 'vol-k', instance='vm-1')
        grantbook.GrantBook(state_dir, 'sandbox').put(
            vg, 'vol-k', state=grantbook.ACTIVATING, token=grant.token,
            uuid=uuid, session=eng.session.id, mode='exclusive',
            instance='vm-1')
        eng.session.close(revoke=False)
        restart_held(c, held)
        # The client asks again while reconcile holds its snapshot, which
        # says 'activating, no device'.
        try:
            during = d1.client.call('activate', vg=vg, lv='vol-k',
                                    instance='vm-1')
        except errors.HostUnavailable as exc:
            assert 'fencer' in str(exc), exc
            during = None
        os.unlink(held)
        wait_for(lambda: events(c, 'reconciled', 'compute-1'), 60,
                 'the reconcile\n' + d1.log_tail())
        got = during or serve(d1, vg=vg, lv='vol-k', instance='vm-1')
        # Served: its grant, its record and its device stay, writable.
        holders = d2.client.call('show', vg=vg, lv='vol-k')['holders']
        assert [(h['host'], h['alive']) for h in holders] == \
            [('compute-1', True)], holders
        record = grantbook.GrantBook(state_dir, 'sandbox').get(vg, 'vol-k')
        assert record and record['state'] == grantbook.ACTIVE, record
        assert writable(got['path'])
        # Nobody else gets it.
        with pytest.raises(errors.LeaseConflict, match='compute-1'):
            d2.client.call('activate', vg=vg, lv='vol-k', instance='vm-2')
