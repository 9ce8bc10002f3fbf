"""etcd access for the engine: endpoint fail-over, TLS, typed results.

A gateway client (coordinator.engine.etcdhttp.Client) talks to one
endpoint; this wraps one client per endpoint and moves to the next on
connection errors, retrying for ``retry_window`` seconds so a
leader election or a dead member is ridden out. Every txn the engine sends
is guarded by compares, so a retried txn whose first attempt did apply fails
its compare instead of applying twice; callers read back to tell.

Identity: TLS client certificates (``cert_file``/``key_file``) and/or etcd
user/password (``username``/``password``, a token per client, renewed when
etcd rejects it). The same settings reach tooz through
``Etcd.tooz_coordinator``: one place for both.
"""
import binascii
import collections
import dataclasses
import json
import logging
import select
import socket
import ssl
import threading
import time
from urllib import parse

from coordinator import errors
from coordinator.engine import etcdhttp

LOG = logging.getLogger(__name__)
# Keys per request of a long range read (range_raw): 5,000 leases' keys
# are ~0.9 MB of JSON.
RANGE_PAGE = 5000

_RETRYABLE = (etcdhttp.ConnectionFailed, etcdhttp.ConnectionTimeout,
              etcdhttp.InternalServerError)


def b64(data):
    """Encode a str or bytes key/value the way the gateway wants it."""
    if isinstance(data, str):
        data = data.encode()
    return binascii.b2a_base64(data, newline=False).decode('ascii')


def unb64(text):
    """The bytes of a base64 field of the gateway's JSON."""
    return binascii.a2b_base64(text)


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
            return binascii.a2b_base64(raw).decode() if raw else ''
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
    """Outcome of a txn: which branch ran, at what revision, range results
    and the outcomes of nested txns (``op_txn``)."""

    succeeded: bool
    revision: int
    ranges: list
    txns: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_gateway(cls, resp, revision):
        """From the gateway's TxnResponse (nested ones have no revision)."""
        ranges, txns = [], []
        for r in resp.get('responses', []):
            if 'response_range' in r:
                ranges.append([KV.from_gateway(kv) for kv
                               in r['response_range'].get('kvs', [])])
            elif 'response_txn' in r:
                txns.append(cls.from_gateway(r['response_txn'], revision))
        return cls(bool(resp.get('succeeded')), revision, ranges, txns)


# -- txn building blocks (etcd's Compare and RequestOp, gateway JSON) --

def cmp_create(key, revision):
    """Compare: ``key`` was created at ``revision`` (0: key absent)."""
    return {'key': b64(key), 'target': 'CREATE', 'result': 'EQUAL',
            'create_revision': revision}


def cmp_mod(key, revision):
    """Compare: ``key`` was last modified at ``revision`` (0: absent)."""
    return {'key': b64(key), 'target': 'MOD', 'result': 'EQUAL',
            'mod_revision': revision}


def cmp_mod_below(key, revision):
    """Compare: ``key`` was last modified before ``revision`` (or is
    absent)."""
    return {'key': b64(key), 'target': 'MOD', 'result': 'LESS',
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


def op_txn(compare, success, failure=()):
    """Request: a nested txn (its outcome is in ``TxnResult.txns``)."""
    return {'request_txn': {'compare': list(compare),
                            'success': list(success),
                            'failure': list(failure)}}


def _written(ops):
    # The (base64) key of every put and delete in ``ops``, nested txns'
    # branches included.
    for op in ops:
        req = op.get('request_put') or op.get('request_delete_range')
        if req:
            yield req['key']
        nested = op.get('request_txn')
        if nested:
            yield from _written(nested['success'] + nested['failure'])


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
    """A watch on a key or prefix; events are read with a timeout.

    The stream is opened in the constructor and its ``created`` answer read
    before it returns, so the watch is registered in etcd when it exists:
    ``created_revision`` is etcd's revision at that moment. Events are read
    in the caller's thread (no thread, no HTTP session per watch): one TCP
    connection, closed by cancel()."""

    def __init__(self, etcd, key, start_revision, prefix=False):
        self._raw = b''
        self._body = b''
        self._chunk = 0       # bytes left in the current chunk
        self._crlf = False    # the CRLF after a chunk is still to come
        self._events = collections.deque()
        self.dead = False
        create = {'key': b64(key)}
        if start_revision:
            create['start_revision'] = int(start_revision)
        if prefix:
            create['range_end'] = b64(prefix_end(key))
        url = etcd.endpoint()
        path = parse.urlsplit(etcd.client().get_url('/watch')).path
        self._sock = _stream_socket(url, etcd.tls, etcd.timeout)
        try:
            body = json.dumps({'create_request': create}).encode()
            head = [f'POST {path} HTTP/1.1', f'Host: {url.netloc}',
                    'Content-Type: application/json',
                    f'Content-Length: {len(body)}']
            token = etcd.stream_token()
            if token:
                head.append(f'Authorization: {token}')
            self._sock.sendall('\r\n'.join(head).encode() + b'\r\n\r\n' +
                               body)
            deadline = time.monotonic() + etcd.timeout
            self._read_headers(deadline)
            first = self._message(deadline)
            result = (first or {}).get('result') or {}
            if not result.get('created') or result.get('canceled'):
                raise etcdhttp.EtcdError(
                    None, f'watch on {key} not created: {first}')
            self.created_revision = int(result['header']['revision'])
        except BaseException:
            self._sock.close()
            raise

    # -- HTTP/1.1 chunked stream, read with select --

    def _fill(self, deadline):
        """Read what the socket has; False on timeout or end of stream."""
        if self.dead:
            return False
        pending = getattr(self._sock, 'pending', None)
        if not (pending and pending()):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._sock], [], [], max(0, left))
            if not ready:
                return False
        try:
            data = self._sock.recv(65536)
        except (OSError, ValueError):
            data = b''
        if not data:
            self.dead = True
            return False
        self._raw += data
        return True

    def _read_headers(self, deadline):
        while b'\r\n\r\n' not in self._raw:
            if not self._fill(deadline):
                raise etcdhttp.ConnectionFailed(
                    'watch stream: no response from etcd')
        head, self._raw = self._raw.split(b'\r\n\r\n', 1)
        lines = head.decode('latin-1').split('\r\n')
        status = lines[0].split(' ', 2)
        if len(status) < 2 or status[1] != '200':
            raise etcdhttp.EtcdError(None, f'watch refused: {lines[0]}')
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(':') for line in lines[1:])}
        self._chunked = 'chunked' in headers.get('transfer-encoding', '')
        self._dechunk()

    def _dechunk(self):
        if not self._chunked:
            self._body, self._raw = self._body + self._raw, b''
            return
        while True:
            if self._crlf:
                if len(self._raw) < 2:
                    return
                self._raw, self._crlf = self._raw[2:], False
            if not self._chunk:
                line, sep, rest = self._raw.partition(b'\r\n')
                if not sep:
                    return
                size = int(line.split(b';')[0] or b'0', 16)
                if not size:
                    self.dead = True
                    return
                self._raw, self._chunk = rest, size
            take = self._raw[:self._chunk]
            self._body += take
            self._raw = self._raw[len(take):]
            self._chunk -= len(take)
            if self._chunk:
                return
            self._crlf = True

    def _message(self, deadline):
        """The next JSON message of the stream, or None by ``deadline``."""
        while True:
            line, sep, rest = self._body.partition(b'\n')
            if sep:
                self._body = rest
                if line.strip():
                    return json.loads(line)
                continue
            if not self._fill(deadline):
                return None
            self._dechunk()

    def get(self, timeout):
        """Next event as (type, KV), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._events:
            try:
                msg = self._message(deadline)
            except ValueError:
                msg, self.dead = None, True
            if msg is None:
                if self.dead:
                    # A lost stream: callers re-read on their ticks.
                    time.sleep(max(0, deadline - time.monotonic()))
                    return None
                if time.monotonic() >= deadline:
                    return None
                continue
            result = msg.get('result') or {}
            if 'error' in msg or result.get('canceled'):
                self.dead = True
            for ev in result.get('events') or ():
                self._events.append((ev.get('type', 'PUT'),
                                     KV.from_gateway(ev['kv'])))
        return self._events.popleft()

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
        """Close the stream (etcd drops the watcher with it)."""
        self.dead = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


def _stream_socket(url, tls, timeout):
    """A connected (TLS-wrapped when https) socket for a watch stream."""
    try:
        sock = socket.create_connection((url.hostname, url.port or 2379),
                                        timeout=timeout)
    except OSError as exc:
        raise etcdhttp.ConnectionFailed(
            f'watch stream to {url.netloc}: {exc}') from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A stream cut without a reset (a partition) is found dead in ~15 s.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (('TCP_KEEPIDLE', 5), ('TCP_KEEPINTVL', 2),
                       ('TCP_KEEPCNT', 4)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    if url.scheme != 'https':
        return sock
    ctx = ssl.create_default_context(cafile=tls.get('ca_file'))
    if tls.get('cert_file') and tls.get('key_file'):
        ctx.load_cert_chain(tls['cert_file'], tls['key_file'])
    try:
        return ctx.wrap_socket(sock, server_hostname=url.hostname)
    except OSError as exc:
        sock.close()
        raise etcdhttp.ConnectionFailed(
            f'watch stream to {url.netloc}: {exc}') from exc


def http_session(tls, stream=False, auth=None):
    """An HTTP session for etcd: TLS and auth as configured, no proxies;
    the lean one (coordinator.engine.etcdhttp) unless ``stream`` asks for
    a requests.Session (headers and all: `lvmcoord doctor`)."""
    if not stream:
        return etcdhttp.Session(tls, auth=auth)
    import requests
    session = requests.Session()
    # etcd must never be reached through an HTTP proxy, and reading the
    # proxy environment costs more than the request itself on loopback.
    session.trust_env = False
    if tls.get('ca_file'):
        session.verify = tls['ca_file']
    if tls.get('cert_file') and tls.get('key_file'):
        session.cert = (tls['cert_file'], tls['key_file'])
    return session


def gateway_client(url, tls, timeout, auth=None):
    """The engine's gateway client for one parsed endpoint URL."""
    return etcdhttp.Client(url, http_session(tls, auth=auth), timeout)


def etcdgw_client(url, tls, timeout, auth=None):
    """An etcd3gw client for one parsed endpoint URL, on the engine's
    session (the bench compares it; the engine uses gateway_client)."""
    import etcd3gw
    return etcd3gw.client(host=url.hostname, port=url.port or 2379,
                          protocol=url.scheme, timeout=timeout,
                          session=etcdhttp.for_etcd3gw(
                              http_session(tls, auth=auth)))


# etcd's own words for "who you are or what you may touch was refused".
_DENIED = ('permission denied', 'user name is empty', 'authentication failed',
           'invalid auth token', 'auth store is old', 'user name not found',
           'role name not found',
           # etcd's HTTP gateway never maps a certificate CN to a user:
           # with auth on, [etcd] username/password are needed as well.
           'CommonName of client')


def _translate(exc):
    """A clear error for an etcd refusal; the error's own str() is only the
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
        self._clients = [gateway_client(u, self.tls, timeout, auth=self.auth)
                         for u in self.endpoints]
        self._current = 0
        self._mutex = threading.Lock()
        # hook(answer) for every answer etcd gives (its header tells the
        # revision: coordinator.engine.history); never raises into a call.
        self.on_answer = []
        # This host's history (coordinator.engine.history.History): every
        # write of this client carries its witness stamp, in the same txn.
        self.witness = None

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
        """The gateway client of the endpoint currently in use."""
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
        coord.client.session = etcdhttp.for_etcd3gw(
            http_session(self.tls, auth=self.auth))
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

    def call(self, fn, window=None, hooks=True):
        """Run ``fn(client)``, failing over and retrying on errors;
        ``hooks``: run on_answer on the answer (else the caller does)."""
        window = self.retry_window if window is None else window
        deadline = time.monotonic() + window
        delay = 0.05
        while True:
            index = self._current
            try:
                answer = fn(self._clients[index])
            except _RETRYABLE as exc:
                failure = exc
            except etcdhttp.EtcdError as exc:
                # A write attached to an expired lease means our session is
                # gone (SessionLost); refusals name etcd's reason.
                raise _translate(exc) from exc
            else:
                if hooks:
                    self._answered(answer)
                return answer
            self._failover(index)
            if time.monotonic() + delay > deadline:
                raise errors.EtcdUnavailable(
                    f'etcd unreachable at '
                    f'{", ".join(u.netloc for u in self.endpoints)}: '
                    f'{failure}') from failure
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _answered(self, answer):
        for hook in self.on_answer:
            try:
                hook(answer)
            except Exception:
                LOG.exception('etcd: answer hook failed')

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

    def range_raw(self, key, prefix=False, page=None):
        """The gateway's own KV dicts for a key or prefix (base64 key and
        value, revisions and lease as strings): for readers of many keys
        that decode only what they use. Read in pages of ``page`` keys
        (RANGE_PAGE), all at the first page's revision: one 100,000-key
        answer (50,000 leases, ~9 MB of JSON) took over the 5 s request
        timeout on a busy 3-member etcd, from every member in turn."""
        page = page or RANGE_PAGE
        for _ in range(3):
            req = op_range(key, prefix, limit=page)['request_range']
            resp = self._post('/kv/range', req)
            out = resp.get('kvs', [])
            rev = int(resp['header']['revision'])
            try:
                while resp.get('more') and out:
                    # Keys come in byte order: go on after the last one.
                    req = dict(req, key=b64(unb64(out[-1]['key']) + b'\0'),
                               revision=rev)
                    resp = self._post('/kv/range', req)
                    out += resp.get('kvs', [])
            except errors.CoordError as exc:
                if 'compacted' not in str(exc):
                    raise
                continue  # the revision was compacted meanwhile: again
            return out
        raise errors.EtcdUnavailable(f'range of {key} kept meeting '
                                     f'compactions')

    def range_bytes(self, key, prefix=False):
        """[(key, value bytes)] for a key or prefix (binary values)."""
        req = op_range(key, prefix)['request_range']
        resp = self._post('/kv/range', req)
        return [(unb64(kv['key']).decode(),
                 unb64(kv['value']) if kv.get('value') else b'')
                for kv in resp.get('kvs', [])]

    def put(self, key, value, lease=0):
        """Unconditional put; returns the new revision."""
        if self.witness is not None:
            return self.txn([], [op_put(key, value, lease)]).revision
        resp = self._post('/kv/put', op_put(key, value, lease)['request_put'])
        return int(resp['header']['revision'])

    def delete(self, key, prefix=False):
        """Delete a key or prefix; returns how many keys went."""
        if self.witness is not None:
            resp = self._txn([], [op_delete(key, prefix)], ())
            return int(resp['responses'][0]['response_delete_range']
                       .get('deleted', 0))
        req = op_delete(key, prefix)['request_delete_range']
        return int(self._post('/kv/deleterange', req).get('deleted', 0))

    def txn(self, compare, success, failure=()):
        """Run a transaction; range results come back as lists of KV."""
        resp = self._txn(compare, success, failure)
        return TxnResult.from_gateway(resp, int(resp['header']['revision']))

    def _txn(self, compare, success, failure):
        success, witness = list(success), self.witness
        # etcd refuses a txn that writes one key twice: the history's own
        # writes of the witness carry no stamp.
        written = set(_written(success)) if witness is not None else ()
        stamped = bool(written) and b64(witness.witness_key) not in written
        if stamped:
            success.append(witness.stamp())
        body = json.dumps({'compare': list(compare), 'success': success,
                           'failure': list(failure)})
        resp = self.call(lambda c: c.post(c.get_url('/kv/txn'), data=body),
                         hooks=not stamped)
        if stamped:
            # Before the answer hooks: one update of the mark, not two.
            if resp.get('succeeded'):
                stamp = resp['responses'][-1].get('response_txn', {})
                try:
                    witness.wrote(int(resp['header']['revision']),
                                  below=bool(stamp.get('succeeded')))
                except Exception:
                    LOG.exception('etcd: the witness stamp not recorded')
            self._answered(resp)
        return resp

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
