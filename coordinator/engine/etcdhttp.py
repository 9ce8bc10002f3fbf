"""A lean HTTP session for etcd3gw's request/response calls.

etcd3gw only needs ``post``/``get`` and a response with ``status_code``,
``reason``, ``text`` and ``json()``. On loopback, requests' per-call work
(hooks, cookie jars, adapters, header merging) costs as much CPU as etcd
spends serving the call; a urllib3 pool (which requests itself runs on)
does the same HTTP for a fraction of it. Errors are raised as the requests
exceptions etcd3gw translates. Watch streams still use requests.

With etcd user/password auth (``Auth``), every request carries the token
etcd's /v3/auth/authenticate returned; a request etcd refuses because the
token expired or was issued on another member's view is re-authenticated
and sent once more.
"""
import json
import threading
from urllib import parse

import requests
import urllib3

from coordinator import errors

_HEADERS = {'Content-Type': 'application/json'}


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
            raise requests.exceptions.Timeout(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise requests.exceptions.ConnectionError(str(exc)) from exc
        return Response(resp.status, resp.reason, resp.data)

    def close(self):
        self._pool.clear()


def _dumps(value):
    return json.dumps(value) if value is not None else None
