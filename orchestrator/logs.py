"""structlog setup: JSON lines in files and pipes, a readable console on a terminal.

One processor chain; `TeeJSON` writes every event to the run's JSON log file before the
console renderer, so the file is complete whatever the terminal shows.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog


class TeeJSON:
    """A processor that appends each event as one JSON line to a file."""

    def __init__(self) -> None:
        self.fh: TextIO | None = None

    def open(self, path: Path) -> None:
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.fh is not None:
            self.fh.write(json.dumps(event, default=str) + "\n")
            self.fh.flush()
        return event


tee = TeeJSON()

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text safe for a terminal: control characters shown as \\xNN. Log lines come from the
    candidate and descriptions from the LLM; an escape sequence in either must not reach
    the user's terminal as one (it could retitle, recolour or rewrite the screen)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def printable_values(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console only (the JSON file keeps the exact text): control characters in
    string values shown as \\xNN, since descriptions come from the LLM and errors from the
    candidate, and an escape sequence must not reach the terminal as one."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


class AboveBars:
    """The console log's stream on a terminal: each line is written above the live progress
    bars (the run's, harness.bars) instead of into the bar's line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        tqdm_std = sys.modules.get("tqdm.std")
        if tqdm_std is None:  # tqdm never loaded: no bar can be live
            return self.stream.write(text)
        with tqdm_std.tqdm.external_write_mode(file=self.stream):
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def configure(stream: TextIO | None = None, json_console: bool | None = None) -> None:
    """Configure structlog once; json_console None means: JSON unless stream is a terminal."""
    stream = stream or sys.stderr
    if json_console is None:
        json_console = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_console
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            tee,
            *([] if json_console else [printable_values]),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(
            AboveBars(stream) if stream.isatty() else stream  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=False,
    )


def get(name: str = "autoresearch") -> Any:
    return structlog.get_logger(name)
