"""Options of the daemon (lvmcoordd) beyond the engine's."""
from oslo_config import cfg

lvm_opts = [
    cfg.ListOpt('volume_groups', default=[],
                help='Shared VGs this host coordinates.'),
    cfg.StrOpt('system_dir',
               help='LVM_SYSTEM_DIR for LVM commands (its lvm.conf should '
                    'filter devices to the shared LU).'),
    cfg.StrOpt('activation_backend', default='auto',
               choices=['auto', 'lvm', 'loop'],
               help='lvm: lvchange + dmsetup (production). loop: loop '
                    'devices over LV extents, for kernels without '
                    'device-mapper. auto: lvm if device-mapper exists.'),
    cfg.StrOpt('loop_dev_dir', default='/run/lvmcoord/dev',
               help='Where the loop backend links VG/LV device paths.'),
    cfg.IntOpt('command_timeout', default=120, min=1,
               help='Seconds before an LVM command is killed.'),
]

fence_opts = [
    cfg.StrOpt('action', default='suspend',
               choices=['suspend', 'deactivate', 'none'],
               help='How I/O is stopped when the session may be lost: '
                    'suspend (I/O queues, resumed if the session turns '
                    'out valid) or deactivate (devices not open).'),
    cfg.FloatOpt('fraction', default=0.6, min=0.1, max=0.9,
                 help='Fence once this fraction of the TTL may have passed '
                      'without a keepalive reaching etcd. The default '
                      'rides out an etcd leader election (doc/design.md).'),
    cfg.FloatOpt('interval', default=0.5, min=0.05,
                 help='Seconds between the fencer\'s own session checks.'),
    cfg.BoolOpt('on_stop', default=True,
                help='Fence active LVs when the daemon stops; a restart '
                     'within the TTL resumes them. Without it, a daemon '
                     'stopped for longer than TTL + grace leaves LVs '
                     'active that other hosts may be granted.'),
    cfg.StrOpt('watchdog_device',
               help='Watchdog device (e.g. /dev/watchdog) petted only '
                    'while the session is provably valid and an LV is '
                    'active: a hung or dead daemon resets the host before '
                    'another host can be granted its LVs. Required for '
                    'production (doc/design.md).'),
    cfg.BoolOpt('realtime', default=True,
                help='Run the fencer and the session worker under SCHED_RR '
                     'with their pages locked (as sanlock does), so load '
                     'or memory pressure cannot delay a fence, a keepalive '
                     'or a watchdog pet.'),
    cfg.BoolOpt('watchdog_simulated', default=False,
                help='Test sandboxes only: watchdog_device is a regular '
                     'file whose writes a supervisor process watches, and '
                     'that supervisor "resets" the simulated host. Never '
                     'in production.'),
    cfg.IntOpt('watchdog_timeout', default=5, min=1,
               help='Watchdog timeout in seconds; fraction * TTL + this '
                    '+ 1 must not exceed TTL + grace. Read back from the '
                    'driver at start: a driver that rejects it or applies '
                    'a value breaking that bound refuses the start.'),
    cfg.BoolOpt('allow_no_watchdog', default=False,
                help='Let the lvm backend start without a watchdog_device '
                     '(and without a storage fence): a hung or dead daemon '
                     'then leaves its devices writable and its metadata '
                     'commands running after other hosts take over. '
                     'Logged at every start and shown by lvmcoord doctor '
                     'and host list. The loop backend (sandbox) needs no '
                     'watchdog.'),
    cfg.StrOpt('storage', default='none', choices=['none', 'scsi-pr'],
               help='Fence at the storage too: scsi-pr registers a key per '
                    'daemon incarnation on every path of the shared LU '
                    '(SCSI-3 persistent reservations) and removes a dead '
                    'holder\'s key before its LVs are granted elsewhere '
                    '(doc/design.md, "The storage fence"). Every host of a '
                    'cluster must use the same mode.'),
    cfg.ListOpt('storage_devices', default=[],
                help='The shared LU as this host sees it (a dm-multipath '
                     'map or a SCSI disk) for storage = scsi-pr.'),
    cfg.ListOpt('storage_volume_groups', default=[],
                help='The VGs whose PVs are all on storage_devices (the '
                     'storage fence shortens their takeovers only); '
                     'empty: every VG of [lvm] volume_groups.'),
    cfg.StrOpt('storage_reservation', default='wero',
               choices=['wero', 'wear'],
               help='Reservation type: Write Exclusive, Registrants Only '
                    '(wero: preempting the holder hands the reservation '
                    'to the preempter) or All Registrants (wear; tgtd '
                    'mishandles preempting its holder).'),
]

api_opts = [
    cfg.StrOpt('socket_path', default='/run/lvmcoord/lvmcoord.sock',
               help='Unix socket of the local API.'),
    cfg.StrOpt('socket_group',
               help='Group allowed to use the socket (besides root).'),
    cfg.IntOpt('request_workers', default=4, min=1,
               help='Requests from other hosts run this many at a time.'),
    cfg.IntOpt('max_connections', default=64, min=1,
               help='Local API connections served at once; beyond this a '
                    'client gets a "busy" error and is disconnected.'),
    cfg.FloatOpt('idle_timeout', default=60.0, min=1.0,
                 help='Seconds a local API connection may stay silent '
                      '(no complete request line) before it is closed.'),
]

metrics_opts = [
    cfg.PortOpt('port', default=0,
                help='Prometheus metrics port; 0 disables.'),
    cfg.HostAddressOpt('address', default='127.0.0.1',
                       help='Address the metrics server binds.'),
]

GROUPS = {'lvm': lvm_opts, 'fence': fence_opts, 'api': api_opts,
          'metrics': metrics_opts}
