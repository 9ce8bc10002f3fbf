"""The daemon's socket API under bad input: it never crashes, runs nothing
for an invalid request and names the bad field; strangers are refused."""
import json
import os
import socket
import subprocess
import sys

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from coordinator.api import schema
from coordinator.sandbox.cluster import Cluster


@pytest.fixture(scope='module')
def daemon():
    with Cluster(hosts=('volume-1',), ttl=10) as c:
        yield c


def raw_call(path, payload):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(payload)
        return json.loads(s.makefile('rb').readline())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
names = st.sampled_from(['vg', 'lv', 'size', 'host', 'mode', 'tags', 'wait',
                         'name', 'new_name', 'instance']) | st.text(max_size=8)
requests = st.fixed_dictionaries(
    {'op': st.sampled_from(sorted(schema.OPS)) | st.text(max_size=12),
     'args': st.dictionaries(names, json_values, max_size=5)})


# `make test` runs 150; LVMCOORD_FUZZ_EXAMPLES=10000 for a long run.
EXAMPLES = int(os.environ.get('LVMCOORD_FUZZ_EXAMPLES', '150'))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(requests.map(lambda r: json.dumps(r).encode()),
                      st.binary(max_size=200),
                      json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzzed_requests_get_clear_errors(daemon, body):
    vg = daemon.vg.vg
    line = body.replace(b'\n', b' ') + b'\n'
    reply = raw_call(daemon['volume-1'].socket, line)
    assert isinstance(reply, dict) and 'ok' in reply
    if not reply['ok']:
        err = reply['error']
        assert err['code'] and err['message']
        if err['code'] == 'invalid':
            assert err['field'] and err['message'].startswith(err['field'])
    # Random names never hit the sandbox VG: nothing may have changed.
    assert daemon.vg.hosts[0].lvm.vg(vg)['lv_count'] == 0


def test_daemon_survives_and_metadata_untouched(daemon):
    vg = daemon.vg.vg
    before = daemon.vg.hosts[0].lvm.vg(vg)['seqno']
    path = daemon['volume-1'].socket
    huge = b'{"op": "status", "args": {"x": "' + b'a' * 70000 + b'"}}\n'
    reply = raw_call(path, huge)
    assert reply['error']['field'] == 'request'
    assert 'larger than' in reply['error']['message']
    for bad in ({'op': 'create', 'args': {'vg': vg, 'lv': 'a/b',
                                          'size': 1}},
                {'op': 'create', 'args': {'vg': vg, 'lv': 'ok',
                                          'size': '1Q'}},
                {'op': 'delete', 'args': {'vg': vg, 'lv': '..'}},
                {'op': 'activate', 'args': {'vg': vg, 'lv': 'x',
                                            'mode': 'both'}}):
        reply = raw_call(path, json.dumps(bad).encode() + b'\n')
        assert reply['error']['code'] == 'invalid', reply
    assert daemon['volume-1'].proc.poll() is None
    assert daemon['volume-1'].client.call('status')['host'] == 'volume-1'
    assert daemon.vg.hosts[0].lvm.vg(vg)['seqno'] == before


def test_peer_outside_allowed_group_is_refused(daemon):
    path = daemon['volume-1'].socket
    # Let an unprivileged process reach the socket at all, so the daemon's
    # own peer-credential check is what refuses it.
    for d in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        os.chmod(d, 0o755)
    os.chmod(path, 0o666)
    code = ('import json, os, socket, sys\n'
            'os.setgroups([]); os.setgid(65534); os.setuid(65534)\n'
            's = socket.socket(socket.AF_UNIX)\n'
            f's.connect({path!r})\n'
            # The daemon may refuse (reply, close) before our line is
            # sent: its reply is still there to read.
            'try:\n'
            '    s.sendall(b\'{"op": "status"}\\n\')\n'
            'except BrokenPipeError:\n'
            '    pass\n'
            'print(s.makefile("rb").readline().decode())\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=30, check=True)
    reply = json.loads(out.stdout)
    assert reply['ok'] is False
    assert reply['error']['code'] == 'forbidden'
    assert 'uid 65534' in reply['error']['message']
    os.chmod(path, 0o660)
