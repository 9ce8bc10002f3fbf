"""Checks at the end of a run, once faults are over and the cluster has
settled for longer than TTL + grace."""
import datetime
import os
import re
import subprocess
import time

from coordinator.sandbox.chaos import faults as faultlib
from coordinator.sandbox.chaos import mappings

CRASH = re.compile(r'Traceback|Unhandled exception|Child \d+ (exited with '
                   r'status|killed by signal)|Forking too fast')
FENCED = re.compile(r'fencer: (.*); fenced (.*)$')
STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})')


def readiness(topo, checker, timeout=30):
    """Every daemon answers status with a live session and no problem."""
    for host in topo.hosts:
        deadline = time.monotonic() + timeout
        while True:
            why = None
            try:
                st = topo.client(host, timeout=10).call('status')
                problems = (st.get('readiness') or {}).get('problems')
                if st.get('session') in (None, '0'):
                    why = 'no session'
                elif problems:
                    why = f'problems: {problems}'
            except Exception as exc:  # a daemon that does not answer
                why = f'{type(exc).__name__}: {exc}'
            if why is None:
                break
            if time.monotonic() > deadline:
                checker.violation('daemon-not-ready', host, host=host,
                                  why=why[:300])
                break
            time.sleep(0.5)


def lease_table(topo, checker, workload):
    """`lease list` equals the real mappings; every mapping is leased."""
    try:
        rows = topo.lease_list()
    except Exception as exc:  # the CLI itself failing is a finding
        checker.violation('lease-list-failed', 'cli', error=str(exc)[:300])
        return
    leases = set()
    for r in rows:
        key = (r['LV'], r['Host'])
        if r.get('Alive') in (True, 'yes'):
            leases.add(key)
        else:
            checker.violation('dead-lease-after-settle', key, row=r)
    maps = mappings.snapshot(topo.pv, {h: topo.dev_dir(h)
                                       for h in topo.hosts},
                             workload.writers())
    mapped = {}
    for m in maps:
        if not m.lvs:
            checker.violation('orphan-device', (m.loop, m.offset),
                              loop=m.loop, hosts=sorted(m.hosts),
                              writable=m.writable, range=[m.offset, m.size])
        for host, lv in m.lvs:
            mapped[(lv, host)] = m
    for key in sorted(leases - set(mapped)):
        checker.violation('lease-without-device', key, lv=key[0],
                          host=key[1])
    for key in sorted(set(mapped) - leases):
        checker.violation('device-without-lease', key, lv=key[0],
                          host=key[1], loop=mapped[key].loop,
                          writable=mapped[key].writable)
    for key in sorted(leases & set(mapped)):
        if not mapped[key].writable:
            checker.violation('leased-device-fenced', key, lv=key[0],
                              host=key[1], loop=mapped[key].loop)


def volumes(topo, checker, workload):
    """Acknowledged creates exist (by uuid, under their last name),
    acknowledged deletes are gone, and nothing else appeared."""
    found = {lv['uuid']: lv for lv in topo.lvm.lvs(topo.vg)}
    for uuid, lv in workload.lvs.items():
        if uuid not in found:
            if lv.acked:
                checker.violation('acked-create-lost', uuid, lv=lv.name,
                                  uuid=uuid)
        elif found[uuid]['name'] != lv.name:
            checker.violation('name-mismatch', uuid, expected=lv.name,
                              found=found[uuid]['name'])
    for uuid in workload.gone & set(found):
        checker.violation('acked-delete-present', uuid,
                          lv=found[uuid]['name'])
    for uuid in set(found) - set(workload.lvs) - workload.gone:
        checker.violation('unexpected-lv', uuid, lv=found[uuid]['name'])


def vgck(topo, checker):
    """`vgck` finds the VG clean."""
    env = dict(os.environ, LVM_SYSTEM_DIR=topo.lvm_system_dir,
               LVM_SUPPRESS_FD_WARNINGS='1')
    out = subprocess.run(['vgck', '--verbose', topo.vg], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    bad = [x for x in out.stderr.splitlines()
           if 'Activation disabled' not in x and
           re.search(r'WARNING|error|Checksum|inconsistent', x, re.I)]
    if out.returncode or bad:
        checker.violation('vgck', topo.vg, rc=out.returncode,
                          stderr=out.stderr.strip()[-800:])


def _when(line):
    m = STAMP.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(
        m.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()


def crashes(topo):
    """[(host, time, line)]: tracebacks and dead or respawned workers in
    the daemons' logs and stderr, one per (host, pid, second): a chained
    traceback is one incident."""
    out, seen = [], set()
    for host in topo.hosts:
        d = topo.daemon(host)
        for path in (d.log, d.log + '.err'):
            try:
                with open(path, errors='replace') as f:
                    lines = f.readlines()
            except OSError:
                continue
            for line in lines:
                if not CRASH.search(line):
                    continue
                words = line.split()
                key = (host, words[2] if len(words) > 2 else '',
                       line[:19], 'Child' in line)
                if key not in seen:
                    seen.add(key)
                    out.append((host, _when(line), line.strip()[:400]))
    return out


def vg_lock(topo, history, checker):
    """Nobody holds or waits for the VG lock once everything is quiet."""
    try:
        kvs, _ = history.etcd.range(history.keys.vg_lock(topo.vg),
                                    prefix=True)
    except Exception as exc:  # etcd not answering at the end is a finding
        checker.violation('vg-lock-unreadable', topo.vg, error=str(exc))
        return
    for kv in kvs:
        checker.violation('vg-lock-held-after-settle', kv.key,
                          lock_key=kv.key, value=kv.value[:300])


def fences(topo, history):
    """[(host, time, reason, source)] from the daemons' events and logs."""
    out = []
    for ev in history.events:
        if ev.get('kind') == 'fenced':
            out.append((ev.get('host'), ev.get('at'), ev.get('reason'),
                        'event'))
    for host in topo.hosts:
        try:
            with open(topo.daemon(host).log, errors='replace') as f:
                for line in f:
                    m = FENCED.search(line)
                    if m and _when(line):
                        out.append((host, _when(line), m.group(1), 'log'))
        except OSError:
            continue
    return out


def classify_fences(topo, history, faults, checker):
    """Fences of hosts that were not faulted themselves; those inside an
    etcd leader fault's window are the ones issue 8 counts."""
    # A faulted host's own fences may come late (heal, restart, resume).
    slack = 2 * (topo.ttl + topo.grace) + 10
    seen = set()
    healthy_in_leader = 0
    for host, at, reason, source in sorted(fences(topo, history),
                                           key=lambda f: f[1] or 0):
        if at is None:
            continue
        own = [f for f in faults if host in f.hosts and
               f.start - 1 <= at <= (f.end or at) + slack]
        if own:
            continue
        leader = [f for f in faults if f.kind in faultlib.LEADER_KINDS and
                  f.start - 1 <= at <= (f.end or at) + topo.ttl]
        # The event and the log line of one fence: count it once.
        once = (host, round(at))
        if once in seen or (host, round(at) - 1) in seen:
            continue
        seen.add(once)
        if leader:
            healthy_in_leader += 1
            checker.violation('healthy-fenced-by-leader-change',
                              (host, leader[0].start), host=host, at=at,
                              reason=reason, fault=leader[0].kind,
                              source=source)
        else:
            # One incident per host and reason; count says how often.
            checker.violation('healthy-fenced', (host, reason), host=host,
                              at=at, reason=reason, source=source)
    return healthy_in_leader
