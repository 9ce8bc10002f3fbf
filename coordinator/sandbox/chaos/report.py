"""The run's table (for people) and JSON (for machines)."""
import json
import os


def table(result):
    """The result as a fixed-width text table."""
    r = result
    kinds = sorted(set(r['ops_acked']) | set(r['ops_failed']))
    lines = [f'chaos seed {r["seed"]}  duration {r["duration"]}s  '
             f'(elapsed {r["elapsed"]}s)  hosts {" ".join(r["hosts"])}  '
             f'TTL {r["ttl"]}s grace {r["grace"]}s',
             f'{"operation":<22}{"acked":>8}{"failed":>8}']
    for k in kinds:
        lines.append(f'{k:<22}{r["ops_acked"].get(k, 0):>8}'
                     f'{r["ops_failed"].get(k, 0):>8}')
    lines.append(f'{"fault":<30}{"count":>6}')
    for k, n in sorted(r['faults_by_kind'].items()):
        lines.append(f'{k:<30}{n:>6}')
    lines.append(f'{"violation":<34}{"count":>6}')
    for k, n in sorted(r['violations_by_kind'].items()):
        lines.append(f'{k:<34}{n:>6}')
    if not r['violations_by_kind']:
        lines.append(f'{"(none)":<34}{0:>6}')
    resets = r.get('resets', [])
    if r.get('watchdog'):
        by = {}
        for x in resets:
            k = x['fault'] or 'no fault (healthy host)'
            by[k] = by.get(k, 0) + 1
        lines.append(f'SIMULATED watchdog (timeout {r["watchdog_timeout"]}s)'
                     f' host resets: {len(resets)}' + ''.join(
                         f'; {k}: {n}' for k, n in sorted(by.items())))
    lines += [
        f'worker crashes: {len(r["worker_crashes"])}   healthy hosts fenced '
        f'by etcd leader changes: {r["healthy_fenced_in_leader_change"]}',
        f'writers {r["writers"]}: {r["writes_ok"]} writes ok, '
        f'{r["writes_failed"]} failed (expected after fences); '
        f'{r["samples"]} mapping samples']
    return '\n'.join(lines)


def details(result, limit=12):
    """One line per violation and crash (the first ``limit`` of each)."""
    out = []
    for v in result['violations'][:limit]:
        rest = {k: x for k, x in v.items() if k not in ('kind',)}
        out.append(f'VIOLATION {v["kind"]}: {json.dumps(rest, default=str)}'
                   [:1200])
    for c in result['worker_crashes'][:limit]:
        out.append(f'CRASH {c[0]}: {c[2]}')
    return '\n'.join(out)


def save(result, path):
    """Write the result as JSON; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1, default=str)
    return path


def ok(result):
    """True when the run found nothing."""
    return not result['violations'] and not result['worker_crashes']


def summary(results):
    """One line per run: the table across seeds."""
    def short(counts):
        return ' '.join(f'{k}={n}' for k, n in sorted(counts.items())) \
            or '-'
    lines = []
    for r in results:
        acked = sum(r['ops_acked'].values())
        failed = sum(r['ops_failed'].values())
        lines.append(
            f'seed {r["seed"]} duration {r["duration"]}s (elapsed '
            f'{r["elapsed"]}s): ops acked {acked} failed {failed}; '
            f'faults {sum(r["faults_by_kind"].values())} '
            f'({len(r["faults_by_kind"])} kinds); violations '
            f'{len(r["violations"])} [{short(r["violations_by_kind"])}]; '
            f'worker crashes {len(r["worker_crashes"])}; SIMULATED '
            f'watchdog resets {len(r.get("resets", []))}; healthy fenced by '
            f'leader changes {r["healthy_fenced_in_leader_change"]}')
        lines.append(f'    acked: {short(r["ops_acked"])}')
        lines.append(f'    failed: {short(r["ops_failed"])}')
        lines.append(f'    faults: {short(r["faults_by_kind"])}')
    return '\n'.join(lines)


if __name__ == '__main__':
    import sys
    runs = []
    for path in sys.argv[1:]:
        with open(path) as f:
            runs.append(json.load(f))
    print(summary(runs))
