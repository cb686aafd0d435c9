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


def _compose(
    *args: str, files: tuple[str, ...] = ("compose.yaml",), env_file: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not on PATH (Debian: apt-get install docker-compose)")
    options = [a for f in files for a in ("-f", str(REPO_ROOT / f))]
    if env_file is not None:
        options += ["--env-file", str(env_file)]
    # A clean environment and an empty project folder: no .env is read but the one given.
    return subprocess.run(
        [exe, *options, "--project-directory", str(REPO_ROOT), *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict[str, Any]:
    empty = tmp_path_factory.mktemp("env") / "empty.env"
    empty.write_text("")
    proc = _compose("config", env_file=empty)  # zero config: nothing set
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


def test_config_validates_with_nothing_set_and_with_the_example(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    for env_file in (empty, ENV_EXAMPLE):
        proc = _compose("config", "-q", env_file=env_file)
        assert proc.returncode == 0, proc.stderr


def test_env_is_ignored_by_git():
    proc = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, "the .env file (it holds secrets) is not git-ignored"


def test_docker_socket_only_in_worker(config):
    holders = {
        name
        for name, svc in config["services"].items()
        if any(
            "docker.sock" in source or "docker.sock" in target for source, target in _volumes(svc)
        )
    }
    assert holders == {"worker"}


def test_redis_persists_and_is_not_published_by_default(config):
    redis = config["services"]["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command and "--dir /data" in command
    assert any(target == "/data" for _, target in _volumes(redis))
    assert not redis.get("ports")


def test_publishing_redis_requires_a_password(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    files = ("compose.yaml", "docker/publish-redis.yaml")
    refused = _compose("config", "-q", files=files, env_file=empty)
    assert refused.returncode != 0 and "publishing Redis needs REDIS_PASSWORD" in refused.stderr
    proc = _compose("config", files=files, env_file=empty, REDIS_PASSWORD="s3cret")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert services["redis"]["ports"]
    assert "--requirepass" in str(services["redis"]["command"])
    for name in ("orchestrator", "worker", "dashboard"):
        assert _environment(services[name])["REDIS_URL"].startswith("redis://:s3cret@redis:")


def test_a_joining_host_needs_the_first_hosts_address_and_password(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    files = ("compose.yaml", "docker/join.yaml")
    assert _compose("config", "-q", files=files, env_file=empty).returncode != 0
    proc = _compose(
        "config", files=files, env_file=empty, REDIS_PASSWORD="s3cret", REDIS_HOST="first"
    )
    assert proc.returncode == 0, proc.stderr
    worker = yaml.safe_load(proc.stdout)["services"]["worker"]
    assert _environment(worker)["REDIS_URL"] == "redis://:s3cret@first:6379/0"


def test_llm_key_only_in_orchestrator(config):
    for name, svc in config["services"].items():
        env = _environment(svc)
        has_key = {"OPENAI_API_KEY", "AUTORESEARCH_LLM_API_KEY"} & env.keys()
        assert bool(has_key) == (name == "orchestrator"), (name, has_key)


def test_worker_runs_one_docker_worker_per_gpu_and_learns_the_rest(config):
    worker = config["services"]["worker"]
    command = " ".join(worker["command"])
    assert "--runner docker" in command and "--gpu all" in command
    env = _environment(worker)
    # Nothing to type: the host name and the GPUs are learnt from the engine when empty.
    assert env["AUTORESEARCH_HOST"] == "" and env["AUTORESEARCH_GPUS"] == ""
    mounted = [target for _, target in _volumes(worker)]
    assert any(env["AUTORESEARCH_DATA_DIR"].startswith(t + "/") for t in mounted)
    assert any(env["AUTORESEARCH_RUNS_DIR"].startswith(t + "/") for t in mounted)
    assert env["AUTORESEARCH_RUNNER_IMAGE"] == config["services"]["runner-image"]["image"]
    assert "deploy" not in worker  # one container; `--gpu all` counts the GPUs


def test_no_service_runs_as_a_fixed_user(config):
    """The entrypoint takes the owner of the repo mounted at /repo and drops to it."""
    for name in ("prepare", "orchestrator", "dashboard", "worker"):
        svc = config["services"][name]
        assert "user" not in svc, name
        assert "/repo" in [target for _, target in _volumes(svc)], name


def test_orchestrator_uses_the_shared_redis_only(config):
    env = _environment(config["services"]["orchestrator"])
    assert env["AUTORESEARCH_LOCAL_WORKERS"] == "0"
    assert env["REDIS_URL"].startswith("redis://:")
    assert "@redis:6379" in env["REDIS_URL"]


def test_every_compose_variable_is_in_env_example():
    text = "".join(
        p.read_text()
        for p in (COMPOSE, REPO_ROOT / "docker/publish-redis.yaml", REPO_ROOT / "docker/join.yaml")
    )
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used - documented == set()


def test_data_and_runs_default_to_a_git_ignored_folder_of_the_repo(config):
    home = str(REPO_ROOT / "workspace" / "compose")
    for name in ("prepare", "orchestrator", "dashboard", "worker"):
        assert home in [source for source, _ in _volumes(config["services"][name])], name
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "workspace/compose/runs/main/results.tsv"],
        cwd=REPO_ROOT,
        timeout=30,
    )
    assert proc.returncode == 0
