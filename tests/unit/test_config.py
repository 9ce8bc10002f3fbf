"""Configuration: the committed sample is what the generator writes, and
bad etcd settings are refused clearly."""
import os
import subprocess

import pytest

from coordinator import errors
from coordinator.engine import etcd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_committed_sample_is_current(tmp_path):
    out = tmp_path / 'sample.conf'
    subprocess.run(['oslo-config-generator', '--config-file',
                    'etc/lvmcoord/lvmcoord-config-generator.conf',
                    '--output-file', str(out)], cwd=ROOT, check=True)
    with open(os.path.join(ROOT, 'etc/lvmcoord/lvmcoord.conf.sample')) as f:
        assert out.read_text() == f.read(), 'run: tox -e genconfig'
    text = out.read_text()
    for section in ('[etcd]', '[session]', '[lease]', '[lock]', '[lvm]',
                    '[fence]', '[api]', '[metrics]'):
        assert section in text


@pytest.mark.parametrize('endpoint', ['ftp://x:1', 'http://', ''])
def test_bad_endpoint_is_named(endpoint):
    with pytest.raises(errors.InvalidInput) as exc:
        etcd.Etcd([endpoint])
    assert exc.value.field == 'etcd.endpoints'


def test_tooz_url_carries_tls_and_timeout():
    e = etcd.Etcd(['https://10.0.0.1:2379'], ca_file='/ca.pem',
                  cert_file='/c.pem', key_file='/k.pem', timeout=3)
    url = e.tooz_url()
    assert url.startswith('etcd3+https://10.0.0.1:2379?')
    for part in ('ca_cert=%2Fca.pem', 'cert_cert=%2Fc.pem',
                 'cert_key=%2Fk.pem', 'timeout=3'):
        assert part in url
