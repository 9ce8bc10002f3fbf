"""Invariants checked while the cluster runs (and once more at the end).

- ``double-writable``: two writable mappings of overlapping extents on
  different hosts, unless both hosts hold a migration lease of one instance
  on that LV; also one device that two hosts use.
- ``orphan-writable-device``: a writable device over the PV that no host
  has ever been seen owning (no link, no writer).
- ``writable-without-lease``: a writable mapping on a host whose live lease
  (holder key, bound to its session) on that LV is gone.
- ``stale-write-acked``: a writer's write succeeded after another host was
  granted its LV (grant time = the grant's own ``since``, token = its etcd
  revision; a migration grant for the same instance aside).
- ``stale-block-on-disk``: a stamp on the shared PV issued after such a
  grant.
- ``writable-unwatched``: a writable device on a host whose SIMULATED
  watchdog is not armed, for longer than the watchdog timeout: a daemon
  that dies then is not covered.
- ``grant-before-reset``: another host was granted an LV that a host
  later reset by its SIMULATED watchdog still had writable: the watchdog
  came too late to cover the dead or hung daemon.

Violations are incidents: one per (kind, what), with first/last seen and a
sample count, so a mapping that stays wrong is one violation, not hundreds.
"""
import mmap
import os
import threading
import time

from coordinator import errors
from coordinator.sandbox.chaos import mappings
from coordinator.sandbox.chaos import writers as writerlib

# A condition seen in fewer consecutive samples than this is a race in our
# own reads (sysfs and etcd are not read atomically), not a finding.
PERSIST = 2


class NameBook:
    """Which LV (by uuid) a name meant when: the workload tells us."""

    def __init__(self):
        self.records = []  # (time, vg, name, uuid or None)
        self.mutex = threading.Lock()

    def record(self, vg, name, uuid, at=None):
        with self.mutex:
            self.records.append((at or time.time(), vg, name, uuid))

    def uuid_at(self, vg, name, at):
        """The uuid ``name`` named at ``at`` (None: no such LV)."""
        found = None
        with self.mutex:
            for t, v, n, u in self.records:
                if v == vg and n == name and t <= at:
                    found = u
        return found


class Checker:
    """Continuous and final invariant checks; collects violations."""

    def __init__(self, pv, vg, dev_dirs, history, names, writers,
                 watchdogs=None):
        self.pv, self.vg = pv, vg
        self.dev_dirs = dev_dirs
        self.history = history
        self.names = names
        self.writers = writers  # callable -> every Writer ever started
        self.incidents = {}
        self.pending = {}
        self.owners = {}  # (loop, offset) -> (hosts, lvs) last seen
        self.samples = 0
        self.mutex = threading.Lock()
        self.watchdogs = watchdogs or {}  # host -> SimulatedWatchdog
        self.unwatched = {}  # (loop, offset, host) -> first seen

    # -- recording --

    def violation(self, kind, key, **detail):
        """Record (or refresh) the incident ``(kind, key)``."""
        now = time.time()
        with self.mutex:
            inc = self.incidents.get((kind, key))
            if inc is None:
                inc = self.incidents[(kind, key)] = dict(
                    kind=kind, first=now, count=0, **detail)
            inc['last'] = now
            inc['count'] += 1

    def violations(self):
        with self.mutex:
            return sorted(self.incidents.values(), key=lambda i: i['first'])

    def _persisting(self, seen, key):
        seen.add(key)
        return self.pending.get(key, 0) + 1 >= PERSIST

    # -- mappings (every sample) --

    def _leases(self):
        try:
            return self.history.leases()
        except errors.CoordError:
            return None

    def sample(self):
        """One look at every mapping against the live lease table."""
        before = self._leases()
        maps = mappings.snapshot(self.pv, self.dev_dirs, self.writers())
        after = self._leases()
        self._remember(maps)
        tables = [t for t in (before, after) if t is not None]
        seen = set()
        writable = [m for m in maps if m.writable]
        for m in writable:
            if len(m.hosts) > 1:
                self.violation('double-writable', (m.loop, tuple(sorted(
                    m.hosts))), loops=[m.loop], hosts=sorted(m.hosts),
                    lvs=sorted(m.lvs), note='one device used by two hosts')
        for i, a in enumerate(writable):
            for b in writable[i + 1:]:
                if not a.overlaps(b) or self._same_host(a, b) or \
                        self._migration_pair(a, b, tables):
                    continue
                key = ('overlap', a.loop, a.offset, b.loop, b.offset)
                if not (a.hosts and b.hosts):
                    # A device nobody owns (its link gone, no writer):
                    # reported as such below, not as a second host.
                    continue
                self.violation(
                    'double-writable', key[1:],
                    loops=[a.loop, b.loop],
                    hosts=[sorted(a.hosts), sorted(b.hosts)],
                    lvs=[sorted(a.lvs), sorted(b.lvs)],
                    ranges=[[a.offset, a.size], [b.offset, b.size]])
        for m in writable:
            key = ('orphan', m.loop, m.offset)
            if not m.hosts and self._persisting(seen, key):
                self.violation('orphan-writable-device', key[1:],
                               loop=m.loop, range=[m.offset, m.size])
        if tables:
            for m in writable:
                for host in m.hosts:
                    if self._leased(m, host, tables):
                        continue
                    key = ('unleased', m.loop, m.offset, host)
                    if self._persisting(seen, key):
                        self.violation('writable-without-lease', key[1:],
                                       loop=m.loop, host=host,
                                       lvs=sorted(m.lvs))
        self.pending = {k: self.pending.get(k, 0) + 1 for k in seen}
        self._watched(writable)
        self.samples += 1
        return maps

    def _watched(self, writable):
        """Writable devices of hosts whose watchdog is not armed; the
        fencer arms it within a tick, so a timeout's worth is allowed."""
        now = time.time()
        still = {}
        for m in writable:
            for host in m.hosts:
                dog = self.watchdogs.get(host)
                if dog is None or dog.armed:
                    continue
                key = (m.loop, m.offset, host)
                since = still[key] = self.unwatched.get(key, now)
                if now - since > dog.timeout:
                    self.violation('writable-unwatched', key, loop=m.loop,
                                   host=host, lvs=sorted(m.lvs),
                                   since=since)
        self.unwatched = still

    def _remember(self, maps):
        """A device keeps the owner it was seen with while it stays
        attached with the same range (a kernel cannot hand an attached
        minor to another host); links and writers seen now win."""
        owners = {}
        for m in maps:
            key = (m.loop, m.offset)
            old = self.owners.get(key, (set(), set()))
            if m.hosts:
                owners[key] = (set(m.hosts), set(m.lvs))
            else:
                owners[key] = old
                m.hosts, m.lvs = set(old[0]), set(old[1])
        self.owners = owners

    def devices_of(self, host):
        """[{vg, lv, uuid, loop, token}]: devices last seen owned by
        ``host`` (one shared kernel: a reset must stop those too, even
        once their link and writer are gone)."""
        with self.mutex:
            owners = dict(self.owners)
        return [dict(vg=self.vg, lv=next((lv for h, lv in sorted(lvs)
                                          if h == host), None),
                     uuid=None, loop=loop, token=None)
                for (loop, _), (hosts, lvs) in owners.items()
                if host in hosts]

    @staticmethod
    def _same_host(a, b):
        return len(a.hosts | b.hosts) == 1

    def _migration_pair(self, a, b, tables):
        names = {lv for _, lv in a.lvs} & {lv for _, lv in b.lvs}
        hosts = a.hosts | b.hosts
        for table in tables:
            for lv in names:
                ledger = table.get((self.vg, lv), {}).get('ledger', {})
                entries = [ledger.get(h) for h in hosts]
                if len(hosts) == 2 and all(
                        e and e.get('mode') == 'migration' for e in entries) \
                        and len({e.get('instance') for e in entries}) == 1:
                    return True
        return False

    def _leased(self, m, host, tables):
        lvs = [lv for h, lv in m.lvs if h == host]
        return any(host in t.get((self.vg, lv), {}).get('live', {})
                   for t in tables for lv in lvs)

    # -- stamps and writes (every few seconds, and at the end) --

    def _uuid(self, grant):
        return grant.uuid or self.names.uuid_at(grant.vg, grant.lv,
                                                grant.since)

    def _by_uuid(self):
        """{uuid: [Grant]}, resolved once per check (names are slow)."""
        out = {}
        for g in list(self.history.grants):
            out.setdefault(self._uuid(g), []).append(g)
        return out

    @staticmethod
    def _later_grants(by_uuid, uuid, host, token, instance):
        """Grants of LV ``uuid`` to other hosts after token ``token``; a
        migration grant of the same instance aside, and so is its
        conversion to exclusive when the source detaches (the same
        holder, instance and ``since``, rewritten)."""
        grants = by_uuid.get(uuid, ())
        migrations = {(g.host, g.instance, g.since) for g in grants
                      if g.mode == 'migration'}

        def companion(g, of_host, of_instance):
            # A grant that may live beside ``of_instance`` on ``of_host``:
            # the same host's, or its migration pair.
            return g.host == of_host or (g.instance == of_instance and (
                g.mode == 'migration' or
                (g.host, g.instance, g.since) in migrations))

        # A grant carried over to a restarted daemon's session keeps its
        # holder, instance and ``since`` under a new token: it is the
        # grant it continues, ordered by its first token, unless another
        # host was granted the LV in between (then it is no continuation,
        # whatever the daemon claims: exactly what must be caught).
        first, origin = {}, {}
        for g in sorted(grants, key=lambda g: g.token):
            f = first.setdefault((g.host, g.instance, g.since), g)
            taken = any(f.token < o.token < g.token and
                        not companion(o, g.host, g.instance) for o in grants)
            origin[g.token] = g.token if taken else f.token
        return [g for g in grants if origin[g.token] > token and
                not companion(g, host, instance)]

    def check_writes(self):
        """Writes a writer got acknowledged after another host's grant."""
        by_uuid = self._by_uuid()
        for w in self.writers():
            later = self._later_grants(by_uuid, w.uuid, w.host, w.token,
                                       w.instance)
            if not later:
                continue
            first = min(later, key=lambda g: g.since)
            stale = [x for x in w.writes()
                     if x[3] == 'ok' and x[2] > first.since]
            if stale:
                self.violation(
                    'stale-write-acked', (w.host, w.token, first.token),
                    writer=w.describe(), grant=vars(first),
                    writes=len(stale), first_write=stale[0][2],
                    last_write=stale[-1][2],
                    after_grant=round(stale[0][2] - first.since, 3))

    def check_resets(self, resets):
        """Every SIMULATED watchdog reset came before any other host was
        granted an LV the reset host still had writable."""
        by_uuid = self._by_uuid()
        instances = {g.token: g.instance for g in self.history.grants}
        for r in resets:
            for d in r.devices:
                if not d.get('writable'):
                    continue  # fenced already: the fence covered it
                uuid = d.get('uuid') or self.names.uuid_at(d['vg'], d['lv'],
                                                           r.at)
                if uuid is None:
                    continue  # an LV we cannot name: nothing to compare
                token = d.get('token') or max(
                    (g.token for g in by_uuid.get(uuid, ())
                     if g.host == r.host and g.since <= r.at), default=0)
                later = [g for g in self._later_grants(
                    by_uuid, uuid, r.host, token, instances.get(token))
                    if g.since < r.at]
                if later:
                    g = min(later, key=lambda g: g.since)
                    self.violation(
                        'grant-before-reset', (r.host, d['loop'], g.token),
                        host=r.host, lv=d['lv'], uuid=uuid, loop=d['loop'],
                        token=token, last_pet=r.last_pet, reset_at=r.at,
                        grant=vars(g), late=round(r.at - g.since, 3))

    def scan_disk(self, extent_size, pe_start, pe_count):
        """Stamps on the PV issued after another host's grant of their LV."""
        instances = {g.token: g.instance for g in self.history.grants}
        by_uuid = self._by_uuid()
        fd = os.open(self.pv, os.O_RDONLY | os.O_DIRECT)
        try:
            for i in range(pe_count):
                self._scan_extent(fd, pe_start + i * extent_size, instances,
                                  by_uuid)
        finally:
            os.close(fd)

    def _scan_extent(self, fd, base, instances, by_uuid):
        buf = mmap.mmap(-1, writerlib.SPAN)  # aligned, as O_DIRECT needs
        try:
            os.preadv(fd, [buf], base)
            for off in range(0, writerlib.SPAN, writerlib.BLOCK):
                st = writerlib.parse(buf[off:off + writerlib.BLOCK])
                if st is None:
                    continue
                later = self._later_grants(by_uuid, st['u'], st['h'],
                                           st['t'], instances.get(st['t']))
                bad = [g for g in later if g.since < st['w']]
                if bad:
                    g = min(bad, key=lambda g: g.since)
                    self.violation(
                        'stale-block-on-disk', (st['h'], st['t'], g.token),
                        stamp=st, at_byte=base + off, grant=vars(g),
                        after_grant=round(st['w'] - g.since, 3))
        finally:
            buf.close()
