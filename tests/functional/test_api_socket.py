"""The API socket is created only in a directory nobody but root can
change, without following symlinks, and appears with its final mode and
group (coordinator.api.server)."""
import grp
import os
import stat

import pytest

from coordinator import errors
from coordinator.api.server import APIServer

NOBODY = 65534


def handler(op, args):
    return {}


def other_group():
    return next(g for g in grp.getgrall() if g.gr_gid != 0)


def refused(path, group=None):
    with pytest.raises(errors.InvalidInput) as exc:
        APIServer(str(path), handler, group).server_close()
    assert exc.value.field == 'api.socket_path'
    return str(exc.value)


@pytest.fixture
def base(tmp_path):
    # pytest's tmp dirs are root's and 0700: a safe place to start from.
    tmp_path.chmod(0o755)
    return tmp_path


def test_socket_has_mode_and_group_and_no_leftovers(base):
    group = other_group()
    path = base / 'run' / 'api.sock'
    server = APIServer(str(path), handler, group.gr_name)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (0, group.gr_gid)
        assert os.listdir(base / 'run') == ['api.sock']
        assert stat.S_IMODE(os.stat(base / 'run').st_mode) == 0o755
    finally:
        server.server_close()


def test_directory_owned_by_another_user_is_refused(base):
    run = base / 'run'
    run.mkdir()
    os.chown(run, NOBODY, -1)
    assert f'{run} is owned by uid {NOBODY}, not root' in refused(
        run / 'api.sock')
    assert os.listdir(run) == []


@pytest.mark.parametrize('mode', [0o777, 0o770, 0o1777, 0o757])
def test_directory_writable_by_others_is_refused(base, mode):
    run = base / 'run'
    run.mkdir()
    run.chmod(mode)
    assert f'{run} is writable by group or others' in refused(
        run / 'api.sock', other_group().gr_name)
    assert os.listdir(run) == []


def test_symlinked_directory_is_refused(base):
    real = base / 'real'
    real.mkdir()
    (base / 'run').symlink_to(real)
    assert f'{base / "run"} is a symlink' in refused(base / 'run' / 'a.sock')
    assert os.listdir(real) == []


def test_ancestor_writable_by_others_is_refused(base):
    evil = base / 'evil'
    evil.mkdir()
    evil.chmod(0o777)           # its writer could rename 'run' away
    run = evil / 'run'
    run.mkdir()
    assert f'{evil} is writable by group or others' in refused(
        run / 'api.sock')


def test_sticky_world_writable_ancestor_is_accepted(base):
    shared = base / 'tmp'
    shared.mkdir()
    shared.chmod(0o1777)        # like /tmp: others cannot move our entries
    run = shared / 'run'
    run.mkdir()
    APIServer(str(run / 'api.sock'), handler).server_close()


def test_symlink_at_the_socket_path_is_replaced_not_followed(base):
    run = base / 'run'
    run.mkdir()
    secret = base / 'secret'
    secret.write_text('root only')
    secret.chmod(0o600)
    (run / 'api.sock').symlink_to(secret)
    APIServer(str(run / 'api.sock'), handler,
              other_group().gr_name).server_close()
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)
    assert secret.read_text() == 'root only'
    assert stat.S_ISSOCK(os.lstat(run / 'api.sock').st_mode)


def test_other_file_at_the_socket_path_is_refused(base):
    run = base / 'run'
    run.mkdir()
    (run / 'api.sock').write_text('data')
    assert 'exists and is not a socket' in refused(run / 'api.sock')
    assert (run / 'api.sock').read_text() == 'data'
