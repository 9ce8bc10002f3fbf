"""VGViews: the shared VGs' committed metadata as this host last read it.

A read of a metadata area is ~0.5 ms (O_DIRECT, coordinator.lvm.mda) at
a few LVs, ~2-4 ms at 5,000 (1.4 MB); parsing a whole text into a VGInfo
costs ~3.8 ms at 50 LVs, ~14 ms at 200. So a text is parsed once,
whoever read it; of a new text only the LV sections that changed are
parsed (the others are found by a C-speed cut of the text and a dict
look-up: ~3 ms at 5,000 LVs); a seqno read whose metadata area header
still locates the text last read reads no text; and a caller to whom an
older answer is harmless (a free-space pre-check, the reply to the change
just made) takes the last text read instead of reading again.
"""
import logging

from coordinator import errors
from coordinator.lvm import mda
from coordinator.lvm import mdaroom

LOG = logging.getLogger(__name__)


class VGViews:
    """Seqno and VGInfo of the VGs on this host's PVs, read directly."""

    def __init__(self, lvm):
        self.lvm = lvm
        self._paths = {}    # vg -> this host's PV paths (from pvs)
        self._seen = {}     # vg -> {PV uuid: path} of the last full read
        # vg -> (checksum, text, Metadata, (device, Location) or None),
        # the newest text read
        self._text = {}
        self._parsed = {}   # vg -> (checksum, seen items, VGInfo)
        # vg -> {an LV section's piece of the text: what it made} (and the
        # context it was made in, mda.VGInfo)
        self._sections = {}
        self._area = {}     # vg -> its metadata area's size (bytes)
        self._largest = {}  # vg -> largest LV section of the last parse
        # seqno() reads that found the text unchanged by its header alone.
        self.headers_only = 0

    def _devices(self, vg, resolve):
        # Paths are resolved once, and again only when a read fails or
        # finds another VG (a path changed).
        if resolve or vg not in self._paths:
            self._paths[vg] = [p['name'] for p in self.lvm.pvs(vg)]
        return self._paths[vg]

    def seqno(self, vg, fresh=False):
        """The VG's committed seqno, from a PV's metadata area (always
        fresh: O_DIRECT). Unless ``fresh``, the area's header alone is
        read when the text last read came from that device: if it still
        locates that text (offset, size and checksum), the text is the
        one on disk and is not read again."""
        for attempt in range(2):
            for device in self._devices(vg, attempt > 0):
                if not fresh and attempt == 0:
                    kept = self._unchanged(vg, device)
                    if kept is not None:
                        return kept
                try:
                    loc, text = mda.read_text(device)
                    found = mda.parse(text, device)
                except errors.LVMError:
                    continue
                if found.vg_name == vg:
                    self._area[vg] = loc.area_size
                    self._keep(vg, loc.checksum, text, found, (device, loc))
                    return found.seqno
        return self.lvm.vg(vg)['seqno']

    def _unchanged(self, vg, device):
        """The seqno of the text last read if ``device``'s metadata area
        header still locates it, else None (then the text is read)."""
        kept = self._text.get(vg)
        if kept is None or kept[3] is None or kept[3][0] != device:
            return None
        try:
            loc = mda.read_location(device)
        except errors.LVMError:
            return None
        if loc != kept[3][1]:
            return None
        self.headers_only += 1
        return kept[2].seqno

    def info(self, vg, reread=True):
        """mda.VGInfo of ``vg``, or None when no metadata area can be read
        (callers ask LVM then); ``reread=False`` takes the last text read
        by seqno() or info() when there is one."""
        if not reread and vg in self._text and vg in self._seen:
            checksum, text = self._text[vg][:2]
            info = self._parse(vg, checksum, text, self._seen[vg])
            if info is not None:
                return info
        for attempt in range(2):
            try:
                where = {}
                checksum, text, seen = mda.read_vg_text(
                    vg, self._devices(vg, attempt > 0), where)
            except errors.LVMError as exc:
                LOG.debug('metadata of %s not read directly: %s', vg, exc)
                continue
            self._seen[vg] = seen
            self._area[vg] = where['area']
            self._keep(vg, checksum, text, mda.parse(text),
                       (where['device'], where['location']))
            info = self._parse(vg, checksum, text, seen)
            if info is not None:
                return info
        return None

    def room(self, vg):
        """mdaroom.Room of ``vg`` from the last text read (None before
        any): the area's size, the text's, the largest LV section's (of
        the last text parsed)."""
        if vg not in self._text or vg not in self._area:
            return None
        text = self._text[vg][1]
        return mdaroom.Room(vg, self._area[vg], len(text),
                            self._largest.get(vg, 0))

    def _keep(self, vg, checksum, text, meta, where=None):
        # Threads read concurrently: a read that began before another's
        # change must not replace the text that has it. ``where``:
        # (device, mda.Location) the text was read from.
        old = self._text.get(vg)
        if old is None or old[2].vg_id != meta.vg_id or \
                old[2].seqno <= meta.seqno:
            self._text[vg] = (checksum, text, meta, where)

    def _parse(self, vg, checksum, text, seen):
        key = (checksum, tuple(sorted(seen.items())))
        cached = self._parsed.get(vg)
        if cached and cached[0] == key:
            return cached[1]
        try:
            info = mda.vg_info(vg, text, seen,
                               self._sections.setdefault(vg, {}))
        except errors.LVMError as exc:
            # A PV this host has not seen yet (extended VG): read again.
            LOG.debug('metadata of %s not understood: %s', vg, exc)
            return None
        self._parsed[vg] = (key, info)
        self._largest[vg] = mda.largest_section(self._sections[vg])
        return info
