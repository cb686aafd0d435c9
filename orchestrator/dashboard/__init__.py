"""`autoresearch dashboard`: a read-only web page on one run, from the standard library.

The page is what `status`, `logs -f` and `report` show, in one place and live: the progress
chart, the kept changes and the last rows, the workers with their current experiment, and
the run's interleaved log. Every number comes from orchestrator.view (and the chart from
orchestrator.report), so the page never disagrees with the terminal commands.

Why the standard library (http.server) and one self-contained HTML document: the dashboard
runs where the run runs (a GPU host, a container, a laptop), often without internet, and it
must add no dependency. The page's parts are package data (static/index.html, dashboard.css,
dashboard.js), read once at import and served as one document. Endpoints, GET and HEAD only
(nothing here changes anything):

- `/`                  the page (CSS and JS inline; it polls the two APIs below)
- `/api/state`         orchestrator.view.snapshot as JSON
- `/api/log?after=ID`  the run's log stream after a stream id, at most LOG_LIMIT entries
                       (without `after`: the last LOG_LIMIT); the run folder's logs when
                       there is no Redis
- `/progress.png`      the progress chart, rendered again only when a row was added

The page treats every text it shows (descriptions come from the LLM, log lines from the
candidate) as hostile: it inserts them with textContent only, and the Content-Security-Policy
allows no script but the page's own, so even a slip could not run an injected handler.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orchestrator import defaults, logs, report, view
from worker import keys

# Entries in one /api/log answer; the page keeps as many lines.
LOG_LIMIT = 200
# A log line's text is cut here: a candidate may print anything, of any length.
TEXT_CHARS = 500
# The report's figure is 16 x 8 in for a file; on a page half a screen wide its text would
# be unreadable, so it is drawn at 10 x 5 in (the same fonts, in points) and 1000 x 500 px.
CHART_INCHES = (10.0, 5.0)
CHART_DPI = 100
# Without Redis the log is read from every experiment's log.jsonl: at most this often.
FOLDER_LOG_TTL_S = 5.0
STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}\Z")
# Entry keys that the line's own columns show (or that say nothing), not repeated as k=v.
_SHOWN = {*view.RESERVED, "source"}
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"

log = logs.get("autoresearch.dashboard")


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


# ----- data -----
def finite(value: Any) -> Any:
    """value with every NaN or infinity replaced by None: a candidate may log loss=nan,
    and the browser's JSON.parse refuses the NaN Python would write."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def log_line(item: dict[str, Any]) -> dict[str, Any]:
    """One view.entry as the page shows it: the output line itself, or the event and its
    fields as k=v (metrics without the word: their kind says it)."""
    if item.get("kind") == "line":
        text = str(item.get("event", ""))
    else:
        pairs = [
            f"{k}={_text(v)}" for k, v in item.items() if k not in _SHOWN and v not in ("", None)
        ]
        head = [] if item.get("event") == "metrics" else [str(item.get("event", ""))]
        text = " ".join(head + pairs)
    out = {
        "stream_id": item.get("stream_id", ""),
        "t": item.get("t", 0.0),
        "id": str(item.get("id", "")),
        "phase": str(item.get("phase", "")),
        "kind": str(item.get("kind", "")),
        "event": str(item.get("event", ""))[:100] if item.get("kind") != "line" else "",
        "text": text[:TEXT_CHARS],
    }
    if "status" in item:
        out["status"] = str(item["status"])
    return out


def render_chart(rows: list[dict[str, str]], title: str) -> bytes:
    """The report's chart as PNG bytes (matplotlib is imported by report, on first use)."""
    figure = report.progress_figure(rows, title)
    figure.set_size_inches(*CHART_INCHES)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=CHART_DPI)
    return buf.getvalue()


class ChartCache:
    """The chart for the current number of rows. Rendering takes about a second; the page
    asks again only when the count changed, but several pages may ask at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = -1
        self._png = b""
        self.renders = 0  # how many times it drew (the tests check that it caches)

    def png(self, rows: list[dict[str, str]], title: str) -> bytes:
        with self._lock:
            if self._rows != len(rows):
                self._png = render_chart(rows, title)
                self._rows = len(rows)
                self.renders += 1
            return self._png


@dataclass
class Dashboard:
    """What the endpoints answer, without HTTP: one run, from Redis or its folder."""

    redis: Any | None
    runs_dir: Path
    tag: str
    chart: ChartCache = field(default_factory=ChartCache)
    # (when read, entries) of the run folder's logs, when there is no Redis
    _folder: tuple[float, list[dict[str, Any]]] | None = field(default=None, init=False)

    def state(self) -> dict[str, Any]:
        return finite(view.snapshot(self.redis, self.tag, self.runs_dir))

    def log(self, after: str | None, limit: int = LOG_LIMIT) -> dict[str, Any]:
        """Entries after the stream id `after` (oldest first, at most limit; `more` says
        that others follow), or the last `limit` when after is None."""
        if self.redis is None:
            return self._folder_log(after, limit)
        key = keys.run_log_key(self.tag)
        if after is None:
            items = view.tail_stream(self.redis, key, limit)
        else:
            items = view.read_stream(self.redis, key, after, count=limit)
        entries = [log_line(view.entry(fields, stream_id=i)) for i, fields in items]
        last = items[-1][0] if items else (after or "0-0")
        return finite({"entries": entries, "last": last, "more": len(items) == limit})

    def _folder_log(self, after: str | None, limit: int) -> dict[str, Any]:
        """The run folder's logs, merged by time; ids are positions ("N-0"), so the page
        pages through them as through a stream."""
        now = time.monotonic()
        if self._folder is None or now - self._folder[0] > FOLDER_LOG_TTL_S:
            self._folder = (now, view.folder_log(self.runs_dir, self.tag, None))
        items = self._folder[1]
        start = max(len(items) - limit, 0) if after is None else int(after.split("-")[0])
        chunk = items[start : start + limit]
        entries = [
            log_line({**item, "stream_id": f"{start + k + 1}-0"}) for k, item in enumerate(chunk)
        ]
        last = entries[-1]["stream_id"] if entries else (after or "0-0")
        return finite({"entries": entries, "last": last, "more": len(chunk) == limit})

    def chart_png(self) -> bytes | None:
        rows = view.rows(self.redis, self.tag, self.runs_dir)
        return self.chart.png(rows, f"autoresearch {self.tag}") if rows else None


# ----- routes: (dashboard, query) -> Reply -----
def _json(value: Any, status: int = 200) -> Reply:
    body = json.dumps(value, default=str, allow_nan=False).encode()
    return Reply(status, JSON_TYPE, body)


def page_route(_d: Dashboard, _q: dict[str, list[str]]) -> Reply:
    return Reply(200, "text/html; charset=utf-8", PAGE)


def state_route(d: Dashboard, _q: dict[str, list[str]]) -> Reply:
    return _json(d.state())


def log_route(d: Dashboard, q: dict[str, list[str]]) -> Reply:
    after = q.get("after", [None])[0]
    if after is not None and not STREAM_ID.match(after):
        return _json({"error": "after: a stream id (digits-digits)"}, 400)
    return _json(d.log(after))


def chart_route(d: Dashboard, _q: dict[str, list[str]]) -> Reply:
    png = d.chart_png()
    if png is None:
        return Reply(404, TEXT_TYPE, b"no results yet\n")
    return Reply(200, "image/png", png)


ROUTES = {
    "/": page_route,
    "/api/state": state_route,
    "/api/log": log_route,
    "/progress.png": chart_route,
}


# ----- HTTP -----
class Handler(BaseHTTPRequestHandler):
    """GET and HEAD on ROUTES; every other method is refused, every other path is 404."""

    server: DashboardServer
    server_version = "autoresearch-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _refuse(self) -> None:
        self._send(Reply(405, TEXT_TYPE, b"read-only: GET and HEAD only\n"), True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        route = ROUTES.get(url.path)
        if route is None:
            self._send(Reply(404, TEXT_TYPE, b"not found\n"), send_body)
            return
        try:
            reply = route(self.server.dashboard, parse_qs(url.query))
        except Exception as exc:  # Redis gone, matplotlib missing: say so, the page retries
            log.warning("dashboard.error", path=url.path, error=repr(exc))
            reply = _json({"error": f"{type(exc).__name__}: {exc}"}, 503)
        self._send(reply, send_body)

    def _send(self, reply: Reply, send_body: bool) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", CSP)
            if reply.status == 405:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if send_body:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (a reload, a closed tab): nothing to answer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: every open page asks about three times in two seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard.http", client=self.client_address[0], message=format % args)


class DashboardServer(ThreadingHTTPServer):
    """One thread per request (a slow chart render does not stall the log), daemon threads
    so that Ctrl-C never waits for a browser's open connection."""

    daemon_threads = True

    def __init__(self, dashboard: Dashboard, host: str, port: int):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.dashboard = dashboard
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return  # a client that disconnected mid-request
        log.warning("dashboard.error", client=client_address[0], error=repr(exc))


def make_server(
    redis: Any | None, runs_dir: Path, tag: str, host: str = "127.0.0.1", port: int = 0
) -> DashboardServer:
    """A bound server (port 0: any free one, see .url), not yet serving."""
    return DashboardServer(Dashboard(redis, runs_dir, tag), host, port)


def serve(
    redis: Any | None,
    runs_dir: Path,
    tag: str,
    host: str = "127.0.0.1",
    port: int = defaults.DASHBOARD_PORT,
) -> int:
    """Serve until Ctrl-C; 0, or 1 when the address cannot be bound."""
    try:
        server = make_server(redis, runs_dir, tag, host, port)
    except OSError as exc:
        print(
            f"autoresearch: error: dashboard: cannot listen on {host}:{port}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"dashboard: {server.url} (run {tag})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# ----- the page: static/index.html with static/dashboard.css and .js inlined -----
def _static(name: str) -> str:
    return resources.files(__name__).joinpath("static", name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def build_page(html: str, css: str, script: str) -> tuple[bytes, str]:
    """The page with the style and the script inlined (at @CSS@ and @SCRIPT@, each once),
    and the Content-Security-Policy that lets exactly those two run: their hashes are of
    the very text that stands between the tags."""
    for mark in ("@CSS@", "@SCRIPT@"):
        if html.count(mark) != 1:
            raise ValueError(f"dashboard page: {mark} must appear once in index.html")
    parts = {"@CSS@": css, "@SCRIPT@": script}
    page = re.sub("@CSS@|@SCRIPT@", lambda m: parts[m.group()], html).encode()
    # Only the page's own script and style run; no inline handler, no other origin.
    csp = (
        f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(css)}; "
        "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp


HTML, CSS, SCRIPT = _static("index.html"), _static("dashboard.css"), _static("dashboard.js")
PAGE, CSP = build_page(HTML, CSS, SCRIPT)
