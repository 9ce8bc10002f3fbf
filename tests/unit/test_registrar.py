"""The storage registrar: a new session's key is registered only once no
LVM command of an older session lives (it would write through the key)."""
import threading
import time

from coordinator.daemon import service
from coordinator.engine import inflight


class Storage:
    def __init__(self):
        self.registered = threading.Event()

    def register(self):
        self.registered.set()

    def repair(self, fresh):
        pass


class Session:
    id, ttl = 0x22, 10

    def silent_for(self):
        return 0.0


def test_no_new_key_while_an_older_sessions_command_lives():
    storage, stopping = Storage(), threading.Event()
    view = [inflight.View(1, {0x11})]      # session 0x11's lvcreate, D state
    reg = service._Registrar(storage, Session(), stopping, lambda: view[0])
    try:
        reg.allow(0x22)
        assert not storage.registered.wait(1.0)
        view[0] = inflight.View(1, {0x22})  # only our own session's now
        assert storage.registered.wait(30)
        deadline = time.monotonic() + 30
        while not reg.done(0x22):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stopping.set()
