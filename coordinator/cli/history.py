"""`lvmcoord history show|accept`: the etcd history the hosts go by, and
the operator's word after etcd was restored from a backup
(doc/runbook-etcd-restore.md)."""
import json
import logging
import time
import uuid

from cliff import show

from coordinator import cli
from coordinator import errors
from coordinator.engine import history

LOG = logging.getLogger(__name__)

FIELDS = ('Epoch', 'Generation', 'Floor', 'Created', 'Rewound', 'Accepted',
          'etcd revision')
CONFIRM = '--yes-i-really-mean-it'
EVENT_TTL = 24 * 3600


def _rows(epoch, revision):
    epoch = epoch or {}
    rewound = epoch.get('rewound')
    accepted = epoch.get('accepted')
    return (epoch.get('id') or '-', epoch.get('generation', '-'),
            epoch.get('floor', '-'),
            f'{cli.when(epoch.get("created"))} by {epoch.get("by")}'
            if epoch.get('created') else '-',
            f'found by {rewound.get("by")} at {cli.when(rewound.get("at"))}'
            f': {rewound.get("reason")}' if rewound else 'no',
            f'by {accepted.get("by")} at {cli.when(accepted.get("at"))}'
            if accepted else '-', revision)


class HistoryShow(show.ShowOne):
    """Show the cluster epoch: whether a host found etcd's history
    rewound (a restore from an older backup) and the last accept."""

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        epoch_kv, revision = history.read_epoch(ctx.etcd, ctx.keys)
        return FIELDS, _rows(epoch_kv.json() if epoch_kv else None,
                             revision)


class HistoryAccept(show.ShowOne):
    """Accept etcd's history as it is now, after a restore."""

    _epilog = ('Every host goes on with etcd as it is now: each adopts the '
               'new generation and serves grants again. A device fenced '
               'before is never resumed by a grant older than the accept: '
               'it is retired (its VM sees I/O errors) and must be attached '
               'again. Run it only once every host that had a device of a '
               'restored grant is fenced (`lvmcoord history show`, `lvmcoord '
               'status` on each host) - the runbook says how.')

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(CONFIRM, dest='confirmed', action='store_true',
                            help='confirm: grants from before the restore '
                                 'are void')
        return parser

    def take_action(self, parsed_args):
        if not parsed_args.confirmed:
            raise cli.CLIError(
                f'refusing to accept etcd\'s history without {CONFIRM}: '
                f'every device fenced before it is then retired')
        ctx = self.app.ctx
        value = history.accept(ctx.etcd, ctx.keys,
                               f'{ctx.conf.host} (lvmcoord CLI)')
        event = {'kind': 'history-accepted', 'host': ctx.conf.host,
                 'at': time.time(), 'generation': value['generation'],
                 'floor': value['floor'],
                 'rewound': json.dumps(value['accepted']['rewound'])}
        key = f'{ctx.keys.events()}{event["at"]:.6f}-{uuid.uuid4().hex[:6]}'
        try:
            ctx.etcd.put(key, event, lease=ctx.etcd.lease_grant(EVENT_TTL))
        except errors.CoordError as exc:
            LOG.warning('history accepted, but the event was not recorded: '
                        '%s', exc)
        _, revision = history.read_epoch(ctx.etcd, ctx.keys)
        return FIELDS, _rows(value, revision)
