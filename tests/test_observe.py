"""Seeing a run: the harness's progress lines, `logs` (-f, --json, the folder fallback) and
`status` against a live run on real RQ workers (simulate runner), real Redis, real git."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from harness import codes
from harness.context import Context
from harness.manifest import load_manifest
from orchestrator import view
from orchestrator.research import Limits, Policy
from orchestrator.results import COLUMNS
from tests import test_scheduling
from tests.conftest import clean_env, git
from tests.test_loop import _wait_for
from tests.test_progress_bars import assert_log_lines_stand_alone, final_bar, run_on_terminal
from tests.test_scheduling import SIM_TRAIN, ScriptedEdits, lr_edits
from worker import keys
from worker.keys import log_stream_key

# The simulated-worker fixtures, shared with the scheduling tests.
sim_repo, pool, make = test_scheduling.sim_repo, test_scheduling.pool, test_scheduling.make
HOLD = "SIM_HOLD_S = 2.5\n"  # long enough for a few progress lines per experiment


def test_harness_prints_progress_at_a_steady_rate(data_dir, capsys):
    manifest = load_manifest(data_dir)
    ctx = Context(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        seq_len=64,
        device=torch.device("cpu"),
        profile="cpu",
        seed=0,
        deadline=time.time() + 2.6,
        train_paths=[data_dir / s["file"] for s in manifest["train"]],
    )
    ctx.train_started = time.time()
    for step, _batch in enumerate(ctx.batches(4), start=1):
        if step == 3:
            ctx.log(step=3, loss=torch.tensor(2.5))
        time.sleep(0.01)  # stands in for a training step
    lines = [
        json.loads(line.removeprefix(codes.METRICS_PREFIX))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(codes.METRICS_PREFIX)
    ]
    beats = [m for m in lines if m.get("source") == "harness"]
    assert 2 <= len(beats) <= 3  # one a second over 2.6 s, the first after a second
    for a, b in zip(beats, beats[1:], strict=False):
        assert b["batches"] > a["batches"] and b["tokens"] > a["tokens"]
        assert b["remaining_s"] < a["remaining_s"] and b["elapsed_s"] > a["elapsed_s"]
    assert all(m["tok_per_s"] > 0 and 0 < m["progress"] <= 1 for m in beats)
    # The candidate's last logged step and loss ride along, as numbers.
    assert beats[-1]["step"] == 3 and beats[-1]["loss"] == 2.5


def _cli(repo: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_logs_follow_and_status_on_a_live_run(make, pool, sim_repo, redis_server, tmp_path):
    (sim_repo / "workspace" / "train.py").write_text(HOLD + SIM_TRAIN)
    git(sim_repo, "commit", "-qam", "hold each worker 2.5 s")
    pool(2)
    r = make(ScriptedEdits(lr_edits(2)), Policy(noise_runs=1, confirm=False), Limits(2))
    where = ["--tag", "s", "--runs-dir", str(tmp_path / "runs"), "--redis-url", redis_server.url]
    # Started before the experiment exists: -f waits for its stream, then ends with it.
    one = _cli(sim_repo, "logs", "0001", "-f", "--no-json", *where)
    every = _cli(sim_repo, "logs", "-f", "--json", *where)
    seen: list[dict] = []

    def read_every() -> None:
        for line in every.stdout:
            seen.append(json.loads(line))

    reader = threading.Thread(target=read_every, daemon=True)
    reader.start()
    got: dict = {}

    def running_with_progress() -> bool:
        snap = view.snapshot(r.redis, "s", tmp_path / "runs")
        return any(w["exp_id"] and "step" in w for w in snap["workers"])

    def look() -> None:  # from another thread: run() owns the main one (signals)
        _wait_for(running_with_progress, what="a worker showing live progress")
        got["status"] = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "status", "--json", *where],
            cwd=sim_repo,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    # What an earlier run under the same tag left in Redis is not this run's.
    r.redis.hset(keys.run_state_key("s"), mapping={"started": "1", "status": "stopped"})
    stale = {c: "" for c in COLUMNS} | {"id": "0000", "status": "keep", "commit": "0ld0ld0"}
    r.redis.rpush(keys.results_key("s"), json.dumps(stale | {"time": "2026-01-01T00:00:00Z"}))
    r.redis.xadd(log_stream_key("s", "0001"), {"kind": "line", "text": "old run", "t": "1"})
    side = threading.Thread(target=look)
    side.start()
    r.run()
    side.join()
    status = got["status"]
    assert status.returncode == 0, status.stderr
    snap = json.loads(status.stdout)
    assert snap["running"] and snap["state"]["status"] == "running"
    assert len(snap["workers"]) == 2
    # Each worker's hardware signature, as it published it (the simulate runner's default).
    assert [w["hardware"] for w in snap["workers"]] == ["simulated", "simulated"]
    busy = [w for w in snap["workers"] if w["exp_id"]]
    assert busy and all(w["tag"] == "s" and w["host"] and w["gpu"] == "cpu" for w in busy)
    live = [w for w in busy if "step" in w]
    assert live and all({"loss", "remaining_s", "age_s"} <= set(w) for w in live)
    assert all(0 <= w["remaining_s"] < 2.5 for w in live)

    # logs 0001 -f ended by itself when the experiment did, and showed it as it went.
    out, err = one.communicate(timeout=30)
    assert one.returncode == 0, err
    assert "experiment.start" in out and "experiment.end" in out and "loss" in out
    # --no-json: structlog's console lines (piped, the default is JSON lines)
    assert not out.lstrip().startswith("{") and "id=0001" in out and "phase=train" in out
    _wait_for(lambda: sum(e["event"] == "decided" for e in seen) == 3, what="three decisions")
    every.terminate()
    every.wait(timeout=10)
    ids = {e["id"] for e in seen}
    assert ids == {"0000", "0001", "0002"}  # every experiment, interleaved, with its id
    metrics = [e for e in seen if e["event"] == "metrics"]
    assert metrics and all({"step", "loss", "remaining_s"} <= set(m) for m in metrics)
    starts = [i for i, e in enumerate(seen) if e["event"] == "experiment.start"]
    ends = [i for i, e in enumerate(seen) if e["event"] == "experiment.end"]
    assert min(ends) > min(starts) and len(starts) == len(ends) == 3
    # Redis holds the rows as results.tsv does; the state says the run stopped and why.
    rows = r.results.rows()
    published = [json.loads(x) for x in r.redis.lrange(keys.results_key("s"), 0, -1)]
    assert published == rows
    state = view.state(r.redis, "s")
    assert state["status"] == "stopped" and state["stop_reason"].startswith("max experiments")
    assert json.loads((tmp_path / "runs" / "s" / "state.json").read_text())["status"] == "stopped"

    text = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", *where],
        cwd=sim_repo,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "run s: max experiments (2) reached; 3 experiments" in text
    assert "best val_bpb" in text and "workers (2):" in text and "last rows:" in text
    assert text.count("\n    hardware: simulated\n") == 2
    # The simulated runner holds each worker 2.5 s of "training" and measures nothing else.
    assert "\ntime: queue " in text and "steps 2.50, " in text and "(mean s of the last 3)" in text

    # The stream gone (expired, or another Redis): the run folder's log.jsonl answers.
    live = [
        json.loads(x)
        for x in _cli(sim_repo, "logs", "0001", *where).communicate()[0].split("\n")
        if x
    ]
    r.redis.delete(log_stream_key("s", "0001"))
    old = [
        json.loads(x)
        for x in _cli(sim_repo, "logs", "0001", *where).communicate()[0].split("\n")
        if x
    ]
    assert [e["event"] for e in old] == [e["event"] for e in live]
    assert old[-2]["event"] == "experiment.end" and old[-2]["status"] == "ok"
    assert old[-1]["event"] == "decided" and old[-1]["status"] == rows[1]["status"]
    # --watch redraws in place until Ctrl-C, which ends it cleanly.
    watch = _cli(sim_repo, "status", "--watch", "0.2", *where)
    screens = ""
    while screens.count("\x1b[H\x1b[2J") < 3:
        screens += watch.stdout.readline()
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0
    assert screens.count("run s: max experiments (2) reached") >= 2

    followed = _cli(sim_repo, "logs", "0001", "-f", *where).communicate(timeout=30)[0]
    assert [json.loads(x)["event"] for x in followed.splitlines()] == [e["event"] for e in old]
    assert "old run" not in out  # the earlier run's stream was dropped at the start

    missing = _cli(sim_repo, "logs", "0099", *where)
    _out, err = missing.communicate(timeout=30)
    assert missing.returncode == 2 and err.strip().startswith(
        "autoresearch: error: no log for s/0099"
    )


def test_run_on_a_terminal_draws_its_bar_and_keeps_log_lines_whole(sim_repo, data_dir):
    """A person watching `run`: one bar counting candidates against --max-experiments, with
    best, counts and jobs in flight; the console log's lines go above it."""
    (sim_repo / "workspace" / "train.py").write_text("SIM_HOLD_S = 0.3\n" + SIM_TRAIN)
    git(sim_repo, "commit", "-qam", "short experiments")
    code, _out, terminal = run_on_terminal(
        [sys.executable, "-m", "orchestrator.cli", "run", "--tag", "bar", "--runner", "simulate"]
        + ["--max-experiments", "3", "--noise-runs", "1", "--no-confirm"]
        + ["--train-wall", "5", "--eval-wall", "5"],
        cwd=sim_repo,
        AUTORESEARCH_DATA_DIR=str(data_dir),
    )
    assert code == 0, terminal[-3000:]
    last = final_bar(terminal, "run bar")
    assert "3/3" in last and "100%" in last and "best 1.0" in last, last
    assert "keep 1" in last and "discard" in last, last
    assert_log_lines_stand_alone(terminal, "decided")


def test_terminal_output_shows_control_characters_instead_of_sending_them():
    """A candidate's output or an LLM's description could carry escape sequences: on a
    terminal `logs` and `status` show them as \\xNN, never emit them."""
    hostile = "loss\x1b]0;owned\x07 \x1b[2J\x9b1m done\ttab"
    line = view.Renderer(as_json=False, colors=True)(
        {"t": 0.0, "id": "0001", "phase": "train", "event": hostile, "kind": "line"}
    )
    assert "\x1b]0;" not in line and "\x07" not in line and "\x9b" not in line
    assert "\\x1b]0;owned\\x07" in line and "\\x9b1m" in line and "\ttab" in line
    assert view.printable("a\x1b[2Jb\nc") == "a\\x1b[2Jb\nc"
    # JSON lines keep the text exactly (json escapes it).
    raw = view.Renderer(as_json=True)({"t": 0.0, "event": hostile})
    assert json.loads(raw)["event"] == hostile and "\x1b" not in raw


def test_the_run_console_log_shows_control_characters_and_the_file_keeps_them(tmp_path):
    import io

    import structlog

    from orchestrator import logs

    console = io.StringIO()
    try:
        logs.configure(stream=console, json_console=False)
        logs.tee.open(tmp_path / "run.jsonl")
        logs.get().info("decided", description="x\x1b[2Jy")
    finally:
        logs.tee.close()
        structlog.reset_defaults()
    assert "description=x\\x1b[2Jy" in console.getvalue() and "\x1b[2J" not in console.getvalue()
    record = json.loads((tmp_path / "run.jsonl").read_text())
    assert record["description"] == "x\x1b[2Jy"


def test_a_candidates_metrics_cannot_pose_as_the_entrys_own_fields():
    fields = {
        "kind": "metrics",
        "phase": "train",
        "t": "100.5",
        "text": json.dumps({"t": "3s", "id": "9999", "event": "decided", "step": 3}),
    }
    item = view.entry(fields, "0001", "1-0")
    assert (item["t"], item["id"], item["event"], item["stream_id"]) == (
        100.5,
        "0001",
        "metrics",
        "1-0",
    )
    assert (item["t_"], item["id_"], item["event_"], item["step"]) == ("3s", "9999", "decided", 3)
    assert not view.is_end(item)
    assert "id=0001" in view.Renderer(as_json=False)(item)


def test_experiments_per_hour_counts_this_session_only():
    def ran(i: int, at: str) -> dict[str, str]:
        return {
            "id": f"{i:04d}",
            "status": "discard",
            "commit": f"c{i:06d}",
            "val_bpb": "1.0",
            "time": at,
            "prompt_tokens": "",
            "completion_tokens": "",
            "cost_usd": "",
        }

    earlier = [ran(i, "2026-01-01T00:00:00Z") for i in range(100)]
    today = [ran(100 + i, "2026-01-02T00:30:00Z") for i in range(6)]
    started = "1767312000"  # 2026-01-02T00:00:00Z: this session's start
    s = view.summary(earlier + today, {"started": started, "status": "stopped"}, time.time())
    assert s["experiments"] == 106 and s["hours"] == 0.5 and s["per_hour"] == 12.0
