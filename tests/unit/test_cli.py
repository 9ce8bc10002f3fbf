"""The admin CLI without etcd: argument parsing, formatting, exit codes."""
import argparse
import configparser
import io
import json
import logging
import os

from oslo_config import cfg
import pytest

from coordinator import cli
from coordinator.cli import app
from coordinator.cli import doctor
from coordinator.cli import drain
from coordinator.cli import events
from coordinator.cli import hosts
from coordinator.cli import leases
from coordinator.cli import vg
from coordinator.engine import etcd as etcdlib
from coordinator.engine import keys as keyslib
from coordinator.engine.modes import Holder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


# -- VG/LV arguments --

@pytest.mark.parametrize('text, expected', [
    ('vg0/lv1', ('vg0', 'lv1')),
    ('/dev/vg0/lv1', ('vg0', 'lv1')),
    ('cinder-volumes/volume-0a1b.2+c_d', ('cinder-volumes',
                                          'volume-0a1b.2+c_d')),
])
def test_parse_vg_lv(text, expected):
    assert cli.parse_vg_lv(text) == expected


@pytest.mark.parametrize('text, message', [
    ('vg0', "expected VG/LV, got 'vg0' (0 \"/\" instead of one)"),
    ('vg0/lv1/x', "expected VG/LV, got 'vg0/lv1/x' (2 \"/\" instead of "
                  "one)"),
    ('/lv1', '/lv1: VG name must not be empty'),
    ('vg0/', 'vg0/: LV name must not be empty'),
    ('vg 0/lv1', "vg 0/lv1: VG name 'vg 0' may contain only"),
    ('vg0/lv\n1', "LV name 'lv\\n1' may contain only"),
    ('-vg/lv1', "-vg/lv1: VG name '-vg' must not start with \"-\""),
    ('vg0/..', 'vg0/..: LV name must not be "." or ".."'),
    ('vg0/snapshot1', "LV names starting with 'snapshot' are reserved"),
    ('vg0/' + 'x' * 128, 'LV name is 128 characters long, at most 127'),
])
def test_parse_vg_lv_errors_name_the_problem(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        cli.parse_vg_lv(text)
    assert message in str(exc.value)


def test_parse_vg():
    assert cli.parse_vg('vg0') == 'vg0'
    with pytest.raises(argparse.ArgumentTypeError,
                       match="got 'vg0/lv1' \\(a VG name has no"):
        cli.parse_vg('vg0/lv1')
    with pytest.raises(argparse.ArgumentTypeError,
                       match="VG name 'v g' may contain only"):
        cli.parse_vg('v g')


def test_parse_token():
    assert cli.parse_token('42') == 42


@pytest.mark.parametrize('text, message', [
    ('abc', "token 'abc' is not an integer"),
    ('none', "token 'none' is not an integer"),
    ('0', 'token 0 must be positive'),
    ('-3', 'token -3 must be positive')])
def test_parse_token_errors(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        cli.parse_token(text)


def parser(cls):
    return cls(None, None).get_parser(f'lvmcoord {cls.__name__}')


def test_lease_break_arguments():
    args = parser(leases.LeaseBreak).parse_args(
        ['/dev/vg0/lv1', '--host', 'compute-1', '--token', '17',
         '--yes-i-really-mean-it'])
    assert (args.lv, args.host, args.token) == (('vg0', 'lv1'), 'compute-1',
                                                17)
    assert args.confirmed and not args.force


def test_bad_lv_argument_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        parser(leases.LeaseBreak).parse_args(
            ['vg0', '--host', 'h', '--token', '1'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument VG/LV: expected VG/LV, got 'vg0'" in err


def test_lease_break_needs_host_and_token(capsys):
    with pytest.raises(SystemExit):
        parser(leases.LeaseBreak).parse_args(['vg0/lv1'])
    assert '--host' in capsys.readouterr().err


def test_other_parsers():
    assert parser(leases.LeaseList).parse_args(['--vg', 'vg1']).vg == 'vg1'
    assert parser(leases.LeaseShow).parse_args(['vg1/a']).lv == ('vg1', 'a')
    assert parser(vg.VGShow).parse_args(['vg1']).vg == 'vg1'
    ev = parser(events.Events).parse_args(
        ['--follow', '--since-revision', '12', '-f', 'json'])
    assert (ev.follow, ev.since_revision, ev.format) == (True, 12, 'json')
    assert parser(events.Events).parse_args([]).format == 'text'


# -- configuration and the application --

def test_builtin_commands_match_setup_cfg():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, 'setup.cfg'))
    declared = {}
    for line in setup['entry_points']['lvmcoord.cli'].split('\n'):
        if line.strip():
            name, target = (x.strip() for x in line.split('='))
            declared[name.replace('_', ' ')] = target
    assert declared == app.BUILTIN


def test_load_conf(tmp_path, monkeypatch):
    path = tmp_path / 'lvmcoord.conf'
    path.write_text('[DEFAULT]\ncluster = c1\n[etcd]\nendpoints = '
                    'http://10.0.0.1:2379,http://10.0.0.2:2379\n')
    conf = app.load_conf([str(path)])
    assert conf.cluster == 'c1'
    assert conf.etcd.endpoints == ['http://10.0.0.1:2379',
                                   'http://10.0.0.2:2379']
    assert conf.api.socket_path == '/run/lvmcoord/lvmcoord.sock'
    monkeypatch.setattr(app, 'DEFAULT_CONFIG', str(tmp_path / 'absent'))
    assert app.load_conf().cluster == 'default'
    with pytest.raises(cfg.ConfigFilesNotFoundError):
        app.load_conf([str(tmp_path / 'absent')])


def test_admin_session_never_fails():
    session = app.AdminSession()
    assert (session.host, session.id) == ('admin-cli', 0)
    session.check()


@pytest.fixture
def run(tmp_path):
    """Run the whole app in-process; (exit status, stdout, stderr)."""
    conf = tmp_path / 'lvmcoord.conf'
    # Nothing listens there: a command that reaches etcd fails fast.
    conf.write_text('[DEFAULT]\nhost = me\n[etcd]\nendpoints = '
                    'http://127.0.0.1:9\nretry_window = 0\n[api]\n'
                    f'socket_path = {tmp_path / "sock"}\n')
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def run(*argv, config=str(conf)):
        out, err = io.StringIO(), io.StringIO()
        rc = app.LvmcoordApp(stdout=out, stderr=err).run(
            ['--config-file', config, *argv])
        return rc, out.getvalue(), err.getvalue()
    yield run
    root.handlers[:], root.level = saved


def test_lease_break_refused_without_confirmation(run):
    rc, out, err = run('lease', 'break', 'vg0/lv1', '--host', 'compute-1',
                       '--token', '5')
    assert rc == 1 and out == ''
    assert ('refusing to break the lease of compute-1 on vg0/lv1 without '
            '--yes-i-really-mean-it') in err


def test_missing_config_file_is_an_error(run, tmp_path):
    rc, _, err = run('lease', 'list', config=str(tmp_path / 'nope.conf'))
    assert rc == 1
    assert 'nope.conf' in err


def test_etcd_down_is_an_error(run):
    rc, _, err = run('lease', 'list')
    assert rc == 1
    assert 'etcd unreachable at 127.0.0.1:9' in err


class FakeClient:
    def __init__(self, results):
        self.results = results

    def call(self, op, **args):
        return self.results[op]


def test_drain_exit_status(run, monkeypatch):
    result = {'released': ['vg0/a'], 'kept_open': ['vg0/b']}
    monkeypatch.setattr(app.Context, 'client',
                        lambda self, timeout=300.0: FakeClient(
                            {'drain': result}))
    rc, out, err = run('drain', '-f', 'json')
    assert rc == 1
    assert json.loads(out) == [{'LV': 'vg0/a', 'Result': 'released'},
                               {'LV': 'vg0/b', 'Result': 'kept open'}]
    assert 'still open here' in err
    result['kept_open'] = []
    rc, out, _ = run('drain', '-f', 'value')
    assert (rc, out) == (0, 'vg0/a released\n')


def test_doctor_exit_status(run, monkeypatch):
    def good(ctx):
        return [('a', doctor.OK, 'fine'), ('b', doctor.WARN, 'hmm')]

    def bad(ctx):
        return [('c', doctor.FAIL, 'broken')]

    def crash(ctx):
        raise RuntimeError('boom')
    monkeypatch.setattr(doctor, 'CHECKS', (good,))
    rc, out, _ = run('doctor', '-f', 'value')
    assert rc == 0 and out.splitlines() == ['a ok fine', 'b warn hmm']
    monkeypatch.setattr(doctor, 'CHECKS', (good, bad, crash))
    rc, out, _ = run('doctor', '-f', 'json')
    assert rc == 1
    assert [r['Status'] for r in json.loads(out)] == ['ok', 'warn', 'fail',
                                                      'fail']
    assert json.loads(out)[-1] == {'Check': 'crash', 'Status': 'fail',
                                   'Detail': 'check crashed: boom'}


# -- formatting --

def test_when_and_ago():
    assert cli.when(None) == cli.when(0) == '-'
    assert cli.when(86400 * 365.25 * 30).startswith('2000-01-01') or \
        cli.when(86400 * 365.25 * 30).startswith('1999-12-31')
    assert cli.ago(100, now=105) == '5s ago'
    assert cli.ago(100, now=100 + 192) == '3m12s ago'
    assert cli.ago(100, now=100 + 3 * 3600 + 60) == '3h01m ago'
    assert cli.ago(100, now=100 + 2 * 86400 + 7200) == '2d02h ago'
    assert cli.ago(None) == '-'


def test_columns():
    t = cli.TimeColumn(1700000000.5)
    assert t.machine_readable() == 1700000000.5
    assert t.human_readable() == cli.when(1700000000.5)
    assert cli.ListColumn(['a', 'b']).human_readable() == 'a, b'
    assert cli.ListColumn([]).human_readable() == '-'
    assert cli.LinesColumn(['a', 'b']).human_readable() == 'a\nb'
    assert cli.DictColumn({'vg1': 'x', 'vg0': 'y'}).human_readable() == \
        'vg0: y\nvg1: x'
    assert cli.DictColumn({}).human_readable() == '-'
    assert cli.TokenColumn(None).human_readable() == 'none'
    assert cli.TokenColumn(12).machine_readable() == 12
    assert cli.YesNoColumn(False).human_readable() == 'no'


def readiness(*pvs, problems=None):
    return {'vgs': {'vg0': {'uuid': 'U', 'seqno': 4, 'pvs': [
        {'device': d, 'multipath': m} for d, m in pvs]}},
        'problems': problems or {}, 'versions': {}}


def test_host_row_full():
    row = hosts.host_row('h1', {'lease': 255, 'since': 1700000000.0},
                         readiness(('/dev/mapper/a', True)))
    assert row[0] == 'h1' and row[1] == 'ff'
    assert row[2].machine_readable() == 1700000000.0
    assert row[3].machine_readable() == {'vg0': {'uuid': 'U', 'seqno': 4}}
    assert row[3].human_readable() == 'vg0 (seqno 4)'
    assert row[4].machine_readable() == ['/dev/mapper/a']
    assert row[5].human_readable() == 'yes'
    assert row[6].machine_readable() == {}


def test_host_row_missing_sources():
    row = hosts.host_row('h2', None, readiness(
        ('/dev/sdb', False), ('/dev/mapper/m', True),
        problems={'vg0': 'bad'}))
    assert row[1] is None
    assert row[5].human_readable() == '/dev/mapper/m: yes\n/dev/sdb: no'
    assert row[6].machine_readable() == {
        'vg0': 'bad', 'session': 'no live session (daemon down?)'}
    row = hosts.host_row('h3', {'lease': 1}, None)
    assert 'not in the membership group' in \
        row[6].machine_readable()['membership']
    row = hosts.host_row('h3', {'lease': 1}, None, 'tooz down')
    assert row[6].machine_readable() == {'membership': 'tooz down'}
    assert row[5].human_readable() == '-'


def test_host_row_storage_key():
    assert hosts.host_row('h1', {'lease': 255}, None)[7] is None
    row = hosts.host_row('h1', {'lease': 255}, None, storage={
        'key': '0xff', 'session': 255})
    assert row[7] == '0xff'
    row = hosts.host_row('h1', {'lease': 256}, None, storage={
        'key': '0xff', 'session': 255})
    assert row[7] == '0xff (session ff, not live)'


def holder(host='h1', alive=True, token=9, instance='i-1'):
    return Holder(host=host, mode='migration', instance=instance,
                  token=token, since=1700000000.0, session=5, alive=alive)


def test_lease_rows():
    row = leases.holder_row('vg0', 'lv1', holder())
    assert row[:5] == ('vg0', 'lv1', 'h1', 'migration', 'i-1')
    assert row[5].machine_readable() == 9
    assert row[7].human_readable() == 'yes'
    dead = holder('h2', alive=False, token=None, instance=None)
    assert leases.describe(dead) == (
        f'h2: migration, token none, since {cli.when(1700000000.0)}, '
        f'session ended')
    col = leases.HoldersColumn([holder(), dead])
    assert col.machine_readable()[1] == {
        'host': 'h2', 'mode': 'migration', 'instance': None, 'token': None,
        'since': 1700000000.0, 'alive': False}
    assert col.human_readable().splitlines()[0].startswith(
        'h1: migration, instance i-1, token 9')
    assert leases.ReservedColumn(None).human_readable() == '-'
    assert leases.ReservedColumn({'host': 'v', 'op': 'delete'}) \
        .human_readable() == 'by v for delete'


@pytest.mark.parametrize('recorded, disk, intent, start', [
    (5, 5, None, 'in sync'),
    (None, 5, None, 'nothing recorded yet'),
    (7, 5, None, 'behind: 2 change(s) not seen here'),
    (5, 6, None, 'AHEAD: changed outside lvmcoord (seqno 6 on disk, 5 '
                 'recorded)'),
    (5, 6, {'host': 'h', 'op': 'lvcreate'}, 'ahead: change in flight by h '
                                            '(lvcreate)'),
    (5, 'unknown', None, 'unknown: why'),
])
def test_vg_verdict(recorded, disk, intent, start):
    assert vg.verdict(recorded, disk, intent, 'why').startswith(start)


def test_vg_entries():
    entry = {'host': 'h1', 'op': 'lvcreate vg0/x', 'pid': 42,
             'since': 1700000000.0}
    assert vg.describe_entry(entry).startswith(
        f'h1 pid 42: lvcreate vg0/x, since {cli.when(1700000000.0)} (')
    assert vg.describe_entry(None) == '-'
    assert vg.QueueColumn([entry, dict(entry, host='h2')]) \
        .human_readable().splitlines()[1].startswith('2. h2 pid 42')
    assert vg.QueueColumn([]).human_readable() == '-'
    assert vg.RecordColumn({'host': 'h', 'op': 'o', 'at': 0}) \
        .human_readable() == 'h: o at -'


def test_drain_rows():
    assert drain.drain_rows({'released': ['a/b'], 'kept_open': ['a/c']}) \
        == [('a/b', 'released'), ('a/c', 'kept open')]
    assert drain.drain_rows({}) == []


# -- events --

KEYS = keyslib.Keys(cluster='c')


def kv(key, value=None, rev=10, lease=0):
    return etcdlib.KV(key=KEYS.root + key, value=json.dumps(value)
                      if value is not None else '', create_revision=rev,
                      mod_revision=rev, version=1, lease=lease)


def decoder(ledger_hosts=()):
    return events.Decoder(KEYS, lambda vg, lv, rev: set(ledger_hosts))


def test_decode_grant_and_releases():
    grant = decoder().change('PUT', kv(
        'leases/vg0/lv1/holder/h1', {'mode': 'exclusive', 'instance': 'i',
                                     'since': 5.0, 'session': 1}, rev=33))
    assert (grant.kind, grant.host, grant.time, grant.revision) == \
        ('grant', 'h1', 5.0, 33)
    assert grant.details == {'lv': 'vg0/lv1', 'mode': 'exclusive',
                             'instance': 'i', 'token': 33}
    gone = kv('leases/vg0/lv1/holder/h1', rev=40)
    release = decoder().change('DELETE', gone, now=7.0)
    assert (release.kind, release.time) == ('release', 7.0)
    # Still in the ledger: the holder's session ended, it did not let go.
    ended = decoder(['h1']).change('DELETE', gone)
    assert ended.kind == 'session-ended' and ended.time is None
    assert decoder().change('PUT', kv('leases/vg0/lv1/ledger', {})) is None


def test_decode_sessions_and_published_events():
    up = decoder().change('PUT', kv('sessions/h1', {
        'host': 'h1', 'lease': 255, 'pid': 7, 'since': 3.0}, lease=255))
    assert (up.kind, up.host, up.time) == ('host-up', 'h1', 3.0)
    assert up.details == {'session': 'ff', 'pid': 7}
    assert decoder().change('DELETE', kv('sessions/h1')).kind == 'host-down'
    fenced = decoder().change('PUT', kv('events/1.0-abc', {
        'kind': 'fenced', 'host': 'h2', 'at': 9.0, 'lvs': ['vg0/a']}))
    assert (fenced.kind, fenced.host, fenced.time) == ('fenced', 'h2', 9.0)
    assert fenced.details == {'lvs': ['vg0/a']}
    assert decoder().change('DELETE', kv('events/1.0-abc')) is None
    assert decoder().change('PUT', kv('vg/vg0/seqno', {'seqno': 1})) is None


def test_snapshot_is_in_time_order():
    got = decoder().snapshot([
        kv('events/2', {'kind': 'fenced', 'host': 'b', 'at': 20.0}),
        kv('sessions/a', {'since': 10.0}),
        kv('requests/a/1', {'op': 'x'})])
    assert [(e.kind, e.host) for e in got] == [('host-up', 'a'),
                                              ('fenced', 'b')]


def test_event_text_and_json():
    ev = events.Event(None, 12, 'grant', 'h1',
                      {'lv': 'vg0/lv1', 'mode': 'shared', 'instance': None,
                       'token': 12})
    assert ev.text() == ('-                       r12      grant           '
                         'h1               vg0/lv1 instance=none '
                         'mode=shared token=12')
    assert json.loads(ev.json()) == {
        'time': None, 'revision': 12, 'kind': 'grant', 'host': 'h1',
        'lv': 'vg0/lv1', 'mode': 'shared', 'instance': None, 'token': 12}
    stamped = events.Event(1700000000.25, 1, 'fenced', None,
                           {'lvs': ['a/b']})
    assert stamped.text().startswith(cli.when(1700000000.25) + '.250')
    assert stamped.text().endswith('-                lvs=["a/b"]')


# -- doctor helpers --

def test_parse_lvmconfig():
    out = 'filter=["a|^/dev/loop5$|","r|.*|"]\nglobal_filter=["a|.*|"]\n'
    assert doctor.parse_lvmconfig(out) == {
        'filter': ['a|^/dev/loop5$|', 'r|.*|'], 'global_filter': ['a|.*|']}


@pytest.mark.parametrize('patterns, expected', [
    (['a|.*|'], True),
    ([], True),
    (['a|^/dev/sdb$|'], True),
    (['a/.*/', 'r/.*/'], True),
    (['a|^/dev/mapper/mpath.*|', 'r|.*|'], False),
    (['r|^/dev/sda.*|', 'a|.*|'], False),
])
def test_accepts_everything(patterns, expected):
    assert doctor.accepts_everything(patterns) is expected


@pytest.mark.parametrize('offset, status', [
    (0.2, 'ok'), (-0.9, 'ok'), (1.2, 'warn'), (-1.4, 'warn'), (1.6, 'fail'),
    (-5, 'fail')])
def test_clock_status(offset, status):
    # grace 3 s: fail above 1.5 s.
    assert doctor.clock_status(offset, 0.01, 3.0)[0] == status


def test_measure_offset_finds_the_second_boundary():
    # Local clock 0.3 s ahead of the server; each request takes 10 ms.
    now = [100.95]

    def clock():
        return now[0]

    def fetch():
        now[0] += 0.005
        server = now[0] - 0.3
        now[0] += 0.005
        return float(int(server))
    offset, uncertainty = doctor.measure_offset(fetch, clock, pause=0)
    assert offset == pytest.approx(0.3, abs=uncertainty)
    assert uncertainty <= 0.011


def test_measure_offset_falls_back_to_one_sample():
    def fetch():
        return 100.0
    offset, uncertainty = doctor.measure_offset(
        fetch, clock=lambda: 100.6, window=0, pause=0)
    assert offset == pytest.approx(0.1)
    assert uncertainty == pytest.approx(0.5)
