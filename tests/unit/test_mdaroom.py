"""mdaroom: the metadata area's limit and the growth of a change."""
import pytest

from coordinator import errors
from coordinator.lvm import mdaroom


def test_limit_is_lvms():
    # LVM 2.03.16, 64 KiB area: "maximum metadata size (32000 bytes)".
    assert mdaroom.Room('vg', 65536, 0, 0).limit == 32000


def test_growth_by_op():
    room = mdaroom.Room('vg', 65536, 20000, 400)
    assert room.growth('create') == 500
    assert room.growth('snapshot') == 1000
    assert mdaroom.Room('vg', 65536, 2000, 0).growth('create') == 1280


def test_check_names_vg_and_numbers():
    mdaroom.check(mdaroom.Room('vg1', 65536, 31000, 400), 'create', 'vg1/a')
    mdaroom.check(None, 'create', 'vg1/a')
    with pytest.raises(errors.MetadataFull) as exc:
        mdaroom.check(mdaroom.Room('vg1', 65536, 31600, 400), 'create',
                      'vg1/a')
    text = str(exc.value)
    assert 'VG vg1' in text and '31600 bytes' in text and '32000' in text
    assert errors.from_dict(exc.value.to_dict()).code == 'metadata-full'
