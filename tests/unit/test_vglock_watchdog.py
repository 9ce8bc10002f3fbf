"""The watchdog covers the VG lock (issue 22 item 3): a host holding the
VG lock, or running a metadata command under it, keeps its watchdog armed,
and a command the kernel still runs is petted for only while the session
holding the lock is provably valid. Real processes stand for the LVM
commands (the kernel's word on whether one is alive is what counts)."""
import subprocess
import sys

import pytest

from coordinator.daemon import fence
from coordinator.engine import deadline
from coordinator.engine import inflight
from coordinator.lvm import executor
from tests.unit.test_fence import make


class FakeWatchdog:
    def __init__(self):
        self.armed = False
        self.pets = 0

    def pet(self):
        self.armed = True
        self.pets += 1

    def disarm(self):
        self.armed = False


@pytest.fixture
def registry(tmp_path):
    return inflight.Registry(str(tmp_path), 'test')


@pytest.fixture
def stuck():
    """A live process standing for an LVM command that cannot die."""
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(600)'])
    yield proc
    proc.kill()
    proc.wait()


def fencer(registry):
    dog = FakeWatchdog()
    f, _, w, _ = make(lvs=(), watchdog=dog, metadata=registry.view)
    return f, dog, w


def test_a_vg_lock_hold_arms_the_watchdog(registry):
    f, dog, w = fencer(registry)
    f.tick()
    assert not dog.armed  # nothing held, nothing active
    hold = registry.hold('vg', 'lvcreate vg/a', 7)
    f.tick()
    assert dog.armed
    hold.close()
    f.tick()
    assert not dog.armed


def test_no_pet_while_a_command_outlives_the_session_deadline(registry,
                                                              stuck):
    f, dog, w = fencer(registry)
    hold = registry.hold('vg', 'lvcreate vg/a', 7)
    hold.starting()
    hold.started(stuck.pid)
    f.tick()
    assert dog.armed
    pets = dog.pets
    # No keepalive for longer than the fencer's window (fraction x TTL):
    # the command is still alive, so the host must reset.
    w.now += 6
    f.tick()
    f.tick()
    assert dog.pets == pets and dog.armed
    # The worker gives up on it (its kill did not take): the hold is
    # released but the kernel still runs the command.
    hold.close()
    f.tick()
    assert dog.pets == pets and dog.armed


def test_no_pet_for_a_command_of_an_older_session(registry, stuck):
    f, dog, w = fencer(registry)
    hold = registry.hold('vg', 'lvcreate vg/a', 6)  # not the fencer's 7
    hold.started(stuck.pid)
    hold.close()
    f.tick()
    # A valid session, but not the one whose lock the command ran under.
    assert dog.pets == 0


def test_a_dead_command_lets_the_pets_resume(registry, stuck):
    f, dog, w = fencer(registry)
    hold = registry.hold('vg', 'lvcreate vg/a', 7)
    hold.started(stuck.pid)
    w.now += 6
    f.tick()
    assert dog.pets == 0
    stuck.kill()
    stuck.wait()
    # Gone per the kernel: a hold without a command is fenced (no command
    # starts past the deadline), like a host whose LVs are all fenced.
    f.tick()
    assert dog.pets > 0
    hold.close()
    assert registry.view().holds == 0


def test_a_pending_command_counts_as_running(registry):
    f, dog, w = fencer(registry)
    hold = registry.hold('vg', 'lvcreate vg/a', 7)
    hold.starting()
    w.now += 6
    f.tick()
    assert dog.pets == 0


def test_no_command_starts_past_the_fencer_deadline(tmp_path):
    now = {'last': 0.0}
    reg = inflight.Registry(str(tmp_path), 'test',
                            last_ok=lambda: now['last'], window=6.0)
    hold = reg.hold('vg', 'lvcreate vg/a', 7)
    marker = tmp_path / 'ran'
    with deadline.bound(lambda: float('inf'), track=hold):
        with pytest.raises(executor.DeadlinePassed):
            executor.run_process(['touch', str(marker)], None, 10)
    assert not marker.exists()
    assert reg.view().sessions == set()


def test_commands_are_recorded_while_they_run(tmp_path):
    import time
    reg = inflight.Registry(str(tmp_path), 'test',
                            last_ok=time.monotonic, window=6.0)
    hold = reg.hold('vg', 'lvcreate vg/a', 7)
    seen = []
    real = hold.started

    def started(pid):
        real(pid)
        seen.append(reg.view().sessions)
    hold.started = started
    with deadline.bound(lambda: time.monotonic() + 60, track=hold):
        rc, _, _ = executor.run_process(['sleep', '0.5'], None, 10)
    assert rc == 0 and seen == [{7}]
    assert reg.view().sessions == set() and reg.view().holds == 1
    hold.close()
    assert reg.view().holds == 0


def test_watchdog_not_armed_refuses_the_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(inflight, 'ARM_WAIT', 0.1)
    reg = inflight.Registry(str(tmp_path), 'test', armed=lambda: False)
    with pytest.raises(fence.errors.HostUnavailable):
        reg.hold('vg', 'lvcreate vg/a', 7)
    assert reg.view().holds == 0


def test_no_pet_for_a_command_whose_holder_is_gone(registry, stuck):
    f, dog, w = fencer(registry)
    hold = registry.hold('vg', 'lvcreate vg/a', 7)
    hold.started(stuck.pid)
    f.tick()
    pets = dog.pets
    # Its worker gave up on it (or died): the lock it ran under may be
    # dropped while the session is valid; the command still runs.
    hold.close()
    f.tick()
    assert dog.pets == pets and dog.armed
