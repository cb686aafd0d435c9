"""A scripted OpenAI-compatible chat server for tests.

Tests drive the real `openai` client over real HTTP, so retries, headers, error mapping
and JSON parsing are exercised as in production; only the model is replaced, by a list
of replies played back in order. Every request body is recorded so a test can check
what was sent (for instance that a rejection reason went back to the model).

    with ScriptedLLMServer(["DESCRIPTION: ...", HTTPErrorReply(500)]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "HTTPErrorReply",
    "RawReply",
    "Reply",
    "ScriptedLLMServer",
    "SlowReply",
    "TruncatedReply",
]


@dataclass
class Reply:
    """A normal chat completion; ``content=None`` sends a null message content."""

    content: str | None
    prompt_tokens: int = 100
    completion_tokens: int = 50


@dataclass
class HTTPErrorReply:
    """An HTTP error with an OpenAI-style JSON error body.

    ``retry-after-ms`` defaults to 1 so the client's retries do not back off for seconds.
    """

    status: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=lambda: {"retry-after-ms": "1"})


@dataclass
class RawReply:
    """An arbitrary JSON body with status 200, for servers that are only "compatible"."""

    body: Any


@dataclass
class TruncatedReply:
    """A 200 whose JSON body is cut off halfway (a proxy or server that died mid-reply)."""

    content: str = "DESCRIPTION: x"


@dataclass
class SlowReply:
    """Another item, sent after a delay: an LLM slower than the client's timeout."""

    seconds: float
    item: Any = "DESCRIPTION: slow"


ScriptItem = str | Reply | HTTPErrorReply | RawReply | TruncatedReply | SlowReply


class ScriptedLLMServer:
    """Serves POST .../chat/completions from a script on 127.0.0.1, on a free port."""

    def __init__(self, script: Iterable[ScriptItem] = ()) -> None:
        self._script: deque[ScriptItem] = deque(script)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval only makes shutdown() prompt; it synchronises nothing.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def remaining(self) -> int:
        """Script items not yet served; 0 means the test consumed exactly what it planned."""
        with self._lock:
            return len(self._script)

    def add(self, *items: ScriptItem) -> None:
        with self._lock:
            self._script.extend(items)

    def __enter__(self) -> ScriptedLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _next(self, body: dict[str, Any]) -> ScriptItem:
        with self._lock:
            self.requests.append(body)
            if self._script:
                return self._script.popleft()
        # Not retryable, so an under-scripted test fails at once instead of hanging.
        return HTTPErrorReply(500, "script exhausted", headers={"x-should-retry": "false"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                item = server._next(body)
                if isinstance(item, SlowReply):
                    time.sleep(item.seconds)  # the simulated model's latency
                    item = item.item
                if isinstance(item, TruncatedReply):
                    data = json.dumps(_completion(Reply(item.content), "m")).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data) // 2))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                elif isinstance(item, HTTPErrorReply):
                    error = {"message": item.message, "type": "scripted", "code": item.status}
                    self._send(item.status, {"error": error}, item.headers)
                elif isinstance(item, RawReply):
                    self._send(200, item.body)
                else:
                    reply = Reply(item) if isinstance(item, str) else item
                    self._send(200, _completion(reply, body.get("model", "scripted")))

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }
