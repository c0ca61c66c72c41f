"""Wake-ups between the node's stages, so work moves on without waiting a poll interval.

The storage SCP wakes the assembler when an instance is stored, the assembler
wakes the worker when a study is complete, and the worker wakes the senders
when results are queued. Each loop still polls every interval. The job store
is the only hand-over between stages, so a lost wake-up delays work by at
most one interval and loses none.
"""

from __future__ import annotations

import threading
import time


class Wakeup:
    """A wake-up signal for one polling loop.

    Parameters
    ----------
    min_spacing_s
        Minimum seconds between two runs that a wake-up starts. The assembler
        uses it so that a study arriving at hundreds of instances per second
        is not classified again after every instance.
    """

    def __init__(self, min_spacing_s: float = 0.0) -> None:
        self.min_spacing_s = min_spacing_s
        self._event = threading.Event()
        self._last_wake = float("-inf")

    def notify(self) -> None:
        """Ask the loop to run now (or after ``min_spacing_s``)."""
        self._event.set()

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        """Return after ``timeout_s``, on a wake-up, or when ``stop`` is set.

        A wake-up that came while the loop was busy returns at once.
        """
        if self._event.wait(timeout_s) and not stop.is_set():
            spacing = self._last_wake + self.min_spacing_s - time.monotonic()
            if spacing > 0:
                stop.wait(spacing)
            self._last_wake = time.monotonic()
        # Cleared before the loop runs again: a wake-up during that run is kept.
        self._event.clear()
