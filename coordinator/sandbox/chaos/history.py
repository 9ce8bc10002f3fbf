"""What etcd recorded: every grant (holder-key PUT: its token is the
revision, its time the grant's own ``since``), every published event, and
the live lease table, replayed from etcd's key history."""
import dataclasses
import json
import time

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.keys import Keys


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
        # Under the cluster's root (so the watch sees it), where no daemon
        # looks.
        self.marker = f'{self.keys.root}chaos-checker/marker'
        self.last = 0
        self.grants = []
        self.events = []

    def poll(self, idle=2.0, tries=3):
        """Replay everything written until now; False if etcd did not
        answer in time (nothing is skipped: the next poll goes on from
        the last event replayed)."""
        try:
            # A marker of our own, put now: once the watch has delivered
            # it, everything before it has been replayed (no guessing from
            # idle streams, which a loaded machine or a lost member makes).
            mark = self.etcd.put(self.marker, repr(time.time()))
            for _ in range(tries):
                with self.etcd.watch(self.keys.root, self.last + 1,
                                     prefix=True) as watch:
                    while self.last < mark:
                        got = watch.get(idle)
                        if got is None:
                            break  # a lost stream: reopen from self.last
                        self._apply(*got)
                if self.last >= mark:
                    return True
        except errors.CoordError:
            pass
        return False

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
