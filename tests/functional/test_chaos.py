"""A short fixed-seed chaos run (about 3.5 minutes): every fault kind once,
every host under its SIMULATED watchdog, and every invariant of
coordinator.sandbox.chaos must hold (see doc/chaos.md)."""
import pytest

from coordinator.sandbox.chaos import faults
from coordinator.sandbox.chaos import report
from coordinator.sandbox.chaos import runner

# Part of `make test`; `make test-chaos` runs it alone.
pytestmark = pytest.mark.chaos

SEED = 8
DURATION = 120  # every kind runs once even if that takes longer


def test_short_chaos_run_finds_nothing(tmp_path):
    result = runner.run(SEED, DURATION, keep_dir=str(tmp_path))
    report.save(result, str(tmp_path / f'seed-{SEED}.json'))
    print(report.table(result))
    assert report.ok(result), (report.table(result) + '\n' +
                               report.details(result))
    assert sorted(result['faults_by_kind']) == sorted(faults.KINDS)
    assert result['watchdog'] == 'SIMULATED'
