"""A volume host whose daemon dies while its lvcreate is stalled under the
VG lock (the command outlives the daemon: it runs in a session of its
own, as one in D state outlives its kill) is reset by its watchdog before
another host takes the lock, though it holds no LV (issue 22 item 3).
The watchdog is the sandbox's SIMULATED one (a file it supervises)."""
import os
import signal
import stat
import threading
import time

from coordinator.engine import etcd as etcdlib
from coordinator.sandbox.cluster import Cluster
from tests.functional.test_lock_deadline import _stopped

MiB = 1 << 20

# Stops itself before running the real lvcreate of the LV wd-a: a command
# stalled inside the VG lock for as long as nobody continues it.
STALL = '''#!/bin/sh
case " $* " in *" wd-a "*) kill -STOP $$ ;; esac
exec {real} "$@"
'''


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


def _kill_stalled(name):
    """SIGKILL every process whose argv holds ``name`` (what a reset of
    the host does to it)."""
    for pid in os.listdir('/proc'):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if name.encode() in argv and b'lvcreate' in b' '.join(argv):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_dead_daemon_with_a_stalled_lvcreate_is_reset_before_the_lock_moves(
        tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', _stalling_path(tmp_path))
    # fraction x TTL + 2 + 1 <= TTL + grace: 3.6 + 3 <= 7.
    with Cluster(hosts=('volume-1', 'volume-2'), ttl=6, grace=1.0,
                 simulated_watchdog=2) as c:
        vg = c.vg.vg
        d1, d2 = c['volume-1'], c['volume-2']
        dog = c.watchdogs['volume-1']
        dog.on_reset.append(lambda host: _kill_stalled('wd-a'))
        etcd = etcdlib.Etcd(c.etcd.endpoints)
        try:
            stuck = threading.Thread(target=lambda: _call_quietly(
                d1, vg, 'wd-a'), daemon=True)
            stuck.start()
            deadline = time.monotonic() + 60
            while not _stopped('wd-a'):
                assert time.monotonic() < deadline, 'lvcreate never stalled'
                time.sleep(0.02)
            prefix = _lock_prefix(etcd, vg)
            assert _head(etcd, prefix) == 'volume-1'
            d1.kill()             # the daemon dies; its lvcreate does not
            seen = {'last': time.time()}
            done = threading.Event()

            def watch():
                while not done.is_set():
                    if _head(etcd, prefix) == 'volume-1':
                        seen['last'] = time.time()
                    time.sleep(0.02)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            d2.client.call('create', vg=vg, lv='wd-b', size=4 * MiB)
            done.set()
            watcher.join(10)
            assert dog.resets, 'volume-1 was never reset'
            # Reset while volume-1 still held the lock: before the lock
            # moved to volume-2.
            assert dog.resets[0].at <= seen['last'], (dog.resets[0], seen)
        finally:
            _kill_stalled('wd-a')


def _call_quietly(daemon, vg, lv):
    try:
        daemon.client.call('create', vg=vg, lv=lv, size=4 * MiB)
    except Exception:
        pass  # its daemon is killed under it


def _lock_prefix(etcd, vg):
    kvs, _ = etcd.range('/', prefix=True)
    return next(kv.key.rsplit('/', 1)[0] + '/' for kv in kvs
                if f'/vg/{vg}/lock/' in kv.key)


def _head(etcd, prefix):
    kvs, _ = etcd.range(prefix, prefix=True, first_created=True, limit=1)
    return kvs[0].json().get('host') if kvs else None
