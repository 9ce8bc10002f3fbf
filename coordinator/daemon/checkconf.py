"""lvmcoordd's configuration, checked before any worker forks.

A bad option must stop the daemon at once with one line naming it: a
worker that fails on it later crash-loops while the others serve (an API
without a fencer). Every check raises ConfigError("[group] option: what is
wrong"); nothing is created or changed.
"""
import grp
import logging
import os
import re
import stat
import time

from oslo_config import cfg

from coordinator import errors
from coordinator.api import server
from coordinator.daemon import watchdog
from coordinator.engine import etcd as etcdlib
from coordinator.lvm import names

LOG = logging.getLogger(__name__)

# sun_path holds 108 bytes with the NUL; the server binds a temporary
# name of up to a few bytes more than the socket's own in the same place.
MAX_SOCKET_PATH = 100


class ConfigError(Exception):
    """One bad option; str() is the line shown to the operator."""

    def __init__(self, option, problem):
        super().__init__(f'{option}: {problem}')
        self.option = option


def _name(group, opt):
    return f'[{group or "DEFAULT"}] {opt}'


def keepalive_interval(conf):
    """The keepalive interval the session uses (0 means TTL/6)."""
    return conf.session.keepalive_interval or conf.session.ttl / 6.0


def read_all(conf):
    """Parse every registered option: oslo.config only reports a malformed
    or out-of-range value when it is first read (in a worker)."""
    for name in list(conf):
        value = _read(conf, None, name)
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for opt in list(value):
                _read(value, name, opt)


def _read(where, group, opt):
    try:
        return where[opt]
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(_name(group, opt), _oslo_reason(exc)) from exc


def _oslo_reason(exc):
    # oslo.config says "Value for option X from LocationInfo(..., detail=
    # 'FILE') is not valid: REASON": keep the reason and the file.
    text = str(exc)
    found = re.search(r"detail='([^']*)'\) is not valid: (.*)", text, re.S)
    if found:
        return f'{found[2]} (in {found[1]})'
    return text.split(' is not valid: ', 1)[-1]


def check_timing(conf):
    """TTL, grace, keepalive and fence timing against each other."""
    ttl, grace = conf.session.ttl, conf.lease.grace
    fraction, interval = conf.fence.fraction, conf.fence.interval
    if ttl < 2:
        raise ConfigError('[session] ttl', f'{ttl} s is too short; at '
                          f'least 2 s')
    if grace < 0:
        raise ConfigError('[lease] grace', f'{grace} s must not be negative')
    if not 0 < fraction < 1:
        raise ConfigError('[fence] fraction', f'{fraction} must be between '
                          f'0 and 1 (exclusive)')
    keepalive = keepalive_interval(conf)
    if keepalive >= ttl / 2:
        raise ConfigError('[session] keepalive_interval',
                          f'{keepalive:g} s must be less than half the TTL '
                          f'({ttl / 2:g} s)')
    fence_at = fraction * ttl
    if fence_at <= 2 * keepalive:
        raise ConfigError('[fence] fraction',
                          f'fraction x ttl = {fence_at:g} s must exceed two '
                          f'keepalive intervals ({2 * keepalive:g} s), or '
                          f'one late keepalive fences this host')
    if interval >= fence_at / 4:
        raise ConfigError('[fence] interval',
                          f'{interval:g} s must be less than a quarter of '
                          f'fraction x ttl ({fence_at / 4:g} s)')
    _check_watchdog(conf, fence_at)


def backend_name(conf):
    """The activation backend the daemon will run (auto resolved)."""
    name = conf.lvm.activation_backend
    if name == 'auto':
        from coordinator import activation
        name = 'lvm' if activation.has_device_mapper() else 'loop'
    return name


def storage_fence(conf):
    """The storage fence configured ([fence] storage), or None."""
    try:
        name = conf.fence.storage
    except (cfg.NoSuchOptError, AttributeError):
        return None  # a release without storage fencing
    return name if name and name != 'none' else None


def unprotected(conf):
    """True when the lvm backend runs without a watchdog or a storage
    fence, by the explicit opt-out ([fence] allow_no_watchdog)."""
    return (backend_name(conf) == 'lvm' and not conf.fence.watchdog_device
            and not storage_fence(conf))


def fence_view(conf):
    """What protects this host beyond its fencer, as published in its
    readiness (doctor and host list show it)."""
    return {'watchdog': conf.fence.watchdog_device or None,
            'storage': storage_fence(conf),
            'unprotected': unprotected(conf)}


def check_fence(conf):
    """The lvm backend (production) needs a watchdog or a storage fence:
    a hung daemon's devices and metadata commands outlive its leases
    otherwise. The loop backend is the sandbox's."""
    if not unprotected(conf):
        return
    if not conf.fence.allow_no_watchdog:
        raise ConfigError('[fence] watchdog_device',
                          'the lvm backend needs a watchdog (or a storage '
                          'fence, [fence] storage = scsi-pr); set [fence] '
                          'allow_no_watchdog = true to run without one')
    LOG.error('UNPROTECTED: [fence] allow_no_watchdog = true: no watchdog '
              'and no storage fence; a hung or dead daemon leaves its LVs '
              'writable and its metadata commands running after other '
              'hosts are granted them')


def watchdog_limit(conf):
    """The longest watchdog timeout the bound allows: the host must be
    reset before another host can be granted its LVs or its VG lock
    (both wait TTL + grace after its last keepalive)."""
    return (conf.session.ttl + conf.lease.grace
            - conf.fence.fraction * conf.session.ttl - 1)


def _check_watchdog(conf, fence_at):
    device = conf.fence.watchdog_device
    if not device:
        return
    try:
        mode = os.stat(device).st_mode
    except OSError as exc:
        raise ConfigError('[fence] watchdog_device',
                          f'{device}: {exc.strerror}') from exc
    if conf.fence.watchdog_simulated:
        if not stat.S_ISREG(mode):
            raise ConfigError('[fence] watchdog_device',
                              f'{device}: a simulated watchdog is a '
                              f'regular file')
    elif not stat.S_ISCHR(mode):
        raise ConfigError('[fence] watchdog_device',
                          f'{device} is not a character device')
    ttl, grace = conf.session.ttl, conf.lease.grace
    timeout = conf.fence.watchdog_timeout
    # The host must be reset before another host can be granted its LVs.
    if fence_at + timeout + 1 > ttl + grace:
        raise ConfigError('[fence] watchdog_timeout',
                          f'fraction x ttl + {timeout} + 1 = '
                          f'{fence_at + timeout + 1:g} s exceeds ttl + grace '
                          f'({ttl + grace:g} s)')
    if conf.fence.watchdog_simulated:
        return
    # What the driver applies is what resets the host: read it back.
    try:
        watchdog.check_timeout(device, timeout, watchdog_limit(conf))
    except watchdog.TimeoutRefused as exc:
        raise ConfigError('[fence] watchdog_timeout',
                          f'{device}: {exc}') from exc
    except OSError as exc:
        raise ConfigError('[fence] watchdog_device',
                          f'{device}: cannot open: {exc.strerror}') from exc


def _invalid(option, call, *args, **kwargs):
    # InvalidInput's "field: reason" becomes "[group] option: reason".
    try:
        return call(*args, **kwargs)
    except errors.InvalidInput as exc:
        raise ConfigError(option, str(exc).split(': ', 1)[-1]) from exc


def check_names(conf):
    """The host name (the API's rule) and the shared VG names."""
    _invalid('[DEFAULT] host', names.host_name, conf.host)
    for vg in conf.lvm.volume_groups:
        _invalid('[lvm] volume_groups', names.vg_name, vg)


def _writable_dir(option, path):
    # The nearest existing ancestor must let us create what is missing.
    if not os.path.isabs(path):
        raise ConfigError(option, f'{path!r} must be an absolute path')
    probe = path
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(option, f'{probe} is not a directory')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(option, f'{probe} is not writable')


def check_paths(conf):
    """State dir, socket group and directory, LVM and TLS files."""
    _writable_dir('[session] state_dir', conf.session.state_dir)
    group = conf.api.socket_group
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError('[api] socket_group',
                              f'no group {group!r}') from None
    else:
        gid = None
    path = conf.api.socket_path
    if not os.path.isabs(path):
        raise ConfigError('[api] socket_path', f'{path!r} must be an '
                          f'absolute path')
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError('[api] socket_path', f'longer than '
                          f'{MAX_SOCKET_PATH} bytes (AF_UNIX limit)')
    _invalid('[api] socket_path', server.check_socket_dir,
             os.path.dirname(path), gid)
    if conf.lvm.system_dir and not os.path.isdir(conf.lvm.system_dir):
        raise ConfigError('[lvm] system_dir',
                          f'{conf.lvm.system_dir} is not a directory')
    for opt in ('ca_file', 'cert_file', 'key_file'):
        path = conf.etcd[opt]
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f'[etcd] {opt}', f'{path} is not readable')


def _describe(exc):
    # etcd3gw's connection errors have an empty str(): name the type.
    text = str(exc).rstrip(': ')
    cause = exc.__cause__
    if cause is not None and not str(cause):
        text += f' ({type(cause).__name__})'
    return text or type(exc).__name__


def wait_for_etcd(conf, clock=time.monotonic, sleep=time.sleep):
    """Return once an etcd endpoint answers; log every failed attempt and
    raise ConfigError after [etcd] startup_timeout seconds."""
    e = conf.etcd
    if not e.endpoints:
        raise ConfigError('[etcd] endpoints', 'no endpoint given')
    clients = [(endpoint, _invalid(
        '[etcd] endpoints', etcdlib.Etcd.from_conf, conf,
        endpoints=[endpoint], retry_window=0)) for endpoint in e.endpoints]
    deadline = clock() + e.startup_timeout
    delay, failure = 0.25, None
    while True:
        for endpoint, client in clients:
            try:
                client.status()
                return endpoint
            except errors.EtcdDenied as exc:
                raise ConfigError('[etcd] username',
                                  f'{endpoint}: {exc}') from exc
            except Exception as exc:  # any other failure: not answering
                failure = f'{endpoint}: {_describe(exc)}'
            # Logged outside the except block: no traceback, one line.
            LOG.warning('etcd endpoint %s does not answer (%s); %.1f s '
                        'left of [etcd] startup_timeout', endpoint,
                        failure.split(': ', 1)[1],
                        max(0.0, deadline - clock()))
        if clock() + delay > deadline:
            raise ConfigError('[etcd] endpoints',
                              f'no endpoint answered within '
                              f'{e.startup_timeout:g} s (startup_timeout); '
                              f'last error: {failure}')
        sleep(delay)
        delay = min(delay * 2, 2.0)


def check(conf, etcd=True):
    """Every check, local ones first; raises the first ConfigError."""
    read_all(conf)
    check_names(conf)
    check_timing(conf)
    check_fence(conf)
    check_paths(conf)
    if etcd:
        wait_for_etcd(conf)
        check_storage(conf)


def check_storage(conf):
    """[fence] storage: the cluster's mode, and an LU that supports it."""
    from coordinator.storage import base as storage_base
    from coordinator.storage import fence as storage_fence
    try:
        storage_fence.check_at_start(conf)
    except (storage_base.StorageError, errors.InvalidInput) as exc:
        raise ConfigError('[fence] storage', str(exc)) from exc
