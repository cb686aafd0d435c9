"""What the commands share: the option groups several of them take, their settings, profile,
data fingerprint and runs folder, the run a reader command looks at, and the cage line.

A command that fails raises (CommandError, SettingsError, ...); `main` alone turns that into
the one-line message and the exit code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator import defaults
from orchestrator import settings as st


class CommandError(Exception):
    """A command's failure: `main` prints the message on one line and exits with the code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def gpu_arg(value: str) -> int | str | None:
    try:
        gpu = st.parse_gpu(value)
    except ValueError:
        gpu = "bad"
    if gpu in ("all", "bad"):
        raise argparse.ArgumentTypeError("must be a GPU index (0 or more) or auto")
    return gpu


def worker_gpu_arg(value: str) -> int | str | None:
    try:
        return st.parse_gpu(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a GPU index (0 or more), auto or all") from None


def lookahead_arg(value: str) -> int | str:
    try:
        return st.parse_lookahead(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 0 or more, or auto") from None


def add_runner(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        choices=st.RUNNERS,
        help="process (default): subprocesses; docker: one locked-down container per phase; "
        "simulate: hold the worker for the budget, no training (benchmarks, dry runs)",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        choices=["auto", "cpu", "gpu"],
        help="data/time profile (default: auto: gpu if CUDA)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="prepared data folder (default: ~/.cache/autoresearch/data/<profile>)",
    )
    p.add_argument("--runs-dir", type=Path, help="per-run artifacts (default: workspace/runs)")


def add_reader(p: argparse.ArgumentParser) -> None:
    """Options of the commands that look at a run: from Redis (any host), or its folder."""
    p.add_argument("--tag", help="run name (default: the most recently updated run)")
    p.add_argument("--runs-dir", type=Path, help="runs folder (default: workspace/runs)")
    p.add_argument(
        "--redis-url",
        help="Redis of the run (default: REDIS_URL, else the embedded one of a live local run)",
    )


def load_settings(args: argparse.Namespace) -> st.Settings:
    """The settings, with the command line's options over their environment variables."""
    overrides = {k: v for k, v in vars(args).items() if k in st.FIELD_NAMES}
    return st.load(overrides=overrides)


def resolve_profile(s: st.Settings, log: Any) -> tuple[Any, Path]:
    """(profile, data folder) of the settings; logged with why that profile."""
    from harness.profiles import get_profile

    name, why = s.resolved_profile()
    data_dir = s.resolved_data_dir(name)
    log.info(
        "default.profile" if why != "set" else "setting.profile",
        profile=name,
        why=why,
        data_dir=str(data_dir),
    )
    return get_profile(name), data_dir


def data_fingerprint(data_dir: Path) -> str:
    """The prepared data's fingerprint, from its manifest (DataNotPrepared when none)."""
    from harness import manifest as mf

    return mf.load_manifest(data_dir)["fingerprint"]


def runs_folder(s: st.Settings, repo: Path) -> Path:
    """The runs folder of a run in `repo`: --runs-dir, relative to the repo unless absolute."""
    return s.runs_dir if s.runs_dir.is_absolute() else repo / s.runs_dir


def reader(args: argparse.Namespace) -> tuple[Any, Path, str]:
    """(redis or None, runs folder, tag) for a command that looks at a run.

    Redis: --redis-url or REDIS_URL (an error when unreachable); else the embedded Redis
    of a local run while it lives (its URL is in the run folder); else the folder alone.
    """
    from orchestrator import view
    from orchestrator.redis_server import RedisUnavailable, connect

    s = load_settings(args)  # --tag, --runs-dir, --redis-url over their environment variables
    runs_dir = s.runs_dir
    redis = connect(s.redis_url) if s.redis_url else None
    tag = s.tag or view.latest_tag(redis, runs_dir)
    if tag is None:
        raise st.SettingsError(f"tag: no run found (in Redis or under {runs_dir}); pass --tag")
    if redis is None:
        local = runs_dir / tag / defaults.REDIS_URL_FILE
        if local.is_file():
            try:
                redis = connect(local.read_text().strip(), timeout_s=1.0)
            except RedisUnavailable:
                redis = None  # the run has ended: its folder has everything
    return redis, runs_dir, tag


def announce_cage(log: Any, runner: str) -> None:
    """One line saying which cage the candidates will run in; a warning where weak."""
    if runner != "process":
        log.info("cage", cage=runner)
        return
    from harness import cage

    held, note = cage.probe()
    if held:
        log.info("cage", cage="process", holds=note)
    else:
        log.warning(
            "cage.weak",
            cage="process-weak",
            why=note,
            means="candidates are not confined: they can read the validation data, write "
            "outside their scratch and reach the network (README: the cage)",
        )


def latest_tag(runs_dir: Path, tag: str | None) -> str:
    """The run `tag` names, else the newest run under runs_dir."""
    from orchestrator import view

    found = tag or view.latest_tag(None, runs_dir)
    if found is None:
        raise st.SettingsError(f"tag: no runs under {runs_dir}")
    return found


def recorded_run(runs_dir: Path, tag: str, exp_id: str) -> tuple[list[dict], dict, dict]:
    """(the run's results rows, the experiment's row, how it ran) from the run folder."""
    from orchestrator.results import ResultsFile

    rows = ResultsFile(runs_dir / tag / defaults.RESULTS_FILE).rows()
    row = next((r for r in rows if r["id"] == exp_id), None)
    if row is None:
        raise st.SettingsError(f"id: no experiment {exp_id} in run {tag}")
    decision = runs_dir / tag / exp_id / "decision.json"
    try:
        run = json.loads(decision.read_text()).get("run") if decision.is_file() else None
    except (ValueError, AttributeError):
        raise st.SettingsError(
            f"id: {decision} is not a decision.json this version wrote"
        ) from None
    if not run:
        raise st.SettingsError(f"id: {exp_id} has no recorded run (rejected, or older format)")
    return rows, row, run
