"""The process runner: each phase a subprocess of this worker, confined by the kernel.

For hosts without Docker (laptops, CI, the embedded default). The phases start through
harness/boot.py and, where the kernel can hold it, inside harness/cage.py's cage; the whole
process group is killed at the wall, orphans are reaped (the worker is their subreaper), and
an optional cap holds the phase's resident memory.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import boot, cage
from harness import manifest as mf
from worker import compile_cache, lifeline
from worker.runner import (
    HARNESS_DIR,
    PASSTHROUGH_ENV,
    Emit,
    InfraError,
    Limits,
    PhaseOutcome,
    Runner,
    pump_lines,
)


class ProcessRunner(Runner):
    """Each phase a subprocess in a new session, killed as a group at the wall.

    Each phase starts through harness/boot.py (isolated interpreter, no start-up hooks,
    harness from source only) and, where the kernel can hold it, inside the cage of
    harness/cage.py: writes only to its scratch, reads only what its phase needs (the train
    phase never the validation or test split, the eval phase the test split only when the
    spec asks, its model server no data at all), no network. Where the kernel cannot (no Landlock ABI 3, no libseccomp, not Linux) the cage
    is `process-weak`: said once at the worker's start and on every row.
    """

    name = "process"

    def __init__(self, data_dir: Path, limits: Limits | None = None, gpu: int | None = None):
        super().__init__(data_dir, limits, gpu)
        held, self.cage_note = cage.probe()
        self.cage = "process" if held else "process-weak"

    def policy(self, phase: str, workdir: Path) -> dict:
        """What a phase may read and write: its split of the data, never another (test/ only
        in the eval phase of a spec with test_split)."""
        data = self.data_dir.resolve()
        splits = [mf.TRAIN_DIR] if phase == "train" else [mf.VAL_DIR]
        splits += [mf.TEST_DIR] if phase == "eval" and self.test_split else []
        scratch = str((workdir / "scratch").resolve())
        read = {str(HARNESS_DIR), str((workdir / "train.py").resolve()), scratch}
        read |= {str(data / name) for name in (mf.MANIFEST, mf.TOKENIZER_DIR, *splits)}
        return cage.Policy(sorted(cage.python_paths() | read), [scratch]).to_dict()

    def _env(self, workdir: Path, phase: str = "") -> dict[str, str]:
        """A clean environment: no API keys, no Redis password, nothing inherited by accident;
        the phase's compile caches in its scratch."""
        env = {
            **compile_cache.env(str(workdir / "scratch"), phase),
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
        lifeline.die_with_parent()  # the worker's death (a SIGKILL runs no finally)
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
            env=self._env(workdir, argv[0]),
            stdin=subprocess.PIPE if waits else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._preexec,
        )

    def hardware(self) -> str:
        """`python -m harness.hardware` started as a phase is (interpreter, boot, paths,
        environment, GPU), so it prints the line the train phase will report."""
        with tempfile.TemporaryDirectory(prefix="autoresearch-hardware-") as tmp:
            workdir = Path(tmp)
            (workdir / "scratch" / "tmp").mkdir(parents=True)
            path = [p for p in sys.path if os.path.isabs(p)]
            try:
                proc = subprocess.run(
                    boot.command(sys.executable, "harness.hardware", [], path=path),
                    cwd=workdir / "scratch",
                    env=self._env(workdir),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=HARDWARE_PROBE_S,
                )
            except subprocess.TimeoutExpired:
                why = f"python -m harness.hardware ran over {HARDWARE_PROBE_S}s"
                raise InfraError(why) from None
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise InfraError(f"python -m harness.hardware failed: {why}")
        return lines[-1]

    def candidate_path(self) -> str:
        return "../train.py"  # from the phase's working folder, its scratch

    def scratch_path(self) -> str:
        return "."

    def start_waiting(self, phase: str, argv: list[str], workdir: Path) -> subprocess.Popen:
        return self._spawn(argv, workdir, waits=True)

    def waiting(self, handle: subprocess.Popen) -> bool:
        return handle.poll() is None

    def discard(self, handle: subprocess.Popen) -> None:
        _killpg(handle.pid)
        handle.wait()
        for pipe in (handle.stdin, handle.stdout):
            if pipe:
                pipe.close()

    def run(self, spec: dict[str, Any], workdir: Path, emit: Emit) -> dict[str, Any]:
        # Orphans of a phase (a daemon that left its process group) become our children, so
        # we can find and kill them; whatever was our child before is left alone.
        lifeline.become_subreaper()
        self._before = _children()
        try:
            return super().run(spec, workdir, emit)
        finally:
            self._kill_orphans()

    def _escaped(self, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
        """New children of ours that are not a phase we started: what escaped a phase's
        group (a daemon re-parented to us, the subreaper)."""
        keep = {handle.pid for handle in self._prestarted.values()}
        if self.slots is not None and self.slots.spare is not None:
            keep.add(self.slots.spare.handle.pid)  # the next job's train process
        return _children(table) - getattr(self, "_before", set()) - keep

    def _kill_orphans(self) -> None:
        """Kill what a phase left behind."""
        for pid in self._escaped():
            _kill(pid)

    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        proc = self._prestarted.pop(phase, None)
        start = time.monotonic()
        if proc is None:
            proc = self._spawn(argv, workdir)
        outcome = PhaseOutcome(exit_code=None, timed_out=False, seconds=0.0)
        ready = self.readiness(phase, proc.stdin is not None)
        lines = iter(proc.stdout.readline, b"")
        pump = pump_lines(
            lines, phase, emit, outcome.tail, self.limits.log_bytes, outcome.signed, ready
        )
        try:
            if ready is not None:
                self.wait_ready(phase, ready, outcome.tail)
                start = time.monotonic()  # the wall starts at the go
            if proc.stdin:
                try:
                    proc.stdin.write(self.go_line(phase))
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # it died while waiting; its exit code and output say why
            self._wait(proc, start + wall_s, outcome)
        finally:
            # Kill the whole group: the candidate's children die with it, wall or not;
            # then whatever left the group (it may hold our output pipe open).
            _killpg(proc.pid)
            proc.wait()
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()  # no go sent: a phase that was never ready
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
            if cap and (resident := self._resident(proc.pid)) > cap:
                outcome.over_memory = resident
                return

    def _resident(self, pid: int) -> int:
        """Resident bytes of the phase: its process, every descendant, and what escaped to
        us (orphans re-parented to this subreaper), whatever session they moved to."""
        table = _process_table()
        roots = {pid} | self._escaped(table)
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
HARDWARE_PROBE_S = 120  # the signature probe: a cold torch import on a slow disk
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


def _children(table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """PIDs whose parent is this process (Linux /proc; empty elsewhere)."""
    me = os.getpid()
    return {pid for pid, (ppid, _) in (table or _process_table()).items() if ppid == me}


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
