"""VGLock: a cluster-wide FIFO mutex over one VG's metadata.

The recipe is etcd's concurrency.Mutex: each contender puts a key under the
VG's lock prefix, attached to its session lease; keys are served in order of
creation revision; a waiter watches only its predecessor, so a release wakes
exactly one process and no one polls. A crashed holder's key vanishes with
its session.
"""
import logging
import os
import threading
import time
import uuid

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine import once as oncelib

LOG = logging.getLogger(__name__)

# A lost watch stream (etcd member killed) must not strand a waiter: it
# re-reads its predecessor this often even when no event arrived.
RECHECK = 2.0


def _queue_empty(prefix):
    # A compare over a range holds for every key in it; over no keys it
    # compares the zero KV, so version == 0 means "nobody queued".
    cmp = {'key': etcdlib.b64(prefix), 'range_end':
           etcdlib.b64(etcdlib.prefix_end(prefix)),
           'target': 'VERSION', 'result': 'EQUAL', 'version': 0}
    return cmp


def _delete_until_gone(etcd, key, pause=0.5):
    while True:
        try:
            etcd.delete(key)
            return
        except errors.EtcdUnavailable as exc:
            LOG.warning('VG lock key %s not released yet: %s', key, exc)
            time.sleep(pause)


def _delete_in_thread(etcd, key):
    # Left behind, our queue key would block the VG for everyone (it lives
    # as long as our session): keep deleting it until it is gone.
    threading.Thread(target=_delete_until_gone, args=(etcd, key),
                     name='vglock-release', daemon=True).start()


def _delete(etcd, key):
    """Delete our queue key now, or in a thread if etcd does not answer
    (raising what it raised)."""
    try:
        etcd.delete(key)
    except errors.EtcdUnavailable:
        _delete_in_thread(etcd, key)
        raise


def left_behind(name, session_id):
    """True for a queue key name of ``session_id`` whose process is gone.

    The session is shared by every process of a daemon, and a session
    worker that restarts resumes it: the key of a worker that is still
    alive (same process group) may be holding the VG, and must stay."""
    head = f'{session_id:016x}-'
    if not name.startswith(head):
        return False
    pid, sep, _ = name[len(head):].partition('-')
    try:
        pid = int(pid, 16)
    except ValueError:
        return True
    if not sep:
        return True  # a key of an older release: no pid in it
    try:
        return os.getpgid(pid) != os.getpgid(0)
    except ProcessLookupError:
        return True


class Hold:
    """A held VG lock: the compare that proves it, and its release."""

    def __init__(self, lock, key, revision, immediate, results):
        self.lock = lock
        self.key = key
        self.revision = revision
        self.immediate = immediate
        # Range results of the ops run with an immediate acquisition.
        self.results = results
        self.acquired_at = time.monotonic()

    def guard(self):
        """etcd compare that holds only while this lock is ours."""
        return etcdlib.cmp_create(self.key, self.revision)

    def txn(self, ops, what='guarded action'):
        """Run ``ops`` only if we still hold the lock; else LockLost."""
        res = self.lock.etcd.txn([self.guard()], ops)
        if not res.succeeded:
            raise errors.LockLost(
                f'VG {self.lock.vg} lock lost before {what} '
                f'(session expired or lock broken)')
        return res

    def check(self):
        """Prove ownership with a compare; raise LockLost if not ours."""
        self.txn([], 'check')

    def release(self, ops=()):
        """Delete our queue key (with ``ops`` in the same txn); the txn's
        result (its range results among them), None without ``ops``."""
        if not ops:
            _delete(self.lock.etcd, self.key)
            return None
        try:
            return self.txn(list(ops) + [etcdlib.op_delete(self.key)],
                            'release')
        except errors.EtcdUnavailable:
            _delete_in_thread(self.lock.etcd, self.key)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class VGLock:
    """FIFO mutex on one VG, bound to this host's session."""

    def __init__(self, etcd, keys, session, vg, once=None):
        self.etcd = etcd
        self.keys = keys
        self.session = session
        self.vg = vg
        self.prefix = keys.vg_lock(vg)
        self.once = once or oncelib.Once(etcd, keys.once())

    def acquire(self, op='', timeout=60.0, with_ops=(), undo_with=()):
        """Queue up and wait until first; ``with_ops`` run atomically with
        the acquisition when the queue was empty (``Hold.immediate``);
        ``undo_with`` undo them, should that acquisition be withdrawn."""
        self.session.check()
        deadline = time.monotonic() + timeout
        # A name never used again: etcd can apply a write after its client
        # gave up on it (coordinator.engine.once), and a late delete of a
        # name used again would take a later holder's key.
        key = (f'{self.prefix}{self.session.id:016x}-{os.getpid():x}-'
               f'{uuid.uuid4().hex[:12]}')
        value = {'host': self.session.host, 'op': op, 'pid': os.getpid(),
                 'since': time.time()}
        put = etcdlib.op_put(key, value, lease=self.session.id)
        # At most once: a late second delivery of this txn (after our
        # release) would queue the key again, under our live session, and
        # block the VG for good (coordinator.engine.once). Both branches put
        # the marker: a delivery that found the queue busy must not apply
        # once it is empty. Flat, not a nested "queue empty?" txn: the
        # uncontended acquire is cheaper for etcd; a contended one queues
        # in a second round trip, spent while the holder still holds.
        # Given up unanswered, a txn may apply later: withdrawn then (its
        # delivery fenced off, or our key deleted, with what it put while
        # ours), or it would hold the VG under our live session for good.
        ours = [{'key': etcdlib.b64(key), 'target': 'VERSION',
                 'result': 'GREATER', 'version': 0}]
        res = self.once.txn(lambda cmp, once_put: (
            [cmp, _queue_empty(self.prefix)],
            [once_put, put] + list(with_ops),
            [once_put, etcdlib.op_range(key)]),
            (ours, [etcdlib.op_delete(key)] + list(undo_with)))
        if res.succeeded:
            return Hold(self, key, res.revision, True, res.ranges)
        kvs = res.ranges[0]
        if not kvs:
            # Others hold or wait: queue up behind them.
            res = self.once.txn(lambda cmp, once_put: (
                [cmp], [once_put, put, etcdlib.op_range(key)],
                [etcdlib.op_range(key)]), (ours, [etcdlib.op_delete(key)]))
            kvs = res.ranges[0]
        # Queued behind others, or this is our own retry of a txn whose
        # first delivery applied (its answer lost): either way our key's
        # place in the queue is what counts.
        if not kvs:
            raise errors.LockLost(f'VG {self.vg} lock queue entry vanished '
                                  f'while queueing (session expired?)')
        revision = kvs[0].create_revision
        try:
            self._wait_predecessors(key, revision, deadline)
        except BaseException:
            try:
                _delete(self.etcd, key)
            except errors.EtcdUnavailable:
                pass  # being deleted in a thread; what we raise is below
            raise
        return Hold(self, key, revision, False, [])

    def _wait_predecessors(self, key, revision, deadline):
        # Wait until no key created before ours remains (etcd waitDeletes).
        # One read returns our own key and up to two predecessors: ours
        # missing means the session expired while we queued.
        while True:
            kvs, _ = self.etcd.range(
                self.prefix, prefix=True, last_created=True, limit=3,
                max_create_revision=revision)
            if not kvs or kvs[0].key != key:
                raise errors.LockLost(
                    f'VG {self.vg} lock queue entry vanished while waiting '
                    f'(session expired?)')
            if len(kvs) == 1:
                return
            # No key older than ours can appear later, so when a sole
            # predecessor goes we are first: no need to read again.
            if self._await_delete(kvs[1].key, deadline) and \
                    len(kvs) == 2:
                self.session.check()
                return

    def _await_delete(self, pred, deadline):
        """True on the predecessor's DELETE event, False if it is found
        gone by a re-check (the event may have been missed)."""
        # Watch from now, not from the read: a watch that starts in the
        # past is "unsynced" in etcd, and its events (even later ones) wait
        # for etcd's 100 ms catch-up loop. "Now" is the revision etcd read
        # just before registering the watch, and a write in between makes
        # it unsynced all the same: a read once the watch exists sees what
        # it may hold back.
        with self.etcd.watch(pred, 0) as watch:
            if self.etcd.get(pred) is None:
                return True
            for event in watch.until(deadline, RECHECK):
                if event and event[0] == 'DELETE':
                    return True
                if event is None and self.etcd.get(pred) is None:
                    return False
                self.session.check()
        raise errors.LockTimeout(f'VG {self.vg} lock not acquired in time; '
                                 f'{self.describe_holder()}')

    def holder(self):
        """The current holder's queue entry (KV) or None."""
        kvs, _ = self.etcd.range(self.prefix, prefix=True,
                                 first_created=True, limit=1)
        return kvs[0] if kvs else None

    def queue(self):
        """Every queue entry, holder first, as dicts."""
        kvs, _ = self.etcd.range(self.prefix, prefix=True,
                                 first_created=True)
        return [dict(kv.json(), key=kv.key, revision=kv.create_revision)
                for kv in kvs]

    def describe_holder(self):
        """Human-readable 'held by ...' for errors."""
        kv = self.holder()
        if kv is None:
            return 'no current holder'
        h = kv.json()
        age = time.time() - h.get('since', time.time())
        return (f'held by {h.get("host")} (pid {h.get("pid")}) for '
                f'{h.get("op") or "an operation"} since {age:.1f}s')
