"""lvmcoordd's start-up checks: each bad option is refused with one line
naming it (coordinator.daemon.checkconf)."""
import grp
import os

from oslo_config import cfg
import pytest

from coordinator import conf as conflib
from coordinator.daemon import checkconf


def make_conf(tmp_path, **options):
    """A ConfigOpts read from a file; ``options`` are group__name=value."""
    sections = {
        'DEFAULT': {'host': 'compute-1'},
        'etcd': {'endpoints': 'http://127.0.0.1:1'},
        'session': {'state_dir': str(tmp_path / 'state')},
        'api': {'socket_path': str(tmp_path / 'run' / 'api.sock')},
    }
    for key, value in options.items():
        group, name = key.split('__')
        sections.setdefault(group, {})[name] = value
    path = tmp_path / 'lvmcoord.conf'
    path.write_text(''.join(
        f'[{group}]\n' + ''.join(f'{k} = {v}\n' for k, v in opts.items())
        for group, opts in sections.items()))
    conf = cfg.ConfigOpts()
    conflib.register(conf)
    conf(['--config-file', str(path)], project='lvmcoord')
    return conf


def refused(conf):
    with pytest.raises(checkconf.ConfigError) as exc:
        checkconf.check(conf, etcd=False)
    return str(exc.value)


def test_defaults_pass(tmp_path):
    checkconf.check(make_conf(tmp_path), etcd=False)


@pytest.mark.parametrize('options, line', [
    ({'session__ttl': '0'}, '[session] ttl: Should be greater than or '
                            'equal to 2'),
    ({'session__ttl': '-5'}, '[session] ttl:'),
    ({'session__ttl': 'ten'}, '[session] ttl: invalid literal'),
    ({'lease__grace': '-1'}, '[lease] grace:'),
    ({'fence__fraction': '1.0'}, '[fence] fraction:'),
    ({'session__keepalive_interval': '10'},
     '[session] keepalive_interval: 10 s must be less than half the TTL'),
    ({'session__keepalive_interval': '5'},
     '[session] keepalive_interval: 5 s must be less than half the TTL'),
    ({'session__keepalive_interval': '3', 'fence__fraction': '0.5'},
     '[fence] fraction: fraction x ttl = 5 s must exceed two keepalive '
     'intervals (6 s)'),
    ({'fence__interval': '2'},
     '[fence] interval: 2 s must be less than a quarter of fraction x ttl'),
    ({'fence__watchdog_device': '/nonexistent/watchdog'},
     '[fence] watchdog_device: /nonexistent/watchdog: No such file'),
    ({'fence__watchdog_device': '/etc/hostname'},
     '[fence] watchdog_device: /etc/hostname is not a character device'),
    ({'fence__watchdog_device': '/dev/null', 'fence__watchdog_timeout': '8'},
     '[fence] watchdog_timeout: fraction x ttl + 8 + 1 = 15 s exceeds ttl '
     '+ grace (13 s)'),
    ({'DEFAULT__host': 'a/b'}, '[DEFAULT] host: host name \'a/b\' may '
                               'contain only'),
    ({'DEFAULT__host': '..'}, '[DEFAULT] host: host name must not be'),
    ({'DEFAULT__host': 'hôte'}, '[DEFAULT] host:'),
    ({'DEFAULT__host': 'h' * 64}, '[DEFAULT] host: host name is 64 '
                                  'characters long'),
    ({'lvm__volume_groups': 'vg0,-bad'}, '[lvm] volume_groups: VG name '
                                         '\'-bad\' must not start'),
    ({'api__socket_group': 'no-such-group-xyz'},
     "[api] socket_group: no group 'no-such-group-xyz'"),
    ({'api__socket_path': 'relative.sock'}, '[api] socket_path:'),
    ({'api__socket_path': '/' + 'x' * 120}, '[api] socket_path: longer'),
    ({'lvm__activation_backend': 'zfs'}, '[lvm] activation_backend:'),
])
def test_bad_option_is_named(tmp_path, options, line):
    conf = make_conf(tmp_path, **options)
    assert refused(conf).startswith(line), refused(conf)
    assert '\n' not in refused(conf)


def test_keepalive_default_is_a_sixth_of_the_ttl(tmp_path):
    conf = make_conf(tmp_path, session__ttl='12')
    assert checkconf.keepalive_interval(conf) == 2.0


def test_state_dir_must_be_creatable(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    conf = make_conf(tmp_path, session__state_dir=str(blocker / 'state'))
    assert refused(conf) == (f'[session] state_dir: {blocker} is not a '
                             f'directory')
    assert not os.path.exists(blocker / 'state')


def test_state_dir_on_read_only_fs_is_refused(tmp_path):
    # /proc/sys is read-only even for root (EROFS from access()).
    conf = make_conf(tmp_path, session__state_dir='/proc/sys/lvmcoord')
    assert refused(conf) == '[session] state_dir: /proc/sys is not writable'


def test_socket_directory_writable_by_others_is_refused(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    run.chmod(0o777)
    conf = make_conf(tmp_path)
    assert refused(conf).startswith(
        f'[api] socket_path: {run} is writable by group or others')


def test_existing_socket_group_passes(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    checkconf.check(make_conf(tmp_path, api__socket_group=group),
                    etcd=False)


def test_unreachable_etcd_is_retried_logged_and_refused(tmp_path, caplog):
    conf = make_conf(tmp_path, etcd__startup_timeout='0.5',
                     etcd__timeout='0.2')
    with pytest.raises(checkconf.ConfigError) as exc:
        checkconf.wait_for_etcd(conf)
    assert str(exc.value).startswith(
        '[etcd] endpoints: no endpoint answered within 0.5 s')
    retries = [r.getMessage() for r in caplog.records
               if 'does not answer' in r.getMessage()]
    assert len(retries) >= 2
    assert all('http://127.0.0.1:1' in m for m in retries)


def test_bad_endpoint_url_is_named(tmp_path):
    conf = make_conf(tmp_path, etcd__endpoints='ftp://x')
    with pytest.raises(checkconf.ConfigError) as exc:
        checkconf.wait_for_etcd(conf)
    assert str(exc.value) == "[etcd] endpoints: not an http(s) URL: 'ftp://x'"
