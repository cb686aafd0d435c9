"""One settings object, from the environment and then flags (flags win).

Every value is checked once, at start; a bad one is a SettingsError naming the setting,
which the CLI prints as one line before exiting with code 2.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from harness.profiles import PROFILES
from orchestrator import defaults
from worker.settings import DEFAULT_RUNS_DIR, default_data_root

TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RUNNERS = ("process", "docker", "simulate")


def count_gpus() -> int:
    """NVIDIA GPUs this host has, by `nvidia-smi -L` (no torch in the orchestrator); 0 if none."""
    if not shutil.which("nvidia-smi"):
        return 0
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if probe.returncode != 0:
        return 0
    return sum(1 for line in probe.stdout.splitlines() if line.startswith("GPU "))


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it."""


@dataclass
class Settings:
    tag: str | None = None
    repo: Path = Path(".")
    train_path: str = defaults.TRAIN_PATH
    redis_url: str | None = None
    profile: str = "auto"
    data_dir: Path | None = None
    runs_dir: Path = DEFAULT_RUNS_DIR
    proposer: str = "auto"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = defaults.LLM_MODEL
    llm_temperature: float = defaults.LLM_TEMPERATURE
    llm_timeout_s: float = defaults.LLM_TIMEOUT_S
    llm_price_in: float = 0.0
    llm_price_out: float = 0.0
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None
    min_delta: float = defaults.MIN_DELTA
    noise_runs: int = defaults.NOISE_RUNS
    final_runs: int = defaults.FINAL_RUNS
    noise_every: int = defaults.NOISE_EVERY_KEEPS
    noise_z: float = defaults.NOISE_Z
    confirm: bool = defaults.CONFIRM
    lookahead: int | str = "auto"  # "auto": one per LOOKAHEAD_WORKERS live workers
    max_in_flight: int | None = None
    llm_concurrency: int = defaults.LLM_CONCURRENCY
    llm_rate_per_min: float | None = None
    journal_tokens: int = defaults.JOURNAL_TOKENS
    plateau: int = defaults.PLATEAU
    llm_failures: int = defaults.LLM_FAILURES
    llm_backoff_s: float = defaults.LLM_BACKOFF_S
    sequential: bool = False
    seed: int = 0
    local_workers: int | None = None
    runner: str = "process"
    gpu: int | str | None = None  # an index, "auto": claim a free GPU of this host, or "all"
    gpus: int | None = None  # GPUs on this host for gpu="auto" (default: nvidia-smi's); 0: CPU
    host: str | None = None  # a stable id of this host (default: its hostname)
    train_wall_s: float | None = None
    eval_wall_s: float | None = None
    memory_gb: float | None = None

    # --- derived choices, each announced by the caller ---
    def resolved_profile(self) -> tuple[str, str]:
        """(profile, why)."""
        if self.profile != "auto":
            return self.profile, "set"
        if count_gpus():
            return "gpu", "a CUDA GPU was found"
        return "cpu", "no CUDA GPU found"

    def resolved_data_dir(self, profile: str) -> Path:
        return self.data_dir or default_data_root() / profile

    def resolved_proposer(self) -> tuple[str, str]:
        if self.proposer != "auto":
            return self.proposer, "set"
        if self.llm_api_key or self.llm_base_url:
            return "llm", "an LLM endpoint or key is configured"
        return "mutate", "no LLM configured (set OPENAI_API_KEY or AUTORESEARCH_LLM_BASE_URL)"


def _int(v: str) -> int:
    return int(v)


def _opt_int(v: str) -> int | None:
    return None if v == "" else int(v)


def _float(v: str) -> float:
    value = float(v)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _opt_float(v: str) -> float | None:
    return None if v == "" else _float(v)


def _bool(v: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def parse_lookahead(v: str) -> int | str:
    """A number of jobs, or "auto": one per defaults.LOOKAHEAD_WORKERS live workers."""
    if v in ("", "auto"):
        return "auto"
    value = int(v)
    if value < 0:
        raise ValueError("must be 0 or more, or auto")
    return value


def parse_gpu(v: str) -> int | str | None:
    """A GPU index, "auto" (claim one) or "all" (a worker each: `autoresearch worker` only)."""
    if v == "":
        return None
    if v in ("auto", "all"):
        return v
    index = int(v)
    if index < 0:
        raise ValueError("must be a GPU index (0 or more) or auto")
    return index


def _choice(*options: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return v

    return parse


# field -> (environment variables, first found wins; parser)
ENV: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "tag": (("AUTORESEARCH_TAG",), str),
    "repo": (("AUTORESEARCH_REPO",), Path),
    "train_path": (("AUTORESEARCH_TRAIN_PATH",), str),
    "redis_url": (("REDIS_URL",), str),
    "profile": (("AUTORESEARCH_PROFILE",), _choice("auto", *PROFILES)),
    "data_dir": (("AUTORESEARCH_DATA_DIR",), Path),
    "runs_dir": (("AUTORESEARCH_RUNS_DIR",), Path),
    "proposer": (("AUTORESEARCH_PROPOSER",), _choice("auto", "llm", "mutate")),
    "llm_base_url": (("AUTORESEARCH_LLM_BASE_URL", "OPENAI_BASE_URL"), str),
    "llm_api_key": (("AUTORESEARCH_LLM_API_KEY", "OPENAI_API_KEY"), str),
    "llm_model": (("AUTORESEARCH_LLM_MODEL", "OPENAI_MODEL"), str),
    "llm_temperature": (("AUTORESEARCH_LLM_TEMPERATURE",), _float),
    "llm_timeout_s": (("AUTORESEARCH_LLM_TIMEOUT_S",), _float),
    "llm_price_in": (("AUTORESEARCH_LLM_PRICE_IN",), _float),
    "llm_price_out": (("AUTORESEARCH_LLM_PRICE_OUT",), _float),
    "max_experiments": (("AUTORESEARCH_MAX_EXPERIMENTS",), _opt_int),
    "max_hours": (("AUTORESEARCH_MAX_HOURS",), _opt_float),
    "max_cost_usd": (("AUTORESEARCH_MAX_COST_USD",), _opt_float),
    "min_delta": (("AUTORESEARCH_MIN_DELTA",), _float),
    "noise_runs": (("AUTORESEARCH_NOISE_RUNS",), _int),
    "final_runs": (("AUTORESEARCH_FINAL_RUNS",), _int),
    "noise_every": (("AUTORESEARCH_NOISE_EVERY",), _int),
    "noise_z": (("AUTORESEARCH_NOISE_Z",), _float),
    "confirm": (("AUTORESEARCH_CONFIRM",), _bool),
    "lookahead": (("AUTORESEARCH_LOOKAHEAD",), parse_lookahead),
    "max_in_flight": (("AUTORESEARCH_MAX_IN_FLIGHT",), _opt_int),
    "llm_concurrency": (("AUTORESEARCH_LLM_CONCURRENCY",), _int),
    "llm_rate_per_min": (("AUTORESEARCH_LLM_RATE_PER_MIN",), _opt_float),
    "llm_failures": (("AUTORESEARCH_LLM_FAILURES",), _int),
    "journal_tokens": (("AUTORESEARCH_JOURNAL_TOKENS",), _int),
    "plateau": (("AUTORESEARCH_PLATEAU",), _int),
    "llm_backoff_s": (("AUTORESEARCH_LLM_BACKOFF_S",), _float),
    "sequential": (("AUTORESEARCH_SEQUENTIAL",), _bool),
    "seed": (("AUTORESEARCH_SEED",), _int),
    "local_workers": (("AUTORESEARCH_LOCAL_WORKERS",), _opt_int),
    "runner": (("AUTORESEARCH_RUNNER",), _choice(*RUNNERS)),
    "gpu": (("AUTORESEARCH_GPU",), parse_gpu),
    "gpus": (("AUTORESEARCH_GPUS",), _opt_int),
    "host": (("AUTORESEARCH_HOST",), str),
    "train_wall_s": (("AUTORESEARCH_TRAIN_WALL_S",), _opt_float),
    "eval_wall_s": (("AUTORESEARCH_EVAL_WALL_S",), _opt_float),
    "memory_gb": (("AUTORESEARCH_MEMORY_GB",), _opt_float),
}


def load(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from env, then overrides (flags; None means not given), then checks."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (names, parse) in ENV.items():
        for var in names:
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r}: {_reason(exc)}") from None
            break
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    settings = Settings(**values)
    check(settings)
    return settings


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return "not a number" if "invalid literal" in text or "could not convert" in text else text


def check(s: Settings) -> None:
    def bad(name: str, why: str) -> SettingsError:
        return SettingsError(f"{name}={getattr(s, name)!r}: {why}")

    if s.tag is not None and not TAG_RE.fullmatch(s.tag):
        raise bad("tag", "use letters, digits, '-' and '_' (at most 64, starting alphanumeric)")
    if s.max_cost_usd is not None and not (s.llm_price_in or s.llm_price_out):
        raise bad(
            "max_cost_usd",
            "a spend limit needs the LLM's prices, in dollars per million tokens "
            "(AUTORESEARCH_LLM_PRICE_IN and _OUT): both are 0, so the spend would stay 0",
        )
    if s.proposer not in ("auto", "llm", "mutate"):
        raise bad("proposer", "must be auto, llm or mutate")
    if s.runner not in RUNNERS:
        raise bad("runner", f"must be one of {', '.join(RUNNERS)}")
    if s.profile not in ("auto", *PROFILES):
        raise bad("profile", f"must be auto or one of {', '.join(PROFILES)}")
    for name in ("max_experiments", "local_workers", "final_runs"):
        value = getattr(s, name)
        if value is not None and value < 0:
            raise bad(name, "must be 0 or more")
    for name in (
        "max_hours",
        "max_cost_usd",
        "train_wall_s",
        "eval_wall_s",
        "memory_gb",
        "llm_timeout_s",
    ):
        value = getattr(s, name)
        if value is not None and not value > 0:
            raise bad(name, "must be positive")
    if not s.min_delta >= 0:
        raise bad("min_delta", "must be 0 or more")
    if not s.noise_z >= 0:
        raise bad("noise_z", "must be 0 or more")
    for name in ("noise_runs", "noise_every", "llm_concurrency", "max_in_flight"):
        value = getattr(s, name)
        if value is not None and value < 1:
            raise bad(name, "must be 1 or more")
    if s.lookahead != "auto" and not (isinstance(s.lookahead, int) and s.lookahead >= 0):
        raise bad("lookahead", "must be 0 or more, or auto")
    if s.llm_rate_per_min is not None and not s.llm_rate_per_min > 0:
        raise bad("llm_rate_per_min", "must be positive")
    if s.plateau < 0:
        raise bad("plateau", "must be 0 (off) or more")
    if s.journal_tokens < 200:
        raise bad("journal_tokens", "must be 200 or more")
    if s.llm_failures < 1:
        raise bad("llm_failures", "must be 1 or more")
    if not s.llm_backoff_s >= 0:
        raise bad("llm_backoff_s", "must be 0 or more")
    if not 0 <= s.llm_temperature <= 2:
        raise bad("llm_temperature", "must be between 0 and 2")
    if not (s.llm_price_in >= 0 and s.llm_price_out >= 0):
        raise SettingsError("llm prices must be 0 or more")
    if s.gpu not in (None, "auto", "all") and not (isinstance(s.gpu, int) and s.gpu >= 0):
        raise bad("gpu", "must be a GPU index (0 or more), auto or all")
    if s.gpus is not None and s.gpus < 0:
        raise bad("gpus", "must be 0 (no GPU: run on the CPU) or more")
    if s.train_wall_s is not None and s.train_wall_s < 5:
        raise bad("train_wall_s", "must be at least 5 seconds")
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise bad("redis_url", "must start with redis://, rediss:// or unix://")


FIELD_NAMES = tuple(f.name for f in fields(Settings))
