"""What a test leaves running after it: session keepalive threads (an
in-process coordinator.engine.session.Session never closed) and child
processes (etcd, lvmcoordd, qemu, ...).

Everything new is attributed to whoever started it: a fixture (checked
when its scope ends) or the test itself (checked when its module ends, in
case a module fixture's teardown stops it). What is still alive when its
owner's scope has ended is a leak: it fails the test whose teardown ends
that scope, naming the owner, and is then stopped so it cannot pollute
the rest of the run. tests/conftest.py wires it into pytest.
"""
import os
import signal
import threading
import time

KEEPALIVE = 'session-keepalive'
SCOPES = ('function', 'class', 'module', 'package', 'session')
# A closed session's thread may still be finishing one etcd call.
THREAD_GRACE = 5.0


def _stat(pid):
    """(ppid, state, start time) of ``pid``, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(')') + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')[
                :200].strip()
    except OSError:
        return '?'


def descendants(root=None):
    """{(pid, start time): command line} of live descendants of ``root``
    (this process)."""
    root = root or os.getpid()
    children = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[1] != 'Z':
                children.setdefault(st[0], []).append((int(name), st[2]))
    out, todo = {}, [root]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            out[(pid, start)] = _cmdline(pid)
            todo.append(pid)
    return out


def process_alive(key):
    """Whether the process (pid, start time) still runs (not a zombie)."""
    st = _stat(key[0])
    return bool(st) and st[2] == key[1] and st[1] != 'Z'


def keepalive_threads():
    """Live session keepalive threads of this process."""
    return [t for t in threading.enumerate()
            if t.name == KEEPALIVE and t.is_alive()]


def _session_of(thread):
    return getattr(getattr(thread, '_target', None), '__self__', None)


def describe_thread(thread):
    """'session <id> of <host>' for a keepalive thread."""
    s = _session_of(thread)
    if s is None:
        return f'thread {thread.name}'
    return f'session {getattr(s, "id", 0):x} of {getattr(s, "host", "?")}'


# {pid: owner}: processes a longer-lived owner started on a test's behalf
# (lazily, inside a test: the real-kernel cluster's tgtd), owned by the
# session whatever test was running when they started.
ADOPTED = {}


def adopt(pid, owner):
    """Let the session own process ``pid`` (its owner stops it then)."""
    ADOPTED[pid] = owner


class Tracker:
    """Who started which thread/process, and what outlived its owner."""

    def __init__(self):
        self.seen_threads = set(keepalive_threads())
        self.seen_procs = set(descendants())
        self.owned = []     # [(kind, key, owner, scope, description)]

    def snapshot(self, owner, scope):
        """Attribute everything new since the last snapshot to ``owner``."""
        for t in keepalive_threads():
            if t not in self.seen_threads:
                self.seen_threads.add(t)
                self.owned.append(('thread', t, owner, scope,
                                   describe_thread(t)))
        for key, cmd in descendants().items():
            if key not in self.seen_procs:
                self.seen_procs.add(key)
                adopted = ADOPTED.get(key[0])
                self.owned.append(('process', key, adopted or owner,
                                   'session' if adopted else scope,
                                   f'process {key[0]} ({cmd})'))

    def collect(self, scopes, grace=THREAD_GRACE):
        """Leaks among what ``scopes`` own (each then stopped), as text;
        a thread gets ``grace`` seconds to end first."""
        leaks, keep = [], []
        deadline = time.monotonic() + grace
        for item in self.owned:
            kind, key, owner, scope, desc = item
            if scope not in scopes:
                keep.append(item)
                continue
            if kind == 'thread':
                key.join(max(0.0, deadline - time.monotonic()))
                alive = key.is_alive()
            else:
                alive = process_alive(key)
            if alive:
                leaks.append(f'{desc}, started by {owner}')
                _stop(kind, key)
        self.owned = keep
        return leaks


def _stop(kind, key):
    if kind == 'thread':
        session = _session_of(key)
        if session is not None:
            session.close()
    else:
        try:
            os.kill(key[0], signal.SIGKILL)
        except ProcessLookupError:
            pass


def scope_key(item, scope):
    """What identifies ``item``'s instance of ``scope``."""
    if item is None:
        return None
    if scope == 'function':
        return item.nodeid
    if scope == 'class':
        return getattr(item, 'cls', None) or scope_key(item, 'module')
    if scope == 'module':
        return getattr(item, 'module', None) or item.fspath
    if scope == 'package':
        return os.path.dirname(str(item.fspath))
    return 'session'


def ended_scopes(item, nextitem):
    """The scopes whose fixtures pytest tears down after ``item``."""
    return [s for s in SCOPES
            if nextitem is None or scope_key(item, s) != scope_key(nextitem,
                                                                   s)]
