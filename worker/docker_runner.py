"""The docker runner: each phase in its own locked-down container, via the docker SDK.

Mounts: the harness and the candidate read-only; the data read-only with the train shards
only in the train phase and the validation shard only in the eval phase (and the test split,
only when the spec asks: never in a normal job); a per-experiment scratch folder read-write
(the weights pass through it). No network, a read-only root with a tmpfs /tmp, all
capabilities dropped, no-new-privileges, a non-root user, pids and memory limits (swap
equal to memory), the worker's own GPU only, and no secret in the environment.

The engine is reached through its socket, so bind-mount sources must be paths of the
engine's host. A worker running in a container sees other paths: `path_map` rewrites a
prefix as the worker sees it into the host's (AUTORESEARCH_HOST_PATHS=/in=/host,...), which
the worker learns from its own container (worker/engine.py) unless it is given.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests
from docker.types import Mount

import docker
from harness import boot
from harness import manifest as mf
from worker import compile_cache, engine
from worker.runner import HARNESS_ROOT, Emit, InfraError, Limits, PhaseOutcome, Runner, pump_lines

LABEL = "autoresearch"
IN_HARNESS = "/opt/autoresearch"
IN_CANDIDATE = "/candidate/train.py"
IN_DATA = "/data"
IN_SCRATCH = "/scratch"
ENV_HOST_PATHS = "AUTORESEARCH_HOST_PATHS"
ENV_WORKER = "AUTORESEARCH_WORKER"  # the worker's name, a label of its containers
ENV_HARNESS = "AUTORESEARCH_HARNESS_ROOT"  # the folder holding the harness/ phases mount


def _default_memory() -> int:
    """90% of the host's memory: a runaway candidate must not take the worker down with it."""
    with open("/proc/meminfo") as fh:
        total_kb = int(fh.readline().split()[1])
    return int(total_kb * 1024 * 0.9)


def parse_path_map(text: str) -> dict[str, str]:
    """ "/data=/srv/ar/data,/runs=/srv/ar/runs" -> {"/data": "/srv/ar/data", ...}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        inside, sep, host = item.partition("=")
        if not sep or not inside.startswith("/") or not host.startswith("/"):
            raise ValueError(f"bad path mapping {item!r}: use /inside=/on/host")
        out[inside.rstrip("/")] = host.rstrip("/")
    return out


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Docker's log stream comes in chunks; the pump wants lines."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            yield line + b"\n"
    if buf:
        yield buf


class DockerRunner(Runner):
    name = "docker"
    cage = "docker"
    other_user = True  # the containers' non-root user

    def __init__(
        self,
        data_dir: Path,
        limits: Limits | None = None,
        gpu: int | None = None,
        *,
        image: str,
        python: str = "python3",
        user: str = "1000:1000",
        extra_mounts: Iterable[str] = (),
        path_map: dict[str, str] | None = None,
        host: str | None = None,
        harness_root: Path | None = None,
        client: docker.DockerClient | None = None,
    ):
        super().__init__(data_dir, limits, gpu)
        self.image = image
        self.python = python
        self.user = user
        self.extra_mounts = list(extra_mounts)
        self.path_map = path_map or {}
        self.host = host or socket.gethostname()
        self.harness_root = harness_root or HARNESS_ROOT
        try:
            self.client = client or docker.from_env()
            self.client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise InfraError(f"Docker engine unreachable (is it running?): {exc}") from None

    def run(self, spec: dict[str, Any], workdir: Path, emit: Emit) -> dict[str, Any]:
        fields = super().run(spec, workdir, emit)
        fields["image"] = self.image_id()
        if fields.get("hardware"):
            fields["hardware"] = with_image(fields["hardware"], fields["image"])
        return fields

    def image_id(self) -> str:
        """What re-runs it exactly: the image by content (sha256:...), not by tag."""
        try:
            return self.client.images.get(self.image).id
        except (docker.errors.DockerException, requests.RequestException):
            return self.image

    def hardware(self) -> str:
        """The probe container's signature (given the worker's GPU, as a phase is) and the
        image's id: the line a train phase of this runner reports."""
        try:
            seen = engine.probe(
                self.client, self.image, self.gpu, python=self.python, mounts=self._extra()
            )
        except docker.errors.ImageNotFound:
            raise image_not_found(self.image) from None
        if not seen.signatures:
            raise InfraError(f"no hardware signature from the runner image: {seen.why}")
        return with_image(seen.signatures[0], self.image_id())

    # Paths as the phase sees them inside its container.
    def candidate_path(self) -> str:
        return IN_CANDIDATE

    def data_path(self) -> str:
        return IN_DATA

    def scratch_path(self) -> str:
        return IN_SCRATCH

    def host_path(self, path: Path | str) -> str:
        text = str(Path(path).resolve())
        for inside, host in sorted(self.path_map.items(), key=lambda kv: -len(kv[0])):
            if text == inside or text.startswith(inside + "/"):
                return host + text[len(inside) :]
        return text

    def labels(self) -> dict[str, str]:
        return {LABEL: "1", f"{LABEL}.host": self.host, f"{LABEL}.gpu": str(self.gpu)}

    def create_labels(self) -> dict[str, str]:
        """The labels, and the worker that started the container (AUTORESEARCH_WORKER)."""
        worker = os.environ.get(ENV_WORKER, "")
        return {**self.labels(), f"{LABEL}.worker": worker} if worker else self.labels()

    def _mounts(self, phase: str, workdir: Path) -> list[Mount]:
        def ro(target: str, source: Path | str) -> Mount:
            return Mount(target, self.host_path(source), type="bind", read_only=True)

        splits = [mf.TRAIN_DIR] if phase == "train" else [mf.VAL_DIR]
        splits += [mf.TEST_DIR] if phase == "eval" and self.test_split else []
        return [
            ro(f"{IN_HARNESS}/harness", self.harness_root / "harness"),
            ro(IN_CANDIDATE, workdir / "train.py"),
            ro(f"{IN_DATA}/{mf.MANIFEST}", self.data_dir / mf.MANIFEST),
            ro(f"{IN_DATA}/{mf.TOKENIZER_DIR}", self.data_dir / mf.TOKENIZER_DIR),
            *(ro(f"{IN_DATA}/{split}", self.data_dir / split) for split in splits),
            Mount(IN_SCRATCH, self.host_path(workdir / "scratch"), type="bind", read_only=False),
            *self._extra(),
        ]

    def _extra(self) -> list[Mount]:
        return [Mount(p, self.host_path(p), type="bind", read_only=True) for p in self.extra_mounts]

    def _create(self, phase: str, argv: list[str], workdir: Path, waits: bool = False):
        for folder in (workdir / "scratch", workdir / "scratch" / "tmp"):
            folder.chmod(0o777)  # the container's non-root user writes here (TMPDIR too)
        memory = self.limits.memory_bytes or _default_memory()
        gpus = engine.gpu_request(self.gpu)
        try:
            return self.client.containers.create(
                self.image,
                boot.command(
                    self.python, "harness.entry", argv, boot=f"{IN_HARNESS}/harness/boot.py"
                ),
                name=f"{LABEL}-{phase}-{uuid.uuid4().hex[:12]}",
                labels=self.create_labels(),
                mounts=self._mounts(phase, workdir),
                working_dir=IN_SCRATCH,
                # No secret; TMPDIR and the compile caches in the scratch (the train
                # phase's a copy of the frontier's, the eval phase's its own).
                environment={
                    "HOME": IN_SCRATCH,
                    "TMPDIR": f"{IN_SCRATCH}/tmp",
                    **compile_cache.env(IN_SCRATCH, phase),
                },
                user=self.user,
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": "rw,size=1g,mode=1777"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=4096,
                mem_limit=memory,
                memswap_limit=memory,
                shm_size="1g",
                device_requests=gpus,
                ulimits=[
                    docker.types.Ulimit(name="core", soft=0, hard=0),
                    # A candidate filling the scratch disk dies at this file size (SIGXFSZ).
                    docker.types.Ulimit(
                        name="fsize", soft=self.limits.file_bytes, hard=self.limits.file_bytes
                    ),
                    docker.types.Ulimit(
                        name="nofile", soft=self.limits.open_files, hard=self.limits.open_files
                    ),
                ],
                stdin_open=waits,
            )
        except docker.errors.ImageNotFound:
            raise image_not_found(self.image) from None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise InfraError(f"cannot create the {phase} container: {exc}") from None

    def start_waiting(self, phase: str, argv: list[str], workdir: Path) -> Any:
        """Start the phase's container now; it imports torch, then waits for its go."""
        container = self._create(phase, argv, workdir, waits=True)
        try:
            container.start()
        except docker.errors.DockerException as exc:
            _remove(container)
            raise InfraError(f"{phase} container failed to start: {exc}") from None
        return container

    def waiting(self, handle: Any) -> bool:
        try:
            handle.reload()
        except (docker.errors.DockerException, requests.RequestException):
            return False
        return handle.status == "running"

    def discard(self, handle: Any) -> None:
        _remove(handle)

    def _go(self, container, phase: str) -> None:
        sock = container.attach_socket(params={"stdin": 1, "stream": 1})
        try:
            raw = getattr(sock, "_sock", sock)
            raw.sendall(self.go_line(phase))
        finally:
            sock.close()

    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        container = self._prestarted.pop(phase, None)
        started = container is not None
        if container is None:
            container = self._create(phase, argv, workdir)
        start = time.monotonic()
        outcome = PhaseOutcome(exit_code=None, timed_out=False, seconds=0.0)
        ready = self.readiness(phase, started)
        pump: threading.Thread | None = None
        try:
            if not started:
                container.start()
            logs = container.logs(stream=True, follow=True)  # from the container's start
            pump = pump_lines(
                _lines(logs),
                phase,
                emit,
                outcome.tail,
                self.limits.log_bytes,
                outcome.signed,
                ready,
            )
            if ready is not None:
                self.wait_ready(phase, ready, outcome.tail)
                start = time.monotonic()  # the wall starts at the go
            if started:
                self._go(container, phase)
            try:
                remaining = max(wall_s - (time.monotonic() - start), 0.1)
                status = container.wait(timeout=remaining)
                outcome.exit_code = self._exit_code(container, status["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                outcome.timed_out = True
        except docker.errors.DockerException as exc:
            raise InfraError(f"{phase} container failed to run: {exc}") from None
        finally:
            # Kill and remove whatever happens, RQ's own job timeout included.
            _remove(container)
            if pump is not None:
                pump.join(timeout=5)
        outcome.seconds = time.monotonic() - start
        return outcome

    @staticmethod
    def _exit_code(container, code: int) -> int:
        container.reload()
        if container.attrs["State"].get("OOMKilled"):
            return -9  # classified as `oom`, like a SIGKILL from the kernel's OOM killer
        return -(code - 128) if code > 128 else code  # 128+N: killed by signal N

    def cleanup_orphans(self, live_workers: Iterable[str] | None = None) -> list[str]:
        """Remove containers of this host and GPU left by a worker that died.

        A GPU is claimed by one worker at a time, so its containers are all orphans. CPU
        workers share "no GPU": given the live workers' names, a CPU container started by a
        live worker (another replica on this host) is kept."""
        filters = {"label": [f"{k}={v}" for k, v in self.labels().items()]}
        live = set(live_workers or ())
        removed = []
        for container in self.client.containers.list(all=True, filters=filters):
            if self.gpu is None and container.labels.get(f"{LABEL}.worker") in live:
                continue
            _remove(container)
            removed.append(container.name)
        return removed


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # removal already in progress
            raise


def with_image(signature: str, image: str) -> str:
    """A signature and, short, the image its phases ran in: `... | image sha256:0123456789ab`."""
    return f"{signature} | image {image[:19] if image.startswith('sha256:') else image}"


def runner_image() -> str:
    """The image phases run in: AUTORESEARCH_RUNNER_IMAGE, else the one compose builds."""
    return os.environ.get("AUTORESEARCH_RUNNER_IMAGE", "autoresearch-runner:latest")


def image_not_found(image: str) -> InfraError:
    return InfraError(
        f"runner image {image} not found: build it (docker build -f "
        f"docker/runner.Dockerfile -t {image} .) or set AUTORESEARCH_RUNNER_IMAGE"
    )


def from_env(data_dir: Path, limits: Limits, gpu: int | None) -> DockerRunner:
    """A DockerRunner configured by AUTORESEARCH_RUNNER_IMAGE and friends."""
    image = runner_image()
    mounts = [m for m in os.environ.get("AUTORESEARCH_RUNNER_MOUNTS", "").split(",") if m]
    return DockerRunner(
        data_dir,
        limits,
        gpu,
        image=image,
        python=os.environ.get("AUTORESEARCH_RUNNER_PYTHON", "python3"),
        extra_mounts=mounts,
        path_map=parse_path_map(os.environ.get(ENV_HOST_PATHS, "")),
        host=os.environ.get("AUTORESEARCH_HOST") or None,
        harness_root=Path(os.environ[ENV_HARNESS]) if os.environ.get(ENV_HARNESS) else None,
    )
