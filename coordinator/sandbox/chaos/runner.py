"""One chaos run: build the cluster, run workload and faults while the
checker samples, settle, run the final checks, collect the result."""
import contextlib
import os
import random
import shutil
import tempfile
import threading
import time
import traceback

from coordinator.sandbox.chaos import faults as faultlib
from coordinator.sandbox.chaos import final
from coordinator.sandbox.chaos import history as historylib
from coordinator.sandbox.chaos import invariants
from coordinator.sandbox.chaos.faults import Faults
from coordinator.sandbox.chaos.topology import CLUSTER
from coordinator.sandbox.chaos.topology import Topology
from coordinator.sandbox.chaos.workload import Workload

SAMPLE = 0.5
SLOW_CHECKS = 5.0  # history replay and writer logs
WORKERS = 2


class Run:
    """State shared by the run's threads."""

    def __init__(self, seed, duration, volumes, computes, ttl, grace,
                 keep_dir, say, watchdog=True, kinds=None):
        self.seed, self.duration = seed, duration
        self.volumes, self.computes = volumes, computes
        self.ttl, self.grace = ttl, grace
        self.keep_dir = keep_dir
        self.say = say
        self.watchdog = watchdog
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.stop_work = threading.Event()
        self.stop_sampler = threading.Event()
        self.harness_errors = []

    def guarded(self, name, fn):
        """A thread body whose exception is recorded, never lost."""
        def body():
            try:
                fn()
            except Exception:
                self.harness_errors.append(f'{name}: {traceback.format_exc()}')
                self.say(f'harness error in {name}; see the result')
                self.stop_work.set()
        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    def execute(self):
        with contextlib.ExitStack() as stack:
            self.workdir = tempfile.mkdtemp(prefix='lvmcoord-chaos-')
            stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            t0 = time.time()
            topo = stack.enter_context(Topology(
                self.volumes, self.computes, self.ttl, self.grace,
                watchdog=self.watchdog))
            self.say(f'cluster up in {time.time() - t0:.1f}s: etcd x3, '
                     f'{", ".join(topo.hosts)}; VG {topo.vg} on {topo.pv}')
            if topo.watchdogs:
                self.say(f'SIMULATED watchdog on every host (a file per '
                         f'host, timeout {topo.watchdog_timeout}s): a reset '
                         f'kills the daemon and the VMs, detaches devices')
            self.topo = topo
            self.names = invariants.NameBook()
            self.history = historylib.History(topo.etcd.endpoints, CLUSTER)
            self.wl = Workload(topo, random.Random(self.rng.random()),
                               self.names, self.workdir,
                               lambda: self.faults.faulty())
            self.faults = Faults(topo, self.wl,
                                 random.Random(self.rng.random()))
            stack.callback(self._stop_writers)
            stack.callback(self._keep_logs)
            self.checker = invariants.Checker(
                topo.pv, topo.vg, {h: topo.dev_dir(h) for h in topo.hosts},
                self.history, self.names, self.wl.writers, topo.watchdogs)
            for dog in topo.watchdogs.values():
                dog.also_devices.append(self.checker.devices_of)
            return self._phases()

    def _phases(self):
        started = time.time()
        sampler = self.guarded('sampler', self._sample)
        workers = [self.guarded(f'workload-{i}', self._work)
                   for i in range(WORKERS)]
        injector = self.guarded('faults', self._inject)
        injector.join()
        self.stop_work.set()
        for w in workers:
            w.join()
        self.faults.recover_all()
        # Orphaned VMs are killed; held LVs keep their writers running.
        self.wl.reap_orphans(everything=True)
        last = max([f.end for f in self.faults.done] + [time.time()])
        settle = last + self.ttl + self.grace + 3 - time.time()
        self.say(f'faults over; settling {settle:.0f}s (> TTL + grace)')
        if settle > 0:
            time.sleep(settle)  # a required quiet period, not a sync point
        self.stop_sampler.set()
        sampler.join()
        self._final()
        return self._result(time.time() - started)

    def _sample(self):
        next_slow = time.monotonic() + SLOW_CHECKS
        while not self.stop_sampler.wait(SAMPLE):
            self.checker.sample()
            if time.monotonic() >= next_slow:
                next_slow = time.monotonic() + SLOW_CHECKS
                self.wl.reap_orphans()
                if self.history.poll():
                    self.checker.check_writes()
                    self.checker.check_resets(self.resets())

    def _work(self):
        while not self.stop_work.is_set():
            self.wl.step()
            self.stop_work.wait(self.wl.rng.uniform(0.1, 0.6))

    def _inject(self):
        plan = self.faults.plan(self.duration, self.faults.rng, self.kinds)
        deadline = time.time() + self.duration
        time.sleep(min(5, self.duration / 10))  # let the workload populate
        every = len(set(plan))  # the first pass covers every kind
        for i, kind in enumerate(plan):
            if self.stop_work.is_set() or \
                    (i >= every and time.time() > deadline):
                break
            self.say(f'fault {kind} ...')
            try:
                f = self.faults.inject(kind)
            finally:
                self.faults.recover_all()
            self.say(f'fault {kind} on {",".join(f.hosts) or "etcd"} done '
                     f'({f.end - f.start:.1f}s) {f.detail}')
            self.stop_work.wait(self.faults.rng.uniform(2, 4))
        left = deadline - time.time()
        if left > 0:
            self.stop_work.wait(left)

    def _final(self):
        topo, checker = self.topo, self.checker
        for _ in range(5):
            if self.history.poll():
                break
        checker.sample()
        checker.check_writes()
        checker.check_resets(self.resets())
        vg = topo.lvm.vg(topo.vg)
        [pv] = topo.lvm.pvs(topo.vg)
        t0 = time.time()
        checker.scan_disk(vg['extent_size'], pv['pe_start'],
                          vg['size'] // vg['extent_size'])
        self.say(f'final check stamps on disk: {time.time() - t0:.1f}s')
        steps = [
            ('readiness', lambda: final.readiness(topo, checker)),
            ('lease list', lambda: final.lease_table(topo, checker, self.wl)),
            ('volumes', lambda: final.volumes(topo, checker, self.wl)),
            ('vgck', lambda: final.vgck(topo, checker)),
            ('vg lock', lambda: final.vg_lock(topo, self.history, checker))]
        for name, step in steps:
            t0 = time.time()
            step()
            self.say(f'final check {name}: {time.time() - t0:.1f}s')
        self.crashes = final.crashes(topo)
        self.leader_fences = final.classify_fences(
            topo, self.history, self.faults.done, checker)

    def resets(self):
        """Every SIMULATED watchdog reset so far, in time order."""
        return sorted((r for d in self.topo.watchdogs.values()
                       for r in d.resets), key=lambda r: r.at)

    def _classify_resets(self):
        """[dict] per reset, with the fault it came in (the host's latest
        fault begun before it); only a dead or stopped daemon may leave
        its host reset: any other reset is a violation."""
        slack = self.ttl + self.grace + 5
        out = []
        for r in self.resets():
            own = [f for f in self.faults.done if r.host in f.hosts and
                   f.start - 1 <= r.at <= (f.end or r.at) + slack]
            fault = max(own, key=lambda f: f.start) if own else None
            kind = fault.kind if fault else None
            out.append(dict(vars(r), fault=kind,
                            after_last_pet=round(r.at - r.last_pet, 3)))
            if kind not in faultlib.DAEMON_DOWN_KINDS:
                self.checker.violation(
                    'needless-reset', (r.host, r.at), host=r.host,
                    fault=kind, at=r.at, last_pet=r.last_pet,
                    lvs=[(d['lv'], d['writable']) for d in r.devices])
        return out

    def _stop_writers(self):
        for w in self.wl.writers():
            w.stop()

    def _keep_logs(self):
        """Daemon, writer and etcd logs are kept when something failed."""
        if not self.keep_dir or not getattr(self, 'failed', True):
            return
        dest = os.path.join(self.keep_dir, f'seed-{self.seed}-logs')
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for h in self.topo.hosts:
            d = self.topo.daemon(h)
            for p in (d.log, d.log + '.err'):
                if os.path.exists(p):
                    shutil.copy(p, os.path.join(dest, f'{h}-' +
                                                os.path.basename(p)))
        for name in os.listdir(self.workdir):
            shutil.copy(os.path.join(self.workdir, name), dest)
        for h, dog in self.topo.watchdogs.items():
            if os.path.exists(dog.path):
                shutil.copy(dog.path, os.path.join(
                    dest, f'{h}-watchdog-SIMULATED'))
        for m in self.topo.etcd.members:
            if os.path.exists(m.data_dir + '.log'):
                shutil.copy(m.data_dir + '.log',
                            os.path.join(dest, f'etcd-{m.name}.log'))
        self.say(f'logs kept in {dest}')

    def _result(self, elapsed):
        wl = self.wl
        writes = [x for w in wl.writers() for x in w.writes()]
        resets = self._classify_resets()
        violations = self.checker.violations()
        errors = self.harness_errors + self.faults.reboot_errors + [
            f'SIMULATED watchdog {h}: {d.error}'
            for h, d in self.topo.watchdogs.items() if d.error]
        for err in errors:
            violations.append({'kind': 'harness-error', 'error': err})
        kinds = {}
        for f in self.faults.done:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        self.failed = bool(violations or self.crashes)
        return {
            'seed': self.seed, 'duration': self.duration,
            'elapsed': round(elapsed, 1), 'hosts': self.topo.hosts,
            'ttl': self.ttl, 'grace': self.grace,
            'ops_acked': dict(wl.acked), 'ops_failed': dict(wl.failed),
            'op_errors': dict(wl.errors),
            'faults_by_kind': kinds,
            'faults': [dict(kind=f.kind, hosts=f.hosts,
                            start=f.start, end=f.end, detail=f.detail)
                       for f in self.faults.done],
            'violations': violations,
            'violations_by_kind': _count(v['kind'] for v in violations),
            'worker_crashes': [list(c) for c in self.crashes],
            'healthy_fenced_in_leader_change': self.leader_fences,
            'watchdog': ('SIMULATED' if self.topo.watchdogs else None),
            'watchdog_timeout': self.topo.watchdog_timeout,
            'resets': resets,
            'writes_ok': sum(1 for x in writes if x[3] == 'ok'),
            'writes_failed': sum(1 for x in writes if x[3] != 'ok'),
            'writers': len(wl.writers()),
            'samples': self.checker.samples,
            'fences': sorted(final.fences(self.topo, self.history),
                             key=lambda f: f[1] or 0),
            'grants': [vars(g) for g in self.history.grants],
            'op_log': wl.log,
        }


def _count(items):
    out = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def run(seed, duration, volumes=2, computes=2, ttl=10, grace=3.0,
        keep_dir=None, say=print, watchdog=True, kinds=None):
    """One run; its result dict (see report.py)."""
    return Run(seed, duration, volumes, computes, ttl, grace, keep_dir,
               say, watchdog, kinds).execute()
