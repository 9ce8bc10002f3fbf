"""Tempest configuration options of the lvmcoord plugin."""
from oslo_config import cfg

service_option = cfg.BoolOpt(
    'lvmcoord', default=False,
    help='Whether lvmcoord (the Cinder backend on a shared LVM VG, with '
         'lvmcoordd on every volume and compute host) is deployed.')

lvmcoord_group = cfg.OptGroup(
    name='lvmcoord', title='lvmcoord shared-LU LVM backend options')

LvmcoordGroup = [
    cfg.StrOpt('volume_type',
               help='Volume type whose backend is the lvmcoord driver. '
                    'Unset: the cloud\'s default volume type.'),
    cfg.BoolOpt('run_multinode_tests', default=False,
                help='Run the tests that move volumes between compute '
                     'hosts. They still skip themselves when fewer than '
                     'two compute hosts are up.'),
    cfg.BoolOpt('snapshot_in_use', default=True,
                help='Feature flag: snapshots of in-use volumes are '
                     'supported (the driver takes them on the host where '
                     'the volume is active).'),
    cfg.IntOpt('volume_size', default=1, min=1,
               help='Size in GiB of the volumes the tests create.'),
    cfg.IntOpt('data_size_mb', default=8, min=1,
               help='MiB of random data written and verified inside the '
                    'guests.'),
]
