"""Property-based: any LLM reply yields a valid candidate or a rejection with a reason."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.edits import EditError, apply_reply
from orchestrator.validate import CandidateRejected, normalized_hash, validate_candidate
from tests.conftest import TINY_TRAIN

LINES = TINY_TRAIN.split("\n")
MARKERS = [
    "<<<<<<< SEARCH",
    "=======",
    ">>>>>>> REPLACE",
    "DESCRIPTION: try this",
    "DESCRIPTION:",
    "```",
    "```python",
    "train.py",
    "harness/evaluate.py",
    "<think>",
    "</think>",
    "\t",
    "\x00",
    "import os; os.system('rm -rf /')",
    "def build_model(ctx):",
    "def train(model, ctx):",
    "    return None",
]
FRAGMENT = st.one_of(
    st.sampled_from(MARKERS),
    st.sampled_from(LINES),
    st.text(max_size=60),
    st.sampled_from(LINES).map(lambda line: line.replace("0.03", "0.05")),
)
# Random text, and replies assembled from the pieces a real (or hostile) reply is made of.
REPLY = st.one_of(
    st.text(max_size=3000),
    st.lists(FRAGMENT, max_size=40).map("\n".join),
    st.builds(
        lambda desc, search, replace: (
            f"DESCRIPTION: {desc}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"
        ),
        st.text(max_size=80),
        st.lists(st.sampled_from(LINES), min_size=1, max_size=4).map("\n".join),
        st.lists(FRAGMENT, max_size=6).map("\n".join),
    ),
)


@settings(max_examples=400, deadline=None)
@given(REPLY)
def test_any_reply_is_a_valid_candidate_or_a_reason(reply):
    try:
        source, description = apply_reply(TINY_TRAIN, reply)
    except EditError as exc:
        assert str(exc).strip(), "a rejection must say why"
        return
    assert "\n" not in description and description.strip()
    try:
        validate_candidate(source)
    except CandidateRejected as exc:
        assert str(exc).strip()
        return
    # Valid: it parses, defines the contract, and hashes (the near-duplicate check).
    assert normalized_hash(source)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_validator_never_crashes_on_any_source(source):
    try:
        validate_candidate(source)
    except CandidateRejected as exc:
        assert str(exc).strip()
