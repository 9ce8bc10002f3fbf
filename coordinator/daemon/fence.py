"""Fencer: stop this host's I/O on shared LVs before its session can expire.

etcd cannot expire the session lease before ``sent + TTL``, ``sent`` being
when the last successful keepalive left this host. Fencing at ``sent +
fraction * TTL`` leaves ``(1 - fraction) * TTL`` between our I/O stopping
and the lease expiring; other hosts wait a further grace period on top.
The deadline needs no etcd answer, so a partition cannot delay it.

A fence is undone only by proof (``prove``): the same grant, on the same
LV (UUID and extents), is still this host's. Anything else retires the
device: it goes without ever being writable again.

The kernel is the truth, not the fenced list: every tick, each device
fenced and not yet proven is looked up in the kernel (``stopped``, one
ioctl each), and one found writable (resumed behind our back: an admin's
``vgchange -ay``, a refresh, a ``dmsetup resume`` that timed out after the
kernel resumed) is fenced again at once; the watchdog is petted only while
the kernel shows every such device stopped. Devices are addressed by what
the book recorded of them (their dm uuid) rather than by name: a device
renamed by hand is still ours to fence.
"""
import concurrent.futures
import logging
import threading
import time

from coordinator import errors
from coordinator.daemon import grantbook
from coordinator.daemon import metrics
from coordinator.daemon import retirees
from coordinator.engine import inflight

LOG = logging.getLogger(__name__)

OK, FENCED, LOST = 'ok', 'fenced', 'lost'
# Proofs run at once after a fence (see _settle).
PROOF_WORKERS = 4
RESUME, RETIRE, KEEP, GONE = 'resume', 'retire', 'keep', 'gone'
# Seconds the fencer waits for the grant book's lock to mark what it has
# fenced (I/O is stopped before): an LVM command under the lock
# (devguard) must not hold up a tick. Not marked in time: fenced again
# on the next tick, and no watchdog pet meanwhile.
MARK_WAIT = 0.25
# Seconds a stop waits for proofs in flight to end (none resumes after
# the stop began, see close()).
CLOSE_WAIT = 10.0


class Fencer:
    """Watches the session deadline and fences active LVs in time."""

    def __init__(self, last_keepalive, probe, backend, ttl, fraction=0.6,
                 action='suspend', on_event=None, clock=time.monotonic,
                 lease=0, prove=None, book=None, on_retired=None,
                 watchdog=None, workers=8, background=True,
                 metadata=None):
        # last_keepalive() -> when the last good keepalive was sent, on
        # ``clock`` (0: never); probe(lease) -> seconds left on that lease,
        # -1 if it is gone; raises EtcdUnavailable when etcd is unreachable.
        self.last_keepalive = last_keepalive
        self.probe = probe
        self.lease = lease
        self.window = fraction * ttl
        self.backend = backend
        # prove(vg, lv) -> RESUME | RETIRE | KEEP | GONE (see FenceWorker).
        self.prove = prove or (lambda vg, lv: RESUME)
        # book.all() -> {(vg, lv): record}: what this host made devices of,
        # read without asking LVM or etcd anything.
        self.book = book
        self.on_retired = on_retired or (lambda vg, lv: None)
        self.watchdog = watchdog
        # metadata() -> inflight.View: VG lock holds and their commands.
        self.metadata = metadata or inflight.View
        self.action = action
        self.on_event = on_event or (lambda kind, **kw: None)
        self.clock = clock
        self.state = OK
        self.fenced = []
        self.workers = workers
        # Proofs ask etcd and LVM, which may take long: they run beside
        # the ticks (``background``), so a deadline is never missed
        # waiting for one. The lock guards the fenced set, never I/O.
        self.background = background
        self._settler = None
        self._gen = {}
        # Being resumed by proof (under the lock): writable on purpose.
        self._resuming = set()
        self._unpetted = set()

        # Fenced but not marked in the book (its lock was busy): fenced
        # again every tick until marked.
        self._unmarked = set()
        # Retired, still open in the kernel: retired again if reloaded.
        self.retirees = retirees.Retirees(backend, self.on_event)
        # Set by close() (an orderly stop): no proof resumes any more.
        self.closed = False
        self._mutex = threading.RLock()

    def tick(self):
        """Probe when needed and act; returns the state. Never raises: a
        fencer that dies is a host that cannot fence."""
        for step in (self._deadline, self._recheck, self._reretire,
                     self._pet, self._probe, self._pet):
            try:
                if step == self._pet:
                    step()
                    continue
                with self._mutex:
                    step()
            except Exception:
                LOG.exception('fencer: %s failed; LVs fenced so far stay '
                              'fenced', step.__name__)
        try:
            if self.state == OK and self.fenced:
                self._settle_soon()
        except Exception:
            LOG.exception('fencer: proofs not started')
        # Set here, not by the session worker: its loop can block on etcd
        # for as long as the link is cut; the fencer's tick never does.
        metrics.SESSION_UP.set(1 if self.state == OK else 0)
        return self.state

    def _deadline(self):
        if self.state != OK and self.book:
            # A fence that failed (device busy in the kernel, a timeout)
            # is tried again on every tick until it holds.
            missing = [k for k in self.book.all() if k not in self.fenced]
            if missing:
                self._fence('retrying fence', missing)
        unmarked = [k for k in self._unmarked if k not in self.fenced]
        if unmarked:
            self._fence('retrying fence (not marked yet)', unmarked)
        if self.state == OK and \
                self.clock() >= self.last_keepalive() + self.window:
            self._fence('session deadline reached')
            self.state = FENCED

    def _recheck(self):
        # Fenced in our list, writable in the kernel: fenced again now.
        # It stays in the list whatever the outcome: checked (and the
        # watchdog unpetted) on every tick until the kernel shows it
        # stopped; a proof made before this proves nothing now.
        live = sorted(self._live(self.fenced))
        if not live:
            return
        records = self._records()
        started = self.clock()
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(
                lambda k: self._stop_io(k, records.get(k)), live))
        for key in live:
            self._gen[key] = self._gen.get(key, 0) + 1
        done = [k for k, ok in zip(live, results, strict=True) if ok]
        took = self.clock() - started
        LOG.error('fencer: %s writable in the kernel though fenced '
                  '(resumed behind the fencer); fenced again %s in %.3fs',
                  ', '.join(f'{v}/{lv}' for v, lv in live),
                  ', '.join(f'{v}/{lv}' for v, lv in done) or 'none', took)
        self.on_event('fenced', reason='found writable in the kernel',
                      lvs=done, took=round(took, 4))

    def _reretire(self):
        if len(self.retirees):
            self.retirees.check(self.book.all() if self.book else {})

    def _live(self, keys, records=None):
        """Which of ``keys`` the kernel shows writable (a check that fails
        counts as writable)."""
        stopped = getattr(self.backend, 'stopped', None)
        if stopped is None or not keys:
            return set()
        records = self._records() if records is None else records
        live = set()
        for key in keys:
            try:
                if not stopped(*key, **address(records.get(key))):
                    live.add(key)
            except Exception:
                LOG.exception('fencer: kernel state of %s/%s unreadable',
                              *key)
                live.add(key)
        return live

    def _probe(self):
        # Only a fenced host asks etcd (whether its lease is still there):
        # a healthy one needs no answer to keep its deadline, and a lease
        # lost while keepalives flow is seen by the keepalive itself (the
        # session is replaced, see FenceWorker). So no tick of a healthy
        # host waits on etcd.
        if self.state != FENCED:
            return
        left = None
        try:
            left = self.probe(self.lease)
        except errors.EtcdUnavailable as exc:
            LOG.warning('fencer: etcd unreachable (%s)', exc)
        if left is not None and left < 0:
            # Everything was fenced at the deadline (what failed is tried
            # again every tick): the session is gone, the LVs stay fenced.
            self.state = LOST
            self.on_event('session-lost', lvs=list(self.fenced))
            return
        if left is not None and self._fresh():
            self.state = OK

    def next_tick(self, interval):
        """Seconds until the next tick: ``interval``, or less when the
        deadline comes sooner (a fence is never a whole interval late)."""
        if self.state != OK:
            return interval
        try:
            left = self.last_keepalive() + self.window - self.clock()
        except Exception:
            LOG.exception('fencer: last keepalive unreadable')
            return interval
        return max(0.005, min(interval, left))

    def _fresh(self):
        return self.clock() < self.last_keepalive() + self.window

    def rearm(self, lease):
        """Watch a new session; LVs fenced so far stay fenced until
        ``prove`` accepts them under it."""
        with self._mutex:
            self.lease = lease
            self.state = OK

    def fence_one(self, vg, lv, why, still=None):
        """Fence one LV now (its grant changed under us); ``still()``,
        asked once more first, may call it off."""
        if still and not still():
            return
        with self._mutex:
            if (vg, lv) not in self.fenced:
                self._fence(why, [(vg, lv)])
            else:
                # A proof in flight was made before this doubt: it proves
                # nothing now (see _settle); the next one decides.
                self._gen[(vg, lv)] = self._gen.get((vg, lv), 0) + 1

    def fence_existing(self, keys, why):
        """Fence devices found at start: each is resumed only by proof."""
        with self._mutex:
            keys = [k for k in keys if k not in self.fenced]
            if keys:
                self._fence(why, keys)

    # -- acting --

    def _targets(self):
        # Fence first from our own record; enumerate the kernel after.
        first = list(self.book.all()) if self.book else []
        yield [k for k in first if k not in self.fenced]
        try:
            rest = [k for k in self.backend.devices()
                    if k not in self.fenced and k not in first]
        except errors.CoordError:
            LOG.exception('fencer: could not enumerate active LVs')
            rest = []
        yield rest

    def _fence(self, why, only=None):
        if self.action == 'none':
            LOG.error('fencer: %s but fencing is disabled', why)
            return
        batches = [only] if only else self._targets()
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            told = False
            for batch in batches:
                if not batch:
                    continue
                told = True
                before = self._records()
                started = self.clock()
                results = pool.map(
                    lambda k, before=before: self._stop_io(k, before.get(k)),
                    batch)
                done = [k for k, ok in zip(batch, results, strict=True)
                        if ok]
                # Unmarked, an activation would not know: fenced again on
                # the next tick (and no watchdog pet meanwhile).
                unmarked = self._catch_up(done, before)
                self._unmarked = (self._unmarked - set(done)) | unmarked
                done = [k for k in done if k not in unmarked]
                self.fenced += [k for k in done if k not in self.fenced]
                for k in done:
                    self._gen[k] = self._gen.get(k, 0) + 1
                took = self.clock() - started
                # Told per batch: the first (our own record) is the one
                # the fence-to-takeover margin is about.
                LOG.error('fencer: %s; fenced %s in %.3fs', why,
                          ', '.join(f'{v}/{lv}' for v, lv in done)
                          or 'none', took)
                self.on_event('fenced', reason=why, lvs=done,
                              took=round(took, 4))
        if not told:
            LOG.error('fencer: %s; nothing to fence', why)
            self.on_event('fenced', reason=why, lvs=[], took=0.0)

    def _records(self):
        try:
            return self.book.all() if self.book else {}
        except Exception:
            LOG.exception('fencer: grant book unreadable')
            return {}

    def _catch_up(self, keys, before):
        # An activation may make its device just after we stopped I/O on
        # nothing. Marked (under the book's lock), a record tells the
        # activation, which checks it under that lock, to stop its device
        # itself; a device made before the mark is stopped here again, and
        # so is one an LVM command under the lock ran on meanwhile (its
        # record's command count changed, see devguard): that command may
        # have resumed it. The lock is waited for MARK_WAIT at most.
        # The keys it could not mark.
        if not (self.book and keys):
            return set()
        try:
            with self.book.locked(wait=MARK_WAIT) as got:
                if not got:
                    LOG.warning('fencer: grant book busy; %d fenced grants '
                                'not marked yet', len(keys))
                    return set(keys)
                now = self.book.all()
                self.book.mark_fenced(keys)
        except Exception:
            LOG.exception('fencer: could not mark %d fenced grants',
                          len(keys))
            return set(keys)
        for key in keys:
            record = now.get(key) or {}
            if record.get('state') == grantbook.ACTIVATING:
                continue  # its activation sees the mark
            if record and _grant(record) != _grant(before.get(key) or {}):
                self._stop_io(key, record)
        return set()

    def _stop_io(self, key, record=None):
        vg, lv = key
        at = address(record)
        try:
            if self.action == 'deactivate':
                try:
                    self.backend.deactivate(vg, lv)
                    # By name: a device renamed by hand is still there.
                    if not self._live([key], {key: record}):
                        return True
                except errors.CoordError:
                    pass  # open: suspend it instead
            self.backend.suspend(vg, lv, **at)
            return True
        except Exception:
            LOG.exception('fencer: could not fence %s/%s', vg, lv)
            return False

    def _settle_soon(self):
        if self.closed:
            return
        if not self.background:
            self._settle()
        elif self._settler is None or not self._settler.is_alive():
            self._settler = threading.Thread(target=self._settle,
                                             name='fence-proofs',
                                             daemon=True)
            self._settler.start()

    def _settle(self):
        keys = list(self.fenced)
        if len(keys) < 2:
            for key in keys:
                self._settle_one(key)
            return
        # Several at once: each proof mostly waits (etcd, dmsetup, the
        # metadata read), and a host back from a partition with many LVs
        # should not resume them one round trip after another.
        with concurrent.futures.ThreadPoolExecutor(
                min(PROOF_WORKERS, len(keys))) as pool:
            list(pool.map(self._settle_one, keys))

    def _settle_one(self, key):
        gen = self._gen.get(key)
        try:
            verdict = self.prove(*key)
        except Exception:
            LOG.exception('fencer: %s/%s stays fenced', *key)
            return
        if verdict == KEEP:
            return
        with self._mutex:
            # Fenced again meanwhile, or the session is in doubt: a
            # proof made before that proves nothing now.
            if key not in self.fenced or self._gen.get(key) != gen or (
                    verdict == RESUME and (self.closed or not (
                        self.state == OK and self._fresh()))):
                return
            if verdict == RESUME:
                # Under the lock: a fence decided after the check above
                # comes after this resume.
                self._resuming.add(key)
                try:
                    if self._apply(*key, verdict):
                        self._settled(key)
                finally:
                    self._resuming.discard(key)
                return
        # Retiring never makes a device writable: its I/O (and the etcd
        # calls after it) run outside the lock the ticks, and so the
        # watchdog's pets, wait for.
        if self._apply(*key, verdict):
            with self._mutex:
                self._settled(key)

    def _settled(self, key):
        if key in self.fenced:
            self.fenced.remove(key)
        self._gen.pop(key, None)

    def _apply(self, vg, lv, verdict):
        at = address(self._records().get((vg, lv)))
        try:
            if verdict == RESUME:
                if self.book:
                    # Unmarked first: an activation that stopped its own
                    # device did so before this, under the book's lock.
                    self.book.unmark_fenced(vg, lv)
                self.backend.resume(vg, lv, **at)
                LOG.warning('fencer: %s/%s proven ours; resumed', vg, lv)
                self.on_event('resumed', lvs=[(vg, lv)])
            elif verdict == RETIRE:
                self.backend.retire(vg, lv, **at)
                try:
                    self.on_retired(vg, lv)
                finally:
                    # After the record is dropped: watched from now on.
                    self.retirees.add((vg, lv), at)
                self.on_event('retired', lvs=[(vg, lv)])
            else:
                # GONE: no device any more; the grant it was for goes the
                # way of a retired one.
                self.on_retired(vg, lv)
        except Exception:
            LOG.exception('fencer: %s/%s stays fenced', vg, lv)
            return False
        return True

    def close(self, keys, why):
        """An orderly stop: from now on no proof resumes anything; then
        every one of ``keys`` is fenced, also those fenced already (a
        resume whose dmsetup timed out may have landed). A resume runs
        under the mutex taken here: one in flight ends before this fence,
        none starts after it."""
        with self._mutex:
            self.closed = True
            keys = list(dict.fromkeys(keys))
            if keys:
                self._fence(why, keys)
            # A command under the book's lock (the ops worker stops too)
            # delays the mark: no tick follows to retry it, so wait here.
            deadline = time.monotonic() + CLOSE_WAIT
            while self._unmarked and time.monotonic() < deadline:
                self._fence(why, sorted(self._unmarked))

    def wait_proofs(self, timeout=CLOSE_WAIT):
        """After close(): let proofs in flight end (a retire is left
        whole), ``timeout`` seconds at most."""
        settler = self._settler
        if settler is not None and settler is not threading.current_thread():
            settler.join(timeout)

    def arm(self):
        """Arm the watchdog for a device about to be made (its grant is in
        the book); False if the session is not provably valid now."""
        if self.watchdog is None:
            return True
        try:
            with self._mutex:
                self._pet()
        except Exception:
            LOG.exception('fencer: watchdog not armed')
        return self.watchdog.armed

    def _pet(self):
        if self.watchdog is None:
            return
        try:
            self._pet_or_withhold()
        finally:
            metrics.WATCHDOG_ARMED.set(1 if self.watchdog.armed else 0)

    def _pet_or_withhold(self):
        booked = set(self.book.all()) if self.book else set()
        meta = self.metadata()
        if not booked and not self.fenced and not meta.holds:
            if self.watchdog.armed and self.book:
                # Under the book's lock: an activation (or a VG lock
                # hold) that records itself after this sees the watchdog
                # disarmed and waits for it.
                # Bounded: a command holding the lock must not hold the
                # tick; disarming can wait for the next one.
                with self.book.locked(wait=MARK_WAIT) as got:
                    if got and not self.book.all() and \
                            not self.metadata().holds:
                        self.watchdog.disarm()
            elif self.watchdog.armed:
                self.watchdog.disarm()
            return
        # Pet only while nothing here can write without a valid grant: the
        # session is provably valid, or every device is fenced; and in
        # either case every device fenced (and not proven since) is
        # stopped in the kernel, asked just before the pet.
        valid = self.state == OK and \
            self.clock() < self.last_keepalive() + self.window
        # A metadata command may write the VG until the kernel shows it
        # gone (it cannot be fenced): only the valid session holding its
        # VG lock lets the host live on.
        if meta.commands and not (valid and meta.sessions <= {self.lease}):
            return self._withheld()
        if not (valid or booked <= set(self.fenced)):
            return self._withheld()
        # Not under the lock (see _settle_one): a device a proof is
        # resuming is writable because it was proven ours.
        live = self._live(set(self.fenced) - self._resuming)
        if live != self._unpetted:
            # Told once per change, not twice a tick.
            self._unpetted = live
            if live:
                LOG.error('fencer: watchdog not petted: %s writable in the '
                          'kernel though fenced',
                          ', '.join(f'{v}/{lv}' for v, lv in sorted(live)))
        if live:
            return self._withheld()
        if self.retirees.unsafe:
            # A retired device writable again, not retired yet.
            return self._withheld()
        if not valid:
            LOG.debug('fencer: watchdog petted (every device fenced)')
        self.watchdog.pet()

    def _withheld(self):
        """Count a tick that left an armed watchdog unpetted."""
        if self.watchdog.armed:
            metrics.PETS_WITHHELD.inc()


def address(record):
    """How the backend is to find a booked device: {'dm_uuid': ...} when
    the book recorded one (what a rename by hand does not change)."""
    uuid = (record or {}).get('dm_uuid')
    return {'dm_uuid': uuid} if uuid else {}


def _grant(record):
    # Which grant, in which state: a change means a device made since.
    return record.get('state'), record.get('token'), record.get('commands')
