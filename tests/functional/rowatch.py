"""ROWatch: whether a fenced loop device was ever made writable again."""
import os
import threading
import time


class ROWatch:
    """Whether a fenced loop device (read-only) was ever made writable
    again."""

    def __init__(self, device_path):
        self.link = device_path
        self.loop = os.path.realpath(device_path)
        self.path = f'/sys/block/{os.path.basename(self.loop)}/ro'
        self.fenced = threading.Event()
        self.unfenced = threading.Event()
        # When each first happened (time.monotonic()).
        self.fenced_at = self.unfenced_at = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                with open(self.path) as f:
                    ro = f.read().strip() == '1'
            except OSError:
                ro = None
            now = time.monotonic()
            if ro and not self.fenced.is_set():
                self.fenced_at = now
                self.fenced.set()
            elif ro is False and self.fenced.is_set() and \
                    not self.unfenced.is_set() and \
                    os.path.realpath(self.link) == self.loop:
                # Still our device (a retired one's link goes before its
                # minor is freed, and read-only no more).
                self.unfenced_at = now
                self.unfenced.set()
            time.sleep(0.005)

    def close(self):
        self.stop.set()
        self.thread.join()
