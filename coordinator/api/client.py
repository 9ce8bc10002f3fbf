"""Client of the local API, used by the CLI, the Cinder driver and the
connector."""
import json
import socket

from coordinator import errors


class Client:
    """Talks to lvmcoordd over its Unix socket."""

    def __init__(self, path='/run/lvmcoord/lvmcoord.sock', timeout=300.0):
        self.path = path
        self.timeout = timeout

    def call(self, op, **args):
        """Run ``op``; returns its result or raises APIError."""
        body = json.dumps({'op': op, 'args': args}).encode() + b'\n'
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self.path)
                s.sendall(body)
                reply = s.makefile('rb').readline()
        except OSError as exc:
            raise errors.HostUnavailable(
                f'lvmcoordd not reachable at {self.path}: {exc}') from exc
        if not reply:
            raise errors.HostUnavailable(f'lvmcoordd at {self.path} closed '
                                         f'the connection')
        reply = json.loads(reply)
        if not reply.get('ok'):
            raise errors.from_dict(reply.get('error', {}))
        return reply['result']
