"""Room left in a VG's metadata area, judged before a change is made.

LVM writes a new metadata text beside the committed one in the circular
area, so a text may fill little under half of it. Measured on 2.03.16: a
64 KiB area refused a 32,040-byte text, "exceeds maximum metadata size
(32000 bytes)", which is (area - 3 sectors) / 2; its ``vg_mda_free`` is
that limit less the current text, rounded down to a sector. A change
LVM would refuse is refused here first, naming the numbers, and nothing
runs: at 5,000 LVs a failed lvcreate has cost a whole metadata write.
"""
import collections

from coordinator import errors

SECTOR = 512
# The growth of a new LV section when no LV section has been seen yet
# (measured: 280-700 bytes with tags).
DEFAULT_LV_TEXT = 1024
# Headroom over the estimate: names, tags, a second segment.
MARGIN = 1.25
# LV sections a change adds: a snapshot adds its COW LV and the hidden
# snapshot LV; an extend at most a segment (counted as one LV, which is
# more).
SECTIONS = {'create': 1, 'snapshot': 2, 'extend': 1}


class Room(collections.namedtuple('Room', 'vg area used largest')):
    """A metadata area's size, its text's size, the largest LV section."""

    @property
    def limit(self):
        """The largest text LVM writes into this area."""
        return (self.area - 3 * SECTOR) // 2

    @property
    def free(self):
        """What LVM reports as vg_mda_free (before sector rounding)."""
        return max(0, self.limit - self.used)

    def growth(self, op, extra=0):
        """Bytes the text is expected to grow by for ``op``."""
        per = max(self.largest, DEFAULT_LV_TEXT if not self.largest else 0)
        return int(SECTIONS[op] * per * MARGIN) + extra


def check(room, op, what, extra=0):
    """MetadataFull if ``op`` (create/snapshot/extend) on ``what`` would
    not fit in ``room`` (a Room, or None: nothing known, LVM decides)."""
    if room is None:
        return
    need = room.growth(op, extra)
    if need <= room.free:
        return
    raise errors.MetadataFull(
        f'{op} {what} refused before running it: the metadata area of VG '
        f'{room.vg} is nearly full ({room.used} bytes of metadata, at most '
        f'{room.limit} fit in its {room.area}-byte area, so {room.free} '
        f'free; this change needs about {need}). Nothing was changed. '
        f'Remove LVs, or add a PV with a larger --metadatasize '
        f'(vgextend) and move the metadata to it.')
