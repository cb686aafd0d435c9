"""`autoresearch evaluate` and `autoresearch verify`: run one train.py once through the runner
and harness, no loop; evaluate a file as it is, verify a recorded experiment exactly as it ran
(commit, seed, budget, data) and compare the two val_bpb, and the harness and image that made
them; `verify --test` also scores the held-out test split (test_bpb beside val_bpb)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from orchestrator import logs
from orchestrator import settings as st
from orchestrator.cli.helpers import (
    CommandError,
    add_common,
    add_runner,
    data_fingerprint,
    latest_tag,
    load_settings,
    recorded_run,
    resolve_profile,
    runs_folder,
)


def add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="run one train.py through the runner and harness, no loop")
    add_common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", type=int)
    add_runner(p)
    p.add_argument("--train-wall", dest="train_wall_s", type=float)
    p.add_argument("--eval-wall", dest="eval_wall_s", type=float)


def add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="re-run a recorded experiment exactly (commit, seed, budget) and compare"
    )
    add_common(p)
    p.add_argument("id", help="the experiment id in results.tsv, e.g. 0012")
    p.add_argument("--tag", help="run name (default: the most recent run)")
    p.add_argument("--seed", type=int, help="another seed (default: the recorded one)")
    p.add_argument("--gpu", type=int)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument(
        "--test", action="store_true", help="also score the held-out test split (test_bpb)"
    )
    add_runner(p)


def run_once(
    s: st.Settings,
    spec: dict[str, Any],
    data_dir: Path,
    runs_dir: Path,
    scratch_prefix: str,
    **result_fields: Any,
) -> dict[str, Any]:
    """Run the spec's train.py once through the runner of the settings, in a scratch folder
    removed after, and return its result; the candidate's output goes to stderr as it comes."""
    import tempfile

    from worker import contract
    from worker.jobs import make_runner
    from worker.settings import WorkerSettings

    runner = make_runner(
        WorkerSettings(data_dir=data_dir, runs_dir=runs_dir, runner=s.runner, gpu=s.gpu)
    )
    with tempfile.TemporaryDirectory(prefix=scratch_prefix) as tmp:
        fields = runner.run(spec, Path(tmp), lambda phase, line: print(line, file=sys.stderr))
    return contract.make_result(spec, **fields, **result_fields)


def _show(fields: dict[str, Any], as_json: bool, width: int, hidden: tuple[str, ...] = ()) -> None:
    """On stdout: the fields as JSON, or one `key value` line each (but the hidden ones)."""
    if as_json:
        print(json.dumps(fields, indent=2))
    else:
        for key, value in fields.items():
            if key not in hidden:
                print(f"{key:<{width}}{value}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from orchestrator.research import budget_for
    from orchestrator.validate import CandidateRejected, validate_candidate
    from worker import contract
    from worker.vocab import Outcome

    s = load_settings(args)
    log = logs.get()
    if not args.file.is_file():
        raise st.SettingsError(f"file: {args.file} does not exist")
    source = args.file.read_text()
    try:
        validate_candidate(source)
    except CandidateRejected as exc:
        raise CommandError(f"{args.file}: {exc}", 2) from None
    profile, data_dir = resolve_profile(s, log)
    spec = contract.make_spec(
        id="evaluate",
        tag="evaluate",
        parent="",
        commit="",
        source=source,
        profile=profile.name,
        fingerprint=data_fingerprint(data_dir),
        budget=budget_for(profile, s.train_wall_s, s.eval_wall_s),
        seed=args.seed,
        description=str(args.file),
    )
    # The candidate's output goes to stderr as it comes; the result to stdout.
    result = run_once(
        s,
        spec,
        data_dir,
        s.runs_dir,
        "autoresearch-eval-",
        worker=socket.gethostname(),
        gpu="cpu" if s.gpu is None else f"cuda:{s.gpu}",
    )
    _show(result, args.json, 16, hidden=("log_tail",))
    return 0 if result["status"] == Outcome.OK else 1


def _recorded_result(runs_dir: Path, tag: str, exp_id: str) -> dict:
    """The worker's result as recorded: result.json in the experiment folder (the worker
    writes it where it shares the runs folder), else the one decision.json holds."""
    folder = runs_dir / tag / exp_id
    for name, key in (("result.json", None), ("decision.json", "result")):
        if (folder / name).is_file():
            try:
                found = json.loads((folder / name).read_text())
            except json.JSONDecodeError as exc:
                raise CommandError(f"{folder / name}: not JSON ({exc})", 1) from None
            found = found.get(key) if key and isinstance(found, dict) else found
            return found if isinstance(found, dict) else {}
    return {}


def _compare(what: str, recorded: str | None, now: str | None, unset: str) -> str:
    """One stamp of the recorded result against the re-run's, in words; `unset` names a
    missing stamp (a harness digest: not scored; an image: the process runner)."""

    def short(v: str | None) -> str:
        return unset if not v else v[:19] if v.startswith("sha256:") else v[:12]

    if recorded == now:
        return "same" if now else f"{unset} in both"
    if what == "harness" and not (recorded and now):
        return f"cannot compare: recorded {short(recorded)}, this run {short(now)}"
    return (
        f"DIFFERS: recorded {short(recorded)}, this run {short(now)}: "
        f"not the {what} of the recorded score"
    )


# The stamps in full: in the JSON only (the text shows them compared, in words).
FULL_STAMPS = ("recorded_harness_sha256", "harness_sha256", "recorded_image", "image_id")


def _stamps(recorded: dict, result: dict) -> dict:
    """The recorded result's harness digest and runner image against the re-run's."""
    harness, image = recorded.get("harness_sha256"), recorded.get("image")
    return {
        "harness": _compare("harness", harness, result["harness_sha256"], "not scored"),
        "image": _compare("runner image", image, result["image"], "no image"),
        "recorded_harness_sha256": harness,
        "harness_sha256": result["harness_sha256"],
        "recorded_image": image,
        "image_id": result["image"],
    }


def _check_test_split(data_dir: Path) -> None:
    """verify --test needs data prepared with a test split: else one line, exit 1."""
    from harness import manifest as mf

    try:
        mf.test_split(mf.load_manifest(data_dir), data_dir)
    except mf.NoTestSplit as exc:
        raise CommandError(str(exc), 1) from None


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-run one recorded experiment from its commit with its seed, budget and data
    fingerprint, through the same runner and harness, and compare the two val_bpb and the
    harness and image that made them; with --test, test_bpb beside val_bpb."""
    from orchestrator import noise
    from orchestrator.gitstore import GitStore
    from worker import contract
    from worker.vocab import Outcome

    s = load_settings(args)
    git = GitStore(s.repo, s.train_path)
    runs_dir = runs_folder(s, git.repo)
    tag = latest_tag(runs_dir, args.tag)
    rows, row, run = recorded_run(runs_dir, tag, args.id)
    log = logs.get()
    s.profile = run["profile"]
    profile, data_dir = resolve_profile(s, log)
    fingerprint = data_fingerprint(data_dir)
    if fingerprint != run["fingerprint"]:
        raise CommandError(f"data {fingerprint} differs from the run's {run['fingerprint']}", 1)
    if args.test:
        _check_test_split(data_dir)
    seed = run["seed"] if args.seed is None else args.seed
    spec = contract.make_spec(
        id=f"verify-{args.id}",
        tag=tag,
        parent="",
        commit=run["commit"],
        source=git.read(run["commit"]),
        profile=profile.name,
        fingerprint=fingerprint,
        budget=run["budget"],
        seed=seed,
        description=f"verify {args.id}",
        test_split=args.test,
    )
    result = run_once(s, spec, data_dir, runs_dir, "autoresearch-verify-")
    recorded = float(row["val_bpb"] or 0) or None
    sigma, dof = noise.pooled_sigma(rows)
    diff = None if result["val_bpb"] is None or recorded is None else result["val_bpb"] - recorded
    out = {
        "id": args.id,
        "tag": tag,
        "commit": run["commit"][:12],
        "seed": seed,
        "recorded_status": row["status"],
        "recorded_val_bpb": recorded,
        "status": result["status"],
        "val_bpb": result["val_bpb"],
        **({"test_bpb": result["test_bpb"]} if args.test else {}),
        "difference": diff,
        "noise_sigma": sigma if dof else None,
        "sigmas": None if diff is None or not dof or not sigma else diff / sigma,
        **_stamps(_recorded_result(runs_dir, tag, args.id), result),
        "error": result["error"],
    }
    _show(out, args.json, 18, hidden=FULL_STAMPS)
    return 0 if result["status"] == Outcome.OK else 1
