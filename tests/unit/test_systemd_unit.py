"""etc/systemd/lvmcoordd.service: what makes it deployable, checked."""
import configparser
import os
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, 'etc', 'systemd', 'lvmcoordd.service')
CONSUMERS = ('libvirt-guests.service', 'libvirtd.service',
             'nova-compute.service', 'openstack-nova-compute.service',
             'cinder-volume.service', 'devstack@n-cpu.service',
             'devstack@c-vol.service')


@pytest.fixture(scope='module')
def unit():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    with open(UNIT) as f:
        parser.read_file(f)
    return parser


def words(unit, section, key):
    return unit[section].get(key, '').split()


def test_ordered_after_the_paths_and_before_the_consumers(unit):
    after = words(unit, 'Unit', 'After')
    assert {'iscsid.service', 'multipathd.service'} <= set(after)
    before = set(words(unit, 'Unit', 'Before'))
    assert set(CONSUMERS) <= before, set(CONSUMERS) - before


def test_socket_directory_reachable_by_the_group(unit):
    service = unit['Service']
    assert service['RuntimeDirectory'] == 'lvmcoord'
    assert service['RuntimeDirectoryMode'] == '0750'
    # The directory is root:<Group>; the server gives the socket to
    # [api] socket_group with mode 0660: the same group must be named.
    group = service['Group']
    assert group and group != 'root'
    assert 'User' not in service
    assert f'socket_group = {group}' in service_comments()


def service_comments():
    with open(UNIT) as f:
        return ' '.join(line.lstrip('# ').strip() for line in f
                        if line.startswith('#'))


def test_descriptor_limit(unit):
    assert int(unit['Service']['LimitNOFILE']) >= 65536


def test_started_means_ready(unit):
    service = unit['Service']
    argv = shlex.split(service['ExecStartPost'])
    assert os.path.basename(argv[0]) == 'lvmcoord'
    assert argv[1:3] == ['--config-file', '/etc/lvmcoord/lvmcoord.conf']
    assert argv[3] == 'wait-ready'
    wait = float(argv[argv.index('--timeout') + 1])
    # systemd must not kill the start before wait-ready gives its reason.
    assert wait < float(service['TimeoutStartSec'])
    assert service['Type'] == 'simple'


def test_the_command_exists():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, 'setup.cfg'))
    assert 'wait-ready = coordinator.cli.ready:WaitReady' in \
        setup['entry_points']['lvmcoord.cli']


@pytest.mark.skipif(not shutil.which('systemd-analyze')
                    or not shutil.which('lvmcoordd'),
                    reason='systemd-analyze or the installed scripts missing')
def test_systemd_accepts_every_directive(tmp_path):
    # The scripts' real location, so that verify can check the commands.
    bindir = os.path.dirname(shutil.which('lvmcoordd'))
    with open(UNIT) as f:
        text = f.read().replace('/usr/local/bin/', bindir + '/')
    path = tmp_path / 'lvmcoordd.service'
    path.write_text(text)
    res = subprocess.run(['systemd-analyze', 'verify', str(path)],
                         capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert 'Unknown' not in res.stderr and 'lvmcoordd' not in res.stderr, \
        res.stderr
