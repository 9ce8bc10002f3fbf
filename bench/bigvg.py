"""Big VGs: daemon vs plain LVM at 10, 1,000, 2,500 and 5,000 LVs.

Per size, a Cluster (private etcd, loop PV, two daemons) whose VG is
filled once by vgcfgrestore of generated metadata (one plain LVM batch,
not N daemon calls; the daemons adopt it as an out-of-band change). Then,
interleaved at that size: daemon create/extend/delete through the local
socket (what the Cinder driver does) against the same lvcreate/lvextend/
lvremove argv the daemon's executor runs; daemon activate+deactivate
(loop backend); VG-lock throughput, creates/s with 4 clients over the two
daemons; and the metadata text each size needs (``--metadatasize``).
"""
import concurrent.futures
import os
import re
import tempfile
import time
import uuid

from bench import stats
from bench.report import fmt_ms
from bench.report import fmt_summary
from coordinator.lvm import mda
from coordinator.lvm import mdaroom
from coordinator.sandbox.cluster import Cluster

MiB = 1 << 20
GiB = 1 << 30
SIZES = (10, 1000, 2500, 5000)
TARGET_CREATE = 1.20
# One area for every size (like for like): 5,000 LVs need ~1.4 MB of text.
METADATA_SIZE = '8m'
EXTENT = 4 * MiB


def _lv_text(name, start):
    return (f'\t\t{name} {{\n\t\t\tid = "{_lvm_id()}"\n'
            f'\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]\n'
            f'\t\t\tflags = []\n\t\t\tcreation_time = {int(time.time())}\n'
            f'\t\t\tcreation_host = "bench"\n\t\t\tsegment_count = 1\n\n'
            f'\t\t\tsegment1 {{\n\t\t\t\tstart_extent = 0\n'
            f'\t\t\t\textent_count = 1\n\n\t\t\t\ttype = "striped"\n'
            f'\t\t\t\tstripe_count = 1\n\n\t\t\t\tstripes = [\n'
            f'\t\t\t\t\t"pv0", {start}\n\t\t\t\t]\n\t\t\t}}\n\t\t}}\n')


def _lvm_id():
    h = uuid.uuid4().hex + uuid.uuid4().hex
    h = re.sub('[^0-9a-zA-Z]', 'x', h)[:32]
    parts, at = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        parts.append(h[at:at + n])
        at += n
    return '-'.join(parts)


def fill(lvm, vg, count, tmp):
    """Give ``vg`` (empty) ``count`` 1-extent LVs in one vgcfgrestore."""
    path = os.path.join(tmp, f'{vg}.meta')
    lvm.run(['vgcfgbackup', '-f', path, vg], vg)
    with open(path) as f:
        text = f.read()
    body = ''.join(_lv_text(f'big{i:05d}', i) for i in range(count))
    # An empty VG has no logical_volumes section: add one after the PVs.
    end = text.rindex('}')  # the VG's closing brace
    end = text.rindex('}', 0, end)  # ... after physical_volumes
    text = (text[:end + 1] + '\n\n\tlogical_volumes {\n\n' + body +
            '\t}\n' + text[end + 1:])
    with open(path, 'w') as f:
        f.write(text)
    lvm.run(['vgcfgrestore', '-f', path, vg], vg)
    os.unlink(path)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _pairs(rounds, plain, daemon):
    """Interleaved (plain, daemon) samples, order alternating."""
    out = {'plain': [], 'daemon': []}
    for i in range(rounds):
        order = (('plain', plain), ('daemon', daemon))
        for name, fn in (order if i % 2 else order[::-1]):
            out[name].append(_timed(lambda f=fn, k=i: f(k)))
    return {k: stats.Summary.of(v) for k, v in out.items()}


def _throughput(clients, vg, n, tag):
    def one(i):
        clients[i % len(clients)].call('create', vg=vg,
                                       lv=f'{tag}{i:04d}', size=EXTENT)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t0)


def measure(size, rounds):
    """The figures of one VG size (a dict)."""
    with Cluster(hosts=('volume-1', 'volume-2'), ttl=10, grace=1.0,
                 vg_size=64 * GiB, metadata_size=METADATA_SIZE) as c, \
            tempfile.TemporaryDirectory() as tmp:
        vg, lvm = c.vg.vg, c.vg.hosts[0].lvm
        fill(lvm, vg, size, tmp)
        loc, text = mda.read_text(c.vg.device)
        cl = c['volume-1'].client
        cl2 = c['volume-2'].client
        cl.call('list', vg=vg)   # the daemon adopts the new metadata
        out = {'lvs': size, 'text': len(text), 'area': loc.area_size}
        out['create'] = _pairs(
            rounds, lambda i: lvm.create_lv(vg, f'p{i:03d}', EXTENT),
            lambda i: cl.call('create', vg=vg, lv=f'd{i:03d}', size=EXTENT))
        # Before the extend: the loop backend maps one segment.
        act = []
        for i in range(max(3, rounds // 2)):
            act.append(_timed(lambda k=i: (
                cl.call('activate', vg=vg, lv=f'd{k:03d}'),
                cl.call('deactivate', vg=vg, lv=f'd{k:03d}'))))
        out['activate'] = stats.Summary.of(act)
        out['extend'] = _pairs(
            rounds, lambda i: lvm.extend_lv(vg, f'p{i:03d}', 2 * EXTENT),
            lambda i: cl.call('extend', vg=vg, lv=f'd{i:03d}',
                              size=2 * EXTENT))
        out['delete'] = _pairs(
            rounds, lambda i: lvm.remove_lv(vg, f'p{i:03d}'),
            lambda i: cl.call('delete', vg=vg, lv=f'd{i:03d}'))
        out['creates_per_s'] = _throughput([cl, cl2], vg, 2 * rounds, 't')
        try:
            cl.call('snapshot', vg=vg, lv='big00000', name='snap0',
                    size=EXTENT)
            out['snapshot'] = 'ok'
        except Exception as exc:  # no device-mapper: LVM refuses
            out['snapshot'] = str(exc)[:120]
    return out


def run(report, quick, sizes=None):
    """The bigvg section."""
    sizes = sizes or ((10, 500) if quick else SIZES)
    rounds = 4 if quick else 8
    report.section(f'bigvg: daemon vs plain LVM on one loop PV '
                   f'(--metadatasize {METADATA_SIZE}, {rounds} interleaved '
                   f'samples per op and size)')
    res = []
    for size in sizes:
        print(f'  bigvg: {size} LVs ...', flush=True)
        res.append(measure(size, rounds))
    base = res[0]
    for r in res:
        n = r['lvs']
        for op in ('create', 'extend', 'delete'):
            d, p = r[op]['daemon'], r[op]['plain']
            ratio = stats.ratio(d.median, p.median)
            target, ok = '', None
            if op == 'create' and n == max(sizes):
                target, ok = f'<= {TARGET_CREATE:.1f}x', ratio <= \
                    TARGET_CREATE
            report.row(f'{n} LVs: {op}, daemon / plain',
                       f'{ratio:.2f}x (daemon {fmt_summary(d)}; plain '
                       f'{fmt_ms(p.median)})', target, ok)
        # The lock's own cost: daemon minus plain, against the smallest VG.
        extra = r['create']['daemon'].median - r['create']['plain'].median
        extra0 = base['create']['daemon'].median - \
            base['create']['plain'].median
        report.row(f'{n} LVs: daemon create minus plain (lock + seqno)',
                   f'{fmt_ms(extra)} (at {base["lvs"]} LVs '
                   f'{fmt_ms(extra0)})', 'no growth with LVs',
                   extra <= max(2 * extra0, extra0 + 0.010))
        report.row(f'{n} LVs: activate + deactivate (daemon, loop)',
                   fmt_summary(r['activate']))
        report.row(f'{n} LVs: VG-lock throughput, 4 clients, 2 daemons',
                   f'{r["creates_per_s"]:.1f} creates/s')
        need = 2 * r['text'] + 3 * mdaroom.SECTOR
        report.row(f'{n} LVs: metadata text; --metadatasize it needs',
                   f'{r["text"] / 1024:.0f} KiB; >= {need / MiB:.2f} MiB '
                   f'(area {r["area"] / MiB:.1f} MiB)')
    report.note(f'bigvg snapshot: {res[-1]["snapshot"]}')
    report.data['bigvg'] = [
        {k: (v.ms() if isinstance(v, stats.Summary) else
             {a: b.ms() for a, b in v.items()} if isinstance(v, dict)
             else v) for k, v in r.items()} for r in res]
