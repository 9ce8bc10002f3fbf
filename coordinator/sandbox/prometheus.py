"""A real Prometheus (Debian's /usr/bin/prometheus) on 127.0.0.1 for
tests: scrapes given targets every second, evaluates given rules."""
import os
import re
import shutil
import subprocess
import tempfile
import time

import requests
import yaml

from coordinator.sandbox.etcd import free_port


def short_for(rules_text, duration='2s'):
    """The rules with every ``for:`` shortened to ``duration`` (the
    expressions untouched: the real file's)."""
    doc = yaml.safe_load(rules_text)
    for group in doc['groups']:
        group['interval'] = '1s'
        for rule in group['rules']:
            if 'for' in rule:
                rule['for'] = duration
    return yaml.safe_dump(doc, sort_keys=False)


class Prometheus:
    """Started by start(), stopped (and its files removed) by stop()."""

    def __init__(self, targets, rules_text, job='lvmcoord'):
        # targets: {instance label: 'host:port'}
        self.targets, self.rules_text, self.job = targets, rules_text, job
        self.proc = self.dir = None
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'

    def start(self, timeout=60):
        """Start it and wait until it answers."""
        binary = shutil.which('prometheus')
        assert binary, 'prometheus missing: apt-get install prometheus'
        self.dir = tempfile.mkdtemp(prefix='lvmcoord-prom-')
        rules = os.path.join(self.dir, 'rules.yml')
        with open(rules, 'w') as f:
            f.write(self.rules_text)
        conf = {'global': {'scrape_interval': '1s', 'scrape_timeout': '1s',
                           'evaluation_interval': '1s'},
                'rule_files': [rules],
                'scrape_configs': [{
                    'job_name': self.job,
                    'static_configs': [
                        {'targets': [addr], 'labels': {'instance': name}}
                        for name, addr in sorted(self.targets.items())]}]}
        path = os.path.join(self.dir, 'prometheus.yml')
        with open(path, 'w') as f:
            yaml.safe_dump(conf, f)
        self.log = open(os.path.join(self.dir, 'log'), 'wb')
        self.proc = subprocess.Popen(
            [binary, f'--config.file={path}',
             f'--storage.tsdb.path={os.path.join(self.dir, "data")}',
             f'--web.listen-address=127.0.0.1:{self.port}'],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if requests.get(f'{self.url}/-/ready', timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, 'prometheus not ready'
            time.sleep(0.2)

    def alerts(self):
        """[(alertname, state, labels)] of every active alert."""
        data = requests.get(f'{self.url}/api/v1/alerts',
                            timeout=5).json()['data']['alerts']
        return [(a['labels']['alertname'], a['state'], a['labels'])
                for a in data]

    def firing(self):
        """{(alertname, instance or member)} of firing alerts."""
        return {(name, labels.get('instance') or labels.get('member'))
                for name, state, labels in self.alerts()
                if state == 'firing'}

    def query(self, expr):
        """An instant query's result vector."""
        return requests.get(f'{self.url}/api/v1/query',
                            params={'query': expr},
                            timeout=5).json()['data']['result']

    def log_tail(self, size=3000):
        """The end of its log."""
        try:
            with open(os.path.join(self.dir, 'log'), 'rb') as f:
                return f.read()[-size:].decode(errors='replace')
        except OSError:
            return ''

    def stop(self):
        """Stop it, whatever state it is in, and remove its files."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self.dir:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def scraped_names(text):
    """Metric names in a /metrics page."""
    return set(re.findall(r'^([a-zA-Z_:][\w:]*)', text, re.M))
