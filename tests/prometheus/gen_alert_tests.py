"""Writes lvmcoord-alerts.test.yml (promtool test rules) from the cases
below, the expected annotations rendered from the rules' own templates
(run again after changing a rule's text; promtool checks the result)."""
import os
import re

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, '..', '..', 'etc', 'prometheus',
                     'lvmcoord-alerts.yml')
J = 'job="lvmcoord"'

# (alert, series {selector: values}, [(eval_time, [labels of each alert
# expected, with '$value' the rendered value if a template uses it])])
CASES = [
    ('LvmcoordDaemonDown',
     {f'up{{{J},instance="h1"}}': '1 1 0 0 0 0',
      f'up{{{J},instance="h2"}}': '1x6'},
     [('2m', []), ('4m', [{'instance': 'h1', 'job': 'lvmcoord'}])]),
    ('LvmcoordDaemonAbsent',
     {'up{job="node",instance="h1"}': '1x20'},
     [('5m', []), ('15m', [{'job': 'lvmcoord'}])]),
    ('LvmcoordSessionLost',
     {f'lvmcoord_session_up{{{J},instance="h1"}}': '1 1 0 0 0 1',
      f'lvmcoord_session_up{{{J},instance="h2"}}': '1x6'},
     [('2m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord'}]),
      ('5m', [])]),
    ('LvmcoordSessionFlapping',
     {f'lvmcoord_events_total{{{J},instance="h1",kind="session-reopened"}}':
      '0 1 2 3 4 4',
      f'lvmcoord_events_total{{{J},instance="h2",kind="session-reopened"}}':
      '0 1 1 1 1 1'},
     [('1m', []), ('5m', [{'instance': 'h1', 'job': 'lvmcoord',
                           'kind': 'session-reopened'}])]),
    ('LvmcoordFenced',
     {f'lvmcoord_events_total{{{J},instance="h1",kind="fenced"}}':
      '0 0 1 1 1',
      f'lvmcoord_events_total{{{J},instance="h2",kind="session-lost"}}':
      '0x5',
      f'lvmcoord_events_total{{{J},instance="h2",kind="grant"}}':
      '0 5 10 15 20'},
     [('1m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord',
                           'kind': 'fenced'}]), ('15m', [])]),
    ('LvmcoordStorageFenced',
     {f'lvmcoord_storage_preempts_total{{{J},instance="h1",result="proven"}}':
      '0 0 1 1',
      f'lvmcoord_storage_preempts_total{{{J},instance="h2",result="failed"}}':
      '0 0 1 1'},
     [('1m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord',
                           'result': 'proven'}])]),
    ('LvmcoordStorageFenceFailed',
     {f'lvmcoord_storage_preempts_total{{{J},instance="h1",result="proven"}}':
      '0 0 1 1',
      f'lvmcoord_storage_preempts_total{{{J},instance="h2",result="unproven"}}':
      '0 0 1 1'},
     [('1m', []), ('3m', [{'instance': 'h2', 'job': 'lvmcoord',
                           'result': 'unproven'}])]),
    ('LvmcoordWatchdogPetsWithheld',
     {f'lvmcoord_watchdog_pets_withheld_total{{{J},instance="h1"}}':
      '0 0 5 10 10 10 10 10',
      f'lvmcoord_watchdog_pets_withheld_total{{{J},instance="h2"}}': '0x8'},
     [('1m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord'}]),
      ('7m', [])]),
    ('LvmcoordVGLockWaitSlow',
     {**{f'lvmcoord_vg_lock_seconds_bucket{{{J},instance="h1",le="{le}"}}':
         v for le, v in (('1.0', '0x20'), ('10.0', '0x20'),
                         ('30.0', '0+1x20'), ('+Inf', '0+1x20'))},
      **{f'lvmcoord_vg_lock_seconds_bucket{{{J},instance="h2",le="{le}"}}':
         '0+1x20' for le in ('1.0', '10.0', '30.0', '+Inf')}},
     [('4m', []), ('12m', [{'instance': 'h1'}])]),
    ('LvmcoordVGLockQueueLong',
     {f'lvmcoord_vg_lock_queue_depth{{{J},instance="h1",vg="vg1"}}': '12x10',
      f'lvmcoord_vg_lock_queue_depth{{{J},instance="h2",vg="vg1"}}': '3x10'},
     [('3m', []), ('8m', [{'instance': 'h1', 'job': 'lvmcoord', 'vg': 'vg1',
                           '$value': '12'}])]),
    ('LvmcoordOutOfBandMetadataChange',
     {f'lvmcoord_events_total{{{J},instance="h1",'
      f'kind="out-of-band-change"}}': '0 0 1 1',
      f'lvmcoord_events_total{{{J},instance="h2",'
      f'kind="out-of-band-change"}}': '0 0 0 0'},
     [('1m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord',
                           'kind': 'out-of-band-change'}])]),
    ('LvmcoordGrantFailures',
     {f'lvmcoord_grant_failures_total{{{J},instance="h1",'
      f'reason="LeaseConflict"}}': '0 2 4 6 8',
      f'lvmcoord_grant_failures_total{{{J},instance="h2",'
      f'reason="InvalidInput"}}': '0 10 20 30 40'},
     [('1m', []), ('4m', [{'instance': 'h1'}])]),
    ('LvmcoordHostMissingFromMembership',
     {f'lvmcoord_membership_member{{{J},instance="h2",member="h1"}}':
      '1 1 0 0 0 0',
      f'lvmcoord_membership_member{{{J},instance="h1",member="h1"}}': '1x6',
      f'lvmcoord_membership_member{{{J},instance="h1",member="h2"}}': '1x6',
      f'lvmcoord_membership_member{{{J},instance="h2",member="h2"}}': '1x6'},
     [('2m', []), ('4m', [{'member': 'h1'}])]),
    ('LvmcoordEtcdHistoryRewound',
     {f'lvmcoord_events_total{{{J},instance="h1",kind="history-rewound"}}':
      '0 0 1 1',
      f'lvmcoord_events_total{{{J},instance="h2",kind="history-rewound"}}':
      '0 0 0 0'},
     [('1m', []), ('3m', [{'instance': 'h1', 'job': 'lvmcoord',
                           'kind': 'history-rewound'}])]),
    ('LvmcoordKeepaliveSlow',
     {f'lvmcoord_keepalive_seconds{{{J},instance="h1"}}': '3x10',
      f'lvmcoord_keepalive_seconds{{{J},instance="h2"}}': '0.01x10'},
     [('3m', []), ('8m', [{'instance': 'h1', 'job': 'lvmcoord'}])]),
]


def render(template, labels):
    """Expand {{ $labels.x }} and {{ $value }} as Prometheus would."""
    out = re.sub(r'\{\{ \$labels\.(\w+) \}\}',
                 lambda m: labels.get(m.group(1), '<no value>'), template)
    return re.sub(r'\{\{ \$value \}\}', lambda m: labels['$value'], out)


def build():
    """The promtool test document."""
    rules = {r['alert']: r for g in yaml.safe_load(open(RULES))['groups']
             for r in g['rules']}
    tests = []
    for alert, series, evals in CASES:
        rule = rules[alert]
        checks = []
        for at, expected in evals:
            alerts = []
            for labels in expected:
                exp = {k: v for k, v in labels.items() if k != '$value'}
                exp.update(rule['labels'])
                alerts.append({
                    'exp_labels': exp,
                    'exp_annotations': {k: render(v, labels) for k, v in
                                        rule['annotations'].items()}})
            checks.append({'eval_time': at, 'alertname': alert,
                           'exp_alerts': alerts})
        tests.append({'interval': '1m', 'name': alert,
                      'input_series': [{'series': k, 'values': v}
                                       for k, v in series.items()],
                      'alert_rule_test': checks})
    return {'rule_files': ['../../etc/prometheus/lvmcoord-alerts.yml'],
            'evaluation_interval': '1m', 'tests': tests}


if __name__ == '__main__':
    with open(os.path.join(HERE, 'lvmcoord-alerts.test.yml'), 'w') as f:
        f.write('# Generated by gen_alert_tests.py: edit the cases there.\n')
        yaml.safe_dump(build(), f, sort_keys=False, width=78)
