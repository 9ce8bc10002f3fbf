"""A lean HTTP session for etcd3gw's request/response calls.

etcd3gw only needs ``post``/``get`` and a response with ``status_code``,
``reason``, ``text`` and ``json()``. On loopback, requests' per-call work
(hooks, cookie jars, adapters, header merging) costs as much CPU as etcd
spends serving the call; a urllib3 pool (which requests itself runs on)
does the same HTTP for a fraction of it. Errors are raised as the requests
exceptions etcd3gw translates. Watch streams still use requests.
"""
import json

import requests
import urllib3

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


class Session:
    """requests.Session's post/get over a thread-safe urllib3 pool."""

    def __init__(self, tls, maxsize=16):
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
        try:
            resp = self._pool.request(
                method, url, body=body, headers=_HEADERS if body else None,
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
