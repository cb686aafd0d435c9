"""What a worker learns from the Docker engine instead of being told: the host's name, its
GPUs and the hardware signature of its own (one probe container), and, when the worker
itself runs in a container, where its mounts come from on the host.

The worker starts candidate containers through the engine's socket, so every bind-mount
source it names must be a path of the engine's host. A worker in a container sees its own
paths; inspecting its own container gives, for each mount, the host path (Source) behind
the path it sees (Destination), which is the whole path rule, learnt rather than typed.
The harness the worker mounts into each phase must be such a path too: when its own copy
lies in its image (under no mount), `publish_harness` copies it into a mounted folder,
named by its content so workers of one image share one copy and never see a half-written one.

Trust: all of this is the worker's own view of its engine (trusted code holding the socket);
nothing here is reachable from a candidate.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from docker.types import DeviceRequest, Mount

import docker
from harness import hardware

_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")


def client() -> docker.DockerClient:
    return docker.from_env()


def host_name(engine: docker.DockerClient) -> str:
    """The engine's host name: the same for every container of the host, stable across
    restarts (GPU claims and leftover containers carry it)."""
    return engine.info().get("Name") or socket.gethostname()


def gpu_request(gpu: int | None) -> list[DeviceRequest]:
    """The device request giving a container one GPU (an index), all of them (-1), or none."""
    if gpu is None:
        return []
    if gpu == -1:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])]


# The probe runs harness/hardware.py's own source (stdlib and torch only, nothing else of
# the harness), so it needs no mount: the image's interpreter and torch, as a phase uses them.
PROBE = Path(hardware.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Probe:
    """What a probe container saw: its GPUs, the hardware signature of each (of its CPU when
    it saw none; empty when it could not run), and why, for the log."""

    gpus: int
    signatures: tuple[str, ...]
    why: str


def probe(
    engine: docker.DockerClient,
    image: str,
    gpu: int | None,
    *,
    python: str = "python3",
    mounts: list[Mount] | None = None,
) -> Probe:
    """One container of `image`, given `gpu` as a phase is (an index, -1 for all of them,
    None for none), runs `python -m harness.hardware --all`: the GPU count for `--gpu
    auto/all` and the worker's hardware signature come from the same probe.

    An engine without the NVIDIA runtime refuses a GPU request ("could not select device
    driver"): that host has no GPU for candidates, so 0 and no signature."""
    container = None
    try:
        container = engine.containers.create(
            image,
            [python, "-c", PROBE, "--all"],
            device_requests=gpu_request(gpu),
            # Docker numbers GPUs in PCI bus order (nvidia-smi's); torch too, then.
            environment={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
            mounts=mounts or [],
            network_mode="none",
            labels={"autoresearch.probe": "gpus"},
        )
        container.start()
        container.wait(timeout=120)
        out = container.logs(stdout=True, stderr=False)
        err = container.logs(stdout=False, stderr=True)
    except docker.errors.ImageNotFound:
        raise
    except (docker.errors.DockerException, requests.RequestException) as exc:
        why = f"the engine gives no GPU to a container: {str(exc).splitlines()[0][:200]}"
        return Probe(0, (), why)
    finally:
        if container is not None:  # a refused start leaves it created: removed either way
            try:
                container.remove(force=True)
            except (docker.errors.DockerException, requests.RequestException):
                pass
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        seen = json.loads(lines[-1])
        count, signatures = int(seen["gpus"]), tuple(str(s) for s in seen["signatures"])
    except (IndexError, KeyError, TypeError, ValueError):
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return Probe(0, (), f"the probe container of {image} failed: {tail[:300]}")
    return Probe(count, signatures, f"a probe container of {image} sees {count} GPU(s)")


def count_gpus(engine: docker.DockerClient, image: str, **kwargs: Any) -> tuple[int, str]:
    """The GPUs a container of `image` sees when given all of them, and why (for the log)."""
    seen = probe(engine, image, -1, **kwargs)
    return seen.gpus, seen.why


def own_container(engine: docker.DockerClient) -> Any | None:
    """This process's container, or None when it runs on the host itself.

    The container's id is in the source of the /etc/hostname (and resolv.conf) mounts Docker
    makes; the hostname is the short id unless compose set another."""
    ids: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            ids += _CONTAINER_ID.findall(fh.read())
    except OSError:
        pass
    ids.append(socket.gethostname())
    for cid in dict.fromkeys(ids):
        try:
            return engine.containers.get(cid)
        except docker.errors.NotFound:
            continue
        except (docker.errors.DockerException, requests.RequestException):
            return None
    return None


def mount_map(container: Any) -> dict[str, str]:
    """{path inside: path on the host} for the container's bind mounts and volumes."""
    out = {}
    for mount in container.attrs.get("Mounts", []):
        if mount.get("Type") in ("bind", "volume") and mount.get("Source"):
            out[mount["Destination"].rstrip("/") or "/"] = mount["Source"].rstrip("/")
    return out


def under(path: Path, mounts: dict[str, str]) -> bool:
    text = str(path.resolve())
    return any(text == m or text.startswith(m.rstrip("/") + "/") for m in mounts)


def publish_harness(harness: Path, dest: Path) -> Path:
    """Copy the folder `harness` to dest/<digest>/harness (once) and return dest/<digest>."""
    digest = hashlib.sha256()
    files = sorted(p for p in harness.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(harness)).encode() + b"\0" + path.read_bytes())
    root = dest / digest.hexdigest()[:16]
    if (root / "harness").is_dir():
        return root
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest))
    for path in files:
        target = tmp / "harness" / path.relative_to(harness)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for folder in [tmp, *tmp.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)  # the phases' user reads it
    try:
        tmp.rename(root)
    except OSError:  # another worker published the same content first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
