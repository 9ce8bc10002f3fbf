"""The key layout in etcd: every key the coordinator writes is named here."""


class Keys:
    """Key names under ``<prefix>/<cluster>/``."""

    def __init__(self, prefix='/lvmcoord', cluster='default'):
        self.root = f'{prefix.rstrip("/")}/{cluster}/'

    def session(self, host):
        """A host's live-session marker, bound to its session lease."""
        return f'{self.root}sessions/{host}'

    def sessions(self):
        return f'{self.root}sessions/'

    def epoch(self):
        """The cluster epoch: which etcd history this is
        (coordinator.engine.history)."""
        return f'{self.root}epoch'

    def schema(self):
        """The cluster's schema version (coordinator.engine.schema)."""
        return f'{self.root}schema'

    def history_witness(self, host):
        """``host``'s witness: put by each of its writes (history.py)."""
        return f'{self.root}history/{host}'

    def vg_lock(self, vg):
        """Prefix of the VG metadata lock's queue (one key per waiter)."""
        return f'{self.root}vg/{vg}/lock/'

    def vg_seqno(self, vg):
        """The VG's metadata seqno as recorded after the last change."""
        return f'{self.root}vg/{vg}/seqno'

    def vg_intent(self, vg):
        """A metadata change in progress (written before, cleared after)."""
        return f'{self.root}vg/{vg}/intent'

    def vgs(self):
        return f'{self.root}vg/'

    def lease(self, vg, lv):
        """Prefix of one LV's activation lease."""
        return f'{self.root}leases/{vg}/{lv}/'

    def lease_ledger(self, vg, lv):
        """Who was granted the LV, in which mode; survives sessions."""
        return f'{self.lease(vg, lv)}ledger'

    def lease_holder(self, vg, lv, host):
        """A holder's liveness key, bound to its session lease."""
        return f'{self.lease(vg, lv)}holder/{host}'

    def leases(self):
        return f'{self.root}leases/'

    def request(self, host, request_id):
        """A request addressed to ``host``'s daemon."""
        return f'{self.root}requests/{host}/{request_id}'

    def requests(self, host):
        return f'{self.root}requests/{host}/'

    def reply(self, host, request_id):
        """The reply to a request ``host`` sent (its daemon's processes
        each watch their host's replies)."""
        return f'{self.replies(host)}{request_id}'

    def replies(self, host):
        return f'{self.root}replies/{host}/'

    def once(self):
        """Prefix of at-most-once markers (coordinator.engine.once)."""
        return f'{self.root}once/'

    def events(self):
        """Prefix of the event log (fences, breaks, alerts)."""
        return f'{self.root}events/'

    def storage_mode(self):
        """The cluster's storage fence mode ([fence] storage)."""
        return f'{self.root}storage/mode'

    def storage_key(self, host):
        """The reservation key ``host`` registered last, and its session."""
        return f'{self.storage_keys()}{host}'

    def storage_keys(self):
        return f'{self.root}storage/keys/'

    def storage_fence(self, host, key):
        """A storage fence of ``host``'s incarnation with ``key``."""
        return f'{self.storage_fences()}{host}-{int(key):x}'

    def storage_fences(self):
        return f'{self.root}storage/fences/'

    def tooz_group(self):
        """The tooz membership group of this cluster."""
        return self.root.strip('/').replace('/', '.').encode()

    @staticmethod
    def split_lease(key, root):
        """(vg, lv, kind, host) from a key under leases/."""
        parts = key[len(root) + len('leases/'):].split('/')
        host = parts[3] if len(parts) > 3 else None
        return parts[0], parts[1], parts[2], host
