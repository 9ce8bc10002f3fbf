"""The local API server: one JSON request and one JSON reply per line.

Peers are identified by SO_PEERCRED: only root and members of the
configured group are served. Bodies are capped; a bad request gets an error
naming the field and the server keeps serving.
"""
import grp
import json
import logging
import os
import socket
import socketserver
import struct

from coordinator import errors
from coordinator.api import schema

LOG = logging.getLogger(__name__)


def peer_credentials(sock):
    """(pid, uid, gid) of the process at the other end of ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                          struct.calcsize('3i'))
    return struct.unpack('3i', raw)


def allowed(uid, gid, group):
    """Root, and members of ``group`` (primary or supplementary)."""
    if uid == 0:
        return True
    if group is None:
        return False
    if gid == group.gr_gid:
        return True
    try:
        import pwd
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return user in group.gr_mem


class _Handler(socketserver.StreamRequestHandler):

    def handle(self):
        pid, uid, gid = peer_credentials(self.connection)
        if not allowed(uid, gid, self.server.group):
            self._reply({'ok': False, 'error': {
                'code': 'forbidden',
                'message': f'uid {uid} is not root nor in group '
                           f'{self.server.group_name}'}})
            LOG.warning('refused API peer pid %s uid %s', pid, uid)
            return
        while True:
            line = self.rfile.readline(schema.MAX_BODY + 1)
            if not line:
                return
            if len(line) > schema.MAX_BODY or not line.endswith(b'\n'):
                self._reply(_error(errors.InvalidInput(
                    'request', f'larger than {schema.MAX_BODY} bytes')))
                return
            self._reply(self.server.dispatch(line, uid))

    def _reply(self, body):
        self.wfile.write(json.dumps(body).encode() + b'\n')


def _error(exc):
    return {'ok': False, 'error': exc.to_dict()}


class APIServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``handler(op, args)`` on a Unix socket."""

    daemon_threads = True

    def __init__(self, path, handler, group_name=None, mode=0o660):
        self.handler = handler
        self.group_name = group_name
        self.group = grp.getgrnam(group_name) if group_name else None
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(path, _Handler)
        os.chmod(path, mode)
        if self.group:
            os.chown(path, 0, self.group.gr_gid)

    def dispatch(self, line, uid):
        """Validate and run one request line; always returns a reply."""
        try:
            op, args = schema.validate(json.loads(line))
        except (ValueError, UnicodeDecodeError):
            return _error(errors.InvalidInput('request', 'not valid JSON'))
        except errors.CoordError as exc:
            return _error(exc)
        try:
            return {'ok': True, 'result': self.handler(op, args)}
        except errors.CoordError as exc:
            LOG.info('%s %s failed: %s', op, args, exc)
            return _error(exc)
        except Exception as exc:
            LOG.exception('%s %s crashed', op, args)
            return _error(errors.CoordError(f'internal error in {op}: '
                                            f'{exc}'))
