"""Host identity: whose live session record a daemon may take over
(coordinator.engine.identity)."""
import os

from coordinator.daemon import claim
from coordinator.engine import identity


def record(**kw):
    return dict({'host': 'h1', 'lease': 0x10, 'pid': 1,
                 'machine': 'm-a', 'boot': identity.boot_id()}, **kw)


def test_no_record_or_our_own_is_ours():
    assert identity.conflict(None, 'h1', 'm-a') is None
    # This machine, this boot, the daemon that wrote it gone.
    assert identity.conflict(record(pid=2 ** 22 + 1), 'h1', 'm-a') is None
    # The lease we resume, from a record of before machine ids.
    old = record()
    del old['machine'], old['boot']
    assert identity.conflict(old, 'h1', 'm-a', lease=0x10) is None


def test_another_machine_is_named():
    why = identity.conflict(record(), 'h1', 'm-b')
    assert why.startswith('host name h1 is in use by machine m-a (live '
                          'session 10, pid 1); this is machine m-b')
    # Even when it is the lease we resume (a cloned state dir).
    assert identity.conflict(record(), 'h1', 'm-b', lease=0x10)
    old = record()
    del old['machine'], old['boot']
    assert 'unknown machine' in identity.conflict(old, 'h1', 'm-a')


def test_another_boot_or_a_live_daemon_here_is_refused(tmp_path):
    assert 'under another boot' in identity.conflict(
        record(boot='other-boot'), 'h1', 'm-a')
    # A live lvmcoordd of this name here, on another state dir (it holds
    # that dir's lock).
    mine, theirs = str(tmp_path / 'mine'), str(tmp_path / 'theirs')
    here = record(state_dir=theirs)
    assert identity.conflict(here, 'h1', 'm-a', state_dir=mine) is None
    lock = claim.lock_state_dir(theirs, wait=0)
    try:
        assert 'another lvmcoordd on this machine' in identity.conflict(
            here, 'h1', 'm-a', state_dir=mine)
        # ...not when it is our own state dir (we hold its lock), nor the
        # lease we resume (our own previous run's).
        assert identity.conflict(here, 'h1', 'm-a', state_dir=theirs) \
            is None
        assert identity.conflict(here, 'h1', 'm-a', lease=0x10,
                                 state_dir=mine) is None
    finally:
        os.close(lock)
    assert identity.conflict(here, 'h1', 'm-a', state_dir=mine) is None


def test_machine_id_defaults_to_etc_machine_id(monkeypatch, tmp_path):
    path = tmp_path / 'machine-id'
    path.write_text('abc123\n')
    monkeypatch.setattr(identity, 'MACHINE_ID', str(path))
    assert identity.machine_id() == 'abc123'
    assert identity.machine_id(' cfg ') == 'cfg'
