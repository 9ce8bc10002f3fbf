"""Router: requests to other hosts' daemons, carried by etcd.

A caller puts ``requests/<host>/<id>`` bound to its own session lease and
watches ``replies/<id>``. The target daemon watches its request prefix and
claims a request by deleting it in a txn that also proves the request's
lease is the live session of the host named in ``from`` (``sessions/<from>``
is attached to that very lease). What fails the proof is deleted and never
answered: nobody we know sent it. A bound request is checked with the local
socket's schema, limited to the operations that make sense remotely, queued
(bounded, per-caller limits, oldest first) and run; its reply is put only
while the caller's session lives, on a short lease of its own, so a reply
nobody reads goes away. A deactivate's reply rides on its release txn.
doc/security.md states what this does and does not protect against.
"""
import collections
import functools
import logging
import re
import threading
import time
import uuid

from coordinator import errors
from coordinator.api import schema
from coordinator.daemon import replies
from coordinator.daemon import scheduler
from coordinator.engine import etcd as etcdlib
from coordinator.engine import etcdhttp
from coordinator.engine import once as oncelib
from coordinator.engine import rider as riderlib

LOG = logging.getLogger(__name__)

# Safety net against a silently dead watch stream (a stream that ends is
# noticed at once, a silent one by TCP keepalive within ~15 s).
RESCAN = 30.0
# How often a waiting caller looks at its own session (local state only).
RECHECK = 1.0
# How often it asks whether the target's session still exists (one get):
# a target that died mid-request fails the call within a TTL or so, not
# a RESCAN (an evacuation's detach from a dead host waits on this).
TARGET_CHECK = 2.0

# What another host may ask of this one: the operations ops.py routes
# (activate/deactivate/refresh through _route, snapshot, snapshot_delete
# and copy to the origin's holder). Metadata changes and reads are never
# run on request.
ROUTABLE = ('activate', 'deactivate', 'refresh', 'snapshot',
            'snapshot_delete', 'copy')
# A routed activate may wait this long for a lease; the caller waits
# MAX_WAIT plus its own margin, so a request can never hold a worker longer.
MAX_WAIT = 300.0
MAX_TIMEOUT = MAX_WAIT + 120.0
# A copy takes as long as its data does (copy.timeout_for).
OP_MAX_TIMEOUT = {'copy': 6 * 3600.0}
DEFAULT_TIMEOUT = 60.0
# Seconds a reply lives when nobody reads it (the caller reads it within a
# RESCAN at worst).
REPLY_TTL = 30
# Requests claimed but not yet running, in total and per caller.
QUEUE_SIZE = 64
FIELDS = frozenset({'op', 'args', 'from', 'timeout'})
_RID = re.compile(r'[0-9a-f]{32}')
# Unclaimed requests whose first admission is remembered (the oldest
# are forgotten first; the entry of one claimed or run goes at once).
FIRST_ADMITTED_MAX = 1024
# Claimed by the txn that grants them (engine.rider), not by a txn of
# their own: no round trip on the path, and a request whose caller is gone
# by then grants nothing. Nothing before the grant changes anything.
CLAIMED_BY_GRANT = frozenset({'activate'})
# The host-name rule of the socket's schema (its ``host`` fields).
_host_name = dict(schema.OPS['deactivate'][1])['host']
_serving = threading.local()


def claim_rider(keys, kv, sender, on_unbound):
    """The claim of request ``kv`` (from ``sender``) as an engine.rider:
    the request is this very version and its lease is ``sender``'s live
    session; ``on_unbound()`` runs when the lease is not that session."""
    session_key = keys.session(sender)

    def check(ranges):
        current, session = ranges
        if not current or current[0].mod_revision != kv.mod_revision:
            return 'claimed already, withdrawn or rewritten'
        if not session or session[0].lease != kv.lease:
            on_unbound()
            return f'not bound to a live session of {sender}'
        return None
    return riderlib.Rider(
        [etcdlib.cmp_mod(kv.key, kv.mod_revision),
         etcdlib.cmp_lease(session_key, kv.lease)],
        [etcdlib.op_delete(kv.key)],
        [etcdlib.op_range(kv.key), etcdlib.op_range(session_key)], check)


class _Unbound(Exception):
    """A request nobody known is behind: deleted, never answered."""


def current_rider():
    """The claim a request being run in this thread leaves to its grant
    (engine.rider.Rider), or None."""
    return getattr(_serving, 'rider', None)


def reply_rider(op, result):
    """The successful reply ``result`` to the request being run in this
    thread, as an engine.rider for the txn that completes it (its reply is
    then not put again); None unless that request is ``op`` (an op that
    another runs on its way is no reply) or once it was handed out."""
    ride = getattr(_serving, 'reply', None)
    return ride(op, result) if ride is not None else None


class Router:
    """Send requests to other hosts and serve the ones sent to us."""

    def __init__(self, etcd, keys, session, reply_ttl=REPLY_TTL, once=None):
        self.etcd = etcd
        self.keys = keys
        self.session = session
        self.once = once or oncelib.Once(etcd, keys.once())
        self.reply_ttl = reply_ttl
        self.scheduler = None
        self._stop = threading.Event()
        self._reply_lease = (0, 0.0)
        self._lease_mutex = threading.Lock()
        self._replies = None
        # Requests admitted unclaimed (their grant claims them): the watch
        # and a rescan may both see one; it is run once.
        self._unclaimed = set()
        # When this process first admitted each: one whose grant never
        # applied is admitted again, no younger than it is.
        self._first_admitted = collections.OrderedDict()
        self._unclaimed_mutex = threading.Lock()

    def alive(self, host):
        """The host's session record, or None if it has no live session."""
        kv = self.etcd.get(self.keys.session(host))
        return kv.json() if kv else None

    # -- caller side --

    def call(self, host, op, args, timeout=DEFAULT_TIMEOUT):
        """Run ``op`` on ``host``'s daemon; its result, or raise."""
        if getattr(_serving, 'request', False):
            # A request runs on the host it was sent to, never relayed:
            # no chains, no loops between hosts.
            raise errors.HostUnavailable(
                f'{op} must run on {host}, but this host is itself running '
                f'a request routed to it; routed requests are not forwarded')
        if op not in ROUTABLE:
            raise errors.InvalidInput('op', f'{op!r:.60} cannot be routed '
                                      f'to another host')
        if float(args.get('wait') or 0) > MAX_WAIT:
            raise errors.InvalidInput('wait', f'at most {MAX_WAIT:.0f} '
                                      f'seconds for another host')
        timeout = min(float(timeout), OP_MAX_TIMEOUT.get(op, MAX_TIMEOUT))
        lease = self.session.id
        if not lease:
            raise errors.SessionLost(f'{self.session.host} has no session: '
                                     f'cannot send {op} to {host}')
        rid = uuid.uuid4().hex
        req_key, reply_key = self.keys.request(host, rid), \
            self.keys.reply(self.session.host, rid)
        # The reply is expected on this process's reply stream before the
        # request exists (coordinator/daemon/replies.py): no watch to open
        # per call, and no watch started in the past ("unsynced" in etcd,
        # its events held for etcd's 100 ms catch-up loop).
        answered = False
        with self._expect(reply_key) as watch:
            # The target's session check and the put in one txn
            # (SessionLost if our own lease is gone: etcd: lease not found).
            # At most once: the target deletes a request it claims, and a
            # late second delivery must not make it run again.
            res = self.once.txn(lambda once_cmp, once_put: (
                [{'key': etcdlib.b64(self.keys.session(host)),
                  'target': 'VERSION', 'result': 'GREATER', 'version': 0},
                 once_cmp],
                [etcdlib.op_put(req_key, {'op': op, 'args': args,
                                          'from': self.session.host,
                                          'timeout': timeout},
                                lease=lease), once_put],
                [etcdlib.op_range(self.keys.session(host), limit=1)]))
            if not res.succeeded and not res.ranges[0]:
                raise errors.HostUnavailable(
                    f'host {host} has no live lvmcoord session')
            # (Else the target lives, so the once-compare failed: this was
            # our own retry of a put whose first delivery applied.)
            try:
                result = self._await(host, op, lease, reply_key, watch,
                                     timeout)
                answered = True
                return result
            finally:
                if answered:
                    # Claimed by the target (the request is gone) and
                    # read: deleted off the caller's path.
                    self._replies.discard([req_key, reply_key])
                else:
                    self.etcd.txn([], [etcdlib.op_delete(req_key),
                                       etcdlib.op_delete(reply_key)])

    def _expect(self, reply_key):
        if self._replies is None:
            self._replies = replies.Replies(
                self.etcd, self.keys.replies(self.session.host))
        return self._replies.expect(reply_key)

    def _await(self, host, op, lease, reply_key, watch, timeout):
        deadline = time.monotonic() + timeout
        next_scan = time.monotonic() + RESCAN
        next_target = time.monotonic() + TARGET_CHECK
        for event in watch.until(deadline, RECHECK):
            if event and event[0] == 'PUT':
                return self._unwrap(host, event[1].json())
            self._check_session(host, op, lease)
            if time.monotonic() >= next_target:
                next_target = time.monotonic() + TARGET_CHECK
                if self.alive(host) is None:
                    # Its answer may have come just before it went.
                    kv = self.etcd.get(reply_key)
                    if kv is not None:
                        return self._unwrap(host, kv.json())
                    raise errors.HostUnavailable(
                        f'host {host} lost its session while running '
                        f'{op}')
            if event is None and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + RESCAN
                kv = self.etcd.get(reply_key)
                if kv is not None:
                    return self._unwrap(host, kv.json())
                if self.etcd.lease_ttl(lease) <= 0:
                    self._session_lost(host, op)
                if self.alive(host) is None:
                    raise errors.HostUnavailable(
                        f'host {host} lost its session while running '
                        f'{op}')
        raise errors.HostUnavailable(
            f'host {host} did not answer {op} within {timeout:.0f}s')

    def _check_session(self, host, op, lease):
        try:
            self.session.check()
        except errors.SessionLost:
            self._session_lost(host, op)
        if self.session.id != lease:
            self._session_lost(host, op)

    def _session_lost(self, host, op):
        raise errors.SessionLost(
            f'session of {self.session.host} ended while waiting for {op} '
            f'on {host}: its reply cannot be delivered (the request may or '
            f'may not have run there; check with show)')

    @staticmethod
    def _unwrap(host, reply):
        if not isinstance(reply, dict):
            raise errors.CoordError(f'malformed reply from {host}')
        if reply.get('ok'):
            return reply.get('result')
        body = reply.get('error')
        raise errors.from_dict(body if isinstance(body, dict) else {},
                               f'on {host}: ')

    # -- serving side --

    def serve(self, handler, workers=4, per_caller=None,
              queue_size=QUEUE_SIZE):
        """Run ``handler(op, args)`` for requests to this host until
        stop(); one caller runs at most ``per_caller`` at a time (default
        half the workers) and queues at most a quarter of ``queue_size``."""
        prefix = self.keys.requests(self.session.host)
        self.scheduler = scheduler.Scheduler(
            workers, per_caller or max(1, workers // 2), queue_size)
        try:
            while not self._stop.is_set():
                try:
                    self._serve_once(prefix, handler)
                except errors.CoordError as exc:
                    # A partition: keep serving once etcd is back.
                    LOG.warning('requests: %s; retrying', exc)
                    self._stop.wait(0.5)
        finally:
            for job in self.scheduler.shutdown():
                self._answer(job, {'ok': False, 'error': errors.
                                   HostUnavailable(f'{self.session.host} is '
                                                   f'stopping').to_dict()})

    def _serve_once(self, prefix, handler):
        # Watch first, then read: a watch from the read's revision could be
        # "unsynced" in etcd, its events held up to 100 ms. A request both
        # see is claimed once (the claim compares its mod revision).
        with self.etcd.watch(prefix, 0, prefix=True) as watch:
            kvs, _ = self.etcd.range(prefix, prefix=True,
                                     first_created=True)
            for kv in kvs:
                self._admit(handler, kv)
            # Short ticks: stop() is noticed within half a second.
            for event in watch.until(time.monotonic() + RESCAN, 0.5):
                if self._stop.is_set() or watch.dead:
                    return
                if event and event[0] == 'PUT':
                    self._admit(handler, event[1])

    def _admit(self, handler, kv):
        """Claim one request if it proves who sent it (or leave that to
        its grant); queue or answer."""
        try:
            rid, req, sender = self._parse(kv)
        except _Unbound as exc:
            self._drop(kv, str(exc))
            return
        job = _Job(rid, sender, kv, req.get('op'), time.monotonic())
        try:
            job.op, job.args, job.timeout = self._validate(req)
        except errors.CoordError as exc:
            if self._claim(kv, sender):
                LOG.warning('refused %s from %s: %s', _op_name(req), sender,
                            exc)
                self._reply(job, {'ok': False, 'error': exc.to_dict()})
            return
        if job.op in CLAIMED_BY_GRANT:
            ident = (kv.key, kv.mod_revision)
            with self._unclaimed_mutex:
                if ident in self._unclaimed:
                    return
                self._unclaimed.add(ident)
                # Its caller's timeout counts from its first admission.
                job.claimed = self._first_admitted.setdefault(
                    ident, job.claimed)
                while len(self._first_admitted) > FIRST_ADMITTED_MAX:
                    self._first_admitted.popitem(last=False)
            job.rider = self._rider(kv, sender)
        elif not self._claim(kv, sender):
            return
        refusal = self.scheduler.submit(
            job, lambda: self._run(handler, job))
        if refusal:
            LOG.warning('refused %s from %s: %s', job.op, sender, refusal)
            self._settle(job, claimed=False)
            self._answer(job, {'ok': False,
                               'error': errors.Busy(refusal).to_dict()})
            self._settle(job, claimed=True)

    def _claim(self, kv, sender):
        """Claim ``kv`` in a txn of its own; False if it is not ours to
        run (claimed already, rewritten, or not bound to its sender: then
        deleted)."""
        # The claim and the proof in one txn: the request is this very
        # version (mod revision: value and lease unchanged) and its lease is
        # the one sessions/<from> lives on, i.e. <from>'s live session.
        res = self.etcd.txn([etcdlib.cmp_mod(kv.key, kv.mod_revision),
                             etcdlib.cmp_lease(self.keys.session(sender),
                                               kv.lease)],
                            [etcdlib.op_delete(kv.key)],
                            [etcdlib.op_range(kv.key)])
        if not res.succeeded:
            current = res.ranges[0]
            if current and current[0].mod_revision == kv.mod_revision:
                self._drop(kv, f'its lease {kv.lease:x} is not the live '
                           f'session of {sender!r}')
            # Otherwise claimed already (rescan and watch both saw it) or
            # rewritten: the newer version comes as its own event.
        return res.succeeded

    def _rider(self, kv, sender):
        """The claim of ``kv`` as a rider on the txn that grants."""
        return claim_rider(self.keys, kv, sender, lambda: self._drop(
            kv, f'its lease {kv.lease:x} is not the live session of '
            f'{sender!r}'))

    def _answer(self, job, reply):
        """Reply to ``job``, claiming it first if its grant did not: an
        unclaimed request is answered only once it proved its sender."""
        if job.rider is not None and not job.rider.done and \
                not self._claim(job.kv, job.caller):
            return
        self._reply(job, reply)

    def _parse(self, kv):
        prefix = self.keys.requests(self.session.host)
        rid = kv.key[len(prefix):]
        if not kv.key.startswith(prefix) or not _RID.fullmatch(rid):
            raise _Unbound(f'malformed request key {kv.key[:120]!r}')
        if not kv.lease:
            raise _Unbound('not bound to any session lease')
        if len(kv.value) > schema.MAX_BODY:
            raise _Unbound(f'larger than {schema.MAX_BODY} bytes')
        try:
            req = kv.json()
        except (ValueError, RecursionError):
            raise _Unbound('not valid JSON') from None
        if not isinstance(req, dict):
            raise _Unbound('not a JSON object')
        try:
            sender = _host_name(req.get('from'), 'from')
        except errors.InvalidInput as exc:
            raise _Unbound(str(exc)) from None
        return rid, req, sender

    def _validate(self, req):
        """(op, args, timeout) of a bound request, or InvalidInput."""
        extra = set(req) - FIELDS
        if extra:
            raise errors.InvalidInput(repr(sorted(extra)[0][:40]),
                                      'unknown field in a routed request')
        op = req.get('op')
        if op not in ROUTABLE:
            raise errors.InvalidInput(
                'op', f'{op!r:.60} cannot be run on request of another '
                f'host (routable: {", ".join(ROUTABLE)})')
        # The local socket's own rules, field by field.
        op, args = schema.validate({'op': op, 'args': req.get('args', {})})
        if args.get('wait', 0) > MAX_WAIT:
            raise errors.InvalidInput('wait', f'at most {MAX_WAIT:.0f} '
                                      f'seconds in a routed request')
        if args.get('host', self.session.host) != self.session.host:
            raise errors.InvalidInput(
                'host', f'this request was sent to {self.session.host}, '
                f'not to {args["host"]}')
        timeout = req.get('timeout', DEFAULT_TIMEOUT)
        limit = OP_MAX_TIMEOUT.get(op, MAX_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout,
                                                       (int, float)) \
                or not 0 < timeout <= limit:
            raise errors.InvalidInput(
                'timeout', f'must be a number of seconds, 0..{limit:g}')
        return op, args, float(timeout)

    def _drop(self, kv, reason):
        # Only this version: a legitimate rewrite is judged on its own.
        self.etcd.txn([etcdlib.cmp_mod(kv.key, kv.mod_revision)],
                      [etcdlib.op_delete(kv.key)])
        LOG.warning('ignored request %s: %s', kv.key[-40:], reason)

    def _run(self, handler, job):
        try:
            self._serve(handler, job)
        except errors.CoordError as exc:
            # Claiming or answering it needs etcd: away, the caller times
            # out. Its request key stays only if nothing claimed it: its
            # grant has not applied, or not yet (one given up may apply
            # late). Then its first admission is kept.
            LOG.warning('%s from %s not answered: %s', job.op, job.caller,
                        exc)
            return
        self._settle(job, claimed=True)

    def _settle(self, job, claimed):
        """Forget ``job`` as admitted unclaimed: it may be admitted again
        (``claimed``: its request is gone, its first admission with it)."""
        ident = (job.kv.key, job.kv.mod_revision)
        with self._unclaimed_mutex:
            self._unclaimed.discard(ident)
            if claimed:
                self._first_admitted.pop(ident, None)

    def _serve(self, handler, job):
        try:
            if time.monotonic() > job.claimed + job.timeout:
                # Its caller has given up: running it would act for nobody.
                LOG.warning('dropped %s from %s: queued past its caller\'s '
                            'timeout (%.0fs)', job.op, job.caller,
                            job.timeout)
                if job.rider is not None:
                    self._claim(job.kv, job.caller)  # gone, unanswered
                return
            reply = self._handle(handler, job)
        finally:
            self._settle(job, claimed=False)
        if reply is not None and not (job.reply_rider and
                                      job.reply_rider.done):
            self._answer(job, reply)

    def _handle(self, handler, job):
        """The reply to ``job``, None if its grant found it is not ours."""
        _serving.request, _serving.rider = True, job.rider
        _serving.reply = functools.partial(self._ride_reply, job)
        LOG.info('running %s from %s', job.op, job.caller)
        try:
            return {'ok': True, 'result': handler(job.op, job.args)}
        except riderlib.RiderLost as exc:
            LOG.info('%s from %s not run: %s', job.op, job.caller, exc)
            return None
        except errors.CoordError as exc:
            return {'ok': False, 'error': exc.to_dict()}
        except Exception as exc:
            LOG.exception('routed %s crashed', job.op)
            return {'ok': False, 'error': {
                'code': 'error', 'message': f'internal error in {job.op}: '
                f'{type(exc).__name__}: {exc}'}}
        finally:
            _serving.request, _serving.rider = False, None
            _serving.reply = None

    def _reply_txn(self, job, reply, lease):
        """(compare, success) that put the reply on ``lease`` while the
        caller's session lives (a reply nobody will read does not stay),
        unless one is there already: the first answer stands (a txn
        retried after it applied answers again)."""
        key = self.keys.reply(job.caller, job.rid)
        return ([etcdlib.cmp_lease(self.keys.session(job.caller),
                                   job.lease),
                 etcdlib.cmp_create(key, 0)],
                [etcdlib.op_put(key, reply, lease=lease)])

    def _ride_reply(self, job, op, result):
        if job.op != op or job.reply_rider is not None:
            return None
        if job.rider is not None and not job.rider.done:
            return None  # unclaimed: answered once it proved its sender
        try:
            lease = self._lease_for_replies()
        except Exception as exc:  # etcd away or refusing (its own type)
            # The release must not wait on the reply: it goes on its own.
            LOG.info('reply to %s rides on nothing: %s', job.caller, exc)
            return None
        # A nested txn: a caller gone by then fails only the reply, never
        # the txn it rides on. What runs after that txn is answered
        # already: a failure there goes unreplied.
        job.reply_rider = riderlib.Rider(
            [], [etcdlib.op_txn(*self._reply_txn(
                job, {'ok': True, 'result': result}, lease))], [], None)
        return job.reply_rider

    def _reply(self, job, reply):
        """Put the reply (_reply_txn)."""
        try:
            lease = self._lease_for_replies()
            try:
                res = self.etcd.txn(*self._reply_txn(job, reply, lease))
            except errors.SessionLost:
                # The replies' lease is gone (revoked, etcd restored): on
                # a new one. (The caller's session is a compare.)
                self._forget_reply_lease(lease)
                res = self.etcd.txn(*self._reply_txn(
                    job, reply, self._lease_for_replies()))
        except (errors.CoordError, etcdhttp.EtcdError) as exc:
            LOG.warning('reply to %s for %s not sent: %s', job.caller,
                        job.op, exc)
            return
        if not res.succeeded:
            LOG.info('reply to %s for %s not put: its session ended, or it '
                     'was answered already', job.caller, job.op)

    def _lease_for_replies(self):
        # One lease for the replies of a third of its TTL: every reply
        # lives between 2/3 and all of reply_ttl, for one grant per period.
        with self._lease_mutex:
            lease, granted = self._reply_lease
            if not lease or time.monotonic() - granted > self.reply_ttl / 3:
                granted = time.monotonic()
                lease = self.etcd.lease_grant(self.reply_ttl)
                self._reply_lease = (lease, granted)
            return lease

    def _forget_reply_lease(self, lease):
        with self._lease_mutex:
            if self._reply_lease[0] == lease:  # not a newer one
                self._reply_lease = (0, 0.0)

    def stop(self):
        self._stop.set()


def _op_name(req):
    op = req.get('op')
    return repr(op)[:40] if not isinstance(op, str) else op[:40]


class _Job:
    """One admitted request (claimed, or with the rider that claims it)."""

    __slots__ = ('rid', 'caller', 'kv', 'lease', 'op', 'args', 'timeout',
                 'claimed', 'rider', 'reply_rider')

    def __init__(self, rid, caller, kv, op, claimed):
        self.rid, self.caller, self.kv, self.lease = rid, caller, kv, kv.lease
        self.op, self.args, self.timeout = op, None, DEFAULT_TIMEOUT
        self.claimed = claimed
        self.rider = None
        self.reply_rider = None
