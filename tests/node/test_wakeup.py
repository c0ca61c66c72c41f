"""Wake-ups between the node's polling loops."""

from __future__ import annotations

import threading
import time

from hipfuse.node.wakeup import Wakeup

# Long enough that a wait returning early can only be a wake-up or a stop.
LONG_S = 30.0


def test_wakeup_before_wait_returns_at_once() -> None:
    wake, stop = Wakeup(), threading.Event()
    wake.notify()

    started = time.monotonic()
    wake.wait(stop, LONG_S)

    assert time.monotonic() - started < LONG_S


def test_wakeup_from_another_thread_ends_the_wait() -> None:
    wake, stop = Wakeup(), threading.Event()
    timer = threading.Timer(0.05, wake.notify)
    timer.start()

    started = time.monotonic()
    wake.wait(stop, LONG_S)

    timer.join()
    assert time.monotonic() - started < LONG_S


def test_wakeup_is_used_once() -> None:
    wake, stop = Wakeup(), threading.Event()
    wake.notify()
    wake.wait(stop, LONG_S)

    started = time.monotonic()
    wake.wait(stop, 0.05)

    # Event.wait may round its deadline down by a little; nothing woke it.
    assert time.monotonic() - started >= 0.04


def test_wakeups_are_spaced() -> None:
    wake, stop = Wakeup(min_spacing_s=0.2), threading.Event()
    wake.notify()
    wake.wait(stop, LONG_S)
    first = time.monotonic()

    wake.notify()
    wake.wait(stop, LONG_S)

    assert time.monotonic() - first >= 0.15


def test_stop_skips_the_spacing() -> None:
    wake, stop = Wakeup(min_spacing_s=LONG_S), threading.Event()
    wake.notify()
    wake.wait(stop, LONG_S)
    stop.set()
    wake.notify()

    started = time.monotonic()
    wake.wait(stop, LONG_S)

    assert time.monotonic() - started < LONG_S
