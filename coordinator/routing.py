"""Router: requests to other hosts' daemons, carried by etcd.

A caller puts ``requests/<host>/<id>`` (bound to its own session, so it
vanishes if the caller dies) and watches ``replies/<id>``. The target
daemon watches its request prefix, claims each request by deleting it, runs
it, and puts the reply. No ports, no firewall rules: only etcd.
"""
import concurrent.futures
import logging
import threading
import time
import uuid

from coordinator import errors
from coordinator import etcd as etcdlib

LOG = logging.getLogger(__name__)

# Safety net against a silently dead watch stream.
RESCAN = 5.0


class Router:
    """Send requests to other hosts and serve the ones sent to us."""

    def __init__(self, etcd, keys, session):
        self.etcd = etcd
        self.keys = keys
        self.session = session
        self._stop = threading.Event()

    def alive(self, host):
        """The host's session record, or None if it has no live session."""
        kv = self.etcd.get(self.keys.session(host))
        return kv.json() if kv else None

    def call(self, host, op, args, timeout=60.0):
        """Run ``op`` on ``host``'s daemon; its result, or raise."""
        if self.alive(host) is None:
            raise errors.HostUnavailable(
                f'host {host} has no live lvmcoord session')
        rid = uuid.uuid4().hex
        req_key, reply_key = self.keys.request(host, rid), \
            self.keys.reply(rid)
        rev = self.etcd.put(req_key, {'op': op, 'args': args,
                                      'from': self.session.host,
                                      'timeout': timeout},
                            lease=self.session.id)
        try:
            with self.etcd.watch(reply_key, rev) as watch:
                for event in watch.until(time.monotonic() + timeout,
                                         RESCAN):
                    kv = event[1] if event and event[0] == 'PUT' else \
                        self.etcd.get(reply_key)
                    if kv is not None:
                        return self._unwrap(host, kv.json())
                    if self.alive(host) is None:
                        raise errors.HostUnavailable(
                            f'host {host} lost its session while running '
                            f'{op}')
            raise errors.HostUnavailable(
                f'host {host} did not answer {op} within {timeout:.0f}s')
        finally:
            self.etcd.txn([], [etcdlib.op_delete(req_key),
                               etcdlib.op_delete(reply_key)])

    @staticmethod
    def _unwrap(host, reply):
        if reply.get('ok'):
            return reply.get('result')
        raise errors.from_dict(reply.get('error', {}), f'on {host}: ')

    def serve(self, handler, workers=4):
        """Run ``handler(op, args)`` for requests to this host until
        stop()."""
        prefix = self.keys.requests(self.session.host)
        pool = concurrent.futures.ThreadPoolExecutor(workers)
        try:
            while not self._stop.is_set():
                kvs, header = self.etcd.range(prefix, prefix=True)
                for kv in kvs:
                    self._claim(pool, handler, kv)
                with self.etcd.watch(prefix, header + 1,
                                     prefix=True) as watch:
                    # Short ticks: stop() is noticed within half a second.
                    for event in watch.until(time.monotonic() + RESCAN,
                                             0.5):
                        if self._stop.is_set():
                            break
                        if event and event[0] == 'PUT':
                            self._claim(pool, handler, event[1])
        finally:
            pool.shutdown(wait=True)

    def _claim(self, pool, handler, kv):
        # Deleting the request is the claim: only one server runs it, and
        # a request seen twice (rescan and watch) fails the compare.
        res = self.etcd.txn([etcdlib.cmp_create(kv.key, kv.create_revision)],
                            [etcdlib.op_delete(kv.key)])
        if res.succeeded:
            pool.submit(self._run, handler, kv)

    def _run(self, handler, kv):
        rid = kv.key.rsplit('/', 1)[1]
        req = kv.json()
        try:
            reply = {'ok': True, 'result': handler(req['op'], req['args'])}
        except errors.CoordError as exc:
            reply = {'ok': False, 'error': exc.to_dict()}
        except Exception as exc:
            LOG.exception('routed %s crashed', req.get('op'))
            reply = {'ok': False, 'error': {'code': 'error',
                                            'message': str(exc)}}
        self.etcd.put(self.keys.reply(rid), reply, lease=self.session.id)

    def stop(self):
        self._stop.set()
