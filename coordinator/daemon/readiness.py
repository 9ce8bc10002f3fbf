"""Readiness: what this host can see of the shared VGs, for membership.

Answers the seed thread's questions: the VG is found by UUID, whatever the
PV's device name on this host; whether it is reached through multipath (and
not through one path of a multipath map); and the LVM settings that make a
shared VG unsafe (auto-activation, a foreign system ID).
"""
import os

from coordinator import errors


def _sys_block(device):
    """The device's sysfs directory, found by its device number: a node
    named otherwise than the kernel's name (made by hand or by a tool on a
    host without udev links) is still found."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        rdev = 0
    if rdev:
        return f'/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}'
    return f'/sys/class/block/{os.path.basename(os.path.realpath(device))}'


def multipath_of(device):
    """('map', None) if ``device`` is a multipath map, ('path', map) if
    it is one path of a map, (None, None) otherwise."""
    base = _sys_block(device)
    try:
        with open(f'{base}/dm/uuid') as f:
            if f.read().startswith('mpath-'):
                return 'map', None
    except OSError:
        pass
    try:
        for holder in os.listdir(f'{base}/holders'):
            with open(f'/sys/class/block/{holder}/dm/uuid') as f:
                if f.read().startswith('mpath-'):
                    return 'path', holder
    except OSError:
        pass
    return None, None


def view(lvm, vgs, known_uuids, versions):
    """This host's readiness: per VG what it sees, and any problems."""
    out = {'vgs': {}, 'problems': {}, 'versions': versions}
    for name in vgs:
        try:
            vg = lvm.vg(name)
            pvs = lvm.pvs(name)
        except errors.LVMError as exc:
            out['problems'][name] = f'VG not visible: {exc}'
            continue
        entry = {'uuid': vg['uuid'], 'seqno': vg['seqno'],
                 'autoactivation': vg.get('autoactivation', ''),
                 'system_id': vg.get('systemid', ''),
                 'pvs': []}
        problems = []
        expected = known_uuids.get(name)
        if expected and expected != vg['uuid']:
            problems.append(f'VG UUID {vg["uuid"]} here, {expected} on the '
                            f'cluster: a different VG with the same name')
        for pv in pvs:
            kind, holder = multipath_of(pv['name'])
            entry['pvs'].append({'device': pv['name'],
                                 'multipath': kind == 'map'})
            if kind == 'path':
                problems.append(f'{pv["name"]} is one path of multipath '
                                f'map {holder}; filter it out and use the '
                                f'map')
        if entry['autoactivation'] == 'enabled':
            problems.append('auto-activation is on: run vgchange '
                            '--setautoactivation n')
        if entry['system_id']:
            problems.append(f'VG has system ID {entry["system_id"]}: shared '
                            f'VGs must have none')
        out['vgs'][name] = entry
        if problems:
            out['problems'][name] = '; '.join(problems)
    return out
