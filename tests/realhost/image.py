"""The guests' kernel and initramfs, built once and cached.

Kernel: Debian's stock ``linux-image-6.1.0-*-amd64`` (the one the
``linux-image-amd64`` metapackage names), fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` (nothing is installed on this machine).
Initramfs: busybox plus the few modules needed to mount this machine's
root read-only over 9p under a tmpfs overlay; everything else (Python,
LVM, the checkout, the rest of the kernel's modules) comes over 9p.
"""
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tempfile

CACHE = os.environ.get('LVMCOORD_REALHOST_CACHE',
                       '/var/cache/lvmcoord-realhost')
BUSYBOX = '/bin/busybox'

# Stage-1 modules (dependencies are added from modules.dep).
STAGE1 = ['virtio_pci', 'virtio_console', '9pnet_virtio', '9p', 'overlay']

INIT = r'''#!/bin/busybox sh
# Stage 1: host root (9p, read-only) under a tmpfs overlay, then stage 2.
/bin/busybox mkdir -p /proc /sys /dev /lower /upper /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /mod/$m || echo "no $m"; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
P9=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o ro,$P9,cache=loose hostroot /lower || exec sh
mount -t tmpfs -o size=192m,mode=755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay \
    -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || exec sh
KVER=$(uname -r)
mkdir -p /newroot/lib/modules/$KVER /newroot/rh
mount -t 9p -o ro,$P9,cache=loose modules /newroot/lib/modules/$KVER
# localflocks: qemu's 9p server grants every lock without locking, so
# the daemon's processes (grant book, beat files) lock in this kernel.
mount -t 9p -o rw,$P9,localflocks work /newroot/rh
STAGE2=$(arg rh.stage2)
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/sh "$STAGE2"
'''


def _run(*argv, cwd=None):
    out = subprocess.run(list(argv), cwd=cwd, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f'{" ".join(argv)} failed ({out.returncode}): '
                           f'{out.stderr.strip()[-2000:]}')
    return out.stdout


def kernel_package():
    """The linux-image package Debian's amd64 metapackage depends on."""
    out = _run('apt-cache', 'depends', 'linux-image-amd64')
    for line in out.splitlines():
        line = line.strip()
        if line.startswith('Depends:') and 'linux-image-6.1' in line:
            return line.split()[1]
    raise RuntimeError(f'no linux-image-6.1 kernel in apt-cache: {out}')


class Kernel:
    """An unpacked kernel package: vmlinuz and its modules."""

    def __init__(self, root, version):
        self.root = root
        self.version = version
        self.vmlinuz = os.path.join(root, 'boot', f'vmlinuz-{version}')
        self.modules = os.path.join(root, 'lib', 'modules', version)


def ensure_kernel(cache=CACHE):
    """Download and unpack the stock kernel once; a Kernel."""
    pkg = kernel_package()
    version = pkg[len('linux-image-'):]
    root = os.path.join(cache, 'kernel', pkg)
    kernel = Kernel(root, version)
    if os.path.exists(os.path.join(root, '.done')):
        return kernel
    os.makedirs(os.path.dirname(root), exist_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(root)) as tmp:
        # apt's _apt user cannot write root's temp dir: world-writable.
        os.chmod(tmp, 0o777)
        _run('apt-get', 'download', '-q', pkg, cwd=tmp)
        deb = next(f for f in os.listdir(tmp) if f.endswith('.deb'))
        _run('dpkg-deb', '-x', os.path.join(tmp, deb), root)
    _run(BUSYBOX, 'depmod', '-b', root, version)
    open(os.path.join(root, '.done'), 'w').close()
    return kernel


def _deps(kernel, names):
    """Module files for ``names`` with dependencies first."""
    dep = {}
    with open(os.path.join(kernel.modules, 'modules.dep')) as f:
        for line in f:
            mod, _, rest = line.partition(':')
            dep[mod] = rest.split()
    by_name = {os.path.basename(m)[:-3].replace('-', '_'): m for m in dep}
    order = []

    def visit(mod):
        for d in reversed(dep[mod]):
            visit(d)
        if mod not in order:
            order.append(mod)
    for name in names:
        visit(by_name[name.replace('-', '_')])
    return order


def _cpio(entries):
    """A gzip'ed newc cpio archive of (path, mode, data) entries."""
    buf = io.BytesIO()
    for ino, (path, mode, data) in enumerate(entries + [('TRAILER!!!', 0,
                                                          b'')], 1):
        name = path.encode() + b'\0'
        head = b'070701' + b''.join(f'{v:08x}'.encode() for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0))
        buf.write(head + name)
        buf.write(b'\0' * (-(len(head) + len(name)) % 4))
        buf.write(data)
        buf.write(b'\0' * (-len(data) % 4))
    return gzip.compress(buf.getvalue(), 6)


def ensure_initramfs(kernel, cache=CACHE):
    """Build (or reuse) the stage-1 initramfs; its path."""
    mods = _deps(kernel, STAGE1)
    with open(BUSYBOX, 'rb') as f:
        busybox = f.read()
    key = hashlib.sha256(INIT.encode() + busybox + kernel.version.encode() +
                         ' '.join(mods).encode()).hexdigest()[:16]
    path = os.path.join(cache, f'initramfs-{key}.cpio.gz')
    if os.path.exists(path):
        return path
    dirs = ['bin', 'proc', 'sys', 'dev', 'mod']
    entries = [(d, 0o40755, b'') for d in dirs]
    entries += [('bin/busybox', 0o100755, busybox),
                ('init', 0o100755, INIT.encode()),
                ('modules.list', 0o100644,
                 ''.join(os.path.basename(m) + '\n' for m in mods).encode())]
    for m in mods:
        with open(os.path.join(kernel.modules, m), 'rb') as f:
            entries.append((f'mod/{os.path.basename(m)}', 0o100644,
                            f.read()))
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(_cpio(entries))
    os.replace(tmp, path)
    for old in os.listdir(cache):
        if old.startswith('initramfs-') and old != os.path.basename(path):
            os.unlink(os.path.join(cache, old))
    return path


if __name__ == '__main__':
    k = ensure_kernel()
    print(k.vmlinuz, ensure_initramfs(k))
