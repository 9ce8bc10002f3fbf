"""lvmcoordd's workers: one process per job, as cotyledon runs them.

- SessionWorker keeps the session alive and publishes readiness.
- OpsWorker runs operations: the local Unix socket's, and the requests
  other hosts address to this one.
- FenceWorker stops I/O on active LVs when the session may be lost.
Business logic lives in ops, fence and routing; here are only loops and
signals.
"""
import contextlib
import logging
import os
import threading
import time

import cotyledon

from coordinator import errors
from coordinator.api.server import APIServer
from coordinator.daemon import checkconf
from coordinator.daemon import fence
from coordinator.daemon import grantbook
from coordinator.daemon import grantwatch
from coordinator.daemon import metrics
from coordinator.daemon import proof
from coordinator.daemon import realtime
from coordinator.daemon import reconcile
from coordinator.daemon import supervise
from coordinator.daemon import watchdog
from coordinator.daemon.host import HostContext
from coordinator.engine import etcd as etcdlib
from coordinator.engine import identity

LOG = logging.getLogger(__name__)

# Seconds the session worker reuses the VG UUIDs recorded in etcd (written
# once; re-read at once while one is not recorded yet).
UUIDS_REFRESH = 120.0


class _Worker(cotyledon.Service):

    attached = True

    def __init__(self, worker_id, conf):
        super().__init__(worker_id)
        self.conf = conf
        self.stopping = threading.Event()
        self.ctx = None

    def run(self):
        self.ctx = HostContext(self.conf, attached=self.attached)
        if self.attached:
            self.ctx.engine.session.wait_open()
        self.work()

    def terminate(self):
        self.stopping.set()


class SessionWorker(_Worker):
    """Opens or resumes the session, keeps it alive, publishes readiness."""

    name = 'session'
    attached = False

    def work(self):
        if self.conf.fence.realtime:
            realtime.elevate('session worker')
        eng = self.ctx.engine
        eng.open()
        self.ctx.emit('session', resumed=eng.session.resumed,
                      session=f'{eng.session.id:x}')
        self._rewound = None
        self._check_history()
        view = self.ctx.readiness(fresh=True)
        self.ctx.record_uuids(view)
        self.ctx.membership.join(view)
        if self.conf.metrics.port:
            metrics.serve(self.conf.metrics.port, self.conf.metrics.address)
        # The VG UUIDs recorded in etcd are written once (first host to see
        # the VG): the readiness refresh every 15 s need not read them
        # again each time, only while one is missing, and now and then.
        self._uuids = (time.monotonic(), None)
        self.ctx.known_uuids = self._known_uuids
        beat_every = max(1, int(self.ctx.membership.heartbeat_interval))
        ticks = 0
        refused = None
        while not self.stopping.wait(1.0):
            ticks += 1
            if eng.session.lost:
                # The fencer has stopped our I/O; start over with a new
                # session so this host can be granted LVs again.
                try:
                    eng.session.reopen()
                except identity.NameTaken as exc:
                    # Another machine took the name meanwhile (after a
                    # partition): never take it back; stay fenced.
                    if str(exc) != refused:
                        refused = str(exc)
                        LOG.error('session: not reopened: %s', refused)
                        self.ctx.emit('host-name-taken', message=refused)
                    continue
                except errors.CoordError as exc:
                    LOG.warning('session: cannot open a new one yet: %s',
                                exc)
                    continue
                refused = None
                self.ctx.emit('session-reopened',
                              session=f'{eng.session.id:x}')
            metrics.KEEPALIVE.set(eng.session.keepalive_rtt)
            # An answer below the mark calls for a check at once; every
            # 15 s one learns what other hosts found (or an accept).
            if self.ctx.history.suspect or ticks % 15 == 0:
                self._check_history()
            # Idle etcd traffic per host stays under 1 request/s: the
            # lock-queue metric is read only when metrics are served, tooz's
            # membership lease (TTL = session TTL) refreshed every TTL/2,
            # recorded VG UUIDs re-read every UUIDS_REFRESH seconds.
            for vg in self.conf.lvm.volume_groups:
                if not self.conf.metrics.port or ticks % 5:
                    break
                try:
                    depth = len(eng.vglock(vg).queue())
                except errors.CoordError:
                    continue
                metrics.QUEUE_DEPTH.labels(vg=vg).set(depth)
            if self.conf.metrics.port and ticks % 5 == 0:
                self._members_seen()
            try:
                if ticks % beat_every == 0:
                    self.ctx.membership.heartbeat()
                if ticks % 15 == 0:
                    view = self.ctx.readiness(fresh=True)
                    if view != self.ctx.membership.capabilities:
                        self.ctx.membership.update(view)
            except Exception as exc:
                # tooz forgets us when its own lease expires (a partition,
                # a session loss): join again rather than die.
                LOG.warning('membership: %s; joining again', exc)
                self._rejoin()

    def _members_seen(self):
        """Export which hosts membership shows (once every 5 s, with the
        metrics port only): 1 per member, 0 for one seen before."""
        try:
            seen = set(self.ctx.membership.members(max_age=4.0))
        except Exception as exc:
            LOG.debug('membership: not read for metrics: %s', exc)
            return
        known = getattr(self, '_members_known', set())
        for host in known | seen:
            metrics.MEMBER.labels(member=host).set(1 if host in seen else 0)
        metrics.MEMBERS.set(len(seen))
        self._members_known = known | seen

    def _check_history(self):
        try:
            why = self.ctx.history.check()
        except errors.CoordError as exc:
            LOG.warning('history: not checked: %s', exc)
            return
        if why and why != self._rewound:
            self.ctx.emit('history-rewound', reason=why)
        elif self._rewound and not why:
            self.ctx.emit('history-accepted',
                          generation=(self.ctx.history.epoch or {}).get(
                              'generation'))
        self._rewound = why

    def _known_uuids(self):
        at, uuids = self._uuids
        if uuids is None or time.monotonic() - at > UUIDS_REFRESH or \
                any(vg not in uuids for vg in self.conf.lvm.volume_groups):
            uuids = HostContext.known_uuids(self.ctx)
            self._uuids = (time.monotonic(), uuids)
        return dict(uuids)

    def _rejoin(self):
        try:
            self.ctx.membership.join(self.ctx.readiness(fresh=True))
        except Exception as exc:
            LOG.warning('membership: join failed (%s); retrying', exc)

    def terminate(self):
        super().terminate()
        if self.ctx:
            # No revoke: a restarted daemon resumes this very session.
            self.ctx.engine.session.close(revoke=False)


class OpsWorker(_Worker):
    """Serves the local API on the Unix socket and runs what other hosts
    ask of this one (requests through etcd).

    One process for both: they are the same operations on one HostContext,
    in threads either way, and a process of its own for each doubled that
    context's memory (bench section 5: 11-13 MB PSS a process)."""

    name = 'ops'

    def work(self):
        self.server = APIServer(self.conf.api.socket_path,
                                self.ctx.ops.handle,
                                self.conf.api.socket_group,
                                max_connections=self.conf.api.max_connections,
                                idle_timeout=self.conf.api.idle_timeout)
        threading.Thread(target=self.server.serve_forever, name='api',
                         daemon=True).start()
        try:
            # Until terminate() stops it.
            self.ctx.router.serve(self.ctx.ops.handle,
                                  self.conf.api.request_workers)
        finally:
            self.server.shutdown()

    def terminate(self):
        super().terminate()
        if self.ctx:
            self.ctx.router.stop()


class FenceWorker(_Worker):
    """Fences active LVs before the session can expire."""

    name = 'fencer'

    def work(self):
        if self.conf.fence.realtime:
            realtime.elevate('fencer')
        ctx = self.ctx
        session = ctx.engine.session
        # Its own client: one short attempt per tick, so a partition can
        # never hold the fencer past its deadline.
        quick = etcdlib.Etcd.from_conf(
            self.conf, timeout=min(self.conf.etcd.timeout,
                                   self.conf.fence.interval),
            retry_window=0)
        f = self.conf.fence
        dog = watchdog.Watchdog(f.watchdog_device, f.watchdog_timeout,
                                ctx.watchdog_state,
                                limit=checkconf.watchdog_limit(self.conf),
                                simulated=f.watchdog_simulated) \
            if f.watchdog_device else None
        self.fencer = fencer = fence.Fencer(
            lambda: session.last_ok,
            lambda lease: quick.lease_ttl(lease) if lease else -1,
            ctx.backend, self.conf.session.ttl, f.fraction, f.action,
            self._on_event, lease=session.id,
            prove=proof.Prover(ctx.engine.leases, ctx.lvm, ctx.backend,
                               ctx.book, ctx.vg_metadata, ctx.history),
            book=ctx.book, on_retired=self._retired, watchdog=dog,
            metadata=ctx.inflight.view)
        # No grant is served until this fencer's first beat after it
        # (ops refuses on 'starting', and on a beat of an earlier run).
        try:
            ctx.beat_fencer('starting')
        except OSError:
            # Fencing goes on; no beat at all serves nothing either.
            LOG.exception('fencer: cannot record its heartbeat')
            with contextlib.suppress(OSError):
                os.unlink(ctx.fencer_beat)
        # Incomplete, devices found stay fenced until proven; fencing goes
        # on.
        with errors.logged(LOG, 'fencer: reconcile at start incomplete'):
            reconcile.at_start(ctx.engine.leases, ctx.lvm, ctx.backend,
                               ctx.book, fencer, ctx.emit,
                               reconcile.quiesce_wait(self.conf))
        storage = ctx.engine.storage
        registrar = _Registrar(storage, session, self.stopping,
                               ctx.inflight.view) \
            if storage and storage.active else None
        # With a storage fence, nothing fenced is proven (resumed) before
        # this incarnation's key is on the LU: the fencer is held (LOST:
        # no proof, no grant) until the registrar has registered it.
        held = None
        if registrar:
            held = session.id
            fencer.state = fence.LOST
            registrar.allow(held)
        watch = grantwatch.GrantWatch(ctx.etcd, ctx.keys, ctx.engine.leases,
                                      ctx.book, fencer)
        threading.Thread(target=watch.run, args=(self.stopping,),
                         name='grant-watch', daemon=True).start()
        # Off the fencer's loop: an etcd that does not answer must not
        # delay a tick.
        threading.Thread(target=self._finish_releases, name='releases',
                         daemon=True).start()
        rewound = None
        while True:
            with errors.logged(LOG, 'fencer: history not judged'):
                rewound = self._hold_rewound(rewound)
            current = session.id
            if current and current != fencer.lease and current != held:
                # A new session: the old one ended with every grant bound
                # to it. Fence what is not yet, then prove each under the
                # new one (once its key is registered, if storage fenced).
                fencer.fence_existing(list(ctx.book.all()),
                                      'session replaced')
                if registrar:
                    held = current
                    registrar.allow(current)
                else:
                    fencer.rearm(current)
            if held and registrar.done(held):
                if session.id == held:
                    fencer.rearm(held)
                held = None
            state = fencer.tick()
            if registrar and not registrar.done(session.id):
                # No grant before the LU lets this incarnation write.
                state = 'storage-unregistered'
            try:
                ctx.beat_fencer(state)
            except OSError:
                LOG.exception('fencer: cannot record its heartbeat')
            if self.stopping.wait(fencer.next_tick(f.interval)):
                return

    def _hold_rewound(self, before):
        """etcd's history was rewound: every device stays fenced (each
        proof keeps it) until an operator accepts it."""
        ctx = self.ctx
        why = ctx.history.rewound()
        if why:
            # The kernel's list once, the book on every tick after.
            keys = list(ctx.book.all())
            if not before:
                keys += list(ctx.backend.active())
            self.fencer.fence_existing(keys, f'etcd history rewound: {why}')
        return why

    def _on_event(self, kind, **fields):
        if kind == 'fenced':
            metrics.FENCES.inc(len(fields.get('lvs', [])))
        self.ctx.emit(kind, **{k: [f'{v}/{lv}' for v, lv in val]
                               if k == 'lvs' else val
                               for k, val in fields.items()})

    def _finish_releases(self, every=2.0):
        """Land the releases a deactivate left to do (etcd did not answer
        once its device was gone): retried until they do."""
        book, leases = self.ctx.book, self.ctx.engine.leases
        while not self.stopping.wait(every):
            for (vg, lv), record in book.all().items():
                if record.get('state') != grantbook.RELEASING:
                    continue
                try:
                    leases.release_grant(vg, lv, record.get('token'))
                except errors.CoordError as exc:
                    LOG.debug('%s/%s: release still pending: %s', vg, lv,
                              exc)
                    continue
                with book.locked():
                    if book.get(vg, lv) == record:
                        book.drop(vg, lv)

    def _retired(self, vg, lv):
        """The device is gone: forget it, and drop our entry if the grant
        was broken or ended (that is a broken holder's acknowledgement)."""
        ctx = self.ctx
        record = ctx.book.get(vg, lv) or {}
        ctx.book.drop(vg, lv)
        try:
            mine = next((h for h in ctx.engine.leases.holders(vg, lv)
                         if h.host == self.conf.host), None)
            if mine and (mine.broken or not mine.alive
                         or mine.token == record.get('token')):
                ctx.engine.leases.release(vg, lv)
        except errors.CoordError as exc:
            LOG.warning('%s/%s retired; lease not released: %s', vg, lv,
                        exc)

    def terminate(self):
        super().terminate()
        if not (self.ctx and self.conf.fence.on_stop):
            return
        # A daemon that is down cannot fence: stop I/O now; a restart
        # within the TTL proves and resumes it.
        fencer = getattr(self, 'fencer', None)
        if fencer is None:
            return
        # close(): no proof resumes anything from now on, and what one
        # resumed before is fenced again with the rest.
        fencer.close(list(self.ctx.book.all()) +
                     list(self.ctx.backend.active()), 'daemon stopping')
        booked = set(self.ctx.book.all())
        # A metadata command that outlived its kill keeps it armed too.
        if fencer.watchdog and booked <= set(fencer.fenced) and \
                not self.ctx.inflight.view().commands:
            # Every device is fenced: nothing needs the host reset. Now,
            # before the waits below: no tick pets it any more.
            fencer.watchdog.disarm()
        fencer.wait_proofs()
        # While the daemon is down, no LVM command may resume them: each
        # fenced device gets the error target as its inactive table
        # (LVMBackend.park); the next start's proof undoes that.
        for vg, lv in list(fencer.fenced):
            with errors.logged(LOG, f'{vg}/{lv}: fenced, not parked'):
                self.ctx.backend.park(
                    vg, lv, **fence.address(self.ctx.book.get(vg, lv)))


class _Registrar:
    """Registers each new session's key at the storage, in a thread of
    its own (sg_persist may wait on a dead path; the fencer never does).
    Started once the devices found at start are fenced; a replaced
    session's key is registered after fence_existing() ran for it.

    A path that was down then is given the current key later, but only
    while that key is still on the LU through another path and the
    session is fresh: a key that is gone was preempted (another host may
    hold our LVs), and is never registered again."""

    RETRY = 2.0
    REPAIR = 10.0

    def __init__(self, storage, session, stopping, inflight=None):
        self.storage, self.session, self.stopping = storage, session, stopping
        # inflight() -> inflight.View: a metadata command of an older
        # session still alive (D state on a queueing path) would write
        # through the new key once the paths come back.
        self.inflight = inflight or (lambda: None)
        self._waiting = None
        # The session whose older incarnations' devices the fencer has
        # fenced (at start, or fence_existing on a replaced session).
        self.allowed = 0
        self.registered = 0
        threading.Thread(target=self._run, name='storage-register',
                         daemon=True).start()

    def allow(self, session_id):
        """Let ``session_id``'s key be registered: nothing of an older
        incarnation can write through it."""
        self.allowed = session_id

    def done(self, session_id):
        """Whether ``session_id``'s key is registered."""
        return bool(session_id) and self.registered == session_id

    def _older_commands(self, current):
        view = self.inflight()
        older = {x for x in (view.sessions if view else ()) if x != current}
        if older != self._waiting:
            self._waiting = older
            if older:
                LOG.error('storage: key of session %x not registered while '
                          'an LVM command of an older session lives', current)
        return older

    def _run(self):
        while not self.stopping.is_set():
            current = self.session.id
            try:
                if current and current != self.registered and \
                        current == self.allowed and \
                        not self._older_commands(current):
                    self.storage.register()
                    self.registered = current
                elif current and current == self.registered:
                    self.storage.repair(
                        lambda c=current: self.session.id == c and
                        self.session.silent_for() < self.session.ttl / 2)
            except Exception as exc:
                LOG.error('storage: key of session %x not registered%s: '
                          '%s', current, '' if current != self.registered
                          else ' on every path', exc)
            if current != self.registered:
                # Soon after the fencer rearms (a grant waits on this).
                self.stopping.wait(0.2 if current != self.allowed
                                   else self.RETRY)
            else:
                self.stopping.wait(self.REPAIR)


def build(conf):
    """The ServiceManager with every worker of lvmcoordd."""
    if conf.metrics.port and not os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
        raise errors.InvalidInput('metrics.port', 'PROMETHEUS_MULTIPROC_DIR '
                                  'must be set before the daemon starts')
    manager = supervise.Manager()  # a worker that keeps dying stops all
    for worker in (SessionWorker, FenceWorker, OpsWorker):
        manager.add(worker, workers=1, args=(conf,))
    return manager

