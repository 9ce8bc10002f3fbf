"""HostContext: the objects one daemon process works with, built from
configuration after the worker has forked."""
import json
import logging
import os
import queue
import threading
import time
import uuid

from coordinator import activation
from coordinator import errors
from coordinator.daemon import checkconf
from coordinator.daemon import grantbook
from coordinator.daemon import incarnation
from coordinator.daemon import metrics
from coordinator.daemon import readiness
from coordinator.daemon import watchdog
from coordinator.daemon.ops import FENCER_STARTING
from coordinator.daemon.ops import Operations
from coordinator.daemon.routing import Router
from coordinator.engine import etcd as etcdlib
from coordinator.engine import inflight
from coordinator.engine.core import Engine
from coordinator.engine.history import History
from coordinator.engine.membership import Membership
from coordinator.lvm import executor
from coordinator.lvm import vgview

LOG = logging.getLogger(__name__)

READINESS_TTL = 10.0
# Events published without a live session expire after this long.
EVENT_TTL = 3600
EVENT_RETRIES = 60


class HostContext:
    """Engine, LVM, activation backend, router and operations."""

    def __init__(self, conf, attached=True):
        self.conf = conf
        self.engine = Engine.from_conf(conf, attached=attached)
        self.etcd, self.keys = self.engine.etcd, self.engine.keys
        # What etcd history this host has seen: every answer of etcd
        # raises the mark (or, below it, calls for a check).
        self.history = History(self.etcd, self.keys, conf.host,
                               conf.session.state_dir, conf.cluster)
        for client in {id(c): c for c in (
                self.etcd, getattr(self.engine.session, 'keepalive_etcd',
                                   None)) if c is not None}.values():
            client.on_answer.append(self.history.hint)
        self.etcd.witness = self.history
        backend = conf.lvm.activation_backend
        if backend == 'auto':
            backend = 'lvm' if activation.has_device_mapper() else 'loop'
        self.lvm = executor.LVM(system_dir=conf.lvm.system_dir,
                                timeout=conf.lvm.command_timeout,
                                activation=backend == 'lvm')
        self.backend = activation.load(backend, self.lvm,
                                       conf.session.state_dir,
                                       conf.lvm.loop_dev_dir,
                                       conf.lvm.volume_groups)
        self.book = grantbook.GrantBook(conf.session.state_dir, conf.cluster)
        self.fencer_beat = os.path.join(conf.session.state_dir,
                                        f'fencer-{conf.cluster}.beat')
        self.watchdog_state = os.path.join(
            conf.session.state_dir, f'watchdog-{conf.cluster}.armed') \
            if conf.fence.watchdog_device else None
        self.router = Router(self.etcd, self.keys, self.engine.session,
                             once=self.engine.once)
        self.membership = Membership(self.etcd, self.keys, conf.host,
                                     conf.session.ttl)
        self.views = vgview.VGViews(self.lvm)
        self._versions = None
        self._events = queue.Queue()
        self._publisher = None
        self._ready = (0.0, None)
        self._refreshing = False
        self._mutex = threading.Lock()
        self.ops = Operations(self.engine, self.lvm, self.backend,
                              self.router, conf.lvm.volume_groups,
                              self.read_seqno, self.readiness,
                              self.membership.members, self.emit,
                              self.book, self.fencer_problem,
                              self.vg_metadata,
                              (lambda: watchdog.armed_in(self.watchdog_state))
                              if self.watchdog_state else None,
                              history=self.history_state,
                              fencer_id=self.fencer_id,
                              room=self.views.room)
        # VG lock holds and their commands, for the fencer's watchdog.
        self.inflight = inflight.Registry(
            conf.session.state_dir, conf.cluster,
            (lambda: watchdog.armed_in(self.watchdog_state))
            if self.watchdog_state else None, self.book.locked,
            lambda: self.engine.session.last_ok,
            conf.fence.fraction * conf.session.ttl)
        self.ops.guard.inflight = self.inflight
        if self.engine.storage:
            self.engine.storage.emit = self.emit
        if hasattr(self.backend, 'metadata'):
            self.backend.metadata = self.vg_metadata

    def beat_fencer(self, state):
        """The fencer's proof of life, read by the workers that grant;
        ``state`` 'starting' until its reconcile at start is done."""
        tmp = self.fencer_beat + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({'at': time.monotonic(), 'state': state,
                       'daemon': incarnation.daemon(),
                       'fencer': incarnation.own()}, f)
        os.replace(tmp, self.fencer_beat)

    def history_state(self):
        """The history mark as `lvmcoord status` shows it."""
        mark = self.history.mark()
        rewound = mark.get('rewound')
        return {'epoch': mark.get('epoch'),
                'generation': mark.get('generation'),
                'revision': mark.get('revision'),
                'rewound': rewound.get('reason') if rewound else None}

    def _beat(self):
        try:
            with open(self.fencer_beat) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def fencer_problem(self):
        """Why this host must not take grants now (etcd's history
        rewound, fencer down, not yet done with its reconcile, or
        fenced), or None."""
        rewound = self.history.rewound()
        if rewound:
            return (f'etcd\'s history was rewound ({rewound}); every '
                    f'device stays fenced until an operator accepts it '
                    f'(lvmcoord history accept, '
                    f'doc/runbook-etcd-restore.md)')
        beat = self._beat()
        if beat is None:
            return 'its fencer is not running'
        # A beat of an earlier run (a quick restart) is no word of this
        # daemon's fencer, which may still be reconciling.
        if beat.get('daemon') != incarnation.daemon() or \
                beat['state'] == 'starting':
            return FENCER_STARTING
        age = time.monotonic() - beat['at']
        # Negative: a beat from before a reboot (monotonic restarted).
        if age < 0 or age > max(3.0, 8 * self.conf.fence.interval):
            return f'its fencer has not run for {age:.1f}s'
        if beat['state'] == 'storage-unregistered':
            return ('its reservation key is not registered on the shared '
                    'LU yet ([fence] storage = scsi-pr)')
        if beat['state'] != 'ok':
            return (f'its fencer has fenced this host (session '
                    f'{beat["state"]}); waiting for the session to be '
                    f'proven valid')
        return None

    def fencer_id(self):
        """The incarnation of the fencer that beat last, or None."""
        return (self._beat() or {}).get('fencer')

    def read_seqno(self, vg, fresh=False):
        """The VG's committed seqno, read from a PV's metadata area."""
        return self.views.seqno(vg, fresh)

    def vg_metadata(self, vg, reread=True):
        """The VG as its committed metadata describes it (mda.VGInfo), or
        None when no metadata area can be read (callers ask LVM then);
        ``reread=False``: as last read, when an older answer is harmless."""
        return self.views.info(vg, reread)

    def readiness(self, fresh=False):
        """This host's view of the shared VGs (at most READINESS_TTL old).

        Past half its age a view is refreshed ahead in a thread (its LVM
        commands and etcd read stay off the path of the operation that
        asked); only a view older than READINESS_TTL is refreshed while
        the caller waits."""
        with self._mutex:
            at, view = self._ready
            age = time.monotonic() - at
            if view is not None and not fresh and age <= READINESS_TTL:
                if age > READINESS_TTL / 2 and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh_ahead,
                                     name='readiness', daemon=True).start()
                return view
            return self._refresh()

    def _refresh(self):
        # Timed from before the commands: the view is as old as they are.
        started = time.monotonic()
        view = readiness.view(self.lvm, self.conf.lvm.volume_groups,
                              self.known_uuids(), self.versions())
        view['fence'] = checkconf.fence_view(self.conf)
        if started >= self._ready[0]:
            self._ready = (started, view)
        return view

    def _refresh_ahead(self):
        # Outside the mutex: a caller meanwhile gets the current view.
        try:
            with errors.logged(LOG, 'readiness: refresh failed (the next '
                               'use retries)'):
                self._refresh()
        finally:
            self._refreshing = False

    def known_uuids(self):
        """VG UUIDs as first recorded in etcd by any host."""
        out = {}
        for vg in self.conf.lvm.volume_groups:
            kv = self.etcd.get(f'{self.keys.vgs()}{vg}/uuid')
            if kv:
                out[vg] = kv.value
        return out

    def record_uuids(self, view):
        """First host to see a VG records its UUID for the others."""
        for vg, entry in view['vgs'].items():
            key = f'{self.keys.vgs()}{vg}/uuid'
            self.etcd.txn([etcdlib.cmp_create(key, 0)],
                          [etcdlib.op_put(key, entry['uuid'])])

    def versions(self):
        """LVM, etcd and backend versions (asked once per process: the
        readiness view is refreshed every 15 s, versions do not change)."""
        if self._versions is None or self._versions['etcd'] is None:
            try:
                etcd_version = self.etcd.status().get('version')
            except errors.CoordError:
                etcd_version = None
            self._versions = {'lvm': self.lvm.version(),
                              'etcd': etcd_version,
                              'backend': self.backend.name}
        return dict(self._versions)

    def emit(self, kind, **fields):
        """Publish an event (fence, alert...) for `lvmcoord events`.

        Never blocks: the fencer emits while etcd may be unreachable."""
        metrics.EVENTS.labels(kind=kind).inc()
        self._events.put(dict(fields, kind=kind, host=self.conf.host,
                              at=time.time()))
        with self._mutex:
            if self._publisher is None:
                self._publisher = threading.Thread(target=self._publish,
                                                   daemon=True)
                self._publisher.start()

    def _publish(self):
        # Fences happen when etcd is out of reach: their events wait here
        # and go out once it answers (under a lease of their own if the
        # session that saw them is gone).
        lease = None
        while True:
            event = self._events.get()
            key = f'{self.keys.events()}{event["at"]:.6f}-' \
                  f'{uuid.uuid4().hex[:6]}'
            for attempt in range(EVENT_RETRIES):
                try:
                    self.etcd.put(key, event,
                                  lease=lease or self.engine.session.id)
                    break
                except errors.SessionLost:
                    lease = self._event_lease()
                except errors.CoordError as exc:
                    LOG.warning('event %s not published yet: %s',
                                event['kind'], exc)
                    time.sleep(min(5.0, 0.5 * (attempt + 1)))

    def _event_lease(self):
        try:
            return self.etcd.lease_grant(EVENT_TTL)
        except errors.CoordError:
            return None
