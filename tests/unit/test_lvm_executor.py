"""Unit tests for coordinator.lvm.executor with a fake command runner."""
import json
import sys
import time

import pytest

from coordinator.errors import InvalidInput
from coordinator.errors import LVMError
from coordinator.lvm import executor

NOISE = ('  WARNING: Activation disabled. No device-mapper interaction will '
         'be attempted.\n')


class FakeRunner:
    """Records argv/env; answers with queued (rc, stdout, stderr)."""

    def __init__(self, *answers):
        self.calls = []
        self.answers = list(answers)

    def __call__(self, argv, env, timeout):
        self.calls.append((argv, env, timeout))
        answer = self.answers.pop(0) if self.answers else (0, '', '')
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def argv(self):
        return self.calls[-1][0]


def report(key, *rows):
    return (0, json.dumps({'report': [{key: list(rows)}]}), NOISE)


def make(*answers, **kw):
    runner = FakeRunner(*answers)
    kw.setdefault('activation', False)
    return executor.LVM(runner=runner, **kw), runner


ACT0 = ['--config', 'global/activation=0']


def test_create_argv_never_activates():
    lvm, runner = make()
    lvm.create_lv('vg0', 'lv0', '1G', tags=['a', '-b'])
    assert runner.argv == [
        'lvcreate', *ACT0, '--activate', 'n', '--zero', 'n',
        '--wipesignatures', 'n', '--size', f'{2 ** 30}b', '--name', 'lv0',
        '--addtag', 'a', '--addtag', '-b', 'vg0']


def test_sizes_round_up_to_sectors():
    lvm, runner = make()
    lvm.create_lv('vg0', 'lv0', 1000)
    assert runner.argv[runner.argv.index('--size') + 1] == '1024b'
    lvm.extend_lv('vg0', 'lv0', '3m')
    assert runner.argv == ['lvextend', *ACT0, '--size', f'{3 * 2 ** 20}b',
                           'vg0/lv0']


def test_metadata_commands_argv():
    lvm, runner = make()
    lvm.remove_lv('vg0', 'lv0')
    assert runner.argv == ['lvremove', *ACT0, 'vg0/lv0']
    lvm.rename_lv('vg0', 'lv0', 'lv1')
    assert runner.argv == ['lvrename', *ACT0, 'vg0', 'lv0', 'lv1']
    lvm.add_tags('vg0', 'lv1', ['x', 'y=1'])
    assert runner.argv == ['lvchange', *ACT0, '--addtag', 'x', '--addtag',
                           'y=1', 'vg0/lv1']
    lvm.del_tags('vg0', 'lv1', ('x',))
    assert runner.argv == ['lvchange', *ACT0, '--deltag', 'x', 'vg0/lv1']
    lvm.create_snapshot('vg0', 'lv1', 'snap0', '64M')
    assert runner.argv == ['lvcreate', *ACT0, '--snapshot', '--size',
                           f'{64 * 2 ** 20}b', '--name', 'snap0', 'vg0/lv1']


def test_empty_tag_list_runs_nothing():
    lvm, runner = make()
    lvm.add_tags('vg0', 'lv0', [])
    lvm.del_tags('vg0', 'lv0', ())
    assert runner.calls == []


def test_config_and_env():
    lvm, runner = make(system_dir='/etc/lvmc', timeout=7.5,
                       config='devices/filter=["a|^/dev/x$|","r|.*|"]')
    lvm.remove_lv('vg0', 'lv0')
    argv, env, timeout = runner.calls[-1]
    assert argv[1:3] == ['--config', 'global/activation=0 devices/filter='
                         '["a|^/dev/x$|","r|.*|"]']
    assert env['LVM_SYSTEM_DIR'] == '/etc/lvmc'
    assert env['LVM_SUPPRESS_FD_WARNINGS'] == '1'
    assert env['LC_ALL'] == 'C'
    assert timeout == 7.5


def test_no_config_when_activation_enabled():
    lvm, runner = make(activation=True)
    lvm.remove_lv('vg0', 'lv0')
    assert runner.argv == ['lvremove', 'vg0/lv0']


def test_activation_argv():
    lvm, runner = make(activation=True)
    lvm.activate('vg0', 'lv0')
    assert runner.argv == ['lvchange', '-aey', 'vg0/lv0']
    lvm.activate('vg0', 'lv0', exclusive=False)
    assert runner.argv == ['lvchange', '-ay', 'vg0/lv0']
    lvm.activate('vg0', 'lv0', read_only=True)
    assert runner.argv == [
        'lvchange', '--config',
        'activation/read_only_volume_list=["vg0/lv0"]', '-aey', 'vg0/lv0']
    lvm.deactivate('vg0', 'lv0')
    assert runner.argv == ['lvchange', '-an', 'vg0/lv0']
    lvm.refresh('vg0', 'lv0')
    assert runner.argv == ['lvchange', '--refresh', 'vg0/lv0']


def test_activation_refused_when_disabled():
    # LVM itself would exit 0 without creating any device.
    lvm, runner = make(activation=False)
    for call in (lvm.activate, lvm.deactivate, lvm.refresh):
        with pytest.raises(LVMError) as exc:
            call('vg0', 'lv0')
        assert 'vg0/lv0' in str(exc.value) and 'disabled' in str(exc.value)
    assert runner.calls == []


def test_version_puts_options_after_the_command():
    lvm, runner = make((0, '  LVM version:     2.03.16(2) (2022-05-18)\n'
                           '  Library version: 1.02.185\n', ''))
    assert lvm.version() == '2.03.16(2)'
    assert runner.argv == ['lvm', 'version', *ACT0]


INVALID_CALLS = [
    ('create_lv', ('-vg', 'lv', '1G'), 'vg'),
    ('create_lv', ('vg', 'snapshot1', '1G'), 'lv'),
    ('create_lv', ('vg', 'lv', '0'), 'size'),
    ('create_lv', ('vg', 'lv', '1G', ['bad tag']), 'tags[0]'),
    ('create_lv', ('vg', 'lv', '1G', 'abc'), 'tags'),
    ('remove_lv', ('vg', '../x'), 'lv'),
    ('extend_lv', ('vg', 'lv', 'big'), 'new_size'),
    ('rename_lv', ('vg', 'lv', 'a_tmeta'), 'new_name'),
    ('add_tags', ('vg', 'lv', ['ok', 'x y']), 'tags[1]'),
    ('del_tags', ('vg\n', 'lv', ['ok']), 'vg'),
    ('create_snapshot', ('vg', 'lv', 'pvmove1', '1G'), 'name'),
    ('create_snapshot', ('vg', '', 's', '1G'), 'origin'),
    ('activate', ('vg', 'a/b'), 'lv'),
    ('deactivate', (None, 'lv'), 'vg'),
    ('refresh', ('vg', 5), 'lv'),
    ('vg', ('.',), 'vg'),
    ('lvs', (b'vg',), 'vg'),
    ('lv', ('vg', 'lv;rm -rf /'), 'lv'),
    ('pvs', ('v g',), 'vg'),
]


@pytest.mark.parametrize('method, args, field', INVALID_CALLS)
def test_invalid_input_runs_nothing(method, args, field):
    for activation in (True, False):
        lvm, runner = make(activation=activation)
        with pytest.raises(InvalidInput) as exc:
            getattr(lvm, method)(*args)
        assert exc.value.field == field
        assert runner.calls == []


def test_vg_report():
    lvm, runner = make(report('vg', {
        'vg_name': 'vg0', 'vg_uuid': 'U', 'vg_seqno': '17',
        'vg_size': '2143289344', 'vg_free': '1069547520',
        'vg_extent_size': '4194304', 'lv_count': '3', 'pv_count': '1',
        'vg_tags': 'a,b', 'vg_systemid': '', 'vg_attr': 'wz--n-',
        'vg_autoactivation': ''}))
    vg = lvm.vg('vg0')
    assert vg == {'name': 'vg0', 'uuid': 'U', 'seqno': 17,
                  'size': 2143289344, 'free': 1069547520,
                  'extent_size': 4194304, 'lv_count': 3, 'pv_count': 1,
                  'tags': ['a', 'b'], 'systemid': '', 'attr': 'wz--n-',
                  'autoactivation': ''}
    argv = runner.argv
    assert argv[:3] == ['vgs', *ACT0]
    assert argv[3:8] == ['--reportformat', 'json', '--units', 'b',
                         '--nosuffix']
    assert argv[-1] == 'vg0'
    assert 'vg_seqno' in argv[-2].split(',')


def test_vg_empty_report_is_not_found():
    lvm, _ = make(report('vg'))
    with pytest.raises(LVMError) as exc:
        lvm.vg('vg0')
    assert exc.value.kind == 'not-found'


def test_lvs_merges_segments():
    row = {'lv_name': 'a', 'lv_uuid': 'UA', 'lv_size': '16777216',
           'lv_attr': '-wi-a-----', 'lv_active': 'active', 'lv_tags': 't',
           'origin': '', 'segtype': 'linear',
           'seg_pe_ranges': '/dev/sdb:0-1'}
    lvm, runner = make(report(
        'lv', row, dict(row, seg_pe_ranges='/dev/sdb:10-11'),
        dict(row, segtype='striped',
             seg_pe_ranges='/dev/sdb:20-20 /dev/my:disk:5-5'),
        {'lv_name': 'b', 'lv_uuid': 'UB', 'lv_size': '4194304',
         'lv_attr': '-wi-XX----', 'lv_active': 'unknown', 'lv_tags': '',
         'origin': 'a', 'segtype': 'linear', 'seg_pe_ranges': '/dev/sdb:2-2'},
        {'lv_name': 'c', 'lv_uuid': 'UC', 'lv_size': '4194304',
         'lv_attr': '-wi-------', 'lv_active': '', 'lv_tags': '',
         'origin': '', 'segtype': 'linear', 'seg_pe_ranges': ''}))
    a, b, c = lvm.lvs('vg0')
    assert runner.argv[-1] == 'vg0'
    assert a['size'] == 16777216 and a['active'] is True
    assert a['tags'] == ['t'] and a['segtype'] == 'linear,striped'
    assert a['pe_ranges'] == [('/dev/sdb', 0, 1), ('/dev/sdb', 10, 11),
                              ('/dev/sdb', 20, 20), ('/dev/my:disk', 5, 5)]
    assert b['active'] is None and b['origin'] == 'a' and b['tags'] == []
    assert c['active'] is False and c['pe_ranges'] == []


def test_lv_targets_one_lv():
    lvm, runner = make(report('lv', {
        'lv_name': 'a', 'lv_uuid': 'UA', 'lv_size': '4194304',
        'lv_attr': '-wi-XX----', 'lv_active': 'unknown', 'lv_tags': '',
        'origin': '', 'segtype': 'linear', 'seg_pe_ranges': '/dev/x:0-0'}))
    assert lvm.lv('vg0', 'a')['name'] == 'a'
    assert runner.argv[-1] == 'vg0/a'


def test_pvs_filters_by_vg():
    rows = [{'pv_name': '/dev/a', 'vg_name': 'vg0', 'pv_uuid': 'P1',
             'pe_start': '1048576', 'pv_size': '100', 'dev_size': '200'},
            {'pv_name': '/dev/b', 'vg_name': '', 'pv_uuid': 'P2',
             'pe_start': '0', 'pv_size': '0', 'dev_size': '300'}]
    lvm, runner = make(report('pv', *rows), report('pv', *rows))
    assert lvm.pvs('vg0') == [{'name': '/dev/a', 'vg': 'vg0', 'uuid': 'P1',
                               'pe_start': 1048576, 'size': 100,
                               'dev_size': 200}]
    assert [p['name'] for p in lvm.pvs()] == ['/dev/a', '/dev/b']
    assert runner.argv[0] == 'pvs'


def test_bad_json_is_an_lvm_error():
    lvm, _ = make((0, 'not json', ''))
    with pytest.raises(LVMError) as exc:
        lvm.vgs()
    assert 'JSON' in str(exc.value)


def test_non_numeric_number_is_an_lvm_error():
    lvm, _ = make(report('vg', {'vg_name': 'vg0', 'vg_seqno': 'many'}))
    with pytest.raises(LVMError) as exc:
        lvm.vg('vg0')
    assert 'JSON' in str(exc.value)


def test_failure_keeps_command_and_stderr_and_names_lv():
    stderr = NOISE + '  Logical Volume "lv0" already exists in volume ' \
        'group "vg0"\n'
    lvm, _ = make((5, '', stderr))
    with pytest.raises(LVMError) as exc:
        lvm.create_lv('vg0', 'lv0', '1G')
    err = exc.value
    assert err.kind == 'exists'
    assert err.stderr == stderr
    assert err.cmd[0] == 'lvcreate' and err.cmd[-1] == 'vg0'
    assert str(err).startswith('lvcreate vg0/lv0: ')
    assert 'Activation disabled' not in str(err)


def test_timeout_is_classified():
    lvm, _ = make(TimeoutError('slow'), timeout=0.5)
    with pytest.raises(LVMError) as exc:
        lvm.remove_lv('vg0', 'lv0')
    assert exc.value.kind == 'timeout'
    assert 'vg0/lv0' in str(exc.value) and '0.5' in str(exc.value)


def test_missing_binary_is_failed():
    lvm, _ = make(FileNotFoundError(2, 'No such file', 'lvremove'))
    with pytest.raises(LVMError) as exc:
        lvm.remove_lv('vg0', 'lv0')
    assert exc.value.kind == 'failed'


# stderr lines as LVM 2.03.16 prints them (LC_ALL=C).
CLASSIFY = [
    ('  Volume group "vg0" not found\n  Cannot process volume group vg0\n',
     'not-found'),
    ('  Failed to find logical volume "vg0/lv0"\n', 'not-found'),
    ('  Logical volume zz not found in volume group vg0.\n', 'not-found'),
    ('  Existing logical volume "nope" not found in volume group "vg0"\n',
     'not-found'),
    ('  Logical Volume "d" already exists in volume group "vg0"\n',
     'exists'),
    ('  A volume group called vg0 already exists.\n', 'exists'),
    ('  Volume group "vg0" has insufficient free space (246 extents): '
     '2048 required.\n', 'no-space'),
    ('  Insufficient free space: 1020 extents needed, but only 246 '
     'available\n', 'no-space'),
    ('  Logical volume vg0/lv0 in use.\n', 'in-use'),
    ('  Logical volume vg0/lv0 contains a filesystem in use.\n', 'in-use'),
    ('  Do you really want to remove active logical volume vg0/lv0? [y/n]: '
     '[n]\n  Logical volume lv0 not removed.\n', 'in-use'),
    ('  WARNING: Checksum error on /dev/loop0 at offset 7168.\n'
     '  WARNING: invalid metadata text from /dev/loop0 at 7168.\n'
     '  WARNING: bad metadata text on /dev/loop0 in mda1\n'
     '  Volume group "vg0" not found\n', 'metadata-changed'),
    ('  WARNING: scanning /dev/loop0 mda1 failed to read metadata '
     'summary.\n', 'metadata-changed'),
    ("  Can't create snapshot without using device-mapper kernel driver.\n",
     'failed'),
    ('  New size (4 extents) matches existing size (4 extents).\n',
     'failed'),
    (NOISE + '  WARNING: This metadata update is NOT backed up.\n', 'failed'),
    ('', 'failed'),
    (None, 'failed'),
]


@pytest.mark.parametrize('stderr, kind', CLASSIFY)
def test_classify(stderr, kind):
    assert executor.classify(stderr) == kind
    assert kind in executor.KINDS


def test_noise_does_not_classify():
    # "not zeroed" must not read as a "not found"-style failure.
    assert executor.classify(
        '  WARNING: Logical volume vg0/lv0 not zeroed.\n') == 'failed'


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_run_process_kills_the_group_on_timeout(tmp_path):
    pidfile = tmp_path / 'pid'
    code = ('import subprocess, sys, time; '
            'p = subprocess.Popen([sys.executable, "-c", '
            '"import time; time.sleep(60)"]); '
            f'open({str(pidfile)!r}, "w").write(str(p.pid)); '
            'time.sleep(60)')
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        executor.run_process([sys.executable, '-c', code], None, 1.0)
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_run_process_no_shell():
    rc, out, err = executor.run_process(
        [sys.executable, '-c', 'import sys; print(sys.argv[1:])',
         '$(echo hi); `x`'], None, 10)
    assert rc == 0 and out.strip() == "['$(echo hi); `x`']"
