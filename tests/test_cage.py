"""The cage, case by category, under both runners: what a candidate may not change or reach.

Each hostile candidate tries every target of its category in the train phase and in the
eval phase's model server (at import, which runs in both). Each test asserts that nothing
outside the experiment's scratch changed, that every attempt was refused, and that the next
honest candidate scores exactly as before (a fixed-step candidate: the same val_bpb to the
last digit). The process runner's cases need the kernel's cage (Landlock ABI 3+ and
libseccomp); where it cannot hold they fail, saying why: a cage that is not there is not
a pass.
"""

from __future__ import annotations

import json
import re
import site
import socket
import uuid
from pathlib import Path

import pytest

from harness import cage
from harness import manifest as mf
from tests.conftest import REPO_ROOT, TINY_TRAIN, processes_under, run_candidate
from tests.test_docker_runner import client, image, make_runner  # noqa: F401
from worker.process_runner import ProcessRunner
from worker.runner import HARNESS_DIR, InfraError, Limits

# A wide wall: the fixed candidate returns after 12 steps, and a loaded machine starts slowly.
BUDGET = {"train_wall_s": 30.0, "save_margin_s": 3.0, "return_grace_s": 2.0, "eval_wall_s": 60.0}
LIMITS = Limits(memory_bytes=3 * 2**30, file_bytes=64 * 2**20)
HELD, WHY = cage.probe()
# An honest candidate that trains a fixed 12 steps on one thread (a multi-threaded embedding
# backward sums in a varying order): its val_bpb repeats to the last digit.
FIXED = TINY_TRAIN.replace(
    "        if step % 20 == 0:",
    "        if step == 11:\n            break\n        if step % 20 == 0:",
).replace("import torch\n", "import torch\n\ntorch.set_num_threads(1)\n", 1)
_REFERENCE: dict[str, float] = {}


@pytest.fixture(params=["process", "docker"])
def runner(request, data_dir):
    if request.param == "process":
        if not HELD:
            pytest.fail(f"the kernel cannot hold the process runner's cage: {WHY}")
        return ProcessRunner(data_dir, LIMITS)
    docker_client = request.getfixturevalue("client")
    return make_runner(docker_client, request.getfixturevalue("image"), data_dir, LIMITS)


def run(runner, tmp_path: Path, source: str, name: str = "work"):
    result, lines = run_candidate(runner, tmp_path / name, source, BUDGET)
    return result, [(phase, line.removeprefix("[train.py] ")) for phase, line in lines]


def reference(runner, tmp_path: Path) -> float:
    """The fixed candidate's val_bpb under this runner, before any hostile case."""
    if runner.name not in _REFERENCE:
        result, _ = run(runner, tmp_path, FIXED, "reference")
        assert result["status"] == "ok", result["error"]
        _REFERENCE[runner.name] = result["val_bpb"]
    return _REFERENCE[runner.name]


def next_scores_as_before(runner, tmp_path: Path, before: float) -> None:
    after, _ = run(runner, tmp_path, FIXED, "next")
    assert after["status"] == "ok", after["error"]
    assert after["val_bpb"] == before
    assert processes_under(tmp_path) == []


def fingerprint(paths: list[Path]) -> dict:
    """Content and mtime of every file under paths (and whether each path exists)."""
    out = {}
    for root in paths:
        out[str(root)] = root.exists()
        for path in sorted(root.rglob("*")) if root.is_dir() else [root] * root.is_file():
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path)] = (path.stat().st_mtime_ns, mf.sha256_file(path))
    return out


TAMPER = '''
import json, os

def _attempt(label, path):
    """Write, append, truncate, create beside, rename: each must be refused."""
    done = []
    for name, act in (
        ("append", lambda: open(path, "ab").write(b"#")),
        ("truncate", lambda: os.truncate(path, 0)),
        ("create", lambda: open(path + ".evil", "wb").write(b"x")),
        ("mkdir", lambda: os.mkdir(path + ".d")),
        ("rename", lambda: os.rename(path, path + ".moved")),
    ):
        try:
            act()
            done.append(name)
        except OSError:
            pass
    print(f"TAMPER {label}: " + (",".join(done) or "refused"), flush=True)

for _label, _path in json.loads(TARGETS):
    _attempt(_label, _path)
'''


_ACT = "(?:append|truncate|create|mkdir|rename)"
_REPORT = re.compile(rf"TAMPER [^:\n]+: (?:{_ACT}(?:,{_ACT})*|refused)")


def tamper_source(targets: list[tuple[str, Path]]) -> str:
    listing = json.dumps([(label, str(path)) for label, path in targets])
    return FIXED + f"\nTARGETS = {listing!r}\n" + TAMPER


def test_writes_outside_scratch_are_refused_in_both_phases(runner, data_dir, tmp_path):
    """Harness sources and bytecode, start-up hooks, the data, the run's folder, the
    repository, the user's home: every attempt refused, nothing changed."""
    before_score = reference(runner, tmp_path)
    tag = uuid.uuid4().hex[:8]
    run_dir = tmp_path / "runs"
    (run_dir / "0001").mkdir(parents=True)
    (run_dir / "results.tsv").write_text("commit\tval_bpb\n")
    (run_dir / "0001" / "decision.json").write_text("{}")
    git = REPO_ROOT / ".git"
    sitedir = Path(site.getsitepackages()[0])
    targets = [
        ("harness source", HARNESS_DIR / "evaluate.py"),
        ("harness new module", HARNESS_DIR / f"evil_{tag}.py"),
        ("harness bytecode", HARNESS_DIR / "__pycache__" / f"evil_{tag}.cpython-311.pyc"),
        ("pth hook", sitedir / f"zz_evil_{tag}.pth"),
        ("sitecustomize", sitedir / "sitecustomize.py"),
        ("user site", Path(site.getusersitepackages()) / f"evil_{tag}.pth"),
        ("validation shard", data_dir / "val" / "val.bin"),
        ("test split", data_dir / "test" / "test.bin"),
        ("train shard", data_dir / "train" / "train_00000.bin"),
        ("tokenizer", data_dir / "tokenizer" / "tokenizer.json"),
        ("token bytes", data_dir / "tokenizer" / "token_bytes.npy"),
        ("manifest", data_dir / mf.MANIFEST),
        ("results.tsv", run_dir / "results.tsv"),
        ("another experiment", run_dir / "0001" / "decision.json"),
        ("its own output.log", tmp_path / "work" / "output.log"),
        ("git ref", git / "refs" / "heads" / f"evil-{tag}"),
        ("git objects", git / "objects" / f"evil-{tag}"),
        ("git config", git / "config"),
        ("git hook", git / "hooks" / f"evil-{tag}"),
        ("home", Path.home() / f".evil-{tag}"),
    ]
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "output.log").write_text("")
    watched = [data_dir, run_dir, HARNESS_DIR, git / "config", git / "refs", git / "hooks"]
    watched += [tmp_path / "work" / "output.log"]
    before = fingerprint(watched)
    made = [path for _, path in targets if not path.exists()]
    try:
        result, lines = run(runner, tmp_path, tamper_source(targets))
        assert result["status"] == "ok", result["error"]
        for phase in ("train", "eval"):
            # Another process of the phase may write into the middle of a candidate's line
            # (print's text and newline are two writes): read each report by its shape.
            text = "\n".join(line for p, line in lines if p == phase)
            seen = [m.group(0) for m in _REPORT.finditer(text)]
            assert len(seen) == len(targets), (phase, seen)
            allowed = [line for line in seen if not line.endswith(": refused")]
            assert allowed == [], (phase, allowed)  # names what got through, whole
        assert fingerprint(watched) == before
        leftovers = [p for p in made if p.exists() or Path(f"{p}.evil").exists()]
        assert leftovers == []
    finally:
        for path in made:
            for extra in ("", ".evil", ".moved"):
                Path(f"{path}{extra}").unlink(missing_ok=True)
    next_scores_as_before(runner, tmp_path, before_score)


NETWORK = """
import os, socket
PORT = {port}

def _net(tag):
    acts = (
        ("TCP", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2)),
        ("UDP", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", PORT))),
        ("DNS", lambda: socket.getaddrinfo("pypi.org", 443)),
        ("UNIX", lambda: socket.socket(socket.AF_UNIX).connect("/var/run/docker.sock")),
    )
    for name, act in acts:
        try:
            act()
            print(f"NET {{tag}} {{name}}: open", flush=True)
        except Exception as exc:
            print(f"NET {{tag}} {{name}}: blocked {{type(exc).__name__}}", flush=True)

_net("import")
_train = train

def train(model, ctx):
    _net("train")
    _train(model, ctx)
"""


def test_no_network_in_either_phase(runner, data_dir, tmp_path):
    """TCP connect, UDP send, DNS and a named Unix socket, at import and in train() in the
    train phase and at import in the eval phase's model server: nothing reaches the host's
    listeners. The process runner refuses each call; a container has only its own loopback."""
    before_score = reference(runner, tmp_path)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        result, lines = run(runner, tmp_path, FIXED + NETWORK.format(port=port))
        tcp.setblocking(False)
        udp.setblocking(False)
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(16)
    assert result["status"] == "ok", result["error"]
    seen = {
        (p, line.split(":")[0]): line.split(": ")[1] for p, line in lines if line.startswith("NET ")
    }
    tried = [
        ("train", f"NET {w} {n}")
        for w in ("import", "train")
        for n in ("TCP", "UDP", "DNS", "UNIX")
    ]
    tried += [("eval", f"NET import {n}") for n in ("TCP", "UDP", "DNS", "UNIX")]
    assert set(seen) == set(tried)
    if isinstance(runner, ProcessRunner):
        assert all(seen[key].startswith("blocked") for key in tried), seen
    next_scores_as_before(runner, tmp_path, before_score)


def test_planted_harness_bytecode_is_never_loaded(runner, data_dir, tmp_path):
    """A .pyc for harness/evaluate.py, stamped with the source's mtime and size so a plain
    interpreter would load it, that reports val_bpb 0.01: the scorer compiles the source."""
    import importlib.util
    import marshal

    before_score = reference(runner, tmp_path)
    source = HARNESS_DIR / "evaluate.py"
    forged = source.read_text().replace(
        '        "val_bpb": nats_sum / (math.log(2) * bytes_sum),', '        "val_bpb": 0.01,'
    )
    assert forged != source.read_text()
    pyc = Path(importlib.util.cache_from_source(str(source)))
    saved = pyc.read_bytes() if pyc.exists() else None
    stat = source.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += int(stat.st_mtime).to_bytes(4, "little") + (stat.st_size & 0xFFFFFFFF).to_bytes(
        4, "little"
    )
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(compile(forged, str(source), "exec")))
    try:
        result, _ = run(runner, tmp_path, FIXED)
    finally:
        pyc.unlink()
        if saved is not None:
            pyc.write_bytes(saved)
    assert result["status"] == "ok", result["error"]
    assert result["val_bpb"] == before_score


def test_start_up_hooks_never_run_in_a_phase(runner, data_dir, tmp_path):
    """A .pth file and a sitecustomize in site-packages (as if a weak cage had let one be
    planted) print a marker wherever they run: no phase and no model server prints it."""
    before_score = reference(runner, tmp_path)
    sitedir = Path(site.getsitepackages()[0])
    tag = uuid.uuid4().hex[:8]
    pth = sitedir / f"zz_hook_{tag}.pth"
    custom = sitedir / "sitecustomize.py"
    saved = custom.read_bytes() if custom.exists() else None  # put back afterwards
    pth.write_text(f'import sys; print("HOOK-RAN-{tag} pth", flush=True)\n')
    custom.write_text(f'print("HOOK-RAN-{tag} sitecustomize", flush=True)\n')
    try:
        result, lines = run(runner, tmp_path, FIXED)
    finally:
        pth.unlink()
        custom.unlink()
        if saved is not None:
            custom.write_bytes(saved)
    assert result["status"] == "ok", result["error"]
    assert [line for _, line in lines if f"HOOK-RAN-{tag}" in line] == []
    assert result["val_bpb"] == before_score


WHERE_AM_I = """
import sys
print("IMPORTED-IN " + open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")[-200:], flush=True)
try:
    import harness.channel as _ch
    _send = _ch.send
    def _broken(fh, kind, payload):  # the model server's reply: garbage instead of logits
        if kind in (b"LOGI", b"CUDA"):
            payload = b"\\xff" * 12
        return _send(fh, kind, payload)
    _ch.send = _broken
    import harness.model_server as _ms
    _ms._share_cuda = lambda tensor: {"handle": "forged"}
except ImportError:
    pass
"""


def test_the_scorer_never_imports_the_candidate(runner, data_dir, tmp_path):
    """A candidate that patches the model server's reply and sharing functions breaks its
    own channel: a crash, scored by nobody; it was imported in the train phase and the
    model server only, never in the scorer."""
    result, lines = run(runner, tmp_path, FIXED + WHERE_AM_I)
    assert result["status"] == "crash"
    assert "logits" in (result["error"] or "")
    where = [(p, line) for p, line in lines if line.startswith("IMPORTED-IN")]
    assert [p for p, _ in where] == ["train", "eval"], where
    assert "harness.model_server" in where[1][1] and "harness.entry" not in where[1][1]


def test_each_result_says_which_cage_ran(runner, tmp_path):
    result, _ = run(runner, tmp_path, FIXED)
    assert result["status"] == "ok"
    assert result["cage"] == runner.name  # "process" (the cage held) or "docker"


def test_without_the_kernels_cage_the_runner_says_weak_and_still_vouches(
    data_dir, tmp_path, monkeypatch, tmp_path_factory
):
    """Where the kernel cannot confine, rows say process-weak; what the worker checks from
    outside still holds: a train phase that rewrites the validation shard is an infra error
    naming it, never a score."""
    import shutil

    monkeypatch.setattr(cage, "probe", lambda: (False, "test: no Landlock"))
    data = tmp_path_factory.mktemp("weak") / "cpu"
    shutil.copytree(data_dir, data)
    runner = ProcessRunner(data, LIMITS)
    assert runner.cage == "process-weak" and runner.cage_note == "test: no Landlock"
    result, _ = run(runner, tmp_path, FIXED)
    assert result["status"] == "ok" and result["cage"] == "process-weak"
    val = data / "val" / "val.bin"
    overwrite = (
        f"\nwith open({str(val)!r}, 'r+b') as _f:\n    _f.seek(64)\n    _f.write(bytes(64))\n"
    )
    with pytest.raises(InfraError, match="val/val.bin differs from its checksum"):
        run(runner, tmp_path, FIXED + overwrite, "tampered")


def test_a_harness_file_planted_while_a_worker_runs_stops_its_scoring(data_dir, tmp_path):
    runner = ProcessRunner(data_dir, LIMITS)
    planted = HARNESS_DIR / f"evil_{uuid.uuid4().hex[:8]}.cpython-311-x86_64-linux-gnu.so"
    planted.write_bytes(b"\x7fELF not really")
    try:
        with pytest.raises(InfraError, match=f"harness file {planted.name} changed"):
            run(runner, tmp_path, FIXED)
    finally:
        planted.unlink()
    assert processes_under(tmp_path) == []


def test_the_data_check_names_what_differs(data_dir):
    manifest = mf.load_manifest(data_dir)
    mf.verify_data(data_dir, manifest)
    broken = dict(manifest, val={**manifest["val"], "sha256": "0" * 64})
    broken["fingerprint"] = mf.fingerprint(broken)  # a consistent manifest, other data
    with pytest.raises(mf.DataTampered, match="val/val.bin"):
        mf.verify_data(data_dir, broken)
    stale = dict(manifest, fingerprint="0" * 16)
    with pytest.raises(mf.DataTampered, match="fingerprint"):
        mf.verify_data(data_dir, stale)
    old = dict(
        manifest,
        tokenizer={k: v for k, v in manifest["tokenizer"].items() if k != "token_bytes_sha256"},
    )
    old["fingerprint"] = mf.fingerprint(old)
    with pytest.raises(mf.DataTampered, match="prepare again"):
        mf.verify_data(data_dir, old)
