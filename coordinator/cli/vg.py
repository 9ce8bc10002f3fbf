"""`lvmcoord vg show`: a VG's metadata lock, queue and seqno record."""
from cliff import columns
from cliff import show

from coordinator import cli
from coordinator import errors
from coordinator.engine import vglock

FIELDS = ('VG', 'UUID (recorded)', 'Lock holder', 'Queue', 'Seqno recorded',
          'Recorded by', 'Change in flight', 'Seqno on disk', 'Seen from',
          'Verdict')
UNKNOWN = 'unknown'


def describe_entry(entry):
    """'host pid N: op, since T' for one lock queue entry."""
    if not entry:
        return '-'
    op = entry.get('op') or 'an operation'
    return (f'{entry.get("host")} pid {entry.get("pid")}: {op}, since '
            f'{cli.when(entry.get("since"))} ({cli.ago(entry.get("since"))})')


class EntryColumn(columns.FormattableColumn):
    """A lock queue entry (or None)."""

    def human_readable(self):
        return describe_entry(self._value)


class QueueColumn(columns.FormattableColumn):
    """Lock waiters in order, one per line."""

    def human_readable(self):
        return '\n'.join(f'{i}. {describe_entry(e)}'
                         for i, e in enumerate(self._value or (), 1)) or '-'


class RecordColumn(columns.FormattableColumn):
    """Who recorded the seqno / started a change: {host, op, at}."""

    def human_readable(self):
        if not self._value:
            return '-'
        v = self._value
        return f'{v.get("host")}: {v.get("op")} at {cli.when(v.get("at"))}'


def verdict(recorded, disk, intent, reason=''):
    """How this host's on-disk seqno compares with etcd's record."""
    if disk == UNKNOWN:
        return f'unknown: {reason}'
    if recorded is None:
        return 'nothing recorded yet (no coordinated change so far)'
    if disk == recorded:
        return 'in sync'
    if disk < recorded:
        return (f'behind: {recorded - disk} change(s) not seen here; this '
                f'host would rescan before acting (stale PV view?)')
    if intent:
        return (f'ahead: change in flight by {intent.get("host")} '
                f'({intent.get("op")}), not recorded yet')
    return (f'AHEAD: changed outside lvmcoord (seqno {disk} on disk, '
            f'{recorded} recorded)')


def read_disk_seqno(conf, vg):
    """(seqno or UNKNOWN, reason) as this host sees the VG on disk."""
    try:
        from coordinator.lvm import executor
    except ImportError as exc:
        return UNKNOWN, f'LVM executor not available ({exc})'
    try:
        lvm = executor.LVM(system_dir=conf.lvm.system_dir, activation=False)
        return lvm.vg(vg)['seqno'], ''
    except errors.LVMError as exc:
        return UNKNOWN, f'VG {vg} not readable here: {exc}'
    except OSError as exc:
        return UNKNOWN, f'LVM not runnable here: {exc}'


def _json(kv):
    return kv.json() if kv else None


class VGShow(show.ShowOne):
    """Show a VG's metadata lock, queue and seqno (etcd vs. disk)."""

    _epilog = ('The on-disk seqno is read by THIS host: "behind" means its '
               'view of the PV is stale, "AHEAD" that the VG was changed '
               'outside lvmcoord.')

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('vg', metavar='VG', type=cli.parse_vg,
                            help='the shared VG')
        return parser

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        vg = parsed_args.vg
        queue = vglock.VGLock(ctx.etcd, ctx.keys, ctx.session, vg).queue()
        for entry in queue:
            # Internal bookkeeping, not for people or scripts.
            entry.pop('key', None)
        seq = _json(ctx.etcd.get(ctx.keys.vg_seqno(vg)))
        intent = _json(ctx.etcd.get(ctx.keys.vg_intent(vg)))
        uuid = ctx.etcd.get(f'{ctx.keys.vgs()}{vg}/uuid')
        recorded = seq.get('seqno') if seq else None
        disk, reason = read_disk_seqno(ctx.conf, vg)
        return FIELDS, (
            vg, uuid.value if uuid else None,
            EntryColumn(queue[0] if queue else None),
            QueueColumn(queue[1:]), recorded,
            RecordColumn(seq and {k: seq.get(k) for k in
                                  ('host', 'op', 'at')}),
            RecordColumn(intent), disk, ctx.conf.host,
            verdict(recorded, disk, intent, reason))
