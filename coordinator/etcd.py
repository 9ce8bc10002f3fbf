"""etcd access for the engine: endpoint fail-over, TLS, typed results.

etcd3gw talks to one endpoint; this wraps one client per endpoint and moves
to the next on connection errors, retrying for ``retry_window`` seconds so a
leader election or a dead member is ridden out. Every txn the engine sends
is guarded by compares, so a retried txn whose first attempt did apply fails
its compare instead of applying twice; callers read back to tell.

Identity: TLS client certificates (``cert_file``/``key_file``) and/or etcd
user/password (``username``/``password``, a token per client, renewed when
etcd rejects it). The same settings reach tooz through
``Etcd.tooz_coordinator``: one place for both.
"""
import dataclasses
import json
import logging
import queue
import threading
import time
from urllib import parse

import etcd3gw
from etcd3gw import exceptions as gw_exc
from etcd3gw import utils as gw_utils
from etcd3gw import watch as gw_watch
import requests

from coordinator import errors
from coordinator import etcdhttp

LOG = logging.getLogger(__name__)

_RETRYABLE = (gw_exc.ConnectionFailedError, gw_exc.ConnectionTimeoutError,
              gw_exc.InternalServerError, requests.exceptions.ConnectionError,
              requests.exceptions.Timeout)


def b64(data):
    """Encode a str or bytes key/value the way the gateway wants it."""
    if isinstance(data, str):
        data = data.encode()
    return gw_utils._encode(data)


def prefix_end(prefix):
    """The range_end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


@dataclasses.dataclass(frozen=True)
class KV:
    """One key as etcd returned it."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_gateway(cls, kv):
        def dec(field):
            raw = kv.get(field, '')
            if isinstance(raw, bytes):
                return raw.decode()
            return gw_utils._decode(raw).decode() if raw else ''
        return cls(key=dec('key'), value=dec('value'),
                   create_revision=int(kv.get('create_revision', 0)),
                   mod_revision=int(kv.get('mod_revision', 0)),
                   version=int(kv.get('version', 0)),
                   lease=int(kv.get('lease', 0)))

    def json(self):
        """The value parsed as JSON ({} when empty)."""
        return json.loads(self.value) if self.value else {}


@dataclasses.dataclass(frozen=True)
class TxnResult:
    """Outcome of a txn: which branch ran, at what revision, range results."""

    succeeded: bool
    revision: int
    ranges: list


# -- txn building blocks (etcd's Compare and RequestOp, gateway JSON) --

def cmp_create(key, revision):
    """Compare: ``key`` was created at ``revision`` (0: key absent)."""
    return {'key': b64(key), 'target': 'CREATE', 'result': 'EQUAL',
            'create_revision': revision}


def cmp_mod(key, revision):
    """Compare: ``key`` was last modified at ``revision`` (0: absent)."""
    return {'key': b64(key), 'target': 'MOD', 'result': 'EQUAL',
            'mod_revision': revision}


def cmp_lease(key, lease_id):
    """Compare: ``key`` is attached to lease ``lease_id``."""
    return {'key': b64(key), 'target': 'LEASE', 'result': 'EQUAL',
            'lease': lease_id}


def op_put(key, value, lease=0):
    """Request: put ``value`` (str or JSON-able) at ``key``."""
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True)
    req = {'key': b64(key), 'value': b64(value)}
    if lease:
        req['lease'] = lease
    return {'request_put': req}


def op_delete(key, prefix=False):
    """Request: delete ``key`` (or every key under it)."""
    req = {'key': b64(key)}
    if prefix:
        req['range_end'] = b64(prefix_end(key))
    return {'request_delete_range': req}


def op_range(key, prefix=False, first_created=False, limit=0):
    """Request: read ``key`` (or its prefix, oldest creation first)."""
    req = {'key': b64(key)}
    if prefix:
        req['range_end'] = b64(prefix_end(key))
    if first_created:
        req.update(sort_order='ASCEND', sort_target='CREATE')
    if limit:
        req['limit'] = limit
    return {'request_range': req}


class Watch:
    """A watch on a key or prefix; events are read with a timeout."""

    def __init__(self, etcd, key, start_revision, prefix=False):
        self._queue = queue.Queue()
        url = etcd.endpoint()
        # A private HTTP session: a stream holds its connection for its whole
        # life and must not starve the request pool.
        client = etcdgw_client(url, etcd.tls, timeout=None, stream=True)
        client._api_path = etcd.client().api_path
        token = etcd.stream_token()
        if token:
            # A stream with a bad token hangs silently: callers re-read on
            # their recheck ticks, and the token is renewed by those reads.
            client.session.headers['Authorization'] = token
        kwargs = {'start_revision': start_revision}
        if prefix:
            kwargs['range_end'] = prefix_end(key).decode()
        self._watcher = gw_watch.Watcher(client, key, self._queue.put,
                                         **kwargs)
        self._session = client.session

    def get(self, timeout):
        """Next event as (type, KV), or None after ``timeout`` seconds."""
        try:
            ev = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return ev.get('type', 'PUT'), KV.from_gateway(ev['kv'])

    def until(self, deadline, recheck):
        """Events as get() gives them until monotonic ``deadline``, with
        None after each ``recheck`` seconds without one: a stream lost
        with an etcd member must not strand the caller, who re-reads."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            yield self.get(min(left, recheck))

    def cancel(self):
        """Stop the stream and release its connection."""
        self._watcher.stop()
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


def http_session(tls, stream=False, auth=None):
    """An HTTP session for etcd: TLS and auth as configured, no proxies;
    the lean one (coordinator.etcdhttp) except for watch streams (whose
    caller sets the token header)."""
    if not stream:
        return etcdhttp.Session(tls, auth=auth)
    session = requests.Session()
    # etcd must never be reached through an HTTP proxy, and reading the
    # proxy environment costs more than the request itself on loopback.
    session.trust_env = False
    if tls.get('ca_file'):
        session.verify = tls['ca_file']
    if tls.get('cert_file') and tls.get('key_file'):
        session.cert = (tls['cert_file'], tls['key_file'])
    return session


def etcdgw_client(url, tls, timeout, stream=False, auth=None):
    """An etcd3gw client for one parsed endpoint URL."""
    return etcd3gw.client(host=url.hostname, port=url.port or 2379,
                          protocol=url.scheme, timeout=timeout,
                          session=http_session(tls, stream, auth))


# etcd's own words for "who you are or what you may touch was refused".
_DENIED = ('permission denied', 'user name is empty', 'authentication failed',
           'invalid auth token', 'auth store is old', 'user name not found',
           'role name not found',
           # etcd's HTTP gateway never maps a certificate CN to a user:
           # with auth on, [etcd] username/password are needed as well.
           'CommonName of client')


def _translate(exc):
    """A clear error for an etcd refusal; etcd3gw's own str() is only the
    HTTP reason ("Not Found"), its body is in ``detail_text``."""
    detail = exc.detail_text or ''
    try:
        message = json.loads(detail).get('error') or detail
    except (ValueError, AttributeError):
        message = detail
    message = str(message).strip()[:300]
    reason = ' '.join(str(a) for a in exc.args).strip()
    if 'lease not found' in message or 'lease not found' in reason:
        return errors.SessionLost(
            f'session lease expired or revoked (etcd: {message or reason})')
    if any(d in message for d in _DENIED):
        return errors.EtcdDenied(f'etcd refused the request: {message}')
    # Keep the type callers catch, with etcd's words in the message.
    exc.args = (f'{reason or "etcd error"}: {message}' if message
                else reason or 'etcd error',)
    return exc


class Etcd:
    """etcd over several endpoints, failing over to the next on errors."""

    def __init__(self, endpoints, ca_file=None, cert_file=None,
                 key_file=None, timeout=5.0, retry_window=15.0,
                 username=None, password=None):
        if not endpoints:
            raise errors.InvalidInput('etcd.endpoints', 'no endpoint given')
        if password and not username:
            raise errors.InvalidInput('etcd.username',
                                      'required when a password is set')
        if bool(cert_file) != bool(key_file):
            raise errors.InvalidInput(
                'etcd.cert_file' if key_file else 'etcd.key_file',
                'cert_file and key_file go together')
        self.endpoints = [self._parse(e) for e in endpoints]
        self.tls = {'ca_file': ca_file, 'cert_file': cert_file,
                    'key_file': key_file}
        self.auth = etcdhttp.Auth(username, password) if username else None
        self.timeout = timeout
        self.retry_window = retry_window
        self._clients = [etcdgw_client(u, self.tls, timeout, auth=self.auth)
                         for u in self.endpoints]
        self._current = 0
        self._mutex = threading.Lock()

    @classmethod
    def from_conf(cls, conf, **overrides):
        """Build from the [etcd] options (``overrides`` replace some, e.g.
        a shorter timeout, keeping endpoints, TLS and auth)."""
        e = conf.etcd
        kwargs = dict(endpoints=e.endpoints, ca_file=e.ca_file,
                      cert_file=e.cert_file, key_file=e.key_file,
                      timeout=e.timeout, retry_window=e.retry_window,
                      username=e.username, password=e.password)
        kwargs.update(overrides)
        return cls(**kwargs)

    @staticmethod
    def _parse(endpoint):
        url = parse.urlsplit(endpoint if '://' in endpoint
                             else 'http://' + endpoint)
        if url.scheme not in ('http', 'https') or not url.hostname:
            raise errors.InvalidInput('etcd.endpoints',
                                      f'not an http(s) URL: {endpoint!r}')
        return url

    def client(self):
        """The etcd3gw client of the endpoint currently in use."""
        return self._clients[self._current]

    def endpoint(self):
        """The parsed URL of the endpoint currently in use."""
        return self.endpoints[self._current]

    def tooz_url(self):
        """A tooz etcd3gw URL for the current endpoint, same TLS/timeout."""
        url = self.endpoint()
        names = {'ca_file': 'ca_cert', 'cert_file': 'cert_cert',
                 'key_file': 'cert_key'}
        opts = {names[k]: v for k, v in self.tls.items() if v}
        opts['timeout'] = max(1, int(self.timeout))
        return (f'etcd3+{url.scheme}://{url.hostname}:{url.port or 2379}'
                f'?{parse.urlencode(opts)}')

    def tooz_coordinator(self, member_id, **options):
        """A tooz etcd3gw coordinator on the current endpoint with this
        client's TLS and auth (tooz's driver has no user/password option:
        its etcd3gw client gets our authenticating session)."""
        from tooz import coordination
        url = self.tooz_url()
        if options:
            url += '&' + parse.urlencode(options)
        coord = coordination.get_coordinator(url, member_id)
        coord.client.session = http_session(self.tls, auth=self.auth)
        return coord

    def stream_token(self):
        """The auth token for a watch stream (None without auth)."""
        if self.auth is None:
            return None
        client = self.client()
        return self.auth.token(client.session, client.get_url('/kv/range'),
                               self.timeout)

    def _failover(self, failed):
        with self._mutex:
            if self._current == failed and len(self._clients) > 1:
                self._current = (failed + 1) % len(self._clients)
                LOG.warning('etcd endpoint %s failed; using %s',
                            self.endpoints[failed].netloc,
                            self.endpoints[self._current].netloc)

    def call(self, fn, window=None):
        """Run ``fn(client)``, failing over and retrying on errors."""
        window = self.retry_window if window is None else window
        deadline = time.monotonic() + window
        delay = 0.05
        while True:
            index = self._current
            try:
                return fn(self._clients[index])
            except _RETRYABLE as exc:
                failure = exc
            except gw_exc.Etcd3Exception as exc:
                # A write attached to an expired lease means our session is
                # gone (SessionLost); refusals name etcd's reason.
                raise _translate(exc) from exc
            self._failover(index)
            if time.monotonic() + delay > deadline:
                raise errors.EtcdUnavailable(
                    f'etcd unreachable at '
                    f'{", ".join(u.netloc for u in self.endpoints)}: '
                    f'{failure}') from failure
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _post(self, path, payload, window=None):
        return self.call(lambda c: c.post(c.get_url(path), json=payload),
                         window)

    # -- key/value --

    def get(self, key):
        """The KV at ``key``, or None."""
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def range(self, key, prefix=False, first_created=False, limit=0,
              max_create_revision=0, last_created=False):
        """(list of KV, header revision) for a key or prefix."""
        req = op_range(key, prefix, first_created, limit)['request_range']
        if last_created:
            req.update(sort_order='DESCEND', sort_target='CREATE')
        if max_create_revision:
            req['max_create_revision'] = max_create_revision
        resp = self._post('/kv/range', req)
        return ([KV.from_gateway(kv) for kv in resp.get('kvs', [])],
                int(resp['header']['revision']))

    def put(self, key, value, lease=0):
        """Unconditional put; returns the new revision."""
        resp = self._post('/kv/put', op_put(key, value, lease)['request_put'])
        return int(resp['header']['revision'])

    def delete(self, key, prefix=False):
        """Delete a key or prefix; returns how many keys went."""
        req = op_delete(key, prefix)['request_delete_range']
        return int(self._post('/kv/deleterange', req).get('deleted', 0))

    def txn(self, compare, success, failure=()):
        """Run a transaction; range results come back as lists of KV."""
        body = json.dumps({'compare': list(compare),
                           'success': list(success),
                           'failure': list(failure)})
        resp = self.call(lambda c: c.post(c.get_url('/kv/txn'), data=body))
        ranges = [[KV.from_gateway(kv)
                   for kv in r['response_range'].get('kvs', [])]
                  for r in resp.get('responses', []) if 'response_range' in r]
        return TxnResult(bool(resp.get('succeeded')),
                         int(resp['header']['revision']), ranges)

    # -- leases --

    def lease_grant(self, ttl):
        """A new lease id with ``ttl`` seconds."""
        return int(self._post('/lease/grant', {'TTL': ttl, 'ID': 0})['ID'])

    def lease_keepalive(self, lease_id, window=None):
        """Refresh a lease once; its new TTL, or -1 if it is gone."""
        resp = self._post('/lease/keepalive', {'ID': lease_id}, window)
        return int(resp.get('result', {}).get('TTL', -1))

    def lease_ttl(self, lease_id, window=None):
        """Seconds left on a lease, -1 if it does not exist."""
        resp = self._post('/kv/lease/timetolive', {'ID': lease_id}, window)
        return int(resp.get('TTL', -1))

    def lease_revoke(self, lease_id):
        """Revoke a lease and delete every key attached to it."""
        try:
            self._post('/kv/lease/revoke', {'ID': lease_id})
        except errors.SessionLost:
            pass  # already gone: what revoking was for

    def watch(self, key, start_revision, prefix=False):
        """Watch ``key`` (or prefix) from ``start_revision`` on."""
        return self.call(lambda c: Watch(self, key, start_revision, prefix))

    def status(self):
        """The current endpoint's member status (version, leader...)."""
        return self._post('/maintenance/status', {})
