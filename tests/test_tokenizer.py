"""The tokenizer's byte lengths: read from raw token bytes, never by decoding and re-encoding."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from harness import tokenizer as tk

# Mixed scripts so that, with a tiny vocabulary, rare multi-byte characters stay split into
# tokens that are fragments of one UTF-8 character.
TRAIN_TEXTS = [
    "the model predicts the next token from the bytes of text",
    "bits per byte under a fixed budget — validation stays fixed",
    "你好世界，模型学习预测下一个词。",
    "日本語のテキストとひらがな",
    "emoji 😀 rockets 🚀 and stars ✨ ünïcode ✓",
] * 10
# Characters the tokenizer saw rarely or never: their bytes are spread over several tokens.
HARD_TEXT = "新しい 你好 😀🚀 hello 𝄞 Ωμέγα ✓ naïve"


@pytest.fixture(scope="module")
def tok():
    return tk.train_tokenizer(TRAIN_TEXTS, vocab_size=300)


def _special_ids(tok) -> set[int]:
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


def test_byte_alphabet_is_a_bijection_onto_all_256_bytes():
    table = tk._unicode_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    # Printable ASCII is its own symbol, the space is GPT-2's 'Ġ'.
    assert table["A"] == ord("A")
    assert table["Ġ"] == ord(" ")


def test_lengths_equal_raw_token_bytes_for_every_id(tok):
    lengths = tk.token_byte_lengths(tok)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    assert lengths.shape == (vocab_size,)
    specials = _special_ids(tok)
    assert specials == {tok.token_to_id(tk.BOS)}
    for i in range(vocab_size):
        if i in specials:
            assert lengths[i] == 0
        else:
            assert lengths[i] == len(tk.token_bytes(tok, i)) >= 1, i
    # Merges exist: some tokens are longer than one byte.
    assert lengths.max() > 1


def test_bos_is_id_zero_and_has_zero_bytes(tok):
    bos = tok.token_to_id(tk.BOS)
    assert bos == 0
    assert tk.token_byte_lengths(tok)[bos] == 0


def test_token_bytes_concatenate_to_the_exact_utf8_text(tok):
    text = HARD_TEXT + "".join(chr(c) for c in range(1, 256)) + "\x00end"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert b"".join(tk.token_bytes(tok, i) for i in ids) == text.encode("utf-8")


def test_fragments_of_a_character_sum_to_its_bytes_and_decoding_would_over_count(tok):
    ids = tok.encode(HARD_TEXT, add_special_tokens=False).ids
    raw = [tk.token_bytes(tok, i) for i in ids]

    def is_fragment(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    # The premise: some tokens are pieces of one multi-byte character.
    assert any(is_fragment(b) for b in raw)
    lengths = tk.token_byte_lengths(tok)
    assert int(sum(lengths[i] for i in ids)) == len(HARD_TEXT.encode("utf-8"))
    # Decoding a fragment alone gives U+FFFD (3 bytes): counting that way inflates the bytes
    # and so flatters bits per byte.
    decoded = sum(len(tok.decode([i]).encode("utf-8")) for i in ids)
    assert decoded > len(HARD_TEXT.encode("utf-8"))


def test_encode_documents_prefixes_bos_and_keeps_order_across_batches(tok):
    docs = ["alpha beta", "", HARD_TEXT, "gamma", "delta 😀", "the end"]
    arrays = list(tk.encode_documents(tok, docs, batch=4))
    assert len(arrays) == len(docs)
    bos = tok.token_to_id(tk.BOS)
    for doc, arr in zip(docs, arrays, strict=True):
        assert arr.dtype == np.uint16
        assert arr[0] == bos
        assert arr[1:].tolist() == tok.encode(doc, add_special_tokens=False).ids
    assert arrays[1].tolist() == [bos]


def test_literal_bos_text_in_a_document_is_ordinary_text(tok):
    # A document that merely mentions the special token's text must not get a BOS inside it:
    # the loader would treat it as a document start (a row could begin mid-document) and the
    # metric would count those 7 bytes of text as 0.
    doc = f"tokens like {tk.BOS} mark a start"
    (arr,) = tk.encode_documents(tok, [doc])
    bos = tok.token_to_id(tk.BOS)
    assert arr[0] == bos
    assert bos not in arr[1:].tolist()
    lengths = tk.token_byte_lengths(tok)
    assert int(lengths[arr].sum()) == len(doc.encode("utf-8"))


def test_saved_tokenizer_loads_with_the_same_lengths(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    again = tk.load(path)
    assert np.array_equal(tk.token_byte_lengths(again), tk.token_byte_lengths(tok))
    assert again.encode(HARD_TEXT).ids == tok.encode(HARD_TEXT).ids
