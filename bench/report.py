"""The bench report: a compact table for people, JSON for machines."""
import json
import math
import textwrap


def verdict(ok):
    """'PASS', 'MISS' or '' (no target)."""
    if ok is None:
        return ''
    return 'PASS' if ok else 'MISS'


def fmt_ms(seconds):
    """Seconds as a short millisecond figure."""
    if seconds is None or math.isnan(seconds):
        return 'n/a'
    ms = seconds * 1e3
    return f'{ms:.1f} ms' if ms < 100 else f'{ms:.0f} ms'


def fmt_summary(summary):
    """'p50 .., p99 .. (n=..)' of a stats.Summary."""
    return (f'p50 {fmt_ms(summary.median)}, p99 {fmt_ms(summary.p99)} '
            f'(n={summary.n})')


class Report:
    """Rows of (figure, target, verdict), notes, and a JSON document."""

    def __init__(self):
        self.rows = []
        self.notes = []
        self.data = {}

    def section(self, title):
        """Start a group of rows."""
        self.rows.append((title, None, None, None))

    def row(self, label, figure, target='', ok=None):
        """One measured figure with its target and PASS/MISS."""
        self.rows.append((label, figure, target, verdict(ok)))
        print(f'  {label}: {figure}'
              + (f'   [target {target}: {verdict(ok)}]' if target else ''),
              flush=True)

    def note(self, text):
        """A line printed under the table."""
        self.notes.append(text)

    def table(self):
        """The whole table as text: label, verdict, target, figure."""
        rows = [r for r in self.rows if r[1] is not None]
        width = max((len(r[0]) for r in rows), default=0)
        twidth = max((len(r[2]) for r in rows), default=0)
        lines = []
        for label, figure, target, result in self.rows:
            if figure is None:
                lines.append(label)
                continue
            lines.append(f'  {label:<{width}}  {result:<4}  '
                         f'{target:<{twidth}}  {figure}')
        for note in self.notes:
            lines += textwrap.wrap(note, 79, initial_indent='* ',
                                   subsequent_indent='  ')
        return '\n'.join(lines)

    def misses(self):
        """Labels of rows that missed their target."""
        return [r[0] for r in self.rows if r[3] == 'MISS']

    def write_json(self, path):
        """Write the figures (and verdicts) to ``path``."""
        doc = dict(self.data, verdicts={r[0]: r[3] for r in self.rows
                                        if r[3]}, notes=self.notes)
        with open(path, 'w') as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write('\n')
