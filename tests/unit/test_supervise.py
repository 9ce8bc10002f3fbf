"""Worker supervision: a dying fencer, or a worker that keeps dying, stops
the whole daemon with exit status 1 (coordinator.daemon.supervise)."""
import subprocess
import sys
import textwrap

from coordinator.daemon import supervise

# A real cotyledon master (one per process, so in a child process) with one
# worker that dies as soon as it runs.
SCRIPT = textwrap.dedent('''
    import os, sys
    import cotyledon
    from coordinator.daemon import supervise

    class Worker(cotyledon.Service):
        name = sys.argv[1]

        def run(self):
            os._exit(3)

    manager = supervise.Manager(policy=supervise.DeathPolicy(
        limit=int(sys.argv[2]), window=600))
    manager.add(Worker, workers=1)
    manager.run()
''')


def run_manager(name, limit, timeout=60):
    return subprocess.run([sys.executable, '-c', SCRIPT, name, str(limit)],
                          capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def test_fencer_death_stops_the_daemon():
    done = run_manager('fencer', limit=100)
    assert done.returncode == 1, done.stderr[-2000:]


def test_worker_dying_repeatedly_stops_the_daemon():
    done = run_manager('api', limit=2)
    assert done.returncode == 1, done.stderr[-2000:]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_policy_counts_deaths_in_a_window():
    clock = Clock()
    policy = supervise.DeathPolicy(limit=3, window=60, clock=clock)
    assert policy.record('api', 1) is None
    clock.now = 50
    assert policy.record('api', -9) is None
    clock.now = 70                  # the first death left the window
    assert policy.record('api', 1) is None
    clock.now = 80
    reason = policy.record('api', 2)
    assert reason == 'worker api died 3 times in 60 s (last: exit status 2)'
    assert policy.record('requests', 1) is None


def test_policy_fencer_is_fatal_at_once():
    reason = supervise.DeathPolicy().record('fencer', -9)
    assert reason == 'worker fencer died (signal 9); no fencer, no service'


def test_policy_orderly_stop_of_the_fencer_is_not_fatal_at_once():
    # systemd's SIGTERM reaches every worker, maybe before the master.
    policy = supervise.DeathPolicy(limit=2)
    assert policy.record('fencer', 0) is None
    assert policy.record('fencer', 0) == ('worker fencer died 2 times in '
                                          '60 s (last: exit status 0)')
