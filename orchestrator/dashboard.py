"""`autoresearch dashboard`: a read-only web page on one run, from the standard library.

The page is what `status`, `logs -f` and `report` show, in one place and live: the progress
chart, the kept changes and the last rows, the workers with their current experiment, and
the run's interleaved log. Every number comes from orchestrator.view (and the chart from
orchestrator.report), so the page never disagrees with the terminal commands.

Why the standard library (http.server) and one inline HTML document: the dashboard runs
where the run runs (a GPU host, a container, a laptop), often without internet, and it must
add no dependency. Endpoints, GET and HEAD only (nothing here changes anything):

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
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orchestrator import defaults, logs, report, view
from worker import contract

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
        key = contract.run_log_key(self.tag)
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


# ----- the page -----
CSS = """
:root { --bg: #f5f6f8; --panel: #fff; --line: #d8dde3; --text: #1f2328; --muted: #656d76;
  --green: #1a7f37; --red: #cf222e; --blue: #0969da; --amber: #9a6700; --purple: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; padding: 14px 18px 24px; background: var(--bg); color: var(--text);
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; margin-bottom: 10px; }
h1 { font-size: 20px; margin: 0; font-weight: 600; }
h1 #tag { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
h2 { font-size: 12px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); font-weight: 600; }
.muted { color: var(--muted); }
.pill { padding: 2px 10px; border-radius: 999px; font-weight: 600; font-size: 12px; }
.pill.on { background: #dafbe1; color: var(--green); }
.pill.off { background: #eaeef2; color: var(--muted); }
.error { color: var(--red); font-weight: 600; }
.stats { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 10px; }
.card, .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; }
.card { padding: 8px 12px; min-width: 0; }
.card .label { color: var(--muted); font-size: 11px; text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card .sub { color: var(--muted); font-size: 12px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin: 10px 0; min-height: 22px; }
.chip { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  background: #eaeef2; color: var(--text); white-space: nowrap; }
.s-keep { background: #dafbe1; color: var(--green); }
.s-discard { background: #eaeef2; color: var(--muted); }
.s-crash, .s-oom, .s-nan, .s-timeout, .s-overtime, .s-infra_error { background: #ffebe9;
  color: var(--red); }
.s-noise, .s-confirm { background: #ddf4ff; color: var(--blue); }
.s-rejected { background: #fbefff; color: var(--purple); }
.s-reapplied, .s-stale { background: #fff8c5; color: var(--amber); }
.grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 12px;
  margin-bottom: 12px; }
.grid.bottom { grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); }
.panel { padding: 10px 12px; min-width: 0; overflow: hidden; }
#side { display: flex; flex-direction: column; gap: 12px; min-width: 0; }
#workers th:nth-child(1) { width: 25%; } #workers th:nth-child(3) { width: 11%; }
#workers th:nth-child(4) { width: 9%; } #workers th:nth-child(5) { width: 13%; }
#workers th:nth-child(6) { width: 11%; }
#leaderboard th:nth-child(1) { width: 13%; } #leaderboard th:nth-child(2),
#leaderboard th:nth-child(3) { width: 20%; }
#last th:nth-child(1) { width: 9%; } #last th:nth-child(2) { width: 17%; }
#last th:nth-child(3) { width: 16%; } #last th:nth-child(5) { width: 24%; }
#chart { display: block; width: 100%; height: auto; }
#chart[hidden] { display: none; }
#chart-empty { padding: 40px 0; text-align: center; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eef0f3;
  vertical-align: top; overflow: hidden; text-overflow: ellipsis; }
th { color: var(--muted); font-weight: 600; font-size: 11px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: nowrap; }
.desc { overflow-wrap: anywhere; display: -webkit-box; -webkit-line-clamp: 2;
  -webkit-box-orient: vertical; overflow: hidden; }
.small { font-size: 11px; color: var(--muted); }
tr.empty td { color: var(--muted); font-style: italic; }
.bar { height: 4px; background: #eaeef2; border-radius: 2px; margin-top: 3px; }
.bar > div { height: 4px; background: var(--blue); border-radius: 2px; }
#log-panel { display: flex; flex-direction: column; }
#log { flex: 1 1 0; min-height: 420px; overflow-y: auto; background: #0d1117; color: #c9d1d9;
  border-radius: 6px; padding: 6px 8px;
  font: 12px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
#log .line { white-space: pre-wrap; overflow-wrap: anywhere; }
#log .t { color: #8b949e; margin-right: 8px; }
#log .id { color: #79c0ff; margin-right: 8px; }
#log .ph { color: #d2a8ff; margin-right: 8px; }
#log .k-metrics .tx { color: #9ea7b3; }
#log .k-event .tx { color: #e3b341; }
#log .decided .tx { color: #f0f6fc; font-weight: 600; }
#log .decided[data-status="keep"] .tx { color: #3fb950; }
#log .decided[data-status="crash"] .tx, #log .decided[data-status="oom"] .tx,
#log .decided[data-status="nan"] .tx, #log .decided[data-status="timeout"] .tx,
#log .decided[data-status="overtime"] .tx, #log .decided[data-status="infra_error"] .tx {
  color: #ff7b72; }
@media (max-width: 1100px) {
  .stats { grid-template-columns: repeat(3, minmax(0, 1fr)); }
  .grid, .grid.bottom { grid-template-columns: minmax(0, 1fr); }
}
"""

SCRIPT = """
"use strict";
const STATE_EVERY_MS = 2000, LOG_EVERY_MS = 1000, LOG_KEEP = 200;
const $ = (id) => document.getElementById(id);
const errors = { state: "", log: "" };
let refreshes = 0, chartRows = -1, logAfter = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function safe(word) { return String(word).replace(/[^a-z_]/gi, ""); }
function num(v, digits) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "\\u2013";
}
function setText(id, text) { $(id).textContent = text; }
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
}
function chip(status) { return el("span", status, "chip s-" + safe(status)); }
function desc(text) {
  const d = el("div", text, "desc");
  d.title = String(text || "");
  return d;
}
function cell(tr, content, cls) {
  const td = el("td", null, cls);
  if (content instanceof Node) td.append(content);
  else td.textContent = content === undefined || content === null ? "" : String(content);
  tr.append(td);
  return td;
}
function fill(tableId, items, build, empty) {
  const table = $(tableId);
  const rows = items.map(build);
  if (!rows.length) {
    const tr = el("tr", null, "empty");
    cell(tr, empty).colSpan = table.tHead.rows[0].cells.length;
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
}
function showErrors() {
  const text = [errors.state, errors.log].filter(Boolean).join("; ");
  $("error").hidden = !text;
  $("error").textContent = text;
}

function renderHeader(s) {
  setText("tag", s.tag);
  document.title = "autoresearch " + s.tag;
  const pill = $("run-status");
  pill.textContent = s.running ? "running" : (s.stop_reason || "not running");
  pill.className = "pill " + (s.running ? "on" : "off");
  document.body.dataset.running = s.running ? "1" : "0";
  setText("updated", "updated " + clock(s.now));
  setText("experiments", String(s.experiments));
  setText("per-hour", num(s.per_hour, 1) + " / hour over " + num(s.hours, 2) + " h");
  setText("best", s.best ? num(s.best.val_bpb, 6) : "\\u2013");
  setText("best-note", s.best ? s.best.id + "  " + s.best.description : "no baseline yet");
  const base = s.baseline;
  const pct = s.gain !== null && base && base.val_bpb ? 100 * s.gain / base.val_bpb : null;
  setText("gain", num(s.gain, 6));
  setText("baseline", base ? "baseline " + num(base.val_bpb, 6) + " (" + num(pct, 2) + " %)" : "");
  const nz = s.noise;
  setText("noise", num(nz.sigma, 4) + " / " + num(nz.margin, 4));
  setText("noise-note", "\u03c3 from " + nz.dof + " dof");
  const llm = s.llm;
  setText("llm-cost", "$" + num(llm.cost_usd, 4));
  const tokens = (llm.prompt_tokens + llm.completion_tokens).toLocaleString("en-US");
  setText("llm-tokens", tokens + " tokens" + (llm.model ? " \\u00b7 " + llm.model : ""));
  setText("queued", String(s.queue.queued));
  setText("waiting", s.queue.waiting.length ? s.queue.waiting.join(" ") : "nothing waiting");
  const counts = Object.entries(s.counts).sort((a, b) => b[1] - a[1]);
  $("counts").replaceChildren(...counts.map(([k, v]) => chip(k + " " + v)),
    ...Object.entries(s.cages || {}).map(([k, v]) => chip("cage " + k + " " + v)));
}

function renderChart(s) {
  if (s.rows === chartRows) return;
  chartRows = s.rows;
  if (s.rows > 0) $("chart").src = "/progress.png?rows=" + s.rows;
}

function workerRow(w, tag) {
  const tr = el("tr");
  tr.dataset.worker = w.name;
  tr.dataset.exp = w.exp_id || "";
  const who = el("div");
  who.append(el("div", w.name, "id"));
  who.append(el("div", [w.host, w.gpu, w.state].filter(Boolean).join(" \\u00b7 "), "small"));
  cell(tr, who);
  if (!w.exp_id) {
    cell(tr, "idle", "small").colSpan = 5;
    return tr;
  }
  const what = el("div");
  const other = w.tag && w.tag !== tag ? w.tag + "/" : "";
  what.append(el("span", other + w.exp_id, "id exp"));
  what.append(desc(w.description));
  cell(tr, what);
  cell(tr, w.phase || "", "phase");
  cell(tr, w.step === undefined ? "" : w.step, "num step");
  cell(tr, typeof w.loss === "number" ? w.loss.toFixed(4) : (w.loss ?? ""), "num loss");
  const left = cell(tr, w.remaining_s === undefined ? "" : Math.round(w.remaining_s) + " s",
    "num left");
  if (typeof w.progress === "number") {
    const bar = el("div", null, "bar"), fillBar = el("div");
    fillBar.style.width = Math.max(0, Math.min(100, 100 * w.progress)) + "%";
    bar.append(fillBar);
    left.append(bar);
  }
  return tr;
}

function keptRow(r, i, base) {
  const tr = el("tr");
  tr.dataset.id = r.id;
  cell(tr, r.id, "id");
  const v = typeof r.mean === "number" ? r.mean : r.val_bpb;  // the mean over its runs
  cell(tr, num(v, 6), "num");
  const delta = base && typeof v === "number" ? v - base : null;
  cell(tr, i === 0 ? "baseline" : num(delta, 6), "num");
  cell(tr, desc(r.description));
  return tr;
}

function lastRow(r) {
  const tr = el("tr");
  tr.dataset.id = r.id;
  cell(tr, r.id, "id");
  cell(tr, chip(r.status));
  cell(tr, r.val_bpb, "num");
  cell(tr, desc(r.description));
  cell(tr, desc(r.error), "small");
  return tr;
}

function render(s) {
  renderHeader(s);
  renderChart(s);
  setText("worker-count", String(s.workers.length));
  fill("workers", s.workers, (w) => workerRow(w, s.tag), "no worker connected");
  const base = s.baseline ? s.baseline.val_bpb : null;
  const kept = s.kept.map((r, i) => keptRow(r, i, base)).reverse();
  fill("leaderboard", kept, (tr) => tr, "no baseline yet");
  fill("last", s.last.slice().reverse(), lastRow, "no results yet");
}

function logLine(e) {
  const line = el("div", null, "line k-" + safe(e.kind));
  line.dataset.id = e.id;
  line.dataset.kind = e.kind;
  if (e.event === "decided") {
    line.classList.add("decided");
    line.dataset.status = e.status || "";
  }
  line.append(el("span", clock(e.t), "t"), el("span", e.id || "run", "id"));
  if (e.phase) line.append(el("span", e.phase, "ph"));
  line.append(el("span", e.text, "tx"));
  return line;
}

function appendLog(entries) {
  if (!entries.length) return;
  const box = $("log");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(...entries.map(logLine));
  while (box.childElementCount > LOG_KEEP) box.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    let why = "HTTP " + r.status;
    try { why += ": " + (await r.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(why);
  }
  return r.json();
}

async function pollState() {
  try {
    render(await getJSON("/api/state"));
    refreshes += 1;
    document.body.dataset.updated = String(refreshes);
    errors.state = "";
  } catch (err) {
    errors.state = "state: " + err.message;
  }
  showErrors();
  setTimeout(pollState, STATE_EVERY_MS);
}

async function pollLog() {
  let wait = LOG_EVERY_MS;
  try {
    const query = logAfter === null ? "" : "?after=" + encodeURIComponent(logAfter);
    const data = await getJSON("/api/log" + query);
    appendLog(data.entries);
    logAfter = data.last;
    if (data.more) wait = 0;
    errors.log = "";
  } catch (err) {
    errors.log = "log: " + err.message;
  }
  showErrors();
  setTimeout(pollLog, wait);
}

const chart = $("chart");
chart.onload = () => {
  chart.hidden = false;
  $("chart-empty").hidden = true;
  chart.dataset.chartLoaded = "1";
};
chart.onerror = () => {
  if (chart.dataset.chartLoaded !== "1") setText("chart-empty", "chart unavailable");
};
pollState();
pollLog();
"""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>autoresearch dashboard</title>
<style>@CSS@</style>
</head>
<body data-updated="0">
<header>
  <h1>autoresearch <span id="tag"></span></h1>
  <span id="run-status" class="pill off">connecting</span>
  <span id="updated" class="muted"></span>
  <span id="error" class="error" hidden></span>
</header>
<section class="stats">
  <div class="card"><div class="label">experiments</div><div class="value" id="experiments">
    &ndash;</div><div class="sub" id="per-hour"></div></div>
  <div class="card"><div class="label">best val_bpb (mean)</div><div class="value" id="best">&ndash;
    </div><div class="sub" id="best-note"></div></div>
  <div class="card"><div class="label">gain over baseline</div><div class="value" id="gain">
    &ndash;</div><div class="sub" id="baseline"></div></div>
  <div class="card"><div class="label">noise &sigma; / keep margin</div><div class="value"
    id="noise">&ndash;</div><div class="sub" id="noise-note"></div></div>
  <div class="card"><div class="label">LLM spend</div><div class="value" id="llm-cost">
    &ndash;</div><div class="sub" id="llm-tokens"></div></div>
  <div class="card"><div class="label">queue</div><div class="value" id="queued">&ndash;</div>
    <div class="sub" id="waiting"></div></div>
</section>
<div id="counts" class="chips"></div>
<div class="grid">
  <section class="panel" id="chart-panel"><h2>progress</h2>
    <img id="chart" alt="progress chart" hidden>
    <div id="chart-empty" class="muted">no results yet</div></section>
  <div id="side">
    <section class="panel"><h2>workers <span id="worker-count" class="muted"></span></h2>
      <table id="workers"><thead><tr><th>worker</th><th>experiment</th><th>phase</th>
        <th class="num">step</th><th class="num">loss</th><th class="num">left</th></tr>
        </thead><tbody></tbody></table></section>
    <section class="panel"><h2>kept changes (best first)</h2>
      <table id="leaderboard"><thead><tr><th>id</th><th class="num">val_bpb</th>
        <th class="num">vs baseline</th><th>description</th></tr></thead>
        <tbody></tbody></table></section>
  </div>
</div>
<div class="grid bottom">
  <section class="panel" id="last-panel"><h2>last rows</h2>
    <table id="last"><thead><tr><th>id</th><th>status</th><th class="num">val_bpb</th>
      <th>description</th><th>error</th></tr></thead><tbody></tbody></table></section>
  <section class="panel" id="log-panel"><h2>log</h2><div id="log"></div></section>
</div>
<script>@SCRIPT@</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = HTML.replace("@CSS@", CSS).replace("@SCRIPT@", SCRIPT).encode()
# Only the page's own script and style run; no inline handler, no other origin.
CSP = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(CSS)}; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
