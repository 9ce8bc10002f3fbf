"""Block I/O inside a guest, O_DIRECT so the disk (not a cache) answers.

    blockio.py fill DEV TAG FIRST COUNT      stamp blocks, print sha256
    blockio.py sha DEV FIRST COUNT           sha256 of the blocks
    blockio.py stamps DEV FIRST COUNT        JSON list of block stamps
    blockio.py writer DEV TAG FIRST COUNT INTERVAL LOG
        write stamped blocks forever through ONE descriptor, like a VM;
        each write is logged when it returns: "start end seq block ok|EIO"
"""
import errno
import hashlib
import json
import mmap
import os
import sys
import time

BS = 4096


def _stamp(tag, block, seq):
    head = f'{tag}:{block}:{seq}:'.encode()
    return (head * (BS // len(head) + 1))[:BS]


def _open(dev, write):
    flags = (os.O_RDWR | os.O_DSYNC if write else os.O_RDONLY) | os.O_DIRECT
    return os.open(dev, flags)


def _read(fd, block):
    buf = mmap.mmap(-1, BS)  # page-aligned, as O_DIRECT needs
    os.preadv(fd, [buf], block * BS)
    return bytes(buf)


def fill(dev, tag, first, count):
    """Stamp COUNT blocks from FIRST with TAG; sha256 of what was written."""
    fd = _open(dev, True)
    h = hashlib.sha256()
    buf = mmap.mmap(-1, BS)
    for block in range(first, first + count):
        data = _stamp(tag, block, 0)
        buf[:] = data
        os.pwritev(fd, [buf], block * BS)
        h.update(data)
    os.fsync(fd)
    os.close(fd)
    print(h.hexdigest())


def sha(dev, first, count):
    """sha256 of COUNT blocks from FIRST."""
    fd = _open(dev, False)
    h = hashlib.sha256()
    for block in range(first, first + count):
        h.update(_read(fd, block))
    os.close(fd)
    print(h.hexdigest())


def stamps(dev, first, count):
    """The stamp ('tag:block:seq') at the head of each block."""
    fd = _open(dev, False)
    out = []
    for block in range(first, first + count):
        data = _read(fd, block)
        out.append(':'.join(p.decode(errors='replace')
                            for p in data.split(b':', 3)[:3]))
    os.close(fd)
    print(json.dumps(out))


def writer(dev, tag, first, count, interval, log):
    """Write like a VM until killed; log every write as it returns."""
    fd = _open(dev, True)
    buf = mmap.mmap(-1, BS)
    out = open(log, 'a', buffering=1)
    out.write(f'# opened {dev} pid {os.getpid()} at {time.time():.6f}\n')
    seq = 0
    while True:
        seq += 1
        block = first + seq % count
        buf[:] = _stamp(tag, block, seq)
        start = time.time()
        try:
            os.pwritev(fd, [buf], block * BS)
            result = 'ok'
        except OSError as exc:
            result = errno.errorcode.get(exc.errno, str(exc.errno))
        out.write(f'{start:.6f} {time.time():.6f} {seq} {block} {result}\n')
        time.sleep(interval)


if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'fill':
        fill(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == 'sha':
        sha(args[0], int(args[1]), int(args[2]))
    elif cmd == 'stamps':
        stamps(args[0], int(args[1]), int(args[2]))
    elif cmd == 'writer':
        writer(args[0], args[1], int(args[2]), int(args[3]),
               float(args[4]), args[5])
    else:
        sys.exit(f'unknown command {cmd}')
