"""A real LU for the real-kernel tier: iSCSI with two portals, dm-multipath.

This machine (``Target``): ``tgtd`` (Debian's ``tgt``, a userspace
target: this machine's kernel has no LIO) exports one raw file as one LUN
of one target, on two portals bound to 127.0.0.1 only, on free ports.
Each portal is reached through its own ``Proxy`` (127.0.0.1 too), the
path a test cuts: a cut is a pulled cable (nothing refused or reset,
bytes stop both ways), a heal lets new connections through again. A
guest dials the proxies at 10.0.2.2, qemu's user-mode alias for this
machine's loopback: every link stays inside qemu.

A guest (``Initiator``): no udev, no systemd, so what a distribution's
units would do is done here by hand, every configuration file in the
guest's tmpfs overlay (``/etc`` there is the overlay's upper layer, not
this machine's): ``iscsid`` in the foreground with an explicit config and
initiator name, one node record per portal (no SendTargets discovery:
tgtd would name its own 127.0.0.1 portals, which a guest cannot reach),
a login to each; then ``multipathd`` in the foreground. multipathd finds
paths through libudev, which reports a block device only once udev has
initialized it (its database record): with no udevd, the record
(``I:<usec>``, nothing else) is written here for each path before
multipathd starts; the WWID comes from sysfs (``uid_attribute ""``, VPD
page 0x83). libdevmapper leaves the map's /dev/mapper name to udev when
multipath asks it to: it is made here as udev's rules make it, a link to
the map's ``dm-N`` node. LVM then accepts the map, ``/dev/mapper/mplu``,
and never its paths.
"""
import os
import re
import signal
import subprocess
import tempfile
import time

from coordinator.sandbox.etcd import free_port
from coordinator.sandbox.proxy import Proxy
from tests.realhost.vm import tail
from tests.realhost.vm import wait_for

IQN = 'iqn.2024-01.org.lvmcoord:realhost-lu'
ALIAS = 'mplu'
MAP = f'/dev/mapper/{ALIAS}'
GUEST_NET_HOST = '10.0.2.2'   # qemu user-mode net: this machine's 127.0.0.1
MODULES = ('sd_mod', 'crc32c_generic', 'iscsi_tcp', 'dm_multipath',
           'dm_round_robin')

# Path failure detection: a NOP-Out every 3 s, answered within 5 s, or
# the connection is declared dead; then the session's recovery timeout
# (multipathd sets it to fast_io_fail_tmo, 5 s) fails the I/O queued on
# it over to the other path. The SCSI command timeout (30 s) is longer.
ISCSID_CONF = '''\
node.startup = manual
node.session.timeo.replacement_timeout = 5
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 3
node.conn[0].timeo.noop_out_timeout = 5
node.session.initial_login_retry_max = 4
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
'''

# Both paths in one group, I/O alternating request by request, so a cut
# always catches I/O in flight on the lost path. No queueing when every
# path is gone (no_path_retry fail): the writer would see that as EIO.
MULTIPATH_CONF = '''\
defaults {
    user_friendly_names no
    find_multipaths off
    uid_attribute ""
    path_grouping_policy multibus
    path_selector "round-robin 0"
    rr_min_io_rq 1
    path_checker tur
    polling_interval 2
    max_polling_interval 4
    no_path_retry fail
    fast_io_fail_tmo 5
    verbosity 2
}
blacklist {
    devnode "^(vd|ram|loop|sr|nbd|zram|dm-)"
}
blacklist_exceptions {
    property "(SCSI_IDENT_|ID_WWN|DEVTYPE)"
}
multipaths {
    multipath {
        wwid "%(wwid)s"
        alias %(alias)s
    }
}
'''


class Target:
    """tgtd on 127.0.0.1 with ``portals`` portals, one LUN backed by a raw
    file, each portal behind its own cuttable Proxy."""

    def __init__(self, workdir, backing, size, portals=2):
        self.dir = workdir
        self.backing, self.size, self.count = backing, size, portals
        self.ipc = os.path.join(workdir, 'tgtd.sock')
        self.env = dict(os.environ, TGT_IPC_SOCKET=self.ipc)
        self.proc = None
        self.ports = []        # tgtd's own portals (127.0.0.1)
        self.proxies = []      # one per portal; guests dial these

    def tgtadm(self, *args, check=True):
        """Run tgtadm against this tgtd; stdout."""
        out = subprocess.run(['tgtadm', '--lld', 'iscsi', *args],
                             env=self.env, capture_output=True, text=True,
                             timeout=30, check=False)
        if check and out.returncode:
            raise RuntimeError(f'tgtadm {" ".join(args)}: rc '
                               f'{out.returncode}: {out.stderr.strip()}')
        return out.stdout

    def start(self):
        """Start tgtd and configure target, LUN, ACL and portals."""
        os.makedirs(self.dir, exist_ok=True)
        with open(self.backing, 'wb') as f:
            f.truncate(self.size)
        for _attempt in range(3):   # a free port may be taken meanwhile
            self.ports = [free_port() for _ in range(self.count)]
            if len(set(self.ports)) < self.count:
                continue
            if self._start_tgtd():
                break
        else:
            raise RuntimeError(f'tgtd did not start: {self.log_tail()}')
        for port in self.ports[1:]:
            self.tgtadm('--op', 'new', '--mode', 'portal', '--param',
                        f'portal=127.0.0.1:{port}')
        self.tgtadm('--op', 'new', '--mode', 'target', '--tid', '1',
                    '-T', IQN)
        # O_DIRECT on the backing file: what a guest wrote is on disk,
        # not in this machine's page cache, as on a SAN.
        self.tgtadm('--op', 'new', '--mode', 'logicalunit', '--tid', '1',
                    '--lun', '1', '-b', self.backing, '--bsoflags',
                    'direct')
        self.tgtadm('--op', 'update', '--mode', 'logicalunit', '--tid', '1',
                    '--lun', '1', '--params',
                    'vendor_id=LVMCOORD,product_id=REALHOST-LU,'
                    'scsi_sn=rhlu0001')
        # Any initiator: the only ones that reach 127.0.0.1 are ours.
        self.tgtadm('--op', 'bind', '--mode', 'target', '--tid', '1',
                    '-I', 'ALL')
        self.proxies = [Proxy('127.0.0.1', p) for p in self.ports]
        return self

    def _start_tgtd(self):
        if self.proc is not None:
            self.close()
        log = open(os.path.join(self.dir, 'tgtd.log'), 'ab')
        # Without a portal option tgtd binds the wildcard address.
        self.proc = subprocess.Popen(
            ['tgtd', '-f', '--iscsi', f'portal=127.0.0.1:{self.ports[0]}'],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            out = subprocess.run(['tgtadm', '--op', 'show', '--mode', 'sys'],
                                 env=self.env, capture_output=True,
                                 check=False, timeout=30)
            if out.returncode == 0 and self.listening():
                return True
            time.sleep(0.1)  # tgtd's IPC socket appears when it is up
        return False

    def listening(self):
        """(address, port) of every TCP socket tgtd listens on."""
        out = subprocess.run(['ss', '-Hltnp'], capture_output=True,
                             text=True, check=False).stdout
        mine = f'pid={self.proc.pid},'
        found = []
        for line in out.splitlines():
            if mine in line:
                addr, _, port = line.split()[3].rpartition(':')
                found.append((addr, int(port)))
        return sorted(found)

    @property
    def portals(self):
        """The portals as a guest dials them (through the proxies)."""
        return [f'{GUEST_NET_HOST}:{p.port}' for p in self.proxies]

    def cut(self, index):
        """Lose path ``index``: bytes stop both ways, nothing is reset."""
        self.proxies[index].cut()

    def heal(self, index):
        """Path ``index`` back: frozen connections dropped, new ones pass."""
        self.proxies[index].heal()

    def log_tail(self, size=3000):
        return tail(os.path.join(self.dir, 'tgtd.log'), size)

    def lvm_view(self, vg, head=4 << 20):
        """(vgck rc, vgck output, LV names) of ``vg`` as LVM reads it on
        this machine: from a copy of the LU's first ``head`` bytes (label
        and metadata area) read with O_DIRECT -- what the target wrote,
        not a page cache --, on a loop device LVM's filter alone accepts."""
        from coordinator.sandbox import lvm as simlvm
        with tempfile.TemporaryDirectory(prefix='lvmcoord-view-') as tmp:
            copy = os.path.join(tmp, 'lu.img')
            subprocess.run(['dd', f'if={self.backing}', f'of={copy}',
                            'bs=1M', f'count={head >> 20}', 'iflag=direct',
                            'status=none'], check=True, timeout=60)
            os.truncate(copy, self.size)
            device = simlvm.attach(copy)
            try:
                os.makedirs(os.path.join(tmp, 'lock'))
                with open(os.path.join(tmp, 'lvm.conf'), 'w') as f:
                    f.write(simlvm.LVM_CONF.format(
                        device=re.escape(device), activation=0,
                        locking_dir=os.path.join(tmp, 'lock')))
                env = dict(os.environ, LVM_SYSTEM_DIR=tmp, LC_ALL='C',
                           LVM_SUPPRESS_FD_WARNINGS='1')
                vgck = subprocess.run(['vgck', vg], env=env, text=True,
                                      capture_output=True, timeout=60)
                lvs = subprocess.run(['lvs', '--noheadings', '-o',
                                      'lv_name', vg], env=env, text=True,
                                     capture_output=True, timeout=60)
            finally:
                subprocess.run(['losetup', '-d', device], timeout=60,
                               capture_output=True, check=False)
        return vgck.returncode, (vgck.stdout + vgck.stderr).strip(), \
            sorted(lvs.stdout.split())

    def close(self):
        """Stop the proxies and tgtd (orderly, then SIGKILL)."""
        for p in self.proxies:
            p.close()
        self.proxies = []
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # tgtd ignores SIGTERM while it has targets: take them down.
            self.tgtadm('--op', 'delete', '--mode', 'target', '--tid', '1',
                        '--force', check=False)
            subprocess.run(['tgtadm', '--op', 'delete', '--mode', 'system'],
                           env=self.env, capture_output=True, check=False,
                           timeout=30)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class Initiator:
    """open-iscsi and multipathd in one guest, logged in to every portal
    of ``target``; the LU is the multipath map MAP."""

    def __init__(self, guest, target):
        self.guest, self.target = guest, target
        self.timings = {}

    def sh(self, command, timeout=120, check=True):
        return self.guest.sh(command, timeout=timeout, check=check)

    def setup(self):
        """Log in on every portal, start multipathd, wait for the map
        with every path active; timings in self.timings."""
        g = self.guest
        t0 = time.monotonic()
        self.sh('for m in %s; do /bin/busybox modprobe $m || exit 1; done'
                % ' '.join(MODULES))
        self.sh(f'''mkdir -p /etc/iscsi /run/lock/iscsi /etc/multipath
cat > /etc/iscsi/iscsid.conf <<'EOF'
{ISCSID_CONF}EOF
echo InitiatorName=iqn.2024-01.org.lvmcoord:{g.name} \
    > /etc/iscsi/initiatorname.iscsi''')
        g.spawn('iscsid', argv=['iscsid', '-f', '-c',
                                '/etc/iscsi/iscsid.conf', '-i',
                                '/etc/iscsi/initiatorname.iscsi'],
                log='/rh/iscsid.log')
        # rc 21: "no active sessions" -- iscsid answers.
        wait_for('iscsid answering', lambda: g.run(
            ['iscsiadm', '-m', 'session'], check=False)['rc'] in (0, 21),
            timeout=60, interval=0.5)
        t1 = time.monotonic()
        for portal in self.target.portals:
            self.sh(f'iscsiadm -m node -o new -T {IQN} -p {portal} && '
                    f'iscsiadm -m node -T {IQN} -p {portal} --login',
                    timeout=180)
        disks = wait_for('a SCSI disk per portal', lambda: self.disks() if len(
            self.disks()) == len(self.target.portals) else None, timeout=120,
            interval=0.5)
        self.timings['login_s'] = round(time.monotonic() - t1, 1)
        wwids = {self.sh(f'cat /sys/block/{d}/device/wwid').strip()
                 for d in disks}
        assert len(wwids) == 1, f'paths with different WWIDs: {wwids}'
        # sysfs "naa.6..." is multipath's "36..." (designator type 3).
        wwid = '3' + wwids.pop().split('.', 1)[1]
        t2 = time.monotonic()
        conf = MULTIPATH_CONF % {'wwid': wwid, 'alias': ALIAS}
        self.sh(f'''cat > /etc/multipath.conf <<'EOF'
{conf}EOF
mkdir -p /run/udev/data
for d in {' '.join(disks)}; do
    echo "I:$(date +%s)000000" > /run/udev/data/b$(cat /sys/block/$d/dev)
done''')
        g.spawn('multipathd', argv=['multipathd', '-d', '-s'],
                log='/rh/multipathd.log')
        wait_for('multipath map with every path active', lambda: len(
            self.paths('active')) == len(disks), timeout=120, interval=0.5)
        # udev's dm rules would make MAP a link to the map's dm-N node.
        self.sh(f'ln -sfn ../$(dmsetup info -c --noheadings -o blkdevname '
                f'{ALIAS}) {MAP} && test -b {MAP}')
        self.timings['multipath_s'] = round(time.monotonic() - t2, 1)
        self.timings['iscsi_total_s'] = round(time.monotonic() - t0, 1)
        self.wwid = wwid
        return self

    def disks(self):
        """Kernel names of the SCSI disks of our target's sessions."""
        out = self.sh(
            'for s in /sys/class/iscsi_session/session*; do '
            '[ "$(cat $s/targetname)" = "%s" ] || continue; '
            'ls -d $s/device/target*/*/block/* 2>/dev/null; done' % IQN,
            check=False)
        return sorted(os.path.basename(p) for p in out.split())

    def paths(self, dm_state=None):
        """[(dev, dm state, checker state)] of the map's paths, as
        multipathd sees them."""
        reply = self.guest.run(['multipathd', 'show', 'paths', 'format',
                                '%d %t %T %m'], check=False)
        out = []
        for line in reply['out'].splitlines()[1:]:
            parts = line.split()
            if len(parts) == 4 and parts[3] == ALIAS:
                out.append(tuple(parts[:3]))
        return [p for p in out if dm_state in (None, p[1])]

    def set_queueing(self, on):
        """no_path_retry queue (I/O waits for a path) or fail, applied by
        multipathd reconfigure; waits until the map's table says so."""
        self.sh("sed -i -E 's/^( *no_path_retry ).*/\\1%s/' "
                "/etc/multipath.conf && multipathd reconfigure"
                % ('queue' if on else 'fail'))
        wait_for(f'{ALIAS} queue_if_no_path {on}', lambda: (
            'queue_if_no_path' in self.sh(f'dmsetup table {ALIAS}')) == on,
            timeout=120, interval=0.5)

    def set_paths(self, up):
        """Take this guest's paths offline (every command on them fails at
        once, as a lost link does after its timeouts) or back to running;
        the other guests' paths, and the target, are untouched."""
        state = 'running' if up else 'offline'
        self.sh(' && '.join(f'echo {state} > /sys/block/{d}/device/state'
                            for d in self.disks()))

    def multipath_ll(self):
        return self.sh('multipath -ll', check=False)

    def accept_map_in_lvm(self):
        """lvm.conf's filters gain MAP (never the sdX paths); no device
        hints: another host's pvcreate is, for this host's hint file, a
        PV "copied onto a device using non-lvm commands" (lvm.conf)."""
        self.sh(r'''sed -i -E \
            -e 's#^( *(global_)?filter = \[ )#\1"a|^%s$|", #' \
            -e 's#^devices \{#devices {\n    hints = "none"#' \
            /etc/lvm/lvm.conf && grep -c '%s' /etc/lvm/lvm.conf && \
            rm -f /run/lvm/hints''' % (MAP, MAP))

    def log_size(self, name='multipathd.log'):
        try:
            return os.path.getsize(self.guest.host_path(name))
        except OSError:
            return 0

    def log_since(self, offset, name='multipathd.log'):
        """What multipathd (or iscsid) logged on the share after
        ``offset`` bytes."""
        try:
            with open(self.guest.host_path(name), 'rb') as f:
                f.seek(offset)
                return f.read().decode(errors='replace')
        except OSError:
            return ''

