"""The RQ worker `autoresearch worker` runs: RQ's forking worker whose horse dies with it
(worker/lifeline.py), and that leaves a run's jobs to other workers when its own prepared
data differs from the run's.

Every spec carries the fingerprint of the data the orchestrator scores against. A worker
with other data (another profile, another source) must not score it, and must not burn the
job's retries refusing it either: it puts the job back at the front of the shared queue
(also a job given to this worker alone, which nobody else would take from its own queue),
where an idle worker with that data takes it at once; it says so in one log line per
fingerprint and pauses before taking a job again (in burst mode, it stops). The horse
checks the fingerprint once more (worker/jobs.py).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from rq import Queue

from worker import keys, lifeline

REFUSED_PAUSE_S = 10.0


class Worker(lifeline.Worker):
    def __init__(self, *args: Any, fingerprint: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fingerprint = fingerprint
        self.refused: set[str] = set()
        self.burst = False

    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        self.burst = burst
        return super().work(burst=burst, **kwargs)

    def execute_job(self, job: Any, queue: Any) -> None:
        theirs = _fingerprint(job)
        if self.fingerprint is None or theirs in (None, self.fingerprint):
            super().execute_job(job, queue)
            return
        # Back at the shared queue's front, also when it came from this worker's own queue
        # (a confirmation the orchestrator gave this worker): there nobody else would take it.
        shared = Queue(keys.QUEUE_NAME, connection=self.connection, serializer=self.serializer)
        shared.enqueue_job(job, at_front=True)
        if theirs not in self.refused:
            self.refused.add(theirs)
            spec = job.args[0]
            structlog.get_logger("autoresearch").error(
                "worker.refused",
                tag=spec.get("tag"),
                id=spec.get("id"),
                why=f"this worker's data {self.fingerprint} differs from the run's {theirs}: "
                "its jobs are left to workers with that data (same PROFILE and SOURCE)",
            )
        if self.burst:  # it would only take the same job again: done
            self._stop_requested = True
        else:
            time.sleep(REFUSED_PAUSE_S)


def _fingerprint(job: Any) -> str | None:
    try:
        spec = job.args[0]
    except Exception:  # not our job's shape: the horse refuses it (contract.check_spec)
        return None
    return spec.get("fingerprint") if isinstance(spec, dict) else None
