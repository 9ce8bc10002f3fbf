"""Membership: each host joins the cluster's tooz group with its readiness.

tooz (etcd3gw driver, same endpoints, TLS and auth as the engine) carries
discovery: who is up and what each host reports about itself. Join and
leave are events delivered by ``poll()``.
"""
import logging
import time

from oslo_serialization import msgpackutils

LOG = logging.getLogger(__name__)

# tooz's etcd3gw driver keeps group members under this key prefix.
TOOZ_GROUPS = 'tooz/groups/'


class Membership:
    """This host's membership in the cluster group, via tooz."""

    def __init__(self, etcd, keys, host, ttl=10):
        self.etcd = etcd
        self.group = keys.tooz_group()
        self.host = host
        self.ttl = ttl
        self.capabilities = {}
        self._coord = None
        self._callbacks = []
        self._seen = (0.0, None)

    def _connect(self):
        # tooz takes one endpoint: ask through the engine's fail-over
        # first, so the URL names one that answers.
        self.etcd.status()
        # Same endpoint, TLS and etcd user as the engine (one place).
        coord = self.etcd.tooz_coordinator(self.host.encode(),
                                           membership_timeout=self.ttl)
        coord.start(start_heart=False)
        from tooz import coordination
        try:
            coord.create_group(self.group).get()
        except coordination.GroupAlreadyExist:
            pass
        return coord

    def join(self, capabilities):
        """Join the group announcing ``capabilities`` (a JSON-able dict)."""
        from tooz import coordination
        self.capabilities = capabilities
        self._coord = self._connect()
        try:
            self._coord.join_group(self.group, capabilities).get()
        except coordination.MemberAlreadyExist:
            self._coord.update_capabilities(self.group, capabilities).get()
        for cb in self._callbacks:
            self._watch(cb)
        return self

    def update(self, capabilities):
        """Publish a new readiness view."""
        self.capabilities = capabilities
        self._coord.update_capabilities(self.group, capabilities).get()

    @property
    def heartbeat_interval(self):
        """Seconds between heartbeats: tooz's membership lease has the
        session TTL, so every TTL/2 leaves one more try before it runs out
        (a host that stays silent longer has lost its session anyway)."""
        return self.ttl / 2.0

    def heartbeat(self):
        """Keep the membership alive; reconnect (next endpoint) on error."""
        if self._coord is None:
            # The last join failed (etcd unreachable): join again, without
            # a heartbeat on nothing first.
            self.join(self.capabilities)
            return
        try:
            self._coord.heartbeat()
        except Exception as exc:
            LOG.warning('membership heartbeat failed (%s); rejoining', exc)
            self._close()
            self.join(self.capabilities)

    def members(self, max_age=0.0):
        """{host: capabilities} of every member, this one included; with
        ``max_age``, a view read at most that many seconds ago will do."""
        at, seen = self._seen
        if max_age and seen is not None and \
                time.monotonic() - at <= max_age:
            return dict(seen)
        # One range read of tooz's keys (its etcd3gw driver's layout:
        # tooz/groups/<group>/<member>, msgpack values), not a tooz
        # coordinator: that costs a lease, a group create and a thread.
        prefix = f'{TOOZ_GROUPS}{self.group.decode()}/'
        read_at = time.monotonic()
        out = {}
        for key, value in self.etcd.range_bytes(prefix, prefix=True):
            member = key[len(prefix):]
            if member:
                out[member] = msgpackutils.loads(value) if value else None
        self._seen = (read_at, out)
        return dict(out)

    def on_change(self, callback):
        """Call ``callback(kind, host)`` on 'join' / 'leave' events."""
        self._callbacks.append(callback)
        if self._coord:
            self._watch(callback)

    def _watch(self, callback):
        self._coord.watch_join_group(
            self.group, lambda ev: callback('join', ev.member_id.decode()))
        self._coord.watch_leave_group(
            self.group, lambda ev: callback('leave', ev.member_id.decode()))

    def poll(self):
        """Deliver membership events observed since the last poll."""
        if self._coord:
            self._coord.run_watchers()

    def _close(self):
        if self._coord is None:
            return
        try:
            self._coord.stop()
        except Exception:
            LOG.debug('ignoring error stopping tooz', exc_info=True)
        self._coord = None

    def leave(self):
        """Leave the group and disconnect."""
        if self._coord is None:
            return
        from tooz import coordination
        try:
            self._coord.leave_group(self.group).get()
        except coordination.ToozError:
            pass
        self._close()
