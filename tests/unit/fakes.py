"""Fakes several unit test modules share."""
import contextlib


class NoGuard:
    """devguard.DeviceGuard that lets everything through."""

    @contextlib.contextmanager
    def command(self, vg, lv, what):
        yield None

    def verify(self, vg, lv, what):
        return None

    def check_making(self, vg, lv, what):
        return None

    def absent(self, vg, lv, what):
        return None
