"""`autoresearch report`: the chart draws the right points, the Markdown the right numbers,
and the best-vs-baseline diff comes from git, else from the run folder's candidate.diff."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, git

from orchestrator import view
from orchestrator.report import (
    best_diff,
    markdown,
    plot_progress,
    progress_figure,
    progress_series,
    write_report,
)
from orchestrator.results import ResultsFile

TAG = "t1"
TRAIN = "workspace/train.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def commit_change(repo: Path, old: str, new: str, message: str) -> str:
    """Commit one edit of train.py; returns the full commit hash."""
    path = repo / TRAIN
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def commits(repo: Path) -> tuple[str, str, str]:
    """The baseline and two real kept changes on top of it."""
    c0 = git(repo, "rev-parse", "HEAD").strip()
    c1 = commit_change(repo, "LR = 0.03", "LR = 0.05", "LR 0.03 -> 0.05")
    c2 = commit_change(repo, "DIM = 32", "DIM = 64", "DIM 32 -> 64")
    return c0, c1, c2


def row(commit: str, status: str, value: float, desc: str, exp_id: str, parent: str, **kw):
    return {
        "commit": commit[:7],
        "val_bpb": value,
        "status": status,
        "description": desc,
        "id": exp_id,
        "parent": parent[:7],
        "time": kw.pop("time", "2026-01-01T00:00:00Z"),
        **kw,
    }


TIMES = {"queue_s": 0.5, "first_step_s": 4.0, "training_s": 24.0, "total_s": 30.0}


def write_results(path: Path, c0: str, c1: str, c2: str) -> list[dict[str, str]]:
    """A real results.tsv: baseline + noise runs, a discard, a crash, a rejected proposal,
    two keeps with their confirmations, a timeout; LLM usage on the proposals."""
    use = {"prompt_tokens": 1000, "completion_tokens": 200, "cost_usd": 0.0125}
    results = ResultsFile(path)
    for r in [
        row(c0, "keep", 2.50, "baseline", "0000", c0, time="2026-01-01T00:00:00Z"),
        row(c0, "noise", 2.51, "noise run", "0001", c0),
        row(c0, "noise", 2.49, "noise run", "0002", c0),
        row("aaaaaaa", "discard", 2.55, "worse idea", "0003", c0, **use),
        row("bbbbbbb", "crash", 0.0, "broken | idea", "0004", c0, error="boom", **use),
        row("-", "rejected", 0.0, "not python", "0005", c0, error="syntax", **use),
        row(c1, "keep", 2.40, "LR 0.03 -> 0.05", "0006", c0, **use),
        row(c1, "confirm", 2.42, "LR 0.03 -> 0.05", "0007", c0),
        row("ccccccc", "discard", 2.45, "another idea", "0008", c1, **use),
        row("ddddddd", "timeout", 0.0, "too slow", "0009", c1, **use),
        row(c2, "keep", 2.30, "DIM 32 -> 64", "0010", c1, **use, **TIMES),
        row(c2, "confirm", 2.32, "DIM 32 -> 64", "0011", c1, time="2026-01-01T02:00:00Z"),
    ]:
        results.append(r)
    return results.rows()


@pytest.fixture
def run(tmp_path, commits) -> tuple[list[dict[str, str]], Path]:
    folder = tmp_path / "runs" / TAG
    return write_results(folder / "results.tsv", *commits), folder


def summary_of(rows):
    return view.summary(rows, {"margin": "0.02", "model": "gpt-test"}, time.time())


def lines_by_gid(fig):
    (ax,) = fig.axes
    return {line.get_gid(): line for line in ax.lines}, ax


# ----- the chart -----
def test_series_places_every_row(run):
    rows, _ = run
    s = progress_series(rows)
    # x is the index among rows that ran: the rejected 0005 takes none.
    assert s["n"] == 11 and s["rejected"] == 1
    assert s["kept"] == ([0, 5, 9], [2.50, 2.40, 2.30])
    assert s["other"] == ([3, 7], [2.55, 2.45])
    assert s["repeats"] == ([1, 2, 6, 10], [2.51, 2.49, 2.42, 2.32])
    assert s["crash"] == [4, 8]
    assert s["above"] == []
    # The frontier is each kept commit's mean over its runs, held to the last experiment.
    fx, fy = s["frontier"]
    assert fx == [0, 5, 9, 10]
    assert fy == pytest.approx([2.50, 2.41, 2.31, 2.31])
    assert [t for _x, _y, t in s["labels"]] == ["baseline", "LR 0.03 -> 0.05", "DIM 32 -> 64"]
    lo, hi = s["ylim"]
    assert 2.2 < lo < 2.30 and 2.55 < hi < 2.7  # the crashes' 0.0 does not stretch it


def test_figure_draws_the_series(run):
    rows, _ = run
    fig = progress_figure(rows, "autoresearch t1")
    lines, ax = lines_by_gid(fig)
    assert list(lines["kept"].get_xdata()) == [0, 5, 9]
    assert list(lines["kept"].get_ydata()) == [2.50, 2.40, 2.30]
    assert list(lines["other"].get_xdata()) == [3, 7]
    assert list(lines["repeats"].get_xdata()) == [1, 2, 6, 10]
    assert lines["repeats"].get_markerfacecolor() == "none"  # hollow
    assert lines["kept"].get_markersize() > lines["other"].get_markersize()
    # Crashes: red x on the bottom edge (y in axes fractions), whatever the data range.
    crash = lines["crash"]
    assert list(crash.get_xdata()) == [4, 8]
    assert crash.get_marker() == "x" and crash.get_color() == "#d62728"
    assert all(y < 0.05 for y in crash.get_ydata())
    assert crash.get_transform() == ax.get_xaxis_transform()
    # The frontier is a post step through the kept means.
    frontier = lines["frontier"]
    assert frontier.get_drawstyle() == "steps-post"
    assert list(frontier.get_xdata()) == [0, 5, 9, 10]
    assert list(frontier.get_ydata()) == pytest.approx([2.50, 2.41, 2.31, 2.31])
    assert ax.get_ylim()[0] > 2.0
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["baseline", "LR 0.03 -> 0.05", "DIM 32 -> 64"]
    title = ax.get_title()
    assert "autoresearch t1" in title and "11 experiments, 3 kept, 2 crashed" in title
    assert "1 rejected" in title and "2.500000 → best 2.310000" in title
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "kept (3)" in legend and "discarded (2)" in legend
    assert "crashed: no val_bpb (2)" in legend and "noise and confirmation runs (4)" in legend


def test_plot_writes_a_real_png(run, tmp_path):
    import matplotlib.image

    rows, _ = run
    path = plot_progress(rows, tmp_path / "out" / "progress.png", "autoresearch t1")
    assert path == tmp_path / "out" / "progress.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (1200, 2400)
    rgb = pixels[..., :3]

    def has(colour: str) -> bool:
        target = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        return bool((abs(rgb - target).max(axis=-1) < 0.02).any())

    assert has("#d62728") and has("#2ca02c")  # the crashes' red, the keeps' green


def test_long_descriptions_are_truncated(run):
    rows, _ = run
    rows[-2] = {**rows[-2], "description": "x" * 100}
    labels = [t for _x, _y, t in progress_series(rows)["labels"]]
    assert labels[-1] == "x" * 39 + "…"


def test_edge_cases_plot(tmp_path, commits):
    c0 = commits[0]
    with pytest.raises(ValueError, match="no results rows"):
        plot_progress([], tmp_path / "p.png", "x")
    # One row: the baseline, its frontier a single point.
    rows = [{**row(c0, "keep", 2.5, "baseline", "0000", c0), "val_bpb": "2.500000"}]
    s = progress_series(rows)
    assert s["kept"] == ([0], [2.5]) and s["frontier"] == ([0, 0], [2.5, 2.5])
    assert s["ylim"][0] < 2.5 < s["ylim"][1]
    assert plot_progress(rows, tmp_path / "one.png", "x").read_bytes()[:8] == PNG_MAGIC
    # Only crashes: no keeps, no frontier, a finite y range.
    crashes = [
        {"commit": "abcdef0", "val_bpb": "0.000000", "status": st, "description": "d", "id": i}
        for i, st in enumerate(["crash", "oom", "nan", "timeout", "infra_error"])
    ]
    lines, ax = lines_by_gid(progress_figure(crashes, "x"))
    assert "frontier" not in lines and list(lines["kept"].get_xdata()) == []
    assert list(lines["crash"].get_xdata()) == [0, 1, 2, 3, 4]
    assert "no baseline yet" in ax.get_title()
    assert plot_progress(crashes, tmp_path / "c.png", "x").read_bytes()[:8] == PNG_MAGIC


def test_500_rows_and_an_outlier(tmp_path):
    rng = random.Random(0)
    rows, best = [], 3.0
    for i in range(500):
        value = best + rng.gauss(0.02, 0.03)
        status = "keep" if i == 0 or (i % 25 == 0 and value < best) else "discard"
        if i % 37 == 0 and i:
            status, value = "crash", 0.0
        if status == "keep":
            value = best - 0.01 if i else best
            best = value
        rows.append(
            {
                "commit": f"{i:07x}",
                "val_bpb": f"{value:.6f}",
                "status": status,
                "description": f"change number {i} with a long description " * 2,
                "id": f"{i:04d}",
            }
        )
    rows[100] = {**rows[100], "val_bpb": "9.000000", "status": "discard"}  # diverged
    s = progress_series(rows)
    assert s["n"] == 500 and 100 in s["above"] and s["ylim"][1] < 4.0
    lines, _ = lines_by_gid(progress_figure(rows, "x"))
    assert 100 in list(lines["above"].get_xdata())
    assert 100 not in list(lines["other"].get_xdata())
    started = time.monotonic()
    path = plot_progress(rows, tmp_path / "big.png", "autoresearch big")
    assert path.stat().st_size > 10_000 and time.monotonic() - started < 30


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, orchestrator.report\nprint('matplotlib' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ----- the Markdown and the diff -----
def test_report_with_git(run, repo, commits):
    rows, folder = run
    out = folder / "report"
    chart, report = write_report(TAG, rows, summary_of(rows), out, repo, run_dir=folder)
    assert chart == out / "progress.png" and chart.read_bytes()[:8] == PNG_MAGIC
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# autoresearch run `t1`\n")
    # Figures from the summary: means of runs, gain, counts, noise, LLM spend.
    assert "| Baseline val_bpb | 2.500000 (0000) |" in text
    assert "| Best val_bpb | 2.310000 (0010 " + commits[2][:7] + ": DIM 32 -> 64) |" in text
    assert "| Gain over the baseline | 0.190000 (7.60 %) |" in text
    assert "| Experiments run | 11 (12 rows) |" in text
    assert "| Hours (the last session) | 2.00 |" in text
    assert "| Experiments per hour (the last session) | 5.5 |" in text
    assert "| Keep margin | 0.020000 |" in text
    assert (
        "| Time per experiment | queue 0.50, first step 4.00, steps 20.00; steps 66.7% of "
        "30.00 s (mean s of the last 1) |" in text
    )
    sigma = view.summary(rows, {}, 0)["noise"]["sigma"]
    assert f"| Noise sigma | {sigma:.6f} (4 dof) |" in text
    assert (
        "| Rows by status | keep 3, discard 2, crash 1, timeout 1, rejected 1, noise 2, "
        "confirm 2 |" in text
    )
    assert "| LLM tokens (gpt-test) | 7,000 prompt + 1,400 completion |" in text
    assert "| LLM spend | $0.0875 |" in text
    assert "![progress](progress.png)" in text
    # The kept changes in order, each gain against the previous keep's mean.
    kept = text.split("## Kept changes, in order")[1].split("## Diff")[0]
    table = [line for line in kept.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[1] for line in table] == ["0000", "0006", "0010"]
    assert "| 2.500000 | 2.500000 (3) | baseline | baseline |" in table[0]
    assert "| 2.400000 | 2.410000 (2) | 0.090000 | LR 0.03 -> 0.05 |" in table[1]
    assert "| 2.300000 | 2.310000 (2) | 0.100000 | DIM 32 -> 64 |" in table[2]
    # The real git diff of best against baseline: one diff holding both changes.
    section = text.split("## Diff of the best against the baseline")[1]
    assert f"`git diff {commits[0][:12]} {commits[2][:12]} -- {TRAIN}`" in section
    block = section.split("```diff\n")[1].split("\n```")[0]
    assert block.count("diff --git") == 1
    for change in ("-LR = 0.03", "+LR = 0.05", "-DIM = 32", "+DIM = 64"):
        assert any(line.startswith(change) for line in block.splitlines()), change
    assert "candidate.diff" not in section


def test_report_falls_back_to_candidate_diffs(run, repo, commits, tmp_path):
    rows, folder = run
    c0, c1, c2 = commits
    # What the loop leaves: each candidate's diff against its parent.
    for exp_id, (old, new) in (("0006", (c0, c1)), ("0010", (c1, c2))):
        (folder / exp_id).mkdir(parents=True)
        (folder / exp_id / "candidate.diff").write_text(git(repo, "diff", old, new, "--", TRAIN))
    other = tmp_path / "other"  # a repository that lacks the commits
    other.mkdir()
    git(other, "init", "-q")
    for where in (None, other, tmp_path / "missing"):
        _, report = write_report(TAG, rows, summary_of(rows), folder, where)
        section = report.read_text().split("## Diff of the best against the baseline")[1]
        assert "these are the kept changes one by one" in section
        block = section.split("```diff\n")[1].split("\n```")[0]
        assert block.count("diff --git") == 2
        first, second = block.index("# 0006"), block.index("# 0010")
        assert first < block.index("+LR = 0.05") < second < block.index("+DIM = 64")
        assert "Missing" not in section
    # One kept candidate without its file: said, the other still shown.
    (folder / "0006" / "candidate.diff").unlink()
    text, note = best_diff(TAG, rows, None, folder)
    assert "Missing candidate.diff: 0006." in note and "+DIM = 64" in text
    assert "+LR = 0.05" not in text
    # Neither git nor files: said so, no diff block.
    (folder / "0010" / "candidate.diff").unlink()
    _, report = write_report(TAG, rows, summary_of(rows), folder, None)
    section = report.read_text().split("## Diff of the best against the baseline")[1]
    assert "No diff: the commits" in section and "```" not in section


def test_only_a_baseline(tmp_path, repo, commits):
    c0 = commits[0]
    path = tmp_path / "runs" / TAG / "results.tsv"
    ResultsFile(path).append(row(c0, "keep", 2.5, "baseline", "0000", c0))
    rows = ResultsFile(path).rows()
    _, report = write_report(TAG, rows, summary_of(rows), path.parent, repo)
    text = report.read_text()
    assert "| Gain over the baseline | 0.000000 (0.00 %) |" in text
    assert "| 0 | 0000 |" in text and "The best is the baseline" in text
    assert "```diff" not in text


def test_no_rows_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no results rows") as err:
        write_report(TAG, [], view.summary([], {}, 0), tmp_path, None)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no results rows"):
        markdown(TAG, [], view.summary([], {}, 0), "")
    assert not (tmp_path / "progress.png").exists()


def test_a_diff_with_backticks_keeps_its_fence():
    rows = [
        {**row("a", "keep", 2.0, "b", "0", "a"), "val_bpb": "2.0"},
        {**row("b", "keep", 1.0, "c", "1", "a"), "val_bpb": "1.0"},
    ]
    text = markdown(TAG, rows, view.summary(rows, {}, 0), "+s = '```'\n")
    assert "````diff\n+s = '```'\n````" in text


def test_a_description_with_dollar_signs_is_drawn_as_text(tmp_path):
    """matplotlib reads "$...$" as mathtext and raises on what it cannot parse; an LLM's
    description may hold any text."""
    rows = [
        row("a" * 7, "keep", 2.5, "baseline", "0000", "a" * 7),
        row("b" * 7, "keep", 2.4, r"scale by $\foo$ twice", "0001", "a" * 7),
    ]
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    path = plot_progress(rows, tmp_path / "p.png", "dollars")
    assert path.stat().st_size > 10_000


def test_a_kept_change_shows_its_hypothesis(tmp_path, repo, commits):
    c0, c1 = commits[0], commits[1]
    path = tmp_path / "runs" / TAG / "results.tsv"
    ResultsFile(path).append(row(c0, "keep", 2.5, "baseline", "0000", c0))
    ResultsFile(path).append(
        row(c1, "keep", 2.4, "raise the LR", "0001", c0, why="the loss was still falling fast")
    )
    rows = ResultsFile(path).rows()
    _, report = write_report(TAG, rows, summary_of(rows), path.parent, repo)
    assert "raise the LR (why: the loss was still falling fast) |" in report.read_text()
