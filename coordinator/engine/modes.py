"""Activation modes: which hosts may have one LV active together.

Pure rules, no I/O: given the current holders and a request, decide the new
holder set or refuse with the holder named.
"""
import dataclasses

from coordinator import errors

EXCLUSIVE = 'exclusive'
MIGRATION = 'migration'
SHARED = 'shared'
MODES = (EXCLUSIVE, MIGRATION, SHARED)


@dataclasses.dataclass
class Holder:
    """One host's grant on one LV."""

    host: str
    mode: str
    instance: str | None = None
    token: int | None = None
    since: float = 0.0
    session: int = 0
    alive: bool = True
    # The LV's UUID when granted: a grant is for an LV, not for a name.
    uuid: str | None = None
    # Set by an admin's forced break; the holder acknowledges by fencing
    # and dropping its entry.
    broken: bool = False

    def describe(self):
        inst = f', instance {self.instance}' if self.instance else ''
        tok = f', token {self.token}' if self.token else ''
        state = ', broken by admin' if self.broken else \
            ('' if self.alive else ', session ended')
        return f'{self.host} ({self.mode}{inst}{tok}{state})'

    def ledger_entry(self):
        entry = {'mode': self.mode, 'instance': self.instance,
                 'token': self.token, 'since': self.since,
                 'session': self.session, 'uuid': self.uuid}
        if self.broken:
            entry['broken'] = True
        return entry


def validate(mode, instance):
    """Reject unknown modes and a migration grant without an instance."""
    if mode not in MODES:
        raise errors.InvalidInput('mode', f'{mode!r} is not one of '
                                  f'{", ".join(MODES)}')
    if mode == MIGRATION and not instance:
        raise errors.InvalidInput('instance',
                                  'migration mode needs an instance id')


def decide(holders, want, grace_left):
    """New holder list for request ``want`` (a Holder), or raise.

    ``grace_left(holder)`` gives the seconds until a holder whose session
    ended may be superseded (0 once its grace has passed). Returns
    (holders, changed): ``changed`` is False for an idempotent re-grant.
    """
    validate(want.mode, want.instance)
    mine = next((h for h in holders if h.host == want.host), None)
    others = [h for h in holders if h.host != want.host]
    if (mine and mine.alive and mine.session == want.session
            and mine.instance == want.instance and not mine.broken
            and (want.uuid is None or mine.uuid in (None, want.uuid))
            and (mine.mode == want.mode
                 or (mine.mode == MIGRATION and want.mode == EXCLUSIVE))):
        return holders, False

    waiting = [(h, grace_left(h)) for h in others if not h.alive]
    waiting = [(h, left) for h, left in waiting if left > 0]
    if waiting:
        h, left = max(waiting, key=lambda x: x[1])
        raise errors.LeaseFenceWait(
            f'{want.host} cannot take the LV yet: holder {h.describe()}; '
            f'grantable in {left:.1f}s (TTL + grace)', [h])
    live = [h for h in others if h.alive]
    granted = dataclasses.replace(want)
    if want.mode == EXCLUSIVE and live:
        _refuse(want, live)
    elif want.mode == MIGRATION:
        if len(live) > 1:
            _refuse(want, live, 'migration is between exactly two hosts')
        if live:
            src = live[0]
            if src.mode == SHARED or src.instance != want.instance:
                _refuse(want, live, 'migration needs the same instance on '
                        'both hosts')
            live = [dataclasses.replace(src, mode=MIGRATION)]
        else:
            # The source already let go: this is a plain attach.
            granted.mode = EXCLUSIVE
    elif want.mode == SHARED and any(h.mode != SHARED for h in live):
        _refuse(want, live, 'shared mode needs every holder to be shared')
    return live + [granted], True


def after_release(holders, host):
    """Holder list once ``host`` let go: a migration's survivor is
    exclusive again."""
    rest = [h for h in holders if h.host != host]
    if len(rest) == 1 and rest[0].mode == MIGRATION:
        rest = [dataclasses.replace(rest[0], mode=EXCLUSIVE)]
    return rest


def _refuse(want, live, why=''):
    held = ', '.join(h.describe() for h in live)
    reason = f' ({why})' if why else ''
    raise errors.LeaseConflict(
        f'{want.mode} lease for {want.host} refused: held by {held}{reason}',
        live)
