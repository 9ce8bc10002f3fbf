"""This tree's release and the etcd schema versions it speaks.

A constant, not the package's version: a daemon run from a source tree
(the sandbox, the upgrade test's extracted previous release) has no
installed metadata, and pbr's git-derived version differs between a clone
and an archive. Bump RELEASE with every landed release; bump SCHEMA only
when the data in etcd changes in a way an older release cannot read
(doc/upgrade.md).
"""

# This release's name: recorded in each host's session record.
RELEASE = '0.2.0'
# The highest cluster schema this release writes and understands.
SCHEMA = 2
# The lowest cluster schema this release can still work in (coexisting
# with the releases that wrote it).
MIN_SCHEMA = 1
# What a cluster without a schema key runs: the releases before the key
# existed (the previous landed release, etc/previous-release).
IMPLICIT_SCHEMA = 1


def fields():
    """What a session record says of the release that opened it."""
    return {'release': RELEASE, 'schema': SCHEMA, 'min_schema': MIN_SCHEMA}
