"""Prometheus metrics of the daemon (multi-process safe via
PROMETHEUS_MULTIPROC_DIR, as cotyledon workers are processes)."""
import os

import prometheus_client as prom

LOCK_WAIT = prom.Histogram(
    'lvmcoord_vg_lock_seconds',
    'Time to run a metadata change under the VG lock, waiting included')
GRANTS = prom.Counter('lvmcoord_grants', 'Activation leases granted',
                      ['mode'])
RELEASES = prom.Counter('lvmcoord_releases', 'Activation leases released')
FENCES = prom.Counter('lvmcoord_fences', 'Fencing actions taken')
KEEPALIVE = prom.Gauge('lvmcoord_keepalive_seconds',
                       'Round trip of the last session keepalive',
                       multiprocess_mode='livemax')
QUEUE_DEPTH = prom.Gauge('lvmcoord_vg_lock_queue_depth',
                         'Entries queued on the VG lock', ['vg'],
                         multiprocess_mode='livemax')


def serve(port, address='127.0.0.1'):
    """Expose every worker's metrics on address:port."""
    if os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
        from prometheus_client import multiprocess
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prom.REGISTRY
    prom.start_http_server(port, addr=address, registry=registry)
