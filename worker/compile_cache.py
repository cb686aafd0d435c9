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
- `keep`: after the train phase, before the eval phase starts, the candidate's folder is
  copied into the store under the candidate's commit (the worker's own copy of its plain
  files and folders, read without following a link) and removed from the scratch, with
  the eval phase's cache folder. Only a later spec naming
  that commit as its parent (the orchestrator kept it) makes it a frontier's; the caches of
  candidates that were never kept are given to nobody and the oldest are removed (never
  the run's first frontier's, the baseline's, or the newest frontier's: the final
  re-measure compares those two).

Trust: a kept candidate's cache is its code's output: the compiled modules in it run in
later train phases, in the same cage as any candidate, and can change how they train,
never how they are scored. The eval phase gets its own empty folder (its model server
compiles from scratch), the cache has left the scratch before the eval phase starts, and
no scorer reads it. A folder holding a link (symbolic or hard) or anything but plain files
and folders, nested over MAX_DEPTH, or over MAX_FILES or MAX_BYTES, is not kept.
"""

from __future__ import annotations

import os
import shutil
import stat
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
MAX_FILES = 100_000
MAX_DEPTH = 32
NOT_COMPILED = "it is empty (nothing was compiled)"
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
        """Copy a train phase's cache out of its scratch into the store as `commit`'s, then
        remove it from the scratch; "" when kept, else why not. The copy is the worker's
        own: its plain files and folders only, read without following a link."""
        try:
            why = self._keep(commit, source)
        except Exception as exc:  # noqa: BLE001 - the candidate's folder: refused, not raised
            why = f"it cannot be read: {exc}"
        remove_tree(source)
        return why

    def _keep(self, commit: str, source: Path) -> str:
        if not stat.S_ISDIR(os.lstat(source).st_mode):
            return "it is not a folder"
        if (self.root / commit).is_dir():
            return "this commit's cache is kept already"
        if not any(files for _, _, files in os.walk(source)):  # the store is not even made
            return NOT_COMPILED
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".new-{uuid.uuid4().hex[:12]}"
        try:
            why = _take(source, staged)
            if not why:
                try:
                    os.rename(staged, self.root / commit)
                except OSError:  # another worker kept it first
                    why = "this commit's cache is kept already"
        finally:
            remove_tree(staged)
        if not why:
            self._evict()
        return why

    def _copy(self, source: Path, dest: Path) -> int:
        """A private copy (never links into the store); its size in bytes."""
        size = 0

        def copy(src: str, dst: str) -> None:
            nonlocal size
            shutil.copyfile(src, dst)
            size += os.path.getsize(dst)

        shutil.copytree(source, dest, copy_function=copy)
        self._open(dest)
        return size

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
        """`commit` was named a parent: the newest frontier's unless a newer cache was (a
        final re-measure of the baseline, a late candidate of an older frontier); the
        first such commit is the baseline's."""
        try:
            latest = self._read(LATEST)
            if latest and _age(self.root / latest) > _age(self.root / commit):
                return
            for name in (LATEST, FIRST) if not self._read(FIRST) else (LATEST,):
                tmp = self.root / f".{name}-{uuid.uuid4().hex[:12]}"
                tmp.write_text(commit)
                os.replace(tmp, self.root / name)
        except OSError:
            pass

    def _evict(self) -> None:
        """Keep the KEEP newest caches and the first and newest frontiers'; remove the rest."""
        spare = {self._read(LATEST), self._read(FIRST)}
        caches = []
        for path in self.root.iterdir():
            try:
                if path.is_dir() and not path.name.startswith("."):
                    caches.append((path.stat().st_mtime, path))
            except OSError:  # removed meanwhile by another worker's eviction
                continue
        caches.sort(reverse=True)
        for _, old in caches[KEEP:]:
            if old.name not in spare:
                shutil.rmtree(old, ignore_errors=True)


def _age(folder: Path) -> float:
    """When a cache was kept (0 when gone)."""
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


def _take(source: Path, dest: Path) -> str:
    """Copy the plain files and folders under `source` into dest (made here), reading
    nothing through a link; "" when done, else why it is not kept (a link, a hardlinked
    file, anything else, too deep, too many files or too many bytes: dest is left half)."""
    total = count = 0
    todo = [(source, dest, 0)]
    while todo:
        here, there, depth = todo.pop()
        if depth > MAX_DEPTH:
            return f"it nests folders over {MAX_DEPTH} deep"
        os.mkdir(there)
        with os.scandir(here) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                name = Path(entry.path).relative_to(source)
                if stat.S_ISDIR(info.st_mode):
                    todo.append((Path(entry.path), there / entry.name, depth + 1))
                elif not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                    return f"it holds {name}, not a plain file or folder (or a hard link)"
                else:
                    count, total = count + 1, total + info.st_size
                    if count > MAX_FILES or total > MAX_BYTES:
                        return f"it holds over {MAX_FILES} files or {MAX_BYTES / 2**30:g} GiB"
                    _copy_file(entry.path, there / entry.name)
    return "" if count else NOT_COMPILED


def _copy_file(path: str, dest: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as src, open(dest, "wb") as out:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise OSError(f"{path} is not a plain file")
        shutil.copyfileobj(src, out)


def remove_tree(folder: Path) -> None:
    """Remove a folder (a link: only the link) whatever a candidate left in it: folders it
    made unreadable are opened again; one nested too deep to remove is left, not raised."""
    try:
        if folder.is_symlink() or folder.is_file():
            folder.unlink(missing_ok=True)
            return
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                try:
                    os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
                except (OSError, NotImplementedError):
                    pass
        shutil.rmtree(folder, ignore_errors=True)
    except (OSError, RecursionError):
        pass
