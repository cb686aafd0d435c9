"""The LLM proposer: any OpenAI-compatible chat endpoint suggests one edit to train.py.

The `openai` client is used for every provider (OpenAI, vLLM, Ollama, llama.cpp server,
OpenRouter...) because they all speak its protocol, and the client already does HTTP
retries with backoff and honours Retry-After; nothing here re-implements that.

What this module adds is the conversation around a bad reply: an edit that does not
apply or a candidate that fails validation goes back to the model with the reason, a
bounded number of times. Whatever happens, `propose` returns a Proposal (possibly a
rejected one) and never raises for the LLM's sake: the research loop must outlive any
outage or misbehaving model. A failure of the endpoint itself (after the client's own
retries) is marked with its kind (`failure_kind`), so that the loop can back off and stop
instead of writing a row per failed call; `preflight` checks endpoint, key and model once
before any GPU time is spent.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import openai

from orchestrator.edits import EditError, apply_reply, extract_description, extract_why
from orchestrator.proposers.base import LLMUnavailable, Proposal, ProposalRequest
from orchestrator.validate import CandidateRejected, validate_candidate

__all__ = ["LLMProposer", "LLMUnavailable", "build_user_message", "failure_kind"]

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_MAX_ERROR_CHARS = 200

INSTRUCTION = (
    "Propose one change to train.py that you expect to lower val_bpb within the time budget. "
    "Reply with a line `DESCRIPTION: <what changes>`, a line `WHY: <your hypothesis, one "
    "line>`, then one or more "
    "SEARCH/REPLACE blocks:\n"
    "<<<<<<< SEARCH\nexact existing lines of train.py\n=======\nreplacement lines\n"
    ">>>>>>> REPLACE\n"
    "Copy SEARCH lines exactly from the train.py above; each must match exactly one place."
)


PREFLIGHT = "Reply with the single word OK."


def failure_kind(error: Exception) -> str:
    """What kind of failure an LLM call ended with, after the client's own retries."""
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(error, openai.NotFoundError):
        return "model"
    if isinstance(error, openai.RateLimitError):
        return "quota"
    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return "connection"
    if isinstance(error, openai.APIStatusError):
        return "server" if error.status_code >= 500 else "request"
    return "server"  # a 200 that is no API's reply


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
        program_path: Path | None = None,
    ) -> None:
        # Local servers take no key, but the client insists on one.
        if api_key is None and base_url is not None:
            api_key = "not-needed"
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
        self.model = model
        self.temperature = temperature
        self._set_prompt(system_prompt)
        self.format_retries = format_retries
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.max_bytes = max_bytes
        # program.md, read again when it changes (a human steering a live run)
        self.program_path = program_path
        self._program_stat: tuple[int, int] | None = None

    def preflight(self) -> None:
        """One tiny request (endpoint, key, model), with one retry: LLMUnavailable if it fails."""
        try:
            self._client.with_options(max_retries=1).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": PREFLIGHT}]
            )
        except (openai.OpenAIError, ValueError) as e:
            where = self._client.base_url
            raise LLMUnavailable(
                f"LLM preflight failed ({failure_kind(e)}, model {self.model} at {where}): "
                + (
                    _short_error(e)
                    if isinstance(e, openai.OpenAIError)
                    else f"unreadable reply ({e})"
                )
            ) from None

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def _set_prompt(self, text: str) -> None:
        """The system prompt and its sha256 (rows and transcripts name it by that)."""
        self.system_prompt = text
        self.system_sha256 = hashlib.sha256(text.encode()).hexdigest()

    def _reread_program(self) -> None:
        if self.program_path is None:
            return
        try:
            st = self.program_path.stat()
            if (st.st_mtime_ns, st.st_size) != self._program_stat:
                self._set_prompt(self.program_path.read_text())
                self._program_stat = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass  # gone or unreadable for a moment: the last one read stays

    def propose(self, request: ProposalRequest) -> Proposal:
        self._reread_program()
        program = self.system_sha256[:12]
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
                reason = f"llm error: {_short_error(e)}"
                return self._failed(e, reason, description, usage, messages)
            except ValueError as e:  # a 200 whose body is not JSON (cut off, or not an API)
                reason = f"llm error: unreadable reply ({e})"
                return self._failed(e, reason, description, usage, messages)
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
            messages.append({"role": "assistant", "content": reply})
            return Proposal(
                source=source,
                description=description,
                proposer=self.name,
                usage=self._priced(usage),
                transcript=self._transcript_of(messages),
                why=extract_why(reply),
                program=program,
            )
        rejected = self._rejected(reason, description, usage, messages)
        rejected.program = program
        return rejected

    def _rejected(
        self, reason: str, description: str, usage: dict[str, Any], messages: list[dict]
    ) -> Proposal:
        return Proposal(
            source="",
            description=description or "(no valid edit)",
            proposer=self.name,
            usage=self._priced(usage),
            rejected=reason,
            transcript=self._transcript_of(messages),
        )

    def _transcript_of(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """What was sent and answered, the system prompt by its hash (it is the same for
        every proposal of a run: the run folder keeps it once)."""
        return {
            "model": self.model,
            "system_sha256": self.system_sha256,
            "system": self.system_prompt,
            "messages": [dict(m) for m in messages[1:]],
        }

    def _failed(
        self,
        error: Exception,
        reason: str,
        description: str,
        usage: dict[str, Any],
        messages: list[dict],
    ) -> Proposal:
        proposal = self._rejected(reason, description, usage, messages)
        proposal.failure = failure_kind(error)
        return proposal

    def _priced(self, usage: dict[str, Any]) -> dict[str, Any]:
        cost = (
            usage["prompt_tokens"] * self.price_in_per_mtok
            + usage["completion_tokens"] * self.price_out_per_mtok
        ) / 1e6
        return {**usage, "cost_usd": cost}


def build_user_message(request: ProposalRequest) -> str:
    """The user turn: everything the model needs to pick its next experiment."""
    parts = ["The current best train.py:", _fenced(request.source, "python")]
    if request.journal.strip():
        parts += [
            "The journal of this run (every experiment; lower val_bpb is better):",
            _fenced(request.journal),
        ]
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
    if request.idea.strip():
        parts.append(
            "A human watching this run asks you to try this idea in this experiment "
            f"(one experiment: make it a fair test of the idea):\n{request.idea.strip()}"
        )
    if request.plateau:
        parts.append(
            f"No change has been kept in the last {request.plateau} experiments: small "
            "tweaks of the same knobs are not moving val_bpb. Try a larger change, or a "
            "different kind (architecture, optimizer, schedule, data order, batch size)."
        )
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
