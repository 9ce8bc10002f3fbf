"""Operations: what the local API and routed requests do on this host.

Metadata changes run under the VG lock with the seqno discipline
(MetadataGuard); activations take an activation lease first and never the
VG lock; anything that must happen on another host is routed to that
host's daemon, which takes the lease itself.
"""
import contextlib
import logging
import os
import time

from coordinator import errors
from coordinator.daemon import copy
from coordinator.daemon import devguard
from coordinator.daemon import grantbook
from coordinator.daemon import metrics
from coordinator.daemon import routing
from coordinator.daemon import snapshots
from coordinator.engine import modes
from coordinator.lvm import mda
from coordinator.lvm import mdaroom

LOG = logging.getLogger(__name__)

MULTIATTACH_TAG = 'lvmcoord_multiattach'
# The fencer arms the watchdog on its next tick once a grant is recorded.
WATCHDOG_ARM_WAIT = 5.0
# A daemon just started serves once its fencer has reconciled (a second
# or two): an activation waits that long at most (or its own ``wait``).
FENCER_START_WAIT = 10.0
FENCER_STARTING = 'its fencer has not reconciled since this daemon started'
# Seconds a routing call may reuse the membership view (no read per call).
ROUTE_VIEW_AGE = 5.0
_UNREAD = object()


class Operations:
    """Every operation of the daemon, for one host."""

    def __init__(self, engine, lvm, backend, router, vgs, read_seqno,
                 readiness=None, members=None, events=None, book=None,
                 fencer_alive=None, metadata=None, watchdog_armed=None,
                 history=None, fencer_id=None, room=None):
        self.engine = engine
        self.host = engine.host
        self.leases = engine.leases
        self.lvm = lvm
        self.backend = backend
        self.router = router
        self.vgs = set(vgs)
        self.read_seqno = read_seqno
        self.guard = engine.guard(read_seqno, on_alert=self._alert)
        # readiness() -> this host's view; members() -> {host: view}.
        self.readiness = readiness or (lambda: {})
        self.members = members or (lambda: {})
        self.events = events or (lambda kind, **kw: None)
        # What this host made devices of (the fencer acts from it), and
        # whether the fencer is running: without it, no grant is served.
        self.book = book
        self.fencer_alive = fencer_alive or (lambda: None)
        # metadata(vg, reread) -> mda.VGInfo from the committed metadata,
        # or None (then LVM commands answer).
        self.metadata = metadata or (lambda vg, reread=True: None)
        # watchdog_armed() -> bool, None without a watchdog: no device is
        # made here while a dead daemon would leave it unwatched.
        self.watchdog_armed = watchdog_armed
        # history() -> the etcd history mark (coordinator.engine.history)
        self.history = history or (lambda: None)
        # fencer_id() -> the incarnation of the fencer that beat last: one
        # that changed between a grant and its device reconciled meanwhile.
        self.fencer_id = fencer_id or (lambda: None)
        # room(vg) -> mdaroom.Room of the last metadata read, or None.
        self.room = room or (lambda vg: None)

        # Every LVM command that can resume or reload an active LV's
        # device runs under it (lease, fence and retire checks).
        self.devguard = devguard.DeviceGuard(
            self.host, self.leases, engine.session, backend, book,
            self.fencer_alive)

    def handle(self, op, args):
        """Dispatch one validated request."""
        vg = args.get('vg')
        if vg is not None and vg not in self.vgs:
            raise errors.InvalidInput(
                'vg', f'{vg} is not a shared VG managed here '
                f'({", ".join(sorted(self.vgs))})')
        return getattr(self, 'op_' + op)(**args)

    def _alert(self, vg, message):
        self.events('out-of-band-change', vg=vg, message=message)

    def check_room(self, vg, op, what, extra=0):
        """MetadataFull, before the VG lock, if the change would not fit
        the VG's metadata area (lvcreate keeps the last word: a host that
        filled it meanwhile makes LVM refuse, changing nothing)."""
        room = self.room(vg)
        if room is None:
            self.metadata(vg, False)
            room = self.room(vg)
        mdaroom.check(room, op, f'{vg}/{what}', extra)

    def _change(self, vg, op, action, also=(), into=None, after=None):
        """Run one metadata change; False if it committed but the lock was
        lost before its seqno was recorded (the caller reports what is on
        disk: the change is there). ``also``/``into``/``after``:
        MetadataGuard's."""
        try:
            with metrics.LOCK_WAIT.time():
                self.guard.change(vg, op, action, also=also, into=into,
                                  after=after)
        except errors.LockLost as exc:
            if not getattr(exc, 'committed', False):
                raise
            LOG.warning('%s committed; %s', op, exc)
            self.events('lock-lost-after-commit', vg=vg, op=op)
            return False
        return True

    # -- metadata --

    def op_create(self, vg, lv, size, tags=(), multiattach=False):
        # The last metadata read will do for a pre-check (lvcreate has the
        # last word); only a refusal is worth a fresh read.
        free = self._free(vg, reread=False)
        if size > free:
            free = self._free(vg)
        if size > free:
            raise errors.InvalidInput('size', f'{size} bytes requested, '
                                      f'{free} free in {vg}')
        tags = list(tags) + ([MULTIATTACH_TAG] if multiattach else [])
        self.check_room(vg, 'create', lv,
                        len(lv) + sum(len(t) + 4 for t in tags))
        # The LV's holders (shown in the reply) are read in the txn that
        # records the change: no round trip of their own.
        read, info = [], []
        recorded = self._change(
            vg, f'lvcreate {vg}/{lv}',
            lambda: self.lvm.create_lv(vg, lv, size, tags),
            [self.leases.read_op(vg, lv)], read,
            # The metadata the guard read to record the change has the new
            # LV: parsed while that record is on its way.
            after=lambda: info.append(self._lv_info(vg, lv, reread=False)))
        holders = None
        if read:
            holders = self.leases.read_from(vg, lv, read[0], 0)[0]
        info = info[0] if info else self._lv_info(vg, lv, reread=False)
        return self._committed(self.op_show(vg, lv, info, holders), recorded)

    def _free(self, vg, reread=True):
        meta = self.metadata(vg, reread)
        return meta.free if meta else self.lvm.vg(vg)['free']

    def _lv_info(self, vg, lv, reread=True):
        """LVM.lv() from the committed metadata (one O_DIRECT read; none
        with ``reread=False`` if it was read since), or from lvs when that
        cannot be read."""
        return mda.lv_info(self.metadata(vg, reread), self.lvm, vg, lv)

    @staticmethod
    def _committed(result, recorded):
        if not recorded:
            result['warning'] = ('committed; the VG lock was lost before '
                                 'its seqno was recorded (the next holder '
                                 'adopts it)')
        return result

    def op_delete(self, vg, lv):
        origin = snapshots.origin_of(self, vg, lv)
        if origin:
            return snapshots.delete(self, vg, lv, origin)
        # Nobody may be granted the LV from the check until it is gone.
        with self.leases.reserved(vg, lv, 'delete'):
            self._change(vg, f'lvremove {vg}/{lv}',
                         lambda: self.lvm.remove_lv(vg, lv))
        return {'vg': vg, 'lv': lv, 'deleted': True}

    def op_rename(self, vg, lv, new_name):
        # Both names: a grant left on the new name (a host that was cut
        # off) must not come to cover the renamed LV.
        self.leases.reserve(vg, lv, 'rename')
        try:
            self.leases.reserve(vg, new_name, 'rename')
        except errors.CoordError:
            self.leases.unreserve(vg, lv)
            raise
        try:
            recorded = self._change(
                vg, f'lvrename {vg}/{lv} {new_name}',
                lambda: self.lvm.rename_lv(vg, lv, new_name))
        finally:
            self.leases.unreserve(vg, new_name)
            self.leases.unreserve(vg, lv)
        return self._committed(self.op_show(vg, new_name), recorded)

    def op_tag(self, vg, lv, add=(), remove=()):
        def action():
            if add:
                self.lvm.add_tags(vg, lv, add)
            if remove:
                self.lvm.del_tags(vg, lv, remove)
        self._change(vg, f'lvchange tags {vg}/{lv}', action)
        return self.op_show(vg, lv)

    def op_extend(self, vg, lv, size):
        current = self.lvm.lv(vg, lv)['size']
        if size <= current:
            raise errors.InvalidInput('size', f'{size} bytes is not larger '
                                      f'than the current {current}')
        free = self.lvm.vg(vg)['free']
        if size - current > free:
            raise errors.InvalidInput('size', f'{size - current} more bytes '
                                      f'requested, {free} free in {vg}')
        self.check_room(vg, 'extend', lv)

        def grow():
            if self.backend.device_state(vg, lv) is None:
                self.lvm.extend_lv(vg, lv, size)
                return
            # Active here: lvextend reloads and resumes the device.
            with self.devguard.command(vg, lv, 'extend'):
                self.lvm.extend_lv(vg, lv, size)
        recorded = self._change(vg, f'lvextend {vg}/{lv}', grow)
        # Every host with the LV active maps the new size. The extend is
        # done whatever they answer: report each, never fail the whole.
        refreshed, failed = {}, {}
        for h in self.leases.holders(vg, lv):
            if not h.alive:
                continue
            try:
                refreshed[h.host] = self.op_refresh(vg, lv, h.host)
            except errors.CoordError as exc:
                failed[h.host] = str(exc)
        result = dict(self.op_show(vg, lv), refreshed=refreshed)
        if failed:
            result['refresh_failed'] = failed
        return self._committed(result, recorded)

    def op_snapshot(self, vg, lv, name, size):
        return snapshots.create(self, vg, lv, name, size)

    def op_snapshot_delete(self, vg, lv):
        origin = snapshots.origin_of(self, vg, lv)
        if not origin:
            raise errors.InvalidInput('lv', f'{vg}/{lv} is not a snapshot')
        return snapshots.delete(self, vg, lv, origin)

    def op_revert(self, vg, lv, snapshot):
        return snapshots.revert(self, vg, lv, snapshot)

    def op_copy(self, vg, src, dst, size, snapshot=None):
        return copy.run(self, vg, src, dst, size, snapshot)

    # -- activation --

    def op_activate(self, vg, lv, host=None, mode=modes.EXCLUSIVE,
                    instance=None, wait=0.0, read_only=False):
        if host and host != self.host:
            return self._route(host, 'activate', vg=vg, lv=lv, mode=mode,
                               instance=instance, wait=wait,
                               read_only=read_only)
        try:
            return self._activate(vg, lv, mode, instance, wait, read_only)
        except errors.CoordError as exc:
            metrics.GRANT_FAILURES.labels(reason=type(exc).__name__).inc()
            raise

    def _activate(self, vg, lv, mode, instance, wait, read_only):
        self._check_ready(vg)
        fencer = self._await_fencer(max(wait or 0.0, FENCER_START_WAIT))
        gate = contextlib.ExitStack()
        # The recorded seqno is read in the grant's own txn (no round trip
        # of its own) and checked before anything is mapped; a routed
        # request is claimed in it too.
        grant, new, recorded = self.leases.claim_with(
            self.guard.recorded_reads(vg), vg, lv, mode, instance, wait,
            rider=routing.current_rider())
        try:
            self._gate(gate, fencer)
            self._check_fresh(vg, self.guard.recorded_from(recorded)[0])
            # Read under the grant (by the check just made: no read of its
            # own): a rename or delete needs the LV unheld, so the name
            # maps this LV until we let go.
            info = self._lv_info(vg, lv, reread=False)
            snapshots.check_activation(self, vg, info)
            if mode == modes.SHARED and MULTIATTACH_TAG not in info['tags']:
                raise errors.InvalidInput('mode', f'{vg}/{lv} is not a '
                                          f'multiattach volume')
            self._record(vg, lv, grant, info, read_only)
            if info.get('merging'):
                # A pending revert: the merge writes the metadata.
                path = snapshots.activate_merging(self, vg, lv, read_only,
                                                  info)
            else:
                path = self.backend.activate(vg, lv, read_only, info)
            self._made(vg, lv, path)
        except errors.CoordError:
            if new:
                self._forget(vg, lv)
                self.leases.release(vg, lv)
            raise
        finally:
            gate.close()
        metrics.GRANTS.labels(mode=grant.mode).inc()
        self.events('grant', vg=vg, lv=lv, mode=grant.mode,
                    token=grant.token)
        return {'vg': vg, 'lv': lv, 'host': self.host, 'path': path,
                'mode': grant.mode, 'token': grant.token,
                'instance': grant.instance}

    def op_deactivate(self, vg, lv, host=None):
        if host and host != self.host:
            return self._route(host, 'deactivate', vg=vg, lv=lv)
        # The device goes first (refused while open): the lease is
        # released only once nothing here can write.
        record = self.book.get(vg, lv) if self.book is not None else None
        self.backend.deactivate(vg, lv)
        self._forget(vg, lv)
        result = {'vg': vg, 'lv': lv, 'host': self.host, 'released': True}
        try:
            # Routed: the reply rides on the release (no write of its own).
            result['released'] = self.leases.release(
                vg, lv, rider=routing.reply_rider('deactivate', result))
        except errors.CoordError:
            if record is not None:
                # Forgotten, the grant would outlive its device for good:
                # kept as a release to finish (the fencer, a start).
                self.book.put(vg, lv, **dict(record,
                                             state=grantbook.RELEASING))
            raise
        if result['released']:
            metrics.RELEASES.inc()
            self.events('release', vg=vg, lv=lv)
        return result

    def op_refresh(self, vg, lv, host=None):
        if host and host != self.host:
            return self._route(host, 'refresh', vg=vg, lv=lv)
        self._check_fresh(vg)
        # lvchange --refresh reloads the table and resumes: only under our
        # lease, on a device that is neither fenced nor retired.
        with self.devguard.command(vg, lv, 'refresh'):
            size = self.backend.refresh(vg, lv)
        return {'host': self.host, 'size': size}

    def _route(self, host, op, **args):
        # Fail fast on what the target published about itself (it
        # publishes every 15 s; its own checks are what count).
        view = self.members(max_age=ROUTE_VIEW_AGE).get(host) or {}
        problem = view.get('problems', {}).get(args['vg'])
        if problem:
            raise errors.HostUnavailable(
                f'host {host} cannot use VG {args["vg"]}: {problem}')
        args = {k: v for k, v in args.items() if v is not None}
        timeout = 60.0 + float(args.get('wait') or 0)
        return self.router.call(host, op, args, timeout)

    def _record(self, vg, lv, grant, info, read_only):
        if self.book is None:
            return
        with self.book.locked():
            record = self.book.get(vg, lv)
            if not (record and record.get('uuid') == info['uuid'] and
                    record.get('token') == grant.token):
                # Not synced to disk: after a power loss, an activating
                # record and none end alike (the grant is released at
                # start, reconcile.py); the fencer reads the page cache.
                self.book.put(vg, lv, state=grantbook.ACTIVATING,
                              token=grant.token, uuid=info['uuid'],
                              session=grant.session, mode=grant.mode,
                              instance=grant.instance, read_only=read_only,
                              pid=os.getpid(), durable=False)
            # Under the book's lock: the fencer cannot disarm between this
            # look and the record it now sees.
            armed = self.watchdog_armed is None or self.watchdog_armed()
        deadline = time.monotonic() + WATCHDOG_ARM_WAIT
        while not armed:
            if time.monotonic() > deadline:
                raise errors.HostUnavailable(
                    f'{self.host}: its watchdog was not armed within '
                    f'{WATCHDOG_ARM_WAIT:.0f}s; no device is made unwatched')
            time.sleep(0.02)
            armed = self.watchdog_armed()

    def _made(self, vg, lv, path):
        """The device is made: recorded active and writable, unless the
        fencer fenced the grant meanwhile (grantbook.made)."""
        if self.book is None:
            self.backend.admit(vg, lv)
        elif not grantbook.made(self.book, self.backend, vg, lv, path):
            raise errors.HostUnavailable(
                f'{self.host} fenced {vg}/{lv} while its device was '
                f'being made; the device was retired')

    def _forget(self, vg, lv):
        if self.book is not None:
            self.book.drop(vg, lv)

    def _gate(self, gate, fencer):
        """Hold the book's activation gate in ``gate`` until the device is
        made: a reconcile at start waits for it (GrantBook.quiesce). Taken
        after a fencer restart (so a reconcile) since ``fencer`` beat, the
        grant may have been reconciled away: refused."""
        if self.book is None:
            return
        gate.enter_context(self.book.activating())
        self._check_fencer()
        if self.fencer_id() != fencer:
            raise errors.HostUnavailable(
                f'{self.host}: its fencer restarted while this grant was '
                f'being made; retry')

    def _await_fencer(self, wait):
        """The beat's fencer once it serves, waiting at most ``wait``
        seconds while it reconciles at start; HostUnavailable else."""
        deadline = time.monotonic() + wait
        while True:
            fencer = self.fencer_id()
            if self.fencer_alive() != FENCER_STARTING or \
                    time.monotonic() >= deadline:
                self._check_fencer()
                return fencer
            time.sleep(0.05)

    def _check_fencer(self):
        problem = self.fencer_alive()
        if problem:
            raise errors.HostUnavailable(f'{self.host} serves no grants: '
                                         f'{problem}')

    def _check_ready(self, vg):
        ready = self.readiness()
        problem = ready.get('problems', {}).get(vg)
        if problem:
            raise errors.HostUnavailable(f'{self.host} cannot use VG {vg}: '
                                         f'{problem}')

    def _check_fresh(self, vg, recorded=_UNREAD):
        # Activating from a stale view could map extents that now belong
        # to another LV: never act on metadata older than recorded.
        if recorded is _UNREAD:
            recorded, _ = self.guard.recorded(vg)
        if recorded is None:
            return
        for attempt in range(4):
            disk = self.read_seqno(vg, attempt > 0)
            if disk >= recorded:
                return
            time.sleep(0.1 * (attempt + 1))
        raise errors.SeqnoBehind(f'VG {vg}: seqno {disk} here, {recorded} '
                                 f'recorded; refusing to act on stale '
                                 f'metadata')

    # -- reading --

    def op_show(self, vg, lv, info=None, holders=None):
        info = info or self.lvm.lv(vg, lv)
        if holders is None:
            holders = self.leases.holders(vg, lv)
        return {'vg': vg, 'lv': lv, 'size': info['size'],
                'tags': info['tags'], 'uuid': info.get('uuid'),
                'origin': info.get('origin') or None,
                'merging': info.get('merging') or None,
                'multiattach': MULTIATTACH_TAG in info['tags'],
                'holders': [dict(h.ledger_entry(), host=h.host,
                                 alive=h.alive) for h in holders]}

    def op_list(self, vg=None):
        leases = self.leases.list()
        out = []
        for name in sorted([vg] if vg else self.vgs):
            for info in self.lvm.lvs(name):
                hs = leases.get((name, info['name']), [])
                out.append({'vg': name, 'lv': info['name'],
                            'size': info['size'], 'tags': info['tags'],
                            'holders': [h.host for h in hs]})
        return out

    def op_vg_stats(self, vg):
        """Capacity of the VG as this host sees it (fresh metadata)."""
        self._check_fresh(vg)
        info = self.lvm.vg(vg)
        return {k: info[k] for k in ('uuid', 'size', 'free', 'extent_size',
                                     'lv_count', 'seqno')} | {'vg': vg}

    def op_status(self):
        session = self.engine.session
        active = self.backend.active()
        return {'host': self.host, 'session': f'{session.id:x}',
                'backend': self.backend.name, 'vgs': sorted(self.vgs),
                'active': [f'{vg}/{lv}' for vg, lv in active],
                'devices': {f'{vg}/{lv}': info['path']
                            for (vg, lv), info in active.items()},
                'fencer': self.fencer_alive() or 'ok',
                'history': self.history(),
                'readiness': self.readiness()}

    def op_hosts(self):
        """Hosts of the membership group (this one included), as
        `lvmcoord host list` sees them."""
        return {'host': self.host,
                'hosts': sorted(set(self.members()) | {self.host})}

    def op_drain(self):
        """Release every LV that is not open here; report the others."""
        released, kept = [], []
        active = self.backend.active()
        for (vg, lv), info in active.items():
            if info.get('open'):
                kept.append(f'{vg}/{lv}')
                continue
            self.op_deactivate(vg, lv)
            released.append(f'{vg}/{lv}')
        # Leases without an active device here are released too.
        for vg, lv, _ in self.leases.mine():
            if (vg, lv) not in active:
                self.leases.release(vg, lv)
                released.append(f'{vg}/{lv}')
        return {'released': sorted(set(released)), 'kept_open': kept}
