"""Replies to this process's routed requests, from one watch stream.

A caller used to open a watch per request: a TCP connection, an HTTP
request and etcd's "created" answer before its request could be put, one
round trip on the path of every routed call and a connection per call.
Here one watch on ``replies/<host>/`` per process is opened on the first
call and kept. A caller registers the reply key it expects (``expect``)
before it puts its request, so its reply is delivered by a stream that
existed before the reply was written; the stream is read by one thread.

A stream that ends (an etcd member went away) is opened again, and the
keys still expected are then read once: a reply written while no stream
was open is found that way (watch first, then read, as the request side
does). A stream that dies silently is found by TCP keepalive; callers
still re-read their own key every routing.RESCAN seconds.
"""
import logging
import threading
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib

LOG = logging.getLogger(__name__)

# The stream is closed after this long without any caller (a process that
# routed once does not keep a connection for ever; the next call opens it).
IDLE = 600.0
# How long a first caller waits for the stream to be created.
OPEN_TIMEOUT = 15.0
# Used replies wait this long to be deleted: the delete stays off the
# moment the caller returns (its thread would compete for the CPU with
# the reply on its way out), and the calls of a busy second share one txn.
SWEEP_DELAY = 1.0


class Slot:
    """One expected reply; ``until`` yields as a Watch does."""

    def __init__(self, replies, key):
        self._replies = replies
        self.key = key
        self.kv = None
        self._event = threading.Event()

    def deliver(self, kv):
        self.kv = kv
        self._event.set()

    def until(self, deadline, recheck):
        """('PUT', KV) once the reply came, None after each ``recheck``
        seconds without it, until monotonic ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._event.wait(min(left, recheck)):
                yield 'PUT', self.kv
                return
            yield None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._replies.forget(self.key)


class Replies:
    """The reply stream of one process, and deletion of used replies
    off the caller's path."""

    def __init__(self, etcd, prefix, idle=IDLE):
        self.etcd = etcd
        self.prefix = prefix
        self.idle = idle
        self._mutex = threading.Lock()
        self._waiting = {}
        self._watch = None
        self._thread = None
        self._opened = threading.Event()
        self._error = None
        self._trash = []
        self._trash_ready = threading.Condition(self._mutex)
        self._sweeper = None

    def expect(self, key):
        """A Slot for ``key``, registered before the request is put; the
        first call of a process waits for the stream to be created."""
        slot = Slot(self, key)
        with self._mutex:
            self._waiting[key] = slot
            if self._thread is None:
                self._opened.clear()
                self._error = None
                self._thread = threading.Thread(
                    target=self._run, name='routed-replies', daemon=True)
                self._thread.start()
        if not self._opened.wait(OPEN_TIMEOUT):
            self.forget(key)
            raise errors.EtcdUnavailable(
                f'no watch on {self.prefix} in {OPEN_TIMEOUT:.0f}s: '
                f'{self._error or "etcd did not answer"}')
        return slot

    def forget(self, key):
        with self._mutex:
            self._waiting.pop(key, None)

    def discard(self, keys):
        """Delete ``keys`` soon, in a thread of this object (a used reply
        and its request: nothing waits for that)."""
        with self._mutex:
            self._trash.extend(keys)
            if self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name='routed-sweep', daemon=True)
                self._sweeper.start()
            self._trash_ready.notify()

    def _sweep(self):
        while True:
            with self._mutex:
                while not self._trash:
                    self._trash_ready.wait()
            time.sleep(SWEEP_DELAY)
            with self._mutex:
                keys, self._trash = self._trash[:64], self._trash[64:]
            try:
                self.etcd.txn([], [etcdlib.op_delete(k) for k in keys])
            except errors.CoordError as exc:
                # Replies expire with their lease; requests were claimed.
                LOG.info('used replies not deleted: %s', exc)

    # -- the stream --

    def _run(self):
        first = True
        idle_since = time.monotonic()
        pause = 0.5
        while True:
            try:
                endpoint = self.etcd.endpoint()
                watch = self.etcd.watch(self.prefix, 0, prefix=True)
            except Exception as exc:
                self._error = exc
                with self._mutex:
                    if not self._waiting:
                        # Nobody to serve: the next caller starts again.
                        self._thread = None
                        return
                LOG.warning('routed replies: no watch on %s: %s',
                            self.prefix, exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            pause = 0.5
            try:
                self._opened.set()
                if not first:
                    self._rescan()
                first = False
                # A stream stays on the endpoint it was opened on: after the
                # client failed over, a new one is opened on the new one.
                while not watch.dead and self.etcd.endpoint() == endpoint:
                    event = watch.get(1.0)
                    if event and event[0] == 'PUT':
                        self._deliver(event[1])
                    with self._mutex:
                        if self._waiting:
                            idle_since = time.monotonic()
                        elif time.monotonic() - idle_since > self.idle:
                            self._thread = None
                            return
            finally:
                watch.cancel()
            LOG.info('routed replies: stream on %s lost or on a former '
                     'endpoint; opening it again', self.prefix)

    def _deliver(self, kv):
        with self._mutex:
            slot = self._waiting.pop(kv.key, None)
        if slot is not None:
            slot.deliver(kv)

    def _rescan(self):
        """After a lost stream: what was written while none was open."""
        with self._mutex:
            if not self._waiting:
                return
        try:
            kvs, _ = self.etcd.range(self.prefix, prefix=True)
        except errors.CoordError as exc:
            LOG.warning('routed replies: re-read failed: %s', exc)
            return
        for kv in kvs:
            self._deliver(kv)
