"""Recording an experiment: its results row, its folder in the run folder, the branch move.

Every experiment ends as exactly one row of results.tsv and one folder (the diff or the
source, decision.json with the result and what re-runs it, an LLM proposal's transcript).
A keep moves the branch; the move, decision.json and the row are written with stop signals
deferred, so a stop never leaves a keep without its row or half a row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import bars
from orchestrator import defaults
from orchestrator.gitstore import GitStore
from orchestrator.journal import diff_summary
from orchestrator.proposers.base import Proposal
from orchestrator.research import stopping
from orchestrator.research.publish import Publisher
from orchestrator.results import COLUMNS, ResultsFile, summary
from orchestrator.validate import normalized_hash
from worker import contract
from worker.contract import Result
from worker.vocab import RAN, REPEATS, Outcome, RowStatus, RunKind


@dataclass
class Experiment:
    """What a row is about: the experiment, the code it ran and where that came from."""

    id: str
    commit: str  # "" when nothing was committed (a rejected proposal)
    parent: str
    description: str
    proposal: Proposal
    run: dict | None = None  # what re-runs it exactly (seed, budget, profile, fingerprint, commit)


# The result's fields a row takes as they are: the columns after test_bpb (where the time
# went, the compile cache) but record_s, which is measured here.
PASSED_ON = tuple(c for c in COLUMNS[COLUMNS.index("test_bpb") + 1 :] if c != "record_s")


def make_row(exp: Experiment, result: Result, status: RowStatus, note: str | None) -> dict:
    """The results.tsv row (results.COLUMNS) of an experiment and its result."""
    usage = exp.proposal.usage or {}
    mem = result.get("peak_memory_mb")
    return {
        "commit": exp.commit[:7] if exp.commit else "-",
        # As the original writes them: a crash's val_bpb is 0.000000 (its notebook drops
        # crash rows); a row with no score under another status has none, not a made-up 0.
        "val_bpb": result.get("val_bpb") or (0.0 if status == RowStatus.CRASH else None),
        "memory_gb": f"{mem / 1024:.1f}" if mem else "0.0",
        "status": status,
        "description": exp.description,
        "id": exp.id,
        "parent": exp.parent[:7],
        "proposer": exp.proposal.proposer,
        "worker": result.get("worker"),
        "training_s": result.get("training_s"),
        "total_s": result.get("total_s"),
        "tokens": result.get("tokens"),
        "params": result.get("params"),
        "mfu": result.get("mfu"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": usage.get("cost_usd"),
        "error": result.get("error") or note,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # What ran, for near-duplicate checks (a rejected candidate did not run).
        "source_hash": (
            normalized_hash(exp.proposal.source) if status != RowStatus.REJECTED else ""
        ),
        "seed": exp.run["seed"] if exp.run else None,
        "cage": result.get("cage"),
        "why": exp.proposal.why,
        "program": exp.proposal.program,
        "hardware": result.get("hardware"),
        "test_bpb": result.get("test_bpb"),
        **{k: result.get(k) for k in PASSED_ON},
        "record_s": time.time() - ended if (ended := result.get("ended_at")) else None,
    }


class Recorder:
    """Writes experiments into the run folder and results.tsv, moves the branch (`frontier`
    is its commit as this run last moved it), then tells other hosts and the terminal."""

    def __init__(
        self, git: GitStore, folder: Path, harness_sha256: str, publisher: Publisher, log: Any
    ):
        self.git, self.tag, self.folder = git, publisher.tag, folder
        self.results = ResultsFile(folder / defaults.RESULTS_FILE)
        self.harness_sha256 = harness_sha256
        self.frontier = ""
        self.session_rows: list[dict[str, Any]] = []
        self.publisher, self.log = publisher, log
        self.bar: bars.Bar = bars.silent()  # the run's bar, once it has one
        self.published = lambda: None  # called after a row reached Redis (the state follows)
        self._next_id: int | None = None
        self._touched: dict[str, str] = {}  # id -> what its diff changed (the journal's)
        self._first_id: int | None = None

    def new_id(self) -> str:
        """The next experiment id: past every row and every pinned candidate of the run."""
        if self._next_id is None:
            used = [int(r["id"]) for r in self.results.rows() if r.get("id", "").isdigit()]
            used += [int(i) for i in self.git.candidate_ids(self.tag) if i.isdigit()]
            self._next_id = max(used, default=-1) + 1
        self._next_id += 1
        return f"{self._next_id - 1:04d}"

    def first_id(self) -> int:
        """This session's first free id. Proposal seeds count from it, so they continue
        across resumed sessions past every proposal an earlier session made."""
        if self._first_id is None:
            self._first_id = int(self.new_id())
            self._next_id = self._first_id  # peeked, not used
        return self._first_id

    def reject(self, proposal: Proposal, parent: str, exp_id: str, best: float | None) -> None:
        """A proposal that never ran (proposal.rejected says why)."""
        exp_id = exp_id or self.new_id()
        result = contract.make_result({"id": exp_id}, Outcome.CRASH, error=proposal.rejected)
        exp = Experiment(exp_id, "", parent, proposal.description, proposal)
        self.record(exp, result, RowStatus.REJECTED, best=best)

    def summary(self, **session: Any) -> dict[str, Any]:
        """The run's figures as `status` and the report show them (results.summary), with
        this session's (session: margin, compute_kind, wall_seconds, stop_reason)."""
        seen = summary(self.results.rows(), {}, time.time())
        spent = sum(float(r["total_s"] or 0) for r in self.session_rows)
        return {
            "tag": self.tag,
            "branch": self.git.branch(self.tag).removeprefix("refs/heads/"),
            "best_val_bpb": seen["best"]["val_bpb"] if seen["best"] else None,
            "baseline_val_bpb": seen["baseline"]["val_bpb"] if seen["baseline"] else None,
            "gain": seen["gain"],
            "final": seen["final"],
            "noise_sigma": seen["noise"]["sigma"],
            "margin": session["margin"],
            "counts": seen["counts"],
            # Runs of a candidate (rejected and infra_error rows never ran one), and
            # repeat runs of a measured commit (noise, confirmations), apart.
            "experiments_this_session": sum(
                r["status"] in RAN and r["status"] not in REPEATS for r in self.session_rows
            ),
            "repeats_this_session": sum(r["status"] in REPEATS for r in self.session_rows),
            "compute_seconds": round(spent, 1),
            "compute_kind": session["compute_kind"],
            "wall_seconds": session["wall_seconds"],
            "stop_reason": session["stop_reason"],
            "results": str(self.results.path) if self.results.path.exists() else "",
        }

    def record(
        self,
        exp: Experiment,
        result: Result,
        status: RowStatus,
        note: str | None = None,
        best: float | None = None,
    ) -> None:
        """The experiment's row, folder and (a keep) branch move; then the row for other
        hosts, the bar and the log (best: the frontier's value before this row)."""
        written = self.write(exp, result, status, note)
        self.session_rows.append({**written, "total_s": result.get("total_s")})
        if self.publisher.row(written):
            self.published()
        # The bar counts candidates, as --max-experiments does: not the runs of a measured
        # commit, nor a change re-applied.
        if status not in REPEATS and exp.proposal.proposer not in (*RunKind, "reapply"):
            self.bar.update(1)
        self.log.info(
            "decided",
            id=exp.id,
            status=status,
            val_bpb=result.get("val_bpb"),
            best=best,
            error=result.get("error"),
            note=note,
            description=exp.description,
        )

    def touched(self) -> dict[str, str]:
        """id -> a few words on what its candidate.diff changed, read once per id."""
        for row in self.results.rows():
            exp_id = row.get("id", "")
            if exp_id and exp_id not in self._touched:
                diff = self.folder / exp_id / "candidate.diff"
                self._touched[exp_id] = diff_summary(diff.read_text()) if diff.is_file() else ""
        return {k: v for k, v in self._touched.items() if v}

    def write_transcript(self, folder: Path, proposal: Proposal) -> None:
        """transcript.md: what the LLM was sent and answered for this experiment, retries
        included; the system prompt once per run, by hash, in prompts/."""
        t = proposal.transcript or {}
        prompt = self.folder / "prompts" / f"{t['system_sha256'][:16]}.md"
        if not prompt.exists():
            prompt.parent.mkdir(parents=True, exist_ok=True)
            prompt.write_text(t["system"])
        usage = proposal.usage or {}
        lines = [
            f"# {folder.name}: {proposal.description}",
            "",
            f"model {t['model']}; system prompt: ../prompts/{prompt.name} (sha256 "
            f"{t['system_sha256'][:16]}); {usage.get('attempts', 0)} attempt(s), "
            f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} "
            f"completion tokens"
            + (f"; rejected: {proposal.rejected}" if proposal.rejected else ""),
        ]
        for message in t["messages"]:
            lines += ["", f"## {message['role']}", "", message["content"]]
        (folder / "transcript.md").write_text("\n".join(lines) + "\n")

    def write(self, exp: Experiment, result: Result, status: RowStatus, note: str | None) -> dict:
        """The experiment's folder and row; a keep first moves the branch to its commit.
        Returns the row as written."""
        folder = self.folder / exp.id
        folder.mkdir(parents=True, exist_ok=True)
        if exp.commit and exp.commit != exp.parent:
            (folder / "candidate.diff").write_text(self.git.diff(exp.parent, exp.commit))
        elif exp.proposal.source:
            (folder / "train.py").write_text(exp.proposal.source)
        if exp.proposal.transcript and exp.proposal.proposer == "llm":
            self.write_transcript(folder, exp.proposal)
        decision = {
            "decision": status,
            "note": note,
            "run": exp.run,
            "harness_sha256": self.harness_sha256,
            "result": result,
            "usage": exp.proposal.usage or {},
        }
        with stopping.deferred():
            if status == RowStatus.KEEP and exp.commit != exp.parent:
                self.git.advance(self.tag, exp.commit, self.frontier)
                self.frontier = exp.commit
            (folder / "decision.json").write_text(json.dumps(decision, indent=2, default=str))
            return self.results.append(make_row(exp, result, status, note))
