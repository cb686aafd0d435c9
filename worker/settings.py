"""Worker settings, from the environment (the daemon sets them, its jobs read them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.keys import STREAM_MAXLEN, log_stream_key, run_log_key

ENV_DATA_DIR = "AUTORESEARCH_DATA_DIR"
ENV_RUNS_DIR = "AUTORESEARCH_RUNS_DIR"
ENV_RUNNER = "AUTORESEARCH_RUNNER"
ENV_GPU = "AUTORESEARCH_GPU"
ENV_MEMORY_GB = "AUTORESEARCH_MEMORY_GB"

# Where a run's per-experiment folders live, relative to the working directory.
DEFAULT_RUNS_DIR = Path("workspace/runs")


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoresearch" / "data"


@dataclass(frozen=True)
class WorkerSettings:
    data_dir: Path  # the prepared data folder of this worker's profile
    runs_dir: Path
    runner: str = "process"
    gpu: int | None = None
    memory_gb: float | None = None

    @classmethod
    def from_env(cls) -> WorkerSettings:
        gpu = os.environ.get(ENV_GPU, "")
        mem = os.environ.get(ENV_MEMORY_GB, "")
        return cls(
            data_dir=Path(os.environ[ENV_DATA_DIR]),
            runs_dir=Path(os.environ.get(ENV_RUNS_DIR, DEFAULT_RUNS_DIR)),
            runner=os.environ.get(ENV_RUNNER, "process"),
            gpu=int(gpu) if gpu else None,
            memory_gb=float(mem) if mem else None,
        )

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_DATA_DIR: str(self.data_dir),
            ENV_RUNS_DIR: str(self.runs_dir),
            ENV_RUNNER: self.runner,
        }
        if self.gpu is not None:
            env[ENV_GPU] = str(self.gpu)
        if self.memory_gb is not None:
            env[ENV_MEMORY_GB] = str(self.memory_gb)
        return env


def add_log_entry(pipe: Any, tag: str, exp_id: str, fields: dict[str, str]) -> None:
    """Queue one log entry on a Redis pipeline: into the experiment's stream and, with its
    id, into the run's. The worker (output lines, events) and the orchestrator (decisions)
    both write this way, so `logs ID -f` and `logs -f` see the same entries."""
    pipe.xadd(log_stream_key(tag, exp_id), fields, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.xadd(run_log_key(tag), {**fields, "id": exp_id}, maxlen=STREAM_MAXLEN, approximate=True)
