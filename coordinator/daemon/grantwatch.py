"""GrantWatch: a holder watches its own grants.

If anyone removes or changes this host's ledger entry or holder key of an
LV it has a device for (an admin's forced break, a bug, a hand-edited
etcd), the LV is fenced here at once, and the Fencer's proof decides what
becomes of the device (it retires it: the grant is gone).
"""
import logging
import time

from coordinator import errors

LOG = logging.getLogger(__name__)

# Re-read everything this often even without events: a safety net for a
# silently dead stream (one that ends is noticed at once). Safety does not
# hang on it: a broken holder that does not acknowledge keeps the LV
# ungranted for TTL + grace, and session loss is the fencer's.
RESCAN = 30.0


class GrantWatch:
    """Fence an LV the moment this host's grant on it changes in etcd."""

    def __init__(self, etcd, keys, leases, book, fencer, on_event=None):
        self.etcd = etcd
        self.keys = keys
        self.leases = leases
        self.book = book
        self.fencer = fencer
        self.on_event = on_event or (lambda kind, **kw: None)

    def revoked(self, vg, lv):
        """Why our grant on vg/lv is no longer the one we hold, or None."""
        record = self.book.get(vg, lv)
        if record is None or record.get('token') is None:
            return None
        try:
            holders = self.leases.holders(vg, lv)
        except errors.LeaseConflict as exc:
            return str(exc)
        mine = next((h for h in holders if h.host == self.leases.session.host),
                    None)
        if mine is None:
            return 'our ledger entry was removed'
        if mine.broken:
            return 'the lease was broken by an admin'
        if mine.token != record['token']:
            if mine.alive and mine.session == self.leases.session.id and \
                    mine.uuid in (None, record.get('uuid')):
                # Our own proof carried the grant over to this session
                # (a new token); the book catches up just after.
                return None
            return f'the token changed ({record["token"]} -> {mine.token})'
        if not mine.alive:
            return 'our holder key is gone'
        return None

    def check(self, vg, lv, rescan=False):
        """Fence vg/lv if its grant was revoked."""
        if rescan and (vg, lv) in self.fencer.fenced:
            # Fenced already: its proof decides, and an event on it still
            # voids a proof in flight (fence_one). Asking etcd about every
            # fenced LV at each rescan starves the proofs of a host that
            # comes back with many.
            return
        why = self.revoked(vg, lv)
        if why is None:
            return
        LOG.error('grant of %s/%s revoked: %s; fencing', vg, lv, why)
        self.fencer.fence_one(vg, lv, f'grant revoked: {why}',
                              still=lambda: self.revoked(vg, lv) is not None)

    def run(self, stopping):
        """Watch until ``stopping`` is set."""
        root = self.keys.leases()
        while not stopping.is_set():
            try:
                _, rev = self.etcd.range(root, prefix=True, limit=1)
                for vg, lv in self.book.all():
                    self.check(vg, lv, rescan=True)
                with self.etcd.watch(root, rev + 1, prefix=True) as watch:
                    for event in watch.until(time.monotonic() + RESCAN, 0.5):
                        if stopping.is_set():
                            return
                        if watch.dead:
                            break
                        if event is None:
                            continue
                        vg, lv = event[1].key[len(root):].split('/')[:2]
                        if self.book.get(vg, lv) is not None:
                            self.check(vg, lv)
            except errors.CoordError as exc:
                LOG.warning('grant watch: %s; restarting', exc)
                stopping.wait(0.5)
            except Exception:
                LOG.exception('grant watch: restarting')
                stopping.wait(0.5)
