"""The process runner on real subprocesses: every outcome a candidate can have."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import (
    SHORT_BUDGET,
    TIMED_TRAIN,
    TINY_TRAIN,
    assert_wall_starts_at_the_go,
    processes_under,
    run_candidate,
)
from worker.process_runner import ProcessRunner, visible_device
from worker.runner import InfraError, Limits

BUDGET = SHORT_BUDGET


def run(data_dir: Path, tmp_path: Path, source: str, budget: dict | None = None, limits=None):
    return run_candidate(
        ProcessRunner(data_dir, limits), tmp_path / "work", source, budget or BUDGET
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by whoever adopted it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\tZ" in status.read_text().split("State:")[1].split("\n")[0])


def test_ok_candidate_scores_and_streams(data_dir, tmp_path):
    result, lines = run(data_dir, tmp_path, TINY_TRAIN)
    assert result["status"] == "ok", result["log_tail"]
    assert 0 < result["val_bpb"] < 20
    assert result["tokens"] > 0 and result["steps"] > 0 and result["params"] > 0
    # The budget gate stopped training before the wall, with room to save.
    assert result["training_s"] < BUDGET["train_wall_s"]
    for key in ("startup_s", "first_step_s", "save_s", "eval_s", "train_phase_s", "total_s"):
        assert result[key] is not None and result[key] >= 0, key
    phases = [p for p, _ in lines]
    assert phases.index("eval") > phases.index("train")  # streamed in order
    assert any(line.startswith("@metrics ") for _, line in lines)
    assert any(line.startswith("val_bpb:") for _, line in lines)


def test_raising_candidate_is_a_crash_with_reason(data_dir, tmp_path):
    source = TINY_TRAIN.replace(
        "    opt = torch", "    raise RuntimeError('boom in train')\n    opt = torch"
    )
    result, _ = run(data_dir, tmp_path, source)
    assert result["status"] == "crash"
    assert "boom in train" in result["error"]
    assert result["val_bpb"] is None
    # The eval process started ahead (waiting for its go) is gone too.
    assert processes_under(tmp_path / "work") == []


def test_nan_logits_are_status_nan(data_dir, tmp_path):
    source = TINY_TRAIN + (
        "\n\nclass NanModel(torch.nn.Module):\n"
        "    def __init__(self, inner):\n"
        "        super().__init__()\n"
        "        self.inner = inner\n"
        "    def forward(self, x):\n"
        "        return self.inner(x) * float('nan')\n"
        "\n\n_build = build_model\n"
        "def build_model(ctx):\n"
        "    return NanModel(_build(ctx))\n"
    )
    result, _ = run(data_dir, tmp_path, source)
    assert result["status"] == "nan", result["log_tail"]


def test_hang_is_killed_at_the_wall_with_its_children(data_dir, tmp_path):
    source = (
        "import subprocess, time, torch\n"
        "def build_model(ctx):\n"
        "    return torch.nn.Linear(1, 1)\n"
        "def train(model, ctx):\n"
        "    child = subprocess.Popen(['sleep', '600'])\n"
        "    open('child.pid', 'w').write(str(child.pid))\n"
        "    open('deadline', 'w').write(repr(ctx.deadline))\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
    )
    result, _ = run(data_dir, tmp_path, source)
    ended = time.time()
    assert result["status"] == "timeout"
    assert "wall" in result["error"]
    assert BUDGET["train_wall_s"] <= result["train_phase_s"] < BUDGET["train_wall_s"] + 3
    # Killed a whole wall after the go (the deadline the harness got, less the margin),
    # not after the process's start, which came before it.
    deadline = float((tmp_path / "work" / "scratch" / "deadline").read_text())
    went = deadline - (BUDGET["train_wall_s"] - BUDGET["save_margin_s"])
    assert ended - went >= BUDGET["train_wall_s"] and result["prestart_s"] > 0
    pid = int((tmp_path / "work" / "scratch" / "child.pid").read_text())
    assert not alive(pid)
    assert processes_under(tmp_path / "work") == []


def test_late_return_is_overtime(data_dir, tmp_path):
    # Returns 1.5 s late: past the 0.5 s grace, before the wall (3 s of margin).
    source = TINY_TRAIN + "    import time\n    time.sleep(1.5)\n"
    budget = {**BUDGET, "save_margin_s": 3.0, "return_grace_s": 0.5}
    result, _ = run(data_dir, tmp_path, source, budget)
    assert result["status"] == "overtime"
    assert "after the deadline" in result["error"]
    assert result["val_bpb"] is None


def test_unbounded_allocation_is_oom(data_dir, tmp_path):
    source = TINY_TRAIN.replace(
        "    opt = torch",
        "    hog = []\n    while True:\n        hog.append(bytearray(2**26))\n    opt = torch",
    )
    budget = {**BUDGET, "train_wall_s": 30.0}
    result, _ = run(data_dir, tmp_path, source, budget, limits=Limits(memory_bytes=2 * 2**30))
    assert result["status"] == "oom", result["log_tail"]
    assert "GiB resident" in result["error"]
    assert processes_under(tmp_path / "work") == []


def test_memory_a_child_holds_in_another_session_counts(data_dir, tmp_path):
    """The cap is on resident memory of the whole phase (no address-space limit, which a
    CUDA build's start-up would hit): a child that left the session is counted too."""
    source = TINY_TRAIN.replace(
        "    opt = torch",
        "    import subprocess, sys\n"
        "    hog = 'h = []\\nwhile True: h.append(bytearray(2**26))'\n"
        "    subprocess.Popen([sys.executable, '-c', hog], start_new_session=True).wait()\n"
        "    opt = torch",
    )
    budget = {**BUDGET, "train_wall_s": 30.0}
    result, _ = run(data_dir, tmp_path, source, budget, limits=Limits(memory_bytes=2 * 2**30))
    assert result["status"] == "oom", result["log_tail"]
    assert result["train_phase_s"] < 25
    assert processes_under(tmp_path / "work") == []


def test_no_secret_reaches_the_candidate(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@localhost:6379/0")
    source = TINY_TRAIN.replace(
        "    opt = torch",
        "    import os\n    print('ENV', sorted(os.environ.items()))\n    opt = torch",
    )
    result, lines = run(data_dir, tmp_path, source)
    env_line = next(line for _, line in lines if line.startswith("ENV"))
    assert "PATH" in env_line
    assert "sk-test-secret" not in env_line and "hunter2" not in env_line
    assert result["status"] == "ok"


def test_exit_without_saving_is_a_crash(data_dir, tmp_path):
    source = TINY_TRAIN.replace(
        "    opt = torch", "    import os\n    os._exit(0)\n    opt = torch"
    )
    result, _ = run(data_dir, tmp_path, source)
    assert result["status"] == "crash"
    assert "without saving weights" in result["error"]


@pytest.mark.parametrize("missing", ["build_model", "train"])
def test_missing_contract_function_is_a_crash(data_dir, tmp_path, missing):
    source = TINY_TRAIN.replace(f"def {missing}(", f"def renamed_{missing}(")
    result, _ = run(data_dir, tmp_path, source)
    assert result["status"] == "crash"
    assert f"no {missing}()" in result["error"]


def test_a_phase_sees_the_workers_gpu_in_pci_order_within_what_it_was_given(
    data_dir, tmp_path, monkeypatch
):
    assert visible_device(None, "0,1") == ""
    assert visible_device(1, None) == "1" and visible_device(1, "") == "1"
    assert visible_device(1, "4, 5,6") == "5"
    assert visible_device(0, "GPU-8f1c,GPU-77ab") == "GPU-8f1c"
    with pytest.raises(InfraError, match="not among"):
        visible_device(2, "4,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    env = ProcessRunner(data_dir, gpu=1)._env(tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "7" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert ProcessRunner(data_dir)._env(tmp_path)["CUDA_VISIBLE_DEVICES"] == ""


def test_the_train_phase_reports_the_hardware_signature_the_worker_probed(data_dir, tmp_path):
    """One line naming the CPU (or GPU) and torch, the same to the character from the probe
    a worker runs at its start as from a candidate's train phase: a run pinned to it finds
    this worker."""
    import re

    import torch

    runner = ProcessRunner(data_dir)
    probed = runner.hardware()
    result, _ = run_candidate(runner, tmp_path / "work", TINY_TRAIN, BUDGET)
    assert result["status"] == "ok", result["log_tail"]
    assert result["hardware"] == probed
    assert "\n" not in probed and probed.endswith(f" | torch {torch.__version__}")
    if torch.cuda.is_available():
        assert probed.startswith(torch.cuda.get_device_name(0) + " | ")
    else:
        threads = torch.get_num_threads()
        assert re.fullmatch(rf"cpu \S.* x{threads} threads \| torch \S+", probed), probed


def test_the_wall_starts_when_the_candidate_is_handed_over(data_dir, tmp_path):
    """The train process starts (interpreter, torch, device) and says it is ready before
    the candidate's code is handed over; its wall, deadline and startup count from the go,
    and the time before it is the result's prestart_s."""
    t0 = time.time()
    result, lines = run_candidate(ProcessRunner(data_dir), tmp_path / "work", TIMED_TRAIN, BUDGET)
    assert_wall_starts_at_the_go(result, lines, BUDGET, t0)


@pytest.mark.parametrize("why", ["slow", "dead"])
def test_a_train_phase_never_ready_is_the_hosts_failure(data_dir, tmp_path, why):
    """Not ready within its limit (no interpreter imports torch in 50 ms), or dead before
    it (no file descriptor left to open even harness/boot.py): an InfraError, and the
    candidate's code was never handed over, let alone run."""
    source = "open('ran', 'w').write('x')\n" + TINY_TRAIN
    runner = ProcessRunner(data_dir, Limits(open_files=3) if why == "dead" else None)
    if why == "slow":
        runner.ready_s = 0.05
    match = "not ready within" if why == "slow" else "ended before it was ready"
    with pytest.raises(InfraError, match=f"the train phase {match}"):
        run_candidate(runner, tmp_path / "work", source, BUDGET)
    assert (tmp_path / "work" / "train.py").read_text() == ""
    assert not (tmp_path / "work" / "scratch" / "ran").exists()
    assert processes_under(tmp_path / "work") == []
