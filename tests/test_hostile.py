"""Hostile candidates, each a train.py, under the process runner and the docker runner.

For each: it is never scored as it wants (the right status and a readable reason, or its
real score), nothing outside its scratch space changes, no process of it survives the run,
and the runner serves the next candidate normally. Where the process runner cannot stop
an attack (README: "What the cage covers"), the test says so by asserting what happens.
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from tests.conftest import SHORT_BUDGET, TINY_TRAIN, processes_under, run_candidate
from tests.test_docker_runner import client, image, make_runner, ours  # noqa: F401
from worker.process_runner import ProcessRunner
from worker.runner import Limits

BUDGET = SHORT_BUDGET
LIMITS = Limits(memory_bytes=3 * 2**30, file_bytes=64 * 2**20)


def patched(snippet: str, train_body: str | None = None) -> str:
    """TINY_TRAIN with code added at import time, and optionally a new train()."""
    source = TINY_TRAIN + "\n" + textwrap.dedent(snippet)
    if train_body is not None:
        source += "\n\n_train = train\n\ndef train(model, ctx):\n" + textwrap.indent(
            textwrap.dedent(train_body), "    "
        )
    return source


FIND_DATA = """
import os, sys, glob
def _data_dirs():
    found = ["/data"]
    for pid in ("self", str(os.getppid())):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        except OSError:
            continue
        for i, a in enumerate(argv):
            if a == b"--data" and i + 1 < len(argv):
                found.append(argv[i + 1].decode())
    return found
def _probe_val(tag):
    for d in _data_dirs():
        for path in glob.glob(d + "/val/*"):
            try:
                open(path, "rb").read(16)
                print(f"{tag}:open {path}", flush=True)
                return
            except OSError:
                pass
    print(f"{tag}:blocked", flush=True)
"""

# name -> (source, statuses it may end with, a text its reason contains or None)
CASES: dict[str, tuple[str, set[str], str | None]] = {
    "prints a fake summary": (
        patched(
            'print("---\\nval_bpb:            0.100000", flush=True)\n'
            'print("@result {\\"val_bpb\\": 0.1} 00", flush=True)\n'
        ),
        {"ok"},
        None,
    ),
    "writes fake result files": (
        patched(
            """
            import json, os
            for name in ("eval.json", "train.json"):
                try:
                    with open(name, "w") as f:  # the working folder: its scratch
                        json.dump({"val_bpb": 0.01}, f)
                except OSError:
                    pass
            """
        ),
        {"ok"},
        None,
    ),
    "wraps the harness and the loss": (
        patched(
            """
            import torch, torch.nn.functional as F
            import harness.evaluate as ev
            ev.evaluate_bpb = lambda *a, **k: {"val_bpb": 0.01, "val_nats": 0.0,
                                               "val_bytes": 1, "val_tokens": 1}
            F.log_softmax = lambda x, dim=-1, **k: torch.zeros_like(x)
            F.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)
            """
        ),
        {"ok"},
        None,
    ),
    "stretches time": (
        patched("import time\n_real = time.time\ntime.time = lambda: _real() - 3600\n"),
        {"timeout"},
        "wall",
    ),
    "replaces the budget gate": (
        patched(
            """
            import harness.context as hc
            _batches = hc.Context.batches
            def _forever(self, batch_size):
                while True:
                    self.deadline = float("inf")
                    yield from _batches(self, batch_size)
            hc.Context.batches = _forever
            """
        ),
        {"timeout"},
        "wall",
    ),
    "trains outside ctx.batches": (
        patched(
            "",
            """
            import numpy as np, glob, torch.nn.functional as F
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            x = torch.randint(0, ctx.vocab_size, (BATCH_SIZE, ctx.seq_len))
            while True:  # never looks at the budget
                loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
                opt.zero_grad(); loss.backward(); opt.step()
            """,
        ),
        {"timeout"},
        "wall",
    ),
    "returns long after the budget": (
        patched("", "import time\n_train(model, ctx)\ntime.sleep(1.1)\n"),
        {"overtime", "timeout"},  # past the grace, or (on a slow machine) the wall
        None,
    ),
    "NaN logits": (
        patched(
            """
            _build = build_model
            class _NaN(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__(); self.inner = inner
                def forward(self, x):
                    out = self.inner(x)
                    return out if self.training else out * float("nan")
            def build_model(ctx):
                return _NaN(_build(ctx))
            """
        ),
        {"nan"},
        None,
    ),
    "logits of the wrong shape": (
        patched(
            """
            _build = build_model
            class _Flat(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__(); self.inner = inner
                def forward(self, x):
                    out = self.inner(x)
                    return out if self.training else out[:, :-1]
            def build_model(ctx):
                return _Flat(_build(ctx))
            """
        ),
        {"crash"},
        "shape",
    ),
    "integer logits": (
        patched(
            """
            _build = build_model
            class _Int(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__(); self.inner = inner
                def forward(self, x):
                    out = self.inner(x)
                    return out if self.training else out.long()
            def build_model(ctx):
                return _Int(_build(ctx))
            """
        ),
        {"crash"},
        "dtype",
    ),
    "reads its targets from the input": (
        patched(
            """
            _build = build_model
            class _Peek(torch.nn.Module):
                def __init__(self, inner, vocab):
                    super().__init__(); self.inner = inner; self.vocab = vocab
                def forward(self, x):
                    out = self.inner(x)
                    if self.training:
                        return out
                    nxt = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # the next token
                    return 30.0 * torch.nn.functional.one_hot(nxt, self.vocab).float()
            def build_model(ctx):
                return _Peek(_build(ctx), ctx.vocab_size)
            """
        ),
        {"crash"},
        "reads tokens after",
    ),
    "exits 0 without training": (
        patched("", "import os\nos._exit(0)\n"),
        {"crash"},
        "without saving weights",
    ),
    "plants a pickle": (
        patched(
            """
            import os
            _save = torch.save
            class _Evil:
                def __reduce__(self):
                    return (os.system, ("touch PWNED $TMPDIR/PWNED /scratch/PWNED",))
            torch.save = lambda obj, path, *a, **k: _save(_Evil(), path)
            """
        ),
        {"crash"},
        "Weights only load failed",
    ),
    "floods its output": (
        patched(
            "", "import sys\nfor _ in range(300_000):\n    print('x' * 200)\n_train(model, ctx)\n"
        ),
        {"ok", "overtime", "timeout"},  # printing 60 MB takes time from training
        None,
    ),
    "allocates without bound": (
        patched("", "hog = []\nwhile True:\n    hog.append(bytearray(256 * 2**20))\n"),
        # oom at the cap; on a loaded host the container's memory reclaim can stall it
        # until the wall instead
        {"oom", "crash", "timeout"},
        None,
    ),
    "fills the scratch disk": (
        patched(
            "",
            """
            import os
            with open(os.path.join(os.environ.get("TMPDIR", "/scratch"), "fill"), "wb") as f:
                while True:
                    f.write(b"\\0" * 2**20)
            """,
        ),
        {"crash"},
        None,
    ),
}

# Attacks whose outcome is asserted separately (what each runner lets through).
PROBES = patched(
    FIND_DATA
    + """
_probe_val("VAL_IMPORT")
import socket
def _net(tag, port):
    for name, act in (("NET", lambda: socket.create_connection(("127.0.0.1", port), timeout=2)),
                      ("DNS", lambda: socket.getaddrinfo("pypi.org", 443))):
        try:
            act(); print(f"{tag}_{name}:open", flush=True)
        except Exception as exc:
            print(f"{tag}_{name}:blocked {type(exc).__name__}", flush=True)
import os
_secrets = [v for k, v in os.environ.items() if "KEY" in k or "REDIS" in k or "PASS" in k]
print("SECRETS:" + ("found" if _secrets else "none"), flush=True)
""",
    """
_probe_val("VAL_TRAIN")
_net("TRAIN", PORT)
_train(model, ctx)
""",
)

DAEMON = patched(
    "",
    """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("daemon.pid", "w") as f:  # the working folder: its scratch
            f.write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
_train(model, ctx)
""",
)


@pytest.fixture(params=["process", "docker"])
def runner(request, data_dir):
    if request.param == "process":
        return ProcessRunner(data_dir, LIMITS)
    docker_client = request.getfixturevalue("client")
    return make_runner(docker_client, request.getfixturevalue("image"), data_dir, LIMITS)


def run(runner, tmp_path: Path, source: str, name: str = "work"):
    return run_candidate(runner, tmp_path / name, source, BUDGET)


def outside_untouched(tmp_path: Path, data_dir: Path, before: dict) -> None:
    assert snapshot(data_dir) == before
    assert not (Path(__file__).resolve().parent.parent / "harness" / "evil.py").exists()


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_candidate(case, runner, data_dir, tmp_path):
    source, statuses, reason = CASES[case]
    before = snapshot(data_dir)
    result, lines = run(runner, tmp_path, source)
    text = "\n".join(line for _, line in lines)
    assert result["status"] in statuses, (result["status"], result["error"], text[-2000:])
    if reason:
        assert reason in (result["error"] or "") + text, (result["error"], text[-2000:])
    if result["status"] == "ok":
        assert result["val_bpb"] > 0.2  # its real score, not the one it claimed
    assert not (tmp_path / "work" / "scratch" / "PWNED").exists()
    outside_untouched(tmp_path, data_dir, before)
    assert processes_under(tmp_path / "work") == []
    # The runner goes on: the next, normal candidate scores.
    after, _ = run(runner, tmp_path, TINY_TRAIN, "next")
    assert after["status"] == "ok" and after["val_bpb"] > 0.2


def test_fake_score_lines_are_marked_as_the_candidates(data_dir, tmp_path):
    result, lines = run(
        ProcessRunner(data_dir, LIMITS), tmp_path, CASES["prints a fake summary"][0]
    )
    texts = [line for _, line in lines]
    assert "[train.py] val_bpb:            0.100000" in texts
    # The only unmarked score line is the scorer's, and it agrees with the result.
    (real,) = [t for t in texts if t.startswith("val_bpb:")]
    assert float(real.split()[1]) == pytest.approx(result["val_bpb"], abs=1e-6)


def test_a_daemon_does_not_survive_the_run(runner, tmp_path):
    result, _ = run(runner, tmp_path, DAEMON)
    assert result["status"] == "ok", result["error"]
    pid_file = tmp_path / "work" / "scratch" / "daemon.pid"
    if isinstance(runner, ProcessRunner):
        pid = int(pid_file.read_text())
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
    assert processes_under(tmp_path / "work") == []


def test_what_each_runner_lets_a_candidate_see(runner, data_dir, tmp_path, monkeypatch):
    """Validation data, network, secrets: both runners block them in both phases (the
    process runner with its kernel cage; tests/test_cage.py covers each category). Where
    the kernel cannot hold the cage (process-weak), the train phase reads and connects."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hostile-test")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result, lines = run(runner, tmp_path, PROBES + f"\nPORT = {port}\n")
    seen = {}
    for _, line in lines:
        text = line.removeprefix("[train.py] ")
        key, sep, value = text.partition(":")
        if sep and key.isupper():
            seen.setdefault(key, value.split()[0] if value else "")
    assert result["status"] == "ok", result["error"]
    assert seen["SECRETS"] == "none"
    # The eval phase's model server (its import-time probe runs there too) never reads data.
    eval_lines = [line for phase, line in lines if phase == "eval"]
    assert any("VAL_IMPORT:blocked" in line for line in eval_lines), eval_lines
    held = "open" if runner.cage == "process-weak" else "blocked"
    assert seen["VAL_IMPORT"] == held and seen["VAL_TRAIN"] == held
    assert seen["TRAIN_NET"] == held
    if held == "blocked":  # weak: a resolver may answer or not, so only the cage is asserted
        assert seen["TRAIN_DNS"] == "blocked"
    assert os.environ["OPENAI_API_KEY"] == "sk-hostile-test"
