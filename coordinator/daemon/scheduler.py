"""Scheduler: the threads routed requests run on, shared fairly between
the hosts that send them (coordinator/daemon/routing.py admits them)."""
import collections
import concurrent.futures
import logging
import threading

LOG = logging.getLogger(__name__)


class Scheduler:
    """Claimed requests run on ``workers`` threads, oldest first, at most
    ``per_caller`` of one caller at a time; at most ``queue_size`` wait
    (a quarter of that per caller), so no caller can take every worker
    or every queue slot."""

    def __init__(self, workers, per_caller, queue_size):
        self.workers = workers
        self.per_caller = min(per_caller, workers)
        self.queue_size = queue_size
        self.caller_queue = max(1, queue_size // 4)
        self.pending = collections.deque()
        self.running = collections.Counter()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)
        self._mutex = threading.Lock()

    def submit(self, job, fn):
        """Queue ``fn``; a refusal message if the queue is full."""
        with self._mutex:
            if len(self.pending) >= self.queue_size:
                return (f'{len(self.pending)} requests already queued here '
                        f'(limit {self.queue_size}); retry later')
            mine = sum(1 for j, _ in self.pending if j.caller == job.caller)
            if mine >= self.caller_queue:
                return (f'{mine} requests from {job.caller} already queued '
                        f'here (limit {self.caller_queue} per caller); '
                        f'retry later')
            self.pending.append((job, fn))
            self._dispatch()
        return None

    def _dispatch(self):
        while sum(self.running.values()) < self.workers:
            pick = next((e for e in self.pending
                         if self.running[e[0].caller] < self.per_caller),
                        None)
            if pick is None:
                return
            self.pending.remove(pick)
            self.running[pick[0].caller] += 1
            self._pool.submit(self._run, *pick)

    def _run(self, job, fn):
        try:
            fn()
        except Exception:
            LOG.exception('request %s from %s failed', job.op, job.caller)
        finally:
            with self._mutex:
                self.running[job.caller] -= 1
                if not self.running[job.caller]:
                    del self.running[job.caller]
                self._dispatch()

    def busy(self):
        """(running, queued) counts."""
        with self._mutex:
            return sum(self.running.values()), len(self.pending)

    def shutdown(self):
        """Stop taking work; the jobs that never started."""
        with self._mutex:
            left = [job for job, _ in self.pending]
            self.pending.clear()
        self._pool.shutdown(wait=True)
        return left
