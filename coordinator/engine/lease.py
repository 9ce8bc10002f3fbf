"""LeaseTable: per-LV activation leases in etcd, bound to holders' sessions.

Per LV there is a *ledger* (who was granted it, in which mode; it outlives
sessions) and one *holder key* per host, attached to that host's session
lease. A ledger entry whose holder key is gone belongs to a host whose
session ended without releasing: that host may still have the LV active
until its fencer acts, so nobody else gets the LV until the grace period
has passed since the expiry was seen. Every change is a txn guarded by the
ledger's mod revision, so concurrent grants serialize per LV. A grant's
fencing token is the revision that wrote its holder key.
"""
import contextlib
import dataclasses
import json
import logging
import threading
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine import modes
from coordinator.engine import once as oncelib

LOG = logging.getLogger(__name__)

RECHECK = 2.0
# Grants remembered as written, per process (see LeaseTable._written).
WRITTEN_MAX = 4096


class LeaseTable:
    """Grant, release, list and watch activation leases for this host."""

    def __init__(self, etcd, keys, session, grace=3.0, once=None,
                 storage=None):
        self.etcd = etcd
        # storage(vg, host, session, why) -> True once that incarnation is
        # fenced at the storage (coordinator.storage.fence): then the
        # grace protects nothing and is not waited.
        self.storage = storage
        self.keys = keys
        self.session = session
        self.grace = grace
        self.once = once or oncelib.Once(etcd, keys.once())
        # When this process first saw each holder's session gone: the grace
        # is counted on our own monotonic clock, never against another
        # host's wall clock.
        self._orphans = {}
        # {(vg, lv): (ledger mod revision, holders)} as our own last grant
        # wrote them: a release compares that revision instead of reading
        # first (a lost compare answers with the current keys).
        self._written = {}
        # {(vg, lv): create revision of our reservation's ledger}
        self._reservations = {}
        self._written_mutex = threading.Lock()

    # -- reading --

    def read(self, vg, lv):
        """(holders, ledger mod revision, header revision) of one LV."""
        kvs, header = self.etcd.range(self.keys.lease(vg, lv), prefix=True)
        return self._state(vg, lv, kvs, header)

    def read_op(self, vg, lv):
        """The range request read() makes, to ride along another txn;
        read_from() reads its result."""
        return etcdlib.op_range(self.keys.lease(vg, lv), prefix=True)

    def read_from(self, vg, lv, kvs, revision):
        """read() from the result of read_op() in a txn at ``revision``."""
        return self._state(vg, lv, kvs, revision)

    def _read(self, vg, lv, also, rider=None):
        """read() and the results of the range requests ``also``, in one
        round trip (``rider`` on it, if not done)."""
        if not also and (rider is None or rider.done):
            return self.read(vg, lv) + ([],)
        reads = [etcdlib.op_range(self.keys.lease(vg, lv), prefix=True)] + \
            also
        res, ranges = self._txn(rider, [], reads, reads)
        return self._state(vg, lv, ranges[0], res.revision) + (ranges[1:],)

    def _txn(self, rider, compare, success, failure=(), once=False):
        """(result, range results) of a txn, ``rider`` on it."""
        def build(*guard):
            cmp, ok, fail = compare, success, failure
            if guard:
                cmp, ok = cmp + [guard[0]], ok + [guard[1]]
            return rider.carry(cmp, ok, fail) if rider else (cmp, ok, fail)
        res = self.once.txn(build) if once else self.etcd.txn(*build())
        return res, rider.outcome(res) if rider else res.ranges

    def _state(self, vg, lv, kvs, header):
        """read()'s answer from the LV's keys as read at ``header`` (also
        the failure branch of a txn that lost its compare)."""
        holders, ledger_rev, reserved = self._parse(kvs)
        if reserved:
            raise errors.LeaseConflict(
                f'{vg}/{lv} is reserved by {reserved["host"]} for '
                f'{reserved["op"]}')
        return holders, ledger_rev, header

    def _parse(self, kvs):
        ledger, ledger_rev, live, reserved = {}, 0, {}, None
        for kv in kvs:
            if kv.key.endswith('/ledger'):
                body = kv.json()
                ledger, ledger_rev = body.get('holders', {}), kv.mod_revision
                reserved = body.get('reserved')
            else:
                live[kv.key.rsplit('/', 1)[1]] = (kv.lease, kv.mod_revision)
        return self._holders(ledger, ledger_rev, live), ledger_rev, reserved

    @staticmethod
    def _holders(ledger, ledger_rev, live):
        """[Holder] from a ledger's entries and the holder keys, given as
        {host: (lease, mod revision)}."""
        holders = []
        for host, entry in sorted(ledger.items()):
            key = live.get(host)
            broken = bool(entry.get('broken'))
            alive = key is not None and key[0] == entry.get('session') \
                and not broken
            # A grant learns its token (its txn's revision) only after the
            # write, so its entry is stored without one; the next ledger
            # write stores it. Until then the entry came from the last
            # write: its token is the ledger's mod revision.
            token = key[1] if alive else \
                (entry.get('token') or ledger_rev)
            holders.append(modes.Holder(
                host=host, mode=entry['mode'], instance=entry.get('instance'),
                token=token, since=entry.get('since', 0.0),
                session=entry.get('session', 0), alive=alive,
                uuid=entry.get('uuid'), broken=broken))
        return holders

    def holders(self, vg, lv):
        """Current holders of one LV."""
        return self.read(vg, lv)[0]

    def list(self):
        """{(vg, lv): [Holder]} for every LV with a lease."""
        # One range read, decoded only as far as needed: a holder key's
        # value is never read here (its lease and revision are), and no KV
        # object is made per key (5,000 leases are 10,000 keys).
        root = self.keys.leases()
        cut = len(root)
        ledgers, live = {}, {}
        for kv in self.etcd.range_raw(root, prefix=True):
            key = etcdlib.unb64(kv['key']).decode()
            parts = key[cut:].split('/')
            if len(parts) < 2:
                continue
            name = (parts[0], parts[1])
            if key.endswith('/ledger'):
                ledgers[name] = (kv.get('value'),
                                 int(kv.get('mod_revision', 0)))
            else:
                live.setdefault(name, {})[parts[-1]] = (
                    int(kv.get('lease', 0)), int(kv.get('mod_revision', 0)))
        result = {}
        for name in sorted(ledgers):
            value, ledger_rev = ledgers[name]
            body = json.loads(etcdlib.unb64(value)) if value else {}
            holders = self._holders(body.get('holders', {}), ledger_rev,
                                    live.get(name, {}))
            if holders:
                result[name] = holders
        return result

    def grace_left(self, vg, lv, holder):
        """Seconds before a holder whose session ended may be superseded."""
        if holder.alive:
            return 0.0
        if self.storage and not holder.broken and self.storage(
                vg, holder.host, holder.session, f'takeover of {vg}/{lv}'):
            return 0.0
        seen = self._orphans.setdefault(
            (vg, lv, holder.host, holder.session, holder.broken),
            time.monotonic())
        # A broken holder's session may be alive and unfenced: unless it
        # acknowledges (drops its entry), wait for that session to run out.
        wait = self.grace + (self.session.ttl if holder.broken else 0)
        return max(0.0, wait - (time.monotonic() - seen))

    # -- writing --

    def grant(self, vg, lv, mode=modes.EXCLUSIVE, instance=None, wait=0.0,
              uuid=None):
        """Grant this host a lease on vg/lv; returns our Holder.

        With ``wait`` > 0 a conflicting or fencing holder is waited for (by
        watch) up to that many seconds before the error is raised.
        """
        return self.claim(vg, lv, mode, instance, wait, uuid)[0]

    def claim(self, vg, lv, mode=modes.EXCLUSIVE, instance=None, wait=0.0,
              uuid=None):
        """As grant(), and whether this call granted anything (False for
        an idempotent re-grant), so a failed activation knows whether to
        release."""
        return self.claim_with((), vg, lv, mode, instance, wait, uuid)[:2]

    def claim_with(self, also, vg, lv, mode=modes.EXCLUSIVE, instance=None,
                   wait=0.0, uuid=None, rider=None):
        """As claim(), and the results of the range requests ``also``,
        read in the txn that granted (at its revision) or, for a re-grant,
        with the LV's keys: what an activation must know as of its grant
        costs no round trip of its own. ``rider`` (engine.rider) rides
        along the first txn that can carry it; RiderLost if it fails
        there (nothing granted)."""
        modes.validate(mode, instance)
        deadline = time.monotonic() + wait
        also = list(also)
        # No ledger is the common case (a free LV has none): first try the
        # grant as if a read had found none, guarded by that very compare
        # (ledger absent); a lost compare answers with the LV's keys, so it
        # costs no more than the read it replaces. Not when this process
        # knows of a ledger (its own grant: a re-grant).
        state = None if (vg, lv) in self._written else ([], 0, 0, None)
        while True:
            self.session.check()
            holders, ledger_rev, _, extra = state or \
                self._read(vg, lv, also, rider)
            state = None
            want = modes.Holder(host=self.session.host, mode=mode,
                                instance=instance, since=time.time(),
                                session=self.session.id, uuid=uuid)
            try:
                new, changed = modes.decide(
                    holders, want,
                    lambda h: self.grace_left(vg, lv, h))
            except errors.LeaseConflict as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                pause = min(left, RECHECK)
                if isinstance(exc, errors.LeaseFenceWait):
                    pause = min(pause, max(0.01, max(
                        self.grace_left(vg, lv, h) for h in exc.holders)))
                self._wait_change(vg, lv, (holders, ledger_rev), pause)
                continue
            mine = next(h for h in new if h.host == self.session.host)
            if not changed:
                if extra is None and (also or rider and not rider.done):
                    extra = self._txn(rider, [], also, also)[1]
                return mine, False, extra or []
            res, ranges = self._write(vg, lv, ledger_rev, new, mine, also,
                                      rider)
            if res.succeeded:
                mine.token = res.revision
                # The new ledger lists no vanished holder any more.
                self._forget_orphans(vg, lv)
                LOG.info('granted %s/%s to %s: %s', vg, lv, mine.host,
                         mine.describe())
                return mine, True, ranges
            # A lost race (another grant or release in between): decide
            # again on the keys the failed txn read.
            state = self._state(vg, lv, ranges[0], res.revision) + \
                (ranges[1:],)

    def _write(self, vg, lv, ledger_rev, new, mine, also=(), rider=None):
        entries = {h.host: h.ledger_entry() for h in new}
        holder_key = self.keys.lease_holder(vg, lv, mine.host)
        value = {'session': self.session.id, 'mode': mine.mode,
                 'instance': mine.instance, 'since': mine.since,
                 'uuid': mine.uuid}
        ledger = self.keys.lease_ledger(vg, lv)

        # Guarded by a once-marker when "no ledger" is the compare: it
        # holds again once the LV is released, and a late second delivery
        # must not grant it anew.
        res, ranges = self._txn(
            rider, [etcdlib.cmp_mod(ledger, ledger_rev)],
            [etcdlib.op_put(ledger, {'holders': entries}),
             etcdlib.op_put(holder_key, value, lease=self.session.id)]
            + list(also),
            [etcdlib.op_range(self.keys.lease(vg, lv), prefix=True)]
            + list(also), once=not ledger_rev)
        if res.succeeded:
            # The ledger as written, tokens included (ours is this txn's
            # revision, which wrote our holder key).
            written = [dataclasses.replace(h, token=res.revision)
                       if h.host == mine.host else h for h in new]
            self._remember(vg, lv, res.revision, written)
        else:
            self._written.pop((vg, lv), None)
        return res, ranges

    def _remember(self, vg, lv, revision, holders):
        with self._written_mutex:
            if len(self._written) >= WRITTEN_MAX:
                # Grants released by another process of this host: the
                # oldest go first (a stale one only costs a lost compare).
                self._written.pop(next(iter(self._written)), None)
            self._written[(vg, lv)] = (revision, holders)

    def rebind(self, vg, lv, token, uuid):
        """Carry our grant of vg/lv with ``token`` over to the current
        session; the new Holder, or None if that grant is no longer ours.

        Our entry still in the ledger with the same token and LV means
        nobody was granted the LV since (a takeover drops it), so the grant
        may continue under a new session, with its instance and mode."""
        while True:
            self.session.check()
            try:
                holders, ledger_rev, _ = self.read(vg, lv)
            except errors.LeaseConflict:
                return None
            mine = next((h for h in holders
                         if h.host == self.session.host), None)
            # The ledger names the LV only when the granter knew it; the
            # token alone then ties the entry to our record.
            if mine is None or mine.broken or mine.token != token or \
                    mine.uuid not in (None, uuid):
                return None
            if mine.alive and mine.session == self.session.id:
                return mine
            if mine.alive:
                return None
            # Stored without a token, like a fresh grant: once this session
            # ends too, the entry's token is then the ledger revision this
            # write makes, i.e. the new holder key's (what the book keeps).
            mine.session, mine.alive, mine.token = self.session.id, True, None
            res, _ = self._write(vg, lv, ledger_rev, holders, mine)
            if res.succeeded:
                mine.token = res.revision
                LOG.warning('grant of %s/%s (token %s) carried over to '
                            'session %x', vg, lv, token, self.session.id)
                return mine

    def release(self, vg, lv, host=None, rider=None):
        """Drop ``host``'s (default: our) grant on vg/lv; True if held.
        ``rider`` (engine.rider, without compares) rides along the txn that
        drops the grant, if there is one."""
        host = host or self.session.host
        # Our own grant as we wrote it: the compare on its revision stands
        # for the read (what else wrote the ledger since fails it).
        known = self._written.get((vg, lv)) \
            if host == self.session.host else None
        state = (known[1], known[0], 0) if known else None
        while True:
            holders, ledger_rev, _ = state or self.read(vg, lv)
            if not any(h.host == host for h in holders):
                self.etcd.delete(self.keys.lease_holder(vg, lv, host))
                return False
            try:
                res, ranges = self._commit_without(vg, lv, ledger_rev,
                                                   holders, host, rider)
            except errors.SessionLost:
                # Only a rider puts on a lease here (a reply's, gone):
                # nothing applied, and the release goes on without it.
                if rider is None or rider.done:
                    raise
                rider, state = None, (holders, ledger_rev, 0)
                continue
            if res.succeeded:
                LOG.info('released %s/%s from %s', vg, lv, host)
                return True
            state = self._state(vg, lv, ranges[0], res.revision)

    def release_grant(self, vg, lv, token):
        """Drop our grant on vg/lv if it is still the one with ``token``
        (a newer grant of ours is left alone); True if dropped."""
        host = self.session.host
        state = None
        while True:
            holders, ledger_rev, _ = state or self.read(vg, lv)
            mine = next((h for h in holders if h.host == host), None)
            if mine is None or mine.token != token:
                return False
            res, ranges = self._commit_without(vg, lv, ledger_rev, holders,
                                               host, None)
            if res.succeeded:
                LOG.info('released %s/%s from %s (token %s)', vg, lv, host,
                         token)
                return True
            state = self._state(vg, lv, ranges[0], res.revision)

    def break_(self, vg, lv, host, token, force=False):
        """Admin override: drop ``host``'s grant, proven by its token."""
        holders, ledger_rev, _ = self.read(vg, lv)
        h = next((h for h in holders if h.host == host), None)
        if h is None:
            raise errors.InvalidInput('host', f'{host} holds no lease on '
                                      f'{vg}/{lv}')
        if h.token != token:
            raise errors.InvalidInput('token', f'{token} is not the current '
                                      f'token of {h.describe()}')
        if h.alive and not force:
            raise errors.LeaseConflict(
                f'refusing to break: the session of {h.describe()} is alive '
                f'(use force, after making sure it is not in use)', [h])
        if h.alive:
            # The holder may still write: mark the entry broken and drop
            # its holder key. It fences and drops the entry itself (its
            # acknowledgement); until then nobody is granted the LV
            # sooner than TTL + grace.
            ledger = self.keys.lease_ledger(vg, lv)
            entries = {x.host: x.ledger_entry() for x in holders}
            entries[host]['broken'] = True
            entries[host]['token'] = h.token
            done = self.etcd.txn(
                [etcdlib.cmp_mod(ledger, ledger_rev)],
                [etcdlib.op_put(ledger, {'holders': entries}),
                 etcdlib.op_delete(self.keys.lease_holder(vg, lv, host))]
            ).succeeded
        else:
            done = self._commit_without(vg, lv, ledger_rev, holders,
                                        host)[0].succeeded
        if not done:
            raise errors.LeaseConflict(f'{vg}/{lv} changed while breaking; '
                                       f'read it again', holders)
        LOG.warning('lease %s/%s of %s broken by admin', vg, lv, host)
        return h

    def wait_gone(self, vg, lv, host, timeout):
        """True once ``host`` no longer appears in vg/lv's ledger (a
        broken holder's acknowledgement) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                holders, ledger_rev, _ = self.read(vg, lv)
            except errors.LeaseConflict:
                return True
            if not any(h.host == host for h in holders):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wait_change(vg, lv, (holders, ledger_rev),
                              min(left, RECHECK))

    def reserve(self, vg, lv, op):
        """Keep vg/lv from being granted while ``op`` (delete, rename)
        runs; refused, naming the holders, if anyone holds it. The mark is
        bound to our session, so it cannot outlive a crash."""
        ledger = self.keys.lease_ledger(vg, lv)
        res = self.once.txn(lambda cmp, put: (
            [etcdlib.cmp_create(ledger, 0), cmp],
            [etcdlib.op_put(ledger, {'holders': {}, 'reserved': {
                'host': self.session.host, 'op': op}},
                lease=self.session.id), put],
            [etcdlib.op_range(self.keys.lease(vg, lv), prefix=True)]))
        if not res.succeeded:
            holders, _, reserved = self._parse(res.ranges[0])
            reserved = reserved or {}
            who = ', '.join(h.describe() for h in holders) or \
                f'{reserved.get("host")} ({reserved.get("op")})'
            raise errors.LeaseConflict(f'{vg}/{lv} is in use: held by {who}',
                                       holders)
        with self._written_mutex:
            self._reservations[(vg, lv)] = res.revision

    @contextlib.contextmanager
    def reserved(self, vg, lv, op):
        """reserve() for the block, unreserve() after it."""
        self.reserve(vg, lv, op)
        try:
            yield
        finally:
            self.unreserve(vg, lv)

    def unreserve(self, vg, lv):
        """Drop our reservation of vg/lv."""
        ledger = self.keys.lease_ledger(vg, lv)
        with self._written_mutex:
            revision = self._reservations.pop((vg, lv), None)
        # That very reservation: a late second delivery of this txn must
        # not drop a later one of ours.
        cmp = etcdlib.cmp_create(ledger, revision) if revision else \
            etcdlib.cmp_lease(ledger, self.session.id)
        self.etcd.txn([cmp], [etcdlib.op_delete(ledger)])

    def _commit_without(self, vg, lv, ledger_rev, holders, host,
                        rider=None):
        rest = modes.after_release(holders, host)
        ledger = self.keys.lease_ledger(vg, lv)
        ops = [etcdlib.op_delete(self.keys.lease_holder(vg, lv, host))]
        if rest:
            ops.append(etcdlib.op_put(
                ledger, {'holders': {h.host: h.ledger_entry()
                                     for h in rest}}))
        else:
            ops.append(etcdlib.op_delete(ledger))
        res, ranges = self._txn(
            rider, [etcdlib.cmp_mod(ledger, ledger_rev)], ops,
            [etcdlib.op_range(self.keys.lease(vg, lv), prefix=True)])
        if res.succeeded:
            self._written.pop((vg, lv), None)
            if not rest:
                self._forget_orphans(vg, lv)
        return res, ranges

    def _forget_orphans(self, vg, lv):
        # Grace clocks of holders no ledger lists any more: a long-lived
        # daemon must not keep one per LV it ever saw.
        for key in [k for k in self._orphans if k[:2] == (vg, lv)]:
            del self._orphans[key]

    def _wait_change(self, vg, lv, seen, timeout):
        """Return once vg/lv may differ from ``seen`` (holders and ledger
        revision as read), at the latest after ``timeout``."""
        # From now, then a look: a watch from the read's revision is
        # "unsynced" in etcd once anything was written since (its events
        # held up to 100 ms), and so is one "from now" if a write lands
        # while etcd registers it.
        with self.etcd.watch(self.keys.lease(vg, lv), 0,
                             prefix=True) as watch:
            try:
                if self.read(vg, lv)[:2] != seen:
                    return
            except errors.LeaseConflict:
                return  # reserved meanwhile: the caller reads it
            watch.get(timeout)

    def mine(self):
        """Every (vg, lv, Holder) this host is granted, alive or not."""
        return [(vg, lv, h) for (vg, lv), hs in self.list().items()
                for h in hs if h.host == self.session.host]

    def watch(self, start_revision=None):
        """A Watch over every lease key (for event streams)."""
        if start_revision is None:
            _, start_revision = self.etcd.range(self.keys.leases(),
                                                prefix=True, limit=1)
            start_revision += 1
        return self.etcd.watch(self.keys.leases(), start_revision,
                               prefix=True)
