"""Worker supervision for lvmcoordd: a worker that keeps dying stops the
whole daemon with exit status 1.

cotyledon respawns dead workers forever, so a broken worker used to
crash-loop while the others kept serving, which is unsafe when it is the
fencer (an API granting LVs nobody fences). Systemd restarts the stopped
daemon, which resumes its session within the TTL.

Policy: the fencer dying once (crash or signal) stops the daemon; any
worker stops it after DEATH_LIMIT deaths within DEATH_WINDOW seconds.
"""
import collections
import logging
import time

import cotyledon

LOG = logging.getLogger(__name__)

FATAL_AT_FIRST_DEATH = ('fencer',)
DEATH_LIMIT = 3
DEATH_WINDOW = 60.0


class DeathPolicy:
    """Decides whether a worker's death must stop the daemon."""

    def __init__(self, fatal=FATAL_AT_FIRST_DEATH, limit=DEATH_LIMIT,
                 window=DEATH_WINDOW, clock=time.monotonic):
        self.fatal, self.limit, self.window = fatal, limit, window
        self.clock = clock
        self._deaths = collections.defaultdict(collections.deque)

    def record(self, name, exit_code):
        """The reason to stop the daemon after this death, or None."""
        now = self.clock()
        deaths = self._deaths[name]
        deaths.append(now)
        while deaths and deaths[0] < now - self.window:
            deaths.popleft()
        how = f'exit status {exit_code}' if exit_code >= 0 else \
            f'signal {-exit_code}'
        # Status 0 is an orderly stop (SIGTERM, e.g. systemd stopping the
        # whole group before the master): counted, never fatal at once.
        if name in self.fatal and exit_code != 0:
            return f'worker {name} died ({how}); no {name}, no service'
        if len(deaths) >= self.limit:
            return (f'worker {name} died {len(deaths)} times in '
                    f'{self.window:g} s (last: {how})')
        return None


class Manager(cotyledon.ServiceManager):
    """A cotyledon ServiceManager that applies a DeathPolicy."""

    def __init__(self, *args, policy=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy or DeathPolicy()
        self.failure = None
        self._names = {}
        self.register_hooks(on_dead_worker=self._on_dead_worker)

    def add(self, service, *args, **kwargs):
        """Add a service, remembering its name for the policy."""
        service_id = super().add(service, *args, **kwargs)
        self._names[service_id] = getattr(service, 'name', service.__name__)
        return service_id

    def _on_dead_worker(self, service_id, worker_id, exit_code):
        name = self._names.get(service_id, str(service_id))
        reason = self.policy.record(name, exit_code)
        if reason is None:
            LOG.warning('worker %s died (exit code %s); respawning', name,
                        exit_code)
            return
        self.failure = reason
        LOG.critical('%s: stopping lvmcoordd', reason)
        # Returns once the master is stopping, so the dead worker is not
        # respawned in the meantime (cotyledon checks that first).
        self.shutdown()

    def run(self):
        """Run the workers; exit status 1 if the policy stopped them."""
        try:
            super().run()
        except SystemExit as exc:
            if self.failure is not None:
                raise SystemExit(1) from exc
            raise
