"""The RQ worker `autoresearch worker` runs: RQ's SimpleWorker, which runs each job in
its own process, so that its runner outlives a job and starts the next job's train process
during the current one's eval (worker/jobs.py's HeldRunner, worker/slots.py); and that
leaves a run's jobs to other workers when its own prepared data or its hardware differs
from the run's.

A forking worker's parent heartbeats while its horse works; this one heartbeats from a
thread while the job runs (RQ's own `maintain_heartbeats`, every job_monitoring_interval),
so a worker killed mid-job is found abandoned within about a minute and a half, not after
the job's whole timeout. A SIGKILLed worker takes its phases along (their parent-death
signal, worker/lifeline.py), the waiting one included.

Every spec carries the fingerprint of the data the orchestrator scores against and, once
the run has a baseline, the hardware signature it is pinned to (harness/hardware.py: with
a wall-clock budget a faster machine trains more tokens, so results of two signatures do
not compete). A worker with other data (another profile, another source) or another
signature must not score it, and must not burn the job's retries refusing it either: it
puts the job back at the front of the shared queue (also a job given to this worker alone,
which nobody else would take from its own queue), where an idle worker that matches takes
it at once; it says so in one log line per fingerprint or signature and pauses before
taking a job again (in burst mode, it stops). The job checks the fingerprint once more
(worker/jobs.py).

The worker publishes its signature under keys.worker_hardware_key while it lives, for
`status` and the dashboard.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import redis
import rq
import structlog
from rq import Queue
from rq.worker import BaseWorker, WorkerStatus

from worker import jobs, keys

REFUSED_PAUSE_S = 10.0


class Worker(rq.SimpleWorker):
    def __init__(
        self,
        *args: Any,
        fingerprint: str | None = None,
        hardware: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fingerprint = fingerprint
        self.hardware = hardware
        self.refused: set[tuple[str, str]] = set()
        self._running = False
        self.burst = False

    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        self.burst = burst
        with jobs.HELD.hold():  # one runner for every job; its waiting phase ends with us
            return super().work(burst=burst, **kwargs)

    # A forking worker's TTLs: the worker and its job expire a minute after the last beat.
    get_heartbeat_ttl = BaseWorker.get_heartbeat_ttl

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's stop-job command (from its pubsub thread) for a worker without a horse:
        the running job gets JobStopped in the main thread, its runner's cleanup kills its
        phases, and RQ marks it stopped, as it does when it kills a horse."""
        if self._running and threading.current_thread() is not threading.main_thread():
            signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)

    def _perform(self, job: Any, queue: Any) -> None:
        """SimpleWorker.execute_job with heartbeats from a thread while the job runs."""
        execution = self.prepare_execution(job)
        done = threading.Event()
        previous = signal.signal(STOP_SIGNAL, _raise_stopped)
        self._running = True

        def beat() -> None:
            while not done.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except redis.RedisError as exc:  # the next beat tries again
                    structlog.get_logger("autoresearch").warning(
                        "worker.heartbeat_failed", error=str(exc)
                    )

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._running = False
            signal.signal(STOP_SIGNAL, previous)
            done.set()
            thread.join()
        self.set_state(WorkerStatus.IDLE)

    def teardown(self) -> None:
        """The waiting train phase goes first: RQ's own teardown talks to Redis, which may
        be gone already (a joining host's workers outlive the run's Redis) and may hang
        until the engine kills the worker, which would leave that phase's container."""
        jobs.HELD.close()
        super().teardown()

    def register_birth(self) -> None:
        super().register_birth()
        self._publish()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        self._publish(pipeline)

    def register_death(self) -> None:
        self.connection.delete(keys.worker_hardware_key(self.name))
        super().register_death()

    def _publish(self, pipeline: Any = None) -> None:
        if self.hardware is not None:
            (self.connection if pipeline is None else pipeline).set(
                keys.worker_hardware_key(self.name),
                self.hardware,
                ex=keys.WORKER_HARDWARE_TTL_S,
            )

    def mismatch(self, spec: dict[str, Any]) -> tuple[str, str, str] | None:
        """(what, mine, theirs) of the first pin of the spec this worker does not meet; a
        pin the spec leaves empty, or that this worker does not know, holds anything."""
        for what, mine in (("fingerprint", self.fingerprint), ("hardware", self.hardware)):
            theirs = spec.get(what)
            if mine is not None and theirs and theirs != mine:
                return what, mine, theirs
        return None

    def execute_job(self, job: Any, queue: Any) -> None:
        spec = _spec(job)
        mismatch = self.mismatch(spec)
        if mismatch is None:
            self._perform(job, queue)
            return
        # Back at the shared queue's front, also when it came from this worker's own queue
        # (a confirmation the orchestrator gave this worker): there nobody else would take it.
        shared = Queue(keys.QUEUE_NAME, connection=self.connection, serializer=self.serializer)
        shared.enqueue_job(job, at_front=True)
        what, mine, theirs = mismatch
        if (what, theirs) not in self.refused:
            self.refused.add((what, theirs))
            structlog.get_logger("autoresearch").error(
                "worker.refused",
                tag=spec.get("tag"),
                id=spec.get("id"),
                why=_WHY[what].format(mine=mine, theirs=theirs),
            )
        if self.burst:  # it would only take the same job again: done
            self._stop_requested = True
        else:
            time.sleep(REFUSED_PAUSE_S)


STOP_SIGNAL = signal.SIGUSR1  # how RQ's stop-job command reaches the running job


class JobStopped(Exception):
    """The job was stopped on request (`rq`'s stop-job command: Ctrl-C of the run)."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise JobStopped("job stopped on request")


_WHY = {
    "fingerprint": "this worker's data {mine} differs from the run's {theirs}: its jobs are "
    "left to workers with that data (same PROFILE and SOURCE)",
    "hardware": "this worker's hardware '{mine}' differs from the run's '{theirs}': its jobs "
    "are left to workers with that signature (a run is pinned to its baseline's)",
}


def _spec(job: Any) -> dict[str, Any]:
    try:
        spec = job.args[0]
    except Exception:  # not our job's shape: the job refuses it (contract.check_spec)
        return {}
    return spec if isinstance(spec, dict) else {}
