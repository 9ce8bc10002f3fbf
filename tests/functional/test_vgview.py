"""VGViews on real LVM: what it makes of the metadata, re-using what it
parsed before, matches lvs after every kind of change, from any host; a
coordinated create reads the text once and parses its own LV alone."""
import collections
import uuid

import pytest

from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine
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


def test_seqno_reads_the_text_only_when_its_header_moved():
    with SharedVG(hosts=2) as shared:
        here, there = (h.lvm for h in shared.hosts)
        views, vg = vgview.VGViews(here), shared.vg
        first = views.seqno(vg)
        assert views.headers_only == 0
        assert views.seqno(vg) == first and views.headers_only == 1
        # Changed by another host: the header locates another text.
        there.create_lv(vg, 'there', 4 * MiB)
        assert views.seqno(vg) == first + 1 and views.headers_only == 1
        assert 'there' in views.info(vg, reread=False).lvs
        # fresh: the text is read whatever its header says.
        assert views.seqno(vg, fresh=True) == first + 1
        assert views.headers_only == 1
        assert views.seqno(vg) == first + 1 and views.headers_only == 2


def _fill(lvm, vg, count):
    # One extent each, in one vgcfgrestore (bench/bigvg.py).
    import tempfile

    from bench import bigvg
    with tempfile.TemporaryDirectory() as tmp:
        bigvg.fill(lvm, vg, count, tmp)


@pytest.mark.parametrize('count', [10, 1000])
def test_a_create_costs_one_text_read_and_one_lv_parse_at_any_size(
        count, etcd_server, monkeypatch):
    # What a daemon create does to the metadata (ops.op_create under the
    # MetadataGuard): free space and room before the lock, the seqno
    # under it, lvcreate, the seqno after it and the new LV for the
    # reply. At 5,000 LVs its cost grew with the LV count (doc/bench.md,
    # big VGs): each seqno read the whole text and the reply's parse
    # went over every LV section.
    eng = Engine(etcdlib.Etcd(etcd_server.endpoints, timeout=2.0,
                              retry_window=5.0), 'volume-1',
                 f'vgv{uuid.uuid4().hex[:6]}', ttl=5, grace=1.0).open()
    alerts = []
    try:
        with SharedVG(hosts=2, size=8 << 30) as shared:
            here, there = (h.lvm for h in shared.hosts)
            views, vg = vgview.VGViews(here), shared.vg
            guard = eng.guard(views.seqno,
                              on_alert=lambda vg, msg: alerts.append(msg))
            _fill(here, vg, count)

            def create(name):
                assert views.info(vg, reread=False).free > 4 * MiB
                assert views.room(vg) is not None
                got = []
                guard.change(vg, f'lvcreate {vg}/{name}',
                             lambda: here.create_lv(vg, name, 4 * MiB),
                             after=lambda: got.append(
                                 views.info(vg, reread=False).lv(name)))
                return got[0]

            create('warm')
            counts = collections.Counter()
            for module, name in ((mda, 'read_text'), (mda, 'read_vg_text'),
                                 (mda, '_lv_section'), (mda, 'split_lvs'),
                                 (here, 'run')):
                real = getattr(module, name)

                def counted(*a, _real=real, _name=name, **kw):
                    counts[_name if _name != 'run' else a[0][0]] += 1
                    return _real(*a, **kw)
                monkeypatch.setattr(module, name, counted)
            lv = create('new')
            assert lv['size'] == 4 * MiB and lv['name'] == 'new'
            # One text read (after the change), the new LV and the piece
            # where the LV list ends parsed, one LVM command, whatever the
            # LV count.
            assert counts == {'read_text': 1, '_lv_section': 2,
                              'lvcreate': 1}, counts
            assert not alerts
            # A change made outside lvmcoord is still seen under the lock.
            monkeypatch.undo()
            there.create_lv(vg, 'rogue', 4 * MiB)
            create('after-rogue')
            assert len(alerts) == 1 and 'outside lvmcoord' in alerts[0]
            assert views.info(vg).lv('rogue')['size'] == 4 * MiB
    finally:
        eng.close(revoke=True)
