"""The real-kernel tier: guests on the stock Debian kernel, real
device-mapper, one shared LU, one lvmcoordd per guest.

Collected only with LVMCOORD_REALHOST=1 (`make test-realhost` sets it),
so `pytest tests` does not boot guests by accident; when collected,
nothing is skipped: a qemu that cannot run fails every scenario.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ENABLED = os.environ.get('LVMCOORD_REALHOST') == '1'
if not ENABLED:
    collect_ignore_glob = ['test_*.py']

RESULTS = []


def _out_dir():
    from tests.realhost import image
    return os.environ.get('LVMCOORD_REALHOST_OUT',
                          os.path.join(image.CACHE, 'last-run'))


def _accel(kernel, initrd, cache):
    """'kvm' if a stock kernel really boots under KVM here, else 'tcg';
    the probe's verdict is kept per host kernel, qemu and guest kernel."""
    from tests.realhost import vm
    forced = os.environ.get('LVMCOORD_REALHOST_ACCEL')
    if forced:
        return forced, 'forced by LVMCOORD_REALHOST_ACCEL'
    qemu = subprocess.run([vm.QEMU, '--version'], capture_output=True,
                          text=True, check=True).stdout.split('\n')[0]
    key = f'{os.uname().release}|{qemu}|{kernel.version}'
    path = os.path.join(cache, 'kvm-probe.json')
    try:
        with open(path) as f:
            seen = json.load(f)
        if seen['key'] == key:
            return seen['accel'], f'KVM probe (cached {seen["when"]})'
    except (OSError, ValueError, KeyError):
        pass
    probe_dir = os.path.join(cache, 'kvm-probe')
    shutil.rmtree(probe_dir, ignore_errors=True)
    os.makedirs(probe_dir)
    accel = 'kvm' if vm.kvm_boots(kernel, initrd, probe_dir, 30) else 'tcg'
    with open(path, 'w') as f:
        json.dump({'key': key, 'accel': accel,
                   'when': time.strftime('%Y-%m-%d %H:%M')}, f)
    return accel, 'KVM probe (30 s boot timeout)'


@pytest.fixture(scope='package')
def cluster(request):
    """The booted cluster, shared by every scenario; always torn down."""
    from tests.realhost import cluster as clusterlib
    from tests.realhost import image
    out = _out_dir()
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    started = time.monotonic()
    # Bytecode next to the sources (git ignores it): a guest compiling
    # the daemon under TCG at every start costs tens of seconds.
    subprocess.run([sys.executable, '-m', 'compileall', '-q', 'coordinator'],
                   cwd=clusterlib.ROOT, check=False,
                   stdout=subprocess.DEVNULL)
    kernel = image.ensure_kernel()
    initrd = image.ensure_initramfs(kernel)
    accel, why = _accel(kernel, initrd, image.CACHE)
    # Fewer guests for a scenario run alone that needs fewer (g: 2).
    count = int(os.environ.get('LVMCOORD_REALHOST_GUESTS', '3'))
    c = clusterlib.Cluster(out, kernel, initrd, accel, count=count)
    c.timings.update(accel=accel, accel_reason=why, kernel=kernel.version,
                     image_s=round(time.monotonic() - started, 1))
    request.config._realhost = c
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def record(request):
    """Key timings of the running scenario, for the summary."""
    timings = {}
    request.node._realhost_timings = timings
    return timings


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == 'call' or (rep.when == 'setup' and not rep.passed):
        RESULTS.append({'scenario': item.name,
                        'result': 'pass' if rep.passed else 'FAIL',
                        'seconds': round(rep.duration, 1),
                        'timings': getattr(item, '_realhost_timings', {})})


def _table(cluster):
    lines = [f'{"scenario":<40} {"result":<6} {"secs":>6}  key timings']
    for r in RESULTS:
        keys = ' '.join(f'{k}={v}' for k, v in r['timings'].items())
        lines.append(f'{r["scenario"]:<40} {r["result"]:<6} '
                     f'{r["seconds"]:>6}  {keys}')
    if cluster is not None:
        lines.append('cluster: ' + ' '.join(
            f'{k}={v}' for k, v in cluster.timings.items()))
    return '\n'.join(lines)


def pytest_sessionfinish(session, exitstatus):
    if not ENABLED:
        return
    cluster = getattr(session.config, '_realhost', None)
    out = _out_dir()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump({'results': RESULTS,
                   'cluster': cluster.timings if cluster else {}}, f,
                  indent=1)
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(_table(cluster) + '\n')


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ENABLED:
        return
    cluster = getattr(config, '_realhost', None)
    terminalreporter.section('real-kernel tier summary')
    terminalreporter.write_line(_table(cluster))
    terminalreporter.write_line(f'logs, events, consoles: {_out_dir()}')
