"""`lvmcoord lease list|show|break`: activation leases and the admin
override."""
import logging
import time
import uuid

from cliff import columns
from cliff import lister
from cliff import show

from coordinator import cli
from coordinator import errors

LOG = logging.getLogger(__name__)

LIST_COLUMNS = ('VG', 'LV', 'Host', 'Mode', 'Instance', 'Token', 'Since',
                'Alive')
BREAK_FIELDS = ('VG', 'LV', 'Host', 'Mode', 'Instance', 'Token', 'Since',
                'Session was alive', 'Forced')
CONFIRM = '--yes-i-really-mean-it'
# Broken leases are logged as events that outlive the CLI, for a while.
EVENT_TTL = 24 * 3600


# Formatters that print a column's machine_readable() value, which for
# every column of a row is the raw value itself.
_RAW_FORMATS = ('json', 'yaml')


def holder_row(vg, lv, holder, raw=False):
    """One row of LIST_COLUMNS (plain values when ``raw``)."""
    if raw:
        return (vg, lv, holder.host, holder.mode, holder.instance,
                holder.token, holder.since, holder.alive)
    return (vg, lv, holder.host, holder.mode, holder.instance,
            cli.TokenColumn(holder.token), cli.TimeColumn(holder.since),
            cli.YesNoColumn(holder.alive))


def describe(holder):
    """One line about a holder for people."""
    inst = f', instance {holder.instance}' if holder.instance else ''
    token = 'none' if holder.token is None else holder.token
    state = 'alive' if holder.alive else 'session ended'
    return (f'{holder.host}: {holder.mode}{inst}, token {token}, since '
            f'{cli.when(holder.since)}, {state}')


class HoldersColumn(columns.FormattableColumn):
    """[Holder]: a line each for people, dicts for machines."""

    def human_readable(self):
        return '\n'.join(describe(h) for h in self._value) or '-'

    def machine_readable(self):
        return [{'host': h.host, 'mode': h.mode, 'instance': h.instance,
                 'token': h.token, 'since': h.since, 'alive': h.alive}
                for h in self._value]


class ReservedColumn(columns.FormattableColumn):
    """A ledger reservation {host, op}, or None."""

    def human_readable(self):
        if not self._value:
            return '-'
        return f'by {self._value.get("host")} for {self._value.get("op")}'


def _lv_argument(parser):
    parser.add_argument('lv', metavar='VG/LV', type=cli.parse_vg_lv,
                        help='the LV, as VG/LV')


class LeaseList(lister.Lister):
    """List activation leases: one row per LV and holder."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--vg', type=cli.parse_vg,
                            help='only the leases of this VG')
        return parser

    def take_action(self, parsed_args):
        table = self.app.ctx.leases.list()
        # No column object per value where none would change the output
        # (5,000 leases: 15,000 objects and as many method calls).
        raw = getattr(parsed_args, 'formatter', None) in _RAW_FORMATS
        rows = [holder_row(vg, lv, h, raw)
                for (vg, lv), holders in sorted(table.items())
                if parsed_args.vg in (None, vg)
                for h in holders]
        return LIST_COLUMNS, rows


class LeaseShow(show.ShowOne):
    """Show one LV's lease: its holders and any reservation."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _lv_argument(parser)
        return parser

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        vg, lv = parsed_args.lv
        ledger = ctx.etcd.get(ctx.keys.lease_ledger(vg, lv))
        try:
            holders = ctx.leases.holders(vg, lv)
        except errors.LeaseConflict:
            # Reserved (delete, rename in progress): nobody holds it.
            holders = []
        body = ledger.json() if ledger else {}
        return (('VG', 'LV', 'Holders', 'Reserved', 'Ledger revision'),
                (vg, lv, HoldersColumn(holders),
                 ReservedColumn(body.get('reserved')),
                 ledger.mod_revision if ledger else None))


class LeaseBreak(show.ShowOne):
    """Admin override: drop one host's lease on an LV."""

    _epilog = ('The token proves you read the current state. Refused '
               f'without {CONFIRM}, and while the holder\'s session is '
               'alive unless --force. A forced break is safe by '
               'construction: the holder fences the LV (its device fails '
               'every I/O and is removed) and acknowledges; the command '
               'waits for that, and if the holder does not answer, no '
               'other host is granted the LV before TTL + grace. The '
               'break is logged as a "lease-broken" event.')

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _lv_argument(parser)
        parser.add_argument('--host', required=True,
                            help='the holder whose lease is broken')
        parser.add_argument('--token', required=True, type=cli.parse_token,
                            help='its current fencing token, as `lease '
                                 'list` shows it (proves you read the '
                                 'current state)')
        parser.add_argument(CONFIRM, dest='confirmed', action='store_true',
                            help='confirm: the host must not have the LV '
                                 'active any more')
        parser.add_argument('--force', action='store_true',
                            help='break even though the holder\'s session '
                                 'is alive (only once the LV is known not '
                                 'to be in use there)')
        return parser

    def take_action(self, parsed_args):
        vg, lv = parsed_args.lv
        if not parsed_args.confirmed:
            raise cli.CLIError(
                f'refusing to break the lease of {parsed_args.host} on '
                f'{vg}/{lv} without {CONFIRM}: another host may then '
                f'activate an LV that {parsed_args.host} still writes to')
        ctx = self.app.ctx
        holder = ctx.leases.break_(vg, lv, parsed_args.host,
                                   parsed_args.token, parsed_args.force)
        self._record(ctx, vg, lv, holder, parsed_args.force)
        if holder.alive:
            wait = ctx.conf.session.ttl + ctx.conf.lease.grace
            if ctx.leases.wait_gone(vg, lv, holder.host, wait):
                self.app.stdout.write(f'{holder.host} fenced {vg}/{lv} and '
                                      f'acknowledged the break\n')
            else:
                self.app.stdout.write(
                    f'{holder.host} did not acknowledge within {wait:.0f}s; '
                    f'no other host is granted {vg}/{lv} before TTL + grace '
                    f'from the break\n')
        return BREAK_FIELDS, (vg, lv, holder.host, holder.mode,
                              holder.instance,
                              cli.TokenColumn(holder.token),
                              cli.TimeColumn(holder.since),
                              cli.YesNoColumn(holder.alive),
                              cli.YesNoColumn(parsed_args.force))

    @staticmethod
    def _record(ctx, vg, lv, holder, force):
        # An override must be visible in `lvmcoord events`; the CLI has no
        # session, so the event gets a lease of its own.
        event = {'kind': 'lease-broken', 'host': holder.host,
                 'at': time.time(), 'vg': vg, 'lv': lv, 'mode': holder.mode,
                 'token': holder.token, 'was_alive': holder.alive,
                 'force': force, 'by': f'{ctx.conf.host} (lvmcoord CLI)'}
        key = f'{ctx.keys.events()}{event["at"]:.6f}-{uuid.uuid4().hex[:6]}'
        try:
            ctx.etcd.put(key, event, lease=ctx.etcd.lease_grant(EVENT_TTL))
        except errors.CoordError as exc:
            LOG.warning('lease broken, but the event was not recorded: %s',
                        exc)
