"""The cluster's schema version in etcd, and who may run beside it.

`schema` holds {"version": N, "min_compatible": M, "written_by": R}: the
cluster's data is schema N, and only releases speaking schema M or newer
may join. No key: a cluster of releases before the key existed (schema
1). A daemon speaks schemas MIN_SCHEMA..SCHEMA (coordinator/release.py);
outside that range it refuses to start, naming both versions. The schema
is raised only by `finalize`, once every live member speaks the new one
(doc/upgrade.md).
"""
import time

from coordinator import errors
from coordinator import release as rel
from coordinator.engine import etcd as etcdlib


class Incompatible(errors.CoordError):
    """This release cannot run in the cluster's schema."""

    code = 'schema-incompatible'


def parse(value):
    """(version, min_compatible, written_by) of a schema record; clear
    error on a malformed one."""
    if value is None:
        return rel.IMPLICIT_SCHEMA, rel.IMPLICIT_SCHEMA, \
            'a release before the schema key'
    if not isinstance(value, dict):
        raise errors.InvalidInput('schema', f'{value!r} is not an object')
    version, low = value.get('version'), value.get('min_compatible', 1)
    for name, v in (('version', version), ('min_compatible', low)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise errors.InvalidInput(
                'schema', f'{name} {v!r} is not a positive integer')
    if low > version:
        raise errors.InvalidInput(
            'schema', f'min_compatible {low} is above version {version}')
    return version, low, str(value.get('written_by') or 'unknown')


def judge(value, release=rel.RELEASE, schema=rel.SCHEMA,
          min_schema=rel.MIN_SCHEMA):
    """None if this release may run in the cluster's schema ``value``
    (the key's JSON or None), else why not (one line, both versions)."""
    version, low, by = parse(value)
    mine = f'this daemon is release {release} (schema {min_schema}' \
           f'..{schema})'
    if low > schema:
        return (f'{mine}; the cluster runs schema {version} '
                f'(min_compatible {low}, written by release {by}), newer '
                f'than it understands: upgrade this host to release {by} '
                f'or later')
    if version < min_schema:
        return (f'{mine}; the cluster runs schema {version} (written by '
                f'release {by}), older than it can speak: first upgrade '
                f'every host to a release speaking schema {version}..'
                f'{min_schema}, then finalize')
    return None


def member_speaks(record, target):
    """Whether a session record's release can run in schema ``target``."""
    high = record.get('schema', rel.IMPLICIT_SCHEMA)
    low = record.get('min_schema', rel.IMPLICIT_SCHEMA)
    return low <= target <= high


def describe(record):
    """A session record's release for people: 'R (schema L..H)'."""
    if 'release' not in record:
        return f'before {rel.RELEASE} (schema {rel.IMPLICIT_SCHEMA})'
    return f'{record["release"]} (schema {record.get("min_schema")}' \
           f'..{record.get("schema")})'


class Schema:
    """Read, check and raise the cluster's schema key."""

    def __init__(self, etcd, keys):
        self.etcd, self.keys = etcd, keys

    def read(self):
        """(the key's JSON or None, its mod revision or 0)."""
        kv = self.etcd.get(self.keys.schema())
        return (kv.json(), kv.mod_revision) if kv else (None, 0)

    def check(self, host):
        """Refuse (Incompatible) a release that cannot run here; record
        schema 1 when no key exists yet. The cluster's record."""
        value, _ = self.read()
        why = judge(value)
        if why:
            raise Incompatible(why)
        if value is None:
            # Written as schema 1: releases before the key may still be
            # members (they never read it); finalize raises it.
            mine = {'version': rel.IMPLICIT_SCHEMA,
                    'min_compatible': rel.IMPLICIT_SCHEMA,
                    'written_by': rel.RELEASE, 'host': host,
                    'at': time.time()}
            key = self.keys.schema()
            res = self.etcd.txn([etcdlib.cmp_create(key, 0)],
                                [etcdlib.op_put(key, mine)],
                                [etcdlib.op_range(key)])
            if res.succeeded:
                return mine
            value = res.ranges[0][0].json()
            why = judge(value)
            if why:
                raise Incompatible(why)
        return value

    def laggards(self, sessions, target=rel.SCHEMA):
        """{host: release} of live members that cannot run ``target``."""
        return {h: describe(r) for h, r in sorted(sessions.items())
                if not member_speaks(r, target)}

    def finalize(self, sessions, target=rel.SCHEMA, by='admin-cli'):
        """Raise the schema to ``target`` (min_compatible too) if every
        live member in ``sessions`` ({host: record}) speaks it; the new
        record, or Incompatible naming the members that do not."""
        value, rev = self.read()
        version, _, _ = parse(value)
        if version >= target:
            return value
        behind = self.laggards(sessions, target)
        if behind:
            raise Incompatible(
                f'cannot raise the cluster schema from {version} to '
                f'{target}: ' + ', '.join(f'{h} runs {r}'
                                          for h, r in behind.items()) +
                '; upgrade them first')
        new = {'version': target, 'min_compatible': target,
               'written_by': rel.RELEASE, 'host': by, 'at': time.time()}
        key = self.keys.schema()
        # Guarded by what was read: two finalizes, or a check writing
        # schema 1 meanwhile, never overwrite each other blindly.
        guard = etcdlib.cmp_mod(key, rev)
        res = self.etcd.txn([guard], [etcdlib.op_put(key, new)])
        if not res.succeeded:
            raise Incompatible('the cluster schema changed while '
                               'finalizing; run it again')
        return new
