"""InFlight: this host's VG lock holds and the LVM commands run under them,
recorded for the fencer (another process), which owns the watchdog.

A metadata command that cannot die (D state on a path that queues I/O) may
write the VG after its lock lapsed and another host changed it. The fencer
keeps the watchdog armed while a hold is recorded, and pets it while a
command runs only as long as the session that holds the lock is provably
valid: a command still alive past that resets the host before another host
can take the lock (TTL + grace). Whether a command is alive is asked of the
kernel (its pid and start time in /proc), not of the worker that ran it.

One file per hold in ``<state_dir>/inflight-<cluster>/``, replaced whole
(rename) on every change: a reader sees a hold as it was, never half.
"""
import json
import logging
import os
import threading
import time
import uuid

from coordinator import errors

LOG = logging.getLogger(__name__)

# The fencer arms the watchdog on its next tick once a hold is recorded.
ARM_WAIT = 5.0


def start_time(pid):
    """The kernel's start time of live process ``pid`` (clock ticks after
    boot), None if it is gone or a zombie (it can write nothing more)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


def alive(proc):
    """True if ``[pid, start]`` is still that live process."""
    pid, start = proc
    return start is not None and start_time(pid) == start


class View:
    """What the fencer needs: how many holds, and the sessions of the
    commands still alive (or about to start)."""

    def __init__(self, holds=0, sessions=()):
        self.holds = holds
        self.sessions = set(sessions)

    @property
    def commands(self):
        return bool(self.sessions)


class Hold:
    """One VG lock hold of this process; the commands it runs report to it
    (coordinator.engine.deadline.bound(..., track=hold))."""

    def __init__(self, registry, vg, op, session):
        self.registry = registry
        self.path = os.path.join(registry.path,
                                 f'{os.getpid()}-{uuid.uuid4().hex[:12]}')
        self.entry = {'vg': vg, 'op': op, 'session': session,
                      'holder': [os.getpid(), start_time(os.getpid())],
                      'pending': False, 'commands': [], 'released': False}
        self._mutex = threading.Lock()

    def _write(self):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.entry, f)
        os.replace(tmp, self.path)

    def starting(self):
        """A command is about to start: recorded before its deadline is
        checked, so the fencer never misses one started in time."""
        with self._mutex:
            self.entry['pending'] = True
            self._write()

    def started(self, pid):
        """The command runs as ``pid``."""
        with self._mutex:
            self.entry['commands'].append([pid, start_time(pid)])
            self.entry['pending'] = False
            self._write()

    def ended(self, pid=None):
        """The command ``pid`` is reaped (None: it never started)."""
        with self._mutex:
            self.entry['pending'] = False
            self.entry['commands'] = [c for c in self.entry['commands']
                                      if c[0] != pid]
            self._write()

    def may_start(self):
        """False once the session is no longer provably valid (the
        fencer's own deadline): no command starts then, so the fencer,
        which pets a hold without commands, never pets past one."""
        return self.registry.may_start()

    def survivors(self):
        """Commands of this hold the kernel still runs (killed or not)."""
        with self._mutex:
            return [c for c in self.entry['commands'] if alive(c)]

    def close(self):
        """The hold is over: forgotten, or, while a command survives,
        kept (released) until the kernel shows it gone."""
        with self._mutex:
            self.entry['commands'] = [c for c in self.entry['commands']
                                      if alive(c)]
            self.entry['pending'] = False
            if self.entry['commands']:
                self.entry['released'] = True
                self._write()
                return
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class Registry:
    """The holds of every process of this daemon."""

    def __init__(self, state_dir, cluster='default', armed=None,
                 locked=None, last_ok=None, window=None):
        self.path = os.path.join(state_dir, f'inflight-{cluster}')
        # armed() -> bool: the watchdog is armed (None: there is none);
        # locked(): the lock under which the fencer decides to disarm.
        self.armed = armed
        self.locked = locked
        # last_ok() -> when the last good keepalive was sent; ``window``:
        # the fencer's fraction x TTL after it.
        self.last_ok = last_ok
        self.window = window

    def may_start(self):
        """True while a command may start (see Hold.may_start)."""
        if self.window is None or self.last_ok is None:
            return True
        return time.monotonic() < self.last_ok() + self.window

    def hold(self, vg, op, session):
        """Record a hold (before the lock is queued for) and wait until
        the watchdog is armed; HostUnavailable if it is not in time."""
        os.makedirs(self.path, exist_ok=True)
        hold = Hold(self, vg, op, session)
        if self.locked is None:
            hold._write()
            armed = self.armed is None or self.armed()
        else:
            # Under the fencer's lock: it cannot disarm between this
            # record and the look at the watchdog.
            with self.locked():
                hold._write()
                armed = self.armed is None or self.armed()
        deadline = time.monotonic() + ARM_WAIT
        while not armed:
            if time.monotonic() > deadline:
                hold.close()
                raise errors.HostUnavailable(
                    f'the watchdog was not armed within {ARM_WAIT:.0f}s; '
                    f'no metadata command runs unwatched')
            time.sleep(0.02)
            armed = self.armed()
        return hold

    def view(self):
        """Holds and live commands now; what no process needs any more
        (its holder gone or released, no command alive) is dropped."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return View()
        holds, sessions = 0, set()
        for name in names:
            if name.endswith('.tmp'):
                continue
            path = os.path.join(self.path, name)
            try:
                with open(path) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue  # replaced meanwhile: the next tick reads it
            holder = not entry.get('released') and alive(entry['holder'])
            live = [c for c in entry.get('commands', []) if alive(c)]
            if holder and entry.get('pending'):
                live.append(None)
            if not (holder or live):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            holds += 1
            if live:
                # A command whose holder is gone (the worker died, its lock
                # entry dropped at the next resume) runs under no lock:
                # no session makes it safe (None matches none).
                sessions.add(entry.get('session') if holder else None)
        return View(holds, sessions)
