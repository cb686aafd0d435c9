"""Workers started by `autoresearch run` itself, for the embedded default (private Redis).

Each is a real `autoresearch worker` process in its own session, so the terminal's Ctrl-C
reaches only the orchestrator, which then stops the running job and the workers in order.
If the orchestrator dies without that (SIGKILL), the kernel kills them (worker/lifeline.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from worker import lifeline
from worker.settings import WorkerSettings


class LocalWorkers:
    def __init__(
        self,
        count: int,
        redis_url: str,
        settings: WorkerSettings,
        log_dir: Path,
        gpus: list[int | None] | None = None,
    ):
        self.count = count
        self.redis_url = redis_url
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.gpus = gpus or [settings.gpu] * count
        self.procs: list[subprocess.Popen] = []

    def start(self) -> LocalWorkers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            argv = [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "worker",
                "--redis-url",
                self.redis_url,
                "--name",
                f"local-{os.getpid()}-{uuid.uuid4().hex[:6]}-{i}",
            ]
            gpu = self.gpus[i % len(self.gpus)]
            if gpu is not None:
                argv += ["--gpu", str(gpu)]
            env = {**os.environ, **self.settings.to_env()}
            env.pop("REDIS_URL", None)
            with open(self.log_dir / f"worker-{i}.log", "ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=lifeline.preexec(),  # and its phases
                    )
                )
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (RQ's warm shutdown), then SIGKILL to the group of any that linger."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def forget_dead(connection: Any) -> list[str]:
    """Unregister every worker of a private Redis that outlived its run (kept on disk in
    the run folder): they were all this host's local workers, and they died with the run
    (stopped, or killed with it); left registered, their jobs would wait for them."""
    from rq import Worker

    dead = Worker.all(connection=connection)
    for worker in dead:
        worker.register_death()
    return [w.name for w in dead]
