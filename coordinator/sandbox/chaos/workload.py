"""A seeded random workload through the daemons' socket API: create,
delete, extend, rename, activate (exclusive, with an instance id; direct
or routed through a volume host), deactivate, migration, and takeover from
a faulty host. Every activation gets a writer on its host."""
import collections
import itertools
import threading
import time

from coordinator.sandbox.chaos import mappings
from coordinator.sandbox.chaos.writers import Writer

MiB = 1 << 20
MAX_LVS = 10


class LV:
    """The workload's model of one LV."""

    def __init__(self, name, uuid, size, acked):
        self.name, self.uuid, self.size, self.acked = name, uuid, size, acked
        self.holders = {}  # host -> Writer (its activation)
        self.busy = False
        # The loop backend maps one contiguous range: an extend that got
        # extents elsewhere leaves an LV it cannot activate.
        self.contiguous = True


class Workload:
    """Model, operations and statistics; thread-safe."""

    def __init__(self, topo, rng, names, workdir, faulty):
        self.topo, self.rng, self.names = topo, rng, names
        self.vg = topo.vg
        self.workdir = workdir
        self.faulty = faulty  # callable -> hosts not to use now
        self.mutex = threading.Lock()
        self.lvs = {}  # uuid -> LV
        self.gone = set()  # uuids deleted by the workload (acked)
        self.all_writers = []
        self.orphans = []  # [Writer, stop_at]: VMs of a host that lost it
        self.acked = collections.Counter()
        self.failed = collections.Counter()
        self.errors = collections.Counter()
        self.log = []
        self.seq = itertools.count(1)

    # -- plumbing --

    def healthy(self, pool=None):
        bad = self.faulty()
        return [h for h in (pool or self.topo.hosts) if h not in bad]

    def call(self, kind, via, op, **args):
        """One API call to ``via``'s daemon, counted under ``kind``;
        (ok, result or error)."""
        t0 = time.time()
        try:
            result = self.topo.client(via).call(op, **args)
        except Exception as exc:  # every failure is data, not a crash
            self.failed[kind] += 1
            self.errors[f'{kind}: {type(exc).__name__}'] += 1
            self._note(t0, kind, via, args, f'{type(exc).__name__}: {exc}')
            return False, exc
        self.acked[kind] += 1
        self._note(t0, kind, via, args, 'ok')
        return True, result

    def _note(self, t0, kind, host, args, outcome):
        self.log.append({'at': t0, 'took': round(time.time() - t0, 3),
                         'kind': kind, 'via': host, 'args': args,
                         'outcome': outcome[:300]})

    def claim(self, want):
        """Mark busy and return an LV for which ``want(lv)`` holds."""
        with self.mutex:
            found = [lv for lv in self.lvs.values()
                     if not lv.busy and want(lv)]
            if not found:
                return None
            lv = self.rng.choice(sorted(found, key=lambda x: x.name))
            lv.busy = True
            return lv

    def release(self, lv):
        with self.mutex:
            lv.busy = False

    def writers(self):
        return list(self.all_writers)

    def _start_writer(self, lv, host, result):
        w = Writer(self.workdir, host, self.vg, lv.name, lv.uuid,
                   result['token'], result['path'], result.get('instance'))
        self.all_writers.append(w)
        lv.holders[host] = w
        return w

    def orphan(self, lv, host, stop_after):
        """``host``'s VM keeps writing, though its lease is gone."""
        w = lv.holders.pop(host, None)
        if w is not None:
            self.orphans.append([w, time.time() + stop_after])

    def reap_orphans(self, everything=False):
        """Stop orphaned writers whose VM has been killed by now."""
        now = time.time()
        for item in list(self.orphans):
            if everything or item[1] <= now:
                item[0].stop()
                with self.mutex:  # a host reset may have dropped it
                    if item in self.orphans:
                        self.orphans.remove(item)

    # -- operations (on a claimed LV, or none) --

    def create(self, via=None):
        vols = self.healthy(self.topo.volumes) or self.healthy()
        if not vols:
            return None
        via = via or self.rng.choice(vols)
        name = f'lv{next(self.seq)}'
        size = self.rng.choice([4, 8]) * MiB
        ok, _ = self.call('create', via, 'create', vg=self.vg, lv=name,
                          size=size)
        found = self._lookup(name=name)
        if found is None:
            if ok:
                self.failed['create-lost'] += 1
            return None
        lv = LV(name, found['uuid'], found['size'], ok)
        self.names.record(self.vg, name, lv.uuid)
        with self.mutex:
            self.lvs[lv.uuid] = lv
            lv.busy = True
        return lv

    def _lookup(self, name=None, uuid=None):
        """The LV as LVM on the checker's own view sees it, or None."""
        try:
            lvs = self.topo.lvm.lvs(self.vg)
        except Exception:  # a metadata read racing a change: ask again
            time.sleep(0.2)
            lvs = self.topo.lvm.lvs(self.vg)
        for info in lvs:
            if info['name'] == name or info['uuid'] == uuid:
                return info
        return None

    def delete(self, lv):
        via = self.rng.choice(self.healthy(self.topo.volumes) or
                              self.healthy())
        self.names.record(self.vg, lv.name, None)
        ok, _ = self.call('delete', via, 'delete', vg=self.vg, lv=lv.name)
        if ok or self._lookup(uuid=lv.uuid) is None:
            with self.mutex:
                self.lvs.pop(lv.uuid, None)
                self.gone.add(lv.uuid)
            return True
        self.names.record(self.vg, lv.name, lv.uuid)
        return False

    def extend(self, lv):
        via = self.rng.choice(self.healthy(self.topo.volumes) or
                              self.healthy())
        ok, _ = self.call('extend', via, 'extend', vg=self.vg, lv=lv.name,
                          size=lv.size + 4 * MiB)
        found = self._lookup(uuid=lv.uuid)
        if found:
            lv.size = found['size']
            lv.contiguous = len(found['pe_ranges']) == 1
        return ok

    def rename(self, lv):
        via = self.rng.choice(self.healthy(self.topo.volumes) or
                              self.healthy())
        new = f'lv{next(self.seq)}'
        self.names.record(self.vg, lv.name, None)
        ok, _ = self.call('rename', via, 'rename', vg=self.vg, lv=lv.name,
                          new_name=new)
        found = self._lookup(uuid=lv.uuid)
        name = found['name'] if found else lv.name
        self.names.record(self.vg, name, lv.uuid)
        lv.name = name
        return ok

    def activate(self, lv, host, mode='exclusive', instance=None, wait=None,
                 kind='activate'):
        """Activate on ``host`` (routed through a volume host at random);
        starts its writer. The grant result, or None."""
        instance = instance or f'vm-{next(self.seq)}'
        args = dict(vg=self.vg, lv=lv.name, mode=mode, instance=instance)
        if wait:
            args['wait'] = wait
        vols = [v for v in self.healthy(self.topo.volumes) if v != host]
        if vols and self.rng.random() < 0.5:
            ok, res = self.call(kind, self.rng.choice(vols), 'activate',
                                host=host, **args)
        else:
            ok, res = self.call(kind, host, 'activate', **args)
        if not ok:
            self.resync(lv)
            return None
        res.setdefault('instance', instance)
        self._start_writer(lv, host, res)
        return res

    def deactivate(self, lv, host):
        w = lv.holders.get(host)
        if w is not None:
            w.stop()  # the VM detaches: its I/O stops first
        ok, _ = self.call('deactivate', host, 'deactivate', vg=self.vg,
                          lv=lv.name)
        if ok:
            lv.holders.pop(host, None)
        else:
            self.resync(lv)
        return ok

    def migrate(self, lv):
        held = list(lv.holders.items())
        if len(held) != 1:
            return False  # a host reset took its holder meanwhile
        [(src, w)] = held
        dests = [h for h in self.healthy(self.topo.computes) if h != src]
        if not dests:
            return False
        dst = self.rng.choice(dests)
        res = self.activate(lv, dst, mode='migration', instance=w.instance,
                            kind='migrate')
        if res is None:
            return False
        return self.deactivate(lv, src)

    def takeover(self, lv, src, wait):
        """Activate ``lv`` on a healthy host while ``src`` (faulty) holds
        it; ``src``'s writer keeps going like its VM would."""
        others = [h for h in self.healthy(self.topo.computes) if h != src] \
            or [h for h in self.healthy() if h != src]
        if not others:
            return None
        old = lv.holders.pop(src, None)
        res = self.activate(lv, self.rng.choice(others), wait=wait,
                            kind='takeover')
        if old is not None:
            lv.holders[src] = old
            if res is not None:
                self.orphan(lv, src, stop_after=600)
        return res

    def resync(self, lv):
        """After a failure: drop holders the cluster no longer lists."""
        via = self.rng.choice(self.healthy() or self.topo.hosts)
        ok, shown = self.call('show (resync)', via, 'show', vg=self.vg,
                              lv=lv.name)
        if not ok:
            return
        alive = {h['host'] for h in shown['holders'] if h.get('alive')}
        for host in list(lv.holders):
            if host not in alive:
                self.orphan(lv, host, stop_after=0)

    # -- the random step --

    def step(self):
        """One random operation on the model."""
        healthy = set(self.healthy())
        computes = [h for h in self.healthy(self.topo.computes)]
        choices = []
        if len(self.lvs) < MAX_LVS:
            choices += ['create'] * 3
        choices += ['activate'] * 3 + ['deactivate'] * 2 + \
            ['delete', 'extend', 'rename', 'migrate']
        kind = self.rng.choice(choices)
        if kind == 'create':
            lv = self.create()
            if lv:
                self.release(lv)
            return
        idle = lambda lv: not lv.holders  # noqa: E731
        wants = {
            'activate': lambda lv: idle(lv) and lv.contiguous,
            'delete': idle, 'rename': idle,
            'extend': lambda lv: set(lv.holders) <= healthy and lv.size <
            24 * MiB,
            'deactivate': lambda lv: lv.holders and set(lv.holders) <=
            healthy,
            'migrate': lambda lv: len(lv.holders) == 1 and
            set(lv.holders) <= healthy,
        }
        lv = self.claim(wants[kind])
        if lv is None:
            return
        try:
            if kind == 'activate':
                hosts = computes or list(healthy)
                if hosts:
                    self.activate(lv, self.rng.choice(hosts))
            elif kind == 'deactivate':
                self.deactivate(lv, self.rng.choice(sorted(lv.holders)))
            else:
                getattr(self, kind)(lv)
        finally:
            self.release(lv)

    def devices_of(self, host):
        """[{vg, lv, uuid, loop, token}]: loop devices ``host``'s running
        writers (its VMs) hold open."""
        out = []
        for w in list(self.all_writers):
            if w.host != host or not w.running:
                continue
            for loop in mappings.loops_opened(w.proc.pid):
                out.append(dict(vg=w.vg, lv=w.lv, uuid=w.uuid, loop=loop,
                                token=w.token))
        return out

    def host_reset(self, host):
        """``host`` was reset (SIMULATED watchdog): its VMs died with it."""
        for w in list(self.all_writers):
            if w.host == host:
                w.kill()
        with self.mutex:
            for lv in self.lvs.values():
                lv.holders.pop(host, None)
            self.orphans[:] = [o for o in self.orphans if o[0].host != host]

    def retire(self, host, delay):
        """``host``'s orphaned VMs are killed ``delay`` seconds from now."""
        at = time.time() + delay
        for item in self.orphans:
            if item[0].host == host:
                item[1] = min(item[1], at)
