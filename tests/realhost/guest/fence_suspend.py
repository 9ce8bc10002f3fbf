"""In a guest: how long a fence's suspend takes with I/O queued below the
LV, for the old suspend (flush + lockfs) and the fence's (noflush + skip
lockfs, waited for a bounded time).

The stack: ``<p>-low`` (linear over BACKING, a scratch block device) and
``<p>-top`` (linear over ``<p>-low``, the LV's place).
An O_DIRECT writer writes ``<p>-top``; ``<p>-low`` is suspended, so the
writer's I/O queues below ``<p>-top`` (as under a multipath map with every
path gone and queue_if_no_path). Then ``<p>-top`` is fenced; the I/O below
is let go (``<p>-low`` resumed) after ``hold`` seconds if the fence has not
returned by then. Prints one JSON line of figures; removes what it made.

usage: fence_suspend.py BACKING PREFIX HOLD_SECONDS (PREFIX without
dashes; BACKING at least 64 MiB, overwritten)
"""
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))))

from coordinator.activation import lvm as lvmb  # noqa: E402


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True,
                          text=True).stdout.strip()


def measure(fence, low, hold):
    """Seconds ``fence()`` took, and whether it returned while the I/O
    below was still held (before ``low`` was resumed)."""
    done = threading.Event()
    out = {}

    def run():
        started = time.monotonic()
        try:
            fence()
            out['result'] = 'ok'
        except Exception as exc:  # noqa: BLE001 - reported
            out['result'] = f'{type(exc).__name__}: {exc}'
        out['s'] = round(time.monotonic() - started, 3)
        done.set()
    threading.Thread(target=run, daemon=True).start()
    returned_held = done.wait(hold)
    sh('dmsetup', 'resume', low)
    done.wait()
    return dict(out, returned_while_io_held=returned_held)


def main():
    backing, prefix, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    low, top = f'{prefix}-low', f'{prefix}-top'
    writer = None
    figures = {}
    try:
        sectors = (64 << 20) // 512
        sh('dmsetup', 'create', low, '--table',
           f'0 {sectors} linear {backing} 0')
        below = sh('dmsetup', 'info', '-c', '--noheadings', '-o',
                   'major,minor', '--separator', ':', low)
        sh('dmsetup', 'create', top, '--table',
           f'0 {sectors} linear {below} 0')
        sh('dmsetup', 'mknodes', top)
        be = lvmb.LVMBackend(lvm=None, vgs=[])
        vg = prefix  # dm_name(vg, 'top') is the top device's name
        for label, fence in (
                ('old_flush_lockfs', lambda: lvmb.dm_ioctl(
                    lvmb.DM_DEV_SUSPEND, top, lvmb.DM_SUSPEND_FLAG)),
                ('fence', lambda: be.suspend(vg, 'top'))):
            writer = subprocess.Popen(
                ['dd', 'if=/dev/zero', f'of=/dev/mapper/{top}', 'bs=4k',
                 'count=1000000', 'oflag=direct'],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # the writer is writing
            sh('dmsetup', 'suspend', '--noflush', low)
            time.sleep(0.5)  # its next write is queued below
            figures[label] = measure(fence, low, hold)
            # The fence's ioctl (left running when it gave up) ends once
            # the I/O below is let go.
            deadline = time.monotonic() + 60
            while sh('dmsetup', 'info', '-c', '--noheadings', '-o',
                     'suspended', top) != 'Suspended' and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            sh('dmsetup', 'resume', top)
            writer.kill()
            writer.wait()
            writer = None
        figures['fence_wait_s'] = getattr(be, 'fence_wait', None)
        figures['hold_s'] = hold
        print(json.dumps(figures))
    finally:
        if writer:
            writer.kill()
        for name in (low,):
            sh('dmsetup', 'resume', name, check=False)
        for name in (top, low):
            sh('dmsetup', 'remove', '--retry', name, check=False)


if __name__ == '__main__':
    main()
