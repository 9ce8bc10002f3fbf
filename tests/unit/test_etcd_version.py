"""The gateway path per etcd version; etcd before 3.3 (no nested txns)
is refused with a clear error."""
import json
import urllib.parse

import pytest

from coordinator.engine import etcdhttp


class _Answer:
    status_code, reason = 200, 'OK'

    def __init__(self, version):
        self.text = json.dumps({'etcdserver': version, 'etcdcluster': '3.0'})

    def json(self):
        return json.loads(self.text)


class _Session:
    def __init__(self, version):
        self.version = version

    def get(self, url, timeout=None):
        assert url.endswith('/version')
        return _Answer(self.version)


def _client(version):
    return etcdhttp.Client(urllib.parse.urlsplit('http://127.0.0.1:2379'),
                           _Session(version))


@pytest.mark.parametrize('version, path', [('3.4.23', '/v3/'),
                                           ('3.5.9', '/v3/'),
                                           ('3.3.27', '/v3beta/')])
def test_the_gateway_path_follows_the_version(version, path, monkeypatch):
    monkeypatch.delenv('ETCD3GW_API_PATH', raising=False)
    assert _client(version).api_path == path


def test_etcd_before_3_3_is_refused_by_name(monkeypatch):
    monkeypatch.delenv('ETCD3GW_API_PATH', raising=False)
    with pytest.raises(etcdhttp.EtcdError,
                       match=r'etcd 3\.2\.32 is too old: lvmcoord needs etcd '
                             r'3\.3 or newer'):
        _client('3.2.32')._discover()
