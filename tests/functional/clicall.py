"""cli(): run the `lvmcoord` CLI with a sandbox daemon's config file."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def cli(daemon, *args, check=True):
    """The CompletedProcess of `lvmcoord <args>`; AssertionError on a
    non-zero exit when ``check``."""
    out = subprocess.run([sys.executable, '-m', 'coordinator.cli.app',
                          '--config-file', daemon.conf_file, *args],
                         capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=False)
    if check and out.returncode:
        raise AssertionError(f'{args}: {out.returncode} {out.stderr}')
    return out
