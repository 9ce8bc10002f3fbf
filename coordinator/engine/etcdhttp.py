"""A lean HTTP client for etcd's v3 JSON gateway.

``Client`` posts JSON to one endpoint the way etcd3gw's client does (same
API path discovery, same errors by HTTP status), over ``Session``: a
urllib3 pool (which requests itself runs on). On loopback, requests'
per-call work (hooks, cookie jars, adapters, header merging) costs as much
CPU as etcd spends serving the call, and importing etcd3gw (futurist,
requests, a character-set detector that imports every codec) costs a CLI
run more CPU than its work: the engine imports neither. tooz, which
needs etcd3gw, is given a ``Session`` wrapped to raise the requests
exceptions etcd3gw translates (``for_etcd3gw``).

With etcd user/password auth (``Auth``), every request carries the token
etcd's /v3/auth/authenticate returned; a request etcd refuses because the
token expired or was issued on another member's view is re-authenticated
and sent once more.
"""
import json
import os
import threading
from urllib import parse

import urllib3

from coordinator import errors

_HEADERS = {'Content-Type': 'application/json'}


class EtcdError(Exception):
    """etcd, or the way to it, failed a request (etcd3gw's Etcd3Exception:
    the body etcd answered is ``detail_text``, the HTTP reason the args)."""

    def __init__(self, detail_text=None, *args):
        super().__init__(*args)
        self.detail_text = detail_text


class ConnectionFailed(EtcdError):
    """No connection, or etcd answered 503."""


class ConnectionTimeout(EtcdError):
    """No answer in time (or etcd answered 408/504)."""


class InternalServerError(EtcdError):
    """etcd answered 500."""


class PreconditionFailed(EtcdError):
    """etcd answered 412."""


# As etcd3gw maps them.
_BY_STATUS = {500: InternalServerError, 503: ConnectionFailed,
              408: ConnectionTimeout, 504: ConnectionTimeout,
              412: PreconditionFailed}


class Response:
    """The part of requests.Response that etcd3gw reads."""

    __slots__ = ('status_code', 'reason', 'content')

    def __init__(self, status_code, reason, content):
        self.status_code = status_code
        self.reason = reason
        self.content = content

    @property
    def text(self):
        return self.content.decode('utf-8', 'replace')

    def json(self):
        return json.loads(self.content)


# etcd's replies when a token is no longer good: expired (simple tokens
# live --auth-token-ttl seconds after their last use), unknown to this
# member, or older than the last auth change.
_STALE_TOKEN = ('invalid auth token', 'auth store is old')


class Auth:
    """An etcd user/password and the token they were last exchanged for,
    shared by every session of one client (one password check per token:
    etcd hashes passwords with bcrypt, so it is not done per request)."""

    def __init__(self, username, password):
        self.username = username
        self.password = password or ''
        self._token = None
        self._mutex = threading.Lock()

    def token(self, session, url, timeout=None):
        """The current token, authenticating first if there is none."""
        with self._mutex:
            if self._token is None:
                self._token = self._authenticate(session, url, timeout)
            return self._token

    def renew(self, session, url, stale, timeout=None):
        """A new token unless another thread already replaced ``stale``."""
        with self._mutex:
            if self._token in (None, stale):
                self._token = self._authenticate(session, url, timeout)
            return self._token

    def _authenticate(self, session, url, timeout):
        u = parse.urlsplit(url)
        # Same API version prefix (/v3/, /v3beta/) as the request's URL.
        first = u.path.strip('/').split('/')[0]
        version = first if first.startswith('v3') else 'v3'
        resp = session.raw('POST', f'{u.scheme}://{u.netloc}/{version}/auth/'
                           f'authenticate',
                           _dumps({'name': self.username,
                                   'password': self.password}), timeout)
        body = _body(resp)
        if resp.status_code != 200 or not body.get('token'):
            why = body.get('error') or resp.text.strip()[:300] or resp.reason
            raise errors.EtcdDenied(
                f'etcd at {u.netloc} refused user {self.username!r}: {why}')
        return body['token']


def _body(resp):
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class Session:
    """requests.Session's post/get over a thread-safe urllib3 pool."""

    def __init__(self, tls, maxsize=16, auth=None):
        self.auth = auth
        kwargs = {}
        if tls.get('ca_file'):
            kwargs.update(cert_reqs='CERT_REQUIRED', ca_certs=tls['ca_file'])
        if tls.get('cert_file') and tls.get('key_file'):
            kwargs.update(cert_file=tls['cert_file'],
                          key_file=tls['key_file'])
        # No proxies, no retries here: Etcd.call() owns fail-over.
        self._pool = urllib3.PoolManager(maxsize=maxsize, retries=False,
                                         **kwargs)

    def post(self, url, json=None, data=None, timeout=None, **_):
        body = data if data is not None else _dumps(json)
        return self._request('POST', url, body, timeout)

    def get(self, url, timeout=None, **_):
        return self._request('GET', url, None, timeout)

    def _request(self, method, url, body, timeout):
        if self.auth is None:
            return self.raw(method, url, body, timeout)
        token = self.auth.token(self, url, timeout)
        resp = self.raw(method, url, body, timeout, token)
        if resp.status_code == 401 or (resp.status_code != 200 and any(
                s in resp.text for s in _STALE_TOKEN)):
            resp = self.raw(method, url, body, timeout,
                            self.auth.renew(self, url, token, timeout))
        return resp

    def raw(self, method, url, body, timeout, token=None):
        """One HTTP request as given (no authentication added)."""
        headers = dict(_HEADERS) if body else {}
        if token:
            headers['Authorization'] = token
        try:
            resp = self._pool.request(
                method, url, body=body, headers=headers or None,
                timeout=urllib3.Timeout(total=timeout) if timeout else None,
                retries=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise ConnectionTimeout(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionFailed(str(exc)) from exc
        return Response(resp.status, resp.reason, resp.data)

    def close(self):
        self._pool.clear()


class Client:
    """The part of etcd3gw's Etcd3Client the engine uses: JSON posted to
    the v3 gateway of one endpoint (a parsed URL), errors by status."""

    def __init__(self, url, session, timeout=None):
        self.session = session
        self.timeout = timeout
        host = url.hostname
        host = f'[{host}]' if ':' in host else host
        self.base_url = f'{url.scheme}://{host}:{url.port or 2379}'
        # etcd3gw's own override, honoured the same way.
        self._api_path = os.environ.get('ETCD3GW_API_PATH')

    @property
    def api_path(self):
        if self._api_path is None:
            self._api_path = self._discover()
        return self._api_path

    def _discover(self):
        """The gateway's path for this etcd version (/v3/ from 3.4), asked
        once per client as etcd3gw does; etcd before 3.3 is refused."""
        body = _checked(self.session.get(self.base_url + '/version',
                                         timeout=self.timeout)).json()
        try:
            version = tuple(int(p) for p in
                            body['etcdserver'].split('.', 2)[:2])
        except (KeyError, ValueError, AttributeError) as exc:
            raise EtcdError(None, f'unreadable etcd /version answer: '
                            f'{body!r:.200}') from exc
        if version < (3, 3):
            # Nested txns (a routed deactivate's reply rides on its
            # release) came with 3.3.
            raise EtcdError(None, f'etcd {body["etcdserver"]} is too old: '
                            f'lvmcoord needs etcd 3.3 or newer')
        return '/v3/' if version >= (3, 4) else '/v3beta/'

    def get_url(self, path):
        return self.base_url + self.api_path + path.lstrip('/')

    def post(self, url, json=None, data=None):
        """The JSON answer of one POST, or EtcdError."""
        return _checked(self.session.post(url, json=json, data=data,
                                          timeout=self.timeout)).json()


def _checked(resp):
    if resp.status_code in _BY_STATUS:
        raise _BY_STATUS[resp.status_code](resp.text, resp.reason)
    if resp.status_code != 200:
        raise EtcdError(resp.text, resp.reason)
    return resp


class for_etcd3gw:  # noqa: N801  (a wrapper, named for its use)
    """A Session as etcd3gw's client wants it (tooz builds one): transport
    errors as the requests exceptions etcd3gw translates. Importing
    requests here costs nothing: etcd3gw has done it."""

    def __init__(self, session):
        self._session = session

    def post(self, url, **kwargs):
        return self._call(self._session.post, url, kwargs)

    def get(self, url, **kwargs):
        return self._call(self._session.get, url, kwargs)

    @staticmethod
    def _call(fn, url, kwargs):
        import requests
        try:
            return fn(url, **kwargs)
        except ConnectionTimeout as exc:
            raise requests.exceptions.Timeout(exc.detail_text) from exc
        except ConnectionFailed as exc:
            raise requests.exceptions.ConnectionError(
                exc.detail_text) from exc

    def __getattr__(self, name):
        return getattr(self._session, name)


def _dumps(value):
    return json.dumps(value) if value is not None else None
