"""lvmcoordd: the per-host daemon."""
import gc
import os
import shutil
import sys
import tempfile
import warnings

# etcd3gw imports futurist, which imports eventlet (and dnspython) only to
# offer green executors; the daemon runs plain threads. Unimportable here,
# they cost no memory in any of its four processes.
sys.modules.setdefault('eventlet', None)
# requests (etcd3gw's, under tooz) looks for a character-set detector only
# to guess the encoding of a response that declares none, and falls back
# to UTF-8 without one; charset_normalizer imports every codec of the
# standard library to be ready (~120 modules, 3.5 MB in each process). No
# answer is read through requests here (coordinator.engine.etcdhttp reads
# etcd's), so none is imported.
sys.modules.setdefault('charset_normalizer', None)
sys.modules.setdefault('chardet', None)
warnings.filterwarnings('ignore', message='Unable to find acceptable '
                        'character detection dependency')

from oslo_config import cfg  # noqa: E402
from oslo_log import log  # noqa: E402

from coordinator import conf as conflib  # noqa: E402
from coordinator.daemon import checkconf  # noqa: E402

LOG = log.getLogger(__name__)

cli_opts = [
    cfg.BoolOpt('check-config', default=False,
                help='Check every option (etcd must answer within [etcd] '
                     'startup_timeout) and exit: 0 if the configuration '
                     'is good, 1 with the problem on stderr.'),
]


def main(argv=None):
    conf = cfg.ConfigOpts()
    conflib.register(conf)
    log.register_options(conf)
    conf.register_cli_opts(cli_opts)
    conf(sys.argv[1:] if argv is None else argv, project='lvmcoord',
         prog='lvmcoordd')
    log.setup(conf, 'lvmcoordd')
    # Before any worker forks: a bad option stops the daemon here with one
    # line, instead of a worker crash-looping while the others serve.
    try:
        checkconf.check(conf)
    except checkconf.ConfigError as exc:
        if conf.log_file:
            LOG.error('configuration refused: %s', exc)
        print(f'lvmcoordd: configuration refused: {exc}', file=sys.stderr)
        return 1
    if conf.check_config:
        print('lvmcoordd: configuration OK')
        return 0
    from coordinator.daemon import claim
    try:
        # Held by the master for its life (the workers inherit it).
        state_lock = claim.lock_state_dir(conf.session.state_dir)
        claim.check_host_name(conf)
        claim.check_schema(conf)
    except claim.Refused as exc:
        LOG.error('start refused: %s', exc)
        print(f'lvmcoordd: start refused: {exc}', file=sys.stderr)
        return 1
    made = None
    if conf.metrics.port and 'PROMETHEUS_MULTIPROC_DIR' not in os.environ:
        # Workers are processes: metrics are aggregated through files.
        made = os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(
            prefix='lvmcoord-metrics-')
    from coordinator.daemon import metrics
    from coordinator.daemon import service
    if conf.metrics.port:
        metrics.enable()
    _preload()
    master = os.getpid()
    # Workers are forked from here: what the master imported is shared
    # copy-on-write, and frozen objects are never written by the GC.
    gc.collect()
    gc.freeze()
    try:
        service.build(conf).run()
    finally:
        if made and os.getpid() == master:
            shutil.rmtree(made, ignore_errors=True)
        if os.getpid() == master:
            os.close(state_lock)
    return 0


def _preload():
    """Import before the fork what the workers import after it."""
    from tooz.drivers import etcd3gw  # noqa: F401  (the session worker)

    from coordinator.activation import loop  # noqa: F401
    from coordinator.activation import lvm  # noqa: F401


if __name__ == '__main__':
    sys.exit(main())
