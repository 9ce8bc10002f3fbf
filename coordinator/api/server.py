"""The local API server: one JSON request and one JSON reply per line.

Peers are identified by SO_PEERCRED: only root and members of the
configured group are served. Bodies are capped; a bad request gets an error
naming the field and the server keeps serving.

Limits: at most ``max_connections`` at once (one thread each; beyond that
a "busy" error and the connection is closed), a line must arrive within
``idle_timeout`` seconds, failed accepts (EMFILE...) back off.

The socket's directory must be a real directory (no symlink), owned by
root (or the daemon's user), writable by nobody else, under ancestors only
root can change (or sticky, like /tmp): then nobody else can swap the
socket or the directory, and the socket is bound under a temporary name,
given its mode and group, and renamed into place, so it never exists with
other permissions.
"""
import errno
import grp
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
import time

from coordinator import errors
from coordinator.api import schema

LOG = logging.getLogger(__name__)

# accept() failures that mean "out of resources", not "bad peer".
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_BACKOFF_MAX = 1.0


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


def _unsafe(path, why):
    return errors.InvalidInput('api.socket_path', f'{path} {why}')


def _check_owner_mode(path, st, sticky_ok):
    if st.st_uid not in (0, os.geteuid()):
        raise _unsafe(path, f'is owned by uid {st.st_uid}, not root')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
            sticky_ok and st.st_mode & stat.S_ISVTX):
        raise _unsafe(path, f'is writable by group or others (mode '
                      f'{stat.S_IMODE(st.st_mode):o})')


def check_socket_dir(directory, gid=None):
    """InvalidInput unless ``directory`` (if it exists) and its ancestors
    can only be changed by root; a missing directory is checked once made.
    ``gid`` is the socket group (it never needs write access here)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _unsafe(directory, 'is a symlink')
        if not stat.S_ISDIR(st.st_mode):
            raise _unsafe(directory, 'is not a directory')
        _check_owner_mode(directory, st, sticky_ok=False)
    # Ancestors are resolved (/var/run -> /run) and each checked: a
    # writable one would let its writer rename the directory away.
    parent = os.path.realpath(os.path.dirname(directory))
    while True:
        if os.path.lexists(parent):
            _check_owner_mode(parent, os.stat(parent), sticky_ok=True)
        if parent == '/':
            return
        parent = os.path.dirname(parent)


class _Handler(socketserver.BaseRequestHandler):

    def handle(self):
        try:
            self._serve()
        except TimeoutError:
            LOG.debug('API client idle for %ss: closed',
                      self.server.idle_timeout)
        except OSError as exc:
            # The peer went away (EPIPE, ECONNRESET): nothing to answer.
            LOG.debug('API client gone: %s', exc)

    def _serve(self):
        pid, uid, gid = peer_credentials(self.request)
        if not allowed(uid, gid, self.server.group):
            self._reply({'ok': False, 'error': {
                'code': 'forbidden',
                'message': f'uid {uid} is not root nor in group '
                           f'{self.server.group_name}'}})
            LOG.warning('refused API peer pid %s uid %s', pid, uid)
            return
        pending = b''
        while True:
            line, pending = self._read_line(pending)
            if line is None:
                return
            self._reply(self.server.dispatch(line, uid))

    def _read_line(self, pending):
        """(line, rest) of one request; (None, b'') at EOF or when the
        line is too long (answered); TimeoutError when idle too long."""
        deadline = time.monotonic() + self.server.idle_timeout
        while b'\n' not in pending[:schema.MAX_BODY]:
            if len(pending) >= schema.MAX_BODY:
                self._reply(_error(errors.InvalidInput(
                    'request', f'larger than {schema.MAX_BODY} bytes')))
                return None, b''
            # The deadline covers the whole line: trickled bytes do not
            # keep a connection (and its thread) forever.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.request.settimeout(remaining)
            chunk = self.request.recv(schema.MAX_BODY)
            if not chunk:
                if pending:
                    LOG.debug('API client closed mid-line (%d bytes)',
                              len(pending))
                return None, b''
            pending += chunk
        line, rest = pending.split(b'\n', 1)
        return line, rest

    def _reply(self, body):
        self.request.settimeout(self.server.idle_timeout)
        self.request.sendall(json.dumps(body).encode() + b'\n')


def _error(exc):
    return {'ok': False, 'error': exc.to_dict()}


class APIServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``handler(op, args)`` on a Unix socket."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, path, handler, group_name=None, mode=0o660,
                 max_connections=64, idle_timeout=60.0):
        self.handler = handler
        self.group_name = group_name
        self.group = grp.getgrnam(group_name) if group_name else None
        self.mode = mode
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.active = 0
        self._slots = threading.Lock()
        self._backoff = 0.0
        super().__init__(path, _Handler)

    def server_bind(self):
        """Bind under a temporary name in a checked directory, set mode
        and group, then rename into place."""
        path = self.server_address
        directory = os.path.dirname(path)
        gid = self.group.gr_gid if self.group else None
        check_socket_dir(directory, gid)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        check_socket_dir(directory, gid)
        try:
            old = os.lstat(path)
        except FileNotFoundError:
            old = None
        if old and not (stat.S_ISSOCK(old.st_mode) or
                        stat.S_ISLNK(old.st_mode)):
            raise _unsafe(path, 'exists and is not a socket')
        tmp = os.path.join(directory, f'.{os.path.basename(path)}.'
                           f'{os.getpid()}.tmp')
        if os.path.lexists(tmp):
            os.unlink(tmp)
        self.socket.bind(tmp)
        try:
            # Safe by path: only root can change entries of this directory.
            os.chmod(tmp, self.mode)
            if gid is not None:
                os.chown(tmp, -1, gid, follow_symlinks=False)
            os.rename(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def get_request(self):
        """accept(); out of descriptors, wait before the next try instead
        of spinning on a listening socket that stays readable."""
        try:
            conn = super().get_request()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            first = not self._backoff
            self._backoff = min(max(self._backoff * 2, 0.05),
                                _ACCEPT_BACKOFF_MAX)
            (LOG.error if first else LOG.debug)(
                'API accept failed (%s); retrying in %.2fs', exc,
                self._backoff)
            time.sleep(self._backoff)
            raise
        self._backoff = 0.0
        return conn

    def process_request(self, request, client_address):
        """A thread per connection, up to ``max_connections``."""
        with self._slots:
            busy = self.active >= self.max_connections
            if not busy:
                self.active += 1
        if busy:
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address):
        """Serve one connection and free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self):
        with self._slots:
            self.active -= 1

    def _refuse_busy(self, request):
        body = _error(errors.CoordError(
            f'busy: {self.max_connections} API connections already open; '
            f'retry later'))
        body['error']['code'] = 'busy'
        try:
            # Never block the accept loop on a peer that does not read.
            request.send(json.dumps(body).encode() + b'\n',
                         socket.MSG_DONTWAIT)
        except OSError:
            pass
        LOG.warning('API connection refused: %d connections open',
                    self.max_connections)
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        """Log a handler crash once, without printing to stderr."""
        LOG.exception('API connection handler failed')

    def dispatch(self, line, uid):
        """Validate and run one request line; always returns a reply."""
        try:
            op, args = schema.validate(json.loads(line))
        except RecursionError:
            return _error(errors.InvalidInput('request',
                                              'JSON nested too deeply'))
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
