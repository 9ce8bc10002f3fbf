"""Control agent inside a guest (stdlib only): JSON lines on the
virtio-serial port named 'ctl'.

Request: {"id": N, "op": "run"|"spawn"|"signal"|"wait"|"time", ...};
reply: {"id": N, ...} or {"id": N, "error": "..."}. Requests run in their
own threads, so a long command never holds up the others. On start the
agent says {"hello": <boot id>}.
"""
import glob
import json
import os
import signal
import subprocess
import threading
import time

PROCS = {}
LOCK = threading.Lock()


def port_path(name='ctl'):
    """The /dev node of the virtio-serial port called ``name``."""
    for path in glob.glob('/sys/class/virtio-ports/*/name'):
        with open(path) as f:
            if f.read().strip() == name:
                return '/dev/' + path.split('/')[-2]
    return None


def _argv(req):
    return req['argv'] if 'argv' in req else ['/bin/sh', '-c', req['sh']]


def _env(req):
    return dict(os.environ, **req.get('env', {}))


def op_run(req):
    """Run a command to completion (killed after ``timeout``)."""
    start = time.time()
    try:
        proc = subprocess.run(_argv(req), input=req.get('input'),
                              capture_output=True, text=True,
                              timeout=req.get('timeout', 120),
                              env=_env(req), cwd=req.get('cwd'),
                              errors='replace')
        return {'rc': proc.returncode, 'out': proc.stdout,
                'err': proc.stderr, 'start': start, 'end': time.time()}
    except subprocess.TimeoutExpired as exc:
        return {'rc': None, 'out': str(exc.stdout or ''),
                'err': 'timed out', 'start': start, 'end': time.time()}


def op_spawn(req):
    """Start a background process in its own session."""
    log = open(req.get('log', '/dev/null'), 'ab')
    proc = subprocess.Popen(_argv(req), stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, env=_env(req),
                            cwd=req.get('cwd'), start_new_session=True)
    log.close()
    with LOCK:
        PROCS[req['name']] = proc
    return {'pid': proc.pid, 'time': time.time()}


def op_signal(req):
    """Signal a spawned process (its whole group with ``group``)."""
    proc = PROCS.get(req['name'])
    if proc is None:
        return {'found': False}
    sig = req.get('sig', signal.SIGTERM)
    try:
        if req.get('group', True):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
    return {'found': True, 'time': time.time()}


def op_wait(req):
    """Wait for a spawned process; its return code or None."""
    proc = PROCS.get(req['name'])
    if proc is None:
        return {'rc': None, 'found': False}
    try:
        return {'rc': proc.wait(req.get('timeout', 30)), 'found': True}
    except subprocess.TimeoutExpired:
        return {'rc': None, 'found': True}


def op_time(req):
    """This guest's clocks."""
    return {'time': time.time(), 'monotonic': time.monotonic()}


def op_settime(req):
    """Set the wall clock (the host's time plus the link delay)."""
    time.clock_settime(time.CLOCK_REALTIME, req['time'])
    return {'time': time.time()}


def op_api(req):
    """One call to the local lvmcoordd through coordinator.api.client."""
    import sys
    if req['root'] not in sys.path:
        sys.path.insert(0, req['root'])
    from coordinator import errors
    from coordinator.api.client import Client
    start = time.time()
    try:
        result = Client(req['socket'], req.get('timeout', 120)).call(
            req['call'], **req.get('args', {}))
        return {'result': result, 'start': start, 'end': time.time()}
    except errors.CoordError as exc:
        return {'api_error': dict(exc.to_dict(), code=getattr(
            exc, 'code', 'error')), 'start': start, 'end': time.time()}


def main():
    path = None
    while path is None:
        path = port_path()
        if path is None:
            time.sleep(0.2)  # the port's module may still be loading
    fd = os.open(path, os.O_RDWR)
    out_lock = threading.Lock()

    def send(obj):
        data = (json.dumps(obj) + '\n').encode()
        with out_lock:
            while data:
                data = data[os.write(fd, data):]

    with open('/proc/sys/kernel/random/boot_id') as f:
        boot = f.read().strip()
    send({'hello': boot, 'time': time.time()})

    def handle(req):
        try:
            reply = globals()['op_' + req['op']](req)
        except Exception as exc:  # reported to the host, never fatal
            reply = {'error': f'{type(exc).__name__}: {exc}'}
        send(dict(reply, id=req['id']))

    buf = b''
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            # No host connected: the port reads EOF until one is.
            time.sleep(0.1)
            continue
        buf += chunk
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            if line.strip():
                threading.Thread(target=handle, args=(json.loads(line),),
                                 daemon=True).start()


if __name__ == '__main__':
    main()
