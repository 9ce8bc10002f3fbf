""".zuul.yaml: parses, builds on upstream jobs/nodesets, deploys lvmcoord
on both nodes of a two-node devstack and runs the right tests."""
from pathlib import Path
import re

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# Jobs and nodesets defined upstream (openstack/devstack and
# openstack/tempest zuul configuration) that a job here may build on.
UPSTREAM_JOBS = {
    'devstack', 'devstack-multinode', 'devstack-tempest',
    'tempest-multinode-full-base', 'tempest-multinode-full-py3',
}
# name -> (nodes, members of the "subnode" group)
UPSTREAM_TWO_NODE_NODESETS = {
    'openstack-two-node-jammy': (['controller', 'compute1'], ['compute1']),
    'openstack-two-node-noble': (['controller', 'compute1'], ['compute1']),
    'devstack-two-node-debian-bookworm': (['controller', 'compute1'],
                                          ['compute1']),
}
# Two-node nodesets of the tempest-multinode-full-py3 parent chain.
PARENT_DEFAULT_NODESET = {'tempest-multinode-full-py3':
                          'openstack-two-node-noble',
                          'devstack-multinode': 'openstack-two-node-noble'}

PLUGIN_TESTS = [
    'lvmcoord_tempest_plugin.tests.scenario.test_multinode_volumes.'
    'TestVolumeAcrossHosts.test_attach_write_detach_attach_other_host',
    'lvmcoord_tempest_plugin.tests.scenario.test_live_migration.'
    'TestLiveMigrationSharedVG.'
    'test_live_migration_with_attached_volume_data_intact',
]
TEMPEST_LIVE_MIGRATION_WITH_VOLUMES = [
    'tempest.api.compute.admin.test_live_migration.LiveMigrationTest.'
    'test_volume_backed_live_migration',
    'tempest.api.compute.admin.test_live_migration.LiveMigrationTest.'
    'test_live_block_migration_with_attached_volume',
]
NOT_SELECTED = [
    'tempest.api.compute.admin.test_live_migration.LiveMigrationTest.'
    'test_live_block_migration',
    'tempest.api.identity.admin.v3.test_users.UsersV3TestJSON.'
    'test_update_user_password',
]


@pytest.fixture(scope='module')
def zuul():
    with open(REPO / '.zuul.yaml') as f:
        config = yaml.safe_load(f)
    assert isinstance(config, list)
    jobs = {e['job']['name']: e['job'] for e in config if 'job' in e}
    projects = [e['project'] for e in config if 'project' in e]
    assert len(projects) == 1
    return jobs, projects[0]


@pytest.fixture(scope='module')
def job(zuul):
    jobs, project = zuul
    names = project['check']['jobs']
    assert names, 'no check job'
    return jobs[names[0]]


def test_project_runs_the_job_in_check_and_gate(zuul):
    jobs, project = zuul
    for pipeline in ('check', 'gate'):
        listed = project[pipeline]['jobs']
        assert listed, pipeline
        for name in listed:
            assert name in jobs, '%s lists undefined job %s' % (pipeline,
                                                                  name)
    assert set(jobs) <= set(project['check']['jobs'])


def test_job_builds_on_upstream_two_node_devstack(job):
    assert job['parent'] in UPSTREAM_JOBS
    nodeset = job.get('nodeset', PARENT_DEFAULT_NODESET.get(job['parent']))
    assert nodeset in UPSTREAM_TWO_NODE_NODESETS
    nodes, subnodes = UPSTREAM_TWO_NODE_NODESETS[nodeset]
    assert len(nodes) == 2 and len(subnodes) == 1


def test_plugin_enabled_on_controller_and_subnode(job):
    controller = job['vars']
    subnode = job['group-vars']['subnode']
    for role, node_vars in (('controller', controller),
                            ('subnode', subnode)):
        url = node_vars['devstack_plugins']['lvmcoord']
        assert url.endswith('/lvmcoord'), role
        assert node_vars['devstack_services']['lvmcoord'] is True, role
    # Exactly one node creates the shared LU, PV and VG.
    assert controller['devstack_localrc']['LVMCOORD_SHARED_LU_CREATE'] \
        is True
    assert subnode['devstack_localrc']['LVMCOORD_SHARED_LU_CREATE'] is False
    # cinder-volume on the controller, with the lvmcoord backend.
    backends = controller['devstack_localrc']['CINDER_ENABLED_BACKENDS']
    assert re.fullmatch(r'lvmcoord:[\w-]+', backends)
    assert subnode['devstack_services']['c-vol'] is False
    assert controller['devstack_localrc']['LVMCOORD_TEMPEST_MULTINODE'] \
        is True
    assert controller['devstack_localrc']['LIVE_MIGRATION_AVAILABLE'] is True


def test_job_runs_plugin_and_live_migration_tests(job):
    assert 'lvmcoord' in job['vars']['tempest_plugins']
    regex = re.compile(job['vars']['tempest_test_regex'])
    for test in PLUGIN_TESTS + TEMPEST_LIVE_MIGRATION_WITH_VOLUMES:
        assert regex.search(test), test
    for test in NOT_SELECTED:
        assert not regex.search(test), test
