"""Serial lvcreate under MetadataGuard.change vs plain, on fresh VGs."""
import statistics
import time

from bench import stats
from coordinator.sandbox.race import LV_SIZE


class Timed:
    """A callable wrapper adding up the time spent in it."""

    def __init__(self, fn):
        self.fn = fn
        self.total = 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.total += time.perf_counter() - start


class Creator:
    """Creates the next LV of one VG per call, plain or guarded."""

    # Guarded calls also note the time spent in lvcreate and read_seqno.

    def __init__(self, shared, engine=None, read_seqno=None):
        self.shared = shared
        self.lvm = shared.hosts[0].lvm
        self.reader = Timed(read_seqno) if read_seqno else None
        self.guard = engine.guard(self.reader) if engine else None
        self.count = 0
        self.parts = {'lvcreate': [], 'read_seqno': [], 'total': []}

    def __call__(self):
        vg, lv = self.shared.vg, f's{self.count:03d}'
        self.count += 1
        start = time.perf_counter()
        if self.guard is None:
            self.lvm.create_lv(vg, lv, LV_SIZE)
            return
        self.reader.total = 0.0
        action = Timed(lambda: self.lvm.create_lv(vg, lv, LV_SIZE))
        self.guard.change(vg, f'lvcreate {vg}/{lv}', action)
        self.parts['lvcreate'].append(action.total)
        self.parts['read_seqno'].append(self.reader.total)
        self.parts['total'].append(time.perf_counter() - start)

    def breakdown(self):
        """Median seconds per change: lvcreate, read_seqno, etcd+engine."""
        p = self.parts
        if not p['total']:
            return {}
        rest = [t - a - s for t, a, s in zip(p['total'], p['lvcreate'],
                                             p['read_seqno'], strict=True)]
        return {'lvcreate': statistics.median(p['lvcreate']),
                'read_seqno': statistics.median(p['read_seqno']),
                'etcd_and_engine': statistics.median(rest)}


def run(creators, batches, per_batch):
    """Interleave the creators (name -> Creator); per-call samples."""
    return stats.interleave(creators, batches, per_batch, warmup=3)
