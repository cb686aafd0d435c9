"""compose.yaml validates and keeps its promises: secrets and the Docker socket only where needed.

Runs Debian's docker-compose 1.29 (apt package `docker-compose`); without it the tests fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = REPO_ROOT / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not on PATH (Debian: apt-get install docker-compose)")
    # A clean environment: compose prefers the shell's variables to the env file's.
    return subprocess.run(
        [exe, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    proc = _compose("config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount, from the short (v1) or the long (v2) syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, _, rest = v.partition(":")
            out.append((source, rest.split(":")[0]))
        else:
            out.append((str(v.get("source", "")), str(v["target"])))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_config_validates():
    proc = _compose("config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_docker_socket_only_in_worker(config):
    holders = {
        name
        for name, svc in config["services"].items()
        if any(
            "docker.sock" in source or "docker.sock" in target for source, target in _volumes(svc)
        )
    }
    assert holders == {"worker"}


def test_redis_persists_and_requires_a_password(config):
    redis = config["services"]["redis"]
    command = redis["command"]
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1]
    assert any(target == "/data" for _, target in _volumes(redis))
    for port in redis.get("ports", []):
        published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:"
        assert published.startswith("127.0.0.1:"), port


def test_llm_key_only_in_orchestrator(config):
    for name, svc in config["services"].items():
        env = _environment(svc)
        has_key = {"OPENAI_API_KEY", "AUTORESEARCH_LLM_API_KEY"} & env.keys()
        assert bool(has_key) == (name == "orchestrator"), (name, has_key)


def test_worker_runs_the_docker_runner_on_same_path_mounts(config):
    worker = config["services"]["worker"]
    command = " ".join(worker["command"])
    assert "--runner docker" in command
    assert "--gpu auto" in command
    env = _environment(worker)
    home = env["AUTORESEARCH_RUNS_DIR"].rsplit("/runs", 1)[0]
    # The engine resolves bind-mount sources on the host: same path on both sides.
    assert (home, home) in _volumes(worker)
    assert env["AUTORESEARCH_DATA_DIR"].startswith(home + "/")
    assert env["AUTORESEARCH_RUNNER_IMAGE"] == config["services"]["runner-image"]["image"]


def test_orchestrator_uses_the_shared_redis_only(config):
    env = _environment(config["services"]["orchestrator"])
    assert env["AUTORESEARCH_LOCAL_WORKERS"] == "0"
    assert env["REDIS_URL"].startswith("redis://:")
    assert "@redis:6379" in env["REDIS_URL"]


def test_every_compose_variable_is_in_env_example():
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE.read_text()))
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used - documented == set()
