"""Runners execute one candidate: a train phase, then an eval phase, each a fresh process.

`Runner` holds what every runner shares (the workdir layout, the phase sequence, the
classification of outcomes); a subclass only says how to run one phase under a hard wall.
The process runner (worker/process_runner.py) and the docker runner drop into it.
"""

from __future__ import annotations

import hmac
import json
import secrets
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import codes
from harness import manifest as mf
from worker.compile_cache import (
    CACHE_DIR,
    EVAL_CACHE_DIR,
    NOT_COMPILED,
    CacheStore,
    Given,
    remove_tree,
)
from worker.slots import Slots, prepare
from worker.vocab import Outcome

# emit(phase, line): one output line of a phase, as it comes.
Emit = Callable[[str, str], None]

HARNESS_ROOT = Path(__file__).resolve().parent.parent  # the folder holding harness/
HARNESS_DIR = HARNESS_ROOT / "harness"
LOG_TAIL_LINES = 60
# What the runtime needs to find its libraries; nothing secret, and no shared cache folder
# (a candidate gets private ones in its scratch).
PASSTHROUGH_ENV = ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "OMP_NUM_THREADS", "LANG", "LC_ALL")


class InfraError(RuntimeError):
    """The machine failed, not the candidate: raised so RQ retries the job on a worker."""


# How long a prestarted train phase may take to say it is ready (interpreter, torch, the
# device; a cold container on a slow disk): past it, or dead before it, the host failed.
READY_S = 120.0


# What the job's log says when its train process was started during the last job's eval.
EARLY_LINE = "the train process was started during the previous job's eval"


class Ready:
    """A waiting train phase's ready line (codes.READY_LINE) as its output pump sees it:
    `event` is set at the first such line (`seen`) or at the end of the output (not seen)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.seen = False


@dataclass
class PhaseOutcome:
    exit_code: int | None  # None when killed at the wall
    timed_out: bool
    seconds: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    signed: list[str] = field(default_factory=list)  # the scorer's "@result" lines
    over_memory: int = 0  # bytes resident when killed over the memory cap (process runner)


@dataclass
class Limits:
    """Resource limits of a candidate's process (or container)."""

    # Resident memory of a phase's processes (the process runner watches it every
    # MEMORY_POLL_S; an address-space cap would break a CUDA build's start) / the container's.
    memory_bytes: int | None = None
    file_bytes: int = 8 * 2**30  # largest file it may write (weights included)
    open_files: int = 4096
    log_bytes: int = 4 * 2**20  # output kept per phase; the rest is counted and dropped


class Runner(ABC):
    """Runs one spec in a workdir and returns result fields (without worker and gpu).

    The runner is the trusted side: it seals the harness files when it starts, and before
    and after each eval it checks them and the data the scorer reads (manifest checksums),
    so a score is vouched for from outside the cage. A mismatch is an InfraError naming the
    file, never a score.
    """

    name = "abstract"
    cage = "none"  # which cage the phases run in: a results.tsv column
    other_user = False  # the phases run as another user than the worker (its scratch too)

    def __init__(self, data_dir: Path, limits: Limits | None = None, gpu: int | None = None):
        self.data_dir = Path(data_dir)
        self.limits = limits or Limits()
        self.seal = mf.harness_files(HARNESS_DIR)
        self._prestarted: dict[str, Any] = {}  # phase -> handle from start_waiting
        self._spawned_at: dict[str, float] = {}  # phase -> when prestart started it (epoch s)
        self._went_at: dict[str, float] = {}  # phase -> when its go was sent (epoch s)
        self._handover: tuple[Path, str] | None = None  # the candidate's file and source
        self._spec: dict[str, Any] = {}
        self.ready_s = READY_S
        self.gpu = gpu
        # The eval phase signs its scores with this; it travels on the go line only (one
        # per run, made in run()).
        self.result_key = ""
        # Whether this run's eval phase also scores the test split (the spec's test_split):
        # only then can it read test/ (a mount, a cage rule) or the worker check it.
        self.test_split = False
        # The run's compile caches (worker/compile_cache.py), when the worker keeps them.
        self.caches: CacheStore | None = None
        self._given = Given("", 0.0, 0.0)
        # The worker's scratch slots (worker/slots.py), where the worker keeps this runner
        # between jobs: the phases run in a slot, and the next job's train process starts
        # in the other during this job's eval. None: in the experiment folder, each job's.
        self.slots: Slots | None = None

    @abstractmethod
    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        """Run `python -m harness.entry <phase> ...` and kill it at wall_s, whatever happens."""

    def hardware(self) -> str:
        """The hardware signature this runner's phases report (harness/hardware.py), learnt
        the way they run, before any job: the worker refuses a job pinned to another."""
        raise NotImplementedError(f"the {self.name} runner has no hardware probe")

    def start_waiting(self, phase: str, argv: list[str], workdir: Path) -> Any:
        """Start a phase early, waiting (`--wait`) for run_phase's go: a handle for
        run_phase and discard, or None where a runner cannot."""
        return None

    def discard(self, handle: Any) -> None:
        """Kill and reap a started phase that will not be used."""
        raise NotImplementedError("a runner whose start_waiting returns handles discards them")

    def prestart(self, phase: str, argv: list[str], workdir: Path) -> bool:
        self._spawned_at[phase] = time.time()
        handle = self.start_waiting(phase, argv, workdir)
        if handle is not None:
            self._prestarted[phase] = handle
        return handle is not None

    def discard_prestarted(self) -> None:
        """Kill whatever prestart started and run_phase did not use."""
        for handle in self._prestarted.values():
            self.discard(handle)
        self._prestarted.clear()

    def go_line(self, phase: str) -> bytes:
        """A waiting phase's go. The eval's carries the result key. The train's hands the
        candidate over (its file written only now) and carries the phase's start and its
        training deadline, both taken now (the candidate's wall starts here), then its seed
        and grace: a train process can wait before its job is known (worker/slots.py)."""
        self._went_at[phase] = now = time.time()
        if phase == "eval":
            return f"go {self.result_key}\n".encode()
        if self._handover is not None:
            path, source = self._handover
            path.write_text(source)  # in place: the inode a mount or a cage rule names
        budget = self._spec["budget"]
        deadline = now + budget["train_wall_s"] - budget["save_margin_s"]
        seed, grace = self._spec["seed"], budget["return_grace_s"]
        return f"go {now:.3f} {deadline:.3f} {seed} {grace}\n".encode()

    @staticmethod
    def readiness(phase: str, waiting: bool) -> Ready | None:
        """What to watch in a phase's output before its go: a waiting train phase's ready."""
        return Ready() if waiting and phase == "train" else None

    def wait_ready(self, phase: str, ready: Ready, tail: Iterable[str]) -> None:
        """Until the phase says it is ready. One that never does (too slow, or dead first)
        is the host's failure, not the candidate's (its code was not handed over)."""
        if not ready.event.wait(self.ready_s):
            why = f"not ready within {self.ready_s:g}s (interpreter, torch, device)"
        elif not ready.seen:
            why = "ended before it was ready: " + " | ".join(list(tail)[-5:])
        else:
            return
        raise InfraError(f"the {phase} phase {why}")

    def run(self, spec: dict[str, Any], folder: Path, emit: Emit) -> dict[str, Any]:
        """Run the spec; its phases in `folder` (train.py, scratch/), or with slots in a
        slot of the worker's, the train process maybe started during the last job's eval."""
        self._spec = spec
        self.result_key = secrets.token_hex(16)
        self.test_split = bool(spec.get("test_split"))
        if self.test_split:
            try:
                mf.test_split(mf.load_manifest(self.data_dir), self.data_dir)
            except (mf.NoTestSplit, OSError) as exc:
                raise InfraError(str(exc)) from None
        # The same for every job: a train process can wait before its job is known.
        train_argv = self._argv("train", ["--wait"])
        workdir = self._workdir(Path(folder), emit)
        try:
            scratch = workdir / "scratch"
            if self.caches is not None:  # a copy of the frontier's compile cache (or none)
                self._given = self.caches.give(spec["parent"], spec["commit"], scratch / CACHE_DIR)
            # Empty until the train phase's go (go_line): a mount or a cage rule names it,
            # but no phase can read, let alone run, the candidate's code before its wall.
            self._handover = (workdir / "train.py", spec["source"])
            started = time.time()
            # The eval process imports torch while training runs, then waits for its go,
            # which carries the result key: it cannot be started any other way.
            eval_argv = self._argv("eval", ["--wait", "--seed", str(spec["seed"])])
            eval_argv += ["--test"] * self.test_split
            for phase, argv in (("train", train_argv), ("eval", eval_argv)):
                if phase not in self._prestarted and not self.prestart(phase, argv, workdir):
                    why = f"the {self.name} runner cannot start the {phase} phase waiting"
                    raise InfraError(why)
            return self._run(spec, workdir, emit, started, train_argv, eval_argv)
        finally:
            self.discard_prestarted()
            if self.slots is not None:
                remove_tree(workdir)  # its weights and candidate: the job is over

    def _workdir(self, folder: Path, emit: Emit) -> Path:
        """Where this job's phases run: the slot of the spare train process when it still
        waits (taken as this job's), else an empty slot, or the experiment folder."""
        if self.slots is None:
            prepare(folder)  # a retried job finds what a dead attempt left: start empty
            return folder
        spare = self.slots.take(self.waiting, self.discard)
        if spare is None:
            return self.slots.free()
        self._prestarted["train"] = spare.handle
        self._spawned_at["train"] = spare.spawned_at
        age = time.time() - spare.spawned_at
        emit("train", f"[runner] {EARLY_LINE} ({age:.1f} s ago)")
        return spare.slot

    def _start_spare(self, workdir: Path, train_argv: list[str], emit: Emit) -> None:
        """The next job's train process, started now in the other slot (this job's eval
        is about to run): the next job finds it ready. One that cannot start is a line in
        this job's log; the next job starts its own."""
        if self.slots is None or self.slots.root is None:
            return
        slot = self.slots.free(busy=workdir)
        try:
            handle = self.start_waiting("train", train_argv, slot)
        except InfraError as exc:
            emit("train", f"[runner] the next train phase did not start early: {exc}")
            return
        if handle is not None:
            self.slots.keep(slot, handle)

    def waiting(self, handle: Any) -> bool:
        """Whether a started phase still runs (waits for its go)."""
        return True

    def close(self) -> None:
        """Discard the spare train process (the worker stops)."""
        if self.slots is not None:
            self.slots.close(self.discard)

    def _run(
        self,
        spec: dict[str, Any],
        workdir: Path,
        emit: Emit,
        started: float,
        train_argv: list[str],
        eval_argv: list[str],
    ) -> dict[str, Any]:
        scratch = workdir / "scratch"
        budget = spec["budget"]
        train = self.run_phase("train", train_argv, workdir, budget["train_wall_s"], emit)
        # The train process's start before its go (interpreter, torch, device), as far as
        # this job waited for it: not its wall, and near 0 when the last job's eval hid it.
        prestart_s = self._went_at["train"] - max(self._spawned_at["train"], started)
        self._start_spare(workdir, train_argv, emit)
        fields: dict[str, Any] = {"train_phase_s": train.seconds, "prestart_s": prestart_s}
        status, error = self._classify(train, "train", budget["train_wall_s"])
        if status == Outcome.OK and not (scratch / "train.json").is_file():
            status, error = Outcome.CRASH, "train phase exited without saving weights"
        fields.update(self._keep_cache(spec, scratch, status == Outcome.OK, emit))
        if status == Outcome.OK:
            self.vouch()  # the train phase is over: nothing of it runs any more
            # Scoring the test split too scores twice as many rows: twice the wall.
            eval_wall = budget["eval_wall_s"] * (2 if self.test_split else 1)
            ev = self.run_phase("eval", eval_argv, workdir, eval_wall, emit)
            fields["eval_phase_s"] = ev.seconds
            status, error = self._classify(ev, "eval", eval_wall)
            tail = list(train.tail)[-10:] + list(ev.tail)
            if status == Outcome.OK:
                scores, why = self._verified(ev.signed)
                if scores is None:
                    status, error = Outcome.CRASH, why
                else:
                    self.vouch()
                    fields.update(scores, harness_sha256=self.harness_sha256())
        else:
            tail = list(train.tail)
            stats = scratch / "train.json"
            if stats.is_file():
                fields.update(_pick(json.loads(stats.read_text())))
        fields.update(status=status, error=error, total_s=time.time() - started, cage=self.cage)
        fields["log_tail"] = "\n".join(tail)
        return fields

    def _keep_cache(
        self, spec: dict[str, Any], scratch: Path, ok: bool, emit: Emit
    ) -> dict[str, Any]:
        """The train phase's compile cache out of its scratch before the eval phase starts:
        into the store as its commit's when it trained to the end, else removed. The copy in
        and the move out are `cache_s` (outside the wall), the copy's size `cache_mb`."""
        start = time.monotonic()
        folder = scratch / CACHE_DIR
        if self.caches is not None and ok and spec["parent"]:
            why = self.caches.keep(spec["commit"], folder)  # removes it from the scratch
            if why and not why.startswith(NOT_COMPILED):
                emit("train", f"[runner] its compile cache is not kept: {why}")
        else:
            remove_tree(folder)
        remove_tree(scratch / EVAL_CACHE_DIR)  # the eval phase's starts empty
        seconds = self._given.seconds + time.monotonic() - start
        return {"cache_s": seconds, "cache_mb": self._given.mb}

    def vouch(self) -> None:
        """The harness files as sealed and the scorer's data as in the manifest, or an
        InfraError naming what changed (the worker stops scoring until it is repaired)."""
        now = mf.harness_files(HARNESS_DIR)
        changed = sorted(set(now.items()) ^ set(self.seal.items()))
        if changed:
            raise InfraError(f"harness file {changed[0][0]} changed since the worker started")
        try:
            mf.verify_data(self.data_dir, mf.load_manifest(self.data_dir), self.test_split)
        except (mf.DataTampered, mf.NoTestSplit, OSError) as exc:
            raise InfraError(f"prepared data in {self.data_dir}: {exc}") from None

    def harness_sha256(self) -> str:
        return mf.files_digest(self.seal)

    def _argv(self, phase: str, extra: list[str]) -> list[str]:
        return [
            phase,
            "--candidate",
            self.candidate_path(),
            "--data",
            self.data_path(),
            "--scratch",
            self.scratch_path(),
            *extra,
        ]

    # Paths as the phase sees them; the docker runner maps them to its mounts.
    def candidate_path(self) -> str:
        return "train.py"

    def data_path(self) -> str:
        return str(self.data_dir)

    def scratch_path(self) -> str:
        return "scratch"

    @staticmethod
    def _classify(outcome: PhaseOutcome, phase: str, wall_s: float) -> tuple[str, str | None]:
        if outcome.over_memory:
            return "oom", f"{phase} phase killed at {outcome.over_memory / 2**30:.2f} GiB resident"
        if outcome.timed_out:
            return "timeout", f"{phase} phase killed at its {wall_s:.0f}s wall"
        code = outcome.exit_code
        if code in (codes.USAGE, codes.INFRA):
            raise InfraError(
                f"harness refused to start the {phase} phase: " + " | ".join(outcome.tail)
            )
        if code in codes.STATUS_BY_CODE:
            status = codes.STATUS_BY_CODE[code]
            return status, None if status == Outcome.OK else _last_error(outcome.tail, status)
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            # A SIGKILL we did not send comes from the kernel's OOM killer or a memory cap.
            status = Outcome.OOM if code == -signal.SIGKILL else Outcome.CRASH
            return status, f"{phase} phase killed by {sig}"
        return Outcome.CRASH, f"{phase} phase exited with code {code}"

    def _verified(self, lines: list[str]) -> tuple[dict[str, Any] | None, str]:
        """The scores of the one result line signed under this run's key, or (None, why)."""
        good = []
        for line in lines:
            body, _, mac = line[len(codes.RESULT_PREFIX) :].rpartition(" ")
            if not hmac.compare_digest(mac, codes.result_mac(self.result_key, body)):
                return None, "a forged result line in the eval output (bad signature)"
            good.append(body)
        if not good:
            return None, "the eval phase sent no signed result"
        if len(good) != 1:
            return None, f"{len(good)} signed result lines, expected one"
        return _pick(json.loads(good[0])), ""


_RESULT_KEYS = (
    "val_bpb",
    "startup_s",
    "first_step_s",
    "training_s",
    "save_s",
    "eval_s",
    "peak_memory_mb",
    "mfu",
    "tokens",
    "steps",
    "params",
    "fingerprint",
    "causal_move",
    "test_bpb",
    "hardware",  # the train phase's signature (harness/hardware.py)
)


def _pick(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in _RESULT_KEYS if k in stats}


def _last_error(tail: deque[str], status: str) -> str:
    for line in reversed(tail):
        text = line.strip()
        if text and not text.startswith(codes.METRICS_PREFIX) and not text.startswith("  File"):
            return text[:500]
    return status


# Lines only the eval phase's scorer may print; from the train phase they are marked.
SCORER_ONLY = ("val_bpb:", "test_bpb:", codes.RESULT_PREFIX)


def pump_lines(
    lines: Iterable[bytes],
    phase: str,
    emit: Emit,
    tail: deque[str],
    log_bytes: int,
    signed: list[str] | None = None,
    ready: Ready | None = None,
) -> threading.Thread:
    """Forward a phase's output lines as they come, keeping a tail and capping the volume.
    The eval scorer's signed result lines are collected whatever the cap; a waiting train
    phase's ready line (only the first, before the candidate's code can run) sets `ready`."""

    def pump() -> None:
        try:
            forward()
        finally:
            if ready is not None:
                ready.event.set()  # seen, or the output ended without it

    def forward() -> None:
        kept = dropped = 0
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if ready is not None and not ready.seen and line == codes.READY_LINE:
                ready.seen = True
                ready.event.set()
                continue
            if line.startswith(codes.READY_LINE) or (
                phase != "eval" and line.startswith(SCORER_ONLY)
            ):
                line = codes.CANDIDATE_MARK + line  # the candidate's own, not a score
            elif line.startswith(codes.RESULT_PREFIX) and signed is not None:
                signed.append(line)
                continue
            tail.append(line[:2000])
            if kept + len(raw) <= log_bytes:
                kept += len(raw)
                emit(phase, line)
            else:
                dropped += 1
        if dropped:
            emit(phase, f"[runner] {dropped} lines dropped over the {log_bytes}-byte log cap")

    thread = threading.Thread(target=pump, name=f"pump-{phase}", daemon=True)
    thread.start()
    return thread
