"""A worker's two scratch slots: the next job's train phase starts during this job's eval.

The train process's start (the interpreter, `import torch`, the harness, the device) takes
seconds that are no candidate's. Within one job it is paid before the wall (the runner's
go), but still on the job's path. A worker that runs its jobs in its own process
(worker/serving.py) keeps its runner between them, and the runner starts the *next* job's
train process while the current one evaluates, so the next job finds it ready.

That process's cage (Landlock rules, docker mounts) names its scratch folder and its
`train.py` before any candidate is known, so it waits in a folder of its own: a slot,
`workspace/runs/<tag>/.slots/<worker>/{a,b}/`. One slot holds the current job's scratch
and candidate, the other the waiting process's. What it waits with holds nothing of a job:
the candidate's file is empty, and its seed and grace, like its start and deadline, come on
its go line. A slot is emptied when its job ends (weights included), and a slot a dead
worker left is removed by the next worker to start (`sweep`).

Trust: the waiting process runs the harness only, in the same cage as every train phase;
the current job's eval phase can neither write its slot nor signal it (its own cage).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.compile_cache import remove_tree

SLOTS_DIR = ".slots"  # in a run folder, one folder per worker
NAMES = ("a", "b")


@dataclass
class Spare:
    """A train process waiting in a slot for the next job's go."""

    slot: Path
    handle: Any  # the runner's handle (a Popen, a container)
    spawned_at: float  # epoch s


class Slots:
    """A worker's slots and the spare train process waiting in one of them."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root  # runs/<tag>/.slots/<worker>: set for each job
        self.spare: Spare | None = None

    def take(self, waiting: Callable[[Any], bool], discard: Callable[[Any], None]) -> Spare | None:
        """The spare, if it still waits (one that died is discarded: the job starts its own)."""
        spare, self.spare = self.spare, None
        if spare is not None and not waiting(spare.handle):
            discard(spare.handle)
            remove_tree(spare.slot)
            return None
        return spare

    def free(self, busy: Path | None = None) -> Path:
        """An empty slot, not `busy` (the one the current job runs in)."""
        if self.root is None:
            raise ValueError("no slot folder: set Slots.root first")
        name = next(n for n in NAMES if busy is None or busy.name != n)
        slot = self.root / name
        prepare(slot)
        return slot

    def keep(self, slot: Path, handle: Any) -> None:
        self.spare = Spare(slot, handle, time.time())

    def close(self, discard: Callable[[Any], None]) -> None:
        """Discard the spare and empty its slot (the worker stops)."""
        spare, self.spare = self.spare, None
        if spare is not None:
            discard(spare.handle)
            remove_tree(spare.slot)


def prepare(workdir: Path) -> None:
    """A phase's folder from scratch: an empty scratch with its tmp/ (TMPDIR, compile
    caches) and an empty `train.py`, written only at the train phase's go."""
    remove_tree(workdir / "scratch")  # what a dead attempt or an earlier job left
    (workdir / "scratch" / "tmp").mkdir(parents=True)
    (workdir / "train.py").write_text("")


def sweep(runs_dir: Path, live: Iterable[str]) -> list[Path]:
    """Remove the slots of workers that are not live (a killed worker leaves its slot,
    weights included): what was removed."""
    alive = {folder_name(name) for name in live}
    removed = []
    for folder in sorted(Path(runs_dir).glob(f"*/{SLOTS_DIR}/*")):
        if folder.name not in alive and folder.is_dir() and not folder.is_symlink():
            remove_tree(folder)
            removed.append(folder)
    return removed


def folder_name(worker: str) -> str:
    """A worker's name as one path component."""
    return worker.replace(os.sep, "_") or "worker"
