"""Unit tests for coordinator.lvm.names."""
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from coordinator.errors import InvalidInput
from coordinator.lvm import names

NAME_CHARS = ('abcdefghijklmnopqrstuvwxyz'
              'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-')
TAG_CHARS = NAME_CHARS + '/=!:&#'

ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                st.binary(max_size=50), st.text(max_size=300),
                st.lists(st.text(max_size=5), max_size=3),
                st.dictionaries(st.text(max_size=3), st.integers(),
                                max_size=2))


def _invalid(func, value, *args, **kw):
    with pytest.raises(InvalidInput) as exc:
        func(value, *args, **kw)
    return exc.value


@pytest.mark.parametrize('name', ['vg0', 'a', 'A.b_c+d-e', '_x', '+x',
                                  '...', '.a', 'x' * 127, '0'])
def test_valid_vg_names(name):
    assert names.vg_name(name) == name


@pytest.mark.parametrize('name, reason', [
    ('', 'empty'), ('-vg', 'start with "-"'), ('.', '"."'), ('..', '"."'),
    ('a/b', 'may contain only'), ('/dev/sda', 'may contain only'),
    ('a b', 'may contain only'), ('a\n', 'may contain only'),
    ('a\x00b', 'may contain only'), ('é', 'may contain only'),
    ('x' * 128, 'at most 127'), ('a$b', 'may contain only'),
    ('١', 'may contain only')])
def test_invalid_vg_names(name, reason):
    exc = _invalid(names.vg_name, name)
    assert exc.field == 'vg'
    assert reason in str(exc)


@pytest.mark.parametrize('value', [None, 1, 1.5, b'vg0', ['vg0'], True])
def test_names_must_be_strings(value):
    assert 'must be a string' in str(_invalid(names.vg_name, value))
    assert 'must be a string' in str(_invalid(names.lv_name, value))
    assert 'must be a string' in str(_invalid(names.tag, value))


def test_field_is_named():
    assert _invalid(names.lv_name, '', 'new_name').field == 'new_name'
    assert str(_invalid(names.vg_name, '-x', 'args.vg')).startswith(
        'args.vg: ')


@pytest.mark.parametrize('name', ['lv0', 'volume-1234', 'snap', 'xpvmove',
                                  'my_snapshot', 'a_cdat', 'x' * 127])
def test_valid_lv_names(name):
    assert names.lv_name(name) == name


@pytest.mark.parametrize('name, reason', [
    ('snapshot', "starting with 'snapshot'"),
    ('snapshot1', "starting with 'snapshot'"),
    ('pvmove0', "starting with 'pvmove'"),
    ('a_cdata', "'_cdata'"), ('x_cmeta_y', "'_cmeta'"), ('_corig', "'_corig'"),
    ('a_mlog', "'_mlog'"), ('a_mimage_0', "'_mimage'"),
    ('a_pmspare', "'_pmspare'"), ('a_rimage_1', "'_rimage'"),
    ('a_rmeta_1', "'_rmeta'"), ('a_tdata', "'_tdata'"),
    ('a_tmeta', "'_tmeta'"), ('a_vorigin', "'_vorigin'"),
    ('a_vdata', "'_vdata'"), ('a_cpool', "'_cpool'"), ('a_cvol', "'_cvol'"),
    ('a_wcorig', "'_wcorig'"), ('a_imeta', "'_imeta'"),
    ('a_iorig', "'_iorig'"), ('-lv', 'start with "-"'), ('..', '"."'),
    ('x' * 128, 'at most 127')])
def test_invalid_lv_names(name, reason):
    exc = _invalid(names.lv_name, name)
    assert exc.field == 'lv'
    assert reason in str(exc)


@pytest.mark.parametrize('value', ['t', 'a/b=c:d&e#f!g', '-dash', '@x'[1:],
                                   'x' * 1024, 'cinder:volume=1'])
def test_valid_tags(value):
    assert names.tag(value) == value


@pytest.mark.parametrize('value, reason', [
    ('', 'empty'), ('a b', 'may contain only'), ('@x', 'may contain only'),
    ('a,b', 'may contain only'), ('x' * 1025, 'at most 1024'),
    ('tab\t', 'may contain only'), ('ü', 'may contain only')])
def test_invalid_tags(value, reason):
    exc = _invalid(names.tag, value, 'tags[2]')
    assert exc.field == 'tags[2]'
    assert reason in str(exc)


def test_control_characters_are_shown_escaped():
    assert '\\x1b' in str(_invalid(names.vg_name, 'a\x1b[31m'))


@pytest.mark.parametrize('value, expected', [
    (1, 1), (4096, 4096), ('512', 512), ('7b', 7), ('7B', 7),
    ('4k', 4096), ('4K', 4096), ('4m', 4 * 2 ** 20), ('512M', 512 * 2 ** 20),
    ('10G', 10 * 2 ** 30), ('10g', 10 * 2 ** 30), ('10GiB', 10 * 2 ** 30),
    ('10gb', 10 * 2 ** 30), ('1.5G', 3 * 2 ** 29), ('0.5k', 512),
    ('2T', 2 * 2 ** 40), ('1P', 2 ** 50), ('1E', 2 ** 60)])
def test_sizes(value, expected):
    assert names.size(value) == expected


@pytest.mark.parametrize('value, reason', [
    (0, 'positive'), (-1, 'positive'), ('0', 'positive'), ('0G', 'positive'),
    ('-1G', 'not a size'), ('', 'not a size'), ('G', 'not a size'),
    ('1X', 'not a size'), ('1 G', 'not a size'), (' 1G', 'not a size'),
    ('1G\n', 'not a size'), ('1.G', 'not a size'), ('1e3', 'not a size'),
    ('1,5G', 'not a size'), ('0x10', 'not a size'), ('10bb', 'not a size'),
    ('١', 'not a size'), ('1.0000001k', 'whole number'),
    ('0.3', 'whole number'), ('9' * 100, 'not a size'),
    (True, 'integer'), (1.0, 'integer'), (None, 'integer'),
    (b'1G', 'integer'), ([1], 'integer'), (2 ** 63, 'maximum'),
    ('8E', 'maximum')])
def test_invalid_sizes(value, reason):
    exc = _invalid(names.size, value, 'args.size')
    assert exc.field == 'args.size'
    assert reason in str(exc)


def test_huge_integers_are_refused_without_formatting_them():
    # str() of an int over 4300 digits raises ValueError.
    assert 'maximum' in str(_invalid(names.size, 10 ** 5000))
    assert 'positive' in str(_invalid(names.size, -10 ** 5000))


def test_size_bounded_by_free_space():
    assert names.size('1G', free=2 ** 30) == 2 ** 30
    exc = _invalid(names.size, '1G', free=2 ** 30 - 1)
    assert str(2 ** 30 - 1) in str(exc) and 'free' in str(exc)
    assert names.size(10, maximum=10) == 10
    assert 'maximum of 9' in str(_invalid(names.size, 10, maximum=9))


def _name_text(first):
    rest = st.text(alphabet=NAME_CHARS, max_size=126)
    return st.builds(lambda a, b: a + b, first, rest).filter(
        lambda s: s not in ('.', '..'))


VG_NAMES = _name_text(st.sampled_from(NAME_CHARS.replace('-', '')))


def _not_reserved(name):
    return not name.startswith(names.LV_RESERVED_PREFIXES) and not any(
        part in name for part in names.LV_RESERVED_STRINGS)


@settings(max_examples=300)
@given(VG_NAMES)
def test_valid_vg_names_round_trip(name):
    assert names.vg_name(name) == name


@settings(max_examples=300)
@given(VG_NAMES.filter(_not_reserved))
def test_valid_lv_names_round_trip(name):
    assert names.lv_name(name) == name


@settings(max_examples=300)
@given(st.text(alphabet=TAG_CHARS, min_size=1, max_size=1024))
def test_valid_tags_round_trip(value):
    assert names.tag(value) == value


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=names.MAX_SIZE),
       st.sampled_from(['', 'b', 'k', 'M', 'g', 'T', 'GiB', 'mb']))
def test_sizes_round_trip(n, unit):
    scale = {'': 1, 'b': 1, 'k': 2 ** 10, 'm': 2 ** 20, 'g': 2 ** 30,
             't': 2 ** 40}[unit[:1].lower()]
    if n * scale > names.MAX_SIZE:
        _invalid(names.size, f'{n}{unit}')
    else:
        assert names.size(f'{n}{unit}') == n * scale


@settings(max_examples=200)
@given(ANY)
def test_anything_else_raises_only_invalid_input(value):
    for func in (names.vg_name, names.lv_name, names.tag, names.size):
        try:
            out = func(value, 'f')
        except InvalidInput as exc:
            assert exc.field == 'f'
            assert str(exc).startswith('f: ')
        else:
            assert out == value or func is names.size


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(codec='utf-8'), max_size=200))
def test_random_text_valid_only_if_lvm_allows(text):
    try:
        names.vg_name(text)
    except InvalidInput:
        ok = False
    else:
        ok = True
    assert ok == (0 < len(text) <= 127 and set(text) <= set(NAME_CHARS)
                  and not text.startswith('-') and text not in ('.', '..'))
