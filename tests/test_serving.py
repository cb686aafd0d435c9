"""A worker whose prepared data differs from a run's leaves that run's jobs to others."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from tests.conftest import clean_env
from worker import keys


@pytest.mark.parametrize("given_to", ["everyone", "this worker"])
def test_a_worker_with_other_data_puts_the_job_back_untouched(
    redis_server, redis_client, data_dir, tmp_path, given_to
):
    """Back at the shared queue's front, whether it came from there or from the worker's
    own queue (a confirmation the orchestrator gave it), where no other worker looks."""
    queue = Queue(keys.QUEUE_NAME, connection=redis_client, serializer=JSONSerializer)
    own = Queue(keys.worker_queue("w"), connection=redis_client, serializer=JSONSerializer)
    spec = {"tag": "t", "id": "0007", "fingerprint": "0123456789abcdef"}
    first = queue if given_to == "everyone" else own
    job = first.enqueue("worker.jobs.run_experiment", spec, retry=Retry(max=2))
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--burst", "--name", "w"],
        cwd=tmp_path,
        env=clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), REDIS_URL=redis_server.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = [
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith("{") and '"worker.refused"' in line
    ]
    assert len(refused) == 1 and (refused[0]["tag"], refused[0]["id"]) == ("t", "0007")
    assert "differs from the run's 0123456789abcdef" in refused[0]["why"]
    job.refresh()
    assert job.get_status() == JobStatus.QUEUED and queue.job_ids == [job.id]
    assert own.job_ids == [] and job.origin == keys.QUEUE_NAME
    assert job.retries_left == 2  # no retry spent on a refusal
