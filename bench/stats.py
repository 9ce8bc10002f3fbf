"""Sample statistics and interleaved timing of competing variants."""
import dataclasses
import statistics
import time


def percentile(samples, pct):
    """Nearest-rank percentile of ``samples`` (``pct`` in 0..100)."""
    ordered = sorted(samples)
    if not ordered:
        return float('nan')
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


@dataclasses.dataclass
class Summary:
    """Median, p99 and count of a list of durations in seconds."""

    median: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples):
        """Summarise ``samples`` (seconds)."""
        if not samples:
            return cls(float('nan'), float('nan'), 0)
        return cls(statistics.median(samples), percentile(samples, 99),
                   len(samples))

    def ms(self):
        """The figures as a JSON-able dict in milliseconds."""
        return {'median_ms': round(self.median * 1e3, 3),
                'p99_ms': round(self.p99 * 1e3, 3), 'n': self.n}


def interleave(variants, batches, per_batch, warmup=5):
    """Per-call seconds of each ``variants`` callable, batches rotated."""
    # Short batches in rotating order: machine noise hits every variant
    # alike, which makes ratios measured in one run meaningful.
    names = list(variants)
    samples = {name: [] for name in names}
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    for b in range(batches):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            fn, out = variants[name], samples[name]
            for _ in range(per_batch):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return samples


def ratio(a, b):
    """``a / b``, NaN when ``b`` is zero or missing."""
    return a / b if b else float('nan')
