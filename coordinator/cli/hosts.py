"""`lvmcoord host list`: live sessions joined with published readiness."""
import logging
import os

from cliff import columns
from cliff import lister

from coordinator import cli
from coordinator.engine import schema

LOG = logging.getLogger(__name__)

COLUMNS = ('Host', 'Session', 'Alive since', 'VGs seen', 'PV devices',
           'Multipath', 'Problems', 'Storage key', 'Release')


class VGsColumn(columns.FormattableColumn):
    """{vg: {uuid, seqno}}: 'vg (seqno N)' per VG for people."""

    def human_readable(self):
        return ', '.join(f'{vg} (seqno {e.get("seqno")})'
                         for vg, e in sorted((self._value or {}).items())) \
            or '-'


class MultipathColumn(columns.FormattableColumn):
    """{device: bool}: yes / no, or per device when they differ."""

    def human_readable(self):
        flags = self._value or {}
        if not flags:
            return '-'
        if len(set(flags.values())) == 1:
            return cli.yes_no(next(iter(flags.values())))
        return '\n'.join(f'{d}: {cli.yes_no(m)}'
                         for d, m in sorted(flags.items()))


def storage_key(session, record):
    """The reservation key a host registered ([fence] storage =
    scsi-pr), marked when it belongs to another session than the live
    one (a key another host may have removed)."""
    if not record:
        return None
    key = record.get('key')
    lease_id = (session or {}).get('lease')
    if lease_id and record.get('session') == lease_id:
        return key
    return f'{key} (session {record.get("session", 0):x}, not live)'


def host_row(host, session, view, members_error=None, storage=None):
    """One row of COLUMNS from a session value and a readiness view."""
    # Either may be None: the host is then missing from that source.
    vgs = (view or {}).get('vgs', {})
    devices, multipath = [], {}
    for entry in (vgs[vg] for vg in sorted(vgs)):
        for pv in entry.get('pvs', []):
            if pv['device'] not in multipath:
                devices.append(pv['device'])
            multipath[pv['device']] = bool(pv.get('multipath'))
    problems = dict((view or {}).get('problems', {}))
    if (view or {}).get('fence', {}).get('unprotected'):
        problems['fence'] = ('UNPROTECTED: no watchdog, no storage fence '
                             '([fence] allow_no_watchdog = true)')
    # What the two sources disagree on is itself worth reporting.
    if session is None:
        problems['session'] = 'no live session (daemon down?)'
    if view is None:
        problems['membership'] = members_error or \
            'not in the membership group: readiness unknown'
    lease_id = (session or {}).get('lease')
    return (host,
            f'{lease_id:x}' if lease_id else None,
            cli.TimeColumn((session or {}).get('since')),
            VGsColumn({vg: {'uuid': e.get('uuid'), 'seqno': e.get('seqno')}
                       for vg, e in vgs.items()}),
            cli.ListColumn(devices),
            MultipathColumn(multipath),
            cli.DictColumn(problems),
            storage_key(session, storage),
            schema.describe(session) if session else None)


def read_members(ctx):
    """({host: readiness view}, error or None) through tooz."""
    from coordinator.engine.membership import Membership
    # A reader only: it never joins, so any unique member id will do.
    members = Membership(ctx.etcd, ctx.keys, f'lvmcoord-cli-{os.getpid()}',
                         ctx.conf.session.ttl)
    try:
        return members.members(), None
    except Exception as exc:
        # Sessions alone are still worth showing.
        return {}, f'membership unavailable: {exc}'


class HostList(lister.Lister):
    """List hosts: session, VGs and PVs seen, multipath, problems."""

    _epilog = ('Rows join live sessions (etcd) with the readiness each '
               'daemon publishes through membership (tooz); a host missing '
               'from either says so under Problems.')

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        sessions = ctx.sessions()
        members, error = read_members(ctx)
        if error:
            LOG.warning('%s', error)
        kvs, _ = ctx.etcd.range(ctx.keys.storage_keys(), prefix=True)
        cut = len(ctx.keys.storage_keys())
        keys = {kv.key[cut:]: kv.json() for kv in kvs}
        rows = [host_row(h, sessions.get(h), members.get(h), error,
                         keys.get(h))
                for h in sorted(set(sessions) | set(members))]
        return COLUMNS, rows
