"""Once: a txn that applies at most once, however often etcd receives it.

A write whose answer is lost is sent again (Etcd.call), and etcd can apply
a request after its client gave up on it (a proposal that waited out an
election, then reached the new leader). A txn guarded only by "this key is
absent" then applies a second time once its owner has deleted that key: a
VG lock key comes back after its release and blocks the VG, a ledger comes
back as a grant nobody holds, a routed request runs twice.

Once adds to such a txn a compare on a fresh key and the put of that key,
bound to a short lease of its own: a second delivery finds the key and
fails its compare; after the lease has expired it fails whole, because it
puts a key on a lease that no longer exists. Nothing has to delete the
keys, and no horizon is assumed. A txn given up unanswered may still
apply (or have applied): with ``withdraw`` ops, its marker is put with
them until etcd takes it, so it either fails when it comes or is undone.
"""
import collections
import logging
import threading
import time
import uuid

from coordinator import errors
from coordinator.engine import etcd as etcdlib

LOG = logging.getLogger(__name__)

# How long a once-key lives; a lease is used for new txns only while far
# enough from its end that a txn retried for the whole retry window still
# finds it (else a retry would read as "session lost").
TTL = 120


class Once:
    """Runs txns at most once, each guarded by a fresh marker."""

    def __init__(self, etcd, prefix, ttl=TTL):
        self.etcd = etcd
        self.prefix = prefix
        # A txn is given up retry_window + timeout after it was first sent.
        self._span = etcd.retry_window + etcd.timeout
        self.ttl = max(ttl, int(4 * self._span) + 1)
        self._lease = None
        self._granted = 0.0
        self._renewing = False
        self._mutex = threading.Lock()
        # Withdrawals etcd has not taken yet, oldest first, and the one
        # thread that sends them (however many txns were given up).
        self._withdrawals = collections.deque()
        self._withdrawer = None

    def lease(self):
        """The lease new markers go on now (granted when none is usable)."""
        # Used while younger than ttl - 2 spans: the txn that carries it,
        # retried for as long as a call retries, lands well inside it.
        usable = self.ttl - 2 * self._span
        with self._mutex:
            age = time.monotonic() - self._granted
            if self._lease is None or age > usable:
                self._lease, self._granted = self._grant()
            elif age > usable / 2 and not self._renewing:
                # Its successor is granted off the caller's path.
                self._renewing = True
                threading.Thread(target=self._renew, daemon=True,
                                 name='once-lease').start()
            return self._lease

    def _grant(self):
        granted = time.monotonic()
        return self.etcd.lease_grant(self.ttl), granted

    def _renew(self):
        lease = None  # then the next txn() grants in line
        with errors.logged(LOG, 'once-lease not renewed ahead of time'):
            lease = self._grant()
        with self._mutex:
            if lease:
                self._lease, self._granted = lease
            self._renewing = False

    def txn(self, build, withdraw=None):
        """``etcd.txn(*build(compare, put))``: a txn made at most once by
        the guard it is built with; its result. ``withdraw``: (compare,
        ops) that undo its success branch where the compare holds, run
        if etcd does not answer (below)."""
        for attempt in (1, 2):
            lease = self.lease()
            guard = self._guard(lease)
            try:
                return self.etcd.txn(*build(*guard))
            except errors.EtcdUnavailable:
                # Given up, the txn may still apply (or have applied): put
                # its marker, so a delivery in flight fails its compare,
                # and undo one that applied, in one txn, until etcd takes
                # it.
                if withdraw:
                    self._queue_withdrawal(guard[1], *withdraw)
                raise
            except errors.SessionLost:
                # "lease not found": the caller's session, or our lease
                # gone early (revoked by hand, etcd restored). Nothing
                # applied; a fresh lease tells which.
                if attempt == 2:
                    raise
                with self._mutex:
                    if self._lease == lease:
                        self._lease = None

    def _queue_withdrawal(self, put, compare, undo):
        with self._mutex:
            self._withdrawals.append(_Withdrawal(compare, put, undo))
            if self._withdrawer is None:
                thread = threading.Thread(
                    target=self._withdraw, name='once-withdraw', daemon=True)
                thread.start()
                self._withdrawer = thread  # only once it runs

    def _withdraw(self, pause=0.5):
        """Send the queued withdrawals until etcd has taken each."""
        try:
            self._drain(pause)
        except BaseException:
            # Died: the next give-up starts a thread again.
            with self._mutex:
                self._withdrawer = None
            raise

    def _drain(self, pause):
        while True:
            with self._mutex:
                if not self._withdrawals:
                    # In the lock a new item takes: it starts a thread.
                    self._withdrawer = None
                    return
                batch = list(self._withdrawals)
            failed = None
            for item in batch:
                try:
                    self._send(item)
                except Exception as exc:  # etcd away, or refusing this one
                    failed = exc
                    if isinstance(exc, errors.EtcdUnavailable):
                        break  # the rest would wait out the same outage
                    continue
                with self._mutex:
                    self._withdrawals.remove(item)  # by identity
            if failed is not None:
                LOG.warning('once: %d txn(s) given up not withdrawn yet: %s',
                            len(self._withdrawals), failed)
                time.sleep(pause)

    def _send(self, item):
        marker = [item.put] if item.put else []
        try:
            self.etcd.txn(item.compare, marker + item.undo, marker)
        except errors.SessionLost:
            if not marker:
                raise
            # The marker's lease is gone: nothing can apply any more.
            item.put = None
            self.etcd.txn(item.compare, item.undo, [])

    def _guard(self, lease):
        key = f'{self.prefix}{uuid.uuid4().hex}'
        return ({'key': etcdlib.b64(key), 'target': 'VERSION',
                 'result': 'EQUAL', 'version': 0},
                etcdlib.op_put(key, '', lease=lease))


class _Withdrawal:
    """A txn given up: its marker's put (None once its lease is gone: no
    delivery can apply then) and the undo of its success branch where
    ``compare`` holds."""

    __slots__ = ('compare', 'put', 'undo')

    def __init__(self, compare, put, undo):
        self.compare, self.put, self.undo = list(compare), put, list(undo)
