"""This host's mark of the etcd history it has seen: an etcd restored from
an older backup is found out instead of trusted.

A restore brings back old sessions and old ledger entries: a holder cut
off since the backup finds its session alive again, and its proof would
resume a device another host has written since. So each host keeps,
locally (its state dir), a *history mark*:

- the cluster *epoch* (``<root>epoch`` in etcd, written once when the
  cluster is first used): its id and generation (raised by each
  operator-accepted restore);
- the highest etcd revision it has seen (etcd's revision never goes back;
  a restore takes it back to the backup's);
- the revision of its last write: each write of the host also puts its
  *witness* key (one txn, coordinator.engine.etcd). The revision alone is
  no proof for long: the writes made after a restore bring etcd back above
  the mark within seconds on a busy cluster. The witness is not rewritten
  by anyone else: a restore that lost any write of this host brings back
  an older one, however far the revision has moved on since.

etcd without the epoch, another epoch, an older generation, an older
witness or a revision below the mark: the history was rewound. The host
that finds it writes it into the epoch (so a host cut off since before the
backup, which has seen nothing newer, learns it from the others), fences
everything, resumes nothing and serves no grant until an operator accepts
the restored history (``lvmcoord history accept``: a new generation, and a
*floor*: a fenced device whose grant is older than the accept is never
resumed). See doc/runbook-etcd-restore.md.
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid

from coordinator import errors
from coordinator.engine import etcd as etcdlib

LOG = logging.getLogger(__name__)

# Seconds a proof may reuse the history judged for another one.
FLOOR_FRESH = 0.5


def header_revision(resp):
    """The revision in an etcd gateway answer's header (0 if none)."""
    if not isinstance(resp, dict):
        return 0
    header = resp.get('header') or (resp.get('result') or {}).get('header')
    try:
        return int((header or {}).get('revision') or 0)
    except (TypeError, ValueError):
        return 0


def read_epoch(etcd, keys):
    """(epoch KV or None, etcd's revision), one linearizable read: the
    revision is at least that of anything committed before it."""
    kvs, revision = etcd.range(keys.epoch())
    return (kvs[0] if kvs else None), revision


def read_marks(etcd, keys, host):
    """(epoch KV or None, ``host``'s witness revision (0: none), etcd's
    revision): one read-only txn."""
    res = etcd.txn([], [etcdlib.op_range(keys.epoch()),
                        etcdlib.op_range(keys.history_witness(host))])
    epoch, witness = res.ranges
    return ((epoch[0] if epoch else None),
            (witness[0].mod_revision if witness else 0), res.revision)


def judge(mark, epoch, revision, witness=None):
    """Why etcd's history is not the one ``mark`` has seen (None if it
    is). ``epoch``: etcd's epoch value (dict) or None; ``witness``: the
    revision of this host's witness in etcd (None: not read)."""
    if not mark.get('epoch'):
        return None
    if epoch is None:
        return ('etcd has no cluster epoch: it was wiped, or replaced by '
                'another etcd')
    gen, ours = epoch.get('generation', 0), mark.get('generation', 0)
    if gen < ours:
        return (f'etcd\'s history is generation {gen}, older than the '
                f'generation {ours} this host has seen: restored from a '
                f'backup taken before the last accepted restore')
    if gen > ours:
        return None  # an accepted restore: adopted by the caller
    if epoch.get('id') != mark['epoch']:
        return (f'etcd\'s cluster epoch is {epoch.get("id")}, this host\'s '
                f'is {mark["epoch"]}: another etcd, or a restore')
    if witness is not None and witness < mark.get('witness', 0):
        return (f'this host\'s write at revision {mark["witness"]} is not '
                f'in etcd (its witness is at revision {witness}): etcd was '
                f'restored from an older backup')
    if revision < mark.get('revision', 0):
        return (f'etcd is at revision {revision}, this host has seen '
                f'revision {mark["revision"]}: etcd was restored from an '
                f'older backup')
    flagged = epoch.get('rewound')
    if flagged:
        return (f'{flagged.get("by")} found etcd\'s history rewound: '
                f'{flagged.get("reason")}')
    return None


class History:
    """The mark in ``<state_dir>/history-<cluster>.json`` and its checks,
    shared by the daemon's processes (updates under an flock)."""

    def __init__(self, etcd, keys, host, state_dir, cluster='default'):
        self.etcd = etcd
        self.keys = keys
        self.host = host
        self.path = os.path.join(state_dir, f'history-{cluster}.json')
        self._lock = self.path + '.lock'
        self._cache = (None, {})
        # Highest revision persisted by this process, and seen by it (the
        # keepalive thread's hints compare against them).
        self._persisted = 0
        # An answer of this process's below the mark: a check is due.
        self._suspect = False
        # etcd's epoch as the last check() read it.
        self.epoch = None
        self._floor = (0.0, None)

    # -- the local mark --

    def mark(self):
        """The mark as persisted ({} before the first check)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache[0] == stamp:
            return self._cache[1]
        try:
            with open(self.path) as f:
                mark = json.load(f)
        except (OSError, ValueError):
            return {}
        if mark.get('root', self.keys.root) != self.keys.root:
            mark = {}  # another [etcd] prefix: another history
        self._cache = (stamp, mark)
        # The file is the truth: an accepted restore lowers it.
        self._persisted = mark.get('revision', 0)
        return mark

    @property
    def suspect(self):
        """A check is due: an answer of this process's below the mark, or
        a stamp of any of the host's processes found the witness older
        (recorded in the mark: the session worker checks, not the writer)."""
        mark = self.mark()
        return self._suspect or bool(mark.get('suspect') and
                                     not mark.get('rewound'))

    def rewound(self):
        """Why this host holds everything fenced (etcd's history was
        rewound, no operator accepted it yet), or None. No etcd call."""
        found = self.mark().get('rewound')
        return found.get('reason') if found else None

    @contextlib.contextmanager
    def _update(self, durable=True):
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        with open(self._lock, 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = (None, {})
            mark = dict(self.mark())
            yield mark
            mark['root'] = self.keys.root
            tmp = f'{self.path}.{os.getpid()}.tmp'
            with open(tmp, 'w') as f:
                json.dump(mark, f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._cache = (None, {})
            self._persisted = mark.get('revision', 0)

    def observe(self, revision):
        """Raise the mark to ``revision`` (seen in an answer of etcd)."""
        mark = self.mark()
        if revision <= self._persisted or not mark.get('epoch') or \
                mark.get('rewound'):
            return
        # Not synced: a mark a crash loses is only a lower one (as if
        # etcd had been restored a moment earlier); keepalives call this.
        with self._update(durable=False) as mark:
            if mark.get('epoch') and not mark.get('rewound'):
                mark['revision'] = max(mark.get('revision', 0), revision)

    @property
    def witness_key(self):
        """This host's witness key in etcd."""
        return self.keys.history_witness(self.host)

    def stamp(self):
        """The op each write of this host carries (Etcd.witness): put the
        witness, unless etcd's is older than this host's last write: that
        one is the evidence of a restore, and stays."""
        last = self.mark().get('witness', 0)
        return etcdlib.op_txn([etcdlib.cmp_mod_below(self.witness_key, last)],
                              [], [etcdlib.op_put(self.witness_key, '')])

    def wrote(self, revision, below=False):
        """A write of this host's committed at ``revision``; ``below``: its
        stamp found the witness older than the host's last write."""
        mark = self.mark()
        if below:
            if mark.get('suspect') or mark.get('rewound'):
                return
            LOG.warning('history: a write at revision %s found this host\'s '
                        'witness older than its last write', revision)
            with self._update(durable=False) as mark:
                mark['suspect'] = revision
            return
        if revision <= mark.get('witness', 0) or not mark.get('epoch') or \
                mark.get('rewound'):
            return
        with self._update(durable=False) as mark:
            if mark.get('epoch') and not mark.get('rewound'):
                mark['witness'] = max(mark.get('witness', 0), revision)
                mark['revision'] = max(mark.get('revision', 0), revision)

    def hint(self, resp):
        """For every etcd answer (Etcd.on_answer): a revision below the
        mark makes the next check() due; others raise the mark. Cheap:
        no I/O unless the revision is new."""
        revision = header_revision(resp)
        if not revision:
            return
        self.mark()  # a stat: another process may have moved it
        if revision < self._persisted:
            self._suspect = True
            return
        try:
            self.observe(revision)
        except OSError:
            LOG.exception('history: mark not raised')

    # -- against etcd --

    def check(self):
        """Read etcd's epoch and judge the history; the reason it was
        rewound (also persisted, and told to the other hosts) or None.
        Creates the epoch on a cluster's first use; adopts an accepted
        restore."""
        self._suspect = False
        flagged = self.mark().get('suspect')
        epoch_kv, witness, revision = read_marks(self.etcd, self.keys,
                                                 self.host)
        if epoch_kv is None and not self.mark().get('epoch'):
            epoch_kv, revision = self._create()
        epoch = self.epoch = epoch_kv.json() if epoch_kv else None
        mark = self.mark()
        if mark.get('rewound') and not self._accepted(mark, epoch):
            return mark['rewound']['reason']
        fresh = not mark.get('epoch') or self._accepted(mark, epoch)
        if fresh:
            # Adopted (first use, or an accepted restore): judged as a
            # mark at etcd's epoch, seen nothing yet (a flag still holds).
            why = judge({'epoch': epoch['id'],
                         'generation': epoch.get('generation', 0)},
                        epoch, revision)
        else:
            if witness < mark.get('witness', 0) or \
                    revision < mark.get('revision', 0):
                witness, revision = self._probe(mark, witness, revision)
            why = judge(mark, epoch, revision, witness)
        if why is None and not fresh and not flagged and \
                revision <= mark.get('revision', 0):
            return None  # nothing new to write
        with self._update(durable=why is not None or fresh) as mark:
            if mark.get('suspect') == flagged:
                mark.pop('suspect', None)  # judged (a newer one stays)
            if not mark.get('epoch') or self._accepted(mark, epoch):
                if mark.get('epoch'):
                    LOG.warning('history: etcd\'s restored history was '
                                'accepted (generation %s, floor %s)',
                                epoch.get('generation'), epoch.get('floor'))
                mark.clear()
                mark.update(epoch=epoch['id'],
                            generation=epoch.get('generation', 0),
                            revision=0)
            if mark.get('rewound'):
                return mark['rewound']['reason']
            if why is None:
                mark['revision'] = max(mark.get('revision', 0), revision)
                return None
            mark['rewound'] = {'reason': why, 'at': time.time(),
                               'revision': revision}
        LOG.critical('history: %s; every device stays fenced and no grant '
                     'is served until an operator accepts it (lvmcoord '
                     'history accept; doc/runbook-etcd-restore.md)', why)
        self._tell(epoch_kv, epoch, why)
        return why

    def _probe(self, mark, witness, revision):
        # A read below the mark is proof of nothing: one served around an
        # etcd leader change was seen below a revision this host had seen
        # (the chaos run's etcd-leader-stop). A write is: it is committed
        # above every revision committed before it, and its stamp's compare
        # is judged in etcd's log order. (witness, revision) to judge.
        last = mark.get('witness', 0)
        try:
            # The stamp alone: it puts the witness, or keeps it (older).
            res = self.etcd.txn([], [self.stamp()])
        except errors.CoordError as exc:
            LOG.warning('history: read witness %s / revision %s, below the '
                        'mark %s / %s, and no write to prove it: %s',
                        witness, revision, last, mark.get('revision', 0), exc)
            self._suspect = True  # judged again at the next tick
            return witness, revision
        if res.txns[0].succeeded:
            return min(witness, last - 1), revision  # the witness is older
        self.wrote(res.revision)
        if res.revision >= mark.get('revision', 0):
            LOG.warning('history: a read of witness %s / revision %s, below '
                        'the mark %s / %s, was stale: a write is at '
                        'revision %s', witness, revision, last,
                        mark.get('revision', 0), res.revision)
        return last, max(revision, res.revision)

    @staticmethod
    def _accepted(mark, epoch):
        # An operator accepted a restore since this host's mark.
        return bool(mark.get('epoch') and epoch and
                    epoch.get('generation', 0) > mark.get('generation', 0))

    def floor(self, fresh_for=FLOOR_FRESH):
        """(why etcd's history is rewound or None, the revision below
        which no grant is resumed: the last accepted restore's), read
        fresh for each proof: at most ``fresh_for`` seconds old (a fence
        of many LVs is proven in one go), and no etcd read at all while
        this host holds the history rewound (the session worker watches
        for the accept)."""
        why = self.rewound()
        if why:
            return why, 0
        now = time.monotonic()
        at, answer = self._floor
        if answer is None or now - at > fresh_for:
            why = self.check()
            answer = (why, int((self.epoch or {}).get('floor') or 0))
            self._floor = (now, answer)
        return answer

    def _create(self):
        key = self.keys.epoch()
        value = {'id': uuid.uuid4().hex, 'generation': 0, 'floor': 0,
                 'created': time.time(), 'by': self.host}
        self.etcd.txn([etcdlib.cmp_create(key, 0)],
                      [etcdlib.op_put(key, value)])
        LOG.info('history: cluster epoch is %s', value['id'])
        return read_epoch(self.etcd, self.keys)

    def _tell(self, epoch_kv, epoch, why):
        # Into the epoch itself: a host cut off since before the backup
        # has seen nothing newer than it, and learns it here (at its next
        # proof, or its next check).
        if epoch_kv is None or epoch.get('rewound'):
            return
        flagged = dict(epoch, rewound={'by': self.host, 'reason': why,
                                       'at': time.time()})
        try:
            self.etcd.txn([etcdlib.cmp_mod(epoch_kv.key,
                                           epoch_kv.mod_revision)],
                          [etcdlib.op_put(epoch_kv.key, flagged)])
        except errors.CoordError as exc:
            LOG.warning('history: the other hosts not told: %s', exc)


def accept(etcd, keys, by=None):
    """The operator's word: etcd's history as it is now is the one to go
    on with. A new generation (every host adopts it), the rewound flag
    cleared, and a floor: no device fenced before is resumed by a grant
    older than now. Returns the new epoch value."""
    by = by or f'admin-cli@{socket.gethostname()}'
    while True:
        epoch_kv, revision = read_epoch(etcd, keys)
        old = epoch_kv.json() if epoch_kv else {}
        value = {'id': old.get('id') or uuid.uuid4().hex,
                 # Above any generation a host may have seen, even when
                 # etcd lost the epoch altogether.
                 'generation': max(int(old.get('generation', 0)) + 1,
                                   int(time.time())),
                 'floor': revision + 1, 'created': old.get('created'),
                 'by': old.get('by'),
                 'accepted': {'by': by, 'at': time.time(),
                              'rewound': old.get('rewound')}}
        key = keys.epoch()
        res = etcd.txn([etcdlib.cmp_mod(key, epoch_kv.mod_revision
                                        if epoch_kv else 0)],
                       [etcdlib.op_put(key, value)])
        if res.succeeded:
            return value
