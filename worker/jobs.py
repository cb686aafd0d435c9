"""The RQ job: run one experiment spec on this worker and return the result dict.

A failing candidate returns a result (status crash, oom, ...). A failing machine raises
(InfraError, FingerprintMismatch), so RQ retries the job, on this or another worker.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import structlog
from rq import get_current_job

from harness import codes
from harness import manifest as mf
from worker import contract, keys
from worker.compile_cache import STORE_DIR, CacheStore, remove_tree
from worker.contract import Result, Spec
from worker.keys import STREAM_TTL_S, log_stream_key
from worker.process_runner import ProcessRunner
from worker.runner import InfraError, Limits, Runner
from worker.settings import WorkerSettings, add_log_entry
from worker.slots import SLOTS_DIR, Slots, folder_name


def make_runner(settings: WorkerSettings) -> Runner:
    limits = Limits(memory_bytes=int(settings.memory_gb * 2**30) if settings.memory_gb else None)
    if settings.runner == "process":
        return ProcessRunner(settings.data_dir, limits, settings.gpu)
    if settings.runner == "docker":
        from worker import docker_runner

        return docker_runner.from_env(settings.data_dir, limits, settings.gpu)
    if settings.runner == "simulate":
        from worker.simulate import SimulatedRunner

        return SimulatedRunner(settings.data_dir, limits, settings.gpu)
    raise InfraError(f"unknown runner {settings.runner!r}")


class HeldRunner:
    """The runner a worker keeps between the jobs it runs in its own process (worker/
    serving.py): it holds the next job's train process, started in a scratch slot during
    the current job's eval (worker/slots.py). Outside `hold()` (a forking worker, a
    test calling run_experiment), each job makes its own runner and nothing outlives it."""

    def __init__(self) -> None:
        self.holding = False
        self.runner: Runner | None = None
        self.settings: WorkerSettings | None = None

    def get(self, settings: WorkerSettings, worker: str, tag: str) -> Runner:
        if not self.holding:
            return make_runner(settings)
        if self.runner is None or self.settings != settings:
            self.close()
            self.runner, self.settings = make_runner(settings), settings
            self.runner.slots = Slots()
        assert self.runner.slots is not None
        self.runner.slots.root = settings.runs_dir / tag / SLOTS_DIR / folder_name(worker)
        return self.runner

    def close(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
            structlog.get_logger("autoresearch").info("worker.runner_closed")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """While it lasts, the jobs of this process share one runner; at its end, its
        waiting train process is discarded."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            self.close()


HELD = HeldRunner()


def check_fingerprint(spec: Spec, data_dir: Path) -> None:
    try:
        mine = mf.load_manifest(data_dir)["fingerprint"]
    except FileNotFoundError as exc:
        raise InfraError(str(exc)) from exc
    if mine != spec["fingerprint"]:
        raise contract.FingerprintMismatch(
            f"worker data {mine} differs from the run's {spec['fingerprint']}: refusing the job"
        )


PROGRESS_LOG_EVERY_S = 10.0
PROGRESS_FIELDS = ("step", "loss", "tokens", "tok_per_s", "elapsed_s", "remaining_s")


class ExperimentLog:
    """One experiment's trail: raw output.log, structured log.jsonl and its Redis streams
    (the experiment's and the run's)."""

    def __init__(self, folder: Path, redis: Any, tag: str, exp_id: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.raw = open(folder / "output.log", "a", encoding="utf-8")  # noqa: SIM115
        self.jsonl = open(folder / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(self.jsonl),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
        ).bind(id=exp_id)
        # The worker's own log (its stdout/stderr: what `docker compose logs worker` shows):
        # each event, and one progress line per PROGRESS_LOG_EVERY_S at most.
        self.console = structlog.get_logger("autoresearch").bind(tag=tag, id=exp_id)
        self.progress_at = 0.0
        self.redis, self.tag, self.exp_id = redis, tag, exp_id

    def publish(self, kind: str, phase: str, text: str) -> None:
        """One entry in the experiment's stream and, with its id, in the run's (one round
        trip): `logs ID -f` follows the first, `logs -f` and the dashboard the second."""
        if self.redis is None:
            return
        fields = {"kind": kind, "phase": phase, "text": text, "t": f"{time.time():.3f}"}
        pipe = self.redis.pipeline(transaction=False)
        add_log_entry(pipe, self.tag, self.exp_id, fields)
        pipe.execute()

    def line(self, phase: str, line: str) -> None:
        self.raw.write(f"{line}\n")
        self.raw.flush()
        if line.startswith(codes.METRICS_PREFIX):
            try:
                metrics = json.loads(line[len(codes.METRICS_PREFIX) :])
            except json.JSONDecodeError:
                metrics = {"raw": line}
            self.log.info("metrics", phase=phase, **metrics if isinstance(metrics, dict) else {})
            if isinstance(metrics, dict):
                self.progress(phase, metrics)
            self.publish("metrics", phase, line[len(codes.METRICS_PREFIX) :])
        else:
            self.log.info("output", phase=phase, line=line)
            self.publish("line", phase, line)

    def progress(self, phase: str, metrics: dict[str, Any]) -> None:
        """A few of the candidate's numbers, throttled: its output is not to flood our log."""
        now = time.monotonic()
        if now - self.progress_at < PROGRESS_LOG_EVERY_S:
            return
        self.progress_at = now
        shown = {
            k: v if isinstance(v, int | float) else str(v)[:40]
            for k, v in metrics.items()
            if k in PROGRESS_FIELDS
        }
        self.console.info("experiment.progress", phase=phase, **shown)

    def event(self, event: str, **fields: Any) -> None:
        self.log.info(event, **fields)
        self.console.info(event, **fields)
        self.publish("event", "", json.dumps({"event": event, **fields}, default=str))

    def close(self) -> None:
        if self.redis is not None:
            self.redis.expire(log_stream_key(self.tag, self.exp_id), STREAM_TTL_S)
            self.redis.expire(keys.run_log_key(self.tag), STREAM_TTL_S)
        self.raw.close()
        self.jsonl.close()


def _queue_seconds(job: Any) -> float | None:
    """How long the job waited in its queue: from its (last) enqueueing to now."""
    enqueued = getattr(job, "enqueued_at", None)
    if enqueued is None:
        return None
    if enqueued.tzinfo is None:  # RQ before 3 kept naive UTC times
        enqueued = enqueued.replace(tzinfo=UTC)
    return max(0.0, time.time() - enqueued.timestamp())


def run_experiment(spec: Spec) -> Result:
    """RQ entry point: refuse a bad spec, run the candidate, return the result dict."""
    contract.check_spec(spec)
    settings = WorkerSettings.from_env()
    try:
        check_fingerprint(spec, settings.data_dir)
    except contract.FingerprintMismatch as exc:
        structlog.get_logger("autoresearch").error(
            "experiment.refused", tag=spec["tag"], id=spec["id"], why=str(exc)
        )
        raise
    job = get_current_job()
    queued = _queue_seconds(job)
    redis = job.connection if job is not None else None
    worker_name = (job.worker_name if job is not None else None) or socket.gethostname()
    folder = settings.runs_dir / spec["tag"] / spec["id"]
    log = ExperimentLog(folder, redis, spec["tag"], spec["id"])
    runner = HELD.get(settings, worker_name, spec["tag"])
    # The run's compile caches, shared by the workers writing into this run folder.
    store = settings.runs_dir / spec["tag"] / STORE_DIR
    runner.caches = CacheStore(store, writable_by_all=runner.other_user)
    log.event(
        "experiment.start",
        worker=worker_name,
        host=socket.gethostname(),
        runner=runner.name,
        gpu=settings.gpu,
        description=spec["description"],
    )
    try:
        fields = runner.run(spec, folder, log.line)
        fields["worker"] = worker_name
        fields["gpu"] = "cpu" if settings.gpu is None else f"cuda:{settings.gpu}"
        fields.update(queue_s=queued, ended_at=time.time())
        result = contract.make_result(spec, **fields)
        log.event("experiment.end", status=result["status"], val_bpb=result["val_bpb"])
        (folder / "result.json").write_text(json.dumps(result, indent=2))
        return result
    except Exception as exc:
        log.event("experiment.infra_error", error=str(exc))
        raise
    finally:
        log.close()
        remove_tree(folder / "scratch")  # without slots, the phases ran in the folder
