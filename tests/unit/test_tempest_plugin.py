"""The tempest plugin: registration, options, discovery by ``tempest run``."""
import importlib.metadata
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

from oslo_config import cfg
import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINT = 'lvmcoord_tempest_plugin.plugin:LvmcoordTempestPlugin'
SETUP_HINT = ('run "make setup" (it does "pip install --no-deps -e ." so '
              'that the tempest.test_plugins entry point is registered)')

EXPECTED_TESTS = {
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_attach_write_detach_attach_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_extend_detached_volume_attach_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_snapshot_in_use_volume_restore_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_clone_in_use_volume_read_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_revert_to_snapshot_read_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_live_migration.'
    'TestLiveMigrationSharedVG.'
    'test_volume_backed_live_migration_data_intact',
    'lvmcoord_tempest_plugin.tests.scenario.test_live_migration.'
    'TestLiveMigrationSharedVG.'
    'test_live_migration_with_attached_volume_data_intact',
}
TEST_ID = re.compile(r'^(?P<name>[\w.]+)\[(?P<attrs>[^\]]*)\]$')
UUID = re.compile(r'^id-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-'
                  r'[89ab][0-9a-f]{3}-[0-9a-f]{12}$')


def entry_point():
    for ep in importlib.metadata.entry_points(group='tempest.test_plugins'):
        if ep.name == 'lvmcoord':
            return ep
    pytest.fail('The tempest.test_plugins entry point "lvmcoord" is not '
                'registered: ' + SETUP_HINT)


def test_entry_point_is_this_repository():
    ep = entry_point()
    assert ep.value == ENTRY_POINT
    plugin_class = ep.load()
    module = sys.modules[plugin_class.__module__]
    assert Path(module.__file__).resolve().is_relative_to(REPO), (
        'the entry point loads %s, not this checkout: %s'
        % (module.__file__, SETUP_HINT))


def test_plugin_registers_its_options():
    from lvmcoord_tempest_plugin import plugin

    conf = cfg.ConfigOpts()
    tempest_plugin = plugin.LvmcoordTempestPlugin()
    tempest_plugin.register_opts(conf)
    conf([], project='tempest-lvmcoord-test', default_config_files=[])

    assert conf.service_available.lvmcoord is False
    assert conf.lvmcoord.volume_type is None
    assert conf.lvmcoord.run_multinode_tests is False
    assert conf.lvmcoord.snapshot_in_use is True
    assert conf.lvmcoord.volume_size == 1
    listed = dict(tempest_plugin.get_opt_lists())
    assert {o.name for o in listed['lvmcoord']} == {
        'volume_type', 'run_multinode_tests', 'snapshot_in_use',
        'volume_size', 'data_size_mb'}
    assert [o.name for o in listed['service_available']] == ['lvmcoord']

    test_dir, top = tempest_plugin.load_tests()
    assert Path(test_dir) == REPO / 'lvmcoord_tempest_plugin' / 'tests'
    assert Path(top) == REPO


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    tempest = shutil.which('tempest')
    if tempest is None:
        pytest.fail('tempest is not installed: ' + SETUP_HINT)
    entry_point()
    ws = tmp_path_factory.mktemp('tempest') / 'workspace'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    # tempest init registers the workspace in ~/.tempest; keep that away
    # from the real home directory.
    env['HOME'] = str(ws.parent)
    subprocess.run([tempest, 'init', str(ws)], env=env, check=True,
                   capture_output=True, timeout=120)
    base_conf = (ws / 'etc' / 'tempest.conf').read_text()
    return tempest, ws, env, base_conf


def tempest_run(workspace, *args):
    tempest, ws, env, _ = workspace
    return subprocess.run(
        [tempest, 'run', '--regex', r'^lvmcoord_tempest_plugin\.', *args],
        cwd=ws, env=env, capture_output=True, text=True, timeout=300,
        check=False)


def test_tempest_run_lists_the_plugin_tests(workspace):
    result = tempest_run(workspace, '--list-tests')
    assert result.returncode == 0, result.stdout + result.stderr
    listed = {}
    for line in result.stdout.splitlines():
        match = TEST_ID.match(line.strip())
        if match and match['name'].startswith('lvmcoord_tempest_plugin.'):
            listed[match['name']] = match['attrs'].split(',')
    assert set(listed) == EXPECTED_TESTS, result.stdout
    ids = []
    for name, attrs in listed.items():
        assert 'multinode' in attrs, name
        test_ids = [a for a in attrs if a.startswith('id-')]
        assert len(test_ids) == 1 and UUID.match(test_ids[0]), name
        ids += test_ids
    assert len(set(ids)) == len(ids), 'idempotent ids are not unique'


def configure(workspace, text):
    """The workspace's tempest.conf as ``tempest init`` wrote it, plus
    ``text``."""
    _, ws, _, base_conf = workspace
    (ws / 'etc' / 'tempest.conf').write_text(base_conf + text)


def test_plugin_tests_skip_cleanly_without_lvmcoord(workspace):
    configure(workspace, '\n[compute]\nmax_microversion = latest\n')
    result = tempest_run(workspace)
    out = result.stdout + result.stderr
    assert re.search(r'Failed: 0\b', out), out
    assert re.search(r'Skipped: 2\b', out), out
    assert out.count('SKIPPED: lvmcoord is not deployed') == 2, out


def test_plugin_tests_skip_cleanly_with_one_compute_node(workspace):
    configure(workspace,
               '\n[service_available]\nlvmcoord = True\n'
               '[lvmcoord]\nrun_multinode_tests = True\n'
               '[compute]\nmin_compute_nodes = 1\n'
               'max_microversion = latest\n')
    result = tempest_run(workspace)
    out = result.stdout + result.stderr
    assert re.search(r'Failed: 0\b', out), out
    assert re.search(r'Skipped: 2\b', out), out
    assert out.count('SKIPPED: Less than 2 compute nodes') == 2, out
