"""A VG lock holder whose LVM command stalls (I/O stall, SIGSTOP) while
its session goes silent: the command is killed before the lock can lapse,
another host's change goes through, nothing is lost (issue 8, item 10)."""
import os
import stat
import threading
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
from coordinator.lvm import mda
from coordinator.sandbox.lvm import SharedVG

MiB = 1 << 20

# Stops itself before running the real lvcreate: a command stalled inside
# the VG lock for as long as nobody continues it.
STALL = '''#!/bin/sh
[ -e "$STALL_FLAG" ] && kill -STOP $$
exec {real} "$@"
'''


def _stopped(name):
    """True once a stalled lvcreate of ``name`` is stopped (state T)."""
    for pid in os.listdir('/proc'):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
            with open(f'/proc/{pid}/stat') as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if name.encode() in argv and state == 'T':
            return True
    return False


def _stalling_path(tmp_path):
    real = next(os.path.join(d, 'lvcreate') for d in
                os.environ['PATH'].split(':')
                if os.path.exists(os.path.join(d, 'lvcreate')))
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    script = bindir / 'lvcreate'
    script.write_text(STALL.format(real=real))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f'{bindir}:{os.environ["PATH"]}'


def test_stalled_command_is_killed_before_the_lock_lapses(etcd_server,
                                                          tmp_path,
                                                          monkeypatch):
    flag = tmp_path / 'stall'
    flag.touch()
    monkeypatch.setenv('STALL_FLAG', str(flag))
    monkeypatch.setenv('PATH', _stalling_path(tmp_path))
    with SharedVG(hosts=2, size=256 * MiB) as shared:
        seqno = lambda vg, fresh: mda.read(shared.device).seqno  # noqa
        a = Engine(etcdlib.Etcd(etcd_server.endpoints), 'host-a', 'dl',
                   ttl=4).open()
        b = Engine(etcdlib.Etcd(etcd_server.endpoints), 'host-b', 'dl',
                   ttl=4).open()
        lvm_a, lvm_b = shared.hosts[0].lvm, shared.hosts[1].lvm
        result = {}

        def holder():
            try:
                a.guard(seqno).change(
                    shared.vg, 'lvcreate a1',
                    lambda: lvm_a.create_lv(shared.vg, 'a1', 4 * MiB))
            except errors.CoordError as exc:
                result['error'], result['at'] = exc, time.monotonic()
        try:
            t = threading.Thread(target=holder)
            t.start()
            # The holder is now stalled inside the lock; its host goes
            # silent (no more keepalives), as a paused daemon would.
            deadline = time.monotonic() + 60
            while not _stopped('a1'):
                assert time.monotonic() < deadline, 'holder never stalled'
                time.sleep(0.02)
            a.session.close(revoke=False)
            silent_since = a.session.last_ok
            flag.unlink()                  # B's commands run through
            # Host B waits for the lock, gets it once A's session expires,
            # and changes the VG.
            b.guard(seqno).change(
                shared.vg, 'lvcreate b1',
                lambda: lvm_b.create_lv(shared.vg, 'b1', 4 * MiB))
            t.join(60)
            assert not t.is_alive()
            # A's command was killed before its session could expire.
            assert isinstance(result['error'], errors.LVMError)
            assert 'killed before the VG lock could lapse' in \
                str(result['error'])
            # etcd cannot expire A's session before its last keepalive
            # was sent + TTL: killed before that, A never wrote after B.
            assert result['at'] < silent_since + 4
            names = shared.lv_names(host=1)
            assert 'b1' in names and 'a1' not in names
            # The VG is readable and consistent, recorded == on disk.
            assert lvm_b.run(['vgck', shared.vg]) is not None
            recorded, _ = b.guard(seqno).recorded(shared.vg)
            assert recorded == lvm_b.vg(shared.vg)['seqno']
            # The next change adopts whatever A's intent left behind.
            b.guard(seqno).change(
                shared.vg, 'lvcreate b2',
                lambda: lvm_b.create_lv(shared.vg, 'b2', 4 * MiB))
            assert {'b1', 'b2'} <= set(shared.lv_names(host=1))
        finally:
            b.close(revoke=True)
