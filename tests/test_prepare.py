"""prepare: the manifest, its fingerprint, the shards and the train/validation/test split."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import manifest as mf
from harness import prepare as pp
from harness import tokenizer as tk
from harness.profiles import get_profile

CPU = get_profile("cpu")


def _doc_bytes(path: Path, tok, bos: int) -> list[bytes]:
    """The raw bytes of a shard's documents (split at BOS)."""
    tokens = np.fromfile(path, dtype=np.uint16).tolist()
    assert tokens and tokens[0] == bos
    starts = [i for i, t in enumerate(tokens) if t == bos] + [len(tokens)]
    return [
        b"".join(tk.token_bytes(tok, t) for t in tokens[a + 1 : b])
        for a, b in itertools.pairwise(starts)
    ]


def _docs_of(path: Path, tok, bos: int) -> list[str]:
    """Decode a shard of whole documents back into their text."""
    return [b.decode("utf-8") for b in _doc_bytes(path, tok, bos)]


def _split(corpus: Path) -> tuple[list[str], list[str]]:
    """The corpus's train and validation documents by the prepare module's rule on paths."""
    train, val = [], []
    for rel, doc in pp.local_documents(corpus):
        if pp._is_val(rel):
            val.append(doc)
        elif not pp._is_test(rel):
            train.append(doc)
    return train, val


def _test_docs(corpus: Path) -> list[str]:
    return [doc for rel, doc in pp.local_documents(corpus) if pp._is_test(rel)]


@pytest.fixture(scope="module")
def manifest(data_dir):
    return mf.load_manifest(data_dir)


def test_manifest_has_fingerprint_tokenizer_train_and_val(data_dir, manifest):
    assert len(manifest["fingerprint"]) == 16
    assert manifest["fingerprint"] == mf.fingerprint(manifest)
    assert manifest["version"] == mf.MANIFEST_VERSION
    assert manifest["profile"] == CPU.to_dict()
    tok_info = manifest["tokenizer"]
    assert tok_info["bos_id"] == 0
    tok = tk.load(data_dir / tok_info["file"])
    assert tok_info["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    assert tok_info["vocab_size"] <= CPU.vocab_size
    lengths = np.load(data_dir / tok_info["token_bytes"])
    assert np.array_equal(lengths, tk.token_byte_lengths(tok))
    assert manifest["train"] and manifest["val"]["tokens"] > 0 and manifest["test"]["tokens"] > 0
    for shard in [*manifest["train"], manifest["val"], manifest["test"]]:
        path = data_dir / shard["file"]
        assert path.stat().st_size == 2 * shard["tokens"]
        assert np.fromfile(path, dtype=np.uint16)[0] == tok_info["bos_id"]
    assert manifest["source"]["kind"] == "local"


def test_every_checksum_matches_its_file(data_dir, manifest):
    files = [manifest["tokenizer"], *manifest["train"], manifest["val"], manifest["test"]]
    for rec in files:
        assert rec["sha256"] == mf.sha256_file(data_dir / rec["file"]), rec["file"]


def test_split_follows_the_path_rule_and_no_validation_document_is_trained_on(
    corpus, data_dir, manifest
):
    train_docs, val_docs = _split(corpus)
    assert train_docs and val_docs
    tok = tk.load(data_dir / manifest["tokenizer"]["file"])
    bos = manifest["tokenizer"]["bos_id"]
    in_train = [d for s in manifest["train"] for d in _docs_of(data_dir / s["file"], tok, bos)]
    in_val = _docs_of(data_dir / manifest["val"]["file"], tok, bos)
    # The tiny corpus fits in the budgets: every document is there, whole and in order.
    assert in_train == train_docs
    assert in_val == val_docs
    assert not set(in_train) & set(val_docs)
    rels = {rel for rel, _ in pp.local_documents(corpus)}
    assert any(pp._is_val(r) for r in rels) and not all(pp._is_val(r) for r in rels)


def test_same_corpus_gives_the_same_fingerprint(tmp_path, corpus, manifest):
    # Another folder, another name: the fingerprint is about the data, not where it lies.
    moved = shutil.copytree(corpus, tmp_path / "elsewhere")
    again = pp.prepare(tmp_path / "out", CPU, source="local", local_dir=moved)
    assert again["fingerprint"] == manifest["fingerprint"]
    assert again["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_changing_the_corpus_changes_the_fingerprint(tmp_path, corpus, manifest, split):
    changed_dir = shutil.copytree(corpus, tmp_path / "changed")
    bucket = {"val": pp._is_val, "test": pp._is_test}
    rel = next(
        r
        for r, _ in pp.local_documents(changed_dir)
        if bucket.get(split, lambda r: not pp._is_val(r) and not pp._is_test(r))(r)
    )
    path = changed_dir / rel
    path.write_text(path.read_text(encoding="utf-8") + " one more word", encoding="utf-8")
    changed = pp.prepare(tmp_path / "out", CPU, source="local", local_dir=changed_dir)
    assert changed["fingerprint"] != manifest["fingerprint"]
    # The tokenizer is trained on train text only: a held-out edit leaves it and train alone.
    assert (changed["tokenizer"] != manifest["tokenizer"]) == (split == "train")
    assert (changed["train"] != manifest["train"]) == (split == "train")
    assert (changed["val"] != manifest["val"]) == (split != "test")
    assert (changed["test"] != manifest["test"]) == (split != "val")


def test_fingerprint_covers_every_shard_the_tokenizer_and_the_profile(manifest):
    base = mf.fingerprint(manifest)
    edits = [
        lambda m: m["tokenizer"].update(sha256="0" * 64),
        lambda m: m["train"][0].update(sha256="0" * 64),
        lambda m: m["train"].append({"file": "x", "tokens": 1, "sha256": "0" * 64}),
        lambda m: m["val"].update(sha256="0" * 64),
        lambda m: m["test"].update(sha256="0" * 64),
        lambda m: m["profile"].update(test_tokens=1),
        lambda m: m["profile"].update(val_tokens=1),
    ]
    for edit in edits:
        m = copy.deepcopy(manifest)
        edit(m)
        assert mf.fingerprint(m) != base
    # Where the source lay does not decide a score.
    m = copy.deepcopy(manifest)
    m["source"] = {"kind": "local", "folder": "other"}
    assert mf.fingerprint(m) == base


def test_changing_the_profile_changes_the_fingerprint(tmp_path, corpus, manifest):
    profile = dataclasses.replace(CPU, seq_len=64)
    other = pp.prepare(tmp_path / "out", profile, source="local", local_dir=corpus)
    assert other["train"] == manifest["train"]
    assert other["fingerprint"] != manifest["fingerprint"]


def test_preparing_again_replaces_the_old_folder(tmp_path, corpus):
    out = tmp_path / "out"
    small = dataclasses.replace(CPU, max_train_tokens=2000)
    first = pp.prepare(out, small, source="local", local_dir=corpus)
    (out / mf.TRAIN_DIR / "train_00099.bin").write_bytes(b"stale")
    m = pp.prepare(out, CPU, source="local", local_dir=corpus)
    assert m["fingerprint"] != first["fingerprint"]
    assert sorted(p.name for p in (out / mf.TRAIN_DIR).iterdir()) == [
        Path(s["file"]).name for s in m["train"]
    ]
    assert mf.load_manifest(out) == m


def test_a_small_train_budget_keeps_the_whole_validation_split(tmp_path, corpus):
    # Cutting train short must not cut validation: its documents come from every file.
    _, val_docs = _split(corpus)
    small = dataclasses.replace(CPU, max_train_tokens=300)
    m = pp.prepare(tmp_path / "out", small, source="local", local_dir=corpus)
    tok = tk.load(tmp_path / "out" / m["tokenizer"]["file"])
    in_val = _docs_of(tmp_path / "out" / m["val"]["file"], tok, m["tokenizer"]["bos_id"])
    assert in_val == val_docs
    assert sum(s["tokens"] for s in m["train"]) == 300


def test_val_is_cropped_to_the_profile_val_tokens(tmp_path, corpus, data_dir, manifest):
    full = np.fromfile(data_dir / manifest["val"]["file"], dtype=np.uint16)
    cap = len(full) // 2
    profile = dataclasses.replace(CPU, val_tokens=cap)
    m = pp.prepare(tmp_path / "out", profile, source="local", local_dir=corpus)
    val = np.fromfile(tmp_path / "out" / m["val"]["file"], dtype=np.uint16)
    assert m["val"]["tokens"] == len(val) == cap <= profile.val_tokens
    assert np.array_equal(val, full[:cap])
    assert len(full) <= CPU.val_tokens


def test_train_is_cropped_to_max_train_tokens(tmp_path, corpus):
    train_docs, _ = _split(corpus)
    profile = dataclasses.replace(CPU, max_train_tokens=1000)
    out = tmp_path / "out"
    m = pp.prepare(out, profile, source="local", local_dir=corpus)
    assert sum(s["tokens"] for s in m["train"]) == 1000
    tok = tk.load(out / m["tokenizer"]["file"])
    docs = [d for s in m["train"] for d in _doc_bytes(out / s["file"], tok, 0)]
    want = [d.encode("utf-8") for d in train_docs]
    # The first documents in order, whole, then the one that crossed the budget, cropped.
    assert len(docs) >= 2
    assert docs[:-1] == want[: len(docs) - 1]
    assert want[len(docs) - 1].startswith(docs[-1])


def test_train_is_cut_into_shards_that_each_start_with_bos(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(pp, "TRAIN_SHARD_TOKENS", 1500)
    m = pp.prepare(tmp_path / "out", CPU, source="local", local_dir=corpus)
    assert len(m["train"]) >= 3
    names = [Path(s["file"]).name for s in m["train"]]
    assert names == [f"train_{i:05d}.bin" for i in range(len(names))]
    for s in m["train"]:
        arr = np.fromfile(tmp_path / "out" / s["file"], dtype=np.uint16)
        assert len(arr) == s["tokens"]
        assert 0 < len(arr) <= 1500
        assert arr[0] == m["tokenizer"]["bos_id"]
    assert all(s["tokens"] == 1500 for s in m["train"][:-1])
    assert sorted(p.name for p in (tmp_path / "out" / mf.TRAIN_DIR).iterdir()) == names


def test_emit_reports_the_steps(tmp_path, corpus):
    events = []
    m = pp.prepare(
        tmp_path / "out",
        CPU,
        source="local",
        local_dir=corpus,
        emit=lambda event, **kw: events.append((event, kw)),
    )
    names = [e for e, _ in events]
    assert names[0] == "prepare.read"
    assert names[-1] == "prepare.done"
    assert {"prepare.tokenizer", "prepare.tokenize", "prepare.shard"} <= set(names)
    assert events[-1][1]["fingerprint"] == m["fingerprint"]
    assert events[-1][1]["val_tokens"] == m["val"]["tokens"]
    assert events[-1][1]["test_tokens"] == m["test"]["tokens"]
    assert [kw["split"] for e, kw in events if e == "prepare.tokenize"] == ["val", "test"]


def test_load_manifest_on_an_empty_folder_says_not_prepared(tmp_path):
    with pytest.raises(mf.DataNotPrepared, match="prepare"):
        mf.load_manifest(tmp_path)
    assert issubclass(mf.DataNotPrepared, FileNotFoundError)


def test_bad_sources_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pp.prepare(tmp_path / "out", CPU, source="local", local_dir=tmp_path / "missing")
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.txt").write_text("only one file\n")
    with pytest.raises(ValueError, match="too few text files"):
        pp.prepare(tmp_path / "out", CPU, source="local", local_dir=few)
    with pytest.raises(ValueError, match="unknown source"):
        pp.prepare(tmp_path / "out", CPU, source="ftp", local_dir=few)


def test_local_documents_skip_caches_and_undecodable_files(tmp_path):
    folder = tmp_path / "src"
    (folder / "pkg" / "__pycache__").mkdir(parents=True)
    (folder / "pkg" / "a.py").write_text("x = 1\n")
    (folder / "pkg" / "__pycache__" / "a.txt").write_text("cached\n")
    (folder / "notes.md").write_text("# notes\n")
    (folder / "latin1.txt").write_bytes(b"caf\xe9\n")
    (folder / "image.png").write_bytes(b"\x89PNG")
    got = list(pp.local_documents(folder))
    assert got == [("notes.md", "# notes\n"), ("pkg/a.py", "x = 1\n")]


def test_local_documents_skip_dirs_only_apply_inside_the_folder(tmp_path):
    # A source folder that itself lies under a site-packages folder is still read.
    folder = tmp_path / "site-packages" / "somepkg"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("hello\n")
    assert list(pp.local_documents(folder)) == [("README.md", "hello\n")]


def test_split_document_respects_max_chars_and_loses_nothing():
    paras = [("word " * n).strip() for n in (3, 40, 7, 1, 90, 12, 12, 5, 60, 2)]
    text = "\n\n".join(paras)
    for max_chars in (50, 120, 300, 1000, 10_000):
        pieces = list(pp.split_document(text, max_chars))
        assert "\n\n".join(pieces) == text
        for piece in pieces:
            assert len(piece) <= max_chars or "\n\n" not in piece
        # Greedy: a piece and the next paragraph together would not have fit.
        for a, b in itertools.pairwise(pieces):
            assert len(a) + 2 + len(b.split("\n\n")[0]) > max_chars
    assert list(pp.split_document(text, 10_000)) == [text]
    assert len(list(pp.split_document(text, 120))) > 3


def test_split_document_bounds_hold_for_random_paragraphs():
    rng = random.Random(0)
    for _ in range(300):
        paras = ["y" * rng.randint(0, 40) for _ in range(rng.randint(1, 30))]
        text = "\n\n".join(paras)
        max_chars = rng.randint(5, 120)
        pieces = list(pp.split_document(text, max_chars))
        # Nothing is lost but trailing blank paragraphs.
        joined = "\n\n".join(pieces)
        assert text.startswith(joined) and not text[len(joined) :].strip()
        for piece in pieces:
            # Only a piece of one paragraph may exceed the limit (separators count).
            assert len(piece) <= max_chars or "\n\n" not in piece, (piece, max_chars)


def test_val_and_test_shares_are_each_about_one_in_local_val_every():
    rels = [f"pkg{i // 50}/module_{i}.py" for i in range(4000)]
    for held_out in (pp._is_val, pp._is_test):
        share = sum(held_out(r) for r in rels) / len(rels)
        assert abs(share - 1 / pp.LOCAL_VAL_EVERY) < 0.015
    assert not any(pp._is_val(r) and pp._is_test(r) for r in rels)


def test_prepare_sets_aside_a_test_split_no_other_split_holds(corpus, data_dir, manifest):
    """The next held-out bucket of files, whole and in order, in test/test.bin: validation
    keeps its own files, and no test document is trained on or validated on."""
    test = manifest["test"]
    assert test["file"] == f"{mf.TEST_DIR}/test.bin"
    assert sorted(p.name for p in (data_dir / mf.TEST_DIR).iterdir()) == ["test.bin"]
    assert test["sha256"] == mf.sha256_file(data_dir / test["file"])
    assert test["tokens"] == (data_dir / test["file"]).stat().st_size // 2 > CPU.seq_len
    tok = tk.load(data_dir / manifest["tokenizer"]["file"])
    bos = manifest["tokenizer"]["bos_id"]
    in_test = _docs_of(data_dir / test["file"], tok, bos)
    assert in_test == _test_docs(corpus) != []
    in_train = [d for s in manifest["train"] for d in _docs_of(data_dir / s["file"], tok, bos)]
    in_val = _docs_of(data_dir / manifest["val"]["file"], tok, bos)
    assert not set(in_test) & (set(in_train) | set(in_val))
    assert in_val == _split(corpus)[1]  # validation: the same files as without a test split
    assert manifest["profile"]["test_tokens"] == CPU.test_tokens == CPU.val_tokens
    other = {**manifest, "test": {**test, "sha256": "0" * 64}}
    assert mf.fingerprint(other) != manifest["fingerprint"]


def test_test_is_cropped_to_the_profile_test_tokens(tmp_path, corpus, data_dir, manifest):
    full = np.fromfile(data_dir / manifest["test"]["file"], dtype=np.uint16)
    profile = dataclasses.replace(CPU, test_tokens=len(full) // 2)
    m = pp.prepare(tmp_path / "out", profile, source="local", local_dir=corpus)
    test = np.fromfile(tmp_path / "out" / m["test"]["file"], dtype=np.uint16)
    assert m["test"]["tokens"] == len(test) == len(full) // 2
    assert np.array_equal(test, full[: len(full) // 2])
    assert m["val"] == manifest["val"]  # validation does not move with the test size


def test_a_manifest_from_before_test_splits_keeps_its_fingerprint(data_dir, manifest):
    """Data prepared before this layout still checks and scores; only the test split is
    refused, in one line that says to prepare again."""
    old = {k: v for k, v in manifest.items() if k != "test"}
    old["profile"] = {k: v for k, v in manifest["profile"].items() if k != "test_tokens"}
    material = {
        "profile": old["profile"],
        "tokenizer": old["tokenizer"]["sha256"],
        "train": [s["sha256"] for s in old["train"]],
        "val": old["val"]["sha256"],
        "token_bytes": old["tokenizer"]["token_bytes_sha256"],
    }
    blob = json.dumps(material, sort_keys=True).encode()
    old["fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]  # as version 2 computed it
    assert mf.fingerprint(old) == old["fingerprint"]
    mf.verify_data(data_dir, old)
    with pytest.raises(mf.NoTestSplit, match=r"without a test split: run `autoresearch prepare`"):
        mf.verify_data(data_dir, old, test=True)
    mf.verify_data(data_dir, manifest, test=True)


def test_split_document_keeps_a_long_paragraph_whole():
    long = "x" * 500
    pieces = list(pp.split_document(f"a\n\n{long}\n\nb", 100))
    assert pieces == ["a", long, "b"]


def test_split_document_drops_blank_text():
    assert list(pp.split_document("")) == []
    assert list(pp.split_document("\n\n  \n\n")) == []
