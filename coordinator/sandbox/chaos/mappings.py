"""What the kernel maps: every loop device over the shared PV, its byte
range, whether it is writable, and which simulated host it belongs to
(the links in each host's device dir, and which host's writer has it
open). Read from sysfs and /proc only: no daemon is asked."""
import dataclasses
import os

from coordinator.sandbox import links as linkslib


@dataclasses.dataclass
class Mapping:
    """One loop device over the shared PV."""

    loop: str
    offset: int
    size: int
    writable: bool
    hosts: set  # hosts it is attributed to
    lvs: set  # LV names its links carry ({(host, lv)})

    def overlaps(self, other):
        return self.offset < other.offset + other.size and \
            other.offset < self.offset + self.size


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def loops_over(pv):
    """{'/dev/loopN': (offset, size, writable)} backed by device ``pv``."""
    out = {}
    real = os.path.realpath(pv)
    for name in os.listdir('/sys/block'):
        if not name.startswith('loop'):
            continue
        base = f'/sys/block/{name}'
        backing = _read(f'{base}/loop/backing_file')
        if backing is None or backing.removesuffix(' (deleted)') != real:
            continue
        offset = _read(f'{base}/loop/offset')
        limit = _read(f'{base}/loop/sizelimit')
        ro = _read(f'{base}/ro')
        sectors = _read(f'{base}/size')
        if None in (offset, limit, ro, sectors):
            continue  # detached while we read it
        size = int(limit) or int(sectors) * 512
        out[f'/dev/{name}'] = (int(offset), size, ro == '0')
    return out


def links(dev_dirs):
    """{'/dev/loopN': {(host, lv)}} from each host's device links."""
    out = {}
    for host, root in dev_dirs.items():
        for _, lv, target in linkslib.device_links(root):
            out.setdefault(target, set()).add((host, lv))
    return out


def loops_opened(pid):
    """Loop devices process ``pid`` holds open."""
    out = []
    try:
        fds = os.listdir(f'/proc/{pid}/fd')
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
        except OSError:
            continue
        if target.startswith('/dev/loop'):
            out.append(target)
    return out


def opened_by(writers):
    """{'/dev/loopN': {host}} for loop devices the writers hold open."""
    out = {}
    for w in writers:
        for target in loops_opened(w.proc.pid):
            out.setdefault(target, set()).add(w.host)
    return out


def snapshot(pv, dev_dirs, writers):
    """[Mapping] over ``pv`` now."""
    by_link = links(dev_dirs)
    by_fd = opened_by(writers)
    out = []
    for loop, (offset, size, writable) in loops_over(pv).items():
        named = by_link.get(loop, set())
        hosts = {h for h, _ in named} | by_fd.get(loop, set())
        out.append(Mapping(loop, offset, size, writable, hosts, named))
    return out
