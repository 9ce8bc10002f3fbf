"""The clients a bench compares: the engine, raw etcd3gw, tooz."""
from urllib import parse

import etcd3gw

from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine

CLUSTER = 'bench'


def engine(endpoints, host, ttl=10):
    """An opened Engine for simulated host ``host``."""
    etcd = etcdlib.Etcd(endpoints, timeout=5.0, retry_window=10.0)
    return Engine(etcd, host, CLUSTER, ttl=ttl, grace=1.0,
                  lock_timeout=60.0).open()


def stock_etcd3gw(endpoint):
    """An etcd3gw client exactly as etcd3gw builds it by default."""
    url = parse.urlsplit(endpoint)
    return etcd3gw.client(host=url.hostname, port=url.port)


def engine_etcd3gw(endpoint):
    """An etcd3gw client with the engine's HTTP session settings."""
    return etcdlib.etcdgw_client(parse.urlsplit(endpoint), {}, 5.0)


def tooz_url(endpoint):
    """The tooz etcd3gw driver URL of ``endpoint``."""
    url = parse.urlsplit(endpoint)
    return f'etcd3+http://{url.hostname}:{url.port}'


def tooz(endpoint, member):
    """A started tooz coordinator (etcd3gw driver) named ``member``."""
    from tooz import coordination
    coord = coordination.get_coordinator(tooz_url(endpoint),
                                         member.encode())
    coord.start()
    return coord
