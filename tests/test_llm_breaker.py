"""The LLM fails: the preflight stops a run before any GPU time, the circuit breaker stops
one that is under way, and neither writes a row per failed call. The endpoint is the
scripted OpenAI-compatible server, driven by the real `openai` client."""

from __future__ import annotations

import socket
import time

import pytest

from orchestrator.proposers.base import Proposal, ProposalRequest
from orchestrator.proposers.llm import LLMProposer
from orchestrator.research.policy import Policy
from orchestrator.research.proposing import Proposals
from orchestrator.results import ResultsFile
from tests.llm_server import HTTPErrorReply, ScriptedLLMServer, SlowReply
from tests.test_loop import RUN_FAST, cli


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there now


@pytest.mark.parametrize(
    ("script", "kind", "text"),
    [
        ([HTTPErrorReply(401, "Incorrect API key provided")] * 2, "auth", "HTTP 401"),
        ([HTTPErrorReply(404, "The model `gpt-9` does not exist")] * 2, "model", "HTTP 404"),
        ([SlowReply(3.0, "OK")] * 2, "connection", "APITimeoutError"),
        (None, "connection", "APIConnectionError"),
    ],
)
def test_a_bad_endpoint_is_one_line_and_exit_2_before_the_baseline(
    repo, data_dir, script, kind, text
):
    """Timed: from the command's start to its error line (the closing note's figure)."""
    with ScriptedLLMServer(script or []) as server:
        url = server.base_url if script is not None else _closed_port_url()
        began = time.monotonic()
        proc = cli(
            repo,
            data_dir,
            "run",
            "--tag",
            "bad",
            *RUN_FAST,
            env={
                "AUTORESEARCH_LLM_BASE_URL": url,
                "AUTORESEARCH_PROPOSER": "llm",
                "AUTORESEARCH_LLM_TIMEOUT_S": "1",
            },
        )
        seconds = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"autoresearch: error: LLM preflight failed ({kind}, model "), last
    assert text in last and "Traceback" not in proc.stderr
    # Nothing ran: no baseline, no row, no experiment folder.
    assert not (repo / "workspace/runs/bad/results.tsv").exists()
    assert not (repo / "workspace/runs/bad/0000").exists()
    print(f"preflight {kind}: exit 2 after {seconds:.1f} s")


def test_the_preflight_waits_out_a_rate_limit(tmp_path):
    """429, then OK: the client's own retry (Retry-After) gets through."""
    with ScriptedLLMServer([HTTPErrorReply(429, "Rate limit reached"), "OK"]) as server:
        proposer = LLMProposer(
            base_url=server.base_url,
            api_key="k",
            model="m",
            temperature=0.0,
            system_prompt="s",
        )
        proposer.preflight()
        assert len(server.requests) == 2 and server.remaining == 0


def test_max_cost_without_prices_is_refused_at_start(repo, data_dir):
    proc = cli(repo, data_dir, "run", "--tag", "cost", "--max-cost", "5", *RUN_FAST)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autoresearch: error: max_cost_usd=5.0: a spend limit needs")
    assert not (repo / "workspace/runs/cost/results.tsv").exists()


class Failing:
    """A proposer whose every call fails the way the LLM proposer reports it."""

    name = "llm"

    def __init__(self, kinds):
        self.kinds = list(kinds)

    def propose(self, request):
        kind = self.kinds.pop(0)
        return Proposal(
            "", "", "llm", usage={"cost_usd": 0.01}, rejected=f"llm error: {kind}", failure=kind
        )


class Log:
    def __init__(self):
        self.events = []

    def info(self, event, **kw):
        self.events.append((event, kw))

    warning = info


def _collect(proposals, n):
    """Start n proposals one after the other, each collected before the next starts."""
    out = []
    for _ in range(n):
        proposals._next_at = 0.0  # the backoff is checked below, not waited for
        proposals.start(ProposalRequest("", "", "", 0), parent="p")
        while proposals.running:
            out += list(proposals.collect())
    return out


def test_failures_of_one_kind_back_off_then_break():
    log = Log()
    proposals = Proposals(
        Failing(["quota", "auth", "auth", "auth"]), Policy(llm_failures=3, llm_backoff_s=10.0), log
    )
    assert _collect(proposals, 2) == []  # failed calls are no proposals: no row
    waits = [kw["next_try_s"] for e, kw in log.events if e == "llm.failed"]
    assert waits == [10.0, 10.0]  # a new kind starts the count again
    assert not proposals.may_start(8, None)  # backing off
    assert _collect(proposals, 2) == [] and proposals.broken.startswith(
        "LLM failing (auth, 3 times"
    )
    assert [kw["next_try_s"] for e, kw in log.events if e == "llm.failed"] == [
        10.0,
        10.0,
        30.0,
        None,
    ]
    assert proposals.started == 0 and proposals.lost_usd == pytest.approx(0.04)
    proposals._next_at = 0.0
    assert not proposals.may_start(8, None)  # broken: nothing more starts


def test_a_run_whose_llm_fails_midway_stops_with_the_reason(repo, data_dir):
    """The key works for the preflight, then every call is refused: the run stops with the
    reason and exit 1, and no failed call became a row."""
    with ScriptedLLMServer(["OK", *[HTTPErrorReply(401, "key revoked")] * 30]) as server:
        proc = cli(
            repo,
            data_dir,
            "run",
            "--tag",
            "revoked",
            "--max-experiments",
            "20",
            *RUN_FAST,
            env={
                "AUTORESEARCH_LLM_BASE_URL": server.base_url,
                "AUTORESEARCH_PROPOSER": "llm",
                "AUTORESEARCH_LLM_BACKOFF_S": "0.01",
            },
        )
        calls = len(server.requests) - 1
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "LLM failing (auth, 4 times in a row): llm error: HTTP 401: key revoked" in proc.stdout
    rows = ResultsFile(repo / "workspace/runs/revoked/results.tsv").rows()
    assert [r["proposer"] for r in rows if r["proposer"] == "llm"] == []
    assert rows[0]["description"] == "baseline"
    assert 4 <= calls < 30
    assert proc.stderr.count('"llm.failed"') == calls
