"""The http data source against a real local HTTP server (no mocks, no sleeps)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.download import (
    CHECKSUMS,
    DEFAULT_TEXT_COLUMN,
    DEFAULT_URL_PATTERN,
    DEFAULT_VAL_SHARD,
    DownloadError,
    download_shards,
    iter_parquet_texts,
)

FAST = {"backoff_s": 0.001, "timeout_s": 10.0}


def make_parquet(texts: list[str | None], row_group_size: int = 4) -> bytes:
    buf = io.BytesIO()
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def texts_for(i: int, n: int = 40) -> list[str | None]:
    return [f"shard {i} row {r} " + "lorem ipsum " * (r % 7) for r in range(n)]


class State:
    """What the server serves and what it saw; one lock guards both."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        # Per path, actions for the next requests: an int status, or "truncate".
        self.script: dict[str, list[int | str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.sent = 0
        self.ignore_range = False
        self.barrier: threading.Barrier | None = None
        self.barrier_broken = False
        self.base = ""

    def pattern(self) -> str:
        return self.base + "/shard_{i:05d}.parquet"

    def add(self, i: int, body: bytes) -> str:
        self.files[f"/shard_{i:05d}.parquet"] = body
        return f"/shard_{i:05d}.parquet"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st: State = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((self.path, rng))
            pending = st.script.get(self.path)
            action = pending.pop(0) if pending else None
        if st.barrier is not None:
            try:
                st.barrier.wait()
            except threading.BrokenBarrierError:
                st.barrier_broken = True
        body = st.files.get(self.path)
        if isinstance(action, int) or body is None:
            self.send_error(action if isinstance(action, int) else 404)
            return
        start = 0
        if rng and not st.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if action == "truncate":
            chunk = chunk[: len(chunk) // 2]
        self.wfile.write(chunk)
        with st.lock:
            st.sent += len(chunk)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[State]:
    monkeypatch.setenv("no_proxy", "*")  # a proxy from the environment must not intercept
    state = State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_defaults_point_at_climbmix() -> None:
    assert DEFAULT_URL_PATTERN.format(i=DEFAULT_VAL_SHARD).endswith(
        "karpathy/climbmix-400b-shuffle/resolve/main/shard_06542.parquet"
    )
    assert DEFAULT_TEXT_COLUMN == "text"


def test_parallel_download_records_sha256(server: State, tmp_path: Path) -> None:
    bodies = {i: make_parquet(texts_for(i)) for i in range(4)}
    for i, body in bodies.items():
        server.add(i, body)
    # Every request waits until all four are in flight: a serial download breaks it.
    server.barrier = threading.Barrier(4, timeout=5)
    seen: list[tuple[int, int]] = []
    result = download_shards(
        server.pattern(),
        [3, 1, 2, 0, 1],
        tmp_path,
        workers=4,
        on_done=lambda r: seen.append((r["index"], threading.get_ident())),
        **FAST,
    )
    assert not server.barrier_broken
    assert [r["index"] for r in result] == [0, 1, 2, 3]
    for r in result:
        body = bodies[r["index"]]
        assert r["file"] == f"shard_{r['index']:05d}.parquet"
        assert r["url"] == server.base + "/" + r["file"]
        assert r["sha256"] == sha(body) and r["bytes"] == len(body)
        assert (tmp_path / r["file"]).read_bytes() == body
    assert sorted(i for i, _ in seen) == [0, 1, 2, 3]
    assert {t for _, t in seen} == {threading.get_ident()}
    assert json.loads((tmp_path / CHECKSUMS).read_text()) == {
        r["file"]: r["sha256"] for r in result
    }
    assert not list(tmp_path.glob("*.part"))


def test_iter_parquet_texts_streams_rows_in_order(tmp_path: Path) -> None:
    a, b = texts_for(1, 11), texts_for(2, 7)
    (tmp_path / "a.parquet").write_bytes(make_parquet(a + [None], row_group_size=4))
    (tmp_path / "b.parquet").write_bytes(make_parquet(b, row_group_size=2))
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    assert list(iter_parquet_texts(paths, batch_rows=3)) == a + b
    with pytest.raises(ValueError, match="no column 'body'"):
        list(iter_parquet_texts(paths, column="body"))


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_transient_errors(server: State, tmp_path: Path, status: int) -> None:
    body = make_parquet(texts_for(1))
    path = server.add(1, body)
    server.script[path] = [status, status]
    (rec,) = download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert len(server.requests) == 3
    assert rec["sha256"] == sha(body)


def test_404_fails_at_once(server: State, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download_shards(server.pattern(), [7], tmp_path, retries=5, **FAST)
    assert server.base + "/shard_00007.parquet" in str(err.value)
    assert "404" in str(err.value)
    assert len(server.requests) == 1


def test_retries_exhausted(server: State, tmp_path: Path) -> None:
    path = server.add(1, make_parquet(texts_for(1)))
    server.script[path] = [500] * 10
    with pytest.raises(DownloadError, match="3 attempts"):
        download_shards(server.pattern(), [1], tmp_path, retries=2, **FAST)
    assert len(server.requests) == 3
    assert not (tmp_path / "shard_00001.parquet").exists()


def test_resume_from_part_with_range(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1, 200))
    path = server.add(1, body)
    half = len(body) // 2
    (tmp_path / "shard_00001.parquet.part").write_bytes(body[:half])
    (rec,) = download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert server.requests == [(path, f"bytes={half}-")]
    assert server.sent == len(body) - half
    assert (tmp_path / "shard_00001.parquet").read_bytes() == body
    assert rec["sha256"] == sha(body)
    assert not (tmp_path / "shard_00001.parquet.part").exists()


def test_part_restarts_when_server_ignores_range(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1))
    server.add(1, body)
    server.ignore_range = True
    (tmp_path / "shard_00001.parquet.part").write_bytes(b"stale bytes" * 10)
    download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert server.requests[0][1] is not None
    assert (tmp_path / "shard_00001.parquet").read_bytes() == body


def test_part_longer_than_file_restarts(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1))
    server.add(1, body)
    (tmp_path / "shard_00001.parquet.part").write_bytes(body + b"junk")
    download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert [r for _, r in server.requests] == [f"bytes={len(body) + 4}-", None]
    assert (tmp_path / "shard_00001.parquet").read_bytes() == body


def test_short_body_is_resumed(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1, 200))
    path = server.add(1, body)
    server.script[path] = ["truncate"]
    download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert server.requests == [(path, None), (path, f"bytes={len(body) // 2}-")]
    assert (tmp_path / "shard_00001.parquet").read_bytes() == body


def test_second_call_makes_no_requests(server: State, tmp_path: Path) -> None:
    for i in range(3):
        server.add(i, make_parquet(texts_for(i)))
    first = download_shards(server.pattern(), range(3), tmp_path, **FAST)
    server.requests.clear()
    done: list[dict] = []
    second = download_shards(server.pattern(), range(3), tmp_path, on_done=done.append, **FAST)
    assert server.requests == []
    assert second == first
    assert len(done) == 3


def test_corrupted_file_is_downloaded_again(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1))
    path = server.add(1, body)
    download_shards(server.pattern(), [1], tmp_path, **FAST)
    final = tmp_path / "shard_00001.parquet"
    final.write_bytes(body[:-10] + b"0123456789")
    server.requests.clear()
    (rec,) = download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert server.requests == [(path, None)]
    assert final.read_bytes() == body and rec["sha256"] == sha(body)


def test_present_file_without_record_is_adopted(server: State, tmp_path: Path) -> None:
    body = make_parquet(texts_for(1))
    (tmp_path / "shard_00001.parquet").write_bytes(body)
    (rec,) = download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert server.requests == []
    assert rec["sha256"] == sha(body)
    assert json.loads((tmp_path / CHECKSUMS).read_text()) == {"shard_00001.parquet": sha(body)}


def test_source_differing_from_record_is_refused(server: State, tmp_path: Path) -> None:
    server.add(1, make_parquet(texts_for(1)))
    (tmp_path / CHECKSUMS).write_text(json.dumps({"shard_00001.parquet": "0" * 64}))
    with pytest.raises(DownloadError, match="differs"):
        download_shards(server.pattern(), [1], tmp_path, **FAST)
    assert not (tmp_path / "shard_00001.parquet").exists()


def test_unreadable_parquet_is_an_error(server: State, tmp_path: Path) -> None:
    server.add(1, make_parquet(texts_for(1)))
    server.add(2, b"<html>not a parquet file</html>")
    with pytest.raises(DownloadError, match="shard_00002.parquet"):
        download_shards(server.pattern(), [1, 2], tmp_path, **FAST)
    assert not (tmp_path / "shard_00002.parquet").exists()
    assert list(json.loads((tmp_path / CHECKSUMS).read_text())) == ["shard_00001.parquet"]


def test_prepare_from_http_shards(server: State, tmp_path: Path) -> None:
    """The http source end to end: download, tokenizer, shards, manifest; val is its own shard."""
    import dataclasses

    import numpy as np

    from harness import tokenizer as tk
    from harness.manifest import load_manifest
    from harness.prepare import prepare
    from harness.profiles import get_profile

    for i in range(3):
        server.add(i, make_parquet(texts_for(i)))
    profile = dataclasses.replace(get_profile("cpu"), vocab_size=300, val_tokens=400)
    data = tmp_path / "data"
    manifest = prepare(
        data,
        profile,
        source="http",
        url_pattern=server.pattern(),
        train_shards=2,
        val_shard=2,
        workers=2,
    )
    assert load_manifest(data)["fingerprint"] == manifest["fingerprint"]
    assert [s["index"] for s in manifest["source"]["shards"]] == [0, 1, 2]
    tok = tk.load(data / "tokenizer" / "tokenizer.json")

    def text(rel: str) -> str:
        ids = np.fromfile(data / rel, dtype=np.uint16)
        return tok.decode([int(i) for i in ids if i != manifest["tokenizer"]["bos_id"]])

    val = text(manifest["val"]["file"])
    train = "".join(text(s["file"]) for s in manifest["train"])
    assert val.startswith("shard 2 row 0") and manifest["val"]["tokens"] == 400
    assert "shard 0 row" in train and "shard 1 row" in train and "shard 2" not in train

    # The test split: the same shard's documents after validation's crop, no other shard's.
    def rows(t: str) -> list[int]:
        return [int(r) for r in re.findall(r"shard 2 row (\d+)", t)]

    test = text(manifest["test"]["file"])
    assert 0 < manifest["test"]["tokens"] <= profile.test_tokens
    assert test.startswith("shard 2 row ") and "shard 0" not in test and "shard 1" not in test
    assert rows(test)[0] == rows(val)[-1] + 1 and rows(test) == sorted(set(rows(test)))
