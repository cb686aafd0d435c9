"""`autoresearch worker`: serve experiments from a run's Redis as an RQ worker, on one GPU
(given, or claimed through Redis with --gpu auto) or on the CPU."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from orchestrator import logs
from orchestrator import settings as st
from orchestrator.cli.helpers import (
    add_common,
    add_runner,
    announce_cage,
    data_fingerprint,
    gpu_arg,
    load_settings,
    resolve_profile,
)


def add_worker(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve experiments from Redis (an RQ worker); one per GPU")
    add_common(p)
    p.add_argument("--redis-url", help="Redis of the run (default: REDIS_URL)")
    p.add_argument(
        "--gpu",
        type=gpu_arg,
        help="the one GPU this worker uses: an index, or auto to claim a free one of this host "
        "through Redis (AUTORESEARCH_GPUS of them); default: none, CPU",
    )
    p.add_argument("--name", help="worker name (default: host-gpu-pid)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    add_runner(p)


def cmd_worker(args: argparse.Namespace) -> int:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from orchestrator.redis_server import connect
    from worker import keys
    from worker.lifeline import Worker
    from worker.settings import WorkerSettings

    s = load_settings(args)
    url = s.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise st.SettingsError("redis_url: a worker needs --redis-url or REDIS_URL")
    log = logs.get()
    profile, data_dir = resolve_profile(s, log)
    fingerprint = data_fingerprint(data_dir)
    redis = connect(url)
    host = s.host or socket.gethostname()
    claim = None
    gpu = s.gpu
    count = (s.gpus if s.gpus is not None else _count_gpus()) if gpu == "auto" else None
    if count == 0:
        gpu = None
        log.info("worker.no_gpu", why="AUTORESEARCH_GPUS=0: runs on the CPU, claims nothing")
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
        if s.runner == "docker":
            from worker.jobs import make_runner

            # A worker that died left its containers behind; this host and GPU's are ours.
            removed = make_runner(wsettings).cleanup_orphans()
            log.info("worker.orphans_removed", count=len(removed), names=removed)
        name = args.name or f"{host}-{'cpu' if gpu is None else f'gpu{gpu}'}-{os.getpid()}"
        queues = [
            Queue(q, connection=redis, serializer=JSONSerializer)
            for q in (keys.worker_queue(name), keys.QUEUE_NAME)
        ]
        worker = Worker(queues, connection=redis, name=name, serializer=JSONSerializer)
        announce_cage(log, s.runner)
        log.info(
            "worker.start",
            name=name,
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


def _count_gpus() -> int:
    count = st.count_gpus()
    if not count:
        raise st.SettingsError("gpus: --gpu auto needs AUTORESEARCH_GPUS (no nvidia-smi found)")
    return count
