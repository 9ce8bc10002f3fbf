"""The fencer's beat, as the ops worker reads it before it grants: only a
beat of this daemon's own fencer, done with its reconcile at start, lets
it serve (issue 22 item 6). Real beat file, no daemon."""
import json
import time
import types

import pytest

from coordinator.daemon.host import HostContext


@pytest.fixture
def ctx(tmp_path):
    # Only what the beat needs of a HostContext.
    ctx = HostContext.__new__(HostContext)
    ctx.fencer_beat = str(tmp_path / 'fencer-sandbox.beat')
    ctx.conf = types.SimpleNamespace(fence=types.SimpleNamespace(
        interval=0.5))
    ctx.history = types.SimpleNamespace(rewound=lambda: None)
    return ctx


def test_a_fresh_beat_of_an_earlier_run_serves_nothing(ctx):
    # What the previous process left a moment before a quick restart.
    with open(ctx.fencer_beat, 'w') as f:
        json.dump({'at': time.monotonic(), 'state': 'ok',
                   'daemon': 'boot:1:2', 'fencer': 'boot:3:4'}, f)
    assert 'not reconciled since' in ctx.fencer_problem()
    # The same, written by a release whose beat named no run.
    with open(ctx.fencer_beat, 'w') as f:
        json.dump({'at': time.monotonic(), 'state': 'ok'}, f)
    assert 'not reconciled since' in ctx.fencer_problem()


def test_own_fencer_serves_only_once_reconciled(ctx):
    from coordinator.daemon import incarnation
    ctx.beat_fencer('starting')
    assert 'not reconciled' in ctx.fencer_problem()
    ctx.beat_fencer('ok')
    assert ctx.fencer_problem() is None
    assert ctx.fencer_id() == incarnation.own()


def test_incarnation_is_no_clock():
    from coordinator.daemon import incarnation
    me = incarnation.own()
    boot, pid, ticks = me.rsplit(':', 2)
    assert int(pid) > 0 and int(ticks) >= 0 and boot
    assert incarnation.of(0x7ffffff0) is None    # no such process
