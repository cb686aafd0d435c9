"""The next job's train process, started in a scratch slot during the current job's eval
(worker/slots.py), on real processes: the process runner directly, then a real worker
running two queued jobs in its own process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import SHORT_BUDGET, SHOW_PROCESS, processes_under, serve_burst, shown_process
from worker import contract, keys
from worker.process_runner import ProcessRunner
from worker.runner import EARLY_LINE
from worker.slots import Slots, sweep


def _spec(exp_id: str, seed: int, fingerprint: str = "f") -> dict:
    return contract.make_spec(
        id=exp_id,
        tag="t",
        parent="p",
        commit="c" + exp_id,
        source=SHOW_PROCESS,
        profile="cpu",
        fingerprint=fingerprint,
        budget=SHORT_BUDGET,
        seed=seed,
        description=exp_id,
    )


def _run(runner: ProcessRunner, folder: Path, exp_id: str, seed: int) -> tuple[dict, list]:
    lines: list[tuple[str, str]] = []
    fields = runner.run(_spec(exp_id, seed), folder / exp_id, lambda p, x: lines.append((p, x)))
    return fields, lines


def _slotted(data_dir: Path, root: Path) -> ProcessRunner:
    runner = ProcessRunner(data_dir)
    runner.slots = Slots(root)
    return runner


def test_the_next_jobs_train_process_waits_in_the_other_slot(data_dir, tmp_path):
    """After job 1, a train process waits in the slot job 1 did not use (job 1's is gone,
    weights and all); job 2 runs in that very process, with its own seed from the go line.
    The eval phase's end, which kills what a phase left behind, spares it."""
    root = tmp_path / "slots"
    runner = _slotted(data_dir, root)
    try:
        first, lines1 = _run(runner, tmp_path, "1", seed=3)
        assert first["status"] == "ok", first["log_tail"]
        assert not any(EARLY_LINE in line for _, line in lines1)  # job 1 started its own
        pid1, _, seed1 = shown_process(lines1)
        spare = runner.slots.spare
        assert spare is not None and spare.handle.poll() is None
        assert sorted(p.name for p in root.iterdir()) == [spare.slot.name]  # job 1's removed
        assert spare.handle.pid != pid1 and processes_under(spare.slot) == [spare.handle.pid]
        assert (spare.slot / "train.py").read_text() == ""  # nothing of a job yet
        second, lines2 = _run(runner, tmp_path, "2", seed=7)
        assert second["status"] == "ok", second["log_tail"]
        assert any(EARLY_LINE in line for _, line in lines2)
        assert shown_process(lines2)[::2] == (spare.handle.pid, 7) and seed1 == 3
        assert runner.slots.spare.slot.name != spare.slot.name  # the slots alternate
        assert not (tmp_path / "2" / "scratch").exists()  # the phases ran in the slot
    finally:
        runner.close()
    # The worker stops: its waiting process is discarded and its slot emptied.
    assert runner.slots.spare is None and processes_under(root) == [] and not any(root.iterdir())


def test_a_spare_that_died_while_waiting_is_replaced(data_dir, tmp_path):
    """A waiting train process that is gone when its job comes (killed, crashed) is not
    the job's failure: the job starts its own."""
    runner = _slotted(data_dir, tmp_path / "slots")
    try:
        first, _ = _run(runner, tmp_path, "1", seed=0)
        assert first["status"] == "ok", first["log_tail"]
        dead = runner.slots.spare.handle
        os.killpg(dead.pid, signal.SIGKILL)
        dead.wait()
        second, lines = _run(runner, tmp_path, "2", seed=5)
        assert second["status"] == "ok", second["log_tail"]
        assert not any(EARLY_LINE in line for _, line in lines)
        pid, _, seed = shown_process(lines)
        assert pid != dead.pid and seed == 5
    finally:
        runner.close()


def test_sweep_removes_only_the_slots_of_workers_that_are_gone(tmp_path):
    for worker in ("live", "dead"):
        (tmp_path / "run" / ".slots" / worker / "a" / "scratch").mkdir(parents=True)
    removed = sweep(tmp_path, ["live", "other"])
    assert removed == [tmp_path / "run" / ".slots" / "dead"]
    assert sorted(p.name for p in (tmp_path / "run" / ".slots").iterdir()) == ["live"]


def test_a_worker_runs_the_next_job_in_the_train_process_it_started_early(
    redis_server, redis_client, data_dir, tmp_path
):
    """`autoresearch worker --burst` with two jobs queued runs both in its own process: the
    second job's train process was started during the first one's eval, and is the process
    that runs the second candidate. When the worker stops, nothing of it runs any more. At
    its start it removed the slot a dead worker left."""
    from harness.manifest import load_manifest

    runs = tmp_path / "workspace" / "runs" / "t"
    stale = runs / ".slots" / "dead-worker" / "a" / "scratch"
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"weights")

    queue = Queue(keys.QUEUE_NAME, connection=redis_client, serializer=JSONSerializer)
    fingerprint = load_manifest(data_dir)["fingerprint"]
    jobs = [
        queue.enqueue(contract.JOB_FUNC, _spec(i, seed=int(i == "2"), fingerprint=fingerprint))
        for i in ("1", "2")
    ]
    events = serve_burst(tmp_path, data_dir, redis_server.url, timeout=240)
    results = [job.latest_result().return_value for job in jobs]
    assert [r["status"] for r in results] == ["ok", "ok"], results
    logs = [(runs / i / "output.log").read_text() for i in ("1", "2")]
    assert EARLY_LINE not in logs[0] and EARLY_LINE in logs[1]
    assert "PROCESS " in logs[1] and logs[1].split("PROCESS ")[1].split()[2] == "1"
    # The worker discarded its waiting process and emptied its slots as it stopped.
    assert processes_under(runs) == []
    assert [p.name for p in (runs / ".slots").iterdir()] == ["w"]  # the dead one's removed
    assert not any((runs / ".slots" / "w").iterdir())
    assert [e["id"] for e in events if e["event"] == "experiment.end"] == ["1", "2"]


def test_a_stopping_worker_discards_its_waiting_process_before_it_talks_to_redis(
    redis_client, data_dir, tmp_path
):
    """RQ's teardown talks to Redis, which may be gone by then (a joining host's workers
    outlive the run's Redis) and may hang until the engine kills the worker: the waiting
    train process is discarded first, so a teardown that fails leaves nothing behind."""
    import socket

    import redis

    from worker import jobs, serving
    from worker.settings import WorkerSettings

    with socket.socket() as s:  # a port nothing listens on: a Redis that is gone
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = serving.Worker([keys.QUEUE_NAME], connection=redis_client, serializer=JSONSerializer)
    worker.connection = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
    with jobs.HELD.hold():
        runner = jobs.HELD.get(WorkerSettings(data_dir, tmp_path / "runs"), "w", "t")
        assert isinstance(runner, ProcessRunner) and runner.slots is not None
        first, _ = _run(runner, tmp_path, "1", seed=0)
        assert first["status"] == "ok", first["log_tail"]
        spare = runner.slots.spare
        assert spare is not None and spare.handle.poll() is None
        with pytest.raises(redis.ConnectionError):
            worker.teardown()
        assert spare.handle.poll() is not None and jobs.HELD.runner is None
        assert processes_under(tmp_path / "runs") == [] and not spare.slot.exists()
