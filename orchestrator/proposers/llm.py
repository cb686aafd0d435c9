"""The LLM proposer: any OpenAI-compatible chat endpoint suggests one edit to train.py.

The `openai` client is used for every provider (OpenAI, vLLM, Ollama, llama.cpp server,
OpenRouter...) because they all speak its protocol, and the client already does HTTP
retries with backoff and honours Retry-After; nothing here re-implements that.

What this module adds is the conversation around a bad reply: an edit that does not
apply or a candidate that fails validation goes back to the model with the reason, a
bounded number of times. Whatever happens, `propose` returns a Proposal (possibly a
rejected one) and never raises for the LLM's sake: the research loop must outlive any
outage or misbehaving model.
"""

from __future__ import annotations

import re
from typing import Any

import openai

from orchestrator.edits import EditError, apply_reply, extract_description
from orchestrator.proposers.base import Proposal, ProposalRequest
from orchestrator.validate import CandidateRejected, validate_candidate

__all__ = ["LLMProposer", "build_user_message"]

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_MAX_ERROR_CHARS = 200

INSTRUCTION = (
    "Propose one change to train.py that you expect to lower val_bpb within the time budget. "
    "Reply with a line `DESCRIPTION: <what changes and why>` followed by one or more "
    "SEARCH/REPLACE blocks:\n"
    "<<<<<<< SEARCH\nexact existing lines of train.py\n=======\nreplacement lines\n"
    ">>>>>>> REPLACE\n"
    "Copy SEARCH lines exactly from the train.py above; each must match exactly one place."
)


class LLMProposer:
    """Asks a chat model for one SEARCH/REPLACE edit and returns a validated candidate."""

    name = "llm"

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        temperature: float,
        system_prompt: str,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        format_retries: int = 3,
        price_in_per_mtok: float = 0.0,
        price_out_per_mtok: float = 0.0,
        max_bytes: int = 64_000,
    ) -> None:
        # Local servers take no key, but the client insists on one.
        if api_key is None and base_url is not None:
            api_key = "not-needed"
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
        self.model = model
        self.temperature = temperature
        self.system_prompt = system_prompt
        self.format_retries = format_retries
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.max_bytes = max_bytes

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def propose(self, request: ProposalRequest) -> Proposal:
        messages: list[dict[str, str]] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": build_user_message(request)},
        ]
        usage: dict[str, Any] = {
            "model": self.model,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "attempts": 0,
        }
        reason = ""
        description = ""
        for _ in range(1 + self.format_retries):
            usage["attempts"] += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.temperature,
                    seed=request.seed,
                )
            except openai.OpenAIError as e:
                return self._rejected(f"llm error: {_short_error(e)}", description, usage)
            except ValueError as e:  # a 200 whose body is not JSON (cut off, or not an API)
                return self._rejected(f"llm error: unreadable reply ({e})", description, usage)
            _add_usage(usage, response)
            reply = _reply_text(response)
            try:
                if not reply:
                    raise EditError("the reply was empty")
                source, description = apply_reply(request.source, _THINK.sub("", reply))
                validate_candidate(source, max_bytes=self.max_bytes)
            except (EditError, CandidateRejected) as e:
                reason = str(e)
                description = extract_description(reply or "") or description
                messages.append({"role": "assistant", "content": reply or "(empty reply)"})
                messages.append({"role": "user", "content": _retry_message(reason)})
                continue
            return Proposal(
                source=source,
                description=description,
                proposer=self.name,
                usage=self._priced(usage),
            )
        return self._rejected(reason, description, usage)

    def _rejected(self, reason: str, description: str, usage: dict[str, Any]) -> Proposal:
        return Proposal(
            source="",
            description=description or "(no valid edit)",
            proposer=self.name,
            usage=self._priced(usage),
            rejected=reason,
        )

    def _priced(self, usage: dict[str, Any]) -> dict[str, Any]:
        cost = (
            usage["prompt_tokens"] * self.price_in_per_mtok
            + usage["completion_tokens"] * self.price_out_per_mtok
        ) / 1e6
        return {**usage, "cost_usd": cost}


def build_user_message(request: ProposalRequest) -> str:
    """The user turn: everything the model needs to pick its next experiment."""
    parts = ["The current best train.py:", _fenced(request.source, "python")]
    if request.results_tail.strip():
        parts += ["Recent results (results.tsv, newest last):", _fenced(request.results_tail)]
    else:
        parts.append("No experiments have finished yet.")
    if request.failure_tail.strip():
        parts += ["The last failed experiment's log tail:", _fenced(request.failure_tail)]
    if request.combine.strip():
        parts += [
            "This change lowered val_bpb on an older train.py but does not apply to the "
            "current one. Combine it with the current best train.py:",
            _fenced(request.combine, "diff"),
        ]
    parts.append(INSTRUCTION)
    return "\n\n".join(parts)


def _fenced(text: str, language: str = "") -> str:
    """Fence ``text`` with more backticks than it contains, so it cannot close the fence."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _retry_message(reason: str) -> str:
    return (
        f"Your reply could not be applied: {reason}. Reply again with a DESCRIPTION line and "
        "SEARCH/REPLACE blocks against the train.py shown above (it is unchanged); "
        "copy SEARCH lines exactly."
    )


def _reply_text(response: Any) -> str | None:
    """The first choice's content, or None: servers that are only "compatible" vary."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else None


def _add_usage(usage: dict[str, Any], response: Any) -> None:
    reported = getattr(response, "usage", None)
    for key in ("prompt_tokens", "completion_tokens"):
        usage[key] += int(getattr(reported, key, 0) or 0)


def _short_error(error: openai.OpenAIError) -> str:
    if isinstance(error, openai.APIStatusError):
        body = error.body  # the client already unwrapped {"error": {...}}
        if isinstance(body, dict):
            body = body.get("message", body)
        text = f"HTTP {error.status_code}: {body}"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:_MAX_ERROR_CHARS]
