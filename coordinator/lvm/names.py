"""Validation of VG/LV names, tags, sizes and host names before anything
runs.

The LVM rules are LVM2's own (lib/misc/lvm-string.c, 2.03.16): a name that
passes here is one lvcreate/vgcreate accepts, so a bad request fails with
an error naming the field instead of an LVM error after a lock was taken.
"""
import re

from coordinator.errors import InvalidInput

# LVM's NAME_LEN is 128 including the terminating NUL.
MAX_NAME = 127
# Measured on LVM 2.03.16 (lvcreate and lvrename, whatever the VG name's
# length): "vg/lv" may be at most 125 characters; one more is refused with
# 'LV name "vg/lv" length 128 is not supported'.
MAX_FULL_NAME = 125
# A host name is a key segment in etcd and a DNS label: ASCII, one label.
MAX_HOST = 63
MAX_TAG = 1024
# Largest LV size LVM can address on 64-bit (8 EiB, in 512-byte sectors).
MAX_SIZE = 2 ** 63 - 1

_NAME = re.compile(r'[A-Za-z0-9+_.-]+', re.ASCII)
_HOST = re.compile(r'[A-Za-z0-9_.-]+', re.ASCII)
_TAG = re.compile(r'[A-Za-z0-9_+.\-/=!:&#]+', re.ASCII)
_SIZE = re.compile(r'([0-9]+)(?:\.([0-9]+))?(b|[kmgtpe](?:i?b)?)?',
                   re.ASCII | re.IGNORECASE)

# Prefixes and substrings LVM reserves for its own (component) LVs.
LV_RESERVED_PREFIXES = ('pvmove', 'snapshot')
LV_RESERVED_STRINGS = (
    '_cdata', '_cmeta', '_corig', '_cpool', '_cvol', '_wcorig', '_mimage',
    '_mlog', '_rimage', '_rmeta', '_tdata', '_tmeta', '_vdata', '_imeta',
    '_iorig', '_pmspare', '_vorigin')

_UNITS = {'': 1, 'b': 1, 'k': 2 ** 10, 'm': 2 ** 20, 'g': 2 ** 30,
          't': 2 ** 40, 'p': 2 ** 50, 'e': 2 ** 60}


def _shown(text, limit=40):
    # repr() keeps control characters visible in the error message.
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + '...'


def _text(value, field, what, limit, pattern, allowed):
    # The checks every LVM name and tag share: a non-empty string within
    # ``limit`` characters, every one of them in ``pattern``.
    if not isinstance(value, str):
        raise InvalidInput(field, f'{what} must be a string, not '
                           f'{type(value).__name__}')
    if not value:
        raise InvalidInput(field, f'{what} must not be empty')
    if len(value) > limit:
        raise InvalidInput(field, f'{what} is {len(value)} characters long, '
                           f'at most {limit} allowed')
    if not pattern.fullmatch(value):
        raise InvalidInput(field, f'{what} {_shown(value)} may contain only '
                           f'{allowed}')
    return value


def _name(name, field, what):
    _text(name, field, what, MAX_NAME, _NAME, 'a-z A-Z 0-9 + _ . -')
    # '-' separates VG and LV in device-mapper names.
    if name.startswith('-'):
        raise InvalidInput(field, f'{what} {name!r} must not start with "-"')
    if name in ('.', '..'):
        raise InvalidInput(field, f'{what} must not be "." or ".."')
    return name


def vg_name(name, field='vg'):
    """A valid VG name, or InvalidInput naming ``field``."""
    return _name(name, field, 'VG name')


def lv_name(name, field='lv'):
    """A valid (non-reserved) LV name, or InvalidInput naming ``field``."""
    name = _name(name, field, 'LV name')
    for prefix in LV_RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise InvalidInput(field, f'LV names starting with {prefix!r} '
                               f'are reserved by LVM')
    for part in LV_RESERVED_STRINGS:
        if part in name:
            raise InvalidInput(field, f'LV names containing {part!r} are '
                               f'reserved by LVM')
    return name


def full_name(vg, lv, field='lv'):
    """``vg/lv`` if LVM accepts its combined length, else InvalidInput."""
    full = f'{vg}/{lv}'
    if len(full) > MAX_FULL_NAME:
        raise InvalidInput(field, f'"VG/LV" is {len(full)} characters long, '
                           f'LVM allows at most {MAX_FULL_NAME}')
    return full


def host_name(value, field='host'):
    """A valid host name (ASCII letters, digits, "-", "_", "."; at most
    63 characters; not "." or ".."), or InvalidInput naming ``field``."""
    _text(value, field, 'host name', MAX_HOST, _HOST,
          'A-Z a-z 0-9 - _ . (ASCII)')
    if value in ('.', '..'):
        raise InvalidInput(field, 'host name must not be "." or ".."')
    return value


def tag(value, field='tag'):
    """A valid LVM tag, or InvalidInput naming ``field``."""
    return _text(value, field, 'tag', MAX_TAG, _TAG,
                 'A-Z a-z 0-9 _ + . - / = ! : & #')


def _parse_size(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(field, f'size must be bytes (an integer) or a '
                           f'string like "10G", not {type(value).__name__}')
    if isinstance(value, int):
        return value
    # Bounded before parsing: huge digit strings are slow to convert.
    match = _SIZE.fullmatch(value) if len(value) <= 40 else None
    if not match:
        raise InvalidInput(field, f'size {_shown(value)} is not a size: use '
                           f'bytes or a number with a binary unit '
                           f'(B K M G T P E), e.g. "512M"')
    whole, frac, unit = match.groups()
    scale = _UNITS[(unit or '')[:1].lower()]
    frac = frac or ''
    numer = int(whole + frac) * scale
    denom = 10 ** len(frac)
    if numer % denom:
        raise InvalidInput(field, f'size {value!r} is not a whole number '
                           f'of bytes')
    return numer // denom


def size(value, field='size', free=None, maximum=MAX_SIZE):
    """Positive bytes from an int or "10G"-style string (binary units),
    at most ``maximum`` and, when given, ``free``; else InvalidInput."""
    nbytes = _parse_size(value, field)
    # Huge ints are not formatted: str() refuses over 4300 digits.
    if nbytes <= 0:
        raise InvalidInput(field, 'size must be positive')
    if nbytes > maximum:
        raise InvalidInput(field, f'size exceeds the maximum of {maximum} '
                           f'bytes')
    if free is not None and nbytes > free:
        raise InvalidInput(field, f'size {nbytes} bytes exceeds the '
                           f'{free} bytes of free space')
    return nbytes
