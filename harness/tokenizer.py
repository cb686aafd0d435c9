"""Byte-level BPE with a BOS special token, trained with `tokenizers`.

The metric needs each token's length in UTF-8 bytes. It is read from the token's raw bytes
in the vocabulary (byte-level symbols mapped back through GPT-2's byte alphabet), never by
decoding and re-encoding: a token that is a fragment of a multi-byte character would
otherwise count as a 3-byte replacement character and flatter the score.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<|bos|>"


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode, the alphabet of the ByteLevel pre-tokenizer."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    codepoints = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            codepoints.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, codepoints, strict=True)}


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE whose id of BOS is fixed by being the first special token.

    ``show_progress`` turns on the `tokenizers` library's own bars. Its Rust side draws them
    on stderr but ends each stage with a newline on stdout, so the caller turns them on only
    when both are a terminal (see harness.bars.both_on_terminal). Texts that know their
    length (a list) give the first of those bars a total.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    length = len(texts) if isinstance(texts, Sized) else None
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id from its raw bytes; special tokens are 0."""
    table = _unicode_to_byte()
    vocab = tok.get_vocab(with_added_tokens=True)
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int32)
    for piece, idx in vocab.items():
        lengths[idx] = 0 if piece in specials else sum(1 for ch in piece if ch in table)
    return lengths


def token_bytes(tok: Tokenizer, idx: int) -> bytes:
    """The raw bytes of one token (for tests and debugging)."""
    table = _unicode_to_byte()
    return bytes(table[ch] for ch in tok.id_to_token(idx))


def encode_documents(tok: Tokenizer, docs: Iterable[str], batch: int = 256) -> Iterator[np.ndarray]:
    """Yield uint16 token arrays, each a document prefixed with BOS (the packing anchor)."""
    bos = tok.token_to_id(BOS)
    # Literal "<|bos|>" in a document is text, not a document boundary.
    tok.encode_special_tokens = True
    chunk: list[str] = []

    def flush() -> Iterator[np.ndarray]:
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            yield np.asarray([bos, *enc.ids], dtype=np.uint16)
        chunk.clear()

    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= batch:
            yield from flush()
    if chunk:
        yield from flush()


def load(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))
