"""`autoresearch report`: a progress chart and a Markdown summary of one run.

Everything here reads results.tsv rows (all values strings, see orchestrator.results) and
the summary dict of orchestrator.view.summary, so the report shows the same numbers as
`status` and the dashboard. matplotlib is imported inside the plotting functions only:
the CLI imports this module, and every other command must not pay for matplotlib.

The chart follows the original karpathy/autoresearch progress chart: x is the experiment
index, y is val_bpb (lower is better), kept changes are highlighted with the frontier as a
step line, everything else is faint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import defaults, noise, trust
from orchestrator.defaults import ABLATION_FILE
from orchestrator.gitstore import GitError, GitStore
from orchestrator.results import ROW_STATUSES, time_text
from worker.vocab import REPEATS, Outcome, RowStatus

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Statuses whose val_bpb is 0 because the run never produced one.
CRASHED = tuple(RowStatus(s) for s in Outcome if s != Outcome.OK)
# Re-runs of an already kept commit: they measure noise, not a change.
# Scored candidates that were not kept (reapplied and stale ones lost on their frontier).
NOT_KEPT = (RowStatus.DISCARD, RowStatus.REAPPLIED, RowStatus.STALE)
LABEL_CHARS = 40
CHART_NAME = "progress.png"
REPORT_NAME = "report.md"
# Colours (matplotlib's tab10 where it has one).
GREEN, GREY, BLUE, RED = "#2ca02c", "#9a9a9a", "#1f77b4", "#d62728"


def _no_rows(what: str) -> ValueError:
    return ValueError(f"no results rows: nothing to {what} (has the run recorded anything?)")


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f6(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


# ----- the chart -----
def progress_series(rows: list[dict[str, str]]) -> dict[str, Any]:
    """What the chart draws, as plain numbers: the Figure is built from exactly this, so
    tests (and anyone replotting elsewhere) can check the data without reading pixels.

    x is the experiment index: the position among rows that ran (rejected proposals never
    ran, so they take no index and are only counted). The frontier step line goes through
    each kept commit's mean over its runs (the keep, its confirmation, its noise runs):
    that is the value the loop compared candidates against, and the value `status`
    reports as best; kept dots are the single keep runs.
    """
    if not rows:
        raise _no_rows("plot")
    ran = [r for r in rows if r["status"] != RowStatus.REJECTED]
    series: dict[str, Any] = {
        "n": len(ran),
        "rejected": len(rows) - len(ran),
        "kept": ([], []),
        "other": ([], []),
        "repeats": ([], []),
        "crash": [],
        "above": [],
        "labels": [],
        "frontier": ([], []),
    }
    measured: list[float] = []
    for x, row in enumerate(ran):
        status, value = row["status"], noise.row_value(row)
        if status in CRASHED or value is None:
            series["crash"].append(x)
            continue
        measured.append(value)
        group = "kept" if status == RowStatus.KEEP else "repeats" if status in REPEATS else "other"
        series[group][0].append(x)
        series[group][1].append(value)
        if status == RowStatus.KEEP:
            series["labels"].append((x, value, _short(row.get("description", ""))))
            frontier = noise.commit_value(rows, row["commit"]) or value
            series["frontier"][0].append(x)
            series["frontier"][1].append(frontier)
    fx, fy = series["frontier"]
    if fx:  # the frontier holds until the last experiment
        fx.append(len(ran) - 1)
        fy.append(fy[-1])
    series["discarded"], series["repeated"] = len(series["other"][0]), len(series["repeats"][0])
    series["ylim"] = _ylim(measured, series["kept"][1] + fy + series["repeats"][1])
    top = series["ylim"][1]
    # Far worse runs (a diverged candidate) would squash the interesting band: they go
    # to the top edge as markers instead.
    for group in ("other", "repeats"):
        xs, ys = series[group]
        series["above"] += [x for x, y in zip(xs, ys, strict=True) if y > top]
        inside = [(x, y) for x, y in zip(xs, ys, strict=True) if y <= top]
        series[group] = ([x for x, _ in inside], [y for _, y in inside])
    series["above"].sort()
    return series


def _ylim(measured: list[float], frontier: list[float]) -> tuple[float, float]:
    """y-limits from measured values only (never a crash's 0.0), with a margin; the top
    is the worst frontier-related value or the 90th percentile of all runs, whichever is
    higher, so one diverged run does not flatten the rest."""
    if not measured:
        return (0.0, 1.0)
    ordered = sorted(measured)
    p90 = ordered[math.ceil(0.9 * (len(ordered) - 1))]
    lo, hi = ordered[0], max([p90, *frontier])
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-3)
    return (lo - pad, hi + pad)


def progress_figure(rows: list[dict[str, str]], title: str) -> Figure:
    """The chart as a matplotlib Figure (Agg canvas: no display, no pyplot global state).
    Artists carry gids (kept, other, repeats, crash, above, frontier) for tests."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = progress_series(rows)
    fig = Figure(figsize=(16, 8), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _plot_points(ax, s)
    _label_keeps(ax, s["labels"])
    _dress_axes(ax, s, title)
    return fig


def _plot_points(ax: Axes, s: dict[str, Any]) -> None:
    """Every experiment as a marker by its fate, and the frontier as a step line."""
    edge = ax.get_xaxis_transform()  # x in data, y in axes fractions: the edges
    crash, above = s["crash"], s["above"]
    # (gid, x, y, style, label); a label starting with "_" stays out of the legend.
    layers: list[tuple[str, list, list, dict[str, Any], str]] = [
        ("other", *s["other"], dict(color=GREY, ms=4, alpha=0.6), f"discarded ({s['discarded']})"),
        (
            "repeats",
            *s["repeats"],
            dict(mfc="none", mec=BLUE, ms=5, mew=1, alpha=0.8),
            f"noise and confirmation runs ({s['repeated']})",
        ),
        (
            "kept",
            *s["kept"],
            dict(color=GREEN, mec="black", mew=0.6, ms=9, zorder=4),
            f"kept ({len(s['kept'][0])})",
        ),
        (
            "crash",
            crash,
            [0.02] * len(crash),
            dict(marker="x", color=RED, ms=8, mew=2, transform=edge, clip_on=False),
            f"crashed: no val_bpb ({len(crash)})",
        ),
        (
            "above",
            above,
            [0.98] * len(above),
            dict(marker="^", color=GREY, ms=5, transform=edge, clip_on=False),
            f"worse, off the chart ({len(above)})",
        ),
    ]
    for gid, xs, ys, style, label in layers:
        style = {"marker": "o", "linestyle": "none", **style}
        ax.plot(xs, ys, gid=gid, label=label if xs else "_" + gid, **style)
    if s["frontier"][0]:
        ax.step(
            *s["frontier"],
            where="post",
            color=GREEN,
            lw=2,
            alpha=0.7,
            gid="frontier",
            label="frontier: best so far (mean of its runs)",
        )


def _label_keeps(ax: Axes, labels: list[tuple[float, float, str]]) -> None:
    """Each kept change's description next to its marker."""
    many = len(labels) > 25
    for i, (x, y, text) in enumerate(labels):
        # Rotated, with alternating offsets, so neighbouring keeps' labels do not pile up.
        ax.annotate(
            text,
            (x, y),
            xytext=(4, 6 + 10 * (i % 2)),
            textcoords="offset points",
            fontsize=6 if many else 7.5,
            rotation=28,
            ha="left",
            va="bottom",
            color="#1b5e20",
            # A faint white box keeps the label readable over the grey dots.
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.6),
            parse_math=False,  # an LLM's "$x$" is text, not a formula matplotlib may reject
        )


def _dress_axes(ax: Axes, s: dict[str, Any], title: str) -> None:
    """Limits, ticks, labels, grid, title and legend (a note when nothing was measured)."""
    from matplotlib.ticker import MaxNLocator

    n = s["n"]
    ax.set_ylim(*s["ylim"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not (s["kept"][0] or s["other"][0] or s["repeats"][0] or s["above"]):
        note = "no val_bpb measured yet"
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", color=GREY, fontsize=14)
        ax.set_yticks([])
    ax.set_xlim(-0.02 * max(n, 10) - 0.5, n - 0.5 + 0.06 * max(n, 10))
    ax.set_xlabel("experiment # (in run order; rejected proposals not shown)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.25)
    ax.set_title(_chart_title(s, title), fontsize=12)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)


def _chart_title(s: dict[str, Any], title: str) -> str:
    n = s["n"]
    line = f"{n} experiment{'s' * (n != 1)}, {len(s['kept'][0])} kept, {len(s['crash'])} crashed"
    if s["rejected"]:
        line += f", {s['rejected']} rejected (not shown)"
    fx, fy = s["frontier"]  # the frontier's means: the baseline's first, the best's last
    if fx:
        base, best = fy[0], fy[-1]
        line += f"; baseline {base:.6f} → best {best:.6f} (gain {base - best:+.6f})"
    else:
        line += "; no baseline yet"
    return f"{title}\n{line}"


def plot_progress(rows: list[dict[str, str]], path: Path, title: str) -> Path:
    """Write the progress chart (PNG) to path; title is the first title line (the run),
    the counts and baseline → best are added below it. Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    progress_figure(rows, title).savefig(path, format="png")
    return path


# ----- the Markdown -----
def _cell(text: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run in text, so a diff cannot end it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _counts(counts: dict[str, int]) -> str:
    order = [s for s in ROW_STATUSES if s in counts] + sorted(set(counts) - set(ROW_STATUSES))
    return ", ".join(f"{s} {counts[s]}" for s in order) or "-"


def kept_table(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept changes (view.summary's), each with the gain of its mean over the previous
    keep's (the loop's own comparison)."""
    out: list[dict[str, Any]] = []
    for k in kept:
        prev = out[-1]["mean"] if out else None
        gain = (prev - k["mean"]) if prev is not None and k["mean"] is not None else None
        out.append({**k, "gain": gain})
    return out


def markdown(
    tag: str,
    rows: list[dict[str, str]],
    summary: dict[str, Any],
    best_diff: str,
    chart_name: str = CHART_NAME,
    diff_note: str = "",
    ablation: dict[str, Any] | None = None,
) -> str:
    """The report as Markdown, to paste into a discussion. The figures come from summary
    (orchestrator.view.summary) so they match `status`; the kept table from rows.
    best_diff goes into a diff block as is; diff_note says where it came from; ablation
    is `autoresearch ablate`'s table, when it ran."""
    if not rows:
        raise _no_rows("report")
    s = summary
    base, best, nz, llm = s.get("baseline"), s.get("best"), s["noise"], s["llm"]
    gain = s.get("gain")
    gain_text = _f6(gain)
    if gain is not None and base and base.get("val_bpb"):
        gain_text += f" ({100 * gain / base['val_bpb']:.2f} %)"
    run_state = "running" if s.get("running") else (s.get("stop_reason") or "not running")
    model = f" ({llm['model']})" if llm.get("model") else ""
    figures = [
        ("Experiments run", f"{s['experiments']} ({s['rows']} rows)"),
        ("Hours (the last session)", f"{s['hours']:.2f}"),
        ("Experiments per hour (the last session)", f"{s['per_hour']:.1f}"),
        ("Baseline val_bpb", f"{_f6(base['val_bpb'])} ({base['id']})" if base else "-"),
        (
            "Best val_bpb",
            f"{_f6(best['val_bpb'])} ({best['id']} {best['commit']}: {best['description']})"
            if best
            else "-",
        ),
        ("Gain over the baseline", gain_text),
        (
            "Noise sigma",
            "-" if nz.get("sigma") is None else f"{nz['sigma']:.6f} ({nz['dof']} dof)",
        ),
        ("Keep margin", _f6(nz.get("margin"))),
        ("Time per experiment", time_text(s["time"]) if s.get("time") else "-"),
        ("Rows by status", _counts(s["counts"])),
        ("Rows by cage", _counts(s.get("cages") or {}) or "-"),
        (
            f"LLM tokens{model}",
            f"{llm['prompt_tokens']:,} prompt + {llm['completion_tokens']:,} completion",
        ),
        ("LLM spend", f"${llm['cost_usd']:.4f}"),
        ("Run", run_state),
    ]
    out = [f"# autoresearch run `{tag}`", "", "| | |", "|---|---|"]
    out += [f"| {name} | {_cell(value)} |" for name, value in figures]
    out += ["", f"![progress]({chart_name})", "", "## Kept changes, in order", ""]
    kept = kept_table(summary["kept"])
    if kept:
        out += [
            "| # | id | commit | val_bpb | mean (runs) | gain over previous keep | description |",
            "|---:|---|---|---:|---:|---:|---|",
        ]
        for i, k in enumerate(kept):
            gain_cell = "baseline" if i == 0 else _f6(k["gain"])
            out.append(
                f"| {i} | {_cell(k['id'])} | `{_cell(k['commit'])}` | {_f6(k['val_bpb'])} | "
                f"{_f6(k['mean'])} ({k['runs']}) | {gain_cell} | {_cell(k['description'])}"
                + (f" (why: {_cell(k['why'])})" if k.get("why") else "")
                + " |"
            )
    else:
        out.append("Nothing kept yet: the run has no baseline.")
    out += _trust(summary, ablation)
    out += ["", "## Diff of the best against the baseline", ""]
    if diff_note:
        out += [diff_note, ""]
    if best_diff.strip():
        fence = _fence(best_diff)
        out += [f"{fence}diff", best_diff.rstrip("\n"), fence]
    elif not diff_note:
        out.append("No diff.")
    return "\n".join(out) + "\n"


def _trust(summary: dict[str, Any], ablation: dict[str, Any] | None) -> list[str]:
    """The final re-measure beside the in-run gain, and the ablation when it ran."""
    out = []
    if final := trust.final_markdown(summary):
        out += ["", "## Is the gain real?", "", *final]
    if ablation:
        out += ["", "## Ablation: which kept changes carry the gain", ""]
        out += trust.ablation_markdown(ablation)
    return out


# ----- the diff -----
def best_diff(
    tag: str,
    rows: list[dict[str, str]],
    repo: Path | None,
    run_dir: Path | None,
    train_path: str = defaults.TRAIN_PATH,
) -> tuple[str, str]:
    """(diff text, note saying where it came from) of the best kept commit against the
    baseline: from git when repo holds both commits, else the kept candidates'
    candidate.diff files from the run folder one by one, else none (the note says so)."""
    kept = [r for r in rows if r["status"] == RowStatus.KEEP]
    if not kept:
        return "", "No baseline yet, so no diff."
    base, best = kept[0], kept[-1]
    if base["commit"] == best["commit"]:
        return "", "The best is the baseline: no change has been kept."
    found = _git_diff(tag, base, best, repo, train_path)
    if found is not None:
        (old, new), text = found
        return text, f"`git diff {old[:12]} {new[:12]} -- {train_path}`:"
    pieces, missing = [], []
    for prev, row in zip(kept, kept[1:], strict=False):
        path = run_dir / row["id"] / "candidate.diff" if run_dir and row.get("id") else None
        if path is None or not path.is_file():
            missing.append(row.get("id") or row["commit"])
            continue
        head = f"# {row['id']} {row['commit']}: {_cell(row.get('description', ''))}"
        if row.get("parent") and row["parent"] != prev["commit"]:
            head += f" (built on {row['parent']}, not on the previous keep {prev['commit']})"
        pieces.append(head + "\n" + path.read_text(encoding="utf-8").rstrip("\n") + "\n")
    where = "no repository given" if repo is None else "the repository lacks them"
    if not pieces:
        return "", (
            f"No diff: the commits {base['commit']} and {best['commit']} are not available "
            f"({where}) and the run folder holds no candidate.diff for the kept changes."
        )
    note = (
        f"The commits {base['commit']} and {best['commit']} are not available ({where}); "
        "these are the kept changes one by one, each against its parent (candidate.diff "
        "from the run folder), in the order they were kept."
    )
    if missing:
        note += f" Missing candidate.diff: {', '.join(missing)}."
    return "".join(pieces), note


def _git_diff(
    tag: str, base: dict[str, str], best: dict[str, str], repo: Path | None, train_path: str
) -> tuple[tuple[str, str], str] | None:
    """((old, new), diff) from git, None when the repository or a commit is missing."""
    if repo is None:
        return None
    try:
        store = GitStore(repo, train_path)
        old, new = row_commit(store, tag, base), row_commit(store, tag, best)
        if old is None or new is None:
            return None
        return (old, new), store.diff(old, new)
    except (GitError, OSError):
        return None


def row_commit(store: GitStore, tag: str, row: dict[str, str]) -> str | None:
    """The full commit of a row: its candidate ref (exact) when it matches, else the
    7-char abbreviation results.tsv holds (None when git does not know it)."""
    abbrev = row["commit"]
    if not abbrev or abbrev == "-":
        return None
    if row.get("id"):
        pinned = store.resolve(store.candidate_ref(tag, row["id"]))
        if pinned and pinned.startswith(abbrev):
            return pinned
    return store.resolve(abbrev)


def write_report(
    tag: str,
    rows: list[dict[str, str]],
    summary: dict[str, Any],
    out_dir: Path,
    repo: Path | None,
    train_path: str = defaults.TRAIN_PATH,
    *,
    run_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write progress.png and report.md into out_dir; returns their paths.

    The inputs are what the CLI already has (rows and summary from orchestrator.view, the
    repository from its settings), not Redis or settings objects: the report is then a
    pure function of files, testable without a running system, and works on a copied run
    folder. run_dir is the run's folder <runs_dir>/<tag> holding the experiment folders
    (for the candidate.diff fallback); it defaults to out_dir, where the report usually
    goes.
    """
    if not rows:
        raise _no_rows(f"report for run {tag}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = plot_progress(rows, out_dir / CHART_NAME, f"autoresearch {tag}")
    text, note = best_diff(tag, rows, repo, run_dir if run_dir is not None else out_dir, train_path)
    ablated = (run_dir if run_dir is not None else out_dir) / ABLATION_FILE
    ablation = json.loads(ablated.read_text()) if ablated.is_file() else None
    report = out_dir / REPORT_NAME
    report.write_text(
        markdown(tag, rows, summary, text, chart.name, note, ablation), encoding="utf-8"
    )
    return chart, report
