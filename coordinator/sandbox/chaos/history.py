"""What etcd recorded: every grant (holder-key PUT: its token is the
revision, its time the grant's own ``since``), every published event, and
the live lease table, replayed from etcd's key history."""
import dataclasses
import json
import time

from coordinator import errors
from coordinator import etcd as etcdlib
from coordinator.keys import Keys


@dataclasses.dataclass
class Grant:
    """One grant as etcd stored it."""

    vg: str
    lv: str
    host: str
    token: int
    since: float
    mode: str
    instance: str | None
    uuid: str | None = None


def _body(kv):
    try:
        return json.loads(kv.value) if kv.value else {}
    except ValueError:
        return {}


class History:
    """Incremental replay of the cluster's keys; call poll() now and then."""

    def __init__(self, endpoints, cluster):
        self.etcd = etcdlib.Etcd(endpoints, timeout=2.0, retry_window=5.0)
        self.keys = Keys(cluster=cluster)
        self.last = 0
        self.grants = []
        self.events = []

    def poll(self, idle=2.0):
        """Read everything written since the last poll; False if etcd did
        not answer (try again later)."""
        try:
            _, head = self.etcd.range(self.keys.root, prefix=True, limit=1)
            # The head counts keys outside our prefix (tooz's) too: a
            # second idle stream means nothing under it is left to replay.
            for _ in range(2):
                if self.last >= head:
                    break
                with self.etcd.watch(self.keys.root, self.last + 1,
                                     prefix=True) as watch:
                    while self.last < head:
                        got = watch.get(idle)
                        if got is None:
                            break  # idle, or a stream lost with a member
                        self._apply(*got)
            self.last = max(self.last, head)
        except errors.CoordError:
            return False
        return True

    def _apply(self, kind, kv):
        self.last = max(self.last, kv.mod_revision)
        if kind != 'PUT':
            return
        if kv.key.startswith(self.keys.leases()):
            vg, lv, what, host = self.keys.split_lease(kv.key, self.keys.root)
            if what == 'holder' and host:
                body = _body(kv)
                self.grants.append(Grant(
                    vg, lv, host, kv.mod_revision,
                    float(body.get('since') or time.time()),
                    body.get('mode'), body.get('instance'), body.get('uuid')))
        elif kv.key.startswith(self.keys.events()):
            self.events.append(dict(_body(kv), revision=kv.mod_revision))

    def leases(self):
        """{(vg, lv): {'ledger': {host: entry}, 'live': {host: body}}}
        now; raises CoordError when etcd does not answer."""
        kvs, _ = self.etcd.range(self.keys.leases(), prefix=True)
        out = {}
        for kv in kvs:
            vg, lv, what, host = self.keys.split_lease(kv.key, self.keys.root)
            entry = out.setdefault((vg, lv), {'ledger': {}, 'live': {}})
            if what == 'ledger':
                entry['ledger'] = _body(kv).get('holders') or {}
            elif what == 'holder' and host:
                entry['live'][host] = _body(kv)
        return out
