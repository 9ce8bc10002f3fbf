"""The `lvmcoord` cliff application and what its commands share."""
import functools
import importlib.metadata
import logging
import os
import sys

from cliff import app
from cliff import command as cliff_command
from cliff import commandmanager
from oslo_config import cfg

from coordinator import conf as conflib
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine import lease

DEFAULT_CONFIG = '/etc/lvmcoord/lvmcoord.conf'
NAMESPACE = 'lvmcoord.cli'

# The same table as setup.cfg's entry points: a source tree that was never
# pip-installed still gets every command.
BUILTIN = {
    'host list': 'coordinator.cli.hosts:HostList',
    'lease list': 'coordinator.cli.leases:LeaseList',
    'lease show': 'coordinator.cli.leases:LeaseShow',
    'lease break': 'coordinator.cli.leases:LeaseBreak',
    'vg show': 'coordinator.cli.vg:VGShow',
    'events': 'coordinator.cli.events:Events',
    'doctor': 'coordinator.cli.doctor:Doctor',
    'drain': 'coordinator.cli.drain:Drain',
    'wait-ready': 'coordinator.cli.ready:WaitReady',
    'history show': 'coordinator.cli.history:HistoryShow',
    'history accept': 'coordinator.cli.history:HistoryAccept',
    'upgrade status': 'coordinator.cli.upgrade:UpgradeStatus',
    'upgrade finalize': 'coordinator.cli.upgrade:UpgradeFinalize',
}


def load_conf(config_files=None):
    """oslo.config options read from ``config_files`` (or the default)."""
    if config_files is None:
        config_files = [DEFAULT_CONFIG] if os.path.exists(DEFAULT_CONFIG) \
            else []
    conf = cfg.ConfigOpts()
    conflib.register(conf)
    for path in config_files:
        # oslo.config would silently skip an unreadable default file.
        if not os.path.isfile(path):
            raise cfg.ConfigFilesNotFoundError([path])
    conf(args=[], project='lvmcoord', prog='lvmcoord',
         default_config_files=list(config_files), default_config_dirs=[])
    return conf


class AdminSession:
    """Stands in for a session: the CLI holds none."""

    # Reading, listing and breaking leases never use the session's lease.

    host = 'admin-cli'
    id = 0
    lost = False
    ttl = 0

    def check(self):
        """Nothing to check: the CLI never writes under a session."""


class Context:
    """etcd, key layout and read-only lease table built from the config."""

    def __init__(self, conf):
        self.conf = conf
        self.session = AdminSession()

    @functools.cached_property
    def etcd(self):
        """The configured etcd endpoints (with fail-over)."""
        return etcdlib.Etcd.from_conf(self.conf)

    @functools.cached_property
    def keys(self):
        """This cluster's key layout."""
        return keyslib.Keys(self.conf.etcd.prefix, self.conf.cluster)

    @functools.cached_property
    def leases(self):
        """A LeaseTable for reading, listing and admin breaks."""
        return lease.LeaseTable(self.etcd, self.keys, self.session,
                                self.conf.lease.grace)

    def sessions(self):
        """{host: session value} of every live session."""
        kvs, _ = self.etcd.range(self.keys.sessions(), prefix=True)
        return {kv.key[len(self.keys.sessions()):]: dict(kv.json(),
                                                          lease=kv.lease)
                for kv in kvs}

    def client(self, timeout=300.0):
        """A client of this host's daemon (local API socket)."""
        from coordinator.api import client
        return client.Client(self.conf.api.socket_path, timeout)


class _Distributions(dict):
    """cliff's module -> distribution map, for the help epilog line "This
    command is provided by the X plugin" (shown only for a command of
    another distribution than the application's). cliff builds it from
    the metadata of every installed distribution
    (importlib.metadata.packages_distributions(): ~230 here, a third of a
    CLI run's CPU) on every run, help or not; our own commands need no
    look-up, a plugin's command still gets it."""

    # `python -m coordinator.cli.app` runs this module as __main__.
    OWN = {'coordinator': 'lvmcoord',
           **({'__main__': 'lvmcoord'} if __name__ == '__main__' else {})}

    def get(self, package, default=None):
        if package in self.OWN:
            return self.OWN[package]
        if not self:
            self.update((k, v[0]) for k, v in importlib.metadata.
                        packages_distributions().items())
        return super().get(package, default)


if getattr(cliff_command, '_dists_by_mods', False) is None:
    cliff_command._dists_by_mods = _Distributions()


class CommandManager(commandmanager.CommandManager):
    """Entry points of ``lvmcoord.cli``, the built-in table as fallback."""

    def load_commands(self, namespace):
        super().load_commands(namespace)
        for name, target in BUILTIN.items():
            if name not in self.commands:
                # An EntryPoint imports its module only when run.
                self.commands[name] = importlib.metadata.EntryPoint(
                    name.replace(' ', '_'), target, namespace)


def _version():
    try:
        return importlib.metadata.version('lvmcoord')
    except importlib.metadata.PackageNotFoundError:
        return 'unknown'


class LvmcoordApp(app.App):
    """lvmcoord: inspect and administer the lvmcoord cluster."""

    # Not argv[0]: `python -m coordinator.cli.app` would make it "app".
    NAME = 'lvmcoord'

    def __init__(self, **kwargs):
        super().__init__(
            description='Inspect and administer lvmcoord: hosts, '
                        'activation leases, VG locks, events; check and '
                        'drain this host.',
            version=_version(),
            command_manager=CommandManager(NAMESPACE),
            deferred_help=True, **kwargs)
        self.ctx = None

    def build_option_parser(self, description, version,
                            argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument(
            '--config-file', action='append', dest='config_files',
            metavar='PATH',
            help=f'lvmcoord configuration file; may be repeated (default: '
                 f'{DEFAULT_CONFIG} if it exists).')
        return parser

    def configure_logging(self):
        super().configure_logging()
        # Library chatter (HTTP pools, tooz) is noise at the default
        # verbosity; -v -v shows it.
        if self.options.verbose_level < 2:
            for name in ('urllib3', 'tooz', 'etcd3gw', 'stevedore'):
                logging.getLogger(name).setLevel(logging.WARNING)

    def initialize_app(self, argv):
        self.ctx = Context(load_conf(self.options.config_files))


def main(argv=None):
    """Console script entry point."""
    return LvmcoordApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
