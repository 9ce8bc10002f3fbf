"""Configuration options: one place for etcd, tooz and the daemon."""
import socket

from oslo_config import cfg

from coordinator.daemon import opts as daemon_opts

default_opts = [
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<hostname>',
               help='Name of this host; must match Nova/Cinder "host".'),
    cfg.StrOpt('cluster', default='default',
               help='Cluster name; hosts sharing a VG share a cluster.'),
]

etcd_opts = [
    cfg.ListOpt('endpoints', default=['http://127.0.0.1:2379'],
                help='etcd client URLs, tried in order; on failure the '
                     'next one is used.'),
    cfg.StrOpt('ca_file', help='CA bundle to verify etcd (https only).'),
    cfg.StrOpt('cert_file', help='Client certificate for etcd.'),
    cfg.StrOpt('key_file', help='Client private key for etcd.'),
    cfg.StrOpt('username',
               help='etcd user (etcd auth and RBAC). Needed whenever etcd '
                    'has auth enabled, client certificates or not: etcd\'s '
                    'HTTP gateway never takes a certificate CN as the user '
                    '(doc/security.md). Used by the engine and by tooz '
                    'alike.'),
    cfg.StrOpt('password', secret=True,
               help='Password of the etcd user [etcd] username.'),
    cfg.FloatOpt('timeout', default=5.0, min=0.1,
                 help='Seconds before one etcd request is given up and the '
                      'next endpoint is tried.'),
    cfg.FloatOpt('retry_window', default=15.0, min=0.0,
                 help='Seconds an operation keeps retrying across endpoints '
                      '(covers a leader election).'),
    cfg.StrOpt('prefix', default='/lvmcoord',
               help='Root of every key lvmcoord writes in etcd.'),
    cfg.FloatOpt('startup_timeout', default=30.0, min=0.0,
                 help='Seconds lvmcoordd waits at start for an etcd '
                      'endpoint to answer (every retry is logged) before '
                      'it exits non-zero.'),
]

session_opts = [
    cfg.IntOpt('ttl', default=10, min=2,
               help='Session (etcd lease) TTL in seconds.'),
    cfg.FloatOpt('keepalive_interval', default=0.0, min=0.0,
                 help='Seconds between keepalives; 0 means TTL/6.'),
    cfg.StrOpt('state_dir', default='/var/lib/lvmcoord',
               help='Where the session id is kept so a restarted daemon '
                    'resumes the same session.'),
    cfg.StrOpt('machine_id',
               help='This machine\'s identity, recorded with the session '
                    'so a second machine configured with the same host '
                    'name is refused (doc/design.md, "Host identity"). '
                    'Default: the content of /etc/machine-id. Set it only '
                    'where several simulated hosts share one machine.'),
]

lock_opts = [
    cfg.FloatOpt('acquire_timeout', default=60.0, min=0.0,
                 help='Seconds to wait for a VG metadata lock.'),
]

lease_opts = [
    cfg.FloatOpt('grace', default=3.0, min=0.0,
                 help='Seconds after a holder\'s session expired before '
                      'its LVs may be granted to another host.'),
]

GROUPS = {
    'etcd': etcd_opts,
    'session': session_opts,
    'lock': lock_opts,
    'lease': lease_opts,
}


def register(conf=None):
    """Register the engine's options on ``conf`` (default: cfg.CONF)."""
    conf = conf or cfg.CONF
    conf.register_opts(default_opts)
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=group)
    for group, opts in daemon_opts.GROUPS.items():
        conf.register_opts(opts, group=group)
    return conf


def list_opts():
    """Entry point for oslo-config-generator."""
    return [(None, default_opts)] + list(GROUPS.items()) + \
        list(daemon_opts.GROUPS.items())
