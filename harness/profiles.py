"""Profiles: the sizes and time limits that make a run comparable.

A profile fixes the vocabulary, the sequence length, the validation and test sizes and the
time budget. It is part of the data fingerprint, so results of different profiles never compete.
Torch-free: the orchestrator reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    vocab_size: int
    seq_len: int
    # Validation tokens kept from the validation text (fixed by the manifest).
    val_tokens: int
    # Hard wall of the train phase, from the phase's start (startup and compile count).
    train_wall_s: float
    # Time kept after the training deadline to save the weights.
    save_margin_s: float
    # train() must return within this long after the deadline, else status `overtime`.
    return_grace_s: float
    # Hard wall of the eval phase.
    eval_wall_s: float
    # Rows per forward pass during evaluation.
    eval_batch_size: int
    # Tokenizer training reads at most this many characters of train text.
    tokenizer_chars: int
    # Train tokens written at most (None: all the source holds).
    max_train_tokens: int | None = None
    # Tokens kept for the held-out test split, which no candidate and no decision sees
    # (None: as many as validation).
    test_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.test_tokens is None:
            object.__setattr__(self, "test_tokens", self.val_tokens)

    @property
    def deadline_s(self) -> float:
        """Seconds from the phase's start at which ``ctx.batches()`` stops yielding."""
        return self.train_wall_s - self.save_margin_s

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # The production shape: the user's 5-minute rule, as the original autoresearch.
    "gpu": Profile(
        name="gpu",
        vocab_size=8192,
        seq_len=2048,
        val_tokens=20 * 2**20,
        train_wall_s=300.0,
        save_margin_s=15.0,
        return_grace_s=5.0,
        eval_wall_s=120.0,
        eval_batch_size=32,
        tokenizer_chars=1_000_000_000,
    ),
    # Small enough that a 2-core laptop runs a dozen experiments in minutes.
    "cpu": Profile(
        name="cpu",
        vocab_size=1024,
        seq_len=128,
        val_tokens=32_768,
        train_wall_s=30.0,
        # A loaded 2-core laptop can take over a second per step: room to finish it.
        save_margin_s=5.0,
        return_grace_s=3.0,
        eval_wall_s=30.0,
        eval_batch_size=64,
        tokenizer_chars=4_000_000,
        max_train_tokens=8_000_000,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
