"""`autoresearch dashboard`: the page in a real headless Chromium against a live run (real
Redis, real simulated RQ workers, real git), and the endpoints one by one.

Needs Debian's `chromium` package (.ci/run installs it); without it the tests fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from orchestrator import dashboard, defaults, view
from orchestrator.research import Limits, Policy
from orchestrator.results import COLUMNS, ResultsFile, counts
from tests import test_scheduling
from tests.conftest import clean_env, git
from tests.test_loop import _wait_for
from tests.test_scheduling import SIM_TRAIN, ScriptedEdits, lr_edits
from worker import keys

# The simulated-worker fixtures, shared with the scheduling tests.
sim_repo, pool, make = test_scheduling.sim_repo, test_scheduling.pool, test_scheduling.make

HOSTILE = "<img src=x onerror=alert(1)>"
# Every experiment holds its worker 1.5 s; one holds it 12 s and scores far worse (so it
# is never kept and later sources stay short): the page is loaded while it runs.
SOURCE = SIM_TRAIN.replace("SIM_VAL_BPB = 1.0\n", "SIM_VAL_BPB = 1.0\nSIM_HOLD_S = 1.5\n")
LONG = ("SIM_VAL_BPB = 1.0\nSIM_HOLD_S = 1.5", "SIM_VAL_BPB = 1.1\nSIM_HOLD_S = 12")
EDITS = [
    LONG,
    ("LR = 0.03", f"LR = 0.03  # {HOSTILE}"),
    ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.1"),
    *lr_edits(3),
]
# A blank 1400 x 1000 page's screenshot is about 6 KB of PNG; the dashboard's, with its
# chart and tables, is well over 100 KB.
BLANK_PNG_BYTES = 10_000
# The simulated workers' hardware signature (AUTORESEARCH_SIM_HARDWARE), shown as text.
SIM_HARDWARE = "sim H200 <b>x</b> | torch 0"


# ----- a headless browser -----
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("chromium is not on PATH (Debian: apt-get install chromium)")


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after 6 s of the page's own (virtual) time: its timers and fetches
    run as in a browser, the clock jumps ahead while nothing is loading."""
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=6000",
        "--window-size=1400,1000",
    ]
    if screenshot is not None:
        argv.append(f"--screenshot={screenshot}")
    proc = subprocess.run(
        [*argv, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


class Node:
    """An element of the dumped DOM: tag, attributes, children, text."""

    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """Elements by tag and attribute values (data_worker= stands for data-worker=)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in want.items())
        ]

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


VOID = {"meta", "img", "br", "input", "link", "hr", "col"}


class DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    parser = DomParser()
    parser.feed(html)
    return parser.root


# ----- HTTP -----
def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def no_nan(text: str) -> Any:
    """JSON as a browser parses it: NaN and Infinity are errors."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def get_json(url: str) -> Any:
    status, _headers, body = fetch(url)
    assert status == 200, body
    return no_nan(body.decode())


@pytest.fixture
def served() -> Iterator[Callable[..., dashboard.DashboardServer]]:
    """serve(redis, runs_dir, tag) -> a dashboard serving in a thread of this process."""
    started: list[dashboard.DashboardServer] = []

    def start(redis: Any, runs_dir: Path, tag: str) -> dashboard.DashboardServer:
        server = dashboard.make_server(redis, runs_dir, tag, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def start_cli_dashboard(repo: Path, redis_url: str, runs: Path, log: Path) -> tuple[Any, str]:
    """`autoresearch dashboard` as a user starts it, on a free port; (process, its URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "dashboard", "--redis-url", redis_url]
        + ["--runs-dir", str(runs), "--tag", "s", "--port", "0"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    first = proc.stdout.readline()  # printed once bound; EOF if it died
    assert first.startswith("dashboard: http://127.0.0.1:"), (first, log.read_text())
    assert first.rstrip().endswith("(run s)")
    return proc, first.split()[1]


# ----- against a live run -----
def test_the_page_shows_a_live_run_in_a_real_browser(
    make, pool, sim_repo, redis_server, tmp_path, monkeypatch
):
    (sim_repo / "workspace" / "train.py").write_text(SOURCE)
    git(sim_repo, "commit", "-qam", "hold each worker 1.5 s")
    monkeypatch.setenv("AUTORESEARCH_SIM_HARDWARE", SIM_HARDWARE)
    pool(2)
    r = make(ScriptedEdits(list(EDITS)), Policy(noise_runs=1, confirm=False), Limits(len(EDITS)))
    runs = tmp_path / "runs"
    proc, url = start_cli_dashboard(sim_repo, redis_server.url, runs, tmp_path / "dash.log")
    shot = tmp_path / "dashboard.png"
    got: dict[str, Any] = {}

    def long_one_live() -> dict | None:
        for w in view.workers(r.redis, "s"):
            if "SIM_HOLD_S = 12" in w["description"] and "step" in w:
                return w
        return None

    def hostile_decided() -> bool:
        return any(HOSTILE in row["description"] for row in r.results.rows())

    def look() -> None:  # from another thread: run() owns the main one (signals)
        try:
            _wait_for(
                lambda: long_one_live() and hostile_decided(),
                what="the long experiment training and the hostile one decided",
            )
            got["long"] = long_one_live()
            got["workers"] = {w["name"] for w in view.workers(r.redis, "s")}
            got["dom"] = browse(url, tmp_path / "chromium", shot)
            got["still_running"] = long_one_live() is not None
        except BaseException as exc:  # reported after the run, on the main thread
            got["error"] = exc

    side = threading.Thread(target=look)
    side.start()
    try:
        r.run()
        side.join()
        if "error" in got:
            raise got["error"]
        assert got["still_running"], "the run moved on before the page was read"
        check_live_page(got)
        check_screenshot(shot)
        check_after_the_run(r, url)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: serve() returns 0
        assert proc.wait(timeout=30) == 0, (tmp_path / "dash.log").read_text()


def check_live_page(got: dict[str, Any]) -> None:
    html = got["dom"]
    dom = parse(html)
    body = dom.one("body")
    assert int(body.attrs["data-updated"]) >= 1 and body.attrs["data-running"] == "1"
    assert dom.one(id="tag").text() == "s"
    assert dom.one(id="run-status").text() == "running"
    # Both workers, one of them mid-experiment with its step and loss.
    rows = dom.one("table", id="workers").find("tr")
    assert {n.attrs["data-worker"] for n in rows if "data-worker" in n.attrs} == got["workers"]
    assert len(got["workers"]) == 2
    # Each with its hardware signature, as text.
    who = [n for n in rows if "data-worker" in n.attrs]
    assert [n.one("div", **{"class": "small hardware"}).text() for n in who] == [SIM_HARDWARE] * 2
    long_id = got["long"]["exp_id"]
    live = dom.one("tr", data_exp=long_id)
    assert int(live.one("td", **{"class": "num step"}).text()) >= 1
    assert float(live.one("td", **{"class": "num loss"}).text()) > 0
    assert long_id in live.text() and "SIM_HOLD_S = 12" in live.text()
    # Which cage held the rows (the simulate runner's: none), beside the status counts.
    assert "cage none" in dom.one(id="counts").text()
    # The leaderboard starts from the baseline.
    baseline = dom.one("table", id="leaderboard").one("tr", data_id="0000")
    assert "baseline" in baseline.text()
    # The log tail has lines of the experiments, the long one's included.
    lines = dom.one(id="log").find("div", **{"class": "line k-metrics"})
    assert long_id in {n.attrs["data-id"] for n in lines}
    assert any("step=" in n.text() and "loss=" in n.text() for n in lines)
    # The chart was loaded (its onload ran).
    chart = dom.one("img", id="chart")
    assert chart.attrs.get("data-chart-loaded") == "1" and "hidden" not in chart.attrs
    # The LLM's (here: the script's) hostile description is text, never an element.
    assert [n.attrs.get("id") for n in dom.find("img")] == ["chart"]
    assert HOSTILE in dom.one("table", id="last").text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def check_screenshot(shot: Path) -> None:
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1400, 1000)
    assert len(data) > BLANK_PNG_BYTES, len(data)


def check_after_the_run(r: Any, url: str) -> None:
    snap = get_json(url + "api/state")
    rows = r.results.rows()
    assert snap["running"] is False and snap["state"]["status"] == "stopped"
    assert snap["stop_reason"].startswith("max experiments")
    assert snap["rows"] == len(rows) >= len(EDITS) + 1  # the baseline, each edit (re-applied)
    assert snap["last"] == rows[-defaults.RESULTS_TAIL_ROWS :]
    assert snap["counts"] == counts(rows)
    assert [k["id"] for k in snap["kept"]] == [x["id"] for x in rows if x["status"] == "keep"]
    # The whole log, page by page: every decision is there, in order.
    entries, after = [], "0-0"
    while True:
        page = get_json(f"{url}api/log?after={after}")
        entries += page["entries"]
        after = page["last"]
        if not page["more"]:
            break
    decided = [e["id"] for e in entries if e["event"] == "decided"]
    assert decided and sorted(decided) == sorted(x["id"] for x in rows)
    assert [e["stream_id"] for e in entries] == sorted(
        (e["stream_id"] for e in entries), key=lambda i: tuple(map(int, i.split("-")))
    )


# ----- the endpoints -----
def _add(redis: Any, tag: str, kind: str, text: str, exp_id: str = "0001") -> str:
    fields = {"kind": kind, "phase": "train", "text": text, "t": "1700000000.5", "id": exp_id}
    return redis.xadd(keys.run_log_key(tag), fields).decode()


def test_log_answers_only_entries_after_the_given_id(redis_client, tmp_path, served):
    url = served(redis_client, tmp_path / "runs", "t").url
    ids = [
        _add(redis_client, "t", "event", json.dumps({"event": "experiment.start", "worker": "w"})),
        _add(redis_client, "t", "line", "hello"),
        _add(redis_client, "t", "metrics", '{"step": 3, "loss": 2.5, "source": "harness"}'),
        _add(redis_client, "t", "metrics", '{"step": 4, "loss": NaN}'),
        _add(redis_client, "t", "line", HOSTILE, exp_id="0002"),
    ]
    every = get_json(url + "api/log")
    assert [e["stream_id"] for e in every["entries"]] == ids
    assert [e["text"] for e in every["entries"]] == [
        "experiment.start worker=w",
        "hello",
        "step=3 loss=2.5",
        "step=4 loss=nan",  # as text: the JSON stays valid (no_nan)
        HOSTILE,
    ]
    assert every["last"] == ids[-1] and every["more"] is False
    newer = get_json(f"{url}api/log?after={ids[2]}")
    assert [e["stream_id"] for e in newer["entries"]] == ids[3:]
    assert [e["id"] for e in newer["entries"]] == ["0001", "0002"]
    assert get_json(f"{url}api/log?after={ids[-1]}") == {
        "entries": [],
        "last": ids[-1],
        "more": False,
    }
    # More than a page: capped, `more` says so, and the next page continues without a gap.
    extra = [_add(redis_client, "t", "line", f"line {i}") for i in range(dashboard.LOG_LIMIT + 7)]
    first = get_json(f"{url}api/log?after={ids[-1]}")
    assert len(first["entries"]) == dashboard.LOG_LIMIT and first["more"] is True
    second = get_json(f"{url}api/log?after={first['last']}")
    got = [e["stream_id"] for e in first["entries"] + second["entries"]]
    assert got == extra and second["more"] is False
    # Without `after`: the newest page (the tail a fresh page starts from).
    tail = get_json(url + "api/log")
    assert [e["stream_id"] for e in tail["entries"]] == extra[-dashboard.LOG_LIMIT :]
    for bad in ("x", "1-2-3", "1-0%27%3B"):
        status, _h, body = fetch(f"{url}api/log?after={bad}")
        assert status == 400, body


def test_read_only_get_and_head_only(redis_client, tmp_path, served):
    _add(redis_client, "t", "line", "hello")
    row = {c: "" for c in COLUMNS} | {"id": "0000", "commit": "abc1234", "val_bpb": "1.000000"}
    row |= {"status": "keep", "description": "baseline", "time": "2026-01-01T00:00:00+00:00"}
    redis_client.rpush(keys.results_key("t"), json.dumps(row))
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    url = served(redis_client, tmp_path / "runs", "t").url
    status, headers, page = fetch(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    # One document, nothing from elsewhere (the machine may have no internet).
    assert b"<script src" not in page and b"https://" not in page and b"http://" not in page
    assert b"innerHTML" not in page and b"insertAdjacentHTML" not in page
    csp = headers["Content-Security-Policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = fetch(url, "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page)
    for path in ("api/state", "api/log", "api/log?after=0-0", "progress.png"):
        assert fetch(url + path)[0] == 200, path
    assert fetch(url + "api/state", "HEAD")[0] == 200
    for path in ("nope", "api", "api/state/x", "progress.png/", "../etc/passwd"):
        assert fetch(url + path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("", "api/state", "api/log"):
            status, headers, _body = fetch(url + path, method)
            assert status == 405 and headers["Allow"] == "GET, HEAD", (method, path)
    after = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert after == before


def test_without_redis_the_run_folder_answers(tmp_path, served):
    runs = tmp_path / "runs"
    results = ResultsFile(runs / "t" / defaults.RESULTS_FILE)
    base = {"commit": "a" * 7, "id": "0000", "time": "2026-01-01T00:00:00+00:00"}
    results.append({**base, "val_bpb": 1.0, "status": "keep", "description": "baseline"})
    results.append(
        {**base, "id": "0001", "val_bpb": 1.01, "status": "discard", "description": HOSTILE}
    )
    folder = runs / "t" / "0001"
    folder.mkdir(parents=True)
    lines = [
        {"event": "output", "phase": "train", "line": f"line {i}", "id": "0001"} for i in range(5)
    ]
    stamps = [f"2026-01-01T00:00:0{i}Z" for i in range(5)]
    folder.joinpath("log.jsonl").write_text(
        "".join(
            json.dumps({**x, "timestamp": t}) + "\n" for x, t in zip(lines, stamps, strict=True)
        )
    )
    server = served(None, runs, "t")
    url = server.url
    snap = get_json(url + "api/state")
    assert snap["rows"] == 2 and snap["workers"] == [] and snap["running"] is False
    assert snap["last"][-1]["description"] == HOSTILE
    every = get_json(url + "api/log")
    assert [e["text"] for e in every["entries"]] == [f"line {i}" for i in range(5)]
    assert every["entries"][0]["id"] == "0001" and every["entries"][0]["phase"] == "train"
    rest = get_json(f"{url}api/log?after={every['entries'][2]['stream_id']}")
    assert [e["text"] for e in rest["entries"]] == ["line 3", "line 4"]
    # The chart: a PNG, rendered once per number of rows however often it is asked for.
    first = fetch(url + "progress.png")
    assert first[0] == 200 and first[1]["Content-Type"] == "image/png"
    assert first[2][:8] == b"\x89PNG\r\n\x1a\n"
    assert fetch(url + "progress.png")[2] == first[2]
    assert server.dashboard.chart.renders == 1
    results.append({**base, "id": "0002", "val_bpb": 0.9, "status": "keep", "description": "x"})
    assert fetch(url + "progress.png")[2] != first[2]
    assert server.dashboard.chart.renders == 2


def test_no_rows_no_chart(tmp_path, served):
    url = served(None, tmp_path / "runs", "empty").url
    assert fetch(url + "progress.png")[0] == 404
    snap = get_json(url + "api/state")
    assert snap["rows"] == 0 and snap["best"] is None
    assert get_json(url + "api/log") == {"entries": [], "last": "0-0", "more": False}


def test_the_page_says_paused_and_shows_a_keeps_hypothesis(tmp_path, served):
    """A live run (its state fresh, its orchestrator this process) that is paused: the pill
    says so; a kept change's WHY is next to its description on the leaderboard."""
    runs = tmp_path / "runs"
    results = ResultsFile(runs / "t" / defaults.RESULTS_FILE)
    base = {"commit": "a" * 7, "time": "2026-01-01T00:00:00+00:00"}
    results.append(
        {**base, "id": "0000", "val_bpb": 1.0, "status": "keep", "description": "baseline"}
    )
    results.append(
        {**base, "id": "0001", "val_bpb": 0.9, "status": "keep", "description": "raise LR"}
        | {"why": "the loss still falls fast at the deadline"}
    )
    state = {"status": "running", "updated": f"{time.time():.3f}", "paused": "1"}
    state |= {"host": socket.gethostname(), "pid": str(os.getpid())}
    (runs / "t" / defaults.STATE_FILE).write_text(json.dumps(state))
    server = served(None, runs, "t")
    dom = parse(browse(server.url, tmp_path / "chromium"))
    assert dom.one(id="run-status").text() == "paused"
    kept = dom.one("table", id="leaderboard").one("tr", data_id="0001")
    assert "raise LR  (why: the loss still falls fast at the deadline)" in kept.text()
