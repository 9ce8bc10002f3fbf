"""Combined "vg/lv" length and host names, refused before anything runs
(LVM 2.03.16 refuses "vg/lv" over 125 characters, measured)."""
import pytest

from coordinator.api import schema
from coordinator.errors import InvalidInput
from coordinator.lvm import names


def _refused(request):
    with pytest.raises(InvalidInput) as exc:
        schema.validate(request)
    return exc.value


def test_full_name_limit_is_lvms():
    assert names.full_name('v' * 10, 'a' * 114) == 'v' * 10 + '/' + 'a' * 114
    with pytest.raises(InvalidInput) as exc:
        names.full_name('v' * 10, 'a' * 115)
    assert 'at most 125' in str(exc.value)


@pytest.mark.parametrize('op, field, extra', [
    ('create', 'lv', {'size': '1G'}),
    ('rename', 'new_name', {'lv': 'a'}),
    ('snapshot', 'name', {'lv': 'a', 'size': '1G'}),
    ('activate', 'lv', {}),
])
def test_long_lv_names_refused_by_the_schema(op, field, extra):
    # Each part passes alone (127 characters): only the pair is too long.
    args = dict(extra, vg='vg0', **{field: 'x' * 127})
    args.setdefault('lv', 'a')
    err = _refused({'op': op, 'args': args})
    assert err.field == field
    assert '"VG/LV" is 131 characters long' in str(err)


def test_longest_accepted_name_passes():
    op, args = schema.validate({'op': 'create', 'args': {
        'vg': 'vg0', 'lv': 'x' * 121, 'size': '1G'}})
    assert args['lv'] == 'x' * 121


@pytest.mark.parametrize('host', ['compute-1', 'a', 'node_1.example.com',
                                  'x' * 63])
def test_valid_host_names(host):
    assert names.host_name(host) == host
    assert schema.validate({'op': 'deactivate', 'args': {
        'vg': 'v', 'lv': 'l', 'host': host}})[1]['host'] == host


@pytest.mark.parametrize('host, reason', [
    ('é', 'ASCII'), ('ﾃスト', 'ASCII'), ('١', 'ASCII'), ('.', '"."'),
    ('..', '".."'), ('a/b', 'ASCII'), ('a b', 'ASCII'), ('', 'empty'),
    ('x' * 64, 'at most 63'), (7, 'string')])
def test_invalid_host_names(host, reason):
    with pytest.raises(InvalidInput) as exc:
        names.host_name(host, 'host')
    assert reason in str(exc.value)
    err = _refused({'op': 'refresh', 'args': {'vg': 'v', 'lv': 'l',
                                              'host': host}})
    assert err.field == 'host'
