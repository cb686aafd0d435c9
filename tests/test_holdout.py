"""The held-out test split: out of every candidate's reach, scored only when a spec asks.

Under both runners a candidate looks for the test split at import, in build_model(), in
train() and in its model's forward, in the train phase and in the eval phase's model server,
and says what it found. In a normal job nothing of it is reachable (while a train shard is,
in the train phase: the probe works); with test_split the scorer reads it and the result
carries test_bpb, the same computation as val_bpb, and still no candidate code reaches it.
The process runner's cases need the kernel's cage (as in tests/test_cage.py): where it
cannot hold they fail, saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness import manifest as mf
from harness.evaluate import score_split
from tests import test_cage
from tests.conftest import SHORT_BUDGET, clean_env, git, run_candidate
from tests.test_cage import BUDGET, FIXED, LIMITS
from tests.test_docker_runner import client, image  # noqa: F401
from worker.process_runner import ProcessRunner
from worker.runner import InfraError
from worker.simulate import TEST_OFFSET, SimulatedRunner

PEEK = '''
_PATHS = {paths!r}
_SEEN = set()


def _peek(where, paths=_PATHS, tag="PEEK"):
    """Try to read the first bytes of each path; one report line per place, once."""
    if (tag, where) in _SEEN:
        return
    _SEEN.add((tag, where))
    for _path in paths:
        try:
            with open(_path, "rb") as _fh:
                _fh.read(16)
            print(f"{{tag}} {{where}}: open {{_path}}", flush=True)
            return
        except OSError:
            pass
    print(f"{{tag}} {{where}}: blocked", flush=True)


_peek("import")
_peek("import", {control!r}, "CONTROL")
_build, _train = build_model, train


def build_model(ctx):
    _peek("build_model")
    model = _build(ctx)
    _forward = model.forward

    def forward(x):
        _peek("forward")
        return _forward(x)

    model.forward = forward
    return model


def train(model, ctx):
    _peek("train")
    _train(model, ctx)
'''
_REPORT = re.compile(r"(PEEK|CONTROL) (\w+): (open \S+|blocked)")


# Both runners, each caged, as the cage's tests get them (with their budget and limits).
runner = test_cage.runner


def peeking(data_dir: Path) -> str:
    """FIXED (12 deterministic steps) that looks for the test split, on the host's path
    (process runner) and the container's (docker runner)."""
    paths = [str(data_dir / mf.TEST_DIR / "test.bin"), f"/data/{mf.TEST_DIR}/test.bin"]
    control = [str(data_dir / mf.TRAIN_DIR / "train_00000.bin"), "/data/train/train_00000.bin"]
    return FIXED + PEEK.format(paths=paths, control=control)


def reports(lines: list[tuple[str, str]]) -> dict[tuple[str, str, str], str]:
    """{(phase, PEEK or CONTROL, where): "open" or "blocked"}, read by their shape (another
    process of the phase may write into the middle of a line)."""
    seen = {}
    for phase in ("train", "eval"):
        text = "\n".join(line for p, line in lines if p == phase)
        for kind, where, what in _REPORT.findall(text):
            seen[(phase, kind, where)] = what.split()[0]
    return seen


def assert_out_of_reach(lines: list[tuple[str, str]]) -> None:
    seen = reports(lines)
    peeks = {key: what for key, what in seen.items() if key[1] == "PEEK"}
    places = {("train", w) for w in ("import", "build_model", "train", "forward")}
    places |= {("eval", w) for w in ("import", "build_model", "forward")}
    assert {(phase, where) for phase, _, where in peeks} == places, seen
    assert set(peeks.values()) == {"blocked"}, peeks
    assert seen[("train", "CONTROL", "import")] == "open"  # the probe can read what it may


def scratch_paths(runner, workdir: Path, phase: str) -> list[str]:
    """What a phase of the runner's current spec can reach of the data: the container's
    mount targets, or the cage's read rules."""
    if isinstance(runner, ProcessRunner):
        return runner.policy(phase, workdir)["read"]
    return [m["Target"] for m in runner._mounts(phase, workdir)]


def test_a_normal_job_never_reaches_the_test_split(runner, data_dir, tmp_path):
    result, lines = run_candidate(runner, tmp_path / "work", peeking(data_dir), BUDGET)
    assert result["status"] == "ok", result["error"]
    assert result["test_bpb"] is None
    assert not any(line.startswith("test_bpb:") for _, line in lines)
    assert_out_of_reach(lines)
    # The eval phase itself (the scorer's side) is not given it either.
    test_dir = str(data_dir.resolve() / mf.TEST_DIR)
    for phase in ("train", "eval"):
        reach = scratch_paths(runner, tmp_path / "work", phase)
        assert not [p for p in reach if p in (test_dir, f"/data/{mf.TEST_DIR}")], (phase, reach)


def _in_process(data_dir: Path, weights: Path) -> dict[str, float]:
    """val_bpb and test_bpb of the trained weights, scored here by the same function."""
    manifest = mf.load_manifest(data_dir)
    namespace: dict = {}
    threads = torch.get_num_threads()
    exec(compile(FIXED, "train.py", "exec"), namespace)  # it sets one thread: put back below
    torch.set_num_threads(threads)
    vocab = manifest["tokenizer"]["vocab_size"]
    ctx = SimpleNamespace(seed=0, vocab_size=vocab, device=torch.device("cpu"))
    model = namespace["build_model"](ctx)
    model.load_state_dict(torch.load(weights, weights_only=True))
    token_bytes = np.load(data_dir / manifest["tokenizer"]["token_bytes"])
    how = {
        "bos_id": manifest["tokenizer"]["bos_id"],
        "seq_len": manifest["profile"]["seq_len"],
        "vocab_size": vocab,
        "batch_size": manifest["profile"]["eval_batch_size"],
        "device": torch.device("cpu"),
    }
    return {
        split: score_split(model, data_dir / manifest[split]["file"], token_bytes, **how)["val_bpb"]
        for split in ("val", "test")
    }


def test_with_test_split_the_result_carries_test_bpb(runner, data_dir, tmp_path):
    """The scorer scores the test split as it scores validation; still no candidate code
    (train phase, model server) reaches it."""
    work = tmp_path / "work"
    result, lines = run_candidate(runner, work, peeking(data_dir), BUDGET, test_split=True)
    assert result["status"] == "ok", result["error"]
    assert_out_of_reach(lines)
    assert isinstance(result["test_bpb"], float) and result["test_bpb"] > 0
    assert result["test_bpb"] != result["val_bpb"]
    (line,) = [line for phase, line in lines if line.startswith("test_bpb:")]
    assert float(line.split()[1]) == pytest.approx(result["test_bpb"], abs=1e-6)
    here = _in_process(data_dir, work / "scratch" / "model.pt")
    assert result["val_bpb"] == pytest.approx(here["val"], rel=1e-5)
    assert result["test_bpb"] == pytest.approx(here["test"], rel=1e-5)
    test_dir = str(data_dir.resolve() / mf.TEST_DIR)
    eval_reach = scratch_paths(runner, work, "eval")
    assert test_dir in eval_reach or f"/data/{mf.TEST_DIR}" in eval_reach
    train_reach = scratch_paths(runner, work, "train")
    assert not [p for p in train_reach if p in (test_dir, f"/data/{mf.TEST_DIR}")]


@pytest.fixture
def old_data(data_dir, tmp_path_factory) -> Path:
    """The data as prepared before test splits: no test/ and a manifest without one."""
    old = tmp_path_factory.mktemp("old") / "cpu"
    shutil.copytree(data_dir, old)
    shutil.rmtree(old / mf.TEST_DIR)
    manifest = mf.load_manifest(old)
    del manifest["test"]
    manifest["version"] = 2
    manifest["fingerprint"] = mf.fingerprint(manifest)
    (old / mf.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return old


def test_data_prepared_before_test_splits_works_but_cannot_score_one(old_data, tmp_path):
    runner = ProcessRunner(old_data, LIMITS)
    result, _ = run_candidate(runner, tmp_path / "a", FIXED, BUDGET)
    assert result["status"] == "ok" and result["test_bpb"] is None, result["error"]
    with pytest.raises(InfraError, match=r"without a test split: run `autoresearch prepare`"):
        run_candidate(runner, tmp_path / "b", FIXED, BUDGET, test_split=True)


def test_a_tampered_test_split_is_an_infra_error_only_when_it_is_used(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    with open(data / mf.TEST_DIR / "test.bin", "r+b") as fh:
        fh.seek(2)
        fh.write(b"\x01\x00")
    runner = ProcessRunner(data, LIMITS)
    result, _ = run_candidate(runner, tmp_path / "a", FIXED, BUDGET)
    assert result["status"] == "ok", result["error"]
    with pytest.raises(InfraError, match="test/test.bin differs from its checksum"):
        run_candidate(runner, tmp_path / "b", FIXED, BUDGET, test_split=True)


def test_the_simulated_runner_gives_test_bpb_only_when_asked(data_dir, tmp_path):
    runner = SimulatedRunner(data_dir)
    exact = "SIM_VAL_BPB = 0.9\nSIM_NOISE = 0.0\nSIM_HOLD_S = 0\n"
    noisy = "SIM_VAL_BPB = 0.9\nSIM_HOLD_S = 0\n"
    got = {}
    for name, source in (("exact", exact), ("noisy", noisy)):
        for test in (False, True, True):
            result, _ = run_candidate(runner, tmp_path / name, source, BUDGET, test_split=test)
            got.setdefault((name, test), []).append((result["val_bpb"], result["test_bpb"]))
    assert got[("exact", False)] == [(0.9, None)]
    assert got[("exact", True)] == [(0.9, 0.9 + TEST_OFFSET)] * 2
    ((val, none),) = got[("noisy", False)]
    assert none is None
    (v1, t1), (v2, t2) = got[("noisy", True)]
    assert v1 == v2 == val and t1 == t2  # seeded: the same source and seed measure the same
    assert t1 != val + TEST_OFFSET  # its own noise, not val_bpb's shifted


# The CLI: `verify --test` on a recorded experiment, and its harness and image check.


def record(repo: Path, runs: Path, data: Path, stamps: dict) -> None:
    """A recorded experiment 0001 of run t: its row, decision.json and result.json."""
    from orchestrator.results import ResultsFile

    commit = git(repo, "rev-parse", "HEAD").strip()
    ResultsFile(runs / "t" / "results.tsv").append(
        {"commit": commit[:7], "val_bpb": 2.5, "status": "keep", "id": "0001", "description": "b"}
    )
    fingerprint = mf.load_manifest(data)["fingerprint"]
    run = {"seed": 0, "budget": SHORT_BUDGET, "profile": "cpu", "fingerprint": fingerprint}
    result = {"status": "ok", "val_bpb": 2.5, "test_bpb": None, **stamps}
    folder = runs / "t" / "0001"
    folder.mkdir(parents=True, exist_ok=True)
    decision = {"decision": "keep", "run": {**run, "commit": commit}, "result": result}
    (folder / "decision.json").write_text(json.dumps(decision))
    (folder / "result.json").write_text(json.dumps(result))


def verify(repo: Path, runs: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    common = ["--runner", "process", "--profile", "cpu", "--data-dir", str(data)]
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "verify", "0001", "--tag", "t", *args]
        + [*common, "--runs-dir", str(runs)],
        cwd=repo,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_verify_test_shows_test_bpb_and_says_when_the_harness_differs(repo, data_dir, tmp_path):
    runs = tmp_path / "runs"
    record(repo, runs, data_dir, {"harness_sha256": "0" * 64, "image": None})
    out = verify(repo, runs, data_dir, "--test", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["status"] == "ok" and isinstance(got["test_bpb"], float)
    assert isinstance(got["val_bpb"], float) and got["test_bpb"] != got["val_bpb"]
    assert got["recorded_harness_sha256"] == "0" * 64
    assert got["harness_sha256"] == mf.harness_digest()
    assert got["harness"].startswith("DIFFERS: recorded 000000000000, this run ")
    assert got["image"] == "no image in both"
    # The same harness, recorded as it is: said to be the same, in text this time.
    (runs / "t" / "0001" / "result.json").write_text(
        json.dumps({"harness_sha256": mf.harness_digest(), "image": None})
    )
    text = verify(repo, runs, data_dir, "--test")
    assert text.returncode == 0, text.stderr[-2000:]
    fields = dict(line.split(None, 1) for line in text.stdout.splitlines() if " " in line)
    assert float(fields["test_bpb"]) > 0 and float(fields["val_bpb"]) > 0
    assert fields["harness"] == "same"
    assert list(fields).index("test_bpb") == list(fields).index("val_bpb") + 1


def test_verify_test_on_data_without_a_test_split_is_one_line(repo, old_data, tmp_path):
    runs = tmp_path / "runs"
    record(repo, runs, old_data, {"harness_sha256": mf.harness_digest(), "image": None})
    out = verify(repo, runs, old_data, "--test")
    assert out.returncode == 1
    assert out.stdout == ""
    (last,) = out.stderr.strip().splitlines()[-1:]
    assert last.startswith("autoresearch: error: the data in ")
    assert last.endswith("without a test split: run `autoresearch prepare` again to score one")
