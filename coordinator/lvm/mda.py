"""Read a VG's committed metadata seqno straight from a PV's metadata area.

An LVM command costs ~30 ms; this reads three small blocks with O_DIRECT
(no stale page cache: other hosts write the shared LU behind our back).

On-disk format (LVM2 "text" format, all integers little-endian):
- a 512-byte label in one of the first 4 sectors: label_header
  ("LABELONE", sector, crc, offset of pv_header, "LVM2 001"), then the
  pv_header: PV UUID, device size, and two zero-terminated lists of
  disk_locn (offset, size): data areas, then metadata areas;
- each metadata area starts with a 512-byte mda_header (crc, magic,
  version, start, size, zero-terminated raw_locn list: offset, size,
  crc, flags); raw_locn[0] is the committed metadata text;
- the text lives in a circular buffer: the area after its header, so a
  text that runs past the area's end continues right after the header.
"""
import collections
import errno
import json
import mmap
import operator
import os
import re
import struct
import zlib

from coordinator import errors

SECTOR = 512
LABEL_SCAN_SECTORS = 4
HEAD_READ = 8192
LABEL_ID = b'LABELONE'
LABEL_TYPE = b'LVM2 001'
MDA_MAGIC = b' LVM2 x[5A%r0N*>'
MDA_HEADER_SIZE = 512
RAW_LOCN_IGNORED = 0x1
INITIAL_CRC = 0xf597a6cf
# O_DIRECT needs offsets and lengths aligned to the logical block size;
# 4 KiB suits 512-byte and 4K-native devices alike.
ALIGN = 4096
# A concurrent writer can be caught between text and header: retry.
READ_ATTEMPTS = 5
# Far above any real VG's metadata; bounds what a damaged header makes us
# allocate.
MAX_TEXT = 256 * 2 ** 20

_LABEL = struct.Struct('<8sQII8s')
_LOCN = struct.Struct('<QQ')
_MDA = struct.Struct('<I16sIQQ')
_RAW = struct.Struct('<QQII')

Metadata = collections.namedtuple('Metadata', 'vg_name vg_id seqno')
Metadata.__doc__ = 'A VG as its committed metadata text names it.'

Location = collections.namedtuple(
    'Location', 'area_start area_size offset size checksum wrapped')
Location.__doc__ = 'Where the committed text lies in a metadata area.'

_IGNORED = object()
_HEAD = re.compile(rb'\A([A-Za-z0-9+_.-]+) \{\n')
_ID = re.compile(rb'^id = "([^"\n]*)"$', re.M)
_SEQNO = re.compile(rb'^seqno = ([0-9]+)$', re.M)


def crc(data, initial=INITIAL_CRC):
    """LVM's CRC-32: zlib's polynomial, no pre/post inversion."""
    return zlib.crc32(data, initial ^ 0xffffffff) ^ 0xffffffff


def _fail(device, reason):
    return errors.LVMError(f'{device}: {reason}', kind='failed')


class _Reader:
    """Aligned O_DIRECT reads from one open device."""

    def __init__(self, device):
        self.device = device
        self.head = b''  # the device's first pages, once _label read them
        try:
            try:
                self.fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Filesystems without O_DIRECT (tmpfs): plain reads.
                self.fd = os.open(device, os.O_RDONLY)
        except OSError as exc:
            raise _fail(device, f'cannot open: {exc.strerror}') from exc

    def close(self):
        os.close(self.fd)

    def read(self, offset, length):
        start = offset - offset % ALIGN
        end = -(-(offset + length) // ALIGN) * ALIGN
        # mmap gives the page-aligned buffer O_DIRECT requires.
        with mmap.mmap(-1, end - start) as buf:
            try:
                got = os.preadv(self.fd, [buf], start)
            except OSError as exc:
                raise _fail(self.device, f'read at {start} failed: '
                            f'{exc.strerror}') from exc
            data = bytes(buf[offset - start:min(got, offset - start +
                                                length)])
        if len(data) < length:
            raise _fail(self.device, f'short read at {offset}: too small '
                        f'to be an LVM PV')
        return data


def _label(reader):
    # Two pages: the label, and the first metadata area's header where LVM
    # puts it (at 4096), in one read.
    head = reader.head = reader.read(0, HEAD_READ)
    for sector in range(LABEL_SCAN_SECTORS):
        block = head[sector * SECTOR:(sector + 1) * SECTOR]
        ident, where, checksum, offset, kind = _LABEL.unpack_from(block)
        if ident != LABEL_ID or where != sector:
            continue
        if crc(block[20:]) != checksum:
            raise _fail(reader.device, f'LVM label in sector {sector} has '
                        f'a bad checksum')
        if kind != LABEL_TYPE or not 32 <= offset < SECTOR - 48:
            raise _fail(reader.device, f'unsupported LVM label type '
                        f'{kind!r}')
        return block, offset
    raise _fail(reader.device, 'no LVM label in the first 4 sectors '
                '(not a PV)')


def _locn_lists(block, offset):
    # pv_header: 32-byte UUID, u64 device size, then the two lists.
    pos, lists = offset + 40, []
    for _ in range(2):
        items = []
        while pos + _LOCN.size <= len(block):
            off, size = _LOCN.unpack_from(block, pos)
            pos += _LOCN.size
            if not off:
                break
            items.append((off, size))
        lists.append(items)
    return lists


def metadata_areas(device):
    """[(offset, size)] of the PV's metadata areas, from its label."""
    reader = _Reader(device)
    try:
        block, offset = _label(reader)
    finally:
        reader.close()
    return _locn_lists(block, offset)[1]


def _locate(reader, start, size, fresh=False):
    # None: the header failed its checksum (maybe caught mid-write).
    head = reader.head
    if not fresh and start + MDA_HEADER_SIZE <= len(head):
        header = head[start:start + MDA_HEADER_SIZE]
    else:
        header = reader.read(start, MDA_HEADER_SIZE)
    checksum, magic, version, where, area = _MDA.unpack_from(header)
    if magic != MDA_MAGIC or version != 1:
        raise _fail(reader.device, f'no metadata area header at {start}')
    if crc(header[4:]) != checksum:
        return None
    if where != start or area != size:
        raise _fail(reader.device, f'metadata area header at {start} '
                    f'describes another area')
    offset, length, text_crc, flags = _RAW.unpack_from(header, _MDA.size)
    if flags & RAW_LOCN_IGNORED:
        return _IGNORED
    if not offset or not length:
        raise _fail(reader.device, 'no VG metadata (PV not in a VG)')
    if not MDA_HEADER_SIZE <= offset < size or length > min(
            size - MDA_HEADER_SIZE, MAX_TEXT):
        raise _fail(reader.device, f'metadata location {offset}+{length} '
                    f'outside its {size}-byte area')
    return Location(start, size, offset, length, text_crc,
                    offset + length > size)


def _text(reader, loc):
    first = min(loc.size, loc.area_size - loc.offset)
    text = reader.read(loc.area_start + loc.offset, first)
    if loc.wrapped:
        text += reader.read(loc.area_start + MDA_HEADER_SIZE,
                            loc.size - first)
    return text


def _read_area(reader, start, size):
    for attempt in range(READ_ATTEMPTS):
        # A retry reads the header again: the head read with the label
        # may be what a concurrent writer was caught in.
        loc = _locate(reader, start, size, fresh=attempt > 0)
        if loc is _IGNORED:
            return None
        if loc is not None:
            text = _text(reader, loc)
            if crc(text) == loc.checksum:
                return loc, text
    raise _fail(reader.device, f'metadata at {start} keeps failing its '
                f'checksum')


def read_text(device):
    """(Location, text) of the committed metadata in the first metadata
    area that is not ignored."""
    reader = _Reader(device)
    try:
        block, offset = _label(reader)
        areas = _locn_lists(block, offset)[1]
        if not areas:
            raise _fail(device, 'PV has no metadata area')
        for start, size in areas:
            found = _read_area(reader, start, size)
            if found:
                return found
        raise _fail(device, 'every metadata area of this PV is ignored')
    finally:
        reader.close()


def read_location(device):
    """The Location of the committed metadata in the first metadata area
    that is not ignored, from the area's header alone (in the 8 KiB the
    label is read with, for the first area): whether the text changed
    since it was last read, without reading the text. The header's
    checksum is that of the text (LVM compares it so too)."""
    reader = _Reader(device)
    try:
        block, offset = _label(reader)
        areas = _locn_lists(block, offset)[1]
        if not areas:
            raise _fail(device, 'PV has no metadata area')
        for start, size in areas:
            for attempt in range(READ_ATTEMPTS):
                loc = _locate(reader, start, size, fresh=attempt > 0)
                if loc is not None:
                    break
            else:
                raise _fail(device, f'metadata area header at {start} '
                            f'keeps failing its checksum')
            if loc is not _IGNORED:
                return loc
        raise _fail(device, 'every metadata area of this PV is ignored')
    finally:
        reader.close()


def parse(text, device='metadata'):
    """Metadata(vg_name, vg_id, seqno) from a metadata text's head."""
    head = _HEAD.match(text)
    if not head:
        raise _fail(device, 'metadata text does not start with a VG')
    # Top-level keys come before the first nested section ("pv0 {").
    nested = text.find(b' {\n', head.end())
    top = text[:nested if nested >= 0 else len(text)]
    vg_id, seqno = _ID.search(top), _SEQNO.search(top)
    if not vg_id or not seqno:
        raise _fail(device, 'metadata text lacks id or seqno')
    return Metadata(head.group(1).decode(),
                    vg_id.group(1).decode('ascii', 'replace'),
                    int(seqno.group(1)))


def read(device):
    """The committed Metadata of the VG on PV ``device``."""
    _, text = read_text(device)
    return parse(text, device)


# -- the metadata text as a VG description --

# One pass turns the text into JSON: strings are kept as they are (LVM
# escapes " and \\ as JSON does), comments dropped, ``name =`` and
# ``name {`` become JSON keys with the commas between members.
_SYNTAX = re.compile(rb'("(?:[^"\\]|\\.)*")|#[^\n]*|'
                     rb'([A-Za-z0-9_.+-]+)[ \t]*([={])|(\})')

# Segment types whose physical extents are listed in ``stripes``; every
# other known type is made of sub-LVs (which are listed themselves).
_PV_SEGTYPES = {'striped', 'linear'}
_LV_SEGTYPES = ('mirror', 'raid', 'thin', 'thin-pool', 'snapshot', 'cache',
                'cache-pool', 'writecache', 'integrity', 'vdo', 'vdo-pool',
                'zero', 'error')


def tree(text):
    """The metadata text as nested dicts (sections) of values."""
    first = [True]

    def convert(m):
        string, name, op, close = m.groups()
        if string:
            first[0] = False
            return string
        if close:
            first[0] = False
            return b'}'
        if name is None:
            return b''
        out = (b'' if first[0] else b',') + b'"' + name + b'":'
        first[0] = op == b'{'
        return out + (b'{' if first[0] else b'')

    body = _SYNTAX.sub(convert, text.split(b'\0', 1)[0])
    return json.loads(b'{' + body + b'}')


# A section opens on a line of its own ("name {") and closes on one ("}");
# strings never span lines, so no string can fake either.
_LVS_OPEN = re.compile(rb'^logical_volumes \{$', re.M)
_SECTION_LINE = re.compile(rb'^(?:[A-Za-z0-9_.+-]+ \{|\})$', re.M)
# An LV section's segments come last and hold no section of their own,
# so every LV section ends with its last segment's close and its own.
_LV_END = b'}\n}\n'
_LV_START = re.compile(rb'\n*[A-Za-z0-9_.+-]+ \{\n')
_LVS_CLOSE = re.compile(rb'\n*\}$', re.M)
# The key of the made LV sections' context in a ``sections`` dict.
_CONTEXT = None


def split_lvs(text):
    """(the text without its LV sections, [each LV section's text])."""
    found = _LVS_OPEN.search(text)
    if not found:
        return text, []
    depth, start, sections = 0, 0, []
    for line in _SECTION_LINE.finditer(text, found.end()):
        if line.group() != b'}':
            start = line.start() if depth == 0 else start
            depth += 1
        elif depth == 0:  # logical_volumes closes
            return text[:found.end()] + b'\n' + text[line.start():], \
                sections
        else:
            depth -= 1
            if depth == 0:
                sections.append(text[start:line.end()])
    raise ValueError('logical_volumes section does not close')


def _lv_section(part):
    """(name, section) of the LV section that ``part`` (a piece of the
    text cut at _LV_END) is once its two closes are added back, or None
    if it is not exactly one section."""
    if not _LV_START.match(part):
        return None
    try:
        found = tree(part.lstrip(b'\n') + b'}\n}')
    except ValueError:
        return None
    if len(found) != 1:
        return None
    ((name, lv),) = found.items()
    return (name, lv) if isinstance(lv, dict) else None


def _section(lv_text):
    (name, lv), = tree(lv_text).items()
    return name, lv


def _split_known(text, known):
    """split_lvs() in C-speed steps, or None when the text is not laid out
    as LVM writes it (split_lvs() decides then): the text is cut at each
    LV section's end; a piece found in ``known`` (the pieces of an earlier
    text) is taken as it is, any other must make one whole LV section;
    the first piece that does not ends the list, where logical_volumes
    must close. (head, [piece], [what ``known`` has of it, or None],
    {index of a piece not known: (name, section)})."""
    found = _LVS_OPEN.search(text)
    if not found:
        return None
    start = found.end()
    parts = text[start:].split(_LV_END)
    got = list(map(known.get, parts))
    new, end = {}, 0
    while True:
        try:
            end = got.index(None, end)
        except ValueError:
            end = len(parts)
            break
        section = _lv_section(parts[end])
        if section is None:
            break
        new[end] = section
        end += 1
    close = _LVS_CLOSE.match(
        text, start + sum(map(len, parts[:end])) + len(_LV_END) * end)
    if not close:
        return None
    return (text[:start] + b'\n' + text[close.end() - 1:], parts[:end],
            got[:end], new)


class VGInfo:
    """A VG as its committed metadata describes it (sizes in bytes).

    ``devices`` maps PV UUIDs to this host's device paths; LV extents are
    reported on those paths, like ``lvs -o seg_pe_ranges``. ``sections``
    (a dict kept by the caller between texts) maps each LV section's piece
    of the text to what was made of it: a change re-parses only the LVs
    it touched, and the others cost a dict look-up (no Python work per
    line of the text: at 5,000 LVs, 1.4 MB, ~3 ms instead of ~20)."""

    def __init__(self, text, devices, sections=None):
        sections = {} if sections is None else sections
        # Read first: what the split takes from ``sections`` was made in
        # this context (threads parse with one dict).
        known_context = sections.get(_CONTEXT)
        split = _split_known(text, sections)
        if split is None:
            head, parts = split_lvs(text)
            got = [sections.get(t) for t in parts]
            new = {i: _section(t) for i, t in enumerate(parts)
                   if got[i] is None}
        else:
            head, parts, got, new = split
        doc = tree(head)
        names = [k for k, v in doc.items() if isinstance(v, dict)]
        if len(names) != 1:
            raise ValueError('metadata text does not hold exactly one VG')
        self.name = names[0]
        vg = doc[self.name]
        self.uuid = vg['id']
        self.seqno = vg['seqno']
        self.extent_size = vg['extent_size'] * SECTOR
        self.tags = list(vg.get('tags', []))
        self.pvs = {}
        for key, pv in vg.get('physical_volumes', {}).items():
            if pv['id'] not in devices:
                raise ValueError(f'PV {pv["id"]} is not seen on this host')
            self.pvs[key] = {'name': devices[pv['id']], 'uuid': pv['id'],
                             'pe_start': pv['pe_start'] * SECTOR,
                             'pe_count': pv['pe_count']}
        # What an LV section is made into also depends on these: what was
        # made in another context is made again.
        context = (self.extent_size, tuple(
            (k, p['name'], p['pe_start']) for k, p in self.pvs.items()))
        if known_context != context:
            remake = _lv_section if split else _section
            new = {i: new.get(i) or remake(p) for i, p in enumerate(parts)}
            got = [None] * len(parts)
        for i, (name, lv) in new.items():
            got[i] = (name, *self._lv(name, lv),
                      [seg for seg in lv.values() if isinstance(seg, dict)
                       and seg.get('type') == 'snapshot'])
        sections.clear()
        sections[_CONTEXT] = context
        sections.update(zip(parts, got, strict=True))
        # What each LV section made is shared with the texts after this
        # one: self.lvs is made of them when first asked for.
        self._made = got
        self._lvs = None
        used = sum(map(operator.itemgetter(2), got))
        total = sum(p['pe_count'] for p in self.pvs.values())
        self.size = total * self.extent_size
        self.free = (total - used) * self.extent_size

    @property
    def lvs(self):
        """{name: LV} as lv() gives them (not to be changed: lv() gives a
        copy)."""
        if self._lvs is None:
            self._lvs = self._index()
        return self._lvs

    def _index(self):
        lvs = dict(map(operator.itemgetter(0, 1), self._made))
        copied = set()

        def own(name):
            # Shared with other texts' VGInfo: changed on a copy.
            if name not in copied:
                lvs[name] = dict(lvs[name])
                copied.add(name)
            return lvs[name]
        # An old-style snapshot is a hidden LV whose 'snapshot' segment
        # names the origin and the COW LV; lvs reports the origin on the
        # COW LV (the one users see): so do we.
        # A merging one names its COW LV (hidden then) 'merging_store';
        # its origin is reported merging it, as lvs -o lv_attr 'O' says.
        for snapshots in filter(None, map(operator.itemgetter(3),
                                          self._made)):
            for seg in snapshots:
                cow = seg.get('cow_store') or seg.get('merging_store')
                origin = seg.get('origin', '')
                if cow in lvs:
                    own(cow)['origin'] = origin
                    # Shown by lvs unless merging, though its status in
                    # the metadata lacks VISIBLE.
                    own(cow)['visible'] |= bool(seg.get('cow_store'))
                if origin in lvs:
                    own(origin)['has_snapshots'] = True
                    if seg.get('merging_store'):
                        own(origin)['merging'] = seg['merging_store']
        return lvs

    def _lv(self, name, lv):
        ranges, types, extents, allocated = [], [], 0, 0
        segs = sorted((v for k, v in lv.items()
                       if k.startswith('segment') and isinstance(v, dict)),
                      key=lambda s: s['start_extent'])
        for seg in segs:
            kind = seg['type']
            if kind == 'striped' and seg.get('stripe_count') == 1:
                kind = 'linear'  # as LVM reports it
            if kind not in types:
                types.append(kind)
            extents += seg['extent_count']
            if kind in _PV_SEGTYPES:
                stripes = seg['stripes']
                count = seg.get('stripe_count', len(stripes) // 2)
                area = seg['extent_count'] // max(1, count)
                for pv, first in zip(stripes[::2], stripes[1::2],
                                     strict=True):
                    ranges.append((self.pvs[pv]['name'], first,
                                   first + area - 1))
                    allocated += area
            elif not kind.startswith(_LV_SEGTYPES):
                raise ValueError(f'LV {name}: unknown segment type {kind}')
        info = {'name': name, 'uuid': lv['id'],
                'size': extents * self.extent_size,
                'tags': list(lv.get('tags', [])),
                'origin': lv.get('origin', ''), 'segtype': ','.join(types),
                'pe_ranges': ranges, 'active': None,
                'has_snapshots': False, 'merging': '',
                'visible': 'VISIBLE' in lv.get('status', []),
                'extent_size': self.extent_size,
                'pe_start': {p['name']: p['pe_start']
                             for p in self.pvs.values()}}
        return info, allocated

    def lv(self, name):
        """One LV as LVM.lv() reports it, plus extent_size and the PVs'
        pe_start; LVMError 'not-found' if the VG has no such LV."""
        info = self.lvs.get(name)
        if info is None or not info['visible']:
            raise errors.LVMError(f'LV {self.name}/{name} not found',
                                  kind='not-found')
        return _copy(info)


def _copy(info):
    # A VGInfo is shared by every caller of a view (coordinator.lvm.vgview):
    # each gets its own lists and dicts to change.
    return dict(info, pe_ranges=list(info['pe_ranges']),
                tags=list(info['tags']), pe_start=dict(info['pe_start']))


def lv_info(meta, lvm, vg, lv):
    """LVM.lv() from the committed metadata ``meta`` (a VGInfo, or None
    when it could not be read), else from lvs, which has the last word."""
    if meta is not None:
        try:
            return meta.lv(lv)
        except errors.LVMError:
            pass
    return lvm.lv(vg, lv)


def lv_by_uuid(meta, lvm, vg, uuid):
    """The visible LV with ``uuid`` as lv_info() gives it, or None; from
    the committed metadata when it could be read, else from lvs."""
    if meta is not None:
        return next((_copy(x) for x in meta.lvs.values()
                     if x['uuid'] == uuid and x['visible']), None)
    return next((x for x in lvm.lvs(vg) if x['uuid'] == uuid), None)


def pv_uuid(block, offset):
    """The PV UUID of a label, dashed as LVM prints it."""
    raw = block[offset:offset + 32].decode('ascii', 'replace')
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, pos = [], 0
    for n in cuts:
        out.append(raw[pos:pos + n])
        pos += n
    return '-'.join(out)


def read_vg_text(vg, devices, where=None):
    """(checksum, text, {PV uuid: path}): the committed metadata of ``vg``
    from one of ``devices`` (this host's PV paths, every PV of the VG
    among them), and the PVs they are; ``where`` (a dict) gets the
    metadata area's size as 'area', the text's Location as 'location'
    and the device it was read from as 'device'."""
    seen, found = {}, None
    for device in devices:
        reader = _Reader(device)
        try:
            block, offset = _label(reader)
            seen[pv_uuid(block, offset)] = device
            if found is None:
                for start, size in _locn_lists(block, offset)[1]:
                    area = _read_area(reader, start, size)
                    if area:
                        if parse(area[1], device).vg_name == vg:
                            found = area + (device,)
                        break
        finally:
            reader.close()
    if found is None:
        raise _fail(','.join(devices), f'no metadata of VG {vg}')
    if where is not None:
        where['area'] = found[0].area_size
        where['location'] = found[0]
        where['device'] = found[2]
    return found[0].checksum, found[1], seen


def largest_section(sections):
    """The length of the largest LV section in a ``sections`` dict that
    VGInfo() filled (0 if none)."""
    return max((len(k) for k in sections if k is not _CONTEXT), default=0)


def vg_info(vg, text, seen, sections=None):
    """VGInfo of ``vg`` from its metadata ``text``; LVMError if it is not
    understood (or names a PV missing from ``seen``)."""
    try:
        return VGInfo(text, seen, sections)
    except (ValueError, KeyError, TypeError, IndexError,
            AttributeError) as exc:
        raise _fail(','.join(seen.values()), f'metadata of VG {vg} not '
                    f'understood: {exc}') from exc


def read_vg(vg, devices):
    """VGInfo of ``vg`` from the committed metadata on one of
    ``devices``."""
    _, text, seen = read_vg_text(vg, devices)
    return vg_info(vg, text, seen)
