"""The compile cache: each worker keeps the frontier's (inductor and triton), and each
candidate trains with its own copy of it.

`torch.compile` spends tens of seconds of a GPU candidate's wall compiling what the run's
earlier experiments compiled already; inductor and triton keep what they compiled in a
folder (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) and look it up by the content of the
graph, the torch build and the device, so a warm folder turns a repeated compile into a
read. The store holds such folders, one per commit, for the run (one store per run folder,
shared by the workers that write their runs there):

- `give`: before the train phase, a *copy* of the cache of the commit the candidate was
  written against (its parent, a frontier of the run) into the candidate's scratch, never
  a shared writable folder; where this store has none, the newest frontier's it has. A
  repeat of a kept commit (noise, confirmation, final re-measure) gets that commit's own
  cache or none, never a later one's; a run of no parent (`verify`, `ablate`) and the run's
  first experiments start cold.
- `keep`: after the train phase, before the eval phase starts, the candidate's folder
  leaves its scratch for the store under the candidate's commit. Only a later spec naming
  that commit as its parent (the orchestrator kept it) makes it a frontier's; the caches of
  candidates that were never kept are given to nobody and the oldest are removed (never
  the run's first frontier's, the baseline's, or the newest frontier's: the final
  re-measure compares those two).

Trust: a kept candidate's cache is its code's output: the compiled modules in it run in
later train phases, in the same cage as any candidate, and can change how they train,
never how they are scored. The eval phase gets its own empty folder (its model server
compiles from scratch), the cache has left the scratch before the eval phase starts, and
no scorer reads it. A folder holding anything but plain files and folders, or over
MAX_BYTES, is not kept.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = "compile-cache"  # in the train phase's scratch
EVAL_CACHE_DIR = "tmp/eval-compile-cache"  # the eval phase's own, in its scratch
STORE_DIR = ".compile-cache"  # in the run's folder
LATEST = "LATEST"  # the newest commit whose cache was given as a parent's
FIRST = "FIRST"  # the first one (the baseline)
MAX_BYTES = 4 * 2**30
KEEP = 12  # candidates' caches kept until a spec names them a parent (or they age out)


def env(scratch: str, phase: str) -> dict[str, str]:
    """Where a phase's inductor and triton keep what they compile, its scratch as the phase
    sees it: the train phase the copy `give` made, the eval phase an empty one of its own."""
    folder = f"{scratch}/{CACHE_DIR if phase == 'train' else EVAL_CACHE_DIR}"
    return {"TORCHINDUCTOR_CACHE_DIR": folder, "TRITON_CACHE_DIR": f"{folder}/triton"}


@dataclass(frozen=True)
class Given:
    """What `give` copied: whose cache (a commit, "" when none), its size and the copy's
    seconds."""

    commit: str
    mb: float
    seconds: float


class CacheStore:
    """The compile caches of one run, one folder per commit (see the module docstring)."""

    def __init__(self, root: Path, writable_by_all: bool = False):
        """writable_by_all: the copies' folders and files open to every user, for a phase
        that runs as another user (the docker runner's)."""
        self.root = Path(root)
        self.writable_by_all = writable_by_all

    def give(self, parent: str, commit: str, dest: Path) -> Given:
        """Copy the cache of `parent` (for a candidate, else the newest frontier's) into
        dest, made empty: see the module docstring."""
        start = time.monotonic()
        shutil.rmtree(dest, ignore_errors=True)
        choices = [parent] + [self._read(LATEST)] * (commit != parent)
        for name in dict.fromkeys(choices if parent else []):
            source = self.root / name
            if not name or not source.is_dir():
                continue
            try:
                size = self._copy(source, dest)
            except OSError:  # removed meanwhile, or unreadable: the next, or none
                shutil.rmtree(dest, ignore_errors=True)
                continue
            if name == parent:
                self._mark_latest(name)
            return Given(name, size / 2**20, time.monotonic() - start)
        self._open(dest, mkdir=True)
        return Given("", 0.0, time.monotonic() - start)

    def keep(self, commit: str, source: Path) -> str:
        """Move a train phase's cache out of its scratch into the store as `commit`'s;
        "" when kept, else why not (the folder is removed either way)."""
        if not source.is_dir():
            return "no cache folder"
        if not any(True for _ in source.rglob("*")):  # the store is not even made
            shutil.rmtree(source, ignore_errors=True)
            return "it is empty (nothing was compiled)"
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".new-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(source, staged)  # the run folder's file system: instant
        except OSError:
            shutil.copytree(source, staged, symlinks=True)
            shutil.rmtree(source, ignore_errors=True)
        why = _refused(staged)
        if not why:
            try:
                os.rename(staged, self.root / commit)
                os.utime(self.root / commit)  # its age, for _evict
            except OSError:
                why = "this commit's cache is kept already"
        shutil.rmtree(staged, ignore_errors=True)
        if not why:
            self._evict()
        return why

    def _copy(self, source: Path, dest: Path) -> int:
        """A private copy (never links into the store); its size in bytes."""
        shutil.copytree(source, dest, copy_function=shutil.copyfile)
        self._open(dest)
        return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    def _open(self, dest: Path, mkdir: bool = False) -> None:
        if mkdir:
            dest.mkdir(parents=True, exist_ok=True)
        if not self.writable_by_all:
            return
        for folder, _, files in os.walk(dest):
            os.chmod(folder, 0o777)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666)

    def _read(self, name: str) -> str:
        try:
            return (self.root / name).read_text().strip()
        except OSError:
            return ""

    def _mark_latest(self, commit: str) -> None:
        for name in (LATEST, FIRST) if not self._read(FIRST) else (LATEST,):
            tmp = self.root / f".{name}-{uuid.uuid4().hex[:12]}"
            tmp.write_text(commit)
            os.replace(tmp, self.root / name)

    def _evict(self) -> None:
        """Keep the KEEP newest caches and the first and newest frontiers'; remove the rest."""
        spare = {self._read(LATEST), self._read(FIRST)}
        caches = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        caches.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in caches[KEEP:]:
            if old.name not in spare:
                shutil.rmtree(old, ignore_errors=True)


def _refused(folder: Path) -> str:
    """Why a candidate's cache folder may not be kept ("" when it may)."""
    total, count, unreadable = 0, 0, []
    for root, dirs, files in os.walk(folder, onerror=unreadable.append):
        count += len(files)
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                return f"it holds {path.relative_to(folder)}, neither a plain file nor a folder"
        total += sum((Path(root) / name).stat().st_size for name in files)
        if total > MAX_BYTES:
            return f"it holds over {MAX_BYTES / 2**30:g} GiB"
    if unreadable:
        return f"a folder in it cannot be read: {unreadable[0]}"
    return "" if count else "it is empty (nothing was compiled)"
