"""`lvmcoord upgrade status|finalize`: the cluster's schema and each live
host's release; raise the schema once every host runs this release
(doc/upgrade.md)."""
from cliff import show

from coordinator import release
from coordinator.engine import schema as schemalib

FIELDS = ('Schema', 'Min compatible', 'Written by', 'This release',
          'Hosts', 'Behind')


def _rows(value, sessions):
    version, low, by = schemalib.parse(value)
    behind = schemalib.Schema(None, None).laggards(sessions)
    hosts = '\n'.join(f'{h}: {schemalib.describe(r)}'
                      for h, r in sorted(sessions.items())) or '-'
    return (version, low, by,
            f'{release.RELEASE} (schema {release.MIN_SCHEMA}'
            f'..{release.SCHEMA})', hosts,
            ', '.join(behind) or 'none: finalize may run')


class UpgradeStatus(show.ShowOne):
    """Show the cluster schema and the release of every live host."""

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        value, _ = schemalib.Schema(ctx.etcd, ctx.keys).read()
        return FIELDS, _rows(value, ctx.sessions())


class UpgradeFinalize(show.ShowOne):
    """Raise the cluster schema to this release's once every live host
    runs a release that speaks it."""

    _epilog = ('After it, a release that cannot speak the new schema is '
               'refused at start. Releases from before the schema key '
               '(schema 1) never read it: do not start one again.')

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        sch = schemalib.Schema(ctx.etcd, ctx.keys)
        sessions = ctx.sessions()
        # Incompatible names the hosts behind; cliff prints it, exit 1.
        sch.finalize(sessions)
        value, _ = sch.read()
        return FIELDS, _rows(value, sessions)
