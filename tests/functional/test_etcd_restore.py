"""etcd restored from an older backup (issue 22, item 7): an old session
and an old ledger entry come back, and a holder cut off since the backup
would resume a device another host has written since. Each host's history
mark finds the restore; every daemon fences, resumes nothing, serves no
grant, and waits for the operator's `lvmcoord history accept`. Real etcd
(`etcdctl snapshot save/restore`), real LVM on loop devices, real
daemons."""
import os
import subprocess
import sys
import time

import pytest

from coordinator import errors
from tests.functional.rowatch import ROWatch

MiB = 1 << 20


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


def rewound(client):
    try:
        return (client.call('status').get('history') or {}).get('rewound')
    except errors.CoordError:
        return None


def read_only(path):
    loop = os.path.basename(os.path.realpath(path))
    with open(f'/sys/block/{loop}/ro') as f:
        return f.read().strip() == '1'


def cli(conf, *args):
    return subprocess.run(
        [sys.executable, '-m', 'coordinator.cli.app', '--config-file', conf,
         *args], capture_output=True, text=True, timeout=120)


def test_restored_etcd_is_found_and_nothing_resumes(partitioned, tmp_path):
    cluster, proxy = partitioned
    vg = cluster.vg.vg
    c1, c2 = cluster['compute-1'].client, cluster['compute-2'].client
    c2.call('create', vg=vg, lv='vm-disk', size=4 * MiB)
    c2.call('create', vg=vg, lv='spare', size=4 * MiB)
    got = c1.call('activate', vg=vg, lv='vm-disk', instance='vm-1')
    # The backup: compute-1 holds vm-disk, its session alive.
    backup = cluster.etcd.snapshot(str(tmp_path / 'backup.db'))

    watch = ROWatch(got['path'])
    try:
        # compute-1 is cut off; compute-2 takes vm-disk over and writes.
        proxy.cut()
        taken = c2.call('activate', vg=vg, lv='vm-disk', instance='vm-2',
                        wait=60)
        assert taken['host'] == 'compute-2'
        assert watch.fenced.is_set(), 'compute-1 never fenced'
        fd = os.open(taken['path'], os.O_WRONLY)
        try:
            os.pwrite(fd, b'B' * 4096, 0)
        finally:
            os.close(fd)

        # etcd is restored from the backup: compute-1's session and grant
        # are back.
        cluster.etcd.restore(backup)
        restored = time.monotonic()
        # compute-2 has seen revisions past the backup: it finds out, and
        # fences its own device too.
        wait_for(lambda: rewound(c2), 120, 'compute-2 to find the restore')
        found = time.monotonic()
        assert 'restored from an older backup' in rewound(c2)
        wait_for(lambda: read_only(taken['path']), 60,
                 'compute-2 to fence its device')

        # compute-1 comes back: its session lives in the restored etcd,
        # the ledger names it; it has seen nothing newer than the backup,
        # and learns of the restore from etcd's epoch.
        proxy.heal()
        healed = time.monotonic()
        wait_for(lambda: rewound(c1) or watch.unfenced.is_set(), 120,
                 'compute-1 to find the restore (or resume)')
        print(f'restore found by compute-2 {found - restored:.2f} s after '
              f'etcd came back, by compute-1 {time.monotonic() - healed:.2f}'
              f' s after its link healed')
        assert not watch.unfenced.is_set(), \
            'compute-1 resumed a device compute-2 has written since'
        assert 'found etcd\'s history rewound' in rewound(c1)
        # No grant is served meanwhile, on either host.
        for client in (c1, c2):
            with pytest.raises(errors.CoordError, match='history was '
                               'rewound'):
                client.call('activate', vg=vg, lv='spare')
        shown = cli(cluster['compute-2'].conf_file, 'history', 'show',
                    '-f', 'value', '-c', 'Rewound')
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith('found by compute-2'), shown.stdout
        assert read_only(taken['path'])

        # The operator accepts the restored history: grants from before
        # are void; nothing fenced resumes, each device is retired.
        refused = cli(cluster['compute-2'].conf_file, 'history', 'accept')
        assert refused.returncode != 0
        assert '--yes-i-really-mean-it' in refused.stderr
        done = cli(cluster['compute-2'].conf_file, 'history', 'accept',
                   '--yes-i-really-mean-it')
        assert done.returncode == 0, done.stderr
        for client in (c1, c2):
            wait_for(lambda c=client: c.call('status')['history']
                     ['rewound'] is None, 60, 'the accept to be adopted')
        wait_for(lambda: not os.path.exists(got['path']), 60,
                 'compute-1 to retire its stale device')
        wait_for(lambda: not os.path.exists(taken['path']), 60,
                 'compute-2 to retire its device')
        assert not watch.unfenced.is_set()
    finally:
        watch.close()
    # Grants are served again, from the accepted history.
    again = c2.call('activate', vg=vg, lv='vm-disk', instance='vm-2',
                    wait=60)
    assert again['host'] == 'compute-2'
    fd = os.open(again['path'], os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == b'B' * 4096
    finally:
        os.close(fd)
    c2.call('deactivate', vg=vg, lv='vm-disk')
