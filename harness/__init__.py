"""Fixed code the candidate may not change: data, tokenizer, loader, budget, evaluation.

``from harness import Context`` is all a train.py needs. The import is lazy so that
torch-free callers (the orchestrator reading profiles or manifests) never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.context import Context

__all__ = ["Context"]


def __getattr__(name: str) -> Any:
    if name == "Context":
        from harness.context import Context

        return Context
    raise AttributeError(name)
