"""How a run is told to stop: Ctrl-C (SIGINT), `kill` or `timeout` (SIGTERM), a closed
terminal (SIGHUP). All three take the same clean path: the loop cancels what runs, the
summary is written, the embedded Redis and local workers stop, the state says stopped and
why, and the process exits 128 + the signal's number (130, 143, 129), as shells expect.

`Stopped` is a KeyboardInterrupt, so every place that already ends cleanly on Ctrl-C ends
cleanly on the others too. A signal that arrives while a keep moves the branch and writes
its row waits until both are done (`deferred`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def why(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


def stopped(exc: KeyboardInterrupt) -> Stopped:
    """A plain KeyboardInterrupt (Python's own SIGINT handler) as the Stopped it means."""
    return exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)


def _raise(signum: int, _frame: Any) -> None:
    raise Stopped(signum)


@contextmanager
def on_signals() -> Iterator[None]:
    """For the block: each of SIGNALS raises Stopped (the previous handlers come back)."""
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold every stop signal until the block is done, then raise Stopped for the first."""
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _f: caught.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            raise Stopped(caught[0])
