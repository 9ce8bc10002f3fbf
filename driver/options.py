"""oslo.config options of the Cinder backend section for lvmcoord."""
from oslo_config import cfg

DEFAULT_SOCKET = '/run/lvmcoord/lvmcoord.sock'
# lvm_type values that mean thick LVs ('auto' is Cinder's default: for the
# stock driver it picks thin when it can; here thick is the only choice).
THICK_TYPES = ('default', 'thick', 'auto')

driver_opts = [
    cfg.StrOpt('lvmcoord_socket_path', default=DEFAULT_SOCKET,
               help='Unix socket of the local lvmcoordd. Every LVM action '
                    'of the driver goes through this daemon.'),
    cfg.BoolOpt('lvmcoord_enable_multiattach', default=False,
                help='Report multiattach support and activate multiattach '
                     'volumes in shared mode on every attached host. Only '
                     'for workloads that coordinate their own writes '
                     '(cluster file systems).'),
    cfg.IntOpt('lvmcoord_attach_timeout', default=60, min=0, max=600,
               help='Seconds initialize_connection waits for a volume '
                    'whose previous holder lost its session to be fenced '
                    'and become grantable (TTL + grace on the daemons).'),
    cfg.DictOpt('lvmcoord_host_map', default={},
                help='Nova host names (connector host, i.e. nova-compute '
                     'CONF.host) to lvmcoord host names ([DEFAULT] host of '
                     'lvmcoord.conf), as nova-host:lvmcoord-host,... Only '
                     'needed when the names differ by more than short name '
                     'vs FQDN, which is matched without it.'),
]

# Also options of Cinder's LVM driver, which registers them in
# [backend_defaults] when it is imported: ours go to the backend section
# only, so neither driver can break the other's registration.
lvm_opts = [
    cfg.StrOpt('volume_group', default='cinder-volumes',
               help='Shared VG holding the volumes; lvmcoordd must manage '
                    'it.'),
    cfg.StrOpt('lvm_type', default='default',
               help='Thick LVs only ("default" or "thick"): a thin pool '
                    'cannot be active on several hosts.'),
]

backend_opts = driver_opts + lvm_opts


def register(configuration):
    """Register the options for one backend's Cinder Configuration."""
    configuration.append_config_values(driver_opts)
    for opt in lvm_opts:
        try:
            cfg.CONF.register_opt(opt, group=configuration.config_group)
        except cfg.DuplicateOptError:
            # Already there (Cinder's own definition): reuse it.
            pass


def list_opts():
    """Entry point for oslo-config-generator (namespace lvmcoord.driver)."""
    # Listed under the backend section's usual name (enabled_backends).
    return [('lvmcoord', backend_opts)]
