"""`lvmcoord drain`: release every LV this host does not have open."""
import logging

from cliff import lister

LOG = logging.getLogger(__name__)

COLUMNS = ('LV', 'Result')
RELEASED = 'released'
KEPT_OPEN = 'kept open'


def drain_rows(result):
    """Rows of COLUMNS from the daemon's drain reply."""
    return ([(lv, RELEASED) for lv in result.get('released', [])] +
            [(lv, KEPT_OPEN) for lv in result.get('kept_open', [])])


class Drain(lister.Lister):
    """Release every LV not open on this host (through its daemon)."""

    _epilog = ('Exit status 1 if any LV was kept open, so a systemd '
               'ExecStop or a script can tell.')

    def take_action(self, parsed_args):
        result = self.app.ctx.client().call('drain')
        self.kept = result.get('kept_open', [])
        if self.kept:
            LOG.warning('%d LV(s) still open here, lease kept: %s',
                        len(self.kept), ', '.join(self.kept))
        return COLUMNS, drain_rows(result)

    def run(self, parsed_args):
        result = super().run(parsed_args)
        return result or (1 if self.kept else 0)
