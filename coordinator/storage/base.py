"""The storage fence's interface, chosen by `[fence] storage`.

A connector (as os-brick's) speaks to the shared LU: it registers this
incarnation's key on every path, reads the keys back and removes another
incarnation's key. `none` does nothing (today's behaviour: the host fences
itself); `scsi-pr` uses SCSI-3 persistent reservations."""
from coordinator import errors


class StorageError(errors.CoordError):
    """The LU refused or could not be asked (named in the message)."""


def key_for(session_id):
    """This incarnation's 8-byte reservation key: its session lease id.

    etcd lease ids are unique, non-zero 63-bit numbers and a new daemon
    incarnation (a session that had expired) always has a new one, so the
    key of any ledger entry or lock-queue key is known from the session it
    names, without a lookup that a partition could make stale."""
    key = int(session_id)
    if not 0 < key < 1 << 64:
        raise ValueError(f'no reservation key for session {session_id!r}')
    return key


class Connector:
    """One way of fencing at the storage; subclasses say how."""

    name = 'base'
    #: Whether a removed key stops the host's writes at the LU.
    fences = False

    def check(self):
        """Raise StorageError, naming the device, unless the LU can fence
        with this connector; a report ({check: detail}) otherwise."""
        return {}

    def register(self, key):
        """Register ``key`` through every path and make sure the fencing
        reservation is held; {path: 'ok' or why not}."""
        return {}

    def keys(self):
        """The keys registered on the LU (a list; one per I_T nexus)."""
        return []

    def reservation(self):
        """(holder key, type) of the reservation held, or None."""
        return None

    def preempt(self, own, victim):
        """PREEMPT AND ABORT ``victim``'s registrations with our ``own``
        key; True once READ KEYS shows ``victim`` gone."""
        return False

    def unregistered(self, key):
        """The paths whose nexus does not carry ``key`` (a path that was
        down when we registered, or came back as a new nexus)."""
        return []

    def drain(self):
        """Make sure nothing below this host's devices holds a write of an
        older incarnation before a new key is registered; what to hand
        to requeue() after."""
        return []

    def requeue(self, drained):
        """Undo what drain() changed to get there."""

    def register_paths(self, key, paths):
        """REGISTER AND IGNORE EXISTING KEY ``key`` on ``paths`` only."""
        return {}

    def path_keys(self):
        """{path: [keys registered on the LU, as read through it]}: a path
        that cannot answer maps to the error text."""
        return {}


class NoStorageFence(Connector):
    """`[fence] storage = none`: only the host fences itself."""

    name = 'none'
