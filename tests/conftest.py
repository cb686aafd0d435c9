"""Shared fixtures: a real Redis, real git repositories, a real tiny prepared corpus."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import redis as redis_lib

from harness.prepare import prepare
from harness.profiles import get_profile
from orchestrator.redis_server import PrivateRedis

REPO_ROOT = Path(__file__).resolve().parent.parent

# The shortest budget a real phase gets here. Its wall holds only the candidate: importing
# train.py, build_model and its steps; the train process's start (Python, torch with
# torch._dynamo, the harness, the device) comes before the go. When that start still
# counted, torch's CUDA build on 2 cores took about 5 s before the first step trained and
# 6 s walls made honest candidates `overtime`; with the start outside, they pass.
SHORT_BUDGET = {
    "train_wall_s": 6.0,
    "save_margin_s": 1.5,
    "return_grace_s": 0.7,
    "eval_wall_s": 20.0,
}
WORDS = (
    "the model learns to predict the next token from the bytes of text while "
    "validation stays fixed and every result is measured in bits per byte under a budget"
).split()


def write_corpus(folder: Path, files: int = 80, seed: int = 0) -> Path:
    """Deterministic, learnable text: sentences from a small vocabulary, some non-ASCII."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        paras = []
        for _ in range(rng.randint(3, 8)):
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15)))
            paras.append(sentence.capitalize() + rng.choice([".", "!", " — ok.", " ünïcode ✓."]))
        (folder / f"doc_{i:03d}.txt").write_text("\n\n".join(paras), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def redis_server():
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus) -> Path:
    """A prepared cpu-profile data folder from the tiny corpus."""
    out = tmp_path_factory.mktemp("data") / "cpu"
    prepare(out, get_profile("cpu"), source="local", local_dir=corpus)
    return out


def run_candidate(
    runner, workdir: Path, source: str, budget: dict, test_split: bool = False, seed: int = 0
) -> tuple[dict, list]:
    """Run one candidate through a runner; (result, [(phase, line), ...])."""
    from worker import contract

    spec = contract.make_spec(
        id="t",
        tag="t",
        parent="p",
        commit="c",
        source=source,
        profile="cpu",
        fingerprint="f",
        budget=budget,
        seed=seed,
        description="test",
        test_split=test_split,
    )
    lines: list[tuple[str, str]] = []
    fields = runner.run(spec, workdir, lambda phase, line: lines.append((phase, line)))
    return contract.make_result(spec, **fields), lines


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any autoresearch, LLM or Redis setting, but one:
    no final re-measure at a run's end (four more runs; tests/test_trust.py tests it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTORESEARCH_", "OPENAI_", "XDG_")) and k != "REDIS_URL"
    }
    env["AUTORESEARCH_FINAL_RUNS"] = "0"
    env.update(extra)
    return env


def serve_burst(
    cwd: Path, data_dir: Path, redis_url: str, name: str = "w", timeout: int = 120, **env: str
) -> list[dict]:
    """`autoresearch worker --burst --name NAME` until the queue is empty: asserts that it
    exits 0 and returns its structured log lines."""
    import json
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--burst", "--name", name],
        cwd=cwd,
        env=clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), REDIS_URL=redis_url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def processes_under(folder: Path) -> list[int]:
    """PIDs whose working directory lies inside folder (the runner's phases run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(int(proc.name))
    return found


def processes_with(arg: str) -> list[int]:
    """PIDs with arg as one of their command-line arguments."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and arg.encode() in argv:
            found.append(int(proc.name))
    return found


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "HOME": str(repo),
        },
    ).stdout


TINY_TRAIN = '''\
"""A tiny candidate for tests: a bigram model, trained with Adam."""
import torch
import torch.nn.functional as F

LR = 0.03  # learning rate
BATCH_SIZE = 16  # rows per step
DIM = 32  # embedding width


def build_model(ctx):
    torch.manual_seed(ctx.seed)
    model = torch.nn.Sequential(torch.nn.Embedding(ctx.vocab_size, DIM), torch.nn.Linear(DIM, ctx.vocab_size))
    return model.to(ctx.device)


def train(model, ctx):
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for step, (x, y) in enumerate(ctx.batches(BATCH_SIZE)):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            ctx.log(step=step, loss=loss)
'''

# TINY_TRAIN that says when its first line of code ran and the deadline the harness gave
# it, then prints a ready line as the harness's own would be.
TIMED_TRAIN = (
    "import json as _json, time as _time\n_IMPORTED_AT = _time.time()\n"
    + TINY_TRAIN
    + "\n\n_train = train\n\n\ndef train(model, ctx):\n"
    "    print('TIMES ' + _json.dumps([_IMPORTED_AT, ctx.deadline]), flush=True)\n"
    "    print('@ready', flush=True)\n"
    "    _train(model, ctx)\n"
)

# A candidate that says which process runs it (its pid, its host name: a container's id)
# and the seed it was given (on the go line: a train process can start before its job).
SHOW_PROCESS = TINY_TRAIN + (
    "\n\n_train = train\n\n\ndef train(model, ctx):\n"
    "    import os, socket\n"
    "    print(f'PROCESS {os.getpid()} {socket.gethostname()} {ctx.seed}', flush=True)\n"
    "    _train(model, ctx)\n"
)


def shown_process(lines: list) -> tuple[int, str, int]:
    """SHOW_PROCESS's (pid, host name, seed) from a run's (phase, line) pairs."""
    text = next(line for _, line in lines if line.startswith("PROCESS "))
    _, pid, host, seed = text.split()
    return int(pid), host, int(seed)


# A candidate that shows what each phase's compile cache holds: the train phase lists its
# folder, compiles into it and plants a file in the eval phase's; build_model, which the eval phase's model server runs too,
# says which folder it was given and what is in it.
CACHE_PROBE = TINY_TRAIN.replace(
    "def build_model(ctx):\n",
    "def build_model(ctx):\n"
    "    import os\n"
    "    folder = os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')\n"
    "    found = sorted(os.listdir(folder)) if os.path.isdir(folder) else []\n"
    "    print('CACHE', os.path.basename(folder), found, flush=True)\n"
    "    if os.path.basename(folder) == 'compile-cache':\n"
    "        open(os.path.join(folder, 'compiled-by-' + str(ctx.seed)), 'w').write('k')\n"
    "        theirs = os.path.join(os.path.dirname(folder), 'tmp', 'eval-compile-cache')\n"
    "        os.makedirs(theirs, exist_ok=True)\n"
    "        open(os.path.join(theirs, 'planted'), 'w').write('p')\n",
)


def assert_caches_seen(lines: list) -> None:
    """CACHE_PROBE's run, given a frontier cache holding fxgraph/: the train phase found
    the copy in its folder, the eval phase (its model server) an empty folder of its own,
    without what the train phase planted there."""
    # (the model server's lines come marked as the candidate's)
    said = [(phase, line[line.index("CACHE ") :]) for phase, line in lines if "CACHE " in line]
    assert ("train", "CACHE compile-cache ['fxgraph']") in said, said
    eval_said = [line for phase, line in said if phase == "eval"]
    assert eval_said and all(line == "CACHE eval-compile-cache []" for line in eval_said), said


def assert_wall_starts_at_the_go(result: dict, lines: list, budget: dict, t0: float) -> None:
    """TIMED_TRAIN's run, started at t0: the train process started (interpreter, torch,
    device) before the go, and the candidate's wall, deadline and startup count from it."""
    import json

    assert result["status"] == "ok", result["log_tail"]
    times = next(line for _, line in lines if line.startswith("TIMES "))
    imported_at, deadline = json.loads(times[len("TIMES ") :])
    went = deadline - (budget["train_wall_s"] - budget["save_margin_s"])  # the go, as sent
    prestart = result["prestart_s"]
    assert prestart > 0 and went - t0 >= prestart - 0.01
    # None of that start is the candidate's: its code ran right after the go, and its
    # startup (import of train.py, build_model) is a small part of what the start took.
    assert -0.01 < imported_at - went < 0.25 * (went - t0)
    assert result["startup_s"] < 0.5 * prestart
    # Its own ready line, once its code runs, is marked as its own and changes nothing.
    assert ("train", "[train.py] @ready") in lines


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real git repository holding workspace/train.py (the tiny candidate) and program.md."""
    path = tmp_path / "repo"
    (path / "workspace").mkdir(parents=True)
    (path / "workspace" / "train.py").write_text(TINY_TRAIN)
    (path / "program.md").write_text(
        (REPO_ROOT / "program.md").read_text()
        if (REPO_ROOT / "program.md").exists()
        else "# program\n"
    )
    (path / ".gitignore").write_text("workspace/runs/\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-qm", "initial")
    return path
