"""The ``http`` data source: parquet text shards fetched by URL pattern.

Preparing data is the one step that touches the network. It runs once per host, often over
links that drop, and its output is fingerprinted into every result. So each shard is fetched
with retries, resumed from its ``.part`` file, renamed into place only when complete, and
pinned by its sha256 in ``checksums.json``: a rerun fetches nothing it already has, repairs
what got corrupted, and refuses a source that silently changed. Stdlib HTTP only (urllib),
so the harness gains no dependency. On a terminal one bar shows the bytes of all shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from http.client import HTTPException
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness import bars

DEFAULT_URL_PATTERN = (
    "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/"
    "shard_{i:05d}.parquet"
)
DEFAULT_VAL_SHARD = 6542
DEFAULT_TEXT_COLUMN = "text"
CHECKSUMS = "checksums.json"

_CHUNK = 1 << 20
_MAX_BACKOFF_S = 60.0
_USER_AGENT = "autoresearch-prepare"


class DownloadError(RuntimeError):
    """A shard could not be fetched or is not what it should be; the message names it."""


class _Retryable(Exception):
    """A failure that another attempt may cure: network, timeout, 5xx, 429, short body."""


class _Progress:
    """One bar in bytes for all the shards of a call, fed from the download threads.

    One bar, not one per shard: up to ``workers`` shards arrive at once, and a stack of
    bars that come and go reads worse than one total with a count of files done. Per shard
    it keeps the bytes received in this call and what the latest response said is still to
    come. The total is their sum, set once every shard has answered with a Content-Length
    (until then the bar shows bytes and rate: a total that grew as shards started would
    make the percentage lie). Retries keep it exact: a resumed response expects the rest,
    a restarted one the whole file again on top of what was already received.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._received = dict.fromkeys(names, 0)
        self._expected: dict[str, int | None] = {}
        self._done = 0
        self.bar = bars.bar("downloading", "B", unit_scale=True)
        self.bar.set_postfix_str(f"0/{len(names)} files")

    def response(self, name: str, remaining: int | None) -> None:
        """A response for ``name`` started: ``remaining`` bytes follow (None: unknown)."""
        with self._lock:
            self._expected[name] = None if remaining is None else self._received[name] + remaining
            known = self._expected.values()
            if len(self._expected) == len(self._received) and None not in known:
                self.bar.total = sum(v for v in known if v is not None)
                self.bar.refresh()

    def received(self, name: str, n: int) -> None:
        with self._lock:
            self._received[name] += n
            self.bar.update(n)

    def finished(self) -> None:
        """One more shard is in place (fetched, or kept from before)."""
        with self._lock:
            self._done += 1
            self.bar.set_postfix_str(f"{self._done}/{len(self._received)} files")


def shard_name(i: int) -> str:
    """Local file name of shard ``i``; fixed, so it never depends on the URL's shape."""
    return f"shard_{i:05d}.parquet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict[str, str]) -> None:
    """Write then rename, so a crash never leaves a half-written checksums file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _range_start(content_range: str) -> int | None:
    """First byte of a ``Content-Range: bytes a-b/n`` header, None if unparsable."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _attempt(url: str, part: Path, timeout_s: float, progress: _Progress, name: str) -> None:
    """One GET into ``part``, resuming from its size; raises _Retryable or DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the .part is longer than the file: start over
            part.unlink()
            raise _Retryable(f"HTTP 416 for a range from byte {offset}") from e
        if e.code == 429 or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (OSError, HTTPException) as e:  # URLError, refused, reset, timeout
        raise _Retryable(repr(e)) from e
    with resp:
        if resp.status == 206:
            if _range_start(resp.headers.get("Content-Range", "")) != offset:
                part.unlink()  # a range we did not ask for cannot be appended
                raise _Retryable("server answered a different range")
            mode = "ab"
        else:  # 200: the server ignored the range, so the body is the whole file
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        progress.response(name, int(length) if length is not None else None)
        try:
            with part.open(mode) as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    progress.received(name, len(chunk))
        except (OSError, HTTPException) as e:
            raise _Retryable(repr(e)) from e
    # urllib returns a short body silently when the connection drops: check it ourselves.
    got = part.stat().st_size - offset
    if length is not None and got != int(length):
        raise _Retryable(f"got {got} of {length} bytes")


def _fetch(
    url: str,
    final: Path,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: _Progress,
) -> None:
    """Download ``url`` to ``final`` via ``final.part``, retrying with exponential backoff."""
    part = final.with_name(final.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, timeout_s, progress, final.name)
        except _Retryable as e:
            last = e
            if attempt < retries:
                delay = min(backoff_s * 2**attempt, _MAX_BACKOFF_S)
                time.sleep(delay + random.uniform(0, backoff_s / 2))
            continue
        os.replace(part, final)  # atomic: a final name always holds a whole file
        return
    raise DownloadError(f"{url}: failed after {retries + 1} attempts: {last}")


class _Checksums:
    """``checksums.json`` of a download folder, shared by the download threads.

    Every change is written through at once (atomically), so an interrupted call leaves
    the records of the shards it completed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sums: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._sums.get(name)

    def record(self, name: str, digest: str | None) -> None:
        """Pin ``name`` to ``digest``; None forgets it."""
        with self._lock:
            if digest is None:
                self._sums.pop(name, None)
            else:
                self._sums[name] = digest
            _write_json_atomic(self.path, self._sums)


def _fetch_shard(
    i: int,
    *,
    url_pattern: str,
    dest: Path,
    sums: _Checksums,
    progress: _Progress,
    retries: int,
    backoff_s: float,
    timeout_s: float,
) -> dict:
    """Shard ``i`` in place and checked against its recorded sha256; returns its record.

    A file already there is kept when it matches its record (or adopted when it has none)
    and fetched again when it does not.
    """
    url, name = url_pattern.format(i=i), shard_name(i)
    final = dest / name
    known = sums.get(name)
    if final.exists():
        digest = _sha256(final)
        if known is None:
            sums.record(name, digest)
        elif digest != known:
            final.unlink()
    if final.exists():
        progress.response(name, 0)
    else:
        _fetch(url, final, retries, backoff_s, timeout_s, progress)
        digest = _sha256(final)
        if known is not None and digest != known:
            final.unlink()
            raise DownloadError(
                f"{url}: sha256 {digest} differs from {known} recorded in {CHECKSUMS};"
                " if the source really changed, delete that entry"
            )
        sums.record(name, digest)
    size = final.stat().st_size
    return {"index": i, "url": url, "file": name, "bytes": size, "sha256": digest}


def _fetch_all(
    wanted: Sequence[int],
    fetch_one: Callable[[int], dict],
    workers: int,
    progress: _Progress,
    on_done: Callable[[dict], None] | None,
) -> dict[int, dict]:
    """Run ``fetch_one`` over ``wanted`` on a thread pool; records by index.

    ``on_done`` runs here, in the calling thread, as each shard completes. The first
    failure cancels what has not started and is raised once the running ones end.
    """
    done: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fetch_one, i) for i in wanted]
        try:
            for future in as_completed(futures):
                rec = future.result()
                done[rec["index"]] = rec
                progress.finished()
                if on_done is not None:
                    on_done(rec)
        except BaseException:
            for future in futures:  # fail fast: start nothing new, let running ones end
                future.cancel()
            raise
    return done


def _check_parquet(records: Sequence[dict], dest: Path, sums: _Checksums) -> None:
    """Raise DownloadError naming every shard that is not readable parquet, removing each."""
    bad = []
    for rec in records:
        path = dest / rec["file"]
        try:
            with pq.ParquetFile(path):
                pass
        except (pa.ArrowException, OSError, ValueError) as e:
            bad.append(f"{rec['url']} ({e})")
            path.unlink(missing_ok=True)
            sums.record(rec["file"], None)
    if bad:
        raise DownloadError("not readable parquet (removed, a rerun refetches): " + "; ".join(bad))


def download_shards(
    url_pattern: str,
    indices: Sequence[int],
    dest: Path,
    *,
    workers: int = 8,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fetch shards ``url_pattern.format(i=i)`` into ``dest`` and return their records.

    Returns ``[{"index", "url", "file", "bytes", "sha256"}]`` sorted by index (duplicates
    dropped). ``retries`` counts attempts after the first. A file whose sha256 matches
    ``dest/checksums.json`` is kept without a request; a mismatch is fetched again; a file
    without a record is adopted. ``on_done(record)`` runs in the calling thread, once per
    shard as it completes (before the final parquet check), so callers need no locking.
    Raises DownloadError on a 4xx, exhausted retries, a source whose bytes differ from
    the recorded sha256, or a file that is not readable parquet (removed for a refetch).
    """
    dest.mkdir(parents=True, exist_ok=True)
    sums = _Checksums(dest / CHECKSUMS)
    wanted = sorted(set(indices))
    progress = _Progress([shard_name(i) for i in wanted])
    fetch_one = partial(
        _fetch_shard,
        url_pattern=url_pattern,
        dest=dest,
        sums=sums,
        progress=progress,
        retries=retries,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
    )
    with progress.bar:
        done = _fetch_all(wanted, fetch_one, workers, progress, on_done)
    results = [done[i] for i in wanted]
    _check_parquet(results, dest, sums)
    return results


def iter_parquet_texts(
    paths: Sequence[Path], column: str = DEFAULT_TEXT_COLUMN, batch_rows: int = 1024
) -> Iterator[str]:
    """Yield ``column`` row by row, in file then row order; null rows are skipped.

    Streams record batches, so memory stays at one batch whatever the shard size.
    """
    for path in paths:
        with pq.ParquetFile(path) as pf:
            if column not in pf.schema_arrow.names:
                raise ValueError(f"{path}: no column {column!r} (has {pf.schema_arrow.names})")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
                for text in batch.column(0).to_pylist():
                    if text is not None:
                        yield text
