"""What lvmcoordd claims before its workers fork: its state dir (one
daemon per state dir) and its host name (one machine per name).

The state-dir lock is an flock taken by the master and held for its life:
the workers inherit the open file (a worker left over from a killed master
still holds it), and a respawned worker needs nothing new. Two daemons on
one state dir would share the session file, the grant book and the
fencer's beat: each would undo the other's fences.
"""
import errno
import fcntl
import json
import os
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine import identity
from coordinator.engine import keys as keyslib
from coordinator.engine import schema as schemalib
from coordinator.engine.core import Engine

LOCK_FILE = identity.LOCK_FILE
# A killed daemon's processes release the lock as they exit: a restart
# right after a kill -9 waits that long for them before it is refused.
LOCK_WAIT = 3.0


class Refused(Exception):
    """The daemon must not start; str() is the one line shown."""


def lock_state_dir(state_dir, wait=LOCK_WAIT):
    """The open lock file of ``state_dir`` (keep it open: closing it
    releases the lock); Refused if another daemon holds it."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors='replace')
                os.close(fd)
                raise Refused(f'[session] state_dir {state_dir} is in use '
                              f'by another lvmcoordd (pid '
                              f'{holder.strip() or "unknown"}); one daemon '
                              f'per state dir') from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    return fd


def check_host_name(conf):
    """Refused if [DEFAULT] host has a live session of another machine
    (its session worker judges again, atomically, when it opens)."""
    etcd = etcdlib.Etcd.from_conf(conf)
    keys = keyslib.Keys(conf.etcd.prefix, conf.cluster)
    try:
        kv = etcd.get(keys.session(conf.host))
    except errors.CoordError as exc:
        raise Refused(f'cannot read the session of {conf.host}: {exc}') \
            from exc
    lease = 0
    try:
        with open(Engine.state_file(conf)) as f:
            state = json.load(f)
        if state.get('host') == conf.host:
            lease = int(state.get('lease') or 0)
    except (OSError, ValueError, TypeError):
        pass
    why = identity.conflict(kv.json() if kv else None, conf.host,
                            identity.machine_id(conf.session.machine_id),
                            lease, conf.session.state_dir)
    if why:
        raise Refused(why)


def check_schema(conf):
    """Refused if this release cannot run in the cluster's schema
    (doc/upgrade.md); records schema 1 in a cluster without the key."""
    etcd = etcdlib.Etcd.from_conf(conf)
    keys = keyslib.Keys(conf.etcd.prefix, conf.cluster)
    try:
        schemalib.Schema(etcd, keys).check(conf.host)
    except schemalib.Incompatible as exc:
        raise Refused(str(exc)) from exc
    except errors.CoordError as exc:
        raise Refused(f'cannot read or record the cluster schema '
                      f'({keys.schema()}): {exc}') from exc
