"""`lvmcoord doctor`: is THIS host fit to use the shared VGs?

Each check yields (check, status, detail) with status ok, warn or fail;
the command exits non-zero if any check fails.
"""
import email.utils
import json
import os
import re
import subprocess
import time

from cliff import lister

from coordinator import errors
from coordinator.daemon import readiness
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine

OK, WARN, FAIL = 'ok', 'warn', 'fail'
COLUMNS = ('Check', 'Status', 'Detail')
# Fencing and keepalives must fit in a fraction of the TTL; an etcd round
# trip this slow eats that margin.
SLOW_ETCD = 0.1
CLOCK_WARN = 1.0
# Regexes LVM users write for "any device".
MATCH_ALL = {'.*', '^.*', '.*$', '^.*$', '^/dev/.*', '/dev/.*', '^/dev/'}


# -- pure helpers (unit-tested) --

def parse_lvmconfig(text):
    """{name: [pattern, ...]} from `lvmconfig` output lines."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition('=')
        if sep:
            out[name.strip()] = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
    return out


def accepts_everything(patterns):
    """True if an LVM filter (list of patterns) admits every device."""
    # A catch-all accept before any reject does; so does no reject at
    # all, as LVM accepts devices that match no pattern.
    for pattern in patterns:
        if len(pattern) < 3:
            continue
        action, regex = pattern[0], pattern[2:-1]
        if action == 'r':
            return False
        if action == 'a' and regex in MATCH_ALL:
            return True
    return True


def measure_offset(fetch_date, clock=time.time, window=1.5, pause=0.01):
    """(offset, uncertainty) of local time minus a server's, in seconds."""
    # HTTP Date has whole seconds: poll until it ticks over, which pins
    # the server's second boundary between two of our requests.
    end = clock() + window
    prev = None
    while True:
        before = clock()
        date = fetch_date()
        after = clock()
        if prev is not None and date > prev[1]:
            low, high = prev[0] - date, after - date
            return (low + high) / 2, (high - low) / 2
        if after >= end:
            return (before + after) / 2 - (date + 0.5), \
                0.5 + (after - before) / 2
        prev = (before, date)
        time.sleep(pause)


def clock_status(offset, uncertainty, grace):
    """(status, detail) for a clock offset in seconds against etcd."""
    limit = grace / 2
    detail = (f'{offset:+.3f} s (+-{uncertainty:.3f}) against etcd\'s HTTP '
              f'Date; warn above {CLOCK_WARN:g} s, fail above {limit:g} s')
    if abs(offset) > limit:
        return FAIL, detail
    if abs(offset) > CLOCK_WARN:
        return WARN, detail
    return OK, detail


# -- checks: each returns a list of (check, status, detail) --

def check_etcd(ctx):
    """A put+get+delete round trip through each configured endpoint."""
    e = ctx.conf.etcd
    key = f'{ctx.keys.root}doctor/{ctx.conf.host}'
    rows = []
    for endpoint in e.endpoints:
        name = f'etcd {endpoint}'
        try:
            # One endpoint, one attempt: fail-over would hide a dead one.
            one = etcdlib.Etcd.from_conf(ctx.conf, endpoints=[endpoint],
                                         retry_window=0)
            # Asked first, it also opens the connection, which the timed
            # round trip then reuses as the daemon's would.
            version = one.status().get('version', '?')
            token = f'{os.getpid()}-{time.time()}'
            start = time.monotonic()
            one.put(key, token)
            got = one.get(key)
            rtt = time.monotonic() - start
            one.delete(key)
        except Exception as exc:
            rows.append((name, FAIL, f'unreachable: {exc}'))
            continue
        if got is None or got.value != token:
            rows.append((name, FAIL, 'read back something else than was '
                                      'written'))
            continue
        status = WARN if rtt > SLOW_ETCD else OK
        rows.append((name, status, f'put+get {rtt * 1000:.1f} ms, etcd '
                                   f'{version}'))
    return rows


def _date_of(session, url, timeout):
    def fetch():
        resp = session.get(url, timeout=timeout)
        return email.utils.parsedate_to_datetime(
            resp.headers['Date']).timestamp()
    return fetch


def check_clock(ctx):
    """Local time against the etcd server's HTTP Date header."""
    failures = []
    for url in ctx.etcd.endpoints:
        # The requests flavour: the lean session keeps no headers.
        session = etcdlib.http_session(ctx.etcd.tls, stream=True)
        try:
            offset, uncertainty = measure_offset(_date_of(
                session, f'{url.scheme}://{url.netloc}/version',
                ctx.conf.etcd.timeout))
        except Exception as exc:
            failures.append(f'{url.netloc}: {exc}')
            continue
        finally:
            session.close()
        status, detail = clock_status(offset, uncertainty,
                                      ctx.conf.lease.grace)
        return [('clock', status, detail)]
    return [('clock', FAIL, f'no etcd endpoint answered /version: '
                            f'{"; ".join(failures)}')]


def check_session(ctx):
    """The daemon's session state file and its etcd lease."""
    path = Engine.state_file(ctx.conf)
    try:
        with open(path) as f:
            state = json.load(f)
        lease_id = int(state['lease'])
    except FileNotFoundError:
        return [('session', FAIL, f'no session state at {path} (daemon '
                                  f'never ran here?)')]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [('session', FAIL, f'unreadable session state {path}: '
                                  f'{exc}')]
    if state.get('host') != ctx.conf.host:
        return [('session', FAIL, f'{path} belongs to host '
                                  f'{state.get("host")!r}, not '
                                  f'{ctx.conf.host!r}')]
    try:
        left = ctx.etcd.lease_ttl(lease_id)
    except errors.CoordError as exc:
        return [('session', FAIL, f'cannot ask etcd: {exc}')]
    if left <= 0:
        return [('session', FAIL, f'session {lease_id:x} has expired')]
    # The live record under this host name: this machine's?
    from coordinator.engine import identity
    kv = ctx.etcd.get(ctx.keys.session(ctx.conf.host))
    why = identity.conflict(kv.json() if kv else None, ctx.conf.host,
                            identity.machine_id(ctx.conf.session.machine_id),
                            lease_id, ctx.conf.session.state_dir)
    if why:
        return [('session', FAIL, why)]
    return [('session', OK, f'session {lease_id:x} alive, {left} s left')]


def _lvm(ctx):
    from coordinator.lvm import executor
    return executor.LVM(system_dir=ctx.conf.lvm.system_dir,
                        activation=False)


def check_vgs(ctx):
    """Each configured VG: visible, UUID, multipath, LVM settings."""
    vgs = ctx.conf.lvm.volume_groups
    if not vgs:
        return [('volume groups', WARN, 'none configured ([lvm] '
                                        'volume_groups)')]
    try:
        lvm = _lvm(ctx)
    except Exception as exc:
        return [('volume groups', FAIL, f'cannot run LVM: {exc}')]
    rows = []
    for vg in vgs:
        rows += _check_vg(ctx, lvm, vg)
    return rows


def _check_vg(ctx, lvm, name):
    try:
        vg = lvm.vg(name)
        pvs = lvm.pvs(name)
    except (errors.LVMError, OSError) as exc:
        return [(f'VG {name}', FAIL, f'not visible: {exc}')]
    rows = []
    kv = ctx.etcd.get(f'{ctx.keys.vgs()}{name}/uuid')
    if kv and kv.value != vg['uuid']:
        rows.append((f'VG {name}', FAIL, f'UUID {vg["uuid"]} here, '
                                         f'{kv.value} on the cluster: a '
                                         f'different VG with this name'))
    else:
        known = 'as recorded' if kv else 'not recorded in etcd yet'
        rows.append((f'VG {name}', OK, f'UUID {vg["uuid"]} ({known}), '
                                       f'seqno {vg["seqno"]}'))
    for pv in pvs:
        kind, holder = readiness.multipath_of(pv['name'])
        check = f'multipath {pv["name"]}'
        if kind == 'map':
            rows.append((check, OK, 'multipath map'))
        elif kind == 'path':
            rows.append((check, FAIL, f'one path of map {holder}: filter '
                                      f'it out and use the map'))
        else:
            rows.append((check, WARN, 'not multipath (a single path to '
                                      'the LU)'))
    auto = vg.get('autoactivation', '')
    rows.append((f'autoactivation {name}',
                 FAIL if auto == 'enabled' else OK,
                 'on: run vgchange --setautoactivation n' if auto ==
                 'enabled' else 'off'))
    sysid = vg.get('systemid', '')
    rows.append((f'system ID {name}', FAIL if sysid else OK,
                 f'{sysid!r}: shared VGs must have none' if sysid
                 else 'none'))
    return rows


def check_filter(ctx):
    """lvm.conf's devices filter should admit the shared LU only."""
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1')
    if ctx.conf.lvm.system_dir:
        env['LVM_SYSTEM_DIR'] = ctx.conf.lvm.system_dir
    try:
        # 'full' fills in defaults, so unset reads as accept-all.
        res = subprocess.run(['lvmconfig', '--typeconfig', 'full',
                              'devices/filter', 'devices/global_filter'],
                             env=env, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [('devices filter', FAIL, f'lvmconfig failed: {exc}')]
    found = parse_lvmconfig(res.stdout)
    if res.returncode or not found:
        return [('devices filter', FAIL, f'lvmconfig failed: '
                                         f'{res.stderr.strip()}')]
    shown = '; '.join(f'{k}={json.dumps(v)}' for k, v in
                      sorted(found.items()))
    if all(accepts_everything(p) for p in found.values()):
        return [('devices filter', WARN, f'accepts every device ({shown}); '
                                         f'restrict it to the shared LU')]
    return [('devices filter', OK, shown)]


def check_fence(ctx):
    """What resets or fences this host if its daemon hangs: a watchdog,
    a storage fence, or the explicit opt-out."""
    from coordinator.daemon import checkconf
    conf = ctx.conf
    view = checkconf.fence_view(conf)
    backend = checkconf.backend_name(conf)
    if view['unprotected']:
        if conf.fence.allow_no_watchdog:
            return [('fence', WARN, 'UNPROTECTED: lvm backend with no '
                                    'watchdog and no storage fence '
                                    '([fence] allow_no_watchdog = true)')]
        return [('fence', FAIL, 'lvm backend with no watchdog and no '
                                'storage fence: lvmcoordd refuses to start '
                                '(set [fence] watchdog_device)')]
    parts = []
    if view['watchdog']:
        parts.append(f'watchdog {view["watchdog"]} '
                     f'({conf.fence.watchdog_timeout} s)')
    if view['storage']:
        parts.append(f'storage fence {view["storage"]}')
    return [('fence', OK, ', '.join(parts) or
             f'{backend} backend (sandbox): no watchdog needed')]


def check_daemon(ctx):
    """The local daemon answers on its socket."""
    try:
        status = ctx.client(timeout=10.0).call('status')
    except errors.CoordError as exc:
        return [('daemon', FAIL, str(exc))]
    rewound = (status.get('history') or {}).get('rewound')
    if rewound:
        return [('daemon', FAIL, f'host {status.get("host")} holds every '
                                 f'device fenced: etcd history rewound '
                                 f'({rewound}); doc/runbook-etcd-restore.md')]
    return [('daemon', OK, f'host {status.get("host")}, session '
                           f'{status.get("session")}, backend '
                           f'{status.get("backend")}, '
                           f'{len(status.get("active", []))} LV(s) active')]


def check_storage(ctx, connector=None):
    """[fence] storage: PR support of the LU (REPORT CAPABILITIES), the
    reservation held, and this host's key on every path."""
    from coordinator.storage import base
    from coordinator.storage import parse
    from coordinator.storage import scsi_pr
    f = ctx.conf.fence
    if f.storage == 'none':
        return [('storage fence', OK, 'none: the host fences itself only')]
    try:
        conn = connector or scsi_pr.ScsiPR(f.storage_devices,
                                           f.storage_reservation)
        caps = conn.check()
        held = conn.reservation()
        path_keys = conn.path_keys()
    except base.StorageError as exc:
        return [('storage fence', FAIL, str(exc))]
    rows = [('storage fence', OK, f'scsi-pr on {", ".join(conn.devices)}: '
             + '; '.join(f'{p}: {v}' for p, v in sorted(caps.items())))]
    if held is None or held[1] not in parse.FENCING_TYPES:
        rows.append(('reservation', FAIL, f'no fencing reservation held '
                     f'({held}): any host can write the LU'))
    else:
        name = next(n for n, t in parse.TYPE_NAMES.items() if t == held[1])
        rows.append(('reservation', OK, f'type {held[1]} ({name})'))
    kv = ctx.etcd.get(ctx.keys.storage_key(ctx.conf.host))
    mine = int(kv.json()['key'], 16) if kv else None
    missing = conn.unregistered(mine) if mine else []
    for path in sorted(path_keys):
        keys = path_keys[path]
        if isinstance(keys, str):
            rows.append((f'key on {path}', FAIL, keys))
        elif mine is None:
            rows.append((f'key on {path}', FAIL, 'no key recorded for this '
                         'host (daemon never registered?)'))
        elif path in missing:
            rows.append((f'key on {path}', FAIL,
                         f'this path does not carry {parse.key_hex(mine)}'
                         + ('' if mine in keys else ' (nor any path: '
                            'preempted; restart the daemon)')))
        else:
            rows.append((f'key on {path}', OK, f'{parse.key_hex(mine)} '
                         f'registered'))
    return rows


def check_history(ctx):
    """etcd's history: no host found it rewound (a restore from an older
    backup) without an operator accepting it."""
    from coordinator.engine import history
    epoch_kv, revision = history.read_epoch(ctx.etcd, ctx.keys)
    if epoch_kv is None:
        return [('history', WARN, 'no cluster epoch in etcd yet (the first '
                                  'daemon writes it)')]
    epoch = epoch_kv.json()
    rewound = epoch.get('rewound')
    if rewound:
        return [('history', FAIL, f'{rewound.get("by")} found etcd\'s '
                                  f'history rewound: {rewound.get("reason")}'
                                  f'; doc/runbook-etcd-restore.md')]
    return [('history', OK, f'epoch {epoch.get("id")}, generation '
                            f'{epoch.get("generation")}, revision '
                            f'{revision}')]


CHECKS = (check_etcd, check_clock, check_session, check_vgs, check_filter,
          check_history, check_fence, check_storage, check_daemon)


class Doctor(lister.Lister):
    """Check this host's fitness to use the shared VGs."""

    _epilog = ('Checks etcd (each endpoint), clock, session, VGs, '
               'multipath, auto-activation, system ID, devices filter, '
               'watchdog or storage fence and the local daemon. Exit '
               'status 1 if any check fails.')

    def take_action(self, parsed_args):
        rows = []
        for check in CHECKS:
            try:
                rows += check(self.app.ctx)
            except Exception as exc:
                # One broken check must not hide the others' results.
                rows.append((check.__name__.removeprefix('check_'), FAIL,
                             f'check crashed: {exc}'))
        self.failed = [r for r in rows if r[1] == FAIL]
        return COLUMNS, rows

    def run(self, parsed_args):
        result = super().run(parsed_args)
        return result or (1 if self.failed else 0)
