"""Which cage held each candidate: a results.tsv column that status and the report show."""

from __future__ import annotations

import time

from orchestrator import view
from orchestrator.report import markdown
from orchestrator.results import COLUMNS, ResultsFile


def _rows(tmp_path, cages):
    results = ResultsFile(tmp_path / "results.tsv")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i, cage in enumerate(cages):
        status = "keep" if i == 0 else "discard"
        row = {"commit": f"c{i:06d}", "val_bpb": 2.5 - i / 100, "status": status}
        results.append(
            {**row, "description": f"d{i}", "id": f"{i:04d}", "parent": "p"}
            | {"time": now, "cage": cage}
        )
    return results.rows()


def test_rows_record_the_cage_after_the_older_columns_so_old_notebooks_still_read_them(
    tmp_path,
):
    assert COLUMNS[:5] == ("commit", "val_bpb", "memory_gb", "status", "description")
    # Columns are only ever added at the end: the cage's place (after seed) never moves.
    assert COLUMNS.index("cage") == COLUMNS.index("seed") + 1 == 21
    assert [r["cage"] for r in _rows(tmp_path, ["process", "process-weak"])] == [
        "process",
        "process-weak",
    ]


def test_status_and_report_show_the_cages_and_warn_about_a_weak_one(tmp_path):
    rows = _rows(tmp_path, ["process", "process-weak", "process-weak", ""])
    summary = view.summary(rows, {}, time.time())
    assert summary["cages"] == {"process": 1, "process-weak": 2}
    snap = {"tag": "t", "workers": [], "queue": {"queued": 0, "waiting": []}, "last": rows}
    text = view.render_status({**snap, **summary})
    assert "cage: process 1, process-weak 2" in text
    assert "process-weak: the kernel could not confine" in text
    strong = view.render_status({**snap, **view.summary(rows[:1], {}, time.time())})
    assert "cage: process 1" in strong and "could not confine" not in strong
    assert "| Rows by cage | process 1, process-weak 2 |" in markdown("t", rows, summary, "")


class Events:
    def __init__(self):
        self.seen = []

    def info(self, event, **kw):
        self.seen.append(("info", event, kw))

    def warning(self, event, **kw):
        self.seen.append(("warning", event, kw))


def test_a_worker_says_at_start_which_cage_its_candidates_run_in(monkeypatch):
    from harness import cage
    from orchestrator.cli.helpers import announce_cage as _announce_cage

    log = Events()
    monkeypatch.setattr(cage, "probe", lambda: (True, "Landlock ABI 7, seccomp"))
    _announce_cage(log, "process")
    _announce_cage(log, "docker")
    monkeypatch.setattr(cage, "probe", lambda: (False, "no Landlock on Darwin arm64"))
    _announce_cage(log, "process")
    assert log.seen[0] == ("info", "cage", {"cage": "process", "holds": "Landlock ABI 7, seccomp"})
    assert log.seen[1] == ("info", "cage", {"cage": "docker"})
    level, event, fields = log.seen[2]
    assert (level, event, fields["cage"]) == ("warning", "cage.weak", "process-weak")
    assert fields["why"] == "no Landlock on Darwin arm64" and "not confined" in fields["means"]
