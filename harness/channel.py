"""Frames between the scorer and the model server: a 4-byte kind, a length, the payload.

Plain bytes only, never pickle: the scorer reads what an untrusted process wrote, and
unpickling it would run that process's code in the scorer.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

HEADER = struct.Struct(">4sQ")
# A FWD frame's payload starts with the batch's shape (rows, positions), then int64 ids.
SHAPE = struct.Struct(">II")
# The largest frame the scorer accepts (a CPU batch of float32 logits is far below it).
MAX_FRAME = 1 << 31


class ChannelClosed(EOFError):
    """The other side went away (exited, crashed or was killed)."""


def send(out: BinaryIO, kind: bytes, payload: bytes = b"") -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = src.read(left)
        if not chunk:
            raise ChannelClosed("the model server closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(src: BinaryIO, limit: int = MAX_FRAME) -> tuple[bytes, bytes]:
    kind, size = HEADER.unpack(_read_exact(src, HEADER.size))
    if size > limit:
        raise ValueError(f"frame of {size} bytes over the {limit}-byte limit")
    return kind, _read_exact(src, size)
