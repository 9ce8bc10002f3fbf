"""`lvmcoord events`: grants, releases, fences, alerts and membership,
from etcd's key history under the cluster's root.

Lease grants and releases are read from the holder keys (a PUT is a grant;
a DELETE is a release, or the end of the holder's session when the ledger
still lists it), hosts coming and going from the session keys, and
everything else the daemons publish (fences, alerts, session events, admin
breaks) from the events prefix. Output is one text line or one JSON object
per event (``-f json``).
"""
import dataclasses
import json
import time

from cliff import command

from coordinator.engine import etcd as etcdlib
from coordinator.engine import etcdhttp

# A watch stream that died with its etcd member says nothing: re-subscribe
# from the last revision seen after this long without events.
RESUBSCRIBE = 30.0
# History replay (--since-revision without --follow) ends once etcd has
# been quiet this long: past events arrive in a burst.
REPLAY_IDLE = 1.0


@dataclasses.dataclass
class Event:
    """One line of output."""

    time: float | None
    revision: int
    kind: str
    host: str | None
    details: dict

    def text(self):
        """'time rREV kind host key=value...' for people."""
        stamp = '-' if self.time is None else time.strftime(
            '%Y-%m-%d %H:%M:%S', time.localtime(self.time)) + \
            f'.{int(self.time * 1000) % 1000:03d}'
        details = dict(self.details)
        lv = details.pop('lv', None)
        words = ([lv] if lv else []) + [
            f'{k}={_word(v)}' for k, v in sorted(details.items())]
        return (f'{stamp:<23} r{self.revision:<7} {self.kind:<15} '
                f'{self.host or "-":<16} {" ".join(words)}').rstrip()

    def json(self):
        """The event as one JSON object."""
        return json.dumps(dict(self.details, time=self.time,
                               revision=self.revision, kind=self.kind,
                               host=self.host), sort_keys=True)


def _word(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(',', ':'))
    return 'none' if value is None else str(value)


class Decoder:
    """Turns keys and watch events under the root into Events."""

    def __init__(self, keys, holders_at):
        self.keys = keys
        # holders_at(vg, lv, revision) -> hosts in the ledger then.
        self.holders_at = holders_at

    def snapshot(self, kvs):
        """The current state as events, oldest first."""
        out = [e for e in (self.change('PUT', kv) for kv in kvs) if e]
        return sorted(out, key=lambda e: (e.time is None, e.time or 0,
                                          e.revision))

    def change(self, kind, kv, now=None):
        """The Event for one watch event, or None if it is not one."""
        key = kv.key
        if key.startswith(self.keys.sessions()):
            return self._session(kind, kv, key[len(self.keys.sessions()):],
                                 now)
        if key.startswith(self.keys.leases()):
            vg, lv, what, host = self.keys.split_lease(key, self.keys.root)
            if what == 'holder' and host:
                return self._lease(kind, kv, vg, lv, host, now)
            return None
        if key.startswith(self.keys.events()) and kind == 'PUT':
            body = _body(kv)
            at = body.pop('at', None)
            return Event(at, kv.mod_revision, body.pop('kind', 'event'),
                         body.pop('host', None), body)
        return None

    def _session(self, kind, kv, host, now):
        if kind == 'DELETE':
            return Event(now, kv.mod_revision, 'host-down', host, {})
        body = _body(kv)
        return Event(body.get('since'), kv.mod_revision, 'host-up', host,
                     {'session': f'{kv.lease:x}', 'pid': body.get('pid')})

    def _lease(self, kind, kv, vg, lv, host, now):
        name = f'{vg}/{lv}'
        if kind == 'DELETE':
            # Released holders leave the ledger in the same txn; a holder
            # whose session died is still listed there.
            ended = host in self.holders_at(vg, lv, kv.mod_revision)
            return Event(now, kv.mod_revision,
                         'session-ended' if ended else 'release', host,
                         {'lv': name})
        body = _body(kv)
        return Event(body.get('since'), kv.mod_revision, 'grant', host,
                     {'lv': name, 'mode': body.get('mode'),
                      'instance': body.get('instance'),
                      'token': kv.mod_revision})


def _body(kv):
    try:
        body = kv.json()
    except ValueError:
        return {'value': kv.value}
    return dict(body) if isinstance(body, dict) else {'value': body}


def ledger_holders_at(etcd, keys, vg, lv, revision):
    """Hosts listed in vg/lv's ledger as of ``revision``."""
    req = {'key': etcdlib.b64(keys.lease_ledger(vg, lv)),
           'revision': revision}
    try:
        resp = etcd.call(lambda c: c.post(c.get_url('/kv/range'), json=req))
        kvs = [etcdlib.KV.from_gateway(kv) for kv in resp.get('kvs', [])]
    except etcdhttp.EtcdError:
        # Compacted away: the current ledger is the best left to go by.
        kv = etcd.get(keys.lease_ledger(vg, lv))
        kvs = [kv] if kv else []
    return set(kvs[0].json().get('holders', {})) if kvs else set()


class Events(command.Command):
    """Print grants, releases, fences, alerts and hosts up/down."""

    _epilog = ('Without --follow: the current state (live grants and '
               'sessions, logged events) and exit. Output is text, or '
               'JSON lines with -f json.')

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--follow', action='store_true',
                            help='keep printing new events until Ctrl-C')
        parser.add_argument('--since-revision', type=int, metavar='N',
                            help='replay history from etcd revision N '
                                 '(instead of the current state)')
        parser.add_argument('-f', '--format', choices=('text', 'json'),
                            default='text',
                            help='text lines, or one JSON object per line')
        return parser

    def take_action(self, parsed_args):
        ctx = self.app.ctx
        decoder = Decoder(ctx.keys, lambda vg, lv, rev: ledger_holders_at(
            ctx.etcd, ctx.keys, vg, lv, rev))
        out = self._writer(parsed_args.format)
        if parsed_args.since_revision is None:
            kvs, head = ctx.etcd.range(ctx.keys.root, prefix=True)
            for event in decoder.snapshot(kvs):
                out(event)
            start = head + 1
        else:
            _, head = ctx.etcd.range(ctx.keys.root, prefix=True, limit=1)
            start = parsed_args.since_revision
        try:
            self._watch(ctx, decoder, out, start, head, parsed_args.follow)
        except KeyboardInterrupt:
            pass
        return 0

    def _writer(self, fmt):
        def write(event):
            self.app.stdout.write(
                (event.json() if fmt == 'json' else event.text()) + '\n')
            # Lines must reach a pipe (journal, grep) as they happen.
            self.app.stdout.flush()
        return write

    @staticmethod
    def _watch(ctx, decoder, out, start, head, follow):
        last = start - 1
        while follow or last < head:
            with ctx.etcd.watch(ctx.keys.root, last + 1,
                                prefix=True) as watch:
                while True:
                    got = watch.get(RESUBSCRIBE if follow else REPLAY_IDLE)
                    if got is None:
                        break
                    kind, kv = got
                    last = max(last, kv.mod_revision)
                    # Replayed history has no time for deletions.
                    now = time.time() if kv.mod_revision > head else None
                    event = decoder.change(kind, kv, now)
                    if event:
                        out(event)
                    if not follow and last >= head:
                        return
            if not follow:
                return
