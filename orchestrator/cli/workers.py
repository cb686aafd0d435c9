"""`autoresearch worker`: serve experiments from a run's Redis as an RQ worker, on one GPU
(given, or claimed through Redis with --gpu auto) or on the CPU; `--gpu all` starts one such
worker per GPU this host has (one on the CPU if it has none).

With the docker runner, what is not given is learnt from the engine (worker/engine.py): the
host's name, its GPUs (a probe container), and, in a container, the host paths of its mounts.
Before taking a job every worker learns its hardware signature from its runner (the docker
runner's probe container, a process like a phase's, the simulate runner's fixed one).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from orchestrator import logs
from orchestrator import settings as st
from orchestrator.cli.helpers import (
    add_common,
    add_runner,
    announce_cage,
    data_fingerprint,
    load_settings,
    resolve_profile,
    worker_gpu_arg,
)


def add_worker(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve experiments from Redis (an RQ worker); one per GPU")
    add_common(p)
    p.add_argument("--redis-url", help="Redis of the run (default: REDIS_URL)")
    p.add_argument(
        "--gpu",
        type=worker_gpu_arg,
        help="the one GPU this worker uses: an index, or auto to claim a free one of this host "
        "through Redis; all: one worker per GPU of this host (one on the CPU if none). The "
        "GPUs: AUTORESEARCH_GPUS, else nvidia-smi, else (docker runner) a probe container. "
        "Default: none, CPU",
    )
    p.add_argument("--name", help="worker name (default: host-gpu-pid)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    add_runner(p)


def cmd_worker(args: argparse.Namespace) -> int:
    s = load_settings(args)
    url = s.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise st.SettingsError("redis_url: a worker needs --redis-url or REDIS_URL")
    log = logs.get()
    if s.runner == "docker":
        _learn_from_engine(s, log)
    host = s.host or socket.gethostname()
    gpu = s.gpu
    count = _count_gpus(s, log) if gpu in ("auto", "all") else None
    if count == 0:
        gpu = None
    elif gpu == "all":
        return _one_per_gpu(args, count, log)
    return _serve(args, s, url, host, gpu, count, log)


def _serve(
    args: argparse.Namespace,
    s: st.Settings,
    url: str,
    host: str,
    gpu: int | str | None,
    count: int | None,
    log: Any,
) -> int:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from orchestrator.redis_server import connect
    from worker import keys
    from worker.serving import Worker
    from worker.settings import WorkerSettings

    profile, data_dir = resolve_profile(s, log)
    fingerprint = data_fingerprint(data_dir)
    redis = connect(url)
    claim = None
    if gpu == "auto":
        from worker.gpu_claim import GpuClaim

        owner = args.name or f"{socket.gethostname()}-{os.getpid()}"
        claim = GpuClaim(redis, host, count, owner, log=log).acquire()
        gpu = claim.gpu
        log.info("worker.gpu_claimed", gpu=gpu, host=host, of=count)
    try:
        wsettings = WorkerSettings(
            data_dir=data_dir.resolve(),
            runs_dir=s.runs_dir.resolve(),
            runner=s.runner,
            gpu=gpu,
            memory_gb=s.memory_gb,
        )
        os.environ.update(wsettings.to_env())
        name = args.name or _name(host, gpu)
        hardware = _ready_runner(wsettings, name, redis, log)
        queues = [
            Queue(q, connection=redis, serializer=JSONSerializer)
            for q in (keys.worker_queue(name), keys.QUEUE_NAME)
        ]
        worker = Worker(
            queues,
            connection=redis,
            name=name,
            serializer=JSONSerializer,
            fingerprint=fingerprint,
            hardware=hardware,
        )
        announce_cage(log, s.runner)
        log.info(
            "worker.start",
            name=name,
            host=host,
            gpu=gpu,
            runner=s.runner,
            profile=profile.name,
            fingerprint=fingerprint,
            data_dir=str(data_dir),
        )
        worker.work(burst=args.burst, logging_level="WARNING")
    finally:
        if claim is not None:
            claim.release()
    return 0


def _ready_runner(wsettings: Any, name: str, redis: Any, log: Any) -> str:
    """Make the worker's runner ready (docker: its harness published, the orphans of a dead
    worker removed) and return its hardware signature, learnt as a phase runs: jobs pinned
    to another are left to other workers (worker/serving.py)."""
    from rq.serializers import JSONSerializer

    from worker import slots
    from worker.jobs import make_runner
    from worker.serving import Worker

    if wsettings.runner == "docker":
        from worker.docker_runner import ENV_WORKER

        os.environ[ENV_WORKER] = name
        _publish_harness(wsettings, log)
    runner = make_runner(wsettings)  # after _publish_harness: the harness it mounts
    live = [w.name for w in Worker.all(connection=redis, serializer=JSONSerializer)]
    # A worker that died left its scratch slots behind (worker/slots.py), weights included.
    swept = slots.sweep(wsettings.runs_dir, live)
    if swept:
        log.info("worker.slots_removed", count=len(swept), folders=[str(f) for f in swept])
    if wsettings.runner == "docker":
        # A worker that died left its containers behind; this host and GPU's are ours.
        removed = runner.cleanup_orphans(live)
        log.info("worker.orphans_removed", count=len(removed), names=removed)
    hardware = runner.hardware()
    log.info("worker.hardware", name=name, hardware=hardware)
    return hardware


def _name(host: str, gpu: int | None) -> str:
    """host-gpuN-pid; in a container (its own hostname), the container's name goes in too:
    replicas on one host have the same host and, often, the same pid."""
    own = socket.gethostname() if os.path.exists("/.dockerenv") else ""
    parts = [host, own if own != host else "", "cpu" if gpu is None else f"gpu{gpu}"]
    return "-".join(p for p in [*parts, str(os.getpid())] if p)


def _count_gpus(s: st.Settings, log: Any) -> int:
    """AUTORESEARCH_GPUS, else nvidia-smi's count, else (docker runner) a probe container's."""
    if s.gpus is not None:
        why = f"AUTORESEARCH_GPUS={s.gpus}"
        count = s.gpus
    elif count := st.count_gpus():
        why = "nvidia-smi"
    elif s.runner == "docker":
        import docker
        from worker import engine
        from worker.docker_runner import image_not_found, runner_image

        try:
            count, why = engine.count_gpus(engine.client(), runner_image())
        except docker.errors.ImageNotFound:
            raise image_not_found(runner_image()) from None
    else:
        raise st.SettingsError(
            "gpus: --gpu auto/all needs AUTORESEARCH_GPUS (no nvidia-smi found, not the docker runner)"
        )
    os.environ["AUTORESEARCH_GPUS"] = str(count)  # what the per-GPU workers are told
    if count == 0:
        log.info("worker.no_gpu", why=f"{why}: runs on the CPU, claims nothing")
    else:
        log.info("worker.gpus", count=count, why=why)
    return count


def _learn_from_engine(s: st.Settings, log: Any) -> None:
    """The host's name and, in a container, the host paths of this container's mounts, from
    the engine, unless given (AUTORESEARCH_HOST, AUTORESEARCH_HOST_PATHS)."""
    from worker import docker_runner, engine

    try:
        client = engine.client()
        if not s.host:
            s.host = os.environ["AUTORESEARCH_HOST"] = engine.host_name(client)
        if os.environ.get(docker_runner.ENV_HOST_PATHS) is None:
            own = engine.own_container(client)
            if own is not None:
                mounts = engine.mount_map(own)
                os.environ[docker_runner.ENV_HOST_PATHS] = ",".join(
                    f"{inside}={host}" for inside, host in mounts.items() if inside != "/"
                )
                log.info("worker.host_paths", container=own.name, mounts=mounts)
    except Exception as exc:  # the engine's own errors come in many types
        from worker.runner import InfraError

        raise InfraError(f"Docker engine unreachable (is it running?): {exc}") from None


def _publish_harness(wsettings: Any, log: Any) -> None:
    """In a container whose harness lies in its image, not under a mount, the engine cannot
    mount it into phases: publish a copy under the runs folder (a mount) and use that."""
    from worker import docker_runner, engine
    from worker.runner import HARNESS_ROOT

    mapped = os.environ.get(docker_runner.ENV_HOST_PATHS, "")
    if not mapped or os.environ.get(docker_runner.ENV_HARNESS):
        return
    mounts = docker_runner.parse_path_map(mapped)
    if engine.under(HARNESS_ROOT, mounts):
        return
    root = engine.publish_harness(HARNESS_ROOT / "harness", wsettings.runs_dir / ".harness")
    os.environ[docker_runner.ENV_HARNESS] = str(root)
    log.info("worker.harness_published", path=str(root))


def _one_per_gpu(args: argparse.Namespace, count: int, log: Any) -> int:
    """`--gpu all`: one `worker --gpu auto` per GPU, each claiming its own, as children that
    die with this process. SIGTERM/SIGINT/SIGHUP are passed on; when one child fails, the
    others are stopped and its exit code is ours (a restart policy then starts them all)."""
    from worker import lifeline

    argv = [sys.executable, "-m", "orchestrator.cli", *_without_gpu(args.argv)]
    procs = []
    for i in range(count):
        extra = ["--gpu", "auto"] + (["--name", f"{args.name}-{i}"] if args.name else [])
        procs.append(subprocess.Popen([*argv, *extra], preexec_fn=lifeline.preexec()))
    log.info("worker.per_gpu", count=count, pids=[p.pid for p in procs])
    stopping = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = 0
    while procs:
        pid, status = os.wait()
        done = next((p for p in procs if p.pid == pid), None)
        if done is None:
            continue
        procs.remove(done)
        done.returncode = os.waitstatus_to_exitcode(status)
        code = code or done.returncode
        if not stopping and done.returncode != 0:
            log.warning("worker.child_ended", pid=pid, code=done.returncode, stopping_all=True)
            forward(signal.SIGTERM, None)
    return code


def _without_gpu(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--gpu", "--name"):
            skip = True
        elif not arg.startswith(("--gpu=", "--name=")):
            out.append(arg)
    return out
