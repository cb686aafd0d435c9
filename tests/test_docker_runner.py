"""The docker runner against a real engine, with a test image built from a local base.

No image can be pulled here: the test image is an empty imported filesystem, and the
host's own Python (and its libraries) are bind-mounted read-only at the same paths.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from pathlib import Path

import pytest

import docker
from tests.conftest import (
    CACHE_PROBE,
    SHOW_PROCESS,
    TIMED_TRAIN,
    TINY_TRAIN,
    assert_caches_seen,
    assert_wall_starts_at_the_go,
    run_candidate,
    shown_process,
)
from worker.compile_cache import CacheStore
from worker.docker_runner import LABEL, DockerRunner, parse_path_map
from worker.runner import Limits
from worker.slots import Slots

IMAGE = "autoresearch-test-base:latest"
# The first step may pay lazy imports (a CUDA build of torch on a CPU): a grace of 3 s.
BUDGET = {"train_wall_s": 10.0, "save_margin_s": 3.0, "return_grace_s": 3.0, "eval_wall_s": 30.0}
HOST_MOUNTS = [p for p in ("/usr", "/lib", "/lib64", "/bin") if Path(p).exists()]


@pytest.fixture(scope="session")
def client():
    client = docker.from_env()
    client.ping()
    return client


@pytest.fixture(scope="session")
def image(client) -> str:
    """An empty image: everything the phase runs comes from read-only host mounts."""
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    client.api.import_image_from_data(buf.getvalue(), repository=IMAGE.split(":")[0], tag="latest")
    return IMAGE


def make_runner(client, image, data_dir, limits=None, gpu=None) -> DockerRunner:
    mounts = [*HOST_MOUNTS, sys.base_prefix, sys.prefix]
    return DockerRunner(
        data_dir,
        limits,
        gpu,
        image=image,
        python=sys.executable,
        extra_mounts=mounts,
        client=client,
        host="test-host",
    )


def ours(client) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL}.host=test-host"})


def run(runner, tmp_path, source, budget=None):
    result, lines = run_candidate(runner, tmp_path / "work", source, budget or BUDGET)
    return result, [line for _, line in lines]


def test_normal_candidate_scores_and_leaves_no_container(client, image, data_dir, tmp_path):
    result, lines = run(make_runner(client, image, data_dir), tmp_path, TINY_TRAIN)
    assert result["status"] == "ok", result["log_tail"]
    assert result["val_bpb"] > 0 and result["tokens"] > 0
    assert any(line.startswith("val_bpb:") for line in lines)
    assert ours(client) == []
    # What re-runs it exactly: the image by content, the harness and the data it ran with.
    assert result["image"] == client.images.get(image).id and result["image"].startswith("sha256:")
    assert len(result["harness_sha256"]) == 64 and result["fingerprint"]


def test_the_hardware_signature_names_the_image_and_is_the_probes(
    client, image, data_dir, tmp_path
):
    """The worker's probe container (its start, before any job) and a candidate's train
    phase give the same line, the image's id appended: a run pinned to it finds the worker."""
    runner = make_runner(client, image, data_dir)
    probed = runner.hardware()
    assert client.containers.list(all=True, filters={"label": "autoresearch.probe"}) == []
    short = client.images.get(image).id[: len("sha256:") + 12]
    assert probed.endswith(f" | image {short}") and " | torch " in probed, probed
    result, _ = run(runner, tmp_path, TINY_TRAIN)
    assert result["status"] == "ok", result["log_tail"]
    assert result["hardware"] == probed


PROBES = """
import os, socket

def probe(name, action):
    try:
        action()
        print(f"{name}:open", flush=True)
    except Exception as exc:
        print(f"{name}:blocked {type(exc).__name__}", flush=True)

_train = train

def train(model, ctx):
    probe("NET", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2))
    probe("DNS", lambda: socket.getaddrinfo("pypi.org", 443))
    probe("VAL", lambda: open("/data/val/val.bin", "rb").read(1))
    probe("HARNESS", lambda: open("/opt/autoresearch/harness/evil.py", "w").write("x"))
    probe("DATA", lambda: open("/data/manifest.json", "a").write("x"))
    probe("ROOT", lambda: open("/etc/evil", "w").write("x"))
    probe("SCRATCH", lambda: open("/scratch/note.txt", "w").write("x"))
    print("ENV", sorted(os.environ.items()), "UID", os.getuid(), flush=True)
    _train(model, ctx)
"""


def test_the_cage_holds(client, image, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docker-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis:6379/0")
    result, lines = run(make_runner(client, image, data_dir), tmp_path, TINY_TRAIN + PROBES)
    assert result["status"] == "ok", result["log_tail"]
    probes = {line.split(":")[0]: line.split(":")[1] for line in lines if ":" in line[:8]}
    for name in ("NET", "DNS", "VAL", "HARNESS", "DATA", "ROOT"):
        assert probes[name].startswith("blocked"), (name, lines)
    assert probes["SCRATCH"] == "open"
    env_line = next(line for line in lines if line.startswith("ENV"))
    assert "sk-docker-secret" not in env_line and "hunter2" not in env_line
    assert not env_line.endswith("UID 0")
    assert not (Path(__file__).parent.parent / "harness" / "evil.py").exists()


def test_hang_is_killed_at_the_wall_and_removed(client, image, data_dir, tmp_path):
    source = (
        "import time, torch\n"
        "def build_model(ctx):\n"
        "    return torch.nn.Linear(1, 1)\n"
        "def train(model, ctx):\n"
        "    while True:\n"
        "        time.sleep(0.1)\n"
    )
    result, _ = run(make_runner(client, image, data_dir), tmp_path, source)
    assert result["status"] == "timeout"
    assert BUDGET["train_wall_s"] <= result["train_phase_s"] < BUDGET["train_wall_s"] + 5
    assert ours(client) == []


def test_unbounded_allocation_is_oom(client, image, data_dir, tmp_path):
    source = TINY_TRAIN.replace(
        "    opt = torch",
        "    hog = []\n    while True:\n        hog.append(bytearray(2**24))\n    opt = torch",
    )
    runner = make_runner(client, image, data_dir, limits=Limits(memory_bytes=1536 * 2**20))
    result, _ = run(runner, tmp_path, source, {**BUDGET, "train_wall_s": 60.0})
    assert result["status"] == "oom", (result["error"], result["log_tail"])
    assert ours(client) == []


def test_a_new_worker_removes_orphans(client, image, data_dir):
    runner = make_runner(client, image, data_dir)
    other = make_runner(client, image, data_dir, gpu=3)
    orphan = client.containers.create(image, ["/nothing"], labels=runner.labels())
    kept = client.containers.create(image, ["/nothing"], labels=other.labels())
    try:
        assert runner.cleanup_orphans() == [orphan.name]
        names = [c.name for c in client.containers.list(all=True)]
        assert orphan.name not in names and kept.name in names  # another GPU's stays
    finally:
        kept.remove(force=True)


def test_cpu_replicas_keep_each_others_containers(client, image, data_dir, monkeypatch):
    """Workers without a GPU share a host's labels: a starting replica removes only the
    containers of workers that are gone, not those of a live one beside it."""
    runner = make_runner(client, image, data_dir)
    made = {}
    for worker in ("alive", "dead"):
        monkeypatch.setenv("AUTORESEARCH_WORKER", worker)
        made[worker] = client.containers.create(image, ["/nothing"], labels=runner.create_labels())
    try:
        assert runner.cleanup_orphans(live_workers=["alive", "me"]) == [made["dead"].name]
        assert made["alive"].name in [c.name for c in client.containers.list(all=True)]
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_missing_image_is_an_infrastructure_error(client, data_dir, tmp_path):
    from worker.runner import InfraError

    runner = make_runner(client, "autoresearch-no-such-image:latest", data_dir)
    with pytest.raises(
        InfraError, match="runner image autoresearch-no-such-image:latest not found"
    ):
        run(runner, tmp_path, TINY_TRAIN)


def test_the_wall_starts_when_the_candidate_is_handed_over(client, image, data_dir, tmp_path):
    """The train container starts (container, interpreter, torch, device) and says it is
    ready before the candidate's code is handed over; its wall, deadline and startup count
    from the go, and the time before it is the result's prestart_s."""
    runner = make_runner(client, image, data_dir)
    t0 = time.time()
    result, lines = run_candidate(runner, tmp_path / "work", TIMED_TRAIN, BUDGET)
    assert_wall_starts_at_the_go(result, lines, BUDGET, t0)
    assert ours(client) == []


def test_the_train_container_compiles_into_its_copy_of_the_cache(client, image, data_dir, tmp_path):
    """The container's user (not the worker's) writes into its copy of the frontier's
    cache; the eval container gets an empty folder of its own; the copy is kept."""
    store = CacheStore(tmp_path / "store", writable_by_all=True)
    (tmp_path / "frontier" / "fxgraph").mkdir(parents=True)
    (tmp_path / "frontier" / "fxgraph" / "kernel").write_text("k")
    assert store.keep("p", tmp_path / "frontier") == ""
    runner = make_runner(client, image, data_dir)
    runner.caches = store
    result, lines = run_candidate(runner, tmp_path / "work", CACHE_PROBE, BUDGET)
    assert result["status"] == "ok", result["log_tail"]
    assert_caches_seen(lines)
    assert (store.root / "c" / "compiled-by-0").read_text() == "k"
    assert result["cache_mb"] > 0


@pytest.mark.parametrize("why", ["slow", "dead"])
def test_a_train_container_never_ready_is_the_hosts_failure(client, image, data_dir, tmp_path, why):
    """Not ready within its limit (no interpreter imports torch in 50 ms), or dead before
    it (an image whose python cannot start the harness): an InfraError, no container left,
    and the candidate's code was never handed over, let alone run."""
    from worker.runner import InfraError

    source = "open('/scratch/ran', 'w').write('x')\n" + TINY_TRAIN
    runner = make_runner(client, image, data_dir)
    if why == "slow":
        runner.ready_s = 0.05
    else:
        runner.python = "/bin/false"
    match = "not ready within" if why == "slow" else "ended before it was ready"
    with pytest.raises(InfraError, match=f"the train phase {match}"):
        run_candidate(runner, tmp_path / "work", source, BUDGET)
    assert (tmp_path / "work" / "train.py").read_text() == ""
    assert not (tmp_path / "work" / "scratch" / "ran").exists()
    assert ours(client) == []


def test_the_next_jobs_train_container_waits_in_the_other_slot(client, image, data_dir, tmp_path):
    """With a worker's slots, the next job's train container starts during this job's eval
    and waits in the other slot; the next job runs in it, its seed from the go line. When
    the worker stops, it is removed and its slot emptied."""
    runner = make_runner(client, image, data_dir)
    runner.slots = Slots(tmp_path / "slots")
    try:
        first, _ = run_candidate(runner, tmp_path / "1", SHOW_PROCESS, BUDGET)
        assert first["status"] == "ok", first["log_tail"]
        spare = runner.slots.spare
        assert spare is not None and runner.waiting(spare.handle)
        assert [c.id for c in ours(client)] == [spare.handle.id]
        second, lines = run_candidate(runner, tmp_path / "2", SHOW_PROCESS, BUDGET, seed=7)
        assert second["status"] == "ok", second["log_tail"]
        assert shown_process(lines)[1:] == (spare.handle.id[:12], 7)
    finally:
        runner.close()
    assert ours(client) == [] and not any((tmp_path / "slots").iterdir())


def test_path_map():
    assert parse_path_map("/data=/srv/d, /runs=/srv/r") == {"/data": "/srv/d", "/runs": "/srv/r"}
    with pytest.raises(ValueError):
        parse_path_map("data=/srv")
