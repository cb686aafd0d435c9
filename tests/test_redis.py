"""Redis: a clear one-line failure for a wrong URL, and a private server that comes and goes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import redis as redis_lib

from orchestrator.redis_server import PrivateRedis, RedisUnavailable, connect
from tests.conftest import clean_env


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_connect_to_closed_port_is_one_clear_line_without_the_password():
    port = closed_port()
    with pytest.raises(RedisUnavailable) as info:
        connect(f"redis://:secret@127.0.0.1:{port}/0", timeout_s=2)
    message = str(info.value)
    assert message.startswith("cannot reach Redis at ")
    assert f"127.0.0.1:{port}/0" in message
    assert "secret" not in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_connect_without_password_names_the_url():
    port = closed_port()
    with pytest.raises(RedisUnavailable, match=f"redis://127.0.0.1:{port}/0"):
        connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)


def test_connect_to_a_live_server(redis_server, redis_client):
    client = connect(redis_server.url)
    assert client.ping() is True
    client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_private_redis_answers_ping_and_stops_on_exit():
    with PrivateRedis() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis_lib.Redis.from_url(server.url)
        assert client.ping() is True
        client.set("x", "1")
        assert client.get("x") == b"1"
        assert accepts(server.port)
        client.close()
        proc = server._proc
        data_dir = server.dir
        assert data_dir.is_dir()
    assert proc.poll() is not None
    assert not accepts(server.port)
    assert not data_dir.exists()
    with pytest.raises(RedisUnavailable):
        connect(server.url, timeout_s=2)


def test_private_redis_stop_is_idempotent():
    server = PrivateRedis().start()
    server.stop()
    server.stop()
    assert not accepts(server.port)


def test_cli_run_with_unreachable_redis_exits_1(repo, tmp_path, data_dir):
    home = tmp_path / "home"
    home.mkdir()
    port = closed_port()
    env = clean_env(
        HOME=str(home),
        REDIS_URL=f"redis://:secret@127.0.0.1:{port}/0",
        AUTORESEARCH_DATA_DIR=str(data_dir),
        AUTORESEARCH_PROFILE="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", "--tag", "t1"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("autoresearch: error:")]
    assert errors == [lines[-1]], proc.stderr
    assert errors[0].startswith(
        f"autoresearch: error: cannot reach Redis at redis://***@127.0.0.1:{port}/0"
    )
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout
    # It failed before starting anything: no branch, no candidate.
    refs = subprocess.run(
        ["git", "for-each-ref", "refs/heads/autoresearch/", "refs/autoresearch/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert refs == ""


def test_rq_tools_read_a_run_with_the_json_serializer(redis_server, redis_client):
    """README: jobs are stored as JSON (RQ's JSONSerializer, not pickle), so RQ's own
    command-line tools read them when given `-S rq.serializers.JSONSerializer`."""
    import json
    import zlib
    from pathlib import Path

    from rq import Queue
    from rq.serializers import JSONSerializer

    from worker import contract, keys

    queue = Queue(keys.QUEUE_NAME, connection=redis_client, serializer=JSONSerializer)
    queue.enqueue_call(contract.JOB_FUNC, args=({"id": "0007"},), job_id="t-0007")
    data = json.loads(zlib.decompress(redis_client.hget("rq:job:t-0007", "data")))
    assert data[0] == contract.JOB_FUNC and data[2] == [{"id": "0007"}]
    rq = Path(sys.executable).parent / "rq"
    args = ["info", "-u", redis_server.url, "-S", "rq.serializers.JSONSerializer", "--only-queues"]
    proc = subprocess.run([str(rq), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.startswith(f"{keys.QUEUE_NAME} |") and "1 queues, 1 jobs total" in proc.stdout
    )
