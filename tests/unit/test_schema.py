"""The schema rules: who may run in which cluster schema, and when the
schema may be raised (coordinator.engine.schema)."""
import pytest

from coordinator import errors
from coordinator import release
from coordinator.engine import schema


def rec(version, low, by='9.9'):
    return {'version': version, 'min_compatible': low, 'written_by': by}


def test_no_key_is_schema_one_of_the_previous_releases():
    assert schema.parse(None)[:2] == (1, 1)
    assert schema.judge(None) is None


def test_this_release_runs_in_every_schema_it_speaks():
    for v in range(release.MIN_SCHEMA, release.SCHEMA + 1):
        assert schema.judge(rec(v, release.MIN_SCHEMA)) is None
        assert schema.judge(rec(v, v)) is None


def test_newer_cluster_is_refused_naming_both_versions():
    why = schema.judge(rec(release.SCHEMA + 1, release.SCHEMA + 1, '7.0'))
    assert f'release {release.RELEASE}' in why
    assert f'schema {release.SCHEMA + 1}' in why
    assert 'release 7.0' in why and 'newer' in why


def test_newer_version_still_compatible_is_accepted():
    # A later release that keeps our schema readable says so.
    assert schema.judge(rec(release.SCHEMA + 1, release.SCHEMA)) is None


def test_older_cluster_than_we_speak_is_refused():
    why = schema.judge(rec(1, 1, '0.1'), release='3.0', schema=4,
                       min_schema=3)
    assert 'release 3.0 (schema 3..4)' in why
    assert 'schema 1' in why and 'older' in why and 'release 0.1' in why


@pytest.mark.parametrize('bad', ['x', 3, {'version': 0},
                                 {'version': 'two'},
                                 {'version': 2, 'min_compatible': 3},
                                 {'version': True}, {}])
def test_malformed_record_is_a_clear_error(bad):
    with pytest.raises(errors.InvalidInput, match='schema'):
        schema.judge(bad)


def test_member_speaks():
    old = {'host': 'a'}  # a session record of the previous release
    new = {'host': 'b', **release.fields()}
    assert schema.member_speaks(old, 1) and not schema.member_speaks(old, 2)
    assert schema.member_speaks(new, 1) and schema.member_speaks(new, 2)
    assert 'schema 1' in schema.describe(old)
    assert release.RELEASE in schema.describe(new)


class KV:
    def __init__(self, value, rev):
        self.value, self.mod_revision = value, rev

    def json(self):
        return self.value


class Res:
    def __init__(self, ok, ranges=()):
        self.succeeded, self.ranges = ok, ranges


class FakeEtcd:
    """Just the key the schema reads and its guarded writes."""

    def __init__(self, value=None):
        self.value, self.rev = value, 5 if value else 0

    def get(self, key):
        return KV(self.value, self.rev) if self.value is not None else None

    def txn(self, compare, success, failure=()):
        _, kind, rev = compare[0]
        ok = self.rev == rev if kind == 'mod' else self.value is None
        if ok:
            self.value, self.rev = success[0], self.rev + 1
            return Res(True)
        return Res(False, [[KV(self.value, self.rev)]])


@pytest.fixture
def fake(monkeypatch):
    from coordinator.engine import etcd as etcdlib
    monkeypatch.setattr(etcdlib, 'cmp_create', lambda k, r: (k, 'create', r))
    monkeypatch.setattr(etcdlib, 'cmp_mod', lambda k, r: (k, 'mod', r))
    monkeypatch.setattr(etcdlib, 'op_put', lambda k, v, lease=0: v)
    monkeypatch.setattr(etcdlib, 'op_range', lambda k: k)

    class Keys:
        def schema(self):
            return 'schema'
    return lambda value=None: (FakeEtcd(value), Keys())


def test_check_records_schema_one_when_absent(fake):
    etcd, keys = fake()
    got = schema.Schema(etcd, keys).check('h1')
    assert (got['version'], got['min_compatible']) == (1, 1)
    assert got['written_by'] == release.RELEASE


def test_check_refuses_newer(fake):
    etcd, keys = fake(rec(99, 99))
    with pytest.raises(schema.Incompatible, match='schema 99'):
        schema.Schema(etcd, keys).check('h1')


def test_finalize_waits_for_every_member(fake):
    etcd, keys = fake(rec(1, 1))
    sch = schema.Schema(etcd, keys)
    members = {'old-1': {}, 'new-1': release.fields()}
    with pytest.raises(schema.Incompatible, match='old-1 runs before'):
        sch.finalize(members)
    assert etcd.value['version'] == 1
    got = sch.finalize({'new-1': release.fields()})
    assert (got['version'], got['min_compatible']) == (release.SCHEMA,
                                                       release.SCHEMA)
    # Idempotent once there.
    assert sch.finalize({'new-1': release.fields()}) == etcd.value
