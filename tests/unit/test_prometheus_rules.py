"""The alert rules and the Grafana dashboard: promtool checks and unit
tests the rules; every name they query is one the daemon exports."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.prometheus import gen_alert_tests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RULES = os.path.join(ROOT, 'etc', 'prometheus', 'lvmcoord-alerts.yml')
TESTS = os.path.join(ROOT, 'tests', 'prometheus', 'lvmcoord-alerts.test.yml')
DASHBOARD = os.path.join(ROOT, 'etc', 'grafana', 'lvmcoord.json')
METRICS = os.path.join(ROOT, 'coordinator', 'daemon', 'metrics.py')
SUFFIXES = {'Counter': ('_total', '_created'), 'Gauge': ('',),
            'Histogram': ('_bucket', '_sum', '_count', '_created')}
# PromQL words that look like metric names in an expression.
PROMQL = {'by', 'without', 'on', 'ignoring', 'group_left', 'group_right',
          'bool', 'and', 'or', 'unless', 'offset', 'le'}


def promtool():
    """The promtool binary (Debian's prometheus package, make setup)."""
    path = shutil.which('promtool')
    assert path, 'promtool missing: apt-get install prometheus (make setup)'
    return path


def exported():
    """Series names the daemon exports, from metrics.py's definitions."""
    src = open(METRICS).read()
    out = set()
    for kind, name in re.findall(
            r"prom\.(Counter|Gauge|Histogram)\(\s*'(\w+)'", src):
        out |= {name + s for s in SUFFIXES[kind]}
    return out


def names_in(expr):
    """Metric names an expression selects (a word followed by { or a
    range/space, not a function call, label or keyword)."""
    expr = re.sub(r'\{[^}]*\}', '{}', expr)      # label matchers
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r'\$\w+', '', expr)           # Grafana variables
    expr = re.sub(r'\b(by|without|on|ignoring)\s*\([^)]*\)', '', expr)
    words = re.findall(r'\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()', expr)
    return {w for w in words if w not in PROMQL and not w.isdigit()
            and not re.fullmatch(r'\d+[smhdwy]', w)}


def rules():
    """The alerting rules of the rules file."""
    return [r for g in yaml.safe_load(open(RULES))['groups']
            for r in g['rules']]


def dashboard_exprs():
    """Every target expression of the dashboard."""
    dash = json.load(open(DASHBOARD))
    return [t['expr'] for p in dash['panels'] for t in p.get('targets', [])]


def test_promtool_check_rules():
    out = subprocess.run([promtool(), 'check', 'rules', RULES],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'SUCCESS: {len(rules())} rules found' in out.stdout


def test_promtool_test_rules():
    out = subprocess.run([promtool(), 'test', 'rules', TESTS],
                         capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'SUCCESS' in out.stdout


def test_test_file_is_generated_from_the_cases():
    with open(TESTS) as f:
        assert yaml.safe_load(f) == gen_alert_tests.build(), \
            'run tests/prometheus/gen_alert_tests.py'


def test_every_rule_is_tested_firing_and_not_firing():
    tested = {}
    for case in yaml.safe_load(open(TESTS))['tests']:
        for check in case['alert_rule_test']:
            tested.setdefault(check['alertname'], set()).add(
                bool(check['exp_alerts']))
    for rule in rules():
        assert tested.get(rule['alert']) == {True, False}, rule['alert']


def test_every_rule_has_severity_and_runbook_section():
    runbook = open(os.path.join(ROOT, 'doc', 'runbook.md')).read()
    anchors = {re.sub(r'[^a-z0-9 -]', '', h.lower()).replace(' ', '-')
               for h in re.findall(r'^#+ (.+)$', runbook, re.M)}
    for rule in rules():
        assert rule['labels']['severity'] in ('critical', 'warning')
        notes = rule['annotations']
        assert notes['summary'] and notes['description']
        anchor = notes['runbook_url'].split('#')[1]
        assert anchor in anchors, f'{rule["alert"]}: no section #{anchor}'


@pytest.mark.parametrize('source', ['rules', 'dashboard'])
def test_expressions_use_only_exported_metrics(source):
    exprs = [r['expr'] for r in rules()] if source == 'rules' \
        else dashboard_exprs()
    known = exported() | {'up', 'ALERTS'}
    used = set().union(*(names_in(e) for e in exprs))
    unknown = used - known
    assert not unknown, f'{source} uses unexported names: {unknown}'
    assert used & exported(), 'no daemon metric found: parser broken?'


def test_names_parser_finds_unknown_names():
    assert names_in('rate(lvmcoord_nope_total{a="b"}[5m]) > 0') == \
        {'lvmcoord_nope_total'}


def test_dashboard_shape():
    dash = json.load(open(DASHBOARD))
    assert dash['uid'] and dash['schemaVersion'] >= 30
    variables = {v['name']: v for v in dash['templating']['list']}
    assert variables['datasource']['type'] == 'datasource'
    ids = [p['id'] for p in dash['panels']]
    assert len(ids) == len(set(ids))
    for panel in dash['panels']:
        if panel['type'] == 'row':
            continue
        assert panel['datasource']['uid'] == '${datasource}'
        assert panel['targets'] and panel['gridPos']['w'] > 0
    # Each family the daemon defines has a panel.
    families = {re.sub(r'_(total|created|bucket|sum|count)$', '', n)
                for n in exported()}
    shown = {re.sub(r'_(total|created|bucket|sum|count)$', '', n)
             for e in dashboard_exprs() for n in names_in(e)}
    assert families <= shown, families - shown
