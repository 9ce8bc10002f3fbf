"""Seeded random faults. Each records a window (start, end) and the hosts
it made faulty, so the checker can tell a fault's consequence from a
healthy host being hurt."""
import dataclasses
import signal
import threading
import time

KINDS = ('partition-short', 'partition-long', 'sigstop', 'kill-restart-fast',
         'kill-restart-slow', 'etcd-leader-kill', 'etcd-leader-stop',
         'lease-break-force', 'rename-after-takeover',
         'delete-after-takeover')
LEADER_KINDS = ('etcd-leader-kill', 'etcd-leader-stop')
# Faults that leave a daemon dead or stopped: the only ones whose host its
# watchdog may reset.
DAEMON_DOWN_KINDS = ('sigstop', 'kill-restart-fast', 'kill-restart-slow')
# Rough seconds each kind took at TTL 6 s, grace 1 s (for planning only:
# at the defaults the long kinds take ~20% longer).
COST = {'partition-short': 6, 'partition-long': 14, 'sigstop': 14,
        'kill-restart-fast': 5, 'kill-restart-slow': 20,
        'etcd-leader-kill': 8, 'etcd-leader-stop': 7,
        'lease-break-force': 6, 'rename-after-takeover': 18,
        'delete-after-takeover': 18}


@dataclasses.dataclass
class Fault:
    """One injected fault."""

    kind: str
    hosts: list
    start: float
    end: float | None = None
    detail: dict = dataclasses.field(default_factory=dict)


class Faults:
    """Injects faults one at a time; knows which hosts are faulty."""

    def __init__(self, topo, workload, rng):
        self.topo, self.wl, self.rng = topo, workload, rng
        self.ttl, self.grace = topo.ttl, topo.grace
        self.long = self.ttl + self.grace + 3  # past expiry + grace
        self.done = []
        self.current = None
        self._faulty = {}  # host -> until (time), None while in progress
        self.mutex = threading.Lock()
        self.stopped, self.killed, self.cut = set(), set(), set()
        # Hosts a SIMULATED watchdog reset, their daemon not yet rebooted.
        self.reset_down = set()
        self._starting = threading.Lock()
        self.reboot_errors = []
        for dog in topo.watchdogs.values():
            dog.on_reset.append(self._on_reset)
            dog.also_devices.append(workload.devices_of)
            dog.after_reset.append(self._after_reset)

    def faulty(self):
        """Hosts in a fault, or recovering from one (settle time)."""
        now = time.time()
        with self.mutex:
            return {h for h, until in self._faulty.items()
                    if until is None or until > now}

    def _mark(self, hosts, until=None):
        with self.mutex:
            for h in hosts:
                self._faulty[h] = until

    def plan(self, duration, rng, only=None):
        """Kinds to inject: each once (a short duration is overrun), then
        random ones while the duration lasts (``only``: these kinds)."""
        kinds = list(only or KINDS)
        rng.shuffle(kinds)
        out, budget = list(kinds), duration
        budget -= sum(COST[k] + 4 for k in kinds)
        while budget > 20:
            k = rng.choice(only or KINDS)
            out.append(k)
            budget -= COST[k] + 4
        return out

    def inject(self, kind):
        """Run one fault to its end (heal, SIGCONT, restart)."""
        fault = Fault(kind, [], time.time())
        self.current = fault
        try:
            getattr(self, '_' + kind.replace('-', '_'))(fault)
        finally:
            fault.end = time.time()
            self._mark(fault.hosts, fault.end + self.ttl + self.grace + 2)
            for h in fault.hosts:
                self.wl.retire(h, self.ttl + self.grace + 2)
            self.done.append(fault)
            self.current = None
        return fault

    # -- SIMULATED watchdog resets: a reset host is a rebooted host --

    def _on_reset(self, host):
        """Devices read-only, daemon killed: the host's VMs die too."""
        self._mark([host])
        with self.mutex:
            self.reset_down.add(host)
        self.wl.host_reset(host)

    def _after_reset(self, host):
        """Reboot now, unless the host's own fault is still on: then its
        end (recover_all) does."""
        cur = self.current
        if cur is not None and host in cur.hosts:
            return
        threading.Thread(target=self._reboot, args=(host,),
                         name=f'reboot-{host}', daemon=True).start()

    def _reboot(self, host):
        try:
            self.start(host)
        except Exception as exc:  # reported as a harness error
            self.reboot_errors.append(f'reboot {host}: {exc}')

    def start(self, host, attempts=3):
        """Start ``host``'s daemon unless it runs; a SIMULATED watchdog
        reset during the start is one more reboot: start again."""
        dog = self.topo.watchdogs.get(host)
        with self._starting:
            for attempt in range(attempts):
                d = self.topo.daemon(host)
                if d.proc is not None and d.proc.poll() is None:
                    break
                seen = len(dog.resets) if dog else 0
                if dog:
                    dog.settled()  # a reset in progress finishes first
                try:
                    self.topo.cluster.restart(host)
                    break
                except RuntimeError:
                    if dog:
                        # A reset that killed this start holds its lock
                        # until it is counted.
                        dog.settled()
                    if dog is None or len(dog.resets) == seen or \
                            attempt == attempts - 1:
                        raise
        with self.mutex:
            self.reset_down.discard(host)
        if host not in (self.current.hosts if self.current else ()):
            self._mark([host], time.time() + self.ttl + self.grace + 2)

    def recover_all(self):
        """Undo whatever a fault left (also after an exception)."""
        for h in list(self.cut):
            self.topo.heal(h)
            self.cut.discard(h)
        for h in list(self.stopped):
            self.topo.daemon(h).kill(signal.SIGCONT)
            self.stopped.discard(h)
        for m in self.topo.etcd.members:
            if m.proc and m.proc.poll() is None:
                m.send(signal.SIGCONT)
            elif m.proc is not None:
                self.topo.etcd.restart(m)
        for h in list(self.killed):
            self.start(h)
            self.killed.discard(h)
        with self.mutex:
            down = sorted(self.reset_down)
        for h in down:
            self.start(h)

    # -- helpers --

    def _victim(self, fault, pool=None):
        pool = pool or self.topo.computes
        with self.mutex:
            up = [h for h in pool if h not in self.reset_down]
        host = self.rng.choice(up or pool)
        fault.hosts.append(host)
        self._mark([host])
        return host

    def _held(self, host):
        """An LV held (exclusively) by ``host`` with a running writer,
        claimed; activates a fresh one there if needed."""
        # Contiguous: the loop backend could not map it on the taker.
        lv = self.wl.claim(lambda lv: list(lv.holders) == [host] and
                           lv.contiguous)
        if lv is None:
            lv = self.wl.claim(lambda lv: not lv.holders and
                               lv.contiguous) or self.wl.create()
            if lv is None:
                return None
            if self.wl.activate(lv, host, kind='activate') is None:
                self.wl.release(lv)
                return None
        return lv

    def _takeover(self, fault, lv, host):
        res = self.wl.takeover(lv, host, wait=self.ttl + self.grace + 30)
        fault.detail.update(lv=lv.name, uuid=lv.uuid, taken_by=res and
                            res['host'], token=res and res['token'])
        return res

    def _until(self, start, seconds):
        left = start + seconds - time.time()
        if left > 0:
            time.sleep(left)  # the fault's own duration, nothing to wait on

    # -- kinds --

    def _partition_short(self, fault):
        host = self._victim(fault, self.topo.hosts)
        d = self.rng.uniform(0.7, 0.95) * self.ttl
        fault.detail['seconds'] = round(d, 2)
        self.topo.cut(host)
        self.cut.add(host)
        time.sleep(d)
        self.topo.heal(host)
        self.cut.discard(host)

    def _partition_long(self, fault, then=None):
        host = self._victim(fault)
        lv = self._held(host)
        start = time.time()
        self.topo.cut(host)
        self.cut.add(host)
        try:
            if lv is not None:
                if self._takeover(fault, lv, host) and then:
                    then(fault, lv)
            self._until(start, self.long)
        finally:
            if lv is not None:
                self.wl.release(lv)
            self.topo.heal(host)
            self.cut.discard(host)

    def _sigstop(self, fault):
        host = self._victim(fault)
        lv = self._held(host)
        d = self.topo.daemon(host)
        start = time.time()
        d.kill(signal.SIGSTOP)
        self.stopped.add(host)
        try:
            if lv is not None:
                self._takeover(fault, lv, host)
            self._until(start, self.long)
        finally:
            if lv is not None:
                self.wl.release(lv)
            d.kill(signal.SIGCONT)
            self.stopped.discard(host)

    def _kill(self, fault, slow):
        host = self._victim(fault, self.topo.hosts)
        lv = self._held(host) if slow else None
        d = self.topo.daemon(host)
        start = time.time()
        d.kill(signal.SIGKILL)
        d.proc.wait()
        self.killed.add(host)
        try:
            if lv is not None:
                self._takeover(fault, lv, host)
            if slow:
                self._until(start, self.long)
        finally:
            if lv is not None:
                self.wl.release(lv)
            self.start(host)
            self.killed.discard(host)
        fault.detail['restart_after'] = round(time.time() - start, 2)

    def _kill_restart_fast(self, fault):
        self._kill(fault, slow=False)

    def _kill_restart_slow(self, fault):
        self._kill(fault, slow=True)

    def _etcd_leader_kill(self, fault):
        leader = self.topo.etcd.leader()
        fault.detail['member'] = leader.name
        leader.stop(signal.SIGKILL)
        time.sleep(self.rng.uniform(2, 4))
        self.topo.etcd.restart(leader)

    def _etcd_leader_stop(self, fault):
        leader = self.topo.etcd.leader()
        fault.detail['member'] = leader.name
        leader.send(signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(2, 4))
        finally:
            leader.send(signal.SIGCONT)

    def _lease_break_force(self, fault):
        host = self._victim(fault)
        lv = self._held(host)
        if lv is None:
            return
        try:
            ok, shown = self.wl.call('show (break)', host, 'show',
                                     vg=self.wl.vg, lv=lv.name)
            token = ok and next((h['token'] for h in shown['holders']
                                 if h['host'] == host), None)
            if not token:
                return
            out = self.topo.cli('lease', 'break', f'{self.wl.vg}/{lv.name}',
                                '--host', host, '--token', str(token),
                                '--yes-i-really-mean-it', '--force')
            fault.detail.update(lv=lv.name, token=token, rc=out.returncode,
                                stderr=out.stderr.strip()[-300:])
            if out.returncode == 0:
                # The operator's next step: attach it elsewhere at once.
                self._takeover(fault, lv, host)
        finally:
            self.wl.release(lv)

    def _rename_after_takeover(self, fault):
        self._partition_long(fault, then=self._then_rename)

    def _delete_after_takeover(self, fault):
        self._partition_long(fault, then=self._then_delete)

    def _then_rename(self, fault, lv):
        [new] = [h for h in lv.holders if h not in fault.hosts] or [None]
        if new and self.wl.deactivate(lv, new) and self.wl.rename(lv):
            fault.detail['renamed_to'] = lv.name
            self.wl.activate(lv, new)

    def _then_delete(self, fault, lv):
        [new] = [h for h in lv.holders if h not in fault.hosts] or [None]
        if new and self.wl.deactivate(lv, new) and self.wl.delete(lv):
            # A new LV is likely to get the freed extents.
            fresh = self.wl.create()
            if fresh is not None:
                fault.detail['new_lv'] = fresh.name
                self.wl.activate(fresh, new)
                self.wl.release(fresh)
