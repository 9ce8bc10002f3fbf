"""Uncontended VG lock acquire+release vs raw etcd put and tooz lock."""
from bench import clients
from bench import stats
from bench.report import fmt_summary

VG = 'bench-lock-vg'
TARGET_VS_PUT = 2.2
TARGET_VS_TOOZ = 0.6


def variants(endpoint, eng, coord):
    """name -> callable doing one operation of that kind."""
    stock = clients.stock_etcd3gw(endpoint)
    tuned = clients.engine_etcd3gw(endpoint)
    tooz_lock = coord.get_lock(b'bench-lock')

    def vglock():
        eng.vglock(VG).acquire('bench', timeout=10).release()

    def tooz_cycle():
        if not tooz_lock.acquire(blocking=True):
            raise RuntimeError('tooz lock not acquired')
        tooz_lock.release()

    return {'vglock': vglock,
            # The same transport as the lock: the engine's Etcd object.
            'put_same': lambda: eng.etcd.put('/bench/put', 'x' * 64),
            'put_stock': lambda: stock.put('/bench/put', 'x' * 64),
            'put_engine_session': lambda: tuned.put('/bench/put', 'x' * 64),
            'tooz_lock': tooz_cycle}


def run(report, endpoint, eng, coord, batches, per_batch):
    """Measure and add the section-1 rows to ``report``."""
    samples = stats.interleave(variants(endpoint, eng, coord), batches,
                               per_batch)
    s = {name: stats.Summary.of(xs) for name, xs in samples.items()}
    report.data['lock'] = {name: v.ms() for name, v in s.items()}
    report.section(f'1. uncontended VG lock acquire+release '
                   f'({batches} interleaved batches x {per_batch})')
    labels = {'vglock': 'VG lock acquire+release',
              'put_same': 'put through the same transport (Etcd.put)',
              'put_engine_session': 'etcd3gw put, engine session',
              'put_stock': 'etcd3gw put, stock client',
              'tooz_lock': 'tooz lock acquire+release'}
    for name, label in labels.items():
        report.row(label, fmt_summary(s[name]))
    ratios = {}
    for base, target in (('put_same', TARGET_VS_PUT),
                         ('put_engine_session', None),
                         ('put_stock', None),
                         ('tooz_lock', TARGET_VS_TOOZ)):
        med = stats.ratio(s['vglock'].median, s[base].median)
        p99 = stats.ratio(s['vglock'].p99, s[base].p99)
        ratios[base] = {'median': round(med, 3), 'p99': round(p99, 3),
                        'target': target}
        report.row(f'VG lock / {labels[base]}',
                   f'{med:.3f}x median, {p99:.3f}x p99',
                   f'<= {target}x' if target else '',
                   med <= target if target else None)
    report.data['lock']['ratios'] = ratios
    report.note('lock/put: the verdict compares with a put through the very '
                'Etcd object the lock uses (same transport, same wrapper); '
                'a lock cycle is two writes. The etcd3gw rows (stock '
                'client, the engine\'s lean session without the wrapper) '
                'are for reference. Verdicts use medians.')

