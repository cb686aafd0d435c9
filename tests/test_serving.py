"""A worker whose prepared data differs from a run's leaves that run's jobs to others."""

from __future__ import annotations

import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from tests.conftest import serve_burst
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
    events = serve_burst(tmp_path, data_dir, redis_server.url)
    refused = [e for e in events if e["event"] == "worker.refused"]
    assert len(refused) == 1 and (refused[0]["tag"], refused[0]["id"]) == ("t", "0007")
    assert "differs from the run's 0123456789abcdef" in refused[0]["why"]
    job.refresh()
    assert job.get_status() == JobStatus.QUEUED and queue.job_ids == [job.id]
    assert own.job_ids == [] and job.origin == keys.QUEUE_NAME
    assert job.retries_left == 2  # no retry spent on a refusal


def test_a_job_pinned_to_a_signature_runs_only_on_a_worker_with_that_signature(
    redis_server, redis_client, data_dir, tmp_path
):
    """Two simulated workers on one queue, A and B, with different hardware signatures: B
    runs the job pinned to none, puts the one pinned to A back untouched (one worker.refused
    line naming both signatures, no retry spent), and A runs it."""
    from harness.manifest import load_manifest
    from worker.contract import JOB_FUNC, make_spec

    queue = Queue(keys.QUEUE_NAME, connection=redis_client, serializer=JSONSerializer)
    sig = {"A": "sim A100 | torch 0", "B": "sim H200 | torch 0"}

    def enqueue(exp_id: str, hardware: str):
        spec = make_spec(
            id=exp_id,
            tag="t",
            parent="p",
            commit="c",
            source="SIM_HOLD_S = 0\n",
            profile="cpu",
            fingerprint=load_manifest(data_dir)["fingerprint"],
            budget={"train_wall_s": 5, "save_margin_s": 1, "return_grace_s": 1, "eval_wall_s": 5},
            seed=0,
            description=exp_id,
            hardware=hardware,
        )
        return queue.enqueue(JOB_FUNC, spec, retry=Retry(max=2))

    free, pinned = enqueue("0001", ""), enqueue("0002", sig["A"])

    def serve(name: str) -> list[dict]:
        return serve_burst(
            tmp_path,
            data_dir,
            redis_server.url,
            name,
            AUTORESEARCH_RUNNER="simulate",
            AUTORESEARCH_SIM_HARDWARE=sig[name],
        )

    by_b = serve("B")  # burst: it stops at the job it refuses
    assert [e["hardware"] for e in by_b if e["event"] == "worker.hardware"] == [sig["B"]]
    refused = [e for e in by_b if e["event"] == "worker.refused"]
    assert len(refused) == 1 and (refused[0]["tag"], refused[0]["id"]) == ("t", "0002")
    assert f"'{sig['B']}' differs from the run's '{sig['A']}'" in refused[0]["why"]
    pinned.refresh()
    assert pinned.get_status() == JobStatus.QUEUED and queue.job_ids == [pinned.id]
    assert pinned.retries_left == 2  # no retry spent on a refusal
    free.refresh()
    assert free.return_value()["worker"] == "B" and free.return_value()["hardware"] == sig["B"]
    assert not redis_client.exists(keys.worker_hardware_key("B"))  # gone with its worker

    by_a = serve("A")
    assert not [e for e in by_a if e["event"] == "worker.refused"]
    pinned.refresh()
    assert pinned.get_status() == JobStatus.FINISHED and queue.job_ids == []
    result = pinned.return_value()
    assert result["status"] == "ok" and result["worker"] == "A" and result["hardware"] == sig["A"]
