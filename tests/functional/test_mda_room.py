"""A nearly full metadata area: the daemon refuses before LVM would fail,
on real LVM on a loop device with a 64 KiB metadata area."""
import re

import pytest

from coordinator import errors
from coordinator.lvm import mda
from coordinator.sandbox.cluster import Cluster

MiB = 1 << 20


def _mda_free(lvm, vg):
    out = lvm.run(['vgs', '--noheadings', '--units', 'b', '--nosuffix',
                   '-o', 'vg_mda_free', vg], vg)
    return int(out.strip())


@pytest.fixture(scope='module')
def small():
    with Cluster(hosts=('volume-1',), ttl=4, grace=1.0,
                 vg_size=512 * MiB, metadata_size='64k') as c:
        yield c


def test_create_refused_before_lvm_fails(small):
    vg, lvm = small.vg.vg, small.vg.hosts[0].lvm
    client = small['volume-1'].client
    # Filled with plain LVM (fast), then through the daemon to the brim.
    i = 0
    while _mda_free(lvm, vg) > 4096:
        lvm.create_lv(vg, f'p{i:03d}', 4 * MiB)
        i += 1
    with pytest.raises(errors.MetadataFull) as refused:
        for n in range(40):
            client.call('create', vg=vg, lv=f'd{n:02d}', size=4 * MiB)
    message = str(refused.value)
    assert vg in message and 'nearly full' in message, message
    assert 'Nothing was changed' in message
    before = mda.read(small.vg.device).seqno
    names = set(small.vg.lv_names())
    with pytest.raises(errors.MetadataFull):
        client.call('create', vg=vg, lv='refused', size=4 * MiB)
    # Refused without a change: same seqno, no new LV.
    assert mda.read(small.vg.device).seqno == before
    assert set(small.vg.lv_names()) == names
    # Every daemon create before it succeeded (MetadataFull, never an
    # LVMError, ended the loop), and its figure is LVM's own vg_mda_free
    # (which LVM rounds down to a sector).
    free = int(re.search(r'so (\d+) free', message).group(1))
    assert free - 512 < _mda_free(lvm, vg) <= free


def test_extend_refused_when_full(small):
    vg, lvm = small.vg.vg, small.vg.hosts[0].lvm
    client = small['volume-1'].client
    i = 0
    while True:   # to LVM's own limit
        try:
            lvm.create_lv(vg, f'q{i:03d}', 4 * MiB)
        except errors.LVMError:
            break
        i += 1
    with pytest.raises(errors.MetadataFull, match=vg):
        client.call('extend', vg=vg, lv='p000', size=8 * MiB)
    assert lvm.lv(vg, 'p000')['size'] == 4 * MiB
