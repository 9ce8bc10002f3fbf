"""VGViews on real LVM: what it makes of the metadata, re-using what it
parsed before, matches lvs after every kind of change, from any host."""
from coordinator.lvm import mda
from coordinator.lvm import vgview
from coordinator.sandbox.lvm import SharedVG

MiB = 2 ** 20

FIELDS = ('uuid', 'size', 'tags', 'segtype', 'origin', 'pe_ranges')


def _as_lvs_reports(info):
    return {name: {k: lv[k] for k in FIELDS}
            for name, lv in info.lvs.items() if lv['visible']}


def _lvs(lvm, vg):
    return {lv['name']: {k: lv[k] for k in FIELDS} for lv in lvm.lvs(vg)}


def test_view_matches_lvs_through_changes_made_elsewhere():
    with SharedVG(hosts=2) as shared:
        here, there = (h.lvm for h in shared.hosts)
        views, vg = vgview.VGViews(here), shared.vg
        changes = [
            lambda: there.create_lv(vg, 'a', 8 * MiB, tags=['t1']),
            lambda: there.create_lv(vg, 'b', 4 * MiB),
            lambda: there.create_lv(vg, 'c', 4 * MiB),
            lambda: there.extend_lv(vg, 'a', 16 * MiB),  # a second segment
            lambda: there.rename_lv(vg, 'b', 'b2'),
            lambda: there.add_tags(vg, 'c', ['attached:x']),
            lambda: there.remove_lv(vg, 'b2'),
        ]
        for change in changes:
            change()
            seqno = views.seqno(vg)
            # The text seqno() read serves without reading again, parsed
            # with the LV sections of the texts before it.
            kept = views.info(vg, reread=False)
            fresh = mda.read_vg(vg, [shared.device])
            assert kept.seqno == fresh.seqno == seqno
            assert _as_lvs_reports(kept) == _as_lvs_reports(fresh) == \
                _lvs(here, vg)
            assert kept.free == fresh.free == here.vg(vg)['free']
        assert views.info(vg).lv('a')['pe_ranges'] == \
            here.lv(vg, 'a')['pe_ranges']


def test_a_late_read_does_not_replace_a_newer_text():
    with SharedVG(hosts=1) as shared:
        lvm, vg = shared.hosts[0].lvm, shared.vg
        views = vgview.VGViews(lvm)
        old = mda.read_text(shared.device)
        lvm.create_lv(vg, 'new', 4 * MiB)
        views.seqno(vg)
        # A thread whose read began before the change stores it after.
        views._keep(vg, old[0].checksum, old[1], mda.parse(old[1]))
        assert 'new' in views.info(vg, reread=False).lvs
