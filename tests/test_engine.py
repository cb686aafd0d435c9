"""What a worker learns from a real Docker engine (worker/engine.py): the exact GPU requests
its containers carry, its host's GPUs, and, run in a container itself, the host paths of
its mounts and a harness copy the engine can mount."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_docker_runner import HOST_MOUNTS, client, image, make_runner  # noqa: F401
from worker import engine
from worker.runner import HARNESS_ROOT

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("gpu", "request_"),
    [
        (None, []),
        (2, [{"Driver": "", "Count": 0, "DeviceIDs": ["2"], "Capabilities": [["gpu"]]}]),
        (-1, [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]]}]),
    ],
)
def test_gpu_request_shapes(gpu, request_):
    shown = [
        {k: r[k] for k in ("Driver", "Count", "DeviceIDs", "Capabilities")}
        for r in engine.gpu_request(gpu)
    ]
    assert shown == request_


def test_a_phase_container_asks_the_engine_for_its_workers_gpu_only(
    client,  # noqa: F811
    image,  # noqa: F811
    data_dir,
    tmp_path,
):
    """What the engine is handed (read back from the created container): GPU 3 and no other."""
    runner = make_runner(client, image, data_dir, gpu=3)
    (tmp_path / "scratch" / "tmp").mkdir(parents=True)
    (tmp_path / "train.py").write_text("")
    container = runner._create("train", ["train"], tmp_path)
    try:
        requests = container.attrs["HostConfig"]["DeviceRequests"]
        assert [(r["Count"], r["DeviceIDs"], r["Capabilities"]) for r in requests] == [
            (0, ["3"], [["gpu"]])
        ]
    finally:
        container.remove(force=True)


def test_an_engine_without_a_gpu_runtime_counts_no_gpu(client, image):  # noqa: F811
    count, why = engine.count_gpus(client, image)
    assert count == 0
    assert "could not select device driver" in why, why
    # The probe container the engine refused to start is not left behind.
    assert client.containers.list(all=True, filters={"label": "autoresearch.probe"}) == []


def test_a_worker_in_a_container_learns_its_host_paths(client, image, tmp_path):  # noqa: F811
    """In a container whose /home-in is the host's tmp folder, the worker finds its own
    container, maps /home-in back to the host path, and publishes its harness there."""
    host_home = tmp_path / "home"
    host_home.mkdir()
    code = (
        "import json, pathlib; from worker import engine; from worker.runner import HARNESS_ROOT\n"
        "c = engine.client(); own = engine.own_container(c); m = engine.mount_map(own)\n"
        "root = engine.publish_harness(HARNESS_ROOT / 'harness', pathlib.Path('/home-in/h'))\n"
        "again = engine.publish_harness(HARNESS_ROOT / 'harness', pathlib.Path('/home-in/h'))\n"
        "print(json.dumps({'id': own.id, 'map': m, 'root': str(root), 'again': str(again),\n"
        "  'host': engine.host_name(c), 'under': engine.under(HARNESS_ROOT, m)}))\n"
    )
    mounts = [*HOST_MOUNTS, sys.base_prefix, sys.prefix, str(REPO_ROOT)]
    volumes = {p: {"bind": p, "mode": "ro"} for p in mounts}
    volumes[str(host_home)] = {"bind": "/home-in", "mode": "rw"}
    volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}
    out = client.containers.run(
        image,
        [sys.executable, "-c", code],
        volumes=volumes,
        environment={"PYTHONPATH": str(REPO_ROOT)},
        working_dir="/",
        remove=True,
        stderr=True,
    )
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["map"]["/home-in"] == str(host_home)
    assert seen["host"] == client.info()["Name"]
    # The repo is mounted here, so the harness is under a mount; the copy is made anyway.
    assert seen["under"] is True
    assert seen["root"] == seen["again"] and seen["root"].startswith("/home-in/h/")
    copied = host_home / "h" / Path(seen["root"]).name / "harness"
    for source in (HARNESS_ROOT / "harness").glob("*.py"):
        assert (copied / source.name).read_bytes() == source.read_bytes()
    assert not [p for p in (host_home / "h").iterdir() if p.name.startswith(".tmp-")]


def test_on_the_host_there_is_no_own_container(client):  # noqa: F811
    assert engine.own_container(client) is None


def test_an_unreachable_engine_is_one_line(tmp_path):
    import subprocess

    from tests.conftest import clean_env

    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--runner", "docker", "--burst"],
        env=clean_env(
            DOCKER_HOST=f"unix://{tmp_path}/no.sock",
            REDIS_URL="redis://127.0.0.1:1/0",
            AUTORESEARCH_DATA_DIR=str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("autoresearch: error: Docker engine unreachable"), lines
    assert "Traceback" not in proc.stderr


def test_a_missing_runner_image_for_the_gpu_probe_is_one_line(tmp_path):
    import subprocess

    from tests.conftest import clean_env

    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--runner", "docker", "--gpu", "all"],
        env=clean_env(
            AUTORESEARCH_RUNNER_IMAGE="autoresearch-no-such-image:latest",
            REDIS_URL="redis://127.0.0.1:1/0",
            AUTORESEARCH_DATA_DIR=str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autoresearch: error: runner image autoresearch-no-such-image:latest")
