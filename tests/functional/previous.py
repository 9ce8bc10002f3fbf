"""The previous landed release, built from git history (never a copy):
etc/previous-release names its commit; `git archive` extracts it."""
import os
import subprocess
import tarfile
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
PIN = os.path.join(ROOT, 'etc', 'previous-release')


def commit():
    """The commit hash etc/previous-release names (clear error if bad)."""
    with open(PIN) as f:
        value = f.read().strip()
    if not value or any(c not in '0123456789abcdef' for c in value):
        pytest.fail(f'{PIN}: {value!r} is not a commit hash')
    return value


def _git(*args):
    return subprocess.run(['git', '-C', ROOT, *args], capture_output=True,
                          check=False)


def extract():
    """A temp dir holding the previous release's tree (the caller
    removes it); fails, never skips, without the commit."""
    rev = commit()
    top = _git('rev-parse', '--show-toplevel')
    if top.returncode or os.path.realpath(top.stdout.decode().strip()) != \
            os.path.realpath(ROOT):
        pytest.fail(f'{ROOT} is not a git checkout: the upgrade test '
                    f'builds the previous release {rev} from git history '
                    f'(run it from a clone)')
    if _git('cat-file', '-e', f'{rev}^{{commit}}').returncode:
        shallow = _git('rev-parse', '--is-shallow-repository')
        hint = ' (a shallow clone: git fetch --unshallow)' \
            if shallow.stdout.strip() == b'true' else ''
        pytest.fail(f'previous release {rev} (etc/previous-release) is '
                    f'not in this clone{hint}')
    out = tempfile.mkdtemp(prefix='lvmcoord-previous-')
    archive = _git('archive', '--format=tar', rev)
    if archive.returncode:
        pytest.fail(f'git archive {rev}: {archive.stderr.decode()}')
    with tempfile.TemporaryFile() as f:
        f.write(archive.stdout)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(out, filter='data')
    return out
