"""`lvmcoord wait-ready`: block until the local daemon serves with a live
session (for ExecStartPost of lvmcoordd, ExecStartPre of its consumers)."""
import logging
import time

from cliff import command

from coordinator import errors

LOG = logging.getLogger(__name__)

# Between attempts: the daemon needs a few seconds to open its session;
# no event tells a client when its socket starts answering.
INTERVAL = 0.2


def live_session(status):
    """The session id of a `status` reply, None unless it is live."""
    session = (status or {}).get('session')
    return session if session and session != '0' else None


def wait_ready(client, timeout, clock=time.monotonic, pause=time.sleep):
    """(status, None) once ``client``'s daemon answers `status` with a
    live session and a fencer that has reconciled its grants; (None, last
    reason) if ``timeout`` seconds pass first."""
    deadline = clock() + timeout
    while True:
        try:
            status = client.call('status')
            # The fencer answers 'ok' only once it has reconciled (and
            # restored) this host's grants: consumers may start then.
            fencer = status.get('fencer', 'ok')
            if live_session(status) and fencer == 'ok':
                return status, None
            reason = f'{status.get("host")}: ' + (
                'no live session yet' if fencer == 'ok' else fencer)
        except errors.CoordError as exc:
            reason = str(exc)
        if clock() >= deadline:
            return None, reason
        pause(INTERVAL)


class WaitReady(command.Command):
    """Wait until this host's lvmcoordd serves with a live session."""

    _epilog = ('Exit status 0 once `status` answers with a live session, '
               '1 if the timeout passes first (the last reason is logged). '
               'For systemd: ExecStartPost= of lvmcoordd.service, or '
               'ExecStartPre= of a consumer (nova-compute, cinder-volume).')

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--timeout', type=float, default=60.0,
                            metavar='SECONDS',
                            help='give up after this long (default 60)')
        return parser

    def take_action(self, parsed_args):
        # A status call never waits on anything slow: a short per-call
        # timeout keeps the overall deadline.
        client = self.app.ctx.client(timeout=min(10.0, max(
            parsed_args.timeout, 1.0)))
        status, reason = wait_ready(client, parsed_args.timeout)
        if status is None:
            LOG.error('lvmcoordd at %s not ready after %.0fs: %s',
                      client.path, parsed_args.timeout, reason)
            return 1
        LOG.info('lvmcoordd ready on %s (session %s)', status['host'],
                 status['session'])
        return 0
