"""lvmcoordd: the per-host daemon."""
import os
import sys
import tempfile

from oslo_config import cfg
from oslo_log import log

from coordinator import conf as conflib


def main(argv=None):
    conf = cfg.ConfigOpts()
    conflib.register(conf)
    log.register_options(conf)
    conf(sys.argv[1:] if argv is None else argv, project='lvmcoord',
         prog='lvmcoordd')
    log.setup(conf, 'lvmcoordd')
    if conf.metrics.port and 'PROMETHEUS_MULTIPROC_DIR' not in os.environ:
        # Workers are processes: metrics are aggregated through files.
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(
            prefix='lvmcoord-metrics-')
    from coordinator import service
    service.build(conf).run()


if __name__ == '__main__':
    main()
