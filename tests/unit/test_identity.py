"""Host identity: whose live session record a daemon may take over
(coordinator.engine.identity)."""
import subprocess
import sys

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


def test_another_boot_or_a_live_daemon_here_is_refused():
    assert 'under another boot' in identity.conflict(
        record(boot='other-boot'), 'h1', 'm-a')
    # A live lvmcoordd of this name here (another state dir).
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(60)',
                             'coordinator.daemon.main'])
    try:
        assert 'another lvmcoordd on this machine' in identity.conflict(
            record(pid=proc.pid), 'h1', 'm-a')
        # ...unless it is the lease we resume (our own previous run's).
        assert identity.conflict(record(pid=proc.pid), 'h1', 'm-a',
                                 lease=0x10) is None
    finally:
        proc.kill()
        proc.wait()


def test_machine_id_defaults_to_etc_machine_id(monkeypatch, tmp_path):
    path = tmp_path / 'machine-id'
    path.write_text('abc123\n')
    monkeypatch.setattr(identity, 'MACHINE_ID', str(path))
    assert identity.machine_id() == 'abc123'
    assert identity.machine_id(' cfg ') == 'cfg'
