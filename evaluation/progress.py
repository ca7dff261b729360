"""Progress lines with rate and ETA for long loops over images (evaluation, detection)."""

import time

from absl import logging


def format_duration(seconds):
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Logs ``<what>: done/total images (pct), rate images/s, ETA m:ss`` at most every ``every_secs``.

    ``total`` may be None (unknown): the line then has no percentage and no ETA.
    ``clock`` is injectable for tests.
    """

    def __init__(self, what, total=None, every_secs=10.0, clock=time.monotonic, log=logging.info):
        self.what = what
        self.total = total
        self.every_secs = float(every_secs)
        self.clock = clock
        self.log = log
        self.done = 0
        self.start = clock()
        self._last_report = self.start

    @property
    def rate(self):
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self):
        rate = self.rate
        if self.total:
            percent = 100.0 * self.done / self.total
            eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
            return f"{self.what}: {self.done}/{self.total} images ({percent:.0f}%), {rate:.1f} images/s, ETA {eta}"
        return f"{self.what}: {self.done} images, {rate:.1f} images/s"

    def update(self, count):
        self.done += int(count)
        now = self.clock()
        if now - self._last_report >= self.every_secs:
            self._last_report = now
            self.log("%s", self.line())

    def finish(self):
        elapsed = self.clock() - self.start
        self.log("%s", f"{self.what}: {self.done} images in {format_duration(elapsed)} ({self.rate:.1f} images/s)")
        return elapsed
