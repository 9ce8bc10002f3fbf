"""qemu guests for the real-kernel tier, and how the host talks to them.

Every link stays inside qemu: the control channel is a virtio-serial port
backed by a Unix socket, QMP is a Unix socket, the network is qemu's
user-mode stack (the guest's 10.0.2.2 is this machine's 127.0.0.1), the
shared LU is a raw file attached to every guest. Every qemu started here
is killed at close(), and at exit as a last resort.
"""
import atexit
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout the guests run: this machine's path, seen through the 9p
# root (guest/mounts.sh keeps it visible wherever it lives).
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
# Copied to the guest's share: the boot never reads a path from the
# kernel command line, whose parameters end at the first space.
BOOT_FILES = ('stage2.sh', 'mounts.sh')
QEMU = os.environ.get('QEMU', 'qemu-system-x86_64')
_LIVE = set()


class GuestError(AssertionError):
    """A guest did not do what the test needed (fails the test)."""


def tail(path, size):
    """The last ``size`` bytes of a log file as text ('' if absent)."""
    try:
        with open(path, 'rb') as f:
            return f.read()[-size:].decode(errors='replace')
    except OSError:
        return ''


def wait_for(what, fn, timeout=120, interval=0.3):
    """fn()'s first truthy value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for '
                                 f'{what}')
        time.sleep(interval)  # polling a guest's or a process's state


def _wait_path(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise GuestError(f'{path} never appeared (qemu rc '
                             f'{proc.poll()})')
        time.sleep(0.05)


class _Lines:
    """A line-oriented JSON socket with a reader thread."""

    def __init__(self, path, on_message):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.on_message = on_message
        self.wlock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        buf = b''
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                if line.strip():
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue  # console noise before the agent starts
                    self.on_message(msg, time.time())

    def send(self, obj):
        data = (json.dumps(obj) + '\n').encode()
        with self.wlock:
            self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Guest:
    """One qemu guest booted on the stock kernel with this machine's root."""

    def __init__(self, name, workdir, kernel, initrd, lu, accel='tcg',
                 memory=768, lu_serial='lu0'):
        self.name = name
        self.dir = workdir
        os.makedirs(os.path.join(workdir, 'share'), exist_ok=True)
        self.kernel, self.initrd, self.lu = kernel, initrd, lu
        self.accel, self.memory, self.lu_serial = accel, memory, lu_serial
        self.proc = None
        self.ids = itertools.count(1)
        self.pending = {}
        self.cond = threading.Condition()
        self.boots = []             # [(boot_id, host time of hello)]
        self.qmp_events = []        # [(host time, event dict)]
        self.qmp_replies = []
        self.ctl = self.qmp = None

    # -- paths shared with the guest (its /rh is our share/) --

    @property
    def share(self):
        return os.path.join(self.dir, 'share')

    def guest_path(self, *parts):
        """Path inside the guest of a file under share/."""
        return os.path.join('/rh', *parts)

    def host_path(self, *parts):
        """Path on this machine of the guest's /rh/<parts>."""
        return os.path.join(self.share, *parts)

    # -- lifecycle --

    def argv(self):
        """The qemu command line."""
        cmdline = ' '.join([
            'console=ttyS0', 'panic=-1', 'loglevel=4', 'quiet',
            f'rh.name={self.name}',
            'rh.stage2=' + self.guest_path('stage2.sh'), 'rh.lu=/dev/vda'])
        accel = 'tcg,thread=single,tb-size=192' if self.accel == 'tcg' \
            else 'kvm'
        d = self.dir
        return [
            QEMU, '-name', self.name, '-machine', 'q35', '-accel', accel,
            '-smp', '1', '-m', str(self.memory), '-nodefaults',
            '-no-user-config', '-display', 'none', '-vga', 'none',
            '-kernel', self.kernel.vmlinuz, '-initrd', self.initrd,
            '-append', cmdline,
            '-chardev', f'file,id=con,path={d}/console.log',
            '-serial', 'chardev:con',
            '-qmp', f'unix:{d}/qmp.sock,server=on,wait=off',
            '-chardev', f'socket,id=ctl,path={d}/ctl.sock,server=on,'
                        f'wait=off',
            '-device', 'virtio-serial-pci',
            '-device', 'virtserialport,chardev=ctl,name=ctl',
            '-fsdev', 'local,id=root,path=/,security_model=none,'
                      'readonly=on,multidevs=remap',
            '-device', 'virtio-9p-pci,fsdev=root,mount_tag=hostroot',
            '-fsdev', f'local,id=mods,path={self.kernel.modules},'
                      f'security_model=none,readonly=on',
            '-device', 'virtio-9p-pci,fsdev=mods,mount_tag=modules',
            '-fsdev', f'local,id=work,path={self.share},'
                      f'security_model=none',
            '-device', 'virtio-9p-pci,fsdev=work,mount_tag=work',
            # The shared LU: no host cache, no image locking, so every
            # guest sees every other guest's writes as on a SAN.
            '-drive', f'file={self.lu},if=none,id=lu,format=raw,'
                      f'cache=none,file.locking=off',
            '-device', f'virtio-blk-pci,drive=lu,share-rw=on,'
                       f'serial={self.lu_serial}',
            '-netdev', 'user,id=n0',
            '-device', 'virtio-net-pci,netdev=n0,romfile=',
            '-device', 'i6300esb', '-action', 'watchdog=reset',
        ]

    def stage_boot(self):
        """Put on the share what the guest's boot reads: its stage-2
        scripts, the checkout's path and this Python's."""
        for name in BOOT_FILES:
            shutil.copyfile(os.path.join(HERE, 'guest', name),
                            self.host_path(name))
        for name, value in (('checkout', CHECKOUT),
                            ('python', sys.executable)):
            with open(self.host_path(name), 'w') as f:
                f.write(value)

    def start(self):
        """Start qemu and connect QMP and the control channel."""
        self.stage_boot()
        for sock in ('qmp.sock', 'ctl.sock'):
            if os.path.exists(os.path.join(self.dir, sock)):
                os.unlink(os.path.join(self.dir, sock))
        with open(os.path.join(self.dir, 'qemu.log'), 'ab') as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        _LIVE.add(self)
        _wait_path(os.path.join(self.dir, 'qmp.sock'), self.proc, 30)
        _wait_path(os.path.join(self.dir, 'ctl.sock'), self.proc, 30)
        self.qmp = _Lines(os.path.join(self.dir, 'qmp.sock'), self._on_qmp)
        self.qmp.send({'execute': 'qmp_capabilities'})
        self.ctl = _Lines(os.path.join(self.dir, 'ctl.sock'), self._on_ctl)
        return self

    def _on_qmp(self, msg, now):
        with self.cond:
            if 'event' in msg:
                self.qmp_events.append((now, msg))
                with open(os.path.join(self.dir, 'qmp-events.jsonl'),
                          'a') as f:
                    f.write(json.dumps(dict(msg, host_time=now)) + '\n')
            elif 'return' in msg or 'error' in msg:
                self.qmp_replies.append(msg)
            self.cond.notify_all()

    def _on_ctl(self, msg, now):
        with self.cond:
            if 'hello' in msg:
                self.boots.append((msg['hello'], now))
                # A reboot: nothing sent to the old boot will be answered.
                for rid in list(self.pending):
                    if self.pending[rid] is None:
                        self.pending[rid] = {'error': 'guest rebooted'}
            elif msg.get('id') in self.pending:
                self.pending[msg['id']] = msg
            self.cond.notify_all()

    def wait_boot(self, count=1, timeout=240):
        """Wait until the agent has said hello ``count`` times."""
        with self.cond:
            if not self.cond.wait_for(
                    lambda: len(self.boots) >= count or not self.alive(),
                    timeout):
                raise GuestError(f'{self.name}: no agent after {timeout}s; '
                                 f'console:\n{self.console_tail()}')
            if len(self.boots) < count:
                raise GuestError(f'{self.name}: qemu exited '
                                 f'({self.proc.poll()}):\n'
                                 f'{self.console_tail()}\n{self.qemu_log()}')
        return self.boots[count - 1]

    def alive(self):
        """True while qemu runs."""
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, size=4000):
        """The end of the serial console."""
        return tail(os.path.join(self.dir, 'console.log'), size)

    def qemu_log(self):
        """qemu's own stderr."""
        return tail(os.path.join(self.dir, 'qemu.log'), 3000)

    def close(self):
        """Stop qemu (quit, then kill) and forget it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.qmp.send({'execute': 'quit'})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired, AttributeError):
                pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for chan in (self.ctl, self.qmp):
            if chan:
                chan.close()
        _LIVE.discard(self)

    # -- QMP --

    def qmp_cmd(self, execute, timeout=30, **arguments):
        """Run one QMP command; its reply."""
        with self.cond:
            seen = len(self.qmp_replies)
        msg = {'execute': execute}
        if arguments:
            msg['arguments'] = arguments
        self.qmp.send(msg)
        with self.cond:
            if not self.cond.wait_for(
                    lambda: len(self.qmp_replies) > seen, timeout):
                raise GuestError(f'{self.name}: QMP {execute} unanswered')
            return self.qmp_replies[seen]

    def wait_qmp_event(self, name, after=0.0, timeout=120):
        """The first QMP event ``name`` seen after host time ``after``:
        (host time, event)."""
        def found():
            return next(((t, e) for t, e in self.qmp_events
                         if e['event'] == name and t >= after), None)
        with self.cond:
            if not self.cond.wait_for(found, timeout):
                raise GuestError(f'{self.name}: no QMP {name} in '
                                 f'{timeout}s')
            return found()

    # -- the agent --

    def call(self, op, wait=150, **req):
        """One agent request; its reply (GuestError on failure)."""
        rid = next(self.ids)
        with self.cond:
            self.pending[rid] = None
        self.ctl.send(dict(req, id=rid, op=op))
        deadline = time.monotonic() + wait
        with self.cond:
            # Re-checked every second: a qemu that died answers nothing.
            while self.pending[rid] is None and self.alive() and \
                    time.monotonic() < deadline:
                self.cond.wait(min(1.0, deadline - time.monotonic()))
            reply = self.pending.pop(rid)
        if reply is None:
            raise GuestError(f'{self.name}: agent did not answer {op} '
                             f'{req} in {wait}s' + (
                                 '' if self.alive() else ' (qemu exited)'))
        if 'error' in reply:
            raise GuestError(f'{self.name}: {op} {req}: {reply["error"]}')
        return reply

    def run(self, argv=None, sh=None, timeout=120, check=True, **kw):
        """Run a command in the guest; the agent's reply (rc, out, err)."""
        req = {'argv': argv} if argv is not None else {'sh': sh}
        req.update(kw, timeout=timeout)
        reply = self.call('run', wait=timeout + 30, **req)
        if check and reply['rc'] != 0:
            raise GuestError(f'{self.name}: {argv or sh} -> rc '
                             f'{reply["rc"]}\nstdout: {reply["out"][-2000:]}'
                             f'\nstderr: {reply["err"][-2000:]}')
        return reply

    def sh(self, command, timeout=120, check=True, **kw):
        """stdout of a shell command in the guest."""
        return self.run(sh=command, timeout=timeout, check=check,
                        **kw)['out']

    def spawn(self, name, argv=None, sh=None, log='/dev/null', **kw):
        """Start a background process in the guest."""
        req = {'argv': argv} if argv is not None else {'sh': sh}
        return self.call('spawn', name=name, log=log, **req, **kw)

    def signal(self, name, sig=signal.SIGTERM, group=True):
        """Signal a process spawned in the guest."""
        return self.call('signal', name=name, sig=int(sig), group=group)

    def clock_offset(self, samples=5):
        """host time - guest time, from the lowest-delay exchange."""
        best = None
        for _ in range(samples):
            t0 = time.time()
            guest = self.call('time', wait=30)['time']
            t1 = time.time()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, (t0 + t1) / 2 - guest)
        return best[1]


def kvm_boots(kernel, initrd, workdir, timeout=45):
    """True if a guest on KVM reaches its agent within ``timeout``."""
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return False
    lu = os.path.join(workdir, 'probe.raw')
    with open(lu, 'wb') as f:
        f.truncate(1 << 20)
    guest = Guest('kvmprobe', workdir, kernel, initrd, lu, accel='kvm',
                  memory=512)
    try:
        guest.start()
        guest.wait_boot(timeout=timeout)
        return True
    except GuestError:
        return False
    finally:
        guest.close()


@atexit.register
def _reap():
    for guest in list(_LIVE):
        if guest.proc and guest.proc.poll() is None:
            try:
                os.killpg(guest.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
