"""lvmcoord, the admin CLI: argument parsing and formatting shared by its
commands."""
import argparse
import time
import warnings

from cliff import columns

from coordinator import errors
from coordinator.lvm import names

# etcd3gw imports futurist, which warns on every run that eventlet is
# deprecated: noise for an operator, and nothing here uses eventlet.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')


class CLIError(Exception):
    """A command was refused or failed; the message says why."""


def _checked(check, name, given):
    # LVM's own naming rules (coordinator.lvm.names), reported against
    # the argument as typed.
    try:
        return check(name, given)
    except errors.InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_vg(text):
    """A VG name given on the command line, or ArgumentTypeError."""
    if '/' in text:
        raise argparse.ArgumentTypeError(
            f'expected a VG name, got {text!r} (a VG name has no "/")')
    return _checked(names.vg_name, text, text)


def parse_vg_lv(text):
    """(vg, lv) from 'VG/LV', or ArgumentTypeError naming what is wrong."""
    given = text
    # /dev/VG/LV is what operators copy from `lsblk` or a VM's XML.
    if text.startswith('/dev/'):
        text = text[len('/dev/'):]
    if text.count('/') != 1:
        raise argparse.ArgumentTypeError(
            f'expected VG/LV, got {given!r} '
            f'({text.count("/")} "/" instead of one)')
    vg, lv = text.split('/')
    return (_checked(names.vg_name, vg, given),
            _checked(names.lv_name, lv, given))


def parse_token(text):
    """A fencing token, as `lease list` shows it: a positive integer."""
    try:
        token = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'token {text!r} is not an integer') from None
    if token <= 0:
        raise argparse.ArgumentTypeError(f'token {token} must be positive')
    return token


def when(epoch):
    """Local wall-clock time of ``epoch`` to the second, '-' if unset."""
    if not epoch:
        return '-'
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(epoch))


def ago(epoch, now=None):
    """'3m12s ago' style age of ``epoch``."""
    if not epoch:
        return '-'
    secs = max(0, int((now or time.time()) - epoch))
    if secs < 60:
        return f'{secs}s ago'
    if secs < 3600:
        return f'{secs // 60}m{secs % 60:02d}s ago'
    if secs < 86400:
        return f'{secs // 3600}h{secs % 3600 // 60:02d}m ago'
    return f'{secs // 86400}d{secs % 86400 // 3600:02d}h ago'


def yes_no(flag):
    """'yes' / 'no' for a bool."""
    return 'yes' if flag else 'no'


class TimeColumn(columns.FormattableColumn):
    """An epoch: local time for people, the number for machines."""

    def human_readable(self):
        return when(self._value)


class ListColumn(columns.FormattableColumn):
    """A list: comma-separated for people."""

    def human_readable(self):
        return ', '.join(str(x) for x in self._value or ()) or '-'


class LinesColumn(columns.FormattableColumn):
    """A list: one item per line for people."""

    def human_readable(self):
        return '\n'.join(str(x) for x in self._value or ()) or '-'


class DictColumn(columns.FormattableColumn):
    """A mapping: 'key: value' per line for people."""

    def human_readable(self):
        return '\n'.join(f'{k}: {v}' for k, v in
                         sorted((self._value or {}).items())) or '-'


class TokenColumn(columns.FormattableColumn):
    """A fencing token; 'none' when it was never recorded."""

    def human_readable(self):
        return 'none' if self._value is None else str(self._value)


class YesNoColumn(columns.FormattableColumn):
    """A bool: yes/no for people."""

    def human_readable(self):
        return yes_no(self._value)
