"""Progress bars for the slow once-per-host steps of `autoresearch prepare`, on a terminal only.

stderr also carries the structured log, which is JSON whenever stderr is a file or a pipe (CI,
compose, `2> log`). A bar there would put carriage returns and block characters into those
lines, so a bar is drawn only when stderr is a terminal, where a person is watching: tqdm's
own rule for ``disable=None``. Everywhere else the callers get a silent stand-in, and tqdm is
not even imported (it costs about 60 ms, mostly in importlib.metadata). A missing tqdm also
means no bar rather than a failed prepare: an image built with a pinned package list may
lack it, and a bar is never worth stopping the data preparation for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    """The part of tqdm's interface that the harness uses."""

    total: float | None
    disable: bool  # True when nothing is drawn (tqdm's own attribute)

    def update(self, n: float = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def refresh(self) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Bar: ...

    def __exit__(self, *exc: object) -> Any: ...


class _Silent:
    """A bar that draws nothing: what callers get when no person is watching stderr."""

    disable = True

    def __init__(self, total: float | None) -> None:
        self.total = total

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def silent() -> Bar:
    """A bar that draws nothing, for a caller that needs one before it knows better."""
    return _Silent(None)


def on_terminal() -> bool:
    """Whether stderr is a terminal, the one place a bar is drawn."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def both_on_terminal() -> bool:
    """Whether stdout is a terminal too, as the `tokenizers` library's bars need.

    That library draws on stderr but ends each stage's bar with a newline on stdout: on a
    terminal the two meet on one screen and the newline ends the bar's line; with stdout in
    a pipe or file it would add blank lines to the command's output.
    """
    try:
        return on_terminal() and sys.stdout is not None and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def bar(desc: str, unit: str, total: float | None = None, **options: Any) -> Bar:
    """A tqdm bar on stderr when that is a terminal; otherwise a silent stand-in.

    ``options`` go to tqdm as they are (``unit_scale``, ``unit_divisor``, ...).
    """
    if not on_terminal():
        return _Silent(total)
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent(total)
    # disable=None is tqdm's own form of the same rule: draw only on a terminal.
    return tqdm(
        desc=desc,
        unit=unit,
        total=total,
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        **options,
    )


def above_bars(emit: Callable[..., None]) -> Callable[..., None]:
    """Wrap a log callback so that its line is written above the live bars, not into them.

    The log and the bars share stderr: a line written while a bar is drawn would land on the
    bar's line. tqdm's external_write_mode clears the bars, lets the line through and draws
    them again below it. While tqdm is not loaded no bar can be live: nothing to clear.
    """

    def wrapped(event: str, **fields: Any) -> None:
        tqdm_std = sys.modules.get("tqdm.std")
        if tqdm_std is None:
            emit(event, **fields)
            return
        with tqdm_std.tqdm.external_write_mode(file=sys.stderr):
            emit(event, **fields)

    return wrapped
