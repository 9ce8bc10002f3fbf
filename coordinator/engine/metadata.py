"""MetadataGuard: VG metadata changes under the VG lock, seqno recorded.

The discipline of DESIGN.md: take the VG lock; compare the VG's on-disk
metadata seqno with the one recorded in etcd after the last change; refuse
to act on an older view (rescan, then fail clearly); report a newer one that
no coordinated change explains; prove ownership by compare right before the
command; record the new seqno, guarded by the same compare, after it.
An *intent* key written with the lock marks a change in flight, so the next
holder can tell a holder that died mid-command from an out-of-band change.
"""
import concurrent.futures
import logging
import threading
import time

from coordinator import errors
from coordinator.engine import deadline
from coordinator.engine import etcd as etcdlib
from coordinator.engine import once as oncelib
from coordinator.engine import vglock

LOG = logging.getLogger(__name__)

# Ownership proven by the acquiring txn is trusted this long: a lease can
# not expire sooner than TTL after its last keepalive, so a fresh proof on a
# healthy session stands; anything slower is proven again by compare.
FRESH_PROOF = 0.5


class MetadataGuard:
    """Runs ``action`` under the VG lock with the seqno discipline."""

    def __init__(self, etcd, keys, session, read_seqno, lock_timeout=60.0,
                 rescans=3, rescan_delay=0.2, on_alert=None, once=None,
                 grace=0.0, inflight=None, storage=None):
        self.etcd = etcd
        # A holder whose session ended mid-change is superseded only
        # after this grace, as a grant holder is: its watchdog resets it
        # first (doc/design.md, "The VG lock and the watchdog").
        self.grace = grace
        self._orphans = {}
        # inflight.Registry: holds and their commands, for the fencer.
        self.inflight = inflight
        # storage(vg, host, session, why): fences at the storage the holder
        # that died mid-command (its metadata write may still be queued).
        self.storage = storage
        self.keys = keys
        self.session = session
        # read_seqno(vg, fresh) -> int: the VG's committed seqno as this
        # host sees it on disk; fresh=True must bypass any cache.
        self.read_seqno = read_seqno
        self.lock_timeout = lock_timeout
        self.rescans = rescans
        self.rescan_delay = rescan_delay
        self.on_alert = on_alert or (lambda vg, msg: None)
        self.once = once or oncelib.Once(etcd, keys.once())
        self._helper = None
        self._helper_mutex = threading.Lock()

    def recorded(self, vg):
        """(recorded seqno or None, in-flight intent or None)."""
        return self.recorded_from(
            self.etcd.txn([], self.recorded_reads(vg)).ranges)

    def recorded_reads(self, vg):
        """The range requests recorded() makes, to ride along another txn
        (LeaseTable.claim_with); recorded_from() reads their results."""
        return [etcdlib.op_range(self.keys.vg_seqno(vg)),
                etcdlib.op_range(self.keys.vg_intent(vg))]

    @staticmethod
    def recorded_from(ranges):
        seq, intent = ranges
        return (seq[0].json()['seqno'] if seq else None,
                intent[0].json() if intent else None)

    def change(self, vg, op, action, timeout=None, also=(), into=None,
               after=None):
        """Run ``action()`` as one coordinated metadata change of ``vg``;
        the range requests ``also`` ride along the txn that records the
        change and releases the lock, their results appended to ``into``
        (nothing if that txn did not run). ``after()``, if given, runs
        once the change is on disk and its seqno read, while that txn is
        in flight (a helper thread); it is waited for before change()
        returns, and what it raised is raised then."""
        lock = vglock.VGLock(self.etcd, self.keys, self.session, vg,
                             self.once)
        seq_key, intent_key = self.keys.vg_seqno(vg), self.keys.vg_intent(vg)
        claim = [etcdlib.op_range(seq_key), etcdlib.op_range(intent_key),
                 etcdlib.op_put(intent_key, {'host': self.session.host,
                                             'session': self.session.id,
                                             'op': op, 'at': time.time()})]
        # Recorded before the lock is queued for: the fencer arms the
        # watchdog before this host can hold the lock.
        watched = self.inflight.hold(vg, op, self.session.id) \
            if self.inflight else None
        try:
            return self._change(lock, vg, op, action, timeout, also, into,
                                after, claim, watched)
        finally:
            if watched:
                watched.close()

    def _change(self, lock, vg, op, action, timeout, also, into, after,
                claim, watched):
        seq_key, intent_key = self.keys.vg_seqno(vg), self.keys.vg_intent(vg)
        hold = lock.acquire(op, self.lock_timeout if timeout is None
                            else timeout, with_ops=claim,
                            undo_with=[etcdlib.op_delete(intent_key)])
        proven = time.monotonic()
        if not hold.immediate:
            seq_kvs, intent_kvs = hold.txn(claim, 'claiming the VG').ranges
            proven = time.monotonic()
        else:
            seq_kvs, intent_kvs = hold.results[:2]
        started = done = False
        try:
            recorded = seq_kvs[0].json()['seqno'] if seq_kvs else None
            intent = intent_kvs[0].json() if intent_kvs else None
            if not self._fence_died(vg, intent):
                # Not fenced at the storage: its watchdog must reset it
                # first.
                self._outwait(vg, intent)
            self._reconcile(vg, recorded, intent)
            if (time.monotonic() - proven > FRESH_PROOF
                    or self.session.silent_for() > self.session.ttl / 2):
                hold.check()
            started = True
            # The command must be dead before the lock can lapse: the
            # session (and the lock key bound to it) lives at least TTL
            # past its last keepalive.
            with deadline.bound(self._lock_deadline, track=watched):
                result = action()
            done = True
        finally:
            if started and watched:
                self._survived(vg, watched)
            if started:
                res = self._record(hold, vg, op, seq_key, intent_key, done,
                                   also, after if done else None)
                if into is not None:
                    into.extend(res.ranges)
            else:
                hold.release([etcdlib.op_delete(intent_key)])
        return result

    def _outwait(self, vg, intent):
        """The last holder left its intent (it did not finish) and its
        session has ended: wait out the grace before touching the VG, so
        its host's watchdog resets it before a queued write of its
        command could land after ours."""
        if not intent or self.grace <= 0:
            return
        session = intent.get('session')
        if session == self.session.id:
            return  # this host's: its own fencer and watchdog decide
        if session is not None:
            try:
                if self.etcd.lease_ttl(session) > 0:
                    return  # alive: its host fences and pets as it must
            except errors.CoordError as exc:
                LOG.warning('VG %s: session %x of the last holder not '
                            'known (%s); waiting out the grace', vg,
                            session, exc)
        seen = self._orphans.setdefault((vg, session, intent.get('at')),
                                        time.monotonic())
        left = self.grace - (time.monotonic() - seen)
        if left > 0:
            LOG.warning('VG %s: %s lost its session during %r; waiting '
                        '%.1f s (grace) before changing the VG', vg,
                        intent.get('host'), intent.get('op'), left)
            time.sleep(left)

    def _survived(self, vg, watched):
        # The lock is not let go while a command of ours may still write
        # (killed, but in D state): it lapses only with the session, and
        # the watchdog, unpetted while that command lives once the
        # session is in doubt, resets this host first.
        pause, told = 0.05, False
        while watched.survivors():
            if not told:
                LOG.error('VG %s: an LVM command outlived its kill (D '
                          'state?); the VG lock is kept until it is gone',
                          vg)
                told = True
            time.sleep(pause)
            pause = min(1.0, pause * 2)

    def _fence_died(self, vg, intent):
        """An intent left by another session: its holder lost the lock
        mid-command, and the command may still be queued below LVM.
        Remove that incarnation's key first (with scsi-pr); True once
        that is proven (no grace to wait out then)."""
        if not (self.storage and intent and intent.get('session')) or \
                intent['session'] == self.session.id:
            return False
        if self.etcd.lease_ttl(intent['session']) > 0:
            return False  # alive: its own host fences, not fenced here
        fenced = self.storage(vg, intent['host'], intent['session'],
                              f'VG {vg} lock after {intent.get("op")!r}')
        if fenced is False:
            LOG.error('VG %s: %s died during %r and could not be fenced '
                      'at the storage; going on under the host-side fence',
                      vg, intent['host'], intent.get('op'))
        return bool(fenced)

    def _lock_deadline(self):
        margin = max(1.0, self.session.ttl / 5)
        last = self.session.last_ok
        end = last + self.session.ttl - margin
        window = getattr(self.inflight, 'window', None)
        # Killed when the fencer stops trusting the session: a command
        # that dies then lets the watchdog be petted again (no needless
        # reset); one that cannot die is what the reset is for.
        return min(end, last + window) if window else end

    def _reconcile(self, vg, recorded, intent):
        disk = self.read_seqno(vg, False)
        tries = 0
        while recorded is not None and disk < recorded:
            # Our view is older than the last coordinated change: rescan.
            if tries >= self.rescans:
                raise errors.SeqnoBehind(
                    f'VG {vg}: this host sees metadata seqno {disk} but '
                    f'{recorded} was recorded after the last change; the '
                    f'PV view here is stale (check multipath/caching)')
            tries += 1
            time.sleep(self.rescan_delay * tries)
            disk = self.read_seqno(vg, True)
        if recorded is not None and disk > recorded:
            if intent:
                LOG.warning('VG %s: adopting seqno %s after %s died during '
                            '%r', vg, disk, intent.get('host'),
                            intent.get('op'))
            else:
                msg = (f'VG {vg} metadata changed outside lvmcoord: seqno '
                       f'{disk} on disk, {recorded} recorded')
                LOG.error(msg)
                self.on_alert(vg, msg)
        return disk

    def _record(self, hold, vg, op, seq_key, intent_key, done, also=(),
                after=None):
        seqno = self.read_seqno(vg, True)
        # The caller's own work on what was just read (the reply's parse)
        # overlaps the round trip instead of following it.
        pending = self._start(after) if after else None
        try:
            res = hold.release([
                etcdlib.op_put(seq_key, {'seqno': seqno,
                                         'host': self.session.host,
                                         'op': op, 'at': time.time()}),
                etcdlib.op_delete(intent_key)] + list(also))
        except errors.LockLost as exc:
            # The command ran but the lock went: the intent stays behind so
            # the next holder adopts this seqno instead of crying foul.
            LOG.error('VG %s: lock lost after %r; seqno %s not recorded',
                      vg, op, seqno)
            # Only a command that succeeded committed anything.
            exc.committed = done
            raise
        finally:
            # Never left running past change(); what it raised counts only
            # once the change is recorded.
            failed = pending and pending.exception()
        if failed:
            raise failed
        return res

    def _start(self, fn):
        # One helper thread per guard, made on first use: a guard made
        # before a fork must not carry a pool whose thread stayed behind.
        with self._helper_mutex:
            if self._helper is None:
                self._helper = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix='guard-after')
            return self._helper.submit(fn)
