"""Prometheus metrics of the daemon (multi-process safe via
PROMETHEUS_MULTIPROC_DIR, as cotyledon workers are processes).

With ``[metrics] port = 0`` (the default) nobody can read them: the names
below are then no-op stand-ins and prometheus_client is never imported
(44 modules, 3 MB in each of the daemon's four processes). lvmcoordd
calls enable() before its workers fork when a port is set.
"""
import contextlib
import os


class _Off:
    """A metric nobody reads: every call does nothing."""

    def labels(self, **_):
        return self

    def inc(self, amount=1):
        pass

    def set(self, value):
        pass

    def time(self):
        return contextlib.nullcontext()


LOCK_WAIT = GRANTS = RELEASES = FENCES = KEEPALIVE = QUEUE_DEPTH = _Off()
PREEMPTS = EVENTS = SESSION_UP = GRANT_FAILURES = _Off()
WATCHDOG_ARMED = PETS_WITHHELD = MEMBER = MEMBERS = _Off()
_enabled = False
# Event kinds the alert rules (etc/prometheus) count.
ALERTED_EVENTS = ('fenced', 'session-lost', 'session-reopened',
                  'storage-fenced', 'out-of-band-change', 'history-rewound')


def enable():
    """Record metrics from now on (the real prometheus_client ones)."""
    global LOCK_WAIT, GRANTS, RELEASES, FENCES, KEEPALIVE, QUEUE_DEPTH
    global PREEMPTS, EVENTS, SESSION_UP, GRANT_FAILURES, WATCHDOG_ARMED
    global PETS_WITHHELD, MEMBER, MEMBERS, _enabled
    if _enabled:
        return
    import prometheus_client as prom
    LOCK_WAIT = prom.Histogram(
        'lvmcoord_vg_lock_seconds',
        'Time to run a metadata change under the VG lock, waiting included')
    GRANTS = prom.Counter('lvmcoord_grants', 'Activation leases granted',
                          ['mode'])
    RELEASES = prom.Counter('lvmcoord_releases',
                            'Activation leases released')
    FENCES = prom.Counter('lvmcoord_fences', 'Fencing actions taken')
    PREEMPTS = prom.Counter('lvmcoord_storage_preempts',
                            'Storage fences: keys preempted, by result',
                            ['result'])
    KEEPALIVE = prom.Gauge('lvmcoord_keepalive_seconds',
                           'Round trip of the last session keepalive',
                           multiprocess_mode='livemax')
    QUEUE_DEPTH = prom.Gauge('lvmcoord_vg_lock_queue_depth',
                             'Entries queued on the VG lock', ['vg'],
                             multiprocess_mode='livemax')
    EVENTS = prom.Counter('lvmcoord_events',
                          'Events published to `lvmcoord events`, by kind',
                          ['kind'])
    SESSION_UP = prom.Gauge('lvmcoord_session_up',
                            '1 while the fencer holds the session provably '
                            'valid, 0 once it fenced or lost it',
                            multiprocess_mode='livemax')
    GRANT_FAILURES = prom.Counter('lvmcoord_grant_failures',
                                  'Activations refused or failed here, '
                                  'by error', ['reason'])
    WATCHDOG_ARMED = prom.Gauge('lvmcoord_watchdog_armed',
                                '1 while the watchdog is armed',
                                multiprocess_mode='livemax')
    PETS_WITHHELD = prom.Counter('lvmcoord_watchdog_pets_withheld',
                                 'Fencer ticks that left the armed '
                                 'watchdog unpetted')
    MEMBER = prom.Gauge('lvmcoord_membership_member',
                        '1 if this daemon sees the host in membership, '
                        '0 once it left', ['member'],
                        multiprocess_mode='livemax')
    MEMBERS = prom.Gauge('lvmcoord_membership_hosts',
                         'Hosts this daemon sees in membership',
                         multiprocess_mode='livemax')
    # Series alerted on exist from the start at 0, so that the first
    # event is an increase Prometheus sees (not a new series at 1).
    for kind in ALERTED_EVENTS:
        EVENTS.labels(kind=kind)
    for result in ('proven', 'unproven', 'failed'):
        PREEMPTS.labels(result=result)
    from coordinator import errors
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.CoordError):
            GRANT_FAILURES.labels(reason=name)
    _enabled = True


def serve(port, address='127.0.0.1'):
    """Expose every worker's metrics on address:port."""
    enable()
    import prometheus_client as prom
    if os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
        from prometheus_client import multiprocess
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prom.REGISTRY
    prom.start_http_server(port, addr=address, registry=registry)
