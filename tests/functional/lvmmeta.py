"""The VG metadata a device-mapper host of the cluster would leave, written
here with LVM's own vgcfgbackup / vgcfgrestore.

These machines have no device-mapper: LVM refuses to create snapshots and
to merge them. An old-style snapshot is a hidden LV whose 'snapshot'
segment names its origin and its COW LV (``cow_store``; ``merging_store``
once ``lvconvert --merge`` has marked it merging into an inactive origin).
The daemons see the change as any out-of-band LVM command (they adopt the
seqno).
"""
import os
import random
import re
import string
import tempfile
import uuid


def _lvm_id():
    alphabet = string.ascii_letters + string.digits
    return '-'.join(''.join(random.choice(alphabet) for _ in range(n))
                    for n in (6, 4, 4, 4, 4, 4, 6))


def _lvs_section(text):
    """(start, end) of the body of the metadata's logical_volumes."""
    start = text.index('logical_volumes {') + len('logical_volumes {')
    depth, at = 1, start
    while depth:
        ch = text[at]
        depth += ch == '{'
        depth -= ch == '}'
        at += 1
    return start, at - 1


def rewrite(lvm, vg, change, tmp_dir=None):
    """vgcfgbackup, ``change(text)``, vgcfgrestore."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    path = os.path.join(str(tmp_dir), f'meta-{uuid.uuid4().hex[:8]}.txt')
    try:
        lvm.run(['vgcfgbackup', '-f', path, vg], vg)
        with open(path) as f:
            text = f.read()
        with open(path, 'w') as f:
            f.write(change(text))
        lvm.run(['vgcfgrestore', '-f', path, vg], vg)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def make_snapshot(lvm, vg, origin, cow, merging=False, tmp_dir=None):
    """Turn LV ``cow`` into an old-style snapshot of ``origin``, merging
    into it when ``merging`` (what lvconvert --merge leaves on an inactive
    origin)."""
    store = 'merging_store' if merging else 'cow_store'
    hidden = (f'\n\t\tsnapshot_{cow[-12:].replace("-", "_")} {{\n'
              f'\t\t\tid = "{_lvm_id()}"\n'
              f'\t\t\tstatus = ["READ"]\n\t\t\tflags = []\n'
              f'\t\t\tsegment_count = 1\n\n'
              f'\t\t\tsegment1 {{\n\t\t\t\tstart_extent = 0\n'
              f'\t\t\t\textent_count = 1\n\n'
              f'\t\t\t\ttype = "snapshot"\n\t\t\t\tchunk_size = 8\n'
              f'\t\t\t\torigin = "{origin}"\n'
              f'\t\t\t\t{store} = "{cow}"\n\t\t\t}}\n\t\t}}\n')

    def change(text):
        _, end = _lvs_section(text)
        return text[:end] + hidden + text[end:]
    rewrite(lvm, vg, change, tmp_dir)


def drop_snapshots(lvm, vg, origin, tmp_dir=None):
    """Remove every hidden snapshot LV of ``origin`` (their COW LVs, which
    LVM had hidden in the metadata, become plain visible LVs again)."""
    pattern = re.compile(r'\n\t\tsnapshot_\w+ \{[^{]*\{[^}]*origin = "'
                         + re.escape(origin) + r'"\n\t\t\t\t'
                         r'\w+_store = "([^"]+)"\n\t\t\t\}\n\t\t\}\n')

    def change(text):
        cows = pattern.findall(text)
        text = pattern.sub('', text)
        for cow in cows:
            at = text.index(f'\n\t\t{cow} {{')
            text = text[:at] + text[at:].replace(
                'status = ["READ", "WRITE"]',
                'status = ["READ", "WRITE", "VISIBLE"]', 1)
        return text
    rewrite(lvm, vg, change, tmp_dir)


def all_lvs(lvm, vg):
    """{name: lv_attr} of every LV, hidden ones included ([name])."""
    out = lvm.run(['lvs', '-a', '--noheadings', '-o', 'lv_name,lv_attr',
                   vg], vg)
    return dict(line.split() for line in out.splitlines() if line.strip())
