"""What a run is doing, read from Redis (any host that reaches it) or from its run folder.

Read-only. `status`, `logs`, `report` and the dashboard all look through here, so they
show the same numbers. Sources:
- Redis: the workers (RQ's registry), the queues, each experiment's log stream and the
  run's interleaved one (written by the workers and the orchestrator), the run's results
  rows and state (written by the orchestrator as it records).
- The run folder, when Redis no longer has it: results.tsv, and each experiment's
  log.jsonl (streams expire a week after their last line).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text

from orchestrator import defaults
from orchestrator.logs import printable
from orchestrator.results import ResultsFile, epoch, summary, time_text
from worker import keys
from worker.keys import log_stream_key

# An entry's own fields: a metrics line's keys with these names get a trailing "_".
RESERVED = ("t", "id", "phase", "stream_id", "kind", "event")


# ----- log entries -----
def entry(fields: dict[Any, Any], exp_id: str = "", stream_id: str = "") -> dict[str, Any]:
    """A stream entry as one flat event: t, id, phase, event, and the entry's own fields.

    Stream entries are {kind, phase, text, t[, id]}: kind `line` is a line of output (the
    event is the text), `metrics` a ctx.log / harness progress line (JSON fields), `event`
    a worker or orchestrator event (JSON with an `event` key).
    """
    fields = {as_text(k): as_text(v) for k, v in fields.items()}  # clients without decode_responses
    kind, text = fields.get("kind", "line"), fields.get("text", "")
    out: dict[str, Any] = {
        "t": float(fields.get("t") or 0.0),
        "id": fields.get("id") or exp_id,
        "phase": fields.get("phase", ""),
    }
    if stream_id:
        out["stream_id"] = stream_id
    if kind in ("metrics", "event"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {"line": text}
        if not isinstance(data, dict):
            data = {"value": data}
        if kind == "metrics":  # the candidate's fields: they may not pose as ours
            out["event"] = "metrics"
            data = {(f"{k}_" if k in RESERVED else str(k)): v for k, v in data.items()}
        else:
            out["event"] = str(data.pop("event", "event"))
        out.update({k: v for k, v in data.items() if k not in out})
    else:
        out["event"] = text
    out["kind"] = kind
    return out


def tail_stream(redis: Any, key: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """The last `count` entries, oldest first (one XREVRANGE, not the whole stream)."""
    return [(as_text(i), f) for i, f in reversed(redis.xrevrange(key, count=count))]


def read_stream(
    redis: Any, key: str, after: str = "0-0", count: int = 1000, block_ms: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Entries after the stream id `after`, waiting up to block_ms for one when given."""
    if block_ms is None:
        start = "(" + after if after != "0-0" else "-"
        return [(as_text(i), f) for i, f in redis.xrange(key, min=start, max="+", count=count)]
    reply = redis.xread({key: after}, count=count, block=block_ms)
    return [(as_text(i), f) for _key, items in reply or [] for i, f in items]


def folder_log(runs_dir: Path, tag: str, exp_id: str | None) -> list[dict[str, Any]]:
    """One experiment's log.jsonl (or every experiment's, merged by time) as entries."""
    root = runs_dir / tag
    folders = [root / exp_id] if exp_id else sorted(p for p in root.glob("*") if p.is_dir())
    out = []
    for folder in folders:
        path = folder / "log.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            event = str(rec.pop("event", ""))
            stamp = rec.pop("timestamp", "")
            item: dict[str, Any] = {
                "t": epoch(stamp),
                "id": str(rec.pop("id", folder.name)),
                "phase": rec.pop("phase", ""),
            }
            if event == "output":
                item.update(event=str(rec.pop("line", "")), kind="line")
            else:
                item.update(event=event, kind="metrics" if event == "metrics" else "event")
            item.update(rec)
            out.append(item)
        decided = _decided_from(folder)
        if decided is not None:
            out.append(decided)
    out.sort(key=lambda e: e["t"])
    return out


def _decided_from(folder: Path) -> dict[str, Any] | None:
    """The orchestrator's decision (decision.json) as the `decided` entry its stream had."""
    path = folder / "decision.json"
    try:
        decision = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    result = decision.get("result") or {}
    return {
        "t": path.stat().st_mtime,
        "id": folder.name,
        "phase": "decide",
        "event": "decided",
        "kind": "event",
        "status": decision.get("decision"),
        "val_bpb": result.get("val_bpb"),
        "error": result.get("error") or decision.get("note"),
    }


def is_end(item: dict[str, Any]) -> bool:
    """The last entry of one experiment's stream: the orchestrator's decision (after the
    worker's end, after any retry of an infra_error, after a confirmation run)."""
    return item.get("kind") == "event" and item.get("event") == "decided"


# ----- the run -----
def latest_tag(redis: Any | None, runs_dir: Path | None) -> str | None:
    """The run updated last: Redis's index of runs, else the newest run folder."""
    if redis is not None:
        tags = redis.zrevrange(keys.RUNS_KEY, 0, 0)
        if tags:
            return as_text(tags[0])
    if runs_dir is not None and runs_dir.is_dir():
        folders = [p for p in runs_dir.iterdir() if (p / defaults.RESULTS_FILE).is_file()]
        if folders:
            return max(folders, key=lambda p: (p / defaults.RESULTS_FILE).stat().st_mtime).name
    return None


@functools.lru_cache(maxsize=16)
def _results_file(path: Path) -> ResultsFile:
    """One ResultsFile per path, so its parse cache serves every poll (status --watch, the
    dashboard) until the file changes."""
    return ResultsFile(path)


def rows(redis: Any | None, tag: str, runs_dir: Path | None) -> list[dict[str, str]]:
    """results.tsv's rows: from the run folder when it is here, else from Redis."""
    if runs_dir is not None:
        found = _results_file(runs_dir / tag / defaults.RESULTS_FILE).rows()
        if found:
            return found
    if redis is None:
        return []
    return [json.loads(r) for r in redis.lrange(keys.results_key(tag), 0, -1)]


def workers(redis: Any, tag: str | None = None) -> list[dict[str, Any]]:
    """Every live worker: host, GPU, hardware signature, state, and the experiment it runs
    with its last progress line (step, loss, tokens/s, time left)."""
    found = Worker.all(connection=redis)
    signatures = redis.mget([keys.worker_hardware_key(w.name) for w in found]) if found else []
    jobs = {}
    ids = [w.get_current_job_id() for w in found]
    fetched = Job.fetch_many([i for i in ids if i], connection=redis, serializer=JSONSerializer)
    for job in fetched:
        if job is not None:
            jobs[job.id] = job
    out = []
    pipe = redis.pipeline(transaction=False)
    for w, job_id, signature in zip(found, ids, signatures, strict=True):
        job = jobs.get(job_id or "")
        spec = job.args[0] if job is not None and job.args else {}
        item: dict[str, Any] = {
            "name": w.name,
            "host": w.hostname or "",
            "state": str(w.get_state()),
            "gpu": _gpu_of(w.name),
            "hardware": as_text(signature) if signature else "",
            "tag": spec.get("tag", ""),
            "exp_id": spec.get("id", ""),
            "description": spec.get("description", ""),
        }
        out.append(item)
        if item["exp_id"]:
            key = log_stream_key(item["tag"], item["exp_id"])
            pipe.xrange(key, count=1)  # experiment.start: the worker's GPU
            pipe.xrevrange(key, count=50)
    replies = iter(pipe.execute())
    for item in out:
        if not item["exp_id"]:
            continue
        for stream_id, fields in next(replies):
            start = entry(fields, item["exp_id"], stream_id)
            if start["event"] == "experiment.start" and "gpu" in start:
                item["gpu"] = "cpu" if start["gpu"] is None else f"gpu{start['gpu']}"
        for stream_id, fields in next(replies):
            e = entry(fields, item["exp_id"], as_text(stream_id))
            item.setdefault("phase", e["phase"])
            if e["kind"] == "metrics":
                for key in ("step", "loss", "tok_per_s", "elapsed_s", "remaining_s", "progress"):
                    value = e.get(key)  # the candidate's: numbers only
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        item[key] = value
                item["age_s"] = round(time.time() - e["t"], 1)
                break
    if tag is not None:
        out.sort(key=lambda i: (i["tag"] not in ("", tag), i["name"]))
    return out


def _gpu_of(name: str) -> str:
    """The GPU from a worker's default name (host-gpuN-pid / host-cpu-pid)."""
    parts = name.split("-")
    for part in reversed(parts[:-1]):
        if part == "cpu" or (part.startswith("gpu") and part[3:].isdigit()):
            return part
    return ""


def queue(redis: Any, tag: str) -> dict[str, Any]:
    """Jobs waiting: the shared queue and every worker's own, and which experiments."""
    names = [keys.QUEUE_NAME] + [
        q.name
        for q in Queue.all(connection=redis, serializer=JSONSerializer)
        if q.name.startswith(keys.QUEUE_NAME + ".worker.")
    ]
    waiting: list[str] = []
    total = 0
    for name in names:
        q = Queue(name, connection=redis, serializer=JSONSerializer)
        ids = q.get_job_ids()
        total += len(ids)
        waiting += [i.removeprefix(f"{tag}-") for i in ids if i.startswith(f"{tag}-")]
    return {"queued": total, "waiting": waiting}


def state(redis: Any | None, tag: str, runs_dir: Path | None = None) -> dict[str, str]:
    """The orchestrator's published state: Redis's hash, else the run folder's copy; a
    "running" state whose orchestrator is gone (killed without cleanup) reads as stopped."""
    found: dict[str, str] = {}
    if redis is not None:
        found = {as_text(k): as_text(v) for k, v in redis.hgetall(keys.run_state_key(tag)).items()}
    if not found and runs_dir is not None:
        try:
            found = json.loads((runs_dir / tag / defaults.STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    if found.get("status") == "running" and orchestrator_gone(found):
        found = {**found, "status": "stopped", "stop_reason": "stopped (orchestrator gone)"}
    return found


def orchestrator_gone(state: dict[str, str]) -> bool:
    """True when the state's orchestrator ran on this host and its process is dead. (From
    another host, the state's age tells: results.summary's "running".)"""
    if state.get("host") != socket.gethostname() or not state.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def snapshot(redis: Any | None, tag: str, runs_dir: Path | None) -> dict[str, Any]:
    """Everything `status` and the dashboard show, as one JSON-able dict."""
    now = time.time()
    st = state(redis, tag, runs_dir)
    all_rows = rows(redis, tag, runs_dir)
    out = {"tag": tag, "now": now, "state": st, **summary(all_rows, st, now)}
    out["workers"] = workers(redis, tag) if redis is not None else []
    out["queue"] = queue(redis, tag) if redis is not None else {"queued": 0, "waiting": []}
    out["last"] = all_rows[-defaults.RESULTS_TAIL_ROWS :]
    return out


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_status(snap: dict[str, Any]) -> str:
    """The status screen: run line, best and gain, counts, noise, LLM, workers, queue."""
    lines = []
    run = "running" if snap["running"] else (snap["stop_reason"] or "not running")
    if snap["running"] and snap["state"].get("paused"):
        run = "paused (what runs finishes; nothing new is queued: autoresearch resume)"
    lines.append(
        f"run {snap['tag']}: {run}; {snap['experiments']} experiments; "
        f"{snap['per_hour']:.1f}/h over this session's {snap['hours']:.2f} h"
    )
    best, base = snap["best"], snap["baseline"]
    if best and base:
        lines.append(
            f"best val_bpb {_num(best['val_bpb'], '.6f')} ({best['id']} {best['commit']} "
            f"{best['description']}); baseline {_num(base['val_bpb'], '.6f')}, gain "
            f"{_num(snap['gain'], '.6f')}"
        )
    else:
        lines.append("best: no baseline yet")
    lines.append(
        "counts: " + (", ".join(f"{k} {v}" for k, v in sorted(snap["counts"].items())) or "-")
    )
    cages = snap.get("cages") or {}
    lines.append("cage: " + (", ".join(f"{k} {v}" for k, v in sorted(cages.items())) or "-"))
    if "process-weak" in cages:
        lines.append(
            "  process-weak: the kernel could not confine those candidates (README: the cage)"
        )
    nz = snap["noise"]
    lines.append(
        f"noise sigma {_num(nz['sigma'], '.4f')} ({nz['dof']} dof), keep margin "
        f"{_num(nz['margin'], '.4f')}"
    )
    if snap.get("time"):
        lines.append(f"time: {time_text(snap['time'])}")
    llm = snap["llm"]
    lines.append(
        f"LLM {llm['model'] or '-'}: {llm['prompt_tokens']} prompt + "
        f"{llm['completion_tokens']} completion tokens, ${llm['cost_usd']:.4f}"
    )
    lines.append(f"workers ({len(snap['workers'])}):")
    for w in snap["workers"]:
        doing = "idle"
        if w["exp_id"]:
            doing = f"{w['tag']}/{w['exp_id']} {w.get('phase', '')}"
            if "step" in w:
                doing += f" step {w['step']}"
            if "loss" in w:
                doing += f" loss {w['loss']}"
            if "remaining_s" in w:
                doing += f" {w['remaining_s']:.0f}s left"
            doing += f"  {w['description'][:50]}"
        lines.append(f"  {w['name']:<32} {w['host']:<16} {w['gpu'] or '-':<6} {doing}")
        if w.get("hardware"):
            lines.append(f"    hardware: {printable(w['hardware'])}")
    q = snap["queue"]
    lines.append(
        f"queue: {q['queued']} waiting" + (f" ({', '.join(q['waiting'])})" if q["waiting"] else "")
    )
    return "\n".join(lines)


def render_rows(last: list[dict[str, str]]) -> str:
    """A compact table of results rows: id, status, val_bpb, description, error."""
    out = []
    for r in last:
        note = f"  ({r['error']})" if r.get("error") else ""
        out.append(
            f"  {r['id']:>5} {r['status']:<11} {r['val_bpb']:>9} {r['description'][:60]}{note[:80]}"
        )
    return "\n".join(out)


class Renderer:
    """Log entries for a terminal (structlog's console renderer) or as JSON lines."""

    def __init__(self, as_json: bool, colors: bool = False):
        import structlog

        self.as_json = as_json
        self.console = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(self, item: dict[str, Any]) -> str:
        if self.as_json:
            return json.dumps(item, default=str)
        event = {k: v for k, v in item.items() if k not in ("t", "kind", "stream_id")}
        stamp = time.strftime("%H:%M:%S", time.localtime(item["t"]))
        event["timestamp"] = f"{stamp}.{int(item['t'] * 1000) % 1000:03d}"
        if not event.get("phase"):
            event.pop("phase", None)
        event = {
            printable(str(k)): printable(v) if isinstance(v, str) else v for k, v in event.items()
        }
        return self.console(None, "info", event)
