"""Cheap static checks on a candidate train.py before it costs a GPU slot.

A candidate that cannot even be imported, or that lacks the functions the harness calls,
would only fail minutes later on a worker; catching it here gives a precise reason (which
goes back to the LLM) and keeps the queue for candidates that can actually score.
"""

from __future__ import annotations

import ast

__all__ = ["CandidateRejected", "validate_candidate"]

# name -> the positional arguments the harness passes (see the train.py contract).
_CONTRACT = {"build_model": ("ctx",), "train": ("model", "ctx")}


class CandidateRejected(ValueError):
    """A candidate that must not be queued; the message is a short human reason."""


def validate_candidate(source: str, *, max_bytes: int = 64_000) -> None:
    """Raise CandidateRejected unless ``source`` is a plausible train.py."""
    if "\x00" in source:
        raise CandidateRejected("train.py contains a null byte")
    size = len(source.encode("utf-8"))
    if size > max_bytes:
        raise CandidateRejected(f"train.py is {size} bytes, over the {max_bytes}-byte limit")
    try:
        tree = ast.parse(source, filename="train.py")
    except SyntaxError as e:
        raise CandidateRejected(f"syntax error at line {e.lineno}: {e.msg}") from None
    # The last top-level definition wins at import time, so that is the one to check.
    defs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name, params in _CONTRACT.items():
        signature = f"def {name}({', '.join(params)})"
        node = defs.get(name)
        if node is None:
            raise CandidateRejected(f"train.py has no top-level {signature}")
        if not _callable_with(node.args, len(params)):
            raise CandidateRejected(f"{name} must be callable as {signature}")


def _callable_with(args: ast.arguments, n: int) -> bool:
    """Whether a call with exactly ``n`` positional arguments binds."""
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    kw_required = any(default is None for default in args.kw_defaults)
    return (positional >= n or args.vararg is not None) and required <= n and not kw_required


def normalized_hash(source: str) -> str:
    """A hash of what the code does, not how it is laid out: comments and formatting are
    dropped (the AST), so a candidate differing only in those is a duplicate."""
    import ast
    import hashlib

    return hashlib.sha256(ast.dump(ast.parse(source)).encode()).hexdigest()[:16]
