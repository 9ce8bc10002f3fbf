"""Pure parsers of sg_persist's and mpathpersist's text output.

Checked against sg3_utils 1.46/1.47 talking to tgtd (SPC-3 PR); the
captured outputs are in tests/unit/test_storage.py. Every parser takes
stdout as text and raises ValueError on output it does not understand,
so a surprise is never read as "no keys" (that would prove a fence)."""
import re

# SPC-3 PERSISTENT RESERVE OUT types (sg_persist -T).
WRITE_EXCLUSIVE = 1
EXCLUSIVE_ACCESS = 3
WE_REGISTRANTS_ONLY = 5
EA_REGISTRANTS_ONLY = 6
WE_ALL_REGISTRANTS = 7
EA_ALL_REGISTRANTS = 8

# sg_persist's wording of each type (READ RESERVATION, capabilities).
TYPE_NAMES = {
    'write exclusive': WRITE_EXCLUSIVE,
    'exclusive access': EXCLUSIVE_ACCESS,
    'write exclusive, registrants only': WE_REGISTRANTS_ONLY,
    'exclusive access, registrants only': EA_REGISTRANTS_ONLY,
    'write exclusive, all registrants': WE_ALL_REGISTRANTS,
    'exclusive access, all registrants': EA_ALL_REGISTRANTS,
}
# Types under which only registered I_T nexuses may write: the fence.
FENCING_TYPES = (WE_REGISTRANTS_ONLY, EA_REGISTRANTS_ONLY,
                 WE_ALL_REGISTRANTS, EA_ALL_REGISTRANTS)

_GEN = re.compile(r'PR generation=(0x[0-9a-fA-F]+)')
_KEY = re.compile(r'^\s*(0x[0-9a-fA-F]+)\s*$')
_RES_KEY = re.compile(r'Key\s*=\s*(0x[0-9a-fA-F]+)')
_RES_TYPE = re.compile(r'type\s*[:=]\s*(.+?)\s*$', re.IGNORECASE)
_CAP = re.compile(r'^\s*(.+?):\s*([01])\s*$')


def key_hex(key):
    """A reservation key as sg_persist takes it (0x + hex)."""
    return f'0x{int(key):x}'


def _generation(text):
    m = _GEN.search(text)
    if not m:
        raise ValueError(f'no "PR generation" in: {text.strip()[:200]!r}')
    return int(m.group(1), 16)


def read_keys(text):
    """(generation, [key, ...]) from `sg_persist --in --read-keys`."""
    gen = _generation(text)
    after = text[_GEN.search(text).end():]
    if re.search(r'NO registered reservation keys', after, re.IGNORECASE):
        return gen, []
    m = re.search(r'(\d+) registered reservation keys? follows?', after,
                  re.IGNORECASE)
    if not m:
        raise ValueError(f'cannot read the keys in: {text.strip()[:200]!r}')
    keys = [int(k.group(1), 16) for k in
            (_KEY.match(line) for line in after[m.end():].splitlines())
            if k]
    if len(keys) != int(m.group(1)):
        raise ValueError(f'{m.group(1)} keys announced, {len(keys)} read: '
                         f'{text.strip()[:200]!r}')
    return gen, keys


def read_reservation(text):
    """(generation, None or (holder key, type)) from `sg_persist --in
    --read-reservation`."""
    gen = _generation(text)
    if re.search(r'NO reservation held', text, re.IGNORECASE):
        return gen, None
    key, rtype = _RES_KEY.search(text), None
    for line in text.splitlines():
        m = _RES_TYPE.search(line)
        if m:
            name = m.group(1).strip().lower().rstrip(',')
            # A code sg_persist has no name for: "obsolete [0]" (tgtd
            # after an All Registrants holder was preempted: its holder
            # pointer dangles), "reserved [9]".
            other = re.search(r'\[(\d+)\]', name)
            rtype = TYPE_NAMES.get(name, int(other.group(1)) if other
                                   else None)
    if key is None or rtype is None:
        raise ValueError(f'cannot read the reservation in: '
                         f'{text.strip()[:200]!r}')
    return gen, (int(key.group(1), 16), rtype)


def capabilities(text):
    """{flag name: bool} and the supported types from `sg_persist --in
    --report-capabilities`: ({'TMV': True, ...}, {type, ...})."""
    flags, types = {}, set()
    for line in text.splitlines():
        m = _CAP.match(line)
        if not m:
            continue
        name, value = m.group(1).strip(), m.group(2) == '1'
        short = re.search(r'\(([A-Za-z_]+)\)$', name)
        if short:
            flags[short.group(1)] = value
        elif name.lower() in TYPE_NAMES and value:
            types.add(TYPE_NAMES[name.lower()])
    if 'TMV' not in flags:
        raise ValueError(f'not a capabilities report: '
                         f'{text.strip()[:200]!r}')
    return flags, types
