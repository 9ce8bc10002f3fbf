"""lvmcoordd's start-up checks: each bad option is refused with one line
naming it (coordinator.daemon.checkconf)."""
import errno
import grp
import os
import struct

from oslo_config import cfg
import pytest

from coordinator import conf as conflib
from coordinator.cli import doctor
from coordinator.cli import hosts
from coordinator.daemon import checkconf
from coordinator.daemon import watchdog


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


# -- the watchdog: required on the lvm backend, its timeout read back --

class FakeDriver:
    """A watchdog driver's two timeout ioctls: ``applies(asked)`` is what
    it sets (None: it rejects the value with EINVAL)."""

    def __init__(self, applies, current=30):
        self.applies, self.current = applies, current

    def __call__(self, fd, request, arg):
        if request == watchdog._WDIOC_SETTIMEOUT:
            got = self.applies(struct.unpack('i', arg)[0])
            if got is None:
                raise OSError(errno.EINVAL, 'Invalid argument')
            self.current = got
            return struct.pack('i', got)
        assert request == watchdog._WDIOC_GETTIMEOUT
        return struct.pack('i', self.current)


def test_lvm_backend_without_watchdog_is_refused(tmp_path):
    conf = make_conf(tmp_path, lvm__activation_backend='lvm')
    line = refused(conf)
    assert line.startswith('[fence] watchdog_device: the lvm backend needs '
                           'a watchdog'), line
    assert 'allow_no_watchdog' in line and '\n' not in line


def test_lvm_backend_opt_out_is_logged_and_published(tmp_path, caplog):
    conf = make_conf(tmp_path, lvm__activation_backend='lvm',
                     fence__allow_no_watchdog='true')
    checkconf.check(conf, etcd=False)
    assert any('UNPROTECTED' in r.getMessage() and r.levelname == 'ERROR'
               for r in caplog.records)
    assert checkconf.fence_view(conf) == {'watchdog': None, 'storage': None,
                                          'unprotected': True}
    row = hosts.host_row('compute-1', {'lease': 1},
                         {'vgs': {}, 'problems': {},
                          'fence': checkconf.fence_view(conf)})
    problems = row[hosts.COLUMNS.index('Problems')]
    assert 'UNPROTECTED' in problems.human_readable()


def test_loop_backend_needs_no_watchdog(tmp_path):
    conf = make_conf(tmp_path, lvm__activation_backend='loop')
    checkconf.check(conf, etcd=False)
    assert not checkconf.fence_view(conf)['unprotected']


def test_doctor_shows_the_opt_out(tmp_path):
    class Ctx:
        pass
    ctx = Ctx()
    ctx.conf = make_conf(tmp_path, lvm__activation_backend='lvm',
                         fence__allow_no_watchdog='true')
    [(name, status, detail)] = doctor.check_fence(ctx)
    assert (name, status) == ('fence', doctor.WARN)
    assert 'UNPROTECTED' in detail and 'allow_no_watchdog' in detail
    ctx.conf = make_conf(tmp_path, lvm__activation_backend='lvm')
    assert doctor.check_fence(ctx)[0][1] == doctor.FAIL


@pytest.mark.parametrize('applies, line', [
    (lambda t: None, '[fence] watchdog_timeout: /dev/null: the driver '
                     'rejected 5 s (Invalid argument); it applies 30 s'),
    (lambda t: 60, '[fence] watchdog_timeout: /dev/null: 5 s asked, the '
                   'driver applied 60 s, more than the bound allows (6 s)'),
])
def test_watchdog_timeout_is_read_back(tmp_path, monkeypatch, applies,
                                       line):
    driver = FakeDriver(applies)
    monkeypatch.setattr(watchdog, '_ioctl', driver)
    conf = make_conf(tmp_path, fence__watchdog_device='/dev/null',
                     lvm__activation_backend='lvm')
    assert refused(conf) == line


def test_watchdog_timeout_applied_within_the_bound_passes(tmp_path,
                                                          monkeypatch):
    driver = FakeDriver(lambda t: t - 1)  # a driver that rounds down
    monkeypatch.setattr(watchdog, '_ioctl', driver)
    checkconf.check(make_conf(tmp_path, fence__watchdog_device='/dev/null',
                              lvm__activation_backend='lvm'), etcd=False)
    assert driver.current == 4


def test_watchdog_not_read_back_is_refused(tmp_path, monkeypatch):
    # /dev/null takes no watchdog ioctl: not a watchdog at all.
    line = refused(make_conf(tmp_path, fence__watchdog_device='/dev/null'))
    assert line.startswith('[fence] watchdog_timeout: /dev/null: 5 s asked, '
                           'the applied timeout cannot be read back'), line


def test_arming_refuses_a_timeout_beyond_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog, '_ioctl', FakeDriver(lambda t: 60))
    dog = watchdog.Watchdog('/dev/null', 5, str(tmp_path / 'armed'),
                            limit=6)
    with pytest.raises(watchdog.TimeoutRefused):
        dog.pet()
    assert not dog.armed and not watchdog.armed_in(str(tmp_path / 'armed'))


def test_bound_is_the_same_for_grants_and_the_vg_lock(tmp_path):
    conf = make_conf(tmp_path)
    # ttl 10, grace 3, fraction 0.6: 10 + 3 - 6 - 1.
    assert checkconf.watchdog_limit(conf) == 6
