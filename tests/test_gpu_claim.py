"""GPU claims through a real Redis: distinct GPUs, heartbeat, release, takeover after a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from worker.gpu_claim import GpuClaim, NoFreeGpu
from worker.keys import gpu_key


def test_replicas_claim_distinct_gpus_until_none_is_left(redis_client):
    a = GpuClaim(redis_client, "h", 2, "worker-a").acquire()
    b = GpuClaim(redis_client, "h", 2, "worker-b").acquire()
    try:
        assert {a.gpu, b.gpu} == {0, 1}
        assert redis_client.get(gpu_key("h", a.gpu)) == b"worker-a"
        with pytest.raises(NoFreeGpu, match="all 2 GPUs"):
            GpuClaim(redis_client, "h", 2, "worker-c").acquire()
        # Another host's GPUs are its own.
        with GpuClaim(redis_client, "other", 2, "worker-d") as d:
            assert d.gpu == 0
    finally:
        a.release()
        b.release()


def test_release_frees_the_gpu(redis_client):
    with GpuClaim(redis_client, "h", 1, "first") as first:
        assert first.gpu == 0
    assert redis_client.get(gpu_key("h", 0)) is None
    with GpuClaim(redis_client, "h", 1, "second") as second:
        assert second.gpu == 0


def test_heartbeat_keeps_the_claim_past_its_ttl(redis_client):
    with GpuClaim(redis_client, "h", 1, "beating", ttl_s=0.5, heartbeat_s=0.1) as claim:
        deadline = time.monotonic() + 10
        while claim.beats < 10 and time.monotonic() < deadline:  # > 2 TTLs of beating
            time.sleep(0.05)
        assert claim.beats >= 10
        assert redis_client.get(gpu_key("h", 0)) == b"beating"
        with pytest.raises(NoFreeGpu):
            GpuClaim(redis_client, "h", 1, "other").acquire()


def test_a_crashed_workers_gpu_is_taken_over(redis_server, redis_client):
    # A real process claims GPU 0 and dies without releasing it.
    code = (
        "import os, redis\n"
        "from worker.gpu_claim import GpuClaim\n"
        f"r = redis.Redis.from_url({redis_server.url!r})\n"
        "c = GpuClaim(r, 'h', 1, 'doomed', ttl_s=1.0, heartbeat_s=0.2).acquire()\n"
        "print(c.gpu, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0"
    assert redis_client.get(gpu_key("h", 0)) == b"doomed"
    with pytest.raises(NoFreeGpu):
        GpuClaim(redis_client, "h", 1, "replacement").acquire()
    # Its heartbeat stopped with it: the lock expires, then a new replica takes the GPU.
    deadline = time.monotonic() + 10
    while redis_client.exists(gpu_key("h", 0)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with GpuClaim(redis_client, "h", 1, "replacement") as claim:
        assert claim.gpu == 0


def _worker(redis_server, data_dir, tmp_path, gpus="2", gpu="auto"):
    from tests.conftest import clean_env

    env = clean_env(
        AUTORESEARCH_DATA_DIR=str(data_dir),
        AUTORESEARCH_GPUS=gpus,
        AUTORESEARCH_HOST="h",
        REDIS_URL=redis_server.url,
    )
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--gpu", gpu, "--burst"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_cli_claims_then_releases(redis_server, redis_client, data_dir, tmp_path):
    with GpuClaim(redis_client, "h", 2, "busy"):
        proc = _worker(redis_server, data_dir, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert '"event": "worker.gpu_claimed"' in proc.stderr and '"gpu": 1' in proc.stderr
        assert redis_client.get(gpu_key("h", 1)) is None  # released on exit
        with GpuClaim(redis_client, "h", 2, "busy-too"):
            proc = _worker(redis_server, data_dir, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("autoresearch: error: all 2 GPUs")


def test_no_gpu_host_runs_on_the_cpu(redis_server, redis_client, data_dir, tmp_path):
    proc = _worker(redis_server, data_dir, tmp_path, gpus="0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"event": "worker.no_gpu"' in proc.stderr
    assert '"gpu": null' in proc.stderr
    assert redis_client.keys("autoresearch:gpu:*") == []


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_gpu_all_starts_one_worker_per_gpu_each_on_its_own(
    redis_server, redis_client, data_dir, tmp_path
):
    """`--gpu all` on a host of 3 GPUs: three workers, each holding its own GPU's claim; a
    SIGTERM to the parent reaches them all, and each releases its claim."""
    from tests.conftest import clean_env

    env = clean_env(
        AUTORESEARCH_DATA_DIR=str(data_dir),
        AUTORESEARCH_GPUS="3",
        AUTORESEARCH_HOST="h",
        REDIS_URL=redis_server.url,
    )
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--gpu", "all"],
            cwd=tmp_path,
            env=env,
            stderr=fh,
        )
    try:
        deadline = time.monotonic() + 90

        def up() -> int:
            return sum(e["event"] == "worker.start" for e in _events(err.read_text()))

        while len(redis_client.keys("autoresearch:gpu:h:*")) < 3 or up() < 3:
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    events = _events(err.read_text())
    assert sorted(e["gpu"] for e in events if e["event"] == "worker.gpu_claimed") == [0, 1, 2]
    started = [e for e in events if e["event"] == "worker.start"]
    assert len({e["name"] for e in started}) == 3 and {e["host"] for e in started} == {"h"}
    assert redis_client.keys("autoresearch:gpu:*") == []  # each released its own


def test_gpu_all_on_a_host_without_gpus_is_one_cpu_worker(
    redis_server, redis_client, data_dir, tmp_path
):
    proc = _worker(redis_server, data_dir, tmp_path, gpus="0", gpu="all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stderr)
    assert [e["gpu"] for e in events if e["event"] == "worker.start"] == [None]
    assert not [e for e in events if e["event"] in ("worker.gpu_claimed", "worker.per_gpu")]
