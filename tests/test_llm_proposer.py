"""The LLM proposer against a real HTTP server and the real `openai` client (no mocks)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.proposers.base import ProposalRequest
from orchestrator.proposers.llm import LLMProposer, build_user_message
from tests.llm_server import (
    HTTPErrorReply,
    RawReply,
    Reply,
    ScriptedLLMServer,
    SlowReply,
    TruncatedReply,
)

SOURCE = """\
import torch

LR = 0.01
BATCH_SIZE = 8


def build_model(ctx):
    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)


def train(model, ctx):
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for x, y in ctx.batches(BATCH_SIZE):
        opt.zero_grad()
"""

RESULTS = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc1234\t1.234\t0.5\tkeep\tbaseline"
FAILURE = "Traceback (most recent call last):\nRuntimeError: CUDA out of memory"

GOOD = """DESCRIPTION: raise LR to 0.02 for faster early progress
```python
<<<<<<< SEARCH
LR = 0.01
=======
LR = 0.02
>>>>>>> REPLACE
```
"""


def edit(search: str, replace: str, description: str = "a change") -> str:
    return (
        f"DESCRIPTION: {description}\n"
        f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"
    )


@pytest.fixture
def server() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as s:
        yield s


def make_proposer(server: ScriptedLLMServer, **overrides: Any) -> LLMProposer:
    kwargs: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": None,
        "model": "test-model",
        "temperature": 0.7,
        "system_prompt": "SYSTEM PROMPT",
        "timeout_s": 10.0,
        "max_retries": 0,
        "format_retries": 2,
        "price_in_per_mtok": 2.0,
        "price_out_per_mtok": 10.0,
    }
    kwargs.update(overrides)
    return LLMProposer(**kwargs)


def request(source: str = SOURCE, seed: int = 7) -> ProposalRequest:
    return ProposalRequest(source=source, journal=RESULTS, failure_tail=FAILURE, seed=seed)


def test_valid_edit_on_first_reply(server):
    server.add(GOOD)
    proposal = make_proposer(server).propose(request())
    assert proposal.rejected is None
    assert proposal.source == SOURCE.replace("LR = 0.01", "LR = 0.02")
    assert proposal.description == "raise LR to 0.02 for faster early progress"
    assert proposal.proposer == "llm"
    assert proposal.usage["attempts"] == 1
    assert proposal.usage["model"] == "test-model"

    [sent] = server.requests
    assert sent["model"] == "test-model"
    assert sent["temperature"] == 0.7
    assert sent["seed"] == 7
    system, user = sent["messages"]
    assert system == {"role": "system", "content": "SYSTEM PROMPT"}
    assert user["role"] == "user"
    assert SOURCE.strip() in user["content"]
    assert "abc1234\t1.234" in user["content"]
    assert "CUDA out of memory" in user["content"]
    assert "DESCRIPTION:" in user["content"] and "<<<<<<< SEARCH" in user["content"]


def test_user_message_without_history_or_failure():
    text = build_user_message(ProposalRequest(SOURCE, "", "", seed=0))
    assert SOURCE.strip() in text
    assert "No experiments have finished yet." in text
    assert "failed" not in text


def test_user_message_fence_cannot_be_closed_by_the_source():
    source = SOURCE + '\nDOC = """\n```\nnot the end\n```\n"""\n'
    text = build_user_message(ProposalRequest(source, "", "", seed=0))
    assert "````python\n" + source.rstrip() + "\n````" in text


def test_malformed_reply_goes_back_with_the_reason(server):
    server.add("I would raise the learning rate.", GOOD)
    proposal = make_proposer(server).propose(request())
    assert proposal.rejected is None
    assert "LR = 0.02" in proposal.source
    assert proposal.usage["attempts"] == 2

    first, second = server.requests
    assert len(first["messages"]) == 2
    assert second["messages"][:2] == first["messages"]
    assistant, retry = second["messages"][2:]
    assert assistant == {"role": "assistant", "content": "I would raise the learning rate."}
    assert retry["role"] == "user"
    assert retry["content"].startswith(
        "Your reply could not be applied: reply has no SEARCH/REPLACE edit."
    )


def test_invalid_candidate_goes_back_with_the_validation_reason(server):
    server.add(edit("LR = 0.01", "LR = = 0.02"), GOOD)
    proposal = make_proposer(server).propose(request())
    assert proposal.rejected is None
    retry = server.requests[1]["messages"][-1]["content"]
    assert "could not be applied: syntax error at line 3" in retry


def test_the_hypothesis_is_kept_and_program_md_is_read_again_when_it_changes(server, tmp_path):
    program = tmp_path / "program.md"
    program.write_text("FIRST PROGRAM")
    server.add(GOOD.replace("\n", "\nWHY: warmup is too short for this LR\n", 1), GOOD)
    proposer = make_proposer(server, program_path=program)
    first = proposer.propose(request())
    assert first.why == "warmup is too short for this LR"
    program.write_text("SECOND PROGRAM, edited while the run goes on")
    second = proposer.propose(request())
    assert server.requests[0]["messages"][0]["content"] == "FIRST PROGRAM"
    assert server.requests[1]["messages"][0]["content"].startswith("SECOND PROGRAM")
    assert first.program != second.program and len(second.program) == 12
    assert second.why == ""


def test_a_plateau_asks_for_a_bolder_change():
    assert "No change has been kept in the last 25" in build_user_message(
        ProposalRequest("x = 1\n", "", "", 0, plateau=25)
    )
    assert "No change has been kept" not in build_user_message(
        ProposalRequest("x = 1\n", "", "", 0)
    )


def test_the_transcript_holds_every_turn_and_the_system_prompt_by_hash(server):
    bad = edit("LR = 0.01", "LR = = 0.02")
    server.add(bad, GOOD)
    proposer = make_proposer(server)
    proposal = proposer.propose(request())
    t = proposal.transcript
    assert t["system"] == proposer.system_prompt and len(t["system_sha256"]) == 64
    roles = [m["role"] for m in t["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]  # the retry included
    assert t["messages"][1]["content"] == bad and t["messages"][3]["content"] == GOOD
    assert "syntax error" in t["messages"][2]["content"]
    assert all(m["role"] != "system" for m in t["messages"])


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "auth"), (403, "auth"), (404, "model"), (400, "request")]
)
def test_an_api_failure_says_its_kind(server, status, kind):
    server.add(HTTPErrorReply(status, "no"))
    proposal = make_proposer(server, max_retries=0).propose(request())
    assert proposal.failure == kind and proposal.rejected.startswith(f"llm error: HTTP {status}")


@pytest.mark.parametrize("status", [500, 429])
def test_http_error_then_success_is_retried_by_the_client(server, status):
    server.add(HTTPErrorReply(status), GOOD)
    proposal = make_proposer(server, max_retries=2).propose(request())
    assert proposal.rejected is None
    assert "LR = 0.02" in proposal.source
    assert len(server.requests) == 2
    assert server.requests[0] == server.requests[1]  # a transport retry, not a new turn
    assert proposal.usage["attempts"] == 1


def test_api_error_after_client_retries_is_a_rejection_not_an_exception(server):
    server.add(HTTPErrorReply(500, "model overloaded"), HTTPErrorReply(500, "model overloaded"))
    proposal = make_proposer(server, max_retries=1).propose(request())
    assert proposal.source == ""
    assert proposal.rejected == "llm error: HTTP 500: model overloaded"
    assert server.remaining == 0


def test_client_error_is_not_retried(server):
    server.add(HTTPErrorReply(400, "unknown model"), GOOD)
    proposal = make_proposer(server, max_retries=3).propose(request())
    assert proposal.rejected == "llm error: HTTP 400: unknown model"
    assert len(server.requests) == 1


def test_unreachable_server_is_a_rejection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proposer = LLMProposer(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=None,
        model="m",
        temperature=0.0,
        system_prompt="",
        max_retries=0,
    )
    proposal = proposer.propose(request())
    assert proposal.rejected is not None
    assert proposal.rejected.startswith("llm error: APIConnectionError")


def test_exhausting_format_retries_gives_the_last_reason(server):
    bad_apply = edit("LR = 0.5", "LR = 0.02", description="try LR 0.02")
    server.add("no edit at all", bad_apply, bad_apply)
    proposal = make_proposer(server, format_retries=2).propose(request())
    assert proposal.source == ""
    assert proposal.rejected == "SEARCH block 1 does not match train.py"
    assert proposal.description == "try LR 0.02"  # what the model meant, for the record
    assert proposal.usage["attempts"] == 3
    assert len(server.requests) == 3
    assert server.remaining == 0
    # The conversation grows turn by turn, each reason sent back.
    last = server.requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "reply has no SEARCH/REPLACE edit" in last[3]["content"]
    assert "SEARCH block 1 does not match train.py" in last[5]["content"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("DESCRIPTION: nothing\nJust raise LR.", "reply has no SEARCH/REPLACE edit"),
        (edit("LR = 0.001", "LR = 0.02"), "SEARCH block 1 does not match train.py"),
        (
            "DESCRIPTION: x\nharness/eval.py\n"
            "<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.02\n>>>>>>> REPLACE\n",
            "edit touches another file: harness/eval.py",
        ),
        ("DESCRIPTION: x\n<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.02\n", "is not closed"),
        (edit("LR = 0.01", "LR = 0.02\nif True"), "syntax error at line 4: "),
        (edit("def build_model(ctx):", "def make_model(ctx):"), "no top-level def build_model"),
        (edit("def train(model, ctx):", "def train(model):"), "train must be callable"),
        (edit("LR = 0.01", "LR = 0.01"), "edit changes nothing"),
        (edit("LR = 0.01", "LR = 0.02").replace("DESCRIPTION: a change\n", ""), "DESCRIPTION"),
        (Reply(None), "the reply was empty"),
        (RawReply({"id": "x", "object": "chat.completion", "choices": []}), "the reply was empty"),
    ],
    ids=[
        "no-edit",
        "no-match",
        "other-file",
        "unclosed",
        "syntax",
        "no-build_model",
        "bad-train",
        "no-change",
        "no-description",
        "null-content",
        "no-choices",
    ],
)
def test_bad_reply_is_rejected_with_its_reason(server, reply, reason):
    server.add(reply)
    proposal = make_proposer(server, format_retries=0).propose(request())
    assert proposal.source == ""
    assert proposal.rejected is not None
    assert reason in proposal.rejected
    assert len(server.requests) == 1


def test_over_size_limit_is_rejected(server):
    server.add(edit("LR = 0.01", "LR = 0.01  # " + "x" * 100))
    limit = len(SOURCE) + 50
    proposal = make_proposer(server, format_retries=0, max_bytes=limit).propose(request())
    assert (
        proposal.rejected == f"train.py is {len(SOURCE) + 104} bytes, over the {limit}-byte limit"
    )


def test_reasoning_block_is_ignored(server):
    thinking = "<think>\nMaybe:\n<<<<<<< SEARCH\nNOPE\n=======\nX\n>>>>>>> REPLACE\n</think>\n"
    server.add(thinking + GOOD)
    proposal = make_proposer(server, format_retries=0).propose(request())
    assert proposal.rejected is None
    assert "LR = 0.02" in proposal.source


def test_usage_and_cost_are_summed_over_attempts(server):
    server.add(Reply("no edit", prompt_tokens=1000, completion_tokens=200))
    server.add(Reply(GOOD, prompt_tokens=3000, completion_tokens=400))
    proposal = make_proposer(server).propose(request())
    assert proposal.rejected is None
    usage = proposal.usage
    assert usage["prompt_tokens"] == 4000
    assert usage["completion_tokens"] == 600
    assert usage["attempts"] == 2
    assert usage["cost_usd"] == pytest.approx((4000 * 2.0 + 600 * 10.0) / 1e6)
    assert usage["model"] == "test-model"


def test_usage_is_reported_on_rejection_too(server):
    server.add(Reply("no edit", prompt_tokens=10, completion_tokens=5), HTTPErrorReply(503))
    proposal = make_proposer(server, format_retries=3).propose(request())
    assert proposal.rejected is not None and proposal.rejected.startswith("llm error: HTTP 503")
    assert proposal.usage["prompt_tokens"] == 10
    assert proposal.usage["completion_tokens"] == 5
    assert proposal.usage["attempts"] == 2
    assert proposal.usage["cost_usd"] == pytest.approx((10 * 2.0 + 5 * 10.0) / 1e6)


def test_truncated_json_is_a_rejection_not_an_exception(server):
    server.add(TruncatedReply(), TruncatedReply())
    proposal = make_proposer(server, max_retries=1).propose(request())
    assert proposal.source == "" and proposal.rejected.startswith("llm error")


def test_a_reply_slower_than_the_timeout_is_retried_then_rejected(server):
    server.add(SlowReply(2.0), GOOD)
    proposal = make_proposer(server, max_retries=1, timeout_s=0.5).propose(request())
    assert proposal.rejected is None and "LR = 0.02" in proposal.source  # the retry got it
    server.add(SlowReply(2.0), SlowReply(2.0))
    proposal = make_proposer(server, max_retries=1, timeout_s=0.5).propose(request())
    assert proposal.rejected is not None and "Timeout" in proposal.rejected
