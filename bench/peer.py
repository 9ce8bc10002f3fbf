"""A bench helper process spoken to by JSON lines; always reaped."""
import json
import os
import select
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeerError(RuntimeError):
    """The helper process died, hung, or said something unexpected."""


class Peer:
    """``python -m <module> <args>`` with a line protocol on stdin/out."""

    def __init__(self, module, args, errlog):
        self.errlog = errlog
        with open(errlog, 'ab') as err:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', module, *args], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self._buf = b''

    def send(self, line):
        """Send one command line."""
        try:
            self.proc.stdin.write(line.encode() + b'\n')
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise PeerError(f'helper exited: {self.stderr()}') from exc

    def recv(self, ev, timeout=30.0):
        """The next message, which must be event ``ev``."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b'\n' not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f'no {ev!r} from helper in {timeout}s')
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise PeerError(f'helper exited before {ev!r}: '
                                    f'{self.stderr()}')
                self._buf += chunk
        line, self._buf = self._buf.split(b'\n', 1)
        msg = json.loads(line)
        if msg.get('ev') != ev:
            raise PeerError(f'expected {ev!r} from helper, got {msg}')
        return msg

    def stderr(self):
        """The tail of the helper's stderr."""
        try:
            with open(self.errlog, 'rb') as f:
                return f.read()[-2000:].decode(errors='replace')
        except OSError:
            return ''

    def close(self):
        """Ask the helper to quit; kill its process group if it lingers."""
        if self.proc.poll() is None:
            try:
                self.send('quit')
                self.proc.stdin.close()
                self.proc.wait(5)
            except (PeerError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
