"""Errors the coordinator raises; each names what was wrong."""
import contextlib


class CoordError(Exception):
    """Base class: every error carries a short machine-readable code."""

    code = 'error'

    def to_dict(self):
        return {'code': self.code, 'message': str(self)}


class InvalidInput(CoordError):
    """A request field failed validation; nothing was run."""

    code = 'invalid'

    def __init__(self, field, reason):
        super().__init__(f'{field}: {reason}')
        self.field = field

    def to_dict(self):
        return dict(super().to_dict(), field=self.field)


class EtcdUnavailable(CoordError):
    """No etcd endpoint answered within the configured timeout."""

    code = 'etcd-unavailable'


class EtcdDenied(CoordError):
    """etcd refused our identity (user/password, certificate) or the key's
    permissions; the message carries etcd's own reason."""

    code = 'etcd-denied'


class Busy(CoordError):
    """The target host's request queue is full (in total or for this
    caller); nothing was run, retry later."""

    code = 'busy'


class SessionLost(CoordError):
    """This host's session expired; everything it held is void."""

    code = 'session-lost'


class LockTimeout(CoordError):
    """The VG lock was not acquired in time; names the current holder."""

    code = 'lock-timeout'


class LockLost(CoordError):
    """The VG lock is no longer ours (session expired or lock broken)."""

    code = 'lock-lost'


class LeaseConflict(CoordError):
    """An activation lease is held elsewhere in an incompatible mode."""

    code = 'lease-conflict'

    def __init__(self, message, holders=()):
        super().__init__(message)
        self.holders = list(holders)

    def to_dict(self):
        return dict(super().to_dict(),
                    holders=[getattr(h, 'host', h) for h in self.holders])


class LeaseFenceWait(LeaseConflict):
    """The holder's session ended; the grace period has not run out yet."""

    code = 'fence-wait'


class HostUnavailable(CoordError):
    """The target host has no live session or did not answer."""

    code = 'host-unavailable'


class SeqnoBehind(CoordError):
    """This host's view of VG metadata stays older than etcd's record."""

    code = 'seqno-behind'


class LVMError(CoordError):
    """An LVM command failed; ``kind`` classifies the failure."""

    code = 'lvm'

    def __init__(self, message, kind='failed', cmd=None, stderr=''):
        super().__init__(message)
        self.kind = kind
        self.cmd = cmd
        self.stderr = stderr

    def to_dict(self):
        return {'code': self.code, 'kind': self.kind, 'message': str(self)}


class MetadataFull(CoordError):
    """The VG's metadata area has no room for the change; nothing ran."""

    code = 'metadata-full'


def _classes(cls=CoordError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _classes(sub)


def from_dict(body, context=''):
    """Rebuild an error sent as ``to_dict()`` by a daemon."""
    code = body.get('code')
    cls = next((c for c in _classes() if c.code == code), CoordError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, context + body.get('message', 'failed'))
    exc.field = body.get('field') or 'request'
    exc.kind = body.get('kind', 'failed')
    exc.holders, exc.cmd, exc.stderr = body.get('holders', []), None, ''
    return exc


@contextlib.contextmanager
def logged(log, what):
    """Log what the block raises and go on: a CoordError (a fault that
    says why, such as etcd away) as a warning, anything else with its
    traceback (a bug)."""
    try:
        yield
    except CoordError as exc:
        log.warning('%s: %s', what, exc)
    except Exception:
        log.exception(what)
