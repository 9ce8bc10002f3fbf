"""The local API cannot be starved: a connection cap, an idle timeout,
accept failures backed off, clear replies to deep JSON, quiet client
disconnects (coordinator.api.server against real sockets)."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from coordinator.api.server import APIServer

DEADLINE = 30.0


def wait_for(predicate, timeout=DEADLINE, what='condition'):
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.01)


@pytest.fixture
def serve(tmp_path):
    """Factory: an APIServer on a socket in tmp_path, stopped afterwards."""
    servers = []

    def start(handler=lambda op, args: {'op': op}, **limits):
        path = str(tmp_path / 'run' / f'api{len(servers)}.sock')
        server = APIServer(path, handler, **limits)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server, path

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(DEADLINE)
    s.connect(path)
    return s


def read_reply(s):
    data = b''
    while not data.endswith(b'\n'):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data else None


def call(path, op='status'):
    with connect(path) as s:
        s.sendall(json.dumps({'op': op}).encode() + b'\n')
        return read_reply(s)


def test_connections_beyond_the_cap_get_busy(serve):
    server, path = serve(max_connections=2, idle_timeout=60)
    idle = [connect(path), connect(path)]
    wait_for(lambda: server.active == 2, what='2 connections served')
    with connect(path) as extra:
        reply = read_reply(extra)
        assert reply['ok'] is False
        assert reply['error']['code'] == 'busy'
        assert '2 API connections' in reply['error']['message']
        assert extra.recv(1) == b''             # and closed
    assert server.active == 2
    idle.pop().close()
    wait_for(lambda: server.active == 1, what='a slot freed')
    assert call(path) == {'ok': True, 'result': {'op': 'status'}}
    for s in idle:
        s.close()


def test_idle_connection_is_closed(serve):
    server, path = serve(idle_timeout=0.5)
    with connect(path) as s:
        start = time.monotonic()
        assert s.recv(1) == b''
        assert time.monotonic() - start < DEADLINE / 2
    wait_for(lambda: server.active == 0, what='slot freed')


def test_trickled_line_does_not_hold_a_connection(serve):
    server, path = serve(idle_timeout=1.0)
    with connect(path) as s:
        s.sendall(b'{"op": ')
        end = time.monotonic() + DEADLINE
        closed = False
        while not closed and time.monotonic() < end:
            try:
                s.sendall(b' ')                 # one byte at a time
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                closed = s.recv(1) == b''
            except TimeoutError:
                pass
        assert closed, 'a trickling client kept its connection'


def test_deeply_nested_json_gets_a_clear_error(serve):
    server, path = serve()
    body = b'[' * 30000 + b']' * 30000 + b'\n'      # fits in 64 KiB
    with connect(path) as s:
        s.sendall(body)
        reply = read_reply(s)
        assert reply['error']['field'] == 'request'
        assert 'nested too deeply' in reply['error']['message']
        # The connection (and the server) keep serving.
        s.sendall(b'{"op": "status"}\n')
        assert read_reply(s)['ok'] is True


def test_client_leaving_mid_line_is_quiet(serve, caplog, capfd):
    server, path = serve()
    with connect(path) as s:
        s.sendall(b'{"op": "sta')
        s.shutdown(socket.SHUT_WR)
        assert s.recv(65536) == b''             # no "larger than" reply
    wait_for(lambda: server.active == 0, what='slot freed')
    assert not [r for r in caplog.records if r.levelname != 'DEBUG'
                and r.name.startswith('coordinator')]
    assert 'Traceback' not in capfd.readouterr().err


def test_client_leaving_before_its_reply_is_quiet(serve, caplog, capfd):
    started, release = threading.Event(), threading.Event()

    def slow(op, args):
        started.set()
        release.wait(DEADLINE)
        return {'big': 'x' * 300000}            # more than a socket buffer

    server, path = serve(handler=slow)
    s = connect(path)
    s.sendall(b'{"op": "status"}\n')
    assert started.wait(DEADLINE)
    s.close()
    release.set()
    wait_for(lambda: server.active == 0, what='slot freed')
    assert not [r for r in caplog.records if r.levelname != 'DEBUG'
                and r.name.startswith('coordinator')]
    assert 'Traceback' not in capfd.readouterr().err


# A server whose process runs out of descriptors: accept() fails (EMFILE)
# while clients wait in the backlog.
EMFILE_SERVER = textwrap.dedent('''
    import resource, sys
    from coordinator.api.server import APIServer
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
    server = APIServer(sys.argv[1], lambda op, args: {'op': op},
                       max_connections=1000, idle_timeout=3600)
    print('ready', flush=True)
    server.serve_forever()
''')


def cpu_seconds(pid):
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def test_accept_failures_do_not_spin(tmp_path):
    path = str(tmp_path / 'api.sock')
    proc = subprocess.Popen([sys.executable, '-c', EMFILE_SERVER, path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    clients = []
    try:
        assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
        # More clients than the server has descriptors for, until the
        # backlog stays full: accept() is failing.
        for _ in range(200):
            s = _connect_unless_full(path)
            if s is None:
                break
            clients.append(s)
        before = cpu_seconds(proc.pid)
        window = time.monotonic()
        time.sleep(2.0)                         # a measurement window
        spent = cpu_seconds(proc.pid) - before
        elapsed = time.monotonic() - window
        # A spinning accept loop burns ~all of one core.
        assert spent < 0.25 * elapsed, f'{spent:.2f}s CPU in {elapsed:.2f}s'
        for s in clients:
            s.close()
        clients = []
        # Descriptors come back: the server serves again.
        wait_for(lambda: _answers(path), what='server answering again')
    finally:
        for s in clients:
            s.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert 'API accept failed ([Errno 24]' in proc.stderr.read()
    proc.stderr.close()


def _connect_unless_full(path, patience=1.0):
    # AF_UNIX refuses a non-blocking connect at once (EAGAIN) while the
    # backlog is full; full for ``patience`` seconds means nobody accepts.
    end = time.monotonic() + patience
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > end:
                return None
            time.sleep(0.01)


def _answers(path):
    try:
        return call(path)['ok'] is True
    except (OSError, TypeError):
        return False
