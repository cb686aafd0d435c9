"""`autoresearch prepare`: read or download the text, train the tokenizer, write the shards;
nothing to do when the data folder already holds the same preparation."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from orchestrator import logs
from orchestrator.cli.helpers import add_common, data_fingerprint, load_settings, resolve_profile


def add_prepare(sub: Any) -> None:
    p = sub.add_parser("prepare", help="download or read text, train the tokenizer, write shards")
    add_common(p)
    p.add_argument(
        "--source",
        choices=["local", "http"],
        default="local",
        help="local: a folder of text files (default: this Python's stdlib); http: parquet shards",
    )
    p.add_argument(
        "--local-dir", type=Path, help="folder of .py/.txt/.md/.rst files for --source local"
    )
    p.add_argument(
        "--url-pattern", help="URL with {i} for --source http (default: climbmix shards)"
    )
    p.add_argument("--train-shards", type=int, default=8, help="parquet shards for training (http)")
    p.add_argument("--val-shard", type=int, help="the shard index held out for validation (http)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (http)")
    p.add_argument("--force", action="store_true", help="prepare again even if the data is there")


def _already_prepared(data_dir: Path, profile: Any, args: argparse.Namespace) -> bool:
    from harness import manifest as mf

    try:
        existing = mf.load_manifest(data_dir)
    except FileNotFoundError:
        return False
    source = existing.get("source", {})
    if existing.get("version") != mf.MANIFEST_VERSION:
        return False  # an older layout: prepare again
    if existing.get("profile") != profile.to_dict() or source.get("kind") != args.source:
        return False
    if args.source == "local":
        from harness.prepare import default_local_dir

        return source.get("folder") == (args.local_dir or default_local_dir()).name
    return source.get("url_pattern") == (args.url_pattern or source.get("url_pattern"))


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness.prepare import prepare

    s = load_settings(args)
    log = logs.get()
    profile, data_dir = resolve_profile(s, log)
    if not args.force and _already_prepared(data_dir, profile, args):
        fingerprint = data_fingerprint(data_dir)
        print(f"already prepared: {data_dir} fingerprint {fingerprint} (--force to redo)")
        return 0
    started = time.monotonic()
    manifest = prepare(
        data_dir,
        profile,
        source=args.source,
        local_dir=args.local_dir,
        url_pattern=args.url_pattern,
        train_shards=args.train_shards,
        val_shard=args.val_shard,
        workers=args.workers,
        emit=lambda event, **kw: log.info(event, **kw),
    )
    print(
        f"prepared {data_dir} fingerprint {manifest['fingerprint']} in {time.monotonic() - started:.1f}s"
    )
    return 0
