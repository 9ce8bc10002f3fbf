"""Concurrent lvcreate from simulated hosts, with and without the lock."""
import threading

from coordinator import errors

LV_SIZE = 4 << 20


class Race:
    """Rounds in which every simulated host creates one LV at once."""

    def __init__(self, shared, rounds, create):
        # create(host_index, lv) does the work; its errors are collected.
        self.shared = shared
        self.rounds = rounds
        self.create = create
        self.failures = []
        self.expected = [f'r{r:02d}h{h}' for r in range(rounds)
                         for h in range(len(shared.hosts))]

    def _worker(self, host, barrier, stop):
        for r in range(self.rounds):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            if stop.is_set():
                return
            try:
                self.create(host, f'r{r:02d}h{host}')
            except Exception as exc:
                self.failures.append(f'{type(exc).__name__}: {exc}')

    def run(self):
        """Run every round; returns self with the outcome filled in."""
        n = len(self.shared.hosts)
        barrier = threading.Barrier(n, timeout=300)
        stop = threading.Event()
        threads = [threading.Thread(target=self._worker,
                                    args=(h, barrier, stop), daemon=True)
                   for h in range(n)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            # On Ctrl-C: no new round, let running commands finish before
            # the VG is torn down under them.
            stop.set()
            barrier.abort()
            for t in threads:
                t.join(timeout=120)
        return self

    def outcome(self):
        """Expected, present and lost LVs, VG read error, failed calls."""
        try:
            present = set(self.shared.lv_names(0))
            unreadable = None
        except errors.LVMError as exc:
            present, unreadable = set(), str(exc)[:300]
        found = sum(1 for lv in self.expected if lv in present)
        return {'expected': len(self.expected), 'present': found,
                'lost': len(self.expected) - found,
                'unreadable': unreadable,
                'failed_commands': len(self.failures)}


def without_lock(shared, rounds):
    """The race with plain LVM: every host just runs lvcreate."""
    vg = shared.vg

    def create(host, lv):
        shared.hosts[host].lvm.create_lv(vg, lv, LV_SIZE)
    return Race(shared, rounds, create).run()


def with_lock(shared, rounds, engines, read_seqno):
    """The race with each lvcreate in its host's MetadataGuard.change."""
    vg = shared.vg
    guards = [e.guard(read_seqno) for e in engines]

    def create(host, lv):
        lvm = shared.hosts[host].lvm
        guards[host].change(vg, f'lvcreate {vg}/{lv}',
                            lambda: lvm.create_lv(vg, lv, LV_SIZE))
    return Race(shared, rounds, create).run()
