"""The commands that watch a run, live from its Redis or afterwards from its folder:
`status`, `logs`, `dashboard` and `report`. None of them changes the run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator import defaults
from orchestrator.cli.helpers import CommandError, add_reader, reader


def add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="workers and what they run, the queue, best and gain, counts, noise, LLM spend",
    )
    add_reader(p)
    p.add_argument("--rows", type=int, default=10, help="last results rows shown (default 10)")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print the whole snapshot as JSON")


def add_logs(sub: Any) -> None:
    p = sub.add_parser(
        "logs", help="one experiment's log, or the whole run's interleaved; -f follows it live"
    )
    add_reader(p)
    p.add_argument("id", nargs="?", help="experiment id, e.g. 0012 (default: every experiment)")
    p.add_argument("-f", "--follow", action="store_true", help="follow new lines as they come")
    p.add_argument("-n", "--lines", type=int, help="only the last N entries of the backlog")
    p.add_argument(
        "--json",
        action=argparse.BooleanOptionalAction,
        help="JSON lines (default: when not a terminal)",
    )


def add_dashboard(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard", help="a read-only web page: chart, leaderboard, workers, live log tails"
    )
    add_reader(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=defaults.DASHBOARD_PORT, help="default %(default)s")


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="progress.png and report.md: the chart and a summary")
    add_reader(p)
    p.add_argument("--repo", type=Path, help="git repo with the run's commits (default: .)")
    p.add_argument("--out", type=Path, help="folder for the files (default: the run folder)")


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator import view

    redis, runs_dir, tag = reader(args)
    try:
        while True:
            snap = view.snapshot(redis, tag, runs_dir)
            if not snap["rows"] and not snap["workers"] and not snap["state"]:
                where = runs_dir / tag
                raise CommandError(f"run {tag}: nothing recorded yet, in Redis or under {where}", 2)
            if args.json:
                text = json.dumps(snap, default=str)
            else:
                text = view.render_status(snap)
                if args.rows > 0 and snap["last"]:
                    text += "\nlast rows:\n" + view.render_rows(snap["last"][-args.rows :])
                text = view.printable(text)  # descriptions come from the LLM
            if args.watch is None:
                print(text)
                return 0
            print("\x1b[H\x1b[2J" + text, flush=True)  # home, clear screen: redraw in place
            time.sleep(max(args.watch, 0.2))
    except KeyboardInterrupt:  # how --watch ends
        return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a log from Redis's streams (following them with -f), or from the run folder
    when the stream is gone (an old experiment, a Redis that was reset)."""
    from orchestrator import view
    from worker import keys
    from worker.keys import log_stream_key

    redis, runs_dir, tag = reader(args)
    as_json = args.json if args.json is not None else not sys.stdout.isatty()
    render = view.Renderer(as_json, colors=sys.stdout.isatty())
    key = log_stream_key(tag, args.id) if args.id else keys.run_log_key(tag)
    live = redis is not None and bool(redis.exists(key))
    if not live:
        items = view.folder_log(runs_dir, tag, args.id)
        rows = view.rows(redis, tag, runs_dir) if args.id and not items else []
        row = next((r for r in rows if r["id"] == args.id), None)
        if items or row or redis is None or not args.follow:
            if not items:
                where = f"{tag}/{args.id}" if args.id else tag
                if row is not None:  # recorded without a log: a proposal that never ran
                    print(view.printable(f"{where}: {row['status']}, no log ({row['error']})"))
                    return 0
                raise CommandError(
                    f"no log for {where}: not in Redis and none under {runs_dir / tag}", 2
                )
            for item in items[-args.lines :] if args.lines else items:
                print(render(item), flush=True)
            return 0
        # -f on an experiment that has not started yet: wait for its stream.
    try:
        # The backlog (all of it, or the last N), then with -f what comes, until decided.
        last = "0-0"
        batch = view.tail_stream(redis, key, args.lines) if args.lines else []
        while True:
            for stream_id, fields in batch:
                last = stream_id
                item = view.entry(fields, args.id or "", stream_id)
                print(render(item), flush=True)
                if args.id and view.is_end(item):
                    return 0  # decided: nothing more will come
            batch = view.read_stream(redis, key, last, block_ms=1000 if args.follow else None)
            if not batch and not args.follow:
                return 0  # the backlog is printed
    except KeyboardInterrupt:
        return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from orchestrator import dashboard

    redis, runs_dir, tag = reader(args)
    return dashboard.serve(redis, runs_dir, tag, args.host, args.port)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator import report, view

    redis, runs_dir, tag = reader(args)
    rows = view.rows(redis, tag, runs_dir)
    if not rows:
        raise CommandError(f"run {tag} has no results (in Redis or under {runs_dir / tag})", 2)
    summary = view.summary(rows, view.state(redis, tag, runs_dir), time.time())
    out = args.out or runs_dir / tag
    png, md = report.write_report(
        tag, rows, summary, out, args.repo or Path.cwd(), run_dir=runs_dir / tag
    )
    print(f"{png}\n{md}")
    return 0
