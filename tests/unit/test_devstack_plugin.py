"""The devstack plugin, run phase by phase against stubbed devstack.

``devstack/plugin.sh`` is sourced in bash the way stack.sh, unstack.sh and
clean.sh source it, with devstack's function library replaced by small
stand-ins (``iniset`` writes a real ini file) and every system command the
plugin runs (sudo, iscsiadm, targetcli, LVM, systemctl, openstack, ...)
replaced by a fake that records its argv and emulates just enough state:
a "SAN" directory shared by the simulated nodes holds the LIO objects and
the PV/VG written on the LU; each node has its own iSCSI session and sees
the LU under its own kernel name (sdb on the controller, sdc on the
compute node) behind the same by-path link.
"""
import configparser
import getpass
import grp
import json
import os
from pathlib import Path
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVSTACK = REPO / 'devstack'
SCRIPTS = [
    DEVSTACK / 'plugin.sh',
    DEVSTACK / 'settings',
    DEVSTACK / 'override-defaults',
    DEVSTACK / 'lib' / 'cinder_backends' / 'lvmcoord',
]

SERVICE_HOST = '10.0.0.10'
IQN = 'iqn.2010-10.org.openstack:lvmcoord-shared-lu'
PORTAL = SERVICE_HOST + ':3260'
VG = 'lvmcoord-shared'
BACKEND = 'lvmcoord-1'

# One program plays every faked command; it knows which by argv[0].
FAKE_PY = r'''
import json
import os
from pathlib import Path
import socket
import sys

NAME = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]
ENV = os.environ
SAN = Path(ENV['FAKE_SAN'])
NODE = Path(ENV['FAKE_NODE'])
LU = Path(ENV['FAKE_LU_DEVICE'])
KDEV = Path(ENV['FAKE_KERNEL_DEVICE'])
LIO = SAN / 'lio.json'


def log(argv, sudo):
    with open(ENV['FAKE_LOG'], 'a') as f:
        f.write(json.dumps({'node': ENV['FAKE_NODE_NAME'], 'sudo': sudo,
                            'argv': argv}) + '\n')


def load(path, default):
    return json.loads(path.read_text()) if path.exists() else default


def save(path, data):
    path.write_text(json.dumps(data))


def fail(msg, rc=1):
    print('%s: %s' % (NAME, msg), file=sys.stderr)
    return rc


def opt(flag):
    return ARGS[ARGS.index(flag) + 1]


def exported(iqn, portal):
    lio = load(LIO, {})
    tpg = '/iscsi/%s/tpg1' % iqn
    if '%s/portals/%s' % (tpg, portal) not in lio:
        return False
    if lio.get(tpg, {}).get('generate_node_acls') != '1':
        return False  # no ACL for our initiator, no demo mode
    for path, attrs in lio.items():
        if path.startswith(tpg + '/luns/'):
            store = lio.get(attrs['storage_object'])
            if store and Path(store['file_or_dev']).is_file():
                return True
    return False


def visible():
    return LU.exists()


def iscsiadm():
    session = NODE / 'iscsi-session'
    record = NODE / 'iscsi-record'
    if ARGS[:2] == ['-m', 'session']:
        if not session.exists():
            return fail('No active sessions.', 21)
        iqn, portal = load(session, None)
        print('tcp: [1] %s,1 %s (non-flash)' % (portal, iqn))
        return 0
    if ARGS[:2] != ['-m', 'node']:
        return fail('unexpected usage %s' % ARGS)
    iqn, portal = opt('-T'), opt('-p')
    rest = ARGS[6:]
    if not rest:
        return 0 if record.exists() else fail('no record', 21)
    if rest == ['-o', 'new']:
        save(record, [iqn, portal])
        return 0
    if not record.exists() or load(record, None) != [iqn, portal]:
        return fail('no record for %s %s' % (iqn, portal), 21)
    if rest[:2] in (['-o', 'update'], ['-o', 'delete']):
        if rest[1] == 'delete':
            record.unlink()
        return 0
    if rest == ['--login']:
        if not exported(iqn, portal):
            return fail('Login failed: target not found', 24)
        save(session, [iqn, portal])
        KDEV.parent.mkdir(parents=True, exist_ok=True)
        KDEV.touch()
        LU.parent.mkdir(parents=True, exist_ok=True)
        LU.symlink_to(KDEV)
        return 0
    if rest == ['--logout']:
        if not session.exists():
            return fail('No matching sessions', 21)
        session.unlink()
        LU.unlink()
        KDEV.unlink()
        return 0
    if rest == ['--rescan']:
        return 0 if session.exists() else fail('no session', 21)
    return fail('unexpected usage %s' % ARGS)


def targetcli():
    lio = load(LIO, {})
    path, rest = ARGS[0], ARGS[1:]
    if path == 'saveconfig':
        return 0
    if rest == ['ls']:
        return 0 if path in lio else fail('No such path %s' % path)
    cmd, params = rest[0], rest[1:]
    kv = dict(p.split('=', 1) for p in params if '=' in p)
    if path == '/backstores/fileio' and cmd == 'create':
        if not Path(kv['file_or_dev']).is_file():
            return fail('no such file %s' % kv['file_or_dev'])
        lio['/backstores/fileio/' + kv['name']] = kv
    elif path == '/backstores/fileio' and cmd == 'delete':
        key = '/backstores/fileio/' + params[0]
        if any(a.get('storage_object') == key for a in lio.values()):
            return fail('storage object %s is in use' % key)
        del lio[key]
    elif path == '/iscsi' and cmd == 'create':
        tpg = '/iscsi/%s/tpg1' % params[0]
        lio['/iscsi/' + params[0]] = {}
        lio[tpg] = {}
        # targetcli's default portal, as with auto_add_default_portal
        lio[tpg + '/portals/0.0.0.0:3260'] = {}
    elif path == '/iscsi' and cmd == 'delete':
        prefix = '/iscsi/' + params[0]
        lio = {k: v for k, v in lio.items()
               if k != prefix and not k.startswith(prefix + '/')}
    elif path.endswith('/portals') and cmd in ('create', 'delete'):
        key = '%s/%s:%s' % (path, params[0], params[1])
        if cmd == 'create':
            lio[key] = {}
        else:
            del lio[key]
    elif path.endswith('/luns') and cmd == 'create':
        if params[0] not in lio:
            return fail('no storage object %s' % params[0])
        lio['%s/lun%s' % (path, kv.get('lun', '0'))] = {
            'storage_object': params[0]}
    elif cmd == 'set' and params[0] == 'attribute':
        lio[path].update(kv)
    else:
        return fail('unexpected usage %s' % ARGS)
    save(LIO, lio)
    return 0


def local_pvs():
    pairs = [p.split(':') for p in ENV.get('FAKE_LOCAL_PVS', '').split()]
    return [(pv, vg) for pv, vg in pairs]


def shared_vg():
    vg = load(SAN / 'vg.json', None)
    return vg if vg and visible() else None


def is_lu(dev):
    return visible() and os.path.realpath(dev) == str(KDEV)


def lvm():
    positional = [a for a in ARGS if not a.startswith('-')]
    if NAME == 'lvmconfig':
        print('use_devicesfile=%s' % ENV.get('FAKE_DEVICESFILE', '0'))
        return 0
    if NAME == 'pvs':
        if '--noheadings' in ARGS and '-o' in ARGS and not positional[1:]:
            for pv, vg in local_pvs():
                print('  %s %s' % (pv, vg))
            if visible() and (SAN / 'pv').exists():
                vg = shared_vg()
                print('  %s %s' % (KDEV, vg['name'] if vg else ''))
            return 0
        dev = positional[-1]
        ok = is_lu(dev) and (SAN / 'pv').exists()
        return 0 if ok else fail('Failed to find physical volume', 5)
    vg = shared_vg()
    if NAME == 'vgs':
        names = [v for _, v in local_pvs()]
        asked = [a for a in positional
                 if a not in ('vg_name', 'vg_uuid', 'systemid')]
        if not asked:
            for name in names + ([vg['name']] if vg else []):
                print('  ' + name)
            return 0
        if asked[0] in names:
            return 0
        if vg and asked[0] == vg['name']:
            field = opt('-o') if '-o' in ARGS else 'vg_name'
            print('  ' + {'vg_uuid': vg['uuid'],
                          'systemid': vg['systemid']}.get(field, vg['name']))
            return 0
        return fail('Volume group "%s" not found' % asked[0], 5)
    if NAME == 'pvcreate':
        if not is_lu(positional[0]):
            return fail('Device %s not found' % positional[0], 5)
        (SAN / 'pv').touch()
        return 0
    if NAME == 'vgcreate':
        if '--help' in ARGS:
            print('  vgcreate VG PV ...')
            if ENV.get('FAKE_SETAUTOACTIVATION') == '1':
                print('\t[    --setautoactivation y|n ]')
            return 0
        name, dev = ARGS[-2], ARGS[-1]
        if vg or not is_lu(dev) or not (SAN / 'pv').exists():
            return fail('cannot create %s on %s' % (name, dev), 5)
        import uuid
        save(SAN / 'vg.json', {
            'name': name, 'uuid': str(uuid.uuid4()),
            'systemid': opt('--systemid') if '--systemid' in ARGS else
            'host-' + ENV['FAKE_NODE_NAME'],
            'autoactivation': opt('--setautoactivation')
            if '--setautoactivation' in ARGS else 'y'})
        return 0
    if NAME == 'vgchange':
        return 0 if vg and vg['name'] in ARGS else fail('no such VG', 5)
    if NAME == 'vgremove':
        if not vg or vg['name'] not in ARGS:
            return fail('no such VG', 5)
        (SAN / 'vg.json').unlink()
        return 0
    if NAME == 'pvremove':
        if vg or not is_lu(positional[0]):
            return fail('PV is in use or absent', 5)
        (SAN / 'pv').unlink()
        return 0
    return 0  # lvmdevices


def openstack():
    types = NODE / 'volume-types.json'
    known = load(types, [])
    if ARGS[1:4] == ['volume', 'type', 'show']:
        return 0 if ARGS[4] in known else fail('No volumetype', 1)
    if ARGS[1:4] == ['volume', 'type', 'create']:
        save(types, known + [ARGS[-1]])
        return 0
    return fail('unexpected usage %s' % ARGS)


def bind_socket():
    # a (re)started daemon replaces its socket
    if os.path.exists(ARGS[0]):
        os.unlink(ARGS[0])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(ARGS[0])
    return 0


def main():
    if NAME == '_log':
        sudo = ARGS[0] == '--sudo'
        log(ARGS[1:] if sudo else ARGS, sudo)
        return 0
    if NAME == '_bind':
        return bind_socket()
    log([NAME] + ARGS, ENV.get('FAKE_SUDO') == '1')
    if NAME == 'iscsiadm':
        return iscsiadm()
    if NAME == 'targetcli':
        return targetcli()
    if NAME in ('pvs', 'vgs', 'pvcreate', 'vgcreate', 'vgchange',
                'vgremove', 'pvremove', 'lvmconfig', 'lvmdevices'):
        return lvm()
    if NAME == 'openstack':
        return openstack()
    return 0  # systemctl, udevadm, lvmcoord doctor, lvmcoordd


sys.exit(main())
'''

FAKE_COMMANDS = [
    'iscsiadm', 'targetcli', 'pvs', 'vgs', 'pvcreate', 'vgcreate',
    'vgchange', 'vgremove', 'pvremove', 'lvmconfig', 'lvmdevices',
    'udevadm', 'systemctl', 'openstack', 'lvmcoord', 'lvmcoordd',
    '_log', '_bind',
]

SUDO_SH = '''#!/bin/bash
# Runs the command as is; a fake records itself as run under sudo, a real
# program (tee, sed, rm, install...) is recorded here.
if [[ ! -e "$FAKE_BIN/$1" ]]; then
    "$FAKE_BIN/_log" --sudo "$@"
fi
FAKE_SUDO=1 exec "$@"
'''

# Stand-ins for the parts of devstack's function library the plugin uses.
FUNCTIONS_SH = r'''
declare -A GITDIR
function _record { "$FAKE_BIN/_log" "$@"; }
function is_service_enabled {
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
    done
    return 1
}
function enable_service {
    local s
    for s in "$@"; do
        is_service_enabled "$s" || ENABLED_SERVICES+=",$s"
    done
}
function trueorfalse {
    local default=$1 testval=${!2:-}
    case "$testval" in
        1|[yY]es|YES|[tT]rue|TRUE) echo True ;;
        0|[nN]o|NO|[fF]alse|FALSE) echo False ;;
        *) echo "$default" ;;
    esac
}
function define_plugin { :; }
function get_python_exec_prefix { echo /usr/local/bin; }
function is_ubuntu { [[ "${FAKE_DISTRO:-ubuntu}" == ubuntu ]]; }
function die { local line=$1; shift; echo "DIE[$line]: $*" >&2; exit 1; }
function warn { local rc=$?; echo "WARN[$1]: $2" >&2; return $rc; }
function echo_summary { echo "SUMMARY: $*"; }
# iniset [-sudo] file section option value: a real ini file, one
# "option = value" per option, sections created as needed.
function iniset {
    [[ "$1" == "-sudo" ]] && shift
    local file=$1 section=$2 option=$3 value=$4
    mkdir -p "$(dirname "$file")"
    touch "$file"
    awk -v s="$section" -v o="$option" -v v="$value" '
        /^\[.*\]$/ {
            if (insec && !done) { print o " = " v; done = 1 }
            insec = ($0 == "[" s "]")
        }
        insec && !done && index($0, o " = ") == 1 {
            print o " = " v; done = 1; next
        }
        { print }
        END {
            if (!done) { if (!insec) print "[" s "]"; print o " = " v }
        }' "$file" > "$file.new"
    mv "$file.new" "$file"
}
function install_package { _record install_package "$@"; }
function setup_develop { _record setup_develop "$@"; }
function run_process {
    _record run_process "$@"
    if is_service_enabled "$1"; then
        "$FAKE_BIN/_bind" "$FAKE_SOCKET"
    fi
}
function stop_process { _record stop_process "$@"; rm -f "$FAKE_SOCKET"; }
function clean_lvm_filter { _record clean_lvm_filter; }
'''

# lib/cinder's hook convention: configure_cinder() calls
# configure_cinder_backend_<type> <name> for each CINDER_ENABLED_BACKENDS
# entry, if a function of that name exists (stack.sh runs it after the
# pre-install phase and before the install phase).
CONFIGURE_CINDER_SH = r'''
if is_service_enabled c-vol; then
    for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
        be_type=${be%%:*}
        be_name=${be##*:}
        if type configure_cinder_backend_${be_type} >/dev/null 2>&1; then
            configure_cinder_backend_${be_type} ${be_name}
        fi
    done
fi
'''

BASE_LVM_CONF = 'devices {\n    dir = "/dev"\n}\n'


class Node:
    """One simulated devstack host: its own /etc, /dev, data and state."""

    def __init__(self, root, san, bin_dir, log, name, kernel_dev,
                 localrc):
        self.name = name
        self.root = root / name
        self.etc = self.root / 'etc'
        self.lvm_conf = self.etc / 'lvm' / 'lvm.conf'
        self.lvm_conf.parent.mkdir(parents=True)
        self.lvm_conf.write_text(BASE_LVM_CONF)
        self.lu_device = (self.root / 'dev' / 'disk' / 'by-path' /
                          ('ip-%s-iscsi-%s-lun-0' % (PORTAL, IQN)))
        self.kernel_device = self.root / 'dev' / kernel_dev
        # AF_UNIX paths are short: keep the socket out of pytest's tmp.
        self.run_dir = Path(tempfile.mkdtemp(prefix='lc-run-'))
        self.socket = self.run_dir / 'lvmcoord.sock'
        self.data_dir = self.root / 'opt' / 'stack' / 'data'
        self.cinder_conf = self.etc / 'cinder' / 'cinder.conf'
        self.tempest_conf = self.etc / 'tempest' / 'tempest.conf'
        self.lvmcoord_conf = self.etc / 'lvmcoord' / 'lvmcoord.conf'
        self.env = dict(
            os.environ,
            PATH='%s:%s' % (bin_dir, os.environ['PATH']),
            FAKE_BIN=str(bin_dir), FAKE_LOG=str(log), FAKE_SAN=str(san),
            FAKE_NODE=str(self.root), FAKE_NODE_NAME=name,
            FAKE_LU_DEVICE=str(self.lu_device),
            FAKE_KERNEL_DEVICE=str(self.kernel_device),
            FAKE_SOCKET=str(self.socket),
            FAKE_LOCAL_PVS='/dev/vda3:%s-root' % name,
            FAKE_SETAUTOACTIVATION='1')
        self.localrc = {
            'STACK_USER': getpass.getuser(),
            'DEST': str(self.root / 'opt' / 'stack'),
            'DATA_DIR': str(self.data_dir),
            'SERVICE_HOST': SERVICE_HOST,
            'ETCD_PORT': '2379',
            'REGION_NAME': 'RegionOne',
            'CINDER_CONF': str(self.cinder_conf),
            'TEMPEST_CONFIG': str(self.tempest_conf),
            'LVMCOORD_CONF_DIR': str(self.etc / 'lvmcoord'),
            'LVMCOORD_LVM_CONF': str(self.lvm_conf),
            'LVMCOORD_SOCKET_PATH': str(self.socket),
            'LVMCOORD_BIN_DIR': str(bin_dir),
            'LVMCOORD_LU_DEVICE': str(self.lu_device),
            'LVMCOORD_BACKING_FILE_SIZE': '1G',
            'LVMCOORD_DEVICE_TIMEOUT': '3',
            'LVMCOORD_START_TIMEOUT': '3',
        }
        self.localrc.update(localrc)
        self.bin_dir = bin_dir

    def run(self, body, errexit):
        lines = ['source %s' % shlex.quote(str(self.bin_dir / 'functions'))]
        lines += ['%s=%s' % (k, shlex.quote(v))
                  for k, v in self.localrc.items()]
        lines.append('GITDIR[lvmcoord]=%s' % shlex.quote(str(REPO)))
        if errexit:
            # stack.sh runs its phases with errexit on
            lines.append('set -o errexit')
        lines += ['source %s/override-defaults' % DEVSTACK,
                  'source %s/settings' % DEVSTACK]
        lines += body
        return subprocess.run(
            ['bash', '-c', '\n'.join(lines)], env=self.env,
            capture_output=True, text=True, timeout=120, check=False)

    def stack(self):
        plugin = 'source %s/plugin.sh stack ' % DEVSTACK
        body = [plugin + 'pre-install', CONFIGURE_CINDER_SH,
                plugin + 'install', plugin + 'post-config',
                plugin + 'extra', plugin + 'test-config']
        return self.run(body, errexit=True)

    def unstack(self):
        return self.run(['source %s/plugin.sh unstack' % DEVSTACK],
                        errexit=False)

    def clean(self):
        # clean.sh runs unstack.sh first
        unstacked = self.unstack()
        if unstacked.returncode:
            return unstacked
        return self.run(['source %s/plugin.sh clean' % DEVSTACK],
                        errexit=False)

    def cleanup(self):
        shutil.rmtree(self.run_dir, ignore_errors=True)


def ini(path):
    cp = configparser.RawConfigParser(default_section='__none__')
    cp.optionxform = str
    assert cp.read(path), '%s was not written' % path
    return cp


def check(result):
    assert result.returncode == 0, (
        'exit %d\n--- stdout\n%s\n--- stderr\n%s'
        % (result.returncode, result.stdout[-4000:], result.stderr[-8000:]))
    return result


class Cluster:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.san = tmp_path / 'san'
        self.san.mkdir()
        self.bin = tmp_path / 'bin'
        self.bin.mkdir()
        self.log = tmp_path / 'commands.jsonl'
        self.log.touch()
        fake = self.bin / 'fake.py'
        fake.write_text('#!%s -S\n%s' % (sys.executable, FAKE_PY))
        fake.chmod(0o755)
        for name in FAKE_COMMANDS:
            (self.bin / name).symlink_to(fake)
        sudo = self.bin / 'sudo'
        sudo.write_text(SUDO_SH)
        sudo.chmod(0o755)
        (self.bin / 'functions').write_text(FUNCTIONS_SH)
        self.controller = Node(tmp_path, self.san, self.bin, self.log,
                               'controller', 'sdb', {
                                   'HOST_IP': SERVICE_HOST,
                                   'ENABLED_SERVICES':
                                       'key,etcd3,c-api,c-sch,c-vol,n-cpu,'
                                       'tempest',
                                   'LVMCOORD_SHARED_LU_CREATE': 'True',
                                   'LVMCOORD_TEMPEST_MULTINODE': 'True',
                               })
        self.compute = Node(tmp_path, self.san, self.bin, self.log,
                            'compute1', 'sdc', {
                                'HOST_IP': '10.0.0.11',
                                'ENABLED_SERVICES': 'n-cpu,placement-client',
                                'LVMCOORD_SHARED_LU_CREATE': 'False',
                                'LVMCOORD_HOST': 'compute1',
                            })
        self.backing_file = (self.controller.data_dir / 'lvmcoord' /
                             'shared-lu.img')

    def commands(self, node=None, since=0):
        entries = [json.loads(line)
                   for line in self.log.read_text().splitlines()][since:]
        return [e for e in entries if node is None or e['node'] == node]

    def mark(self):
        return len(self.log.read_text().splitlines())

    def lio(self):
        path = self.san / 'lio.json'
        return json.loads(path.read_text()) if path.exists() else {}

    def vg(self):
        path = self.san / 'vg.json'
        return json.loads(path.read_text()) if path.exists() else None


def argvs(entries, program, sudo=None):
    return [e['argv'] for e in entries if e['argv'][0] == program
            and (sudo is None or e['sudo'] == sudo)]


def index_of(entries, predicate):
    for i, e in enumerate(entries):
        if predicate(e['argv']):
            return i
    raise AssertionError('no such command in %s' %
                         [e['argv'] for e in entries])


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.controller.cleanup()
    c.compute.cleanup()


def stack_both(cluster):
    """The controller stacked first, then the compute subnode."""
    check(cluster.controller.stack())
    check(cluster.compute.stack())
    return cluster


@pytest.fixture
def fresh_stacked(cluster):
    """A stacked pair of nodes that the test may change."""
    return stack_both(cluster)


@pytest.fixture(scope='module')
def stacked(tmp_path_factory):
    """A stacked pair of nodes, shared by the tests that only look."""
    c = Cluster(tmp_path_factory.mktemp('stacked'))
    yield stack_both(c)
    c.controller.cleanup()
    c.compute.cleanup()


# settings / override-defaults


def settings_values(tmp_path, localrc, names):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'functions').write_text(FUNCTIONS_SH)
    lines = ['source %s' % (bin_dir / 'functions')]
    lines += ['%s=%s' % (k, shlex.quote(v)) for k, v in localrc.items()]
    lines += ['source %s/override-defaults' % DEVSTACK,
              'source %s/settings' % DEVSTACK]
    lines += ['echo "%s=${%s}"' % (n, n) for n in names]
    out = check(subprocess.run(['bash', '-c', '\n'.join(lines)],
                               capture_output=True, text=True, check=False,
                               env=dict(os.environ, FAKE_BIN=str(bin_dir))))
    return dict(line.split('=', 1) for line in out.stdout.splitlines())


def test_settings_defaults(tmp_path):
    names = ['ENABLED_SERVICES', 'CINDER_ENABLED_BACKENDS',
             'LVMCOORD_SHARED_LU_CREATE', 'LVMCOORD_LU_DEVICE',
             'LVMCOORD_ETCD_ENDPOINTS', 'LVMCOORD_BACKEND_NAME',
             'LVMCOORD_VOLUME_TYPE', 'LVMCOORD_HOST', 'LVMCOORD_DIR']
    base = {'SERVICE_HOST': SERVICE_HOST, 'ETCD_PORT': '2379',
            'DEST': '/opt/stack', 'DATA_DIR': '/opt/stack/data'}
    values = settings_values(tmp_path, dict(
        base, ENABLED_SERVICES='c-api,c-vol'), names)
    # enable_plugin alone deploys the daemon and the backend
    assert values['ENABLED_SERVICES'] == 'c-api,c-vol,lvmcoord'
    assert values['CINDER_ENABLED_BACKENDS'] == 'lvmcoord:lvmcoord-1'
    assert values['LVMCOORD_SHARED_LU_CREATE'] == 'True'
    assert values['LVMCOORD_LU_DEVICE'] == (
        '/dev/disk/by-path/ip-%s-iscsi-%s-lun-0' % (PORTAL, IQN))
    assert values['LVMCOORD_ETCD_ENDPOINTS'] == 'http://%s:2379' % (
        SERVICE_HOST)
    assert values['LVMCOORD_BACKEND_NAME'] == 'lvmcoord-1'
    assert values['LVMCOORD_VOLUME_TYPE'] == 'lvmcoord-1'
    assert values['LVMCOORD_HOST'] == socket.gethostname()
    assert values['LVMCOORD_DIR'] == '/opt/stack/lvmcoord'

    # A compute-only node does not create the LU; backends chosen in
    # local.conf are kept and name the backend.
    values = settings_values(tmp_path, dict(
        base, ENABLED_SERVICES='n-cpu',
        CINDER_ENABLED_BACKENDS='lvm:lvmdriver-1,lvmcoord:shared'), names)
    assert values['LVMCOORD_SHARED_LU_CREATE'] == 'False'
    assert values['CINDER_ENABLED_BACKENDS'] == (
        'lvm:lvmdriver-1,lvmcoord:shared')
    assert values['LVMCOORD_BACKEND_NAME'] == 'shared'
    assert values['LVMCOORD_VOLUME_TYPE'] == 'shared'


# stack


def test_controller_configures_cinder_backend(stacked):
    conf = ini(stacked.controller.cinder_conf)
    assert dict(conf[BACKEND]) == {
        'volume_backend_name': BACKEND,
        'volume_driver': 'driver.volume.LvmcoordDriver',
        'volume_group': VG,
        'lvmcoord_socket_path': str(stacked.controller.socket),
        'lvmcoord_enable_multiattach': 'False',
    }
    # The compute node runs no cinder-volume: no cinder.conf from us.
    assert not stacked.compute.cinder_conf.exists()


@pytest.mark.parametrize('node, host, creator', [
    ('controller', socket.gethostname(), True),
    ('compute', 'compute1', False),
])
def test_lvmcoord_conf(stacked, node, host, creator):
    node = getattr(stacked, node)
    conf = ini(node.lvmcoord_conf)
    assert conf['DEFAULT']['host'] == host
    assert conf['DEFAULT']['cluster'] == 'default'
    # every node talks to the controller's etcd
    assert conf['etcd']['endpoints'] == 'http://%s:2379' % SERVICE_HOST
    assert conf['session']['ttl'] == '10'
    assert conf['session']['state_dir'] == str(
        node.data_dir / 'lvmcoord' / 'state')
    assert conf['lvm']['volume_groups'] == VG
    assert conf['lvm']['activation_backend'] == 'auto'
    assert conf['fence']['action'] == 'suspend'
    # no watchdog device given: the logged opt-out the lvm backend needs
    assert conf['fence']['allow_no_watchdog'] == 'True'
    assert conf['api']['socket_path'] == str(node.socket)
    # cinder-volume and nova-compute run as the stack user
    stack_gid = pwd.getpwnam(getpass.getuser()).pw_gid
    assert conf['api']['socket_group'] == grp.getgrgid(stack_gid).gr_name


def test_only_the_controller_creates_lu_pv_and_vg(stacked):
    ctl = stacked.commands('controller')
    cmp_ = stacked.commands('compute1')

    # The controller: sparse file, LIO backstore/target/portal/LUN, demo ACLs.
    assert stacked.backing_file.stat().st_size == 1024 ** 3
    assert stacked.backing_file.stat().st_blocks * 512 < 1024 ** 2, \
        'the backing file is not sparse'
    assert ['targetcli', '/backstores/fileio', 'create',
            'name=lvmcoord_shared_lu',
            'file_or_dev=%s' % stacked.backing_file,
            'write_back=false'] in argvs(ctl, 'targetcli', sudo=True)
    lio = stacked.lio()
    tpg = '/iscsi/%s/tpg1' % IQN
    assert tpg + '/portals/%s' % PORTAL in lio
    assert tpg + '/portals/0.0.0.0:3260' not in lio
    assert lio[tpg + '/luns/lun0'] == {
        'storage_object': '/backstores/fileio/lvmcoord_shared_lu'}
    assert lio[tpg]['generate_node_acls'] == '1'
    # PV and VG: once, by the controller, on the stable name, no system ID.
    assert argvs(ctl, 'pvcreate', sudo=True) == [
        ['pvcreate', str(stacked.controller.lu_device)]]
    assert argvs(ctl, 'vgcreate', sudo=True)[-1] == [
        'vgcreate', '--systemid', '', '--setautoactivation', 'n', VG,
        str(stacked.controller.lu_device)]
    vg = stacked.vg()
    assert vg['name'] == VG and vg['systemid'] == ''
    assert vg['autoactivation'] == 'n'

    # The subnode creates nothing on the SAN.
    for program in ('targetcli', 'pvcreate', 'vgcreate', 'vgremove',
                    'pvremove', 'openstack'):
        assert not argvs(cmp_, program), program
    assert not (stacked.compute.data_dir / 'lvmcoord' /
                'shared-lu.img').exists()

    # Every node logs in to the same target through the same portal and
    # finds the same VG, each under its own kernel device name.
    for node, entries in ((stacked.controller, ctl), (stacked.compute,
                                                      cmp_)):
        assert ['iscsiadm', '-m', 'node', '-T', IQN, '-p', PORTAL,
                '--login'] in argvs(entries, 'iscsiadm', sudo=True)
        assert ['vgchange', '-an', VG] in argvs(entries, 'vgchange')
        assert node.lu_device.resolve() == node.kernel_device
        assert (node.root / 'iscsi-session').exists()
    # No command ever names a kernel device (sdb/sdc differ per host).
    for e in stacked.commands():
        for kdev in (stacked.controller.kernel_device,
                     stacked.compute.kernel_device):
            assert str(kdev) not in ' '.join(e['argv']), e


def test_controller_phase_order(stacked):
    ctl = stacked.commands('controller')
    lvm_conf = str(stacked.controller.lvm_conf)

    def is_(program, *words):
        return lambda argv: argv[0] == program and all(
            w in argv for w in words)

    wrote_lvm_conf = index_of(ctl, is_('tee', '-a', lvm_conf))
    target = index_of(ctl, is_('targetcli', '/iscsi', 'create'))
    login = index_of(ctl, is_('iscsiadm', '--login'))
    pvcreate = index_of(ctl, is_('pvcreate'))
    started = index_of(ctl, is_('run_process', 'lvmcoord'))
    doctor = index_of(ctl, is_(str(stacked.bin / 'lvmcoord'), 'doctor'))
    # LVM is told to leave the VG alone before the LU shows up; the daemon
    # starts once the VG exists (cinder-volume starts after post-config).
    assert wrote_lvm_conf < login
    assert target < login < pvcreate < started < doctor


def test_daemon_started_on_every_node(stacked):
    for node in (stacked.controller, stacked.compute):
        runs = argvs(stacked.commands(node.name), 'run_process')
        assert runs == [['run_process', 'lvmcoord',
                         '%s/lvmcoordd --config-file %s'
                         % (stacked.bin, node.lvmcoord_conf), '', 'root']]
        assert ['install_package', 'lvm2', 'open-iscsi'] in argvs(
            stacked.commands(node.name), 'install_package')
        assert ['setup_develop', str(REPO)] in argvs(
            stacked.commands(node.name), 'setup_develop')
    # The LIO tools only where the LU is exported.
    assert ['install_package', 'targetcli-fb'] in argvs(
        stacked.commands('controller'), 'install_package')
    assert ['install_package', 'targetcli-fb'] not in argvs(
        stacked.commands('compute1'), 'install_package')


@pytest.mark.parametrize('node', ['controller', 'compute'])
def test_lvm_conf_block(stacked, node):
    node = getattr(stacked, node)
    text = node.lvm_conf.read_text()
    assert text.startswith(BASE_LVM_CONF)
    block = text[len(BASE_LVM_CONF):]
    assert block.splitlines()[0].startswith('# BEGIN lvmcoord')
    assert block.splitlines()[-1] == '# END lvmcoord'
    # LVM itself must parse it the same way; check the values we wrote.
    assert ('filter = [ "a|^%s$|", "a|^/dev/vda3$|", "r|.*|" ]'
            % node.lu_device) in block
    # Local VGs keep auto-activation, the shared VG does not.
    assert ('auto_activation_volume_list = [ "%s-root" ]' % node.name
            in block)
    assert VG not in block.split('activation {')[1]


def test_lvm_conf_block_parses_with_lvm(stacked, tmp_path):
    lvmconfig = shutil.which('lvmconfig')
    if lvmconfig is None:
        pytest.skip('lvm2 is not installed (make setup installs it)')
    (tmp_path / 'lvm.conf').write_text(
        stacked.controller.lvm_conf.read_text())
    result = subprocess.run(
        [lvmconfig, 'devices/filter', 'devices/dir',
         'activation/auto_activation_volume_list'],
        env=dict(os.environ, LVM_SYSTEM_DIR=str(tmp_path),
                 LVM_SUPPRESS_FD_WARNINGS='1'),
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'filter=["a|^%s$|","a|^/dev/vda3$|","r|.*|"]'
        % stacked.controller.lu_device,
        'dir="/dev"',
        'auto_activation_volume_list="controller-root"',
    ]


def test_volume_type_and_tempest(stacked):
    creates = argvs(stacked.commands('controller'), 'openstack')
    assert creates[-1] == [
        'openstack', '--os-region-name=RegionOne', 'volume', 'type',
        'create', '--property', 'volume_backend_name=%s' % BACKEND, BACKEND]
    tempest = ini(stacked.controller.tempest_conf)
    assert tempest['service_available']['lvmcoord'] == 'True'
    assert dict(tempest['lvmcoord']) == {
        'volume_type': BACKEND, 'snapshot_in_use': 'True',
        'run_multinode_tests': 'True'}
    assert tempest['compute']['min_compute_nodes'] == '2'
    assert dict(tempest['compute-feature-enabled']) == {
        'live_migration': 'True', 'volume_backed_live_migration': 'True',
        'block_migration_for_live_migration': 'False'}
    # tempest runs on the controller only
    assert not stacked.compute.tempest_conf.exists()


def test_restack_reuses_the_vg(fresh_stacked):
    stacked = fresh_stacked
    vg = stacked.vg()
    mark = stacked.mark()
    check(stacked.controller.stack())
    again = stacked.commands('controller', since=mark)
    assert not argvs(again, 'pvcreate') and not argvs(again, 'vgcreate')
    assert not [a for a in argvs(again, 'iscsiadm') if '--login' in a]
    assert stacked.vg() == vg
    # the lvm.conf block is replaced, not appended twice
    assert stacked.controller.lvm_conf.read_text().count(
        '# BEGIN lvmcoord') == 1


def test_subnode_before_controller_fails_clearly(cluster):
    result = cluster.compute.stack()
    assert result.returncode != 0
    assert 'must be stacked first' in result.stderr
    assert cluster.vg() is None
    assert not argvs(cluster.commands(), 'run_process')


def test_foreign_system_id_is_refused(cluster):
    check(cluster.controller.stack())
    vg = cluster.vg()
    vg['systemid'] = 'someone-else'
    (cluster.san / 'vg.json').write_text(json.dumps(vg))
    result = cluster.compute.stack()
    assert result.returncode != 0
    assert "system ID 'someone-else'" in result.stderr


# unstack / clean


def test_unstack_and_clean_undo_everything(fresh_stacked):
    stacked = fresh_stacked

    # The subnode's unstack: stop, log out, forget the target; the SAN
    # (target, backing file, PV, VG) is the controller's and stays.
    mark = stacked.mark()
    check(stacked.compute.unstack())
    done = stacked.commands('compute1', since=mark)
    assert argvs(done, 'stop_process') == [['stop_process', 'lvmcoord']]
    assert argvs(done, 'clean_lvm_filter') == [['clean_lvm_filter']]
    assert ['iscsiadm', '-m', 'node', '-T', IQN, '-p', PORTAL,
            '--logout'] in argvs(done, 'iscsiadm')
    assert ['iscsiadm', '-m', 'node', '-T', IQN, '-p', PORTAL,
            '-o', 'delete'] in argvs(done, 'iscsiadm')
    assert not (stacked.compute.root / 'iscsi-session').exists()
    assert not (stacked.compute.root / 'iscsi-record').exists()
    assert not stacked.compute.lu_device.exists()
    assert stacked.compute.lvm_conf.read_text() == BASE_LVM_CONF
    assert not stacked.compute.socket.exists()
    for program in ('targetcli', 'vgremove', 'pvremove'):
        assert not argvs(done, program), program
    assert stacked.vg() is not None
    assert '/iscsi/' + IQN in stacked.lio()
    assert stacked.backing_file.exists()

    # The controller's unstack takes the SAN apart.
    mark = stacked.mark()
    check(stacked.controller.unstack())
    done = stacked.commands('controller', since=mark)
    assert argvs(done, 'stop_process') == [['stop_process', 'lvmcoord']]
    assert argvs(done, 'vgremove') == [['vgremove', '-ff', '-y', VG]]
    assert argvs(done, 'pvremove') == [
        ['pvremove', '-ff', '-y', str(stacked.controller.lu_device)]]
    # logout before the target goes away
    logout = index_of(done, lambda a: '--logout' in a)
    delete_target = index_of(done, lambda a: a[:3] == [
        'targetcli', '/iscsi', 'delete'])
    assert logout < delete_target
    assert stacked.vg() is None
    assert not (stacked.san / 'pv').exists()
    assert stacked.lio() == {}
    assert not stacked.backing_file.exists()
    assert not (stacked.controller.root / 'iscsi-session').exists()
    assert not (stacked.controller.root / 'iscsi-record').exists()
    assert stacked.controller.lvm_conf.read_text() == BASE_LVM_CONF
    assert not stacked.controller.socket.exists()

    # clean.sh: unstack again (nothing left to undo), then the clean phase.
    for node in (stacked.controller, stacked.compute):
        assert node.lvmcoord_conf.exists()
        mark = stacked.mark()
        check(node.clean())
        done = stacked.commands(node.name, since=mark)
        for program in ('vgremove', 'pvremove'):
            assert not argvs(done, program), program
        assert not [a for a in argvs(done, 'targetcli')
                    if 'delete' in a or 'create' in a]
        assert not [a for a in argvs(done, 'iscsiadm')
                    if '--logout' in a or 'delete' in a]
        assert not node.lvmcoord_conf.parent.exists()
        assert not (node.data_dir / 'lvmcoord' / 'state').exists()
        assert node.lvm_conf.read_text() == BASE_LVM_CONF


# static checks


def test_shellcheck():
    shellcheck = shutil.which('shellcheck')
    if shellcheck is None:
        pytest.skip('shellcheck is not installed (make setup installs it)')
    result = subprocess.run(
        [shellcheck, '-s', 'bash', '-x', '--source-path=SCRIPTDIR',
         *[str(p.relative_to(DEVSTACK)) for p in SCRIPTS]],
        cwd=DEVSTACK, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_disables_are_justified():
    for path in SCRIPTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if 'shellcheck disable=' in line:
                reason = line.split('disable=', 1)[1].partition('#')[2]
                assert reason.strip(), '%s:%d: no justification' % (
                    path, number)
