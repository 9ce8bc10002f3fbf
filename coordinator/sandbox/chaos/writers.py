"""Writers that act like VMs: stamp 4 KiB blocks of an activated LV with
O_DIRECT|O_SYNC, keep going through write errors (a fenced device fails
them: expected), stop only when told.

A stamp is ``MAGIC`` + JSON {h: host, u: LV uuid, t: grant token, s: seq,
w: wall time the write was issued}. Each writer logs every write it made
(``seq issued done result``), so a write acknowledged after another host's
grant is caught even once a later write has overwritten its block.

Run as ``python -m coordinator.sandbox.chaos.writers PATH HOST UUID TOKEN
LOG``; SIGTERM stops it.
"""
import errno
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import time

BLOCK = 4096
MAGIC = b'LVMCHAOS'
# Writers stamp inside the first SPAN bytes of the LV, in a slot picked by
# the token, so a later holder's writer rarely overwrites a stale stamp.
SPAN = 1 << 20
SLOTS = 16
SLOT_BLOCKS = SPAN // BLOCK // SLOTS
INTERVAL = 0.02


def stamp(host, uuid, token, seq, when):
    """The 4 KiB block a writer writes."""
    body = MAGIC + json.dumps({'h': host, 'u': uuid, 't': token, 's': seq,
                               'w': when}).encode()
    return body.ljust(BLOCK, b'\0')


def parse(block):
    """The stamp dict in ``block``, or None."""
    if not block.startswith(MAGIC):
        return None
    try:
        return json.loads(block[len(MAGIC):].rstrip(b'\0'))
    except ValueError:
        return None


def _open(path):
    try:
        return os.open(path, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
    except OSError:
        return None


def main(argv):
    path, host, uuid, token, log = argv
    token = int(token)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    first = (token * 7919 % SLOTS) * SLOT_BLOCKS
    rng = random.Random(token)
    seq = 0
    fd = None
    with open(log, 'a', buffering=1) as out:
        while not stop:
            if fd is None:
                # A VM keeps its descriptor; only a device that was never
                # opened (or vanished before) is (re)opened.
                fd = _open(path)
                if fd is None:
                    out.write(f'{seq} {time.time():.6f} 0 ENOENT\n')
                    time.sleep(0.2)
                    continue
            seq += 1
            block = first + rng.randrange(SLOT_BLOCKS)
            issued = time.time()
            buf[:] = stamp(host, uuid, token, seq, issued)
            try:
                os.pwrite(fd, buf, block * BLOCK)
                result = 'ok'
            except OSError as exc:
                result = errno.errorcode.get(exc.errno, str(exc.errno))
            out.write(f'{seq} {issued:.6f} {time.time():.6f} {result}\n')
            time.sleep(INTERVAL)
    if fd is not None:
        os.close(fd)


class Writer:
    """A writer process for one activation (host, LV uuid, token)."""

    def __init__(self, workdir, host, vg, lv, uuid, token, path, instance,
                 started=None):
        self.host, self.vg, self.lv, self.uuid = host, vg, lv, uuid
        self.token, self.path, self.instance = token, path, instance
        self.log = os.path.join(workdir, f'writer-{host}-{token}.log')
        self.started = started or time.time()
        self.stopped = None
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'coordinator.sandbox.chaos.writers', path,
             host, uuid, str(token), self.log], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(self.log + '.err', 'ab'))

    @property
    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        """Stop (SIGTERM, then SIGKILL) and reap."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stopped is None:
            self.stopped = time.time()

    def kill(self):
        """SIGKILL and reap: the VM dies with its host."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.stopped is None:
            self.stopped = time.time()

    def writes(self):
        """[(seq, issued, done, result)] logged so far."""
        out = []
        try:
            with open(self.log) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and line.endswith('\n'):
                        out.append((int(parts[0]), float(parts[1]),
                                    float(parts[2]), parts[3]))
        except OSError:
            pass
        return out

    def describe(self):
        return {'host': self.host, 'lv': self.lv, 'uuid': self.uuid,
                'token': self.token, 'instance': self.instance,
                'path': self.path}


if __name__ == '__main__':
    main(sys.argv[1:])
