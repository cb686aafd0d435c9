"""Prepare data once per host: read text, train the tokenizer, write token shards + manifest.

Two sources. `local`: a folder of text files (offline; the demo reads the standard
library's own source, which every machine with Python has, so its numbers repeat).
`http`: parquet shards fetched by URL pattern (see harness.download). Shards are flat uint16
token arrays in which every document starts with BOS, the anchor the loader packs on.

Three splits: train, validation (what decisions read) and a held-out test split that no
candidate and no decision sees (only a final re-measure and `verify --test` score it). The
test split is set aside so that validation stays as it was, in size and documents:
- local: the next held-out bucket of files (validation holds the files whose path hashes to
  bucket 0 of LOCAL_VAL_EVERY, test those of bucket 1). Dividing validation's own files
  would halve it on a small corpus (a user's folder of a few hundred files holds less than
  one profile's validation crop); the next bucket costs train 1 file in 20 instead.
- http: the same validation shard, divided: validation keeps its first val_tokens tokens
  exactly as before, and the test split takes the documents after them (a climbmix shard
  holds several times a profile's validation crop), so nothing more is downloaded.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from harness import bars
from harness import manifest as mf
from harness import tokenizer as tk
from harness.profiles import Profile

LOCAL_PATTERNS = ("*.py", "*.txt", "*.md", "*.rst")
# Long files are split into documents at blank lines so a row of seq_len tokens sees more
# than file headers.
MAX_DOC_CHARS = 2000
# Share of local documents (by a hash of their path) held out for validation, and as many
# again, the next bucket, for the test split.
LOCAL_VAL_EVERY = 20
LOCAL_TEST_BUCKET = 1
TRAIN_SHARD_TOKENS = 100_000_000
# Bytes-level BPE on text averages well under this many characters per token.
CHARS_PER_TOKEN_MAX = 8
# Installed packages are not part of the demo corpus: they differ between machines.
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}

Emit = Callable[..., None]


def default_local_dir() -> Path:
    """The demo corpus: this Python's standard library source."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_document(text: str, max_chars: int = MAX_DOC_CHARS) -> Iterator[str]:
    """Cut text at blank lines into pieces of at most about max_chars (a paragraph may exceed)."""
    piece: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if piece and size + len(para) > max_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(para)
        size += len(para) + 2
    if piece and (joined := "\n\n".join(piece)).strip():
        yield joined


def local_documents(
    folder: Path, patterns: Sequence[str] = LOCAL_PATTERNS
) -> Iterator[tuple[str, str]]:
    """(relative path, document) pairs in a stable order, unreadable files skipped."""
    files = sorted(
        {
            p
            for pat in patterns
            for p in folder.rglob(pat)
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(folder).parts)
        }
    )
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(folder).as_posix()
        for doc in split_document(text):
            yield rel, doc


def _bucket(rel: str) -> int:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % LOCAL_VAL_EVERY


def _is_val(rel: str) -> bool:
    return _bucket(rel) == 0


def _is_test(rel: str) -> bool:
    return _bucket(rel) == LOCAL_TEST_BUCKET


def _write_tokens(
    path: Path,
    arrays: Iterable[np.ndarray],
    limit: int | None = None,
    progress: bars.Bar | None = None,
) -> int:
    """Append token arrays to a flat uint16 file (atomically), cropping at limit tokens.

    ``progress`` advances by the tokens actually written, so a bar whose total is the crop
    ends at exactly 100%.
    """
    tmp = path.with_suffix(".tmp")
    n = 0
    with open(tmp, "wb") as fh:
        for arr in arrays:
            if limit is not None and n + len(arr) > limit:
                arr = arr[: limit - n]
            fh.write(arr.tobytes())
            n += len(arr)
            if progress is not None:
                progress.update(len(arr))
            if limit is not None and n >= limit:
                break
    tmp.replace(path)
    return n


def _shard_record(path: Path, root: Path, tokens: int) -> dict:
    return {
        "file": path.relative_to(root).as_posix(),
        "tokens": tokens,
        "sha256": mf.sha256_file(path),
    }


def _take_chars(docs: Iterable[str], limit: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        if total >= limit:
            return
        total += len(doc)
        yield doc


def _tokenizing_bar(split: str, crop: int | None) -> bars.Bar:
    """A bar in tokens written for one split; its total is the crop, when the profile has one.

    Tokens, not documents: the crop is in tokens and usually ends the split long before its
    documents run out, so a bar over documents would stop far short of its end.
    """
    return bars.bar(f"tokenizing {split}", "tok", total=crop, unit_scale=True)


@dataclass(frozen=True)
class _Documents:
    """The documents of one source, read as the steps need them.

    ``train_groups`` holds one reader per source file, so the train bar can name the file it
    is in; ``in_memory`` says the documents are already read (then the tokenizer's own bar
    can be given a total). ``test`` is None where the test split continues validation's
    documents after its crop (http).
    """

    train_groups: list[Callable[[], Iterable[str]]]
    val: Callable[[], Iterable[str]]
    info: dict
    in_memory: bool
    test: Callable[[], Iterable[str]] | None = None

    def train(self) -> Iterator[str]:
        return itertools.chain.from_iterable(group() for group in self.train_groups)


def _reset_outputs(data_dir: Path) -> None:
    """Empty the tokenizer, train, val and test folders and drop the previous manifest."""
    for sub in (mf.TOKENIZER_DIR, mf.TRAIN_DIR, mf.VAL_DIR, mf.TEST_DIR):
        shutil.rmtree(data_dir / sub, ignore_errors=True)
        (data_dir / sub).mkdir(parents=True)
    (data_dir / mf.MANIFEST).unlink(missing_ok=True)


def _split_local(folder: Path, profile: Profile) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) documents of a local folder, read only as far as the profile keeps."""
    train_docs: list[str] = []
    val_docs: list[str] = []
    test_docs: list[str] = []
    # Stop reading once every split surely holds more tokens than will be kept.
    cap = CHARS_PER_TOKEN_MAX * profile.max_train_tokens if profile.max_train_tokens else None
    val_cap = CHARS_PER_TOKEN_MAX * profile.val_tokens
    test_cap = CHARS_PER_TOKEN_MAX * (profile.test_tokens or 0)
    train_chars = val_chars = test_chars = 0
    for rel, doc in local_documents(folder):
        if _is_val(rel):
            val_docs.append(doc)
            val_chars += len(doc)
        elif _is_test(rel):
            test_docs.append(doc)
            test_chars += len(doc)
        elif cap is None or train_chars <= cap:
            train_docs.append(doc)
            train_chars += len(doc)
        if cap is not None and train_chars > cap and val_chars > val_cap and test_chars > test_cap:
            break
    if not train_docs or not val_docs or not test_docs:
        raise ValueError(f"{folder} holds too few text files to split train, validation and test")
    return train_docs, val_docs, test_docs


def _local_documents_source(local_dir: Path | None, profile: Profile, emit: Emit) -> _Documents:
    """The ``local`` source: a folder of text files (the standard library's by default)."""
    folder = Path(local_dir) if local_dir else default_local_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"local source folder {folder} does not exist")
    emit("prepare.read", source="local", folder=str(folder))
    train_docs, val_docs, test_docs = _split_local(folder, profile)
    return _Documents(
        train_groups=[lambda: train_docs],
        val=lambda: val_docs,
        info={
            "kind": "local",
            "folder": folder.name,
            "documents": len(train_docs) + len(val_docs) + len(test_docs),
        },
        in_memory=True,
        test=lambda: test_docs,
    )


def _http_documents_source(
    data_dir: Path,
    url_pattern: str | None,
    train_shards: int,
    val_shard: int | None,
    text_column: str,
    workers: int,
    emit: Emit,
) -> _Documents:
    """The ``http`` source: parquet shards downloaded into ``data_dir/raw``, read lazily."""
    from harness import download as dl

    pattern = url_pattern or dl.DEFAULT_URL_PATTERN
    vshard = dl.DEFAULT_VAL_SHARD if val_shard is None else val_shard
    indices = [i for i in range(train_shards + 1) if i != vshard][:train_shards]
    raw = data_dir / "raw"
    raw.mkdir(exist_ok=True)
    emit("prepare.download", shards=len(indices) + 1, pattern=pattern)
    records = dl.download_shards(
        pattern,
        [*indices, vshard],
        raw,
        workers=workers,
        on_done=lambda rec: emit("prepare.downloaded", file=rec["file"], bytes=rec["bytes"]),
    )
    paths = [raw / r["file"] for r in records]
    train_paths, val_path = paths[:-1], paths[-1]
    return _Documents(
        train_groups=[partial(dl.iter_parquet_texts, [p], text_column) for p in train_paths],
        val=partial(dl.iter_parquet_texts, [val_path], text_column),
        info={"kind": "http", "url_pattern": pattern, "shards": records},
        in_memory=False,
    )


def _train_tokenizer(
    data_dir: Path, profile: Profile, docs: _Documents, emit: Emit
) -> tuple[tk.Tokenizer, dict]:
    """Train the tokenizer on the first train characters, save it, return it and its record."""
    emit("prepare.tokenizer", vocab_size=profile.vocab_size, chars=profile.tokenizer_chars)
    tok_texts: Iterable[str] = _take_chars(docs.train(), profile.tokenizer_chars)
    if docs.in_memory:  # already in memory: a list gives the library's bar a total
        tok_texts = list(tok_texts)
    tok = tk.train_tokenizer(tok_texts, profile.vocab_size, show_progress=bars.both_on_terminal())
    tok_path = data_dir / mf.TOKENIZER_DIR / "tokenizer.json"
    tok.save(str(tok_path))
    lengths_path = data_dir / mf.TOKENIZER_DIR / "token_bytes.npy"
    np.save(lengths_path, tk.token_byte_lengths(tok))
    record = {
        **_shard_record(tok_path, data_dir, 0),
        "token_bytes": lengths_path.relative_to(data_dir).as_posix(),
        "token_bytes_sha256": mf.sha256_file(lengths_path),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "bos_id": tok.token_to_id(tk.BOS),
    }
    return tok, record


def _write_held_out(
    data_dir: Path, tok: tk.Tokenizer, docs: _Documents, profile: Profile, emit: Emit
) -> tuple[dict, dict]:
    """Tokenize validation and test, each into one file cropped at the profile's size;
    return their records. Without test documents of its own (http), the test split takes
    the documents after validation's crop: validation is the same as without a test split."""
    val_arrays = tk.encode_documents(tok, docs.val())
    records = []
    for split, folder, arrays, limit in (
        ("val", mf.VAL_DIR, val_arrays, profile.val_tokens),
        ("test", mf.TEST_DIR, val_arrays if docs.test is None else None, profile.test_tokens),
    ):
        emit("prepare.tokenize", split=split)
        if arrays is None:
            arrays = tk.encode_documents(tok, docs.test())
        path = data_dir / folder / f"{split}.bin"
        with _tokenizing_bar(split, limit) as bar:
            n = _write_tokens(path, arrays, limit, bar)
        records.append(_shard_record(path, data_dir, n))
    if not records[1]["tokens"]:
        raise ValueError(
            f"no text is left for a test split after validation's {records[0]['tokens']} "
            "tokens: use a larger validation shard or a smaller val_tokens"
        )
    return records[0], records[1]


def _write_train_shards(
    data_dir: Path, tok: tk.Tokenizer, docs: _Documents, budget: int | None, emit: Emit
) -> list[dict]:
    """Tokenize the train split into shards of TRAIN_SHARD_TOKENS, ``budget`` tokens in all.

    Each source file starts a new shard, and a shard ends where its file does.
    """
    shards: list[dict] = []
    groups = docs.train_groups
    with _tokenizing_bar("train", budget) as bar:
        for g, group in enumerate(groups):
            if len(groups) > 1:  # with no crop (no total), the file is the progress
                bar.set_postfix_str(f"file {g + 1}/{len(groups)}")
            arrays = tk.encode_documents(tok, group())
            while budget is None or budget > 0:
                path = data_dir / mf.TRAIN_DIR / f"train_{len(shards):05d}.bin"
                cap = TRAIN_SHARD_TOKENS if budget is None else min(budget, TRAIN_SHARD_TOKENS)
                n = _write_tokens(path, arrays, cap, bar)
                budget = None if budget is None else budget - n
                if n == 0:
                    path.unlink()
                    break
                shards.append(_shard_record(path, data_dir, n))
                emit("prepare.shard", file=shards[-1]["file"], tokens=n)
                if n < cap:
                    break
    return shards


def _write_manifest(
    data_dir: Path,
    profile: Profile,
    docs: _Documents,
    tokenizer: dict,
    train: list[dict],
    val: dict,
    test: dict,
    emit: Emit,
) -> dict:
    """Write the manifest, read it back with its fingerprint, report the totals."""
    manifest = {
        "profile": profile.to_dict(),
        "source": docs.info,
        "tokenizer": tokenizer,
        "train": train,
        "val": val,
        "test": test,
    }
    mf.write_manifest(data_dir, manifest)
    manifest = mf.load_manifest(data_dir)
    emit(
        "prepare.done",
        fingerprint=manifest["fingerprint"],
        train_tokens=sum(s["tokens"] for s in train),
        val_tokens=val["tokens"],
        test_tokens=test["tokens"],
    )
    return manifest


def prepare(
    data_dir: Path,
    profile: Profile,
    *,
    source: str = "local",
    local_dir: Path | None = None,
    url_pattern: str | None = None,
    train_shards: int = 8,
    val_shard: int | None = None,
    text_column: str = "text",
    workers: int = 8,
    emit: Emit | None = None,
) -> dict:
    """Build a prepared data folder and return its manifest (with the fingerprint).

    On a terminal, progress bars show the download (bytes), the tokenizer training (the
    `tokenizers` library's own bars) and the tokenizing (tokens, against the profile's crop
    when it has one); elsewhere, as in CI or with stderr in a log file, nothing but ``emit``.
    """
    emit = bars.above_bars(emit or (lambda event, **kw: None))
    data_dir = Path(data_dir)
    if source == "local" and local_dir is not None and not Path(local_dir).is_dir():
        raise FileNotFoundError(f"local source folder {local_dir} does not exist")
    _reset_outputs(data_dir)
    if source == "local":
        docs = _local_documents_source(local_dir, profile, emit)
    elif source == "http":
        docs = _http_documents_source(
            data_dir, url_pattern, train_shards, val_shard, text_column, workers, emit
        )
    else:
        raise ValueError(f"unknown source {source!r}; choose local or http")
    tok, tokenizer = _train_tokenizer(data_dir, profile, docs, emit)
    val, test = _write_held_out(data_dir, tok, docs, profile, emit)
    train = _write_train_shards(data_dir, tok, docs, profile.max_train_tokens, emit)
    return _write_manifest(data_dir, profile, docs, tokenizer, train, val, test, emit)
