"""Claim one GPU of this host through Redis, so N identical worker replicas use N GPUs.

Each GPU is a redis-py Lock (`autoresearch:gpu:<host>:<index>`) whose token names the
worker. A heartbeat thread extends it; release on exit frees it; a worker that dies stops
beating and its lock expires, so a restarted replica takes the GPU over.
"""

from __future__ import annotations

import threading
from typing import Any

import redis as redis_lib
from redis.exceptions import LockError

from worker import keys


class NoFreeGpu(RuntimeError):
    """Every GPU of this host is claimed by a live worker."""


class GpuClaim:
    def __init__(
        self,
        redis: redis_lib.Redis,
        host: str,
        count: int,
        owner: str,
        ttl_s: float = keys.GPU_CLAIM_TTL_S,
        heartbeat_s: float = keys.GPU_HEARTBEAT_S,
        log: Any = None,
    ):
        if count < 1:
            raise ValueError("a host needs at least one GPU to claim")
        self.redis, self.host, self.count, self.owner = redis, host, count, owner
        self.ttl_s, self.heartbeat_s = ttl_s, heartbeat_s
        self.gpu: int | None = None
        self.beats = 0
        self.lost = False
        self._lock: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = log

    def acquire(self) -> GpuClaim:
        for index in range(self.count):
            lock = self.redis.lock(
                keys.gpu_key(self.host, index), timeout=self.ttl_s, thread_local=False
            )
            if lock.acquire(blocking=False, token=self.owner):
                self._lock, self.gpu = lock, index
                self._thread = threading.Thread(target=self._beat, name="gpu-claim", daemon=True)
                self._thread.start()
                return self
        raise NoFreeGpu(f"all {self.count} GPUs of host {self.host!r} are claimed by live workers")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._lock.reacquire()
                self.beats += 1
            except LockError:
                # Expired (the host stalled past the TTL) and maybe taken over: say so loudly.
                self.lost = True
                if self._log is not None:
                    self._log.error("gpu.claim_lost", gpu=self.gpu, host=self.host)
                return
            except redis_lib.RedisError as exc:
                if self._log is not None:
                    self._log.warning("gpu.heartbeat_failed", error=str(exc))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lock is not None and not self.lost:
            try:
                self._lock.release()
            except LockError:
                pass
        self._lock = None

    def __enter__(self) -> GpuClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
