"""Runners execute one candidate: a train phase, then an eval phase, each a fresh process.

`Runner` holds what every runner shares (the workdir layout, the phase sequence, the
classification of outcomes); a subclass only says how to run one phase under a hard wall.
The process runner is here; the docker runner drops into the same interface.
"""

from __future__ import annotations

import ctypes
import hmac
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import boot, cage, codes
from harness import manifest as mf

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

    def __init__(self, data_dir: Path, limits: Limits | None = None, gpu: int | None = None):
        self.data_dir = Path(data_dir)
        self.limits = limits or Limits()
        self.seal = mf.harness_files(HARNESS_DIR)
        self._prestarted: dict[str, Any] = {}  # phase -> handle from start_waiting
        self.gpu = gpu
        # The eval phase signs its scores with this; it travels on the go line only (one
        # per run, made in run()).
        self.result_key = ""

    @abstractmethod
    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        """Run `python -m harness.entry <phase> ...` and kill it at wall_s, whatever happens."""

    def start_waiting(self, phase: str, argv: list[str], workdir: Path) -> Any:
        """Start a phase early, waiting (`--wait`) for run_phase's go: a handle for
        run_phase and discard, or None where a runner cannot."""
        return None

    def discard(self, handle: Any) -> None:
        """Kill and reap a started phase that will not be used."""
        raise NotImplementedError("a runner whose start_waiting returns handles discards them")

    def prestart(self, phase: str, argv: list[str], workdir: Path) -> bool:
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
        return f"go {self.result_key}\n".encode() if phase == "eval" else b"go\n"

    def run(self, spec: dict[str, Any], workdir: Path, emit: Emit) -> dict[str, Any]:
        workdir = Path(workdir)
        self.result_key = secrets.token_hex(16)
        scratch = workdir / "scratch"
        # A retried job finds what a dead attempt left: start from an empty scratch.
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "tmp").mkdir(parents=True)  # TMPDIR and compile caches: private
        candidate = workdir / "train.py"
        candidate.write_text(spec["source"])
        budget = spec["budget"]
        started = time.time()
        train_args = [
            "--deadline",
            f"{started + budget['train_wall_s'] - budget['save_margin_s']:.3f}",
            "--grace",
            str(budget["return_grace_s"]),
        ]
        # The eval process imports torch while training runs, then waits for its go, which
        # carries the result key: it cannot be started any other way.
        eval_argv = self._argv("eval", spec, None, ["--wait"])
        if not self.prestart("eval", eval_argv, workdir):
            raise InfraError(f"the {self.name} runner cannot start the eval phase waiting")
        try:
            return self._run(spec, workdir, emit, started, train_args, eval_argv)
        finally:
            self.discard_prestarted()

    def _run(
        self,
        spec: dict[str, Any],
        workdir: Path,
        emit: Emit,
        started: float,
        train_args: list[str],
        eval_argv: list[str],
    ) -> dict[str, Any]:
        scratch = workdir / "scratch"
        budget = spec["budget"]
        train = self.run_phase(
            "train",
            self._argv("train", spec, started, train_args),
            workdir,
            budget["train_wall_s"],
            emit,
        )
        fields: dict[str, Any] = {"train_phase_s": train.seconds}
        status, error = self._classify(train, "train", budget["train_wall_s"])
        if status == "ok" and not (scratch / "train.json").is_file():
            status, error = "crash", "train phase exited without saving weights"
        if status == "ok":
            self.vouch()  # the train phase is over: nothing of it runs any more
            ev = self.run_phase(
                "eval",
                eval_argv,
                workdir,
                budget["eval_wall_s"],
                emit,
            )
            fields["eval_phase_s"] = ev.seconds
            status, error = self._classify(ev, "eval", budget["eval_wall_s"])
            tail = list(train.tail)[-10:] + list(ev.tail)
            if status == "ok":
                scores, why = self._verified(ev.signed)
                if scores is None:
                    status, error = "crash", why
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

    def vouch(self) -> None:
        """The harness files as sealed and the scorer's data as in the manifest, or an
        InfraError naming what changed (the worker stops scoring until it is repaired)."""
        now = mf.harness_files(HARNESS_DIR)
        changed = sorted(set(now.items()) ^ set(self.seal.items()))
        if changed:
            raise InfraError(f"harness file {changed[0][0]} changed since the worker started")
        try:
            mf.verify_data(self.data_dir, mf.load_manifest(self.data_dir))
        except (mf.DataTampered, OSError) as exc:
            raise InfraError(f"prepared data in {self.data_dir}: {exc}") from None

    def harness_sha256(self) -> str:
        return mf.files_digest(self.seal)

    def _argv(self, phase: str, spec: dict, started: float | None, extra: list[str]) -> list[str]:
        start = [] if started is None else ["--started-at", f"{started:.3f}"]
        return [
            phase,
            "--candidate",
            self.candidate_path(),
            "--data",
            self.data_path(),
            "--scratch",
            self.scratch_path(),
            "--seed",
            str(spec["seed"]),
            *start,
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
            return status, None if status == "ok" else _last_error(outcome.tail, status)
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            # A SIGKILL we did not send comes from the kernel's OOM killer or a memory cap.
            status = "oom" if code == -signal.SIGKILL else "crash"
            return status, f"{phase} phase killed by {sig}"
        return "crash", f"{phase} phase exited with code {code}"

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
SCORER_ONLY = ("val_bpb:", codes.RESULT_PREFIX)


def pump_lines(
    lines: Iterable[bytes],
    phase: str,
    emit: Emit,
    tail: deque[str],
    log_bytes: int,
    signed: list[str] | None = None,
) -> threading.Thread:
    """Forward a phase's output lines as they come, keeping a tail and capping the volume.
    The eval scorer's signed result lines are collected whatever the cap."""

    def pump() -> None:
        kept = dropped = 0
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if phase != "eval" and line.startswith(SCORER_ONLY):
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


class ProcessRunner(Runner):
    """Each phase a subprocess in a new session, killed as a group at the wall.

    Each phase starts through harness/boot.py (isolated interpreter, no start-up hooks,
    harness from source only) and, where the kernel can hold it, inside the cage of
    harness/cage.py: writes only to its scratch, reads only what its phase needs (the train
    phase never the validation split, the eval phase's model server no data at all), no
    network. Where the kernel cannot (no Landlock ABI 3, no libseccomp, not Linux) the cage
    is `process-weak`: said once at the worker's start and on every row.
    """

    name = "process"

    def __init__(self, data_dir: Path, limits: Limits | None = None, gpu: int | None = None):
        super().__init__(data_dir, limits, gpu)
        held, self.cage_note = cage.probe()
        self.cage = "process" if held else "process-weak"

    def policy(self, phase: str, workdir: Path) -> dict:
        """What a phase may read and write: its split of the data, never the other."""
        data = self.data_dir.resolve()
        split = mf.TRAIN_DIR if phase == "train" else mf.VAL_DIR
        scratch = str((workdir / "scratch").resolve())
        read = {str(HARNESS_DIR), str((workdir / "train.py").resolve()), scratch}
        read |= {str(data / name) for name in (mf.MANIFEST, mf.TOKENIZER_DIR, split)}
        return cage.Policy(sorted(cage.python_paths() | read), [scratch]).to_dict()

    def _env(self, workdir: Path) -> dict[str, str]:
        """A clean environment: no API keys, no Redis password, nothing inherited by accident."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir / "scratch"),
            # The worker's GPU index counts in nvidia-smi's (and Docker's) order, the PCI
            # bus order, and within what this worker was given to see, if anything.
            "CUDA_VISIBLE_DEVICES": visible_device(
                self.gpu, os.environ.get("CUDA_VISIBLE_DEVICES")
            ),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "TMPDIR": str(workdir / "scratch" / "tmp"),
        }
        # Only what the runtime needs to find its libraries and caches; nothing secret.
        for key in PASSTHROUGH_ENV:
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def _preexec(self) -> None:
        _die_with_parent()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limits.file_bytes, self.limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.limits.open_files, self.limits.open_files))

    def _spawn(self, argv: list[str], workdir: Path, waits: bool = False) -> subprocess.Popen:
        held = self.cage == "process"
        cmd = boot.command(
            sys.executable,
            "harness.entry",
            argv,
            path=[p for p in sys.path if os.path.isabs(p)],
            cage=self.policy(argv[0], workdir) if held else None,
            require=held,
        )
        return subprocess.Popen(
            cmd,
            cwd=workdir / "scratch",  # like the container's: relative writes land in scratch
            env=self._env(workdir),
            stdin=subprocess.PIPE if waits else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._preexec,
        )

    def candidate_path(self) -> str:
        return "../train.py"  # from the phase's working folder, its scratch

    def scratch_path(self) -> str:
        return "."

    def start_waiting(self, phase: str, argv: list[str], workdir: Path) -> subprocess.Popen:
        return self._spawn(argv, workdir, waits=True)

    def discard(self, handle: subprocess.Popen) -> None:
        _killpg(handle.pid)
        handle.wait()
        for pipe in (handle.stdin, handle.stdout):
            if pipe:
                pipe.close()

    def run(self, spec: dict[str, Any], workdir: Path, emit: Emit) -> dict[str, Any]:
        # Orphans of a phase (a daemon that left its process group) become our children, so
        # we can find and kill them; whatever was our child before is left alone.
        _become_subreaper()
        self._before = _children()
        try:
            return super().run(spec, workdir, emit)
        finally:
            self._kill_orphans()

    def _kill_orphans(self) -> None:
        """Kill what a phase left behind: new children of ours that are not a phase we
        started (a daemon that escaped its group was re-parented to us)."""
        keep = {handle.pid for handle in self._prestarted.values()}
        for pid in _children() - getattr(self, "_before", set()) - keep:
            _kill(pid)

    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        proc = self._prestarted.pop(phase, None)
        start = time.monotonic()
        if proc is None:
            proc = self._spawn(argv, workdir)
        outcome = PhaseOutcome(exit_code=None, timed_out=False, seconds=0.0)
        lines = iter(proc.stdout.readline, b"")
        pump = pump_lines(lines, phase, emit, outcome.tail, self.limits.log_bytes, outcome.signed)
        if proc.stdin:
            try:
                proc.stdin.write(self.go_line(phase))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it died while waiting; its exit code and output say why
        try:
            self._wait(proc, start + wall_s, outcome)
        finally:
            # Kill the whole group: the candidate's children die with it, wall or not;
            # then whatever left the group (it may hold our output pipe open).
            _killpg(proc.pid)
            proc.wait()
            self._kill_orphans()
            pump.join(timeout=5)
            if not pump.is_alive():  # closing under a blocked reader would hang
                proc.stdout.close()
        outcome.seconds = time.monotonic() - start
        return outcome

    def _wait(self, proc: subprocess.Popen, deadline: float, outcome: PhaseOutcome) -> None:
        """Until the phase exits, its wall passes, or (with a cap) its processes hold more
        resident memory than the cap."""
        cap = self.limits.memory_bytes
        while True:
            left = deadline - time.monotonic()
            try:
                outcome.exit_code = proc.wait(
                    timeout=max(min(left, MEMORY_POLL_S if cap else left), 0)
                )
                return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                outcome.timed_out = True
                return
            resident = self._resident(proc.pid)
            if cap and resident > cap:
                outcome.over_memory = resident
                return

    def _resident(self, pid: int) -> int:
        """Resident bytes of the phase: its process, every descendant, and what escaped to
        us (orphans re-parented to this subreaper), whatever session they moved to."""
        keep = {handle.pid for handle in self._prestarted.values()}
        roots = {pid} | (_children() - getattr(self, "_before", set()) - keep)
        table = _process_table()
        kids: dict[int, list[int]] = {}
        for p, (ppid, _) in table.items():
            kids.setdefault(ppid, []).append(p)
        seen, todo = set(), [r for r in roots if r in table]
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(kids.get(p, ()))
        return sum(table[p][1] for p in seen)


def visible_device(gpu: int | None, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a phase: the worker's index into an inherited list (a
    scheduler's "4,5" makes GPU 1 the device "5"), else the index itself; "" for none."""
    if gpu is None:
        return ""
    ids = [d.strip() for d in (inherited or "").split(",") if d.strip()]
    if not ids:
        return str(gpu)
    if gpu >= len(ids):
        raise InfraError(f"GPU {gpu} is not among CUDA_VISIBLE_DEVICES={inherited}")
    return ids[gpu]


MEMORY_POLL_S = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _process_table() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, resident bytes)} from Linux's /proc (empty elsewhere)."""
    table = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[21]) * _PAGE)
            except (OSError, IndexError, ValueError):
                continue
    return table


# Loaded here, not in the forked child, where loading a library is not safe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL the phase when the worker's process dies (RQ kills its work-horse on a
    stop command or a job timeout without running our finally)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)


def _children() -> set[int]:
    """PIDs whose parent is this process (Linux /proc; empty elsewhere)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def _kill(pid: int) -> None:
    """SIGKILL a left-over descendant and its group, then reap it."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
